//! Upstream's figures in the main table: for each row that upstream has an equivalent
//! of (the separate-process rows: bulk, dials, round trips, CPU per GiB, memory), the
//! upstream + upstream figure of the upstream phase and ours + ours measured beside it
//! ([`Beside`]), plus the rows through processes that only that phase measures (bulk
//! upload on one connection, bulk download on N). In-process rows get nothing: upstream's binaries cannot run inside the
//! bench process. Without the phase's results the table says why in one line.
use serde_json::Value;

use crate::report::{Beside, Results, Row};
use crate::stats::{human_bytes, num};

/// The rows with an upstream equivalent: (row id, JSON path in a pairing's
/// measurements, divisor into the row's unit, decimals).
const EQUIVALENTS: [(&str, &[&str], f64, usize); 10] = [
    (
        "bulk_1conn_upload_processes",
        &["bulk_1conn_upload_gbps", "median"],
        1.0,
        2,
    ),
    (
        "bulk_1conn_processes",
        &["bulk_1conn_gbps", "median"],
        1.0,
        2,
    ),
    (
        "bulk_parallel_processes",
        &["bulk_parallel_gbps", "median"],
        1.0,
        2,
    ),
    (
        "cpu_per_gib_processes",
        &["bulk_1conn_cpu_s_per_gib", "total"],
        1.0,
        2,
    ),
    ("dial_p50_processes", &["dial", "p50_us"], 1.0, 0),
    ("dial_p99_processes", &["dial", "p99_us"], 1.0, 0),
    ("rtt_p50_processes", &["rtt", "p50_us"], 1.0, 0),
    ("rtt_p99_loaded", &["rtt_beside_bulk", "p99_us"], 1.0, 0),
    (
        "memory_per_conn",
        &["memory", "kib_per_conn", "total"],
        1.0,
        1,
    ),
    (
        "idle_agent_rss",
        &["memory", "idle_rss_kib", "agent"],
        1024.0,
        1,
    ),
];

/// Fills the upstream column of `res.rows` from `measurements.upstream` (see the
/// module docs), or sets `res.upstream_note` to say why it stays empty.
pub(crate) fn beside_rows(res: &mut Results) {
    let up = match res.measurements.get("upstream") {
        None => {
            res.upstream_note = Some(
                "upstream column empty: the upstream phase did not run in this run (it is in the default set; with --only, add `upstream`)."
                    .into(),
            );
            return;
        }
        Some(u) if u["available"] == Value::Bool(false) => {
            let reason = u["reason"]
                .as_str()
                .unwrap_or("upstream's binaries not found");
            res.upstream_note = Some(format!("upstream column empty: {reason}."));
            return;
        }
        Some(u) => u.clone(),
    };
    let ours = &up["pairings"]["ours_ours"];
    let theirs = &up["pairings"]["upstream_upstream"];
    // After the one-connection download through processes, in this order.
    let at = res
        .rows
        .iter()
        .position(|r| r.id == "bulk_1conn_processes")
        .map_or(res.rows.len(), |i| i + 1);
    for (k, row) in phase_rows(&up).into_iter().enumerate() {
        res.rows.insert(at + k, row);
    }
    for row in &mut res.rows {
        let Some((_, path, div, decimals)) = EQUIVALENTS.iter().find(|e| e.0 == row.id) else {
            continue;
        };
        let b = Beside {
            upstream: num(theirs, path) / div,
            ours: num(ours, path) / div,
            decimals: *decimals,
        };
        if b.upstream.is_finite() && b.ours.is_finite() {
            row.upstream = Some(b);
        }
    }
}

