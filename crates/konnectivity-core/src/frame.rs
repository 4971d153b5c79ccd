//! gRPC message framing of `Packet`s without copying DATA payloads.
//!
//! On the wire a gRPC stream is a sequence of messages, each a 1-byte compression flag,
//! a 4-byte big-endian length and the protobuf bytes. A generic codec copies every
//! message into one contiguous buffer on both sides. Here:
//!
//! - [`encode`] splits a DATA packet into a small head (prefix, packet and `Data`
//!   field headers) and the payload itself, so the payload `Bytes` goes to HTTP/2 as
//!   its own chunk, untouched. The concatenation is byte-for-byte what a protobuf
//!   encoder produces (fields in field-number order), so any gRPC peer reads it.
//! - [`Decoder`] keeps received chunks in a [`Rope`] and decodes a message once it is
//!   complete; the `data` field is sliced out of the chunk that holds it (no copy)
//!   whenever it lies within one chunk, which is the case for payloads sent as their
//!   own chunk by a peer using [`encode`].
use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use konnectivity_proto::packet::Payload;
use konnectivity_proto::{Data, Packet};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

/// Length of the gRPC message prefix (flag + length).
pub const PREFIX: usize = 5;

/// DATA payloads up to this size are copied into the head: one chunk instead of two.
pub const INLINE_PAYLOAD: usize = 1024;

/// A packet encoded as one or two chunks to send in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The prefix and everything before the DATA payload (or the whole message).
    pub head: Bytes,
    /// The DATA payload, when it is sent as its own chunk.
    pub payload: Option<Bytes>,
}

impl Encoded {
    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.as_ref().map_or(0, Bytes::len)
    }

    /// Whether nothing is encoded (never true for a real packet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frames one packet as a gRPC message.
pub fn encode(p: Packet) -> Encoded {
    let big_data = matches!(&p.payload, Some(Payload::Data(d)) if d.data.len() > INLINE_PAYLOAD);
    if !big_data {
        let len = p.encoded_len();
        let mut b = BytesMut::with_capacity(PREFIX + len);
        b.put_u8(0);
        b.put_u32(len as u32);
        // Encoding into a buffer of sufficient capacity cannot fail.
        let _ = p.encode(&mut b);
        return Encoded {
            head: b.freeze(),
            payload: None,
        };
    }
    let kind = p.r#type;
    let Some(Payload::Data(d)) = p.payload else {
        unreachable!("checked above")
    };
    let Data {
        connect_id,
        error,
        data,
    } = d;
    let n = data.len();
    let fields = Data {
        connect_id,
        error,
        data: Bytes::new(),
    };
    let data_field = 1 + encoded_len_varint(n as u64) + n;
    let inner = fields.encoded_len() + data_field;
    let type_field = if kind != 0 {
        1 + encoded_len_varint(kind as i64 as u64)
    } else {
        0
    };
    let total = type_field + 1 + encoded_len_varint(inner as u64) + inner;
    let mut b = BytesMut::with_capacity(PREFIX + total - n);
    b.put_u8(0);
    b.put_u32(total as u32);
    if kind != 0 {
        encode_key(1, WireType::Varint, &mut b);
        encode_varint(kind as i64 as u64, &mut b);
    }
    encode_key(4, WireType::LengthDelimited, &mut b);
    encode_varint(inner as u64, &mut b);
    // `fields` has an empty `data`, which proto3 omits: this writes fields 1 and 2.
    let _ = fields.encode(&mut b);
    encode_key(3, WireType::LengthDelimited, &mut b);
    encode_varint(n as u64, &mut b);
    Encoded {
        head: b.freeze(),
        payload: Some(data),
    }
}

/// Why a stream of messages could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The compressed flag was set; the Konnectivity streams never compress.
    Compressed(u8),
    /// A message longer than the configured limit.
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The protobuf bytes did not decode as a `Packet`.
    Protobuf(String),
    /// The stream ended inside a message.
    Truncated(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The texts follow grpc's own wording for the same conditions.
            FrameError::Compressed(flag) => write!(
                f,
                "protocol error: received message with compressed-flag {flag} but no grpc-encoding was specified"
            ),
            FrameError::TooLarge { len, max } => write!(
                f,
                "Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
            ),
            FrameError::Protobuf(e) => write!(f, "failed to decode Packet: {e}"),
            FrameError::Truncated(n) => {
                write!(f, "stream ended with {n} bytes of an incomplete message")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Received chunks, read as one buffer. Slicing within a chunk does not copy.
#[derive(Debug, Default)]
pub struct Rope {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Rope {
    /// Appends a chunk.
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.chunks.push_back(b);
        }
    }
}

impl Buf for Rope {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of a rope");
        self.len -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if cnt < front.len() {
                front.advance(cnt);
                break;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.len, "copy_to_bytes past the end of a rope");
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= len
        {
            let out = front.split_to(len);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.len -= len;
            return out;
        }
        let mut out = BytesMut::with_capacity(len);
        out.put((&mut *self).take(len));
        out.freeze()
    }
}

