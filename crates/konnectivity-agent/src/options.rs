//! From proxy-agent's flags ([`AgentOptions`]) to what the agent runs with ([`Settings`],
//! [`Hello`], its TLS client).
//!
//! One mapping, used by the `proxy-agent` binary and by `konnectivity doctor agent`, so that
//! the doctor checks exactly what the agent would do with the same flags (which ALPN
//! protocols it offers, which hosts it dials, what it announces). [`Settings::new`] gives
//! in-process agents (demo, bench, tests) upstream's defaults without repeating them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use konnectivity_config::{AgentOptions, GoDuration};
use konnectivity_tls::{ClientConfig, TlsError};

use crate::{Hello, Settings};

/// Flags that cannot become settings (the binary's start-up messages).
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// No `--ca-cert`: the agent could not verify the server.
    #[error("--ca-cert is required: the agent verifies the proxy-server's certificate")]
    NoCaCert,
    /// The TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A port flag outside 0..=65535.
    #[error("port {0} out of range")]
    PortOutOfRange(i64),
    /// `--proxy-server-host` named no host.
    #[error("--proxy-server-host must name at least one host")]
    NoHosts,
}

/// A port flag as a port number.
pub fn port(p: i64) -> Result<u16, OptionsError> {
    u16::try_from(p).map_err(|_| OptionsError::PortOutOfRange(p))
}

/// The ALPN protocols offered before `h2` (`--alpn-proto`; empty items and a literal `[]`
/// mean none).
pub fn alpn_protocols(o: &AgentOptions) -> Vec<String> {
    o.alpn_proto
        .iter()
        .filter(|a| !a.is_empty() && a.as_str() != "[]")
        .cloned()
        .collect()
}

/// The client certificate and key (`--agent-cert`, `--agent-key`) when both are given.
pub fn client_identity(o: &AgentOptions) -> Option<(&Path, &Path)> {
    (!o.agent_cert.is_empty() && !o.agent_key.is_empty())
        .then(|| (Path::new(&o.agent_cert), Path::new(&o.agent_key)))
}

/// The TLS client toward the servers: trust `--ca-cert`, present the client certificate if
/// any, offer the `--alpn-proto` protocols then `h2`.
pub fn client_tls(o: &AgentOptions) -> Result<ClientConfig, OptionsError> {
    if o.ca_cert.is_empty() {
        return Err(OptionsError::NoCaCert);
    }
    Ok(konnectivity_tls::agent_client(
        Path::new(&o.ca_cert),
        client_identity(o),
        &alpn_protocols(o),
    )?)
}

fn std(d: GoDuration) -> Duration {
    d.to_std().unwrap_or_default()
}

impl Hello {
    /// An agent announcing `agent_id`, without identifiers or token, with flow control on.
    pub fn new(agent_id: impl Into<String>) -> Self {
        Hello {
            agent_id: agent_id.into(),
            identifiers: String::new(),
            token_path: None,
            flow_window: Some(konnectivity_core::flow::DEFAULT_WINDOW),
            probe: false,
        }
    }

    /// What the agent with these flags announces (`--agent-id`, `--agent-identifiers`,
    /// `--service-account-token-path`), with flow control on.
    pub fn from_options(o: &AgentOptions) -> Self {
        Hello {
            identifiers: o.agent_identifiers.clone(),
            token_path: (!o.service_account_token_path.is_empty())
                .then(|| PathBuf::from(&o.service_account_token_path)),
            ..Hello::new(o.agent_id.clone())
        }
    }
}

impl Settings {
    /// An agent dialing `hosts` on `port` with `tls` and announcing `hello`, every other
    /// setting at proxy-agent's flag defaults (sync every 1 s, backing off to 10 s,
    /// keepalive 1 h, drain 5 min, no lease counting, every destination allowed).
    pub fn new(hosts: Vec<String>, port: u16, tls: Arc<ClientConfig>, hello: Hello) -> Self {
        let defaults = AgentOptions::with_agent_id(String::new());
        Self::with_flags(&defaults, hosts, port, tls, hello)
    }

    /// The settings of proxy-agent started with these (validated) flags, except lease
    /// counting, which needs a Kubernetes client (the caller sets `leases`).
    pub fn from_options(o: &AgentOptions, tls: Arc<ClientConfig>) -> Result<Self, OptionsError> {
        let hosts = o.server_hosts();
        if hosts.is_empty() {
            return Err(OptionsError::NoHosts);
        }
        let port = port(o.proxy_server_port)?;
        Ok(Self::with_flags(
            o,
            hosts,
            port,
            tls,
            Hello::from_options(o),
        ))
    }

    /// The peer and identity given, the rest from the flags.
    fn with_flags(
        o: &AgentOptions,
        hosts: Vec<String>,
        port: u16,
        tls: Arc<ClientConfig>,
        hello: Hello,
    ) -> Self {
        Settings {
            hosts,
            port,
            tls,
            hello,
            sync_interval: std(o.sync_interval).max(Duration::from_millis(10)),
            sync_interval_cap: std(o.sync_interval_cap),
            sync_forever: o.sync_forever,
            keepalive: std(o.keepalive_time),
            max_chunk: konnectivity_core::flow::MAX_CHUNK,
            leases: None,
            drain_timeout: std(o.ext.drain_timeout),
            policy: o.ext.policy(),
            udp: crate::stream::udp::UdpSettings {
                idle_timeout: std(o.ext.udp_idle_timeout),
                max_sockets: usize::try_from(o.ext.max_udp_sockets).unwrap_or(0),
            },
        }
    }
}
