//! Destination servers on loopback for tests, benchmarks and the demo. Each runs
//! until the runtime stops.
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/1.1 server answering every request with `200` and `body` (keep-alive).
pub async fn http_hello(bind: &str, body: &'static str) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(bind).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if buf.len() > 64 * 1024 {
                            return;
                        }
                    }
                    let end = buf
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(0, |p| p + 4);
                    buf.drain(..end);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A TCP echo server.
pub async fn echo(bind: &str) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(bind).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// The byte at `offset` of the deterministic test pattern.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(31).wrapping_add(offset >> 11) & 0xff) as u8
}

/// Fills `buf` with the pattern starting at `offset`.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// A server that, on each connection, reads an 8-byte big-endian length `n`, then
/// writes `n` bytes of the pattern and closes.
pub async fn source(bind: &str) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(bind).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(n) = s.read_u64().await else { return };
                let mut buf = vec![0u8; 256 * 1024];
                let mut off = 0u64;
                while off < n {
                    let len = (n - off).min(buf.len() as u64) as usize;
                    fill_pattern(&mut buf[..len], off);
                    if s.write_all(&buf[..len]).await.is_err() {
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

/// A port on loopback that nobody listens on (connecting is refused).
pub fn closed_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A listener that never completes a TCP handshake: its accept queue is full and
/// nobody accepts, so the kernel drops every further SYN and a connect to [`addr`]
/// hangs until the client gives up (the agent's 5 s dial timeout). Lives until
/// dropped.
///
/// [`addr`]: Unresponsive::addr
#[derive(Debug)]
pub struct Unresponsive {
    addr: SocketAddr,
    _listener: std::net::TcpListener,
    /// The connections that fill the accept queue.
    _fillers: Vec<std::net::TcpStream>,
}

impl Unresponsive {
    /// Where connecting hangs.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds an [`Unresponsive`] listener on `127.0.0.1` with a backlog of 0 and fills its
/// accept queue (Linux queues one connection at that backlog). Filling is done with
/// blocking connects on real time, so it works the same under tokio's paused clock;
/// the last, hanging probe costs 100 ms of wall time.
pub fn unresponsive() -> anyhow::Result<Unresponsive> {
    use socket2::{Domain, Socket, Type};
    use std::time::Duration;
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>()?.into())?;
    sock.listen(0)?;
    let listener: std::net::TcpListener = sock.into();
    let addr = listener.local_addr()?;
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Ok(Unresponsive {
                    addr,
                    _listener: listener,
                    _fillers: fillers,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the accept queue of {addr} did not fill up")
}
