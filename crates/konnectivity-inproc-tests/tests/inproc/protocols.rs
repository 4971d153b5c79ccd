//! The protocol allowlist (issue 16): a DIAL_REQ asking for anything but `tcp` is
//! refused by the server before an agent is chosen, and by our agent before it dials
//! (upstream's agent hands the string to Go's dialer, so `unix` reaches a UNIX socket
//! on the node). A real UNIX socket listens at the address each test names, and must
//! never see a connection.
use std::time::Duration;

use konnectivity_core::PacketType;
use konnectivity_core::dial::DialError;
use konnectivity_core::packet::{self, Kind};
use konnectivity_core::protocol::Protocol;
use konnectivity_server::metrics::DialFailureReason;
use konnectivity_server::state::{DialOutcome, Pending};
use konnectivity_server::status::document::FrontendKind;
use konnectivity_testkit::inproc::Harness;
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use crate::one_agent;

/// A UNIX socket listening on the node (in the harness's directory), and its path.
fn node_socket(h: &Harness) -> anyhow::Result<(UnixListener, String)> {
    let path = h.socket_path("node-runtime");
    let listener = UnixListener::bind(&path)?;
    Ok((listener, path.to_string_lossy().into_owned()))
}

/// Fails if anything connects to `l` within a second (of the test's clock).
async fn never_connected(l: &UnixListener) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(1), l.accept()).await {
        Err(_) => Ok(()),
        Ok(r) => anyhow::bail!("the UNIX socket was connected to: {r:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn server_refuses_protocols_other_than_tcp_without_asking_an_agent() -> anyhow::Result<()> {
    let (h, server, agent) = one_agent(Harness::server_settings()).await?;
    let (node_socket, path) = node_socket(&h)?;
    for (random, protocol, address) in [
        (7, "unix", path.as_str()),
        (8, "udp", "127.0.0.1:53"),
        (9, "", "127.0.0.1:53"),
        (10, "TCP", "127.0.0.1:53"),
    ] {
        let mut raw = server.raw_proxy().await?;
        raw.send(packet::dial_req(protocol, address, random))
            .await?;
        let rsp = tokio::time::timeout(Duration::from_secs(10), raw.recv())
            .await??
            .ok_or_else(|| anyhow::anyhow!("no DIAL_RSP"))?;
        assert_eq!(packet::kind(&rsp), Kind::Known(PacketType::DialRsp));
        let r = packet::dial_response(&rsp);
        assert_eq!(r.random, random);
        assert_eq!(r.connect_id, 0);
        assert_eq!(
            r.error,
            format!("protocol {protocol:?} is not allowed (allowed: tcp)")
        );
    }
    never_connected(&node_socket).await?;
    assert!(server.shared.pending().is_empty());
    let metrics = &server.shared.metrics;
    assert_eq!(
        metrics.dial_failures(DialFailureReason::ProtocolNotAllowed),
        4
    );
    assert_eq!(metrics.dial_failures(DialFailureReason::NoAgent), 0);
    // Nothing reached the agent: it neither dialed nor refused anything.
    let agent_metrics = agent.agent.metrics.render();
    assert!(
        !agent_metrics.contains("endpoint_dial_failure_total{"),
        "{agent_metrics}"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn agent_refuses_protocols_it_does_not_serve_instead_of_dialing_tcp() -> anyhow::Result<()> {
    let (h, server, agent) = one_agent(Harness::server_settings()).await?;
    let (node_socket, path) = node_socket(&h)?;
    // What an upstream server would do: forward the frontend's protocol verbatim. The
    // test registers the pending dial and sends the DIAL_REQ on the agent's stream.
    let backend = server
        .backends()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no agent stream"))?;
    let shared = &server.shared;
    let (tx, rx) = oneshot::channel();
    shared.pending().insert(
        42,
        Pending::new(
            backend.clone(),
            tx,
            shared.next_id(),
            &path,
            FrontendKind::Grpc,
            Protocol::Tcp,
            shared.dial_failures.clone(),
        ),
    );
    backend.tx.send(packet::dial_req("unix", &path, 42)).await?;
    let outcome = tokio::time::timeout(Duration::from_secs(10), rx).await??;
    let DialOutcome::Failed(DialError::Agent(text)) = outcome else {
        anyhow::bail!("expected the agent's refusal, got {outcome:?}");
    };
    assert_eq!(
        text,
        r#"protocol "unix" is not allowed (allowed: tcp, udp)"#
    );
    never_connected(&node_socket).await?;
    let agent_metrics = agent.agent.metrics.render();
    assert!(
        agent_metrics.contains(
            "konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason=\"protocol_not_allowed\"} 1"
        ),
        "{agent_metrics}"
    );
    Ok(())
}
