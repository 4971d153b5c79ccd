//! The agent's Prometheus metrics: upstream's catalogue for the agent (same names,
//! labels and HELP texts), rendered by hand so the agent does not link a metrics
//! library. Label sets that were never touched are not rendered (no zero series), as
//! with upstream's vectors; the label-less histogram is always rendered.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use konnectivity_core::address::DialFailure;
use konnectivity_core::packet::{TYPE_NAMES as TYPES, type_index};
use konnectivity_proto::Packet;
use konnectivity_tunnel::budget::MemoryBudget;

const NS: &str = "konnectivity_network_proxy_agent";

/// The agent's metric values.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `open_server_connections`.
    pub open_server_connections: AtomicI64,
    /// `known_server_count`.
    pub known_server_count: AtomicI64,
    /// `open_endpoint_connections`.
    pub open_endpoint_connections: AtomicI64,
    dial_timeout: AtomicU64,
    dial_unknown: AtomicU64,
    dial_protocol: AtomicU64,
    dial_duration: Histogram,
    /// `stream_packets_total`, by [`Segment`] and packet type index ([`TYPES`]).
    packets: [[AtomicU64; TYPES.len()]; 2],
    /// `stream_errors_total`, by (segment, gRPC code name, packet type).
    stream_errors: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    /// `server_connection_failure_count{direction="from_server"}`.
    failures_from_server: AtomicU64,
    /// `lease_lists_total`, by (HTTP status code, reason).
    lease_lists: Mutex<BTreeMap<(u16, String), u64>>,
    /// `lease_list_latency_seconds`, by HTTP status code.
    lease_list_latency: Mutex<BTreeMap<u16, Histogram>>,
    /// UDP connections (an extension, `konnectivity_rs_agent_udp_*`).
    pub udp: UdpCounters,
}

/// The agent's UDP counters (`konnectivity_rs_agent_udp_*`).
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// UDP sockets open now; `--max-udp-sockets` bounds it.
    pub open: std::sync::atomic::AtomicUsize,
    /// UDP dials that opened a socket.
    pub dials: AtomicU64,
    /// UDP dials refused at `--max-udp-sockets`.
    pub refused: AtomicU64,
    /// Datagrams written to destinations.
    pub to_destination: AtomicU64,
    /// Datagrams read from destinations and sent to the server.
    pub from_destination: AtomicU64,
    /// Datagrams from destinations dropped because the server's window was spent.
    pub dropped: AtomicU64,
}

/// Upstream's agent latency buckets (dials and lease lists), in seconds.
const DIAL_BUCKETS: [f64; 7] = [0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 30.0];

