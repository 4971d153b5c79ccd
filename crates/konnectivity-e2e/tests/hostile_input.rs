//! Hostile and broken peers against a real proxy-server: every case gets a clear error,
//! the server never crashes, a healthy transfer running beside the cases is never
//! disturbed, and file descriptors and memory return to their baseline.
//!
//! Frontend isolation (issue 15) is one case of the matrix run against both servers: a
//! victim tunnel of the real Go konnectivity-client, and hostile raw `Proxy` streams
//! naming the victim's connect ID. Ours refuses them; upstream's is cross-wired (a
//! documented difference, `docs/compatibility.md`).
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use konnectivity_agent::Hello;
use konnectivity_client::{ClientError, Frontend, grpc_dial};
use konnectivity_core::packet::{self, Kind};
use konnectivity_core::{Packet, PacketType};
use konnectivity_e2e::*;
use konnectivity_proto::proxy_service_client::ProxyServiceClient;
use konnectivity_testkit::{pki, servers};
use konnectivity_tunnel::outbound;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Endpoint, Uri};

const T: Duration = Duration::from_secs(10);

/// The proxy-server under test in the isolation matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// konnectivity-rs, with our agent.
    Ours,
    /// Upstream v0.36.0 (`target/upstream`), with upstream's agent.
    Upstream,
}

/// Builds the Go interop program once per test process.
fn interop_bin() -> anyhow::Result<PathBuf> {
    konnectivity_testkit::go_interop::build(&bin_dir().join("konnectivity-interop-victim"))
}

/// A tunnel of the real Go konnectivity-client to an echo server (`victim.go`), driven
/// one step at a time. Killed on drop.
struct GoVictim {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl GoVictim {
    fn open(sock: &Path, echo: SocketAddr) -> anyhow::Result<Self> {
        let mut child = std::process::Command::new(interop_bin()?)
            .arg(format!("-uds={}", sock.display()))
            .arg(format!("-victim-echo={echo}"))
            .arg("-victim-window=1s")
            .arg("-timeout=60s")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut v = Self {
            child,
            stdin,
            lines,
        };
        let ready = v.line()?;
        anyhow::ensure!(ready == "VICTIM READY", "the Go victim said {ready:?}");
        Ok(v)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        tokio::task::block_in_place(|| self.lines.recv_timeout(T))
            .map_err(|e| anyhow::anyhow!("no line from the Go victim: {e}"))
    }

    /// Writes `text` through the tunnel and returns what came back within a second,
    /// as the Go program reports it.
    fn echo(&mut self, text: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "echo {text}")?;
        self.stdin.flush()?;
        self.line()
    }
}

impl Drop for GoVictim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw Proxy stream with a dial of its own to `dest`: the stream and its connect ID.
async fn hostile_with_own_dial(
    sock: &Path,
    dest: SocketAddr,
    random: i64,
) -> anyhow::Result<(RawFrontend, i64)> {
    let dial = packet::dial_req("tcp", &dest.to_string(), random);
    let open = RawFrontend::open_with(sock, Some(dial));
    let mut f = tokio::time::timeout(T, open).await??;
    let rsp = f.next().await?;
    anyhow::ensure!(
        packet::kind(&rsp) == Kind::Known(PacketType::DialRsp),
        "expected DIAL_RSP, got {rsp:?}"
    );
    let r = packet::dial_response(&rsp);
    anyhow::ensure!(r.error.is_empty(), "hostile dial failed: {}", r.error);
    Ok((f, r.connect_id))
}

/// What the victim reported for one step.
fn received(text: &str, closed: bool) -> String {
    format!("VICTIM RECEIVED {text:?} CLOSED={closed}")
}

