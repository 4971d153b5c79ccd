//! The admin port's live status page, rendered by a real browser (headless Chromium)
//! against the real binaries after real traffic and a failed dial: what the page shows
//! matches `/status` fetched around the render, and the charts draw non-empty series.
//! A screenshot is saved under the target's test tmp dir and its path printed.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use konnectivity_client::{Frontend, grpc_dial};
use konnectivity_e2e::*;
use konnectivity_testkit::servers;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chromium() -> anyhow::Result<&'static str> {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "chromium is not installed (scripts/setup.sh installs Debian's chromium)"
            )
        })
}

/// Loads `url` in headless Chromium, lets the page run for `budget_ms` of virtual time
/// (its first fetches of /status complete within it), and returns the rendered DOM or
/// writes a screenshot.
fn render(url: &str, profile: &Path, screenshot: Option<&Path>) -> anyhow::Result<String> {
    let mut cmd = Command::new(chromium()?);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1200",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output()?;
    anyhow::ensure!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(admin: &str) -> anyhow::Result<Value> {
    let (code, body) = http_get(admin, "/status")?;
    anyhow::ensure!(code == 200, "/status answered {code}: {body}");
    Ok(serde_json::from_str(&body)?)
}

fn agent<'a>(st: &'a Value, id: &str) -> &'a Value {
    st["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["agent_id"] == id))
        .unwrap_or(&Value::Null)
}

/// The value of attribute `name` in the first tag of `html` that has it.
fn attr<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = html.find(&key)? + key.len();
    html[start..].find('"').map(|end| &html[start..start + end])
}

/// The rendered section of one agent (from its opening tag to the next agent's).
fn agent_section<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("data-agent-id=\"{id}\""))?;
    let rest = &dom[start..];
    let end = rest[1..]
        .find("<section class=\"agent")
        .map_or(rest.len(), |e| e + 1);
    Some(&rest[..end])
}

/// The `<path>` of one chart series: its `data-points` count and the `d` it draws.
fn series<'a>(section: &'a str, name: &str) -> Option<(usize, &'a str)> {
    let at = section.find(&format!("data-series=\"{name}\""))?;
    let tag_start = section[..at].rfind("<path")?;
    let tag = &section[tag_start..];
    let tag = &tag[..tag.find('>')?];
    Some((attr(tag, "data-points")?.parse().ok()?, attr(tag, "d")?))
}

