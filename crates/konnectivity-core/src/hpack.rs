//! HPACK header-block decoding (RFC 7541) for the server's `:authority` rewrite
//! (`konnectivity_server::authority::AuthorityFix`).
//!
//! Owns the decoder side of one connection's header compression: the dynamic table
//! the client builds, and the Huffman decoding of string literals. It only decodes;
//! header names and values are not validated here (the HTTP/2 server does that on the
//! re-encoded block).
//!
//! Two bounds keep a hostile client from using it to exhaust memory: the dynamic
//! table never exceeds the size the server allows (`SETTINGS_HEADER_TABLE_SIZE`,
//! 4,096 bytes by default), and a block whose decoded header list exceeds a limit is
//! rejected (one byte can reference a 4 KiB table entry, so without that limit a 1 MiB
//! block could expand to 4 GiB).
//!
//! The Huffman decoder walks a binary tree built once from the code table: a few
//! hundred steps per header block, with no allocation beyond the decoded string.
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::OnceLock;

/// Why a header block could not be decoded. Every variant is a connection error
/// (`COMPRESSION_ERROR`): the decoder's state is not usable afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The decoded header list exceeds the caller's limit.
    #[error("HPACK: header list too large")]
    ListTooLarge,
    /// A dynamic table size update after a header field (§4.2 allows them only at
    /// the start of a block).
    #[error("HPACK: table size update after a header field")]
    SizeUpdateAfterField,
    /// A dynamic table size update above the size the server allows.
    #[error("HPACK: table size update above the allowed size")]
    SizeUpdateAboveLimit,
    /// Index 0, which names no entry.
    #[error("HPACK: index 0")]
    IndexZero,
    /// An index past the end of the dynamic table.
    #[error("HPACK: index beyond the dynamic table")]
    IndexBeyondTable,
    /// The block ends inside an integer.
    #[error("HPACK: truncated integer")]
    TruncatedInteger,
    /// An integer longer than four continuation bytes.
    #[error("HPACK: integer too large")]
    IntegerTooLarge,
    /// The block ends inside a string literal.
    #[error("HPACK: truncated string")]
    TruncatedString,
    /// The EOS symbol inside a Huffman-coded string.
    #[error("HPACK: EOS in a Huffman string")]
    HuffmanEos,
    /// A bit sequence that is no Huffman code.
    #[error("HPACK: invalid Huffman code")]
    HuffmanCode,
    /// Huffman padding longer than 7 bits or not all ones.
    #[error("HPACK: invalid Huffman padding")]
    HuffmanPadding,
}

/// Per-entry overhead counted in table and header-list sizes (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);
/// A literal's name and value, borrowed from the block unless Huffman-coded.
type Literal<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// One connection's HPACK decoding state.
#[derive(Debug)]
pub struct Decoder {
    /// Dynamic table, newest entry first.
    table: VecDeque<Entry>,
    /// Sum of the entries' sizes (name + value + 32).
    size: usize,
    /// The table's current maximum size, as last set by the client.
    max: usize,
    /// The largest maximum the client may set.
    limit: usize,
}

