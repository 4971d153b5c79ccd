//! `konnectivity doctor` against real failures in a network-namespace topology: a
//! control-plane namespace (proxy-server) and two firewalled node namespaces (a
//! proxy-agent and a TLS "kubelet" on :10250 each), on 10.234.0.0/24. Every cause is
//! produced for real (iptables DROP/REJECT, a stopped agent, a missing listener, a
//! plain-HTTP port, blocked egress, a foreign CA, an expired token, an unresolvable
//! name) and doctor's JSON classification is asserted. Needs root, iproute2, iptables,
//! python3 and curl.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use konnectivity_e2e::netns::{Bridge, Namespaces, curl, firewall_inbound, must, output, succeeds};
use konnectivity_e2e::{Proc, bin, free_port, wait_for};
use konnectivity_testkit::argv::{AgentArgv, Listener, ServerArgv};
use konnectivity_testkit::pki::{self, Pki};
use serde_json::Value;

const NET: &str = "10.234.0";

fn cp_ip() -> String {
    format!("{NET}.1")
}
fn node_ip(n: usize) -> String {
    format!("{NET}.{}", 10 + n)
}

/// One control plane and two nodes; everything is killed and removed on drop.
struct Topology {
    cp: String,
    nodes: Vec<String>,
    pki: Pki,
    uds: PathBuf,
    admin: u16,
    agent_port: u16,
    // Dropped in this order: processes, then namespaces, then the directory (logs).
    agents: Vec<Option<Proc>>,
    _kubelets: Vec<Proc>,
    _server: Proc,
    _ns: Namespaces,
    dir: tempfile::TempDir,
}

/// `iptables -I <chain> 1 <rule>` (insert) or `-D <chain> <rule>` (delete) in `ns`.
fn iptables(ns: &str, insert: bool, chain: &str, rule: &[&str]) {
    let mut a = vec!["iptables", "-w", "5"];
    if insert {
        a.extend(["-I", chain, "1"]);
    } else {
        a.extend(["-D", chain]);
    }
    a.extend(rule);
    must(ns, &a);
}

fn python() -> PathBuf {
    PathBuf::from(
        output("", &["sh", "-c", "command -v python3"])
            .unwrap_or_default()
            .trim(),
    )
}

/// The flags proxy-agent `n` runs with (doctor agent takes the same).
fn agent_flags(t: &Topology, n: usize) -> Vec<String> {
    AgentArgv::new(&format!("node{n}"), &t.pki, &cp_ip(), t.agent_port)
        .args([format!(
            "--agent-identifiers=host=node{n}&ipv4={}",
            node_ip(n)
        )])
        .sync("200ms", "1s")
        .build()
}

fn status_agents(t: &Topology) -> usize {
    curl(&t.cp, &format!("http://127.0.0.1:{}/status", t.admin))
        .map(|b| b.matches("\"agent_id\"").count())
        .unwrap_or(0)
}

/// Whether, from the namespace `ns`, node `n`'s TLS kubelet stand-in answers within 2 s.
fn kubelet_answers(ns: &str, n: usize) -> bool {
    let url = format!("https://{}:10250/", node_ip(n));
    output(ns, &["curl", "-sk", "-m", "2", "-o", "/dev/null", &url]).is_some()
}

