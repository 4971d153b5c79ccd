//! The in-process harness: a real proxy-server ([`konnectivity_server::run_with`]) and
//! real proxy-agents ([`konnectivity_agent::run`]) in the test's own process, talking
//! over loopback exactly as the binaries do.
//!
//! - the agent link is TCP on `127.0.0.1` with mutual TLS from a fresh [`pki`] (put a
//!   [`Relay`](crate::relay::Relay) in between to freeze or cut it);
//! - the server has three frontends on UNIX sockets in the harness's temp dir: SOCKS5
//!   ([`Server::socks5`]), gRPC
//!   (`ProxyService.Proxy`, reached with [`konnectivity_client::grpc_dial`] or a
//!   [`RawProxy`] stream) and HTTP CONNECT ([`konnectivity_client::connect_dial`]).
//!
//! Everything the proxy does with time goes through tokio, so tests run on a paused
//! clock (`#[tokio::test(start_paused = true)]`): tokio advances it to the next timer
//! whenever the runtime has nothing to do, and loopback I/O completes inside the
//! syscalls, so a 60 s deadline takes microseconds of wall time. TLS certificate
//! validity is checked against the real clock (rustls reads the system time), which
//! the paused clock does not touch.
//!
//! A harness also holds a wall-clock [`Watchdog`]: a test that hangs in a way the
//! paused clock cannot end (no timer left, nothing to wake it) aborts the test binary
//! with its name after [`WALL_LIMIT`] instead of hanging CI.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use konnectivity_agent::Hello;
use konnectivity_client::{ClientError, Frontend, GrpcStream};
use konnectivity_core::Packet;
use konnectivity_server::state::Backend;
use konnectivity_server::{FrontendListener, Listeners, Mode, Settings, Shared};
use konnectivity_tunnel::grpc::{PacketBody, PacketReader};
use konnectivity_tunnel::outbound::{self, StreamTx};
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pki::{self, Pki};

/// Wall time after which a harness's watchdog aborts the test binary.
pub const WALL_LIMIT: Duration = Duration::from_secs(60);

/// How long (on the test's clock) a frontend client waits for its dial.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// A temp dir with certificates, from which servers and agents are started.
#[derive(Debug)]
pub struct Harness {
    dir: tempfile::TempDir,
    pki: Pki,
    sockets: AtomicUsize,
    _watchdog: Watchdog,
}

impl Harness {
    /// A fresh PKI in a new temp dir, and a watchdog named after the current thread
    /// (libtest names it after the test).
    pub fn new() -> anyhow::Result<Self> {
        konnectivity_tls::install_provider();
        let name = std::thread::current()
            .name()
            .unwrap_or("in-process test")
            .to_owned();
        let dir = tempfile::Builder::new().prefix("knp-inproc").tempdir()?;
        let pki = pki::generate(&dir.path().join("pki"), &[])?;
        Ok(Self {
            dir,
            pki,
            sockets: AtomicUsize::new(0),
            _watchdog: Watchdog::start(name, WALL_LIMIT),
        })
    }

    /// Settings the tests start from: upstream's defaults with our limits, the server
    /// ID `inproc-server`.
    pub fn server_settings() -> Settings {
        Settings {
            server_id: "inproc-server".into(),
            ..Settings::default()
        }
    }