impl Decoder {
    /// A decoder whose dynamic table may grow to `limit` bytes (the server's
    /// `SETTINGS_HEADER_TABLE_SIZE`).
    pub fn new(limit: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
        }
    }

    /// Decodes one complete header block, calling `field(name, value)` for each header
    /// field in order. Fails if the block is malformed or its decoded header list
    /// (names, values and 32 bytes per field) exceeds `max_list` bytes.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        max_list: usize,
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), DecodeError> {
        let mut list = 0usize;
        let mut after_field = false;
        let mut emit = |n: &[u8], v: &[u8]| -> Result<(), DecodeError> {
            list = list.saturating_add(n.len() + v.len() + ENTRY_OVERHEAD);
            if list > max_list {
                return Err(DecodeError::ListTooLarge);
            }
            field(n, v);
            Ok(())
        };
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let i = integer(&mut block, 7)?;
                let (n, v) = self.entry(i)?;
                emit(n, v)?;
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing (§6.2.1): added to the table.
                let (n, v) = self.literal(&mut block, 6)?;
                emit(&n, &v)?;
                self.insert(n.into_owned().into(), v.into_owned().into());
            } else if first & 0x20 != 0 {
                // Dynamic table size update (§6.3): only before the block's fields.
                if after_field {
                    return Err(DecodeError::SizeUpdateAfterField);
                }
                let max = integer(&mut block, 5)?;
                if max > self.limit {
                    return Err(DecodeError::SizeUpdateAboveLimit);
                }
                self.max = max;
                self.evict(0);
                continue;
            } else {
                // Literal without indexing or never indexed (§6.2.2, §6.2.3).
                let (n, v) = self.literal(&mut block, 4)?;
                emit(&n, &v)?;
            }
            after_field = true;
        }
        Ok(())
    }

    /// The entry at HPACK index `i` (static table first, then dynamic).
    fn entry(&self, i: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        match i {
            0 => Err(DecodeError::IndexZero),
            1..=STATIC_LEN => {
                let (n, v) = STATIC[i - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .table
                .get(i - STATIC_LEN - 1)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(DecodeError::IndexBeyondTable),
        }
    }

    /// A literal field whose name index has an `n`-bit prefix.
    fn literal<'a>(&self, block: &mut &'a [u8], n: u8) -> Result<Literal<'a>, DecodeError> {
        let i = integer(block, n)?;
        let name = if i == 0 {
            string(block)?
        } else {
            Cow::Owned(self.entry(i)?.0.to_vec())
        };
        let value = string(block)?;
        Ok((name, value))
    }

    fn insert(&mut self, name: Box<[u8]>, value: Box<[u8]>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max {
            // Not an error: the table is emptied (§4.4).
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((n, v)) = self.table.pop_back() else {
                self.size = 0;
                return;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}

/// An integer with an `n`-bit prefix (§5.1); consumes it from `block`.
fn integer(block: &mut &[u8], n: u8) -> Result<usize, DecodeError> {
    let (&first, rest) = block.split_first().ok_or(DecodeError::TruncatedInteger)?;
    *block = rest;
    let max = (1usize << n) - 1;
    let mut v = usize::from(first) & max;
    if v < max {
        return Ok(v);
    }
    let mut shift = 0u32;
    loop {
        let (&b, rest) = block.split_first().ok_or(DecodeError::TruncatedInteger)?;
        *block = rest;
        // Four continuation bytes carry 28 bits: more than any size or index here.
        if shift > 21 {
            return Err(DecodeError::IntegerTooLarge);
        }
        v += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// A string literal (§5.2), Huffman-decoded if flagged; consumes it from `block`.
fn string<'a>(block: &mut &'a [u8]) -> Result<Cow<'a, [u8]>, DecodeError> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(DecodeError::TruncatedString);
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    if huffman {
        huffman_decode(raw).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// Marks a tree child as a symbol rather than a node index.
const LEAF: u16 = 0x8000;
const EOS: u16 = 256;

/// The Huffman code as a binary tree: node `i` has children `[bit 0, bit 1]`; a child
/// is the index of another node, `LEAF | symbol`, or 0 for none (the root, node 0, is
/// nobody's child).
fn tree() -> &'static [[u16; 2]] {
    static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut t = vec![[0u16; 2]];
        for (sym, &(code, len)) in (0u16..).zip(HUFFMAN.iter()) {
            let mut node = 0usize;
            for k in (0..len).rev() {
                let bit = ((code >> k) & 1) as usize;
                if k == 0 {
                    t[node][bit] = LEAF | sym;
                } else {
                    if t[node][bit] == 0 {
                        t.push([0, 0]);
                        t[node][bit] = (t.len() - 1) as u16;
                    }
                    node = usize::from(t[node][bit]);
                }
            }
        }
        t
    })
}

/// Decodes a Huffman-coded string (§5.2): the padding must be shorter than a byte and
/// all ones, and the EOS symbol must not appear.
fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let t = tree();
    // Codes are at least 5 bits long.
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let mut node = 0usize;
    let mut depth = 0u8;
    let mut ones = true;
    for &byte in src {
        for k in (0..8).rev() {
            let bit = (byte >> k) & 1;
            let next = t[node][usize::from(bit)];
            if next & LEAF != 0 {
                let sym = next & !LEAF;
                if sym == EOS {
                    return Err(DecodeError::HuffmanEos);
                }
                out.push(sym as u8);
                node = 0;
                depth = 0;
                ones = true;
            } else if next == 0 {
                return Err(DecodeError::HuffmanCode);
            } else {
                node = usize::from(next);
                depth += 1;
                ones &= bit == 1;
            }
        }
    }
    if depth > 7 || !ones {
        return Err(DecodeError::HuffmanPadding);
    }
    Ok(out)
}

