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
use crate::state::{Backend, DialOutcome, Established, Shared};
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

/// A connection the agent accepted: the frontend's tunnel state and the agent's side.
pub struct Opened {
    /// The tunnel state machine, now holding the connection.
    pub tunnel: Tunnel<Dialing, Arc<Backend>>,
    /// The agent's connect ID, DATA and credit.
    pub est: Established,
    /// The backend the connection runs through.
    pub backend: Arc<Backend>,
}

/// Dials `address` with `protocol` through the tunnel state machine (policy, limits,
/// `--backend-dial-timeout` / `--dial-deadline`). `Err(None)`: nothing to answer.
pub async fn open(
    s: &Arc<Shared>,
    frontend: FrontendKind,
    protocol: Protocol,
    address: &str,
) -> Result<Opened, Option<DialError>> {
    let mut t: Tunnel<Dialing, Arc<Backend>> = Tunnel::new(s.settings.dial_bounds());
    let random = rand::random::<i64>() & i64::MAX;
    let Step::Dial {
        random,
        protocol,
        address,
    } = t.connect(random, protocol.as_str(), address)
    else {
        return Err(None);
    };
    match dial::start(s, frontend, &protocol, &address, random).await {
        Ok(d) => t.dial_started(random, d, now()),
        Err(e) => return Err(Some(e)),
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
                return Err(None);
            }
            est
        }
        DialOutcome::Failed(e) => {
            let _ = t.pending_failed(&e);
            return Err(Some(e));
        }
    };
    let Some(backend) = t.conn().cloned() else {
        return Err(None);
    };
    Ok(Opened {
        tunnel: t,
        est,
        backend,
    })
}

/// Ends an opened connection: after the agent closed it (`by_agent`: its entry is
/// already gone unless we aborted a stalled client, then the agent gets CLOSE_REQ),
/// or because the frontend's client went away (CLOSE_REQ to the agent).
pub async fn close(s: &Shared, tunnel: Tunnel<Dialing, Arc<Backend>>, by_agent: bool) {
    let mut t = tunnel;
    if by_agent {
        if let Some((connect_id, conn)) = t.agent_closed() {
            dial::close_conn(s, &conn, connect_id).await;
        }
    } else if let Leftover::Conn { connect_id, conn } = t.frontend_gone() {
        dial::close_conn(s, &conn, connect_id).await;
    }
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
    let Opened {
        tunnel: t,
        est,
        backend,
    } = match open(s, frontend, Protocol::Tcp, address).await {
        Ok(o) => o,
        Err(Some(e)) => return refuse(&mut sock, &e, answers).await,
        Err(None) => return,
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
    // A peer close is the agent's CLOSE_RSP, or our own abort of a client that stalled.
    let by_agent = matches!(end, SpliceEnd::PeerClosed(_));
    close(s, t, by_agent).await;
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
