//! Arbitrary bytes as a gRPC message stream, cut into arbitrary chunks: the decoder
//! never panics, and every packet it returns re-frames to the bytes it came from.
#![no_main]
use bytes::Bytes;
use konnectivity_core::frame::{Decoder, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut d = Decoder::new(1 << 16);
    let mut consumed = 0usize;
    for c in rest.chunks(step) {
        d.push(Bytes::copy_from_slice(c));
        loop {
            match d.next_packet() {
                Ok(Some(p)) => {
                    // A decoded packet frames again (maybe differently: unknown
                    // fields are dropped), and that framing decodes to the same packet.
                    let e = encode(p.clone());
                    let mut again = Decoder::new(usize::MAX);
                    again.push(e.head.clone());
                    if let Some(b) = e.payload.clone() {
                        again.push(b);
                    }
                    assert_eq!(again.next_packet().expect("re-decode"), Some(p));
                    consumed += 1;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = (consumed, d.finish());
});
