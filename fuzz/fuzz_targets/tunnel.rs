//! The frontend tunnel state machine (`konnectivity_core::tunnel`) on arbitrary event
//! sequences: never panics, and the isolation rule holds whatever the frontend sends —
//! a packet is forwarded to the agent only if it names the connect ID the tunnel's own
//! dial established, and DIAL_CLS abandons only the tunnel's own dial.
#![no_main]
use std::time::{Duration, Instant};

use bytes::Bytes;
use konnectivity_core::dial::DialError;
use konnectivity_core::packet;
use konnectivity_core::tunnel::{DialBounds, Step, Tunnel};
use konnectivity_core::{Packet, PacketType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let mut t: Tunnel<i64, i64> = Tunnel::new(DialBounds {
        backend_dial_timeout: None,
        dial_deadline: Some(Duration::from_secs(2)),
    });
    // What the tunnel's own dial is: its dial ID once started, its connect ID once
    // connected (from the harness's point of view, independent of the machine).
    let mut own_random = None;
    let mut own_id = None;
    for op in data.chunks(2) {
        let (code, arg) = (op[0], i64::from(*op.get(1).unwrap_or(&0)) % 8);
        let step = match code % 10 {
            0 => t.on_frontend(packet::dial_req("tcp", "10.0.0.1:1", arg)),
            1 => t.on_frontend(packet::data(arg, Bytes::from_static(b"x"))),
            2 => t.on_frontend(packet::close_req(arg)),
            3 => t.on_frontend(packet::dial_cls(arg)),
            4 => t.on_frontend(Packet {
                r#type: i32::from(op[0]),
                payload: None,
            }),
            5 => {
                let _ = t.pending_failed(&DialError::Agent("dial tcp: refused".into()));
                Step::Nothing
            }
            6 => {
                if t.dial_connected(arg, arg, |_, c| c).is_ok() {
                    own_id = Some(arg);
                }
                Step::Nothing
            }
            7 => {
                now += Duration::from_millis(u64::from(op[1 % op.len()]) * 20);
                if t.poll_deadline(now).is_some() {
                    let _ = t.pending_failed(&DialError::BackendDialTimeout);
                }
                Step::Nothing
            }
            8 => {
                let _ = t.agent_closed();
                Step::Nothing
            }
            _ => Step::Nothing,
        };
        match step {
            Step::Dial { random, .. } => {
                assert!(own_random.is_none(), "one dial per tunnel");
                own_random = Some(random);
                t.dial_started(random, random, now);
            }
            Step::Forward(p) => {
                let named = match packet::kind(&p) {
                    packet::Kind::Known(PacketType::Data) => packet::into_data(p).connect_id,
                    packet::Kind::Known(PacketType::CloseReq) => {
                        packet::close_request(&p).connect_id
                    }
                    other => panic!("forwarded {other:?}"),
                };
                assert_eq!(Some(named), own_id, "forwarded a foreign connect ID");
            }
            Step::Abandon { random, dial } => {
                assert_eq!(Some(random), own_random);
                assert_eq!(dial, random);
            }
            Step::Nothing | Step::Ignored | Step::Reply(_) | Step::Foreign { .. } => {}
        }
        if let Some(d) = t.deadline() {
            assert!(d <= start + Duration::from_secs(2) + (now - start));
        }
    }
    let _ = t.frontend_gone();
});
