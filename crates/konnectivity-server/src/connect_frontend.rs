//! The HTTP-CONNECT frontend (`--mode=http-connect`), over UDS or TCP with mTLS.
//!
//! Per client connection: read one request head (bounded in size and time), answer
//! anything but CONNECT with 405, dial the CONNECT authority through an agent (the same
//! tunnel state machine as the gRPC frontend, `konnectivity_core::tunnel`, so the same
//! `--backend-dial-timeout` / `--dial-deadline` bound), answer with exactly
//! `HTTP/1.1 200 Connection Established\r\n\r\n` or the error response of the typed
//! dial error (`DialError::http_response`, spec §3.3), then splice raw bytes. Bytes the
//! client pipelined after its request head are sent first, not lost; agent DATA is
//! only written after the 200.
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::debug;

use crate::metrics::Gauge;
use crate::state::Shared;
use crate::status::document::FrontendKind;
use crate::stream_tunnel::{self, Answers, write_close};
pub use konnectivity_core::connect::{Head, parse_head, status_for};

/// Largest request head we read (upstream's `MaxHeaderBytes` default is 1 MiB).
const MAX_HEAD: usize = 1 << 20;

/// The exact success line.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

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
    stream_tunnel::run(
        &s,
        sock,
        FrontendKind::Connect,
        &authority,
        leftover,
        ANSWERS,
    )
    .await;
}

/// The CONNECT answers: exactly upstream's 200 line, or the typed error's response
/// (`None` closes without one, upstream's answer to an agent's DIAL_CLS).
const ANSWERS: Answers = Answers {
    established: ESTABLISHED,
    refused: |e| e.http_response().map(String::into_bytes),
};
