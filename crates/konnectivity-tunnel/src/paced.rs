//! A transport wrapper that reports written bytes to an outbound [`Pacer`], and the
//! socket option that keeps the kernel's unsent queue short.
//!
//! Together they bound what sits between the outbound scheduler and the wire: the
//! pacer holds DATA back while HTTP/2 and TLS still have `limit` bytes to write, and
//! `TCP_NOTSENT_LOWAT` makes the socket refuse writes while its unsent queue is above
//! the low-water mark instead of buffering megabytes. An interactive packet then
//! waits behind at most those two bounds of bulk data, not behind whole windows.
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::outbound::Pacer;

/// Bytes HTTP/2 and TLS may hold below the scheduler of an agent stream.
pub const PACER_LIMIT: usize = 128 * 1024;

/// Unsent bytes the kernel keeps queued on an agent stream's socket.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Sets `TCP_NOTSENT_LOWAT` on a connected TCP socket (Linux; a no-op elsewhere).
pub fn set_notsent_lowat<S: std::os::fd::AsFd>(sock: &S, bytes: u32) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket2::SockRef::from(sock).set_tcp_notsent_lowat(bytes)?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (sock, bytes);
    Ok(())
}

/// Methods of `tokio`'s `AsyncRead` / `AsyncWrite` that pass straight through to the
/// wrapped stream in the field `$inner` (which must be `Unpin`), for wrappers that add
/// to some methods only. Written inside the `impl` block:
///
/// - `forward_io!(read inner)`: `poll_read`;
/// - `forward_io!(write inner)`: every `AsyncWrite` method;
/// - `forward_io!(flush inner)`: `is_write_vectored`, `poll_flush` and `poll_shutdown`
///   (for a wrapper that writes itself).
#[macro_export]
macro_rules! forward_io {
    (read $inner:ident) => {
        fn poll_read(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            buf: &mut ::tokio::io::ReadBuf<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::tokio::io::AsyncRead::poll_read(::std::pin::Pin::new(&mut self.$inner), cx, buf)
        }
    };
    (write $inner:ident) => {
        fn poll_write(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            buf: &[u8],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::tokio::io::AsyncWrite::poll_write(::std::pin::Pin::new(&mut self.$inner), cx, buf)
        }
        fn poll_write_vectored(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            bufs: &[::std::io::IoSlice<'_>],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::tokio::io::AsyncWrite::poll_write_vectored(
                ::std::pin::Pin::new(&mut self.$inner),
                cx,
                bufs,
            )
        }
        $crate::forward_io!(flush $inner);
    };
    (flush $inner:ident) => {
        fn is_write_vectored(&self) -> bool {
            ::tokio::io::AsyncWrite::is_write_vectored(&self.$inner)
        }
        fn poll_flush(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::tokio::io::AsyncWrite::poll_flush(::std::pin::Pin::new(&mut self.$inner), cx)
        }
        fn poll_shutdown(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::tokio::io::AsyncWrite::poll_shutdown(::std::pin::Pin::new(&mut self.$inner), cx)
        }
    };
}

/// An I/O stream whose writes are reported to a [`Pacer`].
#[derive(Debug)]
pub struct PacedIo<T> {
    inner: T,
    pacer: Arc<Pacer>,
}

impl<T> PacedIo<T> {
    /// Wraps `inner`; every byte it writes is reported to `pacer`.
    pub fn new(inner: T, pacer: Arc<Pacer>) -> Self {
        Self { inner, pacer }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The pacer this stream reports to.
    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PacedIo<T> {
    crate::forward_io!(read inner);
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PacedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.pacer.written(*n);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.pacer.written(*n);
        }
        r
    }
    crate::forward_io!(flush inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn writes_are_reported_to_the_pacer() {
        let pacer = Pacer::new(10);
        let (a, _b) = tokio::io::duplex(1 << 16);
        let mut io = PacedIo::new(a, pacer.clone());
        let (tx, mut out) = crate::outbound::channel_with(None, Some(pacer.clone()));
        tx.send(konnectivity_core::packet::data(
            1,
            bytes::Bytes::from(vec![0; 100]),
        ))
        .await
        .unwrap();
        futures::StreamExt::next(&mut out).await.unwrap();
        assert!(pacer.below() >= 100);
        io.write_all(&[0; 200]).await.unwrap();
        assert_eq!(pacer.below(), 0);
    }

    #[tokio::test]
    async fn the_low_water_mark_can_be_set_on_a_tcp_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        set_notsent_lowat(&s, NOTSENT_LOWAT).unwrap();
        assert_eq!(
            socket2::SockRef::from(&s).tcp_notsent_lowat().unwrap(),
            NOTSENT_LOWAT
        );
    }
}
