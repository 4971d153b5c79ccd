//! The admin port's status API and page: agents appear with their identity, and the
//! HTML page renders them in a real browser (headless Chromium).
use std::process::Command;
use std::time::Duration;

use konnectivity_e2e::*;
use konnectivity_testkit::pki;

#[test]
fn status_json_and_page_list_connected_agents() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = pki::generate(&dir.path().join("pki"), &[])?;
    let spec = ServerSpec {
        extra: vec!["--proxy-strategies=destHost,default".into()],
        ..ServerSpec::grpc_uds(dir.path().join("s.sock"))
    };
    let (_server, ports) = start_server("server", &pki, &spec, None, dir.path())?;
    let ids = ["--agent-identifiers=host=node-a&ipv4=10.0.0.1&cidr=10.244.1.0/24".to_owned()];
    let (_a, _) = start_agent(
        "agent-a",
        &pki,
        "127.0.0.1",
        ports.agent,
        &ids,
        None,
        dir.path(),
    )?;
    let (_b, _) = start_agent(
        "agent-b",
        &pki,
        "127.0.0.1",
        ports.agent,
        &[],
        None,
        dir.path(),
    )?;
    let admin = format!("127.0.0.1:{}", ports.admin);
    wait_for("two agents in /status", Duration::from_secs(10), || {
        http_get(&admin, "/status")
            .map(|(_, b)| b.matches("\"agent_id\"").count() == 2)
            .unwrap_or(false)
    })?;
    let (code, body) = http_get(&admin, "/status")?;
    assert_eq!(code, 200);
    assert!(body.contains("\"agent_id\":\"agent-a\""), "{body}");
    assert!(body.contains("\"cidrs\":[\"10.244.1.0/24\"]"), "{body}");
    assert!(
        body.contains("\"hosts\":[\"node-a\",\"10.0.0.1\"]"),
        "{body}"
    );
    assert!(body.contains("\"flow_control\":true"), "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");

    let chromium = ["chromium", "chromium-browser"]
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
        })?;
    let profile = dir.path().join("chromium-profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("http://{admin}/status.html"))
        .output()?;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dom.matches("<tr class=\"agent\">").count(), 2, "{dom}");
    assert!(
        dom.contains("<td>agent-a</td>") && dom.contains("<td>agent-b</td>"),
        "{dom}"
    );
    assert!(dom.contains("<td>10.244.1.0/24</td>"), "{dom}");
    Ok(())
}
