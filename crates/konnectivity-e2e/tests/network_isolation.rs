//! The Konnectivity use case on a real (virtual) network: the control plane and the
//! node live in two network namespaces joined by a veth pair, and the node's firewall
//! drops every connection the control plane opens toward it (a NAT-ed / firewalled
//! node). The agent dials out to the server, and the server then reaches the node's
//! kubelet port through the tunnel only. Needs root and `ip netns` + `iptables`;
//! fails (does not skip) when they are unavailable.
use std::path::Path;
use std::time::{Duration, Instant};

use konnectivity_client::{Frontend, connect_dial, grpc_dial};
use konnectivity_e2e::netns::{Namespaces, firewall_inbound, succeeds, veth_pair};
use konnectivity_e2e::{
    AgentKind, Proc, ServerSpec, start_agent, start_server, temp_pki, wait_for,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const ID: &str = "kubelet-on-isolated-node";
const T: Duration = Duration::from_secs(5);

/// Two namespaces joined by a veth pair; deleted on drop (after the processes, which
/// are declared later and so dropped first).
struct Net {
    cp: String,
    node: String,
    cp_ip: String,
    node_ip: String,
    _ns: Namespaces,
}

impl Net {
    fn new(tag: &str, subnet: u8) -> Net {
        let pid = std::process::id();
        let (cp, node) = (format!("kcp-{pid}-{tag}"), format!("knode-{pid}-{tag}"));
        let (cp_ip, node_ip) = (format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2"));
        let ns = Namespaces::create(&[cp.clone(), node.clone()]);
        veth_pair(&format!("kv{pid}{tag}"), &cp, &cp_ip, &node, &node_ip);
        // The node may open connections; the control plane may not open any toward it.
        firewall_inbound(&node);
        Net {
            cp,
            node,
            cp_ip,
            node_ip,
            _ns: ns,
        }
    }
}

/// Sends an HTTP/1.0 GET over `io` and returns everything the peer sent (after `pre`).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, pre: &[u8], host: &str) -> String {
    let req = format!("GET /id.txt HTTP/1.0\r\nHost: {host}\r\n\r\n");
    io.write_all(req.as_bytes())
        .await
        .expect("writing the request through the tunnel");
    let mut out = pre.to_vec();
    tokio::time::timeout(T, io.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("reading the response");
    String::from_utf8_lossy(&out).into_owned()
}

fn isolated_node_reached_through_tunnel(mode: &'static str, tag: &str, subnet: u8) {
    let started = Instant::now();
    let net = Net::new(tag, subnet);
    let (dir, pki) = temp_pki(&[&net.cp_ip]).expect("pki");
    let d = dir.path();

    // The node's kubelet stand-in.
    let www = d.join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("id.txt"), ID).expect("id.txt");
    let node_addr = format!("{}:10250", net.node_ip);
    let args: Vec<String> = [
        "-m",
        "http.server",
        "10250",
        "--bind",
        &net.node_ip,
        "--directory",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args = [args, vec![www.display().to_string()]].concat();
    let _kubelet =
        Proc::spawn("kubelet", Path::new("python3"), &args, Some(&net.node), d).expect("python3");
    let url = format!("http://{node_addr}/id.txt");
    wait_for("the node's :10250 (from the node)", T, || {
        succeeds(&net.node, &["curl", "-sf", "-m", "1", &url])
    })
    .expect("destination up");

    // (a) Without the tunnel, the control plane cannot reach the node.
    assert!(
        !succeeds(&net.cp, &["curl", "-s", "-m", "2", &url]),
        "the control-plane namespace reached {url} directly: the firewall is not isolating the node"
    );

    let sock = d.join("konnectivity.sock");
    let spec = ServerSpec {
        bind: net.cp_ip.clone(),
        ..ServerSpec::uds(mode, sock.clone())
    };
    let (_server, ports) =
        start_server("proxy-server", &pki, &spec, Some(&net.cp), d).expect("proxy-server");
    let (_agent, _) = start_agent(
        AgentKind::Ours,
        "proxy-agent",
        &pki,
        &net.cp_ip,
        ports.agent,
        &[],
        Some(&net.node),
        d,
    )
    .expect("proxy-agent");
    let readyz = format!("http://{}:{}/readyz", net.cp_ip, ports.health);
    wait_for(
        "proxy-server /readyz (agent connected)",
        Duration::from_secs(10),
        || succeeds(&net.cp, &["curl", "-sf", "-m", "1", &readyz]),
    )
    .expect("the agent in the node namespace connects out to the server");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let f = Frontend::Uds(sock);
    let refused_addr = format!("{}:10251", net.node_ip);
    rt.block_on(async {
        // (b) Through the tunnel, the node's port answers.
        let body = if mode == "grpc" {
            get(
                grpc_dial(&f, &node_addr, T)
                    .await
                    .expect("gRPC dial through the tunnel"),
                b"",
                &node_addr,
            )
            .await
        } else {
            let (io, rest) = connect_dial(&f, &node_addr, T)
                .await
                .expect("CONNECT through the tunnel");
            get(io, &rest, &node_addr).await
        };
        assert!(
            body.starts_with("HTTP/1.0 200"),
            "unexpected response through the tunnel: {body:?}"
        );
        assert!(
            body.ends_with(ID),
            "response without the node's identity: {body:?}"
        );

        // (c) A closed port on the node: the agent's dial is refused, and that is reported.
        let err = if mode == "grpc" {
            grpc_dial(&f, &refused_addr, T)
                .await
                .map(|_| ())
                .expect_err("dial to a closed port")
                .to_string()
        } else {
            connect_dial(&f, &refused_addr, T)
                .await
                .map(|_| ())
                .expect_err("CONNECT to a closed port")
                .to_string()
        };
        assert!(
            err.contains("connection refused"),
            "dial to {refused_addr}: unexpected error {err:?}"
        );
    });
    eprintln!(
        "{mode}: isolated node reached through the tunnel in {:?}",
        started.elapsed()
    );
}

#[test]
fn control_plane_reaches_node_only_through_the_tunnel() {
    isolated_node_reached_through_tunnel("grpc", "g", (std::process::id() % 100) as u8);
}

#[test]
fn control_plane_reaches_node_only_through_the_http_connect_tunnel() {
    isolated_node_reached_through_tunnel(
        "http-connect",
        "c",
        (std::process::id() % 100 + 100) as u8,
    );
}
