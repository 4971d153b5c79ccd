//! The per-connection inbound queue: what the shared stream's reader hands to one
//! connection's task.
//!
//! [`ConnQueue::push`] never blocks (the reader must not wait on one connection). The
//! queue counts its bytes against a [`Budget`]:
//! - with a flow-controlled peer, more than the announced window (plus one packet) is
//!   a protocol violation and overflows at once;
//! - with an upstream peer (no flow control) the queue may exceed its soft budget for a
//!   while, but if it stays over it with no progress for `stall`, or reaches `hard`,
//!   the connection is aborted with a clear error. Memory per connection stays bounded
//!   and other connections never wait.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use konnectivity_core::flow::RecvWindow;
use konnectivity_core::packet;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outbound::StreamTx;

/// What a connection task receives from the shared stream.
#[derive(Debug)]
pub enum Inbound {
    /// Bytes for the connection's socket or frontend.
    Data(Bytes),
    /// The peer closed the connection (CLOSE_RSP or CLOSE_REQ), with its error text.
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
    /// The peer has no flow control.
    Unmanaged {
        /// Above this, the connection must make progress within `stall`.
        soft: usize,
        /// Above this, the connection is aborted at once.
        hard: usize,
        /// How long a connection may sit above `soft` without writing anything.
        stall: Duration,
    },
}

impl Budget {
    /// The default for peers without flow control: 4 MiB soft, 32 MiB hard, 10 s stall
    /// (the same stall konnectivity-client tolerates before it tears a tunnel down).
    pub const UNMANAGED: Budget = Budget::Unmanaged {
        soft: 4 << 20,
        hard: 32 << 20,
        stall: Duration::from_secs(10),
    };
}

#[derive(Debug)]
struct Shared {
    queued: AtomicUsize,
    /// Milliseconds since `epoch` of the last write onward.
    progress_ms: AtomicU64,
    epoch: Instant,
    /// Cancelled when the queue overflowed; the receiver then stops at once.
    abort: CancellationToken,
    abort_reason: Mutex<String>,
}

/// The stream reader's handle for one connection.
#[derive(Debug, Clone)]
pub struct ConnQueue {
    tx: mpsc::UnboundedSender<Inbound>,
    shared: Arc<Shared>,
    budget: Budget,
}

/// A push that exceeded the budget: the connection has been aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl ConnQueue {
    /// Queues bytes for the connection without waiting.
    pub fn push(&self, data: Bytes) -> Result<(), Overflow> {
        let len = data.len();
        let queued = self.shared.queued.fetch_add(len, Ordering::AcqRel) + len;
        let over = match self.budget {
            Budget::Flow { window, max_packet } => queued > window as usize + max_packet,
            Budget::Unmanaged { soft, hard, stall } => {
                queued > hard
                    || (queued > soft && {
                        let now = self.shared.epoch.elapsed().as_millis() as u64;
                        let last = self.shared.progress_ms.load(Ordering::Acquire);
                        now.saturating_sub(last) > stall.as_millis() as u64
                    })
            }
        };
        if over {
            self.abort(konnectivity_core::wire::BUFFER_OVERFLOW);
            return Err(Overflow);
        }
        // A closed receiver means the connection task is already gone; the caller
        // learns of it through its own table cleanup.
        let _ = self.tx.send(Inbound::Data(data));
        Ok(())
    }

    /// Tells the connection the peer closed it. Queued data is delivered first.
    pub fn close(&self, error: String) {
        let _ = self.tx.send(Inbound::Close(error));
    }

    /// Stops the connection at once, dropping queued data.
    pub fn abort(&self, reason: &str) {
        if let Ok(mut r) = self.shared.abort_reason.lock()
            && r.is_empty()
        {
            *r = reason.to_owned();
        }
        self.shared.abort.cancel();
    }

    /// Bytes queued and not yet written onward.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }
}

/// The connection task's side of the queue. Returns credit to the peer as bytes are
/// written onward.
#[derive(Debug)]
pub struct ConnReceiver {
    rx: mpsc::UnboundedReceiver<Inbound>,
    shared: Arc<Shared>,
    window: Option<RecvWindow>,
    connect_id: i64,
    reply: StreamTx,
}

/// Creates a connection queue. With `flow`, WINDOW_UPDATEs for `connect_id` go out on
/// `reply` as data is consumed.
pub fn conn_queue(connect_id: i64, budget: Budget, reply: StreamTx) -> (ConnQueue, ConnReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        progress_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        abort: CancellationToken::new(),
        abort_reason: Mutex::new(String::new()),
    });
    let window = match budget {
        Budget::Flow { window, .. } => Some(RecvWindow::new(window)),
        Budget::Unmanaged { .. } => None,
    };
    (
        ConnQueue {
            tx,
            shared: shared.clone(),
            budget,
        },
        ConnReceiver {
            rx,
            shared,
            window,
            connect_id,
            reply,
        },
    )
}

impl ConnReceiver {
    /// The next message; an abort overtakes queued data. `None` if every sender is gone.
    pub async fn recv(&mut self) -> Option<Inbound> {
        tokio::select! {
            biased;
            _ = self.shared.abort.cancelled() => {
                let reason = self.shared.abort_reason.lock().map(|r| r.clone()).unwrap_or_default();
                Some(Inbound::Close(reason))
            }
            m = self.rx.recv() => m,
        }
    }

    /// Records that `n` bytes were written onward: frees budget and, with flow control,
    /// returns credit to the peer.
    pub fn written(&mut self, n: usize) {
        self.shared.queued.fetch_sub(n, Ordering::AcqRel);
        self.shared.progress_ms.store(
            self.shared.epoch.elapsed().as_millis() as u64,
            Ordering::Release,
        );
        if let Some(credit) = self.window.as_mut().and_then(|w| w.consumed(n)) {
            let _ = self
                .reply
                .control(packet::window_update(self.connect_id, credit));
        }
    }

    /// Whether the queue was aborted (overflow or local decision).
    pub fn aborted(&self) -> bool {
        self.shared.abort.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound;
    use futures::StreamExt;

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
        );
        q.push(Bytes::from(vec![0; 300])).unwrap();
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
        let (q, mut r) = conn_queue(
            1,
            Budget::Flow {
                window: 100,
                max_packet: 10,
            },
            tx,
        );
        q.push(Bytes::from(vec![0; 100])).unwrap();
        assert_eq!(q.push(Bytes::from(vec![0; 20])), Err(Overflow));
        match r.recv().await {
            Some(Inbound::Close(e)) => assert!(e.contains("buffer budget"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unmanaged_connection_over_budget_is_aborted_only_after_it_stalls() {
        let (tx, _out) = outbound::channel();
        let budget = Budget::Unmanaged {
            soft: 100,
            hard: 10_000,
            stall: Duration::from_secs(10),
        };
        let (q, r) = conn_queue(1, budget, tx);
        q.push(Bytes::from(vec![0; 200])).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        q.push(Bytes::from(vec![0; 10])).unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(q.push(Bytes::from(vec![0; 10])), Err(Overflow));
        assert!(r.aborted());
    }
}