/// The isolation case: a Go-client victim, then hostile streams that each dial the
/// echo server and name one of the small sequential connect IDs (1..=3) in DATA, then
/// (on fresh streams, so upstream's one-ID-per-stream check does not interfere) in
/// CLOSE_REQ. Returns what the victim saw after each phase.
async fn foreign_connect_ids_against(
    which: Server,
) -> anyhow::Result<(String, String, Option<f64>)> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let spec = ServerSpec::grpc_uds(sock.clone());
    let (server, agent) = match which {
        Server::Ours => (ServerKind::Ours, AgentKind::Ours),
        Server::Upstream => (ServerKind::Upstreams, AgentKind::Upstreams),
    };
    let Loopback {
        server: _server,
        ports,
        agent: _agent,
        ..
    } = start_pair(server, agent, &pki, &spec, &[], dir.path())?;
    let echo = servers::echo("127.0.0.1:0").await?;
    let mut victim = GoVictim::open(&sock, echo)?;

    let mut hostile = Vec::new();
    for (n, target) in (1..=3).enumerate() {
        let (f, own) = hostile_with_own_dial(&sock, echo, 1_000 + n as i64).await?;
        if own != target {
            f.tx.send(packet::data(target, Bytes::from_static(b"INJECTED")))
                .await?;
        }
        hostile.push(f);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_data = victim.echo("ok")?;

    for (n, target) in (1..=3).enumerate() {
        let (f, own) = hostile_with_own_dial(&sock, echo, 2_000 + n as i64).await?;
        if own != target {
            f.tx.send(packet::close_req(target)).await?;
        }
        hostile.push(f);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_close = victim.echo("still-open")?;
    let foreign = scrape_metric(
        &format!("127.0.0.1:{}", ports.health),
        "konnectivity_rs_server_foreign_connect_id_total",
    );
    println!(
        "{which:?}: after DATA {after_data:?}; after CLOSE_REQ {after_close:?}; refused {foreign:?}"
    );
    Ok((after_data, after_close, foreign))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_cannot_write_into_or_close_another_frontends_connection() -> anyhow::Result<()>
{
    let (after_data, after_close, foreign) = foreign_connect_ids_against(Server::Ours).await?;
    assert_eq!(after_data, received("ok", false), "no injected byte");
    assert_eq!(after_close, received("still-open", false), "not closed");
    // Three DATA and three CLOSE_REQ named the victim or another hostile stream's ID.
    assert_eq!(foreign, Some(6.0));
    Ok(())
}

/// Documented difference (docs/compatibility.md): upstream forwards whatever connect ID
/// a frontend names, so the hostile streams reach the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_lets_a_frontend_write_into_and_close_another_frontends_connection()
-> anyhow::Result<()> {
    let (after_data, after_close, foreign) = foreign_connect_ids_against(Server::Upstream).await?;
    // The victim's echo returns the hostile stream's bytes ahead of its own...
    assert_eq!(after_data, received("INJECTEDok", false));
    // ...and the hostile CLOSE_REQ closes it.
    assert_eq!(after_close, received("", true));
    assert_eq!(foreign, None, "upstream has no such metric");
    Ok(())
}

/// A raw Proxy stream over the UDS frontend: send any packet, read what comes back.
struct RawFrontend {
    tx: outbound::StreamTx,
    rx: tonic::Streaming<Packet>,
}

impl RawFrontend {
    async fn open(sock: &Path) -> anyhow::Result<Self> {
        Self::open_with(sock, None).await
    }

    /// Opens the stream with `first` already queued: grpc-go servers (upstream) send
    /// their response headers only with the first response, so the call returns only
    /// after the server answered something.
    async fn open_with(sock: &Path, first: Option<Packet>) -> anyhow::Result<Self> {
        let sock = sock.to_owned();
        let connector = tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(sock)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        });
        let ch = Endpoint::from_static("http://x")
            .connect_with_connector(connector)
            .await?;
        let (tx, out) = outbound::channel();
        if let Some(p) = first {
            tx.send(p).await?;
        }
        let rx = ProxyServiceClient::new(ch).proxy(out).await?.into_inner();
        Ok(Self { tx, rx })
    }
    async fn next(&mut self) -> anyhow::Result<Packet> {
        Ok(tokio::time::timeout(T, self.rx.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))??)
    }
}

