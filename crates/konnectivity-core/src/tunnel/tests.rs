use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

/// The I/O handles are plain markers here: the machine only carries them.
type T = Tunnel<&'static str, &'static str>;

const R: i64 = 42;
const OWN: i64 = 3;

fn bounds(backend: Option<u64>, deadline: Option<u64>) -> DialBounds {
    DialBounds {
        backend_dial_timeout: backend.map(Duration::from_secs),
        dial_deadline: deadline.map(Duration::from_secs),
    }
}

fn dialing(b: DialBounds, now: Instant) -> T {
    let mut t = T::new(b);
    assert_eq!(
        t.on_frontend(packet::dial_req("tcp", "10.0.0.7:10250", R)),
        Step::Dial {
            random: R,
            protocol: "tcp".into(),
            address: "10.0.0.7:10250".into()
        }
    );
    t.dial_started(R, "dial", now);
    t
}

fn established(now: Instant) -> T {
    let mut t = dialing(DialBounds::default(), now);
    let rsp = t.dial_connected(OWN, "conn", |_, c| c).unwrap();
    assert_eq!(packet::dial_response(&rsp).connect_id, OWN);
    assert_eq!(packet::dial_response(&rsp).random, R);
    t
}

fn close_error(step: &Step<&str>) -> (i64, String) {
    match step {
        Step::Reply(p) | Step::Foreign { reply: Some(p), .. } => {
            let c = packet::close_response(p);
            (c.connect_id, c.error.clone())
        }
        other => panic!("expected a CLOSE_RSP, got {other:?}"),
    }
}

/// Asserts that the established tunnel `t` answers `p` as `what` with a CLOSE_RSP of
/// upstream's mismatched-IDs text for the named ID, and stays established.
#[track_caller]
fn assert_refused_as_foreign(t: &mut T, p: Packet, what: Foreign) {
    let step = t.on_frontend(p);
    assert!(
        matches!(step, Step::Foreign { what: w, .. } if w == what),
        "expected {what:?}, got {step:?}"
    );
    let (Foreign::Data { named } | Foreign::CloseReq { named } | Foreign::DialCls { named }) = what;
    assert_eq!(
        close_error(&step),
        (named, wire::MISMATCHED_CONNECTION_IDS.to_owned())
    );
    assert!(t.is_established());
}

#[test]
fn own_data_and_close_are_forwarded_once_established() {
    let mut t = established(Instant::now());
    let step = t.on_frontend(packet::data(OWN, Bytes::from_static(b"hi")));
    let Step::Forward(p) = step else {
        panic!("{step:?}")
    };
    assert_eq!(forwarded_len(&p), 2);
    assert_eq!(
        t.on_frontend(packet::close_req(OWN)),
        Step::Forward(packet::close_req(OWN))
    );
    assert!(matches!(
        t.state(),
        State::Closing {
            connect_id: OWN,
            ..
        }
    ));
    // Closing: the frontend is ignored, the agent's close still finishes the tunnel.
    assert_eq!(
        t.on_frontend(packet::data(OWN, Bytes::from_static(b"late"))),
        Step::Ignored
    );
    assert_eq!(t.agent_closed(), Some((OWN, "conn")));
    assert!(matches!(t.state(), State::Discarding));
}

#[test]
fn data_naming_another_connect_id_is_refused_and_the_tunnel_continues() {
    let mut t = established(Instant::now());
    let p = packet::data(1, Bytes::from_static(b"INJECTED"));
    assert_refused_as_foreign(&mut t, p, Foreign::Data { named: 1 });
    // Nothing was sent about the tunnel's own connection, and it still works.
    assert!(matches!(
        t.on_frontend(packet::data(OWN, Bytes::from_static(b"x"))),
        Step::Forward(_)
    ));
}

#[test]
fn close_req_naming_another_connect_id_is_refused_and_never_forwarded() {
    let mut t = established(Instant::now());
    assert_refused_as_foreign(&mut t, packet::close_req(1), Foreign::CloseReq { named: 1 });
}

#[test]
fn data_and_close_before_the_dial_is_answered_are_never_forwarded() {
    let mut t = dialing(DialBounds::default(), Instant::now());
    for p in [
        packet::data(1, Bytes::from_static(b"INJECTED")),
        packet::close_req(1),
    ] {
        let step = t.on_frontend(p);
        assert!(matches!(step, Step::Foreign { .. }), "{step:?}");
        assert_eq!(close_error(&step).0, 1);
    }
    // The dial is still pending and completes normally.
    assert!(t.dial_mut().is_some());
    assert!(t.dial_connected(OWN, "conn", |_, c| c).is_ok());
}

#[test]
fn dial_cls_abandons_only_the_tunnels_own_dial() {
    let mut t = dialing(DialBounds::default(), Instant::now());
    assert_eq!(
        t.on_frontend(packet::dial_cls(R + 1)),
        Step::Foreign {
            what: Foreign::DialCls { named: R + 1 },
            reply: None
        }
    );
    assert!(t.dial_mut().is_some());
    assert_eq!(
        t.on_frontend(packet::dial_cls(R)),
        Step::Abandon {
            random: R,
            dial: "dial"
        }
    );
    assert!(matches!(t.state(), State::Discarding));
}

