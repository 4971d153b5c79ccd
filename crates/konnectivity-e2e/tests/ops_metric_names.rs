//! Every metric that `deploy/prometheus-rules.yaml` and `deploy/grafana-dashboard.json`
//! query is one that the real `proxy-server` and `proxy-agent` export: both run on
//! loopback and carry traffic that touches every labelled family (a dial, a dial over
//! the connection limit, a refused dial, a denied destination, a lost agent stream),
//! then their `/metrics` pages are scraped and every query's metric names are looked up.
use std::collections::BTreeSet;
use std::time::Duration;

use konnectivity_client::{Frontend, grpc_dial};
use konnectivity_e2e::ops::{dashboard_queries, exported_names, rule_queries, unknown_metrics};
use konnectivity_e2e::*;
use konnectivity_testkit::servers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_query_only_exported_metrics() -> anyhow::Result<()> {
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let echo = servers::echo("127.0.0.1:0").await?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut spec = ServerSpec::grpc_uds(sock.clone());
    spec.extra = vec![
        "--max-connections-per-agent=1".into(),
        format!(
            "--allowed-destination-ports={},{}",
            echo.port(),
            closed.port()
        ),
    ];
    let Loopback {
        server: _server,
        ports,
        agent,
        agent_health,
    } = start_loopback(&pki, &spec, &[], dir.path())?;
    let front = Frontend::Uds(sock.clone());
    let t = Duration::from_secs(10);

    // One connection that carries data; a second one over the per-agent limit.
    let mut c = grpc_dial(&front, &echo.to_string(), t).await?;
    c.write_all(b"ping").await?;
    let mut b = [0u8; 4];
    c.read_exact(&mut b).await?;
    assert!(grpc_dial(&front, &echo.to_string(), t).await.is_err());
    c.shutdown().await?;
    drop(c);
    // Refused by the destination, and denied by the policy.
    assert!(grpc_dial(&front, &closed.to_string(), t).await.is_err());
    assert!(grpc_dial(&front, "127.0.0.1:1", t).await.is_err());

    let health = format!("127.0.0.1:{}", ports.health);
    wait_for("the connection closed", t, || {
        http_get(&health, "/metrics")
            .is_ok_and(|(_, m)| m.contains("konnectivity_rs_server_connection_closes_total{"))
    })?;
    let (_, agent_page) = http_get(&format!("127.0.0.1:{agent_health}"), "/metrics")?;
    // The agent goes away: the server counts a failed agent stream.
    drop(agent);
    wait_for("the lost agent stream counted", t, || {
        http_get(&health, "/metrics").is_ok_and(|(_, m)| {
            m.contains("konnectivity_network_proxy_server_stream_errors_total{")
        })
    })?;
    let (_, server_page) = http_get(&health, "/metrics")?;

    let exported: BTreeSet<String> = exported_names(&server_page)
        .into_iter()
        .chain(exported_names(&agent_page))
        .collect();
    // The traffic above reached every family the artifacts use (else a missing name
    // below would be this test's fault, not the artifact's).
    for family in [
        "konnectivity_network_proxy_server_dial_failure_count",
        "konnectivity_rs_server_limit_hits_total",
        "konnectivity_rs_server_connection_closes_total",
        "konnectivity_rs_server_bytes_total",
        "konnectivity_network_proxy_agent_dial_duration_seconds_bucket",
        "konnectivity_network_proxy_agent_stream_errors_total",
    ] {
        assert!(
            exported.contains(family),
            "{family} missing:\n{server_page}\n{agent_page}"
        );
    }
    let rules = rule_queries()?;
    let dashboard = dashboard_queries()?;
    let problems = unknown_metrics(&[rules.clone(), dashboard.clone()].concat(), &exported);
    assert!(
        problems.is_empty(),
        "queries name metrics the binaries do not export:\n  {}\n\nexported: {exported:#?}",
        problems.join("\n  ")
    );
    eprintln!(
        "{} rule and {} dashboard queries checked against {} exported names",
        rules.len(),
        dashboard.len(),
        exported.len()
    );
    Ok(())
}
