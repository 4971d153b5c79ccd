//! The bounded memory behind the status page: a few minutes of rates per agent stream,
//! and the last failed dials.
//!
//! Nothing here is on the data path. The counters already kept for `/status` (bytes
//! each way, dials, failed dials: relaxed atomics on the [`Backend`]) are read by one
//! sampler task every [`SAMPLE_INTERVAL`] into a ring of [`SAMPLES`] points that lives
//! on the backend and goes away with it; rates are computed only when `/status` is
//! read. Failed dials go into one ring of [`DIAL_FAILURES`] entries for the process.
//! Memory is therefore bounded by the number of agent streams, whatever the traffic,
//! and a reload of the page keeps the history.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::document::{self, DialCause, FrontendKind};
use crate::state::{Backend, Shared, lock};

/// How often the sampler reads the counters.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How many intervals each agent stream remembers (5 minutes at 5 s).
pub const SAMPLES: usize = 60;
/// How many failed dials the server remembers.
pub const DIAL_FAILURES: usize = 50;

/// Unix milliseconds of a wall-clock time (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The cumulative counters of one agent stream at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    to_agent: u64,
    from_agent: u64,
    dials: u64,
    failed: u64,
}

impl Counters {
    fn of(b: &Backend) -> Self {
        Self {
            to_agent: b.tx.data_bytes(),
            from_agent: b.bytes_from_agent.load(Ordering::Relaxed),
            dials: b.dials.load(Ordering::Relaxed),
            failed: b.failed_dials.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Point {
    /// Wall clock, for display.
    at_ms: u64,
    /// Monotonic, for the rates.
    at: Instant,
    counters: Counters,
}

/// One agent stream's samples: at most [`SAMPLES`] + 1 points, so [`SAMPLES`] rates.
#[derive(Debug)]
pub struct History {
    points: VecDeque<Point>,
}

impl History {
    /// A history that starts now with every counter at zero (the stream was just
    /// accepted), so the first sample already yields a rate.
    pub fn new() -> Self {
        let mut points = VecDeque::with_capacity(SAMPLES + 1);
        points.push_back(Point {
            at_ms: unix_ms(SystemTime::now()),
            at: Instant::now(),
            counters: Counters::default(),
        });
        Self { points }
    }

    fn push(&mut self, p: Point) {
        if self.points.len() > SAMPLES {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    /// The rates between consecutive points, oldest first.
    pub fn rates(&self) -> document::History {
        let mut h = document::History::default();
        for (a, b) in self.points.iter().zip(self.points.iter().skip(1)) {
            let secs = b.at.duration_since(a.at).as_secs_f64();
            if secs <= 0.0 {
                continue;
            }
            let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
            h.end_ms.push(b.at_ms);
            h.bytes_to_agent_per_s
                .push(per_s(a.counters.to_agent, b.counters.to_agent).round() as u64);
            h.bytes_from_agent_per_s
                .push(per_s(a.counters.from_agent, b.counters.from_agent).round() as u64);
            h.dials_per_s
                .push(round2(per_s(a.counters.dials, b.counters.dials)));
            h.failed_dials_per_s
                .push(round2(per_s(a.counters.failed, b.counters.failed)));
        }
        h
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Takes one sample of every agent stream.
pub fn sample(s: &Shared) {
    let backends = s.table().entries();
    let at_ms = unix_ms(SystemTime::now());
    let at = Instant::now();
    for (b, _) in backends {
        let counters = Counters::of(&b);
        lock(&b.history).push(Point {
            at_ms,
            at,
            counters,
        });
    }
}

/// Samples every [`SAMPLE_INTERVAL`] until `shutdown`.
pub async fn run_sampler(s: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval_at(Instant::now() + SAMPLE_INTERVAL, SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => sample(&s),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The last [`DIAL_FAILURES`] failed dials, and how many there were in all.
#[derive(Debug, Default)]
pub struct DialFailures {
    ring: Mutex<VecDeque<document::DialFailure>>,
    total: AtomicU64,
}

impl DialFailures {
    /// Remembers a failed dial, forgetting the oldest beyond [`DIAL_FAILURES`].
    pub fn record(
        &self,
        agent_id: Option<&str>,
        destination: &str,
        frontend: FrontendKind,
        error: &str,
    ) {
        let cause = DialCause::of(error);
        let f = document::DialFailure {
            at_ms: unix_ms(SystemTime::now()),
            destination: destination.to_owned(),
            agent: agent_id.map(str::to_owned),
            frontend,
            cause,
            explanation: cause.explanation().to_owned(),
            error: error.to_owned(),
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut ring = lock(&self.ring);
        if ring.len() >= DIAL_FAILURES {
            ring.pop_front();
        }
        ring.push_back(f);
    }

    /// The remembered failures, newest first.
    pub fn recent(&self) -> Vec<document::DialFailure> {
        lock(&self.ring).iter().rev().cloned().collect()
    }

    /// Failed dials since the start, including forgotten ones.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_ring_keeps_only_the_newest() {
        let f = DialFailures::default();
        for i in 0..(DIAL_FAILURES + 7) {
            f.record(
                Some("a"),
                &format!("10.0.0.1:{i}"),
                FrontendKind::Grpc,
                "dial tcp 10.0.0.1:1: connect: connection refused",
            );
        }
        let r = f.recent();
        assert_eq!(r.len(), DIAL_FAILURES);
        assert_eq!(f.total(), (DIAL_FAILURES + 7) as u64);
        assert_eq!(r[0].destination, format!("10.0.0.1:{}", DIAL_FAILURES + 6));
        assert_eq!(r[0].cause, DialCause::Refused);
    }

    #[test]
    fn history_is_bounded_and_yields_rates() {
        let mut h = History::new();
        let t0 = h.points[0].at;
        for i in 1..=(SAMPLES as u64 + 10) {
            h.push(Point {
                at_ms: i * 5000,
                at: t0 + Duration::from_secs(5 * i),
                counters: Counters {
                    to_agent: i * 5000,
                    from_agent: i * 10_000,
                    dials: i * 5,
                    failed: i,
                },
            });
        }
        let r = h.rates();
        assert_eq!(r.end_ms.len(), SAMPLES);
        assert!(r.bytes_to_agent_per_s.iter().all(|&x| x == 1000));
        assert!(r.bytes_from_agent_per_s.iter().all(|&x| x == 2000));
        assert!(r.dials_per_s.iter().all(|&x| x == 1.0));
        assert!(r.failed_dials_per_s.iter().all(|&x| x == 0.2));
    }
}