/// Echo round trips through the tunnel, continuously, counting failures.
fn healthy_traffic(
    sock: PathBuf,
    echo: SocketAddr,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let (o, b) = (ok.clone(), bad.clone());
    let h = tokio::spawn(async move {
        let mut conn = None;
        while !stop.load(Ordering::Relaxed) {
            if conn.is_none() {
                match grpc_dial(&Frontend::Uds(sock.clone()), &echo.to_string(), T).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        eprintln!("healthy dial failed: {e}");
                        b.fetch_add(1, Ordering::Relaxed);
                        // Never spin: a dead server must not turn this into a busy loop.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let msg = [7u8; 4096];
            let mut back = [0u8; 4096];
            let r = tokio::time::timeout(T, async {
                c.write_all(&msg).await?;
                c.read_exact(&mut back).await?;
                Ok::<_, std::io::Error>(())
            })
            .await;
            if matches!(r, Ok(Ok(()))) && back == msg {
                o.fetch_add(1, Ordering::Relaxed);
            } else {
                eprintln!("healthy round trip failed: {r:?}");
                b.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    });
    (h, ok, bad)
}

fn tls_agent(pki_ca: &Path, cert: &Path, key: &Path) -> Arc<konnectivity_tls::ClientConfig> {
    konnectivity_tls::install_provider();
    Arc::new(konnectivity_tls::agent_client(pki_ca, Some((cert, key)), &[]).expect("agent TLS"))
}

/// Opens an agent's Connect stream to `addr` (as `localhost`) with `tls` and `hello`.
async fn agent_stream(
    addr: SocketAddr,
    tls: Arc<konnectivity_tls::ClientConfig>,
    hello: &Hello,
) -> Result<konnectivity_agent::stream::ServerStream, konnectivity_agent::stream::OpenError> {
    konnectivity_agent::stream::open("localhost", addr, tls, hello, T, None).await
}

fn hello(id: &str, identifiers: &str) -> Hello {
    Hello {
        agent_id: id.into(),
        identifiers: identifiers.into(),
        token_path: None,
        flow_window: Some(1 << 20),
        probe: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_clear_errors_and_leave_healthy_traffic_and_resources_intact()
-> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let other = pki::generate(&dir.path().join("other-pki"), &[])?;
    let sock = dir.path().join("s.sock");
    let spec = ServerSpec {
        extra: vec![
            "--proxy-strategies=destHost".into(),
            "--max-pending-dials-per-agent=20".into(),
        ],
        ..ServerSpec::grpc_uds(sock.clone())
    };
    // The good agent, serving the echo server's address.
    let Loopback {
        server,
        ports,
        agent: _agent,
        ..
    } = start_loopback(
        &pki,
        &spec,
        &["--agent-identifiers=ipv4=127.0.0.1".into()],
        dir.path(),
    )?;
    let echo = servers::echo("127.0.0.1:0").await?;
    let agent_addr: SocketAddr = format!("127.0.0.1:{}", ports.agent).parse()?;

    // Warm up, then the baseline.
    for _ in 0..50 {
        let mut c = grpc_dial(&Frontend::Uds(sock.clone()), &echo.to_string(), T).await?;
        c.write_all(b"x").await?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fd0, rss0) = (server.fds(), server.rss_kib());

    let stop = Arc::new(AtomicBool::new(false));
    let (healthy, ok, bad) = healthy_traffic(sock.clone(), echo, stop.clone());

    // 1. Garbage and truncated bytes on every listening port.
    for port in [ports.agent, ports.health, ports.admin] {
        for junk in [
            &b"\x16\x03\x01\x00\x05hello"[..],
            b"GET",
            b"\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage\r\n\r\n\xff\xfe",
        ] {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            let _ = s.write_all(junk);
        }
    }
    for junk in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff"[..],
        b"not http/2 at all",
        b"",
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
        let _ = s.write_all(junk);
    }

    // 2. TLS: an untrusted CA, an expired certificate, no client certificate.
    for (refused, ca, cert, key) in [
        (
            "agent with a server CA it does not know connected",
            &other.ca,
            &other.agent_cert,
            &other.agent_key,
        ),
        (
            "agent with a client certificate from another CA was accepted",
            &pki.ca,
            &other.agent_cert,
            &other.agent_key,
        ),
        (
            "agent with an expired certificate was accepted",
            &pki.ca,
            &pki.expired_agent_cert,
            &pki.expired_agent_key,
        ),
    ] {
        let opened = agent_stream(agent_addr, tls_agent(ca, cert, key), &hello("x", "")).await;
        assert!(opened.is_err(), "{refused}");
    }
    let no_cert = Arc::new(konnectivity_tls::client(&pki.ca, None, &[b"h2"])?);
    let tcp = tokio::net::TcpStream::connect(agent_addr).await?;
    let r = konnectivity_tls::TlsConnector::from(no_cert)
        .connect(konnectivity_tls::ServerName::try_from("localhost")?, tcp)
        .await;
    if let Ok(mut s) = r {
        // TLS 1.3 reports the missing certificate after the handshake: the read fails.
        let mut b = [0u8; 1];
        assert!(
            !matches!(s.read(&mut b).await, Ok(n) if n > 0),
            "a client without certificate got data"
        );
    }
    // 3. A bad agent ID header: two values.
    // (konnectivity-agent always sends one; the server's parser is unit-tested.)

    // 4. A hostile agent with a valid certificate.
    let evil = agent_stream(
        agent_addr,
        tls_agent(&pki.ca, &pki.agent_cert, &pki.agent_key),
        &hello("evil", "ipv4=10.66.0.1"),
    )
    .await?;
    for id in 1..200 {
        evil.tx
            .send(packet::data(id, Bytes::from_static(b"not yours")))
            .await?;
        evil.tx.send(packet::close_rsp(id, "")).await?;
        evil.tx.send(packet::dial_rsp(id * 7919, id, "")).await?; // unsolicited DIAL_RSP
    }
    evil.tx
        .send(Packet {
            r#type: 77,
            payload: None,
        })
        .await?; // unknown type
    evil.tx
        .send(Packet {
            r#type: PacketType::Data as i32,
            payload: None,
        })
        .await?; // no payload

    // 5. A hostile frontend: DATA and CLOSE before any dial.
    let mut f = RawFrontend::open(&sock).await?;
    f.tx.send(packet::close_req(5)).await?;
    let p = f.next().await?;
    assert_eq!(packet::kind(&p), Kind::Known(PacketType::CloseRsp));
    assert_eq!(packet::close_response(&p).error, "backend uninitialized");
    f.tx.send(packet::data(5, Bytes::from_static(b"early")))
        .await?;
    let p = f.next().await?;
    assert_eq!(packet::close_response(&p).error, "backend not initialized");

    // 6. A DIAL_REQ storm at an agent that never answers: refused over the limit.
    let mut pending = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let mut f = RawFrontend::open(&sock).await?;
        f.tx.send(packet::dial_req("tcp", "10.66.0.1:1", 1_000_000 + i))
            .await?;
        match tokio::time::timeout(Duration::from_millis(300), f.rx.next()).await {
            Ok(Some(Ok(p))) => {
                let e = packet::dial_response(&p).error.clone();
                assert!(e.contains("--max-pending-dials-per-agent=20"), "{e}");
                refused += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => pending.push(f), // still pending, as it should be under the limit
        }
    }
    assert_eq!(pending.len(), 20);
    assert_eq!(refused, 20);
    drop(pending);

    // 7. A frame over the 4 MiB message limit ends only the sender's stream.
    let big = Bytes::from(vec![0u8; 5 << 20]);
    // The control queue sends a packet whole (DATA queued normally would leave in
    // read-sized pieces), so the server sees one oversized message.
    let _ = evil.tx.control(packet::data(1, big));
    wait_for("the oversized agent stream to be dropped", T, || {
        http_get(&format!("127.0.0.1:{}", ports.admin), "/status")
            .map(|(_, b)| {
                // Among the agents (a failed dial may still name it).
                serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|v| {
                    v["agents"]
                        .as_array()
                        .is_some_and(|a| a.iter().all(|a| a["agent_id"] != "evil"))
                })
            })
            .unwrap_or(false)
    })?;

    // 8. Churn: many connections opened and closed, bounded in time.
    let churn_start = Instant::now();
    let mut churned = 0;
    while churned < 10_000 && churn_start.elapsed() < Duration::from_secs(60) {
        let mut c = grpc_dial(&Frontend::Uds(sock.clone()), &echo.to_string(), T).await?;
        c.write_all(b"c").await?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await?;
        churned += 1;
    }
    stop.store(true, Ordering::Relaxed);
    healthy.await?;
    // A refused dial is an error for that frontend only.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    assert!(matches!(
        grpc_dial(&Frontend::Uds(sock.clone()), &closed.to_string(), T).await,
        Err(ClientError::Dial(_))
    ));

    assert!(server.child_alive(), "proxy-server died");
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "the healthy transfer was disturbed"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 10,
        "the healthy transfer made no progress"
    );

    // Resources back to baseline (5 %, plus a small absolute slack for allocator noise).
    let settle = Instant::now();
    let (mut fd1, mut rss1) = (server.fds(), server.rss_kib());
    while (fd1 > fd0 + 2 || rss1 > rss0 + rss0 / 20 + 2048)
        && settle.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (fd1, rss1) = (server.fds(), server.rss_kib());
    }
    println!(
        "churned {churned} connections in {:?}; fds {fd0} -> {fd1}; RSS {rss0} -> {rss1} KiB; healthy round trips {}",
        churn_start.elapsed(),
        ok.load(Ordering::Relaxed)
    );
    assert!(fd1 <= fd0 + 2, "file descriptors leaked: {fd0} -> {fd1}");
    assert!(
        rss1 <= rss0 + rss0 / 20 + 2048,
        "memory did not return to baseline: {rss0} -> {rss1} KiB"
    );
    let log = server.log_text();
    assert!(
        log.contains("TLS handshake failed"),
        "TLS rejections are logged with the peer"
    );
    Ok(())
}

