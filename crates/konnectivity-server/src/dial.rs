//! What both frontends do to open and close a tunneled connection: pick a backend,
//! register the pending dial, send the DIAL_REQ; expire it at its deadline; and the
//! cleanup when a frontend goes away mid-dial or mid-connection. The frontend's
//! [`konnectivity_core::tunnel::Tunnel`] decides *when*; these functions do it.
use std::sync::Arc;

use konnectivity_core::address::host_of;
use konnectivity_core::dial::DialError;
use konnectivity_core::packet;
use konnectivity_core::protocol::{Protocol, SERVED, TCP_AND_UDP};
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
    /// The registration's ticket ([`Pending::ticket`]).
    ticket: u64,
}

/// Checks the frontend's `protocol` against the allowlist (`tcp`, and `udp` with
/// `--enable-udp`; anything else is refused here, before an agent is chosen, and never
/// reaches one), picks a backend
/// for `address` and sends it `DIAL_REQ{protocol, address, random}`. A failure is
/// counted here (policy and limit refusals in their own metrics) and remembered for
/// the status page.
pub async fn start(
    s: &Shared,
    frontend: FrontendKind,
    protocol: &str,
    address: &str,
    random: i64,
) -> Result<Dialing, DialError> {
    let allowed = if s.settings.enable_udp {
        TCP_AND_UDP
    } else {
        SERVED
    };
    let started = match Protocol::parse_in(protocol, allowed) {
        Ok(p) => send_dial_req(s, frontend, p, address, random).await,
        Err(e) => {
            let e = DialError::from(e);
            s.metrics.dial_failed(&e);
            Err(e)
        }
    };
    if let Err(e) = &started {
        crate::status::record_start_error(s, frontend, address, e);
    }
    started
}

async fn send_dial_req(
    s: &Shared,
    frontend: FrontendKind,
    protocol: Protocol,
    address: &str,
    random: i64,
) -> Result<Dialing, DialError> {
    if let Err(e) = s.settings.policy.check_address(address) {
        s.metrics.policy_denied();
        return Err(DialError::Denied(e));
    }
    let picked = s.table().pick(host_of(address), &mut rand::rng());
    let Some(backend) = picked else {
        s.metrics.dial_failed(&DialError::NoAgent);
        return Err(DialError::NoAgent);
    };
    let max = s.settings.max_pending_per_agent;
    if max > 0 && backend.pending_dials() >= max {
        s.metrics.limit_hit("max-pending-dials-per-agent");
        return Err(DialError::Limit(format!(
            "too many pending dials on agent {} (--max-pending-dials-per-agent={max})",
            backend.agent_id
        )));
    }
    let (tx, reply) = oneshot::channel();
    let ticket = s.next_id();
    {
        let mut pending = s.pending();
        if pending.contains_key(&random) {
            return Err(DialError::DuplicateDialId);
        }
        pending.insert(
            random,
            Pending::new(
                backend.clone(),
                tx,
                ticket,
                address,
                frontend,
                protocol,
                s.dial_failures.clone(),
            ),
        );
        s.metrics.set_pending(pending.len());
    }
    debug!(address, random, agent_id = %backend.agent_id, "dialing");
    let dialing = Dialing {
        backend,
        random,
        reply,
        ticket,
    };
    let sent = send_dial(
        s,
        &dialing.backend,
        packet::dial_req(protocol.as_str(), address, random),
    )
    .await;
    if let Err(e) = sent {
        if let Some(p) = take_own(s, &dialing) {
            p.fail(&e.wire_text());
            s.metrics.dial_failed(&e);
        }
        return Err(e);
    }
    Ok(dialing)
}

/// The pending dial's deadline passed: removes it and counts the timeout. False when
/// the agent's answer came first (it is then on its way to the frontend).
pub fn expire(s: &Shared, dialing: &Dialing) -> bool {
    let expired = take_own(s, dialing).is_some();
    if expired {
        s.metrics.dial_failed(&DialError::BackendDialTimeout);
    }
    expired
}

/// Removes the frontend's own pending dial if it is still there (another frontend's
/// dial under the same ID is left alone).
fn take_own(s: &Shared, dialing: &Dialing) -> Option<Pending> {
    let mut pending = s.pending();
    let p = match pending.get(&dialing.random) {
        Some(p) if p.ticket == dialing.ticket => pending.remove(&dialing.random),
        _ => None,
    };
    s.metrics.set_pending(pending.len());
    p
}

/// The frontend gave up on its own pending dial (DIAL_CLS, or it went away): forget
/// it, count `frontend_close`, and tell the agent with DIAL_CLS (which upstream agents
/// ignore and ours use to stop dialing).
///
/// Takes the [`Dialing`] the frontend's own dial produced, so a frontend can only ever
/// abandon the dial ID it registered, never another frontend's.
pub fn abandon(s: &Shared, dialing: Dialing) {
    if let Some(p) = take_own(s, &dialing) {
        s.metrics.dial_failure(DialFailureReason::FrontendClose);
        let _ = p.backend.tx.control(packet::dial_cls(dialing.random));
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
