//! A server restart with N agents connected: the reconnect curve.
//!
//! N agents run as tasks of this process (the scale phase's agents: the agent library,
//! one TCP + TLS connection each, no TLS resumption, upstream's sync intervals) against
//! one proxy-server process. Once all are ready the server is killed (SIGKILL: no DRAIN,
//! no GOAWAY, the kernel resets every stream) and started again at once on the same
//! ports. From the kill on, a thread of its own samples every [`SAMPLE`] the new
//! server's `ready_backends` gauge, its resident memory and descriptors, until every agent is back or
//! [`crate::config::Cfg::restart_window`] passes. What it reports: the time until 50,
//! 90 and 100 % of the agents are back, the server's peak memory during the storm
//! (sampled, and the kernel's high-water mark `VmHWM`), and the kernel's TCP counters
//! over the storm (connection attempts per agent, listen-queue overflows), which tell
//! whether the agents' backoff kept it from becoming a reconnect storm.
use std::time::{Duration, Instant};

use anyhow::ensure;
use konnectivity_testkit::process::{cpu_s, fds, http_get, rss_kib, status_kib};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::procs::{ProcessEnv, bin, settled_rss, start_server_proc, start_server_proc_on};
use crate::report::{Results, progress};
use crate::scale::{agent_tls, ready_backends, spawn_agents};
use crate::stats::round;

/// How often the curve is sampled.
const SAMPLE: Duration = Duration::from_millis(100);

/// One point of the curve: seconds since the kill, agents ready, server RSS (KiB),
/// server descriptors (one per accepted connection, handshake done or not).
type Point = (f64, u64, u64, usize);

