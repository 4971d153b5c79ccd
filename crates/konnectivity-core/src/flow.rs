//! Per-connection flow-control credit (the negotiated konnectivity-rs extension).
//!
//! Upstream multiplexes every connection of an agent on one gRPC stream with no
//! per-connection back-pressure, so one reader that stops reading stalls the stream
//! for everybody. Between two konnectivity-rs peers each direction of each connection
//! instead has a byte window: the sender may have at most `window` bytes of DATA
//! unacknowledged; the receiver returns credit with WINDOW_UPDATE as it writes the
//! bytes onward. Receivers therefore never block the shared stream.
//!
//! These two types are plain counters; the I/O layers decide when to wait.

/// Default per-connection window in bytes.
pub const DEFAULT_WINDOW: u32 = 1024 * 1024;
/// Largest DATA payload we send (a read chunk). Well inside grpc-go's 4 MiB limit.
pub const MAX_CHUNK: usize = 256 * 1024;

/// The receiving side of one direction of one connection: counts bytes written onward
/// and says when to return credit.
#[derive(Debug)]
pub struct RecvWindow {
    window: u32,
    unacked: u64,
}

impl RecvWindow {
    /// A window of `window` bytes.
    pub fn new(window: u32) -> Self {
        Self { window, unacked: 0 }
    }

    /// Records that `n` bytes were written onward. Returns the credit to send back
    /// once a quarter of the window has been consumed (batching updates keeps them to
    /// a few percent of the DATA packets).
    pub fn consumed(&mut self, n: usize) -> Option<i64> {
        self.unacked += n as u64;
        if self.unacked >= u64::from(self.window / 4).max(1) {
            let credit = self.unacked;
            self.unacked = 0;
            Some(credit as i64)
        } else {
            None
        }
    }

    /// The largest number of bytes a well-behaved sender may have outstanding, plus one
    /// maximal packet of overshoot (a sender may send a whole packet while it has any
    /// positive credit).
    pub fn hard_limit(&self, max_packet: usize) -> usize {
        self.window as usize + max_packet
    }
}

/// The sending side: how many bytes we may still send. Goes negative by at most one
/// packet, because a sender with any positive credit may send a whole packet.
#[derive(Debug)]
pub struct SendCredit {
    credit: i64,
}

impl SendCredit {
    /// Starts with the peer's announced window.
    pub fn new(window: u32) -> Self {
        Self {
            credit: i64::from(window),
        }
    }
    /// Whether a packet may be sent now.
    pub fn can_send(&self) -> bool {
        self.credit > 0
    }
    /// How many bytes to read for the next packet: at most `chunk`, at least 1.
    pub fn next_chunk(&self, chunk: usize) -> usize {
        (self.credit.max(1) as usize).min(chunk)
    }
    /// Records a sent packet of `n` bytes.
    pub fn spend(&mut self, n: usize) {
        self.credit = self
            .credit
            .saturating_sub(i64::try_from(n).unwrap_or(i64::MAX));
    }
    /// Adds credit returned by the peer. Nonsense values (≤ 0) are ignored.
    pub fn grant(&mut self, n: i64) {
        if n > 0 {
            self.credit = self.credit.saturating_add(n);
        }
    }
    /// Current credit.
    pub fn available(&self) -> i64 {
        self.credit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_returns_credit_in_quarter_window_batches() {
        let mut w = RecvWindow::new(1000);
        assert_eq!(w.consumed(100), None);
        assert_eq!(w.consumed(100), None);
        assert_eq!(w.consumed(100), Some(300));
        assert_eq!(w.consumed(10), None);
    }

    #[test]
    fn sender_stops_at_zero_and_resumes_on_grant() {
        let mut c = SendCredit::new(100);
        assert!(c.can_send());
        assert_eq!(c.next_chunk(64), 64);
        c.spend(64);
        assert_eq!(c.next_chunk(64), 36);
        c.spend(36);
        assert!(!c.can_send());
        c.grant(-5);
        assert!(!c.can_send());
        c.grant(50);
        assert!(c.can_send());
        assert_eq!(c.available(), 50);
    }

    #[test]
    fn a_peers_huge_grants_saturate_instead_of_wrapping() {
        let mut c = SendCredit::new(100);
        c.grant(i64::MAX);
        c.grant(i64::MAX);
        assert_eq!(c.available(), i64::MAX);
        c.spend(usize::MAX);
        c.spend(usize::MAX);
        assert!(!c.can_send());
        assert_eq!(c.available(), -i64::MAX, "saturated, not wrapped");
    }
}
