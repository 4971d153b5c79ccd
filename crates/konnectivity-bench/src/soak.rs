//! The soak: mixed traffic in rounds through a proxy-server and a proxy-agent process
//! for `--soak-seconds`, and whether their resources stay flat.
//!
//! A round is four steps, each through the gRPC frontend (`grpc_dial`, one Proxy stream
//! per connection): [`Sizes::dials`] dials one after another (one echoed byte each), one
//! download, 16 parallel downloads, and [`Sizes::idle`] tunnels opened at once (one
//! echoed byte each), held for a second and closed. Every byte is checked; a failed step
//! is counted with its error and the next step runs. New rounds start until the time is
//! up, then the processes idle for a few seconds.
//!
//! A thread of its own reads, every second, each process's `VmRSS`, its open
//! descriptors (`/proc/PID/fd`) and its threads (`Threads:` in `/proc/PID/status`; the
//! binaries do not export tokio's task count, and every connection is a task, so the
//! descriptors stand for the tasks). The bound: after the warm-up (the first 20 % of
//! the run, and at least the first round) the level at the end of the load (the median
//! of its last quarter) may exceed the level just after the warm-up (the median of the
//! first quarter) by no more than the margins below; peaks are reported beside it. RSS may grow by at most one buffer pool
//! (`konnectivity-tunnel::bufpool`, 16 × 256 KiB): a plateau reached in the first round
//! passes, a leak of a few bytes per connection over an hour does not.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use konnectivity_client::Frontend;
use konnectivity_testkit::process::{fds, rss_kib, status_kib};
use serde_json::{Value, json};

use crate::config::Cfg;
use crate::load::{download, echo_byte};
use crate::memory::open_idle;
use crate::procs::{ProcessEnv, TunnelProcs, settled_rss};
use crate::report::{Results, progress};
use crate::stats::round;
use crate::world::BoxIo;
use crate::{DIAL, KIB, MIB};

/// RSS growth allowed after the warm-up: one buffer pool (16 × 256 KiB).
const RSS_MARGIN_KIB: u64 = 4 * 1024;
/// Descriptor growth allowed after the warm-up.
const FDS_MARGIN: u64 = 16;
/// Thread growth allowed after the warm-up.
const THREADS_MARGIN: u64 = 4;
/// Share of the run counted as warm-up.
const WARMUP_SHARE: f64 = 0.2;
/// Parallel downloads of a round.
const PARALLEL: usize = 16;

/// What a round moves.
struct Sizes {
    dials: usize,
    download: u64,
    idle: usize,
    idle_after: Duration,
}

impl Sizes {
    fn of(cfg: &Cfg) -> Self {
        if cfg.smoke {
            Self {
                dials: 10,
                download: 4 * MIB,
                idle: 50,
                idle_after: Duration::from_secs(1),
            }
        } else {
            Self {
                dials: 50,
                download: 64 * MIB,
                idle: 200,
                idle_after: Duration::from_secs(10),
            }
        }
    }
}

/// One sample: seconds since the start, then RSS (KiB), descriptors and threads of
/// the server, then of the agent.
type Sample = [f64; 7];