    /// A fresh path for a UNIX socket in the harness's temp dir, `<name>-<n>.sock`.
    pub fn socket_path(&self, name: &str) -> std::path::PathBuf {
        let n = self.sockets.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("{name}-{n}.sock"))
    }

    /// Starts a server with `settings` on a fresh agent port and three frontend sockets
    /// (gRPC, HTTP CONNECT, SOCKS5).
    pub async fn server(&self, settings: Settings) -> anyhow::Result<Server> {
        let n = self.sockets.fetch_add(1, Ordering::Relaxed);
        let agent = TcpListener::bind("127.0.0.1:0").await?;
        let agent_addr = agent.local_addr()?;
        let grpc_path = self.dir.path().join(format!("grpc-{n}.sock"));
        let connect_path = self.dir.path().join(format!("connect-{n}.sock"));
        let grpc_l = UnixListener::bind(&grpc_path)?;
        let connect_l = UnixListener::bind(&connect_path)?;
        let socks5_path = self.dir.path().join(format!("socks5-{n}.sock"));
        let socks5_l = UnixListener::bind(&socks5_path)?;
        let agent_tls = konnectivity_tls::agent_listener(
            &self.pki.server_cert,
            &self.pki.server_key,
            Some(&self.pki.ca),
            Default::default(),
        )?;
        let listeners = Listeners {
            agent,
            agent_tls: Arc::new(agent_tls),
            frontends: vec![
                konnectivity_server::Frontend {
                    mode: Mode::Grpc,
                    listener: FrontendListener::Uds(grpc_l),
                },
                konnectivity_server::Frontend {
                    mode: Mode::HttpConnect,
                    listener: FrontendListener::Uds(connect_l),
                },
                konnectivity_server::Frontend {
                    mode: Mode::Socks5,
                    listener: FrontendListener::Uds(socks5_l),
                },
            ],
            health: None,
            admin: None,
        };
        let shared = Shared::new(settings);
        let shutdown = CancellationToken::new();
        tokio::spawn(konnectivity_server::run_with(
            shared.clone(),
            listeners,
            shutdown.clone(),
        ));
        Ok(Server {
            shared,
            agent_addr,
            grpc: Frontend::Uds(grpc_path),
            connect: Frontend::Uds(connect_path),
            socks5: socks5_path,
            shutdown,
        })
    }

    /// Settings for an agent `agent_id` that dials `server` (a server's
    /// [`Server::agent_addr`] or a relay in front of it): upstream's sync defaults
    /// (1 s, capped at 10 s), keepalive off in practice (1 h), flow control on.
    pub fn agent_settings(
        &self,
        agent_id: &str,
        server: SocketAddr,
    ) -> anyhow::Result<konnectivity_agent::Settings> {
        let tls = konnectivity_tls::agent_client(
            &self.pki.ca,
            Some((&self.pki.agent_cert, &self.pki.agent_key)),
            &[],
        )?;
        Ok(konnectivity_agent::Settings::new(
            vec![server.ip().to_string()],
            server.port(),
            Arc::new(tls),
            Hello::new(agent_id),
        ))
    }

    /// Starts an agent (its sync loop, no health ports).
    pub fn agent(&self, settings: konnectivity_agent::Settings) -> Agent {
        let agent = konnectivity_agent::Agent::new(settings);
        let drain = CancellationToken::new();
        let stop = CancellationToken::new();
        tokio::spawn(konnectivity_agent::run(
            agent.clone(),
            None,
            None,
            drain.clone(),
            stop.clone(),
        ));
        Agent { agent, drain, stop }
    }
}

/// A running proxy-server. Shut down when dropped.
#[derive(Debug)]
pub struct Server {
    /// Its state: backends, pending dials, metrics.
    pub shared: Arc<Shared>,
    /// The agent port.
    pub agent_addr: SocketAddr,
    /// The gRPC frontend (UNIX socket).
    pub grpc: Frontend,
    /// The HTTP-CONNECT frontend (UNIX socket).
    pub connect: Frontend,
    /// The SOCKS5 frontend's UNIX socket.
    pub socks5: std::path::PathBuf,
    /// Cancelled on drop.
    shutdown: CancellationToken,
}

