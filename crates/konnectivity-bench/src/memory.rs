//! Memory of the real binaries: resident memory of an idle proxy-server and
//! proxy-agent, then with N idle tunneled connections (grpc_dial, one echoed byte,
//! then idle) per step; afterwards one bulk download through the two processes with
//! the CPU each spent per GiB.
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures::StreamExt;
use konnectivity_client::Frontend;
use konnectivity_testkit::process::{cpu_s, fds, rss_kib};
use serde_json::{Value, json};

use crate::load::{download, echo_byte};
use crate::procs::{Helper, ProcessEnv, TunnelProcs, settled_rss, sockstat};
use crate::report::{Results, Row, progress};
use crate::stats::{gbps, human_bytes, median, num, round, summary};
use crate::world::BoxIo;
use crate::{DIAL, GIB};

/// An informational row comparing `ours` with the null tunnel's figure `null`, which is
/// NaN when the phase that measures it did not run (then the row has no baseline).
fn vs_null(
    id: &'static str,
    label: String,
    value: String,
    baseline: String,
    (ours, null): (f64, f64),
    unit: &'static str,
) -> Row {
    let known = null.is_finite();
    let baseline = if known { baseline } else { "—".into() };
    Row::info(
        id,
        label,
        value,
        baseline,
        known.then_some(ours / null),
        ours,
        unit,
    )
}

