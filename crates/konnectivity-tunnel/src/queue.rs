//! The per-connection inbound queue: what the shared stream's reader hands to one
//! connection's task.
//!
//! [`ConnQueue::push`] never blocks (the reader must not wait on one connection). The
//! queue counts its bytes against a [`Budget`] and against the process-wide
//! [`MemoryBudget`]:
//! - with a flow-controlled peer, more than the announced window (plus one packet) is
//!   a protocol violation and overflows at once;
//! - with an upstream peer (no flow control) nothing stops the peer from sending, so
//!   a push that takes the queue over its high-water mark (or the process over its
//!   budget) returns a [`Pressure`]: the reader waits on it before reading the shared
//!   stream again, and the peer waits in HTTP/2 flow control. The wait ends when the
//!   queue drains below its low-water mark — quickly, for a consumer that makes
//!   progress — or when the stall sweep ([`crate::budget`]) aborts a consumer that
//!   made none for the stall timeout. A slow consumer is never cut.
//!
//! Small payloads from a peer without flow control are copied when queued, so that
//! what the budget counts is what the queue holds (a slice would pin its receive
//! buffer). The connection task receives with [`ConnReceiver::recv`], which merges small DATA
//! chunks that are already queued into one (at most [`COALESCE_MAX`] bytes): an
//! upstream agent sends 4 KiB packets, and a frontend that pays per message
//! (konnectivity-client handles one message at a time) keeps up with 256 KiB ones.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use konnectivity_core::flow::RecvWindow;
use konnectivity_core::packet;
use konnectivity_core::wire;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::budget::MemoryBudget;
use crate::inbox;
use crate::outbound::StreamTx;

/// The largest DATA payload [`ConnReceiver::recv`] builds by merging queued chunks.
pub const COALESCE_MAX: usize = konnectivity_core::flow::MAX_CHUNK;

/// Chunks at least this large are passed on as they are (copying them would cost more
/// than the per-message overhead it saves).
pub const COALESCE_SMALL: usize = COALESCE_MAX / 4;

/// What a connection task receives from the shared stream.
#[derive(Debug)]
pub enum Inbound {
    /// Bytes for the connection's socket or frontend.
    Data(Bytes),
    /// The peer closed the connection (CLOSE_RSP or CLOSE_REQ), or it was aborted,
    /// with its error text.
    Close(String),
}

/// How much a connection may buffer.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// The peer honours our window: the window plus one maximal packet.
    Flow {
        /// Our announced receive window.
        window: u32,
        /// Largest packet the peer may send (the gRPC message limit).
        max_packet: usize,
    },
    /// The peer has no flow control: the reader pauses above `high` until the queue
    /// is back at `low`.
    Unmanaged {
        /// High-water mark: a push above it pauses the reader.
        high: usize,
        /// Low-water mark: the paused reader resumes at or below it.
        low: usize,
    },
}

impl Budget {
    /// The default for peers without flow control: pause above 4 MiB, resume at 2 MiB.
    pub const UNMANAGED: Budget = Budget::Unmanaged {
        high: 4 << 20,
        low: 2 << 20,
    };
}

/// Why a queue was aborted (its connection closed by this side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// A flow-controlled peer sent more than our window.
    Overflow,
    /// The consumer made no progress within the stall timeout.
    Stalled,
    /// The shared stream carrying the connection was lost.
    StreamLost,
}

impl Abort {
    /// The close error text sent to peers.
    pub fn text(self) -> &'static str {
        match self {
            Abort::Overflow => wire::BUFFER_OVERFLOW,
            Abort::Stalled => wire::STALLED_CONSUMER,
            Abort::StreamLost => "connection to proxy-server lost",
        }
    }

    /// The metric label (`reason` of closed connections).
    pub fn label(self) -> &'static str {
        match self {
            Abort::Overflow => "buffer_overflow",
            Abort::Stalled => "stalled",
            Abort::StreamLost => "stream_lost",
        }
    }

    fn code(self) -> u8 {
        match self {
            Abort::Overflow => 1,
            Abort::Stalled => 2,
            Abort::StreamLost => 3,
        }
    }

    fn from_code(c: u8) -> Option<Abort> {
        match c {
            1 => Some(Abort::Overflow),
            2 => Some(Abort::Stalled),
            3 => Some(Abort::StreamLost),
            _ => None,
        }
    }
}

