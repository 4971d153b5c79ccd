//! Agents at scale: N agents as tasks inside the bench process (the agent library, one
//! TCP + TLS connection each, no TLS resumption) against one proxy-server process,
//! all started at once; the time until the server's metrics show N ready backends,
//! polled from a thread of its own, and the server's resident memory.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use konnectivity_agent::Agent;
use konnectivity_testkit::pki::Pki;
use konnectivity_testkit::process::{cpu_s, fds, http_get};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::procs::{ProcessEnv, bin, settled_rss, start_server_proc};
use crate::report::{Results, progress};
use crate::stats::round;
use crate::world::agent_settings;

pub(crate) fn ready_backends(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"default\"}",
            )
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The agents' TLS client: every agent pays a full handshake, as separate nodes
/// starting cold would (no session resumption).
pub(crate) fn agent_tls(pki: &Pki) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut tls =
        konnectivity_tls::agent_client(&pki.ca, Some((&pki.agent_cert, &pki.agent_key)), &[])?;
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(tls))
}

/// Starts `n` agents (`bench-agent-0…n-1`) as tasks of this process, all at once,
/// against the server's agent port; they run until `stop` is cancelled.
pub(crate) fn spawn_agents(
    n: usize,
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|k| {
            let agent = Agent::new(agent_settings(
                port,
                tls.clone(),
                format!("bench-agent-{k}"),
                // upstream's defaults: --sync-interval=1s, --sync-interval-cap=10s
                Duration::from_secs(1),
                Duration::from_secs(10),
            ));
            tokio::spawn(konnectivity_agent::run(
                agent,
                None,
                None,
                CancellationToken::new(),
                stop.clone(),
            ))
        })
        .collect()
}

pub(crate) async fn phase_scale(env: ProcessEnv<'_>, res: &mut Results) -> anyhow::Result<()> {
    let tls = agent_tls(env.pki)?;
    let program = bin(env.bin_dir, "proxy-server")?;
    let mut runs = Vec::new();
    let mut last = None;
    for (i, &n) in env.cfg.agents.iter().enumerate() {
        let mut server = start_server_proc(
            &format!("scale-server-{i}"),
            "grpc",
            &program,
            env.pki,
            env.dir,
        )
        .await?;
        let sp = server.proc.pid();
        let s0 = settled_rss(sp).await;
        let cpu0 = cpu_s(&sp.to_string());
        let me0 = cpu_s("self");
        let stop = CancellationToken::new();
        // The poller runs on its own thread so that a busy runtime does not delay it.
        let health = server.ports.health_addr();
        let deadline = env.cfg.scale_deadline();
        let t0 = Instant::now();
        let poller = std::thread::spawn(move || {
            let mut seen = 0u64;
            let mut curve = Vec::new();
            let mut next_mark = Duration::ZERO;
            loop {
                if let Ok((200, body)) = http_get(&health, "/metrics")
                    && let Some(v) = ready_backends(&body)
                {
                    seen = v;
                }
                let el = t0.elapsed();
                if el >= next_mark {
                    curve.push((round(el.as_secs_f64()), seen));
                    next_mark = el + Duration::from_millis(500);
                }
                if seen >= n as u64 {
                    curve.push((round(el.as_secs_f64()), seen));
                    return (Some(el), seen, curve);
                }
                if el > deadline {
                    return (None, seen, curve);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let tasks = spawn_agents(n, server.ports.agent, &tls, &stop);
        let (took, seen, curve) = tokio::task::spawn_blocking(move || poller.join())
            .await?
            .map_err(|_| anyhow::anyhow!("metrics poller panicked"))?;
        let cpu_server = cpu_s(&sp.to_string()) - cpu0;
        let cpu_me = cpu_s("self") - me0;
        server.proc.alive()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s1 = settled_rss(sp).await;
        let sf = fds(sp);
        progress(format!(
            "scale: {n} agents: {} ready after {}; server RSS {s0} → {s1} KiB",
            seen,
            took.map_or("—".into(), |d| format!("{d:.2?}"))
        ));
        stop.cancel();
        let join_all = futures::future::join_all(tasks);
        let _ = tokio::time::timeout(Duration::from_secs(30), join_all).await;
        drop(server);
        if env.cfg.smoke {
            ensure!(
                took.is_some(),
                "only {seen} of {n} agents were ready after {deadline:?}"
            );
        }
        let run = json!({
            "agents": n,
            "all_ready_seconds": took.map(|d| round(d.as_secs_f64())),
            "ready_seen": seen,
            "server_rss_idle_kib": s0,
            "server_rss_kib": s1,
            "server_kib_per_agent": round(s1.saturating_sub(s0) as f64 / n as f64),
            "server_fds": sf,
            "server_cpu_seconds": round(cpu_server),
            "bench_process_cpu_seconds": round(cpu_me),
            "ready_curve": curve,
        });
        runs.push(run);
        last = Some((n, took, seen, s0, s1));
    }
    res.measurements.insert(
        "scale_agents".into(),
        json!({
            "what": "N agents as tasks inside the bench process (konnectivity_agent library, agent IDs bench-agent-0…N-1, one TCP+TLS connection each, TLS resumption off, upstream's sync intervals) started at once against one proxy-server process; time until /metrics ready_backends{proxy_strategy=\"default\"} = N, and the server's VmRSS. The agents' TLS handshakes share the machine's cores with the server.",
            "runs": runs,
        }),
    );
    if let Some((n, took, seen, s0, s1)) = last {
        let secs = took.map_or(f64::INFINITY, |d| d.as_secs_f64());
        res.abs_row(
            "scale_ready",
            format!("{n} agents all ready"),
            match took {
                Some(_) => format!("{secs:.2} s"),
                None => format!("{seen} of {n} after {:?}", env.cfg.scale_deadline()),
            },
            secs,
            10.0,
            "≤ 10 s".into(),
            "s",
            "issue",
        );
        res.abs_row(
            "scale_rss",
            format!("proxy-server RSS with {n} agents"),
            format!(
                "{:.0} MiB ({:.1} KiB/agent)",
                s1 as f64 / 1024.0,
                s1.saturating_sub(s0) as f64 / n as f64
            ),
            s1 as f64 / 1024.0,
            1024.0,
            "≤ 1 GiB".into(),
            "MiB",
            "issue",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_line() {
        let m = "# HELP x\nkonnectivity_network_proxy_server_ready_backends{proxy_strategy=\"default\"} 42\n";
        assert_eq!(ready_backends(m), Some(42));
    }
}
