//! The SOCKS5 frontend with a real client: `curl --socks5-hostname` in the control
//! plane's network namespace, through our proxy-server (SOCKS5 on a loopback port) and
//! our proxy-agent or upstream's in a firewalled node namespace, to an HTTP server on the
//! node. By the node's IP, and by a name only the node can resolve (an
//! `/etc/netns/<node>/hosts` entry, which `ip netns exec` bind-mounts over `/etc/hosts`
//! for the agent only). Then the port's authentication: RFC 1929 username/password
//! (curl `--proxy-user`, `konnectivity dial --socks5-user`) and TLS with client
//! certificates (curl through `socat`, `konnectivity dial --socks5 --cert`). Needs
//! root, `ip netns`, iptables, curl, python3 and socat; fails (does not skip) without.
use std::path::{Path, PathBuf};
use std::time::Duration;

use konnectivity_e2e::netns::{Link, firewall_inbound, output, succeeds};
use konnectivity_e2e::{
    AgentKind, Proc, ServerSpec, assert_fails_with, free_port, start_across, start_loopback,
    start_uds_loopback, temp_pki, wait_for,
};
use konnectivity_testkit::pki;

const ID: &str = "served-on-the-node";
const NAME: &str = "kubelet.node-only.test";

/// `/etc/netns/<ns>/hosts` for the node namespace; removed on drop.
struct NodeHosts(PathBuf);

impl NodeHosts {
    fn create(ns: &str, line: &str) -> NodeHosts {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("/etc/netns/<ns>");
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{line}\n")).expect("hosts");
        NodeHosts(dir)
    }
}