fn setup(tag: &str) -> Topology {
    let (ns, cp, nodes) = Namespaces::control_plane_and_nodes(&format!("kdoc{tag}"), 2);
    let dir = tempfile::tempdir().unwrap();

    let bridge = Bridge::create(&cp, &[cp_ip()]);
    for (i, node) in nodes.iter().enumerate() {
        bridge.attach(i + 1, node, &node_ip(i + 1));
        // Firewalled node: nothing from outside may open a connection to it.
        firewall_inbound(node);
    }
    let pki = pki::generate(&dir.path().join("pki"), &[&cp_ip()]).unwrap();

    // Kubelet stand-ins: TLS on :10250; node 1 also has plain HTTP on :10255.
    let tls_server = "import http.server,ssl,sys\n\
        s=http.server.HTTPServer(('0.0.0.0',10250),http.server.BaseHTTPRequestHandler)\n\
        c=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
        c.load_cert_chain(sys.argv[1],sys.argv[2])\n\
        s.socket=c.wrap_socket(s.socket,server_side=True)\n\
        s.serve_forever()\n";
    let mut kubelets = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let args = vec![
            "-c".to_owned(),
            tls_server.to_owned(),
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string(),
        ];
        kubelets.push(
            Proc::spawn(
                &format!("kubelet{}", i + 1),
                &python(),
                &args,
                Some(node),
                dir.path(),
            )
            .unwrap(),
        );
    }
    let args: Vec<String> = [
        "-m",
        "http.server",
        "10255",
        "--bind",
        "0.0.0.0",
        "--directory",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.path().display().to_string()])
    .collect();
    kubelets
        .push(Proc::spawn("plain-http", &python(), &args, Some(&nodes[0]), dir.path()).unwrap());

    let uds = dir.path().join("server.sock");
    let admin = free_port();
    let health = free_port();
    let agent_port = free_port();
    let server_args = ServerArgv::new("cp-server", "grpc", &pki)
        .uds_frontend(&uds)
        .listen(Listener::Agent, &cp_ip(), agent_port)
        .listen(Listener::Health, "127.0.0.1", health)
        .listen(Listener::Admin, "127.0.0.1", admin)
        .args(["--proxy-strategies=destHost,defaultRoute"])
        .build();
    let server = Proc::spawn(
        "server",
        &bin("proxy-server").unwrap(),
        &server_args,
        Some(&cp),
        dir.path(),
    )
    .unwrap();
    wait_for("server health", Duration::from_secs(10), || {
        curl(&cp, &format!("http://127.0.0.1:{health}/healthz")).is_some()
    })
    .unwrap();
    let mut t = Topology {
        cp,
        nodes,
        pki,
        uds,
        admin,
        agent_port,
        agents: Vec::new(),
        _kubelets: kubelets,
        _server: server,
        _ns: ns,
        dir,
    };
    for n in 1..=2 {
        let mut flags = agent_flags(&t, n);
        flags.push(format!("--health-server-port={}", free_port()));
        flags.push(format!("--admin-server-port={}", free_port()));
        let a = Proc::spawn(
            &format!("agent{n}"),
            &bin("proxy-agent").unwrap(),
            &flags,
            Some(&t.nodes[n - 1]),
            t.dir.path(),
        )
        .unwrap();
        t.agents.push(Some(a));
    }
    for (i, node) in t.nodes.iter().enumerate() {
        wait_for("kubelet stand-in (TLS)", Duration::from_secs(10), || {
            kubelet_answers(node, i + 1)
        })
        .unwrap();
    }
    wait_for("plain HTTP on node 1", Duration::from_secs(10), || {
        curl(&t.nodes[0], &format!("http://{}:10255/", node_ip(1))).is_some()
    })
    .unwrap();
    wait_for("both agents in /status", Duration::from_secs(20), || {
        status_agents(&t) == 2
    })
    .unwrap();
    // The control plane cannot open a connection to a node: only the tunnel can.
    assert!(
        !kubelet_answers(&t.cp, 1),
        "control plane reached a node directly"
    );
    t
}

/// Runs `konnectivity <args>` inside `ns` (bounded by 60 s); (exit code, stdout).
fn run_konnectivity(ns: &str, args: &[String]) -> (i32, String) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin("konnectivity").unwrap())
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code().unwrap_or(-1);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("konnectivity {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(out.path()).unwrap_or_default();
    let stderr = std::fs::read_to_string(err.path()).unwrap_or_default();
    if code != 0 && code != 1 || stdout.is_empty() {
        panic!("konnectivity {args:?} exited {code}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    }
    (code, stdout)
}

/// Runs doctor with `--output json`; (exit code, findings).
fn doctor(ns: &str, args: &[String]) -> (i32, Vec<Value>) {
    let mut a = args.to_vec();
    let pos = a.iter().position(|x| x == "--").unwrap_or(a.len());
    a.insert(pos, "--output=json".into());
    let (code, stdout) = run_konnectivity(ns, &a);
    println!(
        "$ konnectivity {} (in {ns}) -> exit {code}\n{stdout}",
        a.join(" ")
    );
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}):\n{stdout}"));
    let findings = v.as_array().cloned().unwrap_or_default();
    for f in &findings {
        for k in ["check", "target", "status", "cause", "hint"] {
            assert!(f[k].is_string(), "finding without {k}: {f}");
        }
    }
    (code, findings)
}

