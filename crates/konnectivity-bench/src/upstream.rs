//! Ours and upstream side by side, in one run: the four server + agent pairings of a
//! mixed fleet (ours + ours, our server + upstream's agent, upstream's server + our
//! agent, upstream + upstream; upstream = `sigs.k8s.io/apiserver-network-proxy`
//! v0.36.0 built by `tests/upstream/build.sh`) and the null tunnel, all as separate
//! processes, each pairing with its gRPC frontend on a UNIX socket and driven by our
//! Rust client (`grpc_dial`, one Proxy stream per HTTP/2 connection, as
//! konnectivity-client). Measured per pairing: idle RSS, RSS per idle tunneled
//! connection, dial + first byte, 1-byte round trips alone and beside a download,
//! bulk download over one and over N connections, bulk upload over one (to a sink,
//! beside a null tunnel of its own), the CPU per GiB of each; repetitions interleaved over the
//! pairings so that each sees the same host. Then, when its driver is built, the
//! dials, round trips and downloads again through the real Go konnectivity-client
//! ([`go_client`]).
//!
//! Without the upstream binaries the phase says so, in the progress output, the table
//! and the JSON file (`measurements.upstream.available = false` and the reason), and
//! the rest of the bench runs. A pairing that fails (a process exits, a transfer is cut)
//! records the error where its number would be and the others go on: a failure of a
//! mixed fleet is a finding, not a reason to stop measuring.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use konnectivity_testkit::pki::Pki;
use konnectivity_testkit::process::cpu_s;
use serde_json::{Map, Value, json};

use crate::GIB;
use crate::config::Cfg;
use crate::hops::{EchoThreads, Hop, dials_on_thread, round_trips_on_thread};
use crate::load::{Background, download, sink_server, upload};
use crate::memory::open_idle;
use crate::procs::{Helper, TunnelProcs, settled_rss, start_null, start_null_to};
use crate::report::{Results, Row, progress};
use crate::stats::{gbps, latency, round, summary};
use crate::world::BoxIo;

mod beside;
mod go_client;
mod table;

pub(crate) use beside::beside_rows;

/// The upstream binaries' file names (as `tests/upstream/build.sh` writes them).
const SERVER: &str = "upstream-proxy-server";
const AGENT: &str = "upstream-proxy-agent";

/// Whose binary plays a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Ours,
    Upstream,
}

/// The four pairings: (JSON key, table label, server, agent).
pub(super) const PAIRINGS: [(&str, &str, Side, Side); 4] = [
    ("ours_ours", "ours+ours", Side::Ours, Side::Ours),
    ("ours_upstream", "ours+up", Side::Ours, Side::Upstream),
    ("upstream_ours", "up+ours", Side::Upstream, Side::Ours),
    ("upstream_upstream", "up+up", Side::Upstream, Side::Upstream),
];

/// Where the upstream binaries are: `--upstream-bin-dir`, else
/// `$KONNECTIVITY_UPSTREAM_BIN_DIR`, else `upstream` beside the directory of our
/// binaries (`target/release` → `target/upstream`, where the build script puts them).
pub(crate) fn upstream_dir(flag: Option<&Path>, bin_dir: &Path) -> PathBuf {
    if let Some(d) = flag {
        return d.to_path_buf();
    }
    match std::env::var_os("KONNECTIVITY_UPSTREAM_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => bin_dir.parent().unwrap_or(bin_dir).join("upstream"),
    }
}

/// The upstream server and agent in `dir`, or why they cannot be used.
pub(crate) fn upstream_bins(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (s, a) = (dir.join(SERVER), dir.join(AGENT));
    for p in [&s, &a] {
        if !p.is_file() {
            return Err(format!(
                "{} not found (build it with `bash tests/upstream/build.sh`, or pass --upstream-bin-dir)",
                p.display()
            ));
        }
    }
    Ok((s, a))
}

/// One pairing's processes, or the error that kept them from starting or running.
pub(super) struct Pairing {
    key: &'static str,
    label: &'static str,
    procs: Result<TunnelProcs, String>,
    /// Measurement name → its result (a number object, or `{"error": …}`).
    out: Map<String, Value>,
}