/// A label-less histogram with [`DIAL_BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is above every bound.
    counts: [AtomicU64; DIAL_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DIAL_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DIAL_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} histogram\n");
        self.render_series(o, name, "");
    }

    /// The series of one label set; `labels` is empty or `name="value",`.
    fn render_series(&self, o: &mut String, name: &str, labels: &str) {
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            match DIAL_BUCKETS.get(i) {
                Some(b) => {
                    let _ = writeln!(o, "{name}_bucket{{{labels}le=\"{b}\"}} {total}");
                }
                None => {
                    let _ = writeln!(o, "{name}_bucket{{{labels}le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braced = labels.trim_end_matches(',');
        if braced.is_empty() {
            let _ = writeln!(o, "{name}_sum {sum}");
            let _ = writeln!(o, "{name}_count {total}");
        } else {
            let _ = writeln!(o, "{name}_sum{{{braced}}} {sum}");
            let _ = writeln!(o, "{name}_count{{{braced}}} {total}");
        }
    }
}

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
    /// Counts a failed destination dial.
    pub fn dial_failure(&self, why: DialFailure) {
        match why {
            DialFailure::Timeout => self.dial_timeout.fetch_add(1, Ordering::Relaxed),
            DialFailure::Unknown => self.dial_unknown.fetch_add(1, Ordering::Relaxed),
            DialFailure::ProtocolNotAllowed => self.dial_protocol.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Records a successful destination dial and how long it took.
    pub fn dial_done(&self, took: Duration) {
        self.dial_duration.observe(took);
    }

    /// Counts a packet sent or received on a server stream.
    pub fn packet(&self, segment: Segment, p: &Packet) {
        self.packets[segment as usize][type_index(p)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed server stream: `stream_errors_total{segment, code, packet_type}`
    /// and the deprecated `server_connection_failure_count{direction}`. Receive errors
    /// carry `packet_type="Unknown"`, as upstream.
    pub fn stream_error(&self, segment: Segment, code: &'static str, packet_type: &'static str) {
        if let Ok(mut m) = self.stream_errors.lock() {
            *m.entry((segment.name(), code, packet_type)).or_default() += 1;
        }
        if segment == Segment::ToAgent {
            self.failures_from_server.fetch_add(1, Ordering::Relaxed);
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
        if let Ok(mut m) = self.lease_lists.lock() {
            *m.entry((code, reason)).or_default() += 1;
        }
        if let Ok(mut m) = self.lease_list_latency.lock() {
            m.entry(code).or_default().observe(took);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        self.dial_duration.render(
            &mut o,
            &format!("{NS}_dial_duration_seconds"),
            "Latency of dial to the remote endpoint in seconds",
        );
        let failures = self.failures_from_server.load(Ordering::Relaxed);
        let _ = write!(
            o,
            "# HELP {NS}_server_connection_failure_count Count of failures to send to or receive from the proxy server, labeled by the direction (from_server or to_server). DEPRECATED, please use stream_events_error_total\n# TYPE {NS}_server_connection_failure_count counter\n"
        );
        if failures > 0 {
            let _ = writeln!(
                o,
                "{NS}_server_connection_failure_count{{direction=\"from_server\"}} {failures}"
            );
        }
        let _ = write!(
            o,
            "# HELP {NS}_stream_packets_total Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ)\n# TYPE {NS}_stream_packets_total counter\n"
        );
        for seg in [Segment::FromAgent, Segment::ToAgent] {
            for (t, c) in TYPES.iter().zip(&self.packets[seg as usize]) {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        o,
                        "{NS}_stream_packets_total{{packet_type=\"{t}\",segment=\"{}\"}} {v}",
                        seg.name()
                    );
                }
            }
        }
        let _ = write!(
            o,
            "# HELP {NS}_stream_errors_total Count of gRPC stream errors, by segment, grpc Code, packet type. (example: from_agent, Code.Unavailable, DIAL_RSP)\n# TYPE {NS}_stream_errors_total counter\n"
        );
        if let Ok(m) = self.stream_errors.lock() {
            for ((seg, code, t), v) in m.iter() {
                let _ = writeln!(
                    o,
                    "{NS}_stream_errors_total{{code=\"{code}\",packet_type=\"{t}\",segment=\"{seg}\"}} {v}"
                );
            }
        }
        let _ = write!(
            o,
            "# HELP {NS}_lease_lists_total Count of server lease list calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason\n# TYPE {NS}_lease_lists_total counter\n"
        );
        if let Ok(m) = self.lease_lists.lock() {
            for ((code, reason), v) in m.iter() {
                let _ = writeln!(
                    o,
                    "{NS}_lease_lists_total{{http_response_code=\"{code}\",reason=\"{}\"}} {v}",
                    escape_label(reason)
                );
            }
        }
        // Declared as upstream does; the agent lists leases and never watches them.
        let _ = write!(
            o,
            "# HELP {NS}_lease_watches_total Count of server lease watch calls made by the agent to the k8s apiserver, labeled by HTTP response code and reason\n# TYPE {NS}_lease_watches_total counter\n"
        );
        let name = format!("{NS}_lease_list_latency_seconds");
        let _ = write!(
            o,
            "# HELP {name} Latency of server lease listing in seconds\n# TYPE {name} histogram\n"
        );
        if let Ok(m) = self.lease_list_latency.lock() {
            for (code, h) in m.iter() {
                h.render_series(&mut o, &name, &format!("http_response_code=\"{code}\","));
            }
        }
        let _ = write!(
            o,
            "# HELP {NS}_endpoint_dial_failure_total Number of failures dialing the remote endpoint, by reason (example: timeout).\n# TYPE {NS}_endpoint_dial_failure_total counter\n"
        );
        for (label, v) in [
            ("timeout", &self.dial_timeout),
            ("unknown", &self.dial_unknown),
            ("protocol_not_allowed", &self.dial_protocol),
        ] {
            let v = v.load(Ordering::Relaxed);
            if v > 0 {
                let _ = writeln!(
                    o,
                    "{NS}_endpoint_dial_failure_total{{reason=\"{label}\"}} {v}"
                );
            }
        }
        for (name, help, v) in [
            (
                "known_server_count",
                "Current number of servers agent is trying to connect to.",
                &self.known_server_count,
            ),
            (
                "open_endpoint_connections",
                "Current number of open endpoint connections.",
                &self.open_endpoint_connections,
            ),
            (
                "open_server_connections",
                "Current number of open server connections.",
                &self.open_server_connections,
            ),
        ] {
            let _ = write!(
                o,
                "# HELP {NS}_{name} {help}\n# TYPE {NS}_{name} gauge\n{NS}_{name} {}\n",
                v.load(Ordering::Relaxed)
            );
        }
        o
    }

    /// konnectivity-rs additions, rendered after upstream's metrics.
    pub fn render_extra(&self, connected: usize, want: usize, budget: &MemoryBudget) -> String {
        let mut o = format!(
            "# HELP konnectivity_rs_agent_degraded 1 while the agent is connected to fewer servers than it should be.\n# TYPE konnectivity_rs_agent_degraded gauge\nkonnectivity_rs_agent_degraded {}\n",
            u8::from(connected < want)
        );
        let udp = &self.udp;
        let open = udp.open.load(Ordering::Relaxed) as u64;
        let [dials, refused, to_destination, from_destination, dropped] = [
            &udp.dials,
            &udp.refused,
            &udp.to_destination,
            &udp.from_destination,
            &udp.dropped,
        ]
        .map(|c| c.load(Ordering::Relaxed));
        for (name, kind, help, v) in [
            (
                "buffered_bytes",
                "gauge",
                "Data queued on the agent for destinations that have not taken it yet, summed over connections.",
                budget.used() as u64,
            ),
            (
                "buffer_budget_bytes",
                "gauge",
                "The process-wide budget of queued bytes (--max-buffered-bytes); server streams pause above it. 0 is unlimited.",
                budget.limit() as u64,
            ),
            (
                "stream_pauses_total",
                "counter",
                "Times a server stream's reader paused because a connection or the process was over its buffer budget (servers without flow control).",
                budget.pauses(),
            ),
            (
                "stalled_connections_total",
                "counter",
                "Connections closed because their destination made no progress within --stall-timeout while over its buffer budget.",
                budget.stalled(),
            ),
            (
                "certificate_reloads_total",
                "counter",
                "Times the client certificate was re-read after its files changed; new connections use it.",
                konnectivity_tls::reloads().0,
            ),
            (
                "certificate_reload_failures_total",
                "counter",
                "Changed certificate files that did not load; the previous certificate stays in use.",
                konnectivity_tls::reloads().1,
            ),
            (
                "udp_open_sockets",
                "gauge",
                "UDP sockets open for tunneled connections (--max-udp-sockets bounds them).",
                open,
            ),
            (
                "udp_dials_total",
                "counter",
                "UDP dials that opened a socket.",
                dials,
            ),
            (
                "udp_dials_refused_total",
                "counter",
                "UDP dials refused because --max-udp-sockets sockets were open.",
                refused,
            ),
            (
                "udp_datagrams_to_destination_total",
                "counter",
                "Datagrams written to destinations, one per DATA packet.",
                to_destination,
            ),
            (
                "udp_datagrams_from_destination_total",
                "counter",
                "Datagrams read from destinations and sent to the server, one per DATA packet.",
                from_destination,
            ),
            (
                "udp_datagrams_dropped_total",
                "counter",
                "Datagrams from destinations dropped (not queued) because the server's flow-control window was spent.",
                dropped,
            ),
        ] {
            let _ = write!(
                o,
                "# HELP konnectivity_rs_agent_{name} {help}\n# TYPE konnectivity_rs_agent_{name} {kind}\nkonnectivity_rs_agent_{name} {v}\n"
            );
        }
        o
    }
}

/// Escapes a label value for the text exposition.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        let m = Metrics::default();
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
        let m = Metrics::default();
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
        assert_eq!(escape_label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
