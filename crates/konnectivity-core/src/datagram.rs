//! UDP through the tunnel (`DialRequest.protocol "udp"`): the rules of a datagram
//! connection, as values the agent's I/O loop asks about.
//!
//! One DATA packet is one datagram, each way, as upstream's agent does it (Go's
//! `net.Dial("udp")`, one `Write` per DATA, one `Read` per DATA), so a mixed fleet
//! matches on the wire. Boundaries are kept end to end: a DATA payload larger than
//! the largest UDP payload is refused with a close, never split; an empty one is an
//! empty datagram. A connection with no datagram either way for the idle timeout is
//! closed ([`Idle`]); the clock is the caller's.
//!
//! Flow control: UDP has none, and the tunnel does not add a queue in front of it. A
//! datagram from the destination that arrives while the peer has granted no credit
//! is dropped and counted ([`Verdict::Drop`]), never queued: a socket that cannot keep
//! up loses datagrams, as it would without the tunnel.
use std::time::{Duration, Instant};

/// The largest UDP payload over IPv4 (65,535 − 8 UDP header − 20 IP header bytes).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// What to do with one datagram from the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it as one DATA packet.
    Send,
    /// The peer's window is spent: drop it (UDP semantics), count it.
    Drop,
}

/// Decides on a datagram from the destination given whether the peer's credit allows
/// a packet now (`None`: the peer has no flow control, e.g. upstream's server).
pub fn from_destination(credit_available: Option<bool>) -> Verdict {
    match credit_available {
        Some(false) => Verdict::Drop,
        _ => Verdict::Send,
    }
}

/// A DATA payload too large to be one UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "datagram of {len} bytes exceeds the maximum UDP payload of {MAX_UDP_PAYLOAD} bytes (datagrams are never split)"
)]
pub struct TooLarge {
    /// The payload's length.
    pub len: usize,
}

/// Checks a DATA payload bound for the destination.
pub fn to_destination(len: usize) -> Result<(), TooLarge> {
    if len > MAX_UDP_PAYLOAD {
        return Err(TooLarge { len });
    }
    Ok(())
}

/// The idle timeout of one UDP connection: the deadline moves with every datagram,
/// either way.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    timeout: Duration,
    last: Instant,
}

impl Idle {
    /// A connection opened at `now`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self { timeout, last: now }
    }

    /// A datagram passed at `now`.
    pub fn touch(&mut self, now: Instant) {
        self.last = self.last.max(now);
    }

    /// When the connection is closed if nothing passes before.
    pub fn deadline(&self) -> Instant {
        self.last + self.timeout
    }

    /// The CLOSE_RSP error text when the deadline passes.
    pub fn close_text(&self) -> String {
        format!(
            "udp connection idle for {}s (--udp-idle-timeout)",
            self.timeout.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_udp_payload_passes_and_one_more_byte_is_refused() {
        assert_eq!(to_destination(0), Ok(()));
        assert_eq!(to_destination(MAX_UDP_PAYLOAD), Ok(()));
        let e = to_destination(MAX_UDP_PAYLOAD + 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "datagram of 65508 bytes exceeds the maximum UDP payload of 65507 bytes (datagrams are never split)"
        );
    }

    #[test]
    fn datagrams_without_credit_are_dropped_not_queued() {
        assert_eq!(from_destination(None), Verdict::Send);
        assert_eq!(from_destination(Some(true)), Verdict::Send);
        assert_eq!(from_destination(Some(false)), Verdict::Drop);
    }

    #[test]
    fn every_datagram_moves_the_idle_deadline() {
        let t0 = Instant::now();
        let mut idle = Idle::new(Duration::from_secs(60), t0);
        assert_eq!(idle.deadline(), t0 + Duration::from_secs(60));
        idle.touch(t0 + Duration::from_secs(30));
        assert_eq!(idle.deadline(), t0 + Duration::from_secs(90));
        idle.touch(t0 + Duration::from_secs(10));
        assert_eq!(idle.deadline(), t0 + Duration::from_secs(90), "never back");
        assert_eq!(
            idle.close_text(),
            "udp connection idle for 60s (--udp-idle-timeout)"
        );
    }
}
