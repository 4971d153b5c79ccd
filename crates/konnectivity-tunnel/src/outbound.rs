//! The sending half of a shared stream (`Connect`), as seen by connection tasks, and
//! the scheduler that decides which packet goes on the wire next.
//!
//! Every connection has its own small *lane* (at most [`LANE_PACKETS`] packets). The
//! wire takes one packet per lane in turn (round robin), so a connection moving bulk
//! data cannot put more than one packet ahead of an interactive connection's byte,
//! and a full lane makes only its own connection wait. Packets of one connection
//! (DIAL_RSP, DATA, CLOSE_*) share its lane and keep their order; DIAL_REQs share one
//! lane of their own. Small control packets that the shared stream's reader must send
//! without ever waiting (WINDOW_UPDATE, CLOSE_REQ for unknown IDs, DIAL_CLS, DRAIN) go
//! first, unbounded.
//!
//! DATA packets smaller than [`COALESCE_SMALL`] that wait in one lane leave as one
//! packet (at most [`COALESCE_MAX`] bytes): konnectivity-client writes one packet per
//! `Write`, and a peer that pays per message (upstream's agent handles one packet at a
//! time) keeps up better with fewer, larger ones. The bound on what one turn puts on
//! the wire stays that of one piece. A lane fed by [`StreamTx::send_whole`] (a UDP
//! connection: one datagram per DATA packet) is never merged.
//!
//! Below the scheduler sit HTTP/2, TLS and the socket, each with buffers of its own;
//! whatever is queued there is ahead of every lane. A [`Pacer`] bounds it: the
//! transport reports the bytes it has written, and the scheduler stops handing out
//! DATA while more than [`Pacer::limit`] bytes are still below it.
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::stream::{Stream, StreamExt};
use futures::task::AtomicWaker;
use konnectivity_proto::Packet;
use konnectivity_proto::packet::Payload;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::{COALESCE_MAX, COALESCE_SMALL};

/// Packets one connection may have queued for the wire before its sender waits.
pub const LANE_PACKETS: usize = 4;

/// The largest DATA payload handed to the transport in one packet: our own reads are
/// never larger, and larger payloads (a frontend may send up to 4 MiB in one message)
/// leave in pieces of this size, one per turn. Pieces of 64 KiB were tried to bound
/// head-of-line delay further; under the host's steal at the time the effect on
/// throughput could not be measured, so the size stays that of a read.
pub const PIECE: usize = konnectivity_core::flow::MAX_CHUNK;

/// Packets the shared DIAL_REQ lane holds before dialers wait.
pub const DIAL_LANE_PACKETS: usize = 32;

/// The lane of packets that belong to no connection yet (DIAL_REQ).
const DIAL_LANE: i64 = i64::MIN;

/// The shared stream is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamClosed;

impl std::fmt::Display for StreamClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream to peer closed")
    }
}
impl std::error::Error for StreamClosed {}

/// Bounds the bytes queued below the scheduler (HTTP/2 and TLS buffers).
///
/// The scheduler adds what it hands to gRPC ([`Pacer::sent`]); the transport subtracts
/// what it has written ([`Pacer::written`]). The count never goes below zero, so the
/// framing bytes it does not know about cannot accumulate into an error.
#[derive(Debug)]
pub struct Pacer {
    below: AtomicI64,
    limit: i64,
    waker: AtomicWaker,
}

impl Pacer {
    /// A pacer that lets at most `limit` bytes sit below the scheduler.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            below: AtomicI64::new(0),
            limit: limit as i64,
            waker: AtomicWaker::new(),
        })
    }

    /// The configured bound, in bytes.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Bytes handed to gRPC and not yet written by the transport (approximate).
    pub fn below(&self) -> usize {
        self.below.load(Ordering::Acquire).max(0) as usize
    }

    fn sent(&self, n: i64) {
        self.below.fetch_add(n, Ordering::AcqRel);
    }

    /// Called by the transport after writing `n` bytes.
    pub fn written(&self, n: usize) {
        let n = n as i64;
        let mut cur = self.below.load(Ordering::Acquire);
        loop {
            let next = (cur - n).max(0);
            match self
                .below
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
        if cur >= self.limit && cur - n < self.limit {
            self.waker.wake();
        }
    }

    /// Whether more may be handed down now; if not, `cx` is woken when it may.
    fn poll_room(&self, cx: &mut Context<'_>) -> bool {
        if self.below.load(Ordering::Acquire) < self.limit {
            return true;
        }
        self.waker.register(cx.waker());
        self.below.load(Ordering::Acquire) < self.limit
    }
}

