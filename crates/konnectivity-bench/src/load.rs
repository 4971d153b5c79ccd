//! The load generators and the backends they talk to, each checking byte counts and
//! contents: the deterministic test pattern, the source (sends N pattern bytes) and
//! sink (checks N bytes) servers, download, upload, dial + first echoed byte, 1-byte
//! round trips, and a continuous background download ([`Background`]). Every read and
//! write is bounded by a timeout, so a hung tunnel fails the bench instead of stalling it.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::world::BoxIo;
use crate::{DIAL, MAX_IO, MIB, PERIOD, STEP, WRITE};

pub(crate) fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        (0..PERIOD + MAX_IO)
            .map(|i| konnectivity_testkit::servers::pattern_byte((i % PERIOD) as u64))
            .collect()
    })
}

/// `len` (≤ MAX_IO) bytes of the pattern starting at stream offset `off`.
pub(crate) fn pattern_at(off: u64, len: usize) -> &'static [u8] {
    let s = (off % PERIOD as u64) as usize;
    &pattern()[s..s + len.min(MAX_IO)]
}

/// A loopback server whose connections each start with an 8-byte big-endian length
/// n (read within [`STEP`]); `serve` then has the connection and n.
async fn length_prefixed<F, Fut>(serve: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(TcpStream, u64) -> Fut + Send + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                if let Ok(Ok(n)) = tokio::time::timeout(STEP, s.read_u64()).await {
                    serve(s, n).await;
                }
            });
        }
    });
    Ok(addr)
}

/// Source: reads an 8-byte big-endian length n, writes n pattern bytes, closes.
pub(crate) async fn source_server() -> anyhow::Result<SocketAddr> {
    length_prefixed(|mut s, n| async move {
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
    })
    .await
}

/// Sink: reads a length n, then n bytes checked against the pattern, answers with
/// the count (u64::MAX when the contents were wrong), then waits for EOF.
pub(crate) async fn sink_server() -> anyhow::Result<SocketAddr> {
    length_prefixed(|mut s, n| async move {
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
    })
    .await
}

pub(crate) fn deadline_for(n: u64) -> tokio::time::Instant {
    // At least 1 MB/s, plus slack: a hung transfer fails instead of running forever.
    tokio::time::Instant::now() + STEP + Duration::from_secs(n / 1_000_000)
}

pub(crate) async fn timed<F: std::future::Future>(
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
pub(crate) async fn download(io: &mut BoxIo, n: u64) -> anyhow::Result<Instant> {
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
pub(crate) async fn upload(io: &mut BoxIo, n: u64) -> anyhow::Result<Instant> {
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

/// Writes one byte on a just-opened echo connection and reads it back; returns the time
/// since `t` (when the dial started).
pub(crate) async fn first_echo(mut io: BoxIo, seq: usize, t: Instant) -> anyhow::Result<Duration> {
    let (b, r) = echo_byte(&mut io, seq, "first byte timed out").await?;
    let d = t.elapsed();
    ensure!(r == b, "echo returned {r} instead of {b}");
    Ok(d)
}

/// Writes byte `seq % 251` on an echo connection and reads one byte back within [`DIAL`]
/// (else the error `timed_out`); returns (sent, received).
pub(crate) async fn echo_byte(
    io: &mut BoxIo,
    seq: usize,
    timed_out: &'static str,
) -> anyhow::Result<(u8, u8)> {
    let b = (seq % 251) as u8;
    io.write_all(&[b]).await?;
    io.flush().await?;
    let mut r = [0u8; 1];
    tokio::time::timeout(DIAL, io.read_exact(&mut r))
        .await
        .context(timed_out)??;
    Ok((b, r[0]))
}

/// 1-byte round trips on an open echo connection: up to `n` samples or `cap` time.
pub(crate) async fn round_trips(
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
pub(crate) async fn stream_until(
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
pub(crate) struct Background {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) moved: Arc<AtomicU64>,
    pub(crate) task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Background {
    /// Starts reading from `io`, a source connection, and returns once 8 MiB have
    /// arrived: the transfer is really running.
    pub(crate) async fn start(io: BoxIo, what: &str) -> anyhow::Result<Self> {
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
    pub(crate) fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Stops the transfer; fails if it broke (wrong bytes, stall, early end).
    pub(crate) async fn finish(self, what: &str) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(STEP, self.task)
            .await
            .context("background transfer did not stop")?
            .context("background transfer task")?
            .with_context(|| format!("background transfer via {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_wraps() {
        let p = pattern_at(PERIOD as u64 - 3, 8);
        for (i, b) in p.iter().enumerate() {
            let off = (PERIOD as u64 - 3 + i as u64) % PERIOD as u64;
            assert_eq!(*b, konnectivity_testkit::servers::pattern_byte(off));
        }
    }
}
