//! Flags konnectivity-rs adds to upstream's (safety limits and destination policy).
//! Upstream's binaries do not have them; every one defaults to a safe value that does
//! not change what an upstream-compatible deployment can do, except where noted.
use std::time::Duration;

use konnectivity_core::policy::DestinationPolicy;

use crate::duration::GoDuration;
use crate::pflag::{FlagKind, FlagSpec, ParsedFlags};

/// Extension flags of both binaries.
pub(crate) static COMMON_EXT_FLAGS: &[FlagSpec] = &[
    FlagSpec::new(
        "allowed-destination-cidrs",
        FlagKind::StringSlice,
        "[]",
        "konnectivity-rs: only dial destinations inside these CIDRs (e.g. the node, pod and service CIDRs); empty allows all.",
    ),
    FlagSpec::new(
        "allowed-destination-ports",
        FlagKind::StringSlice,
        "[]",
        "konnectivity-rs: only dial these destination ports or port ranges (e.g. 10250,30000-32767); empty allows all.",
    ),
    FlagSpec::new(
        "max-buffered-bytes",
        FlagKind::Int,
        "268435456",
        "konnectivity-rs: bytes queued for slow consumers, summed over all connections, above which reading from peers without flow control pauses (they wait in HTTP/2 flow control); 0 is unlimited.",
    ),
    FlagSpec::new(
        "stall-timeout",
        FlagKind::Duration,
        "10s",
        "konnectivity-rs: a connection whose consumer makes no progress for this long while over its buffer budget is closed as stalled.",
    ),
];

/// Extension flags of proxy-server.
pub(crate) static SERVER_EXT_FLAGS: &[FlagSpec] = &[
    FlagSpec::new(
        "max-pending-dials-per-agent",
        FlagKind::Int,
        "1000",
        "konnectivity-rs: dials waiting for one agent stream's answer beyond this are refused; 0 is unlimited.",
    ),
    FlagSpec::new(
        "max-connections-per-agent",
        FlagKind::Int,
        "20000",
        "konnectivity-rs: established connections over one agent stream beyond this are refused; 0 is unlimited.",
    ),
    FlagSpec::new(
        "dial-deadline",
        FlagKind::Duration,
        "1m0s",
        "konnectivity-rs: a pending dial is failed after this long when --backend-dial-timeout is 0 (upstream would wait forever); 0 disables.",
    ),
    FlagSpec::new(
        "authentication-cache-ttl",
        FlagKind::Duration,
        "10s",
        "konnectivity-rs: how long a successful TokenReview is trusted before the token is reviewed again; 0 disables the cache.",
    ),
    FlagSpec::new(
        "connect-header-timeout",
        FlagKind::Duration,
        "1m0s",
        "konnectivity-rs: an HTTP-CONNECT client must send its whole request head within this time.",
    ),
];

/// Extension flags of proxy-agent.
pub(crate) static AGENT_EXT_FLAGS: &[FlagSpec] = &[FlagSpec::new(
    "drain-timeout",
    FlagKind::Duration,
    "5m0s",
    "konnectivity-rs: after SIGTERM, how long established connections may keep the draining agent running.",
)];

/// Values of the extension flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Extensions {
    /// `--allowed-destination-cidrs`.
    pub allowed_cidrs: Vec<String>,
    /// `--allowed-destination-ports`.
    pub allowed_ports: Vec<String>,
    /// `--max-buffered-bytes`.
    pub max_buffered_bytes: i64,
    /// `--stall-timeout`.
    pub stall_timeout: GoDuration,
    /// `--max-pending-dials-per-agent` (server).
    pub max_pending_dials_per_agent: i64,
    /// `--max-connections-per-agent` (server).
    pub max_connections_per_agent: i64,
    /// `--dial-deadline` (server).
    pub dial_deadline: GoDuration,
    /// `--authentication-cache-ttl` (server).
    pub authentication_cache_ttl: GoDuration,
    /// `--connect-header-timeout` (server).
    pub connect_header_timeout: GoDuration,
    /// `--drain-timeout` (agent).
    pub drain_timeout: GoDuration,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            allowed_cidrs: Vec::new(),
            allowed_ports: Vec::new(),
            max_buffered_bytes: 256 << 20,
            stall_timeout: GoDuration::from_secs(10),
            max_pending_dials_per_agent: 1000,
            max_connections_per_agent: 20_000,
            dial_deadline: GoDuration::from_secs(60),
            authentication_cache_ttl: GoDuration::from_secs(10),
            connect_header_timeout: GoDuration::from_secs(60),
            drain_timeout: GoDuration::from_secs(300),
        }
    }
}