#[test]
fn a_connect_request_sent_one_byte_per_second_is_cut_off() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("c.sock");
    let spec = ServerSpec {
        mode: "http-connect",
        extra: vec!["--connect-header-timeout=2s".into()],
        ..ServerSpec::grpc_uds(sock.clone())
    };
    let (server, _ports) = start_server("server", &pki, &spec, None, dir.path())?;
    let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let start = Instant::now();
    let req = b"CONNECT 10.0.0.1:10250 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut cut = false;
    for b in req {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut out);
    assert!(
        cut || out.starts_with("HTTP/1.1 408"),
        "slow client was not cut off: {out:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(8));
    assert!(server.child_alive());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The protocol allowlist (issue 16): upstream's agent hands `DialRequest.protocol` to
// Go's dialer, so a frontend asking for "unix" reaches a UNIX socket on the node. A
// real UNIX socket listens where the hostile DIAL_REQ points; it must never be
// connected to, whichever half of the pair is ours.

/// A UNIX socket that records whether anything connected to it.
struct NodeSocket {
    path: PathBuf,
    connected: Arc<AtomicBool>,
    _task: tokio::task::JoinHandle<()>,
}

impl NodeSocket {
    fn bind(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("node-runtime.sock");
        let l = tokio::net::UnixListener::bind(&path)?;
        let connected = Arc::new(AtomicBool::new(false));
        let seen = connected.clone();
        let _task = tokio::spawn(async move {
            while l.accept().await.is_ok() {
                seen.store(true, Ordering::SeqCst);
            }
        });
        Ok(Self {
            path,
            connected,
            _task,
        })
    }
    fn address(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Asserts that, half a second on, nothing has connected to the socket.
    async fn assert_never_reached(&self) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !self.connected.load(Ordering::SeqCst),
            "the node's UNIX socket was reached"
        );
    }
}

