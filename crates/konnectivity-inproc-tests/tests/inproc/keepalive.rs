//! Keepalive loss: an agent link that goes silent (a frozen relay: no FIN, no RST) is
//! noticed by both ends within two keepalive periods; dials pending on it are then
//! answered at once, and the agent reconnects when the link returns.
use std::time::Duration;

use konnectivity_core::wire;
use konnectivity_testkit::inproc::{Harness, eventually};
use konnectivity_testkit::relay::{Link, Relay};
use konnectivity_testkit::servers;
use tokio::time::Instant;

use crate::{connect_error, dial_error, echoes};

const KEEPALIVE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);

#[tokio::test(start_paused = true)]
async fn silent_agent_link_is_noticed_by_both_sides_within_two_keepalive_periods()
-> anyhow::Result<()> {
    let h = Harness::new()?;
    let server = std::sync::Arc::new(
        h.server(konnectivity_server::Settings {
            agent_keepalive: KEEPALIVE,
            ..Harness::server_settings()
        })
        .await?,
    );
    let relay = Relay::start(server.agent_addr).await?;
    let agent = h.agent(konnectivity_agent::Settings {
        keepalive: KEEPALIVE,
        ..h.agent_settings("agent", relay.addr())?
    });
    server.wait_for_agents(1).await?;
    let echo = servers::echo("127.0.0.1:0").await?;

    // A healthy idle link survives many keepalive periods.
    tokio::time::sleep(KEEPALIVE * 10).await;
    assert_eq!(relay.accepted().len(), 1, "the agent never reconnected");
    let mut io = server.grpc_dial(echo).await?;
    echoes(&mut io, b"healthy").await?;
    drop(io);

    let frozen = Instant::now();
    relay.set(Link::Frozen);
    // Dials sent into the silent link stay pending until the server gives up on it.
    let grpc = {
        let server = server.clone();
        tokio::spawn(async move { (server.grpc_dial(echo).await.map(drop), frozen.elapsed()) })
    };
    let connect = {
        let server = server.clone();
        tokio::spawn(async move { (server.connect_dial(echo).await.map(drop), frozen.elapsed()) })
    };
    eventually("two pending dials", Duration::from_secs(1), || {
        server.shared.pending().len() == 2
    })
    .await?;

    // Observed by polling every 10 ms of the test's clock: one step of slack.
    let within = KEEPALIVE * 2 + POLL;
    eventually("server drops the agent", within, || {
        server.shared.table().streams() == 0
    })
    .await?;
    eventually("agent drops the server", within, || {
        agent.agent.connected() == 0
    })
    .await?;

    // The pending dials were answered the moment the server dropped the stream.
    let (r, answered) = grpc.await?;
    assert_eq!(dial_error(r)?, wire::AGENT_DISCONNECTED);
    assert!(
        answered <= KEEPALIVE * 2,
        "gRPC dial answered after {answered:?}"
    );
    let (r, answered) = connect.await?;
    let (status, body) = connect_error(r)?;
    assert_eq!(status, "502 Bad Gateway");
    assert_eq!(body, "Backend context error: context canceled\r\n");
    assert!(
        answered <= KEEPALIVE * 2,
        "CONNECT answered after {answered:?}"
    );

    relay.set(Link::Forwarding);
    agent.wait_connected(1).await?;
    server.wait_for_agents(1).await?;
    let mut io = server.grpc_dial(echo).await?;
    echoes(&mut io, b"link is back").await
}
