//! `--node-name` on the agent side: the Node's pod CIDRs announced as `cidr=`
//! identifiers (`Agent::announce_pod_cidrs`, fed by `konnectivity_k8s::node` in the
//! binary). With `destHost` as the only strategy a pod IP is served only by the agent
//! whose Node owns its CIDR: not before the announcement, by that agent after it, and
//! after a change only for the new CIDR (the agent reconnects to re-announce).
use konnectivity_core::select::Strategy;
use konnectivity_testkit::inproc::Harness;
use konnectivity_testkit::servers;

use crate::{dial_error, echoes};

/// Dials `addr` every 100 ms of the test's clock until a dial succeeds (the agent has
/// reconnected with its new identifiers), for at most 10 s.
async fn dial_once_routed(
    server: &konnectivity_testkit::inproc::Server,
    addr: std::net::SocketAddr,
) -> anyhow::Result<konnectivity_client::GrpcStream> {
    let mut last = None;
    for _ in 0..100 {
        match server.grpc_dial(addr).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("{addr} never routed: {last:?}")
}

/// A server of `h` with `destHost` as its only strategy.
async fn dest_host_only(h: &Harness) -> anyhow::Result<konnectivity_testkit::inproc::Server> {
    h.server(konnectivity_server::Settings {
        strategies: vec![Strategy::DestHost],
        ..Harness::server_settings()
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn pod_ips_route_to_the_agent_whose_node_owns_their_cidr_and_follow_a_change()
-> anyhow::Result<()> {
    let h = Harness::new()?;
    let server = dest_host_only(&h).await?;
    let node1 = h.agent(h.agent_settings("node1", server.agent_addr)?);
    let node2 = h.agent(h.agent_settings("node2", server.agent_addr)?);
    server.wait_for_agents(2).await?;
    // "Pods" of node 2: loopback addresses in 127.0.2.0/24, then 127.0.3.0/24.
    let pod_a = servers::echo("127.0.2.5:0").await?;
    let pod_b = servers::echo("127.0.3.5:0").await?;

    let before = dial_error(server.grpc_dial(pod_a).await)?;
    assert!(before.contains("No agent available"), "{before}");

    assert!(node2.agent.announce_pod_cidrs(&["127.0.2.0/24".into()]));
    assert_eq!(node2.agent.identifiers(), "cidr=127.0.2.0/24");
    assert!(
        !node2.agent.announce_pod_cidrs(&["127.0.2.0/24".into()]),
        "the same CIDRs again change nothing"
    );
    let mut conn = dial_once_routed(&server, pod_a).await?;
    echoes(&mut conn, b"to a pod on node 2").await?;
    assert_eq!(
        (node1.open_endpoints(), node2.open_endpoints()),
        (0, 1),
        "node 2's agent holds the pod connection"
    );
    drop(conn);

    // The Node is re-registered with another CIDR: the agent re-announces.
    assert!(node2.agent.announce_pod_cidrs(&["127.0.3.0/24".into()]));
    let mut conn = dial_once_routed(&server, pod_b).await?;
    echoes(&mut conn, b"to the new CIDR").await?;
    let old = dial_error(server.grpc_dial(pod_a).await)?;
    assert!(old.contains("No agent available"), "{old}");
    Ok(())
}

/// The Node is deleted and re-created within one reconnect: the stream opened after
/// the deletion (announcing no CIDR) is still in its TLS handshake when the new CIDR
/// arrives. That stream must not stay registered with the stale identifiers; the
/// agent reconnects and announces the new CIDR.
#[tokio::test(start_paused = true)]
async fn identifiers_changed_while_a_stream_opens_are_announced_by_a_reconnect()
-> anyhow::Result<()> {
    use konnectivity_testkit::inproc::eventually;
    use konnectivity_testkit::relay::{Link, Relay};
    use std::time::Duration;

    let h = Harness::new()?;
    let server = dest_host_only(&h).await?;
    let relay = Relay::start(server.agent_addr).await?;
    let node = h.agent(h.agent_settings("node", relay.addr())?);
    server.wait_for_agents(1).await?;
    let pod_old = servers::echo("127.0.2.5:0").await?;
    let pod_new = servers::echo("127.0.3.5:0").await?;
    assert!(node.agent.announce_pod_cidrs(&["127.0.2.0/24".into()]));
    drop(dial_once_routed(&server, pod_old).await?);

    // The Node is deleted: the agent closes its stream and reconnects, and the new
    // stream is held in the relay before its handshake completes.
    relay.set(Link::Frozen);
    let accepted = relay.accepted().len();
    assert!(node.agent.announce_pod_cidrs(&[]));
    eventually(
        "the reconnect reaches the relay",
        Duration::from_secs(5),
        || relay.accepted().len() > accepted,
    )
    .await?;
    // Re-created with another CIDR while that stream is still opening.
    assert!(node.agent.announce_pod_cidrs(&["127.0.3.0/24".into()]));
    relay.set(Link::Forwarding);

    let mut conn = dial_once_routed(&server, pod_new).await?;
    echoes(&mut conn, b"to the re-created Node's pod").await?;
    let old = dial_error(server.grpc_dial(pod_old).await)?;
    assert!(old.contains("No agent available"), "{old}");
    Ok(())
}
