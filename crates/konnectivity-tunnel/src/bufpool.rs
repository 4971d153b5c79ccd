//! Reuse of full-size read buffers (the hot path's only large allocations).
//!
//! A bulk transfer reads its socket in chunks of [`MAX_CHUNK`] (256 KiB). Allocating a
//! fresh buffer for each read and freeing it once the chunk has been written elsewhere
//! looks cheap, but allocations that large sit at the allocator's mmap/trim threshold:
//! glibc hands them out from freshly mapped or freshly trimmed memory, musl maps and
//! unmaps each one. Every page of every chunk is then faulted in again (measured: about
//! 0.9 million page faults per 2 GiB through the agent and server, see BENCHMARKS.md).
//!
//! [`read_chunk`] (and [`copy_chunk`], for writers handing over large slices) reads into
//! a buffer taken from a small process-wide free list and returns the bytes as [`Bytes`]
//! that give the buffer back when the last reference is dropped (after the chunk has been
//! written to the peer). Both pool anything larger than a quarter of the full size. The
//! list keeps at most [`KEPT`] buffers (4 MiB), and only buffers of exactly the full size,
//! so an idle process pays nothing and a busy one reaches a steady set of warm buffers.
//! Smaller reads (a connection still growing its read size, interactive traffic) use
//! ordinary allocations, which the allocator serves from its free lists.
//!
//! A chunk never pins much more memory than it carries: a read that fills less than a
//! quarter of its buffer is copied into an allocation of its own size and the buffer is
//! released at once. Without that, a trickling peer (a log line at a time after a bulk
//! phase) would queue one 256 KiB buffer per few bytes while its reader is slow; the
//! credit window bounds bytes, not buffers.
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;

use bytes::{BufMut, Bytes};
use konnectivity_core::flow::MAX_CHUNK;
use tokio::io::AsyncRead;

/// Most buffers kept for reuse (each [`MAX_CHUNK`] bytes).
pub const KEPT: usize = 16;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A pooled buffer owned by [`Bytes`]; going back to the free list on drop.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        if v.capacity() != MAX_CHUNK {
            return;
        }
        v.clear();
        if let Ok(mut free) = FREE.lock()
            && free.len() < KEPT
        {
            free.push(v);
        }
    }
}

fn take() -> Vec<u8> {
    let reused = FREE.lock().ok().and_then(|mut f| f.pop());
    reused.unwrap_or_else(|| Vec::with_capacity(MAX_CHUNK))
}

/// Whether a buffer of `len` bytes comes from the free list.
fn pooled(len: usize) -> bool {
    len > MAX_CHUNK / 4 && len <= MAX_CHUNK
}

/// Turns a filled buffer into a chunk: copied out when it fills under a quarter of its
/// capacity (the buffer is released now), else owned by the chunk.
fn seal(buf: Vec<u8>) -> Bytes {
    if buf.len() <= buf.capacity() / 4 {
        let small = Bytes::copy_from_slice(&buf);
        drop(Pooled(buf));
        return small;
    }
    if buf.capacity() == MAX_CHUNK {
        Bytes::from_owner(Pooled(buf))
    } else {
        Bytes::from(buf)
    }
}

/// Reads once from `rd`, at most `want` bytes (at least 1 is asked for), and returns
/// what was read (empty at EOF). Reads of more than a quarter of [`MAX_CHUNK`] use a
/// pooled buffer.
///
/// The buffer exists only while a read is attempted: each poll takes one, and a read
/// that is not ready gives it back at once. An idle connection waiting for its socket
/// holds no read buffer (it used to hold 4 KiB each on the agent); a busy one pays
/// one extra allocation, or one trip to the free list, per read that had to wait.
pub async fn read_chunk<R>(rd: &mut R, want: usize) -> std::io::Result<Bytes>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let want = want.clamp(1, MAX_CHUNK);
    std::future::poll_fn(|cx| {
        let mut buf = if pooled(want) {
            take()
        } else {
            Vec::with_capacity(want)
        };
        let polled =
            tokio_util::io::poll_read_buf(Pin::new(&mut *rd), cx, &mut (&mut buf).limit(want));
        // On Pending, an error or EOF the buffer goes back through `Pooled`'s drop.
        let Poll::Ready(res) = polled else {
            drop(Pooled(buf));
            return Poll::Pending;
        };
        let chunk = seal(buf);
        Poll::Ready(match res {
            Ok(0) => Ok(Bytes::new()),
            Ok(_) => Ok(chunk),
            Err(e) => Err(e),
        })
    })
    .await
}

