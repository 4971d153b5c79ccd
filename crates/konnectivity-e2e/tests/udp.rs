//! UDP through the tunnel with a real DNS server (issue 16 item 3): Debian's dnsmasq
//! answers an A query for a name only it knows (`--address=/name/ip`), and our Rust
//! client asks it over the gRPC frontend with `DialRequest.protocol "udp"`, one DNS
//! message per datagram per DATA packet. With our agent in a firewalled node namespace,
//! and with upstream's v0.36.0 agent behind our server on loopback (the mixed fleet:
//! upstream's agent does Go's `net.Dial("udp")`, the same wire behaviour), and with our
//! agent behind upstream's server.
//! Needs root, `ip netns`, iptables and dnsmasq (scripts/setup.sh installs
//! dnsmasq-base); fails (does not skip) without.
use std::time::Duration;

use bytes::Bytes;
use konnectivity_client::{ClientError, Frontend, grpc_dial_protocol};
use konnectivity_e2e::netns::{Link, firewall_inbound};
use konnectivity_e2e::{
    AgentKind, ServerKind, ServerSpec, assert_prints, free_port, start_across, start_pair,
    start_uds_loopback, temp_pki,
};

mod dns;
use dns::{ANSWER, NAME, a_answers, a_query, dnsmasq};

/// Asks the DNS server at `dns` for `NAME` through the tunnel, twice on one UDP
/// connection (two datagrams each way), and returns the addresses of both answers.
async fn resolve_through_tunnel(
    frontend: &Frontend,
    dns: &str,
) -> Result<Vec<[u8; 4]>, ClientError> {
    let mut conn = grpc_dial_protocol(frontend, "udp", dns, Duration::from_secs(10)).await?;
    let mut all = Vec::new();
    for id in [0x5151u16, 0x5152] {
        let q = a_query(id, NAME);
        conn.send_datagram(Bytes::from(q.clone()))
            .await
            .map_err(|e| ClientError::Dial(e.to_string()))?;
        let rsp = tokio::time::timeout(Duration::from_secs(10), conn.recv_datagram())
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Dial(e.to_string()))?
            .ok_or(ClientError::Closed)?;
        all.extend(a_answers(&q, &rsp).map_err(ClientError::Dial)?);
    }
    Ok(all)
}

