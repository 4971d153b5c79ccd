//! The in-process world: a proxy-server (gRPC, HTTP-CONNECT and SOCKS5 frontends on
//! UNIX sockets) and a proxy-agent started with the library APIs inside the bench
//! process, the backends with their null-tunnel entrances, and the paths ([`PathKind`])
//! a client can take to a backend: direct, the two null tunnels, and the three
//! frontends.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use konnectivity_agent::{Agent, Hello};
use konnectivity_client::{Frontend, Io};
use konnectivity_server::{FrontendListener, Listeners, Mode, Settings, Shared};
use konnectivity_testkit::pki::Pki;
use konnectivity_tls::ClientConfig;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::DIAL;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PathKind {
    Direct,
    NullPlain,
    NullTls,
    Grpc,
    Connect,
    Socks5,
}

impl PathKind {
    pub(crate) fn key(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::NullPlain => "null_plain",
            PathKind::NullTls => "null_tls",
            PathKind::Grpc => "grpc_uds",
            PathKind::Connect => "http_connect_uds",
            PathKind::Socks5 => "socks5_uds",
        }
    }
}

/// One backend and its null-tunnel entrances.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) null_plain: SocketAddr,
    pub(crate) null_tls: SocketAddr,
}

pub(crate) type BoxIo = Box<dyn Io>;

/// The in-process world: backends, null tunnels, and the tunnel's frontends.
pub(crate) struct World {
    pub(crate) source: Target,
    pub(crate) sink: Target,
    pub(crate) echo: Target,
    pub(crate) frontends: Frontends,
}

/// The in-process proxy-server's frontends, each on a UNIX socket of its own.
#[derive(Debug, Clone)]
pub(crate) struct Frontends {
    pub(crate) grpc: Frontend,
    pub(crate) connect: Frontend,
    /// The SOCKS5 frontend's UNIX socket (`--socks5-uds`).
    pub(crate) socks5: PathBuf,
}

pub(crate) async fn tcp(addr: SocketAddr) -> anyhow::Result<BoxIo> {
    let s = tokio::time::timeout(DIAL, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let _ = s.set_nodelay(true);
    Ok(Box::new(s))
}

/// `addr` through a gRPC frontend (one Proxy stream on its own HTTP/2 connection).
pub(crate) async fn grpc(f: &Frontend, addr: SocketAddr) -> anyhow::Result<BoxIo> {
    Ok(Box::new(
        konnectivity_client::grpc_dial(f, &addr.to_string(), DIAL).await?,
    ))
}

/// `addr` through an HTTP-CONNECT frontend.
pub(crate) async fn connect(f: &Frontend, addr: SocketAddr) -> anyhow::Result<BoxIo> {
    let (io, rest) = konnectivity_client::connect_dial(f, &addr.to_string(), DIAL).await?;
    ensure!(
        rest.is_empty(),
        "unexpected bytes after the CONNECT response"
    );
    Ok(std::pin::Pin::into_inner(io))
}

/// `addr` through a SOCKS5 frontend (CONNECT, no authentication) at `proxy`
/// (`host:port` or a UNIX socket path).
pub(crate) async fn socks5(proxy: &str, addr: SocketAddr) -> anyhow::Result<BoxIo> {
    let (io, rest) = konnectivity_client::socks5_dial(proxy, &addr.to_string(), DIAL).await?;
    ensure!(rest.is_empty(), "unexpected bytes after the SOCKS5 reply");
    Ok(io)
}

impl World {
    pub(crate) async fn open(&self, p: PathKind, t: &Target) -> anyhow::Result<BoxIo> {
        match p {
            PathKind::Direct => tcp(t.addr).await,
            PathKind::NullPlain => tcp(t.null_plain).await,
            PathKind::NullTls => tcp(t.null_tls).await,
            PathKind::Grpc => grpc(&self.frontends.grpc, t.addr).await,
            PathKind::Connect => connect(&self.frontends.connect, t.addr).await,
            PathKind::Socks5 => socks5(&self.frontends.socks5.display().to_string(), t.addr).await,
        }
    }
}

pub(crate) struct InProc {
    pub(crate) shutdown: CancellationToken,
    pub(crate) server: tokio::task::JoinHandle<Result<(), konnectivity_server::ServerError>>,
    pub(crate) agent: tokio::task::JoinHandle<()>,
}

/// Starts the in-process proxy-server and proxy-agent with flow-control window
/// `window`; returns once the agent is connected.
pub(crate) async fn start_inproc(
    pki: &Pki,
    dir: &Path,
    window: u32,
) -> anyhow::Result<(InProc, Frontends)> {
    let agent_l = TcpListener::bind("127.0.0.1:0").await?;
    let agent_port = agent_l.local_addr()?.port();
    let grpc_sock = dir.join("grpc.sock");
    let connect_sock = dir.join("connect.sock");
    let socks5_sock = dir.join("socks5.sock");
    // Each frontend on a UNIX socket of its own.
    let mut frontends = Vec::new();
    for (mode, sock) in [
        (Mode::Grpc, &grpc_sock),
        (Mode::HttpConnect, &connect_sock),
        (Mode::Socks5, &socks5_sock),
    ] {
        let _ = std::fs::remove_file(sock);
        let listener = FrontendListener::Uds(UnixListener::bind(sock)?);
        frontends.push(konnectivity_server::Frontend { mode, listener });
    }
    let shutdown = CancellationToken::new();
    let shared = Shared::new(Settings {
        server_id: "bench-server".into(),
        flow_window: Some(window),
        ..Settings::default()
    });
    let (cert, key) = (&pki.server_cert, &pki.server_key);
    let agent_tls = konnectivity_tls::agent_listener(cert, key, Some(&pki.ca), Default::default());
    let listeners = Listeners {
        agent: agent_l,
        agent_tls: Arc::new(agent_tls?),
        frontends,
        health: None,
        admin: None,
    };
    let server = tokio::spawn(konnectivity_server::run_with(
        shared.clone(),
        listeners,
        shutdown.clone(),
    ));
    let tls =
        konnectivity_tls::agent_client(&pki.ca, Some((&pki.agent_cert, &pki.agent_key)), &[])?;
    let mut settings = agent_settings(
        agent_port,
        Arc::new(tls),
        "bench-node".into(),
        Duration::from_millis(200),
        Duration::from_secs(2),
    );
    settings.hello.flow_window = Some(window);
    let agent = Agent::new(settings);
    let agent = tokio::spawn(konnectivity_agent::run(
        agent,
        None,
        None,
        CancellationToken::new(),
        shutdown.clone(),
    ));
    let started = Instant::now();
    while !shared.ready() {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the in-process agent did not connect within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((
        InProc {
            shutdown,
            server,
            agent,
        },
        Frontends {
            grpc: Frontend::Uds(grpc_sock),
            connect: Frontend::Uds(connect_sock),
            socks5: socks5_sock,
        },
    ))
}

pub(crate) fn agent_settings(
    port: u16,
    tls: Arc<ClientConfig>,
    agent_id: String,
    sync_interval: Duration,
    sync_interval_cap: Duration,
) -> konnectivity_agent::Settings {
    konnectivity_agent::Settings {
        sync_interval,
        sync_interval_cap,
        ..konnectivity_agent::Settings::new(
            vec!["127.0.0.1".into()],
            port,
            tls,
            Hello::new(agent_id),
        )
    }
}
