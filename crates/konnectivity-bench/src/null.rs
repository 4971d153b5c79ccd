//! The null tunnel: the tunnel's hops (client → relay S → middle hop → relay A →
//! backend, one middle-hop connection per client connection) and its crypto (the agent
//! link's own rustls configurations, a full handshake per connection), copying bytes
//! with no protocol. It is the baseline every tunnel number is divided by. In-process
//! for the in-process phases; `konnectivity bench-null` ([`null_helper`]) runs it in a
//! process of its own for the separate-process phases.
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use konnectivity_tls::{ServerConfig, ServerName, TlsAcceptor, TlsConnector};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::DIAL;

/// TLS of the null tunnel's middle hop: the agent link's configurations.
pub(crate) struct NullTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
}

pub(crate) async fn relay<A, B>(mut a: A, mut b: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024).await;
}

/// Starts relay A (terminates the middle hop, connects to `target`) and relay S
/// (accepts clients, opens one middle-hop connection each). Returns S's address.
pub(crate) async fn null_tunnel(
    target: SocketAddr,
    tls: Option<Arc<NullTls>>,
) -> anyhow::Result<SocketAddr> {
    let a = TcpListener::bind("127.0.0.1:0").await?;
    let a_addr = a.local_addr()?;
    let tls_a = tls.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = a.accept().await {
            let tls = tls_a.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                match tls {
                    Some(t) => {
                        let Ok(Ok(s)) = tokio::time::timeout(DIAL, t.acceptor.accept(s)).await
                        else {
                            return;
                        };
                        let Ok(b) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = b.set_nodelay(true);
                        relay(s, b).await;
                    }
                    None => {
                        let Ok(b) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = b.set_nodelay(true);
                        relay(s, b).await;
                    }
                }
            });
        }
    });
    let s = TcpListener::bind("127.0.0.1:0").await?;
    let s_addr = s.local_addr()?;
    tokio::spawn(async move {
        while let Ok((c, _)) = s.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = c.set_nodelay(true);
                let Ok(up) = TcpStream::connect(a_addr).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                match tls {
                    Some(t) => {
                        let Ok(name) = ServerName::try_from("localhost") else {
                            return;
                        };
                        let Ok(Ok(up)) =
                            tokio::time::timeout(DIAL, t.connector.connect(name, up)).await
                        else {
                            return;
                        };
                        relay(c, up).await;
                    }
                    None => relay(c, up).await,
                }
            });
        }
    });
    Ok(s_addr)
}

/// The null tunnel's TLS from the agent link's configurations: the server
/// certificate on relay A, the agent's client certificate on relay S.
pub(crate) fn null_tls(
    ca: &Path,
    server_cert: &Path,
    server_key: &Path,
    agent_cert: &Path,
    agent_key: &Path,
) -> anyhow::Result<Arc<NullTls>> {
    let mut client = konnectivity_tls::agent_client(ca, Some((agent_cert, agent_key)), &[])?;
    // A full handshake per tunneled connection (perf-anchors §4.4).
    client.resumption = rustls::client::Resumption::disabled();
    let server: ServerConfig =
        konnectivity_tls::agent_listener(server_cert, server_key, Some(ca), Default::default())?;
    Ok(Arc::new(NullTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    }))
}

/// `konnectivity bench-null` flags (internal).
#[derive(clap::Args, Debug, Clone)]
pub struct NullArgs {
    /// Backend address; one null tunnel (TLS middle hop) per --target.
    #[arg(long, required = true)]
    pub(crate) target: Vec<SocketAddr>,
    /// CA of the middle hop's certificates.
    #[arg(long)]
    pub(crate) ca: PathBuf,
    /// Relay A's (server) certificate.
    #[arg(long)]
    pub(crate) cert: PathBuf,
    /// Its key.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Relay S's (client) certificate.
    #[arg(long)]
    pub(crate) client_cert: PathBuf,
    /// Its key.
    #[arg(long)]
    pub(crate) client_key: PathBuf,
    /// Backend address of a null tunnel with a plain (no TLS) middle hop, the baseline
    /// of connection set-up; their entrances are printed after the TLS ones.
    #[arg(long)]
    pub(crate) plain_target: Vec<SocketAddr>,
}

/// `konnectivity bench-null`: the null tunnel in a process of its own (relays on this
/// process's multi-thread runtime, like proxy-server's and proxy-agent's). Prints the
/// entrance of each target's tunnel, one per line in --target order, and runs until
/// standard input closes.
pub async fn null_helper(a: NullArgs) -> anyhow::Result<()> {
    let tls = null_tls(&a.ca, &a.cert, &a.key, &a.client_cert, &a.client_key)?;
    let mut out = std::io::stdout();
    for t in &a.target {
        let entrance = null_tunnel(*t, Some(tls.clone()))
            .await
            .with_context(|| format!("null tunnel to {t}"))?;
        writeln!(out, "{entrance}")?;
    }
    for t in &a.plain_target {
        let entrance = null_tunnel(*t, None)
            .await
            .with_context(|| format!("plain null tunnel to {t}"))?;
        writeln!(out, "{entrance}")?;
    }
    out.flush()?;
    let mut stdin = tokio::io::stdin();
    let mut b = [0u8; 64];
    while stdin.read(&mut b).await? > 0 {}
    Ok(())
}
