//! The server's Prometheus metrics (a first subset of upstream's catalogue, with
//! upstream's names, types, labels and HELP texts).
//!
//! Counters with labels appear only once a label value has been touched, as upstream
//! does (tests compare the exact set of `dial_failure_count` series).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use konnectivity_core::select::Strategy;

const NS: &str = "konnectivity_network_proxy_server";

/// Why a dial failed (`dial_failure_count{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DialFailureReason {
    /// No agent for the destination.
    NoAgent,
    /// The agent answered with an error.
    ErrorResponse,
    /// A DIAL_RSP matched no pending dial.
    UnrecognizedResponse,
    /// Forwarding the DIAL_RSP to the frontend failed.
    SendRsp,
    /// The agent closed the dial, or its stream ended.
    BackendClose,
    /// `--backend-dial-timeout` elapsed.
    BackendDialTimeout,
    /// The frontend went away before the dial completed.
    FrontendClose,
}

impl DialFailureReason {
    fn label(self) -> &'static str {
        match self {
            Self::NoAgent => "no_agent",
            Self::ErrorResponse => "error_response",
            Self::UnrecognizedResponse => "unrecognized_response",
            Self::SendRsp => "send_rsp",
            Self::BackendClose => "backend_close",
            Self::BackendDialTimeout => "backend_dial_timeout",
            Self::FrontendClose => "frontend_close",
        }
    }
}

