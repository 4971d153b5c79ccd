//! The same pairings driven by the real Go konnectivity-client (the library
//! kube-apiserver links), through `tests/go-interop` in its bench mode: dial + first
//! byte, 1-byte round trips, and downloads over one and N connections, one single-use
//! tunnel per connection. The Go program runs as a process of its own against the
//! pairing's UNIX socket and the bench's echo and source backends, checks every byte,
//! and prints its samples as JSON.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::config::Cfg;
use crate::stats::{latency, summary};

/// The Go client driver: `--go-client`, else `konnectivity-interop` next to our
/// binaries (where the e2e tests build it), or why it is not there.
pub(crate) fn go_client(flag: Option<&Path>, bin_dir: &Path) -> Result<PathBuf, String> {
    let p = flag.map_or_else(|| bin_dir.join("konnectivity-interop"), Path::to_path_buf);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found (build it with `cd tests/go-interop && go build -o {} .`, or pass --go-client)",
            p.display(),
            p.display()
        ))
    }
}

/// Runs the Go client's bench mode against the frontend socket `uds`; its
/// measurements as JSON (dial and rtt as latency summaries, throughput summaries).
pub(crate) async fn measure(
    cfg: &Cfg,
    program: &Path,
    uds: &Path,
    echo: SocketAddr,
    source: SocketAddr,
) -> anyhow::Result<Value> {
    // Bounded: the Go program stops itself after this (its -timeout), and every read
    // and write it makes has a deadline.
    let limit = Duration::from_secs(if cfg.smoke { 60 } else { 600 });
    let mut cmd = Command::new(program);
    cmd.arg(format!("-uds={}", uds.display()))
        .arg(format!("-bench-echo={echo}"))
        .arg(format!("-bench-source={source}"))
        .arg(format!("-bench-dials={}", cfg.dials.min(500)))
        .arg(format!("-bench-rtts={}", cfg.rtt_samples.min(2000)))
        .arg(format!("-bench-bytes={}", cfg.transfer.size))
        .arg(format!("-bench-conns={}", cfg.transfer.parallel))
        .arg(format!("-bench-reps={}", cfg.transfer.reps.min(3)))
        .arg(format!("-timeout={}s", limit.as_secs()))
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running the Go client")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the Go client printed no result ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )
    })?;
    let us = |k: &str| -> Vec<Duration> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .map(|x| Duration::from_nanos((x * 1e3) as u64))
                    .collect()
            })
            .unwrap_or_default()
    };
    let gbps = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    if let Some(e) = v["error"].as_str() {
        anyhow::bail!("the Go client: {e}");
    }
    let (mut dials, mut rtts) = (us("dial_us"), us("rtt_us"));
    ensure!(
        !dials.is_empty() && !rtts.is_empty(),
        "the Go client measured nothing"
    );
    Ok(json!({
        "library": v["library"],
        "dial": latency(&mut dials),
        "rtt": latency(&mut rtts),
        "bulk_1conn_gbps": summary(&gbps("bulk_1conn_gbps")),
        "bulk_parallel_gbps": summary(&gbps("bulk_parallel_gbps")),
    }))
}