pub(crate) async fn phase_soak(env: ProcessEnv<'_>, res: &mut Results) -> anyhow::Result<()> {
    let sizes = Sizes::of(env.cfg);
    let echo = konnectivity_testkit::servers::echo("127.0.0.1:0")
        .await?
        .to_string();
    let mut procs = TunnelProcs::start("soak", "grpc", env.bin_dir, env.pki, env.dir).await?;
    let (sp, ap) = (procs.server.proc.pid(), procs.agent.pid());
    let idle_before = (settled_rss(sp).await, settled_rss(ap).await);
    let f = procs.frontend();
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (stop, samples) = (stop.clone(), samples.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let one = |pid: u32| {
                    [
                        rss_kib(pid) as f64,
                        fds(pid) as f64,
                        status_kib(pid, "Threads:") as f64,
                    ]
                };
                let (s, a) = (one(sp), one(ap));
                let t = round(t0.elapsed().as_secs_f64());
                if let Ok(mut v) = samples.lock() {
                    v.push([t, s[0], s[1], s[2], a[0], a[1], a[2]]);
                }
                next += Duration::from_secs(1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    progress(format!(
        "soak: {:?} of rounds ({} dials, {} download, {PARALLEL} parallel downloads, {} idle tunnels), idle RSS server {} KiB, agent {} KiB",
        env.cfg.soak,
        sizes.dials,
        crate::stats::human_bytes(sizes.download),
        sizes.idle,
        idle_before.0,
        idle_before.1
    ));
    let mut rounds = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut steps = 0u64;
    while rounds.is_empty() || t0.elapsed() < env.cfg.soak {
        for (name, r) in one_round(&f, &echo, env.source, &sizes).await {
            steps += 1;
            if let Err(e) = r {
                failed.push(format!("round {} {name}: {e:#}", rounds.len() + 1));
            }
        }
        procs.alive()?;
        rounds.push(round(t0.elapsed().as_secs_f64()));
        if rounds.len() % 10 == 0 {
            progress(format!(
                "soak: {} rounds in {:.0?}, {} failed steps",
                rounds.len(),
                t0.elapsed(),
                failed.len()
            ));
        }
    }
    let load_end = t0.elapsed().as_secs_f64();
    tokio::time::sleep(sizes.idle_after).await;
    let idle_after = (settled_rss(sp).await, settled_rss(ap).await);
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || sampler.join()).await;
    procs.alive()?;
    drop(procs);
    let samples = samples
        .lock()
        .map_err(|_| anyhow::anyhow!("soak sampler panicked"))?
        .clone();

    let warm_end = (load_end * WARMUP_SHARE).max(rounds[0]);
    let col = |i: usize| -> Vec<(f64, f64)> { samples.iter().map(|s| (s[0], s[i])).collect() };
    let judge = |i: usize, margin: u64| growth(&col(i), warm_end, load_end, margin);
    let server = [
        judge(1, RSS_MARGIN_KIB),
        judge(2, FDS_MARGIN),
        judge(3, THREADS_MARGIN),
    ];
    let agent = [
        judge(4, RSS_MARGIN_KIB),
        judge(5, FDS_MARGIN),
        judge(6, THREADS_MARGIN),
    ];
    let flat = server.iter().chain(&agent).all(|g| g.pass);
    progress(format!(
        "soak: {} rounds, {steps} steps, {} failed; after warm-up ({warm_end:.0} s) RSS growth server {:+} KiB, agent {:+} KiB; agent RSS idle {} → {} KiB after load; bound {}",
        rounds.len(),
        failed.len(),
        server[0].growth,
        agent[0].growth,
        idle_before.1,
        idle_after.1,
        if flat { "met" } else { "MISSED" }
    ));
    if env.cfg.smoke {
        ensure!(failed.is_empty(), "soak: failed steps: {failed:?}");
    }
    let side = |g: &[Growth; 3], idle0: u64, idle1: u64| {
        json!({
            "rss_kib": g[0].json(), "fds": g[1].json(), "threads": g[2].json(),
            "rss_idle_before_kib": idle0, "rss_idle_after_kib": idle1,
        })
    };
    res.measurements.insert(
        "soak".into(),
        json!({
            "what": "mixed traffic in rounds through a proxy-server and a proxy-agent process (gRPC frontend on a UNIX socket, grpc_dial): sequential dials with one echoed byte, one download, 16 parallel downloads, a set of idle tunnels opened, held 1 s and closed; every byte checked. VmRSS, /proc/PID/fd count and Threads of both processes every second. Bound: after the warm-up (first 20 % of the load, at least one round), the median of the last quarter of the remaining samples may exceed the median of their first quarter by at most the margin; peaks (after_warmup_max) reported beside it.",
            "seconds": round(load_end),
            "rounds": rounds.len(),
            "round_ends": rounds,
            "steps": steps,
            "failed_steps": failed.len(),
            "errors": failed.iter().take(20).collect::<Vec<_>>(),
            "round": {
                "dials": sizes.dials, "download_bytes": sizes.download,
                "parallel_downloads": PARALLEL, "parallel_bytes_each": sizes.download / PARALLEL as u64,
                "idle_tunnels": sizes.idle,
            },
            "warmup_seconds": round(warm_end),
            "margins": { "rss_kib": RSS_MARGIN_KIB, "fds": FDS_MARGIN, "threads": THREADS_MARGIN },
            "bound_met": flat,
            "server": side(&server, idle_before.0, idle_after.0),
            "agent": side(&agent, idle_before.1, idle_after.1),
            "malloc_arena_max": std::env::var("MALLOC_ARENA_MAX").ok(),
            "samples": samples.iter().map(|s| json!(s)).collect::<Vec<Value>>(),
            "sample_columns": ["seconds", "server_rss_kib", "server_fds", "server_threads", "agent_rss_kib", "agent_fds", "agent_threads"],
        }),
    );
    res.abs_row(
        "soak_failed_steps",
        format!("soak {:.0} s: failed steps", load_end),
        format!("{} of {steps} ({} rounds)", failed.len(), rounds.len()),
        failed.len() as f64,
        0.0,
        "0".into(),
        "steps",
        "issue",
    );
    let rss = server[0].growth.max(agent[0].growth);
    res.abs_row(
        "soak_rss_growth",
        "soak: RSS growth after warm-up (larger of server, agent)".into(),
        format!(
            "server {:+.1} MiB, agent {:+.1} MiB",
            server[0].growth as f64 / KIB as f64,
            agent[0].growth as f64 / KIB as f64
        ),
        rss as f64 / KIB as f64,
        RSS_MARGIN_KIB as f64 / KIB as f64,
        format!("≤ {} MiB", RSS_MARGIN_KIB / 1024),
        "MiB",
        "issue",
    );
    let other = [&server[1], &server[2], &agent[1], &agent[2]];
    res.abs_row(
        "soak_fds_threads",
        "soak: descriptor and thread growth after warm-up".into(),
        format!(
            "fds server {:+}, agent {:+}; threads server {:+}, agent {:+}",
            server[1].growth, agent[1].growth, server[2].growth, agent[2].growth
        ),
        if other.iter().all(|g| g.pass) {
            0.0
        } else {
            1.0
        },
        0.0,
        format!("fds ≤ +{FDS_MARGIN}, threads ≤ +{THREADS_MARGIN}"),
        "",
        "issue",
    );
    Ok(())
}

/// The four steps of a round, each with its outcome.
async fn one_round(
    f: &Frontend,
    echo: &str,
    source: SocketAddr,
    sizes: &Sizes,
) -> [(&'static str, anyhow::Result<()>); 4] {
    let dials = async {
        for i in 0..sizes.dials {
            let mut io: BoxIo = Box::new(konnectivity_client::grpc_dial(f, echo, DIAL).await?);
            let (b, r) = echo_byte(&mut io, i, "echo timed out").await?;
            ensure!(r == b, "wrong echo");
        }
        anyhow::Ok(())
    }
    .await;
    let fetch = |n: u64| async move {
        let mut io: BoxIo =
            Box::new(konnectivity_client::grpc_dial(f, &source.to_string(), DIAL).await?);
        download(&mut io, n).await.map(drop)
    };
    let one = fetch(sizes.download).await;
    let each = sizes.download / PARALLEL as u64;
    let parallel = futures::future::join_all((0..PARALLEL).map(|_| fetch(each)))
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()
        .map(drop);
    let idle = async {
        let conns = open_idle(f, echo, sizes.idle)
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(conns);
        anyhow::Ok(())
    }
    .await;
    [
        ("dials", dials),
        ("download", one),
        ("parallel downloads", parallel),
        ("idle tunnels", idle),
    ]
}

/// Growth of one series after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Growth {
    /// Largest sample up to the end of the warm-up.
    warm_max: u64,
    /// Largest sample after the warm-up, until the load ended (a transient peak).
    tail_max: u64,
    /// Median of the first [`LEVEL_SHARE`] of the time after the warm-up.
    early: u64,
    /// Median of the last [`LEVEL_SHARE`] of the load.
    late: u64,
    /// `late - early` (negative: the level fell).
    growth: i64,
    /// Least-squares slope after the warm-up, per minute.
    slope_per_min: f64,
    pass: bool,
}

/// Share of the time after the warm-up whose median is a level (see [`growth`]).
const LEVEL_SHARE: f64 = 0.25;

impl Growth {
    fn json(&self) -> Value {
        json!({
            "warmup_max": self.warm_max, "after_warmup_max": self.tail_max,
            "level_after_warmup": self.early, "level_at_end": self.late,
            "growth": self.growth, "slope_per_minute": round(self.slope_per_min),
            "within_margin": self.pass,
        })
    }
}

/// The level (median) of the samples at the end of the load (its last
/// [`LEVEL_SHARE`] after the warm-up) against the level just after `warm_end`; passes
/// when it rose by at most `margin`. Levels, not peaks: a round's transient peak (16
/// downloads' windows in flight at one sampling instant) is bounded by flow control
/// and says nothing about retention; a leak moves the level.
fn growth(series: &[(f64, f64)], warm_end: f64, load_end: f64, margin: u64) -> Growth {
    let max = |it: &mut dyn Iterator<Item = &(f64, f64)>| it.map(|p| p.1 as u64).max();
    let warm_max = max(&mut series.iter().filter(|p| p.0 <= warm_end)).unwrap_or(0);
    let tail: Vec<(f64, f64)> = series
        .iter()
        .filter(|p| p.0 > warm_end && p.0 <= load_end)
        .copied()
        .collect();
    let tail_max = max(&mut tail.iter()).unwrap_or(warm_max);
    let w = (load_end - warm_end) * LEVEL_SHARE;
    let level = |keep: &dyn Fn(f64) -> bool| {
        let v: Vec<f64> = tail.iter().filter(|p| keep(p.0)).map(|p| p.1).collect();
        let m = crate::stats::median(&v);
        if m.is_finite() { m as u64 } else { warm_max }
    };
    let early = level(&|t| t <= warm_end + w);
    let late = level(&|t| t >= load_end - w);
    let growth = late as i64 - early as i64;
    Growth {
        warm_max,
        tail_max,
        early,
        late,
        growth,
        slope_per_min: slope(&tail) * 60.0,
        pass: growth <= margin as i64,
    }
}

/// Least-squares slope of `y` over `x` (0 for fewer than two points).
fn slope(pts: &[(f64, f64)]) -> f64 {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(ys: &[f64]) -> Vec<(f64, f64)> {
        ys.iter().enumerate().map(|(i, y)| (i as f64, *y)).collect()
    }

    #[test]
    fn a_plateau_reached_during_warm_up_passes() {
        let s = series(&[10.0, 30.0, 28.0, 31.0, 29.0, 30.0, 31.0, 30.0, 31.0, 30.0]);
        let g = growth(&s, 1.0, 9.0, 4);
        assert_eq!((g.warm_max, g.tail_max), (30, 31));
        assert!(g.growth.abs() <= 1 && g.pass, "{g:?}");
    }

    #[test]
    fn a_transient_peak_is_not_growth() {
        let s = series(&[10.0, 30.0, 30.0, 30.0, 30.0, 60.0, 30.0, 30.0, 30.0]);
        let g = growth(&s, 1.0, 8.0, 4);
        assert_eq!((g.tail_max, g.growth), (60, 0));
        assert!(g.pass);
    }

    #[test]
    fn steady_growth_after_warm_up_fails() {
        let s = series(&[10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 24.0, 26.0]);
        let g = growth(&s, 0.0, 8.0, 4);
        assert_eq!((g.early, g.late), (13, 24));
        assert!(!g.pass);
        assert!((g.slope_per_min - 120.0).abs() < 1e-9);
    }

    #[test]
    fn samples_after_the_load_are_not_judged() {
        let s = series(&[10.0, 10.0, 10.0, 50.0]);
        assert!(growth(&s, 1.0, 2.0, 0).pass);
    }
}
