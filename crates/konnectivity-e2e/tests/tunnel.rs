//! The tunnel end to end with the real binaries on loopback: both frontends, curl,
//! the Go konnectivity-client, error mapping, agent reconnection.
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use konnectivity_client::{ClientError, Frontend, connect_dial, grpc_dial};
use konnectivity_e2e::*;
use konnectivity_testkit::servers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

async fn get_through<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
) -> anyhow::Result<String> {
    io.write_all(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("node says hi") {
        let n = tokio::time::timeout(T, io.read(&mut buf)).await??;
        anyhow::ensure!(
            n > 0,
            "EOF before the body: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_frontend_over_uds_carries_http_to_a_node_backend() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let _tunnel = start_loopback(&pki, &ServerSpec::grpc_uds(sock.clone()), &[], dir.path())?;
    let backend = servers::http_hello("127.0.0.1:0", "node says hi").await?;
    let rsp = get_through(grpc_dial(&Frontend::Uds(sock.clone()), &backend.to_string(), T).await?)
        .await?;
    assert!(rsp.starts_with("HTTP/1.1 200 OK"), "{rsp}");

    // A refused dial reaches only that frontend, with Go's error text.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    match grpc_dial(&Frontend::Uds(sock.clone()), &closed.to_string(), T).await {
        Err(ClientError::Dial(e)) => {
            assert_eq!(e, format!("dial tcp {closed}: connect: connection refused"))
        }
        other => panic!("expected a dial error, got {:?}", other.map(|_| ())),
    }
    // ... and the tunnel still works afterwards.
    get_through(grpc_dial(&Frontend::Uds(sock), &backend.to_string(), T).await?).await?;
    Ok(())
}

/// The binaries resolve host names themselves (the image's are statically linked, with
/// glibc's built-in `files` and `dns` sources): an agent given its server as `localhost`
/// registers, and a destination named `localhost:<port>` is resolved and dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_resolve_for_the_server_address_and_for_destinations() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    // `--proxy-server-host` given again, by name: the last value wins, as in pflag.
    let by_name = ["--proxy-server-host=localhost".to_string()];
    let _tunnel = start_loopback(
        &pki,
        &ServerSpec::grpc_uds(sock.clone()),
        &by_name,
        dir.path(),
    )?;
    let backend = servers::http_hello("127.0.0.1:0", "node says hi, by name").await?;
    let named = format!("localhost:{}", backend.port());
    let rsp = get_through(grpc_dial(&Frontend::Uds(sock), &named, T).await?).await?;
    assert!(rsp.contains("node says hi, by name"), "{rsp}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_frontend_answers_exactly_200_and_keeps_pipelined_bytes() -> anyhow::Result<()>
{
    let (dir, pki) = temp_pki(&[])?;
    let spec = ServerSpec::tcp("http-connect");
    let tunnel = start_loopback(&pki, &spec, &[], dir.path())?;
    let ports = tunnel.ports;
    let echo = servers::echo("127.0.0.1:0").await?;

    // CONNECT and the first payload in one write: the payload must not be lost, and
    // nothing but the exact 200 line may precede the echo.
    let f = tcp_frontend(&pki, ports.frontend, &[b"http/1.1"])?;
    let Frontend::Tcp { tls, .. } = &f else {
        unreachable!()
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.frontend)).await?;
    let name = konnectivity_tls::ServerName::try_from("localhost")?;
    let mut s = konnectivity_tls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await?;
    s.write_all(
        format!("CONNECT {echo} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\npipelined-bytes").as_bytes(),
    )
    .await?;
    let want = b"HTTP/1.1 200 Connection Established\r\n\r\npipelined-bytes";
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(T, s.read_exact(&mut got)).await??;
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));

    // Errors map to upstream's status codes.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    match connect_dial(&f, &closed.to_string(), T).await {
        Err(ClientError::Http { status, body }) => {
            assert_eq!(status, "502 Bad Gateway");
            assert!(body.contains("connection refused"), "{body}");
        }
        other => panic!("expected 502, got {:?}", other.map(|_| ())),
    }
    match connect_dial(&f, "thisdefinitelydoesnotexist.invalid:80", T).await {
        Err(ClientError::Http { status, body }) => {
            assert_eq!(status, "502 Bad Gateway");
            assert!(body.contains("no such host"), "{body}");
        }
        other => panic!("expected 502, got {:?}", other.map(|_| ())),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_over_uds_answers_405_and_500_like_upstream() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("c.sock");
    let spec = ServerSpec::uds("http-connect", sock.clone());
    let (_server, _ports) = start_server("server", &pki, &spec, None, dir.path())?;
    // No agent yet: 500 with upstream's text.
    let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
    s.set_read_timeout(Some(T))?;
    s.write_all(b"CONNECT 10.0.0.1:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    assert_eq!(
        out,
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available: No agent available"
    );
    let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
    s.set_read_timeout(Some(T))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    let out = String::from_utf8_lossy(&buf[..n]);
    assert!(
        out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{out}"
    );
    assert!(
        out.ends_with("this proxy only supports CONNECT passthrough\n"),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_proxytunnel_reaches_the_backend_through_the_mtls_connect_frontend()
-> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let spec = ServerSpec::tcp("http-connect");
    let tunnel = start_loopback(&pki, &spec, &[], dir.path())?;
    let ports = tunnel.ports;
    let backend = servers::http_hello("127.0.0.1:0", "node says hi via curl").await?;
    let p = |x: &Path| x.display().to_string();
    let out = tokio::task::spawn_blocking({
        let pki = pki.clone();
        move || {
            Command::new("curl")
                .args(["-sS", "--max-time", "10", "--proxytunnel"])
                .args(["-x", &format!("https://localhost:{}", ports.frontend)])
                .args([
                    "--proxy-cacert",
                    &p(&pki.ca),
                    "--proxy-cert",
                    &p(&pki.client_cert),
                    "--proxy-key",
                    &p(&pki.client_key),
                ])
                .arg(format!("http://{backend}/"))
                .output()
        }
    })
    .await??;
    assert_prints("curl", &out, "node says hi via curl");

    // Without a client certificate the frontend refuses the TLS handshake.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--proxytunnel"])
        .args([
            "-x",
            &format!("https://localhost:{}", ports.frontend),
            "--proxy-cacert",
            &p(&pki.ca),
        ])
        .arg(format!("http://{backend}/"))
        .output()?;
    assert!(
        !out.status.success(),
        "a client without certificate got through"
    );
    Ok(())
}

fn interop(args: &[String]) -> anyhow::Result<String> {
    go_interop("konnectivity-interop", args, "10s")
}

#[test]
fn go_konnectivity_client_works_through_the_uds_grpc_frontend() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let _tunnel = start_loopback(&pki, &ServerSpec::grpc_uds(sock.clone()), &[], dir.path())?;
    let out = interop(&[format!("-uds={}", sock.display())])?;
    assert!(out.contains("7 passed, 0 failed"), "{out}");
    Ok(())
}