/// [`resolve_through_tunnel`], retried for up to 5 s: dnsmasq may still be starting
/// (a first query can be refused by the port) and the agent may still be connecting.
async fn resolve_with_retries(frontend: &Frontend, dns: &str) -> Result<Vec<[u8; 4]>, ClientError> {
    let mut answers = Err(ClientError::Closed);
    for _ in 0..20 {
        answers = resolve_through_tunnel(frontend, dns).await;
        if answers.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsmasq_on_the_node_answers_a_query_over_udp_through_the_tunnel() {
    let link = Link::create("udp", 250 + (std::process::id() % 5) as u8);
    firewall_inbound(&link.node);
    let (dir, pki) = temp_pki(&[&link.cp_ip]).expect("pki");
    let d = dir.path();
    let _dns = dnsmasq(&link.node_ip, 53, Some(&link.node), d);

    let sock = d.join("konnectivity.sock");
    let spec = ServerSpec {
        bind: link.cp_ip.clone(),
        extra: vec!["--enable-udp".into()],
        ..ServerSpec::grpc_uds(sock.clone())
    };
    let (server, _ports, agent, agent_health) =
        start_across(&link, &pki, &spec, AgentKind::Ours, d).expect("server and agent");

    // The gRPC frontend is a UNIX socket: the test process reaches it from any namespace.
    assert_resolves(&Frontend::Uds(sock), &format!("{}:53", link.node_ip)).await;
    let metrics = konnectivity_e2e::netns::output(
        &link.node,
        &[
            "curl",
            "-sf",
            &format!("http://127.0.0.1:{agent_health}/metrics"),
        ],
    )
    .unwrap_or_default();
    assert!(
        metrics.contains("konnectivity_rs_agent_udp_datagrams_from_destination_total"),
        "{metrics}"
    );
    assert!(server.child_alive() && agent.child_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_agent_serves_udp_behind_our_server() {
    pair_on_loopback_resolves_over_udp(ServerKind::Ours, AgentKind::Upstreams, &["--enable-udp"])
        .await;
}

/// The other half of the mixed fleet: upstream's server forwards `udp` as it gets it,
/// and our agent serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_agent_serves_udp_behind_upstreams_server() {
    pair_on_loopback_resolves_over_udp(ServerKind::Upstreams, AgentKind::Ours, &[]).await;
}

/// A `server` (with `server_extra` flags) and an `agent` on loopback carry two DNS
/// queries to a dnsmasq on loopback, and both processes are alive afterwards.
async fn pair_on_loopback_resolves_over_udp(
    server: ServerKind,
    agent: AgentKind,
    server_extra: &[&str],
) {
    let (dir, pki) = temp_pki(&[]).expect("pki");
    let d = dir.path();
    let port = free_port();
    let _dns = dnsmasq("127.0.0.1", port, None, d);
    let sock = d.join("s.sock");
    let spec = ServerSpec {
        extra: server_extra.iter().map(|f| f.to_string()).collect(),
        ..ServerSpec::grpc_uds(sock.clone())
    };
    let pair = start_pair(server, agent, &pki, &spec, &[], d)
        .unwrap_or_else(|e| panic!("{server:?} server and {agent:?} agent: {e}"));
    assert_resolves(&Frontend::Uds(sock), &format!("127.0.0.1:{port}")).await;
    assert!(pair.server.child_alive() && pair.agent.child_alive());
}

/// Asserts that `dns`, asked through `frontend`, answers both queries with `ANSWER`.
async fn assert_resolves(frontend: &Frontend, dns: &str) {
    assert_eq!(
        resolve_with_retries(frontend, dns)
            .await
            .expect("dnsmasq answers"),
        vec![ANSWER, ANSWER]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn konnectivity_dial_udp_sends_each_line_as_a_datagram() {
    let (dir, pki) = temp_pki(&[]).expect("pki");
    let d = dir.path();
    let (_l, sock) =
        start_uds_loopback(&pki, d, vec!["--enable-udp".into()]).expect("server and agent");
    // A UDP echo that answers each datagram with its length and its bytes reversed,
    // so that merged or split datagrams would show.
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut reply = format!("{n}:").into_bytes();
            reply.extend(buf[..n].iter().rev());
            let _ = echo.send_to(&reply, from).await;
        }
    });
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let args = [
            "--uds".to_string(),
            sock.display().to_string(),
            "--udp".into(),
            addr.to_string(),
        ];
        let mut child =
            konnectivity_e2e::spawn_konnectivity_dial(&args, &[]).expect("konnectivity dial --udp");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"one\ntwo\nthree\n").expect("write");
        drop(stdin);
        child.wait_with_output().expect("output")
    })
    .await
    .expect("join");
    assert_prints("konnectivity dial --udp", &out, "3:eno\n3:owt\n5:eerht\n");
}

#[test]
fn a_dns_query_is_built_and_an_answer_parsed_as_rfc_1035_says() {
    let q = a_query(0x1234, "a.bc");
    assert_eq!(
        q,
        [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 1, 0, 1
        ]
    );
    let mut rsp = q.clone();
    rsp[2] = 0x81;
    rsp[3] = 0x80;
    rsp[7] = 1; // ANCOUNT 1
    rsp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 77, 0, 42]);
    assert_eq!(a_answers(&q, &rsp), Ok(vec![ANSWER]));
    rsp[3] = 0x83; // NXDOMAIN
    assert!(a_answers(&q, &rsp).is_err());
}
