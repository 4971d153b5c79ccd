//! UDP through the tunnel (issue 16 item 3): `DialRequest.protocol "udp"` from the gRPC
//! frontend, served by our agent with a connected UDP socket, one datagram per DATA
//! packet each way. A real UDP echo socket on loopback is the destination.
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use konnectivity_core::datagram::MAX_UDP_PAYLOAD;
use konnectivity_server::Settings;
use konnectivity_testkit::inproc::{Agent, Harness, Server};
use tokio::net::UdpSocket;

use crate::{AGENT, dial_error, one_agent};

fn udp_enabled() -> Settings {
    Settings {
        enable_udp: true,
        ..Harness::server_settings()
    }
}

/// A UDP socket on loopback that sends every datagram back to its sender, and counts
/// what it received (the sizes, in order).
async fn udp_echo() -> anyhow::Result<(SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>)> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = sock.local_addr()?;
    let (seen, sizes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = seen.send(n);
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    Ok((addr, sizes))
}

/// A server with `--enable-udp` and one agent with `udp` settings.
async fn with_agent(
    udp: konnectivity_agent::stream::udp::UdpSettings,
) -> anyhow::Result<(Harness, Server, Agent)> {
    let h = Harness::new()?;
    let server = h.server(udp_enabled()).await?;
    let agent = h.agent(konnectivity_agent::Settings {
        udp,
        ..h.agent_settings(AGENT, server.agent_addr)?
    });
    server.wait_for_agents(1).await?;
    agent.wait_connected(1).await?;
    Ok((h, server, agent))
}

#[tokio::test]
async fn udp_datagrams_are_echoed_with_their_boundaries() -> anyhow::Result<()> {
    let (_h, server, agent) = one_agent(udp_enabled()).await?;
    let (echo, mut seen) = udp_echo().await?;
    let mut conn = server.udp_dial(echo).await?;
    let sent: Vec<Bytes> = [1usize, 1_000, 60_000]
        .iter()
        .enumerate()
        .map(|(i, n)| Bytes::from(vec![b'a' + i as u8; *n]))
        .collect();
    // Three datagrams in a row: small ones queued together must not be merged.
    for d in &sent {
        conn.send_datagram(d.clone()).await?;
    }
    for d in &sent {
        let got = tokio::time::timeout(Duration::from_secs(10), conn.recv_datagram())
            .await??
            .ok_or_else(|| anyhow::anyhow!("closed early"))?;
        assert_eq!(got.len(), d.len(), "one datagram per DATA packet");
        assert_eq!(got, *d);
    }
    // The status page lists it as a UDP connection.
    let doc = konnectivity_server::status::document(&server.shared);
    let c = &doc.agents[0].open_connections[0];
    assert_eq!(
        (c.protocol.as_str(), c.frontend),
        (
            "udp",
            konnectivity_server::status::document::FrontendKind::Grpc
        )
    );
    for d in &sent {
        assert_eq!(
            seen.recv().await,
            Some(d.len()),
            "the destination saw datagrams whole"
        );
    }
    let udp = &agent.agent.metrics.udp;
    assert_eq!(udp.dials.load(Relaxed), 1);
    assert_eq!(udp.to_destination.load(Relaxed), 3);
    assert_eq!(udp.from_destination.load(Relaxed), 3);
    assert_eq!(udp.open.load(Relaxed), 1);
    Ok(())
}

#[tokio::test]
async fn a_datagram_larger_than_the_udp_maximum_is_refused_not_split() -> anyhow::Result<()> {
    let (_h, server, _agent) = one_agent(udp_enabled()).await?;
    let (echo, mut seen) = udp_echo().await?;
    let mut conn = server.udp_dial(echo).await?;
    conn.send_datagram(Bytes::from(vec![0u8; MAX_UDP_PAYLOAD + 1]))
        .await?;
    let e = tokio::time::timeout(Duration::from_secs(10), conn.recv_datagram())
        .await?
        .expect_err("the connection is closed with an error");
    assert_eq!(
        e.to_string(),
        "datagram of 65508 bytes exceeds the maximum UDP payload of 65507 bytes (datagrams are never split)"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), seen.recv())
            .await
            .is_err(),
        "nothing reached the destination"
    );
    // The largest datagram still passes, whole.
    let mut conn = server.udp_dial(echo).await?;
    conn.send_datagram(Bytes::from(vec![1u8; MAX_UDP_PAYLOAD]))
        .await?;
    let got = conn.recv_datagram().await?.unwrap_or_default();
    assert_eq!(got.len(), MAX_UDP_PAYLOAD);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_idle_udp_connection_is_closed_with_close_rsp() -> anyhow::Result<()> {
    let (_h, server, agent) = with_agent(Default::default()).await?;
    let (echo, _seen) = udp_echo().await?;
    let mut conn = server.udp_dial(echo).await?;
    conn.send_datagram(Bytes::from_static(b"ping")).await?;
    assert_eq!(conn.recv_datagram().await?.as_deref(), Some(&b"ping"[..]));
    let before = tokio::time::Instant::now();
    let e = conn.recv_datagram().await.expect_err("closed as idle");
    assert_eq!(
        e.to_string(),
        "udp connection idle for 60s (--udp-idle-timeout)"
    );
    let idle = before.elapsed();
    assert!(
        idle >= Duration::from_secs(59) && idle < Duration::from_secs(62),
        "{idle:?}"
    );
    assert_eq!(
        agent.agent.metrics.udp.open.load(Relaxed),
        0,
        "the socket is closed"
    );
    Ok(())
}

