//! The SOCKS5 greeting and request parsers on arbitrary bytes: never panic; a parsed
//! message never claims more bytes than it was given, and every prefix of a complete
//! message asks for more instead of failing; every error has a defined reply.
#![no_main]
use konnectivity_core::socks::{Destination, parse_greeting, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_greeting(data) {
        Ok(Some((g, n))) => {
            assert!(n <= data.len() && n >= 3);
            let _ = g.choose();
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.reply();
        }
    }
    match parse_request(data) {
        Ok(Some((dest, n))) => {
            assert!(n <= data.len());
            for cut in 0..n {
                assert_eq!(parse_request(&data[..cut]), Ok(None));
            }
            let addr = dest.dial_address();
            if let Destination::Domain(name, _) = &dest {
                assert!(!name.is_empty() && !name.contains(':'));
            }
            let _ = konnectivity_core::address::host_of(&addr);
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.reply();
        }
    }
});
