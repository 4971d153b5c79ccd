//! The SOCKS5 greeting, request, RFC 1929 username/password and UDP-header parsers on arbitrary bytes: never panic;
//! a parsed message never claims more bytes than it was given, and every prefix of a
//! complete request asks for more instead of failing; every error has a defined reply;
//! a parsed UDP header re-encodes to the bytes it was parsed from.
#![no_main]
use konnectivity_core::socks::{
    Destination, parse_greeting, parse_request, parse_udp_header, parse_user_pass, udp_header,
};
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
        Ok(Some((req, n))) => {
            let dest = req.destination;
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
    match parse_user_pass(data) {
        Ok(Some((c, n))) => {
            assert!(n <= data.len() && !c.user.is_empty());
            for cut in 0..n {
                assert_eq!(parse_user_pass(&data[..cut]), Ok(None));
            }
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.reply();
        }
    }
    match parse_udp_header(data) {
        Ok((dest, n)) => {
            assert!(n <= data.len());
            assert_eq!(udp_header(&dest), &data[..n]);
        }
        Err(e) => {
            let _ = e.reply();
        }
    }
});
