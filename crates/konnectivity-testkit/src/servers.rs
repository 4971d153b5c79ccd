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