#[test]
fn go_konnectivity_client_works_through_the_mtls_tcp_grpc_frontend() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let spec = ServerSpec::tcp("grpc");
    let tunnel = start_loopback(&pki, &spec, &[], dir.path())?;
    let ports = tunnel.ports;
    let p = |x: &Path| x.display().to_string();
    let out = interop(&[
        format!("-tcp=127.0.0.1:{}", ports.frontend),
        format!("-ca={}", p(&pki.ca)),
        format!("-cert={}", p(&pki.client_cert)),
        format!("-key={}", p(&pki.client_key)),
        "-server-name=localhost".into(),
    ])?;
    assert!(out.contains("7 passed, 0 failed"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_when_the_server_restarts() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let spec = ServerSpec::grpc_uds(sock.clone());
    let Loopback {
        mut server,
        ports,
        agent: _agent,
        agent_health,
    } = start_loopback(&pki, &spec, &[], dir.path())?;
    let agent_ready = || {
        http_get(&format!("127.0.0.1:{agent_health}"), "/readyz")
            .map(|(s, _)| s)
            .unwrap_or(0)
    };
    wait_for("agent ready", T, || agent_ready() == 200)?;
    server.kill();
    wait_for("agent to notice the server is gone", T, || {
        agent_ready() == 503
    })?;
    // Restart on the same ports.
    let p = |x: &Path| x.display().to_string();
    let args = vec![
        format!("--cluster-cert={}", p(&pki.server_cert)),
        format!("--cluster-key={}", p(&pki.server_key)),
        format!("--cluster-ca-cert={}", p(&pki.ca)),
        format!("--agent-port={}", ports.agent),
        "--agent-bind-address=127.0.0.1".into(),
        format!("--health-port={}", ports.health),
        format!("--admin-port={}", ports.admin),
        format!("--uds-name={}", p(&sock)),
        "--server-port=0".into(),
    ];
    let _server2 = Proc::spawn("server2", &bin("proxy-server")?, &args, None, dir.path())?;
    wait_server_ready("127.0.0.1", ports.health)?;
    let backend = servers::http_hello("127.0.0.1:0", "node says hi again").await?;
    get_through(grpc_dial(&Frontend::Uds(sock), &backend.to_string(), T).await?).await?;
    Ok(())
}

#[test]
fn invalid_flag_combinations_exit_1_with_a_message_naming_the_problem() -> anyhow::Result<()> {
    let server = bin("proxy-server")?;
    let agent = bin("proxy-agent")?;
    let cases: &[(&Path, &[&str], &str)] = &[
        (
            &server,
            &["--mode=ftp"],
            "mode must be set to either 'grpc' or 'http-connect' not \"ftp\"",
        ),
        (
            &server,
            &["--uds-name=/tmp/x.sock", "--server-port=8090"],
            "server port should be set to 0 not 8090 for UDS",
        ),
        (
            &server,
            &["--server-port=8090"],
            "server ca cert must be set when in TCP mode (uds-name is empty)",
        ),
        (
            &server,
            &[
                "--uds-name=/tmp/x.sock",
                "--server-port=0",
                "--agent-port=50000",
            ],
            "please do not try to use ephemeral port 50000 for the agent port",
        ),
        (
            &server,
            &[
                "--uds-name=/tmp/x.sock",
                "--server-port=0",
                "--health-port=80",
            ],
            "please do not try to use reserved port 80 for the health port",
        ),
        (
            &server,
            &[
                "--uds-name=/tmp/x.sock",
                "--server-port=0",
                "--proxy-strategies=nope",
            ],
            "invalid proxy strategies: unknown proxy strategy: nope",
        ),
        (
            &server,
            &[
                "--uds-name=/tmp/x.sock",
                "--server-port=0",
                "--enable-contention-profiling",
            ],
            "if --enable-contention-profiling is set, --enable-profiling must also be set",
        ),
        (
            &server,
            &[
                "--uds-name=/tmp/x.sock",
                "--server-port=0",
                "--backend-dial-timeout=-1s",
            ],
            "backend-dial-timeout must be >= 0, got -1s",
        ),
        (
            &server,
            &["--cluster-cert=/nonexistent.crt"],
            "error checking cluster cert /nonexistent.crt",
        ),
        (
            &server,
            &[
                "--uds-name=/tmp/x.sock",
                "--server-port=0",
                "--tls-min-version=VersionTLS99",
            ],
            "unsupported TLS version \"VersionTLS99\"",
        ),
        (&server, &["--no-such-flag"], "unknown flag: --no-such-flag"),
        (
            &agent,
            &["--proxy-server-port=0"],
            "proxy server port 0 must be greater than 0",
        ),
        (
            &agent,
            &["--sync-interval=5s", "--sync-interval-cap=1s"],
            "sync interval 5s must be less than sync interval cap 1s",
        ),
        (
            &agent,
            &["--agent-identifiers=foo=bar"],
            "agent address is invalid: unknown address type: foo",
        ),
        (
            &agent,
            &["--agent-key=/nonexistent.key"],
            "error checking agent key /nonexistent.key",
        ),
        (
            &agent,
            &["--server-count-source=min"],
            "--server-count-source must be one of '', 'default', 'max', got min",
        ),
    ];
    for (prog, args, want) in cases {
        let out = Command::new(prog).args(*args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{} {args:?}: expected exit 1, stderr: {stderr}",
            prog.display()
        );
        assert!(
            stderr.contains(want),
            "{} {args:?}: expected {want:?} in: {stderr}",
            prog.display()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_with_the_same_id_does_not_break_the_first_ones_connections()
-> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let (_server, ports) = start_server(
        "server",
        &pki,
        &ServerSpec::grpc_uds(sock.clone()),
        None,
        dir.path(),
    )?;
    // Each call starts another process with the same agent ID.
    let same_id_agent = || {
        start_local_agent(
            AgentKind::Ours,
            "same-id",
            &pki,
            ports.agent,
            &[],
            dir.path(),
        )
    };
    let (_first, _) = same_id_agent()?;
    wait_server_ready("127.0.0.1", ports.health)?;
    let echo = servers::echo("127.0.0.1:0").await?;
    let mut conn = grpc_dial(&Frontend::Uds(sock.clone()), &echo.to_string(), T).await?;
    conn.write_all(b"before").await?;
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf).await?;
    // A second process with the same agent ID connects.
    let (_second, second_health) = same_id_agent()?;
    wait_for("second agent ready", T, || {
        http_get(&format!("127.0.0.1:{second_health}"), "/readyz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    })?;
    // The first agent's connection still works, and new dials work too.
    conn.write_all(b"after!").await?;
    tokio::time::timeout(T, conn.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"after!");
    let mut c2 = grpc_dial(&Frontend::Uds(sock), &echo.to_string(), T).await?;
    c2.write_all(b"new").await?;
    let mut b2 = [0u8; 3];
    tokio::time::timeout(T, c2.read_exact(&mut b2)).await??;
    assert_eq!(&b2, b"new");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_ends_finished_tunnels_cleanly_not_with_a_reset() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let mut spec = ServerSpec::grpc_uds(sock.clone());
    spec.extra.push("--v=5".into());
    let Loopback {
        server,
        agent: _agent,
        ..
    } = start_loopback(&pki, &spec, &[], dir.path())?;
    let f = Frontend::Uds(sock);

    // Closed by the client: it shuts down its side, then drops the stream.
    let echo = servers::echo("127.0.0.1:0").await?;
    let mut io = grpc_dial(&f, &echo.to_string(), T).await?;
    io.write_all(b"ping").await?;
    let mut got = [0u8; 4];
    tokio::time::timeout(T, io.read_exact(&mut got)).await??;
    assert_eq!(&got, b"ping");
    io.shutdown().await?;
    drop(io);

    // Closed by the node: the client reads to the end (the server's CLOSE_RSP), then
    // drops the stream.
    let source = servers::source("127.0.0.1:0").await?;
    let mut io = grpc_dial(&f, &source.to_string(), T).await?;
    io.write_u64(1000).await?;
    let mut body = Vec::new();
    tokio::time::timeout(T, io.read_to_end(&mut body)).await??;
    assert_eq!(body.len(), 1000);
    drop(io);

    // Both Proxy streams end with the client's END_STREAM, promptly (the client's close
    // wait is 10 s; it must not be what ends them), and none with a reset.
    let clean = || {
        server
            .log_text()
            .lines()
            .filter(|l| l.ends_with("frontend stream ended"))
            .count()
    };
    let start = std::time::Instant::now();
    while clean() < 2 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log_text();
    assert!(
        !log.contains("frontend stream ended with error"),
        "a finished tunnel was reset:\n{log}"
    );
    assert_eq!(clean(), 2, "{log}");
    Ok(())
}
