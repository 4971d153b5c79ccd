//! Flags konnectivity-rs adds to upstream's (safety limits and destination policy).
//! Upstream's binaries do not have them; every one defaults to a safe value that does
//! not change what an upstream-compatible deployment can do, except where noted.
use std::time::Duration;

use konnectivity_core::policy::DestinationPolicy;

use crate::flags::{FlagSet, non_negative, non_negative_duration, options, positive_duration};
use crate::go::duration::GoDuration;
use crate::go::pflag::{FlagSpec, ParsedFlags};

options! {
    /// Values of the extension flags. Rows run their checks in this order; `@server` and
    /// `@agent` rows belong to one binary.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Extensions in EXT_FLAGS {
        allowed_cidrs: Vec<String> = "allowed-destination-cidrs", "[]",
            "konnectivity-rs: only dial destinations inside these CIDRs (e.g. the node, pod and service CIDRs); empty allows all.";
        allowed_ports: Vec<String> = "allowed-destination-ports", "[]",
            "konnectivity-rs: only dial these destination ports or port ranges (e.g. 10250,30000-32767); empty allows all.";
        max_buffered_bytes: i64 = "max-buffered-bytes", "268435456",
            "konnectivity-rs: bytes queued for slow consumers, summed over all connections, above which reading from peers without flow control pauses (they wait in HTTP/2 flow control); 0 is unlimited.",
            check non_negative;
        @server max_pending_dials_per_agent: i64 = "max-pending-dials-per-agent", "1000",
            "konnectivity-rs: dials waiting for one agent stream's answer beyond this are refused; 0 is unlimited.",
            check non_negative;
        @server max_connections_per_agent: i64 = "max-connections-per-agent", "20000",
            "konnectivity-rs: established connections over one agent stream beyond this are refused; 0 is unlimited.",
            check non_negative;
        stall_timeout: GoDuration = "stall-timeout", "10s",
            "konnectivity-rs: a connection whose consumer makes no progress for this long while over its buffer budget is closed as stalled.",
            check positive_duration;
        @server dial_deadline: GoDuration = "dial-deadline", "1m0s",
            "konnectivity-rs: a pending dial is failed after this long when --backend-dial-timeout is 0 (upstream would wait forever); 0 disables.",
            check non_negative_duration;
        @server authentication_cache_ttl: GoDuration = "authentication-cache-ttl", "10s",
            "konnectivity-rs: how long a successful TokenReview is trusted before the token is reviewed again; 0 disables the cache.",
            check non_negative_duration;
        @server connect_header_timeout: GoDuration = "connect-header-timeout", "1m0s",
            "konnectivity-rs: an HTTP-CONNECT client must send its whole request head within this time.",
            check non_negative_duration;
        @server socks5_port: i64 = "socks5-port", "0",
            "konnectivity-rs: serve a SOCKS5 frontend (RFC 1928 CONNECT, and UDP ASSOCIATE with --enable-udp) on this port of --socks5-bind-address; 0 is off.",
            check port_or_zero;
        @server socks5_bind_address: String = "socks5-bind-address", "127.0.0.1",
            "konnectivity-rs: the address the SOCKS5 port listens on; must be a loopback address unless --socks5-auth-file or --socks5-tls-cert-file is set (without them the SOCKS5 frontend authenticates nobody).",
            check ip_address;
        @server socks5_uds: String = "socks5-uds", "",
            "konnectivity-rs: serve a SOCKS5 frontend on this UNIX socket (mode 0770, like --uds-name); empty is off.";
        @server socks5_auth_file: String = "socks5-auth-file", "",
            "konnectivity-rs: require RFC 1929 username/password on the SOCKS5 frontends, checked against this file's user:password lines (keep it unreadable to others); empty: no authentication, loopback and UNIX socket only.";
        @server socks5_tls_cert_file: String = "socks5-tls-cert-file", "",
            "konnectivity-rs: serve --socks5-port over TLS with this certificate (and --socks5-tls-key-file), requiring a client certificate signed by --socks5-tls-client-ca-file; empty: plain TCP.";
        @server socks5_tls_key_file: String = "socks5-tls-key-file", "",
            "konnectivity-rs: the private key of --socks5-tls-cert-file.";
        @server socks5_tls_client_ca_file: String = "socks5-tls-client-ca-file", "",
            "konnectivity-rs: the CA that signs SOCKS5 client certificates; empty: --server-ca-cert, the frontend client CA.";
        @server enable_udp: bool = "enable-udp", "false",
            "konnectivity-rs: accept DialRequest.protocol \"udp\" from gRPC frontends (one datagram per DATA packet, sent to the agent as \"udp\"); off, it is refused like any protocol but tcp.";
        @agent udp_idle_timeout: GoDuration = "udp-idle-timeout", "1m0s",
            "konnectivity-rs: a UDP connection with no datagram either way for this long is closed (CLOSE_RSP).",
            check positive_duration;
        @agent max_udp_sockets: i64 = "max-udp-sockets", "1024",
            "konnectivity-rs: UDP sockets open at once on this agent beyond this are refused at dial; 0 serves no UDP.",
            check non_negative;
        @agent node_name: String = "node-name", "",
            "konnectivity-rs: this node's Node name (the DaemonSet passes spec.nodeName via the downward API); the agent reads that Node through the API (--kubeconfig, else in-cluster; needs get and watch on nodes) and announces its spec.podCIDRs as cidr= identifiers beside --agent-identifiers, reconnecting when they change; empty is off.";
        @agent drain_timeout: GoDuration = "drain-timeout", "5m0s",
            "konnectivity-rs: after SIGTERM, how long established connections may keep the draining agent running.",
            check non_negative_duration;
    }
    also []
    extra {}
}

