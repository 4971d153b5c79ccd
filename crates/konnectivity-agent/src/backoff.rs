//! When the agent tries a server again, and how often it probes one that does not
//! answer: the sync loop's schedule, sans-IO (durations in, durations out; the random
//! draws are arguments, so the schedule is tested without a clock or a socket).
//!
//! # Two kinds of failure
//!
//! A failed attempt to open a stream either **reached the server's host** or **reached
//! nothing**, and the two call for opposite schedules:
//!
//! * [`Failure::Answered`]: the connection was refused or reset, the TLS or gRPC
//!   handshake failed or timed out, the response headers were wrong. Something on the
//!   server's side spent work on the attempt, and may be overloaded or restarting, so
//!   the agent backs off: ×1.5 from `--sync-interval` up to `--sync-interval-cap`, each
//!   delay drawn uniformly from its upper half ("equal jitter").
//! * [`Failure::Unanswered`]: no SYN-ACK came back within [`CONNECT_DEADLINE`] (a
//!   partition, a firewall dropping packets, a host that is down). The server never saw
//!   the attempt, so probing costs it nothing; what matters is noticing the moment the
//!   network heals. While one connect waits, the agent starts a fresh one every
//!   [`PROBE_GAP_MIN`]–[`PROBE_GAP_MAX`] (`crate::probe`), and after the deadline tries
//!   again within [`UNANSWERED_RETRY_MAX`].
//!
//! # Why probing is needed at all (the measured cause of slow recovery)
//!
//! A single `connect()` leaves the retries to the kernel, which resends a SYN after 1,
//! 3 and 7 s (doubling from the 1 s initial RTO). When a partition heals between two of
//! those, the next SYN can be 4 s away; the old loop then also slept its grown backoff
//! (1.5 s and up) after the 10 s connect timeout. After a 30 s partition the server was
//! ready again 3.2–3.5 s after the network healed (upstream 2.1–2.4 s). With a fresh
//! SYN at most [`PROBE_GAP_MAX`] apart, the first SYN after the heal leaves within
//! 0.8 s, and the stream is open a few round trips later.
//!
//! # Why this cannot become a reconnect storm
//!
//! Take N = 10,000 agents and one server.
//!
//! * **Server restarted** (its host answers with RST): every attempt is `Answered`.
//!   Delays grow 1, 1.5, 2.25 … 10 s and each is drawn from [d/2, d], so agents that
//!   lost the server at the same instant spread out further with every round, and once
//!   at the cap the fleet offers at most N / 5 s = 2,000 attempts per second (an RST
//!   each while the port is closed; one handshake per agent once it is open) — never
//!   more than the cold start of the whole fleet, which the bench's scale phase
//!   measures (10,000 agents, all at once, ready in 7–8 s on two cores).
//! * **Partition healed** (`Unanswered` until then): each agent sends one fresh SYN per
//!   0.5–0.8 s (a probe lives less than the kernel's 1 s SYN timeout, so it is sent
//!   once) plus the kernel's resends of its oldest connect (at 1, 2, 3, 4, 6 s with
//!   `tcp_syn_linear_timeouts=4`; 1, 3, 7 s before): about 2 SYN/s, about 20,000 SYN/s
//!   (≈ 10 Mbit/s of 60-byte packets) for the whole fleet, all dropped by the partition. When it heals every agent completes *one* handshake:
//!   N handshakes within 0.8 s, the same work as a cold start. What the server cannot
//!   take at once its kernel sheds for the price of a dropped SYN (listen backlog
//!   1024, or SYN cookies); an agent whose TLS handshake then times out has been
//!   `Answered` and backs off. Probing never multiplies work on a server that answers.
//! * No failure makes the loop spin: an `Unanswered` attempt lasts the whole
//!   [`CONNECT_DEADLINE`], and every `Answered` one is followed by at least half of
//!   `--sync-interval`.
use std::time::Duration;

/// How long one attempt waits for any TCP answer before it counts as
/// [`Failure::Unanswered`] (the agent's connect timeout, as before).
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// Shortest gap between two fresh connects while no answer has come.
pub const PROBE_GAP_MIN: Duration = Duration::from_millis(500);

/// Longest gap between two fresh connects while no answer has come: the bound on how
/// long after the network heals the agent's next SYN leaves.
pub const PROBE_GAP_MAX: Duration = Duration::from_millis(800);

/// After an [`Failure::Unanswered`] attempt the next one starts within this.
pub const UNANSWERED_RETRY_MAX: Duration = Duration::from_millis(100);

/// How an attempt to open a stream failed (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing answered within [`CONNECT_DEADLINE`]: the server never saw us.
    Unanswered,
    /// The server's host (or something in front of it) answered and refused, reset,
    /// or failed the handshake.
    Answered,
}

/// The sync loop's delay state: `--sync-interval` after a success, growing ×1.5 up to
/// `--sync-interval-cap` over consecutive [`Failure::Answered`] attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    interval: Duration,
    cap: Duration,
    /// The upper bound of the next delay after an answered failure.
    next: Duration,
}

impl Backoff {
    /// A fresh schedule (`interval` ≤ `cap` is validated by the flags).
    pub fn new(interval: Duration, cap: Duration) -> Self {
        Self {
            interval,
            cap: cap.max(interval),
            next: interval,
        }
    }