/// The rows only the upstream phase measures through processes, ours + ours against
/// the null tunnel's process: bulk upload on one connection, bulk download on N.
fn phase_rows(up: &Value) -> Vec<Row> {
    let (Some(n), Some(bytes)) = (up["parallel"].as_u64(), up["bulk_bytes"].as_u64()) else {
        return Vec::new();
    };
    let rows = [
        (
            "bulk_1conn_upload_processes",
            format!(
                "bulk 1 conn {} upload, gRPC/UDS, separate processes",
                human_bytes(bytes)
            ),
            "bulk_1conn_upload_gbps",
        ),
        (
            "bulk_parallel_processes",
            format!(
                "bulk {n} conns × {}, gRPC/UDS, separate processes",
                human_bytes(bytes / n.max(1))
            ),
            "bulk_parallel_gbps",
        ),
    ];
    rows.into_iter()
        .filter_map(|(id, label, key)| {
            let ours = num(&up["pairings"]["ours_ours"], &[key, "median"]);
            let null = num(&up["null_tls"], &[key, "median"]);
            ours.is_finite().then(|| {
                let known = null.is_finite();
                Row::info(
                    id,
                    label,
                    format!("{ours:.2} Gbit/s"),
                    if known {
                        format!("null {null:.2}")
                    } else {
                        "—".into()
                    },
                    known.then_some(ours / null),
                    ours,
                    "Gbit/s",
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::report::table_lines;

    fn row(id: &'static str, label: &str, value: &str) -> Row {
        Row::info(
            id,
            label.into(),
            value.into(),
            "null 1".into(),
            Some(1.0),
            1.0,
            "x",
        )
    }

    fn measured() -> Value {
        let pairing = |gbps: f64, par: f64, dial: f64, rtt: f64, kib: f64, agent_kib: u64| {
            json!({
                "bulk_1conn_gbps": { "median": gbps },
                "bulk_parallel_gbps": { "median": par },
                "bulk_1conn_upload_gbps": { "median": gbps * 0.9 },
                "bulk_1conn_cpu_s_per_gib": { "total": 1.5 },
                "dial": { "p50_us": dial, "p99_us": dial * 3.0 },
                "rtt": { "p50_us": rtt },
                "rtt_beside_bulk": { "p99_us": rtt * 20.0 },
                "memory": { "kib_per_conn": { "total": kib }, "idle_rss_kib": { "agent": agent_kib } },
            })
        };
        json!({
            "available": true,
            "bulk_bytes": 1u64 << 30,
            "parallel": 16,
            "null_tls": {
                "bulk_parallel_gbps": { "median": 4.0 },
                "bulk_1conn_upload_gbps": { "median": 5.0 },
            },
            "pairings": {
                "ours_ours": pairing(3.53, 3.2, 1036.0, 247.0, 38.5, 8908),
                "upstream_upstream": pairing(1.01, 1.12, 1680.0, 379.0, 68.5, 34304),
            },
        })
    }

    fn results(upstream: Option<Value>) -> Results {
        let mut res = Results::default();
        res.rows
            .push(row("bulk_1conn", "bulk 1 conn, in-process", "5.06 Gbit/s"));
        res.rows.push(row(
            "bulk_1conn_processes",
            "bulk 1 conn, processes",
            "6.28 Gbit/s",
        ));
        res.rows
            .push(row("dial_p50_processes", "dial p50, processes", "823 µs"));
        res.rows
            .push(row("idle_agent_rss", "idle proxy-agent RSS", "8.4 MiB"));
        if let Some(u) = upstream {
            res.measurements.insert("upstream".into(), u);
        }
        res
    }

    fn line<'a>(lines: &'a [String], label: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.starts_with(label))
            .map_or("", String::as_str)
    }

    /// Asserts that the row labelled `label` has every one of `cells`.
    fn assert_cells(lines: &[String], label: &str, cells: &[&str]) {
        let l = line(lines, label);
        for c in cells {
            assert!(l.contains(c), "{c:?} not in the row {label:?}: {l}");
        }
    }

    #[test]
    fn process_rows_show_upstream_beside_ours_and_their_ratio() {
        let mut res = results(Some(measured()));
        beside_rows(&mut res);
        assert_eq!(res.upstream_note, None);
        let lines = table_lines(&res.rows);
        assert_cells(&lines, "measurement", &["  upstream  ", "ours/up"]);
        let bulk = ["6.28 Gbit/s", "1.01 (ours 3.53)", "  3.50  "];
        assert_cells(&lines, "bulk 1 conn, processes", &bulk);
        let dial = ["823 µs", "1680 (ours 1036)", "  0.62  "];
        assert_cells(&lines, "dial p50, processes", &dial);
        let rss = ["8.4 MiB", "33.5 (ours 8.7)", "  0.26  "];
        assert_cells(&lines, "idle proxy-agent RSS", &rss);
    }

    #[test]
    fn in_process_rows_have_no_upstream_figure() {
        let mut res = results(Some(measured()));
        beside_rows(&mut res);
        assert_eq!(res.rows[0].upstream, None);
        let lines = table_lines(&res.rows);
        assert_cells(&lines, "bulk 1 conn, in-process", &["null 1  ", "  —  "]);
        assert!(!line(&lines, "bulk 1 conn, in-process").contains("ours "));
    }

    #[test]
    fn upload_and_parallel_bulk_through_processes_get_rows_after_the_download_row() {
        let mut res = results(Some(measured()));
        beside_rows(&mut res);
        let ids: Vec<&str> = res.rows.iter().map(|r| r.id).collect();
        let expected = [
            "bulk_1conn_processes",
            "bulk_1conn_upload_processes",
            "bulk_parallel_processes",
        ];
        assert_eq!(ids[1..4], expected);
        let lines = table_lines(&res.rows);
        let upload = ["3.18 Gbit/s", "null 5.00", "0.91 (ours 3.18)", "  3.50  "];
        let label = "bulk 1 conn 1 GiB upload, gRPC/UDS, separate processes";
        assert_cells(&lines, label, &upload);
        let parallel = ["3.20 Gbit/s", "null 4.00", "1.12 (ours 3.20)", "  2.86  "];
        let label = "bulk 16 conns × 64 MiB, gRPC/UDS, separate processes";
        assert_cells(&lines, label, &parallel);
    }

    #[test]
    fn missing_upstream_binaries_leave_the_column_empty_and_say_how_to_build_them() {
        let reason = "target/upstream/upstream-proxy-server not found (build it with `bash tests/upstream/build.sh`, or pass --upstream-bin-dir)";
        let mut res = results(Some(json!({ "available": false, "reason": reason })));
        beside_rows(&mut res);
        assert!(res.rows.iter().all(|r| r.upstream.is_none()));
        let note = res.upstream_note.unwrap_or_default();
        assert!(note.contains("bash tests/upstream/build.sh"), "{note}");
        let lines = table_lines(&res.rows);
        assert!(line(&lines, "bulk 1 conn, processes").contains("  —  "));
    }

    #[test]
    fn a_run_without_the_upstream_phase_says_so() {
        let mut res = results(None);
        beside_rows(&mut res);
        assert!(res.rows.iter().all(|r| r.upstream.is_none()));
        assert!(
            res.upstream_note
                .unwrap_or_default()
                .contains("did not run")
        );
    }
}
