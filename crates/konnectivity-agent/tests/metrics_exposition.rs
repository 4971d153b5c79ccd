//! The agent's `/metrics` page keeps its shape: with every metric and a label set of
//! every family touched, the names, HELP texts, types, label sets and bucket bounds
//! match `golden/agent-metrics.txt`.
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use konnectivity_agent::metrics::{Metrics, Segment};
use konnectivity_core::address::DialFailure;
use konnectivity_core::packet;
use konnectivity_testkit::exposition::assert_golden;
use konnectivity_tunnel::budget::MemoryBudget;

#[test]
fn every_family_touched_matches_the_golden_shape() {
    let budget = MemoryBudget::new(100, Duration::ZERO);
    let m = Metrics::new(&budget);
    m.open_server_connections.fetch_add(1, Relaxed);
    m.known_server_count.fetch_add(2, Relaxed);
    m.open_endpoint_connections.fetch_add(3, Relaxed);
    for why in [
        DialFailure::Timeout,
        DialFailure::Unknown,
        DialFailure::ProtocolNotAllowed,
    ] {
        m.dial_failure(why);
    }
    m.dial_done(Duration::from_millis(30));
    let data = packet::data(1, bytes::Bytes::from_static(b"x"));
    for s in [Segment::FromAgent, Segment::ToAgent] {
        m.packet(s, &data);
        m.stream_error(s, "Unavailable", "Unknown");
    }
    m.packet(Segment::ToAgent, &packet::dial_req("tcp", "a:1", 1));
    m.lease_list(Some((200, String::new())), Duration::from_millis(4));
    m.lease_list(
        Some((403, "Forbidden \"x\"\\y\nz".into())),
        Duration::from_millis(4),
    );
    m.lease_list(None, Duration::from_millis(4));
    m.udp.open.fetch_add(1, Relaxed);
    for c in [
        &m.udp.dials,
        &m.udp.refused,
        &m.udp.to_destination,
        &m.udp.from_destination,
        &m.udp.dropped,
    ] {
        c.fetch_add(1, Relaxed);
    }
    m.set_scrape_state(1, 2);
    let text = m.render();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/agent-metrics.txt");
    assert_golden(&text, &golden);
}
