//! Our binaries as separate processes, for the phases that must not share a runtime
//! with the bench: a proxy-server with its frontend on a UNIX socket
//! ([`start_server_proc`]), a server with one agent ([`TunnelProcs`]), and the bench's
//! own helper processes (`konnectivity bench-backend`, `bench-null`: [`Helper`]). The
//! process handling itself (spawn, kill on drop, free ports, `/proc`) is
//! `konnectivity_testkit::process`.
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use konnectivity_client::Frontend;
use konnectivity_testkit::argv::{AgentArgv, ServerArgv};
use konnectivity_testkit::pki::Pki;
use konnectivity_testkit::process::{Proc, free_port, http_get, rss_kib};
use tokio::io::AsyncReadExt;

/// What the phases that run proxy-server and proxy-agent as processes start from.
#[derive(Clone, Copy)]
pub(crate) struct ProcessEnv<'a> {
    pub(crate) cfg: &'a crate::config::Cfg,
    /// Where our binaries are.
    pub(crate) bin_dir: &'a Path,
    pub(crate) pki: &'a Pki,
    /// The run's scratch directory (sockets, logs).
    pub(crate) dir: &'a Path,
    /// The in-process source backend (bulk downloads).
    pub(crate) source: SocketAddr,
}

/// The environment the image gives our binaries (`ENV` in the Dockerfile), given to every
/// process the bench starts: glibc's allocator settings, which decide whether the
/// server faults in its HTTP/2 read buffers again for every frame (BENCHMARKS.md, "The
/// allocator's settings"). Upstream's Go binaries ignore it.
pub(crate) const IMAGE_ENV: &[(&str, &str)] = &[(
    "GLIBC_TUNABLES",
    konnectivity_runtime::process::ALLOCATOR_TUNABLES,
)];

/// A helper process running this executable (`konnectivity bench-backend`, the echo
/// backend; `konnectivity bench-null`, the null tunnel): it prints one address per
/// line and runs until its standard input closes.
pub(crate) struct Helper {
    pub(crate) child: Child,
    pub(crate) addrs: Vec<SocketAddr>,
}

impl Helper {
    /// Runs `konnectivity ARGS` and reads the `lines` addresses it prints.
    pub(crate) fn start(args: &[String], lines: usize) -> anyhow::Result<Self> {
        let name = args.first().map_or("helper", String::as_str).to_owned();
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(args)
            .envs(IMAGE_ENV.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {name} helper"))?;
        let pid = child.id();
        let out = child.stdout.take().context("helper stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(out);
            for _ in 0..lines {
                let mut line = String::new();
                if !matches!(out.read_line(&mut line), Ok(n) if n > 0) {
                    break;
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Killed by Drop (its own PID) on any error below.
        let mut h = Self {
            child,
            addrs: Vec::with_capacity(lines),
        };
        let t = Instant::now();
        while h.addrs.len() < lines {
            let left = Duration::from_secs(20).saturating_sub(t.elapsed());
            let Ok(line) = rx.recv_timeout(left) else {
                bail!("the {name} helper (pid {pid}) did not start");
            };
            let addr = line
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("the {name} helper printed {line:?}"))?;
            h.addrs.push(addr);
        }
        Ok(h)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `konnectivity bench-backend`: an echo server for the memory test; prints its
/// address and runs until standard input closes.
pub async fn backend_helper() -> anyhow::Result<()> {
    let addr = konnectivity_testkit::servers::echo("127.0.0.1:0").await?;
    println!("{addr}");
    std::io::stdout().flush()?;
    let mut stdin = tokio::io::stdin();
    let mut b = [0u8; 64];
    while stdin.read(&mut b).await? > 0 {}
    Ok(())
}

/// Waits until RSS stops moving (two readings 250 ms apart within 64 KiB), at most 5 s.
pub(crate) async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) < 64 {
            return now;
        }
        last = now;
    }
    last
}

pub(crate) fn sockstat() -> String {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("TCP:")).map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) async fn wait_http(
    addr: &str,
    path: &str,
    status: u16,
    limit: Duration,
) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let a = addr.to_owned();
        let p = path.to_owned();
        let r = tokio::task::spawn_blocking(move || http_get(&a, &p)).await?;
        if matches!(r, Ok((s, _)) if s == status) {
            return Ok(());
        }
        ensure!(
            t.elapsed() < limit,
            "http://{addr}{path} did not answer {status} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Our proxy-server and proxy-agent in `dir`.
pub(crate) fn ours(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    Ok((bin(dir, "proxy-server")?, bin(dir, "proxy-agent")?))
}

pub(crate) fn bin(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    ensure!(
        p.is_file(),
        "{} not found: build it next to this binary (`cargo build --release --bins`) or pass --bin-dir",
        p.display()
    );
    Ok(p)
}

/// A running proxy-server process, its frontend's UNIX socket and its ports.
pub(crate) struct ServerProc {
    pub(crate) proc: Proc,
    pub(crate) uds: PathBuf,
    pub(crate) ports: ServerPorts,
}

/// A proxy-server process with its frontend (`mode`: `grpc` or `http-connect`) on a
/// UNIX socket in `dir`; returns once /healthz answers.
pub(crate) async fn start_server_proc(
    name: &str,
    mode: &str,
    program: &Path,
    pki: &Pki,
    dir: &Path,
) -> anyhow::Result<ServerProc> {
    start_server_proc_on(name, mode, program, pki, dir, ServerPorts::free(), &[]).await
}

/// The listening ports of a proxy-server process: kept to start it again on the same
/// ports (the restart phase).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerPorts {
    pub(crate) agent: u16,
    pub(crate) health: u16,
    pub(crate) admin: u16,
}

impl ServerPorts {
    /// Three ports free right now.
    pub(crate) fn free() -> Self {
        ServerPorts {
            agent: free_port(),
            health: free_port(),
            admin: free_port(),
        }
    }

