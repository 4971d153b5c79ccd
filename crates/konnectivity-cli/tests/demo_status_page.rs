//! `konnectivity demo` serves the live status page on the server's admin port and
//! prints its URL; the page's data (`/status`) shows the demo's agent and its failed
//! dial.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// GET `path` on `addr`, the whole response as text.
fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the admin port");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// Kills the demo even when an assertion fails.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_prints_and_serves_the_status_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_konnectivity"))
            .args(["demo", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn konnectivity demo"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let mut url = None;
    let mut seen = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        let Some(Ok(line)) = lines.next() else { break };
        seen.push_str(&line);
        seen.push('\n');
        if let Some(u) = line
            .split_whitespace()
            .find(|w| w.ends_with("/status.html"))
        {
            url = url.or(Some(u.to_owned()));
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("no status page URL printed:\n{seen}"));
    assert!(seen.contains("[3] a dial to a closed port fails"), "{seen}");
    let admin = url
        .trim_start_matches("http://")
        .trim_end_matches("/status.html");
    let page = get(admin, "/status.html");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("text/html") && page.contains("fetch(\"/status\""),
        "{page}"
    );
    let status = get(admin, "/status");
    let body = status.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(v["server_id"], "demo-server");
    assert_eq!(v["agents"][0]["agent_id"], "demo-node");
    assert_eq!(v["dial_failures"][0]["cause"], "refused", "{v}");
}