const STATIC_LEN: usize = 61;

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
const STATIC: [(&str, &str); STATIC_LEN] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The Huffman code (RFC 7541 Appendix B): `(code, length in bits)` for symbols 0 to
/// 255, then EOS (256).
#[rustfmt::skip]
const HUFFMAN: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6),
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7),
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7),
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13),
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5),
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15),
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    (0x3fffffff, 30),
];

/// Huffman-encodes `s` (RFC 7541 §5.2): the decoder's counterpart, for tests that
/// build header blocks.
pub fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for &b in s {
        let (code, len) = HUFFMAN[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
        let mut out = Vec::new();
        d.decode(block, 1 << 20, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ));
        })?;
        Ok(out)
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn decodes_the_rfc_requests_with_huffman_and_a_shared_dynamic_table() {
        // RFC 7541 C.4.1 to C.4.3: three requests on one connection.
        let mut d = Decoder::new(4096);
        let first = decode_all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
        assert_eq!(
            first.expect("C.4.1"),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
        assert_eq!(d.size, 57);
        let second = decode_all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf"));
        assert_eq!(
            second.expect("C.4.2"),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        assert_eq!(d.size, 110);
        let third = decode_all(
            &mut d,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        );
        assert_eq!(
            third.expect("C.4.3"),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.size, 164);
        assert_eq!(d.table.len(), 3);
    }

    #[test]
    fn huffman_round_trips_every_byte_value() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)).expect("decode"), all);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert_eq!(huffman_decode(&huffman_encode(&s)).expect("decode"), s);
        }
    }

    #[test]
    fn rejects_bad_huffman_padding_and_eos() {
        // "a" is 00011 (5 bits): padded with ones it is 0x1f.
        assert_eq!(huffman_decode(&[0x1f]).expect("a"), b"a");
        // Padded with zeros instead.
        assert!(huffman_decode(&[0x18]).is_err());
        // A whole byte of padding (8 ones) after "a".
        assert!(huffman_decode(&[0x1f, 0xff]).is_err());
        // EOS (30 ones) spelled out.
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xfc]).is_err());
    }

    #[test]
    fn agrees_with_another_decoder_on_encoded_header_lists() {
        // Blocks from an independent encoder (loona-hpack's: static and dynamic
        // indexing, literals), decoded by both across a connection's blocks.
        let mut enc = loona_hpack::Encoder::new();
        let mut theirs = loona_hpack::Decoder::new();
        let mut ours = Decoder::new(4096);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let names = [
            ":authority",
            ":path",
            "content-type",
            "te",
            "x-custom",
            "user-agent",
        ];
        for _ in 0..200 {
            let fields: Vec<(Vec<u8>, Vec<u8>)> = (0..1 + next() % 8)
                .map(|_| {
                    let n = names[(next() % names.len() as u64) as usize];
                    let v = format!("v{}", next() % 40).repeat(1 + (next() % 30) as usize);
                    (n.as_bytes().to_vec(), v.into_bytes())
                })
                .collect();
            let block = enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
            let expected = theirs.decode(&block).expect("their decode");
            let mut got = Vec::new();
            ours.decode(&block, 1 << 20, |n, v| got.push((n.to_vec(), v.to_vec())))
                .expect("our decode");
            assert_eq!(got, expected);
            assert_eq!(got, fields);
        }
        assert!(!ours.table.is_empty());
    }

    #[test]
    fn evicts_the_oldest_entries_and_honours_size_updates() {
        let mut d = Decoder::new(100);
        // Literal with incremental indexing, new name: "aaaa"="bbbb" (40 bytes).
        let lit = |n: &str, v: &str| {
            let mut b = vec![0x40, n.len() as u8];
            b.extend_from_slice(n.as_bytes());
            b.push(v.len() as u8);
            b.extend_from_slice(v.as_bytes());
            b
        };
        decode_all(&mut d, &lit("aaaa", "bbbb")).expect("first");
        decode_all(&mut d, &lit("cccc", "dddd")).expect("second");
        assert_eq!((d.table.len(), d.size), (2, 80));
        // A third evicts the first: index 62 is now "eeee", 63 "cccc", 64 is gone.
        decode_all(&mut d, &lit("eeee", "ffff")).expect("third");
        assert_eq!((d.table.len(), d.size), (2, 80));
        assert_eq!(
            decode_all(&mut d, &[0x80 | 63]).expect("63"),
            pairs(&[("cccc", "dddd")])
        );
        assert!(decode_all(&mut d, &[0x80 | 64]).is_err());
        // Size update to 40 keeps one entry; above the limit is refused.
        decode_all(&mut d, &[0x20 | 31, 9]).expect("update to 40");
        assert_eq!((d.table.len(), d.size), (1, 40));
        assert!(decode_all(&mut d, &[0x3f, 0x46]).is_err(), "update to 101");
        // A size update after a field is refused.
        assert!(decode_all(&mut d, &[0x82, 0x20]).is_err());
        // An entry larger than the table empties it.
        decode_all(&mut d, &[0x20]).expect("update to 0");
        decode_all(&mut d, &lit("gggg", "hhhh")).expect("too large to keep");
        assert_eq!((d.table.len(), d.size), (0, 0));
    }

    #[test]
    fn rejects_malformed_blocks() {
        let mut d = Decoder::new(4096);
        for (block, want) in [
            (vec![0x80], DecodeError::IndexZero),
            (vec![0x80 | 62], DecodeError::IndexBeyondTable),
            (vec![0xff], DecodeError::TruncatedInteger),
            (
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x0f],
                DecodeError::IntegerTooLarge,
            ),
            (vec![0x40, 0x05, b'a'], DecodeError::TruncatedString),
            (vec![0x00], DecodeError::TruncatedInteger),
            (vec![0x00, 0x81, 0xff, 0x00], DecodeError::HuffmanPadding),
        ] {
            assert_eq!(decode_all(&mut d, &block), Err(want), "{block:02x?}");
        }
    }

    #[test]
    fn arbitrary_and_mutated_blocks_never_panic() {
        let valid = hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        let mut x = 0x0123_4567_89ab_cdefu64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut d = Decoder::new(4096);
        for i in 0..20_000 {
            let block: Vec<u8> = if i % 2 == 0 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                let mut b = valid.clone();
                let at = (next() % b.len() as u64) as usize;
                b[at] = next() as u8;
                b.truncate(b.len() - (next() % 4) as usize);
                b
            };
            let mut list = 0;
            let _ = d.decode(&block, 8192, |n, v| list += n.len() + v.len() + 32);
            assert!(list <= 8192);
            assert!(d.size <= d.max && d.max <= 4096);
        }
    }

    #[test]
    fn bounds_the_decoded_header_list_against_amplification() {
        // One 4,000-byte entry, then 1,000 one-byte references to it: 4 MB decoded
        // from a 1 KB block unless the list limit stops it.
        let mut d = Decoder::new(4096);
        let mut b = vec![0x40, 0x01, b'x', 0x7f];
        let mut rest = 4000 - 127;
        while rest >= 128 {
            b.push((rest % 128 + 128) as u8);
            rest /= 128;
        }
        b.push(rest as u8);
        b.extend(std::iter::repeat_n(b'y', 4000));
        b.extend(std::iter::repeat_n(0x80 | 62, 1000));
        let mut seen = 0usize;
        let r = d.decode(&b, 64 * 1024, |n, v| seen += n.len() + v.len());
        assert_eq!(r, Err(DecodeError::ListTooLarge));
        assert!(
            seen < 64 * 1024,
            "stopped at the limit, not after {seen} bytes"
        );
    }
}
