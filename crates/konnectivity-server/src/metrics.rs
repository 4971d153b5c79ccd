//! The server's Prometheus metrics, with upstream's names, types, labels, buckets and
//! HELP texts (spec §8.3), plus konnectivity-rs additions prefixed
//! `konnectivity_rs_server_`, and the `process_*` metrics, on
//! [`konnectivity_runtime::metrics`] with one registry per server.
//!
//! Vectors only show a label combination once it has been touched, as upstream does
//! (tests compare the exact set of `dial_failure_count` series).
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use konnectivity_core::packet::{TYPE_NAMES as TYPES, type_index};
use konnectivity_core::select::Strategy;
use konnectivity_proto::Packet;
use konnectivity_runtime::metrics::{
    Binary, Counter, DEFAULT_BUCKETS, Family, FloatGauge, Gauge as IntGauge, Histogram, Registry,
};
use konnectivity_tunnel::budget::MemoryBudget;

const NS: &str = "konnectivity_network_proxy_server";
const RS: &str = "konnectivity_rs_server";
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
pub struct GaugeGuard(Arc<IntGauge>);

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
    ready_backends: Arc<Family<IntGauge>>,
    ready_backend_connections: Arc<IntGauge>,
    established: Arc<IntGauge>,
    pending: Arc<IntGauge>,
    /// `grpc_connections{service_method}`: Proxy and Connect, touched up front.
    grpc_proxy: Arc<IntGauge>,
    grpc_connect: Arc<IntGauge>,
    http_connections: Arc<IntGauge>,
    dial_failures: Arc<Family<Counter>>,
    dial_duration: Arc<Histogram>,
    connection_duration: Arc<Histogram>,
    frontend_write: Arc<Histogram>,
    packets: Arc<Family<Counter>>,
    stream_errors: Arc<Family<Counter>>,
    culled_leases: Arc<Counter>,
    lease_deletes: Arc<Family<Counter>>,
    lease_delete_latency: Arc<Family<Histogram>>,
    lease_lists: Arc<Family<Counter>>,
    lease_list_latency: Arc<Family<Histogram>>,
    /// Resolved `packets` children, created on first use (no zero series up front).
    packet_handles: [[OnceLock<Arc<Counter>>; TYPES.len()]; 4],
    buffer_overflows: Arc<Counter>,
    limit_hits: Arc<Family<Counter>>,
    policy_denied: Arc<Counter>,
    closes: Arc<Family<Counter>>,
    bytes: Arc<Family<Counter>>,
    /// Resolved `bytes` children (from_agent, to_agent), created on first use.
    bytes_handles: [OnceLock<Arc<Counter>>; 2],
    oldest_pending: Arc<FloatGauge>,
    foreign_ids: Arc<Counter>,
    socks5_udp_dropped: Arc<Family<Counter>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Metrics for the configured strategies, gauges at 0; the buffer metrics read
    /// `budget` when rendered.
    pub fn new(strategies: &[Strategy], budget: &Arc<MemoryBudget>) -> Self {
        let mut r = Registry::default();
        let up = |name: &str| format!("{NS}_{name}");
        let rs = |name: &str| format!("{RS}_{name}");
        let grpc: Arc<Family<IntGauge>> = r.family(
            up("grpc_connections"),
            "Number of current grpc connections, partitioned by service method.",
            &["service_method"],
            (),
        );
        r.shared(&format!("{RS}_"), Binary::Server, budget);
        let m = Self {
            ready_backends: r.family(up("ready_backends"), "Number of konnectivity agent connected to the proxy server", &["proxy_strategy"], ()),
            ready_backend_connections: r.gauge(up("ready_backend_connections"), "Number of konnectivity agent connected to the proxy server. DEPRECATED, please use ready_backends"),
            established: r.gauge(up("established_connections"), "Current number of established end-to-end connections (post-dial)."),
            pending: r.gauge(up("pending_backend_dials"), "Current number of pending backend dial requests"),
            grpc_proxy: grpc.with(&["Proxy"]),
            grpc_connect: grpc.with(&["Connect"]),
            http_connections: r.gauge(up("http_connections"), "Number of current HTTP CONNECT connections"),
            dial_failures: r.counters(up("dial_failure_count"), "Number of dial failures observed. Multiple failures can occur for a single dial request.", &["reason"]),
            dial_duration: r.metric(up("dial_duration_seconds"), "Latency of dial to the remote endpoint in seconds", LATENCY_BUCKETS),
            connection_duration: r.metric(up("connection_duration_seconds"), "Duration of established connections in seconds", LIFETIME_BUCKETS),
            frontend_write: r.metric(up("frontend_write_duration_seconds"), "Latency of write to the frontend in seconds", LATENCY_BUCKETS),
            packets: r.counters(up("stream_packets_total"), "Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ)", &["segment", "packet_type"]),
            packet_handles: Default::default(),
            stream_errors: r.counters(up("stream_errors_total"), "Count of gRPC stream errors, by segment, grpc Code, packet type. (example: from_agent, Code.Unavailable, DIAL_RSP)", &["segment", "code", "packet_type"]),
            culled_leases: r.counter(up("culled_leases_count"), "Count of expired leases that the lease garbage collection controller has culled."),
            // Upstream's HELP texts, typos and all (dashboards and tests compare them).
            lease_deletes: r.counters(up("lease_delete_total"), "Count of lease delection calls by the garbage collection controller. Labeled by HTTP status code and reason.", &["http_status_code", "reason"]),
            lease_delete_latency: r.family(up("lease_delete_latency_seconds"), "Latency of lease deletion calls by the garbage collection controller in seconds.", &["http_status_code"], DEFAULT_BUCKETS),
            lease_lists: r.counters(up("lease_list_total"), "Count of lease deletion calls by the garbage collection controller. Labeled by HTTP status code and reason.", &["http_status_code", "reason"]),
            lease_list_latency: r.family(up("lease_list_latency_seconds"), "Latency of lease list calls by the garbage collection controller in seconds.", &["http_status_code"], DEFAULT_BUCKETS),
            buffer_overflows: r.counter(rs("buffer_overflow_total"), "Connections closed because a flow-controlled agent sent more than the connection's window."),
            limit_hits: r.counters(rs("limit_hits_total"), "Requests refused because a configured limit was reached, by limit flag.", &["limit"]),
            policy_denied: r.counter(rs("destination_denied_total"), "Dials refused by the destination policy."),
            closes: r.counters(rs("connection_closes_total"), "Established connections closed, by who or what closed them.", &["reason"]),
            bytes: r.counters(rs("bytes_total"), "Payload bytes relayed, by direction (to_agent, from_agent).", &["direction"]),
            bytes_handles: Default::default(),
            oldest_pending: r.metric(rs("oldest_pending_dial_seconds"), "Age of the oldest dial still waiting for its agent's answer.", ()),
            foreign_ids: r.counter(rs("foreign_connect_id_total"), "Packets from gRPC frontends that named a connect ID (or dial ID) their own dial did not establish; never forwarded to an agent."),
            socks5_udp_dropped: r.counters(rs("socks5_udp_datagrams_dropped_total"), "SOCKS5 UDP ASSOCIATE datagrams dropped (UDP semantics: never queued without bound), by reason: foreign_source, malformed, too_many_destinations, queue_full, window_spent.", &["reason"]),
            registry: r,
        };
        for s in strategies {
            m.ready_backends.with(&[s.name()]).set(0);
        }
        m
    }

    fn gauge(&self, g: Gauge) -> Arc<IntGauge> {
        match g {
            Gauge::GrpcProxy => &self.grpc_proxy,
            Gauge::GrpcConnect => &self.grpc_connect,
            Gauge::Http => &self.http_connections,
            Gauge::Established => &self.established,
        }
        .clone()
    }

    /// Holds a gauge up for the guard's lifetime.
    pub fn hold(&self, g: Gauge) -> GaugeGuard {
        let gauge = self.gauge(g);
        gauge.inc();
        GaugeGuard(gauge)
    }

    /// Counts a dial failure.
    pub fn dial_failure(&self, r: DialFailureReason) {
        self.dial_failures.with(&[r.label()]).inc();
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
        self.dial_failures.get(&[r.label()]).map_or(0, |c| c.get())
    }

    /// Sets `pending_backend_dials`.
    pub fn set_pending(&self, n: usize) {
        self.pending.set(n as i64);
    }

    /// Sets `ready_backends{proxy_strategy}` (and the deprecated total).
    pub fn set_ready_backends(&self, s: Strategy, n: usize) {
        self.ready_backends.with(&[s.name()]).set(n as i64);
        self.ready_backend_connections.set(n as i64);
    }

    /// Observes a successful dial's latency.
    pub fn dial_succeeded(&self, d: Duration) {
        self.dial_duration.observe(d.as_secs_f64());
    }

    /// Observes an established connection's end: lifetime and why it closed.
    pub fn connection_closed(&self, lifetime: Duration, reason: &'static str) {
        self.connection_duration.observe(lifetime.as_secs_f64());
        self.closes.with(&[reason]).inc();
    }

    /// Observes one agent → frontend relay write.
    pub fn frontend_write(&self, d: Duration) {
        self.frontend_write.observe(d.as_secs_f64());
    }

    /// Counts a packet.
    pub fn packet(&self, segment: Segment, p: &Packet) {
        let (s, t) = (segment as usize, type_index(p));
        self.packet_handles[s][t]
            .get_or_init(|| self.packets.with(&[SEGMENTS[s], TYPES[t]]))
            .inc();
    }

    /// Counts a failed stream read (`packet_type="Unknown"`, as upstream for receive
    /// errors; end of stream is not an error).
    pub fn stream_error(&self, segment: Segment, code: &'static str) {
        self.stream_errors
            .with(&[SEGMENTS[segment as usize], code, "Unknown"])
            .inc();
    }

    /// Counts relayed payload bytes.
    pub fn bytes(&self, to_agent: bool, n: usize) {
        let (i, direction) = if to_agent {
            (1, "to_agent")
        } else {
            (0, "from_agent")
        };
        self.bytes_handles[i]
            .get_or_init(|| self.bytes.with(&[direction]))
            .inc_by(n as u64);
    }

    /// Counts a connection closed for exhausting its buffer budget.
    pub fn buffer_overflow(&self) {
        self.buffer_overflows.inc();
    }

    /// Counts a limit hit (`limit` is the flag name).
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.with(&[limit]).inc();
    }

    /// Counts a SOCKS5 UDP datagram dropped for `reason`.
    pub fn socks5_udp_dropped(&self, reason: &'static str) {
        self.socks5_udp_dropped.with(&[reason]).inc();
    }

    /// SOCKS5 UDP datagrams dropped for `reason` so far.
    pub fn socks5_udp_drops(&self, reason: &'static str) -> u64 {
        self.socks5_udp_dropped
            .get(&[reason])
            .map_or(0, |c| c.get())
    }

    /// Counts a dial denied by the destination policy.
    pub fn policy_denied(&self) {
        self.policy_denied.inc();
    }

    /// Sets the scrape-time gauge: the oldest pending dial's age.
    pub fn set_oldest_pending(&self, oldest_pending: Duration) {
        self.oldest_pending.set(oldest_pending.as_secs_f64());
    }

    /// Open gRPC frontend streams.
    pub fn grpc_proxy_streams(&self) -> i64 {
        self.grpc_proxy.get()
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
        self.registry.render()
    }
}

/// Counts an API call by status code and reason, and observes its latency by status
/// code; a call that got no status from the API server is not counted.
fn api_call(
    calls: &Family<Counter>,
    latency: &Family<Histogram>,
    status: Option<(u16, String)>,
    took: Duration,
) {
    if let Some((code, reason)) = status {
        let code = code.to_string();
        calls.with(&[&code, &reason]).inc();
        latency.with(&[&code]).observe(took.as_secs_f64());
    }
}

/// The lease controller reports its API calls here.
impl konnectivity_k8s::lease::LeaseEvents for Metrics {
    fn listed(&self, status: Option<(u16, String)>, took: Duration) {
        api_call(&self.lease_lists, &self.lease_list_latency, status, took);
    }

    fn deleted(&self, status: Option<(u16, String)>, took: Duration) {
        api_call(
            &self.lease_deletes,
            &self.lease_delete_latency,
            status,
            took,
        );
    }

    fn culled(&self) {
        self.culled_leases.inc();
    }
}