    /// `host:port` of the health listener (/healthz, /readyz, /metrics).
    pub(crate) fn health_addr(&self) -> String {
        format!("127.0.0.1:{}", self.health)
    }
}

/// [`start_server_proc`] on the given ports, with `extra` flags (ours only: e.g.
/// `--enable-udp`, `--socks5-port`).
pub(crate) async fn start_server_proc_on(
    name: &str,
    mode: &str,
    program: &Path,
    pki: &Pki,
    dir: &Path,
    ports: ServerPorts,
    extra: &[String],
) -> anyhow::Result<ServerProc> {
    let uds = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&uds);
    let args = ServerArgv::new(name, mode, pki)
        .listeners("127.0.0.1", ports.agent, ports.health, ports.admin)
        .uds_frontend(&uds)
        .args(extra.iter().cloned())
        .build();
    let mut proc = Proc::spawn_with_env(name, program, &args, IMAGE_ENV, None, dir)?;
    if let Err(e) = wait_http(
        &ports.health_addr(),
        "/healthz",
        200,
        Duration::from_secs(20),
    )
    .await
    {
        proc.alive()?;
        return Err(e);
    }
    Ok(ServerProc { proc, uds, ports })
}

/// A proxy-server process (`NAME-server`) and one proxy-agent process (`NAME-agent`)
/// connected to it.
pub(crate) struct TunnelProcs {
    pub(crate) server: ServerProc,
    pub(crate) agent: Proc,
}

impl TunnelProcs {
    /// Starts our proxy-server and proxy-agent from `bin_dir`; returns once the server
    /// reports the agent ready (/readyz).
    pub(crate) async fn start(
        name: &str,
        mode: &str,
        bin_dir: &Path,
        pki: &Pki,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let server = bin(bin_dir, "proxy-server")?;
        let agent = bin(bin_dir, "proxy-agent")?;
        Self::start_programs(name, mode, (&server, &[]), &agent, pki, dir).await
    }

    /// Starts `server_program` (with its `extra` flags beside upstream's) and
    /// `agent_program` (ours or upstream's: both take upstream's flags); returns once the
    /// server reports the agent ready (/readyz).
    pub(crate) async fn start_programs(
        name: &str,
        mode: &str,
        (server_program, extra): (&Path, &[String]),
        agent_program: &Path,
        pki: &Pki,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let ports = ServerPorts::free();
        let mut server = start_server_proc_on(
            &format!("{name}-server"),
            mode,
            server_program,
            pki,
            dir,
            ports,
            extra,
        )
        .await?;
        let args = AgentArgv::new("bench-node", pki, "127.0.0.1", server.ports.agent)
            .ports(free_port())
            .build();
        let agent_name = format!("{name}-agent");
        let mut agent =
            Proc::spawn_with_env(&agent_name, agent_program, &args, IMAGE_ENV, None, dir)?;
        if let Err(e) = wait_http(
            &server.ports.health_addr(),
            "/readyz",
            200,
            Duration::from_secs(20),
        )
        .await
        {
            agent.alive()?;
            server.proc.alive()?;
            return Err(e);
        }
        Ok(Self { server, agent })
    }

    pub(crate) fn frontend(&self) -> Frontend {
        Frontend::Uds(self.server.uds.clone())
    }

    /// Fails (with the log's tail) if either process exited.
    pub(crate) fn alive(&mut self) -> anyhow::Result<()> {
        self.server.proc.alive()?;
        self.agent.alive()
    }
}

/// The null tunnel in a process of its own (`konnectivity bench-null`) with three
/// entrances: `addrs[0]` to `source` and `addrs[1]` to `echo` over a TLS middle hop
/// (the agent link's certificates), `addrs[2]` to `echo` over a plain middle hop.
pub(crate) fn start_null(
    pki: &Pki,
    source: SocketAddr,
    echo: SocketAddr,
) -> anyhow::Result<Helper> {
    start_null_to(pki, &[source, echo], &[echo])
}

/// `konnectivity bench-null` with an entrance per backend in `tls` (TLS middle hop,
/// the agent link's certificates), then one per backend in `plain` (plain middle hop):
/// `addrs` in that order.
pub(crate) fn start_null_to(
    pki: &Pki,
    tls: &[SocketAddr],
    plain: &[SocketAddr],
) -> anyhow::Result<Helper> {
    let p = |x: &Path| x.display().to_string();
    let mut args = vec!["bench-null".to_owned()];
    args.extend(tls.iter().map(|t| format!("--target={t}")));
    args.extend([
        format!("--ca={}", p(&pki.ca)),
        format!("--cert={}", p(&pki.server_cert)),
        format!("--key={}", p(&pki.server_key)),
        format!("--client-cert={}", p(&pki.agent_cert)),
        format!("--client-key={}", p(&pki.agent_key)),
    ]);
    args.extend(plain.iter().map(|t| format!("--plain-target={t}")));
    Helper::start(&args, tls.len() + plain.len())
}
