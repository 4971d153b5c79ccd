//! Arbitrary header blocks on one connection, decoded by our HPACK decoder and by
//! loona-hpack side by side: where both accept a block they produce the same header
//! list and are left with the same dynamic table; where only one accepts, the
//! difference is one of the few known ones.
//!
//! Input: the first byte sets the table size (× 16 bytes: small tables make eviction
//! reachable), then blocks, each a 2-byte big-endian length and that many bytes (the
//! last one takes whatever is left). Decoding stops at the first block either side
//! refuses: an HPACK error ends the connection, and the tables may differ after it.
#![no_main]
use konnectivity_core::hpack::{DecodeError, Decoder};
use libfuzzer_sys::fuzz_target;
use loona_hpack::decoder::DecoderError;

/// Small enough that index amplification reaches it within a fuzz input.
const MAX_LIST: usize = 64 * 1024;
/// HPACK's static table size: dynamic indices start after it.
const STATIC_LEN: usize = 61;

fuzz_target!(|data: &[u8]| {
    let Some((&size, mut rest)) = data.split_first() else {
        return;
    };
    let table_size = usize::from(size) * 16;
    let mut ours = Decoder::new(table_size);
    let mut theirs = loona_hpack::Decoder::new();
    theirs.set_max_allowed_table_size(table_size);
    theirs.set_max_table_size(table_size);
    while !rest.is_empty() {
        let block = match rest {
            [hi, lo, tail @ ..] => {
                let n = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
                let (block, tail) = tail.split_at(n);
                rest = tail;
                block
            }
            _ => std::mem::take(&mut rest),
        };
        let mut got = Vec::new();
        let r = ours.decode(block, MAX_LIST, |n, v| got.push((n.to_vec(), v.to_vec())));
        match (r, theirs.decode(block)) {
            (Ok(()), Ok(want)) => {
                assert_eq!(got, want, "block {block:02x?}");
                same_tables(&mut ours, &mut theirs, table_size, block);
            }
            // Both refuse: nothing to compare, and the connection would end here.
            (Err(_), Err(_)) => return,
            // loona-hpack refuses a block that ends with a size update; RFC 7541 does
            // not (a block may consist of nothing but one).
            (Ok(()), Err(DecoderError::SizeUpdateAtEnd)) => return,
            // We refuse size updates after a field (RFC 7541 §4.2); loona-hpack
            // accepts them anywhere.
            (Err(DecodeError::SizeUpdateAfterField), Ok(_)) => return,
            // Our bound on the decoded list: only where the list really exceeds it.
            (Err(DecodeError::ListTooLarge), Ok(want)) => {
                let size: usize = want.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
                assert!(size > MAX_LIST, "list of {size} bytes refused");
                return;
            }
            (ours, theirs) => {
                panic!("ours {ours:?}, loona-hpack {theirs:?}, block {block:02x?}")
            }
        }
    }
});

/// Reads every dynamic table entry from both decoders, one indexed field per probe
/// (which changes neither table), until both find the end of the table at the same
/// index.
fn same_tables(
    ours: &mut Decoder,
    theirs: &mut loona_hpack::Decoder,
    table_size: usize,
    after: &[u8],
) {
    // Every entry takes at least 32 bytes, so this index is past any table's end.
    for i in STATIC_LEN + 1..=STATIC_LEN + 1 + table_size / 32 {
        // An indexed field (§6.1): the index with a 7-bit prefix.
        let probe = match u8::try_from(i) {
            Ok(i) if i < 0x7f => vec![0x80 | i],
            _ => vec![0xff, u8::try_from(i - 0x7f).expect("index below 255")],
        };
        let mut got = Vec::new();
        let r = ours.decode(&probe, MAX_LIST, |n, v| got.push((n.to_vec(), v.to_vec())));
        match (r, theirs.decode(&probe)) {
            (Ok(()), Ok(want)) => assert_eq!(got, want, "entry {i} after {after:02x?}"),
            (Err(_), Err(_)) => return,
            (ours, theirs) => {
                panic!("entry {i}: ours {ours:?}, loona-hpack {theirs:?}, after {after:02x?}")
            }
        }
    }
    panic!("no table end within {table_size} bytes");
}