/// The server's metric values.
#[derive(Debug)]
pub struct Metrics {
    strategies: Vec<(Strategy, AtomicI64)>,
    ready_backend_connections: AtomicI64,
    established: AtomicI64,
    pending: AtomicI64,
    grpc_proxy: AtomicI64,
    grpc_connect: AtomicI64,
    http_connections: AtomicI64,
    dial_failures: Mutex<BTreeMap<DialFailureReason, u64>>,
    /// konnectivity-rs: connections closed because their buffer budget was exhausted.
    buffer_overflows: AtomicU64,
    /// konnectivity-rs: limit hits by flag name.
    limit_hits: Mutex<BTreeMap<&'static str, u64>>,
    /// konnectivity-rs: dials denied by the destination policy.
    policy_denied: AtomicU64,
}

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
pub struct GaugeGuard<'a>(&'a AtomicI64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Metrics for the configured strategies, gauges at 0.
    pub fn new(strategies: &[Strategy]) -> Self {
        Self {
            strategies: strategies.iter().map(|s| (*s, AtomicI64::new(0))).collect(),
            ready_backend_connections: AtomicI64::new(0),
            established: AtomicI64::new(0),
            pending: AtomicI64::new(0),
            grpc_proxy: AtomicI64::new(0),
            grpc_connect: AtomicI64::new(0),
            http_connections: AtomicI64::new(0),
            dial_failures: Mutex::new(BTreeMap::new()),
            buffer_overflows: AtomicU64::new(0),
            limit_hits: Mutex::new(BTreeMap::new()),
            policy_denied: AtomicU64::new(0),
        }
    }

    fn gauge(&self, g: Gauge) -> &AtomicI64 {
        match g {
            Gauge::GrpcProxy => &self.grpc_proxy,
            Gauge::GrpcConnect => &self.grpc_connect,
            Gauge::Http => &self.http_connections,
            Gauge::Established => &self.established,
        }
    }

    /// Holds a gauge up for the guard's lifetime.
    pub fn hold(&self, g: Gauge) -> GaugeGuard<'_> {
        let a = self.gauge(g);
        a.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(a)
    }

    /// Counts a dial failure.
    pub fn dial_failure(&self, r: DialFailureReason) {
        *crate::state::lock(&self.dial_failures)
            .entry(r)
            .or_default() += 1;
    }

    /// The count for one reason (tests and status).
    pub fn dial_failures(&self, r: DialFailureReason) -> u64 {
        crate::state::lock(&self.dial_failures)
            .get(&r)
            .copied()
            .unwrap_or(0)
    }

    /// Sets `pending_backend_dials`.
    pub fn set_pending(&self, n: usize) {
        self.pending.store(n as i64, Ordering::Relaxed);
    }

    /// Sets `ready_backends{proxy_strategy}` (and the deprecated total).
    pub fn set_ready_backends(&self, s: Strategy, n: usize) {
        for (st, v) in &self.strategies {
            if *st == s {
                v.store(n as i64, Ordering::Relaxed);
            }
        }
        self.ready_backend_connections
            .store(n as i64, Ordering::Relaxed);
    }

    /// Counts a connection closed for exhausting its buffer budget.
    pub fn buffer_overflow(&self) {
        self.buffer_overflows.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a limit hit (`limit` is the flag name).
    pub fn limit_hit(&self, limit: &'static str) {
        *crate::state::lock(&self.limit_hits).entry(limit).or_default() += 1;
    }

    /// Counts a dial denied by the destination policy.
    pub fn policy_denied(&self) {
        self.policy_denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Open gRPC frontend streams.
    pub fn grpc_proxy_streams(&self) -> i64 {
        self.grpc_proxy.load(Ordering::Relaxed)
    }

    /// Open HTTP-CONNECT connections.
    pub fn http_connections(&self) -> i64 {
        self.http_connections.load(Ordering::Relaxed)
    }

    /// Current `established_connections`.
    pub fn established(&self) -> i64 {
        self.established.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(2048);
        let g = |o: &mut String, name: &str, help: &str, v: i64| {
            let _ = write!(
                o,
                "# HELP {NS}_{name} {help}\n# TYPE {NS}_{name} gauge\n{NS}_{name} {v}\n"
            );
        };
        let _ = write!(
            o,
            "# HELP {NS}_dial_failure_count Number of dial failures observed. Multiple failures can occur for a single dial request.\n# TYPE {NS}_dial_failure_count counter\n"
        );
        for (r, v) in crate::state::lock(&self.dial_failures).iter() {
            let _ = writeln!(o, "{NS}_dial_failure_count{{reason=\"{}\"}} {v}", r.label());
        }
        g(
            &mut o,
            "established_connections",
            "Current number of established end-to-end connections (post-dial).",
            self.established.load(Ordering::Relaxed),
        );
        let _ = write!(
            o,
            "# HELP {NS}_grpc_connections Number of current grpc connections, partitioned by service method.\n# TYPE {NS}_grpc_connections gauge\n"
        );
        let _ = writeln!(
            o,
            "{NS}_grpc_connections{{service_method=\"Connect\"}} {}",
            self.grpc_connect.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "{NS}_grpc_connections{{service_method=\"Proxy\"}} {}",
            self.grpc_proxy.load(Ordering::Relaxed)
        );
        g(
            &mut o,
            "http_connections",
            "Number of current HTTP CONNECT connections",
            self.http_connections.load(Ordering::Relaxed),
        );
        g(
            &mut o,
            "pending_backend_dials",
            "Current number of pending backend dial requests",
            self.pending.load(Ordering::Relaxed),
        );
        g(
            &mut o,
            "ready_backend_connections",
            "Number of konnectivity agent connected to the proxy server. DEPRECATED, please use ready_backends",
            self.ready_backend_connections.load(Ordering::Relaxed),
        );
        let _ = write!(
            o,
            "# HELP {NS}_ready_backends Number of konnectivity agent connected to the proxy server\n# TYPE {NS}_ready_backends gauge\n"
        );
        for (s, v) in &self.strategies {
            let _ = writeln!(
                o,
                "{NS}_ready_backends{{proxy_strategy=\"{}\"}} {}",
                s.name(),
                v.load(Ordering::Relaxed)
            );
        }
        let _ = write!(
            o,
            "# HELP konnectivity_rs_server_buffer_overflow_total Connections closed because their receiver stopped reading and the per-connection buffer budget was exhausted.\n# TYPE konnectivity_rs_server_buffer_overflow_total counter\nkonnectivity_rs_server_buffer_overflow_total {}\n",
            self.buffer_overflows.load(Ordering::Relaxed)
        );
        let _ = write!(o, "# HELP konnectivity_rs_server_limit_hits_total Requests refused because a configured limit was reached, by limit flag.\n# TYPE konnectivity_rs_server_limit_hits_total counter\n");
        for (l, v) in crate::state::lock(&self.limit_hits).iter() {
            let _ = writeln!(o, "konnectivity_rs_server_limit_hits_total{{limit=\"{l}\"}} {v}");
        }
        let _ = write!(o, "# HELP konnectivity_rs_server_destination_denied_total Dials refused by the destination policy.\n# TYPE konnectivity_rs_server_destination_denied_total counter\nkonnectivity_rs_server_destination_denied_total {}\n", self.policy_denied.load(Ordering::Relaxed));
        o
    }
}