impl Drop for NodeHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `curl` in `ns` through the SOCKS5 proxy at `proxy`; the body, or curl's exit status
/// and message.
fn curl_socks(ns: &str, proxy: &str, url: &str) -> Result<String, String> {
    let args = [
        "curl",
        "-sS",
        "-f",
        "-m",
        "10",
        "--socks5-hostname",
        proxy,
        url,
    ];
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn curl_reaches_the_node_through_socks5_by_ip_and_by_a_name_only_the_node_resolves() {
    curl_through_socks5_to_the_node(AgentKind::Ours, "s5", 200);
}

#[test]
fn curl_reaches_the_node_through_socks5_with_upstreams_agent() {
    curl_through_socks5_to_the_node(AgentKind::Upstreams, "s5g", 150);
}

fn curl_through_socks5_to_the_node(which: AgentKind, prefix: &str, subnet: u8) {
    let link = Link::create(prefix, subnet + (std::process::id() % 50) as u8);
    firewall_inbound(&link.node);
    let _hosts = NodeHosts::create(&link.node, &format!("{} {NAME}", link.node_ip));
    let (dir, pki) = temp_pki(&[&link.cp_ip]).expect("pki");
    let d = dir.path();

    let www = d.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("id.txt"), ID).expect("id.txt");
    let args: Vec<String> = [
        "-m",
        "http.server",
        "10250",
        "--bind",
        &link.node_ip,
        "--directory",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([www.display().to_string()])
    .collect();
    let _www =
        Proc::spawn("www", Path::new("python3"), &args, Some(&link.node), d).expect("python3");
    let by_ip = format!("http://{}:10250/id.txt", link.node_ip);
    let by_name = format!("http://{NAME}:10250/id.txt");
    wait_for("the node's HTTP server", Duration::from_secs(5), || {
        succeeds(&link.node, &["curl", "-sf", "-m", "1", &by_ip])
    })
    .expect("destination up");
    assert!(
        succeeds(&link.node, &["curl", "-sf", "-m", "1", &by_name]),
        "the node resolves {NAME}"
    );
    // Without the tunnel the control plane reaches neither.
    assert!(!succeeds(&link.cp, &["curl", "-s", "-m", "2", &by_ip]));
    assert!(!succeeds(&link.cp, &["curl", "-s", "-m", "2", &by_name]));

    let socks_port = free_port();
    let sock = d.join("konnectivity.sock");
    let spec = ServerSpec {
        bind: link.cp_ip.clone(),
        extra: vec![
            format!("--socks5-port={socks_port}"),
            format!("--socks5-uds={}", d.join("socks5.sock").display()),
        ],
        ..ServerSpec::grpc_uds(sock)
    };
    let (server, _ports, agent, _) =
        start_across(&link, &pki, &spec, which, d).expect("server and agent");

    let proxy = format!("127.0.0.1:{socks_port}");
    assert_eq!(curl_socks(&link.cp, &proxy, &by_ip).as_deref(), Ok(ID));
    assert_eq!(curl_socks(&link.cp, &proxy, &by_name).as_deref(), Ok(ID));
    // A closed port on the node: curl reports the refusal (reply 0x05).
    let refused = curl_socks(&link.cp, &proxy, &format!("http://{}:10251/", link.node_ip))
        .expect_err("a closed port");
    assert!(refused.contains("(5)"), "reply 0x05 expected: {refused}");
    // The SOCKS5 port listens on loopback only.
    assert!(
        !succeeds(
            &link.node,
            &[
                "curl",
                "-s",
                "-m",
                "2",
                "--socks5-hostname",
                &format!("{}:{socks_port}", link.cp_ip),
                &by_ip
            ]
        ),
        "the SOCKS5 port answered on the control plane's network address"
    );
    let listening = output(&link.cp, &["ss", "-ltnH"]).unwrap_or_default();
    assert!(
        listening.contains(&format!("127.0.0.1:{socks_port}")),
        "{listening}"
    );
    assert!(server.child_alive() && agent.child_alive());
}

#[test]
fn a_socks5_bind_address_that_is_not_loopback_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(konnectivity_e2e::bin("proxy-server").expect("built"))
        .args([
            "--uds-name",
            &dir.path().join("s.sock").display().to_string(),
            "--server-port=0",
            "--socks5-port=1080",
            "--socks5-bind-address=0.0.0.0",
        ])
        .output()
        .expect("proxy-server runs");
    assert_fails_with(&out, "--socks5-bind-address must be a loopback address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn konnectivity_dial_relays_through_the_socks5_frontend() {
    let (dir, pki) = temp_pki(&[]).expect("pki");
    let d = dir.path();
    let socks = d.join("socks5.sock");
    let (_l, _) = start_uds_loopback(&pki, d, vec![format!("--socks5-uds={}", socks.display())])
        .expect("server and agent");
    let echo = konnectivity_testkit::servers::echo("127.0.0.1:0")
        .await
        .expect("echo");
    let socks = socks.display().to_string();
    let dial = move |dest: String| {
        let args = vec!["--socks5".into(), socks.clone(), dest];
        dial_line(args, vec![], b"through socks5\n")
    };
    let (line, status, stderr) = tokio::task::spawn_blocking({
        let dial = dial.clone();
        move || dial(format!("localhost:{}", echo.port()))
    })
    .await
    .expect("join");
    assert!(status.success(), "{stderr}");
    assert_eq!(line, "through socks5\n");

    let closed = konnectivity_testkit::servers::closed_port().expect("port");
    let (_, status, stderr) = tokio::task::spawn_blocking(move || dial(closed.to_string()))
        .await
        .expect("join");
    assert!(!status.success());
    assert!(stderr.contains("connection refused (reply 5)"), "{stderr}");
}

/// With `--socks5-auth-file` the port may face the network (here 0.0.0.0) and every
/// client must authenticate (RFC 1929): curl with the right `--proxy-user` gets through,
/// a wrong password is answered `01 01`, a client offering no username/password
/// method `05 FF`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_auth_file_admits_curl_with_its_password_and_refuses_the_rest() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dir, pki) = temp_pki(&[]).expect("pki");
    let d = dir.path();
    let users = d.join("socks5-users");
    std::fs::write(&users, "# who may use SOCKS5\nops:s3cret:2\nother:pw\n").expect("users");
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let socks_port = free_port();
    let flags = vec![
        format!("--socks5-port={socks_port}"),
        "--socks5-bind-address=0.0.0.0".into(),
        format!("--socks5-auth-file={}", users.display()),
    ];
    let (_l, _) = start_uds_loopback(&pki, d, flags).expect("server and agent");
    let url = id_server().await;
    let proxy = format!("127.0.0.1:{socks_port}");
    let curl = |user: &'static str| {
        let (proxy, url) = (proxy.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            output(
                "",
                &[
                    "curl",
                    "-s",
                    "-m",
                    "5",
                    "--socks5-hostname",
                    &proxy,
                    "--proxy-user",
                    user,
                    &url,
                ],
            )
        })
    };
    assert_eq!(
        curl("ops:s3cret:2").await.expect("join").as_deref(),
        Some(ID),
        "the right password gets through"
    );
    assert_eq!(curl("ops:wrong").await.expect("join"), None, "curl fails");

    let exchange = |bytes: Vec<Vec<u8>>| {
        let proxy = proxy.clone();
        async move {
            let mut c = tokio::net::TcpStream::connect(&proxy)
                .await
                .expect("connect");
            let mut answers = Vec::new();
            for (msg, want) in bytes.iter().zip([2usize, 2]) {
                c.write_all(msg).await.expect("write");
                let mut a = vec![0u8; want];
                c.read_exact(&mut a).await.expect("answer");
                answers.push(a);
            }
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
            (answers, rest)
        }
    };
    let mut wrong = vec![1, 3];
    wrong.extend_from_slice(b"ops");
    wrong.push(5);
    wrong.extend_from_slice(b"wrong");
    let (answers, rest) = exchange(vec![vec![5, 1, 2], wrong]).await;
    assert_eq!(answers, [vec![5, 2], vec![1, 1]], "method 2, then status 1");
    assert!(rest.is_empty(), "closed after the rejection: {rest:?}");
    let (answers, rest) = exchange(vec![vec![5, 1, 0]]).await;
    assert_eq!(answers, [vec![5, 0xFF]], "no username/password offered");
    assert!(rest.is_empty());

    // `konnectivity dial --socks5-user`, the password from the environment.
    let echo = konnectivity_testkit::servers::echo("127.0.0.1:0")
        .await
        .expect("echo");
    let dial = |password: &'static str| {
        let args = vec![
            "--socks5".into(),
            proxy.clone(),
            "--socks5-user".into(),
            "ops".into(),
            format!("127.0.0.1:{}", echo.port()),
        ];
        tokio::task::spawn_blocking(move || {
            dial_line(
                args,
                vec![("KONNECTIVITY_SOCKS5_PASSWORD", password)],
                b"with a password\n",
            )
        })
    };
    let (line, _, stderr) = dial("s3cret:2").await.expect("join");
    assert_eq!(line, "with a password\n", "{stderr}");
    let (line, _, stderr) = dial("wrong").await.expect("join");
    assert_eq!(line, "");
    assert!(
        stderr.contains("rejected the username or password"),
        "{stderr}"
    );
}

