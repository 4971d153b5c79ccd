//! Interactive latency in-process: 1-byte round trips on an open connection, alone and
//! beside a continuous download on another connection of the same path. Under
//! saturation the in-process figure measures this process's scheduling;
//! [`crate::rtt_processes`] measures the same through separate processes.
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::config::Cfg;
use crate::load::{Background, round_trips};
use crate::report::{Results, Row, progress};
use crate::stats::{gbps, latency, num, round};
use crate::world::{PathKind, World};

pub(crate) async fn phase_rtt(w: &Arc<World>, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    use PathKind::*;
    let warm = cfg.rtt_samples.min(500);
    let mut alone = serde_json::Map::new();
    for p in [Direct, NullTls, Grpc, Connect] {
        let mut io = w.open(p, &w.echo).await?;
        let mut s = round_trips(&mut io, cfg.rtt_samples, warm, cfg.rtt_time_cap())
            .await
            .with_context(|| format!("round trips via {}", p.key()))?;
        ensure!(!s.is_empty(), "no round trip completed via {}", p.key());
        alone.insert(p.key().into(), latency(&mut s));
        progress(format!("rtt alone {:<17} done", p.key()));
    }
    let mut loaded = serde_json::Map::new();
    for p in [NullTls, Grpc, Connect] {
        let bulk = Background::start(w.open(p, &w.source).await?, p.key()).await?;
        let mut io = w.open(p, &w.echo).await?;
        let before = bulk.moved();
        let t0 = Instant::now();
        let r = round_trips(&mut io, cfg.rtt_samples, warm, cfg.rtt_time_cap()).await;
        let window = t0.elapsed();
        let during = bulk.moved() - before;
        let b = bulk.finish(p.key()).await;
        let mut s =
            r.with_context(|| format!("round trips beside a bulk transfer via {}", p.key()))?;
        b?;
        ensure!(!s.is_empty(), "no round trip completed via {}", p.key());
        let mut l = latency(&mut s);
        l["background_gbps"] = json!(round(gbps(during, window)));
        loaded.insert(p.key().into(), l);
        progress(format!(
            "rtt beside bulk {:<17} done (bulk {:.2} Gbit/s meanwhile)",
            p.key(),
            gbps(during, window)
        ));
    }
    let a = Value::Object(alone.clone());
    let l = Value::Object(loaded.clone());
    let ratio50 = num(&a, &["grpc_uds", "p50_us"]) / num(&a, &["null_tls", "p50_us"]);
    res.measurements.insert(
        "rtt".into(),
        json!({
            "what": "1 byte written, echoed back, on an open connection",
            "paths": alone,
            "ratio_grpc_p50_vs_null_tls": round(ratio50),
            "ratio_grpc_p99_vs_null_tls": round(num(&a, &["grpc_uds", "p99_us"]) / num(&a, &["null_tls", "p99_us"])),
        }),
    );
    res.measurements.insert(
        "rtt_under_load".into(),
        json!({
            "what": "the same round trips while another connection of the same path (same agent) downloads continuously, all in this process on one multi-thread runtime: under saturation this measures the runtime's scheduling (the null tunnel too), see rtt_under_load_processes for the deployment-like figure",
            "paths": loaded,
        }),
    );
    res.ratio_row(
        "rtt_p50",
        "1-byte RTT p50 alone, gRPC/UDS".into(),
        format!("{:.0} µs", num(&a, &["grpc_uds", "p50_us"])),
        format!(
            "null {:.0} (direct {:.0})",
            num(&a, &["null_tls", "p50_us"]),
            num(&a, &["direct", "p50_us"])
        ),
        ratio50,
        false,
        1.25,
        "research",
    );
    let g99 = num(&l, &["grpc_uds", "p99_us"]);
    let n99 = num(&l, &["null_tls", "p99_us"]);
    res.rows.push(Row::info(
        "rtt_p99_loaded_inproc",
        "1-byte RTT p99 beside bulk, gRPC/UDS, in-process".into(),
        format!("{g99:.0} µs"),
        format!(
            "null {n99:.0}, CONNECT {:.0}",
            num(&l, &["http_connect_uds", "p99_us"])
        ),
        Some(g99 / n99),
        g99,
        "µs",
    ));
    Ok(())
}