/// Decodes `Packet`s from the chunks of a gRPC stream body.
#[derive(Debug)]
pub struct Decoder {
    rope: Rope,
    /// Length of the message whose prefix has been read.
    want: Option<usize>,
    max: usize,
}

impl Decoder {
    /// A decoder refusing messages longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            rope: Rope::default(),
            want: None,
            max,
        }
    }

    /// Adds a received chunk.
    pub fn push(&mut self, b: Bytes) {
        self.rope.push(b)
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.rope.remaining()
    }

    /// The next complete packet, if one is buffered.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, FrameError> {
        let len = match self.want {
            Some(len) => len,
            None => {
                if self.rope.remaining() < PREFIX {
                    return Ok(None);
                }
                let flag = self.rope.get_u8();
                let len = self.rope.get_u32() as usize;
                if flag != 0 {
                    return Err(FrameError::Compressed(flag));
                }
                if len > self.max {
                    return Err(FrameError::TooLarge { len, max: self.max });
                }
                self.want = Some(len);
                len
            }
        };
        if self.rope.remaining() < len {
            return Ok(None);
        }
        self.want = None;
        let mut msg = (&mut self.rope).take(len);
        let r = Packet::decode(&mut msg);
        // A packet that decoded without reading its whole message still ends there.
        let rest = msg.remaining();
        self.rope.advance(rest);
        r.map(Some).map_err(|e| FrameError::Protobuf(e.to_string()))
    }

    /// Call at the end of the stream: an error if it ended inside a message.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.rope.remaining() {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet;

    fn prost_framed(p: &Packet) -> Vec<u8> {
        let body = p.encode_to_vec();
        let mut v = vec![0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(&body);
        v
    }

    fn joined(e: &Encoded) -> Vec<u8> {
        let mut v = e.head.to_vec();
        if let Some(p) = &e.payload {
            v.extend_from_slice(p);
        }
        v
    }

    fn samples() -> Vec<Packet> {
        let mut with_error = packet::data(7, Bytes::from(vec![3; 5000]));
        if let Some(Payload::Data(d)) = &mut with_error.payload {
            d.error = "boom".into();
        }
        vec![
            packet::data(1, Bytes::from(vec![9; 70_000])),
            packet::data(i64::MAX, Bytes::from(vec![1; INLINE_PAYLOAD + 1])),
            packet::data(2, Bytes::from_static(b"x")),
            packet::data(0, Bytes::new()),
            with_error,
            packet::dial_req("tcp", "10.0.0.1:10250", 42),
            packet::dial_rsp(42, 3, ""),
            packet::close_req(3),
            packet::close_rsp(3, "EOF"),
            packet::window_update(3, 1 << 20),
            packet::drain(),
        ]
    }

    #[test]
    fn split_encoding_is_byte_identical_to_protobuf() {
        for p in samples() {
            let e = encode(p.clone());
            assert_eq!(joined(&e), prost_framed(&p), "{}", packet::type_name(&p));
            if let Some(Payload::Data(d)) = &p.payload {
                assert_eq!(e.payload.is_some(), d.data.len() > INLINE_PAYLOAD);
            }
        }
    }

    #[test]
    fn decodes_across_any_chunking_and_slices_payloads_in_one_chunk() {
        let all: Vec<Encoded> = samples().into_iter().map(encode).collect();
        let wire: Vec<u8> = all.iter().flat_map(joined).collect();
        for step in [1, 3, 7, 64, 4096, wire.len()] {
            let mut d = Decoder::new(1 << 20);
            let mut out = vec![];
            for c in wire.chunks(step) {
                d.push(Bytes::copy_from_slice(c));
                while let Some(p) = d.next_packet().unwrap() {
                    out.push(p);
                }
            }
            d.finish().unwrap();
            assert_eq!(out, samples(), "chunk size {step}");
        }
        // Chunks as our sender produces them: the big payload comes out as a slice of
        // the very chunk it arrived in.
        let mut d = Decoder::new(1 << 20);
        let e = &all[0];
        let payload = e.payload.clone().unwrap();
        d.push(e.head.clone());
        d.push(payload.clone());
        let p = d.next_packet().unwrap().unwrap();
        let got = packet::into_data(p).data;
        assert_eq!(got.as_ptr(), payload.as_ptr(), "payload was copied");
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut d = Decoder::new(100);
        d.push(Bytes::from_static(&[1, 0, 0, 0, 1, 0]));
        assert_eq!(d.next_packet(), Err(FrameError::Compressed(1)));
        let mut d = Decoder::new(100);
        d.push(Bytes::from_static(&[0, 0, 0, 1, 0]));
        assert!(matches!(
            d.next_packet(),
            Err(FrameError::TooLarge { len: 256, max: 100 })
        ));
        let mut d = Decoder::new(100);
        d.push(Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]));
        assert!(matches!(d.next_packet(), Err(FrameError::Protobuf(_))));
        let mut d = Decoder::new(100);
        d.push(Bytes::from_static(&[0, 0, 0, 0, 9, 1]));
        assert_eq!(d.next_packet(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(1)));
    }
}
