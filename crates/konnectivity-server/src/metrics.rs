//! The server's Prometheus metrics, with upstream's names, types, labels, buckets and
//! HELP texts (spec §8.3), plus konnectivity-rs additions prefixed
//! `konnectivity_rs_server_`. Built on the `prometheus` crate with one registry per
//! server (process metrics included).
//!
//! Vectors only show a label combination once it has been touched, as upstream does
//! (tests compare the exact set of `dial_failure_count` series).
use std::sync::OnceLock;
use std::time::Duration;

use konnectivity_core::packet::{TYPE_NAMES as TYPES, type_index};
use konnectivity_core::select::Strategy;
use konnectivity_proto::Packet;
use konnectivity_tunnel::budget::MemoryBudget;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

const NS: &str = "konnectivity_network_proxy";
const SUB: &str = "server";
const LATENCY_BUCKETS: &[f64] = &[0.000001, 0.00001, 0.0001, 0.005, 0.025, 0.1, 0.5, 2.5, 12.5];
const LIFETIME_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0,
];

/// Why a dial failed (`dial_failure_count{reason}`): the core's enum, whose one
/// mapping from [`konnectivity_core::dial::DialError`] every failure goes through.
pub use konnectivity_core::dial::DialFailureReason;

/// Which gauge a [`GaugeGuard`] holds up.
#[derive(Debug, Clone, Copy)]
pub enum Gauge {
    /// `grpc_connections{service_method="Proxy"}`.
    GrpcProxy,
    /// `grpc_connections{service_method="Connect"}`.
    GrpcConnect,
    /// `http_connections`.
    Http,
    /// `established_connections`.
    Established,
}

/// Increments a gauge now and decrements it when dropped.
#[derive(Debug)]
pub struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where a packet was seen (`stream_packets_total{segment}`).
#[derive(Debug, Clone, Copy)]
pub enum Segment {
    /// Received from a frontend.
    FromClient = 0,
    /// Sent to a frontend.
    ToClient = 1,
    /// Received from an agent.
    FromAgent = 2,
    /// Sent to an agent.
    ToAgent = 3,
}

const SEGMENTS: [&str; 4] = ["from_client", "to_client", "from_agent", "to_agent"];

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    ready_backends: IntGaugeVec,
    ready_backend_connections: IntGauge,
    established: IntGauge,
    pending: IntGauge,
    grpc: IntGaugeVec,
    http_connections: IntGauge,
    dial_failures: IntCounterVec,
    dial_duration: Histogram,
    connection_duration: Histogram,
    frontend_write: Histogram,
    packets: IntCounterVec,
    stream_errors: IntCounterVec,
    culled_leases: IntCounter,
    lease_deletes: IntCounterVec,
    lease_delete_latency: HistogramVec,
    lease_lists: IntCounterVec,
    lease_list_latency: HistogramVec,
    /// Resolved `packets` children, created on first use (no zero series up front).
    packet_handles: [[OnceLock<IntCounter>; 9]; 4],
    buffer_overflows: IntCounter,
    limit_hits: IntCounterVec,
    policy_denied: IntCounter,
    closes: IntCounterVec,
    bytes: IntCounterVec,
    oldest_pending: prometheus::Gauge,
    buffered: IntGauge,
    buffer_budget: IntGauge,
    pauses: IntCounter,
    stalled: IntCounter,
    foreign_ids: IntCounter,
    cert_reloads: IntCounter,
    cert_reload_failures: IntCounter,
    socks5_udp_dropped: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS).subsystem(SUB)
}

fn rs(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
        .namespace("konnectivity_rs")
        .subsystem(SUB)
}

