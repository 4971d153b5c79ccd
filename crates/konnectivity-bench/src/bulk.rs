//! Bulk throughput in-process: one connection (download and upload) and N parallel
//! connections, repetitions interleaved over the paths so that every path sees the
//! same host conditions; medians are reported against the TLS null tunnel.
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};

use crate::MIB;
use crate::config::Cfg;
use crate::load::{download, upload};
use crate::report::{Results, progress};
use crate::stats::{gbps, human_bytes, median, round, summary};
use crate::world::{PathKind, World};

/// Bulk transfers, one connection per transfer, `reps` rounds interleaved over `paths`.
pub(crate) async fn bulk_rounds(
    w: &World,
    cfg: &Cfg,
    paths: &[PathKind],
    conns: usize,
    up: bool,
    what: &str,
) -> anyhow::Result<BTreeMap<PathKind, Vec<f64>>> {
    let per = (cfg.transfer.size / conns as u64).max(1);
    let total = per * conns as u64;
    let target = if up { &w.sink } else { &w.source };
    let mut rates: BTreeMap<PathKind, Vec<f64>> = BTreeMap::new();
    // Warm-up: one small transfer per path (first TLS handshakes, allocator growth).
    for &p in paths {
        let mut io = w.open(p, target).await?;
        let n = (4 * MIB).min(per);
        if up {
            upload(&mut io, n).await
        } else {
            download(&mut io, n).await
        }
        .with_context(|| format!("{what} warm-up via {}", p.key()))?;
    }
    for rep in 0..cfg.transfer.reps {
        for &p in paths {
            let mut ios = Vec::with_capacity(conns);
            for _ in 0..conns {
                ios.push(w.open(p, target).await?);
            }
            let start = Instant::now();
            let ends = futures::future::join_all(ios.into_iter().map(|mut io| async move {
                if up {
                    upload(&mut io, per).await
                } else {
                    download(&mut io, per).await
                }
            }))
            .await;
            let mut last = start;
            for e in ends {
                last = last.max(e.with_context(|| format!("{what} via {}", p.key()))?);
            }
            let r = gbps(total, last - start);
            progress(format!(
                "{what} rep {}/{} {:<17} {r:6.2} Gbit/s",
                rep + 1,
                cfg.transfer.reps,
                p.key()
            ));
            rates.entry(p).or_default().push(r);
        }
    }
    Ok(rates)
}

pub(crate) fn rates_json(rates: &BTreeMap<PathKind, Vec<f64>>) -> serde_json::Map<String, Value> {
    rates
        .iter()
        .map(|(p, v)| (format!("{}_gbps", p.key()), summary(v)))
        .collect()
}

pub(crate) fn med(rates: &BTreeMap<PathKind, Vec<f64>>, p: PathKind) -> f64 {
    rates.get(&p).map_or(f64::NAN, |v| median(v))
}

/// Records measurement `id` (`m` with gRPC's ratio to the null tunnel added) and its
/// row: the target is gRPC at 0.85 of the null tunnel (TLS) or better.
fn grpc_vs_null(
    res: &mut Results,
    id: &'static str,
    label: String,
    rates: &BTreeMap<PathKind, Vec<f64>>,
    mut m: serde_json::Map<String, Value>,
) {
    use PathKind::*;
    let g = med(rates, Grpc) / med(rates, NullTls);
    m.insert("ratio_grpc_vs_null_tls".into(), json!(round(g)));
    res.measurements.insert(id.into(), Value::Object(m));
    res.ratio_row(
        id,
        label,
        format!("{:.2} Gbit/s", med(rates, Grpc)),
        format!(
            "null {:.2} (direct {:.2})",
            med(rates, NullTls),
            med(rates, Direct)
        ),
        g,
        true,
        0.85,
        "issue",
    );
}

pub(crate) async fn phase_bulk(w: &World, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    use PathKind::*;
    let paths = [Direct, NullPlain, NullTls, Grpc, Connect];
    let down = bulk_rounds(w, cfg, &paths, 1, false, "bulk download").await?;
    let mut m = rates_json(&down);
    m.insert("bytes".into(), json!(cfg.transfer.size));
    m.insert("direction".into(), json!("download (backend → client)"));
    let c = med(&down, Connect) / med(&down, NullTls);
    m.insert("ratio_connect_vs_null_tls".into(), json!(round(c)));
    m.insert(
        "ratio_grpc_vs_direct".into(),
        json!(round(med(&down, Grpc) / med(&down, Direct))),
    );
    let size = human_bytes(cfg.transfer.size);
    let label = format!("bulk 1 conn {size} download, gRPC/UDS");
    grpc_vs_null(res, "bulk_1conn", label, &down, m);
    res.ratio_row(
        "bulk_1conn_connect",
        format!("bulk 1 conn {size} download, HTTP-CONNECT/UDS"),
        format!("{:.2} Gbit/s", med(&down, Connect)),
        format!("null {:.2}", med(&down, NullTls)),
        c,
        true,
        0.85,
        "issue",
    );

    let upl = bulk_rounds(w, cfg, &[Direct, NullTls, Grpc], 1, true, "bulk upload").await?;
    let mut m = rates_json(&upl);
    m.insert("bytes".into(), json!(cfg.transfer.size));
    m.insert("direction".into(), json!("upload (client → backend)"));
    let label = format!("bulk 1 conn {size} upload, gRPC/UDS");
    grpc_vs_null(res, "bulk_1conn_upload", label, &upl, m);
    Ok(())
}

pub(crate) async fn phase_parallel(w: &World, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    use PathKind::*;
    let n = cfg.transfer.parallel;
    let r = bulk_rounds(
        w,
        cfg,
        &[Direct, NullTls, Grpc, Connect],
        n,
        false,
        &format!("bulk {n} conns"),
    )
    .await?;
    let mut m = rates_json(&r);
    m.insert("connections".into(), json!(n));
    m.insert(
        "bytes_total".into(),
        json!(cfg.transfer.size / n as u64 * n as u64),
    );
    m.insert(
        "ratio_connect_vs_null_tls".into(),
        json!(round(med(&r, Connect) / med(&r, NullTls))),
    );
    let label = format!(
        "bulk {n} conns × {}, gRPC/UDS",
        human_bytes(cfg.transfer.size / n as u64)
    );
    grpc_vs_null(res, "bulk_parallel", label, &r, m);
    Ok(())
}
