//! Harness for the end-to-end tests: starts the real `proxy-server` and `proxy-agent`
//! binaries as child processes (optionally inside a network namespace), waits for
//! them to be healthy, and kills them when dropped. Logs go to files in the test's
//! temporary directory and are printed when a test fails. The process handling itself
//! (spawn, kill on drop, ports, HTTP GET, `/proc`) is `konnectivity_testkit::process`.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

pub use konnectivity_testkit::argv::ServerPorts;
use konnectivity_testkit::argv::{AgentArgv, ServerArgv};
/// Network-namespace helpers for topology tests (root, iproute2, iptables).
pub use konnectivity_testkit::netns;
use konnectivity_testkit::pki::Pki;
pub use konnectivity_testkit::process::{
    Proc, assert_fails_with, assert_prints, free_port, http_get, rss_kib, wait_for,
};

pub mod ops;

/// The directory holding the workspace's built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    // Integration tests run from target/<profile>/deps/<test>-<hash>.
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of a binary under test: from `$KONNECTIVITY_BIN_DIR` when it is set (e.g. the
/// binaries `scripts/build-image.sh` extracts from the image), otherwise the workspace's
/// build. Fails clearly when it is not there.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("KONNECTIVITY_BIN_DIR").map_or_else(bin_dir, PathBuf::from);
    let p = dir.join(name);
    anyhow::ensure!(
        p.exists(),
        "{} not built: run `cargo build --bins` (or `cargo test --workspace`) first",
        p.display()
    );
    Ok(p)
}

