//! What the status page reads: every failed dial is remembered once, with its agent,
//! frontend and cause, whichever path ends it; open connections carry their destination,
//! frontend kind and bytes each way; the sampler turns counters into rates.
use std::time::Duration;

use konnectivity_server::status::document::{DialCause, FrontendKind};
use konnectivity_server::status::{self, history};
use konnectivity_testkit::inproc::{Harness, eventually};
use konnectivity_testkit::servers;

use crate::{AGENT, echoes, one_agent, one_agent_and_echo};

/// The newest remembered failure, after checking that exactly `n` were recorded.
fn newest_of(
    server: &konnectivity_testkit::inproc::Server,
    n: u64,
) -> status::document::DialFailure {
    let f = &server.shared.dial_failures;
    assert_eq!(f.total(), n, "failures recorded: {:?}", f.recent());
    f.recent().into_iter().next().expect("a failure")
}

#[tokio::test(start_paused = true)]
async fn every_failed_dial_is_remembered_once_with_its_agent_frontend_and_cause()
-> anyhow::Result<()> {
    let settings = konnectivity_server::Settings {
        backend_dial_timeout: Some(Duration::from_secs(1)),
        ..Harness::server_settings()
    };
    let (_h, server, _agent) = one_agent(settings).await?;
    let closed = servers::closed_port()?;
    let hang = servers::unresponsive()?;

    // The agent's DIAL_RSP error (Pending::resolve), through each frontend.
    assert!(server.grpc_dial(closed).await.is_err());
    let f = newest_of(&server, 1);
    assert_eq!(
        (
            f.destination.as_str(),
            f.agent.as_deref(),
            f.frontend,
            f.cause
        ),
        (
            closed.to_string().as_str(),
            Some(AGENT),
            FrontendKind::Grpc,
            DialCause::Refused
        )
    );
    assert_eq!(
        f.error,
        format!("dial tcp {closed}: connect: connection refused")
    );
    assert!(server.connect_dial(closed).await.is_err());
    assert_eq!(newest_of(&server, 2).frontend, FrontendKind::Connect);

    // The server's own deadline (a pending dial taken back unanswered), each frontend.
    assert!(server.grpc_dial(hang.addr()).await.is_err());
    let f = newest_of(&server, 3);
    assert_eq!(
        (f.cause, f.frontend),
        (DialCause::TimedOut, FrontendKind::Grpc)
    );
    assert!(server.connect_dial(hang.addr()).await.is_err());
    let f = newest_of(&server, 4);
    assert_eq!(
        (f.cause, f.frontend),
        (DialCause::TimedOut, FrontendKind::Connect)
    );

    // The frontend going away mid-dial.
    let gave_up = tokio::time::timeout(Duration::from_millis(300), server.grpc_dial(hang.addr()));
    assert!(gave_up.await.is_err());
    eventually(
        "the abandoned dial remembered",
        Duration::from_secs(5),
        || server.shared.dial_failures.total() == 5,
    )
    .await?;
    let f = newest_of(&server, 5);
    assert_eq!(
        (f.cause, f.agent.as_deref()),
        (DialCause::FrontendClosed, Some(AGENT))
    );

    let backend = &server.backends()[0];
    let failed = backend
        .failed_dials
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(failed, 5);
    // The agent's own answer to the abandoned dial (DIAL_CLS, or its dial timeout)
    // comes after the server forgot it: nothing more is recorded.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(server.shared.dial_failures.total(), 5);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_dial_with_no_agent_is_remembered_without_one() -> anyhow::Result<()> {
    let h = Harness::new()?;
    let server = h.server(Harness::server_settings()).await?;
    assert!(server.grpc_dial("10.0.0.7:10250").await.is_err());
    let f = newest_of(&server, 1);
    assert_eq!(
        (f.destination.as_str(), f.agent, f.cause),
        ("10.0.0.7:10250", None, DialCause::NoAgent)
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn open_connections_show_destination_frontend_and_bytes_each_way() -> anyhow::Result<()> {
    let (_h, server, _agent, echo) = one_agent_and_echo().await?;
    let mut g = server.grpc_dial(echo).await?;
    echoes(&mut g, &[1u8; 3000]).await?;
    let (mut c, _) = server.connect_dial(echo).await?;
    echoes(&mut c, &[2u8; 500]).await?;

    let doc = status::document(&server.shared);
    let a = &doc.agents[0];
    assert_eq!((a.agent_id.as_str(), a.connections, a.dials), (AGENT, 2, 2));
    assert!(a.flow_control && a.peer_window.is_some());
    let mut conns = a.open_connections.clone();
    conns.sort_by_key(|c| c.bytes_from_agent);
    let shown: Vec<_> = conns
        .iter()
        .map(|c| {
            (
                c.destination.clone(),
                c.frontend,
                c.protocol.clone(),
                c.bytes_to_agent,
                c.bytes_from_agent,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                echo.to_string(),
                FrontendKind::Connect,
                "tcp".to_owned(),
                Some(500),
                500
            ),
            (
                echo.to_string(),
                FrontendKind::Grpc,
                "tcp".to_owned(),
                Some(3000),
                3000
            ),
        ]
    );

    // The sampler's first interval turns the counters into rates.
    tokio::time::sleep(history::SAMPLE_INTERVAL).await;
    let h = &status::document(&server.shared).agents[0].history;
    assert!(!h.end_ms.is_empty(), "{h:?}");
    assert!(h.dials_per_s[0] > 0.0, "{h:?}");
    assert!(
        h.bytes_to_agent_per_s[0] > 0 && h.bytes_from_agent_per_s[0] > 0,
        "{h:?}"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn at_most_100_connections_are_listed_per_agent_oldest_first() -> anyhow::Result<()> {
    use konnectivity_server::status::document::MAX_LISTED_CONNECTIONS;
    let (_h, server, _agent, echo) = one_agent_and_echo().await?;
    let mut open = Vec::new();
    for _ in 0..(MAX_LISTED_CONNECTIONS + 5) {
        open.push(server.grpc_dial(echo).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = &status::document(&server.shared).agents[0];
    assert_eq!(a.connections, MAX_LISTED_CONNECTIONS + 5);
    assert_eq!(a.open_connections.len(), MAX_LISTED_CONNECTIONS);
    assert_eq!(a.open_connections_omitted, 5);
    let ages: Vec<f64> = a.open_connections.iter().map(|c| c.age_seconds).collect();
    assert!(ages.windows(2).all(|w| w[0] >= w[1]), "{ages:?}");
    assert!(
        ages[MAX_LISTED_CONNECTIONS - 1] >= 0.5,
        "the newest five are left out: {ages:?}"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_draining_agent_is_shown_draining() -> anyhow::Result<()> {
    let (_h, server, agent) = one_agent(Harness::server_settings()).await?;
    assert!(!status::document(&server.shared).agents[0].draining);
    agent.drain();
    eventually("the agent shown draining", Duration::from_secs(5), || {
        status::document(&server.shared).agents[0].draining
    })
    .await
}

/// `/status?explain=<host>`: the server explains its own choice with the table that
/// picks for dials: an announced host, a CIDR, the default strategy's candidates, none.
#[tokio::test(start_paused = true)]
async fn the_server_explains_which_agent_a_destination_goes_to() -> anyhow::Result<()> {
    use konnectivity_core::select::Strategy;
    use konnectivity_server::status::document::RouteHow;
    let h = Harness::new()?;
    let server = h
        .server(konnectivity_server::Settings {
            strategies: vec![Strategy::DestHost, Strategy::Default],
            ..Harness::server_settings()
        })
        .await?;
    let mut settings = h.agent_settings("node1", server.agent_addr)?;
    settings.hello.identifiers = "host=node1&ipv4=10.0.0.1&cidr=10.244.1.0/24".into();
    let _agent = h.agent(settings);
    server.wait_for_agents(1).await?;

    let r = status::explain(&server.shared, "10.0.0.1");
    assert_eq!(
        (r.how, r.strategy.as_deref()),
        (RouteHow::Host, Some("destHost"))
    );
    assert_eq!(r.agent.map(|a| a.agent_id).as_deref(), Some("node1"));
    let r = status::explain(&server.shared, "10.244.1.7");
    assert_eq!(
        (r.how, r.cidr.as_deref()),
        (RouteHow::Cidr, Some("10.244.1.0/24"))
    );
    let r = status::explain(&server.shared, "192.0.2.1");
    assert_eq!(
        (r.how, r.strategy.as_deref()),
        (RouteHow::Random, Some("default"))
    );
    assert_eq!(r.candidates.len(), 1);
    // The JSON the admin port serves carries it; without the query it is absent.
    let json: serde_json::Value =
        serde_json::from_str(&status::json_explaining(&server.shared, Some("10.0.0.1")))?;
    assert_eq!(json["route"]["how"], "host");
    let json: serde_json::Value = serde_json::from_str(&status::json(&server.shared))?;
    assert!(json.get("route").is_none());
    Ok(())
}