/// The state one connection's queue shares between the reader's handle, the
/// connection task's receiver and the budget's stall sweep.
#[derive(Debug)]
pub struct QueueState {
    queued: AtomicUsize,
    /// Milliseconds (budget clock) of the last write onward, or of the push that made
    /// the queue non-empty.
    progress_ms: AtomicU64,
    /// Cancelled when the queue is aborted; the receiver then stops at once.
    abort: CancellationToken,
    abort_kind: AtomicU8,
    /// Woken when the queue drains to its low-water mark or its receiver goes away
    /// (a reader paused on this queue).
    eased: Notify,
    /// The receiver is gone: nothing will drain the queue any more.
    closed: AtomicBool,
    /// High- and low-water marks (`usize::MAX` for flow-controlled queues, whose
    /// window bounds them).
    high: usize,
    low: usize,
}

impl QueueState {
    fn is_eased(&self) -> bool {
        self.queued.load(Ordering::Acquire) <= self.low
            || self.abort.is_cancelled()
            || self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn is_stalled(&self, now_ms: u64, stall_ms: u64, process_over: bool) -> bool {
        let queued = self.queued.load(Ordering::Acquire);
        if queued == 0 || self.abort.is_cancelled() || self.closed.load(Ordering::Acquire) {
            return false;
        }
        let idle = now_ms.saturating_sub(self.progress_ms.load(Ordering::Acquire));
        // Above the low-water mark, not only above the high one: a reader paused on
        // this queue waits for it to drain to `low`, and a consumer that stops after
        // draining part of the way would otherwise hold that reader for good.
        idle > stall_ms && (queued > self.low || process_over)
    }

    /// Aborts the queue. What it holds stops counting at once, against the queue and
    /// the process: the task that drains it may be stuck in a write to a consumer
    /// that never reads, and a paused reader must not wait on bytes nobody will take.
    pub(crate) fn abort(&self, why: Abort, process: &MemoryBudget) {
        let _ =
            self.abort_kind
                .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
        self.abort.cancel();
        process.release(self.queued.swap(0, Ordering::AcqRel));
        self.eased.notify_waiters();
    }

    /// Stops counting up to `n` bytes (fewer if an abort already gave them back);
    /// returns the count before, and gives what it took off back to `process`.
    fn unaccount(&self, n: usize, process: &MemoryBudget) -> usize {
        let before = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            })
            .unwrap_or_default();
        process.release(n.min(before));
        before
    }

    fn aborted_as(&self) -> Option<Abort> {
        Abort::from_code(self.abort_kind.load(Ordering::Acquire))
    }
}

/// The stream reader's handle for one connection.
#[derive(Debug, Clone)]
pub struct ConnQueue {
    /// Grows with what is queued; an idle connection holds at most a few slots.
    tx: inbox::Sender<Inbound>,
    state: Arc<QueueState>,
    budget: Budget,
    process: Arc<MemoryBudget>,
}

/// A push that exceeded a flow-controlled peer's window: the connection has been
/// aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// A push was accepted, but the reader must wait on this before reading the shared
/// stream again (see the module docs).
#[derive(Debug)]
pub struct Pressure {
    conn: Option<Arc<QueueState>>,
    process: Arc<MemoryBudget>,
}

impl Pressure {
    /// Whether the wait is over.
    pub fn is_eased(&self) -> bool {
        self.conn.as_ref().is_none_or(|q| q.is_eased()) && self.process.eased()
    }

    /// Waits until the connection is back at its low-water mark (or gone, or
    /// aborted) and the process is back under its budget's low-water mark.
    pub async fn eased(&self) {
        if self.is_eased() {
            return;
        }
        self.process.paused();
        loop {
            let process = self.process.relieved().notified();
            tokio::pin!(process);
            process.as_mut().enable();
            match &self.conn {
                Some(q) => {
                    let conn = q.eased.notified();
                    tokio::pin!(conn);
                    conn.as_mut().enable();
                    if self.is_eased() {
                        return;
                    }
                    tokio::select! {
                        _ = &mut process => {}
                        _ = &mut conn => {}
                    }
                }
                None => {
                    if self.is_eased() {
                        return;
                    }
                    process.await;
                }
            }
        }
    }
}

