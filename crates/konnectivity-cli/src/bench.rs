//! `konnectivity bench`: how fast the tunnel is, as ratios against baselines measured
//! in the same run on the same machine.
//!
//! Everything runs on loopback. Three kinds of set-up:
//!
//! * **In-process** (throughput, connection set-up, latency, stalled reader): a
//!   proxy-server (gRPC frontend on a UNIX socket, HTTP-CONNECT frontend on a second
//!   UNIX socket) and a proxy-agent started with the library APIs inside this process,
//!   plus loopback backends (byte source, byte sink, echo). The client is
//!   `konnectivity_client::grpc_dial` (one Proxy stream on its own HTTP/2 connection,
//!   what kube-apiserver's konnectivity-client does) or `connect_dial`.
//!   The baselines share the process and the tokio runtime (one worker per CPU):
//!   **direct** (client → backend) and the **null tunnel** (client → relay S → relay A
//!   → backend, one upstream connection per client connection, S→A either TLS with
//!   the agent link's own rustls configurations — a full handshake per connection — or
//!   plain TCP; relays copy with `copy_bidirectional_with_sizes`, 64 KiB buffers, no
//!   framing). The null tunnel has the tunnel's hops and crypto and nothing else.
//! * **Separate processes** (memory, latency beside bulk): the real `proxy-server`
//!   and `proxy-agent` binaries from the directory of this executable.
//!   - Memory: their resident memory is read from `/proc/<pid>/status`. The idle
//!     connections' echo backend runs in a helper process (`konnectivity
//!     bench-backend`) to keep file descriptors apart.
//!   - Latency (`rtt`, besides the in-process figures): under saturation the
//!     in-process numbers measure this process's tokio scheduling (a task copying
//!     64 KiB runs for milliseconds per poll, even in the null tunnel), not the
//!     tunnel's head-of-line blocking. So the 1-byte round trips are also measured
//!     the way they happen in a deployment: two proxy-server processes (gRPC and
//!     HTTP-CONNECT frontend, each on a UNIX socket), each with its own proxy-agent
//!     process, and the null tunnel (TLS middle hop) in a process of its own
//!     (`konnectivity bench-null`), each carrying the bulk download and the round
//!     trips on its one runtime. The measuring client runs on a dedicated OS thread
//!     with a current-thread runtime, the echo backend on dedicated OS threads with
//!     blocking sockets; only the bulk source and its reader share this process's
//!     multi-thread runtime.
//! * **Scale**: one `proxy-server` process and N agents run as tasks inside this
//!   process (the agent library, each with its own agent ID and TCP/TLS connection, TLS
//!   session resumption off so every agent pays a full handshake like a cold node).
//!
//! Every transfer checks its byte count and contents, every loop is bounded in count
//! and time, and the results go to a JSON file and a table.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use konnectivity_agent::{Agent, Hello};
use konnectivity_client::{Frontend, Io};
use konnectivity_server::{FrontendListener, Listeners, Mode, Settings, Shared};
use konnectivity_testkit::pki::Pki;
use konnectivity_tls::{ClientConfig, ServerConfig, ServerName, TlsAcceptor, TlsConnector};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_util::sync::CancellationToken;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Period of the test pattern: odd, so no read or write size lines up with it.
const PERIOD: usize = (1 << 20) + 13;
/// Largest read or write of the load generators.
const MAX_IO: usize = 256 * 1024;
/// Write size of the source and of uploads (the research probes' 128 KiB writes).
const WRITE: usize = 128 * 1024;
/// Timeout of one dial, and of one read or write that should make progress.
const STEP: Duration = Duration::from_secs(30);
const DIAL: Duration = Duration::from_secs(10);

/// Which measurements to run.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bulk throughput, one connection (download and upload).
    Bulk,
    /// Bulk throughput, parallel connections.
    Parallel,
    /// Connection set-up: dial + first byte.
    Dial,
    /// Interactive 1-byte round trips, alone and beside a bulk transfer: in-process,
    /// and through separate proxy-server, proxy-agent and null-tunnel processes.
    Rtt,
    /// A healthy connection beside one whose reader stopped.
    Stalled,
    /// Resident memory of proxy-server and proxy-agent processes with idle connections.
    Memory,
    /// N agents connecting to one proxy-server process.
    Scale,
}

/// `konnectivity bench` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// A seconds-long run with tiny sizes and counts (for CI). Byte counts and
    /// contents are still checked, so it fails when the tunnel breaks.
    #[arg(long)]
    pub smoke: bool,
    /// Bytes per bulk transfer (suffix KiB, MiB or GiB) [default: 1GiB; smoke 8MiB].
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Parallel connections of the parallel bulk test; each moves SIZE/N [default: 16].
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Dials per path in the connection set-up test [default: 2000; smoke 40].
    #[arg(long)]
    pub dials: Option<usize>,
    /// 1-byte round trips per path [default: 10000; smoke 300].
    #[arg(long)]
    pub rtt_samples: Option<usize>,
    /// Repetitions of each throughput measurement, interleaved across paths; the
    /// median is reported [default: 5; smoke 1].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Idle tunneled connection counts of the memory test, ascending
    /// [default: 1000,10000; smoke 20,100].
    #[arg(long, value_delimiter = ',')]
    pub idle_conns: Option<Vec<usize>>,
    /// Agent counts of the scale test [default: 1000,10000; smoke 10,50].
    #[arg(long, value_delimiter = ',')]
    pub agents: Option<Vec<usize>>,
    /// Run only these measurements (comma list) [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Option<Vec<Phase>>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    pub out: PathBuf,
    /// Directory holding proxy-server and proxy-agent [default: next to this binary].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Exit with failure when a target is missed (not only when a check fails).
    #[arg(long)]
    pub strict: bool,
    /// Per-connection flow-control window of the in-process tunnel (both directions),
    /// for experiments; the processes use the binaries' default [default: 1MiB].
    #[arg(long, value_parser = parse_size)]
    pub window: Option<u64>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = [
        ("GiB", GIB),
        ("MiB", MIB),
        ("KiB", KIB),
        ("G", GIB),
        ("M", MIB),
        ("K", KIB),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|e| format!("invalid size {s:?}: {e}"))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))?;
    if v < 16 * KIB {
        return Err(format!("size {s:?} is below 16KiB"));
    }
    Ok(v)
}

/// Resolved configuration.
#[derive(Debug, Clone)]
struct Cfg {
    smoke: bool,
    size: u64,
    parallel: usize,
    dials: usize,
    rtt_samples: usize,
    reps: usize,
    idle_conns: Vec<usize>,
    agents: Vec<usize>,
    phases: Vec<Phase>,
    stall_size: u64,
    window: u32,
    warmup_dials: usize,
    rtt_time_cap: Duration,
    scale_deadline: Duration,
}

impl Cfg {
    fn from(a: &BenchArgs) -> anyhow::Result<Self> {
        let smoke = a.smoke;
        let size = a.size.unwrap_or(if smoke { 8 * MIB } else { GIB });
        let parallel = a.parallel.unwrap_or(16).max(1);
        let mut idle_conns = a.idle_conns.clone().unwrap_or(if smoke {
            vec![20, 100]
        } else {
            vec![1000, 10_000]
        });
        idle_conns.sort_unstable();
        idle_conns.dedup();
        idle_conns.retain(|&n| n > 0);
        let mut agents = a.agents.clone().unwrap_or(if smoke {
            vec![10, 50]
        } else {
            vec![1000, 10_000]
        });
        agents.sort_unstable();
        agents.dedup();
        agents.retain(|&n| n > 0);
        let phases = a.only.clone().unwrap_or_else(|| {
            vec![
                Phase::Bulk,
                Phase::Parallel,
                Phase::Dial,
                Phase::Rtt,
                Phase::Stalled,
                Phase::Memory,
                Phase::Scale,
            ]
        });
        ensure!(
            !phases.contains(&Phase::Memory) || !idle_conns.is_empty(),
            "--idle-conns is empty"
        );
        ensure!(
            !phases.contains(&Phase::Scale) || !agents.is_empty(),
            "--agents is empty"
        );
        Ok(Self {
            smoke,
            size,
            parallel,
            dials: a.dials.unwrap_or(if smoke { 40 } else { 2000 }).max(1),
            rtt_samples: a
                .rtt_samples
                .unwrap_or(if smoke { 300 } else { 10_000 })
                .max(1),
            reps: a.reps.unwrap_or(if smoke { 1 } else { 5 }).max(1),
            idle_conns,
            agents,
            phases,
            stall_size: (size / 4).max(MIB),
            window: match a.window {
                Some(w) => u32::try_from(w).context("--window must be below 4GiB")?,
                None => konnectivity_core::flow::DEFAULT_WINDOW,
            },
            warmup_dials: if smoke { 3 } else { 50 },
            rtt_time_cap: Duration::from_secs(if smoke { 10 } else { 60 }),
            scale_deadline: Duration::from_secs(if smoke { 30 } else { 120 }),
        })
    }

    fn has(&self, p: Phase) -> bool {
        self.phases.contains(&p)
    }
}

// ---------------------------------------------------------------------------------
// Test pattern and backends
// ---------------------------------------------------------------------------------

fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        (0..PERIOD + MAX_IO)
            .map(|i| konnectivity_testkit::servers::pattern_byte((i % PERIOD) as u64))
            .collect()
    })
}

/// `len` (≤ MAX_IO) bytes of the pattern starting at stream offset `off`.
fn pattern_at(off: u64, len: usize) -> &'static [u8] {
    let s = (off % PERIOD as u64) as usize;
    &pattern()[s..s + len.min(MAX_IO)]
}

/// Source: reads an 8-byte big-endian length n, writes n pattern bytes, closes.
async fn source_server() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(Ok(n)) = tokio::time::timeout(STEP, s.read_u64()).await else {
                    return;
                };
                let mut off = 0u64;
                while off < n {
                    let len = (n - off).min(WRITE as u64) as usize;
                    // No timeout: a stalled reader holds this write until it is closed.
                    if s.write_all(pattern_at(off, len)).await.is_err() {
                        return;
                    }
                    off += len as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Sink: reads a length n, then n bytes checked against the pattern, answers with
/// the count (u64::MAX when the contents were wrong), then waits for EOF.
async fn sink_server() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(Ok(n)) = tokio::time::timeout(STEP, s.read_u64()).await else {
                    return;
                };
                let mut buf = vec![0u8; MAX_IO];
                let mut off = 0u64;
                let mut ok = true;
                while off < n {
                    let want = (n - off).min(MAX_IO as u64) as usize;
                    let k = match tokio::time::timeout(STEP, s.read(&mut buf[..want])).await {
                        Ok(Ok(k)) if k > 0 => k,
                        _ => return,
                    };
                    if ok && buf[..k] != *pattern_at(off, k) {
                        ok = false;
                    }
                    off += k as u64;
                }
                let _ = s.write_u64(if ok { n } else { u64::MAX }).await;
                let _ = tokio::time::timeout(STEP, s.read(&mut buf[..1])).await;
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------
// Null tunnel
// ---------------------------------------------------------------------------------

/// TLS of the null tunnel's middle hop: the agent link's configurations.
struct NullTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

async fn relay<A, B>(mut a: A, mut b: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024).await;
}

