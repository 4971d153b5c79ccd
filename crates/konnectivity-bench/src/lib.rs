//! `konnectivity bench`: how fast the tunnel is, as ratios against baselines measured
//! in the same run on the same machine.
//!
//! Everything runs on loopback. Three kinds of set-up:
//!
//! * **In-process** (throughput, connection set-up, latency, stalled reader): a
//!   proxy-server (gRPC, HTTP-CONNECT and SOCKS5 frontends, each on a UNIX socket)
//!   and a proxy-agent started with the library APIs inside this process,
//!   plus loopback backends (byte source, byte sink, echo). The client is
//!   `konnectivity_client::grpc_dial` (one Proxy stream on its own HTTP/2 connection,
//!   what kube-apiserver's konnectivity-client does) or `connect_dial`.
//!   The baselines share the process and the tokio runtime (one worker per CPU):
//!   **direct** (client → backend) and the **null tunnel** (client → relay S → relay A
//!   → backend, one upstream connection per client connection, S→A either TLS with
//!   the agent link's own rustls configurations — a full handshake per connection — or
//!   plain TCP; relays copy with `copy_bidirectional_with_sizes`, 64 KiB buffers, no
//!   framing). The null tunnel has the tunnel's hops and crypto and nothing else.
//! * **Separate processes** (memory, latency beside bulk): the real `proxy-server`
//!   and `proxy-agent` binaries from the directory of this executable.
//!   - Memory: their resident memory is read from `/proc/<pid>/status`. The idle
//!     connections' echo backend runs in a helper process (`konnectivity
//!     bench-backend`) to keep file descriptors apart.
//!   - Latency (`rtt`, besides the in-process figures): under saturation the
//!     in-process numbers measure this process's tokio scheduling (a task copying
//!     64 KiB runs for milliseconds per poll, even in the null tunnel), not the
//!     tunnel's head-of-line blocking. So the 1-byte round trips are also measured
//!     the way they happen in a deployment: two proxy-server processes (gRPC and
//!     HTTP-CONNECT frontend, each on a UNIX socket), each with its own proxy-agent
//!     process, and the null tunnel (TLS middle hop) in a process of its own
//!     (`konnectivity bench-null`), each carrying the bulk download and the round
//!     trips on its one runtime. The measuring client runs on a dedicated OS thread
//!     with a current-thread runtime, the echo backend on dedicated OS threads with
//!     blocking sockets; only the bulk source and its reader share this process's
//!     multi-thread runtime.
//! * **Scale**: one `proxy-server` process and N agents run as tasks inside this
//!   process (the agent library, each with its own agent ID and TCP/TLS connection, TLS
//!   session resumption off so every agent pays a full handshake like a cold node).
//!
//! Every transfer checks its byte count and contents, every loop is bounded in count
//! and time, and the results go to a JSON file and a table.
//!
//! # Modules, by phase
//!
//! * [`config`]: the flags and the configuration resolved from them;
//! * [`world`]: the in-process tunnel, backends and paths; [`null`]: the null tunnel;
//!   [`load`]: the load generators and the backends they check;
//! * the in-process phases: [`bulk`] (one and N connections), [`dials`], [`rtt`],
//!   [`stalled`];
//! * the separate-process phases: [`procs`] (our binaries and the bench's helper
//!   processes), [`hops`] (the client and echo on threads of their own),
//!   [`rtt_processes`] (latency and dials), [`udp`] (datagram round trips and loss,
//!   direct, gRPC `udp` and SOCKS5 UDP ASSOCIATE, idle and beside bulk), [`memory`],
//!   [`scale`], [`restart`] (the
//!   scale phase's agents through a proxy-server SIGKILL and restart: the curve of
//!   agents back), [`soak`] (mixed rounds for `--soak-seconds`, resources sampled
//!   every second against a bound), and [`upstream`]
//!   (ours beside upstream's binaries in the four server + agent pairings), and
//!   [`faults`] (loss, a partition and a killed agent between two network namespaces,
//!   ours and upstream's; root only, not in the default set);
//! * [`stats`] and [`report`]: numbers from samples, bench-results.json and the table.
//!
//! The `konnectivity` CLI calls [`run`], [`backend_helper`] and [`null_helper`] for
//! its `bench`, `bench-backend` and `bench-null` subcommands.#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

mod bulk;
mod config;
mod dials;
mod faults;
mod hops;
mod load;
mod memory;
mod null;
mod procs;
mod report;
mod restart;
mod rtt;
mod rtt_processes;
mod scale;
mod soak;
mod stalled;
mod stats;
mod udp;
mod upstream;
mod world;

pub use config::{BenchArgs, Phase};
pub use null::{NullArgs, null_helper};
pub use procs::backend_helper;