fn output_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    let _ = std::fs::create_dir_all(&d);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_status_page_shows_what_status_reports_after_traffic_and_a_failed_dial()
-> anyhow::Result<()> {
    chromium()?;
    let (dir, pki) = temp_pki(&[])?;
    let sock = dir.path().join("s.sock");
    let spec = ServerSpec {
        extra: vec!["--proxy-strategies=destHost,default".into()],
        ..ServerSpec::grpc_uds(sock.clone())
    };
    let (_server, ports) = start_server("status-server", &pki, &spec, None, dir.path())?;
    // agent-a announces 127.0.0.1, so destHost sends every dial below to it.
    let ids = ["--agent-identifiers=host=node-a&ipv4=127.0.0.1&cidr=10.244.1.0/24".to_owned()];
    let (_a, _) = start_local_agent(
        AgentKind::Ours,
        "agent-a",
        &pki,
        ports.agent,
        &ids,
        dir.path(),
    )?;
    let (_b, _) = start_local_agent(
        AgentKind::Ours,
        "agent-b",
        &pki,
        ports.agent,
        &[],
        dir.path(),
    )?;
    let admin = format!("127.0.0.1:{}", ports.admin);
    let t = Duration::from_secs(10);
    wait_for("two agents in /status", t, || {
        status(&admin).is_ok_and(|s| s["agents"].as_array().is_some_and(|a| a.len() == 2))
    })?;

    // Real traffic: a few short connections, one that stays open and keeps echoing
    // 64 KiB every 100 ms, and one dial to a closed port.
    let echo = servers::echo("127.0.0.1:0").await?;
    let front = Frontend::Uds(sock.clone());
    for _ in 0..5 {
        let mut c = grpc_dial(&front, &echo.to_string(), t).await?;
        c.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await?;
        c.shutdown().await?;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let refused = grpc_dial(&front, &closed.to_string(), t).await;
    assert!(refused.is_err(), "a dial to a closed port succeeded");
    let stop = Arc::new(AtomicBool::new(false));
    let mut conn = grpc_dial(&front, &echo.to_string(), t).await?;
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let out = vec![7u8; 64 << 10];
            let mut back = vec![0u8; 64 << 10];
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(&out).await?;
                conn.read_exact(&mut back).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, std::io::Error>(conn)
        }
    });

    // The server samples every 5 s: wait for two samples with traffic in the last.
    wait_for(
        "two history samples with traffic",
        Duration::from_secs(30),
        || {
            status(&admin).is_ok_and(|s| {
                let h = &agent(&s, "agent-a")["history"];
                let to = h["bytes_to_agent_per_s"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                to.len() >= 2 && to.last().and_then(Value::as_u64).unwrap_or(0) > 0
            })
        },
    )?;

    let url = format!("http://{admin}/status.html");
    let profile = dir.path().join("chromium-profile");
    let before = status(&admin)?;
    let dom = tokio::task::spawn_blocking({
        let (url, profile) = (url.clone(), profile.clone());
        move || render(&url, &profile, None)
    })
    .await??;
    let after = status(&admin)?;
    let shot = output_dir().join("status_page.png");
    tokio::task::spawn_blocking({
        let (url, shot) = (url.clone(), shot.clone());
        move || render(&url, &profile, Some(&shot))
    })
    .await??;
    anyhow::ensure!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        shot.display()
    );
    println!("status page screenshot: {}", shot.display());
    std::fs::write(output_dir().join("status_page.html"), &dom)?;
    stop.store(true, Ordering::Relaxed);
    drop(traffic.await??);

    // The page rendered a document (the script ran and fetched /status).
    let now: u64 = attr(&dom, "data-now-ms")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the page never rendered /status: {dom}"))?;
    let (t0, t1) = (
        before["now_ms"].as_u64().unwrap_or(0),
        after["now_ms"].as_u64().unwrap_or(0),
    );
    assert!(t0 <= now && now <= t1, "{t0} <= {now} <= {t1}");
    assert!(
        dom.contains("<code id=\"server-id\">status-server</code>"),
        "{dom}"
    );

    // Per agent: identifiers, connection counts, flow control, human times.
    let a = agent_section(&dom, "agent-a").expect("agent-a rendered");
    let b = agent_section(&dom, "agent-b").expect("agent-b rendered");
    assert!(a.contains("<h3 class=\"agent-id\">agent-a</h3>"), "{a}");
    assert!(
        a.contains("node-a, 127.0.0.1") && a.contains("10.244.1.0/24"),
        "{a}"
    );
    assert!(a.contains("flow control, window 1.00 MiB"), "{a}");
    assert!(a.contains("connected ") && a.contains(" ago"), "{a}");
    for (section, id) in [(a, "agent-a"), (b, "agent-b")] {
        let shown: u64 = attr(section, "data-connections").unwrap_or("").parse()?;
        let counts = [&before, &after].map(|s| agent(s, id)["connections"].as_u64());
        assert!(
            counts.contains(&Some(shown)),
            "{id}: page shows {shown} connections, /status said {counts:?}"
        );
        let dials: u64 = attr(
            &section[section.find("data-field=\"dials\"").unwrap_or(0)..],
            "data-value",
        )
        .unwrap_or("")
        .parse()?;
        let counts = [&before, &after].map(|s| agent(s, id)["dials"].as_u64());
        assert!(
            counts.contains(&Some(dials)),
            "{id}: dials {dials} vs {counts:?}"
        );
    }
    assert_eq!(agent(&before, "agent-a")["connections"], 1, "{before}");
    assert!(
        agent(&before, "agent-a")["dials"].as_u64() >= Some(7),
        "{before}"
    );

    // The open connection: destination, frontend kind, bytes both ways.
    let row = &a[a
        .find("<tr class=\"conn\"")
        .expect("an open connection row")..];
    assert_eq!(
        attr(row, "data-destination"),
        Some(echo.to_string().as_str())
    );
    assert_eq!(attr(row, "data-frontend"), Some("grpc"));
    let from: u64 = attr(row, "data-bytes-from-agent").unwrap_or("").parse()?;
    let to: u64 = attr(row, "data-bytes-to-agent").unwrap_or("").parse()?;
    assert!(from > 0 && to > 0, "bytes to {to} from {from}");
    let json_conn = &agent(&before, "agent-a")["open_connections"][0];
    assert_eq!(json_conn["destination"], echo.to_string());
    assert!(json_conn["bytes_from_agent"].as_u64() <= Some(from));

    // Charts: two series each, with the samples of /status, and traffic drawn.
    let samples = |s: &Value| {
        agent(s, "agent-a")["history"]["end_ms"]
            .as_array()
            .map_or(0, Vec::len)
    };
    for name in [
        "bytes_to_agent_per_s",
        "bytes_from_agent_per_s",
        "dials_per_s",
        "failed_dials_per_s",
    ] {
        let (points, d) = series(a, name).unwrap_or_else(|| panic!("no {name} series: {a}"));
        assert!(
            points >= 2 && (samples(&before)..=samples(&after)).contains(&points),
            "{name}: {points} points, /status had {}..{}",
            samples(&before),
            samples(&after)
        );
        assert_eq!(d.matches('L').count() + 1, points, "{name}: {d}");
    }
    let peak = |chart: &str| -> f64 {
        let at = a.find(&format!("data-chart=\"{chart}\"")).unwrap_or(0);
        attr(&a[at..], "data-peak")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        peak("throughput") > 0.0,
        "the throughput chart is flat: {a}"
    );
    assert!(peak("dials") > 0.0, "the dials chart is flat: {a}");

    // The failed dial: when, destination, agent, cause in doctor's words, the error.
    let failure = &after["dial_failures"][0];
    assert_eq!(failure["destination"], closed.to_string(), "{after}");
    assert_eq!(failure["cause"], "refused");
    let row = &dom[dom
        .find("<tr class=\"dial-failure\"")
        .expect("a failure row")..];
    let row = &row[..row.find("</tr>").unwrap_or(row.len())];
    assert_eq!(
        attr(row, "data-destination"),
        Some(closed.to_string().as_str())
    );
    assert_eq!(attr(row, "data-agent-id"), Some("agent-a"));
    assert_eq!(attr(row, "data-cause"), Some("refused"));
    assert!(row.contains("nothing accepts connections"), "{row}");
    let error = failure["error"].as_str().unwrap_or_default();
    assert!(error.contains("connection refused"), "{error}");
    assert!(row.contains(error), "{row} lacks {error}");
    assert!(row.contains(" ago<") || row.contains(">just now<"), "{row}");

    // The budget.
    let budget = before["buffers"]["budget_bytes"].as_u64().unwrap_or(0);
    let shown = attr(
        &dom[dom.find("data-field=\"budget\"").unwrap_or(0)..],
        "data-value",
    );
    assert_eq!(shown, Some(budget.to_string().as_str()));
    assert!(dom.contains("256 MiB"), "{dom}");
    Ok(())
}
