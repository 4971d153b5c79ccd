//! The sending half of a shared stream (`Connect`), as seen by connection tasks.
//!
//! Two queues feed the gRPC stream: a bounded one for DATA and DIAL_REQ (a full queue
//! makes only the sending connection wait) and an unbounded one for small control
//! packets (CLOSE_*, DIAL_RSP, WINDOW_UPDATE) that the shared stream's reader must
//! be able to send without ever blocking. Control packets go first.
use std::pin::Pin;

use futures::stream::{self, PollNext, Stream, StreamExt};
use konnectivity_proto::Packet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Capacity of the DATA queue, in packets (each at most one read chunk).
pub const DATA_QUEUE: usize = 32;

/// The shared stream is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamClosed;

impl std::fmt::Display for StreamClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream to peer closed")
    }
}
impl std::error::Error for StreamClosed {}

/// A cloneable handle to send on a shared stream.
#[derive(Debug, Clone)]
pub struct StreamTx {
    /// Bounded: back-pressure for the connection that sends bulk data.
    data: mpsc::Sender<Packet>,
    /// Unbounded: control packets from the stream reader, which must never wait.
    control: mpsc::UnboundedSender<Packet>,
    /// Cancelled when the stream ends (peer gone, or we retire it).
    closed: CancellationToken,
    /// DATA payload bytes queued on this stream (for status and metrics).
    data_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl StreamTx {
    /// Sends a DATA (or DIAL_REQ) packet, waiting for queue space.
    pub async fn send(&self, p: Packet) -> Result<(), StreamClosed> {
        if let Some(konnectivity_proto::packet::Payload::Data(d)) = &p.payload {
            self.data_bytes.fetch_add(d.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::select! {
            r = self.data.send(p) => r.map_err(|_| StreamClosed),
            _ = self.closed.cancelled() => Err(StreamClosed),
        }
    }

    /// Sends a control packet without waiting.
    pub fn control(&self, p: Packet) -> Result<(), StreamClosed> {
        if self.closed.is_cancelled() {
            return Err(StreamClosed);
        }
        self.control.send(p).map_err(|_| StreamClosed)
    }

    /// Resolves when the stream has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Ends the stream (e.g. retiring a backend, or on shutdown).
    pub fn close(&self) {
        self.closed.cancel()
    }

    /// DATA payload bytes sent on this stream so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The token cancelled when the stream ends.
    pub fn token(&self) -> &CancellationToken {
        &self.closed
    }
}

/// The packets to put on the wire, control first, ending when the stream is closed.
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
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Packet>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// Creates a shared stream's sender and the packet stream to hand to gRPC.
pub fn channel() -> (StreamTx, Outbound) {
    channel_with(None)
}

/// Observes every packet as it is handed to gRPC (metrics).
pub type Hook = std::sync::Arc<dyn Fn(&Packet) + Send + Sync>;

/// [`channel`] with a hook called for each packet put on the wire.
pub fn channel_with(hook: Option<Hook>) -> (StreamTx, Outbound) {
    let (data, data_rx) = mpsc::channel(DATA_QUEUE);
    let (control, control_rx) = mpsc::unbounded_channel();
    let closed = CancellationToken::new();
    let ctrl = tokio_stream_unbounded(control_rx);
    let data_s = tokio_stream_bounded(data_rx);
    let merged = stream::select_with_strategy(ctrl, data_s, |_: &mut ()| PollNext::Left);
    let token = closed.clone();
    let out = merged
        .inspect(move |p| {
            if let Some(h) = &hook {
                h(p)
            }
        })
        .take_until(async move { token.cancelled_owned().await });
    (
        StreamTx {
            data,
            control,
            closed,
            data_bytes: Default::default(),
        },
        Outbound(Box::pin(out)),
    )
}

fn tokio_stream_unbounded(mut rx: mpsc::UnboundedReceiver<Packet>) -> impl Stream<Item = Packet> {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn tokio_stream_bounded(mut rx: mpsc::Receiver<Packet>) -> impl Stream<Item = Packet> {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use konnectivity_core::packet;

    #[tokio::test]
    async fn control_packets_overtake_queued_data() {
        let (tx, mut out) = channel();
        tx.send(packet::data(1, bytes::Bytes::from_static(b"a")))
            .await
            .unwrap();
        tx.control(packet::close_req(9)).unwrap();
        let first = out.next().await.unwrap();
        assert_eq!(packet::type_name(&first), "CLOSE_REQ");
        tx.close();
        assert!(tx.control(packet::close_req(1)).is_err());
    }
}
