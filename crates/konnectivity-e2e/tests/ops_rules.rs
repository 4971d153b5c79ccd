//! `deploy/prometheus-rules.yaml` and `deploy/grafana-dashboard.json` through the real
//! promtool (built from the Go module registry by `tests/tools/build.sh`): the rules are
//! valid, their unit tests (`tests/prometheus/rules_test.yaml`) pass and fail when a
//! threshold is wrong, and every dashboard query parses as PromQL.
use std::path::{Path, PathBuf};
use std::process::Command;

use konnectivity_e2e::ops::{dashboard_queries, go_tool, repo_root};

fn promtool(promtool: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn prometheus_rules_are_valid_and_their_unit_tests_pass() -> anyhow::Result<()> {
    let Some(tool) = go_tool("promtool")? else {
        return Ok(());
    };
    let (ok, out) = promtool(&tool, &["check", "rules", "deploy/prometheus-rules.yaml"]);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(
        &tool,
        &["test", "rules", "tests/prometheus/rules_test.yaml"],
    );
    assert!(ok, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    Ok(())
}

/// The unit tests have teeth: with the dial-failure threshold raised from 10 % to 50 %,
/// the 33 % case in the tests must no longer fire, and promtool must say so.
#[test]
fn rule_unit_tests_fail_when_a_threshold_changes() -> anyhow::Result<()> {
    let Some(tool) = go_tool("promtool")? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus-rules.yaml"))?;
    let mutated = rules.replacen("      > 0.1\n", "      > 0.5\n", 1);
    anyhow::ensure!(mutated != rules, "the dial failure threshold line moved");
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(&rules_path, mutated)?;
    let tests = std::fs::read_to_string(repo_root().join("tests/prometheus/rules_test.yaml"))?
        .replace(
            "- ../../deploy/prometheus-rules.yaml",
            &format!("- {}", rules_path.display()),
        );
    let tests_path = dir.path().join("rules_test.yaml");
    std::fs::write(&tests_path, tests)?;
    let (ok, out) = promtool(&tool, &["test", "rules", &tests_path.display().to_string()]);
    assert!(!ok, "the mutated rules still pass:\n{out}");
    assert!(out.contains("KonnectivityDialFailureRatioHigh"), "{out}");
    Ok(())
}

/// Grafana's `$variables` as a Prometheus would see them after Grafana's substitution:
/// `$__rate_interval` a duration, the others (only used in label matchers) `.*`.
fn expand_grafana_variables(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let braced = after.starts_with('{');
        let body = if braced { &after[1..] } else { after };
        let len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        let name = &body[..len];
        out.push_str(if name == "__rate_interval" {
            "5m"
        } else {
            ".*"
        });
        rest = &body[len + usize::from(braced)..];
    }
    out.push_str(rest);
    out
}

#[test]
fn dashboard_queries_parse_as_promql() -> anyhow::Result<()> {
    let Some(tool) = go_tool("promtool")? else {
        return Ok(());
    };
    // Each query as a recording rule: `promtool check rules` parses it with Prometheus's
    // own parser.
    let mut file = String::from("groups:\n- name: dashboard\n  rules:\n");
    let queries = dashboard_queries()?;
    for (i, q) in queries.iter().enumerate() {
        let expr = expand_grafana_variables(&q.expr);
        file.push_str(&format!(
            "  - record: dashboard:query{i}\n    expr: {}\n",
            serde_json::to_string(&expr)?
        ));
    }
    let dir = tempfile::tempdir()?;
    let path: PathBuf = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&path, &file)?;
    let (ok, out) = promtool(&tool, &["check", "rules", &path.display().to_string()]);
    assert!(ok, "a dashboard query does not parse:\n{out}\n{file}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
    Ok(())
}

#[test]
fn grafana_variables_expand_like_grafana() {
    assert_eq!(
        expand_grafana_variables(r#"rate(x{job=~"$job", i=~"${inst}"}[$__rate_interval])"#),
        r#"rate(x{job=~".*", i=~".*"}[5m])"#
    );
}
