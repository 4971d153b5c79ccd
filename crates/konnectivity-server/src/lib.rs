//! proxy-server: the control-plane end of the Konnectivity tunnel.
//!
//! Owns the listeners and the tasks behind them:
//! - [`backend`]: the agent listener's `AgentService.Connect` (one task per agent
//!   stream, dispatching without ever waiting on one connection);
//! - [`grpc_frontend`]: `ProxyService.Proxy` for konnectivity-client (kube-apiserver);
//! - [`connect_frontend`], for `--mode=http-connect`;
//! - [`socks5_frontend`], for `--socks5-port` / `--socks5-uds` (ours);
//! - [`stream_tunnel`]: the dial and splice both byte-stream frontends share;
//! - [`dial`]: what every frontend does to open and close a tunneled connection;
//! - [`state`]: the shared tables; [`metrics`]: the Prometheus metrics;
//! - [`status`]: `/status` (a typed JSON document) and the live `/status.html` page on
//!   the admin port, with the bounded history behind its charts;
//! - [`listen`]: accept loops and TLS handshakes;
//! - [`authority`]: accepts grpc-go's percent-encoded socket-path `:authority` (on the
//!   UNIX-socket gRPC frontend only);
//! - [`rpc`]: the adapter between tonic's router and the two streaming RPCs.
//!
//! Binding is the caller's job ([`Listeners`]); [`run`] serves until its shutdown token
//! is cancelled. The binary (`src/main.rs`) parses upstream's flags into [`Settings`].
#![deny(missing_docs)]

pub mod authority;
pub mod backend;
pub mod connect_frontend;
pub mod dial;
pub mod grpc_frontend;
pub mod listen;
pub mod metrics;
pub mod rpc;
pub mod socks5_frontend;
pub mod socks5_udp;
pub mod state;
pub mod status;
pub mod stream_tunnel;

use std::sync::Arc;
use std::time::Duration;

use konnectivity_runtime::endpoints::{self, Reply, Router};
use konnectivity_tls::ServerConfig;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

pub use state::{Settings, Shared};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A gRPC server failed.
    #[error("{what} server failed: {source}")]
    Transport {
        /// Which listener.
        what: &'static str,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// A frontend protocol paired with a listener that may not carry it.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// The frontend protocol (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// konnectivity-client over gRPC.
    Grpc,
    /// HTTP CONNECT.
    HttpConnect,
    /// SOCKS5 CONNECT (our extension, `--socks5-port` / `--socks5-uds`).
    Socks5,
}

/// The frontend listener: a UNIX socket (no TLS), or TCP with mTLS.
#[derive(Debug)]
pub enum FrontendListener {
    /// `--uds-name`.
    Uds(UnixListener),
    /// `--server-port` (or `--socks5-port` with `--socks5-tls-*`) with its TLS
    /// configuration (client certificates required).
    Tcp(TcpListener, Arc<ServerConfig>),
    /// Plain TCP, for the SOCKS5 frontend only (`--socks5-bind-address` is checked to
    /// be loopback unless `--socks5-auth-file` makes clients authenticate).
    Loopback(TcpListener),
}

/// One frontend: a protocol on a listener.
#[derive(Debug)]
pub struct Frontend {
    /// The protocol.
    pub mode: Mode,
    /// Where it listens.
    pub listener: FrontendListener,
}

/// Everything the server listens on, already bound.
#[derive(Debug)]
pub struct Listeners {
    /// Agent port, served with `agent_tls`.
    pub agent: TcpListener,
    /// TLS for the agent port.
    pub agent_tls: Arc<ServerConfig>,
    /// The frontends. The binary has exactly one, as upstream; the library (and
    /// `konnectivity demo`) may serve several at once.
    pub frontends: Vec<Frontend>,
    /// Health port (`/healthz`, `/readyz`, `/metrics`).
    pub health: Option<TcpListener>,
    /// Admin port (`/metrics`).
    pub admin: Option<TcpListener>,
}

