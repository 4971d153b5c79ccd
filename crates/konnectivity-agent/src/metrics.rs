//! The agent's Prometheus metrics: upstream's catalogue for the agent (same names,
//! labels and HELP texts), konnectivity-rs additions prefixed `konnectivity_rs_agent_`,
//! and the `process_*` metrics, on [`konnectivity_runtime::metrics`]. Label sets that
//! were never touched are not rendered (no zero series), as with upstream's vectors; the
//! label-less histogram is always rendered.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use konnectivity_core::address::DialFailure;
use konnectivity_core::packet::{TYPE_NAMES as TYPES, type_index};
use konnectivity_proto::Packet;
use konnectivity_runtime::metrics::{Binary, Counter, Family, Gauge, Histogram, Registry};
use konnectivity_tunnel::budget::MemoryBudget;

const NS: &str = "konnectivity_network_proxy_agent";
const RS: &str = "konnectivity_rs_agent";

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// `open_server_connections`.
    pub open_server_connections: Arc<Gauge>,
    /// `known_server_count`.
    pub known_server_count: Arc<Gauge>,
    /// `open_endpoint_connections`.
    pub open_endpoint_connections: Arc<Gauge>,
    dial_failures: Arc<Family<Counter>>,
    dial_duration: Arc<Histogram>,
    /// `stream_packets_total{packet_type, segment}`.
    packets: Arc<Family<Counter>>,
    /// Resolved `packets` children, by [`Segment`] and packet type index ([`TYPES`]),
    /// created on first use.
    packet_handles: [[OnceLock<Arc<Counter>>; TYPES.len()]; 2],
    stream_errors: Arc<Family<Counter>>,
    /// `server_connection_failure_count{direction}`.
    failures: Arc<Family<Counter>>,
    lease_lists: Arc<Family<Counter>>,
    lease_list_latency: Arc<Family<Histogram>>,
    /// UDP connections (an extension, `konnectivity_rs_agent_udp_*`).
    pub udp: UdpCounters,
    /// Set when scraped ([`Metrics::set_scrape_state`]).
    degraded: Arc<Gauge>,
    udp_open: Arc<Gauge>,
    registry: Registry,
}

/// The agent's UDP counters (`konnectivity_rs_agent_udp_*`).
#[derive(Debug)]
pub struct UdpCounters {
    /// UDP sockets open now; `--max-udp-sockets` bounds it.
    pub open: AtomicUsize,
    /// UDP dials that opened a socket.
    pub dials: Arc<Counter>,
    /// UDP dials refused at `--max-udp-sockets`.
    pub refused: Arc<Counter>,
    /// Datagrams written to destinations.
    pub to_destination: Arc<Counter>,
    /// Datagrams read from destinations and sent to the server.
    pub from_destination: Arc<Counter>,
    /// Datagrams from destinations dropped because the server's window was spent.
    pub dropped: Arc<Counter>,
}

/// Upstream's agent latency buckets (dials and lease lists), in seconds.
const DIAL_BUCKETS: &[f64] = &[0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 30.0];

/// Which way a packet went on an agent stream (`stream_packets_total{segment}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Sent by the agent.
    FromAgent = 0,
    /// Received by the agent.
    ToAgent = 1,
}

impl Segment {
    fn name(self) -> &'static str {
        match self {
            Segment::FromAgent => "from_agent",
            Segment::ToAgent => "to_agent",
        }
    }
}

