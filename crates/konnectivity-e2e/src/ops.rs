//! What the tests of our operator artifacts share: the Go tools they run (promtool, helm,
//! built by `tests/tools/build.sh` from the Go module registry and cached), the PromQL
//! expressions in `deploy/prometheus-rules.yaml` and `deploy/grafana-dashboard.json`, and
//! the metric names a `/metrics` page exports.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Path of `tool` (`"promtool"` or `"helm"`), building it with `tests/tools/build.sh`
/// when it is not cached yet (minutes the first time; see that script).
///
/// `Ok(None)` means it could not be built here and the caller should skip *loudly*; in CI
/// (`CI` set to anything but `false`) that is an error instead, so a missing tool never
/// passes unnoticed.
pub fn go_tool(tool: &str) -> anyhow::Result<Option<PathBuf>> {
    let script = repo_root().join("tests/tools/build.sh");
    let out = Command::new("bash").arg(&script).arg(tool).output();
    let why = match out {
        Ok(o) if o.status.success() => {
            let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            // Build logs (first run only) with the build time, past the test harness's
            // output capture.
            uncaptured(&String::from_utf8_lossy(&o.stderr));
            anyhow::ensure!(
                path.is_file(),
                "{} printed no binary path",
                script.display()
            );
            return Ok(Some(path));
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        Err(e) => format!("cannot run bash: {e}"),
    };
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    anyhow::ensure!(
        !ci,
        "CI: {tool} is required and could not be built by tests/tools/build.sh: {why}"
    );
    uncaptured(&format!(
        "\n*** SKIPPED: {tool} could not be built ({why}); install Go, or run \
         `bash tests/tools/build.sh {tool}` with access to the Go module proxy. \
         (With CI=true this fails.) ***\n"
    ));
    Ok(None)
}

/// Writes to the process's stderr directly: the test harness captures `eprintln!` of
/// passing tests, and a skip or a minutes-long build must not pass unseen.
fn uncaptured(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// A PromQL expression from one of our artifacts, with where it came from.
#[derive(Debug, Clone)]
pub struct Query {
    /// E.g. `prometheus-rules.yaml alert KonnectivityNoAgentsReady`.
    pub origin: String,
    /// The expression, Grafana variables included.
    pub expr: String,
}

/// Every `expr` of every rule in `deploy/prometheus-rules.yaml`.
pub fn rule_queries() -> anyhow::Result<Vec<Query>> {
    let path = repo_root().join("deploy/prometheus-rules.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"].as_str().or(rule["record"].as_str());
            let expr = rule["expr"].as_str();
            let (Some(name), Some(expr)) = (name, expr) else {
                anyhow::bail!("a rule without a name or expr in {}", path.display());
            };
            out.push(Query {
                origin: format!("prometheus-rules.yaml rule {name}"),
                expr: expr.to_owned(),
            });
        }
    }
    anyhow::ensure!(!out.is_empty(), "no rules in {}", path.display());
    Ok(out)
}

/// Every panel target's `expr` in `deploy/grafana-dashboard.json` (rows' nested panels
/// included), and the metric of every `label_values(metric…, label)` variable query (as
/// a selector expression).
pub fn dashboard_queries() -> anyhow::Result<Vec<Query>> {
    let path = repo_root().join("deploy/grafana-dashboard.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut out = Vec::new();
    fn panels(list: &serde_json::Value, out: &mut Vec<Query>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(Query {
                        origin: format!("grafana-dashboard.json panel {title:?}"),
                        expr: e.to_owned(),
                    });
                }
            }
            panels(&p["panels"], out);
        }
    }
    panels(&doc["panels"], &mut out);
    anyhow::ensure!(!out.is_empty(), "no panel queries in {}", path.display());
    for v in doc["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().or(v["query"].as_str());
        let name = v["name"].as_str().unwrap_or("?");
        let Some(q) = q else {
            anyhow::bail!("variable {name} has no query");
        };
        let Some(selector) = label_values_selector(q) else {
            anyhow::bail!(
                "variable {name}: only label_values(<selector>, <label>) is checked, got {q:?}"
            );
        };
        out.push(Query {
            origin: format!("grafana-dashboard.json variable ${name}"),
            expr: selector.to_owned(),
        });
    }
    Ok(out)
}

/// The selector of Grafana's `label_values(selector, label)`.
fn label_values_selector(q: &str) -> Option<&str> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, _label) = inner.rsplit_once(',')?;
    Some(selector.trim())
}