impl Metrics {
    /// Metrics for the configured strategies; gauges at 0.
    pub fn new(strategies: &[Strategy]) -> Self {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::from(opts(name, help)).buckets(buckets.to_vec()))
                .expect("valid histogram")
        };
        let m = Self {
            ready_backends: IntGaugeVec::new(opts("ready_backends", "Number of konnectivity agent connected to the proxy server"), &["proxy_strategy"]).expect("valid"),
            ready_backend_connections: IntGauge::with_opts(opts("ready_backend_connections", "Number of konnectivity agent connected to the proxy server. DEPRECATED, please use ready_backends")).expect("valid"),
            established: IntGauge::with_opts(opts("established_connections", "Current number of established end-to-end connections (post-dial).")).expect("valid"),
            pending: IntGauge::with_opts(opts("pending_backend_dials", "Current number of pending backend dial requests")).expect("valid"),
            grpc: IntGaugeVec::new(opts("grpc_connections", "Number of current grpc connections, partitioned by service method."), &["service_method"]).expect("valid"),
            http_connections: IntGauge::with_opts(opts("http_connections", "Number of current HTTP CONNECT connections")).expect("valid"),
            dial_failures: IntCounterVec::new(opts("dial_failure_count", "Number of dial failures observed. Multiple failures can occur for a single dial request."), &["reason"]).expect("valid"),
            dial_duration: hist("dial_duration_seconds", "Latency of dial to the remote endpoint in seconds", LATENCY_BUCKETS),
            connection_duration: hist("connection_duration_seconds", "Duration of established connections in seconds", LIFETIME_BUCKETS),
            frontend_write: hist("frontend_write_duration_seconds", "Latency of write to the frontend in seconds", LATENCY_BUCKETS),
            packets: IntCounterVec::new(opts("stream_packets_total", "Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ)"), &["segment", "packet_type"]).expect("valid"),
            packet_handles: Default::default(),
            stream_errors: IntCounterVec::new(opts("stream_errors_total", "Count of gRPC stream errors, by segment, grpc Code, packet type. (example: from_agent, Code.Unavailable, DIAL_RSP)"), &["segment", "code", "packet_type"]).expect("valid"),
            culled_leases: IntCounter::with_opts(opts("culled_leases_count", "Count of expired leases that the lease garbage collection controller has culled.")).expect("valid"),
            // Upstream's HELP texts, typos and all (dashboards and tests compare them).
            lease_deletes: IntCounterVec::new(opts("lease_delete_total", "Count of lease delection calls by the garbage collection controller. Labeled by HTTP status code and reason."), &["http_status_code", "reason"]).expect("valid"),
            lease_delete_latency: HistogramVec::new(HistogramOpts::from(opts("lease_delete_latency_seconds", "Latency of lease deletion calls by the garbage collection controller in seconds.")), &["http_status_code"]).expect("valid"),
            lease_lists: IntCounterVec::new(opts("lease_list_total", "Count of lease deletion calls by the garbage collection controller. Labeled by HTTP status code and reason."), &["http_status_code", "reason"]).expect("valid"),
            lease_list_latency: HistogramVec::new(HistogramOpts::from(opts("lease_list_latency_seconds", "Latency of lease list calls by the garbage collection controller in seconds.")), &["http_status_code"]).expect("valid"),
            buffer_overflows: IntCounter::with_opts(rs("buffer_overflow_total", "Connections closed because a flow-controlled agent sent more than the connection's window.")).expect("valid"),
            limit_hits: IntCounterVec::new(rs("limit_hits_total", "Requests refused because a configured limit was reached, by limit flag."), &["limit"]).expect("valid"),
            policy_denied: IntCounter::with_opts(rs("destination_denied_total", "Dials refused by the destination policy.")).expect("valid"),
            closes: IntCounterVec::new(rs("connection_closes_total", "Established connections closed, by who or what closed them."), &["reason"]).expect("valid"),
            bytes: IntCounterVec::new(rs("bytes_total", "Payload bytes relayed, by direction (to_agent, from_agent)."), &["direction"]).expect("valid"),
            oldest_pending: prometheus::Gauge::with_opts(rs("oldest_pending_dial_seconds", "Age of the oldest dial still waiting for its agent's answer.")).expect("valid"),
            buffered: IntGauge::with_opts(rs("buffered_bytes", "Data queued on the server for frontends (and, between our peers, for agents) that have not taken it yet, summed over connections.")).expect("valid"),
            buffer_budget: IntGauge::with_opts(rs("buffer_budget_bytes", "The process-wide budget of queued bytes (--max-buffered-bytes); agent streams pause above it. 0 is unlimited.")).expect("valid"),
            pauses: IntCounter::with_opts(rs("stream_pauses_total", "Times an agent stream's reader paused because a connection or the process was over its buffer budget (agents without flow control).")).expect("valid"),
            stalled: IntCounter::with_opts(rs("stalled_connections_total", "Connections closed because their consumer made no progress within --stall-timeout while over its buffer budget.")).expect("valid"),
            foreign_ids: IntCounter::with_opts(rs("foreign_connect_id_total", "Packets from gRPC frontends that named a connect ID (or dial ID) their own dial did not establish; never forwarded to an agent.")).expect("valid"),
            cert_reloads: IntCounter::with_opts(rs("certificate_reloads_total", "Times a serving certificate was re-read after its files changed; new connections use it.")).expect("valid"),
            cert_reload_failures: IntCounter::with_opts(rs("certificate_reload_failures_total", "Changed certificate files that did not load; the previous certificate stays in use.")).expect("valid"),
            socks5_udp_dropped: IntCounterVec::new(rs("socks5_udp_datagrams_dropped_total", "SOCKS5 UDP ASSOCIATE datagrams dropped (UDP semantics: never queued without bound), by reason: foreign_source, malformed, too_many_destinations, queue_full, window_spent."), &["reason"]).expect("valid"),
            registry,
        };
        let r = &m.registry;
        for c in [
            Box::new(m.ready_backends.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.ready_backend_connections.clone()),
            Box::new(m.established.clone()),
            Box::new(m.pending.clone()),
            Box::new(m.grpc.clone()),
            Box::new(m.http_connections.clone()),
            Box::new(m.dial_failures.clone()),
            Box::new(m.dial_duration.clone()),
            Box::new(m.connection_duration.clone()),
            Box::new(m.frontend_write.clone()),
            Box::new(m.packets.clone()),
            Box::new(m.stream_errors.clone()),
            Box::new(m.culled_leases.clone()),
            Box::new(m.lease_deletes.clone()),
            Box::new(m.lease_delete_latency.clone()),
            Box::new(m.lease_lists.clone()),
            Box::new(m.lease_list_latency.clone()),
            Box::new(m.buffer_overflows.clone()),
            Box::new(m.limit_hits.clone()),
            Box::new(m.policy_denied.clone()),
            Box::new(m.closes.clone()),
            Box::new(m.bytes.clone()),
            Box::new(m.oldest_pending.clone()),
            Box::new(m.buffered.clone()),
            Box::new(m.buffer_budget.clone()),
            Box::new(m.pauses.clone()),
            Box::new(m.stalled.clone()),
            Box::new(m.foreign_ids.clone()),
            Box::new(m.cert_reloads.clone()),
            Box::new(m.cert_reload_failures.clone()),
            Box::new(m.socks5_udp_dropped.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            let _ = r.register(c);
        }
        for s in strategies {
            m.ready_backends.with_label_values(&[s.name()]).set(0);
        }
        m.grpc.with_label_values(&["Connect"]).set(0);
        m.grpc.with_label_values(&["Proxy"]).set(0);
        m
    }

    fn gauge(&self, g: Gauge) -> IntGauge {
        match g {
            Gauge::GrpcProxy => self.grpc.with_label_values(&["Proxy"]),
            Gauge::GrpcConnect => self.grpc.with_label_values(&["Connect"]),
            Gauge::Http => self.http_connections.clone(),
            Gauge::Established => self.established.clone(),
        }
    }

    /// Holds a gauge up for the guard's lifetime.
    pub fn hold(&self, g: Gauge) -> GaugeGuard {
        let gauge = self.gauge(g);
        gauge.inc();
        GaugeGuard(gauge)
    }

    /// Counts a dial failure.
    pub fn dial_failure(&self, r: DialFailureReason) {
        self.dial_failures.with_label_values(&[r.label()]).inc();
    }

    /// Counts a dial failure under the reason its error maps to (if it has one).
    pub fn dial_failed(&self, e: &konnectivity_core::dial::DialError) {
        if let Some(r) = e.reason() {
            self.dial_failure(r);
        }
    }

    /// Counts a frontend packet that named an ID that is not its own.
    pub fn foreign_id(&self) {
        self.foreign_ids.inc();
    }

    /// Frontend packets refused for naming another connection's ID (tests and status).
    pub fn foreign_ids(&self) -> u64 {
        self.foreign_ids.get()
    }

    /// The count for one reason (tests and status).
    pub fn dial_failures(&self, r: DialFailureReason) -> u64 {
        self.dial_failures
            .get_metric_with_label_values(&[r.label()])
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Sets `pending_backend_dials`.
    pub fn set_pending(&self, n: usize) {
        self.pending.set(n as i64);
    }

    /// Sets `ready_backends{proxy_strategy}` (and the deprecated total).
    pub fn set_ready_backends(&self, s: Strategy, n: usize) {
        self.ready_backends
            .with_label_values(&[s.name()])
            .set(n as i64);
        self.ready_backend_connections.set(n as i64);
    }

    /// Observes a successful dial's latency.
    pub fn dial_succeeded(&self, d: Duration) {
        self.dial_duration.observe(d.as_secs_f64());
    }

    /// Observes an established connection's end: lifetime and why it closed.
    pub fn connection_closed(&self, lifetime: Duration, reason: &'static str) {
        self.connection_duration.observe(lifetime.as_secs_f64());
        self.closes.with_label_values(&[reason]).inc();
    }

    /// Observes one agent → frontend relay write.
    pub fn frontend_write(&self, d: Duration) {
        self.frontend_write.observe(d.as_secs_f64());
    }

    /// Counts a packet.
    pub fn packet(&self, segment: Segment, p: &Packet) {
        let (s, t) = (segment as usize, type_index(p));
        self.packet_handles[s][t]
            .get_or_init(|| self.packets.with_label_values(&[SEGMENTS[s], TYPES[t]]))
            .inc();
    }

    /// Counts a failed stream read (`packet_type="Unknown"`, as upstream for receive
    /// errors; end of stream is not an error).
    pub fn stream_error(&self, segment: Segment, code: &'static str) {
        self.stream_errors
            .with_label_values(&[SEGMENTS[segment as usize], code, "Unknown"])
            .inc();
    }

    /// Counts relayed payload bytes.
    pub fn bytes(&self, to_agent: bool, n: usize) {
        self.bytes
            .with_label_values(&[if to_agent { "to_agent" } else { "from_agent" }])
            .inc_by(n as u64);
    }

    /// Counts a connection closed for exhausting its buffer budget.
    pub fn buffer_overflow(&self) {
        self.buffer_overflows.inc();
    }

    /// Counts a limit hit (`limit` is the flag name).
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.with_label_values(&[limit]).inc();
    }

    /// Counts a SOCKS5 UDP datagram dropped for `reason`.
    pub fn socks5_udp_dropped(&self, reason: &'static str) {
        self.socks5_udp_dropped.with_label_values(&[reason]).inc();
    }

    /// SOCKS5 UDP datagrams dropped for `reason` so far.
    pub fn socks5_udp_drops(&self, reason: &'static str) -> u64 {
        self.socks5_udp_dropped.with_label_values(&[reason]).get()
    }

    /// Counts a dial denied by the destination policy.
    pub fn policy_denied(&self) {
        self.policy_denied.inc();
    }

    /// Sets the scrape-time gauges, and the counters kept by the memory budget and by
    /// `konnectivity_tls` (certificate reloads).
    pub fn set_scrape_state(&self, oldest_pending: Duration, budget: &MemoryBudget) {
        self.oldest_pending.set(oldest_pending.as_secs_f64());
        self.buffered.set(budget.used() as i64);
        self.buffer_budget.set(budget.limit() as i64);
        for (c, now) in [
            (&self.pauses, budget.pauses()),
            (&self.stalled, budget.stalled()),
            (&self.cert_reloads, konnectivity_tls::reloads().0),
            (&self.cert_reload_failures, konnectivity_tls::reloads().1),
        ] {
            c.inc_by(now.saturating_sub(c.get()));
        }
    }

    /// Open gRPC frontend streams.
    pub fn grpc_proxy_streams(&self) -> i64 {
        self.grpc.with_label_values(&["Proxy"]).get()
    }

    /// Open HTTP-CONNECT connections.
    pub fn http_connections(&self) -> i64 {
        self.http_connections.get()
    }

    /// Current `established_connections`.
    pub fn established(&self) -> i64 {
        self.established.get()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// The lease controller reports its API calls here.
impl konnectivity_k8s::lease::LeaseEvents for Metrics {
    fn listed(&self, status: Option<(u16, String)>, took: Duration) {
        if let Some((code, reason)) = status {
            let code = code.to_string();
            self.lease_lists.with_label_values(&[&code, &reason]).inc();
            self.lease_list_latency
                .with_label_values(&[&code])
                .observe(took.as_secs_f64());
        }
    }

    fn deleted(&self, status: Option<(u16, String)>, took: Duration) {
        if let Some((code, reason)) = status {
            let code = code.to_string();
            self.lease_deletes
                .with_label_values(&[&code, &reason])
                .inc();
            self.lease_delete_latency
                .with_label_values(&[&code])
                .observe(took.as_secs_f64());
        }
    }

    fn culled(&self) {
        self.culled_leases.inc();
    }
}
