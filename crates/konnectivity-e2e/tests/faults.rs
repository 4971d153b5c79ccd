//! Faults with every byte checked (issue 21): the real binaries under a network
//! partition (iptables DROP between a control-plane and a node namespace), an agent
//! killed in the middle of a transfer, and certificates rotated under load.
//!
//! Short versions for CI: about 20 s of wall time together, the tests running in
//! parallel. The partition tests need root, `ip netns`, iptables, curl and python3; they
//! fail (do not skip) without them. Every transfer is a deterministic pattern
//! (`servers::pattern_byte`) checked byte by byte as it arrives, and its SHA-256 is
//! printed.
use std::path::Path;
use std::time::{Duration, Instant};

use konnectivity_client::{Frontend, grpc_dial};
use konnectivity_e2e::netns::Link;
use konnectivity_e2e::{
    AgentKind, Proc, ServerSpec, start_agent, start_loopback, start_server, temp_pki, wait_for,
};
use konnectivity_testkit::pki;
use konnectivity_testkit::servers::{self, pattern_byte};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);
const KEEPALIVE: &str = "--keepalive-time=5s";
/// The agent's defaults, restored over the e2e harness's fast sync flags.
const DEFAULT_SYNC: [&str; 2] = ["--sync-interval=1s", "--sync-interval-cap=10s"];

/// What a transfer delivered: every byte was compared with the pattern as it came.
#[derive(Debug)]
struct Received {
    bytes: u64,
    sha256: String,
    /// How the stream ended: `Ok` at EOF, or the read error.
    end: Result<(), String>,
    /// When the last read returned (EOF or error).
    ended: Instant,
    /// The longest wait for a read.
    longest_stall: Duration,
}

/// Reads `io` to its end, checking each byte against the pattern from offset 0,
/// pausing `pace` after every 256 KiB (to keep a transfer in flight for a while).
/// Panics at the first wrong byte. Bounded by `limit` bytes and `deadline`.
async fn receive<R: AsyncRead + Unpin>(
    mut io: R,
    pre: &[u8],
    pace: Duration,
    limit: u64,
    deadline: Duration,
) -> Received {
    let started = Instant::now();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut off = 0u64;
    let mut check = |chunk: &[u8], off: &mut u64| {
        for (i, b) in chunk.iter().enumerate() {
            let at = *off + i as u64;
            assert_eq!(*b, pattern_byte(at), "wrong byte at offset {at}");
        }
        ctx.update(chunk);
        *off += chunk.len() as u64;
    };
    check(pre, &mut off);
    let mut buf = vec![0u8; 256 * 1024];
    let mut since_pause = 0usize;
    let mut longest_stall = Duration::ZERO;
    let end = loop {
        if off > limit || started.elapsed() > deadline {
            break Err(format!("gave up after {off} bytes"));
        }
        let t = Instant::now();
        let r = tokio::time::timeout(deadline, io.read(&mut buf)).await;
        longest_stall = longest_stall.max(t.elapsed());
        match r {
            Err(_) => break Err("read timed out".into()),
            Ok(Err(e)) => break Err(e.to_string()),
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => {
                check(&buf[..n], &mut off);
                since_pause += n;
                if since_pause >= 256 * 1024 && !pace.is_zero() {
                    since_pause = 0;
                    tokio::time::sleep(pace).await;
                }
            }
        }
    };
    let sha256 = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Received {
        bytes: off,
        sha256,
        end,
        ended: Instant::now(),
        longest_stall,
    }
}

