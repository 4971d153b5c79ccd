//! The HTTP-CONNECT request head parser on arbitrary bytes: never panics; a parsed head
//! never claims more bytes than it was given; status mapping is total.
#![no_main]
use konnectivity_core::connect::{Head, parse_head, status_for};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, n))) = parse_head(data) {
        assert!(n <= data.len());
        if let Head::Connect(authority) = head {
            assert!(!authority.is_empty());
            let _ = konnectivity_core::address::host_of(&authority);
        }
    }
    let _ = status_for(&String::from_utf8_lossy(data));
});
