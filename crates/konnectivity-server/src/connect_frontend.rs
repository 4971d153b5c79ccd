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
use konnectivity_core::dial::DialError;
use konnectivity_core::protocol::Protocol;
use konnectivity_core::tunnel::{Leftover, Step, Tunnel};
use konnectivity_tunnel::splice::{SpliceEnd, splice};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tracing::debug;

use crate::dial::{self, Dialing};
use crate::metrics::Gauge;
use crate::state::{Backend, DialOutcome, Shared};
use crate::status::document::FrontendKind;
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
    let mut t: Tunnel<Dialing, Arc<Backend>> = Tunnel::new(s.settings.dial_bounds());
    let random = rand::random::<i64>() & i64::MAX;
    let Step::Dial {
        random,
        protocol,
        address,
    } = t.connect(random, Protocol::Tcp.as_str(), &authority)
    else {
        return;
    };
    match dial::start(&s, FrontendKind::Connect, &protocol, &address, random).await {
        Ok(d) => t.dial_started(random, d, now()),
        Err(e) => return refuse(&mut sock, &e).await,
    }
    let outcome = loop {
        let deadline = t.deadline().map(Instant::from_std);
        tokio::select! {
            o = async {
                match t.dial_mut() {
                    Some(d) => (&mut d.reply).await,
                    None => std::future::pending().await,
                }
            } => break o.unwrap_or(DialOutcome::Failed(DialError::AgentDisconnected)),
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                if t.poll_deadline(now()).is_some()
                    && t.dial_mut().is_some_and(|d| dial::expire(&s, d))
                {
                    break DialOutcome::Failed(DialError::BackendDialTimeout);
                }
            }
        }
    };
    let est = match outcome {
        DialOutcome::Connected(est) => {
            if t.dial_connected(est.connect_id, (), |d, ()| d.backend)
                .is_err()
            {
                return;
            }
            est
        }
        DialOutcome::Failed(e) => {
            let _ = t.pending_failed(&e);
            return refuse(&mut sock, &e).await;
        }
    };
    let Some(backend) = t.conn().cloned() else {
        return;
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
    match end {
        SpliceEnd::PeerClosed(_) => {
            // The agent closed it (CLOSE_RSP: its entry is already gone and close_conn
            // does nothing) or our own abort of a client that stalled (the entry is
            // still there: the agent is told with CLOSE_REQ).
            if let Some((connect_id, conn)) = t.agent_closed() {
                dial::close_conn(&s, &conn, connect_id).await;
            }
        }
        SpliceEnd::LocalEof | SpliceEnd::LocalError(_) | SpliceEnd::StreamGone => {
            if let Leftover::Conn { connect_id, conn } = t.frontend_gone() {
                dial::close_conn(&s, &conn, connect_id).await;
            }
        }
    }
}

/// Answers a failed dial with its HTTP response (or just closes, for an agent's
/// DIAL_CLS) and closes the client's socket.
async fn refuse<S: AsyncWrite + Unpin>(sock: &mut S, e: &DialError) {
    debug!(error = %e, "CONNECT dial failed");
    match e.http_response() {
        Some(rsp) => write_close(sock, rsp.as_bytes()).await,
        None => {
            let _ = sock.shutdown().await;
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}
