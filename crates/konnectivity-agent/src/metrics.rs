//! The agent's Prometheus metrics (a first subset of upstream's catalogue, same names
//! and HELP texts).
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use konnectivity_core::address::DialFailure;

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
}

impl Metrics {
    /// Counts a failed destination dial.
    pub fn dial_failure(&self, why: DialFailure) {
        match why {
            DialFailure::Timeout => self.dial_timeout.fetch_add(1, Ordering::Relaxed),
            DialFailure::Unknown => self.dial_unknown.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(1024);
        let _ = write!(
            o,
            "# HELP {NS}_endpoint_dial_failure_total Number of failures dialing the remote endpoint, by reason (example: timeout).\n# TYPE {NS}_endpoint_dial_failure_total counter\n"
        );
        for (label, v) in [
            ("timeout", &self.dial_timeout),
            ("unknown", &self.dial_unknown),
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
    pub fn render_extra(&self, connected: usize, want: usize) -> String {
        format!(
            "# HELP konnectivity_rs_agent_degraded 1 while the agent is connected to fewer servers than it should be.\n# TYPE konnectivity_rs_agent_degraded gauge\nkonnectivity_rs_agent_degraded {}\n",
            u8::from(connected < want)
        )
    }
}