/// Copies `data` into a new chunk; copies of more than a quarter of the full size (and
/// at most the full size) land in a pooled buffer.
pub fn copy_chunk(data: &[u8]) -> Bytes {
    if !pooled(data.len()) {
        return Bytes::copy_from_slice(data);
    }
    let mut buf = take();
    buf.extend_from_slice(data);
    Bytes::from_owner(Pooled(buf))
}

/// How many buffers the free list holds now.
#[cfg(test)]
fn kept() -> usize {
    FREE.lock().map(|f| f.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `chunk`'s bytes, the buffers on the list while it lives (`held`) and after
    /// it is dropped (at least one; `before` is what the list held before it was made).
    fn check_chunk(chunk: Bytes, want: &[u8], (before, held): (usize, usize), what: &str) {
        assert_eq!(&chunk[..], want, "{what}");
        assert_eq!(kept(), held, "{what}: while it lives");
        drop(chunk);
        assert_eq!(kept(), before.max(1), "{what}: once dropped");
    }

    #[tokio::test]
    async fn full_size_buffers_are_reused_small_ones_are_not_kept_and_the_list_is_bounded() {
        let data: Vec<u8> = (0..MAX_CHUNK * 2).map(|i| (i % 251) as u8).collect();
        let mut rd = &data[..];
        let a = read_chunk(&mut rd, MAX_CHUNK).await.unwrap();
        assert_eq!(&a[..], &data[..MAX_CHUNK]);
        let ptr = a.as_ptr();
        let before = kept();
        drop(a);
        assert_eq!(kept(), before + 1, "a dropped full-size chunk goes back");
        let b = read_chunk(&mut rd, MAX_CHUNK).await.unwrap();
        assert_eq!(&b[..], &data[MAX_CHUNK..]);
        // No other test in this crate reads full-size chunks, so the list is ours.
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is read into again");
        let small = read_chunk(&mut &b"xyz"[..], 4096).await.unwrap();
        assert_eq!(&small[..], b"xyz");
        let n = kept();
        drop(small);
        assert_eq!(kept(), n, "small buffers are not kept");
        assert!(
            read_chunk(&mut &b""[..], MAX_CHUNK)
                .await
                .unwrap()
                .is_empty()
        );

        // A read of under a quarter of its pooled buffer is copied out, and the buffer
        // goes back at once: a queued chunk does not pin 256 KiB for a few bytes.
        let n = kept();
        let short = read_chunk(&mut &b"a log line"[..], MAX_CHUNK)
            .await
            .unwrap();
        let what = "the buffer of a short read is back on the list";
        check_chunk(short, b"a log line", (n, n.max(1)), what);

        // Reads of more than a quarter of the full size are pooled too, and stop at `want`.
        let n = kept();
        let want = MAX_CHUNK / 2;
        let half = read_chunk(&mut &data[..], want).await.unwrap();
        let what = "a half-size read stops at `want` and holds a pooled buffer";
        check_chunk(half, &data[..want], (n, n.saturating_sub(1)), what);

        // Large copies use the list too.
        let n = kept();
        let c = copy_chunk(&data[..MAX_CHUNK / 2]);
        let what = "a large copy holds a pooled buffer";
        check_chunk(c, &data[..MAX_CHUNK / 2], (n, n.saturating_sub(1)), what);

        // The list is bounded.
        let data = vec![7u8; MAX_CHUNK];
        let mut chunks = Vec::new();
        for _ in 0..KEPT + 8 {
            chunks.push(read_chunk(&mut &data[..], MAX_CHUNK).await.unwrap());
        }
        drop(chunks);
        assert!(kept() <= KEPT);

        // A read that is not ready gives its buffer back at once: a connection waiting
        // for its socket holds no read buffer.
        let (_writer, mut idle) = tokio::io::duplex(64);
        let n = kept();
        assert!(n > 0);
        let mut waiting = std::pin::pin!(read_chunk(&mut idle, MAX_CHUNK));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        assert_eq!(kept(), n, "a pending read holds no pooled buffer");
    }
}