#[test]
fn packets_before_any_dial_get_upstreams_answers() {
    let mut t = T::new(DialBounds::default());
    assert_eq!(
        close_error(&t.on_frontend(packet::close_req(5))),
        (5, wire::BACKEND_UNINITIALIZED.to_owned())
    );
    // CLOSE_REQ leaves the stream usable; DATA ends it.
    assert!(matches!(t.state(), State::Idle));
    assert_eq!(
        close_error(&t.on_frontend(packet::data(5, Bytes::from_static(b"early")))),
        (5, wire::BACKEND_NOT_INITIALIZED.to_owned())
    );
    assert!(matches!(t.state(), State::Discarding));
    assert_eq!(
        t.on_frontend(packet::dial_req("tcp", "a:1", 1)),
        Step::Ignored
    );
}

#[test]
fn a_second_dial_req_is_ignored() {
    let mut t = dialing(DialBounds::default(), Instant::now());
    assert_eq!(
        t.on_frontend(packet::dial_req("tcp", "b:2", R + 1)),
        Step::Ignored
    );
    let mut t = established(Instant::now());
    assert_eq!(
        t.on_frontend(packet::dial_req("tcp", "b:2", R + 1)),
        Step::Ignored
    );
}

#[test]
fn backend_dial_timeout_sets_the_deadline_and_wins_over_dial_deadline() {
    let now = Instant::now();
    let t = dialing(bounds(Some(1), Some(60)), now);
    assert_eq!(t.deadline(), Some(now + Duration::from_secs(1)));
}

#[test]
fn dial_deadline_bounds_the_dial_when_backend_dial_timeout_is_off() {
    let now = Instant::now();
    let mut t = dialing(bounds(None, Some(2)), now);
    assert_eq!(t.poll_deadline(now + Duration::from_millis(1999)), None);
    assert_eq!(t.poll_deadline(now + Duration::from_secs(2)), Some(R));
    // Fires once; the I/O then reports the timeout.
    assert_eq!(t.poll_deadline(now + Duration::from_secs(3)), None);
    assert_eq!(t.deadline(), None);
    let rsp = t.pending_failed(&DialError::BackendDialTimeout).unwrap();
    assert_eq!(
        packet::dial_response(&rsp).error,
        wire::BACKEND_DIAL_TIMEOUT
    );
    assert_eq!(packet::dial_response(&rsp).random, R);
    assert!(matches!(t.state(), State::Discarding));
}

#[test]
fn no_bounds_means_no_deadline() {
    let t = dialing(bounds(None, None), Instant::now());
    assert_eq!(t.deadline(), None);
}

#[test]
fn an_agent_answer_that_wins_the_race_with_the_deadline_still_connects() {
    let now = Instant::now();
    let mut t = dialing(bounds(Some(1), None), now);
    assert_eq!(t.poll_deadline(now + Duration::from_secs(1)), Some(R));
    // The I/O found the pending dial already answered: the answer arrives.
    assert!(t.dial_connected(OWN, "conn", |_, c| c).is_ok());
    assert!(t.is_established());
}

#[test]
fn a_connection_after_the_dial_ended_is_handed_back_to_be_closed() {
    let mut t = dialing(DialBounds::default(), Instant::now());
    assert!(matches!(
        t.on_frontend(packet::dial_cls(R)),
        Step::Abandon { random: R, .. }
    ));
    assert_eq!(t.dial_connected(OWN, "conn", |_, c| c), Err("conn"));
}

#[test]
fn an_agents_dial_cls_is_passed_on_as_dial_cls() {
    let mut t = dialing(DialBounds::default(), Instant::now());
    let p = t.pending_failed(&DialError::AgentClosed).unwrap();
    assert_eq!(packet::kind(&p), Kind::Known(PacketType::DialCls));
    assert_eq!(packet::close_dial(&p).random, R);
}

#[test]
fn what_the_frontend_leaves_behind_is_released() {
    let t = dialing(DialBounds::default(), Instant::now());
    assert!(matches!(
        t.frontend_gone(),
        Leftover::Dial {
            random: R,
            dial: "dial"
        }
    ));
    let t = established(Instant::now());
    assert!(matches!(
        t.frontend_gone(),
        Leftover::Conn {
            connect_id: OWN,
            conn: "conn"
        }
    ));
    assert!(matches!(
        T::new(DialBounds::default()).frontend_gone(),
        Leftover::Nothing
    ));
}

#[test]
fn data_with_connect_id_zero_is_ignored() {
    let mut t = established(Instant::now());
    assert_eq!(
        t.on_frontend(packet::data(0, Bytes::from_static(b"x"))),
        Step::Nothing
    );
}
