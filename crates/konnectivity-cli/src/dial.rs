//! `konnectivity dial`: one tunneled connection, relayed to stdin/stdout (like `nc`),
//! through the gRPC or HTTP-CONNECT frontend, or through the SOCKS5 frontend
//! (`--socks5`, our extension; with `--ca/--cert/--key` over TLS for a port with
//! `--socks5-tls-*`, with `--socks5-user` and the password from
//! `KONNECTIVITY_SOCKS5_PASSWORD` for a server with `--socks5-auth-file`). With `--udp`, a UDP connection through the gRPC
//! frontend (a server with `--enable-udp`): each stdin line is one datagram, each
//! reply is printed on its own line.
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Args;
use konnectivity_client::Io;
use konnectivity_core::socks::UserPass;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Where `--socks5-user` finds its password.
const PASSWORD_ENV: &str = "KONNECTIVITY_SOCKS5_PASSWORD";

/// With `--udp`, how long replies are still awaited after stdin ends.
const UDP_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Arguments of `konnectivity dial`.
#[derive(Args, Debug)]
pub struct DialArgs {
    /// Destination, host:port as the agent's node sees it.
    address: String,
    #[command(flatten)]
    fe: crate::FrontendArgs,
    /// Dial through the server's SOCKS5 frontend at this address: `host:port`
    /// (`--socks5-port`; TLS with a client certificate when --ca, --cert and --key are
    /// given) or a UNIX socket path (`--socks5-uds`, anything with a `/`).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["uds", "tcp", "http_connect"])]
    socks5: Option<String>,
    /// RFC 1929 username for a SOCKS5 frontend with `--socks5-auth-file`; the password
    /// is read from the environment variable KONNECTIVITY_SOCKS5_PASSWORD (never from
    /// the command line, which other users can see).
    #[arg(long, value_name = "USER", requires = "socks5")]
    socks5_user: Option<String>,
    /// UDP through the gRPC frontend (`DialRequest.protocol "udp"`, a server with
    /// `--enable-udp`): each stdin line (without its newline) is sent as one datagram,
    /// each reply datagram is printed on a line; ends 1 s after stdin without a reply.
    #[arg(long, conflicts_with_all = ["socks5", "http_connect"])]
    udp: bool,
}

/// Runs the relay until both directions end.
pub async fn run(a: DialArgs) -> anyhow::Result<()> {
    type R = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
    type W = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
    if a.udp {
        let f = a.fe.frontend()?;
        return udp(&f, &a.address).await;
    }
    let (mut r, mut w): (R, W) = if let Some(proxy) = &a.socks5 {
        let fe = a.fe;
        let io = socks5_open(proxy, fe.ca, fe.cert, fe.key, fe.server_name).await?;
        let credentials = match a.socks5_user {
            Some(user) => Some(UserPass {
                user: user.into_bytes(),
                password: std::env::var(PASSWORD_ENV)
                    .map_err(|_| {
                        anyhow::anyhow!("--socks5-user needs the password in {PASSWORD_ENV}")
                    })?
                    .into_bytes(),
            }),
            None => None,
        };
        let (io, rest) = socks5_dial(io, proxy, &a.address, credentials).await?;
        tokio::io::stdout().write_all(&rest).await?;
        let (r, w) = tokio::io::split(io);
        (Box::new(r), Box::new(w))
    } else if a.fe.http_connect {
        let f = a.fe.frontend()?;
        let (io, rest) =
            konnectivity_client::connect_dial(&f, &a.address, crate::DIAL_TIMEOUT).await?;
        tokio::io::stdout().write_all(&rest).await?;
        let (r, w) = tokio::io::split(io);
        (Box::new(r), Box::new(w))
    } else {
        let f = a.fe.frontend()?;
        let io = konnectivity_client::grpc_dial(&f, &a.address, crate::DIAL_TIMEOUT).await?;
        let (r, w) = tokio::io::split(io);
        (Box::new(r), Box::new(w))
    };
    let to = async {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut w).await;
        let _ = w.shutdown().await;
    };
    let from = async {
        let _ = tokio::io::copy(&mut r, &mut tokio::io::stdout()).await;
    };
    tokio::join!(to, from);
    Ok(())
}

/// `--udp`: stdin lines out as datagrams, reply datagrams to stdout, one per line.
async fn udp(f: &konnectivity_client::Frontend, address: &str) -> anyhow::Result<()> {
    let mut conn =
        konnectivity_client::grpc_dial_protocol(f, "udp", address, crate::DIAL_TIMEOUT).await?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                Some(l) => conn.send_datagram(Bytes::from(l.into_bytes())).await?,
                None => stdin_open = false,
            },
            reply = conn.recv_datagram() => match reply? {
                Some(d) => {
                    out.write_all(&d).await?;
                    if !d.ends_with(b"\n") {
                        out.write_all(b"\n").await?;
                    }
                    out.flush().await?;
                }
                None => return Ok(()),
            },
            _ = tokio::time::sleep(UDP_REPLY_WAIT), if !stdin_open => return Ok(()),
        }
    }
}

/// The byte stream to the SOCKS5 frontend at `proxy`: a UNIX socket (a path), TLS with
/// a client certificate when `ca`, `cert` and `key` are given, else plain TCP.
async fn socks5_open(
    proxy: &str,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
) -> anyhow::Result<Box<dyn Io>> {
    if proxy.contains('/') {
        return Ok(Box::new(tokio::net::UnixStream::connect(proxy).await?));
    }
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(Box::new(tokio::net::TcpStream::connect(proxy).await?));
    }
    let f = crate::frontend(None, Some(proxy.to_owned()), ca, cert, key, server_name)?;
    let io = tokio::time::timeout(
        crate::DIAL_TIMEOUT,
        konnectivity_client::open_frontend(&f, b""),
    )
    .await
    .map_err(|_| anyhow::anyhow!("TLS handshake with the SOCKS5 port {proxy} timed out"))??;
    Ok(io)
}

/// Opens a connection to `address` through the SOCKS5 proxy on `io` (at `proxy`),
/// offering username/password when `credentials` are given, no authentication
/// otherwise; returns it and any bytes that arrived behind the reply.
async fn socks5_dial(
    io: Box<dyn Io>,
    proxy: &str,
    address: &str,
    credentials: Option<UserPass>,
) -> anyhow::Result<(Box<dyn Io>, BytesMut)> {
    konnectivity_client::socks5::socks5_dial_on(
        io,
        address,
        credentials.as_ref(),
        crate::DIAL_TIMEOUT,
    )
    .await
    .map_err(|e| match e {
        konnectivity_client::ClientError::Timeout => {
            anyhow::anyhow!("SOCKS5 handshake with {proxy} timed out")
        }
        e => anyhow::anyhow!("SOCKS5 proxy {proxy}: {e}"),
    })
}
