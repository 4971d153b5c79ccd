//! The awaitable sender side of per-connection flow control.
//!
//! Wraps [`konnectivity_core::flow::SendCredit`] semantics in atomics so the shared
//! stream's reader (which receives WINDOW_UPDATE) can grant credit to a connection
//! task that is waiting for it, without locks held across awaits.
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

/// Credit for one direction of one connection. `None` where the peer has no flow
/// control (an upstream peer): then sending is never gated.
#[derive(Debug)]
pub struct Credit {
    available: AtomicI64,
    /// The initial window plus every grant, so that what was sent is known without a
    /// counter on the data path (`sent = credited - available`).
    credited: AtomicI64,
    /// Wakes the single connection task waiting for credit (a stored permit covers a
    /// grant that lands between its check and its wait).
    granted: Notify,
}

impl Credit {
    /// Starts with the peer's window.
    pub fn new(window: u32) -> Self {
        Self {
            available: AtomicI64::new(i64::from(window)),
            credited: AtomicI64::new(i64::from(window)),
            granted: Notify::new(),
        }
    }

    /// Waits until some credit is available.
    pub async fn ready(&self) {
        loop {
            let notified = self.granted.notified();
            if self.available.load(Ordering::Acquire) > 0 {
                return;
            }
            notified.await;
        }
    }

    /// Whether a packet may be sent now.
    pub fn can_send(&self) -> bool {
        self.available.load(Ordering::Acquire) > 0
    }

    /// How many bytes the next read may take: at most `chunk`, at least 1.
    pub fn next_chunk(&self, chunk: usize) -> usize {
        (self.available.load(Ordering::Acquire).max(1) as usize).min(chunk)
    }

    /// Records `n` bytes sent (saturating: never wraps, whatever `n`).
    pub fn spend(&self, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.update(|a| a.saturating_sub(n));
    }

    /// Bytes sent so far (for status pages; the two counters are read one after the
    /// other, so a concurrent grant may make it briefly high by that grant).
    pub fn sent(&self) -> u64 {
        let available = self.available.load(Ordering::Acquire);
        let credited = self.credited.load(Ordering::Relaxed);
        u64::try_from(credited.saturating_sub(available)).unwrap_or(0)
    }

    /// Adds credit from a WINDOW_UPDATE; non-positive values are ignored. The number
    /// is the peer's: the sum saturates at `i64::MAX` instead of wrapping to a
    /// negative credit that would stall the connection forever.
    pub fn grant(&self, n: i64) {
        if n > 0 {
            self.credited
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    Some(c.saturating_add(n))
                })
                .ok();
            self.update(|a| a.saturating_add(n));
            self.granted.notify_one();
        }
    }

    fn update(&self, f: impl Fn(i64) -> i64) {
        // `fetch_update` with a closure that always returns `Some` cannot fail.
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| Some(f(a)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiting_sender_wakes_when_credit_is_granted() {
        let c = Arc::new(Credit::new(10));
        c.spend(10);
        assert!(!c.can_send());
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.ready().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        c.grant(5);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.next_chunk(100), 5);
    }

    #[test]
    fn bytes_sent_follow_from_credit_without_a_data_path_counter() {
        let c = Credit::new(10);
        c.spend(4);
        c.grant(4);
        c.spend(7);
        assert_eq!(c.sent(), 11);
    }

    #[test]
    fn a_peers_huge_grants_saturate_instead_of_wrapping() {
        let c = Credit::new(1 << 20);
        c.grant(i64::MAX);
        c.grant(i64::MAX);
        assert!(c.can_send(), "credit wrapped negative");
        assert_eq!(c.next_chunk(256 * 1024), 256 * 1024);
        c.spend(10);
        assert!(c.can_send());
    }

    #[test]
    fn non_positive_grants_are_ignored_and_spending_never_wraps() {
        let c = Credit::new(10);
        c.grant(0);
        c.grant(i64::MIN);
        assert_eq!(c.next_chunk(100), 10);
        c.spend(usize::MAX);
        c.spend(usize::MAX);
        assert!(!c.can_send(), "spending wrapped positive");
        c.grant(i64::MAX);
        assert!(!c.can_send(), "saturated debt is repaid, not flipped");
    }
}