/// A `server` and an `agent` on loopback behind the gRPC frontend `sock`, and the node's
/// UNIX socket that hostile dials point at.
struct UnixTarget {
    sock: PathBuf,
    tunnel: Loopback,
    node: NodeSocket,
    /// Last, so that it outlives the processes (their logs are in it).
    _dir: tempfile::TempDir,
}

impl UnixTarget {
    fn start(server: ServerKind, agent: AgentKind) -> anyhow::Result<Self> {
        let (dir, pki) = temp_pki(&[])?;
        let sock = dir.path().join("s.sock");
        let spec = ServerSpec::grpc_uds(sock.clone());
        let tunnel = start_pair(server, agent, &pki, &spec, &[], dir.path())?;
        let node = NodeSocket::bind(dir.path())?;
        Ok(Self {
            sock,
            tunnel,
            node,
            _dir: dir,
        })
    }
}

/// Sends DIAL_REQ{protocol, address} on a fresh raw stream; the DIAL_RSP's error.
async fn refused_dial(sock: &Path, protocol: &str, address: &str) -> anyhow::Result<String> {
    let random = 4_242;
    let mut f =
        RawFrontend::open_with(sock, Some(packet::dial_req(protocol, address, random))).await?;
    let rsp = f.next().await?;
    anyhow::ensure!(
        packet::kind(&rsp) == Kind::Known(PacketType::DialRsp),
        "expected DIAL_RSP, got {rsp:?}"
    );
    let r = packet::dial_response(&rsp);
    anyhow::ensure!(r.random == random && r.connect_id == 0, "{r:?}");
    Ok(r.error.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_refuses_unix_and_udp_dials_before_they_reach_an_upstream_agent()
-> anyhow::Result<()> {
    let t = UnixTarget::start(ServerKind::Ours, AgentKind::Upstreams)?;

    let unix = refused_dial(&t.sock, "unix", &t.node.address()).await?;
    assert_eq!(unix, r#"protocol "unix" is not allowed (allowed: tcp)"#);
    let udp = refused_dial(&t.sock, "udp", "127.0.0.1:53").await?;
    assert_eq!(udp, r#"protocol "udp" is not allowed (allowed: tcp)"#);
    t.node.assert_never_reached().await;
    let refused = scrape_metric(
        &format!("127.0.0.1:{}", t.tunnel.ports.health),
        "konnectivity_network_proxy_server_dial_failure_count{reason=\"protocol_not_allowed\"}",
    );
    assert_eq!(refused, Some(2.0));

    // The upstream agent still serves TCP through our server.
    let echo = servers::echo("127.0.0.1:0").await?;
    let (f, _own) = hostile_with_own_dial(&t.sock, echo, 77).await?;
    drop(f);
    assert!(t.tunnel.server.child_alive());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_agent_refuses_a_unix_dial_forwarded_by_an_upstream_server() -> anyhow::Result<()> {
    let t = UnixTarget::start(ServerKind::Upstreams, AgentKind::Ours)?;

    let unix = refused_dial(&t.sock, "unix", &t.node.address()).await?;
    // Our agent serves UDP too (unless --max-udp-sockets=0); never UNIX sockets.
    assert_eq!(
        unix,
        r#"protocol "unix" is not allowed (allowed: tcp, udp)"#
    );
    t.node.assert_never_reached().await;
    let refused = scrape_metric(
        &format!("127.0.0.1:{}", t.tunnel.agent_health),
        "konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason=\"protocol_not_allowed\"}",
    );
    assert_eq!(refused, Some(1.0));
    assert!(t.tunnel.agent.child_alive());
    Ok(())
}

/// The control for the two tests above (documented difference, docs/compatibility.md):
/// upstream's server and agent together dial the node's UNIX socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_lets_a_frontend_reach_a_unix_socket_on_the_node() -> anyhow::Result<()> {
    let t = UnixTarget::start(ServerKind::Upstreams, AgentKind::Upstreams)?;

    let dial = packet::dial_req("unix", &t.node.address(), 4_243);
    let mut f = RawFrontend::open_with(&t.sock, Some(dial)).await?;
    let rsp = f.next().await?;
    let r = packet::dial_response(&rsp);
    assert_eq!(r.error, "", "upstream dialed the UNIX socket");
    assert_ne!(r.connect_id, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(t.node.connected.load(Ordering::SeqCst));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The SOCKS5 frontend (issue 16) against malformed and truncated input: every client
// gets a SOCKS5 reply or a close, the server lives, and a healthy gRPC transfer beside
// it never fails.

/// Sends `bytes` to the SOCKS5 socket (then half-closes, when `eof`) and returns all the
/// server writes before closing; errors if it neither answers nor closes within `T`.
async fn socks_exchange(sock: &Path, bytes: &[u8], eof: bool) -> anyhow::Result<Vec<u8>> {
    let mut s = tokio::net::UnixStream::connect(sock).await?;
    // The server may close before reading everything: a failed write is an answer too.
    let _ = s.write_all(bytes).await;
    if eof {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    match tokio::time::timeout(T, s.read_to_end(&mut out)).await? {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(out),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_socks5_input_gets_a_reply_or_a_close_and_healthy_traffic_is_undisturbed()
-> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let socks = dir.path().join("socks5.sock");
    let spec = ServerSpec {
        extra: vec![format!("--socks5-uds={}", socks.display())],
        ..ServerSpec::grpc_uds(sock.clone())
    };
    let l = start_loopback(&pki, &spec, &[], dir.path())?;
    let echo = servers::echo("127.0.0.1:0").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (healthy, ok, bad) = healthy_traffic(sock.clone(), echo, stop.clone());

    let reply = |code: u8| vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0];
    let with_method = |mut r: Vec<u8>| {
        let mut v = vec![5, 0];
        v.append(&mut r);
        v
    };
    let cases: Vec<(&str, Vec<u8>, bool, Vec<u8>)> = vec![
        ("empty", vec![], true, vec![]),
        ("SOCKS4", vec![4, 1, 0, 80, 127, 0, 0, 1, 0], false, vec![]),
        (
            "TLS ClientHello",
            vec![0x16, 3, 1, 0, 5, 1, 0],
            false,
            vec![],
        ),
        ("no methods", vec![5, 0], false, vec![]),
        ("only user/password", vec![5, 1, 2], false, vec![5, 0xFF]),
        ("truncated greeting", vec![5, 200, 0], true, vec![]),
        (
            "BIND",
            vec![5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80],
            false,
            with_method(reply(7)),
        ),
        (
            "UDP ASSOCIATE",
            vec![5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0],
            false,
            with_method(reply(7)),
        ),
        (
            "address type 9",
            vec![5, 1, 0, 5, 1, 0, 9],
            false,
            with_method(reply(8)),
        ),
        (
            "zero-length name",
            vec![5, 1, 0, 5, 1, 0, 3, 0, 0, 80],
            false,
            with_method(reply(1)),
        ),
        (
            "name with a NUL",
            vec![5, 1, 0, 5, 1, 0, 3, 2, b'a', 0, 0, 80],
            false,
            with_method(reply(1)),
        ),
        (
            "truncated IPv6",
            vec![5, 1, 0, 5, 1, 0, 4, 0, 0, 0],
            true,
            vec![5, 0],
        ),
    ];
    for (what, send, eof, want) in &cases {
        let got = socks_exchange(&socks, send, *eof)
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        assert_eq!(&got, want, "{what}");
    }
    // Garbage of every length: answered or closed, never a hang.
    for n in 1..64u8 {
        let garbage: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
        socks_exchange(&socks, &garbage, true)
            .await
            .map_err(|e| anyhow::anyhow!("garbage of {n} bytes: {e}"))?;
    }
    // A good CONNECT still works afterwards.
    let mut good = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1];
    good.extend_from_slice(&echo.port().to_be_bytes());
    good.extend_from_slice(b"ping");
    let mut s = tokio::net::UnixStream::connect(&socks).await?;
    s.write_all(&good).await?;
    let mut back = [0u8; 2 + 10 + 4];
    tokio::time::timeout(T, s.read_exact(&mut back)).await??;
    assert_eq!(&back[..4], &[5, 0, 5, 0]);
    assert_eq!(&back[12..], b"ping");

    stop.store(true, Ordering::Relaxed);
    healthy.await?;
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(bad.load(Ordering::Relaxed), 0, "healthy traffic failed");
    assert!(l.server.child_alive());
    Ok(())
}
