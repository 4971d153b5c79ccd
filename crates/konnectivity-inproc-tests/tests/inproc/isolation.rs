//! Frontend isolation (issue 15): a frontend may only name the connect ID its own dial
//! established. A raw `ProxyService.Proxy` stream naming another frontend's connect ID
//! in DATA or CLOSE_REQ must neither inject bytes into that connection nor close it.
use std::time::Duration;

use bytes::Bytes;
use konnectivity_core::packet::{self, Kind};
use konnectivity_core::{Packet, PacketType, wire};
use konnectivity_server::metrics::DialFailureReason;
use konnectivity_testkit::inproc::{Harness, RawProxy, Server};
use konnectivity_testkit::servers;
use tokio::io::AsyncReadExt;

use crate::{echoes, one_agent, one_agent_and_echo};

/// Where the hostile stream's own dial is when it names the victim's ID.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// Its dial is still pending (a destination that never answers).
    Dialing,
    /// Its own connection is established.
    Established,
}

/// A raw stream with a dial of its own in `state`, and the destination that keeps a
/// pending dial pending, or the connect ID of its established connection.
async fn hostile_stream(server: &Server, state: Hostile) -> anyhow::Result<(RawProxy, Own)> {
    let mut raw = server.raw_proxy().await?;
    match state {
        Hostile::Dialing => {
            let hang = servers::unresponsive()?;
            raw.send(packet::dial_req("tcp", &hang.addr().to_string(), 7))
                .await?;
            Ok((raw, Own::Pending { _destination: hang }))
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
            let own = packet::dial_response(&rsp).connect_id;
            Ok((raw, Own::Established(own)))
        }
    }
}

/// What the hostile stream's own dial holds.
#[derive(Debug)]
enum Own {
    /// Its dial is pending on this destination (kept open while the test runs).
    Pending { _destination: servers::Unresponsive },
    /// Its connection has this connect ID.
    Established(i64),
}

async fn foreign_ids_do_not_reach_another_frontends_connection(
    state: Hostile,
) -> anyhow::Result<()> {
    let (_h, server, _agent, echo) = one_agent_and_echo().await?;
    let mut victim = server.grpc_dial(echo).await?;
    echoes(&mut victim, b"hello").await?;
    let id = victim.connect_id();

    let (mut raw, own) = hostile_stream(&server, state).await?;
    raw.send(packet::data(id, Bytes::from_static(b"INJECTED")))
        .await?;
    // The hostile stream is told, on its own stream only.
    let (named, error) = close_rsp(&mut raw).await?;
    assert_eq!(
        (named, error.as_str()),
        (id, wire::MISMATCHED_CONNECTION_IDS)
    );
    echoes(&mut victim, b"ok")
        .await
        .map_err(|e| anyhow::anyhow!("after foreign DATA: {e}"))?;

    raw.send(packet::close_req(id)).await?;
    let (named, error) = close_rsp(&mut raw).await?;
    assert_eq!(
        (named, error.as_str()),
        (id, wire::MISMATCHED_CONNECTION_IDS)
    );
    // Let the server and the agent act on whatever they might have forwarded.
    tokio::time::sleep(Duration::from_secs(1)).await;
    echoes(&mut victim, b"still open")
        .await
        .map_err(|e| anyhow::anyhow!("after foreign CLOSE_REQ: {e}"))?;
    let mut more = [0u8; 64];
    let extra = tokio::time::timeout(Duration::from_secs(1), victim.read(&mut more)).await;
    assert!(extra.is_err(), "the victim received more: {extra:?}");
    assert_eq!(
        server.shared.metrics.foreign_ids(),
        2,
        "both refusals counted"
    );
    if let Own::Established(own) = own {
        // The hostile stream's own connection is not closed by its own mistake either.
        raw.send(packet::data(own, Bytes::from_static(b"mine")))
            .await?;
        let back = next_packet(&mut raw).await?;
        assert_eq!(packet::kind(&back), Kind::Known(PacketType::Data));
        assert_eq!(&packet::into_data(back).data[..], b"mine");
    }
    Ok(())
}

/// The next packet on `raw`, within 10 s.
async fn next_packet(raw: &mut RawProxy) -> anyhow::Result<Packet> {
    tokio::time::timeout(Duration::from_secs(10), raw.recv())
        .await??
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))
}

/// The next packet on `raw`, which must be a CLOSE_RSP: its connect ID and error.
async fn close_rsp(raw: &mut RawProxy) -> anyhow::Result<(i64, String)> {
    let p = next_packet(raw).await?;
    anyhow::ensure!(
        packet::kind(&p) == Kind::Known(PacketType::CloseRsp),
        "expected CLOSE_RSP, got {p:?}"
    );
    let c = packet::close_response(&p);
    Ok((c.connect_id, c.error.clone()))
}