/// The HTTP/2 settings of both gRPC listeners.
fn grpc_server(keepalive: Duration, stream_window: u32, conn_window: u32) -> Server {
    Server::builder()
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(conn_window)
        // kube-apiserver multiplexes many Proxy streams on one connection.
        .max_concurrent_streams(u32::MAX)
        .max_frame_size(256 * 1024)
        .http2_keepalive_interval(Some(keepalive))
        // A peer that does not answer a ping within the interval (at most 20 s, grpc's
        // default) is dead: its streams end, so its connections and pending dials are
        // cleaned up within two keepalive periods.
        .http2_keepalive_timeout(Some(keepalive.min(Duration::from_secs(20))))
        .tcp_nodelay(true)
}

/// The health port's routes (spec §8.1).
pub fn health_router(s: Arc<Shared>) -> Router {
    Arc::new(move |path, _query, _host| match path {
        "/healthz" => Reply::text(200, "ok"),
        "/readyz" | "/ready" => {
            if s.ready() {
                Reply::text(200, "ok")
            } else {
                Reply::text(500, "no connection to any proxy agent")
            }
        }
        "/metrics" => {
            s.refresh_scrape_gauges();
            Reply::metrics(s.metrics.render())
        }
        _ => Reply::not_found(),
    })
}

/// The admin port's routes.
pub fn admin_router(s: Arc<Shared>) -> Router {
    Arc::new(move |path, query, _host| match path {
        "/metrics" => {
            s.refresh_scrape_gauges();
            Reply::metrics(s.metrics.render())
        }
        "/status" => {
            let explain = query_value(query, "explain");
            Reply::json(status::json_explaining(&s, explain.as_deref()))
        }
        "/status.html" | "/" => {
            let mut r = Reply::text(200, status::PAGE);
            r.content_type = "text/html; charset=utf-8";
            r
        }
        _ => Reply::not_found(),
    })
}

/// The percent-decoded value of `key` in a URL query (`a=1&explain=10.0.0.1`); `None`
/// when absent, empty, badly escaped or not UTF-8 after decoding.
fn query_value(query: &str, key: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?;
    let out = konnectivity_config::identifiers::query_unescape_bytes(raw).ok()?;
    String::from_utf8(out).ok().filter(|v| !v.is_empty())
}

/// Serves until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    run_with(Shared::new(settings), listeners, shutdown).await
}

/// Like [`run`], with state the caller keeps a handle to (tests, the demo).
pub async fn run_with(
    shared: Arc<Shared>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let s = &shared.settings;

    let agent_incoming = listen::tls_incoming(
        listeners.agent,
        listeners.agent_tls,
        "agent",
        shutdown.clone(),
    );
    let agent_svc = rpc::Rpc(backend::AgentEndpoint::new(shared.clone()));
    let agent = grpc_server(s.agent_keepalive, 8 << 20, 32 << 20)
        .add_service(agent_svc)
        .serve_with_incoming_shutdown(agent_incoming, shutdown.clone().cancelled_owned());

    let frontends = futures::future::join_all(
        listeners
            .frontends
            .into_iter()
            .map(|f| serve_frontend(shared.clone(), f.mode, f.listener, shutdown.clone())),
    );

    if let Some(l) = listeners.health {
        tokio::spawn(endpoints::serve(
            l,
            health_router(shared.clone()),
            shutdown.clone(),
        ));
    }
    if let Some(l) = listeners.admin {
        tokio::spawn(endpoints::serve(
            l,
            admin_router(shared.clone()),
            shutdown.clone(),
        ));
    }
    tokio::spawn(shared.budget.clone().run_sweeper(shutdown.clone()));
    tokio::spawn(status::history::run_sampler(
        shared.clone(),
        shutdown.clone(),
    ));
    info!(server_id = %s.server_id, "proxy-server serving");
    let (a, f) = tokio::join!(agent, frontends);
    a.map_err(|source| ServerError::Transport {
        what: "agent",
        source,
    })?;
    f.into_iter().collect()
}

