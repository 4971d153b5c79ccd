//! The process-wide bound on bytes held in connection queues, and the stall rule.
//!
//! Every connection queue ([`crate::queue`]) counts its bytes here as well as in its
//! own budget. When a push takes the process over [`MemoryBudget::limit`], or a
//! connection over its own high-water mark, the shared stream's reader is told to
//! pause ([`crate::queue::Pressure`]) instead of letting memory grow: the peer then
//! waits in HTTP/2 flow control. It resumes once the bytes have drained below the
//! low-water marks.
//!
//! Pausing is only right while consumers make progress. A consumer that makes none
//! for [`MemoryBudget::stall`] while it holds bytes above its low-water mark (the level
//! a paused reader waits for) — or any bytes while the process is over its limit — is
//! *stalled*: the sweeper
//! ([`MemoryBudget::run_sweeper`]) aborts that one connection, which frees its bytes
//! and ends every pause that waited on it. A slow consumer is therefore never cut,
//! and a stalled one is cut after the stall timeout, not when a byte count is hit.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::{Abort, QueueState};

/// Default process-wide budget: 256 MiB of queued DATA.
pub const DEFAULT_LIMIT: usize = 256 << 20;
/// Default stall timeout (the time konnectivity-client itself tolerates a stuck write).
pub const DEFAULT_STALL: Duration = Duration::from_secs(10);

/// The process-wide budget. One per process, shared by every connection queue.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    /// 0: unlimited.
    limit: usize,
    stall: Duration,
    /// Progress timestamps of the queues are milliseconds since this instant.
    epoch: Instant,
    /// Woken when `used` falls to the low-water mark (readers paused on the budget).
    relieved: Notify,
    /// Every live queue, for the stall sweep (dead ones are pruned by the sweep).
    queues: Mutex<Vec<Weak<QueueState>>>,
    pauses: AtomicU64,
    stalled: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (0: unlimited) with the given stall timeout.
    pub fn new(limit: usize, stall: Duration) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
            stall,
            epoch: Instant::now(),
            relieved: Notify::new(),
            queues: Mutex::new(Vec::new()),
            pauses: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
        })
    }

    /// The defaults: [`DEFAULT_LIMIT`], [`DEFAULT_STALL`].
    pub fn default_budget() -> Arc<Self> {
        Self::new(DEFAULT_LIMIT, DEFAULT_STALL)
    }

    /// Bytes queued in all connections now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The configured limit (0: unlimited).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The stall timeout.
    pub fn stall(&self) -> Duration {
        self.stall
    }

    /// How many times a shared stream's reader paused for a queue or the budget.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// How many connections were closed as stalled.
    pub fn stalled(&self) -> u64 {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Resume below three quarters of the limit, so a paused reader does not flap.
    fn low(&self) -> usize {
        self.limit - self.limit / 4
    }

    /// Whether the process is over its limit.
    pub fn over(&self) -> bool {
        self.limit > 0 && self.used() > self.limit
    }

    /// Whether a reader paused on the budget may resume.
    pub(crate) fn eased(&self) -> bool {
        self.limit == 0 || self.used() <= self.low()
    }

    pub(crate) fn relieved(&self) -> &Notify {
        &self.relieved
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            })
            .unwrap_or_default();
        if self.limit > 0 {
            let low = self.low();
            if before > low && before.saturating_sub(n) <= low {
                self.relieved.notify_waiters();
            }
        }
    }

    pub(crate) fn register(&self, q: &Arc<QueueState>) {
        lock(&self.queues).push(Arc::downgrade(q));
    }

    /// Aborts every stalled connection (see the module docs) and forgets queues that
    /// are gone. Returns how many were aborted.
    pub fn sweep(&self) -> usize {
        let now = self.now_ms();
        let stall = self.stall.as_millis() as u64;
        let over = self.over();
        let mut stalled = Vec::new();
        lock(&self.queues).retain(|w| match w.upgrade() {
            Some(q) => {
                if q.is_stalled(now, stall, over) {
                    stalled.push(q);
                }
                true
            }
            None => false,
        });
        for q in &stalled {
            q.abort(Abort::Stalled, self);
        }
        self.stalled
            .fetch_add(stalled.len() as u64, Ordering::Relaxed);
        stalled.len()
    }

    /// Sweeps four times per stall timeout (at least every 100 ms) until `stop`.
    pub async fn run_sweeper(self: Arc<Self>, stop: CancellationToken) {
        let every = (self.stall / 4).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let n = self.sweep();
                    if n > 0 {
                        tracing::warn!(connections = n, stall = ?self.stall, "closed connections whose consumer made no progress within the stall timeout");
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
