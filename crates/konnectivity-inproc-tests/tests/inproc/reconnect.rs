//! The agent's sync loop when its server goes away: attempts the server's host
//! answers (here: accepted and closed at once) back off ×1.5 from `--sync-interval` up
//! to `--sync-interval-cap`, each delay drawn from the upper half of its bound (equal
//! jitter, `konnectivity_agent::backoff`), the agent is back within one capped interval
//! of the server's return, and a success resets the backoff.
use std::time::Duration;

use konnectivity_testkit::inproc::Harness;
use konnectivity_testkit::relay::{Link, Relay};
use konnectivity_testkit::servers;
use tokio::time::Instant;

use crate::echoes;

const INTERVAL: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(4);

/// The gaps between the connection attempts the relay saw from `since` on.
fn gaps(relay: &Relay, since: Instant) -> Vec<Duration> {
    let at: Vec<_> = relay
        .accepted()
        .into_iter()
        .filter(|t| *t >= since)
        .collect();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Asserts `gap` is within the upper half of `base` (equal jitter).
#[track_caller]
fn assert_jittered(gap: Duration, base: Duration) {
    assert!(
        gap >= base / 2 && gap <= base + Duration::from_millis(20),
        "gap {gap:?}, expected {:?}–{base:?}",
        base / 2
    );
}

#[tokio::test(start_paused = true)]
async fn agent_backs_off_while_the_server_is_away_and_reconnects_when_it_returns()
-> anyhow::Result<()> {
    let h = Harness::new()?;
    let server = h.server(Harness::server_settings()).await?;
    let relay = Relay::start(server.agent_addr).await?;
    let agent = h.agent(konnectivity_agent::Settings {
        sync_interval: INTERVAL,
        sync_interval_cap: CAP,
        ..h.agent_settings("agent", relay.addr())?
    });
    server.wait_for_agents(1).await?;
    let echo = servers::echo("127.0.0.1:0").await?;

    for outage in 0..2 {
        let down = Instant::now();
        relay.set(Link::Refusing);
        agent.wait_connected(0).await?;
        server.wait_for_agents(0).await?;
        tokio::time::sleep(Duration::from_secs(20)).await;
        let gaps = gaps(&relay, down);
        // Bounds 1, 1.5, 2.25, 3.375, then the 4 s cap: at least 6 attempts in 20 s.
        assert!(gaps.len() >= 6, "outage {outage}: attempts {gaps:?}");
        let mut base = INTERVAL;
        for gap in &gaps {
            assert_jittered(*gap, base);
            base = base.mul_f64(1.5).min(CAP);
        }
        let first = relay.accepted().into_iter().find(|t| *t >= down);
        assert!(
            first.is_some_and(|t| t - down <= INTERVAL.mul_f64(1.1)),
            "the first attempt comes at the next sync tick"
        );

        let up = Instant::now();
        relay.set(Link::Forwarding);
        agent.wait_connected(1).await?;
        server.wait_for_agents(1).await?;
        assert!(
            up.elapsed() <= CAP + Duration::from_millis(20),
            "back {:?} after the server returned",
            up.elapsed()
        );
        let mut io = server.grpc_dial(echo).await?;
        echoes(&mut io, b"through the new stream").await?;
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn connected_agent_makes_no_further_attempts() -> anyhow::Result<()> {
    // An agent that wants one server and has it dials nothing more, however many
    // sync intervals pass.
    let h = Harness::new()?;
    let server = h.server(Harness::server_settings()).await?;
    let relay = Relay::start(server.agent_addr).await?;
    let _agent = h.agent(h.agent_settings("agent", relay.addr())?);
    server.wait_for_agents(1).await?;
    let since = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(relay.accepted().len(), 1);
    assert_eq!(gaps(&relay, since), Vec::<Duration>::new());
    assert!(server.shared.ready());
    Ok(())
}