pub(crate) async fn phase_memory(env: ProcessEnv<'_>, res: &mut Results) -> anyhow::Result<()> {
    let helper = Helper::start(&["bench-backend".into()], 1)?;
    let TunnelProcs {
        mut server,
        mut agent,
    } = TunnelProcs::start("mem", "grpc", env.bin_dir, env.pki, env.dir).await?;
    let (sp, ap) = (server.proc.pid(), agent.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s0 = settled_rss(sp).await;
    let a0 = settled_rss(ap).await;
    progress(format!(
        "memory: idle server {s0} KiB, idle agent {a0} KiB (RSS)"
    ));
    let f = Frontend::Uds(server.uds.clone());
    let echo = helper.addrs[0].to_string();
    let mut conns: Vec<BoxIo> = Vec::new();
    let mut steps = vec![json!({
        "connections": 0, "server_rss_kib": s0, "agent_rss_kib": a0,
        "server_fds": fds(sp), "agent_fds": fds(ap), "kernel_tcp": sockstat(),
    })];
    let mut last = (0usize, s0, a0);
    let mut first_step = None;
    for &target in &env.cfg.idle_conns {
        let need = target.saturating_sub(conns.len());
        let t = Instant::now();
        let opened = open_idle(&f, &echo, need).await;
        for o in opened {
            conns.push(o.with_context(|| {
                format!(
                    "opening idle tunneled connection {} of {target}",
                    conns.len() + 1
                )
            })?);
        }
        server.proc.alive()?;
        agent.alive()?;
        let (sf, af) = (fds(sp), fds(ap));
        ensure!(
            sf >= target && af >= target,
            "with {target} tunneled connections open, proxy-server has {sf} and proxy-agent {af} file descriptors: the connections are not all there"
        );
        let s = settled_rss(sp).await;
        let a = settled_rss(ap).await;
        progress(format!(
            "memory: {target} idle conns (opened in {:.1?}): server {s} KiB, agent {a} KiB",
            t.elapsed()
        ));
        steps.push(json!({
            "connections": target, "server_rss_kib": s, "agent_rss_kib": a,
            "server_fds": sf, "agent_fds": af, "kernel_tcp": sockstat(),
            "open_seconds": round(t.elapsed().as_secs_f64()),
        }));
        if first_step.is_none() {
            first_step = Some((target, s, a));
        }
        last = (target, s, a);
    }
    let (n, s, a) = last;
    let per_s = s.saturating_sub(s0) as f64 / n as f64;
    let per_a = a.saturating_sub(a0) as f64 / n as f64;
    // Marginal cost between the first and the last step (excludes one-time growth).
    let marginal = match first_step {
        Some((n1, s1, a1)) if n > n1 => json!({
            "from": n1, "to": n,
            "server_kib_per_conn": round((s as f64 - s1 as f64) / (n - n1) as f64),
            "agent_kib_per_conn": round((a as f64 - a1 as f64) / (n - n1) as f64),
        }),
        _ => Value::Null,
    };

    // Close the idle connections, then one bulk transfer through the two processes
    // (for comparison with the in-process figure).
    drop(conns);
    let t = Instant::now();
    while fds(sp) > 64 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n_bulk = env.cfg.transfer.size;
    let mut rates = Vec::new();
    let cpu0 = (cpu_s(&sp.to_string()), cpu_s(&ap.to_string()));
    for _ in 0..env.cfg.transfer.reps.min(3) {
        let mut io: BoxIo =
            Box::new(konnectivity_client::grpc_dial(&f, &env.source.to_string(), DIAL).await?);
        let start = Instant::now();
        let end = download(&mut io, n_bulk)
            .await
            .context("bulk download through the proxy-server and proxy-agent processes")?;
        rates.push(gbps(n_bulk, end - start));
    }
    // CPU seconds the two processes spent per GiB moved (user + system, from
    // /proc/<pid>/stat): the cost side of the throughput, independent of how much CPU
    // other guests of the host take.
    let gib_moved = (n_bulk * rates.len() as u64) as f64 / GIB as f64;
    let cpu_per_gib = (
        (cpu_s(&sp.to_string()) - cpu0.0) / gib_moved,
        (cpu_s(&ap.to_string()) - cpu0.1) / gib_moved,
    );
    let busy_rss = (rss_kib(sp), rss_kib(ap));
    server.proc.alive()?;
    agent.alive()?;
    drop(agent);
    drop(server);
    drop(helper);

    res.measurements.insert(
        "memory_idle_conns".into(),
        json!({
            "what": "VmRSS from /proc/<pid>/status of separate proxy-server (gRPC frontend on a UNIX socket) and proxy-agent processes, with N idle tunneled connections (grpc_dial from the bench process, one Proxy stream on its own HTTP/2 connection as konnectivity-client does, 1 byte echoed, then idle) to an echo backend in a helper process. Kernel socket buffers are not in RSS (see kernel_tcp).",
            "steps": steps,
            "server_kib_per_conn": round(per_s),
            "agent_kib_per_conn": round(per_a),
            "total_kib_per_conn": round(per_s + per_a),
            "marginal": marginal,
        }),
    );
    res.measurements.insert(
        "idle_agent".into(),
        json!({ "what": "VmRSS of a proxy-agent process connected to one proxy-server, no tunneled connections", "agent_rss_kib": a0, "server_rss_kib": s0 }),
    );
    res.measurements.insert(
        "bulk_1conn_processes".into(),
        json!({
            "what": "bulk download, 1 connection, gRPC/UDS through the proxy-server and proxy-agent processes (after the memory test)",
            "bytes": n_bulk,
            "grpc_uds_gbps": summary(&rates),
            "rss_after_kib": { "server": busy_rss.0, "agent": busy_rss.1 },
            "cpu_s_per_gib": { "server": round(cpu_per_gib.0), "agent": round(cpu_per_gib.1) },
        }),
    );
    let proc_gbps = median(&rates);
    let null_inproc = num(
        &Value::Object(res.measurements.clone()),
        &["bulk_1conn", "null_tls_gbps", "median"],
    );
    let grpc_inproc = num(
        &Value::Object(res.measurements.clone()),
        &["bulk_1conn", "grpc_uds_gbps", "median"],
    );
    res.rows.push(vs_null(
        "bulk_1conn_processes",
        format!(
            "bulk 1 conn {} download, gRPC/UDS, separate processes",
            human_bytes(n_bulk)
        ),
        format!("{proc_gbps:.2} Gbit/s"),
        format!("null {null_inproc:.2} (in-process tunnel {grpc_inproc:.2})"),
        (proc_gbps, null_inproc),
        "Gbit/s",
    ));
    // The null tunnel's CPU per GiB comes from the latency phase, where it carried a
    // continuous download in a process of its own (cpu_percent at background_gbps).
    let null_cpu = {
        let m = Value::Object(res.measurements.clone());
        let path = ["rtt_under_load_processes", "paths", "null_tls"];
        let pct = num(
            &m,
            &[path[0], path[1], path[2], "cpu_percent", "bench-null"],
        );
        let g = num(&m, &[path[0], path[1], path[2], "background_gbps"]);
        (pct / 100.0) / (g * 1e9 / 8.0 / GIB as f64)
    };
    let tunnel_cpu = cpu_per_gib.0 + cpu_per_gib.1;
    if tunnel_cpu.is_finite() {
        res.rows.push(vs_null(
            "cpu_per_gib_processes",
            "CPU per GiB downloaded, separate processes".into(),
            format!(
                "{tunnel_cpu:.2} s (server {:.2} + agent {:.2})",
                cpu_per_gib.0, cpu_per_gib.1
            ),
            format!("null {null_cpu:.2} s"),
            (tunnel_cpu, null_cpu),
            "s/GiB",
        ));
    }
    res.abs_row(
        "memory_per_conn",
        format!("RSS per idle tunneled conn, server+agent (0→{n})"),
        format!(
            "{:.1} KiB (server {per_s:.1} + agent {per_a:.1})",
            per_s + per_a
        ),
        per_s + per_a,
        8.0,
        "≤ 8 KiB".into(),
        "KiB",
        "issue",
    );
    res.abs_row(
        "idle_agent_rss",
        "idle proxy-agent RSS".into(),
        format!("{:.1} MiB", a0 as f64 / 1024.0),
        a0 as f64 / 1024.0,
        8.0,
        "≤ 8 MiB".into(),
        "MiB",
        "issue",
    );
    Ok(())
}

/// Opens `n` tunneled connections to the echo backend at `echo` through the gRPC
/// frontend `f` (32 dials at a time), echoes one byte on each and returns them open:
/// the idle connections of the memory measurements.
pub(crate) async fn open_idle(f: &Frontend, echo: &str, n: usize) -> Vec<anyhow::Result<BoxIo>> {
    futures::stream::iter(0..n)
        .map(|i| {
            let f = f.clone();
            let echo = echo.to_owned();
            async move {
                let mut io: BoxIo =
                    Box::new(konnectivity_client::grpc_dial(&f, &echo, DIAL).await?);
                let (b, r) = echo_byte(&mut io, i, "idle connection: echo timed out").await?;
                ensure!(r == b, "idle connection: wrong echo");
                Ok(io)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}
