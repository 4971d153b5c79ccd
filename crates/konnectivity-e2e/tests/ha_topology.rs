//! Many nodes, many servers, on a real (virtual) network: one control-plane namespace
//! with proxy-servers on several addresses, three node namespaces each with a
//! proxy-agent and a kubelet-like backend on :10250 that answers its node name. Nodes
//! can dial the control plane; the control plane cannot open connections to nodes.
//!
//! Proves destHost and cidr routing through every server, dead-agent detection after a
//! partition, agent kill/restart, server replacement without agent restarts, drain on
//! SIGTERM during a transfer, and readiness. Needs root, iproute2, iptables, python3.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use konnectivity_client::{ClientError, Frontend, grpc_dial};
use konnectivity_e2e::netns::{Bridge, Namespaces, curl, firewall_inbound, metric, must, output};
use konnectivity_e2e::{Proc, bin, free_port, wait_for};
use konnectivity_testkit::argv::{AgentArgv, Listener, ServerArgv};
use konnectivity_testkit::pki::{self, Pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NET: &str = "10.233.0";
const KEEPALIVE: &str = "2s";

fn server_ip(k: usize) -> String {
    format!("{NET}.{k}")
}
fn node_ip(n: usize) -> String {
    format!("{NET}.{}", 10 + n)
}

struct Server {
    proc: Proc,
    uds: PathBuf,
    health: u16,
    ip: String,
}

fn start_server(
    k: usize,
    cp: &str,
    pki: &Pki,
    dir: &Path,
    agent_port: u16,
) -> anyhow::Result<Server> {
    let ip = server_ip(k);
    let uds = dir.join(format!("server{k}.sock"));
    let health = free_port();
    let args = ServerArgv::new(&format!("server{k}"), "grpc", pki)
        .uds_frontend(&uds)
        .listen(Listener::Agent, &ip, agent_port)
        .listen(Listener::Health, &ip, health)
        .listen(Listener::Admin, "", free_port())
        .args([
            "--server-count=3".to_owned(),
            "--proxy-strategies=destHost,defaultRoute".to_owned(),
            format!("--keepalive-time={KEEPALIVE}"),
        ])
        .build();
    let proc = Proc::spawn(
        &format!("server{k}"),
        &bin("proxy-server")?,
        &args,
        Some(cp),
        dir,
    )?;
    let s = Server {
        proc,
        uds,
        health,
        ip,
    };
    wait_for("server health", Duration::from_secs(10), || {
        curl(cp, &format!("http://{}:{}/healthz", s.ip, s.health)).is_some()
    })?;
    Ok(s)
}

fn server_metrics(cp: &str, s: &Server) -> String {
    curl(cp, &format!("http://{}:{}/metrics", s.ip, s.health)).unwrap_or_default()
}

fn dest_host_keys(cp: &str, s: &Server) -> f64 {
    metric(
        &server_metrics(cp, s),
        "konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"destHost\"}",
    )
    .unwrap_or(-1.0)
}

/// Waits up to `secs` seconds until every server in `servers` counts `keys` destHost
/// keys (`what` names the wait).
fn wait_dest_host_keys(
    cp: &str,
    servers: &[Server],
    keys: f64,
    what: &str,
    secs: u64,
) -> anyhow::Result<()> {
    wait_for(what, Duration::from_secs(secs), || {
        servers.iter().all(|s| dest_host_keys(cp, s) == keys)
    })
}

struct Agent {
    proc: Proc,
    health: u16,
    ns: String,
}

fn start_agent(
    n: usize,
    ns: &str,
    pki: &Pki,
    dir: &Path,
    agent_port: u16,
    tag: &str,
) -> anyhow::Result<Agent> {
    let health = free_port();
    let hosts = (1..=4).map(server_ip).collect::<Vec<_>>().join(",");
    let default_route = if n == 3 { "" } else { "&default-route=true" };
    let args = AgentArgv::new(&format!("node{n}"), pki, &hosts, agent_port)
        .ports(health)
        .args([format!(
            "--agent-identifiers=host=node{n}&ipv4={}&cidr=10.244.{n}.0/24{default_route}",
            node_ip(n)
        )])
        .sync("200ms", "1s")
        .args([format!("--keepalive-time={KEEPALIVE}")])
        .build();
    let proc = Proc::spawn(
        &format!("agent{n}{tag}"),
        &bin("proxy-agent")?,
        &args,
        Some(ns),
        dir,
    )?;
    Ok(Agent {
        proc,
        health,
        ns: ns.to_owned(),
    })
}

fn open_servers(a: &Agent) -> f64 {
    curl(&a.ns, &format!("http://127.0.0.1:{}/metrics", a.health))
        .and_then(|m| {
            metric(
                &m,
                "konnectivity_network_proxy_agent_open_server_connections",
            )
        })
        .unwrap_or(-1.0)
}

/// GET /name through `server` to `addr`; the node name that answered.
async fn whoami(s: &Server, addr: &str) -> Result<String, ClientError> {
    let mut io = grpc_dial(&Frontend::Uds(s.uds.clone()), addr, Duration::from_secs(10)).await?;
    io.write_all(b"GET /name HTTP/1.0\r\n\r\n")
        .await
        .map_err(ClientError::Connect)?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(ClientError::Connect)?;
    let text = String::from_utf8_lossy(&out);
    Ok(text
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// Inserts (`op` `-I`) or deletes (`-D`) the iptables rules that cut the node namespace
/// `ns` off the control-plane network, both ways.
fn cut_off(ns: &str, op: &str) {
    let net = format!("{NET}.0/24");
    must(ns, &["iptables", op, "OUTPUT", "-d", &net, "-j", "DROP"]);
    must(ns, &["iptables", op, "INPUT", "-s", &net, "-j", "DROP"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_ha_partition_and_lifecycle_across_three_nodes() {
    let (_ns, cp, nodes) = Namespaces::control_plane_and_nodes("kha", 3);
    let dir = tempfile::tempdir().unwrap();

    // The control plane: a bridge holding the four server addresses.
    let bridge = Bridge::create(&cp, &(1..=4).map(server_ip).collect::<Vec<_>>());
    for (i, ns) in nodes.iter().enumerate() {
        let n = i + 1;
        bridge.attach(n, ns, &node_ip(n));
        // A pod IP in this node's CIDR, and a "service" address every node serves.
        must(
            ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.244.{n}.7/32"),
                "dev",
                "lo",
            ],
        );
        must(ns, &["ip", "addr", "add", "10.96.0.10/32", "dev", "lo"]);
        // Firewalled node: nothing from outside may open a connection to it.
        firewall_inbound(ns);
    }

    // Kubelet stand-ins: /name answers the node name; /big is 100 MiB.
    let mut backends = Vec::new();
    for (i, ns) in nodes.iter().enumerate() {
        let n = i + 1;
        let d = dir.path().join(format!("www{n}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("name"), format!("node{n}")).unwrap();
        if n == 1 {
            let f = std::fs::File::create(d.join("big")).unwrap();
            f.set_len(100 << 20).unwrap();
        }
        let args: Vec<String> = [
            "-m",
            "http.server",
            "10250",
            "--bind",
            "0.0.0.0",
            "--directory",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([d.display().to_string()])
        .collect();
        let py = PathBuf::from(
            output("", &["sh", "-c", "command -v python3"])
                .unwrap_or_default()
                .trim(),
        );
        backends
            .push(Proc::spawn(&format!("kubelet{n}"), &py, &args, Some(ns), dir.path()).unwrap());
    }
    for (i, ns) in nodes.iter().enumerate() {
        wait_for("kubelet stand-in", Duration::from_secs(10), || {
            curl(ns, &format!("http://{}:10250/name", node_ip(i + 1))).is_some()
        })
        .unwrap();
    }
    // Isolation: the control plane cannot open a connection to a node.
    assert!(
        curl(&cp, &format!("http://{}:10250/name", node_ip(1))).is_none(),
        "control plane reached a node directly"
    );

    let sans: Vec<String> = (1..=4).map(server_ip).collect();
    let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
    let pki = pki::generate(&dir.path().join("pki"), &sans).unwrap();
    let agent_port = free_port();
    let mut servers: Vec<Server> = (1..=3)
        .map(|k| start_server(k, &cp, &pki, dir.path(), agent_port))
        .collect::<anyhow::Result<_>>()
        .unwrap();
    let mut agents: Vec<Agent> = (1..=3)
        .map(|n| start_agent(n, &nodes[n - 1], &pki, dir.path(), agent_port, ""))
        .collect::<anyhow::Result<_>>()
        .unwrap();

    // Every agent connects to every server directly (comma list, no load balancer).
    let t = Instant::now();
    wait_for(
        "every agent connected to 3 servers",
        Duration::from_secs(20),
        || agents.iter().all(|a| open_servers(a) == 3.0),
    )
    .unwrap();
    println!("3 agents connected to 3 servers in {:?}", t.elapsed());
    for s in &servers {
        // destHost keys: host=nodeN and ipv4 per agent.
        assert_eq!(dest_host_keys(&cp, s), 6.0);
        assert_eq!(
            curl(&cp, &format!("http://{}:{}/readyz", s.ip, s.health)).as_deref(),
            Some("ok")
        );
    }

    // destHost through every server, and cidr routing of a pod IP.
    for s in &servers {
        for n in 1..=3 {
            assert_eq!(
                whoami(s, &format!("{}:10250", node_ip(n))).await.unwrap(),
                format!("node{n}"),
                "via {}",
                s.ip
            );
        }
        assert_eq!(
            whoami(s, "10.244.2.7:10250").await.unwrap(),
            "node2",
            "cidr routing via {}",
            s.ip
        );
    }

    // Partition node 3 from the control plane: detected within two keepalive periods.
    cut_off(&nodes[2], "-I");
    let t = Instant::now();
    wait_dest_host_keys(
        &cp,
        &servers,
        4.0,
        "partitioned agent removed on every server",
        15,
    )
    .unwrap();
    let detect = t.elapsed();
    println!("partition detected on all servers in {detect:?} (keepalive {KEEPALIVE})");
    assert!(
        detect <= Duration::from_secs(2 * 2 + 2),
        "detection took {detect:?}"
    );
    // Its node is now unreachable with a clear error; the others are unaffected.
    let t = Instant::now();
    let e = whoami(&servers[0], &format!("{}:10250", node_ip(3)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "dial to the partitioned node took {:?}",
        t.elapsed()
    );
    assert!(
        e.contains("i/o timeout") || e.contains("No agent available") || e.contains("unreachable"),
        "{e}"
    );
    assert_eq!(
        whoami(&servers[1], &format!("{}:10250", node_ip(1)))
            .await
            .unwrap(),
        "node1"
    );
    // Heal: the agent reconnects on its own.
    cut_off(&nodes[2], "-D");
    wait_dest_host_keys(&cp, &servers, 6.0, "healed agent back on every server", 20).unwrap();
    assert_eq!(
        whoami(&servers[2], &format!("{}:10250", node_ip(3)))
            .await
            .unwrap(),
        "node3"
    );

    // SIGKILL an agent: its node fails promptly, others are unaffected; restart works.
    agents[1].proc.signal("KILL");
    wait_dest_host_keys(&cp, &servers, 4.0, "killed agent removed", 10).unwrap();
    let t = Instant::now();
    let e = whoami(&servers[0], "10.244.2.7:10250")
        .await
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(!e.is_empty());
    assert_eq!(
        whoami(&servers[0], &format!("{}:10250", node_ip(3)))
            .await
            .unwrap(),
        "node3"
    );
    agents[1] = start_agent(2, &nodes[1], &pki, dir.path(), agent_port, "-restarted").unwrap();
    wait_dest_host_keys(&cp, &servers, 6.0, "restarted agent on every server", 20).unwrap();
    assert_eq!(
        whoami(&servers[0], "10.244.2.7:10250").await.unwrap(),
        "node2"
    );

    // Replace a server: kill server 1, add server 4; agents converge without restarts.
    servers[0].proc.kill();
    wait_for(
        "agents notice the lost server",
        Duration::from_secs(15),
        || agents.iter().all(|a| open_servers(a) == 2.0),
    )
    .unwrap();
    let verbose = curl(
        &nodes[0],
        &format!("http://127.0.0.1:{}/readyz?verbose", agents[0].health),
    )
    .unwrap_or_default();
    assert!(
        verbose.contains("degraded: connected to 2 of 3 servers"),
        "{verbose}"
    );
    let t = Instant::now();
    servers[0] = start_server(4, &cp, &pki, dir.path(), agent_port).unwrap();
    wait_for(
        "every agent connected to the new server",
        Duration::from_secs(20),
        || agents.iter().all(|a| open_servers(a) == 3.0) && dest_host_keys(&cp, &servers[0]) == 6.0,
    )
    .unwrap();
    println!(
        "all agents connected to a newly added server in {:?}",
        t.elapsed()
    );
    assert_eq!(
        whoami(&servers[0], &format!("{}:10250", node_ip(2)))
            .await
            .unwrap(),
        "node2"
    );

    // SIGTERM an agent during a 100 MiB download: the transfer completes, and new
    // default-routed dials go to the other default-route agent.
    let mut io = grpc_dial(
        &Frontend::Uds(servers[1].uds.clone()),
        &format!("{}:10250", node_ip(1)),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    io.write_all(b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
    let mut first = vec![0u8; 1 << 20];
    io.read_exact(&mut first).await.unwrap();
    agents[0].proc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        assert_eq!(
            whoami(&servers[1], "10.96.0.10:10250").await.unwrap(),
            "node2",
            "a new dial went to the draining agent"
        );
    }
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), io.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let body = first.len() + rest.len();
    assert!(body > 100 << 20, "transfer cut short at {body} bytes");
    // Like upstream, the draining agent stays (a fallback when it is the only
    // candidate) until a second signal.
    assert!(
        matches!(agents[0].proc.child.try_wait(), Ok(None)),
        "the draining agent exited on the first SIGTERM"
    );
    agents[0].proc.signal("TERM");
    wait_for(
        "agent exits on the second signal",
        Duration::from_secs(10),
        || matches!(agents[0].proc.child.try_wait(), Ok(Some(_))),
    )
    .unwrap();
    drop(backends);
}
