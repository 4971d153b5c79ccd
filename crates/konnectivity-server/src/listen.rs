//! Accept loops: TLS handshakes off the accept path, and the IO types tonic serves.
//!
//! A handshake runs in its own task with a deadline, so a client that connects and
//! says nothing delays nobody. Failed handshakes are logged with the peer address.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use konnectivity_tls::{ServerConfig, TlsAcceptor};
use konnectivity_tunnel::outbound::Pacer;
use konnectivity_tunnel::paced::{NOTSENT_LOWAT, PACER_LIMIT, PacedIo, set_notsent_lowat};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// Bound on a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server-side TLS connection over TCP. Its writes are reported to a [`Pacer`]
/// that the agent stream served on it uses to bound what HTTP/2 and TLS buffer.
#[derive(Debug)]
pub struct TlsIo {
    inner: PacedIo<konnectivity_tls::ServerTlsStream<TcpStream>>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

impl TlsIo {
    /// The connection's (local, peer) TCP addresses.
    pub fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.local.map(|local| (local, self.peer))
    }
}

/// What a request served on a [`TlsIo`] learns about its connection.
#[derive(Debug, Clone)]
pub struct AgentConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection's write pacer.
    pub pacer: Arc<Pacer>,
}

impl AsyncRead for TlsIo {
    konnectivity_tunnel::forward_io!(read inner);
}

impl AsyncWrite for TlsIo {
    konnectivity_tunnel::forward_io!(write inner);
}

impl Connected for TlsIo {
    type ConnectInfo = AgentConnInfo;
    fn connect_info(&self) -> AgentConnInfo {
        AgentConnInfo {
            peer: self.peer,
            pacer: self.inner.pacer().clone(),
        }
    }
}

/// Accepts TCP connections, completes TLS handshakes concurrently, and yields the
/// finished connections until `shutdown`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    what: &'static str,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<TlsIo, io::Error>> {
    let (tx, mut rx) = mpsc::channel::<TlsIo>(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(listener = what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let _ = sock.set_nodelay(true);
            let _ = set_notsent_lowat(&sock, NOTSENT_LOWAT);
            let local = sock.local_addr().ok();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(inner)) => {
                        let inner = PacedIo::new(inner, Pacer::new(PACER_LIMIT));
                        let _ = tx.send(TlsIo { inner, peer, local }).await;
                    }
                    Ok(Err(e)) => warn!(listener = what, %peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(listener = what, %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok)))
}
