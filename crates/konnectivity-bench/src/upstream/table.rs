//! The table and JSON of [`super`]: per metric, the null tunnel and each pairing with
//! its ratio to the null tunnel, and ours + ours against upstream + upstream.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::{PAIRINGS, Pairing, Side};
use crate::config::Cfg;
use crate::report::Results;
use crate::stats::{human_bytes, num, round};

/// The measurements of one path as a JSON object (`{}` when missing).
fn get<'a>(o: &'a Map<String, Value>, k: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    o.get(k).unwrap_or(&NULL)
}

/// The rows of the side-by-side table: (label, JSON path in a path's measurements,
/// unit divisor, decimals, whether the null tunnel has the number).
const METRICS: [(&str, &str, [&str; 2], f64, usize); 15] = [
    (
        "bulk 1 conn download, Gbit/s",
        "bulk_1conn",
        ["bulk_1conn_gbps", "median"],
        1.0,
        2,
    ),
    (
        "bulk 1 conn upload, Gbit/s",
        "bulk_1conn_upload",
        ["bulk_1conn_upload_gbps", "median"],
        1.0,
        2,
    ),
    (
        "bulk N conns, Gbit/s",
        "bulk_parallel",
        ["bulk_parallel_gbps", "median"],
        1.0,
        2,
    ),
    (
        "CPU s per GiB, bulk 1 conn download",
        "cpu_per_gib",
        ["bulk_1conn_cpu_s_per_gib", "total"],
        1.0,
        2,
    ),
    (
        "dial + first byte p50, µs",
        "dial_p50",
        ["dial", "p50_us"],
        1.0,
        0,
    ),
    (
        "dial + first byte p99, µs",
        "dial_p99",
        ["dial", "p99_us"],
        1.0,
        0,
    ),
    (
        "1-byte RTT p50 alone, µs",
        "rtt_p50",
        ["rtt", "p50_us"],
        1.0,
        0,
    ),
    (
        "1-byte RTT p99 beside bulk, µs",
        "rtt_p99_beside_bulk",
        ["rtt_beside_bulk", "p99_us"],
        1.0,
        0,
    ),
    (
        "Go client: bulk 1 conn, Gbit/s",
        "go_bulk_1conn",
        ["go_client", "bulk_1conn_gbps"],
        1.0,
        2,
    ),
    (
        "Go client: bulk N conns, Gbit/s",
        "go_bulk_parallel",
        ["go_client", "bulk_parallel_gbps"],
        1.0,
        2,
    ),
    (
        "Go client: dial + first byte p50, µs",
        "go_dial_p50",
        ["go_client", "dial"],
        1.0,
        0,
    ),
    (
        "Go client: 1-byte RTT p50, µs",
        "go_rtt_p50",
        ["go_client", "rtt"],
        1.0,
        0,
    ),
    (
        "idle proxy-server RSS, MiB",
        "idle_server_rss",
        ["memory", "idle_rss_kib"],
        1024.0,
        1,
    ),
    (
        "idle proxy-agent RSS, MiB",
        "idle_agent_rss",
        ["memory", "idle_rss_kib"],
        1024.0,
        1,
    ),
    (
        "RSS per idle conn, server+agent, KiB",
        "kib_per_idle_conn",
        ["memory", "kib_per_conn"],
        1.0,
        1,
    ),
];

/// One metric of a path's measurements (NaN when missing or failed).
fn metric(o: &Map<String, Value>, id: &str, path: [&str; 2]) -> f64 {
    let v = &get(o, path[0])[path[1]];
    match id {
        "idle_server_rss" => num(v, &["server"]),
        "idle_agent_rss" => num(v, &["agent"]),
        "kib_per_idle_conn" => num(v, &["total"]),
        "go_bulk_1conn" | "go_bulk_parallel" => num(v, &["median"]),
        "go_dial_p50" | "go_rtt_p50" => num(v, &["p50_us"]),
        _ => v.as_f64().unwrap_or(f64::NAN),
    }
}

