//! `--max-pending-dials-per-agent` and `--max-connections-per-agent`: the dial over
//! the limit is refused at once with a text naming the flag, and the limit frees up
//! when a dial or connection ends.
use std::time::Duration;

use konnectivity_agent::dialer::DIAL_TIMEOUT;
use konnectivity_testkit::inproc::{Harness, eventually};
use konnectivity_testkit::servers;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::{AGENT, assert_at, connect_error, dial_error, echoes, one_agent};

#[tokio::test(start_paused = true)]
async fn pending_dials_over_the_per_agent_limit_are_refused_at_once() -> anyhow::Result<()> {
    let (_h, server, _agent) = one_agent(konnectivity_server::Settings {
        max_pending_per_agent: 2,
        backend_dial_timeout: None,
        dial_deadline: None,
        ..Harness::server_settings()
    })
    .await?;
    let server = std::sync::Arc::new(server);
    let hang = servers::unresponsive()?;
    let echo = servers::echo("127.0.0.1:0").await?;
    let t = Instant::now();
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let server = server.clone();
            let addr = hang.addr();
            tokio::spawn(async move { server.grpc_dial(addr).await.map(drop) })
        })
        .collect();
    eventually("two pending dials", Duration::from_secs(1), || {
        server.shared.pending().len() == 2
    })
    .await?;

    let limit =
        format!("too many pending dials on agent {AGENT} (--max-pending-dials-per-agent=2)");
    let third = Instant::now();
    assert_eq!(dial_error(server.grpc_dial(echo).await)?, limit);
    let (status, body) = connect_error(server.connect_dial(echo).await)?;
    assert_at(third.elapsed(), Duration::ZERO);
    assert_eq!(status, "503 Service Unavailable");
    assert_eq!(body, limit);

    // The agent gives up on the two stuck dials; their places free up.
    for s in stuck {
        let text = dial_error(s.await?)?;
        assert!(text.ends_with("i/o timeout"), "{text}");
    }
    assert_at(t.elapsed(), DIAL_TIMEOUT);
    let mut io = server.grpc_dial(echo).await?;
    echoes(&mut io, b"after the limit").await
}

#[tokio::test(start_paused = true)]
async fn connections_over_the_per_agent_limit_are_refused_until_one_closes() -> anyhow::Result<()> {
    let (_h, server, agent) = one_agent(konnectivity_server::Settings {
        max_conns_per_agent: 1,
        ..Harness::server_settings()
    })
    .await?;
    let echo = servers::echo("127.0.0.1:0").await?;
    let mut first = server.grpc_dial(echo).await?;
    echoes(&mut first, b"first").await?;

    let limit =
        format!("too many connections through agent {AGENT} (--max-connections-per-agent=1)");
    assert_eq!(dial_error(server.grpc_dial(echo).await)?, limit);
    let (status, body) = connect_error(server.connect_dial(echo).await)?;
    // A limit is a limit, whichever one: 503 like --max-pending-dials-per-agent.
    assert_eq!(status, "503 Service Unavailable");
    assert_eq!(body, limit);
    // The agent had dialed them; the server's CLOSE_REQ closes them there too.
    agent
        .wait_endpoints(
            "refused connections closed on the agent",
            1,
            Duration::from_secs(1),
        )
        .await?;
    echoes(&mut first, b"still served").await?;

    first.shutdown().await?;
    drop(first);
    eventually(
        "the first connection closed",
        Duration::from_secs(1),
        || server.backends().iter().all(|b| b.conns().is_empty()),
    )
    .await?;
    let (mut io, _) = server.connect_dial(echo).await?;
    echoes(&mut io, b"after the limit").await
}