/// SHA-256 of the first `n` bytes of the pattern.
fn pattern_sha256(n: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < n {
        let len = (n - off).min(buf.len() as u64) as usize;
        servers::fill_pattern(&mut buf[..len], off);
        ctx.update(&buf[..len]);
        off += len as u64;
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Asks `servers::source` (through `io`) for `n` bytes.
async fn ask<W: AsyncWrite + Unpin>(io: &mut W, n: u64) {
    io.write_all(&n.to_be_bytes())
        .await
        .expect("asking the source for its bytes");
}

/// Writes `n` pattern bytes to `dir/blob` and serves `dir` over HTTP/1.0 from inside
/// `ns` (python's http.server; the destination on the node).
fn serve_blob_in(ns: &str, ip: &str, port: u16, n: u64, dir: &Path) -> Proc {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    let mut blob = vec![0u8; n as usize];
    servers::fill_pattern(&mut blob, 0);
    std::fs::write(www.join("blob"), blob).expect("blob");
    let args: Vec<String> = [
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        ip,
        "--directory",
        &www.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let p =
        Proc::spawn("destination", Path::new("python3"), &args, Some(ns), dir).expect("python3");
    let url = format!("http://{ip}:{port}/blob");
    wait_for("the destination on the node", T, || {
        konnectivity_e2e::netns::output(ns, &["curl", "-sf", "-o", "/dev/null", "-m", "1", &url])
            .is_some()
    })
    .expect("destination up");
    p
}

/// GETs `/blob` over `io` and returns what follows the response head (the body bytes
/// already read) with the stream, ready for [`receive`].
async fn get_blob<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> Vec<u8> {
    io.write_all(b"GET /blob HTTP/1.0\r\nHost: node\r\n\r\n")
        .await
        .expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "no response head: {head:?}");
        let n = tokio::time::timeout(T, io.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("reading the response head");
        assert_eq!(n, 1, "EOF in the response head: {head:?}");
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    Vec::new()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Server in the control-plane namespace, agent in the node namespace, both with
/// `--keepalive-time=5s` and otherwise default flags; the gRPC frontend on a UNIX
/// socket the test reaches from the host.
struct Partitionable {
    link: Link,
    sock: std::path::PathBuf,
    readyz: String,
    node_http: String,
    _server: Proc,
    _agent: Proc,
    _destination: Proc,
}

fn partitionable(tag: &str, subnet: u8, blob: u64, d: &Path) -> Partitionable {
    let link = Link::create(tag, subnet);
    let pki = pki::generate(&d.join("pki"), &[&link.cp_ip]).expect("pki");
    let destination = serve_blob_in(&link.node, &link.node_ip, 10250, blob, d);
    let sock = d.join("konnectivity.sock");
    let spec = ServerSpec {
        mode: "grpc",
        uds: Some(sock.clone()),
        bind: link.cp_ip.clone(),
        extra: vec![KEEPALIVE.into()],
    };
    let (server, ports) =
        start_server("proxy-server", &pki, &spec, Some(&link.cp), d).expect("proxy-server");
    let extra: Vec<String> = [KEEPALIVE, DEFAULT_SYNC[0], DEFAULT_SYNC[1]]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (agent, _) = start_agent(
        AgentKind::Ours,
        "proxy-agent",
        &pki,
        &link.cp_ip,
        ports.agent,
        &extra,
        Some(&link.node),
        d,
    )
    .expect("proxy-agent");
    let readyz = format!("http://{}:{}/readyz", link.cp_ip, ports.health);
    wait_for("proxy-server ready", Duration::from_secs(10), || {
        link.cp_get_ok(&readyz)
    })
    .expect("the agent connects");
    let node_http = format!("{}:10250", link.node_ip);
    Partitionable {
        link,
        sock,
        readyz,
        node_http,
        _server: server,
        _agent: agent,
        _destination: destination,
    }
}

#[test]
fn server_is_ready_within_a_second_after_a_partition_heals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    const BLOB: u64 = 1 << 20;
    let p = partitionable("r", (std::process::id() % 100) as u8, BLOB, d);

    // 18 s of silence: both ends give up on the stream after two keepalive periods
    // (10 s), and the agent is trying to reconnect when the network comes back. With
    // one plain connect() per attempt the kernel resends the SYN 1, 2, 3, 4 and 6 s
    // after the attempt starts (this kernel's `tcp_syn_linear_timeouts=4`; 1, 3, 7 s
    // on older ones), then the old sync loop waited for its 10 s connect timeout and
    // 1 s of backoff: an attempt started at 10–11 s left no SYN between 16–17 s and
    // 21–22 s, and this test measured 3.0–4.2 s before the probes.
    // `KONNECTIVITY_FAULTS_PARTITION_SECS` sets another length (the issue used 30).
    let partition = std::env::var("KONNECTIVITY_FAULTS_PARTITION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(18), Duration::from_secs);
    let cut = Instant::now();
    p.link.partition();
    wait_for("the server to notice", Duration::from_secs(11), || {
        !p.link.cp_get_ok(&p.readyz)
    })
    .expect("the server drops the silent agent within two keepalive periods");
    let noticed = cut.elapsed();
    std::thread::sleep(partition.saturating_sub(cut.elapsed()));
    let healed = Instant::now();
    p.link.heal();
    wait_for("the server to be ready again", T, || {
        p.link.cp_get_ok(&p.readyz)
    })
    .expect("ready again");
    let ready = healed.elapsed();

    // A dial through the new stream reaches the node, every byte checked.
    let f = Frontend::Uds(p.sock.clone());
    let got = runtime().block_on(async {
        let mut io = grpc_dial(&f, &p.node_http, T)
            .await
            .expect("dial after healing");
        let pre = get_blob(&mut io).await;
        receive(io, &pre, Duration::ZERO, BLOB, T).await
    });
    let dialed = healed.elapsed();
    assert_eq!(got.end, Ok(()));
    assert_eq!(got.bytes, BLOB);
    assert_eq!(got.sha256, pattern_sha256(BLOB));
    println!(
        "partition noticed by the server after {noticed:?}; after healing: ready in {ready:?}, \
         a verified 1 MiB transfer done in {dialed:?}"
    );
    // The goal is ≤ 1 s (a fresh SYN at most 0.8 s apart, then TLS and HTTP/2 over a
    // veth); 1.5 s leaves room for a busy CI machine and the curl polls (~10 ms each).
    assert!(
        ready <= Duration::from_millis(1500),
        "ready {ready:?} after the network healed"
    );
}

#[test]
fn transfer_survives_a_partition_shorter_than_the_keepalive() {
    // Documented (ARCHITECTURE.md, "The agent's sync loop"): a silent peer is dropped
    // after two keepalive periods; a shorter outage only stalls the stream, and TCP
    // delivers everything once the network is back.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    const BLOB: u64 = 48 << 20;
    let p = partitionable("s", (std::process::id() % 100 + 100) as u8, BLOB, d);
    let f = Frontend::Uds(p.sock.clone());
    let rt = runtime();
    let got = rt.block_on(async {
        let mut io = grpc_dial(&f, &p.node_http, T).await.expect("dial");
        let pre = get_blob(&mut io).await;
        // ~6 MiB/s: the transfer lasts about 8 s, the partition falls in its middle.
        let reading = tokio::spawn(async move {
            receive(
                io,
                &pre,
                Duration::from_millis(40),
                BLOB,
                Duration::from_secs(30),
            )
            .await
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        p.link.partition();
        tokio::time::sleep(Duration::from_secs(2)).await;
        p.link.heal();
        reading.await.expect("reader")
    });
    println!(
        "48 MiB across a 2 s partition: longest stall {:?}, sha256 {}",
        got.longest_stall, got.sha256
    );
    assert_eq!(got.end, Ok(()), "the tunnel did not survive: {got:?}");
    assert_eq!(got.bytes, BLOB);
    assert_eq!(got.sha256, pattern_sha256(BLOB));
    assert!(
        got.longest_stall >= Duration::from_secs(1),
        "the partition did not stall the transfer ({:?}): it was not in flight",
        got.longest_stall
    );
    assert!(
        p.link.cp_get_ok(&p.readyz),
        "the agent's stream was dropped"
    );
}

#[test]
fn killed_agent_ends_its_transfers_within_a_second() {
    let (dir, pki) = temp_pki(&[]).expect("pki");
    let d = dir.path();
    let sock = d.join("konnectivity.sock");
    let mut lb = start_loopback(&pki, &ServerSpec::grpc_uds(sock.clone()), &[], d).expect("up");
    let f = Frontend::Uds(sock);
    // More than the tunnel moves in a second, read as fast as it comes, so that the
    // time measured is the server noticing, not a slow reader draining buffers.
    const TOTAL: u64 = 16 << 30;
    let rt = runtime();
    let (got, killed) = rt.block_on(async {
        let source = servers::source("127.0.0.1:0").await.expect("source");
        let mut io = grpc_dial(&f, &source.to_string(), T).await.expect("dial");
        ask(&mut io, TOTAL).await;
        let reading = tokio::spawn(async move {
            receive(io, &[], Duration::ZERO, TOTAL, Duration::from_secs(20)).await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed = Instant::now();
        lb.agent.kill();
        (reading.await.expect("reader"), killed)
    });
    let noticed = got.ended.duration_since(killed);
    println!(
        "agent killed after {} MiB (all verified): the frontend's stream ended {noticed:?} later ({:?})",
        got.bytes >> 20,
        got.end
    );
    assert!(got.bytes > 0 && got.bytes < TOTAL, "{got:?}");
    // An error, not a clean end: the frontend must not mistake it for a complete
    // response (CLOSE_RSP carries `wire::AGENT_GONE`).
    let error = got
        .end
        .expect_err("the stream of a dead agent ended cleanly");
    assert!(error.contains("agent carrying it disconnected"), "{error}");
    assert!(
        noticed <= Duration::from_secs(1),
        "the frontend learned of the dead agent after {noticed:?}"
    );
    // The server noticed too: not ready any more.
    let (status, _) =
        konnectivity_e2e::http_get(&format!("127.0.0.1:{}", lb.ports.health), "/readyz")
            .expect("readyz");
    assert_ne!(status, 200);
}

/// Replaces `to` with a copy of `from` the way a secret update does: write beside it,
/// then rename over it.
fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("rotating");
    std::fs::copy(from, &tmp).expect("copy the new file");
    std::fs::rename(&tmp, to).expect("rename over the old file");
}

/// The end-entity certificate (DER) in a PEM pair.
fn leaf_der(cert: &Path, key: &Path) -> Vec<u8> {
    let (certs, _) = konnectivity_tls::load_key_pair(cert, key).expect("pair");
    certs[0].to_vec()
}

/// A short hex fingerprint of a DER certificate, for the log.
fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn rotated_certificates_reach_new_connections_while_established_transfers_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // 127.0.0.2 is a second "server" address: a TLS listener owned by this test that
    // records the client certificate of every agent handshake.
    let pki = pki::generate(&d.join("pki"), &["127.0.0.2"]).expect("pki");
    let next = pki::reissue(&pki, &d.join("rotated"), &["127.0.0.2"]).expect("new certs");
    let sock = d.join("konnectivity.sock");
    let spec = ServerSpec {
        extra: vec!["--server-count=2".into()],
        ..ServerSpec::grpc_uds(sock.clone())
    };
    let (_server, ports) = start_server("server", &pki, &spec, None, d).expect("server");
    let rt = runtime();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    {
        let tls = konnectivity_tls::agent_listener(
            &pki.server_cert,
            &pki.server_key,
            Some(&pki.ca),
            Default::default(),
        )
        .expect("listener TLS");
        let acceptor = konnectivity_tls::TlsAcceptor::from(std::sync::Arc::new(tls));
        let l = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.2", ports.agent)))
            .expect("bind 127.0.0.2");
        let seen = seen.clone();
        rt.spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if let Ok(Ok(tls)) = tokio::time::timeout(T, acceptor.accept(s)).await
                    && let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                {
                    seen.lock().expect("lock").push(c.to_vec());
                }
            }
        });
    }
    let (_agent, agent_health) = start_agent(
        AgentKind::Ours,
        "agent",
        &pki,
        "127.0.0.1,127.0.0.2",
        ports.agent,
        &[],
        None,
        d,
    )
    .expect("agent");
    konnectivity_e2e::wait_server_ready("127.0.0.1", ports.health).expect("ready");
    let old_agent = leaf_der(&pki.agent_cert, &pki.agent_key);
    let new_agent = leaf_der(&next.agent_cert, &next.agent_key);
    let new_server = leaf_der(&next.server_cert, &next.server_key);
    let last_seen = || seen.lock().expect("lock").last().cloned();
    wait_for("the agent's handshakes with 127.0.0.2", T, || {
        last_seen().as_deref() == Some(&old_agent[..])
    })
    .expect("the agent keeps trying its second server");

    let f = Frontend::Uds(sock);
    const TOTAL: u64 = 96 << 20;
    const SMALL: u64 = 4 << 20;
    let server_cert_now = || {
        let tls =
            konnectivity_tls::client(&pki.ca, Some((&pki.client_cert, &pki.client_key)), &[b"h2"])
                .expect("client TLS");
        let connector = konnectivity_tls::TlsConnector::from(std::sync::Arc::new(tls));
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.agent))
                .await
                .ok()?;
            let name = konnectivity_tls::ServerName::try_from("localhost").ok()?;
            let s = connector.connect(name, tcp).await.ok()?;
            s.get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.to_vec())
        }
    };
    let (first, after_rotation, small) = rt.block_on(async {
        let source = servers::source("127.0.0.1:0").await.expect("source");
        let mut io = grpc_dial(&f, &source.to_string(), T).await.expect("dial");
        ask(&mut io, TOTAL).await;
        let reading = tokio::spawn(async move {
            receive(
                io,
                &[],
                Duration::from_millis(20),
                TOTAL,
                Duration::from_secs(40),
            )
            .await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rotated = Instant::now();
        for (from, to) in [
            (&next.server_cert, &pki.server_cert),
            (&next.server_key, &pki.server_key),
            (&next.agent_cert, &pki.agent_cert),
            (&next.agent_key, &pki.agent_key),
        ] {
            replace_file(from, to);
        }
        // New connections get the new certificates: the server's on its agent port,
        // the agent's on its next handshake with 127.0.0.2. Checks at most once a
        // second, plus the agent's ≤ 1 s backoff: within 3 s.
        let mut served = None;
        while rotated.elapsed() < T {
            if served.is_none() && server_cert_now().await.as_deref() == Some(&new_server[..]) {
                served = Some(rotated.elapsed());
            }
            if served.is_some() && last_seen().as_deref() == Some(&new_agent[..]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let presented = (last_seen().as_deref() == Some(&new_agent[..])).then(|| rotated.elapsed());
        // A new tunnel while the first is still moving.
        let mut io = grpc_dial(&f, &source.to_string(), T)
            .await
            .expect("dial after rotation");
        ask(&mut io, SMALL).await;
        let small = receive(io, &[], Duration::ZERO, SMALL, T).await;
        assert!(
            !reading.is_finished(),
            "the long transfer ended before the rotation was checked"
        );
        (reading.await.expect("reader"), (served, presented), small)
    });
    let (served, presented) = after_rotation;
    println!(
        "rotation: server serves {} after {served:?}, agent presents {} after {presented:?}; \
         96 MiB across it sha256 {}",
        fingerprint(&new_server),
        fingerprint(&new_agent),
        first.sha256
    );
    assert!(
        served.is_some(),
        "the server still serves its old certificate"
    );
    assert!(
        presented.is_some(),
        "the agent still presents its old certificate"
    );
    assert_eq!(small.end, Ok(()));
    assert_eq!(small.sha256, pattern_sha256(SMALL));
    assert_eq!(
        first.end,
        Ok(()),
        "the established transfer broke: {first:?}"
    );
    assert_eq!(first.bytes, TOTAL);
    assert_eq!(first.sha256, pattern_sha256(TOTAL));
    let reloads = |addr: String, name: &str| konnectivity_e2e::scrape_metric(&addr, name);
    assert!(
        reloads(
            format!("127.0.0.1:{}", ports.health),
            "konnectivity_rs_server_certificate_reloads_total"
        )
        .is_some_and(|v| v >= 1.0)
    );
    assert!(
        reloads(
            format!("127.0.0.1:{agent_health}"),
            "konnectivity_rs_agent_certificate_reloads_total"
        )
        .is_some_and(|v| v >= 1.0)
    );
}
