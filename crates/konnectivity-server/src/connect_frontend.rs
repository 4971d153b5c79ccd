//! The HTTP-CONNECT frontend (`--mode=http-connect`), over UDS or TCP with mTLS.
//!
//! Per client connection: read one request head (bounded in size and time), answer
//! anything but CONNECT with 405, dial the CONNECT authority through an agent, answer
//! with exactly `HTTP/1.1 200 Connection Established\r\n\r\n` or an error response
//! mapped from the agent's error text (spec §3.3), then splice raw bytes. Bytes the
//! client pipelined after its request head are sent first, not lost; agent DATA is
//! only written after the 200.
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use konnectivity_core::wire;
use konnectivity_tunnel::splice::splice;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::debug;

use crate::dial::{self, StartError};
use crate::metrics::{DialFailureReason, Gauge};
use crate::state::{DialOutcome, Shared};
pub use konnectivity_core::connect::{Head, parse_head, status_for};

/// Largest request head we read (upstream's `MaxHeaderBytes` default is 1 MiB).
const MAX_HEAD: usize = 1 << 20;

/// The exact success line.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

async fn write_close<S: AsyncWrite + Unpin>(sock: &mut S, bytes: &[u8]) {
    let _ = sock.write_all(bytes).await;
    let _ = sock.shutdown().await;
}

/// Serves one accepted client connection.
pub async fn serve<S>(s: Arc<Shared>, mut sock: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::with_capacity(1024);
    let authority = loop {
        let head = timeout(s.settings.connect_header_timeout, async {
            loop {
                match parse_head(&buf) {
                    Ok(Some(h)) => return Ok(h),
                    Ok(None) if buf.len() >= MAX_HEAD => {
                        return Err("request head too large".to_owned());
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
                match sock.read_buf(&mut buf).await {
                    Ok(0) => return Err(String::new()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await;
        match head {
            Err(_) => {
                debug!("CONNECT request head not received in time");
                return write_close(
                    &mut sock,
                    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n",
                )
                .await;
            }
            Ok(Err(e)) if e.is_empty() => return,
            Ok(Err(e)) => {
                debug!(error = %e, "malformed request");
                return write_close(
                    &mut sock,
                    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n",
                )
                .await;
            }
            Ok(Ok((Head::Other { body, close }, n))) => {
                let body_text = b"this proxy only supports CONNECT passthrough\n";
                let mut resp = format!(
                    "HTTP/1.1 405 Method Not Allowed\r\n{}Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n\r\n",
                    if close || body > 0 { "Connection: close\r\n" } else { "" },
                    body_text.len()
                )
                .into_bytes();
                resp.extend_from_slice(body_text);
                if sock.write_all(&resp).await.is_err() {
                    return;
                }
                if body > 0 || close {
                    // Do not try to frame a request body; end the connection instead.
                    let _ = sock.shutdown().await;
                    return;
                }
                buf.advance(n);
            }
            Ok(Ok((Head::Connect(a), n))) => {
                buf.advance(n);
                break a;
            }
        }
    };
    let leftover: Bytes = buf.freeze();
    let _gauge = s.metrics.hold(Gauge::Http);
    let random = rand::random::<i64>() & i64::MAX;
    let dialing = match dial::start(&s, &authority, random).await {
        Ok(d) => d,
        Err(StartError::NoAgent) => {
            return write_close(
                &mut sock,
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available: No agent available",
            )
            .await;
        }
        Err(StartError::Denied(e)) => {
            let resp = format!(
                "HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{e}"
            );
            return write_close(&mut sock, resp.as_bytes()).await;
        }
        Err(StartError::Limit(e)) => {
            let resp = format!(
                "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{e}"
            );
            return write_close(&mut sock, resp.as_bytes()).await;
        }
        Err(StartError::DuplicateDialId) => {
            return write_close(&mut sock, b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ndial ID collision").await;
        }
        Err(StartError::Send { error, timeout }) => {
            let status = if timeout {
                "504 Gateway Timeout"
            } else {
                "502 Bad Gateway"
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nFailed to tunnel dial request: {error}\r\n"
            );
            return write_close(&mut sock, resp.as_bytes()).await;
        }
    };
    let backend = dialing.backend.clone();
    let outcome = match s.settings.backend_dial_timeout.or(s.settings.dial_deadline) {
        None => dialing.reply.await.ok(),
        Some(t) => match timeout(t, dialing.reply).await {
            Ok(r) => r.ok(),
            Err(_) => {
                if dial::take_pending(&s, random).is_some() {
                    s.metrics
                        .dial_failure(DialFailureReason::BackendDialTimeout);
                }
                return write_close(
                    &mut sock,
                    format!("HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBackend dial timeout: {}\r\n", wire::BACKEND_DIAL_TIMEOUT).as_bytes(),
                )
                .await;
            }
        },
    };
    let est = match outcome.unwrap_or(DialOutcome::BackendGone) {
        DialOutcome::Connected(est) => est,
        DialOutcome::Failed(e) => {
            let resp = format!(
                "HTTP/1.1 {}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{e}",
                status_for(&e)
            );
            return write_close(&mut sock, resp.as_bytes()).await;
        }
        DialOutcome::Closed => {
            let _ = sock.shutdown().await;
            return;
        }
        DialOutcome::BackendGone => {
            s.metrics.dial_failure(DialFailureReason::BackendClose);
            return write_close(
                &mut sock,
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBackend context error: context canceled\r\n",
            )
            .await;
        }
    };
    let _established = s.metrics.hold(Gauge::Established);
    let id = est.connect_id;
    if sock.write_all(ESTABLISHED).await.is_err() {
        dial::close_conn(&s, &backend, id).await;
        return;
    }
    let end = splice(
        sock,
        id,
        est.rx,
        backend.tx.clone(),
        est.credit,
        s.settings.max_chunk,
        leftover,
    )
    .await;
    debug!(connect_id = id, ?end, "CONNECT tunnel ended");
    // Whatever ended it: when the agent closed it (CLOSE_RSP) its entry is already
    // gone and this does nothing; when it ended here — the client, or our own abort of
    // a client that stalled — the agent is told with CLOSE_REQ.
    dial::close_conn(&s, &backend, id).await;
}