pub(crate) async fn phase_restart(env: ProcessEnv<'_>, res: &mut Results) -> anyhow::Result<()> {
    let n = env.cfg.agents.last().copied().unwrap_or(1);
    let program = bin(env.bin_dir, "proxy-server")?;
    let tls = agent_tls(env.pki)?;
    let mut server =
        start_server_proc("restart-server-0", "grpc", &program, env.pki, env.dir).await?;
    let stop = CancellationToken::new();
    let tasks = spawn_agents(n, server.ports.agent, &tls, &stop);
    let health = server.ports.health_addr();
    let cold = wait_ready(&health, n, env.cfg.scale_deadline()).await?;
    ensure!(
        cold.is_some(),
        "restart: only some of the {n} agents were ready after {:?} (before the restart)",
        env.cfg.scale_deadline()
    );
    let rss_before = settled_rss(server.proc.pid()).await;
    progress(format!(
        "restart: {n} agents ready (cold start {:.2?}), server RSS {rss_before} KiB; killing the server",
        cold.unwrap_or_default()
    ));

    let tcp0 = TcpCounters::read();
    let t0 = Instant::now();
    let ports = server.ports;
    server.proc.kill();
    drop(server);
    let mut server = start_server_proc_on(
        "restart-server-1",
        "grpc",
        &program,
        env.pki,
        env.dir,
        ports,
        &[],
    )
    .await?;
    let up = t0.elapsed();
    let pid = server.proc.pid();
    let cpu0 = cpu_s(&pid.to_string());
    let me0 = cpu_s("self");
    let window = env.cfg.restart_window();
    let poller = std::thread::spawn(move || sample_curve(&health, pid, n as u64, t0, window));
    let (curve, polls) = tokio::task::spawn_blocking(move || poller.join())
        .await?
        .map_err(|_| anyhow::anyhow!("restart curve sampler panicked"))?;
    let storm = t0.elapsed();
    let cpu_server = cpu_s(&pid.to_string()) - cpu0;
    let cpu_me = cpu_s("self") - me0;
    let hwm = status_kib(pid, "VmHWM:");
    let tcp = TcpCounters::read().minus(&tcp0, polls);
    server.proc.alive()?;
    let rss_after = settled_rss(pid).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks)).await;
    drop(server);

    let at = |frac: f64| -> Option<f64> {
        let want = (n as f64 * frac).ceil() as u64;
        curve.iter().find(|p| p.1 >= want).map(|p| p.0)
    };
    let (p50, p90, p100) = (at(0.5), at(0.9), at(1.0));
    let peak = curve.iter().map(|p| p.2).max().unwrap_or(0);
    let seen = curve.last().map_or(0, |p| p.1);
    let fmt = |v: Option<f64>| v.map_or("—".into(), |s| format!("{s:.2} s"));
    progress(format!(
        "restart: server up {up:.2?} after the kill; agents back: 50 % {}, 90 % {}, 100 % {} ({seen} of {n}); peak RSS {peak} KiB (VmHWM {hwm}), {} connects, {} listen overflows",
        fmt(p50),
        fmt(p90),
        fmt(p100),
        tcp.active_opens,
        tcp.listen_overflows
    ));
    if env.cfg.smoke {
        ensure!(
            p100.is_some(),
            "restart: only {seen} of {n} agents were back {window:?} after the server restart"
        );
    }
    res.measurements.insert(
        "restart".into(),
        json!({
            "what": "N agents as tasks inside the bench process (the scale phase's agents: konnectivity_agent library, one TCP+TLS connection each, TLS resumption off, --sync-interval=1s, --sync-interval-cap=10s) connected to one proxy-server process; the server is killed with SIGKILL and started again at once on the same ports; every 100 ms /metrics ready_backends{proxy_strategy=\"default\"} and the new server's VmRSS, from the kill until all agents are back or the window ends. Times are seconds since the kill. tcp: deltas of the kernel's counters (/proc/net/snmp, /proc/net/netstat) over the storm, the sampler's own connections subtracted; the machine's other traffic is included.",
            "agents": n,
            "agents_kind": "in-process tasks (konnectivity_agent library), not proxy-agent processes",
            "cold_start_seconds": cold.map(|d| round(d.as_secs_f64())),
            "server_rss_before_kill_kib": rss_before,
            "server_up_seconds": round(up.as_secs_f64()),
            "back_50_seconds": p50,
            "back_90_seconds": p90,
            "back_100_seconds": p100,
            "agents_back": seen,
            "window_seconds": window.as_secs(),
            "storm_seconds": round(storm.as_secs_f64()),
            "server_peak_rss_kib": peak,
            "server_vmhwm_kib": hwm,
            "server_rss_after_kib": rss_after,
            "server_cpu_seconds": round(cpu_server),
            "bench_process_cpu_seconds": round(cpu_me),
            "tcp": {
                "connects": tcp.active_opens,
                "connects_per_agent": round(tcp.active_opens as f64 / n as f64),
                "accepted": tcp.passive_opens,
                "failed_connects": tcp.attempt_fails,
                "listen_overflows": tcp.listen_overflows,
                "listen_drops": tcp.listen_drops,
            },
            "curve": curve.iter().map(|p| json!([p.0, p.1, p.2, p.3])).collect::<Vec<_>>(),
            "curve_columns": ["seconds_since_kill", "agents_ready", "server_rss_kib", "server_fds"],
        }),
    );
    let secs = p100.unwrap_or(f64::INFINITY);
    res.abs_row(
        "restart_all_back",
        format!("server restart, {n} agents: all back after"),
        match p100 {
            Some(s) => format!("{s:.2} s (50 % {}, 90 % {})", fmt(p50), fmt(p90)),
            None => format!("{seen} of {n} after {window:?}"),
        },
        secs,
        30.0,
        "≤ 30 s".into(),
        "s",
        "issue",
    );
    res.abs_row(
        "restart_peak_rss",
        format!("proxy-server peak RSS, {n} agents reconnecting"),
        format!(
            "{:.0} MiB (VmHWM {:.0} MiB; {:.0} MiB before the kill)",
            peak as f64 / 1024.0,
            hwm as f64 / 1024.0,
            rss_before as f64 / 1024.0
        ),
        hwm.max(peak) as f64 / 1024.0,
        1024.0,
        "≤ 1 GiB".into(),
        "MiB",
        "issue",
    );
    Ok(())
}

