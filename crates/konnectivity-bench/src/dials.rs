//! Connection set-up in-process: a new connection to the echo backend plus one byte
//! written and echoed back, per path, in ten interleaved rounds after a warm-up;
//! p50/p99 against the plain null tunnel (a TLS handshake per connection is reported
//! beside it), through each frontend: gRPC, HTTP-CONNECT and SOCKS5 (CONNECT, no
//! authentication), all on UNIX sockets of the same server.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::config::Cfg;
use crate::load::first_echo;
use crate::report::{Results, Row};
use crate::stats::{latency, num, round};
use crate::world::{PathKind, World};

/// One dial + first echoed byte.
pub(crate) async fn dial_once(w: &World, p: PathKind, seq: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let io = w.open(p, &w.echo).await?;
    first_echo(io, seq, t).await
}

pub(crate) async fn phase_dial(w: &World, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    use PathKind::*;
    let paths = [Direct, NullPlain, NullTls, Grpc, Connect, Socks5];
    for &p in &paths {
        for i in 0..cfg.warmup_dials() {
            dial_once(w, p, i)
                .await
                .with_context(|| format!("warm-up dial via {}", p.key()))?;
        }
    }
    let rounds = cfg.dials.min(10);
    let mut samples: BTreeMap<PathKind, Vec<Duration>> = BTreeMap::new();
    let started = Instant::now();
    for r in 0..rounds {
        let per = cfg.dials / rounds + usize::from(r < cfg.dials % rounds);
        for &p in &paths {
            let v = samples.entry(p).or_default();
            for i in 0..per {
                v.push(
                    dial_once(w, p, i)
                        .await
                        .with_context(|| format!("dial via {}", p.key()))?,
                );
            }
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "dial test exceeded 10 minutes"
        );
    }
    let mut m = serde_json::Map::new();
    m.insert("dials_per_path".into(), json!(cfg.dials));
    m.insert(
        "what".into(),
        json!("new connection to an echo backend + 1 byte written and echoed back"),
    );
    for (p, v) in samples.iter_mut() {
        m.insert(p.key().into(), latency(v));
    }
    let o = Value::Object(m.clone());
    let p50 = |k: &str| num(&o, &[k, "p50_us"]);
    let p99 = |k: &str| num(&o, &[k, "p99_us"]);
    let g50 = p50("grpc_uds") / p50("null_plain");
    let c50 = p50("http_connect_uds") / p50("null_plain");
    let s50 = p50("socks5_uds") / p50("null_plain");
    let g99 = p99("grpc_uds") / p99("null_plain");
    m.insert("ratio_grpc_p50_vs_null_plain".into(), json!(round(g50)));
    m.insert(
        "ratio_grpc_p50_vs_null_tls".into(),
        json!(round(p50("grpc_uds") / p50("null_tls"))),
    );
    m.insert("ratio_grpc_p99_vs_null_plain".into(), json!(round(g99)));
    m.insert("ratio_connect_p50_vs_null_plain".into(), json!(round(c50)));
    m.insert("ratio_socks5_p50_vs_null_plain".into(), json!(round(s50)));
    res.measurements.insert("dial".into(), Value::Object(m));
    res.ratio_row(
        "dial_p50",
        "dial + first byte p50, gRPC/UDS".into(),
        format!("{:.0} µs", p50("grpc_uds")),
        format!(
            "null {:.0} (TLS/conn {:.0}, direct {:.0})",
            p50("null_plain"),
            p50("null_tls"),
            p50("direct")
        ),
        g50,
        false,
        1.2,
        "issue",
    );
    res.ratio_row(
        "dial_p50_connect",
        "dial + first byte p50, HTTP-CONNECT/UDS".into(),
        format!("{:.0} µs", p50("http_connect_uds")),
        format!("null {:.0}", p50("null_plain")),
        c50,
        false,
        1.2,
        "issue",
    );
    // No target of its own in the issue: reported beside CONNECT, the tunnel it shares.
    res.rows.push(Row::info(
        "dial_p50_socks5",
        "dial + first byte p50, SOCKS5/UDS".into(),
        format!("{:.0} µs", p50("socks5_uds")),
        format!(
            "null {:.0}, CONNECT {:.0} (p99 {:.0}, null p99 {:.0})",
            p50("null_plain"),
            p50("http_connect_uds"),
            p99("socks5_uds"),
            p99("null_plain")
        ),
        Some(s50),
        p50("socks5_uds"),
        "µs",
    ));
    res.ratio_row(
        "dial_p99",
        "dial + first byte p99, gRPC/UDS".into(),
        format!("{:.0} µs", p99("grpc_uds")),
        format!(
            "null {:.0} (TLS/conn {:.0}, direct {:.0})",
            p99("null_plain"),
            p99("null_tls"),
            p99("direct")
        ),
        g99,
        false,
        1.5,
        "research",
    );
    Ok(())
}
