//! UDP connections (`DialRequest.protocol "udp"`): a connected UDP socket on the node,
//! one datagram per DATA packet each way, as upstream's agent does with Go's
//! `net.Dial("udp")` (so our server and upstream's can use either agent).
//!
//! The rules are `konnectivity_core::datagram`'s; this module is their I/O. What it
//! adds to upstream: the destination policy applies, `--max-udp-sockets` bounds the
//! sockets open at once (agent-wide; extra dials get a DIAL_RSP error), a DATA payload
//! larger than one UDP datagram closes the connection instead of being truncated, a
//! connection idle for `--udp-idle-timeout` is closed with CLOSE_RSP, and datagrams from
//! the destination are dropped (never queued) while the server's window is spent.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use konnectivity_core::datagram::{self, Idle, Verdict};
use konnectivity_core::packet;
use konnectivity_tunnel::credit::Credit;
use konnectivity_tunnel::queue::{ConnReceiver, Inbound};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{StreamState, close_conn, open_conn};
use crate::dialer;
use crate::metrics::Metrics;

/// How the agent serves UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSettings {
    /// `--udp-idle-timeout`: a connection with no datagram either way for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// `--max-udp-sockets`: sockets open at once, agent-wide; 0 serves no UDP.
    pub max_sockets: usize,
}

impl Default for UdpSettings {
    /// The flag defaults: 60 s idle, 1024 sockets.
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_sockets: 1024,
        }
    }
}

/// One socket counted against `--max-udp-sockets`, given back on drop.
struct Slot(Arc<Metrics>);

impl Slot {
    fn take(metrics: &Arc<Metrics>, max: usize) -> Option<Slot> {
        metrics
            .udp
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(metrics.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.udp.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Dials, answers, relays datagrams, and closes one UDP connection.
pub(super) async fn serve_conn(st: Arc<StreamState>, id: i64, random: i64, address: String) {
    let max = st.udp.max_sockets;
    let Some(_slot) = Slot::take(&st.metrics, max) else {
        st.metrics.udp.refused.fetch_add(1, Ordering::Relaxed);
        warn!(%address, max, "refusing a UDP dial: --max-udp-sockets reached");
        let text = format!(
            "dial udp {address}: too many UDP sockets open on this agent (--max-udp-sockets={max})"
        );
        let _ = st.tx.send(packet::dial_rsp(random, 0, text)).await;
        return;
    };
    let started = std::time::Instant::now();
    let sock = match dialer::dial_udp(&address, dialer::DIAL_TIMEOUT, &st.policy).await {
        Ok(s) => {
            st.metrics.dial_done(started.elapsed());
            st.metrics.udp.dials.fetch_add(1, Ordering::Relaxed);
            s
        }
        Err((text, why)) => {
            debug!(%address, error = %text, "UDP dial failed");
            st.metrics.dial_failure(why);
            let _ = st.tx.send(packet::dial_rsp(random, 0, text)).await;
            return;
        }
    };
    let Some((mut rx, credit)) = open_conn(&st, id, random).await else {
        return;
    };
    rx.keep_datagrams();
    debug!(%address, connect_id = id, "UDP connected");
    let error = relay(&st, &sock, id, &mut rx, credit).await;
    close_conn(&st, id, error).await;
}

/// Relays datagrams until the server closes the connection, the socket fails, a DATA
/// payload is too large or the connection is idle: the CLOSE_RSP error text, or `None`
/// when the stream is gone.
async fn relay(
    st: &StreamState,
    sock: &UdpSocket,
    id: i64,
    rx: &mut ConnReceiver,
    credit: Option<Arc<Credit>>,
) -> Option<String> {
    let mut idle = Idle::new(st.udp.idle_timeout, Instant::now().into_std());
    // One byte more than the largest datagram, so none is ever cut silently.
    let mut buf = vec![0u8; datagram::MAX_UDP_PAYLOAD + 1];
    let counters = &st.metrics.udp;
    loop {
        let deadline = Instant::from_std(idle.deadline());
        tokio::select! {
            m = rx.recv() => match m {
                Some(Inbound::Data(d)) => {
                    let n = d.len();
                    if let Err(e) = datagram::to_destination(n) {
                        warn!(connect_id = id, error = %e, "closing a UDP connection");
                        return Some(e.to_string());
                    }
                    if let Err(e) = sock.send(&d).await {
                        debug!(connect_id = id, error = %e, "UDP write failed");
                        return Some(format!("write udp: {e}"));
                    }
                    counters.to_destination.fetch_add(1, Ordering::Relaxed);
                    rx.written(n);
                    idle.touch(Instant::now().into_std());
                }
                Some(Inbound::Close(e)) => return Some(e),
                None => return None,
            },
            r = sock.recv(&mut buf) => match r {
                Ok(n) => {
                    idle.touch(Instant::now().into_std());
                    match datagram::from_destination(credit.as_ref().map(|c| c.can_send())) {
                        Verdict::Drop => {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Verdict::Send => {
                            if let Some(c) = &credit {
                                c.spend(n);
                            }
                            let d = Bytes::copy_from_slice(&buf[..n]);
                            if st.tx.send_whole(packet::data(id, d)).await.is_err() {
                                return None;
                            }
                            counters.from_destination.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // An ICMP error for an earlier datagram (port unreachable) ends the
                // connection, as it ends Go's Read on upstream's agent.
                Err(e) => {
                    debug!(connect_id = id, error = %e, "UDP read failed");
                    return Some(format!("read udp: {e}"));
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                debug!(connect_id = id, "UDP connection idle");
                return Some(idle.close_text());
            }
            _ = st.tx.closed() => return None,
        }
    }
}
