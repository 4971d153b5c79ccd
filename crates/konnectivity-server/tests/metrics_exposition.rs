//! The server's `/metrics` page keeps its shape: with every metric and a label set of
//! every family touched, the names, HELP texts, types, label sets and bucket bounds
//! match `golden/server-metrics.txt` (process_* included).
use std::path::Path;
use std::time::Duration;

use konnectivity_core::packet;
use konnectivity_core::select::Strategy;
use konnectivity_k8s::lease::LeaseEvents;
use konnectivity_server::metrics::{DialFailureReason as R, Gauge, Metrics, Segment};
use konnectivity_testkit::exposition::assert_golden;
use konnectivity_tunnel::budget::MemoryBudget;

#[test]
fn every_family_touched_matches_the_golden_shape() {
    let strategies = [
        Strategy::Default,
        Strategy::DestHost,
        Strategy::DefaultRoute,
    ];
    let m = Metrics::new(&strategies, &MemoryBudget::new(100, Duration::ZERO));
    let _held = [
        Gauge::GrpcProxy,
        Gauge::GrpcConnect,
        Gauge::Http,
        Gauge::Established,
    ]
    .map(|g| m.hold(g));
    for r in [
        R::NoAgent,
        R::ErrorResponse,
        R::UnrecognizedResponse,
        R::SendRsp,
        R::BackendClose,
        R::BackendDialTimeout,
        R::FrontendClose,
        R::ProtocolNotAllowed,
    ] {
        m.dial_failure(r);
    }
    m.set_pending(2);
    m.set_ready_backends(Strategy::DestHost, 1);
    m.dial_succeeded(Duration::from_millis(3));
    m.connection_closed(Duration::from_secs(2), "frontend");
    m.frontend_write(Duration::from_micros(5));
    let data = packet::data(1, bytes::Bytes::from_static(b"x"));
    for s in [
        Segment::FromClient,
        Segment::ToClient,
        Segment::FromAgent,
        Segment::ToAgent,
    ] {
        m.packet(s, &data);
        m.stream_error(s, "Unavailable");
    }
    m.packet(Segment::ToAgent, &packet::dial_req("tcp", "a:1", 1));
    m.bytes(true, 10);
    m.bytes(false, 20);
    m.buffer_overflow();
    m.limit_hit("max-connections-per-agent");
    m.socks5_udp_dropped("queue_full");
    m.policy_denied();
    m.foreign_id();
    m.set_oldest_pending(Duration::from_millis(1500));
    m.listed(Some((200, String::new())), Duration::from_millis(4));
    m.listed(None, Duration::from_millis(4));
    m.deleted(
        Some((409, "Conflict \"x\"\\y\nz".into())),
        Duration::from_millis(4),
    );
    m.culled();
    let text = m.render();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/server-metrics.txt");
    assert_golden(&text, &golden);
}
