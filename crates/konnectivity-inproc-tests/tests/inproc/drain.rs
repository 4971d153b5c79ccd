//! Agent drain: after DRAIN the server sends new dials to other agents, keeps the
//! draining agent's connections, and still uses a draining agent that is the only one.
use std::time::Duration;

use konnectivity_core::select::Candidate;
use konnectivity_testkit::inproc::{Harness, Server, eventually};
use konnectivity_testkit::servers;

use crate::echoes;

/// Waits until the server has marked the stream of `agent_id` draining.
async fn marked_draining(server: &Server, agent_id: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{agent_id} draining"),
        Duration::from_secs(1),
        || {
            server
                .backends()
                .iter()
                .any(|b| b.agent_id == agent_id && b.is_draining())
        },
    )
    .await
}

/// Open connections per agent ID on the server.
fn conns_of(server: &Server, agent_id: &str) -> usize {
    server
        .backends()
        .iter()
        .filter(|b| b.agent_id == agent_id)
        .map(|b| b.conns().len())
        .sum()
}

#[tokio::test(start_paused = true)]
async fn draining_agent_gets_no_new_dials_while_another_agent_can_serve() -> anyhow::Result<()> {
    let h = Harness::new()?;
    let server = h.server(Harness::server_settings()).await?;
    let a = h.agent(h.agent_settings("agent-a", server.agent_addr)?);
    let b = h.agent(h.agent_settings("agent-b", server.agent_addr)?);
    server.wait_for_agents(2).await?;
    let echo = servers::echo("127.0.0.1:0").await?;

    a.drain();
    marked_draining(&server, "agent-a").await?;
    let mut open = Vec::new();
    for i in 0..10 {
        let mut io = server.grpc_dial(echo).await?;
        echoes(&mut io, format!("grpc {i}").as_bytes()).await?;
        open.push(io);
    }
    let mut tunnels = Vec::new();
    for i in 0..10 {
        let (mut io, _) = server.connect_dial(echo).await?;
        echoes(&mut io, format!("connect {i}").as_bytes()).await?;
        tunnels.push(io);
    }
    assert_eq!(conns_of(&server, "agent-a"), 0);
    assert_eq!(conns_of(&server, "agent-b"), 20);
    drop(b);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn lone_draining_agent_keeps_its_connections_and_still_serves_new_dials() -> anyhow::Result<()>
{
    let h = Harness::new()?;
    let server = h.server(Harness::server_settings()).await?;
    let a = h.agent(h.agent_settings("agent-a", server.agent_addr)?);
    server.wait_for_agents(1).await?;
    let echo = servers::echo("127.0.0.1:0").await?;
    let mut before = server.grpc_dial(echo).await?;

    a.drain();
    marked_draining(&server, "agent-a").await?;
    echoes(&mut before, b"established before DRAIN").await?;
    let mut after = server.grpc_dial(echo).await?;
    echoes(&mut after, b"dialed after DRAIN").await?;
    let (mut io, _) = server.connect_dial(echo).await?;
    echoes(&mut io, b"CONNECT after DRAIN").await?;
    assert_eq!(conns_of(&server, "agent-a"), 3);
    Ok(())
}
