//! The agent stream's gRPC bodies, without a generic codec in the data path.
//!
//! [`PacketBody`] turns the outbound scheduler into an HTTP/2 body: each packet becomes
//! one or two chunks ([`konnectivity_core::frame::encode`]), DATA payloads are handed
//! to HTTP/2 as they are. [`PacketReader`] reads packets from a received body, slicing
//! payloads out of the received frames. Both ends of `AgentService.Connect` (the
//! server's endpoint and the agent's client) use them, so a DATA payload is copied
//! only by the kernel and by TLS between the agent's socket read and the server's
//! frontend write.
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use hyper::body::{Body, Frame};
use konnectivity_core::Packet;
use konnectivity_core::frame::{Decoder, FrameError, encode};

use crate::outbound::Outbound;

/// A stream of packets (by default the outbound scheduler) as an HTTP/2 body.
#[derive(Debug)]
pub struct PacketBody<S = Outbound> {
    out: S,
    /// A DATA payload that follows the head just yielded.
    payload: Option<Bytes>,
    /// Whether the body ends with `grpc-status: 0` trailers (server responses).
    trailers: bool,
    done: bool,
}

impl<S> PacketBody<S> {
    /// A request body (ends without trailers).
    pub fn request(out: S) -> Self {
        Self {
            out,
            payload: None,
            trailers: false,
            done: false,
        }
    }

    /// A response body: ends with an OK status in the trailers.
    pub fn response(out: S) -> Self {
        Self {
            trailers: true,
            ..Self::request(out)
        }
    }
}

impl<S: Stream<Item = Packet> + Unpin> Body for PacketBody<S> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(p) = self.payload.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.out).poll_next(cx) {
            Poll::Ready(Some(p)) => {
                let e = encode(p);
                self.payload = e.payload;
                Poll::Ready(Some(Ok(Frame::data(e.head))))
            }
            Poll::Ready(None) => {
                self.done = true;
                if self.trailers {
                    let mut t = http::HeaderMap::new();
                    t.insert("grpc-status", http::HeaderValue::from_static("0"));
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.payload.is_none()
    }
}

/// Why reading a stream of packets stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The transport failed (reset, connection lost).
    Transport(String),
    /// The bytes were not a valid message stream.
    Frame(FrameError),
    /// The peer ended the stream with a non-OK gRPC status.
    Status {
        /// The `grpc-status` code.
        code: i32,
        /// The `grpc-message`, percent-decoded.
        message: String,
    },
}

/// The name grpc-go gives a status code (`codes.Code.String()`), for the `code` label.
pub fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

impl ReadError {
    /// The gRPC code this error stands for, by grpc-go's name (the `code` label of
    /// `stream_errors_total`): the peer's status as sent; a stream reset with CANCEL
    /// is `Canceled`, any other lost transport `Unavailable`; bytes that are not a
    /// message stream `Internal`.
    pub fn code_name(&self) -> &'static str {
        match self {
            ReadError::Status { code, .. } => grpc_code_name(*code),
            ReadError::Transport(t) if t.contains("stream no longer needed") => "Canceled",
            ReadError::Transport(_) => "Unavailable",
            ReadError::Frame(_) => "Internal",
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Transport(e) => write!(f, "transport: {e}"),
            ReadError::Frame(e) => e.fmt(f),
            ReadError::Status { code, message } => {
                write!(f, "grpc status {code}: {message}")
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// The gRPC status carried in `headers` (trailers, or a trailers-only response), if any.
pub fn status_of(headers: &http::HeaderMap) -> Option<(i32, String)> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .unwrap_or(2);
    let message = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    Some((code, message))
}

fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads packets from a received gRPC body.
#[derive(Debug)]
pub struct PacketReader<B> {
    body: B,
    decoder: Decoder,
    ended: bool,
}

impl<B> PacketReader<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// Reads `body`, refusing messages longer than `max_message` bytes.
    pub fn new(body: B, max_message: usize) -> Self {
        Self {
            body,
            decoder: Decoder::new(max_message),
            ended: false,
        }
    }

    /// The next packet; `Ok(None)` when the peer ended the stream cleanly.
    pub async fn message(&mut self) -> Result<Option<Packet>, ReadError> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    /// Polls for the next packet (see [`PacketReader::message`]).
    pub fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Packet>, ReadError>> {
        loop {
            if let Some(p) = self.decoder.next_packet().map_err(ReadError::Frame)? {
                return Poll::Ready(Ok(Some(p)));
            }
            if self.ended {
                return Poll::Ready(
                    self.decoder
                        .finish()
                        .map(|_| None)
                        .map_err(ReadError::Frame),
                );
            }
            match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.decoder.push(data),
                    Err(frame) => {
                        if let Some(t) = frame.trailers_ref()
                            && let Some((code, message)) = status_of(t)
                            && code != 0
                        {
                            return Poll::Ready(Err(ReadError::Status { code, message }));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(ReadError::Transport(e.to_string()))),
                None => self.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound;
    use http_body_util::BodyExt;
    use konnectivity_core::packet;

    #[tokio::test]
    async fn a_body_reads_back_as_the_packets_sent_and_ends_with_ok_trailers() {
        let (tx, out) = outbound::channel();
        let big = Bytes::from(vec![7u8; 60_000]);
        tx.send(packet::data(1, big.clone())).await.unwrap();
        tx.send(packet::close_rsp(1, "")).await.unwrap();
        let want = konnectivity_core::frame::encode(packet::data(1, big.clone())).len()
            + konnectivity_core::frame::encode(packet::close_rsp(1, "")).len();
        let mut body = PacketBody::response(out);
        let mut bytes = bytes::BytesMut::new();
        let mut frames = 0;
        while bytes.len() < want {
            let f = body.frame().await.unwrap().unwrap();
            bytes.extend_from_slice(&f.into_data().unwrap());
            frames += 1;
        }
        assert_eq!(frames, 3, "head, payload, close");
        tx.close();
        let last = body.frame().await.unwrap().unwrap();
        let trailers = last.into_trailers().unwrap();
        assert_eq!(status_of(&trailers), Some((0, String::new())));
        assert!(body.frame().await.is_none());
        let bytes = bytes.freeze();
        let body = http_body_util::Full::new(bytes);
        let mut r = PacketReader::new(body, 1 << 20);
        let p = r.message().await.unwrap().unwrap();
        assert_eq!(packet::into_data(p).data, big);
        let p = r.message().await.unwrap().unwrap();
        assert_eq!(packet::type_name(&p), "CLOSE_RSP");
        assert_eq!(r.message().await.unwrap(), None);
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("2"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("bad%20token%3A x%"),
        );
        assert_eq!(status_of(&h), Some((2, "bad token: x%".into())));
    }
}
