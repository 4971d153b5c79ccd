//! The results: measurements (the `measurements` object of bench-results.json, one key
//! per phase), the rows of the target table with their verdicts and, where upstream has
//! the same measurement, upstream's figure beside ours ([`Beside`]), the machine and its
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
    /// Upstream's figure for the same measurement, set after the phases ran
    /// (`upstream::beside_rows`); `None` where upstream has no equivalent or was not
    /// measured.
    pub(crate) upstream: Option<Beside>,
}

/// Upstream + upstream beside ours + ours, as the upstream phase measured both (same
/// set-up, repetitions interleaved): the like-for-like comparison of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Beside {
    /// Upstream's proxy-server with upstream's proxy-agent, in the row's unit.
    pub(crate) upstream: f64,
    /// Our proxy-server with our proxy-agent, measured beside it.
    pub(crate) ours: f64,
    /// Decimals to print both with.
    pub(crate) decimals: usize,
}

impl Beside {
    /// Ours divided by upstream (throughput: higher is better; time and memory: lower).
    pub(crate) fn ratio(&self) -> f64 {
        self.ours / self.upstream
    }

    /// The upstream cell of the table: upstream's figure, ours beside it in parentheses.
    fn cell(&self) -> String {
        let d = self.decimals;
        format!("{:.d$} (ours {:.d$})", self.upstream, self.ours)
    }

    /// The `upstream` object of a target in bench-results.json.
    pub(crate) fn to_json(self) -> Value {
        json!({
            "upstream_upstream": round(self.upstream),
            "ours_ours": round(self.ours),
            "ratio_ours_vs_upstream": round(self.ratio()),
        })
    }
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
            upstream: None,
        }
    }
}

#[derive(Default)]
pub(crate) struct Results {
    pub(crate) measurements: serde_json::Map<String, Value>,
    pub(crate) rows: Vec<Row>,
    /// Tables of their own, printed after the target table (e.g. ours beside upstream).
    pub(crate) sections: Vec<String>,
    /// Why the table's upstream column is empty, when it is (one line).
    pub(crate) upstream_note: Option<String>,
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
            upstream: None,
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
            upstream: None,
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

/// What the upstream column means, printed under the table.
pub(crate) const UPSTREAM_FOOTNOTE: &str = "upstream = upstream's proxy-server + proxy-agent (v0.36.0) as separate processes, measured in this run's \
     upstream phase; in parentheses ours + ours measured beside it there (same set-up, repetitions interleaved), and ours/up is \
     the ratio of those two, so it can differ from tunnel ÷ upstream (throughput: above 1 is better; time and memory: below 1). \
     — = no upstream equivalent: in-process rows (upstream's binaries cannot run inside the bench process), and rows upstream \
     is not measured for.";

/// The target table: a header line, then one line per row.
pub(crate) fn table_lines(rows: &[Row]) -> Vec<String> {
    let upstream = |r: &Row| r.upstream.map_or("—".into(), |b| b.cell());
    let ours_up = |r: &Row| {
        r.upstream
            .map(|b| b.ratio())
            .filter(|x| x.is_finite())
            .map_or("—".into(), |x| format!("{x:.2}"))
    };
    // Column widths: the widest cell, at least the header (the label column at least 11
    // even when there are no rows).
    let width = |cell: &dyn Fn(&Row) -> String, least: usize| {
        rows.iter()
            .map(|r| cell(r).chars().count())
            .max()
            .unwrap_or(0)
            .max(least)
    };
    let w = width(&|r| r.label.clone(), 11);
    let wv = width(&|r| r.value.clone(), 6);
    let wb = width(&|r| r.baseline.clone(), 8);
    let wu = width(&upstream, 8);
    let mut lines = vec![format!(
        "{:<w$}  {:<wv$}  {:<wb$}  {:>6}  {:<wu$}  {:>7}  {:<8}  result",
        "measurement", "tunnel", "baseline", "ratio", "upstream", "ours/up", "target"
    )];
    for r in rows {
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
        lines.push(format!(
            "{:<w$}  {:<wv$}  {:<wb$}  {:>6}  {:<wu$}  {:>7}  {:<8}  {verdict}",
            r.label,
            r.value,
            r.baseline,
            ratio,
            upstream(r),
            ours_up(r),
            target
        ));
    }
    lines
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
    for line in table_lines(&res.rows) {
        println!("{line}");
    }
    println!(
        "Throughput in Gbit/s (10^9 bit/s), medians; baselines measured in the same run. \"null\" = null tunnel \
         (TLS middle hop for throughput and RTT, plain middle hop for dials), in-process like the tunnel it is compared with, \
         and a process of its own in the \"separate processes\" rows. * = target from perf-anchors §5.4, informational."
    );
    println!("{UPSTREAM_FOOTNOTE}");
    if let Some(note) = &res.upstream_note {
        println!("{note}");
    }
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
