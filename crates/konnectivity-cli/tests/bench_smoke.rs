//! `konnectivity bench --smoke` keeps working: it runs every measurement with tiny
//! sizes (checking every byte it moves) and writes all of them to the JSON file.
//! Upstream's binaries are measured beside ours when `tests/upstream/build.sh` has
//! built them into target/upstream (or `$KONNECTIVITY_UPSTREAM_BIN_DIR`).
//!
//! The memory and scale parts start the real `proxy-server` and `proxy-agent` from the
//! same target directory: build them first (`cargo build --bins`; `scripts/test.sh`
//! does).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use konnectivity_testkit::process::assert_fails_with;
use serde_json::Value;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("konnectivity-bench-test-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d.join(name)
}

/// Runs `konnectivity bench` with `args` and `--out out`; its output.
fn bench(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_konnectivity"))
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run konnectivity bench")
}

/// Runs `konnectivity bench` with `args`, asserts that it succeeded and that its table
/// says `table`, and returns the results it wrote to the JSON file `name`.
fn bench_results(name: &str, args: &[&str], table: &str) -> Value {
    let out = tmp(name);
    let run = bench(args, &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "konnectivity bench {args:?} failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains(table),
        "{table:?} not in the table:\n{stdout}"
    );
    let text = std::fs::read_to_string(&out).expect("results file written");
    let _ = std::fs::remove_file(&out);
    serde_json::from_str(&text).expect("results are JSON")
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur
}

fn positive(v: &Value, path: &[&str]) {
    let x = get(v, path);
    assert!(
        x.as_f64().is_some_and(|x| x > 0.0),
        "{} is {x}, expected a positive number",
        path.join(".")
    );
}

#[test]
fn smoke_run_reports_every_measurement() {
    let v = bench_results("smoke.json", &["--smoke"], "measurement");
    assert_eq!(v["mode"], "smoke");
    positive(&v, &["machine", "cpus"]);

    let m = &v["measurements"];
    for path in [
        "direct",
        "null_plain",
        "null_tls",
        "grpc_uds",
        "http_connect_uds",
    ] {
        positive(m, &["bulk_1conn", &format!("{path}_gbps"), "median"]);
        positive(m, &["dial", path, "p50_us"]);
        positive(m, &["dial", path, "p99_us"]);
    }
    positive(m, &["dial", "socks5_uds", "p50_us"]);
    positive(m, &["dial", "socks5_uds", "p99_us"]);
    positive(m, &["dial_processes", "socks5_uds", "p50_us"]);
    check_udp(m);
    positive(m, &["bulk_1conn", "ratio_grpc_vs_null_tls"]);
    for path in ["direct", "null_tls", "grpc_uds"] {
        positive(m, &["bulk_1conn_upload", &format!("{path}_gbps"), "median"]);
    }
    for path in ["direct", "null_tls", "grpc_uds", "http_connect_uds"] {
        positive(m, &["bulk_parallel", &format!("{path}_gbps"), "median"]);
        positive(m, &["rtt", "paths", path, "p50_us"]);
        positive(m, &["rtt", "paths", path, "p99_us"]);
    }
    assert_eq!(m["bulk_parallel"]["connections"], 16);
    for path in ["null_tls", "grpc_uds", "http_connect_uds"] {
        positive(m, &["rtt_under_load", "paths", path, "p99_us"]);
        positive(m, &["rtt_under_load", "paths", path, "background_gbps"]);
    }
    positive(m, &["stalled_reader", "alone_gbps", "median"]);
    positive(m, &["stalled_reader", "beside_stalled_gbps", "median"]);
    assert_eq!(
        m["stalled_reader"]["stalled_connection_resumed_intact"],
        true
    );

    let steps = m["memory_idle_conns"]["steps"]
        .as_array()
        .expect("memory steps");
    assert_eq!(steps.len(), 3, "0 and two idle-connection counts");
    for s in steps {
        positive(s, &["server_rss_kib"]);
        positive(s, &["agent_rss_kib"]);
    }
    assert!(m["memory_idle_conns"]["total_kib_per_conn"].is_number());
    positive(m, &["idle_agent", "agent_rss_kib"]);
    positive(m, &["bulk_1conn_processes", "grpc_uds_gbps", "median"]);

    // Ours beside upstream: measured when upstream's binaries are there
    // (tests/upstream/build.sh), and said so when they are not, never silently.
    let up = &m["upstream"];
    match up["available"].as_bool() {
        Some(true) => {
            for k in [
                "ours_ours",
                "ours_upstream",
                "upstream_ours",
                "upstream_upstream",
            ] {
                assert!(up["pairings"][k].is_object(), "pairing {k} missing: {up}");
            }
            let ours = &up["pairings"]["ours_ours"];
            positive(ours, &["bulk_1conn_gbps", "median"]);
            positive(ours, &["bulk_parallel_gbps", "median"]);
            positive(ours, &["dial", "p50_us"]);
            positive(ours, &["rtt", "p50_us"]);
            positive(ours, &["memory", "idle_rss_kib", "agent"]);
            positive(up, &["null_tls", "bulk_1conn_gbps", "median"]);
            // Through the Go client too when its driver is built, and said so when not.
            assert!(ours["go_client"].is_object(), "no go_client entry: {ours}");
        }
        Some(false) => assert!(
            up["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not found")),
            "no reason given: {up}"
        ),
        None => panic!("measurements.upstream missing"),
    }

    let runs = m["scale_agents"]["runs"].as_array().expect("scale runs");
    assert_eq!(runs.len(), 2);
    for r in runs {
        positive(r, &["all_ready_seconds"]);
        positive(r, &["server_rss_kib"]);
        assert_eq!(r["ready_seen"], r["agents"], "every agent became ready");
    }
    positive(m, &["restart", "back_100_seconds"]);
    assert_eq!(m["restart"]["agents_back"], m["restart"]["agents"]);
    positive(m, &["soak", "rounds"]);
    assert_eq!(
        m["soak"]["failed_steps"], 0,
        "soak: {}",
        m["soak"]["errors"]
    );

    let ids: Vec<&str> = v["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| {
            assert!(
                t["pass"].is_boolean() || t["source"] == "info",
                "target without a verdict: {t}"
            );
            t["id"].as_str().unwrap_or("")
        })
        .collect();
    for id in [
        "bulk_1conn",
        "bulk_1conn_connect",
        "bulk_1conn_upload",
        "bulk_parallel",
        "dial_p50",
        "dial_p50_connect",
        "dial_p50_socks5",
        "udp_rtt_p50",
        "udp_rtt_p99_loaded",
        "udp_loss_loaded",
        "dial_p99",
        "rtt_p50",
        "rtt_p99_loaded",
        "stalled_reader",
        "memory_per_conn",
        "idle_agent_rss",
        "scale_ready",
        "scale_rss",
        "restart_all_back",
        "restart_peak_rss",
        "soak_failed_steps",
        "soak_rss_growth",
        "soak_fds_threads",
        "bulk_1conn_processes",
    ] {
        assert!(ids.contains(&id), "target {id} missing from {ids:?}");
    }
}