/// The next socket `accept` yields, `None` once `shutdown` fires. A failed accept (out
/// of descriptors, a connection reset before it was taken) is logged and retried after
/// 100 ms.
async fn next_socket<S, A, F>(shutdown: &CancellationToken, accept: impl Fn() -> F) -> Option<S>
where
    F: std::future::Future<Output = std::io::Result<(S, A)>>,
{
    loop {
        tokio::select! {
            r = accept() => match r {
                Ok((sock, _)) => return Some(sock),
                Err(e) => {
                    warn!(error = %e, "frontend accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

async fn serve_frontend(
    shared: Arc<Shared>,
    mode: Mode,
    listener: FrontendListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let s = &shared.settings;
    match (mode, listener) {
        (Mode::Grpc, l) => {
            let svc = rpc::Rpc(grpc_frontend::ProxyEndpoint::new(shared.clone()));
            let server = grpc_server(s.frontend_keepalive, 1 << 20, 16 << 20).add_service(svc);
            let done = shutdown.clone().cancelled_owned();
            match l {
                // grpc-go names a UNIX socket's path as the `:authority`, which the
                // HTTP/2 server refuses: only this listener needs the rewrite.
                FrontendListener::Uds(uds) => {
                    let incoming = futures::stream::poll_fn(move |cx| {
                        uds.poll_accept(cx)
                            .map(|r| Some(r.map(|(sock, _)| authority::AuthorityFix::new(sock))))
                    });
                    server.serve_with_incoming_shutdown(incoming, done).await
                }
                // Over TCP the client's authority is its dial target (`host:port`),
                // valid as it is: the connection goes to the HTTP/2 server untouched.
                FrontendListener::Tcp(tcp, tls) => {
                    let incoming = listen::tls_incoming(tcp, tls, "frontend", shutdown.clone());
                    server.serve_with_incoming_shutdown(incoming, done).await
                }
                FrontendListener::Loopback(_) => {
                    return Err(ServerError::Unsupported(
                        "a plain TCP listener serves only the SOCKS5 frontend",
                    ));
                }
            }
            .map_err(|source| ServerError::Transport {
                what: "frontend",
                source,
            })
        }
        (_, FrontendListener::Uds(uds)) => {
            while let Some(sock) = next_socket(&shutdown, || uds.accept()).await {
                spawn_stream_frontend(shared.clone(), mode, sock, None);
            }
            Ok(())
        }
        (Mode::Socks5, FrontendListener::Loopback(tcp)) => {
            while let Some(sock) = next_socket(&shutdown, || tcp.accept()).await {
                let _ = sock.set_nodelay(true);
                let origin = match (sock.local_addr(), sock.peer_addr()) {
                    (Ok(local), Ok(peer)) => Some(socks5_udp::Origin { local, peer }),
                    _ => None,
                };
                spawn_stream_frontend(shared.clone(), mode, sock, origin);
            }
            Ok(())
        }
        (Mode::HttpConnect, FrontendListener::Loopback(_)) => Err(ServerError::Unsupported(
            "a plain TCP listener serves only the SOCKS5 frontend",
        )),
        (_, FrontendListener::Tcp(tcp, tls)) => {
            use futures::StreamExt;
            let mut incoming =
                std::pin::pin!(listen::tls_incoming(tcp, tls, "frontend", shutdown.clone()));
            while let Some(Ok(sock)) = incoming.next().await {
                let origin = sock
                    .addresses()
                    .map(|(local, peer)| socks5_udp::Origin { local, peer });
                spawn_stream_frontend(shared.clone(), mode, sock, origin);
            }
            Ok(())
        }
    }
}

/// Serves one client of a byte-stream frontend (CONNECT or SOCKS5) in its own task;
/// `origin`: its TCP addresses, for SOCKS5 UDP ASSOCIATE.
fn spawn_stream_frontend<S>(
    shared: Arc<Shared>,
    mode: Mode,
    sock: S,
    origin: Option<socks5_udp::Origin>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match mode {
        Mode::Socks5 => tokio::spawn(socks5_frontend::serve(shared, sock, origin)),
        Mode::Grpc | Mode::HttpConnect => tokio::spawn(connect_frontend::serve(shared, sock)),
    };
}

#[cfg(test)]
mod tests {
    use super::query_value;

    #[test]
    fn query_values_are_found_and_percent_decoded() {
        assert_eq!(
            query_value("explain=10.0.0.1", "explain").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            query_value("a=1&explain=fd00%3A%3A1", "explain").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(query_value("explainer=x", "explain"), None);
        assert_eq!(query_value("explain=", "explain"), None);
        assert_eq!(query_value("", "explain"), None);
        assert_eq!(query_value("explain=%zz", "explain"), None);
    }
}
