//! What both frontends do to open and close a tunneled connection: pick a backend,
//! register the pending dial, send the DIAL_REQ; and the cleanup when a frontend goes
//! away mid-dial or mid-connection.
use std::sync::Arc;

use konnectivity_core::address::host_of;
use konnectivity_core::packet;
use tokio::sync::oneshot;
use tracing::debug;

use crate::backend::send_dial;
use crate::metrics::DialFailureReason;
use crate::state::{Backend, DialOutcome, Pending, Shared};
use crate::status::document::FrontendKind;

/// A dial sent to an agent, awaiting its outcome.
#[derive(Debug)]
pub struct Dialing {
    /// The backend the dial went to.
    pub backend: Arc<Backend>,
    /// The dial ID.
    pub random: i64,
    /// Completes with the outcome.
    pub reply: oneshot::Receiver<DialOutcome>,
}

/// Why a dial could not be started.
#[derive(Debug)]
pub enum StartError {
    /// No strategy found an agent.
    NoAgent,
    /// The dial ID is already pending (a collision, or a client reusing IDs).
    DuplicateDialId,
    /// The destination policy denies the address.
    Denied(String),
    /// A limit was reached; the text names it.
    Limit(String),
    /// The DIAL_REQ could not be sent; `timeout` when `--backend-dial-timeout` hit.
    Send {
        /// The error text.
        error: String,
        /// Whether the backend dial timeout caused it.
        timeout: bool,
    },
}

/// Picks a backend for `address` and sends it `DIAL_REQ{tcp, address, random}`. A dial
/// that cannot start is remembered for the status page.
pub async fn start(
    s: &Shared,
    frontend: FrontendKind,
    address: &str,
    random: i64,
) -> Result<Dialing, StartError> {
    let started = send_dial_req(s, frontend, address, random).await;
    if let Err(e) = &started {
        crate::status::record_start_error(s, frontend, address, e);
    }
    started
}

async fn send_dial_req(
    s: &Shared,
    frontend: FrontendKind,
    address: &str,
    random: i64,
) -> Result<Dialing, StartError> {
    if let Err(e) = s.settings.policy.check_address(address) {
        s.metrics.policy_denied();
        return Err(StartError::Denied(e));
    }
    let backend = s
        .table()
        .pick(host_of(address), &mut rand::rng())
        .ok_or(StartError::NoAgent)?;
    let max = s.settings.max_pending_per_agent;
    if max > 0 && backend.pending_dials() >= max {
        s.metrics.limit_hit("max-pending-dials-per-agent");
        return Err(StartError::Limit(format!(
            "too many pending dials on agent {} (--max-pending-dials-per-agent={max})",
            backend.agent_id
        )));
    }
    let (tx, reply) = oneshot::channel();
    {
        let mut pending = s.pending();
        if pending.contains_key(&random) {
            return Err(StartError::DuplicateDialId);
        }
        pending.insert(
            random,
            Pending::new(
                backend.clone(),
                tx,
                address,
                frontend,
                s.dial_failures.clone(),
            ),
        );
        s.metrics.set_pending(pending.len());
    }
    debug!(address, random, agent_id = %backend.agent_id, "dialing");
    if let Err(error) = send_dial(s, &backend, packet::dial_req("tcp", address, random)).await {
        let timeout = error == konnectivity_core::wire::BACKEND_DIAL_TIMEOUT;
        if let Some(p) = take_pending(s, random) {
            p.fail(&error);
            s.metrics.dial_failure(if timeout {
                DialFailureReason::BackendDialTimeout
            } else {
                DialFailureReason::BackendClose
            });
        }
        return Err(StartError::Send { error, timeout });
    }
    Ok(Dialing {
        backend,
        random,
        reply,
    })
}

/// Removes a pending dial if it is still there.
pub fn take_pending(s: &Shared, random: i64) -> Option<Pending> {
    let mut pending = s.pending();
    let p = pending.remove(&random);
    s.metrics.set_pending(pending.len());
    p
}

/// The frontend gave up on a pending dial: forget it, count `reason`, and tell the
/// agent with DIAL_CLS (which upstream agents ignore and ours use to stop dialing).
pub fn abandon(s: &Shared, random: i64, reason: DialFailureReason) {
    if let Some(p) = take_pending(s, random) {
        s.metrics.dial_failure(reason);
        let _ = p.backend.tx.control(packet::dial_cls(random));
        p.abandon();
    }
}

/// The frontend closed an established connection: if the agent has not closed it yet,
/// forget it and send CLOSE_REQ after any DATA already queued for the agent.
pub async fn close_conn(s: &Shared, b: &Backend, connect_id: i64) {
    let entry = b.conns().remove(&connect_id);
    if let Some(e) = entry {
        s.metrics
            .connection_closed(e.since.elapsed(), "frontend_closed");
        let _ = b.tx.send(packet::close_req(connect_id)).await;
    }
}