#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Packet>,
    /// DATA payloads are datagrams: never merged ([`StreamTx::send_whole`]).
    whole: bool,
    /// Senders waiting for room in this lane.
    room: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    control: VecDeque<Packet>,
    lanes: HashMap<i64, Lane>,
    /// Lanes with packets, in the order they get their next turn.
    turns: VecDeque<i64>,
}

#[derive(Debug)]
struct Sched {
    state: Mutex<State>,
    /// The wire side, waiting for a packet.
    consumer: AtomicWaker,
    closed: CancellationToken,
    data_bytes: AtomicU64,
    pacer: Option<Arc<Pacer>>,
}

impl Sched {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queues half-updated in a way
        // that matters more than losing the stream; keep going with the data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next(&self, cx: &mut Context<'_>) -> Poll<Option<Packet>> {
        let mut st = self.lock();
        if let Some(p) = st.control.pop_front() {
            return Poll::Ready(Some(p));
        }
        if st.turns.is_empty() {
            self.consumer.register(cx.waker());
            return Poll::Pending;
        }
        if let Some(pacer) = &self.pacer
            && !pacer.poll_room(cx)
        {
            // Control packets must still get through while DATA waits for the pacer.
            self.consumer.register(cx.waker());
            return Poll::Pending;
        }
        let Some(id) = st.turns.pop_front() else {
            return Poll::Pending;
        };
        let Some(lane) = st.lanes.get_mut(&id) else {
            return Poll::Pending;
        };
        // A large DATA payload leaves in pieces, one per turn: what is handed down in
        // one go (and what another connection's packet may have to wait behind) stays
        // at most one piece. The pieces are slices of the same buffer.
        let piece = match lane.queue.front_mut() {
            Some(Packet {
                payload: Some(Payload::Data(d)),
                ..
            }) if d.data.len() > PIECE => Some(konnectivity_core::packet::data(
                d.connect_id,
                d.data.split_to(PIECE),
            )),
            _ => None,
        };
        let mut merge = Vec::new();
        let p = match piece {
            Some(p) => p,
            None => match lane.queue.pop_front() {
                Some(p) => {
                    // Small DATA packets queued behind this one leave with it as one
                    // packet (see `take_small`).
                    let mut total = small_data_len(&p).filter(|_| !lane.whole);
                    while let Some(n) = total
                        && let Some(next) = lane.queue.front().and_then(small_data_len)
                        && n + next <= COALESCE_MAX
                        && let Some(q) = lane.queue.pop_front()
                    {
                        total = Some(n + next);
                        merge.push(q);
                    }
                    lane.room.notify_waiters();
                    p
                }
                None => {
                    st.lanes.remove(&id);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            },
        };
        if lane.queue.is_empty() {
            st.lanes.remove(&id);
        } else {
            st.turns.push_back(id);
        }
        drop(st);
        let p = if merge.is_empty() {
            p
        } else {
            coalesce(p, merge)
        };
        if let Some(pacer) = &self.pacer {
            pacer.sent(wire_size(&p));
        }
        Poll::Ready(Some(p))
    }
}

/// The payload length of a DATA packet small enough to be merged with its neighbours.
fn small_data_len(p: &Packet) -> Option<usize> {
    match &p.payload {
        Some(Payload::Data(d)) if d.data.len() < COALESCE_SMALL => Some(d.data.len()),
        _ => None,
    }
}

/// One DATA packet carrying `first`'s payload followed by those of `rest` (all DATA of
/// one connection, in lane order). Copied outside the scheduler's lock.
fn coalesce(first: Packet, rest: Vec<Packet>) -> Packet {
    let parts: Vec<_> = std::iter::once(first)
        .chain(rest)
        .map(konnectivity_core::packet::into_data)
        .collect();
    let connect_id = parts.first().map_or(0, |d| d.connect_id);
    let mut merged = BytesMut::with_capacity(parts.iter().map(|d| d.data.len()).sum());
    for d in &parts {
        merged.extend_from_slice(&d.data);
    }
    konnectivity_core::packet::data(connect_id, merged.freeze())
}

