//! Accepting the `:authority` that grpc-go clients send over a UNIX socket.
//!
//! kube-apiserver (through konnectivity-client and grpc-go) dials the frontend socket
//! with the socket *path* as its target, and grpc-go sends that path, percent-encoded,
//! as the HTTP/2 `:authority` (e.g. `%2Fetc%2Fkubernetes%2Fkonnectivity-server%2F…`).
//! That is not a valid URI authority, and the `h2` crate resets such streams with
//! PROTOCOL_ERROR before any application code runs. Upstream (Go) accepts it.
//!
//! [`AuthorityFix`] sits between the socket and the HTTP/2 server on the frontend. It
//! passes every frame through unchanged except header blocks: those are decoded
//! ([`konnectivity_core::hpack`], following the client's dynamic table), any invalid `:authority` is
//! replaced with `localhost`, and the block is re-encoded as literals without indexing,
//! which never touches the server decoder's dynamic table. Every block is re-encoded,
//! so the server's view of the header table never depends on the client's.
//!
//! Only header blocks are held here (at most 1 MiB, a bigger one ends the connection).
//! Other frames pass through as they arrive, and once a frame's header has gone
//! through, the rest of its payload is read straight into the HTTP/2 server's buffer,
//! without being copied here. An idle connection holds no buffers.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use konnectivity_core::hpack::Decoder;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;

/// The HTTP/2 frame types rewritten here (RFC 9113 §6).
mod frame {
    pub(super) const HEADERS: u8 = 0x1;
    pub(super) const CONTINUATION: u8 = 0x9;
}

/// The HEADERS and CONTINUATION flags that shape a header block (RFC 9113 §6.2).
mod flag {
    pub(super) const END_HEADERS: u8 = 0x4;
    pub(super) const PADDED: u8 = 0x8;
    pub(super) const PRIORITY: u8 = 0x20;
}
/// Largest header block we assemble (grpc-go's default header list limit is 16 MiB;
/// real kube-apiserver requests carry a few hundred bytes).
const MAX_BLOCK: usize = 1 << 20;
/// Largest decoded header list (names, values, 32 bytes per field) we re-encode.
const MAX_LIST: usize = 1 << 20;
/// The HPACK table size the HTTP/2 server allows (the protocol default, which it
/// does not change).
const TABLE_SIZE: usize = 4096;
/// The server's default SETTINGS_MAX_FRAME_SIZE, the safe size for frames we emit.
const MAX_FRAME: usize = 16_384;

struct PendingBlock {
    stream_id: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: BytesMut,
}

/// Wraps the server side of a frontend connection; see the module docs.
pub struct AuthorityFix<T> {
    inner: T,
    /// Raw bytes from the client not yet processed.
    raw: BytesMut,
    /// Processed bytes ready for the HTTP/2 server.
    out: BytesMut,
    pending: Option<PendingBlock>,
    /// Bytes still to pass through unchanged: the rest of the connection preface, or of
    /// the current non-header frame's payload.
    skip: usize,
    decoder: Decoder,
    eof: bool,
}

