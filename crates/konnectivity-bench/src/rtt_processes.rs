//! Latency through separate processes, the deployment-like figures: 1-byte round trips
//! alone and beside a continuous download, and dial + first byte with the CPU each
//! process spends per dial, through a proxy-server + proxy-agent pair per frontend
//! (gRPC, HTTP-CONNECT; the HTTP-CONNECT server also serves SOCKS5 on a UNIX socket,
//! for the dials) and the null tunnel in its own process.
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use konnectivity_client::Frontend;
use konnectivity_testkit::process::cpu_s;
use serde_json::{Value, json};

use crate::hops::{EchoThreads, Hop, dials_on_thread, round_trips_on_thread};
use crate::load::Background;
use crate::procs::{ProcessEnv, TunnelProcs, bin, start_null};
use crate::report::{Results, Row, progress};
use crate::stats::{gbps, latency, num, round};

/// 1-byte round trips through separate processes, alone and beside a continuous
/// download on the same path: the null tunnel in its own process (`bench-null`), and
/// proxy-server + proxy-agent processes with a gRPC and with an HTTP-CONNECT frontend.
/// The round trips run from a dedicated thread to an echo backend on dedicated
/// threads; the download's source and reader run on this process's runtime.
pub(crate) async fn phase_rtt_processes(
    env: ProcessEnv<'_>,
    res: &mut Results,
) -> anyhow::Result<()> {
    let warm = env.cfg.rtt_samples.min(500);
    let echo = EchoThreads::start()?;
    let mut null = start_null(env.pki, env.source, echo.addr)?;
    let mut g = TunnelProcs::start("rtt-grpc", "grpc", env.bin_dir, env.pki, env.dir).await?;
    // The HTTP-CONNECT server also serves SOCKS5 on a UNIX socket, for the dials.
    let socks5_uds = env.dir.join("rtt-socks5.sock");
    let _ = std::fs::remove_file(&socks5_uds);
    let mut c = TunnelProcs::start_programs(
        "rtt-connect",
        "http-connect",
        (
            &bin(env.bin_dir, "proxy-server")?,
            &[format!("--socks5-uds={}", socks5_uds.display())],
        ),
        &bin(env.bin_dir, "proxy-agent")?,
        env.pki,
        env.dir,
    )
    .await?;
    // (key, bulk hop, echo hop, processes carrying the path)
    let tunnel = |key, procs: &TunnelProcs, hop: fn(Frontend, SocketAddr) -> Hop| {
        let pids = vec![
            ("proxy-server", procs.server.proc.pid()),
            ("proxy-agent", procs.agent.pid()),
        ];
        let to = |backend| hop(procs.frontend(), backend);
        (key, to(env.source), to(echo.addr), pids)
    };
    let routes = [
        (
            "null_tls",
            Hop::Tcp(null.addrs[0]),
            Hop::Tcp(null.addrs[1]),
            vec![("bench-null", null.pid())],
        ),
        tunnel("grpc_uds", &g, Hop::Grpc),
        tunnel("http_connect_uds", &c, Hop::Connect),
    ];

    let mut alone = serde_json::Map::new();
    let direct = ("direct", Hop::Tcp(echo.addr));
    for (key, hop) in std::iter::once(direct).chain(routes.iter().map(|r| (r.0, r.2.clone()))) {
        let mut s = round_trips_on_thread(hop, env.cfg.rtt_samples, warm, env.cfg.rtt_time_cap())
            .await
            .with_context(|| format!("round trips via {key}"))?;
        ensure!(!s.is_empty(), "no round trip completed via {key}");
        alone.insert(key.into(), latency(&mut s));
        progress(format!("rtt alone, processes {key:<17} done"));
    }

    let dial_hops = vec![
        ("direct", Hop::Tcp(echo.addr)),
        ("null_plain", Hop::Tcp(null.addrs[2])),
        ("grpc_uds", routes[1].2.clone()),
        ("http_connect_uds", routes[2].2.clone()),
        (
            "socks5_uds",
            Hop::Socks5(socks5_uds.display().to_string(), echo.addr),
        ),
    ];
    let dial_pids = [
        ("null_plain", routes[0].3.clone()),
        ("grpc_uds", routes[1].3.clone()),
        ("http_connect_uds", routes[2].3.clone()),
        ("socks5_uds", routes[2].3.clone()),
    ];
    let cpu_now = || -> Vec<Vec<f64>> {
        dial_pids
            .iter()
            .map(|(_, ps)| ps.iter().map(|(_, p)| cpu_s(&p.to_string())).collect())
            .collect()
    };
    let cpu0 = cpu_now();
    let dials = dials_on_thread(dial_hops, env.cfg.dials, env.cfg.warmup_dials()).await?;
    let cpu1 = cpu_now();
    // Every path was dialled `warmup_dials + dials` times; processes serving two paths
    // (HTTP-CONNECT and SOCKS5) served twice as many, and each path gets the average.
    let per = 1e6 / (env.cfg.dials + env.cfg.warmup_dials()).max(1) as f64;
    let dial_cpu: serde_json::Map<String, Value> = dial_pids
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|((key, ps), (a, b))| {
            let sharing = dial_pids.iter().filter(|(_, q)| q == ps).count().max(1);
            let per = per / sharing as f64;
            let m: serde_json::Map<String, Value> = ps
                .iter()
                .zip(a.iter().zip(b))
                .map(|((name, _), (x, y))| ((*name).to_owned(), json!(round((y - x) * per))))
                .collect();
            ((*key).to_owned(), Value::Object(m))
        })
        .collect();
    progress("dials, processes done");

    let mut loaded = serde_json::Map::new();
    for (key, bulk_hop, echo_hop, pids) in &routes {
        let bulk = Background::start(bulk_hop.open().await?, key).await?;
        let cpu0: Vec<f64> = pids
            .iter()
            .map(|(_, pid)| cpu_s(&pid.to_string()))
            .collect();
        let me0 = cpu_s("self");
        let before = bulk.moved();
        let t0 = Instant::now();
        let r = round_trips_on_thread(
            echo_hop.clone(),
            env.cfg.rtt_samples,
            warm,
            env.cfg.rtt_time_cap(),
        )
        .await;
        let window = t0.elapsed();
        let during = bulk.moved() - before;
        let secs = window.as_secs_f64().max(1e-9);
        let mut cpu: serde_json::Map<String, Value> = pids
            .iter()
            .zip(&cpu0)
            .map(|((name, pid), c0)| {
                let pct = 100.0 * (cpu_s(&pid.to_string()) - c0) / secs;
                ((*name).to_owned(), json!(round(pct)))
            })
            .collect();
        cpu.insert(
            "bench".into(),
            json!(round(100.0 * (cpu_s("self") - me0) / secs)),
        );
        let b = bulk.finish(key).await;
        let mut s = r.with_context(|| format!("round trips beside a bulk transfer via {key}"))?;
        b?;
        ensure!(!s.is_empty(), "no round trip completed via {key}");
        ensure!(
            during > 0,
            "the bulk transfer via {key} did not move during the round trips"
        );
        let mut l = latency(&mut s);
        l["background_gbps"] = json!(round(gbps(during, window)));
        l["cpu_percent"] = Value::Object(cpu);
        progress(format!(
            "rtt beside bulk, processes {key:<17} done: p50 {:.0} µs, p99 {:.0} µs (bulk {:.2} Gbit/s meanwhile)",
            num(&l, &["p50_us"]),
            num(&l, &["p99_us"]),
            gbps(during, window)
        ));
        loaded.insert((*key).into(), l);
    }
    g.alive()?;
    c.alive()?;
    if let Some(st) = null.child.try_wait()? {
        bail!("the bench-null helper exited ({st})");
    }
    drop(routes);
    drop((g, c, null, echo));

    let a = Value::Object(alone.clone());
    let l = Value::Object(loaded.clone());
    res.measurements.insert(
        "rtt_processes".into(),
        json!({
            "what": "1 byte written, echoed back, on an open connection, through separate processes: proxy-server (gRPC or HTTP-CONNECT frontend on a UNIX socket) + proxy-agent, or the null tunnel (TLS middle hop) in its own process (konnectivity bench-null); the client on a dedicated thread (current-thread runtime), the echo backend on dedicated threads (blocking sockets)",
            "paths": alone,
        }),
    );
    res.measurements.insert(
        "rtt_under_load_processes".into(),
        json!({
            "what": "the same round trips while another connection of the same path (same processes, same agent) downloads continuously from a env.source in the bench process; bulk and interactive connections share the tunnel processes' runtimes as in a deployment, the client and echo backend do not share a runtime with the load. cpu_percent: CPU of each process during the round trips (100 = one core)",
            "paths": loaded,
        }),
    );
    let mut dm = serde_json::Map::new();
    dm.insert("dials_per_path".into(), json!(env.cfg.dials));
    dm.insert(
        "what".into(),
        json!("new connection to the echo backend + 1 byte written and echoed back, through separate proxy-server + proxy-agent processes (socks5_uds: the HTTP-CONNECT pair's server, its --socks5-uds frontend; cpu_us_per_dial of these two is the pair's CPU over both paths' dials, halved), or the null tunnel with a plain middle hop in its own process; the dialing client on a dedicated thread (current-thread runtime)"),
    );
    for (k, mut v) in dials {
        dm.insert(k.into(), latency(&mut v));
    }
    dm.insert("cpu_us_per_dial".into(), Value::Object(dial_cpu));
    let d = Value::Object(dm.clone());
    res.measurements
        .insert("dial_processes".into(), Value::Object(dm));
    let dp50 = |k: &str| num(&d, &[k, "p50_us"]);
    let dp99 = |k: &str| num(&d, &[k, "p99_us"]);
    let (g50, n50) = (
        num(&a, &["grpc_uds", "p50_us"]),
        num(&a, &["null_tls", "p50_us"]),
    );
    let g99 = num(&l, &["grpc_uds", "p99_us"]);
    let n99 = num(&l, &["null_tls", "p99_us"]);
    let rows = [
        Row::info(
            "dial_p50_processes",
            "dial + first byte p50, gRPC/UDS, separate processes".into(),
            format!("{:.0} µs", dp50("grpc_uds")),
            format!(
                "null {:.0}, CONNECT {:.0}, SOCKS5 {:.0} (direct {:.0})",
                dp50("null_plain"),
                dp50("http_connect_uds"),
                dp50("socks5_uds"),
                dp50("direct")
            ),
            Some(dp50("grpc_uds") / dp50("null_plain")),
            dp50("grpc_uds"),
            "µs",
        ),
        Row::info(
            "dial_p99_processes",
            "dial + first byte p99, gRPC/UDS, separate processes".into(),
            format!("{:.0} µs", dp99("grpc_uds")),
            format!(
                "null {:.0}, CONNECT {:.0} (direct {:.0})",
                dp99("null_plain"),
                dp99("http_connect_uds"),
                dp99("direct")
            ),
            Some(dp99("grpc_uds") / dp99("null_plain")),
            dp99("grpc_uds"),
            "µs",
        ),
        Row::info(
            "rtt_p50_processes",
            "1-byte RTT p50 alone, gRPC/UDS, separate processes".into(),
            format!("{g50:.0} µs"),
            format!(
                "null {n50:.0} (direct {:.0})",
                num(&a, &["direct", "p50_us"])
            ),
            Some(g50 / n50),
            g50,
            "µs",
        ),
        Row {
            id: "rtt_p99_loaded",
            label: "1-byte RTT p99 beside bulk, gRPC/UDS, separate processes".into(),
            value: format!("{g99:.0} µs"),
            baseline: format!(
                "null {n99:.0}, CONNECT {:.0}",
                num(&l, &["http_connect_uds", "p99_us"])
            ),
            ratio: Some(g99 / n99),
            target: "≤ 1 ms".into(),
            source: "issue",
            pass: g99.is_finite().then_some(g99 <= 1000.0),
            judged: g99,
            unit: "µs",
            upstream: None,
        },
    ];
    // Next to the in-process RTT rows, before the in-process figure beside bulk.
    let at = res
        .rows
        .iter()
        .position(|r| r.id == "rtt_p99_loaded_inproc")
        .unwrap_or(res.rows.len());
    for (i, r) in rows.into_iter().enumerate() {
        res.rows.insert(at + i, r);
    }
    Ok(())
}