#[tokio::test(start_paused = true)]
async fn foreign_connect_id_from_a_stream_still_dialing_is_not_forwarded() -> anyhow::Result<()> {
    foreign_ids_do_not_reach_another_frontends_connection(Hostile::Dialing).await
}

#[tokio::test(start_paused = true)]
async fn foreign_connect_id_from_an_established_stream_is_not_forwarded() -> anyhow::Result<()> {
    foreign_ids_do_not_reach_another_frontends_connection(Hostile::Established).await
}

#[tokio::test(start_paused = true)]
async fn dial_cls_naming_another_frontends_dial_does_not_abandon_it() -> anyhow::Result<()> {
    let (_h, server, _agent) = one_agent(Harness::server_settings()).await?;
    let hang = servers::unresponsive()?;
    let mut victim = server.raw_proxy().await?;
    victim
        .send(packet::dial_req("tcp", &hang.addr().to_string(), 99))
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let hostile = server.raw_proxy().await?;
    hostile.send(packet::dial_cls(99)).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.shared.pending().len(),
        1,
        "the victim's dial is pending"
    );
    let metrics = &server.shared.metrics;
    assert_eq!(metrics.dial_failures(DialFailureReason::FrontendClose), 0);
    assert_eq!(metrics.foreign_ids(), 1);

    // The victim's dial still gets its own answer: the agent's timeout, at 5 s.
    let rsp = next_packet(&mut victim).await?;
    let r = packet::dial_response(&rsp);
    assert_eq!(r.random, 99);
    assert_eq!(r.error, format!("dial tcp {}: i/o timeout", hang.addr()));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn dial_cls_of_the_streams_own_dial_abandons_it() -> anyhow::Result<()> {
    let (_h, server, _agent) = one_agent(Harness::server_settings()).await?;
    let hang = servers::unresponsive()?;
    let raw = server.raw_proxy().await?;
    raw.send(packet::dial_req("tcp", &hang.addr().to_string(), 99))
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw.send(packet::dial_cls(99)).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.shared.pending().is_empty());
    let metrics = &server.shared.metrics;
    assert_eq!(metrics.dial_failures(DialFailureReason::FrontendClose), 1);
    assert_eq!(metrics.foreign_ids(), 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn data_before_the_dial_is_answered_is_refused_not_guessed() -> anyhow::Result<()> {
    let (_h, server, _agent, echo) = one_agent_and_echo().await?;
    let mut victim = server.grpc_dial(echo).await?;
    echoes(&mut victim, b"hello").await?;

    // DIAL_REQ and DATA back to back: the DATA arrives before the agent answers.
    let mut raw = server.raw_proxy().await?;
    raw.send(packet::dial_req("tcp", &echo.to_string(), 7))
        .await?;
    raw.send(packet::data(
        victim.connect_id(),
        Bytes::from_static(b"EARLY"),
    ))
    .await?;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(packet::kind(&next_packet(&mut raw).await?));
    }
    // Refused with CLOSE_RSP, and the stream's own dial still completes.
    assert!(
        seen.contains(&Kind::Known(PacketType::CloseRsp)),
        "{seen:?}"
    );
    assert!(seen.contains(&Kind::Known(PacketType::DialRsp)), "{seen:?}");
    echoes(&mut victim, b"ok").await?;
    let mut more = [0u8; 16];
    let extra = tokio::time::timeout(Duration::from_secs(1), victim.read(&mut more)).await;
    assert!(extra.is_err(), "the victim received more: {extra:?}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_connect_frontends_connection_cannot_be_named_by_a_grpc_frontend() -> anyhow::Result<()> {
    let (_h, server, _agent, echo) = one_agent_and_echo().await?;
    let (mut victim, _) = server.connect_dial(echo).await?;
    echoes(&mut victim, b"hello").await?;
    // The CONNECT tunnel holds connect ID 1 on the only agent stream.
    let (mut raw, own) = hostile_stream(&server, Hostile::Established).await?;
    for id in 1..=3 {
        if matches!(own, Own::Established(o) if o == id) {
            continue;
        }
        raw.send(packet::data(id, Bytes::from_static(b"INJECTED")))
            .await?;
        raw.send(packet::close_req(id)).await?;
        for _ in 0..2 {
            let (named, _) = close_rsp(&mut raw).await?;
            assert_eq!(named, id);
        }
    }
    echoes(&mut victim, b"still mine").await?;
    let mut more = [0u8; 16];
    let extra = tokio::time::timeout(Duration::from_secs(1), victim.read(&mut more)).await;
    assert!(extra.is_err(), "the victim received more: {extra:?}");
    Ok(())
}
