//! `konnectivity dial`: one tunneled connection, relayed to stdin/stdout (like `nc`),
//! through the gRPC or HTTP-CONNECT frontend, or through the SOCKS5 frontend
//! (`--socks5`, our extension). With `--udp`, a UDP connection through the gRPC
//! frontend (a server with `--enable-udp`): each stdin line is one datagram, each
//! reply is printed on its own line.
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Args;
use konnectivity_client::Io;
use konnectivity_core::socks::{self, Destination, parse_reply, reply_text};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// With `--udp`, how long replies are still awaited after stdin ends.
const UDP_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Arguments of `konnectivity dial`.
#[derive(Args, Debug)]
pub struct DialArgs {
    /// Destination, host:port as the agent's node sees it.
    address: String,
    /// The server's frontend UNIX socket (`--uds-name`).
    #[arg(long)]
    uds: Option<PathBuf>,
    /// The server's frontend TCP address (mTLS).
    #[arg(long)]
    tcp: Option<String>,
    /// CA that signed the server certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Server name to verify (default: the host of --tcp).
    #[arg(long)]
    server_name: Option<String>,
    /// Use the HTTP-CONNECT protocol instead of gRPC.
    #[arg(long)]
    http_connect: bool,
    /// Dial through the server's SOCKS5 frontend at this address: `host:port`
    /// (`--socks5-port`) or a UNIX socket path (`--socks5-uds`, anything with a `/`).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["uds", "tcp", "http_connect"])]
    socks5: Option<String>,
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
        let f = crate::frontend(a.uds, a.tcp, a.ca, a.cert, a.key, a.server_name)?;
        return udp(&f, &a.address).await;
    }
    let (mut r, mut w): (R, W) = if let Some(proxy) = &a.socks5 {
        let (io, rest) = socks5_dial(proxy, &a.address).await?;
        tokio::io::stdout().write_all(&rest).await?;
        let (r, w) = tokio::io::split(io);
        (Box::new(r), Box::new(w))
    } else if a.http_connect {
        let f = crate::frontend(a.uds, a.tcp, a.ca, a.cert, a.key, a.server_name)?;
        let (io, rest) =
            konnectivity_client::connect_dial(&f, &a.address, crate::DIAL_TIMEOUT).await?;
        tokio::io::stdout().write_all(&rest).await?;
        let (r, w) = tokio::io::split(io);
        (Box::new(r), Box::new(w))
    } else {
        let f = crate::frontend(a.uds, a.tcp, a.ca, a.cert, a.key, a.server_name)?;
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

/// Opens a connection to `address` through the SOCKS5 proxy at `proxy` (no
/// authentication); returns it and any bytes that arrived behind the reply.
async fn socks5_dial(proxy: &str, address: &str) -> anyhow::Result<(Box<dyn Io>, BytesMut)> {
    let dest = Destination::from_address(address)
        .ok_or_else(|| anyhow::anyhow!("{address:?} is not host:port"))?;
    let mut io: Box<dyn Io> = if proxy.contains('/') {
        Box::new(tokio::net::UnixStream::connect(proxy).await?)
    } else {
        Box::new(tokio::net::TcpStream::connect(proxy).await?)
    };
    let handshake = async {
        io.write_all(&[socks::VERSION, 1, socks::NO_AUTH]).await?;
        let mut method = [0u8; 2];
        io.read_exact(&mut method).await?;
        anyhow::ensure!(
            method == [socks::VERSION, socks::NO_AUTH],
            "the SOCKS5 proxy at {proxy} does not accept unauthenticated clients"
        );
        io.write_all(&dest.connect_request()).await?;
        let mut buf = BytesMut::with_capacity(512);
        loop {
            if let Some((code, n)) = parse_reply(&buf)? {
                anyhow::ensure!(
                    code == 0,
                    "SOCKS5 proxy refused {address}: {} (reply {code})",
                    reply_text(code)
                );
                let _ = buf.split_to(n);
                return Ok(buf);
            }
            if io.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("the SOCKS5 proxy closed the connection during the handshake");
            }
        }
    };
    let rest = tokio::time::timeout(crate::DIAL_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow::anyhow!("SOCKS5 handshake with {proxy} timed out"))??;
    Ok((io, rest))
}
