//! The client side of the separate-process phases: where a connection goes ([`Hop`]:
//! an address, or a frontend and a backend), the echo backend on dedicated OS threads
//! with blocking sockets ([`EchoThreads`]), and round trips and dials run from a
//! dedicated thread with its own current-thread runtime, so that neither the measuring
//! client nor the echo waits behind the load generators' tasks.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use konnectivity_client::Frontend;
use tokio::io::AsyncWriteExt;

use crate::load::{first_echo, round_trips};
use crate::world::{BoxIo, connect, grpc, socks5, tcp};
use crate::{DIAL, STEP};

/// Where a connection of the separate-process latency test goes: straight to an
/// address (a backend, or a null-tunnel entrance), or through a proxy-server frontend
/// (gRPC, HTTP-CONNECT, SOCKS5) to a backend.
#[derive(Clone)]
pub(crate) enum Hop {
    Tcp(SocketAddr),
    Grpc(Frontend, SocketAddr),
    Connect(Frontend, SocketAddr),
    /// A SOCKS5 frontend (`host:port` or a UNIX socket path) and a backend.
    Socks5(String, SocketAddr),
}

impl Hop {
    pub(crate) async fn open(&self) -> anyhow::Result<BoxIo> {
        match self {
            Hop::Tcp(a) => tcp(*a).await,
            Hop::Grpc(f, a) => grpc(f, *a).await,
            Hop::Connect(f, a) => connect(f, *a).await,
            Hop::Socks5(p, a) => socks5(p, *a).await,
        }
    }
}

/// The echo backend on dedicated OS threads with blocking sockets (one accepting,
/// one per connection): echoing never waits for a runtime the load keeps busy.
/// Stops accepting when dropped; a connection's thread ends at its EOF.
pub(crate) struct EchoThreads {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: Arc<AtomicBool>,
}

impl EchoThreads {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding the echo backend")?;
        let addr = l.local_addr()?;
        let stop = stoppable_thread("bench-echo", move |stopped| {
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

/// Runs `serve` on an OS thread named `name`, handing it the stop flag it is to watch;
/// returns that flag.
pub(crate) fn stoppable_thread(
    name: &str,
    serve: impl FnOnce(&AtomicBool) + Send + 'static,
) -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || serve(&stopped))?;
    Ok(stop)
}

impl Drop for EchoThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then sees `stop`.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

pub(crate) fn echo_blocking(mut s: std::net::TcpStream) {
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
pub(crate) async fn round_trips_on_thread(
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
pub(crate) fn on_own_thread<T: Send + 'static>(
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
pub(crate) async fn dials_on_thread(
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
