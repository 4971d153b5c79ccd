//! Relays one socket to and from the shared stream, for one connection.
//!
//! Both directions run concurrently inside one task (a proxy that alternates between
//! directions deadlocks against peers that write while being written to):
//! - socket → stream: read up to the chunk size (and, with flow control, no more than
//!   the credit), send one DATA packet per read (full-size reads reuse pooled
//!   buffers, [`crate::bufpool`]);
//! - stream → socket: write each queued payload fully, then record it as consumed,
//!   which returns credit to the peer.
//!
//! The first direction to end ends the splice; like upstream, there is no half-close.
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use konnectivity_core::packet;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::bufpool;
use crate::credit::Credit;
use crate::outbound::StreamTx;
use crate::queue::{ConnReceiver, Inbound};

/// Read buffers start small (idle connections stay cheap) and double while reads fill
/// them, up to the maximal chunk.
const FIRST_READ: usize = 4096;

/// Why a splice ended.
#[derive(Debug)]
pub enum SpliceEnd {
    /// The local socket reached EOF.
    LocalEof,
    /// Reading or writing the local socket failed.
    LocalError(io::Error),
    /// The peer closed the connection (or it was aborted), with this error text.
    PeerClosed(String),
    /// The shared stream went away.
    StreamGone,
}

/// Relays `sock` ↔ connection `connect_id` on `tx`, until either side ends.
/// `leftover` is sent first (bytes a CONNECT client pipelined after its request).
pub async fn splice<S>(
    sock: S,
    connect_id: i64,
    mut rx: ConnReceiver,
    tx: StreamTx,
    credit: Option<Arc<Credit>>,
    max_chunk: usize,
    leftover: Bytes,
) -> SpliceEnd
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (mut rd, mut wr) = tokio::io::split(sock);
    let up = async {
        if !leftover.is_empty() {
            if let Some(c) = &credit {
                c.ready().await;
                c.spend(leftover.len());
            }
            if tx.send(packet::data(connect_id, leftover)).await.is_err() {
                return SpliceEnd::StreamGone;
            }
        }
        let mut size = FIRST_READ.min(max_chunk);
        loop {
            let want = match &credit {
                Some(c) => {
                    c.ready().await;
                    c.next_chunk(size)
                }
                None => size,
            };
            match bufpool::read_chunk(&mut rd, want).await {
                Ok(chunk) if chunk.is_empty() => return SpliceEnd::LocalEof,
                Ok(chunk) => {
                    let n = chunk.len();
                    if n == want && size < max_chunk {
                        size = (size * 2).min(max_chunk);
                    }
                    if let Some(c) = &credit {
                        c.spend(n);
                    }
                    if tx.send(packet::data(connect_id, chunk)).await.is_err() {
                        return SpliceEnd::StreamGone;
                    }
                }
                Err(e) => return SpliceEnd::LocalError(e),
            }
        }
    };
    let down = async {
        loop {
            match rx.recv().await {
                Some(Inbound::Data(b)) => {
                    let n = b.len();
                    // An aborted connection (a consumer stalled past the stall timeout)
                    // ends even while this write never completes.
                    let wrote = tokio::select! {
                        biased;
                        _ = rx.until_aborted() => None,
                        r = wr.write_all(&b) => Some(r),
                    };
                    match wrote {
                        None => {
                            let why = rx.abort_reason().map(crate::queue::Abort::text);
                            return SpliceEnd::PeerClosed(why.unwrap_or_default().to_owned());
                        }
                        Some(Err(e)) => return SpliceEnd::LocalError(e),
                        Some(Ok(())) => rx.written(n),
                    }
                }
                Some(Inbound::Close(e)) => {
                    let _ = wr.flush().await;
                    return SpliceEnd::PeerClosed(e);
                }
                None => return SpliceEnd::StreamGone,
            }
        }
    };
    let end = tokio::select! {
        e = up => e,
        e = down => e,
        _ = tx.closed() => SpliceEnd::StreamGone,
    };
    let _ = wr.shutdown().await;
    end
}