/// The phase's JSON (`measurements.upstream`), its table (a section after the target
/// table) and two informational target rows (ours + ours against upstream + upstream).
pub(super) fn report(
    cfg: &Cfg,
    upstream: &Path,
    null_out: Map<String, Value>,
    pairings: Vec<Pairing>,
    res: &mut Results,
) {
    let mut ours_vs_up = Map::new();
    let mut by_key = Map::new();
    let mut ratios_null = Map::new();
    let mut lines = vec![format!(
        "ours beside upstream v0.36.0 (separate processes, gRPC frontend on a UNIX socket, Rust client unless marked Go client; server+agent; bulk {} over 1 and {} conns; ratio to the null tunnel in parentheses)",
        human_bytes(cfg.transfer.size),
        cfg.transfer.parallel
    )];
    let mut head = format!("{:<38}  {:>9}", "measurement", "null");
    for p in &pairings {
        head += &format!("  {:>16}", p.label);
    }
    head += &format!("  {:>8}", "ours/up");
    lines.push(head);
    for (label, id, path, div, dec) in METRICS {
        let n = metric(&null_out, id, path) / div;
        let mut line = format!(
            "{label:<38}  {:>9}",
            if n.is_finite() {
                format!("{n:.dec$}")
            } else {
                "—".into()
            }
        );
        let mut row = Map::new();
        let mut vals = BTreeMap::new();
        for p in &pairings {
            let v = metric(&p.out, id, path) / div;
            vals.insert(p.key, v);
            let cell = if v.is_finite() {
                let r = v / n;
                row.insert(p.key.into(), json!(round(r)));
                if r.is_finite() {
                    format!("{v:.dec$} ({r:.2})")
                } else {
                    format!("{v:.dec$}")
                }
            } else if get(&p.out, path[0]).get("error").is_some() || p.procs.is_err() {
                "FAILED".into()
            } else {
                "—".into()
            };
            line += &format!("  {cell:>16}");
        }
        let ours_up = vals.get("ours_ours").copied().unwrap_or(f64::NAN)
            / vals.get("upstream_upstream").copied().unwrap_or(f64::NAN);
        line += &format!(
            "  {:>8}",
            if ours_up.is_finite() {
                format!("{ours_up:.2}")
            } else {
                "—".into()
            }
        );
        ours_vs_up.insert(id.into(), json!(round(ours_up)));
        if n.is_finite() {
            ratios_null.insert(id.into(), Value::Object(row));
        }
        lines.push(line);
    }
    for p in pairings {
        let (s, a) = PAIRINGS
            .iter()
            .find(|x| x.0 == p.key)
            .map_or(("", ""), |x| (side(x.2), side(x.3)));
        let mut o = p.out;
        o.insert("server".into(), json!(s));
        o.insert("agent".into(), json!(a));
        if let Err(e) = &p.procs {
            o.insert("error".into(), json!(e));
        }
        by_key.insert(p.key.into(), Value::Object(o));
    }
    let m = json!({
        "available": true,
        "what": "ours and upstream's proxy-server and proxy-agent (sigs.k8s.io/apiserver-network-proxy v0.36.0, tests/upstream) in the four pairings (key = server_agent), each a separate server and agent process with the gRPC frontend on a UNIX socket, driven by the Rust client (grpc_dial: one Proxy stream per HTTP/2 connection, as konnectivity-client), beside the null tunnel in its own process (TLS middle hop; plain for dials); the round-trip and dialing client on a dedicated thread, the echo backend on dedicated threads, the idle connections' echo backend in a helper process; repetitions interleaved over the paths",
        "client": "konnectivity_client::grpc_dial (Rust); go_client: the Go konnectivity-client through tests/go-interop's bench mode (single-use tunnels)",
        "upstream_bin_dir": upstream.display().to_string(),
        "bulk_bytes": cfg.transfer.size,
        "parallel": cfg.transfer.parallel,
        "idle_connections": cfg.idle_conns.first().copied().unwrap_or(0),
        "null_tls": Value::Object(null_out),
        "pairings": Value::Object(by_key),
        "ratios_vs_null": Value::Object(ratios_null),
        "ratio_ours_ours_vs_upstream_upstream": Value::Object(ours_vs_up),
    });
    res.measurements.insert("upstream".into(), m);
    res.sections.push(lines.join("\n"));
}

fn side(s: Side) -> &'static str {
    match s {
        Side::Ours => "ours",
        Side::Upstream => "upstream v0.36.0",
    }
}