/// Starts `konnectivity dial <args>` (with `env` added to its environment) with its
/// standard input, output and error piped to the test.
pub fn spawn_konnectivity_dial(
    args: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<std::process::Child> {
    use std::process::Stdio;
    Ok(Command::new(bin("konnectivity")?)
        .arg("dial")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Runs the Go interop client (`tests/go-interop`, built once per test process as
/// `bin_dir()/<name>`) with `args`; `wait` bounds its wait for a ready agent. Its output.
pub fn go_interop(name: &str, args: &[String], wait: &str) -> anyhow::Result<String> {
    let program = konnectivity_testkit::go_interop::build(&bin_dir().join(name))?;
    konnectivity_testkit::go_interop::run(&program, args, wait)
}

/// How to run a proxy-server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// `--mode`.
    pub mode: &'static str,
    /// Frontend over a UNIX socket at this path; otherwise TCP mTLS.
    pub uds: Option<PathBuf>,
    /// Address to bind every listener to.
    pub bind: String,
    /// Extra flags.
    pub extra: Vec<String>,
}

impl ServerSpec {
    /// The command line of a server `name` as this spec says, on `ports`.
    pub fn argv(&self, name: &str, pki: &Pki, ports: ServerPorts) -> Vec<String> {
        let argv = ServerArgv::new(name, self.mode, pki).listeners(
            &self.bind,
            ports.agent,
            ports.health,
            ports.admin,
        );
        let argv = match &self.uds {
            Some(path) => argv.uds_frontend(path),
            None => argv.tcp_frontend(&self.bind, ports.frontend, pki),
        };
        argv.args(self.extra.iter().cloned()).build()
    }

    /// A `mode` server on loopback with its frontend on the UNIX socket `path`.
    pub fn uds(mode: &'static str, path: PathBuf) -> Self {
        Self {
            mode,
            uds: Some(path),
            bind: "127.0.0.1".into(),
            extra: Vec::new(),
        }
    }

    /// A `mode` server on loopback with its frontend on TCP (mTLS).
    pub fn tcp(mode: &'static str) -> Self {
        Self {
            mode,
            uds: None,
            bind: "127.0.0.1".into(),
            extra: Vec::new(),
        }
    }

    /// A gRPC server with a UDS frontend.
    pub fn grpc_uds(path: PathBuf) -> Self {
        Self::uds("grpc", path)
    }
}

/// Starts proxy-server and waits until its health port answers.
pub fn start_server(
    name: &str,
    pki: &Pki,
    spec: &ServerSpec,
    netns: Option<&str>,
    dir: &Path,
) -> anyhow::Result<(Proc, ServerPorts)> {
    let ports = ServerPorts::free(spec.uds.is_none());
    let args = spec.argv(name, pki, ports);
    let proc = Proc::spawn(name, &bin("proxy-server")?, &args, netns, dir)?;
    if netns.is_none() {
        wait_healthz("proxy-server /healthz", &spec.bind, ports.health, 20)?;
    }
    Ok((proc, ports))
}

/// Waits up to `secs` seconds until `http://bind:port/healthz` answers 200.
fn wait_healthz(what: &str, bind: &str, port: u16, secs: u64) -> anyhow::Result<()> {
    let health = format!("{bind}:{port}");
    wait_for(what, Duration::from_secs(secs), || {
        http_get(&health, "/healthz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    })
}

/// A fresh temporary directory and a test PKI (with `sans` on the server certificate)
/// generated in its `pki/`.
pub fn temp_pki(sans: &[&str]) -> anyhow::Result<(tempfile::TempDir, Pki)> {
    let dir = tempfile::tempdir()?;
    let pki = konnectivity_testkit::pki::generate(&dir.path().join("pki"), sans)?;
    Ok((dir, pki))
}

/// Starts an agent of `kind` named `name` on loopback toward `agent_port` (the host's
/// network namespace), with `extra` flags; returns it and its health port.
pub fn start_local_agent(
    kind: AgentKind,
    name: &str,
    pki: &Pki,
    agent_port: u16,
    extra: &[String],
    dir: &Path,
) -> anyhow::Result<(Proc, u16)> {
    start_agent(kind, name, pki, "127.0.0.1", agent_port, extra, None, dir)
}

/// Starts an agent of `kind` toward `host:agent_port` (in the network namespace `netns`,
/// the host's when `None`) on a free health port, sync 100 ms capped at 1 s, with the
/// flags that kind always gets then `extra`; returns it and its health port.
#[allow(clippy::too_many_arguments)]
pub fn start_agent(
    kind: AgentKind,
    name: &str,
    pki: &Pki,
    host: &str,
    agent_port: u16,
    extra: &[String],
    netns: Option<&str>,
    dir: &Path,
) -> anyhow::Result<(Proc, u16)> {
    let (program, own): (PathBuf, &[&str]) = match kind {
        AgentKind::Ours => (bin("proxy-agent")?, &[]),
        // The flags upstream's own integration harness gives its agent (probe 100 ms).
        AgentKind::Upstreams => (
            upstream_bin("proxy-agent")?,
            &["--health-server-host=127.0.0.1", "--probe-interval=100ms"],
        ),
    };
    let health = free_port();
    let args = AgentArgv::new(name, pki, host, agent_port)
        .args(own.iter().map(|s| s.to_string()))
        .ports(health)
        .sync("100ms", "1s")
        .args(extra.iter().cloned())
        .build();
    let proc = Proc::spawn(name, &program, &args, netns, dir)?;
    Ok((proc, health))
}

/// A proxy-server named `server` and one proxy-agent named `agent` on loopback.
pub struct Loopback {
    /// The server process.
    pub server: Proc,
    /// The server's ports.
    pub ports: ServerPorts,
    /// The agent process.
    pub agent: Proc,
    /// The agent's health (and metrics) port.
    pub agent_health: u16,
}

/// Starts a server as `spec` says and an agent (with `agent_extra` flags) connected to
/// it, both ours and on loopback, and waits until the server is ready (the agent is
/// connected).
pub fn start_loopback(
    pki: &Pki,
    spec: &ServerSpec,
    agent_extra: &[String],
    dir: &Path,
) -> anyhow::Result<Loopback> {
    start_pair(
        ServerKind::Ours,
        AgentKind::Ours,
        pki,
        spec,
        agent_extra,
        dir,
    )
}

/// [`start_loopback`] with our gRPC server, its frontend on the UNIX socket `dir/s.sock`
/// and `server_extra` flags; the tunnel and that socket's path.
pub fn start_uds_loopback(
    pki: &Pki,
    dir: &Path,
    server_extra: Vec<String>,
) -> anyhow::Result<(Loopback, PathBuf)> {
    let sock = dir.join("s.sock");
    let spec = ServerSpec {
        extra: server_extra,
        ..ServerSpec::grpc_uds(sock.clone())
    };
    Ok((start_loopback(pki, &spec, &[], dir)?, sock))
}

/// [`start_loopback`] with a server of kind `server` and an agent of kind `agent`.
pub fn start_pair(
    server: ServerKind,
    agent: AgentKind,
    pki: &Pki,
    spec: &ServerSpec,
    agent_extra: &[String],
    dir: &Path,
) -> anyhow::Result<Loopback> {
    let (server, ports) = match server {
        ServerKind::Ours => start_server("server", pki, spec, None, dir)?,
        ServerKind::Upstreams => start_upstream_server("server", pki, spec, dir)?,
    };
    let (agent, agent_health) =
        start_local_agent(agent, "agent", pki, ports.agent, agent_extra, dir)?;
    wait_server_ready("127.0.0.1", ports.health)?;
    Ok(Loopback {
        server,
        ports,
        agent,
        agent_health,
    })
}

/// Waits until the server reports ready (an agent is connected).
pub fn wait_server_ready(bind: &str, health: u16) -> anyhow::Result<()> {
    let addr = format!("{bind}:{health}");
    wait_for("proxy-server /readyz", Duration::from_secs(20), || {
        http_get(&addr, "/readyz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    })
}

/// Which proxy-server a test runs: ours, or upstream's (a mixed fleet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// konnectivity-rs's `proxy-server`.
    Ours,
    /// Upstream's v0.36.0 `proxy-server` (built by `tests/upstream/build.sh`).
    Upstreams,
}

/// Which proxy-agent a test runs: ours, or upstream's (a mixed fleet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    /// konnectivity-rs's `proxy-agent`.
    Ours,
    /// Upstream's v0.36.0 `proxy-agent` (built by `tests/upstream/build.sh`).
    Upstreams,
}

/// A server (`spec`, which should bind `link.cp_ip`) in the control-plane namespace of
/// `link` and an agent of `kind` in its node namespace dialing it; waits until the
/// server is ready. Returns the server, its ports, the agent and its health port.
pub fn start_across(
    link: &netns::Link,
    pki: &Pki,
    spec: &ServerSpec,
    kind: AgentKind,
    dir: &Path,
) -> anyhow::Result<(Proc, ServerPorts, Proc, u16)> {
    let (server, ports) = start_server("proxy-server", pki, spec, Some(&link.cp), dir)?;
    let (agent, health) = start_agent(
        kind,
        "proxy-agent",
        pki,
        &link.cp_ip,
        ports.agent,
        &[],
        Some(&link.node),
        dir,
    )?;
    let readyz = format!("http://{}:{}/readyz", link.cp_ip, ports.health);
    wait_for("proxy-server /readyz", Duration::from_secs(10), || {
        netns::succeeds(&link.cp, &["curl", "-sf", "-m", "1", &readyz])
    })?;
    Ok((server, ports, agent, health))
}

/// A frontend description for the Rust client.
pub fn tcp_frontend(
    pki: &Pki,
    port: u16,
    alpn: &[&[u8]],
) -> anyhow::Result<konnectivity_client::Frontend> {
    konnectivity_tls::install_provider();
    let tls = konnectivity_tls::client(&pki.ca, Some((&pki.client_cert, &pki.client_key)), alpn)?;
    Ok(konnectivity_client::Frontend::Tcp {
        addr: format!("127.0.0.1:{port}"),
        tls: Arc::new(tls),
        server_name: "localhost".into(),
    })
}

// ---------------------------------------------------------------------------------------
// The real upstream programs (issue 8, mixed fleets). Built from the Go module in
// `tests/upstream` (which pins sigs.k8s.io/apiserver-network-proxy and only *depends* on
// it) into `target/upstream/` (or `$KONNECTIVITY_UPSTREAM_BIN_DIR`).

/// The directory holding `upstream-proxy-server` and `upstream-proxy-agent`.
pub fn upstream_bin_dir() -> PathBuf {
    match std::env::var_os("KONNECTIVITY_UPSTREAM_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/upstream"),
    }
}

/// Path of an upstream binary (`"proxy-server"` or `"proxy-agent"`), building it from
/// `tests/upstream` with `go build` when it is missing or older than that module's
/// `go.mod`/`go.sum`. The first build needs the Go module proxy (or a populated module
/// cache) and takes a few minutes; `tests/upstream/build.sh` does the same ahead of time.
pub fn upstream_bin(name: &str) -> anyhow::Result<PathBuf> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let pkg = match name {
        "proxy-server" => "sigs.k8s.io/apiserver-network-proxy/cmd/server",
        "proxy-agent" => "sigs.k8s.io/apiserver-network-proxy/cmd/agent",
        other => anyhow::bail!("unknown upstream binary {other}"),
    };
    let out = upstream_bin_dir().join(format!("upstream-{name}"));
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/upstream");
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = match mtime(&out) {
        None => true,
        Some(built) => ["go.mod", "go.sum"]
            .iter()
            .any(|f| mtime(&module.join(f)).is_some_and(|m| m > built)),
    };
    if stale {
        let build = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(pkg)
            .current_dir(&module)
            .output()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run `go` to build upstream {name} (install Go, or run tests/upstream/build.sh): {e}"
                )
            })?;
        anyhow::ensure!(
            build.status.success(),
            "building upstream {name} ({pkg}) failed: {}",
            String::from_utf8_lossy(&build.stderr)
        );
    }
    Ok(out)
}

/// Starts the upstream `proxy-server` with the same flags [`start_server`] gives ours
/// (plus `spec.extra`) and waits until its `/healthz` answers.
pub fn start_upstream_server(
    name: &str,
    pki: &Pki,
    spec: &ServerSpec,
    dir: &Path,
) -> anyhow::Result<(Proc, ServerPorts)> {
    let ports = ServerPorts::free(spec.uds.is_none());
    let program = upstream_bin("proxy-server")?;
    let proc = spawn_upstream_server(name, &program, pki, spec, ports, dir)?;
    wait_healthz(
        "upstream proxy-server /healthz",
        &spec.bind,
        ports.health,
        30,
    )?;
    Ok((proc, ports))
}

/// Spawns the upstream `proxy-server` on the given ports (no waiting).
pub fn spawn_upstream_server(
    name: &str,
    program: &Path,
    pki: &Pki,
    spec: &ServerSpec,
    ports: ServerPorts,
    dir: &Path,
) -> anyhow::Result<Proc> {
    let args = spec.argv(name, pki, ports);
    Proc::spawn(name, program, &args, None, dir)
}

/// The value of an unlabelled metric `name` from `http://addr/metrics`, or `None` when it
/// is absent or the endpoint does not answer. (Asks with HTTP/1.0 so that no server
/// answers with chunked encoding.)
pub fn scrape_metric(addr: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let v = rest.strip_prefix(' ')?;
        v.trim().parse().ok()
    })
}
