//! Arbitrary bytes as a wire Packet: decoding never panics, every getter answers, and a
//! decoded packet re-encodes and decodes to the same value.
#![no_main]
use konnectivity_core::Packet;
use konnectivity_core::packet;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::decode(data) else { return };
    let _ = packet::kind(&p);
    let _ = packet::type_name(&p);
    let _ = packet::dial_request(&p);
    let _ = packet::dial_response(&p);
    let _ = packet::close_request(&p);
    let _ = packet::close_response(&p);
    let _ = packet::close_dial(&p);
    let _ = packet::window_update_of(&p);
    let again = Packet::decode(p.encode_to_vec().as_slice()).expect("re-decode");
    assert_eq!(again, p);
    let d = packet::into_data(p);
    let _ = konnectivity_core::address::host_of(&d.error);
});