impl ConnQueue {
    /// Queues bytes for the connection without waiting. `Ok(Some(_))`: the reader
    /// should wait on the [`Pressure`] before reading on.
    pub fn push(&self, data: Bytes) -> Result<Option<Pressure>, Overflow> {
        let len = data.len();
        let st = &self.state;
        if st.abort.is_cancelled() {
            // Nobody will take it: the connection is closing.
            return Ok(None);
        }
        let before = st.queued.fetch_add(len, Ordering::AcqRel);
        let queued = before + len;
        self.process.add(len);
        if before == 0 {
            st.progress_ms
                .store(self.process.now_ms(), Ordering::Release);
        }
        if let Budget::Flow { window, max_packet } = self.budget
            && queued > window as usize + max_packet
        {
            self.unqueue(len);
            st.abort(Abort::Overflow, &self.process);
            return Err(Overflow);
        }
        // A small payload from a peer without flow control is copied out of the
        // received frame: as a slice it would keep the whole receive buffer alive
        // (several frames, often other connections' too) for as long as this queue
        // holds it, and the budget would count a fraction of the memory held.
        let data = match self.budget {
            Budget::Unmanaged { .. } if len < COALESCE_SMALL => Bytes::copy_from_slice(&data),
            _ => data,
        };
        if self.tx.try_send(Inbound::Data(data)).is_err() {
            // The connection task is already gone; the caller learns of it through
            // its own table cleanup.
            self.unqueue(len);
            return Ok(None);
        }
        let conn = queued > st.high;
        if conn || self.process.over() {
            return Ok(Some(Pressure {
                conn: conn.then(|| st.clone()),
                process: self.process.clone(),
            }));
        }
        Ok(None)
    }

    fn unqueue(&self, n: usize) {
        self.state.unaccount(n, &self.process);
    }

    /// Tells the connection the peer closed it. Queued data is delivered first.
    pub fn close(&self, error: String) {
        let _ = self.tx.try_send(Inbound::Close(error));
    }

    /// Stops the connection at once, dropping queued data.
    pub fn abort(&self, why: Abort) {
        self.state.abort(why, &self.process);
    }

    /// Bytes queued and not yet written onward.
    pub fn queued(&self) -> usize {
        self.state.queued.load(Ordering::Acquire)
    }
}

/// The connection task's side of the queue. Returns credit to the peer as bytes are
/// written onward.
#[derive(Debug)]
pub struct ConnReceiver {
    rx: inbox::Receiver<Inbound>,
    state: Arc<QueueState>,
    process: Arc<MemoryBudget>,
    window: Option<RecvWindow>,
    connect_id: i64,
    reply: StreamTx,
    /// Bytes received and not yet reported [`ConnReceiver::written`].
    taken: usize,
    /// A message read ahead while coalescing, delivered next.
    stash: Option<Inbound>,
    /// Each DATA payload is one datagram: never merged (see [`ConnReceiver::keep_datagrams`]).
    datagrams: bool,
}

/// Creates a connection queue counted against `process`. With a flow-controlled
/// `budget`, WINDOW_UPDATEs for `connect_id` go out on `reply` as data is consumed.
pub fn conn_queue(
    connect_id: i64,
    budget: Budget,
    reply: StreamTx,
    process: Arc<MemoryBudget>,
) -> (ConnQueue, ConnReceiver) {
    let (tx, rx) = inbox::unbounded();
    let (high, low) = match budget {
        Budget::Flow { .. } => (usize::MAX, usize::MAX),
        Budget::Unmanaged { high, low } => (high, low.min(high)),
    };
    let state = Arc::new(QueueState {
        queued: AtomicUsize::new(0),
        progress_ms: AtomicU64::new(process.now_ms()),
        abort: CancellationToken::new(),
        abort_kind: AtomicU8::new(0),
        eased: Notify::new(),
        closed: AtomicBool::new(false),
        high,
        low,
    });
    process.register(&state);
    let window = match budget {
        Budget::Flow { window, .. } => Some(RecvWindow::new(window)),
        Budget::Unmanaged { .. } => None,
    };
    (
        ConnQueue {
            tx,
            state: state.clone(),
            budget,
            process: process.clone(),
        },
        ConnReceiver {
            rx,
            state,
            process,
            window,
            connect_id,
            reply,
            taken: 0,
            stash: None,
            datagrams: false,
        },
    )
}