/// What the pacer counts for a packet: its DATA payload only. Framing is left out so
/// that the transport always reports at least as much as was counted and the count
/// drains to zero (an over-count would hold DATA back for good).
fn wire_size(p: &Packet) -> i64 {
    match &p.payload {
        Some(Payload::Data(d)) => d.data.len() as i64,
        _ => 0,
    }
}

/// Which lane a packet queued with [`StreamTx::send`] belongs to.
fn lane_of(p: &Packet) -> i64 {
    match &p.payload {
        Some(Payload::Data(d)) => d.connect_id,
        Some(Payload::DialResponse(r)) => r.connect_id,
        Some(Payload::CloseRequest(c)) => c.connect_id,
        Some(Payload::CloseResponse(c)) => c.connect_id,
        Some(Payload::WindowUpdate(w)) => w.connect_id,
        _ => DIAL_LANE,
    }
}

/// A cloneable handle to send on a shared stream. When the last handle is dropped
/// the stream ends, as nobody can send on it any more.
#[derive(Debug, Clone)]
pub struct StreamTx {
    sched: Arc<Sched>,
    _senders: Arc<EndOnDrop>,
}

/// Shared by all clones of a [`StreamTx`]: ends the stream when the last one goes.
#[derive(Debug)]
struct EndOnDrop(CancellationToken);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl StreamTx {
    /// Queues a packet in its connection's lane (DIAL_REQ: the dial lane), waiting
    /// while that lane is full.
    pub async fn send(&self, p: Packet) -> Result<(), StreamClosed> {
        self.send_in_lane(p, false).await
    }

    /// [`StreamTx::send`] for a connection whose DATA payloads are datagrams (UDP):
    /// its lane is never merged into larger packets.
    pub async fn send_whole(&self, p: Packet) -> Result<(), StreamClosed> {
        self.send_in_lane(p, true).await
    }

    async fn send_in_lane(&self, p: Packet, whole: bool) -> Result<(), StreamClosed> {
        let id = lane_of(&p);
        let cap = if id == DIAL_LANE {
            DIAL_LANE_PACKETS
        } else {
            LANE_PACKETS
        };
        let s = &self.sched;
        loop {
            if s.closed.is_cancelled() {
                return Err(StreamClosed);
            }
            let room = {
                let mut st = s.lock();
                let lane = st.lanes.entry(id).or_default();
                lane.whole |= whole;
                if lane.queue.len() < cap {
                    if let Some(Payload::Data(d)) = &p.payload {
                        s.data_bytes
                            .fetch_add(d.data.len() as u64, Ordering::Relaxed);
                    }
                    let first = lane.queue.is_empty();
                    lane.queue.push_back(p);
                    if first {
                        st.turns.push_back(id);
                    }
                    drop(st);
                    s.consumer.wake();
                    return Ok(());
                }
                lane.room.clone()
            };
            let notified = room.notified();
            tokio::pin!(notified);
            // Registered before re-checking, so a pop between the check above and the
            // wait below is not missed.
            notified.as_mut().enable();
            let full = {
                let st = s.lock();
                st.lanes.get(&id).is_some_and(|l| l.queue.len() >= cap)
            };
            if full {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = s.closed.cancelled() => return Err(StreamClosed),
                }
            }
        }
    }

    /// Sends a control packet without waiting.
    pub fn control(&self, p: Packet) -> Result<(), StreamClosed> {
        let s = &self.sched;
        if s.closed.is_cancelled() {
            return Err(StreamClosed);
        }
        s.lock().control.push_back(p);
        s.consumer.wake();
        Ok(())
    }

    /// Resolves when the stream has ended.
    pub async fn closed(&self) {
        self.sched.closed.cancelled().await
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.sched.closed.is_cancelled()
    }

    /// Ends the stream (e.g. retiring a backend, or on shutdown).
    pub fn close(&self) {
        self.sched.closed.cancel()
    }

    /// DATA payload bytes sent on this stream so far.
    pub fn data_bytes(&self) -> u64 {
        self.sched.data_bytes.load(Ordering::Relaxed)
    }

    /// The token cancelled when the stream ends.
    pub fn token(&self) -> &CancellationToken {
        &self.sched.closed
    }

    /// Connections with packets waiting for the wire (for status pages and tests).
    pub fn busy_lanes(&self) -> usize {
        self.sched.lock().lanes.len()
    }
}