/// Runs `konnectivity dial <args>` with `env`, writes `msg` (one line) to its stdin and
/// reads one line back before closing stdin (the tunnel has no half-close): that line,
/// the exit status and stderr.
fn dial_line(
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    msg: &'static [u8],
) -> (String, std::process::ExitStatus, String) {
    use std::io::Write;
    let mut child =
        konnectivity_e2e::spawn_konnectivity_dial(&args, &env).expect("konnectivity dial");
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(msg);
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let _ = std::io::BufRead::read_line(&mut stdout, &mut line);
    drop(stdin);
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (line, out.status, stderr)
}

/// One fixed HTTP response (`ID`) per connection, on a loopback port; its URL.
async fn id_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let www = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/id.txt", www.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut c, _)) = www.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
                let body = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{ID}",
                    ID.len()
                );
                let _ = c.write_all(body.as_bytes()).await;
                let _ = c.shutdown().await;
            });
        }
    });
    url
}

/// `socat` as a TLS client of the SOCKS5 port: plain TCP on a loopback port in, TLS
/// (with `cert`/`key` when given, verifying the server against `ca`) out. curl speaks
/// SOCKS5 through it, as a TLS-wrapping sidecar would. The local port.
fn socat_tls(
    socks_port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    dir: &Path,
) -> (Proc, u16) {
    let local = free_port();
    let mut out = format!(
        "OPENSSL:127.0.0.1:{socks_port},cafile={},commonname=localhost",
        ca.display()
    );
    if let Some((cert, key)) = client {
        out.push_str(&format!(",cert={},key={}", cert.display(), key.display()));
    }
    let args = vec![
        format!("TCP-LISTEN:{local},bind=127.0.0.1,reuseaddr,fork"),
        out,
    ];
    let p = Proc::spawn("socat", Path::new("socat"), &args, None, dir).expect("socat");
    wait_for("socat listening", Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", local)).is_ok()
    })
    .expect("socat up");
    (p, local)
}

