//! The fault phase (`--only faults`, issue 21): what the network and a dying process do
//! to a tunnel, for our binaries and upstream's in the same run.
//!
//! Each side gets its own pair of network namespaces (`konnectivity_testkit::netns::Link`):
//! proxy-server in the control plane, proxy-agent and the destination (python's
//! http.server with a pattern file) on the node, both with `--keepalive-time=5s` and
//! otherwise default flags; the gRPC frontend is a UNIX socket this process reaches.
//! Then, one after the other:
//!
//! * **loss**: a download of the pattern file with 0, 0.5, 1 and 3 % of the packets
//!   between the namespaces dropped at random each way (iptables `statistic`; this
//!   kernel has no netem); every byte checked;
//! * **partition**: every packet dropped for `--partition-secs` (30 s full, 12 s smoke):
//!   when the server stops reporting ready (it noticed), what a dial sent at the start
//!   of the partition gets and when, and how long after healing the server is ready
//!   again (the target: ≤ 1 s);
//! * **load-balancer idle cut**: the idle agent link's flow forgotten by the path (an
//!   LB or NAT whose idle timer expired): its packets are dropped from then on while
//!   new connections pass (iptables on the flow's source port in the node namespace):
//!   how long until a dial through the tunnel works again (dials every 250 ms, 1 s
//!   each);
//! * **kill**: the agent killed with SIGKILL in the middle of a download: how long
//!   until the frontend's stream ends, and whether it ends with an error (a clean end
//!   looks like a complete transfer to a frontend that does not know the length).
//!
//! Needs root, iproute2, iptables, curl and python3; the namespaces are deleted (with
//! what still runs in them) when the phase ends. Every loop is bounded in time.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use konnectivity_client::{Frontend, grpc_dial};
use konnectivity_testkit::netns::{Link, output};
use konnectivity_testkit::pki::{self, Pki};
use konnectivity_testkit::process::{Proc, free_port};
use konnectivity_testkit::servers::fill_pattern;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Cfg;
use crate::report::{Results, progress};
use crate::stats::{gbps, round};
use crate::{DIAL, MIB};

/// Loss rates measured, in percent of packets each way.
const LOSS: [f64; 4] = [0.0, 0.5, 1.0, 3.0];
/// The destination's port on the node.
const DEST_PORT: u16 = 10250;
/// Bound on one download (3 % loss slows TCP a lot).
const DOWNLOAD: Duration = Duration::from_secs(120);

/// One side's programs.
struct Side {
    key: &'static str,
    server: PathBuf,
    agent: PathBuf,
}

/// The running set-up of one side.
struct Net {
    link: Link,
    readyz: String,
    frontend: Frontend,
    dest: String,
    /// The file the destination serves (what every download is compared with).
    blob: Vec<u8>,
    server: Proc,
    agent: Proc,
    _destination: Proc,
}

/// Whether the server's /readyz answers 200 (curl inside the control plane, 1 s cap).
async fn ready(link_cp: &str, url: &str) -> bool {
    let (ns, url) = (link_cp.to_owned(), url.to_owned());
    tokio::task::spawn_blocking(move || {
        output(&ns, &["curl", "-sf", "-o", "/dev/null", "-m", "1", &url]).is_some()
    })
    .await
    .unwrap_or(false)
}