/// Starts relay A (terminates the middle hop, connects to `target`) and relay S
/// (accepts clients, opens one middle-hop connection each). Returns S's address.
async fn null_tunnel(target: SocketAddr, tls: Option<Arc<NullTls>>) -> anyhow::Result<SocketAddr> {
    let a = TcpListener::bind("127.0.0.1:0").await?;
    let a_addr = a.local_addr()?;
    let tls_a = tls.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = a.accept().await {
            let tls = tls_a.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                match tls {
                    Some(t) => {
                        let Ok(Ok(s)) = tokio::time::timeout(DIAL, t.acceptor.accept(s)).await
                        else {
                            return;
                        };
                        let Ok(b) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = b.set_nodelay(true);
                        relay(s, b).await;
                    }
                    None => {
                        let Ok(b) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = b.set_nodelay(true);
                        relay(s, b).await;
                    }
                }
            });
        }
    });
    let s = TcpListener::bind("127.0.0.1:0").await?;
    let s_addr = s.local_addr()?;
    tokio::spawn(async move {
        while let Ok((c, _)) = s.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = c.set_nodelay(true);
                let Ok(up) = TcpStream::connect(a_addr).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                match tls {
                    Some(t) => {
                        let Ok(name) = ServerName::try_from("localhost") else {
                            return;
                        };
                        let Ok(Ok(up)) =
                            tokio::time::timeout(DIAL, t.connector.connect(name, up)).await
                        else {
                            return;
                        };
                        relay(c, up).await;
                    }
                    None => relay(c, up).await,
                }
            });
        }
    });
    Ok(s_addr)
}

/// The null tunnel's TLS from the agent link's configurations: the server
/// certificate on relay A, the agent's client certificate on relay S.
fn null_tls(
    ca: &Path,
    server_cert: &Path,
    server_key: &Path,
    agent_cert: &Path,
    agent_key: &Path,
) -> anyhow::Result<Arc<NullTls>> {
    let mut client = konnectivity_tls::agent_client(ca, Some((agent_cert, agent_key)), &[])?;
    // A full handshake per tunneled connection (perf-anchors §4.4).
    client.resumption = rustls::client::Resumption::disabled();
    let server: ServerConfig =
        konnectivity_tls::agent_listener(server_cert, server_key, Some(ca), Default::default())?;
    Ok(Arc::new(NullTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    }))
}

/// `konnectivity bench-null` flags (internal).
#[derive(clap::Args, Debug, Clone)]
pub struct NullArgs {
    /// Backend address; one null tunnel (TLS middle hop) per --target.
    #[arg(long, required = true)]
    target: Vec<SocketAddr>,
    /// CA of the middle hop's certificates.
    #[arg(long)]
    ca: PathBuf,
    /// Relay A's (server) certificate.
    #[arg(long)]
    cert: PathBuf,
    /// Its key.
    #[arg(long)]
    key: PathBuf,
    /// Relay S's (client) certificate.
    #[arg(long)]
    client_cert: PathBuf,
    /// Its key.
    #[arg(long)]
    client_key: PathBuf,
    /// Backend address of a null tunnel with a plain (no TLS) middle hop, the baseline
    /// of connection set-up; their entrances are printed after the TLS ones.
    #[arg(long)]
    plain_target: Vec<SocketAddr>,
}

/// `konnectivity bench-null`: the null tunnel in a process of its own (relays on this
/// process's multi-thread runtime, like proxy-server's and proxy-agent's). Prints the
/// entrance of each target's tunnel, one per line in --target order, and runs until
/// standard input closes.
pub async fn null_helper(a: NullArgs) -> anyhow::Result<()> {
    let tls = null_tls(&a.ca, &a.cert, &a.key, &a.client_cert, &a.client_key)?;
    let mut out = std::io::stdout();
    for t in &a.target {
        let entrance = null_tunnel(*t, Some(tls.clone()))
            .await
            .with_context(|| format!("null tunnel to {t}"))?;
        writeln!(out, "{entrance}")?;
    }
    for t in &a.plain_target {
        let entrance = null_tunnel(*t, None)
            .await
            .with_context(|| format!("plain null tunnel to {t}"))?;
        writeln!(out, "{entrance}")?;
    }
    out.flush()?;
    let mut stdin = tokio::io::stdin();
    let mut b = [0u8; 64];
    while stdin.read(&mut b).await? > 0 {}
    Ok(())
}

// ---------------------------------------------------------------------------------
// The paths a client can take to a backend
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathKind {
    Direct,
    NullPlain,
    NullTls,
    Grpc,
    Connect,
}

impl PathKind {
    fn key(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::NullPlain => "null_plain",
            PathKind::NullTls => "null_tls",
            PathKind::Grpc => "grpc_uds",
            PathKind::Connect => "http_connect_uds",
        }
    }
}

/// One backend and its null-tunnel entrances.
#[derive(Debug, Clone, Copy)]
struct Target {
    addr: SocketAddr,
    null_plain: SocketAddr,
    null_tls: SocketAddr,
}

type BoxIo = Box<dyn Io>;

/// The in-process world: backends, null tunnels, and the tunnel's frontends.
struct World {
    source: Target,
    sink: Target,
    echo: Target,
    grpc: Frontend,
    connect: Frontend,
}

async fn tcp(addr: SocketAddr) -> anyhow::Result<BoxIo> {
    let s = tokio::time::timeout(DIAL, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let _ = s.set_nodelay(true);
    Ok(Box::new(s))
}

/// `addr` through a gRPC frontend (one Proxy stream on its own HTTP/2 connection).
async fn grpc(f: &Frontend, addr: SocketAddr) -> anyhow::Result<BoxIo> {
    Ok(Box::new(
        konnectivity_client::grpc_dial(f, &addr.to_string(), DIAL).await?,
    ))
}

/// `addr` through an HTTP-CONNECT frontend.
async fn connect(f: &Frontend, addr: SocketAddr) -> anyhow::Result<BoxIo> {
    let (io, rest) = konnectivity_client::connect_dial(f, &addr.to_string(), DIAL).await?;
    ensure!(
        rest.is_empty(),
        "unexpected bytes after the CONNECT response"
    );
    Ok(std::pin::Pin::into_inner(io))
}

impl World {
    async fn open(&self, p: PathKind, t: &Target) -> anyhow::Result<BoxIo> {
        match p {
            PathKind::Direct => tcp(t.addr).await,
            PathKind::NullPlain => tcp(t.null_plain).await,
            PathKind::NullTls => tcp(t.null_tls).await,
            PathKind::Grpc => grpc(&self.grpc, t.addr).await,
            PathKind::Connect => connect(&self.connect, t.addr).await,
        }
    }
}

// ---------------------------------------------------------------------------------
// Load generators (each checks counts and contents)
// ---------------------------------------------------------------------------------

fn deadline_for(n: u64) -> tokio::time::Instant {
    // At least 1 MB/s, plus slack: a hung transfer fails instead of running forever.
    tokio::time::Instant::now() + STEP + Duration::from_secs(n / 1_000_000)
}

async fn timed<F: std::future::Future>(
    deadline: tokio::time::Instant,
    what: &str,
    f: F,
) -> anyhow::Result<F::Output> {
    let step = tokio::time::Instant::now() + STEP;
    tokio::time::timeout_at(step.min(deadline), f)
        .await
        .map_err(|_| anyhow::anyhow!("timed out: {what}"))
}

/// Asks the source for `n` bytes and reads and checks them. Returns when the last
/// byte arrived; then checks that the stream ends there.
async fn download(io: &mut BoxIo, n: u64) -> anyhow::Result<Instant> {
    let deadline = deadline_for(n);
    io.write_u64(n).await?;
    io.flush().await?;
    let mut buf = vec![0u8; MAX_IO];
    let mut off = 0u64;
    while off < n {
        let k = timed(deadline, "download read", io.read(&mut buf)).await??;
        ensure!(k > 0, "EOF after {off} of {n} bytes");
        ensure!(
            off + k as u64 <= n,
            "received more than the {n} bytes requested"
        );
        ensure!(
            buf[..k] == *pattern_at(off, k),
            "corrupted data at offset {off}"
        );
        off += k as u64;
    }
    let end = Instant::now();
    let k = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf[..1]))
        .await
        .context("no end of stream after the transfer")??;
    ensure!(k == 0, "bytes after the {n} requested");
    Ok(end)
}

/// Sends `n` pattern bytes to the sink and waits for its count.
async fn upload(io: &mut BoxIo, n: u64) -> anyhow::Result<Instant> {
    let deadline = deadline_for(n);
    io.write_u64(n).await?;
    let mut off = 0u64;
    while off < n {
        let len = (n - off).min(WRITE as u64) as usize;
        timed(deadline, "upload write", io.write_all(pattern_at(off, len))).await??;
        off += len as u64;
    }
    io.flush().await?;
    let ack = timed(deadline, "sink acknowledgement", io.read_u64()).await??;
    let end = Instant::now();
    ensure!(
        ack != u64::MAX,
        "the sink received corrupted data through this path"
    );
    ensure!(ack == n, "the sink received {ack} of {n} bytes");
    let _ = io.shutdown().await;
    let mut b = [0u8; 1];
    let k = tokio::time::timeout(Duration::from_secs(10), io.read(&mut b))
        .await
        .context("no end of stream after the upload")??;
    ensure!(k == 0, "unexpected bytes from the sink");
    Ok(end)
}

/// One dial + first echoed byte.
async fn dial_once(w: &World, p: PathKind, seq: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let io = w.open(p, &w.echo).await?;
    first_echo(io, seq, t).await
}

/// Writes one byte on a just-opened echo connection and reads it back; returns the time
/// since `t` (when the dial started).
async fn first_echo(mut io: BoxIo, seq: usize, t: Instant) -> anyhow::Result<Duration> {
    let b = (seq % 251) as u8;
    io.write_all(&[b]).await?;
    io.flush().await?;
    let mut r = [0u8; 1];
    tokio::time::timeout(DIAL, io.read_exact(&mut r))
        .await
        .context("first byte timed out")??;
    let d = t.elapsed();
    ensure!(r[0] == b, "echo returned {} instead of {b}", r[0]);
    Ok(d)
}

/// 1-byte round trips on an open echo connection: up to `n` samples or `cap` time.
async fn round_trips(
    io: &mut BoxIo,
    n: usize,
    warmup: usize,
    cap: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let started = Instant::now();
    let mut out = Vec::with_capacity(n);
    let mut r = [0u8; 1];
    for i in 0..warmup + n {
        let b = (i % 253) as u8;
        let t = Instant::now();
        io.write_all(&[b]).await?;
        io.flush().await?;
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut r))
            .await
            .context("echo round trip timed out")??;
        let d = t.elapsed();
        ensure!(r[0] == b, "echo returned {} instead of {b}", r[0]);
        if i >= warmup {
            out.push(d);
        }
        if started.elapsed() > cap {
            break;
        }
    }
    Ok(out)
}