impl Server {
    /// The agent streams the server holds, in no particular order.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.shared
            .table()
            .entries()
            .into_iter()
            .map(|(b, _)| b)
            .collect()
    }

    /// Dials `address` through the gRPC frontend.
    pub async fn grpc_dial(&self, address: impl ToString) -> Result<GrpcStream, ClientError> {
        konnectivity_client::grpc_dial(&self.grpc, &address.to_string(), CLIENT_TIMEOUT).await
    }

    /// Dials `address` through the gRPC frontend with `DialRequest.protocol "udp"`.
    pub async fn udp_dial(&self, address: impl ToString) -> Result<GrpcStream, ClientError> {
        konnectivity_client::grpc_dial_protocol(
            &self.grpc,
            "udp",
            &address.to_string(),
            CLIENT_TIMEOUT,
        )
        .await
    }

    /// Dials `address` through the HTTP-CONNECT frontend.
    pub async fn connect_dial(
        &self,
        address: impl ToString,
    ) -> Result<(Pin<Box<dyn konnectivity_client::Io>>, Bytes), ClientError> {
        konnectivity_client::connect_dial(&self.connect, &address.to_string(), CLIENT_TIMEOUT).await
    }

    /// Opens a `ProxyService.Proxy` stream on its own HTTP/2 connection, to send and
    /// receive raw packets (what a hostile or buggy frontend would do).
    pub async fn raw_proxy(&self) -> anyhow::Result<RawProxy> {
        let Frontend::Uds(path) = &self.grpc else {
            anyhow::bail!("the harness's gRPC frontend is a UNIX socket");
        };
        let io = UnixStream::connect(path).await?;
        RawProxy::open(io).await
    }

    /// Waits (on the test's clock, at most 30 s) until the server holds `n` agent
    /// streams.
    pub async fn wait_for_agents(&self, n: usize) -> anyhow::Result<()> {
        eventually(
            &format!("{n} agent streams on the server"),
            Duration::from_secs(30),
            || self.shared.table().streams() == n,
        )
        .await
    }

    /// Stops the server's listeners and tasks (as dropping it does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A running proxy-agent. Stopped when dropped.
#[derive(Debug)]
pub struct Agent {
    /// Its state: connected servers, metrics.
    pub agent: Arc<konnectivity_agent::Agent>,
    /// Cancelled to drain (SIGTERM in the binary).
    drain: CancellationToken,
    /// Cancelled to stop (a second signal).
    stop: CancellationToken,
}

impl Agent {
    /// Sends DRAIN to every server; the agent keeps serving.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// Closes every stream and stops the sync loop.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// How many connections to destinations the agent holds open now.
    pub fn open_endpoints(&self) -> i64 {
        self.agent
            .metrics
            .open_endpoint_connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (on the test's clock, at most `within`) until the agent holds `n`
    /// connections to destinations; `what` names the wait in the error.
    pub async fn wait_endpoints(&self, what: &str, n: i64, within: Duration) -> anyhow::Result<()> {
        eventually(what, within, || self.open_endpoints() == n).await
    }

    /// Waits (on the test's clock, at most 30 s) until the agent has `n` servers.
    pub async fn wait_connected(&self, n: usize) -> anyhow::Result<()> {
        eventually(
            &format!("agent connected to {n} servers"),
            Duration::from_secs(30),
            || self.agent.connected() == n,
        )
        .await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `cond` every 10 ms of the test's clock until it holds, for at most `within`.
pub async fn eventually(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            anyhow::bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A `ProxyService.Proxy` stream driven packet by packet.
pub struct RawProxy {
    /// Packets to the server (DIAL_REQ, DATA, CLOSE_REQ, DIAL_CLS).
    pub tx: StreamTx,
    rx: PacketReader<hyper::body::Incoming>,
}

impl std::fmt::Debug for RawProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawProxy").finish_non_exhaustive()
    }
}

impl RawProxy {
    /// Opens the stream over `io` (a frontend connection).
    pub async fn open<I>(io: I) -> anyhow::Result<Self>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, PacketBody>(TokioIo::new(io))
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (tx, out) = outbound::channel();
        let mut req = http::Request::new(PacketBody::request(out));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() =
            format!("http://konnectivity{}", konnectivity_proto::PROXY_PATH).parse()?;
        let h = req.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        let rsp = send.send_request(req).await?;
        Ok(Self {
            tx,
            rx: PacketReader::new(rsp.into_body(), 16 << 20),
        })
    }

    /// Sends one packet, in order with the ones before it.
    pub async fn send(&self, p: Packet) -> anyhow::Result<()> {
        Ok(self.tx.send(p).await?)
    }

    /// The next packet from the server; `None` when the stream ended.
    pub async fn recv(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(self.rx.message().await?)
    }
}

/// Aborts the process if not dropped within its wall-clock limit: the last resort
/// against a test the paused clock cannot end.
#[derive(Debug)]
pub struct Watchdog {
    /// Dropping it tells the watchdog thread the test finished.
    _done: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    /// Starts the watchdog for the test `name`.
    pub fn start(name: String, limit: Duration) -> Self {
        let (done, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{name}: still running after {limit:?} of wall time; aborting");
                std::process::abort();
            }
        });
        Self { _done: done }
    }
}