/// With `--socks5-tls-cert-file`/`--socks5-tls-key-file` the SOCKS5 port speaks TLS and
/// requires a client certificate from the frontend client CA (`--server-ca-cert` here,
/// the default of `--socks5-tls-client-ca-file`), so it may face the network (0.0.0.0)
/// without a password file. curl through `socat` presenting the frontend client
/// certificate gets through; without a certificate, with one from another CA, or in
/// plain SOCKS5 it does not. `konnectivity dial --socks5 --ca --cert --key` dials the
/// same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_over_tls_admits_only_clients_with_a_certificate_from_the_frontend_ca() {
    let (dir, pki) = temp_pki(&[]).expect("pki");
    let d = dir.path();
    let stranger = pki::generate(&d.join("other-pki"), &[]).expect("another CA");
    let socks_port = free_port();
    let spec = ServerSpec {
        mode: "grpc",
        uds: None,
        bind: "127.0.0.1".into(),
        extra: vec![
            format!("--socks5-port={socks_port}"),
            "--socks5-bind-address=0.0.0.0".into(),
            format!("--socks5-tls-cert-file={}", pki.server_cert.display()),
            format!("--socks5-tls-key-file={}", pki.server_key.display()),
        ],
    };
    let _l = start_loopback(&pki, &spec, &[], d).expect("server and agent");
    let url = id_server().await;
    let curl_via = |local: u16| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let proxy = format!("127.0.0.1:{local}");
            output(
                "",
                &["curl", "-s", "-m", "5", "--socks5-hostname", &proxy, &url],
            )
        })
    };

    let (_ok, ok_port) = socat_tls(
        socks_port,
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
        d,
    );
    assert_eq!(
        curl_via(ok_port).await.expect("join").as_deref(),
        Some(ID),
        "a client certificate from the frontend CA gets through"
    );
    let (_anon, anon_port) = socat_tls(socks_port, &pki.ca, None, d);
    assert_eq!(
        curl_via(anon_port).await.expect("join"),
        None,
        "no client certificate"
    );
    let (_foreign, foreign_port) = socat_tls(
        socks_port,
        &pki.ca,
        Some((&stranger.client_cert, &stranger.client_key)),
        d,
    );
    assert_eq!(
        curl_via(foreign_port).await.expect("join"),
        None,
        "a client certificate from another CA"
    );
    assert_eq!(
        curl_via(socks_port).await.expect("join"),
        None,
        "plain SOCKS5 to the TLS port"
    );

    // Our CLI over the same port.
    let echo = konnectivity_testkit::servers::echo("127.0.0.1:0")
        .await
        .expect("echo");
    let args = vec![
        "--socks5".into(),
        format!("127.0.0.1:{socks_port}"),
        "--ca".into(),
        pki.ca.display().to_string(),
        "--cert".into(),
        pki.client_cert.display().to_string(),
        "--key".into(),
        pki.client_key.display().to_string(),
        "--server-name".into(),
        "localhost".into(),
        format!("127.0.0.1:{}", echo.port()),
    ];
    let (line, _, stderr) =
        tokio::task::spawn_blocking(move || dial_line(args, vec![], b"through socks5 over tls\n"))
            .await
            .expect("join");
    assert_eq!(line, "through socks5 over tls\n", "{stderr}");
}

#[test]
fn a_socks5_tls_certificate_without_any_client_ca_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki::generate(&dir.path().join("pki"), &[]).expect("pki");
    let out = std::process::Command::new(konnectivity_e2e::bin("proxy-server").expect("built"))
        .args([
            "--uds-name",
            &dir.path().join("s.sock").display().to_string(),
            "--server-port=0",
        ])
        .args(["--agent-port", &free_port().to_string()])
        .args(["--health-port", &free_port().to_string()])
        .args(["--admin-port", &free_port().to_string()])
        .args(["--socks5-port", &free_port().to_string()])
        .args([
            "--socks5-tls-cert-file",
            &pki.server_cert.display().to_string(),
        ])
        .args([
            "--socks5-tls-key-file",
            &pki.server_key.display().to_string(),
        ])
        .args(["--cluster-cert", &pki.server_cert.display().to_string()])
        .args(["--cluster-key", &pki.server_key.display().to_string()])
        .output()
        .expect("proxy-server runs");
    assert_fails_with(
        &out,
        "--socks5-tls-cert-file needs a CA for client certificates",
    );
}
