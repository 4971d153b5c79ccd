//! One tunnel of a byte-stream frontend (HTTP CONNECT, SOCKS5), after the frontend has
//! read its client's request: the dial through the tunnel state machine
//! (`konnectivity_core::tunnel`, so the same `--backend-dial-timeout` /
//! `--dial-deadline` bound as the gRPC frontend), the frontend's own answer to the
//! outcome ([`Answers`]), then the splice of raw bytes until either side closes. Bytes
//! the client pipelined behind its request are sent first, not lost; agent DATA is
//! only written after the success answer.
use std::sync::Arc;

use bytes::Bytes;
use konnectivity_core::dial::DialError;
use konnectivity_core::protocol::Protocol;
use konnectivity_core::tunnel::{Leftover, Step, Tunnel};
use konnectivity_tunnel::splice::{SpliceEnd, splice};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

use crate::dial::{self, Dialing};
use crate::metrics::Gauge;
use crate::state::{Backend, DialOutcome, Shared};
use crate::status::document::FrontendKind;

/// How a frontend tells its client what became of the dial.
#[derive(Debug, Clone, Copy)]
pub struct Answers {
    /// Written when the agent connected, before any agent data.
    pub established: &'static [u8],
    /// Written before the client's socket is closed after a failed dial; `None`:
    /// closed without a word.
    pub refused: fn(&DialError) -> Option<Vec<u8>>,
}

/// Dials `address` for a client of `frontend` and relays its bytes once connected.
pub async fn run<S>(
    s: &Arc<Shared>,
    mut sock: S,
    frontend: FrontendKind,
    address: &str,
    leftover: Bytes,
    answers: Answers,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut t: Tunnel<Dialing, Arc<Backend>> = Tunnel::new(s.settings.dial_bounds());
    let random = rand::random::<i64>() & i64::MAX;
    let Step::Dial {
        random,
        protocol,
        address,
    } = t.connect(random, Protocol::Tcp.as_str(), address)
    else {
        return;
    };
    match dial::start(s, frontend, &protocol, &address, random).await {
        Ok(d) => t.dial_started(random, d, now()),
        Err(e) => return refuse(&mut sock, &e, answers).await,
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
                    && t.dial_mut().is_some_and(|d| dial::expire(s, d))
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
            return refuse(&mut sock, &e, answers).await;
        }
    };
    let Some(backend) = t.conn().cloned() else {
        return;
    };
    let _established = s.metrics.hold(Gauge::Established);
    let id = est.connect_id;
    if sock.write_all(answers.established).await.is_err() {
        dial::close_conn(s, &backend, id).await;
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
    debug!(connect_id = id, ?frontend, ?end, "tunnel ended");
    match end {
        SpliceEnd::PeerClosed(_) => {
            // The agent closed it (CLOSE_RSP: its entry is already gone and close_conn
            // does nothing) or our own abort of a client that stalled (the entry is
            // still there: the agent is told with CLOSE_REQ).
            if let Some((connect_id, conn)) = t.agent_closed() {
                dial::close_conn(s, &conn, connect_id).await;
            }
        }
        SpliceEnd::LocalEof | SpliceEnd::LocalError(_) | SpliceEnd::StreamGone => {
            if let Leftover::Conn { connect_id, conn } = t.frontend_gone() {
                dial::close_conn(s, &conn, connect_id).await;
            }
        }
    }
}

/// Writes `bytes` (best effort) and closes the socket.
pub async fn write_close<S: AsyncWrite + Unpin>(sock: &mut S, bytes: &[u8]) {
    let _ = sock.write_all(bytes).await;
    let _ = sock.shutdown().await;
}

/// Answers a failed dial as the frontend does and closes the client's socket.
async fn refuse<S: AsyncWrite + Unpin>(sock: &mut S, e: &DialError, answers: Answers) {
    debug!(error = %e, "dial failed");
    match (answers.refused)(e) {
        Some(rsp) => write_close(sock, &rsp).await,
        None => {
            let _ = sock.shutdown().await;
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}
