//! A channel whose memory grows with what it holds: the per-connection queues.
//!
//! Every tunneled connection owns two queues on the server (agent → connection, and
//! connection → frontend stream) and one on the agent, and most connections are idle
//! most of the time. tokio's `mpsc` allocates its first block of 32 slots when the
//! channel is created: 1.5 KiB for a queue of payloads, 2.8 KiB for one of packets,
//! held for the life of the connection whether anything is ever queued or not
//! (BENCHMARKS.md, "Memory per tunneled connection"). An inbox starts with no buffer,
//! grows a `VecDeque` while messages wait, and frees a buffer grown past
//! `KEEP_SLOTS` (4) when it drains: an idle connection's queue costs its fixed part
//! (about 100 bytes) and at most four slots.
//!
//! Many senders, one receiver. With a bound ([`bounded`]), [`Sender::send`] waits for
//! room; without one ([`unbounded`]), [`Sender::try_send`] never fails for lack of
//! room. The receiver ends (`None`) once every sender is gone and the queue is empty;
//! senders fail once the receiver is gone, and what was queued is dropped with it.
//! A `std::sync::Mutex` guards the queue for the length of a push or a pop, never
//! across an await.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// A drained queue keeps a buffer of at most this many slots (a burst's larger buffer
/// is freed).
const KEEP_SLOTS: usize = 4;

/// What the sender and the receiver share.
#[derive(Debug)]
struct Inbox<T> {
    state: Mutex<State<T>>,
    /// Senders wait here for room (bounded) and for the receiver to go away.
    room: Notify,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// Most messages held (`usize::MAX`: unbounded).
    cap: usize,
    senders: usize,
    /// The receiver is gone (or closed the queue): sends fail.
    closed: bool,
    /// The receiver waiting for a message.
    rx_waker: Option<Waker>,
}

impl<T> Inbox<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why [`Sender::try_send`] refused a message (it is handed back).
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds its bound.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing is queued now.
    Empty,
    /// Nothing is queued and every sender is gone.
    Disconnected,
}

/// The sending half; cloning it adds a sender.
#[derive(Debug)]
pub struct Sender<T> {
    inbox: Arc<Inbox<T>>,
}

/// The receiving half.
#[derive(Debug)]
pub struct Receiver<T> {
    inbox: Arc<Inbox<T>>,
}

/// A queue without a bound on its length (the caller bounds it, e.g. in bytes).
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    bounded(usize::MAX)
}

/// A queue that holds at most `cap` messages (at least 1).
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let inbox = Arc::new(Inbox {
        state: Mutex::new(State {
            items: VecDeque::new(),
            cap: cap.max(1),
            senders: 1,
            closed: false,
            rx_waker: None,
        }),
        room: Notify::new(),
    });
    (
        Sender {
            inbox: inbox.clone(),
        },
        Receiver { inbox },
    )
}

impl<T> Sender<T> {
    /// Queues `value` if there is room and the receiver is there.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut st = self.inbox.lock();
            if st.closed {
                return Err(TrySendError::Closed(value));
            }
            if st.items.len() >= st.cap {
                return Err(TrySendError::Full(value));
            }
            st.items.push_back(value);
            st.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `value`, waiting for room; hands it back if the receiver is gone.
    pub async fn send(&self, mut value: T) -> Result<(), T> {
        loop {
            let room = self.inbox.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(v)) => return Err(v),
                Err(TrySendError::Full(v)) => value = v,
            }
            room.await;
        }
    }

    /// Resolves once the receiver is gone.
    pub async fn closed(&self) {
        loop {
            let room = self.inbox.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.is_closed() {
                return;
            }
            room.await;
        }
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.inbox.lock().closed
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.inbox.lock().senders += 1;
        Self {
            inbox: self.inbox.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.inbox.lock();
            st.senders -= 1;
            match st.senders {
                0 => st.rx_waker.take(),
                _ => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next message, or `None` once every sender is gone and nothing is queued.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message (see [`Receiver::recv`]).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.take(Some(cx)) {
            Ok(v) => Poll::Ready(Some(v)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    /// The next message if one is queued now.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.take(None)
    }

    /// Pops the next message; when there is none and `cx` is given, registers its
    /// waker under the same lock (so no push in between is missed).
    fn take(&self, cx: Option<&mut Context<'_>>) -> Result<T, TryRecvError> {
        let (v, was_full) = {
            let mut st = self.inbox.lock();
            let was_full = st.items.len() >= st.cap;
            let Some(v) = st.items.pop_front() else {
                if st.senders == 0 {
                    return Err(TryRecvError::Disconnected);
                }
                if let Some(cx) = cx {
                    match &mut st.rx_waker {
                        Some(w) => w.clone_from(cx.waker()),
                        None => st.rx_waker = Some(cx.waker().clone()),
                    }
                }
                return Err(TryRecvError::Empty);
            };
            if st.items.is_empty() && st.items.capacity() > KEEP_SLOTS {
                st.items = VecDeque::new();
            }
            (v, was_full)
        };
        if was_full {
            self.inbox.room.notify_waiters();
        }
        Ok(v)
    }

    /// Refuses further messages and drops what is queued.
    pub fn close(&mut self) {
        drop(self.close_and_drain());
    }

    /// Refuses further messages and hands back what was still queued.
    pub fn close_and_drain(&mut self) -> VecDeque<T> {
        let left = {
            let mut st = self.inbox.lock();
            st.closed = true;
            std::mem::take(&mut st.items)
        };
        self.inbox.room.notify_waiters();
        left
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_idle_queue_holds_no_buffer_and_a_drained_burst_gives_its_buffer_back() {
        let (tx, mut rx) = unbounded::<u64>();
        assert_eq!(rx.inbox.lock().items.capacity(), 0, "nothing before use");
        for i in 0..1000 {
            tx.try_send(i).unwrap();
        }
        for i in 0..1000 {
            assert_eq!(rx.recv().await, Some(i), "in order");
        }
        assert_eq!(
            rx.inbox.lock().items.capacity(),
            0,
            "the burst's buffer is freed"
        );
        tx.try_send(1).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert!(rx.inbox.lock().items.capacity() <= KEEP_SLOTS);
    }

    #[tokio::test]
    async fn the_receiver_ends_when_every_sender_is_gone_after_the_queued_messages() {
        let (tx, mut rx) = unbounded::<u8>();
        let tx2 = tx.clone();
        tx.try_send(1).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(
            rx.try_recv(),
            Err(TryRecvError::Empty),
            "one sender is left"
        );
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(tx2);
        assert_eq!(waiting.await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_bounded_sender_waits_for_room_and_fails_once_the_receiver_is_gone() {
        let (tx, mut rx) = bounded::<u8>(2);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        let tx2 = tx.clone();
        let third = tokio::spawn(async move { tx2.send(3).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!third.is_finished(), "no room yet");
        assert_eq!(rx.recv().await, Some(1));
        third.await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));

        let closed = tokio::spawn(async move {
            tx.closed().await;
            tx.send(4).await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!closed.is_finished());
        drop(rx);
        assert_eq!(closed.await.unwrap(), Err(4));
    }

    #[tokio::test]
    async fn a_closed_receiver_drops_what_was_queued_and_refuses_more() {
        let held = Arc::new(());
        let (tx, mut rx) = unbounded::<Arc<()>>();
        tx.try_send(held.clone()).unwrap();
        rx.close();
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the queued message was dropped"
        );
        assert!(matches!(
            tx.try_send(held.clone()),
            Err(TrySendError::Closed(_))
        ));
        assert!(tx.is_closed());
    }
}