    /// The delay after a successful round (or one with nothing to do): the sync
    /// interval plus 0–10 % (as upstream). Resets the backoff. `r` is uniform in [0, 1).
    pub fn success(&mut self, r: f64) -> Duration {
        self.next = self.interval;
        self.interval.mul_f64(1.0 + 0.1 * unit(r))
    }

    /// The delay after a failed attempt. `r` is uniform in [0, 1).
    pub fn failure(&mut self, kind: Failure, r: f64) -> Duration {
        match kind {
            Failure::Unanswered => UNANSWERED_RETRY_MAX.mul_f64(unit(r)),
            Failure::Answered => {
                let d = self.next;
                self.next = self.next.mul_f64(1.5).min(self.cap);
                d.mul_f64(0.5 + 0.5 * unit(r))
            }
        }
    }
}

/// The gap before the next fresh connect while none has been answered. `r` is uniform
/// in [0, 1).
pub fn probe_gap(r: f64) -> Duration {
    PROBE_GAP_MIN + (PROBE_GAP_MAX - PROBE_GAP_MIN).mul_f64(unit(r))
}

/// Clamps a random draw into [0, 1] (NaN reads as 0).
fn unit(r: f64) -> f64 {
    if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(10);

    #[test]
    fn answered_failures_grow_by_half_up_to_the_cap_with_equal_jitter() {
        let mut b = Backoff::new(S, CAP);
        let uppers: Vec<f64> = (0..10)
            .map(|_| b.failure(Failure::Answered, 1.0).as_secs_f64())
            .collect();
        let want = [
            1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375, 10.0, 10.0, 10.0, 10.0,
        ];
        for (got, want) in uppers.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{uppers:?}");
        }
        let mut b = Backoff::new(S, CAP);
        let lowers: Vec<f64> = (0..8)
            .map(|_| b.failure(Failure::Answered, 0.0).as_secs_f64())
            .collect();
        assert!((lowers[0] - 0.5).abs() < 1e-6 && (lowers[7] - 5.0).abs() < 1e-6);
    }

    #[test]
    fn unanswered_failures_retry_at_once_and_leave_the_backoff_alone() {
        let mut b = Backoff::new(S, CAP);
        b.failure(Failure::Answered, 0.5);
        b.failure(Failure::Answered, 0.5);
        for r in [0.0, 0.5, 0.999] {
            assert!(b.failure(Failure::Unanswered, r) <= UNANSWERED_RETRY_MAX);
        }
        // The answered schedule continues where it was: 2.25 s is next.
        assert_eq!(
            b.failure(Failure::Answered, 1.0),
            Duration::from_secs_f64(2.25)
        );
    }

    #[test]
    fn success_resets_the_backoff_to_the_sync_interval() {
        let mut b = Backoff::new(S, CAP);
        for _ in 0..10 {
            b.failure(Failure::Answered, 0.5);
        }
        let d = b.success(0.5);
        assert!(d >= S && d <= S.mul_f64(1.1));
        assert_eq!(b.failure(Failure::Answered, 1.0), S);
    }

    #[test]
    fn probes_leave_at_most_the_max_gap_apart_and_never_spin() {
        for i in 0..=100 {
            let g = probe_gap(f64::from(i) / 100.0);
            assert!((PROBE_GAP_MIN..=PROBE_GAP_MAX).contains(&g), "{g:?}");
        }
        assert_eq!(probe_gap(f64::NAN), PROBE_GAP_MIN);
        assert_eq!(probe_gap(-3.0), PROBE_GAP_MIN);
        assert_eq!(probe_gap(7.0), PROBE_GAP_MAX);
    }

    #[test]
    fn a_fleet_at_the_cap_offers_at_most_one_attempt_per_agent_per_half_cap() {
        // 10,000 agents refused in lock step: with equal jitter no window of half the
        // cap holds more than every agent once (the bound the module docs use).
        let agents = 10_000usize;
        let mut clocks = vec![0.0f64; agents];
        let mut schedules: Vec<_> = (0..agents).map(|_| Backoff::new(S, CAP)).collect();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut draw = || {
            // xorshift: deterministic and dependency-free
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut attempts = Vec::new();
        for (clock, b) in clocks.iter_mut().zip(&mut schedules) {
            while *clock < 60.0 {
                *clock += b.failure(Failure::Answered, draw()).as_secs_f64();
                attempts.push(*clock);
            }
        }
        attempts.sort_by(f64::total_cmp);
        // After the first 20 s every agent is at the cap: count attempts per second.
        let late: Vec<_> = attempts
            .iter()
            .filter(|t| **t >= 30.0 && **t < 60.0)
            .collect();
        let per_second = late.len() as f64 / 30.0;
        assert!(per_second <= agents as f64 / 5.0, "{per_second} attempts/s");
        let busiest = (30..60)
            .map(|s| {
                late.iter()
                    .filter(|t| ***t >= s as f64 && ***t < s as f64 + 1.0)
                    .count()
            })
            .max()
            .unwrap_or_default();
        assert!(
            busiest <= agents / 4,
            "busiest second had {busiest} attempts"
        );
    }
}