/// Path `i`'s hop to `backend`: path 0 is the null tunnel (`null`), path `i` the gRPC
/// frontend of pairing `i - 1` while its processes are alive.
fn path_hop(
    pairings: &mut [Pairing],
    i: usize,
    null: &Hop,
    backend: SocketAddr,
) -> Result<Hop, String> {
    match i.checked_sub(1) {
        None => Ok(null.clone()),
        Some(k) => Ok(Hop::Grpc(pairings[k].live()?.frontend(), backend)),
    }
}

impl Pairing {
    /// The pairing's processes, or the reason it can no longer be measured (a process
    /// that exited ends the pairing, with its log's tail as the reason).
    fn live(&mut self) -> Result<&mut TunnelProcs, String> {
        let dead = match &mut self.procs {
            Ok(p) => p.alive().err().map(|e| format!("{e:#}")),
            Err(e) => Some(e.clone()),
        };
        if let Some(e) = dead {
            self.procs = Err(e.clone());
            return Err(e);
        }
        self.procs.as_mut().map_err(|e| e.clone())
    }

    /// Keeps a measurement's result; a failure keeps the error and the last lines of
    /// the server's and the agent's logs (which say why a connection was closed).
    fn record(&mut self, what: &str, r: anyhow::Result<Value>) {
        let v = match r {
            Ok(v) => v,
            Err(e) => {
                progress(format!("upstream: {} {what}: FAILED: {e:#}", self.key));
                let tail = |t: String| {
                    let l: Vec<&str> = t.lines().rev().take(5).collect();
                    l.into_iter().rev().collect::<Vec<_>>().join("\n")
                };
                let (s, a) = match &self.procs {
                    Ok(p) => (tail(p.server.proc.log_text()), tail(p.agent.log_text())),
                    Err(_) => Default::default(),
                };
                json!({ "error": format!("{e:#}"), "server_log_tail": s, "agent_log_tail": a })
            }
        };
        self.out.insert(what.into(), v);
    }
}