use config::Cfg;
use report::{Beside, Results, cpu_split, cpu_times, machine, nofile_limit, print_table, progress};
use stats::{human_bytes, round};
use world::{Target, World};

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;

/// Period of the test pattern: odd, so no read or write size lines up with it.
pub(crate) const PERIOD: usize = (1 << 20) + 13;
/// Largest read or write of the load generators.
pub(crate) const MAX_IO: usize = 256 * 1024;
/// Write size of the source and of uploads (the research probes' 128 KiB writes).
pub(crate) const WRITE: usize = 128 * 1024;
/// Timeout of one dial, and of one read or write that should make progress.
pub(crate) const STEP: Duration = Duration::from_secs(30);
pub(crate) const DIAL: Duration = Duration::from_secs(10);

/// Runs `phase` when the configuration asks for `which`; its error names `what`.
async fn run_phase(
    cfg: &Cfg,
    which: Phase,
    what: &'static str,
    phase: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    if cfg.has(which) {
        phase.await.context(what)?;
    }
    Ok(())
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let cfg = Cfg::from(&args)?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("no directory for the current executable")?,
    };
    if cfg.has(Phase::Memory)
        || cfg.has(Phase::Scale)
        || cfg.has(Phase::Restart)
        || cfg.has(Phase::Soak)
        || cfg.has(Phase::Rtt)
        || cfg.has(Phase::Upstream)
        || cfg.has(Phase::Faults)
        || cfg.has(Phase::Udp)
    {
        procs::ours(&bin_dir)?;
    }
    let need = cfg
        .idle_conns
        .iter()
        .chain(cfg.agents.iter())
        .copied()
        .max()
        .unwrap_or(0) as u64
        + 512;
    if (cfg.has(Phase::Memory)
        || cfg.has(Phase::Scale)
        || cfg.has(Phase::Restart)
        || cfg.has(Phase::Upstream))
        && let Some(lim) = nofile_limit()
        && lim < need
    {
        bail!(
            "the open-files limit is {lim}; the memory and scale tests need about {need} \
             (one descriptor per connection in this process, proxy-server and proxy-agent each). \
             Raise it first, e.g. `ulimit -n {}` (at most the hard limit, `ulimit -Hn`), \
             or lower --idle-conns/--agents",
            need.next_power_of_two()
        );
    }
    let started = Instant::now();
    let cpu0 = cpu_times();
    let tmp = tempfile::Builder::new()
        .prefix("konnectivity-bench-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    let pki = konnectivity_testkit::pki::generate(&dir.join("pki"), &[])?;
    let mut res = Results::default();
    let mode = if cfg.smoke { "smoke" } else { "full" };
    progress(format!(
        "{mode} run: size {}, {} parallel, {} dials, {} RTT samples, {} reps, idle conns {:?}, agents {:?}",
        human_bytes(cfg.transfer.size),
        cfg.transfer.parallel,
        cfg.dials,
        cfg.rtt_samples,
        cfg.transfer.reps,
        cfg.idle_conns,
        cfg.agents
    ));

    let up = upstream::upstream_dir(args.upstream_bin_dir.as_deref(), &bin_dir);
    let source = load::source_server().await?;
    let env = procs::ProcessEnv {
        cfg: &cfg,
        bin_dir: &bin_dir,
        pki: &pki,
        dir: &dir,
        source,
    };
    let in_proc_phases = [
        Phase::Bulk,
        Phase::Parallel,
        Phase::Dial,
        Phase::Rtt,
        Phase::Stalled,
    ];
    if in_proc_phases.iter().any(|p| cfg.has(*p)) {
        let sink = load::sink_server().await?;
        let echo = konnectivity_testkit::servers::echo("127.0.0.1:0").await?;
        let ntls = null::null_tls(
            &pki.ca,
            &pki.server_cert,
            &pki.server_key,
            &pki.agent_cert,
            &pki.agent_key,
        )?;
        let target = |addr: SocketAddr| {
            let ntls = ntls.clone();
            async move {
                anyhow::Ok(Target {
                    addr,
                    null_plain: null::null_tunnel(addr, None).await?,
                    null_tls: null::null_tunnel(addr, Some(ntls)).await?,
                })
            }
        };
        let (inproc, frontends) = world::start_inproc(&pki, &dir, cfg.window).await?;
        let world = Arc::new(World {
            source: target(source).await?,
            sink: target(sink).await?,
            echo: target(echo).await?,
            frontends,
        });
        let w = &world;
        run_phase(
            &cfg,
            Phase::Bulk,
            "bulk",
            bulk::phase_bulk(w, &cfg, &mut res),
        )
        .await?;
        let parallel = bulk::phase_parallel(w, &cfg, &mut res);
        run_phase(&cfg, Phase::Parallel, "parallel bulk", parallel).await?;
        let dial = dials::phase_dial(w, &cfg, &mut res);
        run_phase(&cfg, Phase::Dial, "connection set-up", dial).await?;
        let rtt = rtt::phase_rtt(w, &cfg, &mut res);
        run_phase(&cfg, Phase::Rtt, "interactive latency", rtt).await?;
        let rtt = rtt_processes::phase_rtt_processes(env, &mut res);
        let what = "interactive latency, separate processes";
        run_phase(&cfg, Phase::Rtt, what, rtt).await?;
        let stalled = stalled::phase_stalled(w, &cfg, &mut res);
        run_phase(&cfg, Phase::Stalled, "stalled reader", stalled).await?;
        inproc.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), inproc.server).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), inproc.agent).await;
    }
    if cfg.has(Phase::Udp) {
        let ours = procs::ours(&bin_dir)?;
        udp::phase_udp(
            &cfg,
            (&ours.0, &ours.1),
            upstream::upstream_bins(&up),
            &pki,
            &dir,
            source,
            &mut res,
        )
        .await
        .context("UDP")?;
    }
    let memory = memory::phase_memory(env, &mut res);
    run_phase(&cfg, Phase::Memory, "memory", memory).await?;
    run_phase(
        &cfg,
        Phase::Scale,
        "scale",
        scale::phase_scale(env, &mut res),
    )
    .await?;
    let restart = restart::phase_restart(env, &mut res);
    run_phase(&cfg, Phase::Restart, "server restart", restart).await?;

    if cfg.has(Phase::Upstream) {
        let go = args.go_client.clone();
        upstream::phase_upstream(&cfg, &bin_dir, (&up, go), &pki, &dir, source, &mut res)
            .await
            .context("ours beside upstream")?;
    }

    run_phase(&cfg, Phase::Soak, "soak", soak::phase_soak(env, &mut res)).await?;

    if cfg.has(Phase::Faults) {
        let ours = procs::ours(&bin_dir)?;
        faults::phase_faults(
            &cfg,
            (&ours.0, &ours.1),
            upstream::upstream_bins(&up).ok(),
            &dir,
            &mut res,
        )
        .await
        .context("faults")?;
    }

    upstream::beside_rows(&mut res);
    let cpu = cpu_split(&cpu0, &cpu_times());
    let targets: Vec<Value> = res
        .rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "measurement": r.label, "value": r.value, "baseline": r.baseline,
                "ratio": r.ratio.map(round), "judged": round(r.judged), "unit": r.unit,
                "target": r.target, "source": r.source, "pass": r.pass,
                "upstream": r.upstream.map(Beside::to_json),
            })
        })
        .collect();
    let out = json!({
        "tool": "konnectivity bench",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": mode,
        "machine": machine(),
        "config": {
            "bulk_bytes": cfg.transfer.size, "parallel": cfg.transfer.parallel, "dials": cfg.dials,
            "rtt_samples": cfg.rtt_samples, "udp_datagrams": cfg.udp_datagrams, "reps": cfg.transfer.reps, "idle_conns": cfg.idle_conns,
            "agents": cfg.agents, "soak_seconds": cfg.soak.as_secs(), "stall_bytes": cfg.stall_size(),
            "phases": cfg.phases.iter().map(|p| format!("{p:?}").to_lowercase()).collect::<Vec<_>>(),
            "flow_window_in_process": cfg.window,
            "flow_window_processes": konnectivity_core::flow::DEFAULT_WINDOW,
            "null_tunnel": "client → relay S → (TLS 1.3 with the agent link's rustls configs, full handshake per connection | plain TCP) → relay A → backend; copy_bidirectional_with_sizes 64 KiB; same process and runtime as the in-process tunnel, except for rtt_processes and rtt_under_load_processes, where it runs in a process of its own (konnectivity bench-null) like the proxy-server and proxy-agent processes it is compared with",
        },
        "measurements": Value::Object(res.measurements.clone()),
        "targets": targets,
        "upstream_column": res.upstream_note.as_deref().unwrap_or(report::UPSTREAM_FOOTNOTE),
        "elapsed_seconds": round(started.elapsed().as_secs_f64()),
        "cpu_percent_during_run": cpu,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    print_table(&res, mode, started.elapsed(), &args.out, &cpu);
    let missed: Vec<&str> = res
        .rows
        .iter()
        .filter(|r| r.source == "issue" && r.pass == Some(false))
        .map(|r| r.id)
        .collect();
    if args.strict && !missed.is_empty() {
        bail!("targets missed: {}", missed.join(", "));
    }
    Ok(())
}
