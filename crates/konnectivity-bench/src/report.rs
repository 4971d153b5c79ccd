//! The results: measurements (the `measurements` object of bench-results.json, one key
//! per phase), the rows of the target table with their verdicts, the machine and its
//! CPU split during the run (steal), the JSON document and the printed table.
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::stats::round;

/// One line of the target table.
pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) label: String,
    pub(crate) value: String,
    pub(crate) baseline: String,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: String,
    /// "issue" (issue 6) or "research" (perf-anchors §5.4, informational).
    pub(crate) source: &'static str,
    pub(crate) pass: Option<bool>,
    /// The number the target is judged on (ratio or absolute, in `unit`).
    pub(crate) judged: f64,
    pub(crate) unit: &'static str,
}

impl Row {
    /// An informational row: no target and no verdict, `judged` in `unit`.
    pub(crate) fn info(
        id: &'static str,
        label: String,
        value: String,
        baseline: String,
        ratio: Option<f64>,
        judged: f64,
        unit: &'static str,
    ) -> Row {
        Row {
            id,
            label,
            value,
            baseline,
            ratio,
            target: "—".into(),
            source: "info",
            pass: None,
            judged,
            unit,
        }
    }
}

#[derive(Default)]
pub(crate) struct Results {
    pub(crate) measurements: serde_json::Map<String, Value>,
    pub(crate) rows: Vec<Row>,
    /// Tables of their own, printed after the target table (e.g. ours beside upstream).
    pub(crate) sections: Vec<String>,
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ratio_row(
        &mut self,
        id: &'static str,
        label: String,
        value: String,
        baseline: String,
        ratio: f64,
        at_least: bool,
        bound: f64,
        source: &'static str,
    ) {
        let pass = if ratio.is_finite() {
            Some(if at_least {
                ratio >= bound
            } else {
                ratio <= bound
            })
        } else {
            None
        };
        let target = if at_least {
            format!("≥ {bound}×")
        } else {
            format!("≤ {bound}×")
        };
        self.rows.push(Row {
            id,
            label,
            value,
            baseline,
            ratio: Some(ratio),
            target,
            source,
            pass,
            judged: ratio,
            unit: "ratio",
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn abs_row(
        &mut self,
        id: &'static str,
        label: String,
        value: String,
        judged: f64,
        bound: f64,
        target: String,
        unit: &'static str,
        source: &'static str,
    ) {
        let pass = judged.is_finite().then_some(judged <= bound);
        self.rows.push(Row {
            id,
            label,
            value,
            baseline: "—".into(),
            ratio: None,
            target,
            source,
            pass,
            judged,
            unit,
        });
    }
}

pub(crate) fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// The machine-wide `cpu` line of /proc/stat (jiffies per state).
pub(crate) fn cpu_times() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Where the machine's CPU time went between two `cpu_times` readings, in percent.
/// Steal is time the hypervisor gave to other guests: high steal means noisy numbers.
pub(crate) fn cpu_split(a: &[u64], b: &[u64]) -> Value {
    let d: Vec<u64> = a.iter().zip(b).map(|(x, y)| y.saturating_sub(*x)).collect();
    let total: u64 = d.iter().sum();
    let pct = |i: usize| round(100.0 * *d.get(i).unwrap_or(&0) as f64 / total.max(1) as f64);
    json!({ "user": round(pct(0) + pct(1)), "system": round(pct(2) + pct(5) + pct(6)), "idle": round(pct(3) + pct(4)), "steal": pct(7) })
}

pub(crate) fn nofile_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    let v = l.split_whitespace().nth(3)?;
    if v == "unlimited" {
        Some(u64::MAX)
    } else {
        v.parse().ok()
    }
}

pub(crate) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "memory": mem,
        "kernel": kernel,
        "tokio_workers": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "open_files_limit": nofile_limit(),
    })
}

pub(crate) fn print_table(res: &Results, mode: &str, took: Duration, out: &Path, cpu: &Value) {
    let m = machine();
    println!(
        "\nkonnectivity bench ({mode}, {} build) — {} CPUs ({}), {}, kernel {}",
        m["build"].as_str().unwrap_or(""),
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or(""),
        m["memory"].as_str().unwrap_or(""),
        m["kernel"].as_str().unwrap_or("")
    );
    // Column widths: the widest cell, at least the header (the label column at least 11
    // even when there are no rows).
    let width = |cell: fn(&Row) -> &String, empty: usize, least: usize| {
        res.rows
            .iter()
            .map(|r| cell(r).chars().count())
            .max()
            .unwrap_or(empty)
            .max(least)
    };
    let w = width(|r| &r.label, 10, 11);
    let wv = width(|r| &r.value, 6, 6);
    let wb = width(|r| &r.baseline, 8, 8);
    println!(
        "{:<w$}  {:<wv$}  {:<wb$}  {:>6}  {:<8}  result",
        "measurement", "tunnel", "baseline", "ratio", "target"
    );
    for r in &res.rows {
        let ratio = r.ratio.map_or("—".into(), |x| format!("{x:.2}"));
        let verdict = match (r.pass, r.source) {
            (Some(true), _) => "ok",
            (Some(false), "issue") => "MISSED",
            (Some(false), _) => "missed (research)",
            (None, "info") => "info",
            (None, _) => "n/a",
        };
        let target = if r.source == "research" {
            format!("{}*", r.target)
        } else {
            r.target.clone()
        };
        println!(
            "{:<w$}  {:<wv$}  {:<wb$}  {:>6}  {:<8}  {verdict}",
            r.label, r.value, r.baseline, ratio, target
        );
    }
    println!(
        "Throughput in Gbit/s (10^9 bit/s), medians; baselines measured in the same run. \"null\" = null tunnel \
         (TLS middle hop for throughput and RTT, plain middle hop for dials), in-process like the tunnel it is compared with, \
         and a process of its own in the \"separate processes\" rows. * = target from perf-anchors §5.4, informational."
    );
    for section in &res.sections {
        println!("\n{section}\n");
    }
    println!(
        "Took {:.0?}; machine CPU during the run: user {}%, system {}%, idle {}%, steal {}% \
         (steal = taken by other guests of the host; above a few % the numbers are noisy). Results: {}",
        took,
        cpu["user"],
        cpu["system"],
        cpu["idle"],
        cpu["steal"],
        out.display()
    );
}
