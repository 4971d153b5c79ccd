//! The server's and the agent's /metrics after known traffic: upstream's names, labels and HELP texts,
//! values that match what happened, and no zero series for untouched failure reasons.
use std::time::Duration;

use konnectivity_client::{ClientError, Frontend, grpc_dial};
use konnectivity_e2e::netns::metric;
use konnectivity_e2e::*;
use konnectivity_testkit::servers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_with_upstream_names() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let Loopback {
        server: _server,
        ports,
        agent,
        agent_health,
    } = start_loopback(&pki, &ServerSpec::grpc_uds(sock.clone()), &[], dir.path())?;
    let echo = servers::echo("127.0.0.1:0").await?;
    for _ in 0..3 {
        let mut c = grpc_dial(
            &Frontend::Uds(sock.clone()),
            &echo.to_string(),
            Duration::from_secs(10),
        )
        .await?;
        c.write_all(&[1u8; 1000]).await?;
        let mut b = [0u8; 1000];
        c.read_exact(&mut b).await?;
        c.shutdown().await?;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    assert!(matches!(
        grpc_dial(
            &Frontend::Uds(sock.clone()),
            &closed.to_string(),
            Duration::from_secs(10)
        )
        .await,
        Err(ClientError::Dial(_))
    ));
    let health = format!("127.0.0.1:{}", ports.health);
    let p = "konnectivity_network_proxy_server_";
    wait_for("connections closed", Duration::from_secs(10), || {
        http_get(&health, "/metrics")
            .ok()
            .and_then(|(_, m)| metric(&m, &format!("{p}established_connections")))
            == Some(0.0)
            && http_get(&health, "/metrics")
                .ok()
                .and_then(|(_, m)| metric(&m, &format!("{p}connection_duration_seconds_count")))
                == Some(3.0)
    })?;
    let (code, m) = http_get(&health, "/metrics")?;
    assert_eq!(code, 200);
    let v = |s: &str| metric(&m, s).unwrap_or_else(|| panic!("missing series {s}\n{m}"));
    assert!(m.contains(&format!("# HELP {p}dial_failure_count Number of dial failures observed. Multiple failures can occur for a single dial request.")));
    assert!(m.contains(&format!("# TYPE {p}dial_duration_seconds histogram")));
    assert_eq!(
        v(&format!(
            "{p}dial_failure_count{{reason=\"error_response\"}}"
        )),
        1.0
    );
    assert_eq!(
        m.matches(&format!("{p}dial_failure_count{{")).count(),
        1,
        "untouched reasons must not appear:\n{m}"
    );
    assert_eq!(v(&format!("{p}dial_duration_seconds_count")), 3.0);
    assert_eq!(
        v(&format!(
            "{p}stream_packets_total{{packet_type=\"DIAL_REQ\",segment=\"from_client\"}}"
        )),
        4.0
    );
    assert_eq!(
        v(&format!(
            "{p}stream_packets_total{{packet_type=\"DIAL_REQ\",segment=\"to_agent\"}}"
        )),
        4.0
    );
    assert_eq!(
        v(&format!(
            "{p}stream_packets_total{{packet_type=\"DIAL_RSP\",segment=\"from_agent\"}}"
        )),
        4.0
    );
    assert_eq!(
        v(&format!("{p}ready_backends{{proxy_strategy=\"default\"}}")),
        1.0
    );
    assert_eq!(
        v(&format!(
            "{p}grpc_connections{{service_method=\"Connect\"}}"
        )),
        1.0
    );
    assert_eq!(v(&format!("{p}pending_backend_dials")), 0.0);
    assert_eq!(
        v("konnectivity_rs_server_bytes_total{direction=\"to_agent\"}"),
        3000.0
    );
    assert_eq!(
        v("konnectivity_rs_server_bytes_total{direction=\"from_agent\"}"),
        3000.0
    );
    let closes = |r: &str| {
        metric(
            &m,
            &format!("konnectivity_rs_server_connection_closes_total{{reason=\"{r}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        closes("frontend_closed") + closes("agent_closed"),
        3.0,
        "{m}"
    );
    assert!(v("process_resident_memory_bytes") > 0.0);
    // The admin port serves the same metrics.
    let (_, admin) = http_get(&format!("127.0.0.1:{}", ports.admin), "/metrics")?;
    assert!(admin.contains(&format!("{p}ready_backends")));
    // The agent's.
    let (_, am) = http_get(&format!("127.0.0.1:{agent_health}"), "/metrics")?;
    assert_eq!(
        metric(
            &am,
            "konnectivity_network_proxy_agent_open_server_connections"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &am,
            "konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason=\"unknown\"}"
        ),
        Some(1.0)
    );
    assert!(am.contains("# HELP konnectivity_network_proxy_agent_open_endpoint_connections Current number of open endpoint connections."));
    let a = "konnectivity_network_proxy_agent_";
    let av = |s: &str| metric(&am, s).unwrap_or_else(|| panic!("missing series {s}\n{am}"));
    // Three dials succeeded and were timed; the refused one is not a dial duration.
    assert!(am.contains(&format!("# TYPE {a}dial_duration_seconds histogram")));
    assert_eq!(av(&format!("{a}dial_duration_seconds_count")), 3.0);
    assert_eq!(
        av(&format!("{a}dial_duration_seconds_bucket{{le=\"+Inf\"}}")),
        3.0
    );
    // Four DIAL_REQs arrived and four DIAL_RSPs left; each tunnel's 1000 bytes went
    // both ways, in at least one DATA packet each.
    let pk = |t: &str, seg: &str| {
        metric(
            &am,
            &format!("{a}stream_packets_total{{packet_type=\"{t}\",segment=\"{seg}\"}}"),
        )
    };
    assert_eq!(pk("DIAL_REQ", "to_agent"), Some(4.0), "{am}");
    assert_eq!(pk("DIAL_RSP", "from_agent"), Some(4.0), "{am}");
    assert!(pk("DATA", "to_agent").is_some_and(|n| n >= 3.0), "{am}");
    assert!(pk("DATA", "from_agent").is_some_and(|n| n >= 3.0), "{am}");
    assert_eq!(pk("DIAL_REQ", "from_agent"), None, "no zero series: {am}");
    // Nothing failed on the stream: the vectors are declared but carry no series.
    assert!(am.contains(&format!("# TYPE {a}stream_errors_total counter")));
    assert!(!am.contains(&format!("{a}stream_errors_total{{")), "{am}");
    // So far no stream failed on the server either; then the agent dies mid-stream.
    assert!(!m.contains(&format!("{p}stream_errors_total{{")), "{m}");
    drop(agent);
    let lost = format!(
        "{p}stream_errors_total{{code=\"Unavailable\",packet_type=\"Unknown\",segment=\"from_agent\"}}"
    );
    wait_for(
        "the lost agent stream counted",
        Duration::from_secs(10),
        || {
            http_get(&health, "/metrics")
                .ok()
                .and_then(|(_, m)| metric(&m, &lost))
                == Some(1.0)
        },
    )?;
    Ok(())
}