/// Runs the phase: the four pairings and the null tunnel (see the module docs).
pub(crate) async fn phase_upstream(
    cfg: &Cfg,
    bin_dir: &Path,
    (upstream, go): (&Path, Option<PathBuf>),
    pki: &Pki,
    dir: &Path,
    source: SocketAddr,
    res: &mut Results,
) -> anyhow::Result<()> {
    let (up_server, up_agent) = match upstream_bins(upstream) {
        Ok(b) => b,
        Err(reason) => {
            progress(format!("upstream: NOT MEASURED: {reason}"));
            res.measurements.insert(
                "upstream".into(),
                json!({ "available": false, "reason": reason, "upstream_bin_dir": upstream.display().to_string() }),
            );
            res.rows.push(Row::info(
                "upstream",
                "ours beside upstream (four pairings)".into(),
                "not measured".into(),
                format!("no {SERVER}/{AGENT} in {}", upstream.display()),
                None,
                f64::NAN,
                "—",
            ));
            return Ok(());
        }
    };
    let ours_server = crate::procs::bin(bin_dir, "proxy-server")?;
    let ours_agent = crate::procs::bin(bin_dir, "proxy-agent")?;
    let program = |s: Side, ours: &PathBuf, up: &PathBuf| match s {
        Side::Ours => ours.clone(),
        Side::Upstream => up.clone(),
    };
    let echo = EchoThreads::start()?;
    let null = start_null(pki, source, echo.addr)?;
    // Uploads go to a sink, through a null tunnel of their own.
    let sink = sink_server().await?;
    let null_sink = start_null_to(pki, &[sink], &[])?;
    let idle_backend = Helper::start(&["bench-backend".into()], 1)?;
    let mut pairings = Vec::new();
    for (key, label, s, a) in PAIRINGS {
        let procs = TunnelProcs::start_programs(
            &format!("up-{key}"),
            "grpc",
            (&program(s, &ours_server, &up_server), &[]),
            &program(a, &ours_agent, &up_agent),
            pki,
            dir,
        )
        .await
        .map_err(|e| format!("{e:#}"));
        if let Err(e) = &procs {
            progress(format!("upstream: {key} did not start: {e}"));
        }
        pairings.push(Pairing {
            key,
            label,
            procs,
            out: Map::new(),
        });
    }
    progress("upstream: pairings started");

    memory(cfg, &mut pairings, &idle_backend.addrs[0].to_string()).await;
    // The null tunnel's entrances: to the echo (TLS middle hop, for round trips), to the
    // echo (plain middle hop, for dials), to the source (TLS, for downloads).
    let null_hops = (
        Hop::Tcp(null.addrs[1]),
        Hop::Tcp(null.addrs[2]),
        Hop::Tcp(null.addrs[0]),
    );
    let mut null_out = Map::new();
    let echo_hop =
        |p: &mut Pairing| -> Result<Hop, String> { Ok(Hop::Grpc(p.live()?.frontend(), echo.addr)) };
    let source_hop =
        |p: &mut Pairing| -> Result<Hop, String> { Ok(Hop::Grpc(p.live()?.frontend(), source)) };

    // Dial + first byte, ten rounds interleaved over the paths.
    let rounds = cfg.dials.clamp(1, 10);
    let mut dials: BTreeMap<usize, Vec<Duration>> = BTreeMap::new();
    let mut failed: BTreeMap<usize, String> = BTreeMap::new();
    for r in 0..rounds {
        let per = cfg.dials / rounds + usize::from(r < cfg.dials % rounds);
        let warm = if r == 0 { cfg.warmup_dials() } else { 0 };
        for i in 0..=pairings.len() {
            if failed.contains_key(&i) {
                continue;
            }
            let hop = path_hop(&mut pairings, i, &null_hops.1, echo.addr);
            let got = match hop {
                Ok(h) => dials_on_thread(vec![("dial", h)], per, warm)
                    .await
                    .map(|mut m| m.remove("dial").unwrap_or_default())
                    .map_err(|e| format!("{e:#}")),
                Err(e) => Err(e),
            };
            match got {
                Ok(v) => dials.entry(i).or_default().extend(v),
                Err(e) => {
                    failed.insert(i, e);
                }
            }
        }
    }
    for i in 0..=pairings.len() {
        let r = match failed.remove(&i) {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(latency(dials.entry(i).or_default())),
        };
        if i == 0 {
            null_out.insert(
                "dial".into(),
                r.unwrap_or_else(|e| json!({ "error": format!("{e:#}") })),
            );
        } else {
            pairings[i - 1].record("dial", r);
        }
    }
    progress("upstream: dials done");

    // 1-byte round trips, alone and beside a download on the same path.
    // In a smoke run the round trips beside a download are capped at two seconds per
    // path (five paths; a slow debug build would otherwise spend the whole cap on each).
    let rtt = Rtt {
        samples: cfg.rtt_samples,
        warm: cfg.rtt_samples.min(if cfg.smoke { 3 } else { 500 }),
        cap: if cfg.smoke {
            Duration::from_secs(2)
        } else {
            cfg.rtt_time_cap()
        },
    };
    for i in 0..=pairings.len() {
        let hops = if i == 0 {
            Ok((null_hops.0.clone(), null_hops.2.clone()))
        } else {
            let p = &mut pairings[i - 1];
            echo_hop(p).and_then(|e| Ok((e, source_hop(p)?)))
        };
        let (alone, loaded) = match hops {
            Ok((e, s)) => (rtt_alone(rtt, e.clone()).await, rtt_loaded(rtt, e, s).await),
            Err(e) => (Err(anyhow::anyhow!(e.clone())), Err(anyhow::anyhow!(e))),
        };
        if i == 0 {
            null_out.insert("rtt".into(), or_error(alone));
            null_out.insert("rtt_beside_bulk".into(), or_error(loaded));
        } else {
            pairings[i - 1].record("rtt", alone);
            pairings[i - 1].record("rtt_beside_bulk", loaded);
        }
    }
    progress("upstream: round trips done");

    // Bulk: a download and an upload on one connection, then downloads on N;
    // repetitions interleaved over the paths.
    let null_sink_hop = Hop::Tcp(null_sink.addrs[0]);
    let transfers = [
        (
            "bulk_1conn",
            1,
            Direction::Download,
            (source, &null_hops.2, null.pid()),
        ),
        (
            "bulk_1conn_upload",
            1,
            Direction::Upload,
            (sink, &null_sink_hop, null_sink.pid()),
        ),
        (
            "bulk_parallel",
            cfg.transfer.parallel,
            Direction::Download,
            (source, &null_hops.2, null.pid()),
        ),
    ];
    for (what, conns, direction, (backend, null_hop, null_pid)) in transfers {
        let per = (cfg.transfer.size / conns as u64).max(1);
        let mut rates: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        let mut failed: BTreeMap<usize, String> = BTreeMap::new();
        // CPU seconds of the path's processes over its completed transfers.
        let mut cpu: BTreeMap<usize, f64> = BTreeMap::new();
        for rep in 0..cfg.transfer.reps.min(3) {
            for i in 0..=pairings.len() {
                if failed.contains_key(&i) {
                    continue;
                }
                let hop = path_hop(&mut pairings, i, null_hop, backend);
                let pids = path_pids(&mut pairings, i, null_pid);
                let cpu0 = cpu_seconds(&pids);
                let r = match hop {
                    Ok(h) => bulk(&h, direction, conns, per)
                        .await
                        .map_err(|e| format!("{e:#}")),
                    Err(e) => Err(e),
                };
                if r.is_ok() {
                    *cpu.entry(i).or_default() += cpu_seconds(&pids) - cpu0;
                }
                let key = if i == 0 {
                    "null_tls"
                } else {
                    pairings[i - 1].key
                };
                match r {
                    Ok(g) => {
                        progress(format!(
                            "upstream: {what} rep {} {key:<18} {g:6.2} Gbit/s",
                            rep + 1
                        ));
                        rates.entry(i).or_default().push(g);
                    }
                    Err(e) => {
                        progress(format!("upstream: {what} {key}: FAILED: {e}"));
                        failed.insert(i, e);
                    }
                }
            }
        }
        for i in 0..=pairings.len() {
            let v = match failed.remove(&i) {
                Some(e) => {
                    json!({ "error": e, "completed_runs": rates.get(&i).map_or(0, Vec::len) })
                }
                None => summary(rates.get(&i).map_or(&[][..], |v| v)),
            };
            let runs = rates.get(&i).map_or(0, Vec::len) as u64;
            let gib = (per * conns as u64 * runs) as f64 / GIB as f64;
            let cpu = json!({
                "total": round(cpu.get(&i).copied().unwrap_or(f64::NAN) / gib),
                "what": "user + system CPU seconds of the path's processes (server + agent, or bench-null) per GiB moved",
            });
            let out = if i == 0 {
                &mut null_out
            } else {
                &mut pairings[i - 1].out
            };
            out.insert(format!("{what}_gbps"), v);
            if runs > 0 {
                out.insert(format!("{what}_cpu_s_per_gib"), cpu);
            }
        }
    }
    progress("upstream: bulk done");

    // The same pairings through the real Go client, when its driver is there.
    match go_client::go_client(go.as_deref(), bin_dir) {
        Ok(program) => {
            for p in pairings.iter_mut() {
                let r = match p.live() {
                    Ok(procs) => {
                        let uds = procs.server.uds.clone();
                        go_client::measure(cfg, &program, &uds, echo.addr, source).await
                    }
                    Err(e) => Err(anyhow::anyhow!(e)),
                };
                p.record("go_client", r);
                progress(format!("upstream: Go client through {} done", p.key));
            }
        }
        Err(reason) => {
            progress(format!("upstream: Go client NOT USED: {reason}"));
            for p in pairings.iter_mut() {
                p.out.insert(
                    "go_client".into(),
                    json!({ "available": false, "reason": reason }),
                );
            }
        }
    }
    drop(idle_backend);
    drop(null_sink);
    drop(null);
    drop(echo);

    table::report(cfg, upstream, null_out, pairings, res);
    Ok(())
}