/// Reads and checks the pattern from a source connection until `stop` (or `max`
/// bytes), counting into `moved`. The background load of the latency test.
async fn stream_until(
    mut io: BoxIo,
    max: u64,
    stop: Arc<AtomicBool>,
    moved: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    io.write_u64(max).await?;
    io.flush().await?;
    let mut buf = vec![0u8; MAX_IO];
    let mut off = 0u64;
    while off < max && !stop.load(Ordering::Relaxed) {
        let k = tokio::time::timeout(STEP, io.read(&mut buf))
            .await
            .context("background transfer stalled")??;
        ensure!(k > 0, "background transfer ended after {off} bytes");
        ensure!(
            buf[..k] == *pattern_at(off, k),
            "background transfer corrupted at offset {off}"
        );
        off += k as u64;
        moved.fetch_add(k as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// A continuous download ([`stream_until`]) on this runtime: the load beside the
/// round trips.
struct Background {
    stop: Arc<AtomicBool>,
    moved: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Background {
    /// Starts reading from `io`, a source connection, and returns once 8 MiB have
    /// arrived: the transfer is really running.
    async fn start(io: BoxIo, what: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let moved = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(stream_until(io, 1 << 40, stop.clone(), moved.clone()));
        let t = Instant::now();
        while moved.load(Ordering::Relaxed) < 8 * MIB {
            if task.is_finished() || t.elapsed() > STEP {
                stop.store(true, Ordering::Relaxed);
                let r = tokio::time::timeout(STEP, task).await;
                bail!(
                    "background transfer via {what} did not start: {:?}",
                    r.map(|r| r.map(|r| r.err()))
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self { stop, moved, task })
    }

    /// Bytes received and checked so far.
    fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Stops the transfer; fails if it broke (wrong bytes, stall, early end).
    async fn finish(self, what: &str) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(STEP, self.task)
            .await
            .context("background transfer did not stop")?
            .context("background transfer task")?
            .with_context(|| format!("background transfer via {what}"))
    }
}

// ---------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64().max(1e-9) / 1e9
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn summary(v: &[f64]) -> Value {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({ "median": round(median(v)), "min": round(min), "max": round(max), "runs": v.iter().map(|x| round(*x)).collect::<Vec<_>>() })
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Percentile (nearest rank) of sorted samples, in µs.
fn pct_us(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let n = sorted.len();
    let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[i].as_secs_f64() * 1e6
}

fn latency(samples: &mut [Duration]) -> Value {
    samples.sort_unstable();
    json!({
        "samples": samples.len(),
        "p50_us": round(pct_us(samples, 0.50)),
        "p90_us": round(pct_us(samples, 0.90)),
        "p99_us": round(pct_us(samples, 0.99)),
        "p999_us": round(pct_us(samples, 0.999)),
        "max_us": round(samples.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)),
    })
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------
// Results: JSON and the table
// ---------------------------------------------------------------------------------

/// One line of the target table.
struct Row {
    id: &'static str,
    label: String,
    value: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    /// "issue" (issue 6) or "research" (perf-anchors §5.4, informational).
    source: &'static str,
    pass: Option<bool>,
    /// The number the target is judged on (ratio or absolute, in `unit`).
    judged: f64,
    unit: &'static str,
}

#[derive(Default)]
struct Results {
    measurements: serde_json::Map<String, Value>,
    rows: Vec<Row>,
}

impl Results {
    #[allow(clippy::too_many_arguments)]
    fn ratio_row(
        &mut self,
        id: &'static str,
        label: String,
        value: String,
        baseline: String,
        ratio: f64,
        at_least: bool,
        bound: f64,
        source: &'static str,
    ) {
        let pass = if ratio.is_finite() {
            Some(if at_least {
                ratio >= bound
            } else {
                ratio <= bound
            })
        } else {
            None
        };
        let target = if at_least {
            format!("≥ {bound}×")
        } else {
            format!("≤ {bound}×")
        };
        self.rows.push(Row {
            id,
            label,
            value,
            baseline,
            ratio: Some(ratio),
            target,
            source,
            pass,
            judged: ratio,
            unit: "ratio",
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn abs_row(
        &mut self,
        id: &'static str,
        label: String,
        value: String,
        judged: f64,
        bound: f64,
        target: String,
        unit: &'static str,
        source: &'static str,
    ) {
        let pass = judged.is_finite().then_some(judged <= bound);
        self.rows.push(Row {
            id,
            label,
            value,
            baseline: "—".into(),
            ratio: None,
            target,
            source,
            pass,
            judged,
            unit,
        });
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

// ---------------------------------------------------------------------------------
// The in-process tunnel
// ---------------------------------------------------------------------------------

struct InProc {
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), konnectivity_server::ServerError>>,
    agent: tokio::task::JoinHandle<()>,
}

async fn start_inproc(
    pki: &Pki,
    dir: &Path,
    window: u32,
) -> anyhow::Result<(InProc, Frontend, Frontend)> {
    let agent_l = TcpListener::bind("127.0.0.1:0").await?;
    let agent_port = agent_l.local_addr()?.port();
    let grpc_sock = dir.join("grpc.sock");
    let connect_sock = dir.join("connect.sock");
    let _ = std::fs::remove_file(&grpc_sock);
    let _ = std::fs::remove_file(&connect_sock);
    let agent_tls = konnectivity_tls::agent_listener(
        &pki.server_cert,
        &pki.server_key,
        Some(&pki.ca),
        Default::default(),
    )?;
    let shutdown = CancellationToken::new();
    let shared = Shared::new(Settings {
        server_id: "bench-server".into(),
        flow_window: Some(window),
        ..Settings::default()
    });
    let listeners = Listeners {
        agent: agent_l,
        agent_tls: Arc::new(agent_tls),
        frontends: vec![
            konnectivity_server::Frontend {
                mode: Mode::Grpc,
                listener: FrontendListener::Uds(UnixListener::bind(&grpc_sock)?),
            },
            konnectivity_server::Frontend {
                mode: Mode::HttpConnect,
                listener: FrontendListener::Uds(UnixListener::bind(&connect_sock)?),
            },
        ],
        health: None,
        admin: None,
    };
    let server = tokio::spawn(konnectivity_server::run_with(
        shared.clone(),
        listeners,
        shutdown.clone(),
    ));
    let tls =
        konnectivity_tls::agent_client(&pki.ca, Some((&pki.agent_cert, &pki.agent_key)), &[])?;
    let mut settings = agent_settings(
        agent_port,
        Arc::new(tls),
        "bench-node".into(),
        Duration::from_millis(200),
        Duration::from_secs(2),
    );
    settings.hello.flow_window = Some(window);
    let agent = Agent::new(settings);
    let agent = tokio::spawn(konnectivity_agent::run(
        agent,
        None,
        None,
        CancellationToken::new(),
        shutdown.clone(),
    ));
    let started = Instant::now();
    while !shared.ready() {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the in-process agent did not connect within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((
        InProc {
            shutdown,
            server,
            agent,
        },
        Frontend::Uds(grpc_sock),
        Frontend::Uds(connect_sock),
    ))
}

fn agent_settings(
    port: u16,
    tls: Arc<ClientConfig>,
    agent_id: String,
    sync_interval: Duration,
    sync_interval_cap: Duration,
) -> konnectivity_agent::Settings {
    konnectivity_agent::Settings {
        hosts: vec!["127.0.0.1".into()],
        port,
        tls,
        hello: Hello {
            agent_id,
            identifiers: String::new(),
            token_path: None,
            flow_window: Some(konnectivity_core::flow::DEFAULT_WINDOW),
        },
        sync_interval,
        sync_interval_cap,
        sync_forever: false,
        // upstream's default --keepalive-time for the agent
        keepalive: Duration::from_secs(3600),
        max_chunk: konnectivity_core::flow::MAX_CHUNK,
        leases: None,
        drain_timeout: Duration::from_secs(300),
        policy: Default::default(),
    }
}

// ---------------------------------------------------------------------------------
// Phases: in-process
// ---------------------------------------------------------------------------------

/// Bulk transfers, one connection per transfer, `reps` rounds interleaved over `paths`.
async fn bulk_rounds(
    w: &World,
    cfg: &Cfg,
    paths: &[PathKind],
    conns: usize,
    up: bool,
    what: &str,
) -> anyhow::Result<BTreeMap<PathKind, Vec<f64>>> {
    let per = (cfg.size / conns as u64).max(1);
    let total = per * conns as u64;
    let target = if up { &w.sink } else { &w.source };
    let mut rates: BTreeMap<PathKind, Vec<f64>> = BTreeMap::new();
    // Warm-up: one small transfer per path (first TLS handshakes, allocator growth).
    for &p in paths {
        let mut io = w.open(p, target).await?;
        let n = (4 * MIB).min(per);
        if up {
            upload(&mut io, n).await
        } else {
            download(&mut io, n).await
        }
        .with_context(|| format!("{what} warm-up via {}", p.key()))?;
    }
    for rep in 0..cfg.reps {
        for &p in paths {
            let mut ios = Vec::with_capacity(conns);
            for _ in 0..conns {
                ios.push(w.open(p, target).await?);
            }
            let start = Instant::now();
            let ends = futures::future::join_all(ios.into_iter().map(|mut io| async move {
                if up {
                    upload(&mut io, per).await
                } else {
                    download(&mut io, per).await
                }
            }))
            .await;
            let mut last = start;
            for e in ends {
                last = last.max(e.with_context(|| format!("{what} via {}", p.key()))?);
            }
            let r = gbps(total, last - start);
            progress(format!(
                "{what} rep {}/{} {:<17} {r:6.2} Gbit/s",
                rep + 1,
                cfg.reps,
                p.key()
            ));
            rates.entry(p).or_default().push(r);
        }
    }
    Ok(rates)
}

fn rates_json(rates: &BTreeMap<PathKind, Vec<f64>>) -> serde_json::Map<String, Value> {
    rates
        .iter()
        .map(|(p, v)| (format!("{}_gbps", p.key()), summary(v)))
        .collect()
}

fn med(rates: &BTreeMap<PathKind, Vec<f64>>, p: PathKind) -> f64 {
    rates.get(&p).map_or(f64::NAN, |v| median(v))
}

async fn phase_bulk(w: &World, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    use PathKind::*;
    let paths = [Direct, NullPlain, NullTls, Grpc, Connect];
    let down = bulk_rounds(w, cfg, &paths, 1, false, "bulk download").await?;
    let mut m = rates_json(&down);
    m.insert("bytes".into(), json!(cfg.size));
    m.insert("direction".into(), json!("download (backend → client)"));
    let g = med(&down, Grpc) / med(&down, NullTls);
    let c = med(&down, Connect) / med(&down, NullTls);
    m.insert("ratio_grpc_vs_null_tls".into(), json!(round(g)));
    m.insert("ratio_connect_vs_null_tls".into(), json!(round(c)));
    m.insert(
        "ratio_grpc_vs_direct".into(),
        json!(round(med(&down, Grpc) / med(&down, Direct))),
    );
    res.measurements
        .insert("bulk_1conn".into(), Value::Object(m));
    let size = human_bytes(cfg.size);
    res.ratio_row(
        "bulk_1conn",
        format!("bulk 1 conn {size} download, gRPC/UDS"),
        format!("{:.2} Gbit/s", med(&down, Grpc)),
        format!(
            "null {:.2} (direct {:.2})",
            med(&down, NullTls),
            med(&down, Direct)
        ),
        g,
        true,
        0.85,
        "issue",
    );
    res.ratio_row(
        "bulk_1conn_connect",
        format!("bulk 1 conn {size} download, HTTP-CONNECT/UDS"),
        format!("{:.2} Gbit/s", med(&down, Connect)),
        format!("null {:.2}", med(&down, NullTls)),
        c,
        true,
        0.85,
        "issue",
    );

    let upl = bulk_rounds(w, cfg, &[Direct, NullTls, Grpc], 1, true, "bulk upload").await?;
    let mut m = rates_json(&upl);
    m.insert("bytes".into(), json!(cfg.size));
    m.insert("direction".into(), json!("upload (client → backend)"));
    let g = med(&upl, Grpc) / med(&upl, NullTls);
    m.insert("ratio_grpc_vs_null_tls".into(), json!(round(g)));
    res.measurements
        .insert("bulk_1conn_upload".into(), Value::Object(m));
    res.ratio_row(
        "bulk_1conn_upload",
        format!("bulk 1 conn {size} upload, gRPC/UDS"),
        format!("{:.2} Gbit/s", med(&upl, Grpc)),
        format!(
            "null {:.2} (direct {:.2})",
            med(&upl, NullTls),
            med(&upl, Direct)
        ),
        g,
        true,
        0.85,
        "issue",
    );
    Ok(())
}

async fn phase_parallel(w: &World, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    use PathKind::*;
    let n = cfg.parallel;
    let r = bulk_rounds(
        w,
        cfg,
        &[Direct, NullTls, Grpc, Connect],
        n,
        false,
        &format!("bulk {n} conns"),
    )
    .await?;
    let mut m = rates_json(&r);
    m.insert("connections".into(), json!(n));
    m.insert("bytes_total".into(), json!(cfg.size / n as u64 * n as u64));
    let g = med(&r, Grpc) / med(&r, NullTls);
    m.insert("ratio_grpc_vs_null_tls".into(), json!(round(g)));
    m.insert(
        "ratio_connect_vs_null_tls".into(),
        json!(round(med(&r, Connect) / med(&r, NullTls))),
    );
    res.measurements
        .insert("bulk_parallel".into(), Value::Object(m));
    res.ratio_row(
        "bulk_parallel",
        format!(
            "bulk {n} conns × {}, gRPC/UDS",
            human_bytes(cfg.size / n as u64)
        ),
        format!("{:.2} Gbit/s", med(&r, Grpc)),
        format!(
            "null {:.2} (direct {:.2})",
            med(&r, NullTls),
            med(&r, Direct)
        ),
        g,
        true,
        0.85,
        "issue",
    );
    Ok(())
}

async fn phase_dial(w: &World, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    use PathKind::*;
    let paths = [Direct, NullPlain, NullTls, Grpc, Connect];
    for &p in &paths {
        for i in 0..cfg.warmup_dials {
            dial_once(w, p, i)
                .await
                .with_context(|| format!("warm-up dial via {}", p.key()))?;
        }
    }
    let rounds = cfg.dials.min(10);
    let mut samples: BTreeMap<PathKind, Vec<Duration>> = BTreeMap::new();
    let started = Instant::now();
    for r in 0..rounds {
        let per = cfg.dials / rounds + usize::from(r < cfg.dials % rounds);
        for &p in &paths {
            let v = samples.entry(p).or_default();
            for i in 0..per {
                v.push(
                    dial_once(w, p, i)
                        .await
                        .with_context(|| format!("dial via {}", p.key()))?,
                );
            }
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "dial test exceeded 10 minutes"
        );
    }
    let mut m = serde_json::Map::new();
    m.insert("dials_per_path".into(), json!(cfg.dials));
    m.insert(
        "what".into(),
        json!("new connection to an echo backend + 1 byte written and echoed back"),
    );
    for (p, v) in samples.iter_mut() {
        m.insert(p.key().into(), latency(v));
    }
    let o = Value::Object(m.clone());
    let p50 = |k: &str| num(&o, &[k, "p50_us"]);
    let p99 = |k: &str| num(&o, &[k, "p99_us"]);
    let g50 = p50("grpc_uds") / p50("null_plain");
    let c50 = p50("http_connect_uds") / p50("null_plain");
    let g99 = p99("grpc_uds") / p99("null_plain");
    m.insert("ratio_grpc_p50_vs_null_plain".into(), json!(round(g50)));
    m.insert(
        "ratio_grpc_p50_vs_null_tls".into(),
        json!(round(p50("grpc_uds") / p50("null_tls"))),
    );
    m.insert("ratio_grpc_p99_vs_null_plain".into(), json!(round(g99)));
    m.insert("ratio_connect_p50_vs_null_plain".into(), json!(round(c50)));
    res.measurements.insert("dial".into(), Value::Object(m));
    res.ratio_row(
        "dial_p50",
        "dial + first byte p50, gRPC/UDS".into(),
        format!("{:.0} µs", p50("grpc_uds")),
        format!(
            "null {:.0} (TLS/conn {:.0}, direct {:.0})",
            p50("null_plain"),
            p50("null_tls"),
            p50("direct")
        ),
        g50,
        false,
        1.2,
        "issue",
    );
    res.ratio_row(
        "dial_p50_connect",
        "dial + first byte p50, HTTP-CONNECT/UDS".into(),
        format!("{:.0} µs", p50("http_connect_uds")),
        format!("null {:.0}", p50("null_plain")),
        c50,
        false,
        1.2,
        "issue",
    );
    res.ratio_row(
        "dial_p99",
        "dial + first byte p99, gRPC/UDS".into(),
        format!("{:.0} µs", p99("grpc_uds")),
        format!(
            "null {:.0} (TLS/conn {:.0}, direct {:.0})",
            p99("null_plain"),
            p99("null_tls"),
            p99("direct")
        ),
        g99,
        false,
        1.5,
        "research",
    );
    Ok(())
}

async fn phase_rtt(w: &Arc<World>, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    use PathKind::*;
    let warm = cfg.rtt_samples.min(500);
    let mut alone = serde_json::Map::new();
    for p in [Direct, NullTls, Grpc, Connect] {
        let mut io = w.open(p, &w.echo).await?;
        let mut s = round_trips(&mut io, cfg.rtt_samples, warm, cfg.rtt_time_cap)
            .await
            .with_context(|| format!("round trips via {}", p.key()))?;
        ensure!(!s.is_empty(), "no round trip completed via {}", p.key());
        alone.insert(p.key().into(), latency(&mut s));
        progress(format!("rtt alone {:<17} done", p.key()));
    }
    let mut loaded = serde_json::Map::new();
    for p in [NullTls, Grpc, Connect] {
        let bulk = Background::start(w.open(p, &w.source).await?, p.key()).await?;
        let mut io = w.open(p, &w.echo).await?;
        let before = bulk.moved();
        let t0 = Instant::now();
        let r = round_trips(&mut io, cfg.rtt_samples, warm, cfg.rtt_time_cap).await;
        let window = t0.elapsed();
        let during = bulk.moved() - before;
        let b = bulk.finish(p.key()).await;
        let mut s =
            r.with_context(|| format!("round trips beside a bulk transfer via {}", p.key()))?;
        b?;
        ensure!(!s.is_empty(), "no round trip completed via {}", p.key());
        let mut l = latency(&mut s);
        l["background_gbps"] = json!(round(gbps(during, window)));
        loaded.insert(p.key().into(), l);
        progress(format!(
            "rtt beside bulk {:<17} done (bulk {:.2} Gbit/s meanwhile)",
            p.key(),
            gbps(during, window)
        ));
    }
    let a = Value::Object(alone.clone());
    let l = Value::Object(loaded.clone());
    let ratio50 = num(&a, &["grpc_uds", "p50_us"]) / num(&a, &["null_tls", "p50_us"]);
    res.measurements.insert(
        "rtt".into(),
        json!({
            "what": "1 byte written, echoed back, on an open connection",
            "paths": alone,
            "ratio_grpc_p50_vs_null_tls": round(ratio50),
            "ratio_grpc_p99_vs_null_tls": round(num(&a, &["grpc_uds", "p99_us"]) / num(&a, &["null_tls", "p99_us"])),
        }),
    );
    res.measurements.insert(
        "rtt_under_load".into(),
        json!({
            "what": "the same round trips while another connection of the same path (same agent) downloads continuously, all in this process on one multi-thread runtime: under saturation this measures the runtime's scheduling (the null tunnel too), see rtt_under_load_processes for the deployment-like figure",
            "paths": loaded,
        }),
    );
    res.ratio_row(
        "rtt_p50",
        "1-byte RTT p50 alone, gRPC/UDS".into(),
        format!("{:.0} µs", num(&a, &["grpc_uds", "p50_us"])),
        format!(
            "null {:.0} (direct {:.0})",
            num(&a, &["null_tls", "p50_us"]),
            num(&a, &["direct", "p50_us"])
        ),
        ratio50,
        false,
        1.25,
        "research",
    );
    let g99 = num(&l, &["grpc_uds", "p99_us"]);
    let n99 = num(&l, &["null_tls", "p99_us"]);
    res.rows.push(Row {
        id: "rtt_p99_loaded_inproc",
        label: "1-byte RTT p99 beside bulk, gRPC/UDS, in-process".into(),
        value: format!("{g99:.0} µs"),
        baseline: format!(
            "null {n99:.0}, CONNECT {:.0}",
            num(&l, &["http_connect_uds", "p99_us"])
        ),
        ratio: Some(g99 / n99),
        target: "—".into(),
        source: "info",
        pass: None,
        judged: g99,
        unit: "µs",
    });
    Ok(())
}

async fn phase_stalled(w: &World, cfg: &Cfg, res: &mut Results) -> anyhow::Result<()> {
    let n = cfg.stall_size;
    let p = PathKind::Grpc;
    let mut io = w.open(p, &w.source).await?;
    let t = Instant::now();
    download(&mut io, (8 * MIB).min(n)).await?;
    let _ = t;
    let reps = cfg.reps.max(if cfg.smoke { 1 } else { 3 });
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let mut io = w.open(p, &w.source).await?;
        let start = Instant::now();
        let end = download(&mut io, n)
            .await
            .context("healthy transfer alone")?;
        alone.push(gbps(n, end - start));

        // A connection asks for 1 TiB, reads 1 MiB, then stops reading.
        let mut stalled = w.open(p, &w.source).await?;
        stalled.write_u64(1 << 40).await?;
        stalled.flush().await?;
        let mut first = vec![0u8; MIB as usize];
        tokio::time::timeout(STEP, stalled.read_exact(&mut first))
            .await
            .context("stalled connection: first MiB")??;
        ensure!(
            first
                .chunks(MAX_IO)
                .enumerate()
                .all(|(i, c)| c == pattern_at((i * MAX_IO) as u64, c.len())),
            "stalled connection: corrupted first MiB"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut io = w.open(p, &w.source).await?;
        let start = Instant::now();
        let end = download(&mut io, n)
            .await
            .context("healthy transfer beside a stalled reader")?;
        beside.push(gbps(n, end - start));
        // The stalled connection is intact and resumes where it stopped.
        let mut more = vec![0u8; MIB as usize];
        tokio::time::timeout(STEP, stalled.read_exact(&mut more))
            .await
            .context("stalled connection did not resume")??;
        ensure!(
            more.chunks(MAX_IO)
                .enumerate()
                .all(|(i, c)| c == pattern_at(MIB + (i * MAX_IO) as u64, c.len())),
            "stalled connection: data lost or corrupted after resuming"
        );
        drop(stalled);
        progress(format!(
            "stalled reader rep {}/{reps}: alone {:.2}, beside stalled {:.2} Gbit/s",
            rep + 1,
            alone[rep],
            beside[rep]
        ));
    }
    let ratio = median(&beside) / median(&alone);
    res.measurements.insert(
        "stalled_reader".into(),
        json!({
            "path": p.key(),
            "bytes": n,
            "what": "a healthy download alone, and beside a connection of the same agent that asked for 1 TiB, read 1 MiB and stopped reading (alternating)",
            "alone_gbps": summary(&alone),
            "beside_stalled_gbps": summary(&beside),
            "ratio": round(ratio),
            "stalled_connection_resumed_intact": true,
        }),
    );
    res.ratio_row(
        "stalled_reader",
        format!("healthy conn beside a stalled reader ({})", human_bytes(n)),
        format!("{:.2} Gbit/s", median(&beside)),
        format!("alone {:.2}", median(&alone)),
        ratio,
        true,
        0.9,
        "issue",
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Separate processes
// ---------------------------------------------------------------------------------

/// A child process, killed (by its own PID) when dropped.
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, program: &Path, args: &[String], dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            child,
            name: name.into(),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "{} exited ({st}); last log lines:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A helper process running this executable (`konnectivity bench-backend`, the echo
/// backend; `konnectivity bench-null`, the null tunnel): it prints one address per
/// line and runs until its standard input closes.
struct Helper {
    child: Child,
    addrs: Vec<SocketAddr>,
}

impl Helper {
    /// Runs `konnectivity ARGS` and reads the `lines` addresses it prints.
    fn start(args: &[String], lines: usize) -> anyhow::Result<Self> {
        let name = args.first().map_or("helper", String::as_str).to_owned();
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(args)
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

    fn pid(&self) -> u32 {
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

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// CPU seconds (user + system) of a process; assumes USER_HZ = 100 (Linux default).
fn cpu_s(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// Waits until RSS stops moving (two readings 250 ms apart within 64 KiB), at most 5 s.
async fn settled_rss(pid: u32) -> u64 {
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

fn sockstat() -> String {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("TCP:")).map(str::to_owned))
        .unwrap_or_default()
}

/// A free port in upstream's accepted range (below the kernel's ephemeral range).
fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 600) as u16 * 20;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    0
}

/// A blocking HTTP/1.1 GET on loopback: (status, body).
fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.take(16 << 20).read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn wait_http(addr: &str, path: &str, status: u16, limit: Duration) -> anyhow::Result<()> {
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

fn ready_backends(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"default\"}",
            )
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

fn bin(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    ensure!(
        p.is_file(),
        "{} not found: build it next to this binary (`cargo build --release --bins`) or pass --bin-dir",
        p.display()
    );
    Ok(p)
}

struct ServerProc {
    proc: Proc,
    agent_port: u16,
    health: String,
    uds: PathBuf,
}

/// A proxy-server process with its frontend (`mode`: `grpc` or `http-connect`) on a
/// UNIX socket in `dir`; returns once /healthz answers.
async fn start_server_proc(
    name: &str,
    mode: &str,
    bin_dir: &Path,
    pki: &Pki,
    dir: &Path,
) -> anyhow::Result<ServerProc> {
    let (agent_port, health_port, admin_port) = (free_port(), free_port(), free_port());
    let uds = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&uds);
    let p = |x: &Path| x.display().to_string();
    let args = vec![
        format!("--mode={mode}"),
        format!("--uds-name={}", p(&uds)),
        "--server-port=0".into(),
        format!("--cluster-cert={}", p(&pki.server_cert)),
        format!("--cluster-key={}", p(&pki.server_key)),
        format!("--cluster-ca-cert={}", p(&pki.ca)),
        format!("--agent-port={agent_port}"),
        "--agent-bind-address=127.0.0.1".into(),
        format!("--health-port={health_port}"),
        "--health-bind-address=127.0.0.1".into(),
        format!("--admin-port={admin_port}"),
        "--admin-bind-address=127.0.0.1".into(),
        format!("--server-id={name}"),
    ];
    let mut proc = Proc::spawn(name, &bin(bin_dir, "proxy-server")?, &args, dir)?;
    let health = format!("127.0.0.1:{health_port}");
    if let Err(e) = wait_http(&health, "/healthz", 200, Duration::from_secs(20)).await {
        proc.alive()?;
        return Err(e);
    }
    Ok(ServerProc {
        proc,
        agent_port,
        health,
        uds,
    })
}

/// A proxy-server process (`NAME-server`) and one proxy-agent process (`NAME-agent`)
/// connected to it.
struct TunnelProcs {
    server: ServerProc,
    agent: Proc,
}

impl TunnelProcs {
    /// Starts both; returns once the server reports the agent ready (/readyz).
    async fn start(
        name: &str,
        mode: &str,
        bin_dir: &Path,
        pki: &Pki,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut server =
            start_server_proc(&format!("{name}-server"), mode, bin_dir, pki, dir).await?;
        let p = |x: &Path| x.display().to_string();
        let args = vec![
            format!("--ca-cert={}", p(&pki.ca)),
            format!("--agent-cert={}", p(&pki.agent_cert)),
            format!("--agent-key={}", p(&pki.agent_key)),
            "--proxy-server-host=127.0.0.1".into(),
            format!("--proxy-server-port={}", server.agent_port),
            format!("--health-server-port={}", free_port()),
            format!("--admin-server-port={}", free_port()),
            "--agent-id=bench-node".into(),
        ];
        let mut agent = Proc::spawn(
            &format!("{name}-agent"),
            &bin(bin_dir, "proxy-agent")?,
            &args,
            dir,
        )?;
        if let Err(e) = wait_http(&server.health, "/readyz", 200, Duration::from_secs(20)).await {
            agent.alive()?;
            server.proc.alive()?;
            return Err(e);
        }
        Ok(Self { server, agent })
    }

    fn frontend(&self) -> Frontend {
        Frontend::Uds(self.server.uds.clone())
    }

    /// Fails (with the log's tail) if either process exited.
    fn alive(&mut self) -> anyhow::Result<()> {
        self.server.proc.alive()?;
        self.agent.alive()
    }
}

/// Where a connection of the separate-process latency test goes: straight to an
/// address (a backend, or a null-tunnel entrance), or through a proxy-server frontend
/// to a backend.
#[derive(Clone)]
enum Hop {
    Tcp(SocketAddr),
    Grpc(Frontend, SocketAddr),
    Connect(Frontend, SocketAddr),
}

impl Hop {
    async fn open(&self) -> anyhow::Result<BoxIo> {
        match self {
            Hop::Tcp(a) => tcp(*a).await,
            Hop::Grpc(f, a) => grpc(f, *a).await,
            Hop::Connect(f, a) => connect(f, *a).await,
        }
    }
}

/// The echo backend on dedicated OS threads with blocking sockets (one accepting,
/// one per connection): echoing never waits for a runtime the load keeps busy.
/// Stops accepting when dropped; a connection's thread ends at its EOF.
struct EchoThreads {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl EchoThreads {
    fn start() -> anyhow::Result<Self> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding the echo backend")?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("bench-echo".into())
            .spawn(move || {
                for s in l.incoming() {
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    match s {
                        Ok(s) => {
                            let _ = std::thread::Builder::new()
                                .name("bench-echo-conn".into())
                                .spawn(move || echo_blocking(s));
                        }
                        // e.g. a connection reset before accept(): keep serving.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .context("starting the echo backend thread")?;
        Ok(Self { addr, stop })
    }
}

impl Drop for EchoThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then sees `stop`.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn echo_blocking(mut s: std::net::TcpStream) {
    let _ = s.set_nodelay(true);
    // Bounded: a connection silent this long is abandoned.
    let _ = s.set_read_timeout(Some(2 * STEP));
    let mut b = [0u8; 4096];
    while let Ok(k) = s.read(&mut b) {
        if k == 0 || s.write_all(&b[..k]).is_err() {
            return;
        }
    }
}

/// [`round_trips`] on a new connection through `hop`, from a dedicated OS thread with
/// its own current-thread runtime: the measuring client never waits behind the load
/// generators' tasks on this process's runtime.
async fn round_trips_on_thread(
    hop: Hop,
    n: usize,
    warmup: usize,
    cap: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let rx = on_own_thread("round-trip", async move {
        let mut io = hop.open().await?;
        let s = round_trips(&mut io, n, warmup, cap).await?;
        let _ = io.shutdown().await;
        Ok(s)
    })?;
    // The dial is bounded by DIAL, the round trips by `cap` plus one trip's timeout.
    tokio::time::timeout(cap + DIAL + STEP, rx)
        .await
        .context("the round-trip thread did not finish")?
        .context("the round-trip thread ended without a result")?
}

/// Runs `work` on a new OS thread with its own current-thread runtime; its result
/// arrives on the returned receiver.
fn on_own_thread<T: Send + 'static>(
    what: &'static str,
    work: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<T>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("bench-{what}"))
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .with_context(|| format!("the {what} thread's runtime"))
                .and_then(|rt| rt.block_on(work));
            let _ = tx.send(r);
        })
        .with_context(|| format!("starting the {what} thread"))?;
    Ok(rx)
}

/// Dial + first echoed byte through each hop, `n` times, interleaved in ten rounds,
/// from a dedicated OS thread with its own current-thread runtime (as
/// [`round_trips_on_thread`]): the dialing client's own wake-ups stay on one thread.
async fn dials_on_thread(
    hops: Vec<(&'static str, Hop)>,
    n: usize,
    warmup: usize,
) -> anyhow::Result<BTreeMap<&'static str, Vec<Duration>>> {
    async fn once(hop: &Hop, seq: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let io = hop.open().await?;
        first_echo(io, seq, t).await
    }
    let rx = on_own_thread("dialing", async move {
        let mut out: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
        for (key, hop) in &hops {
            for i in 0..warmup {
                once(hop, i)
                    .await
                    .with_context(|| format!("warm-up dial via {key}"))?;
            }
        }
        let rounds = n.clamp(1, 10);
        let started = Instant::now();
        for r in 0..rounds {
            let per = n / rounds + usize::from(r < n % rounds);
            for (key, hop) in &hops {
                let v = out.entry(key).or_default();
                for i in 0..per {
                    v.push(
                        once(hop, i)
                            .await
                            .with_context(|| format!("dial via {key}"))?,
                    );
                }
            }
            ensure!(
                started.elapsed() < Duration::from_secs(600),
                "dial test exceeded 10 minutes"
            );
        }
        Ok(out)
    })?;
    rx.await
        .context("the dialing thread ended without a result")?
}

/// 1-byte round trips through separate processes, alone and beside a continuous
/// download on the same path: the null tunnel in its own process (`bench-null`), and
/// proxy-server + proxy-agent processes with a gRPC and with an HTTP-CONNECT frontend.
/// The round trips run from a dedicated thread to an echo backend on dedicated
/// threads; the download's source and reader run on this process's runtime.
async fn phase_rtt_processes(
    cfg: &Cfg,
    bin_dir: &Path,
    pki: &Pki,
    dir: &Path,
    source: SocketAddr,
    res: &mut Results,
) -> anyhow::Result<()> {
    let warm = cfg.rtt_samples.min(500);
    let echo = EchoThreads::start()?;
    let p = |x: &Path| x.display().to_string();
    let mut null = Helper::start(
        &[
            "bench-null".into(),
            format!("--target={source}"),
            format!("--target={}", echo.addr),
            format!("--ca={}", p(&pki.ca)),
            format!("--cert={}", p(&pki.server_cert)),
            format!("--key={}", p(&pki.server_key)),
            format!("--client-cert={}", p(&pki.agent_cert)),
            format!("--client-key={}", p(&pki.agent_key)),
            format!("--plain-target={}", echo.addr),
        ],
        3,
    )?;
    let mut g = TunnelProcs::start("rtt-grpc", "grpc", bin_dir, pki, dir).await?;
    let mut c = TunnelProcs::start("rtt-connect", "http-connect", bin_dir, pki, dir).await?;
    // (key, bulk hop, echo hop, processes carrying the path)
    let routes = [
        (
            "null_tls",
            Hop::Tcp(null.addrs[0]),
            Hop::Tcp(null.addrs[1]),
            vec![("bench-null", null.pid())],
        ),
        (
            "grpc_uds",
            Hop::Grpc(g.frontend(), source),
            Hop::Grpc(g.frontend(), echo.addr),
            vec![
                ("proxy-server", g.server.proc.pid()),
                ("proxy-agent", g.agent.pid()),
            ],
        ),
        (
            "http_connect_uds",
            Hop::Connect(c.frontend(), source),
            Hop::Connect(c.frontend(), echo.addr),
            vec![
                ("proxy-server", c.server.proc.pid()),
                ("proxy-agent", c.agent.pid()),
            ],
        ),
    ];

    let mut alone = serde_json::Map::new();
    let direct = ("direct", Hop::Tcp(echo.addr));
    for (key, hop) in std::iter::once(direct).chain(routes.iter().map(|r| (r.0, r.2.clone()))) {
        let mut s = round_trips_on_thread(hop, cfg.rtt_samples, warm, cfg.rtt_time_cap)
            .await
            .with_context(|| format!("round trips via {key}"))?;
        ensure!(!s.is_empty(), "no round trip completed via {key}");
        alone.insert(key.into(), latency(&mut s));
        progress(format!("rtt alone, processes {key:<17} done"));
    }

    let dial_hops = vec![
        ("direct", Hop::Tcp(echo.addr)),
        ("null_plain", Hop::Tcp(null.addrs[2])),
        ("grpc_uds", routes[1].2.clone()),
        ("http_connect_uds", routes[2].2.clone()),
    ];
    let dial_pids = [
        ("null_plain", routes[0].3.clone()),
        ("grpc_uds", routes[1].3.clone()),
        ("http_connect_uds", routes[2].3.clone()),
    ];
    let cpu_now = || -> Vec<Vec<f64>> {
        dial_pids
            .iter()
            .map(|(_, ps)| ps.iter().map(|(_, p)| cpu_s(&p.to_string())).collect())
            .collect()
    };
    let cpu0 = cpu_now();
    let dials = dials_on_thread(dial_hops, cfg.dials, cfg.warmup_dials).await?;
    let cpu1 = cpu_now();
    // Every path was dialled `warmup_dials + dials` times.
    let per = 1e6 / (cfg.dials + cfg.warmup_dials).max(1) as f64;
    let dial_cpu: serde_json::Map<String, Value> = dial_pids
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|((key, ps), (a, b))| {
            let m: serde_json::Map<String, Value> = ps
                .iter()
                .zip(a.iter().zip(b))
                .map(|((name, _), (x, y))| ((*name).to_owned(), json!(round((y - x) * per))))
                .collect();
            ((*key).to_owned(), Value::Object(m))
        })
        .collect();
    progress("dials, processes done");

    let mut loaded = serde_json::Map::new();
    for (key, bulk_hop, echo_hop, pids) in &routes {
        let bulk = Background::start(bulk_hop.open().await?, key).await?;
        let cpu0: Vec<f64> = pids
            .iter()
            .map(|(_, pid)| cpu_s(&pid.to_string()))
            .collect();
        let me0 = cpu_s("self");
        let before = bulk.moved();
        let t0 = Instant::now();
        let r =
            round_trips_on_thread(echo_hop.clone(), cfg.rtt_samples, warm, cfg.rtt_time_cap).await;
        let window = t0.elapsed();
        let during = bulk.moved() - before;
        let secs = window.as_secs_f64().max(1e-9);
        let mut cpu: serde_json::Map<String, Value> = pids
            .iter()
            .zip(&cpu0)
            .map(|((name, pid), c0)| {
                let pct = 100.0 * (cpu_s(&pid.to_string()) - c0) / secs;
                ((*name).to_owned(), json!(round(pct)))
            })
            .collect();
        cpu.insert(
            "bench".into(),
            json!(round(100.0 * (cpu_s("self") - me0) / secs)),
        );
        let b = bulk.finish(key).await;
        let mut s = r.with_context(|| format!("round trips beside a bulk transfer via {key}"))?;
        b?;
        ensure!(!s.is_empty(), "no round trip completed via {key}");
        ensure!(
            during > 0,
            "the bulk transfer via {key} did not move during the round trips"
        );
        let mut l = latency(&mut s);
        l["background_gbps"] = json!(round(gbps(during, window)));
        l["cpu_percent"] = Value::Object(cpu);
        progress(format!(
            "rtt beside bulk, processes {key:<17} done: p50 {:.0} µs, p99 {:.0} µs (bulk {:.2} Gbit/s meanwhile)",
            num(&l, &["p50_us"]),
            num(&l, &["p99_us"]),
            gbps(during, window)
        ));
        loaded.insert((*key).into(), l);
    }
    g.alive()?;
    c.alive()?;
    if let Some(st) = null.child.try_wait()? {
        bail!("the bench-null helper exited ({st})");
    }
    drop(routes);
    drop((g, c, null, echo));

    let a = Value::Object(alone.clone());
    let l = Value::Object(loaded.clone());
    res.measurements.insert(
        "rtt_processes".into(),
        json!({
            "what": "1 byte written, echoed back, on an open connection, through separate processes: proxy-server (gRPC or HTTP-CONNECT frontend on a UNIX socket) + proxy-agent, or the null tunnel (TLS middle hop) in its own process (konnectivity bench-null); the client on a dedicated thread (current-thread runtime), the echo backend on dedicated threads (blocking sockets)",
            "paths": alone,
        }),
    );
    res.measurements.insert(
        "rtt_under_load_processes".into(),
        json!({
            "what": "the same round trips while another connection of the same path (same processes, same agent) downloads continuously from a source in the bench process; bulk and interactive connections share the tunnel processes' runtimes as in a deployment, the client and echo backend do not share a runtime with the load. cpu_percent: CPU of each process during the round trips (100 = one core)",
            "paths": loaded,
        }),
    );
    let mut dm = serde_json::Map::new();
    dm.insert("dials_per_path".into(), json!(cfg.dials));
    dm.insert(
        "what".into(),
        json!("new connection to the echo backend + 1 byte written and echoed back, through separate proxy-server + proxy-agent processes, or the null tunnel with a plain middle hop in its own process; the dialing client on a dedicated thread (current-thread runtime)"),
    );
    for (k, mut v) in dials {
        dm.insert(k.into(), latency(&mut v));
    }
    dm.insert("cpu_us_per_dial".into(), Value::Object(dial_cpu));
    let d = Value::Object(dm.clone());
    res.measurements
        .insert("dial_processes".into(), Value::Object(dm));
    let dp50 = |k: &str| num(&d, &[k, "p50_us"]);
    let (g50, n50) = (
        num(&a, &["grpc_uds", "p50_us"]),
        num(&a, &["null_tls", "p50_us"]),
    );
    let g99 = num(&l, &["grpc_uds", "p99_us"]);
    let n99 = num(&l, &["null_tls", "p99_us"]);
    let rows = [
        Row {
            id: "dial_p50_processes",
            label: "dial + first byte p50, gRPC/UDS, separate processes".into(),
            value: format!("{:.0} µs", dp50("grpc_uds")),
            baseline: format!(
                "null {:.0}, CONNECT {:.0} (direct {:.0})",
                dp50("null_plain"),
                dp50("http_connect_uds"),
                dp50("direct")
            ),
            ratio: Some(dp50("grpc_uds") / dp50("null_plain")),
            target: "—".into(),
            source: "info",
            pass: None,
            judged: dp50("grpc_uds"),
            unit: "µs",
        },
        Row {
            id: "rtt_p50_processes",
            label: "1-byte RTT p50 alone, gRPC/UDS, separate processes".into(),
            value: format!("{g50:.0} µs"),
            baseline: format!(
                "null {n50:.0} (direct {:.0})",
                num(&a, &["direct", "p50_us"])
            ),
            ratio: Some(g50 / n50),
            target: "—".into(),
            source: "info",
            pass: None,
            judged: g50,
            unit: "µs",
        },
        Row {
            id: "rtt_p99_loaded",
            label: "1-byte RTT p99 beside bulk, gRPC/UDS, separate processes".into(),
            value: format!("{g99:.0} µs"),
            baseline: format!(
                "null {n99:.0}, CONNECT {:.0}",
                num(&l, &["http_connect_uds", "p99_us"])
            ),
            ratio: Some(g99 / n99),
            target: "≤ 1 ms".into(),
            source: "issue",
            pass: g99.is_finite().then_some(g99 <= 1000.0),
            judged: g99,
            unit: "µs",
        },
    ];
    // Next to the in-process RTT rows, before the in-process figure beside bulk.
    let at = res
        .rows
        .iter()
        .position(|r| r.id == "rtt_p99_loaded_inproc")
        .unwrap_or(res.rows.len());
    for (i, r) in rows.into_iter().enumerate() {
        res.rows.insert(at + i, r);
    }
    Ok(())
}

async fn phase_memory(
    cfg: &Cfg,
    bin_dir: &Path,
    pki: &Pki,
    dir: &Path,
    source: SocketAddr,
    res: &mut Results,
) -> anyhow::Result<()> {
    let helper = Helper::start(&["bench-backend".into()], 1)?;
    let TunnelProcs {
        mut server,
        mut agent,
    } = TunnelProcs::start("mem", "grpc", bin_dir, pki, dir).await?;
    let (sp, ap) = (server.proc.pid(), agent.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s0 = settled_rss(sp).await;
    let a0 = settled_rss(ap).await;
    progress(format!(
        "memory: idle server {s0} KiB, idle agent {a0} KiB (RSS)"
    ));
    let f = Frontend::Uds(server.uds.clone());
    let echo = helper.addrs[0].to_string();
    let mut conns: Vec<BoxIo> = Vec::new();
    let mut steps = vec![json!({
        "connections": 0, "server_rss_kib": s0, "agent_rss_kib": a0,
        "server_fds": fds(sp), "agent_fds": fds(ap), "kernel_tcp": sockstat(),
    })];
    let mut last = (0usize, s0, a0);
    let mut first_step = None;
    for &target in &cfg.idle_conns {
        let need = target.saturating_sub(conns.len());
        let t = Instant::now();
        let opened: Vec<anyhow::Result<BoxIo>> = futures::stream::iter(0..need)
            .map(|i| {
                let f = f.clone();
                let echo = echo.clone();
                async move {
                    let mut io: BoxIo =
                        Box::new(konnectivity_client::grpc_dial(&f, &echo, DIAL).await?);
                    let b = (i % 251) as u8;
                    io.write_all(&[b]).await?;
                    io.flush().await?;
                    let mut r = [0u8; 1];
                    tokio::time::timeout(DIAL, io.read_exact(&mut r))
                        .await
                        .context("idle connection: echo timed out")??;
                    ensure!(r[0] == b, "idle connection: wrong echo");
                    Ok(io)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for o in opened {
            conns.push(o.with_context(|| {
                format!(
                    "opening idle tunneled connection {} of {target}",
                    conns.len() + 1
                )
            })?);
        }
        server.proc.alive()?;
        agent.alive()?;
        let (sf, af) = (fds(sp), fds(ap));
        ensure!(
            sf >= target && af >= target,
            "with {target} tunneled connections open, proxy-server has {sf} and proxy-agent {af} file descriptors: the connections are not all there"
        );
        let s = settled_rss(sp).await;
        let a = settled_rss(ap).await;
        progress(format!(
            "memory: {target} idle conns (opened in {:.1?}): server {s} KiB, agent {a} KiB",
            t.elapsed()
        ));
        steps.push(json!({
            "connections": target, "server_rss_kib": s, "agent_rss_kib": a,
            "server_fds": sf, "agent_fds": af, "kernel_tcp": sockstat(),
            "open_seconds": round(t.elapsed().as_secs_f64()),
        }));
        if first_step.is_none() {
            first_step = Some((target, s, a));
        }
        last = (target, s, a);
    }
    let (n, s, a) = last;
    let per_s = s.saturating_sub(s0) as f64 / n as f64;
    let per_a = a.saturating_sub(a0) as f64 / n as f64;
    // Marginal cost between the first and the last step (excludes one-time growth).
    let marginal = match first_step {
        Some((n1, s1, a1)) if n > n1 => json!({
            "from": n1, "to": n,
            "server_kib_per_conn": round((s as f64 - s1 as f64) / (n - n1) as f64),
            "agent_kib_per_conn": round((a as f64 - a1 as f64) / (n - n1) as f64),
        }),
        _ => Value::Null,
    };

    // Close the idle connections, then one bulk transfer through the two processes
    // (for comparison with the in-process figure).
    drop(conns);
    let t = Instant::now();
    while fds(sp) > 64 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n_bulk = cfg.size;
    let mut rates = Vec::new();
    let cpu0 = (cpu_s(&sp.to_string()), cpu_s(&ap.to_string()));
    for _ in 0..cfg.reps.min(3) {
        let mut io: BoxIo =
            Box::new(konnectivity_client::grpc_dial(&f, &source.to_string(), DIAL).await?);
        let start = Instant::now();
        let end = download(&mut io, n_bulk)
            .await
            .context("bulk download through the proxy-server and proxy-agent processes")?;
        rates.push(gbps(n_bulk, end - start));
    }
    // CPU seconds the two processes spent per GiB moved (user + system, from
    // /proc/<pid>/stat): the cost side of the throughput, independent of how much CPU
    // other guests of the host take.
    let gib_moved = (n_bulk * rates.len() as u64) as f64 / GIB as f64;
    let cpu_per_gib = (
        (cpu_s(&sp.to_string()) - cpu0.0) / gib_moved,
        (cpu_s(&ap.to_string()) - cpu0.1) / gib_moved,
    );
    let busy_rss = (rss_kib(sp), rss_kib(ap));
    server.proc.alive()?;
    agent.alive()?;
    drop(agent);
    drop(server);
    drop(helper);

    res.measurements.insert(
        "memory_idle_conns".into(),
        json!({
            "what": "VmRSS from /proc/<pid>/status of separate proxy-server (gRPC frontend on a UNIX socket) and proxy-agent processes, with N idle tunneled connections (grpc_dial from the bench process, one Proxy stream on its own HTTP/2 connection as konnectivity-client does, 1 byte echoed, then idle) to an echo backend in a helper process. Kernel socket buffers are not in RSS (see kernel_tcp).",
            "steps": steps,
            "server_kib_per_conn": round(per_s),
            "agent_kib_per_conn": round(per_a),
            "total_kib_per_conn": round(per_s + per_a),
            "marginal": marginal,
        }),
    );
    res.measurements.insert(
        "idle_agent".into(),
        json!({ "what": "VmRSS of a proxy-agent process connected to one proxy-server, no tunneled connections", "agent_rss_kib": a0, "server_rss_kib": s0 }),
    );
    res.measurements.insert(
        "bulk_1conn_processes".into(),
        json!({
            "what": "bulk download, 1 connection, gRPC/UDS through the proxy-server and proxy-agent processes (after the memory test)",
            "bytes": n_bulk,
            "grpc_uds_gbps": summary(&rates),
            "rss_after_kib": { "server": busy_rss.0, "agent": busy_rss.1 },
            "cpu_s_per_gib": { "server": round(cpu_per_gib.0), "agent": round(cpu_per_gib.1) },
        }),
    );
    let proc_gbps = median(&rates);
    let null_inproc = num(
        &Value::Object(res.measurements.clone()),
        &["bulk_1conn", "null_tls_gbps", "median"],
    );
    let grpc_inproc = num(
        &Value::Object(res.measurements.clone()),
        &["bulk_1conn", "grpc_uds_gbps", "median"],
    );
    res.rows.push(Row {
        id: "bulk_1conn_processes",
        label: format!(
            "bulk 1 conn {} download, gRPC/UDS, separate processes",
            human_bytes(n_bulk)
        ),
        value: format!("{proc_gbps:.2} Gbit/s"),
        baseline: if null_inproc.is_finite() {
            format!("null {null_inproc:.2} (in-process tunnel {grpc_inproc:.2})")
        } else {
            "—".into()
        },
        ratio: null_inproc.is_finite().then_some(proc_gbps / null_inproc),
        target: "—".into(),
        source: "info",
        pass: None,
        judged: proc_gbps,
        unit: "Gbit/s",
    });
    // The null tunnel's CPU per GiB comes from the latency phase, where it carried a
    // continuous download in a process of its own (cpu_percent at background_gbps).
    let null_cpu = {
        let m = Value::Object(res.measurements.clone());
        let path = ["rtt_under_load_processes", "paths", "null_tls"];
        let pct = num(
            &m,
            &[path[0], path[1], path[2], "cpu_percent", "bench-null"],
        );
        let g = num(&m, &[path[0], path[1], path[2], "background_gbps"]);
        (pct / 100.0) / (g * 1e9 / 8.0 / GIB as f64)
    };
    let tunnel_cpu = cpu_per_gib.0 + cpu_per_gib.1;
    if tunnel_cpu.is_finite() {
        res.rows.push(Row {
            id: "cpu_per_gib_processes",
            label: "CPU per GiB downloaded, separate processes".into(),
            value: format!(
                "{tunnel_cpu:.2} s (server {:.2} + agent {:.2})",
                cpu_per_gib.0, cpu_per_gib.1
            ),
            baseline: if null_cpu.is_finite() {
                format!("null {null_cpu:.2} s")
            } else {
                "—".into()
            },
            ratio: null_cpu.is_finite().then_some(tunnel_cpu / null_cpu),
            target: "—".into(),
            source: "info",
            pass: None,
            judged: tunnel_cpu,
            unit: "s/GiB",
        });
    }
    res.abs_row(
        "memory_per_conn",
        format!("RSS per idle tunneled conn, server+agent (0→{n})"),
        format!(
            "{:.1} KiB (server {per_s:.1} + agent {per_a:.1})",
            per_s + per_a
        ),
        per_s + per_a,
        8.0,
        "≤ 8 KiB".into(),
        "KiB",
        "issue",
    );
    res.abs_row(
        "idle_agent_rss",
        "idle proxy-agent RSS".into(),
        format!("{:.1} MiB", a0 as f64 / 1024.0),
        a0 as f64 / 1024.0,
        8.0,
        "≤ 8 MiB".into(),
        "MiB",
        "issue",
    );
    Ok(())
}

async fn phase_scale(
    cfg: &Cfg,
    bin_dir: &Path,
    pki: &Pki,
    dir: &Path,
    res: &mut Results,
) -> anyhow::Result<()> {
    let mut tls =
        konnectivity_tls::agent_client(&pki.ca, Some((&pki.agent_cert, &pki.agent_key)), &[])?;
    // Every agent pays a full handshake, as separate nodes starting cold would.
    tls.resumption = rustls::client::Resumption::disabled();
    let tls = Arc::new(tls);
    let mut runs = Vec::new();
    let mut last = None;
    for (i, &n) in cfg.agents.iter().enumerate() {
        let mut server =
            start_server_proc(&format!("scale-server-{i}"), "grpc", bin_dir, pki, dir).await?;
        let sp = server.proc.pid();
        let s0 = settled_rss(sp).await;
        let cpu0 = cpu_s(&sp.to_string());
        let me0 = cpu_s("self");
        let stop = CancellationToken::new();
        // The poller runs on its own thread so that a busy runtime does not delay it.
        let health = server.health.clone();
        let deadline = cfg.scale_deadline;
        let t0 = Instant::now();
        let poller = std::thread::spawn(move || {
            let mut seen = 0u64;
            let mut curve = Vec::new();
            let mut next_mark = Duration::ZERO;
            loop {
                if let Ok((200, body)) = http_get(&health, "/metrics")
                    && let Some(v) = ready_backends(&body)
                {
                    seen = v;
                }
                let el = t0.elapsed();
                if el >= next_mark {
                    curve.push((round(el.as_secs_f64()), seen));
                    next_mark = el + Duration::from_millis(500);
                }
                if seen >= n as u64 {
                    curve.push((round(el.as_secs_f64()), seen));
                    return (Some(el), seen, curve);
                }
                if el > deadline {
                    return (None, seen, curve);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut tasks = Vec::with_capacity(n);
        for k in 0..n {
            let agent = Agent::new(agent_settings(
                server.agent_port,
                tls.clone(),
                format!("bench-agent-{k}"),
                // upstream's defaults: --sync-interval=1s, --sync-interval-cap=10s
                Duration::from_secs(1),
                Duration::from_secs(10),
            ));
            tasks.push(tokio::spawn(konnectivity_agent::run(
                agent,
                None,
                None,
                CancellationToken::new(),
                stop.clone(),
            )));
        }
        let (took, seen, curve) = tokio::task::spawn_blocking(move || poller.join())
            .await?
            .map_err(|_| anyhow::anyhow!("metrics poller panicked"))?;
        let cpu_server = cpu_s(&sp.to_string()) - cpu0;
        let cpu_me = cpu_s("self") - me0;
        server.proc.alive()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s1 = settled_rss(sp).await;
        let sf = fds(sp);
        progress(format!(
            "scale: {n} agents: {} ready after {}; server RSS {s0} → {s1} KiB",
            seen,
            took.map_or("—".into(), |d| format!("{d:.2?}"))
        ));
        stop.cancel();
        let join_all = futures::future::join_all(tasks);
        let _ = tokio::time::timeout(Duration::from_secs(30), join_all).await;
        drop(server);
        if cfg.smoke {
            ensure!(
                took.is_some(),
                "only {seen} of {n} agents were ready after {deadline:?}"
            );
        }
        let run = json!({
            "agents": n,
            "all_ready_seconds": took.map(|d| round(d.as_secs_f64())),
            "ready_seen": seen,
            "server_rss_idle_kib": s0,
            "server_rss_kib": s1,
            "server_kib_per_agent": round(s1.saturating_sub(s0) as f64 / n as f64),
            "server_fds": sf,
            "server_cpu_seconds": round(cpu_server),
            "bench_process_cpu_seconds": round(cpu_me),
            "ready_curve": curve,
        });
        runs.push(run);
        last = Some((n, took, seen, s0, s1));
    }
    res.measurements.insert(
        "scale_agents".into(),
        json!({
            "what": "N agents as tasks inside the bench process (konnectivity_agent library, agent IDs bench-agent-0…N-1, one TCP+TLS connection each, TLS resumption off, upstream's sync intervals) started at once against one proxy-server process; time until /metrics ready_backends{proxy_strategy=\"default\"} = N, and the server's VmRSS. The agents' TLS handshakes share the machine's cores with the server.",
            "runs": runs,
        }),
    );
    if let Some((n, took, seen, s0, s1)) = last {
        let secs = took.map_or(f64::INFINITY, |d| d.as_secs_f64());
        res.abs_row(
            "scale_ready",
            format!("{n} agents all ready"),
            match took {
                Some(_) => format!("{secs:.2} s"),
                None => format!("{seen} of {n} after {:?}", cfg.scale_deadline),
            },
            secs,
            10.0,
            "≤ 10 s".into(),
            "s",
            "issue",
        );
        res.abs_row(
            "scale_rss",
            format!("proxy-server RSS with {n} agents"),
            format!(
                "{:.0} MiB ({:.1} KiB/agent)",
                s1 as f64 / 1024.0,
                s1.saturating_sub(s0) as f64 / n as f64
            ),
            s1 as f64 / 1024.0,
            1024.0,
            "≤ 1 GiB".into(),
            "MiB",
            "issue",
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------

fn human_bytes(n: u64) -> String {
    if n >= GIB && n.is_multiple_of(GIB) {
        format!("{} GiB", n / GIB)
    } else if n >= MIB {
        format!("{:.0} MiB", n as f64 / MIB as f64)
    } else {
        format!("{:.0} KiB", n as f64 / KIB as f64)
    }
}

/// The machine-wide `cpu` line of /proc/stat (jiffies per state).
fn cpu_times() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Where the machine's CPU time went between two `cpu_times` readings, in percent.
/// Steal is time the hypervisor gave to other guests: high steal means noisy numbers.
fn cpu_split(a: &[u64], b: &[u64]) -> Value {
    let d: Vec<u64> = a.iter().zip(b).map(|(x, y)| y.saturating_sub(*x)).collect();
    let total: u64 = d.iter().sum();
    let pct = |i: usize| round(100.0 * *d.get(i).unwrap_or(&0) as f64 / total.max(1) as f64);
    json!({ "user": pct(0) + pct(1), "system": pct(2) + pct(5) + pct(6), "idle": pct(3) + pct(4), "steal": pct(7) })
}

fn nofile_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    let v = l.split_whitespace().nth(3)?;
    if v == "unlimited" {
        Some(u64::MAX)
    } else {
        v.parse().ok()
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "memory": mem,
        "kernel": kernel,
        "tokio_workers": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "open_files_limit": nofile_limit(),
    })
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let cfg = Cfg::from(&args)?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("no directory for the current executable")?,
    };
    if cfg.has(Phase::Memory) || cfg.has(Phase::Scale) || cfg.has(Phase::Rtt) {
        bin(&bin_dir, "proxy-server")?;
        bin(&bin_dir, "proxy-agent")?;
    }
    let need = cfg
        .idle_conns
        .iter()
        .chain(cfg.agents.iter())
        .copied()
        .max()
        .unwrap_or(0) as u64
        + 512;
    if (cfg.has(Phase::Memory) || cfg.has(Phase::Scale))
        && let Some(lim) = nofile_limit()
        && lim < need
    {
        bail!(
            "the open-files limit is {lim}; the memory and scale tests need about {need} \
             (one descriptor per connection in this process, proxy-server and proxy-agent each). \
             Raise it first, e.g. `ulimit -n {}` (at most the hard limit, `ulimit -Hn`), \
             or lower --idle-conns/--agents",
            need.next_power_of_two()
        );
    }
    let started = Instant::now();
    let cpu0 = cpu_times();
    let tmp = TempDir::new()?;
    let dir = tmp.0.clone();
    let pki = konnectivity_testkit::pki::generate(&dir.join("pki"), &[])?;
    let mut res = Results::default();
    let mode = if cfg.smoke { "smoke" } else { "full" };
    progress(format!(
        "{mode} run: size {}, {} parallel, {} dials, {} RTT samples, {} reps, idle conns {:?}, agents {:?}",
        human_bytes(cfg.size),
        cfg.parallel,
        cfg.dials,
        cfg.rtt_samples,
        cfg.reps,
        cfg.idle_conns,
        cfg.agents
    ));

    let source = source_server().await?;
    let in_proc_phases = [
        Phase::Bulk,
        Phase::Parallel,
        Phase::Dial,
        Phase::Rtt,
        Phase::Stalled,
    ];
    if in_proc_phases.iter().any(|p| cfg.has(*p)) {
        let sink = sink_server().await?;
        let echo = konnectivity_testkit::servers::echo("127.0.0.1:0").await?;
        let ntls = null_tls(
            &pki.ca,
            &pki.server_cert,
            &pki.server_key,
            &pki.agent_cert,
            &pki.agent_key,
        )?;
        let target = |addr: SocketAddr| {
            let ntls = ntls.clone();
            async move {
                anyhow::Ok(Target {
                    addr,
                    null_plain: null_tunnel(addr, None).await?,
                    null_tls: null_tunnel(addr, Some(ntls)).await?,
                })
            }
        };
        let (inproc, grpc, connect) = start_inproc(&pki, &dir, cfg.window).await?;
        let world = Arc::new(World {
            source: target(source).await?,
            sink: target(sink).await?,
            echo: target(echo).await?,
            grpc,
            connect,
        });
        if cfg.has(Phase::Bulk) {
            phase_bulk(&world, &cfg, &mut res).await.context("bulk")?;
        }
        if cfg.has(Phase::Parallel) {
            phase_parallel(&world, &cfg, &mut res)
                .await
                .context("parallel bulk")?;
        }
        if cfg.has(Phase::Dial) {
            phase_dial(&world, &cfg, &mut res)
                .await
                .context("connection set-up")?;
        }
        if cfg.has(Phase::Rtt) {
            phase_rtt(&world, &cfg, &mut res)
                .await
                .context("interactive latency")?;
            phase_rtt_processes(&cfg, &bin_dir, &pki, &dir, source, &mut res)
                .await
                .context("interactive latency, separate processes")?;
        }
        if cfg.has(Phase::Stalled) {
            phase_stalled(&world, &cfg, &mut res)
                .await
                .context("stalled reader")?;
        }
        inproc.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), inproc.server).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), inproc.agent).await;
    }
    if cfg.has(Phase::Memory) {
        phase_memory(&cfg, &bin_dir, &pki, &dir, source, &mut res)
            .await
            .context("memory")?;
    }
    if cfg.has(Phase::Scale) {
        phase_scale(&cfg, &bin_dir, &pki, &dir, &mut res)
            .await
            .context("scale")?;
    }

    let cpu = cpu_split(&cpu0, &cpu_times());
    let targets: Vec<Value> = res
        .rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "measurement": r.label, "value": r.value, "baseline": r.baseline,
                "ratio": r.ratio.map(round), "judged": round(r.judged), "unit": r.unit,
                "target": r.target, "source": r.source, "pass": r.pass,
            })
        })
        .collect();
    let out = json!({
        "tool": "konnectivity bench",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": mode,
        "machine": machine(),
        "config": {
            "bulk_bytes": cfg.size, "parallel": cfg.parallel, "dials": cfg.dials,
            "rtt_samples": cfg.rtt_samples, "reps": cfg.reps, "idle_conns": cfg.idle_conns,
            "agents": cfg.agents, "stall_bytes": cfg.stall_size,
            "phases": cfg.phases.iter().map(|p| format!("{p:?}").to_lowercase()).collect::<Vec<_>>(),
            "flow_window_in_process": cfg.window,
            "flow_window_processes": konnectivity_core::flow::DEFAULT_WINDOW,
            "null_tunnel": "client → relay S → (TLS 1.3 with the agent link's rustls configs, full handshake per connection | plain TCP) → relay A → backend; copy_bidirectional_with_sizes 64 KiB; same process and runtime as the in-process tunnel, except for rtt_processes and rtt_under_load_processes, where it runs in a process of its own (konnectivity bench-null) like the proxy-server and proxy-agent processes it is compared with",
        },
        "measurements": Value::Object(res.measurements.clone()),
        "targets": targets,
        "elapsed_seconds": round(started.elapsed().as_secs_f64()),
        "cpu_percent_during_run": cpu,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    print_table(&res, mode, started.elapsed(), &args.out, &cpu);
    let missed: Vec<&str> = res
        .rows
        .iter()
        .filter(|r| r.source == "issue" && r.pass == Some(false))
        .map(|r| r.id)
        .collect();
    if args.strict && !missed.is_empty() {
        bail!("targets missed: {}", missed.join(", "));
    }
    Ok(())
}

fn print_table(res: &Results, mode: &str, took: Duration, out: &Path, cpu: &Value) {
    let m = machine();
    println!(
        "\nkonnectivity bench ({mode}, {} build) — {} CPUs ({}), {}, kernel {}",
        m["build"].as_str().unwrap_or(""),
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or(""),
        m["memory"].as_str().unwrap_or(""),
        m["kernel"].as_str().unwrap_or("")
    );
    let w = res
        .rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(10)
        .max(11);
    let wv = res
        .rows
        .iter()
        .map(|r| r.value.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let wb = res
        .rows
        .iter()
        .map(|r| r.baseline.chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    println!(
        "{:<w$}  {:<wv$}  {:<wb$}  {:>6}  {:<8}  result",
        "measurement", "tunnel", "baseline", "ratio", "target"
    );
    for r in &res.rows {
        let ratio = r.ratio.map_or("—".into(), |x| format!("{x:.2}"));
        let verdict = match (r.pass, r.source) {
            (Some(true), _) => "ok",
            (Some(false), "issue") => "MISSED",
            (Some(false), _) => "missed (research)",
            (None, "info") => "info",
            (None, _) => "n/a",
        };
        let target = if r.source == "research" {
            format!("{}*", r.target)
        } else {
            r.target.clone()
        };
        println!(
            "{:<w$}  {:<wv$}  {:<wb$}  {:>6}  {:<8}  {verdict}",
            r.label, r.value, r.baseline, ratio, target
        );
    }
    println!(
        "Throughput in Gbit/s (10^9 bit/s), medians; baselines measured in the same run. \"null\" = null tunnel \
         (TLS middle hop for throughput and RTT, plain middle hop for dials), in-process like the tunnel it is compared with, \
         and a process of its own in the \"separate processes\" rows. * = target from perf-anchors §5.4, informational."
    );
    println!(
        "Took {:.0?}; machine CPU during the run: user {}%, system {}%, idle {}%, steal {}% \
         (steal = taken by other guests of the host; above a few % the numbers are noisy). Results: {}",
        took,
        cpu["user"],
        cpu["system"],
        cpu["idle"],
        cpu["steal"],
        out.display()
    );
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!("konnectivity-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("64MiB"), Ok(64 * MIB));
        assert_eq!(parse_size("100000"), Ok(100_000));
        assert!(parse_size("1").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(pct_us(&v, 0.5), 50.0);
        assert_eq!(pct_us(&v, 0.99), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn pattern_wraps() {
        let p = pattern_at(PERIOD as u64 - 3, 8);
        for (i, b) in p.iter().enumerate() {
            let off = (PERIOD as u64 - 3 + i as u64) % PERIOD as u64;
            assert_eq!(*b, konnectivity_testkit::servers::pattern_byte(off));
        }
    }

    #[test]
    fn metrics_line() {
        let m = "# HELP x\nkonnectivity_network_proxy_server_ready_backends{proxy_strategy=\"default\"} 42\n";
        assert_eq!(ready_backends(m), Some(42));
    }
}
