//! Frontend isolation (issue 15): a frontend may only name the connect ID its own dial
//! established. A raw `ProxyService.Proxy` stream naming another frontend's connect ID
//! in DATA or CLOSE_REQ must neither inject bytes into that connection nor close it.
use std::time::Duration;

use bytes::Bytes;
use konnectivity_core::PacketType;
use konnectivity_core::packet::{self, Kind};
use konnectivity_testkit::inproc::{Harness, RawProxy, Server};
use konnectivity_testkit::servers;
use tokio::io::AsyncReadExt;

use crate::{echoes, one_agent};

/// Where the hostile stream's own dial is when it names the victim's ID.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// Its dial is still pending (a destination that never answers).
    Dialing,
    /// Its own connection is established.
    Established,
}

/// A raw stream with a dial of its own in `state`, and the destination that keeps a
/// pending dial pending.
async fn hostile_stream(
    server: &Server,
    state: Hostile,
) -> anyhow::Result<(RawProxy, Option<servers::Unresponsive>)> {
    let mut raw = server.raw_proxy().await?;
    match state {
        Hostile::Dialing => {
            let hang = servers::unresponsive()?;
            raw.send(packet::dial_req("tcp", &hang.addr().to_string(), 7))
                .await?;
            return Ok((raw, Some(hang)));
        }
        Hostile::Established => {
            let echo = servers::echo("127.0.0.1:0").await?;
            raw.send(packet::dial_req("tcp", &echo.to_string(), 7))
                .await?;
            let rsp = tokio::time::timeout(Duration::from_secs(10), raw.recv())
                .await??
                .ok_or_else(|| anyhow::anyhow!("no DIAL_RSP"))?;
            anyhow::ensure!(packet::kind(&rsp) == Kind::Known(PacketType::DialRsp));
            anyhow::ensure!(packet::dial_response(&rsp).error.is_empty());
        }
    }
    Ok((raw, None))
}

async fn foreign_ids_do_not_reach_another_frontends_connection(
    state: Hostile,
) -> anyhow::Result<()> {
    let (_h, server, _agent) = one_agent(Harness::server_settings()).await?;
    let echo = servers::echo("127.0.0.1:0").await?;
    let mut victim = server.grpc_dial(echo).await?;
    echoes(&mut victim, b"hello").await?;
    let id = victim.connect_id();

    let (raw, _destination) = hostile_stream(&server, state).await?;
    raw.send(packet::data(id, Bytes::from_static(b"INJECTED")))
        .await?;
    // Let the server and the agent act on whatever they forward.
    tokio::time::sleep(Duration::from_secs(1)).await;
    echoes(&mut victim, b"ok")
        .await
        .map_err(|e| anyhow::anyhow!("after foreign DATA: {e}"))?;

    raw.send(packet::close_req(id)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    echoes(&mut victim, b"still open")
        .await
        .map_err(|e| anyhow::anyhow!("after foreign CLOSE_REQ: {e}"))?;
    let mut more = [0u8; 64];
    let extra = tokio::time::timeout(Duration::from_secs(1), victim.read(&mut more)).await;
    assert!(extra.is_err(), "the victim received more: {extra:?}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn foreign_connect_id_from_a_stream_still_dialing_is_not_forwarded() -> anyhow::Result<()> {
    foreign_ids_do_not_reach_another_frontends_connection(Hostile::Dialing).await
}

#[tokio::test(start_paused = true)]
async fn foreign_connect_id_from_an_established_stream_is_not_forwarded() -> anyhow::Result<()> {
    foreign_ids_do_not_reach_another_frontends_connection(Hostile::Established).await
}
