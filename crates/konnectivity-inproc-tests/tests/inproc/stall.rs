//! Stalled consumers behind an agent without flow control (issue 14): the agent here
//! announces no window, as upstream's, so the server can only pause its stream. A
//! client that never reads is closed as stalled after `--stall-timeout`, the agent is
//! told (its destination connection ends), and another connection of the same agent
//! works before, during the pause's bounded wait, and after.
use std::time::Duration;

use konnectivity_testkit::inproc::{Harness, eventually};
use konnectivity_testkit::servers;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::{AGENT, echoes};

const STALL: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
enum Via {
    Grpc,
    Connect,
}

async fn a_client_that_never_reads_is_closed_as_stalled_and_the_agent_is_told(
    via: Via,
) -> anyhow::Result<()> {
    let h = Harness::new()?;
    let server = h
        .server(konnectivity_server::Settings {
            stall_timeout: STALL,
            ..Harness::server_settings()
        })
        .await?;
    let mut settings = h.agent_settings(AGENT, server.agent_addr)?;
    settings.hello.flow_window = None;
    let agent = h.agent(settings);
    server.wait_for_agents(1).await?;
    agent.wait_connected(1).await?;

    let echo = servers::echo("127.0.0.1:0").await?;
    let source = servers::source("127.0.0.1:0").await?;
    let mut other = server.grpc_dial(echo).await?;
    echoes(&mut other, b"before").await?;

    // Asks the source for far more than any buffer holds, and never reads.
    async fn ask<S: AsyncWrite + Unpin>(s: &mut S) -> anyhow::Result<()> {
        s.write_u64(1 << 40).await?;
        Ok(s.flush().await?)
    }
    let _stalled: Box<dyn std::any::Any + Send> = match via {
        Via::Grpc => {
            let mut s = server.grpc_dial(source).await?;
            ask(&mut s).await?;
            Box::new(s)
        }
        Via::Connect => {
            let (mut s, _) = server.connect_dial(source).await?;
            ask(&mut s).await?;
            Box::new(s)
        }
    };
    agent
        .wait_endpoints("two destination connections", 2, Duration::from_secs(5))
        .await?;
    // The bytes move over real sockets while the paused clock runs ahead whenever the
    // runtime waits on them, so the wait is bounded generously: the client's own
    // HTTP/2 windows fill first, then the queue goes over budget and the clock starts.
    eventually(
        "the never-reading client closed as stalled",
        Duration::from_secs(300),
        || server.shared.budget.stalled() == 1,
    )
    .await
    .map_err(|e| {
        let queued: Vec<_> = server.backends()[0]
            .conns()
            .values()
            .map(|c| c.queue.queued())
            .collect();
        anyhow::anyhow!(
            "{e}: {} bytes counted, {} pauses, queues {queued:?}, agent budget {}",
            server.shared.budget.used(),
            server.shared.budget.pauses(),
            agent.agent.budget.used()
        )
    })?;
    assert!(
        server.shared.budget.pauses() >= 1,
        "the agent's stream was paused, not read past the budget"
    );
    agent
        .wait_endpoints(
            "the agent told: its destination connection closed",
            1,
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(
        server.backends()[0].conns().len(),
        1,
        "only the other connection is left on the server"
    );
    assert_eq!(
        server.shared.budget.used(),
        0,
        "nothing is counted any more"
    );
    echoes(&mut other, b"after").await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_grpc_client_that_never_reads_is_closed_as_stalled_and_the_agent_is_told()
-> anyhow::Result<()> {
    a_client_that_never_reads_is_closed_as_stalled_and_the_agent_is_told(Via::Grpc).await
}

#[tokio::test(start_paused = true)]
async fn a_connect_client_that_never_reads_is_closed_as_stalled_and_the_agent_is_told()
-> anyhow::Result<()> {
    a_client_that_never_reads_is_closed_as_stalled_and_the_agent_is_told(Via::Connect).await
}