impl ConnReceiver {
    /// The next message; small DATA chunks already queued behind it are merged into
    /// one payload of at most [`COALESCE_MAX`] bytes. An abort overtakes queued data.
    /// `None` if every sender is gone.
    pub async fn recv(&mut self) -> Option<Inbound> {
        let first = match self.stash.take() {
            Some(m) => m,
            None => tokio::select! {
                biased;
                _ = self.state.abort.cancelled() => return Some(self.abort_close()),
                m = self.rx.recv() => m?,
            },
        };
        let Inbound::Data(first) = first else {
            return Some(first);
        };
        if first.len() >= COALESCE_SMALL || self.datagrams {
            self.taken += first.len();
            return Some(Inbound::Data(first));
        }
        let mut parts = vec![first];
        let mut total = parts[0].len();
        while total < COALESCE_MAX {
            match self.rx.try_recv() {
                Ok(Inbound::Data(b))
                    if b.len() < COALESCE_SMALL && total + b.len() <= COALESCE_MAX =>
                {
                    total += b.len();
                    parts.push(b);
                }
                Ok(other) => {
                    self.stash = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        self.taken += total;
        if parts.len() == 1 {
            return parts.pop().map(Inbound::Data);
        }
        let mut merged = BytesMut::with_capacity(total);
        for p in &parts {
            merged.extend_from_slice(p);
        }
        Some(Inbound::Data(merged.freeze()))
    }

    /// Makes [`ConnReceiver::recv`] hand out each DATA payload as it came: a UDP
    /// connection's payloads are datagrams, whose boundaries merging would lose.
    pub fn keep_datagrams(&mut self) {
        self.datagrams = true;
    }

    /// Whether DATA payloads are datagrams ([`ConnReceiver::keep_datagrams`]).
    pub fn datagrams(&self) -> bool {
        self.datagrams
    }

    fn abort_close(&self) -> Inbound {
        Inbound::Close(
            self.state
                .aborted_as()
                .map(Abort::text)
                .unwrap_or_default()
                .to_owned(),
        )
    }

    /// Records that `n` bytes were written onward: frees budget and, with flow control,
    /// returns credit to the peer.
    pub fn written(&mut self, n: usize) {
        let n = n.min(self.taken);
        self.taken -= n;
        let st = &self.state;
        let before = st.unaccount(n, &self.process);
        st.progress_ms
            .store(self.process.now_ms(), Ordering::Release);
        if before > st.low && before.saturating_sub(n) <= st.low {
            st.eased.notify_waiters();
        }
        if let Some(credit) = self.window.as_mut().and_then(|w| w.consumed(n)) {
            let _ = self
                .reply
                .control(packet::window_update(self.connect_id, credit));
        }
    }

    /// Resolves when the queue is aborted. A consumer blocked in a write onward
    /// selects on it, so that an aborted connection ends (and its memory is freed)
    /// even when its consumer never reads again.
    pub async fn until_aborted(&self) {
        self.state.abort.cancelled().await
    }

    /// Whether the queue was aborted (overflow, stall or local decision).
    pub fn aborted(&self) -> bool {
        self.state.abort.is_cancelled()
    }

    /// Why the queue was aborted, if it was.
    pub fn abort_reason(&self) -> Option<Abort> {
        self.state.aborted_as()
    }
}

impl Drop for ConnReceiver {
    /// Gives back what the connection still held: received but unwritten bytes and
    /// whatever is left in the queue (no push can add to it once it is closed).
    fn drop(&mut self) {
        let mut left = self.taken;
        if let Some(Inbound::Data(b)) = self.stash.take() {
            left += b.len();
        }
        for m in self.rx.close_and_drain() {
            if let Inbound::Data(b) = m {
                left += b.len();
            }
        }
        self.state.unaccount(left, &self.process);
        self.state.closed.store(true, Ordering::Release);
        self.state.eased.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound;
    use futures::StreamExt;
    use std::time::Duration;

    fn unmanaged(high: usize, low: usize) -> Budget {
        Budget::Unmanaged { high, low }
    }

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![7; n])
    }

    #[tokio::test]
    async fn consuming_data_returns_credit_to_a_flow_controlled_peer() {
        let (tx, mut out) = outbound::channel();
        let (q, mut r) = conn_queue(
            7,
            Budget::Flow {
                window: 1000,
                max_packet: 100,
            },
            tx,
            MemoryBudget::default_budget(),
        );
        q.push(bytes(300)).unwrap();
        match r.recv().await {
            Some(Inbound::Data(b)) => r.written(b.len()),
            other => panic!("{other:?}"),
        }
        let upd = out.next().await.unwrap();
        assert_eq!(packet::window_update_of(&upd).bytes, 300);
        assert_eq!(packet::window_update_of(&upd).connect_id, 7);
    }

    #[tokio::test]
    async fn a_flow_controlled_peer_that_overruns_its_window_is_cut_off() {
        let (tx, _out) = outbound::channel();
        let budget = MemoryBudget::default_budget();
        let (q, mut r) = conn_queue(
            1,
            Budget::Flow {
                window: 100,
                max_packet: 10,
            },
            tx,
            budget.clone(),
        );
        q.push(bytes(100)).unwrap();
        assert_eq!(q.push(bytes(20)).unwrap_err(), Overflow);
        match r.recv().await {
            Some(Inbound::Close(e)) => assert_eq!(e, wire::BUFFER_OVERFLOW),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.abort_reason(), Some(Abort::Overflow));
        drop(r);
        assert_eq!(budget.used(), 0, "everything queued is given back");
    }

    #[tokio::test]
    async fn a_push_over_the_high_water_mark_pauses_the_reader_until_the_consumer_drains_to_low() {
        let (tx, _out) = outbound::channel();
        // Chunks too large to be merged, so that the consumer takes one at a time.
        const C: usize = COALESCE_SMALL;
        let (q, mut r) = conn_queue(
            1,
            unmanaged(3 * C + C / 3, C + C / 2),
            tx,
            MemoryBudget::default_budget(),
        );
        for _ in 0..3 {
            assert!(q.push(bytes(C)).unwrap().is_none());
        }
        let p = q.push(bytes(C)).unwrap().expect("over the high-water mark");
        assert!(!p.is_eased());
        let waiter = tokio::spawn(async move { p.eased().await });
        // 4 chunks queued; the consumer drains one (3 left: still paused) ...
        let Some(Inbound::Data(b)) = r.recv().await else {
            panic!()
        };
        r.written(b.len());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // ... then everything: under the low-water mark the reader resumes.
        while r.state.queued.load(Ordering::Acquire) > 0 {
            let Some(Inbound::Data(b)) = r.recv().await else {
                panic!()
            };
            r.written(b.len());
        }
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resumed")
            .unwrap();
    }

    #[tokio::test]
    async fn small_chunks_already_queued_are_merged_into_one_payload_in_order() {
        let (tx, _out) = outbound::channel();
        let (q, mut r) = conn_queue(1, Budget::UNMANAGED, tx, MemoryBudget::default_budget());
        let mut expect = Vec::new();
        for i in 0..100u8 {
            let chunk = Bytes::from(vec![i; 4096]);
            expect.extend_from_slice(&chunk);
            q.push(chunk).unwrap();
        }
        q.close("bye".into());
        let mut got = Vec::new();
        let mut messages = 0;
        loop {
            match r.recv().await {
                Some(Inbound::Data(b)) => {
                    assert!(b.len() <= COALESCE_MAX);
                    messages += 1;
                    got.extend_from_slice(&b);
                    r.written(b.len());
                }
                Some(Inbound::Close(e)) => {
                    assert_eq!(e, "bye", "the close stays behind the data");
                    break;
                }
                None => panic!("closed early"),
            }
        }
        assert_eq!(got, expect);
        assert_eq!(
            messages, 2,
            "400 KiB of 4 KiB chunks leave as 256 KiB + 144 KiB"
        );
    }

    #[tokio::test]
    async fn datagrams_are_received_one_per_payload() {
        let (tx, _out) = outbound::channel();
        let (q, mut r) = conn_queue(1, Budget::UNMANAGED, tx, MemoryBudget::default_budget());
        r.keep_datagrams();
        assert!(r.datagrams());
        for n in [1usize, 100, 1000] {
            q.push(Bytes::from(vec![7; n])).unwrap();
        }
        for n in [1usize, 100, 1000] {
            match r.recv().await {
                Some(Inbound::Data(b)) => {
                    assert_eq!(b.len(), n, "boundaries kept");
                    r.written(n);
                }
                other => panic!("expected a datagram, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_dropped_receiver_gives_back_every_byte_it_held() {
        let (tx, _out) = outbound::channel();
        let budget = MemoryBudget::new(1 << 20, Duration::from_secs(10));
        let (q, mut r) = conn_queue(1, Budget::UNMANAGED, tx, budget.clone());
        for _ in 0..10 {
            q.push(bytes(1000)).unwrap();
        }
        let _taken = r.recv().await; // received, never written
        assert_eq!(budget.used(), 10_000);
        drop(r);
        assert_eq!(budget.used(), 0);
        assert!(
            q.push(bytes(1000)).unwrap().is_none(),
            "a push after the end is dropped"
        );
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn going_over_the_process_budget_pauses_until_it_drains_below_three_quarters() {
        let (tx, _out) = outbound::channel();
        let budget = MemoryBudget::new(4000, Duration::from_secs(10));
        let (a, mut ra) = conn_queue(1, Budget::UNMANAGED, tx.clone(), budget.clone());
        let (b, _rb) = conn_queue(2, Budget::UNMANAGED, tx, budget.clone());
        assert!(a.push(bytes(2500)).unwrap().is_none());
        let p = b.push(bytes(2500)).unwrap().expect("5000 > 4000");
        let waiter = tokio::spawn(async move { p.eased().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let Some(Inbound::Data(d)) = ra.recv().await else {
            panic!()
        };
        ra.written(d.len()); // 2500 <= 3000
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resumed")
            .unwrap();
        assert_eq!(budget.pauses(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_consumer_without_progress_for_the_stall_timeout_is_closed_as_stalled() {
        let (tx, _out) = outbound::channel();
        let budget = MemoryBudget::new(0, Duration::from_secs(10));
        let (slow, mut rs) = conn_queue(1, unmanaged(1000, 500), tx.clone(), budget.clone());
        let (stuck, mut rt) = conn_queue(2, unmanaged(1000, 500), tx, budget.clone());
        slow.push(bytes(3000)).unwrap();
        stuck.push(bytes(3000)).unwrap();
        for _ in 0..30 {
            tokio::time::advance(Duration::from_secs(1)).await;
            // The slow consumer writes a little every second.
            let Some(Inbound::Data(b)) = rs.recv().await else {
                panic!()
            };
            rs.written(b.len());
            slow.push(bytes(b.len())).unwrap();
            budget.sweep();
        }
        assert!(!rs.aborted(), "a slow consumer is never cut");
        assert_eq!(rt.abort_reason(), Some(Abort::Stalled));
        match rt.recv().await {
            Some(Inbound::Close(e)) => assert_eq!(e, wire::STALLED_CONSUMER),
            other => panic!("{other:?}"),
        }
        assert_eq!(budget.stalled(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_consumer_stuck_in_a_write_stops_counting_against_the_budget_when_closed() {
        let (tx, _out) = outbound::channel();
        let budget = MemoryBudget::new(4000, Duration::from_secs(3));
        let (q, mut r) = conn_queue(1, unmanaged(1000, 500), tx, budget.clone());
        q.push(bytes(1000)).unwrap();
        // The consumer takes a chunk and blocks writing it, forever.
        let Some(Inbound::Data(_held)) = r.recv().await else {
            panic!()
        };
        let p = q.push(bytes(4000)).unwrap().expect("over budget");
        assert_eq!(budget.used(), 5000);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(budget.sweep(), 1);
        assert_eq!(budget.used(), 0, "the aborted queue no longer counts");
        tokio::time::timeout(Duration::from_secs(1), p.eased())
            .await
            .expect("the paused reader resumes although the consumer is still stuck");
        tokio::time::timeout(Duration::from_secs(1), r.until_aborted())
            .await
            .expect("the stuck consumer is told");
        assert!(q.push(bytes(10)).unwrap().is_none());
        assert_eq!(
            budget.used(),
            0,
            "nothing is queued for an aborted connection"
        );
        r.written(1000);
        drop(r);
        assert_eq!(budget.used(), 0, "nothing is given back twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_stops_between_the_water_marks_does_not_hold_the_reader_for_good() {
        let (tx, _out) = outbound::channel();
        let budget = MemoryBudget::new(0, Duration::from_secs(3));
        const C: usize = COALESCE_SMALL;
        let (q, mut r) = conn_queue(1, unmanaged(3 * C, C), tx, budget.clone());
        for _ in 0..3 {
            q.push(bytes(C)).unwrap();
        }
        let p = q.push(bytes(C)).unwrap().expect("over the high-water mark");
        // The consumer writes one chunk (3 C left: under high, over low), then stops.
        let Some(Inbound::Data(b)) = r.recv().await else {
            panic!()
        };
        r.written(b.len());
        assert!(!p.is_eased());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(budget.sweep(), 1, "stalled above the low-water mark");
        tokio::time::timeout(Duration::from_secs(1), p.eased())
            .await
            .expect("the reader resumes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_consumer_under_its_low_water_mark_is_left_alone() {
        let (tx, _out) = outbound::channel();
        let budget = MemoryBudget::new(0, Duration::from_secs(10));
        let (q, r) = conn_queue(1, unmanaged(1000, 500), tx, budget.clone());
        q.push(bytes(10)).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(budget.sweep(), 0);
        assert!(!r.aborted());
    }
}