#[tokio::test]
async fn udp_is_refused_unless_the_server_enables_it() -> anyhow::Result<()> {
    let (_h, server, _agent) = one_agent(Harness::server_settings()).await?;
    let (echo, mut seen) = udp_echo().await?;
    assert_eq!(
        dial_error(server.udp_dial(echo).await)?,
        r#"protocol "udp" is not allowed (allowed: tcp)"#
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), seen.recv())
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn the_agent_refuses_udp_beyond_its_socket_limit_and_when_off() -> anyhow::Result<()> {
    use konnectivity_agent::stream::udp::UdpSettings;
    let (echo, _seen) = udp_echo().await?;
    let (_h, server, _agent) = with_agent(UdpSettings {
        max_sockets: 1,
        ..Default::default()
    })
    .await?;
    let mut first = server.udp_dial(echo).await?;
    assert_eq!(
        dial_error(server.udp_dial(echo).await)?,
        format!("dial udp {echo}: too many UDP sockets open on this agent (--max-udp-sockets=1)")
    );
    first.send_datagram(Bytes::from_static(b"still")).await?;
    assert_eq!(first.recv_datagram().await?.as_deref(), Some(&b"still"[..]));

    let (_h, server, _agent) = with_agent(UdpSettings {
        max_sockets: 0,
        ..Default::default()
    })
    .await?;
    assert_eq!(
        dial_error(server.udp_dial(echo).await)?,
        r#"protocol "udp" is not allowed (allowed: tcp)"#
    );
    Ok(())
}

#[tokio::test]
async fn the_agents_destination_policy_applies_to_udp() -> anyhow::Result<()> {
    let (echo, _seen) = udp_echo().await?;
    let h = Harness::new()?;
    let server = h.server(udp_enabled()).await?;
    let agent = h.agent(konnectivity_agent::Settings {
        policy: konnectivity_core::policy::DestinationPolicy::parse(&["10.0.0.0/8".into()], &[])
            .map_err(anyhow::Error::msg)?,
        ..h.agent_settings(AGENT, server.agent_addr)?
    });
    server.wait_for_agents(1).await?;
    agent.wait_connected(1).await?;
    let e = dial_error(server.udp_dial(echo).await)?;
    assert_eq!(
        e,
        format!("dial to {echo} denied by the agent's destination policy")
    );
    Ok(())
}

#[tokio::test]
async fn datagrams_beyond_the_window_are_dropped_not_queued() -> anyhow::Result<()> {
    const SIZE: usize = 60_000;
    const FLOOD: usize = 300; // 18 MB: more than the 1 MiB window and every buffer behind it
    let (_h, server, agent) = one_agent(udp_enabled()).await?;
    // A destination that answers its first datagram with a paced flood.
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let dest = sock.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16];
        if let Ok((_, from)) = sock.recv_from(&mut buf).await {
            let d = vec![9u8; SIZE];
            for _ in 0..FLOOD {
                let _ = sock.send_to(&d, from).await;
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
    });
    let mut conn = server.udp_dial(dest).await?;
    conn.send_datagram(Bytes::from_static(b"go")).await?;
    // The frontend does not read: the agent drops what the window has no room for.
    let udp = &agent.agent.metrics.udp;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while udp.dropped.load(Relaxed) == 0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nothing dropped; sent {}",
            udp.from_destination.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = udp.from_destination.load(Relaxed) as usize;
    assert!(
        sent * SIZE < 16 << 20,
        "the agent stopped sending near the window and the buffers behind it: {sent} datagrams"
    );
    // What was sent arrives whole, one datagram per DATA packet.
    for _ in 0..3 {
        let d = conn.recv_datagram().await?.unwrap_or_default();
        assert_eq!(d.len(), SIZE);
    }
    Ok(())
}