impl Metrics {
    /// The agent's metrics; the buffer metrics read `budget` when rendered.
    pub fn new(budget: &Arc<MemoryBudget>) -> Self {
        let mut r = Registry::default();
        let up = |name: &str| format!("{NS}_{name}");
        let rs = |name: &str| format!("{RS}_{name}");
        // Declared as upstream does; the agent lists leases and never watches them.
        r.counters(up("lease_watches_total"), "Count of server lease watch calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason", &["http_response_code", "reason"]);
        r.shared(&format!("{RS}_"), Binary::Agent, budget);
        Self {
            open_server_connections: r.gauge(up("open_server_connections"), "Current number of open server connections."),
            known_server_count: r.gauge(up("known_server_count"), "Current number of servers agent is trying to connect to."),
            open_endpoint_connections: r.gauge(up("open_endpoint_connections"), "Current number of open endpoint connections."),
            dial_failures: r.counters(up("endpoint_dial_failure_total"), "Number of failures dialing the remote endpoint, by reason (example: timeout).", &["reason"]),
            dial_duration: r.metric(up("dial_duration_seconds"), "Latency of dial to the remote endpoint in seconds", DIAL_BUCKETS),
            packets: r.counters(up("stream_packets_total"), "Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ)", &["segment", "packet_type"]),
            packet_handles: Default::default(),
            stream_errors: r.counters(up("stream_errors_total"), "Count of gRPC stream errors, by segment, grpc Code, packet type. (example: from_agent, Code.Unavailable, DIAL_RSP)", &["segment", "code", "packet_type"]),
            failures: r.counters(up("server_connection_failure_count"), "Count of failures to send to or receive from the proxy server, labeled by the direction (from_server or to_server). DEPRECATED, please use stream_events_error_total", &["direction"]),
            lease_lists: r.counters(up("lease_lists_total"), "Count of server lease list calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason", &["http_response_code", "reason"]),
            lease_list_latency: r.family(up("lease_list_latency_seconds"), "Latency of server lease listing in seconds", &["http_response_code"], DIAL_BUCKETS),
            udp: UdpCounters {
                open: AtomicUsize::new(0),
                dials: r.counter(rs("udp_dials_total"), "UDP dials that opened a socket."),
                refused: r.counter(rs("udp_dials_refused_total"), "UDP dials refused because --max-udp-sockets sockets were open."),
                to_destination: r.counter(rs("udp_datagrams_to_destination_total"), "Datagrams written to destinations, one per DATA packet."),
                from_destination: r.counter(rs("udp_datagrams_from_destination_total"), "Datagrams read from destinations and sent to the server, one per DATA packet."),
                dropped: r.counter(rs("udp_datagrams_dropped_total"), "Datagrams from destinations dropped (not queued) because the server's flow-control window was spent."),
            },
            degraded: r.gauge(rs("degraded"), "1 while the agent is connected to fewer servers than it should be."),
            udp_open: r.gauge(rs("udp_open_sockets"), "UDP sockets open for tunneled connections (--max-udp-sockets bounds them)."),
            registry: r,
        }
    }

    /// Counts a failed destination dial.
    pub fn dial_failure(&self, why: DialFailure) {
        let label = match why {
            DialFailure::Timeout => "timeout",
            DialFailure::Unknown => "unknown",
            DialFailure::ProtocolNotAllowed => "protocol_not_allowed",
        };
        self.dial_failures.with(&[label]).inc();
    }

    /// Records a successful destination dial and how long it took.
    pub fn dial_done(&self, took: Duration) {
        self.dial_duration.observe(took.as_secs_f64());
    }

    /// Counts a packet sent or received on a server stream.
    pub fn packet(&self, segment: Segment, p: &Packet) {
        let t = type_index(p);
        self.packet_handles[segment as usize][t]
            .get_or_init(|| self.packets.with(&[segment.name(), TYPES[t]]))
            .inc();
    }

    /// Counts a failed server stream: `stream_errors_total{segment, code, packet_type}`
    /// and the deprecated `server_connection_failure_count{direction}`. Receive errors
    /// carry `packet_type="Unknown"`, as upstream.
    pub fn stream_error(&self, segment: Segment, code: &'static str, packet_type: &'static str) {
        self.stream_errors
            .with(&[segment.name(), code, packet_type])
            .inc();
        if segment == Segment::ToAgent {
            self.failures.with(&["from_server"]).inc();
        }
    }

    /// Records one server-lease list call: its HTTP status and reason when the API
    /// server answered (`lease_lists_total`, `lease_list_latency_seconds`). A call that
    /// failed before an answer is not counted (upstream counts only API statuses, and
    /// we do not label its latency with a status it never received).
    pub fn lease_list(&self, status: Option<(u16, String)>, took: Duration) {
        let Some((code, reason)) = status else {
            return;
        };
        let code = code.to_string();
        self.lease_lists.with(&[&code, &reason]).inc();
        self.lease_list_latency
            .with(&[&code])
            .observe(took.as_secs_f64());
    }