/// Polls /readyz every 20 ms until it is `want`; the time that took, or `None` after
/// `limit`.
async fn until_ready(net: &Net, want: bool, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ready(&net.link.cp, &net.readyz).await == want {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn start(side: &Side, subnet: u8, size: u64, dir: &Path) -> anyhow::Result<Net> {
    let link = Link::create(&side.key[..1], subnet);
    let dir = dir.join(format!("faults-{}", side.key));
    std::fs::create_dir_all(dir.join("www"))?;
    let pki: Pki = pki::generate(&dir.join("pki"), &[&link.cp_ip])?;
    let mut blob = vec![0u8; size as usize];
    fill_pattern(&mut blob, 0);
    std::fs::write(dir.join("www/blob"), &blob)?;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let www = dir.join("www").display().to_string();
    let destination = Proc::spawn(
        "destination",
        Path::new("python3"),
        &s(&[
            "-m",
            "http.server",
            &DEST_PORT.to_string(),
            "--bind",
            &link.node_ip,
            "--directory",
            &www,
        ]),
        Some(&link.node),
        &dir,
    )?;
    let (agent_port, health) = (free_port(), free_port());
    let uds = dir.join("frontend.sock");
    let p = |x: &Path| x.display().to_string();
    let server = Proc::spawn(
        &format!("{}-server", side.key),
        &side.server,
        &[
            "--mode=grpc".into(),
            format!("--uds-name={}", p(&uds)),
            "--server-port=0".into(),
            format!("--cluster-cert={}", p(&pki.server_cert)),
            format!("--cluster-key={}", p(&pki.server_key)),
            format!("--cluster-ca-cert={}", p(&pki.ca)),
            format!("--agent-port={agent_port}"),
            format!("--agent-bind-address={}", link.cp_ip),
            format!("--health-port={health}"),
            format!("--health-bind-address={}", link.cp_ip),
            format!("--admin-port={}", free_port()),
            format!("--admin-bind-address={}", link.cp_ip),
            "--keepalive-time=5s".into(),
            "--server-id=faults-server".into(),
        ],
        Some(&link.cp),
        &dir,
    )?;
    let agent = Proc::spawn(
        &format!("{}-agent", side.key),
        &side.agent,
        &[
            format!("--ca-cert={}", p(&pki.ca)),
            format!("--agent-cert={}", p(&pki.agent_cert)),
            format!("--agent-key={}", p(&pki.agent_key)),
            format!("--proxy-server-host={}", link.cp_ip),
            format!("--proxy-server-port={agent_port}"),
            "--health-server-host=127.0.0.1".into(),
            format!("--health-server-port={}", free_port()),
            format!("--admin-server-port={}", free_port()),
            "--agent-id=faults-node".into(),
            "--keepalive-time=5s".into(),
        ],
        Some(&link.node),
        &dir,
    )?;
    let readyz = format!("http://{}:{health}/readyz", link.cp_ip);
    let dest = format!("{}:{DEST_PORT}", link.node_ip);
    Ok(Net {
        link,
        readyz,
        frontend: Frontend::Uds(uds),
        dest,
        blob,
        server,
        agent,
        _destination: destination,
    })
}

/// GETs the pattern file through the tunnel and checks every byte; `kill` (if given)
/// runs once `after` has passed, and the read goes on to the stream's end. Returns the
/// bytes read, how the stream ended and when (relative to the kill, if there was one).
async fn download(
    net: &mut Net,
    size: u64,
    kill: Option<Duration>,
) -> anyhow::Result<(u64, Duration, Result<(), String>, Option<Duration>)> {
    let mut io = grpc_dial(&net.frontend, &net.dest, DIAL).await?;
    io.write_all(b"GET /blob HTTP/1.0\r\nHost: node\r\n\r\n")
        .await?;
    let started = Instant::now();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(head.len() < 4096, "no response head");
        ensure!(io.read(&mut b).await? == 1, "EOF in the response head");
        head.push(b[0]);
    }
    ensure!(
        head.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    let mut killed: Option<Instant> = None;
    let end = loop {
        if let Some(after) = kill
            && killed.is_none()
            && started.elapsed() >= after
        {
            net.agent.kill();
            killed = Some(Instant::now());
        }
        if started.elapsed() > DOWNLOAD || off > size {
            break Err(format!("gave up after {off} bytes"));
        }
        let pace = kill.is_some() && killed.is_none();
        match tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await {
            Err(_) => break Err("read stalled 30 s".into()),
            Ok(Err(e)) => break Err(e.to_string()),
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => {
                let want = usize::try_from(off)
                    .ok()
                    .and_then(|o| net.blob.get(o..o + n))
                    .context("more bytes than the file has")?;
                if buf[..n] != *want {
                    let i = (0..n).find(|i| buf[*i] != want[*i]).unwrap_or_default();
                    bail!("wrong byte at offset {}", off + i as u64);
                }
                off += n as u64;
                if pace {
                    // At most 5 MiB/s until the kill, so that it lands mid-transfer.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    Ok((off, started.elapsed(), end, killed.map(|k| k.elapsed())))
}

async fn measure(net: &mut Net, size: u64, partition: Duration) -> anyhow::Result<Value> {
    let mut out = Map::new();
    until_ready(net, true, Duration::from_secs(30))
        .await
        .context("the agent did not connect")?;
    let (node, url) = (net.link.node.clone(), format!("http://{}/blob", net.dest));
    let t = Instant::now();
    while output(&node, &["curl", "-sf", "-o", "/dev/null", "-m", "1", &url]).is_none() {
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the destination did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut loss = Map::new();
    for pct in LOSS {
        if pct > 0.0 {
            net.link.set_loss(pct);
        }
        let r = download(net, size, None).await;
        if pct > 0.0 {
            net.link.clear_loss(pct);
        }
        let v = match r {
            Ok((n, took, Ok(()), _)) if n == size => {
                json!({ "gbit_s": round(gbps(n, took)), "seconds": round(took.as_secs_f64()) })
            }
            Ok((n, _, end, _)) => json!({ "error": format!("{n} of {size} bytes: {end:?}") }),
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
        progress(format!("faults: {pct} % loss: {v}"));
        loss.insert(format!("{pct}"), v);
    }
    out.insert("loss".into(), Value::Object(loss));

    // Partition: a dial sent into it, the notice, the recovery.
    let cut = Instant::now();
    net.link.partition();
    let (frontend, dest) = (net.frontend.clone(), net.dest.clone());
    let pending = tokio::spawn(async move {
        let t = Instant::now();
        let r = grpc_dial(&frontend, &dest, partition + Duration::from_secs(30)).await;
        (t.elapsed(), r.map(drop).map_err(|e| e.to_string()))
    });
    let noticed = until_ready(net, false, partition).await;
    tokio::time::sleep(partition.saturating_sub(cut.elapsed())).await;
    let healed = Instant::now();
    net.link.heal();
    let recovered = until_ready(net, true, Duration::from_secs(60)).await;
    let (answered, dial) = match tokio::time::timeout(Duration::from_secs(60), pending).await {
        Ok(Ok((t, r))) => (Some(t), r),
        _ => (None, Err("no answer".into())),
    };
    let secs = |d: Option<Duration>| d.map(|d| round(d.as_secs_f64()));
    let p = json!({
        "partition_seconds": partition.as_secs(),
        "noticed_after_seconds": secs(noticed),
        "ready_after_healing_seconds": secs(recovered),
        "healed_at_seconds": round(healed.duration_since(cut).as_secs_f64()),
        "pending_dial": {
            "answered_after_seconds": secs(answered),
            "result": match &dial { Ok(()) => "connected".to_owned(), Err(e) => e.clone() },
        },
    });
    progress(format!("faults: partition: {p}"));
    out.insert("partition".into(), p);

    // A load balancer forgets the idle agent link.
    until_ready(net, true, Duration::from_secs(30))
        .await
        .context("not ready before the idle cut")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = match idle_cut(net).await {
        Ok(v) => v,
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    progress(format!("faults: idle cut: {c}"));
    out.insert("idle_cut".into(), c);

    // Kill the agent mid-transfer.
    until_ready(net, true, Duration::from_secs(30))
        .await
        .context("not ready before the kill")?;
    let k = match download(net, size, Some(Duration::from_millis(300))).await {
        Ok((n, _, end, Some(after))) => json!({
            "bytes_before_the_end": n,
            "stream_ended_after_kill_ms": round(after.as_secs_f64() * 1000.0),
            "ended_with": match end { Ok(()) => "clean end (EOF)".to_owned(), Err(e) => format!("error: {e}") },
        }),
        Ok((n, _, end, None)) => {
            json!({ "error": format!("ended before the kill: {n} bytes, {end:?}") })
        }
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    progress(format!("faults: kill: {k}"));
    out.insert("kill".into(), k);
    let _ = net.server.alive();
    Ok(Value::Object(out))
}

/// Drops every packet of the agent's current connection to the server (found with
/// `ss` in the node namespace) and dials every 250 ms until one works; the rules stay
/// until then (bounded at 60 s), so only a new connection can carry the dial.
async fn idle_cut(net: &Net) -> anyhow::Result<Value> {
    let ss = output(
        &net.link.node,
        &["ss", "-Htn", "state", "established", "dst", &net.link.cp_ip],
    )
    .context("ss")?;
    let ports: Vec<String> = ss
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter_map(|local| local.rsplit_once(':').map(|(_, p)| p.to_owned()))
        .collect();
    ensure!(
        ports.len() == 1,
        "expected one agent connection, ss says: {ss}"
    );
    let port = &ports[0];
    let rules = |op: &str| {
        for (chain, dir) in [("OUTPUT", "--sport"), ("INPUT", "--dport")] {
            konnectivity_testkit::netns::must(
                &net.link.node,
                &["iptables", op, chain, "-p", "tcp", dir, port, "-j", "DROP"],
            );
        }
    };
    let cut = Instant::now();
    rules("-I");
    let mut failed = 0u32;
    let mut last = String::new();
    let works = loop {
        if cut.elapsed() > Duration::from_secs(60) {
            break None;
        }
        let t = Instant::now();
        match grpc_dial(&net.frontend, &net.dest, Duration::from_secs(1)).await {
            Ok(_) => break Some(cut.elapsed()),
            Err(e) => {
                failed += 1;
                last = e.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(250).saturating_sub(t.elapsed())).await;
    };
    rules("-D");
    Ok(json!({
        "dial_works_after_seconds": works.map(|d| round(d.as_secs_f64())),
        "failed_dials": failed,
        "last_error": last,
    }))
}

/// Runs the phase for our binaries and, when they are there, upstream's.
pub(crate) async fn phase_faults(
    cfg: &Cfg,
    ours: (&Path, &Path),
    upstream: Option<(PathBuf, PathBuf)>,
    dir: &Path,
    res: &mut Results,
) -> anyhow::Result<()> {
    if !nix_root() {
        bail!("the faults phase needs root (network namespaces and iptables)");
    }
    // Large enough that a kill 300 ms into a paced download finds most of it still on
    // the node (the buffers between agent and frontend hold ~10 MiB); smoke or not.
    let size = if cfg.smoke { 64 * MIB } else { 256 * MIB };
    let partition = Duration::from_secs(if cfg.smoke { 12 } else { 30 });
    let mut sides = vec![Side {
        key: "ours",
        server: ours.0.to_path_buf(),
        agent: ours.1.to_path_buf(),
    }];
    match upstream {
        Some((server, agent)) => sides.push(Side {
            key: "upstream",
            server,
            agent,
        }),
        None => progress("faults: upstream's binaries not found; ours only"),
    }
    let mut all = Map::new();
    for (i, side) in sides.iter().enumerate() {
        progress(format!(
            "faults: {} (partition {partition:?}, {} MiB)",
            side.key,
            size / MIB
        ));
        let subnet = (std::process::id() % 100) as u8 + 100 + i as u8 * 50 % 100;
        let v = match start(side, subnet, size, dir) {
            Ok(mut net) => match measure(&mut net, size, partition).await {
                Ok(v) => v,
                Err(e) => json!({ "error": format!("{e:#}") }),
            },
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
        all.insert(side.key.into(), v);
    }
    let get = |side: &str, path: &[&str]| {
        let mut v = all.get(side);
        for p in path {
            v = v.and_then(|x| x.get(*p));
        }
        v.cloned().unwrap_or(Value::Null)
    };
    let show = |v: Value| match v {
        Value::Null => "—".to_owned(),
        Value::String(s) => s,
        v => v.to_string(),
    };
    let mut t = String::from(
        "faults (namespaces, keepalive 5 s)              ours                 upstream\n",
    );
    let mut line = |label: &str, path: &[&str]| {
        t.push_str(&format!(
            "{label:<46} {:<20} {}\n",
            show(get("ours", path)),
            show(get("upstream", path))
        ));
    };
    for pct in LOSS {
        line(
            &format!("download at {pct} % loss, Gbit/s"),
            &["loss", &format!("{pct}"), "gbit_s"],
        );
    }
    line(
        "partition noticed after, s",
        &["partition", "noticed_after_seconds"],
    );
    line(
        "ready after healing, s",
        &["partition", "ready_after_healing_seconds"],
    );
    line(
        "dial sent into the partition answered after, s",
        &["partition", "pending_dial", "answered_after_seconds"],
    );
    line("  … with", &["partition", "pending_dial", "result"]);
    line(
        "idle LB cut: a dial works again after, s",
        &["idle_cut", "dial_works_after_seconds"],
    );
    line(
        "  … failed dials before (every 250 ms)",
        &["idle_cut", "failed_dials"],
    );
    line(
        "agent killed: frontend stream ended after, ms",
        &["kill", "stream_ended_after_kill_ms"],
    );
    line("  … with", &["kill", "ended_with"]);
    res.sections.push(t);
    let recovery = get("ours", &["partition", "ready_after_healing_seconds"])
        .as_f64()
        .unwrap_or(f64::NAN);
    res.abs_row(
        "fault_recovery",
        format!("ready after a {}-s partition heals", partition.as_secs()),
        format!("{recovery} s"),
        recovery,
        1.0,
        "≤ 1 s".into(),
        "s",
        "issue",
    );
    res.measurements.insert("faults".into(), Value::Object(all));
    Ok(())
}

/// Whether this process runs as root (namespaces and iptables need it).
fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