/// Row check: a TCP port, 0 meaning off.
fn port_or_zero(v: &i64) -> Result<(), String> {
    if !(0..=65535).contains(v) {
        return Err(format!("must be a port (0 is off), got {v}"));
    }
    Ok(())
}

/// Row check: an IP address.
fn ip_address(v: &String) -> Result<(), String> {
    match v.parse::<std::net::IpAddr>() {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("must be an IP address, got {v:?}")),
    }
}

impl Extensions {
    /// Without `--socks5-auth-file` or mTLS the SOCKS5 frontend authenticates nobody, so
    /// it must not be reachable from the network: `--socks5-bind-address` must be
    /// loopback. The TLS certificate and key come together.
    fn check_socks5_exposure(&self) -> Result<(), String> {
        if self.socks5_tls_cert_file.is_empty() != self.socks5_tls_key_file.is_empty() {
            return Err(
                "--socks5-tls-cert-file and --socks5-tls-key-file must be set together".into(),
            );
        }
        let loopback = self
            .socks5_bind_address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if !loopback && self.socks5_auth_file.is_empty() && !self.socks5_tls() {
            return Err(format!(
                "--socks5-bind-address must be a loopback address such as 127.0.0.1 or ::1 unless --socks5-auth-file or --socks5-tls-cert-file is set (without them the SOCKS5 frontend authenticates nobody), got {:?}",
                self.socks5_bind_address
            ));
        }
        Ok(())
    }

    /// Whether `--socks5-port` speaks TLS with client certificates.
    pub fn socks5_tls(&self) -> bool {
        !self.socks5_tls_cert_file.is_empty()
    }
}

/// The extension flags the server (`server`) or the agent (`!server`) accepts.
pub(crate) fn flags_of(server: bool) -> impl Iterator<Item = &'static FlagSpec> {
    EXT_FLAGS
        .iter()
        .filter(move |f| Extensions::scope(f.name).includes(server))
}

impl Default for Extensions {
    fn default() -> Self {
        Self::declared_defaults()
    }
}

impl Extensions {
    pub(crate) fn from_flags(p: &ParsedFlags) -> Self {
        let mut e = Extensions::default();
        e.read_flags(p);
        e
    }

    /// Validation; messages name the flag.
    pub fn check(&self) -> Result<(), String> {
        DestinationPolicy::parse(&self.allowed_cidrs, &self.allowed_ports)
            .map_err(|e| format!("--allowed-destination-cidrs/--allowed-destination-ports: {e}"))?;
        self.check_rows()?;
        self.check_socks5_exposure()
    }

    /// The destination policy (valid after [`Extensions::check`]).
    pub fn policy(&self) -> DestinationPolicy {
        DestinationPolicy::parse(&self.allowed_cidrs, &self.allowed_ports).unwrap_or_default()
    }

    /// Each extension flag of the server (`server`) or the agent with its value in pflag's
    /// form.
    pub fn flag_values(&self, server: bool) -> Vec<(&'static str, String)> {
        let mut v = self.declared_values();
        v.retain(|(name, _)| Self::scope(name).includes(server));
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
