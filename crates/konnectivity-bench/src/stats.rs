//! Numbers from samples: throughput in Gbit/s, medians and min/max summaries of
//! repetitions, latency percentiles (nearest rank), rounding for the JSON file, and
//! human-readable sizes for the table.
use std::time::Duration;

use serde_json::{Value, json};

use crate::{GIB, KIB, MIB};

pub(crate) fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64().max(1e-9) / 1e9
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

pub(crate) fn summary(v: &[f64]) -> Value {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({ "median": round(median(v)), "min": round(min), "max": round(max), "runs": v.iter().map(|x| round(*x)).collect::<Vec<_>>() })
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Percentile (nearest rank) of sorted samples, in µs.
pub(crate) fn pct_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let n = sorted.len();
    let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[i].as_secs_f64() * 1e6
}

pub(crate) fn latency(samples: &mut [Duration]) -> Value {
    samples.sort_unstable();
    json!({
        "samples": samples.len(),
        "p50_us": round(pct_us(samples, 0.50)),
        "p90_us": round(pct_us(samples, 0.90)),
        "p99_us": round(pct_us(samples, 0.99)),
        "p999_us": round(pct_us(samples, 0.999)),
        "max_us": round(samples.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)),
    })
}

pub(crate) fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

pub(crate) fn human_bytes(n: u64) -> String {
    if n >= GIB && n.is_multiple_of(GIB) {
        format!("{} GiB", n / GIB)
    } else if n >= MIB {
        format!("{:.0} MiB", n as f64 / MIB as f64)
    } else {
        format!("{:.0} KiB", n as f64 / KIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(pct_us(&v, 0.5), 50.0);
        assert_eq!(pct_us(&v, 0.99), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