    /// Sets the values read when scraped: whether the agent is `connected` to fewer
    /// servers than it `want`s, and the open UDP sockets.
    pub fn set_scrape_state(&self, connected: usize, want: usize) {
        self.degraded.set(i64::from(connected < want));
        self.udp_open
            .set(self.udp.open.load(Ordering::Relaxed) as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts each series' value in the exposition `text`.
    #[track_caller]
    fn assert_series(text: &str, want: &[(&str, f64)]) {
        for (series, v) in want {
            assert_eq!(value(text, series), Some(*v), "{series}");
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_histogram_is_cumulative_and_untouched_series_are_absent() {
        let m = Metrics::new(&MemoryBudget::default_budget());
        let text = m.render();
        assert_eq!(
            value(
                &text,
                "konnectivity_network_proxy_agent_dial_duration_seconds_count"
            ),
            Some(0.0)
        );
        assert!(!text.contains("stream_packets_total{"));
        assert!(!text.contains("stream_errors_total{"));
        assert!(!text.contains("server_connection_failure_count{"));

        m.dial_done(Duration::from_millis(1));
        m.dial_done(Duration::from_millis(50));
        m.dial_done(Duration::from_secs(60));
        let dial_rsp = konnectivity_core::packet::dial_rsp(7, 1, "");
        m.packet(
            Segment::ToAgent,
            &konnectivity_core::packet::dial_req("tcp", "a:1", 7),
        );
        m.packet(Segment::FromAgent, &dial_rsp);
        m.packet(Segment::FromAgent, &dial_rsp);
        m.stream_error(
            Segment::ToAgent,
            konnectivity_tunnel::grpc::grpc_code_name(14),
            "Unknown",
        );
        let text = m.render();
        let h = "konnectivity_network_proxy_agent_dial_duration_seconds";
        assert_series(
            &text,
            &[
                (&format!("{h}_bucket{{le=\"0.005\"}}"), 1.0),
                (&format!("{h}_bucket{{le=\"0.025\"}}"), 1.0),
                (&format!("{h}_bucket{{le=\"0.1\"}}"), 2.0),
                (&format!("{h}_bucket{{le=\"30\"}}"), 2.0),
                (&format!("{h}_bucket{{le=\"+Inf\"}}"), 3.0),
                (&format!("{h}_count"), 3.0),
            ],
        );
        let sum = value(&text, &format!("{h}_sum")).unwrap_or(0.0);
        assert!((sum - 60.051).abs() < 1e-6, "{sum}");
        let p = "konnectivity_network_proxy_agent_stream_packets_total";
        assert_series(
            &text,
            &[
                (
                    &format!("{p}{{packet_type=\"DIAL_RSP\",segment=\"from_agent\"}}"),
                    2.0,
                ),
                (
                    &format!("{p}{{packet_type=\"DIAL_REQ\",segment=\"to_agent\"}}"),
                    1.0,
                ),
                (
                    "konnectivity_network_proxy_agent_stream_errors_total{code=\"Unavailable\",packet_type=\"Unknown\",segment=\"to_agent\"}",
                    1.0,
                ),
                (
                    "konnectivity_network_proxy_agent_server_connection_failure_count{direction=\"from_server\"}",
                    1.0,
                ),
            ],
        );
    }

    #[test]
    fn lease_lists_are_counted_by_status_and_reason() {
        let m = Metrics::new(&MemoryBudget::default_budget());
        assert!(!m.render().contains("lease_lists_total{"));
        m.lease_list(Some((200, String::new())), Duration::from_millis(3));
        m.lease_list(Some((200, String::new())), Duration::from_millis(30));
        m.lease_list(Some((403, "Forbidden".into())), Duration::from_millis(2));
        m.lease_list(None, Duration::from_secs(10));
        let text = m.render();
        let l = "konnectivity_network_proxy_agent_lease_lists_total";
        assert_series(
            &text,
            &[
                (
                    &format!("{l}{{http_response_code=\"200\",reason=\"\"}}"),
                    2.0,
                ),
                (
                    &format!("{l}{{http_response_code=\"403\",reason=\"Forbidden\"}}"),
                    1.0,
                ),
            ],
        );
        let h = "konnectivity_network_proxy_agent_lease_list_latency_seconds";
        assert_series(
            &text,
            &[
                (
                    &format!("{h}_bucket{{http_response_code=\"200\",le=\"0.005\"}}"),
                    1.0,
                ),
                (&format!("{h}_count{{http_response_code=\"200\"}}"), 2.0),
                (&format!("{h}_count{{http_response_code=\"403\"}}"), 1.0),
            ],
        );
        assert!(
            text.contains("# TYPE konnectivity_network_proxy_agent_lease_watches_total counter")
        );
    }
}