/// The packets to put on the wire, ending when the stream is closed.
///
/// A named type rather than a boxed `dyn Stream` alias: passing the alias to tonic's
/// generated client trips a higher-ranked `Send` inference failure in rustc.
pub struct Outbound(Pin<Box<dyn Stream<Item = Packet> + Send + Sync>>);

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbound")
    }
}

impl Stream for Outbound {
    type Item = Packet;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Packet>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// Creates a shared stream's sender and the packet stream to hand to gRPC.
pub fn channel() -> (StreamTx, Outbound) {
    channel_with(None, None)
}

/// Observes every packet as it is handed to gRPC (metrics).
pub type Hook = Arc<dyn Fn(&Packet) + Send + Sync>;

/// [`channel`] with a hook called for each packet put on the wire, and a pacer that
/// bounds what is queued below the scheduler.
pub fn channel_with(hook: Option<Hook>, pacer: Option<Arc<Pacer>>) -> (StreamTx, Outbound) {
    let closed = CancellationToken::new();
    let sched = Arc::new(Sched {
        state: Mutex::new(State::default()),
        consumer: AtomicWaker::new(),
        closed: closed.clone(),
        data_bytes: AtomicU64::new(0),
        pacer,
    });
    let s = sched.clone();
    let token = closed.clone();
    let out = futures::stream::poll_fn(move |cx| s.next(cx))
        .inspect(move |p| {
            if let Some(h) = &hook {
                h(p)
            }
        })
        .take_until(async move { token.cancelled_owned().await });
    let senders = Arc::new(EndOnDrop(closed));
    (
        StreamTx {
            sched,
            _senders: senders,
        },
        Outbound(Box::pin(out)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use konnectivity_core::packet;
    use std::time::Duration;

    fn data(id: i64, n: usize) -> Packet {
        packet::data(id, Bytes::from(vec![b'x'; n]))
    }

    fn id_of(p: &Packet) -> i64 {
        lane_of(p)
    }

    /// The payload sizes of the next `n` packets (all DATA).
    fn next_sizes(out: &mut Outbound, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                let p = futures::executor::block_on(out.next()).unwrap();
                packet::into_data(p).data.len()
            })
            .collect()
    }

    #[tokio::test]
    async fn control_packets_overtake_queued_data() {
        let (tx, mut out) = channel();
        tx.send(packet::data(1, Bytes::from_static(b"a")))
            .await
            .unwrap();
        tx.control(packet::close_req(9)).unwrap();
        let first = out.next().await.unwrap();
        assert_eq!(packet::type_name(&first), "CLOSE_REQ");
        tx.close();
        assert!(tx.control(packet::close_req(1)).is_err());
    }

    #[tokio::test]
    async fn an_interactive_packet_waits_behind_at_most_one_bulk_packet() {
        let (tx, mut out) = channel();
        for _ in 0..LANE_PACKETS {
            tx.send(data(1, 65536)).await.unwrap();
        }
        tx.send(data(2, 1)).await.unwrap();
        let order: Vec<i64> = (0..3)
            .map(|_| id_of(&futures::executor::block_on(out.next()).unwrap()))
            .collect();
        assert_eq!(order, vec![1, 2, 1]);
    }

    #[tokio::test]
    async fn large_payloads_leave_in_pieces_taking_turns_with_other_connections() {
        let (tx, mut out) = channel();
        let big = Bytes::from((0..3 * PIECE + 10).map(|i| i as u8).collect::<Vec<u8>>());
        tx.send(packet::data(1, big.clone())).await.unwrap();
        tx.send(data(2, 1)).await.unwrap();
        let mut got = Vec::new();
        let mut order = Vec::new();
        for _ in 0..5 {
            let p = out.next().await.unwrap();
            order.push(id_of(&p));
            let d = packet::into_data(p);
            assert!(d.data.len() <= PIECE);
            if d.connect_id == 1 {
                got.extend_from_slice(&d.data);
            }
        }
        assert_eq!(order, vec![1, 2, 1, 1, 1]);
        assert_eq!(got, big.to_vec(), "pieces reassemble in order");
    }

    #[tokio::test]
    async fn a_full_lane_makes_only_its_own_sender_wait() {
        let (tx, mut out) = channel();
        for _ in 0..LANE_PACKETS {
            tx.send(data(1, 10)).await.unwrap();
        }
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.send(data(1, 10))).await;
        assert!(blocked.is_err(), "a full lane must wait");
        tokio::time::timeout(Duration::from_millis(50), tx.send(data(2, 10)))
            .await
            .expect("another connection's lane is free")
            .unwrap();
        // One packet of lane 1 leaves: its sender gets room again.
        out.next().await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), tx.send(data(1, 10)))
            .await
            .expect("room after a packet left")
            .unwrap();
    }

    #[tokio::test]
    async fn one_connection_keeps_its_packet_order() {
        let (tx, mut out) = channel();
        tx.send(packet::dial_rsp(5, 3, "")).await.unwrap();
        tx.send(data(3, 1)).await.unwrap();
        tx.send(packet::close_rsp(3, "")).await.unwrap();
        let names: Vec<_> = (0..3)
            .map(|_| packet::type_name(&futures::executor::block_on(out.next()).unwrap()))
            .collect();
        assert_eq!(names, vec!["DIAL_RSP", "DATA", "CLOSE_RSP"]);
        assert_eq!(tx.busy_lanes(), 0, "empty lanes are dropped");
    }

    #[tokio::test]
    async fn the_pacer_holds_data_but_not_control_packets() {
        let pacer = Pacer::new(1000);
        let (tx, mut out) = channel_with(None, Some(pacer.clone()));
        tx.send(data(1, COALESCE_SMALL)).await.unwrap();
        tx.send(data(1, 10)).await.unwrap();
        out.next().await.unwrap();
        assert!(pacer.below() >= 2000);
        tx.control(packet::close_req(4)).unwrap();
        let p = tokio::time::timeout(Duration::from_millis(50), out.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(packet::type_name(&p), "CLOSE_REQ");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), out.next())
                .await
                .is_err()
        );
        pacer.written(COALESCE_SMALL);
        let p = tokio::time::timeout(Duration::from_secs(1), out.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id_of(&p), 1);
        pacer.written(1 << 20);
        assert_eq!(pacer.below(), 0, "never below zero");
    }

    #[tokio::test]
    async fn small_data_packets_waiting_in_a_lane_leave_as_one_in_order() {
        let (tx, mut out) = channel();
        let mut expect = Vec::new();
        for i in 0..LANE_PACKETS as u8 {
            let chunk = Bytes::from(vec![i; 32 << 10]);
            expect.extend_from_slice(&chunk);
            tx.send(packet::data(1, chunk)).await.unwrap();
        }
        tx.send(data(2, 1)).await.unwrap();
        let first = packet::into_data(out.next().await.unwrap());
        assert_eq!(first.connect_id, 1);
        assert_eq!(
            first.data.to_vec(),
            expect,
            "four 32 KiB writes, one packet"
        );
        assert_eq!(id_of(&out.next().await.unwrap()), 2);
        // A packet that is not small is never copied or merged.
        tx.send(data(3, 10)).await.unwrap();
        tx.send(data(3, COALESCE_SMALL)).await.unwrap();
        assert_eq!(next_sizes(&mut out, 2), vec![10, COALESCE_SMALL]);
    }

    #[tokio::test]
    async fn datagrams_sent_whole_are_never_merged() {
        let (tx, mut out) = channel();
        for n in [10, 20, 30] {
            tx.send_whole(data(1, n)).await.unwrap();
        }
        assert_eq!(
            next_sizes(&mut out, 3),
            vec![10, 20, 30],
            "one DATA packet per datagram"
        );
    }

    #[tokio::test]
    async fn the_stream_ends_when_every_sender_is_gone() {
        let (tx, mut out) = channel();
        let other = tx.clone();
        drop(tx);
        other.control(packet::drain()).unwrap();
        assert!(out.next().await.is_some());
        drop(other);
        let end = tokio::time::timeout(Duration::from_secs(1), out.next()).await;
        assert!(matches!(end, Ok(None)), "stream must end: {end:?}");
    }

    #[tokio::test]
    async fn senders_fail_once_the_stream_is_closed() {
        let (tx, _out) = channel();
        for _ in 0..LANE_PACKETS {
            tx.send(data(1, 1)).await.unwrap();
        }
        let t = tx.clone();
        let waiting = tokio::spawn(async move { t.send(data(1, 1)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.close();
        assert_eq!(waiting.await.unwrap(), Err(StreamClosed));
        assert_eq!(tx.send(data(2, 1)).await, Err(StreamClosed));
    }
}