fn server_args(t: &Topology, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "doctor".into(),
        "server".into(),
        "--admin".into(),
        format!("127.0.0.1:{}", t.admin),
        "--uds".into(),
        t.uds.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn agent_args(doctor_flags: &[&str], agent_flags: Vec<String>) -> Vec<String> {
    let mut a: Vec<String> = vec!["doctor".into(), "agent".into()];
    a.extend(doctor_flags.iter().map(|s| s.to_string()));
    a.push("--".into());
    a.extend(agent_flags);
    a
}

/// The one finding of `check` on `target`.
fn get<'a>(fs: &'a [Value], check: &str, target: &str) -> &'a Value {
    let m: Vec<&Value> = fs
        .iter()
        .filter(|f| f["check"] == check && f["target"] == target)
        .collect();
    assert_eq!(
        m.len(),
        1,
        "expected one {check} finding for {target} in {fs:#?}"
    );
    m[0]
}

fn status_of(fs: &[Value], check: &str, target: &str) -> String {
    get(fs, check, target)["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn cause_of(fs: &[Value], check: &str, target: &str) -> String {
    get(fs, check, target)["cause"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn k(n: usize) -> String {
    format!("{}:10250", node_ip(n))
}

#[test]
fn doctor_reports_a_healthy_tunnel_and_exits_zero() {
    let t = setup("ok");
    let (code, fs) = doctor(&t.cp, &server_args(&t, &["--all-agents"]));
    assert_eq!(code, 0, "{fs:#?}");
    assert_eq!(
        status_of(&fs, "status", &format!("127.0.0.1:{}", t.admin)),
        "ok"
    );
    for n in 1..=2 {
        assert_eq!(status_of(&fs, "route", &node_ip(n)), "ok");
        assert!(
            cause_of(&fs, "route", &node_ip(n)).contains(&format!("agent node{n}")),
            "{fs:#?}"
        );
        assert_eq!(status_of(&fs, "dial", &k(n)), "ok");
        assert_eq!(status_of(&fs, "tls", &k(n)), "ok");
    }

    let (code, fs) = doctor(&t.nodes[0], &agent_args(&[], agent_flags(&t, 1)));
    assert_eq!(code, 0, "{fs:#?}");
    let server = format!("{}:{}", cp_ip(), t.agent_port);
    for check in ["tcp", "tls", "connect"] {
        assert_eq!(status_of(&fs, check, &server), "ok", "{check}: {fs:#?}");
    }
    assert!(
        cause_of(&fs, "connect", &server).contains("server cp-server accepted agent node1"),
        "{fs:#?}"
    );
    assert!(
        cause_of(&fs, "connect", &server).contains("checked without registering"),
        "{fs:#?}"
    );
    // proxy-agent's default --keepalive-time (1h) outlives a load balancer's idle timeout.
    assert_eq!(
        status_of(&fs, "keepalive", "--keepalive-time=1h0m0s"),
        "warning",
        "{fs:#?}"
    );
    assert_eq!(status_of(&fs, "kubelet", "127.0.0.1:10250"), "ok");
    assert_eq!(status_of(&fs, "kubelet", &k(1)), "ok");
}

#[test]
fn doctor_server_names_dropped_refused_unserved_and_non_tls_destinations() {
    let mut t = setup("srv");
    // Node 1 drops, node 2 rejects connections to :10250 (rules first in INPUT, so they
    // also apply to the agent's own dial from the node).
    let drop = ["-p", "tcp", "--dport", "10250", "-j", "DROP"];
    let reject = [
        "-p",
        "tcp",
        "--dport",
        "10250",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ];
    iptables(&t.nodes[0], true, "INPUT", &drop);
    iptables(&t.nodes[1], true, "INPUT", &reject);
    // The same run as JSON and for people (the latter is quoted in the README), at once.
    let started = Instant::now();
    let ((code, fs), (text_code, text)) = std::thread::scope(|sc| {
        let json = sc.spawn(|| doctor(&t.cp, &server_args(&t, &["--all-agents"])));
        let text = sc.spawn(|| run_konnectivity(&t.cp, &server_args(&t, &["--all-agents"])));
        (json.join().unwrap(), text.join().unwrap())
    });
    println!(
        "--all-agents with DROP and REJECT took {:?}; human output:\n{text}",
        started.elapsed()
    );
    assert_eq!(code, 1);
    assert_eq!(status_of(&fs, "route", &node_ip(1)), "ok");
    assert!(
        cause_of(&fs, "route", &node_ip(1)).contains("agent node1"),
        "{fs:#?}"
    );
    assert_eq!(status_of(&fs, "dial", &k(1)), "timed out", "{fs:#?}");
    assert!(
        cause_of(&fs, "dial", &k(1)).contains("i/o timeout"),
        "{fs:#?}"
    );
    assert!(
        get(&fs, "dial", &k(1))["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("firewall")
    );
    assert_eq!(status_of(&fs, "dial", &k(2)), "refused", "{fs:#?}");
    assert!(
        cause_of(&fs, "dial", &k(2)).contains("connection refused"),
        "{fs:#?}"
    );
    assert_eq!(text_code, 1);
    assert!(
        text.contains(
            "  timed out  dial 10.234.0.11:10250: packets to 10.234.0.11:10250 are dropped"
        ),
        "{text}"
    );
    assert!(
        text.contains("    refused  dial 10.234.0.12:10250: nothing accepts connections"),
        "{text}"
    );
    iptables(&t.nodes[0], false, "INPUT", &drop);
    iptables(&t.nodes[1], false, "INPUT", &reject);

    // No listener: refused. A plain-HTTP port: the tunnel connects, TLS fails.
    let (code, fs) = doctor(
        &t.cp,
        &server_args(&t, &["--node", &node_ip(1), "--port", "10259"]),
    );
    assert_eq!(code, 1);
    assert_eq!(
        status_of(&fs, "dial", &format!("{}:10259", node_ip(1))),
        "refused",
        "{fs:#?}"
    );
    let (code, fs) = doctor(
        &t.cp,
        &server_args(&t, &["--node", &node_ip(1), "--port", "10255"]),
    );
    assert_eq!(code, 1);
    let plain = format!("{}:10255", node_ip(1));
    assert_eq!(status_of(&fs, "dial", &plain), "ok", "{fs:#?}");
    assert_eq!(status_of(&fs, "tls", &plain), "tls failed", "{fs:#?}");

    // Agent stopped: nobody serves node 2 any more.
    if let Some(mut a) = t.agents[1].take() {
        a.kill();
    }
    wait_for("agent 2 gone from /status", Duration::from_secs(15), || {
        status_agents(&t) == 1
    })
    .unwrap();
    let (code, fs) = doctor(
        &t.cp,
        &server_args(&t, &["--node", &node_ip(2), "--node", &node_ip(1)]),
    );
    assert_eq!(code, 1);
    assert_eq!(status_of(&fs, "route", &node_ip(2)), "no agent", "{fs:#?}");
    assert_eq!(status_of(&fs, "dial", &k(2)), "no agent", "{fs:#?}");
    assert!(
        cause_of(&fs, "dial", &k(2)).contains("No agent available"),
        "{fs:#?}"
    );
    assert_eq!(status_of(&fs, "dial", &k(1)), "ok", "{fs:#?}");
}

fn with_flag(mut flags: Vec<String>, name: &str, value: &str) -> Vec<String> {
    flags.retain(|f| !f.starts_with(&format!("--{name}=")));
    flags.push(format!("--{name}={value}"));
    flags
}

/// A JWT (unsigned, "alg":"none") whose payload carries `exp`.
fn jwt(exp: u64) -> String {
    fn b64url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
    let payload = format!(
        r#"{{"aud":["system:konnectivity-server"],"exp":{exp},"iat":{},"sub":"system:serviceaccount:kube-system:konnectivity-agent"}}"#,
        exp - 3600
    );
    format!(
        "{}.{}.c2ln",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(payload.as_bytes())
    )
}

#[test]
fn doctor_agent_names_blocked_egress_foreign_ca_expired_token_and_bad_dns() {
    let t = setup("agt");
    let server = format!("{}:{}", cp_ip(), t.agent_port);
    let port = t.agent_port.to_string();

    // Egress from node 2 to the agent port dropped.
    let cp = cp_ip();
    let rule = ["-p", "tcp", "-d", &cp, "--dport", &port, "-j", "DROP"];
    iptables(&t.nodes[1], true, "OUTPUT", &rule);
    let (code, fs) = doctor(
        &t.nodes[1],
        &agent_args(&["--timeout", "2s"], agent_flags(&t, 2)),
    );
    assert_eq!(code, 1);
    assert_eq!(status_of(&fs, "tcp", &server), "timed out", "{fs:#?}");
    assert!(
        cause_of(&fs, "tcp", &server).contains("egress blocked"),
        "{fs:#?}"
    );
    // No other usual agent port answers on the control plane either.
    assert_eq!(status_of(&fs, "ports", &cp), "warning", "{fs:#?}");
    assert!(
        cause_of(&fs, "ports", &cp).contains("no usual agent port answers"),
        "{fs:#?}"
    );
    // Something listens on 443 (as on an AKS-style control plane): doctor names it.
    let args: Vec<String> = ["-m", "http.server", "443", "--bind", &cp]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let https = Proc::spawn("on-443", &python(), &args, Some(&t.cp), t.dir.path()).unwrap();
    wait_for("a listener on 443", Duration::from_secs(5), || {
        succeeds(
            &t.nodes[1],
            &["curl", "-s", "-m", "1", &format!("http://{cp}:443/")],
        )
    })
    .unwrap();
    let (code, fs) = doctor(
        &t.nodes[1],
        &agent_args(&["--timeout", "2s"], agent_flags(&t, 2)),
    );
    assert_eq!(code, 1);
    assert!(
        cause_of(&fs, "ports", &cp).contains("but 443 on"),
        "{fs:#?}"
    );
    assert!(
        get(&fs, "ports", &cp)["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("--proxy-server-port"),
        "{fs:#?}"
    );
    drop(https);
    assert_eq!(status_of(&fs, "kubelet", &k(2)), "ok", "{fs:#?}");
    iptables(&t.nodes[1], false, "OUTPUT", &rule);

    // A CA that did not sign the server's certificate.
    let other = pki::generate(&t.dir.path().join("other-pki"), &[&cp_ip()]).unwrap();
    let flags = with_flag(
        agent_flags(&t, 1),
        "ca-cert",
        &other.ca.display().to_string(),
    );
    let (code, fs) = doctor(&t.nodes[0], &agent_args(&[], flags));
    assert_eq!(code, 1);
    assert_eq!(status_of(&fs, "tcp", &server), "ok", "{fs:#?}");
    assert_eq!(status_of(&fs, "tls", &server), "tls failed", "{fs:#?}");
    assert!(
        cause_of(&fs, "tls", &server).starts_with("unknown authority"),
        "{fs:#?}"
    );

    // An expired ServiceAccount token.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = t.dir.path().join("token");
    std::fs::write(&token, jwt(now - 7200)).unwrap();
    let path = token.display().to_string();
    let flags = with_flag(agent_flags(&t, 1), "service-account-token-path", &path);
    let (code, fs) = doctor(&t.nodes[0], &agent_args(&[], flags.clone()));
    assert_eq!(code, 1);
    assert_eq!(status_of(&fs, "token", &path), "expired", "{fs:#?}");
    assert!(
        cause_of(&fs, "token", &path).contains("(2h ago)"),
        "{fs:#?}"
    );
    std::fs::write(&token, jwt(now + 3600)).unwrap();
    let (code, fs) = doctor(&t.nodes[0], &agent_args(&[], flags));
    assert_eq!(status_of(&fs, "token", &path), "ok", "{fs:#?}");
    assert_eq!(code, 0, "{fs:#?}");

    // A server name that does not resolve.
    let flags = with_flag(
        agent_flags(&t, 1),
        "proxy-server-host",
        "konnectivity.invalid",
    );
    let (code, fs) = doctor(&t.nodes[0], &agent_args(&[], flags));
    assert_eq!(code, 1);
    assert_eq!(
        status_of(&fs, "dns", "konnectivity.invalid"),
        "dns failed",
        "{fs:#?}"
    );
}