/// Idle RSS of each pairing's processes, then (one pairing at a time) with
/// `idle_conns[0]` idle tunneled connections to `echo`.
async fn memory(cfg: &Cfg, pairings: &mut [Pairing], echo: &str) {
    let n = cfg.idle_conns.first().copied().unwrap_or(0);
    for p in pairings.iter_mut() {
        let r = async {
            let procs = p.live().map_err(anyhow::Error::msg)?;
            let (sp, ap) = (procs.server.proc.pid(), procs.agent.pid());
            let f = procs.frontend();
            let (s0, a0) = (settled_rss(sp).await, settled_rss(ap).await);
            let opened = open_idle(&f, echo, n).await;
            let conns = opened
                .into_iter()
                .collect::<anyhow::Result<Vec<BoxIo>>>()
                .with_context(|| format!("opening {n} idle tunneled connections"))?;
            let (s1, a1) = (settled_rss(sp).await, settled_rss(ap).await);
            drop(conns);
            let per = |a: u64, b: u64| round(b.saturating_sub(a) as f64 / n.max(1) as f64);
            anyhow::Ok(json!({
                "idle_rss_kib": { "server": s0, "agent": a0 },
                "connections": n,
                "rss_kib": { "server": s1, "agent": a1 },
                "kib_per_conn": { "server": per(s0, s1), "agent": per(a0, a1), "total": round(per(s0, s1) + per(a0, a1)) },
            }))
        }
        .await;
        p.record("memory", r);
        progress(format!("upstream: memory {} done", p.key));
    }
}

