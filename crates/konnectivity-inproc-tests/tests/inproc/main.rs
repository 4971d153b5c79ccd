//! The in-process tier: a real proxy-server and proxy-agents in this process over
//! loopback, on tokio's paused clock (`konnectivity_testkit::inproc`). Each test states
//! a behaviour that takes seconds of protocol time and checks it, with the times it
//! happens at, in milliseconds of wall time.
mod agent_check;
mod dial_timeouts;
mod drain;
mod isolation;
mod keepalive;
mod limits;
mod pod_cidrs;
mod protocols;
mod reconnect;
mod socks5;
mod stall;
mod status;
mod udp;

use std::net::SocketAddr;
use std::time::Duration;

use konnectivity_client::ClientError;
use konnectivity_server::Settings;
use konnectivity_testkit::inproc::{Agent, Harness, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The agent ID of [`one_agent`]'s agent.
pub const AGENT: &str = "inproc-agent";

/// A harness with a server on `settings` and one connected agent, [`AGENT`].
pub async fn one_agent(settings: Settings) -> anyhow::Result<(Harness, Server, Agent)> {
    let h = Harness::new()?;
    let server = h.server(settings).await?;
    let agent = h.agent(h.agent_settings(AGENT, server.agent_addr)?);
    server.wait_for_agents(1).await?;
    agent.wait_connected(1).await?;
    Ok((h, server, agent))
}

/// [`one_agent`] on the default settings, and an echo server on loopback to dial.
pub async fn one_agent_and_echo() -> anyhow::Result<(Harness, Server, Agent, SocketAddr)> {
    let (h, server, agent) = one_agent(Harness::server_settings()).await?;
    let echo = konnectivity_testkit::servers::echo("127.0.0.1:0").await?;
    Ok((h, server, agent, echo))
}

/// The text of a refused dial.
pub fn dial_error<T>(r: Result<T, ClientError>) -> anyhow::Result<String> {
    match r {
        Err(ClientError::Dial(text)) => Ok(text),
        Err(e) => anyhow::bail!("expected a dial error, got {e:?}"),
        Ok(_) => anyhow::bail!("expected a dial error, the dial succeeded"),
    }
}

/// The status line and body of a refused CONNECT.
pub fn connect_error<T>(r: Result<T, ClientError>) -> anyhow::Result<(String, String)> {
    match r {
        Err(ClientError::Http { status, body }) => Ok((status, body)),
        Err(e) => anyhow::bail!("expected an HTTP error, got {e:?}"),
        Ok(_) => anyhow::bail!("expected an HTTP error, the CONNECT succeeded"),
    }
}

/// Writes `msg` and reads it back (the destination is an echo server).
pub async fn echoes<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    msg: &[u8],
) -> anyhow::Result<()> {
    io.write_all(msg).await?;
    io.flush().await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut back)).await??;
    anyhow::ensure!(
        back == msg,
        "sent {:?}, the echo returned {:?}",
        String::from_utf8_lossy(msg),
        String::from_utf8_lossy(&back)
    );
    Ok(())
}

/// Asserts that `elapsed` is `expected`, give or take the paused clock's
/// 10 ms polling steps.
#[track_caller]
pub fn assert_at(elapsed: Duration, expected: Duration) {
    assert!(
        elapsed >= expected && elapsed <= expected + Duration::from_millis(50),
        "happened after {elapsed:?}, expected {expected:?}"
    );
}
