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

#[tokio::test(start_paused = true)]
async fn pod_ips_route_to_the_agent_whose_node_owns_their_cidr_and_follow_a_change()
-> anyhow::Result<()> {
    let h = Harness::new()?;
    let server = h
        .server(konnectivity_server::Settings {
            strategies: vec![Strategy::DestHost],
            ..Harness::server_settings()
        })
        .await?;
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
    let open = |a: &konnectivity_testkit::inproc::Agent| {
        a.agent
            .metrics
            .open_endpoint_connections
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        (open(&node1), open(&node2)),
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