/// The processes of path `i` (see [`path_hop`]): the null tunnel's, or the pairing's
/// server and agent while they are alive.
fn path_pids(pairings: &mut [Pairing], i: usize, null: u32) -> Vec<u32> {
    match i.checked_sub(1) {
        None => vec![null],
        Some(k) => pairings[k]
            .live()
            .map_or_else(|_| Vec::new(), |p| vec![p.server.proc.pid(), p.agent.pid()]),
    }
}

/// User + system CPU seconds `pids` have spent so far (`/proc/<pid>/stat`).
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_s(&p.to_string())).sum()
}

fn or_error(r: anyhow::Result<Value>) -> Value {
    r.unwrap_or_else(|e| json!({ "error": format!("{e:#}") }))
}

/// How many round trips a path gets: samples after a warm-up, or until the cap.
#[derive(Clone, Copy)]
struct Rtt {
    samples: usize,
    warm: usize,
    cap: Duration,
}

async fn rtt_alone(rtt: Rtt, echo: Hop) -> anyhow::Result<Value> {
    let mut s = round_trips_on_thread(echo, rtt.samples, rtt.warm, rtt.cap).await?;
    anyhow::ensure!(!s.is_empty(), "no round trip completed");
    Ok(latency(&mut s))
}

async fn rtt_loaded(rtt: Rtt, echo: Hop, source: Hop) -> anyhow::Result<Value> {
    let bulk =
        Background::start(source.open().await?, "the download beside the round trips").await?;
    let before = bulk.moved();
    let t0 = Instant::now();
    let r = round_trips_on_thread(echo, rtt.samples, rtt.warm, rtt.cap).await;
    let window = t0.elapsed();
    let during = bulk.moved() - before;
    let b = bulk.finish("the download beside the round trips").await;
    let mut s = r?;
    b?;
    anyhow::ensure!(!s.is_empty(), "no round trip completed");
    let mut l = latency(&mut s);
    l["background_gbps"] = json!(round(gbps(during, window)));
    Ok(l)
}

/// Which way a bulk transfer goes.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// Backend (the source) to client.
    Download,
    /// Client to backend (the sink).
    Upload,
}

/// `conns` transfers of `per` bytes each at once through `hop`, all in `direction`;
/// Gbit/s of all of them.
async fn bulk(hop: &Hop, direction: Direction, conns: usize, per: u64) -> anyhow::Result<f64> {
    let mut ios = Vec::with_capacity(conns);
    for _ in 0..conns {
        ios.push(hop.open().await?);
    }
    let start = Instant::now();
    let ends = futures::future::join_all(ios.into_iter().map(|mut io| async move {
        match direction {
            Direction::Download => download(&mut io, per).await,
            Direction::Upload => upload(&mut io, per).await,
        }
    }))
    .await;
    let mut last = start;
    for e in ends {
        last = last.max(e?);
    }
    Ok(gbps(per * conns as u64, last - start))
}