impl Extensions {
    pub(crate) fn from_flags(p: &ParsedFlags) -> Self {
        let mut e = Extensions::default();
        if let Some(v) = p.string_slice("allowed-destination-cidrs") {
            e.allowed_cidrs = v.to_vec();
        }
        if let Some(v) = p.string_slice("allowed-destination-ports") {
            e.allowed_ports = v.to_vec();
        }
        if let Some(v) = p.int("max-buffered-bytes") {
            e.max_buffered_bytes = v;
        }
        if let Some(v) = p.int("max-pending-dials-per-agent") {
            e.max_pending_dials_per_agent = v;
        }
        if let Some(v) = p.int("max-connections-per-agent") {
            e.max_connections_per_agent = v;
        }
        for (name, slot) in [
            ("stall-timeout", &mut e.stall_timeout),
            ("dial-deadline", &mut e.dial_deadline),
            ("authentication-cache-ttl", &mut e.authentication_cache_ttl),
            ("connect-header-timeout", &mut e.connect_header_timeout),
            ("drain-timeout", &mut e.drain_timeout),
        ] {
            if let Some(d) = p.duration(name) {
                *slot = d;
            }
        }
        e
    }

    /// Validation; messages name the flag.
    pub fn check(&self) -> Result<(), String> {
        DestinationPolicy::parse(&self.allowed_cidrs, &self.allowed_ports)
            .map_err(|e| format!("--allowed-destination-cidrs/--allowed-destination-ports: {e}"))?;
        for (name, v) in [
            ("--max-buffered-bytes", self.max_buffered_bytes),
            (
                "--max-pending-dials-per-agent",
                self.max_pending_dials_per_agent,
            ),
            (
                "--max-connections-per-agent",
                self.max_connections_per_agent,
            ),
        ] {
            if v < 0 {
                return Err(format!("{name} must be >= 0, got {v}"));
            }
        }
        if self.stall_timeout.to_std().is_none_or(|d| d.is_zero()) {
            return Err(format!(
                "--stall-timeout must be > 0, got {}",
                self.stall_timeout
            ));
        }
        for (name, d) in [
            ("--dial-deadline", self.dial_deadline),
            ("--authentication-cache-ttl", self.authentication_cache_ttl),
            ("--connect-header-timeout", self.connect_header_timeout),
            ("--drain-timeout", self.drain_timeout),
        ] {
            if d.is_negative() {
                return Err(format!("{name} must be >= 0, got {d}"));
            }
        }
        Ok(())
    }

    /// The destination policy (valid after [`Extensions::check`]).
    pub fn policy(&self) -> DestinationPolicy {
        DestinationPolicy::parse(&self.allowed_cidrs, &self.allowed_ports).unwrap_or_default()
    }

    /// Each extension flag with its value in pflag's form.
    pub fn flag_values(&self, server: bool) -> Vec<(&'static str, String)> {
        use crate::pflag::format_string_slice;
        let mut v = vec![
            (
                "allowed-destination-cidrs",
                format_string_slice(&self.allowed_cidrs),
            ),
            (
                "allowed-destination-ports",
                format_string_slice(&self.allowed_ports),
            ),
            ("max-buffered-bytes", self.max_buffered_bytes.to_string()),
            ("stall-timeout", self.stall_timeout.to_string()),
        ];
        if server {
            v.extend([
                (
                    "max-pending-dials-per-agent",
                    self.max_pending_dials_per_agent.to_string(),
                ),
                (
                    "max-connections-per-agent",
                    self.max_connections_per_agent.to_string(),
                ),
                ("dial-deadline", self.dial_deadline.to_string()),
                (
                    "authentication-cache-ttl",
                    self.authentication_cache_ttl.to_string(),
                ),
                (
                    "connect-header-timeout",
                    self.connect_header_timeout.to_string(),
                ),
            ]);
        } else {
            v.push(("drain-timeout", self.drain_timeout.to_string()));
        }
        v
    }

    /// `--max-buffered-bytes` as a byte count (valid after [`Extensions::check`]).
    pub fn buffer_budget(&self) -> usize {
        usize::try_from(self.max_buffered_bytes).unwrap_or(0)
    }

    /// A non-negative duration as `std`, zero when negative.
    pub fn std(d: GoDuration) -> Duration {
        d.to_std().unwrap_or_default()
    }
}