/// `measurements.udp`: every path idle and beside bulk, with round trips, a loss
/// count that adds up, and the bulk transfer moving; upstream's agent measured or the
/// reason said.
fn check_udp(m: &Value) {
    let udp = &m["udp"];
    let n = udp["datagrams_per_run"]
        .as_u64()
        .expect("datagrams_per_run");
    let mut paths = vec!["direct", "grpc_udp", "socks5_udp"];
    match udp["upstream_agent"]["available"].as_bool() {
        Some(true) => {
            let errors = &udp["upstream_agent"]["errors"];
            for p in ["grpc_udp_upstream_agent", "socks5_udp_upstream_agent"] {
                if errors[p].is_null() && errors["start"].is_null() {
                    paths.push(p);
                }
            }
        }
        Some(false) => assert!(
            udp["upstream_agent"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("not found")),
            "no reason given: {udp}"
        ),
        None => panic!("measurements.udp.upstream_agent missing: {udp}"),
    }
    for p in paths {
        for run in ["idle", "beside_bulk"] {
            let r = &udp["paths"][p][run];
            assert_eq!(r["sent"].as_u64(), Some(n), "{p} {run}: {r}");
            let (echoed, lost) = (r["echoed"].as_u64(), r["lost"].as_u64());
            assert_eq!(
                echoed.zip(lost).map(|(e, l)| e + l),
                Some(n),
                "{p} {run}: {r}"
            );
            assert_eq!(r["corrupt"], 0, "{p} {run}: {r}");
            positive(r, &["p50_us"]);
            positive(r, &["p99_us"]);
        }
        positive(&udp["paths"][p], &["beside_bulk", "background_gbps"]);
    }
}

/// The UDP phase alone, small: what CI runs on every change to it, in a few seconds.
#[test]
fn udp_phase_reports_round_trips_and_loss() {
    let v = bench_results(
        "udp.json",
        &["--smoke", "--only", "udp", "--udp-datagrams", "100"],
        "UDP round trips",
    );
    assert_eq!(v["measurements"]["udp"]["datagrams_per_run"], 100);
    check_udp(&v["measurements"]);
}

#[test]
fn missing_binaries_fail_clearly() {
    let run = bench(
        &["--smoke", "--only", "memory", "--bin-dir", "/nonexistent"],
        &tmp("never.json"),
    );
    assert_fails_with(&run, "proxy-server not found");
}

#[test]
fn missing_upstream_binaries_are_reported() {
    let v = bench_results(
        "no-upstream.json",
        &[
            "--smoke",
            "--only",
            "upstream",
            "--upstream-bin-dir",
            "/nonexistent",
        ],
        "not measured",
    );
    let up = &v["measurements"]["upstream"];
    assert_eq!(up["available"], false);
    assert!(
        up["reason"]
            .as_str()
            .is_some_and(|r| r.contains("upstream-proxy-server not found")),
        "{up}"
    );
}