/// The metric names a PromQL expression selects: identifiers that are neither functions
/// nor aggregations (followed by `(`), keywords, label names (inside `{…}` or the label
/// lists of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`), durations,
/// strings or Grafana variables (`$name`, `${name}`, `$__rate_interval`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "bool", "offset", "and", "or", "unless", "atan2", "inf", "nan",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    // Index just past the bracket that closes the one at `open`, skipping strings.
    let skip_group = |open: usize| {
        let (o, c) = (
            b[open],
            if b[open] == b'{' {
                b'}'
            } else if b[open] == b'[' {
                b']'
            } else {
                b')'
            },
        );
        let (mut depth, mut j) = (0usize, open);
        while j < b.len() {
            match b[j] {
                q @ (b'"' | b'\'' | b'`') => {
                    j += 1;
                    while j < b.len() && b[j] != q {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                }
                x if x == o => depth += 1,
                x if x == c => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        b.len()
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'{' || c == b'[' {
            i = skip_group(i);
        } else if c == b'$' {
            i += 1;
            if b.get(i) == Some(&b'{') {
                i = skip_group(i);
            } else {
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut next = i;
            while next < b.len() && b[next].is_ascii_whitespace() {
                next += 1;
            }
            // A call, or an aggregation whose `by`/`without` clause comes first
            // (`sum by (le) (…)`).
            let modifier = ["by", "without"].iter().any(|m| {
                expr[next..].starts_with(m) && !b.get(next + m.len()).is_some_and(|&c| ident(c))
            });
            let call = b.get(next) == Some(&b'(') || modifier;
            if LABEL_LISTS.contains(&word) {
                if call {
                    i = skip_group(next);
                }
            } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric names a Prometheus text page exports: every sample's name, and for every
/// declared family (`# TYPE`) the names its samples would have (`_bucket`, `_sum`,
/// `_count` for histograms and `_sum`, `_count` for summaries), so that a family with no
/// sample yet still counts.
pub fn exported_names(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// For each query, the metric names it uses that `exported` lacks, and queries that name
/// no metric at all (which this checker could not have checked).
pub fn unknown_metrics(queries: &[Query], exported: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for q in queries {
        let used = metric_names(&q.expr);
        if used.is_empty() {
            problems.push(format!("{}: names no metric: {}", q.origin, q.expr));
        }
        for name in used.difference(exported) {
            problems.push(format!("{}: {name} is not exported", q.origin));
        }
    }
    problems
}

/// `helm template` of `charts/konnectivity` (release `konnectivity` in `kube-system`) with
/// the preset `presets/<preset>.yaml` (none: the chart's defaults), as its documents.
pub fn helm_template(helm: &Path, preset: Option<&str>) -> anyhow::Result<Vec<serde_yaml::Value>> {
    let chart = repo_root().join("charts/konnectivity");
    let mut cmd = Command::new(helm);
    cmd.args(["template", "konnectivity"])
        .arg(&chart)
        .args(["--namespace", "kube-system"]);
    if let Some(p) = preset {
        cmd.arg("-f").arg(chart.join(format!("presets/{p}.yaml")));
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm template ({preset:?}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(d)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The rendered object of `kind` whose name ends with `suffix`.
pub fn object<'a>(
    docs: &'a [serde_yaml::Value],
    kind: &str,
    suffix: &str,
) -> Option<&'a serde_yaml::Value> {
    docs.iter().find(|d| {
        d["kind"].as_str() == Some(kind)
            && d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(suffix))
    })
}

/// The `args` of the first container of a pod template (Deployment, DaemonSet) or of a
/// container list (the sidecar ConfigMap's `containers.yaml`).
pub fn container_args(containers: &serde_yaml::Value) -> Vec<String> {
    containers[0]["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(e: &str) -> Vec<String> {
        metric_names(e).into_iter().collect()
    }

    #[test]
    fn metric_names_skip_functions_labels_durations_and_variables() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{job=~"$job", x="y}z"}[$__rate_interval])))"#
            ),
            ["a_bucket"]
        );
        assert_eq!(
            names(
                "sum without (proxy_strategy) (b) / on (instance) group_left (node) c offset 5m > bool 0.1e3"
            ),
            ["b", "c"]
        );
        assert_eq!(
            names("d < on () group_left () count(count by (instance) (e))"),
            ["d", "e"]
        );
        assert_eq!(
            names("sum(rate(f[5m])) by (job) and g unless h or Inf"),
            ["f", "g", "h"]
        );
        assert_eq!(names("max_over_time(i[1h:5m]) * ${factor}"), ["i"]);
        assert!(names("vector(1)").is_empty());
    }

    #[test]
    fn exported_names_include_declared_families_and_histogram_series() {
        let page = "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n# TYPE c counter\n# TYPE g gauge\ng 1\nprocess_x{a=\"b\"} 2\n";
        let got: Vec<_> = exported_names(page).into_iter().collect();
        assert_eq!(got, ["c", "g", "h_bucket", "h_count", "h_sum", "process_x"]);
    }

    #[test]
    fn a_misspelt_metric_is_reported_with_where_it_was_used() {
        let exported = exported_names("# TYPE good_total counter\n# TYPE lat histogram\n");
        let q = |expr: &str| Query {
            origin: "test".into(),
            expr: expr.into(),
        };
        assert!(
            unknown_metrics(
                &[
                    q("rate(good_total[5m])"),
                    q("histogram_quantile(0.9, rate(lat_bucket[5m]))")
                ],
                &exported
            )
            .is_empty()
        );
        assert_eq!(
            unknown_metrics(&[q("rate(god_total[5m]) + lat")], &exported),
            [
                "test: god_total is not exported",
                "test: lat is not exported"
            ]
        );
        assert_eq!(
            unknown_metrics(&[q("vector(1)")], &exported),
            ["test: names no metric: vector(1)"]
        );
    }

    #[test]
    fn label_values_variables_yield_their_selector() {
        assert_eq!(
            label_values_selector(r#"label_values(m{job=~"$j"}, instance)"#),
            Some(r#"m{job=~"$j"}"#)
        );
        assert_eq!(label_values_selector("query_result(up)"), None);
    }
}
