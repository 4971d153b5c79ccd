//! `konnectivity demo`: the whole tunnel on loopback, in one process.
//!
//! Starts an HTTP backend (the "node"), a proxy-server with a gRPC frontend on a UNIX
//! socket and an HTTP-CONNECT frontend on mTLS TCP, and a proxy-agent, all with freshly
//! generated certificates. Then it sends one request through each frontend and one dial
//! to a closed port, prints what happened, and (unless `--once`) stays up and prints a
//! `curl` command that goes through the tunnel. The server's admin port serves the live
//! status page (`/status.html`), whose URL is printed.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use konnectivity_agent::{Agent, Hello};
use konnectivity_client::Frontend;
use konnectivity_server::{FrontendListener, Listeners, Mode, Settings, Shared};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

const BODY: &str = "hello from the node, through the tunnel\n";

/// GETs the demo backend's page over `io`, a connection through `frontend`, and returns
/// the response's status line.
async fn status_line<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: S,
    backend: std::net::SocketAddr,
    frontend: &str,
) -> anyhow::Result<String> {
    let rsp = http_get(io, &backend.to_string()).await?;
    anyhow::ensure!(
        rsp.ends_with(BODY),
        "unexpected response through the {frontend}: {rsp:?}"
    );
    Ok(rsp.lines().next().unwrap_or("").to_owned())
}

async fn http_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
    host: &str,
) -> anyhow::Result<String> {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    io.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    let want = BODY.len();
    let mut buf = [0u8; 4096];
    // The demo backend keeps connections alive; stop once the body has arrived.
    while !String::from_utf8_lossy(&out).ends_with(BODY) {
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await??;
        if n == 0 || out.len() > 64 * 1024 + want {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Runs the demo.
pub async fn run(once: bool, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let pki = konnectivity_testkit::pki::generate(&dir.join("pki"), &[])?;
    println!(
        "konnectivity demo — everything on loopback, certificates in {}",
        pki.dir.display()
    );

    let backend = konnectivity_testkit::servers::http_hello("127.0.0.1:0", BODY).await?;
    println!("  node backend (HTTP)        http://{backend}/");

    let agent_l = TcpListener::bind("127.0.0.1:0").await?;
    let agent_port = agent_l.local_addr()?.port();
    let connect_l = TcpListener::bind("127.0.0.1:0").await?;
    let connect_addr = connect_l.local_addr()?;
    let health_l = TcpListener::bind("127.0.0.1:0").await?;
    let health_addr = health_l.local_addr()?;
    let admin_l = TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = admin_l.local_addr()?;
    let uds = dir.join("konnectivity-server.socket");
    let _ = std::fs::remove_file(&uds);
    let uds_l = UnixListener::bind(&uds)?;

    let agent_tls = konnectivity_tls::agent_listener(
        &pki.server_cert,
        &pki.server_key,
        Some(&pki.ca),
        Default::default(),
    )?;
    let connect_tls = konnectivity_tls::frontend_listener(
        &pki.server_cert,
        &pki.server_key,
        &pki.ca,
        true,
        Default::default(),
    )?;
    let shutdown = CancellationToken::new();
    let shared = Shared::new(Settings {
        server_id: "demo-server".into(),
        ..Settings::default()
    });
    let listeners = Listeners {
        agent: agent_l,
        agent_tls: Arc::new(agent_tls),
        frontends: vec![
            konnectivity_server::Frontend {
                mode: Mode::Grpc,
                listener: FrontendListener::Uds(uds_l),
            },
            konnectivity_server::Frontend {
                mode: Mode::HttpConnect,
                listener: FrontendListener::Tcp(connect_l, Arc::new(connect_tls)),
            },
        ],
        health: Some(health_l),
        admin: Some(admin_l),
    };
    let server = tokio::spawn(konnectivity_server::run_with(
        shared.clone(),
        listeners,
        shutdown.clone(),
    ));
    println!(
        "  proxy-server               agent port 127.0.0.1:{agent_port}, gRPC frontend {}, HTTP-CONNECT frontend {connect_addr} (mTLS)",
        uds.display()
    );
    println!(
        "                             health http://{health_addr}/readyz  metrics http://{health_addr}/metrics"
    );
    println!("                             status page http://{admin_addr}/status.html");

    let agent_tls =
        konnectivity_tls::agent_client(&pki.ca, Some((&pki.agent_cert, &pki.agent_key)), &[])?;
    let hello = Hello {
        identifiers: "host=demo-node&ipv4=127.0.0.1".into(),
        ..Hello::new("demo-node")
    };
    let agent = Agent::new(konnectivity_agent::Settings {
        sync_interval: Duration::from_millis(200),
        sync_interval_cap: Duration::from_secs(2),
        ..konnectivity_agent::Settings::new(
            vec!["127.0.0.1".into()],
            agent_port,
            Arc::new(agent_tls),
            hello,
        )
    });
    let drain = CancellationToken::new();
    let agent_task = tokio::spawn(konnectivity_agent::run(
        agent,
        None,
        None,
        drain,
        shutdown.clone(),
    ));

    let started = Instant::now();
    while !shared.ready() {
        if started.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("the agent did not connect within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "  proxy-agent \"demo-node\"    connected after {:?}\n",
        started.elapsed()
    );

    let t = Instant::now();
    let io = konnectivity_client::grpc_dial(
        &Frontend::Uds(uds.clone()),
        &backend.to_string(),
        Duration::from_secs(10),
    )
    .await?;
    let status = status_line(io, backend, "gRPC frontend").await?;
    println!(
        "[1] gRPC frontend (what kube-apiserver uses):  GET http://{backend}/  ->  {status:?}  in {:?}",
        t.elapsed()
    );

    let client_tls = konnectivity_tls::client(
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
        &[b"http/1.1"],
    )?;
    let f = Frontend::Tcp {
        addr: connect_addr.to_string(),
        tls: Arc::new(client_tls),
        server_name: "localhost".into(),
    };
    let t = Instant::now();
    let (io, _) =
        konnectivity_client::connect_dial(&f, &backend.to_string(), Duration::from_secs(10))
            .await?;
    let status = status_line(io, backend, "HTTP-CONNECT frontend").await?;
    println!(
        "[2] HTTP-CONNECT frontend (mTLS):              GET http://{backend}/  ->  {status:?}  in {:?}",
        t.elapsed()
    );
    println!("    body: {}", BODY.trim_end());

    // A dial that fails, so the status page has a failure to show.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    match konnectivity_client::grpc_dial(
        &Frontend::Uds(uds.clone()),
        &closed.to_string(),
        Duration::from_secs(10),
    )
    .await
    {
        Ok(_) => anyhow::bail!("a dial to the closed port {closed} succeeded"),
        Err(e) => println!("[3] a dial to a closed port fails, as it should: {closed}  ->  {e}"),
    }

    if once {
        shutdown.cancel();
        let _ = server.await;
        let _ = agent_task.await;
        println!("\ndemo OK");
        return Ok(());
    }
    println!("\nThe tunnel stays up. Go through it yourself with curl (HTTP CONNECT over mTLS):\n");
    println!(
        "  curl --proxytunnel -x https://localhost:{} --proxy-cacert {} --proxy-cert {} --proxy-key {} http://{backend}/\n",
        connect_addr.port(),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    println!("or with the gRPC frontend, as kube-apiserver does:\n");
    println!(
        "  printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' | cargo run -q --bin konnectivity -- dial --uds {} {backend}\n",
        uds.display()
    );
    println!(
        "Watch the agent, its connections and its throughput live on the status page:\n\n  http://{admin_addr}/status.html\n"
    );
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!("konnectivity-demo-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