/// Polls `/metrics` until `n` agents are ready; `None` after `limit`.
async fn wait_ready(health: &str, n: usize, limit: Duration) -> anyhow::Result<Option<Duration>> {
    let health = health.to_owned();
    Ok(tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok((200, body)) = http_get(&health, "/metrics")
                && ready_backends(&body).is_some_and(|v| v >= n as u64)
            {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
    .await?)
}

/// Samples (on the calling thread) every [`SAMPLE`] until `n` agents are ready or
/// `window` has passed since `t0`; returns the curve and the number of polls made.
fn sample_curve(
    health: &str,
    pid: u32,
    n: u64,
    t0: Instant,
    window: Duration,
) -> (Vec<Point>, u64) {
    let mut curve = vec![(0.0, 0, 0, 0)];
    let mut polls = 0;
    let mut next = Instant::now();
    loop {
        polls += 1;
        let ready = match http_get(health, "/metrics") {
            Ok((200, body)) => ready_backends(&body).unwrap_or(0),
            _ => 0,
        };
        let t = t0.elapsed();
        curve.push((round(t.as_secs_f64()), ready, rss_kib(pid), fds(pid)));
        if ready >= n || t >= window {
            return (curve, polls);
        }
        next += SAMPLE;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// The kernel's TCP counters that show a reconnect storm: connection attempts and
/// what the listen queue dropped. Machine-wide (this network namespace).
#[derive(Debug, Default, Clone, Copy)]
struct TcpCounters {
    active_opens: u64,
    passive_opens: u64,
    attempt_fails: u64,
    listen_overflows: u64,
    listen_drops: u64,
}

impl TcpCounters {
    fn read() -> Self {
        let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        let get = |text: &str, table: &str, key: &str| counter(text, table, key).unwrap_or(0);
        Self {
            active_opens: get(&snmp, "Tcp:", "ActiveOpens"),
            passive_opens: get(&snmp, "Tcp:", "PassiveOpens"),
            attempt_fails: get(&snmp, "Tcp:", "AttemptFails"),
            listen_overflows: get(&netstat, "TcpExt:", "ListenOverflows"),
            listen_drops: get(&netstat, "TcpExt:", "ListenDrops"),
        }
    }

    /// `self - before`, less the `polls` HTTP connections the sampler made itself.
    fn minus(&self, before: &Self, polls: u64) -> Self {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        Self {
            active_opens: d(d(self.active_opens, before.active_opens), polls),
            passive_opens: d(d(self.passive_opens, before.passive_opens), polls),
            attempt_fails: d(self.attempt_fails, before.attempt_fails),
            listen_overflows: d(self.listen_overflows, before.listen_overflows),
            listen_drops: d(self.listen_drops, before.listen_drops),
        }
    }
}

/// A counter from a `/proc/net/snmp`-style table: a header line `TABLE: names…`
/// followed by a line `TABLE: values…`.
fn counter(text: &str, table: &str, key: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(table));
    while let (Some(head), Some(vals)) = (lines.next(), lines.next()) {
        let i = head.split_whitespace().position(|k| k == key);
        if let Some(i) = i {
            return vals.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name_from_their_table() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm ActiveOpens PassiveOpens\nTcp: 1 120 7\n";
        assert_eq!(counter(snmp, "Tcp:", "ActiveOpens"), Some(120));
        assert_eq!(counter(snmp, "Tcp:", "PassiveOpens"), Some(7));
        assert_eq!(counter(snmp, "Tcp:", "Missing"), None);
        assert_eq!(counter(snmp, "Udp:", "ActiveOpens"), None);
    }
}