impl<T> AuthorityFix<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            pending: None,
            // The client's connection preface passes through like a frame payload.
            skip: PREFACE_LEN,
            decoder: Decoder::new(TABLE_SIZE),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.raw.len());
                if n == 0 {
                    break;
                }
                self.out.extend_from_slice(&self.raw.split_to(n));
                self.skip -= n;
                continue;
            }
            if self.raw.len() < FRAME_HEADER {
                break;
            }
            let len = (usize::from(self.raw[0]) << 16)
                | (usize::from(self.raw[1]) << 8)
                | usize::from(self.raw[2]);
            let kind = self.raw[3];
            let header_frame = kind == frame::HEADERS || kind == frame::CONTINUATION;
            if header_frame && len > MAX_BLOCK {
                return Err(bad("header frame too large"));
            }
            if header_frame && self.raw.len() < FRAME_HEADER + len {
                self.raw.reserve(FRAME_HEADER + len - self.raw.len());
                break;
            }
            let flags = self.raw[4];
            let stream_id =
                u32::from_be_bytes([self.raw[5], self.raw[6], self.raw[7], self.raw[8]])
                    & 0x7fff_ffff;
            if self.pending.is_some() && kind != frame::CONTINUATION {
                return Err(bad("expected CONTINUATION frame"));
            }
            match kind {
                frame::HEADERS => {
                    let mut frame = self.raw.split_to(FRAME_HEADER + len);
                    frame.advance(FRAME_HEADER);
                    let mut payload = frame;
                    let mut pad = 0;
                    if flags & flag::PADDED != 0 {
                        if payload.is_empty() {
                            return Err(bad("padded HEADERS frame without pad length"));
                        }
                        pad = usize::from(payload[0]);
                        payload.advance(1);
                    }
                    let mut priority = None;
                    if flags & flag::PRIORITY != 0 {
                        if payload.len() < 5 {
                            return Err(bad("short PRIORITY fields"));
                        }
                        let mut p = [0u8; 5];
                        p.copy_from_slice(&payload[..5]);
                        priority = Some(p);
                        payload.advance(5);
                    }
                    if pad > payload.len() {
                        return Err(bad("padding longer than frame"));
                    }
                    payload.truncate(payload.len() - pad);
                    self.pending = Some(PendingBlock {
                        stream_id,
                        flags,
                        priority,
                        block: payload,
                    });
                    if flags & flag::END_HEADERS != 0 {
                        self.emit_block()?;
                    }
                }
                frame::CONTINUATION => {
                    let mut frame = self.raw.split_to(FRAME_HEADER + len);
                    frame.advance(FRAME_HEADER);
                    let Some(p) = self.pending.as_mut() else {
                        return Err(bad("CONTINUATION without HEADERS"));
                    };
                    if p.stream_id != stream_id {
                        return Err(bad("CONTINUATION on another stream"));
                    }
                    if p.block.len() + frame.len() > MAX_BLOCK {
                        return Err(bad("header block too large"));
                    }
                    p.block.extend_from_slice(&frame);
                    if flags & flag::END_HEADERS != 0 {
                        self.emit_block()?;
                    }
                }
                // Any other frame passes through as it arrives; its payload is not
                // held here (poll_read reads it straight into the caller's buffer).
                _ => {
                    self.out.extend_from_slice(&self.raw.split_to(FRAME_HEADER));
                    self.skip = len;
                }
            }
        }
        Ok(())
    }

    fn emit_block(&mut self) -> io::Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let mut block = BytesMut::with_capacity(p.block.len() + 64);
        self.decoder
            .decode(&p.block, MAX_LIST, |name, value| {
                let value: &[u8] =
                    if name == b":authority" && http::uri::Authority::try_from(value).is_err() {
                        b"localhost"
                    } else {
                        value
                    };
                encode_literal(&mut block, name, value);
            })
            .map_err(|e| bad(&format!("HPACK decoding failed: {e}")))?;
        // HEADERS (keeping END_STREAM and PRIORITY, dropping padding), then
        // CONTINUATIONs if the block exceeds the frame size.
        let prio: &[u8] = p.priority.as_ref().map_or(&[], |prio| prio);
        let mut flags = p.flags & !(flag::PADDED | flag::END_HEADERS);
        if !prio.is_empty() {
            flags |= flag::PRIORITY;
        }
        let chunk = block.len().min(MAX_FRAME - prio.len());
        let last = chunk == block.len();
        put_frame_header(
            &mut self.out,
            chunk + prio.len(),
            frame::HEADERS,
            if last {
                flags | flag::END_HEADERS
            } else {
                flags
            },
            p.stream_id,
        );
        self.out.extend_from_slice(prio);
        self.out.extend_from_slice(&block.split_to(chunk));
        while !block.is_empty() {
            let chunk = block.len().min(MAX_FRAME);
            let last = chunk == block.len();
            put_frame_header(
                &mut self.out,
                chunk,
                frame::CONTINUATION,
                if last { flag::END_HEADERS } else { 0 },
                p.stream_id,
            );
            self.out.extend_from_slice(&block.split_to(chunk));
        }
        Ok(())
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id & 0x7fff_ffff);
}

/// HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn encode_int(out: &mut BytesMut, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.put_u8(first | v as u8);
        return;
    }
    out.put_u8(first | max as u8);
    v -= max;
    while v >= 128 {
        out.put_u8((v % 128 + 128) as u8);
        v /= 128;
    }
    out.put_u8(v as u8);
}

/// "Literal Header Field without Indexing — New Name" (RFC 7541 §6.2.2), no Huffman.
fn encode_literal(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_u8(0x00);
    encode_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name);
    encode_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.skip > 0 && this.raw.is_empty() {
                // The rest of a passed-through frame: straight into the caller's buffer.
                let want = this.skip.min(buf.remaining());
                let before = buf.filled().len();
                if want == buf.remaining() {
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                } else {
                    buf.initialize_unfilled_to(want);
                    let mut part = buf.take(want);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    buf.advance(n);
                }
                let n = buf.filled().len() - before;
                if n == 0 {
                    this.eof = true;
                }
                this.skip -= n;
                return Poll::Ready(Ok(()));
            }
            if this.raw.capacity() - this.raw.len() < 4096 {
                this.raw.reserve(16 * 1024);
            }
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.raw);
            let Poll::Ready(read) = read else {
                // Idle: an idle connection holds no buffers.
                if this.raw.is_empty() {
                    this.raw = BytesMut::new();
                }
                if this.out.is_empty() {
                    this.out = BytesMut::new();
                }
                return Poll::Pending;
            };
            let n = read?;
            if n == 0 {
                this.eof = true;
                continue;
            }
            this.process()?;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    konnectivity_tunnel::forward_io!(write inner);
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<T>
{
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use konnectivity_core::hpack::huffman_encode;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A literal with incremental indexing, name by static index, Huffman-coded value.
    fn indexed_literal(name_index: u8, value: &[u8]) -> Vec<u8> {
        let v = huffman_encode(value);
        let mut b = BytesMut::new();
        encode_int(&mut b, 0x40, 6, usize::from(name_index));
        encode_int(&mut b, 0x80, 7, v.len());
        b.extend_from_slice(&v);
        b.to_vec()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_frame_header(&mut b, payload.len(), kind, flags, stream);
        b.extend_from_slice(payload);
        b.to_vec()
    }

    /// The header blocks of `bytes` (after the preface), decoded.
    fn blocks(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut d = Decoder::new(TABLE_SIZE);
        let mut rest = &bytes[PREFACE_LEN..];
        let mut out = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (f, r) = rest.split_at(FRAME_HEADER + len);
            rest = r;
            if f[3] == frame::HEADERS {
                let mut fields = Vec::new();
                d.decode(&f[FRAME_HEADER..], MAX_LIST, |n, v| {
                    fields.push((
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    ));
                })
                .expect("re-encoded block decodes");
                out.push(fields);
            }
        }
        out
    }

    #[test]
    fn replaces_a_socket_path_authority_in_every_request_and_keeps_the_rest() {
        // grpc-go over a UNIX socket: the percent-encoded path as :authority, indexed
        // in the first request and referenced from the dynamic table in the second.
        let sock = b"%2Fetc%2Fkubernetes%2Fkonnectivity-server%2Fkonnectivity-server.socket";
        let mut first = vec![0x83, 0x86]; // :method POST, :scheme http
        first.extend(indexed_literal(1, sock)); // :authority, now dynamic index 62
        first.extend(indexed_literal(4, b"/ProxyService/Proxy")); // :path, now 62
        let second = vec![0x83, 0x86, 0x80 | 63, 0x80 | 62];
        let data = frame(0x0, 0, 1, b"payload");
        let mut input = PREFACE.to_vec();
        input.extend(frame(frame::HEADERS, flag::END_HEADERS, 1, &first));
        input.extend(&data);
        input.extend(frame(frame::HEADERS, flag::END_HEADERS, 3, &second));

        // Fed in small pieces, as a socket may deliver it.
        let mut fix = AuthorityFix::new(());
        let mut out = Vec::new();
        for piece in input.chunks(7) {
            fix.raw.extend_from_slice(piece);
            fix.process().expect("valid input");
            out.extend_from_slice(&fix.out.split());
        }
        assert!(fix.raw.is_empty());
        let expected = vec![
            (":method".to_owned(), "POST".to_owned()),
            (":scheme".into(), "http".into()),
            (":authority".into(), "localhost".into()),
            (":path".into(), "/ProxyService/Proxy".into()),
        ];
        assert_eq!(blocks(&out), vec![expected.clone(), expected]);
        // Other frames pass through unchanged.
        let at = out.windows(data.len()).position(|w| w == data);
        assert!(at.is_some(), "the DATA frame is passed through as it was");
    }

    #[tokio::test]
    async fn large_frames_pass_through_unbuffered_and_unchanged() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut fix = AuthorityFix::new(server);
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut input = PREFACE.to_vec();
        input.extend(frame(frame::HEADERS, flag::END_HEADERS, 1, &[0x83, 0x86]));
        input.extend(frame(0x0, 0, 1, &payload));
        input.extend(frame(frame::HEADERS, flag::END_HEADERS | 0x1, 1, &[0x88]));
        let writer = tokio::spawn(async move {
            client.write_all(&input).await?;
            client.shutdown().await?;
            Ok::<_, io::Error>(client)
        });
        let mut out = Vec::new();
        let mut most_held = 0;
        let mut buf = vec![0u8; 100_000];
        loop {
            let n = fix.read(&mut buf).await.expect("read");
            most_held = most_held.max(fix.raw.capacity());
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        writer.await.expect("writer").expect("write");
        let data = frame(0x0, 0, 1, &payload);
        assert!(
            out.windows(data.len()).any(|w| w == data.as_slice()),
            "the DATA frame arrives whole and unchanged"
        );
        assert_eq!(
            blocks(&out),
            vec![
                vec![
                    (":method".to_owned(), "POST".to_owned()),
                    (":scheme".into(), "http".into())
                ],
                vec![(":status".to_owned(), "200".to_owned())],
            ]
        );
        assert!(most_held <= 32 * 1024, "held at most {most_held} bytes");
    }

    #[test]
    fn refuses_an_oversized_header_frame_before_buffering_it() {
        let mut fix = AuthorityFix::new(());
        fix.raw.extend_from_slice(PREFACE);
        let mut h = BytesMut::new();
        put_frame_header(&mut h, MAX_BLOCK + 1, frame::HEADERS, flag::END_HEADERS, 1);
        fix.raw.extend_from_slice(&h);
        assert!(fix.process().is_err());
        assert!(fix.raw.capacity() < 64 * 1024);
    }

    #[test]
    fn keeps_a_valid_authority_and_refuses_a_corrupt_block() {
        let mut fix = AuthorityFix::new(());
        let mut block = vec![0x83];
        block.extend(indexed_literal(1, b"konnectivity:8090"));
        fix.raw.extend_from_slice(PREFACE);
        fix.raw
            .extend(frame(frame::HEADERS, flag::END_HEADERS, 1, &block));
        fix.process().expect("valid input");
        let out = fix.out.split().to_vec();
        assert_eq!(
            blocks(&out),
            vec![vec![
                (":method".to_owned(), "POST".to_owned()),
                (":authority".into(), "konnectivity:8090".into()),
            ]]
        );
        // An index past both tables is a connection error, not a panic.
        fix.raw
            .extend(frame(frame::HEADERS, flag::END_HEADERS, 3, &[0x80 | 100]));
        assert!(fix.process().is_err());
    }
}
