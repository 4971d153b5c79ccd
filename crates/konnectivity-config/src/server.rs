//! `proxy-server` options: its flag table, parsing, and validation.
//!
//! Flag names, types and defaults are upstream's, so that existing manifests start unchanged;
//! [`ServerOptions::validate`] applies upstream's rules in upstream's order with its messages,
//! so the first complaint an operator sees is the same one the Go binary would print.

use std::collections::BTreeMap;

use crate::error::ConfigError;
use crate::files::{check_file, check_pair};
use crate::flags::{binary, options};
use crate::go::duration::GoDuration;
use crate::go::pflag::{FlagKind, FlagSpec, ParsedFlags};
use crate::labels;
use crate::tls::{self, TlsVersion};

/// The command name cobra prints in the usage text.
pub const SERVER_COMMAND: &str = "proxy";

/// Environment variable that provides the default `--server-id`.
pub const SERVER_ID_ENV: &str = "PROXY_SERVER_ID";

/// Frontend protocol (`--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `grpc`: the konnectivity-client `ProxyService`.
    Grpc,
    /// `http-connect`: HTTP/1.1 CONNECT.
    HttpConnect,
}

/// One backend-selection strategy (`--proxy-strategies`), in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyStrategy {
    /// `default`: a random agent.
    Default,
    /// `destHost`: the agent that advertised the destination host/IP.
    DestHost,
    /// `defaultRoute`: a random agent among those advertising `default-route=true`.
    DefaultRoute,
}

impl ProxyStrategy {
    /// The flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyStrategy::Default => "default",
            ProxyStrategy::DestHost => "destHost",
            ProxyStrategy::DefaultRoute => "defaultRoute",
        }
    }
}

/// Parses `--proxy-strategies`: comma list, empty items skipped, names case-sensitive.
/// Errors: `unknown proxy strategy: <s>`, `proxy strategies cannot be empty`.
pub fn parse_proxy_strategies(s: &str) -> Result<Vec<ProxyStrategy>, String> {
    let mut out = Vec::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        out.push(match item {
            "default" => ProxyStrategy::Default,
            "destHost" => ProxyStrategy::DestHost,
            "defaultRoute" => ProxyStrategy::DefaultRoute,
            other => return Err(format!("unknown proxy strategy: {other}")),
        });
    }
    if out.is_empty() {
        return Err("proxy strategies cannot be empty".to_owned());
    }
    Ok(out)
}

options! {
    /// Typed `proxy-server` options, one row per flag. Integer flags keep Go's `int` range so
    /// that validation can report out-of-range values exactly as given.
    #[derive(Clone, Debug, PartialEq)]
    pub struct ServerOptions in SERVER_OWN_FLAGS {
        server_cert: String = "server-cert", "",
            "If non-empty, the certificate served to frontends on TCP.";
        server_key: String = "server-key", "",
            "If non-empty, the private key for --server-cert.";
        server_ca_cert: String = "server-ca-cert", "",
            "If non-empty, the CA that frontend (kube-apiserver) client certificates must chain to.";
        cluster_cert: String = "cluster-cert", "",
            "If non-empty, the certificate served to agents.";
        cluster_key: String = "cluster-key", "",
            "If non-empty, the private key for --cluster-cert.";
        cluster_ca_cert: String = "cluster-ca-cert", "",
            "If non-empty, the CA that agent client certificates must chain to.";
        /// As given; see [`ServerOptions::mode`].
        mode: String = "mode", "grpc",
            "Frontend protocol: 'grpc' or 'http-connect'.";
        uds_name: String = "uds-name", "",
            "Unix socket path for the frontend; empty means TCP.";
        delete_existing_uds_file: bool = "delete-existing-uds-file", "true",
            "If true, remove an existing file at --uds-name before listening.";
        server_port: i64 = "server-port", "8090",
            "Frontend TCP port. Must be 0 when --uds-name is set.";
        server_bind_address: String = "server-bind-address", "",
            "Frontend bind address; empty binds all interfaces.";
        agent_port: i64 = "agent-port", "8091",
            "Port for agent connections.";
        agent_bind_address: String = "agent-bind-address", "",
            "Agent listener bind address; empty binds all interfaces.";
        admin_port: i64 = "admin-port", "8095",
            "Port for the admin endpoint.";
        admin_bind_address: String = "admin-bind-address", "127.0.0.1",
            "Admin endpoint bind address.";
        health_port: i64 = "health-port", "8092",
            "Port for the health endpoint.";
        health_bind_address: String = "health-bind-address", "",
            "Health endpoint bind address; empty binds all interfaces.";
        keepalive_time: GoDuration = "keepalive-time", "1h0m0s",
            "Keepalive ping interval on agent connections.";
        frontend_keepalive_time: GoDuration = "frontend-keepalive-time", "1h0m0s",
            "Keepalive ping interval on gRPC frontend connections.";
        enable_profiling: bool = "enable-profiling", "false",
            "Serve profiling data at host:admin-port/debug/pprof.";
        enable_contention_profiling: bool = "enable-contention-profiling", "false",
            "Also profile lock contention; requires --enable-profiling.";
        server_id: String = "server-id", "",
            "Unique ID of this server; defaults to $PROXY_SERVER_ID, else a random UUID.";
        server_count: i64 = "server-count", "1",
            "Number of proxy server instances; 1 unless running HA.";
        agent_namespace: String = "agent-namespace", "",
            "Namespace expected in agent service-account tokens (enables token authentication).";
        agent_service_account: String = "agent-service-account", "",
            "Service account expected in agent tokens (enables token authentication).";
        kubeconfig: String = "kubeconfig", "",
            "Path to a kubeconfig file; empty uses the in-cluster configuration.";
        kubeconfig_qps: f32 = "kubeconfig-qps", "0",
            "Kubernetes client QPS limit (0 uses the client default).";
        kubeconfig_burst: i64 = "kubeconfig-burst", "0",
            "Kubernetes client burst limit (0 uses the client default).";
        kube_api_content_type: String = "kube-api-content-type", "application/vnd.kubernetes.protobuf",
            "Content type of requests to the Kubernetes API.";
        authentication_audience: String = "authentication-audience", "",
            "Audience expected in agent tokens (enables token authentication).";
        /// As given; see [`ServerOptions::proxy_strategies`].
        proxy_strategies: String = "proxy-strategies", "default",
            "Ordered, comma-separated agent selection strategies: default, destHost, defaultRoute.";
        cipher_suites: Vec<String> = "cipher-suites", "[]",
            "Comma-separated TLS 1.2 cipher suites to allow; empty uses the default list. No effect on TLS 1.3.";
        /// As given; see [`ServerOptions::tls_min_version`].
        tls_min_version: String = "tls-min-version", "",
            "Minimum TLS version: VersionTLS10, VersionTLS11, VersionTLS12 or VersionTLS13; empty means VersionTLS12.";
        xfr_channel_size: i64 = "xfr-channel-size", "10",
            "Capacity of each per-stream receive queue (frontend and agent streams).";
        enable_lease_controller: bool = "enable-lease-controller", "false",
            "Publish this server's Lease and garbage-collect expired ones.";
        lease_namespace: String = "lease-namespace", "kube-system",
            "Namespace of the server Leases.";
        /// As given; see [`ServerOptions::lease_labels`].
        lease_label: String = "lease-label", "k8s-app=konnectivity-server",
            "Labels (k=v[,k=v]) put on the server Lease and used to select Leases for garbage collection.";
        graceful_shutdown_timeout: GoDuration = "graceful-shutdown-timeout", "0s",
            "Upper bound on waiting for connections to finish at shutdown; 0 shuts down at once.";
        backend_dial_timeout: GoDuration = "backend-dial-timeout", "0s",
            "How long a dial to an agent may wait for its response; 0 disables the timeout.";
    }
    also [
        FlagSpec::new("warn-on-channel-limit", FlagKind::Bool, "true", "No effect; kept for compatibility.")
            .deprecated("This behavior is now thread safe and always on. This flag will be removed in a future release."),
        FlagSpec::new("help", FlagKind::Bool, "false", "help for proxy").with_shorthand('h'),
    ]
    extra binary {
        /// True when the deprecated no-op `--warn-on-channel-limit` was given.
        warn_on_channel_limit_used: bool = false,
            read |p: &ParsedFlags| p.is_set("warn-on-channel-limit");
    }
}

binary! {
    ServerOptions {
        name: "proxy-server",
        server: true,
        validates: "server",
        command: SERVER_COMMAND,
        table: SERVER_OWN_FLAGS,
        flags: server_flags,
        id: server_id = "server-id" from SERVER_ID_ENV,
        with_id: with_server_id,
        default_id: default_server_id,
    }
}

impl ServerOptions {
    fn check(&self) -> Result<(), String> {
        // 1-6: key/cert pairs and CA files.
        check_pair("server", &self.server_key, &self.server_cert)?;
        check_file(&self.server_ca_cert, |p, e| {
            format!("error checking server CA cert {p}, got {e}")
        })?;
        check_pair("cluster", &self.cluster_key, &self.cluster_cert)?;
        check_file(&self.cluster_ca_cert, |p, e| {
            format!("error checking cluster CA cert {p}, got {e}")
        })?;
        // 7: mode.
        self.mode().map_err(|e| e.to_string())?;
        // 8: UDS versus TCP frontend.
        if !self.uds_name.is_empty() {
            if self.server_port != 0 {
                return Err(format!(
                    "server port should be set to 0 not {} for UDS",
                    self.server_port
                ));
            }
            if !self.server_key.is_empty() {
                return Err("server key should not be set for UDS".to_owned());
            }
            if !self.server_cert.is_empty() {
                return Err("server cert should not be set for UDS".to_owned());
            }
            if !self.server_ca_cert.is_empty() {
                return Err("server ca cert should not be set for UDS".to_owned());
            }
        } else if self.server_ca_cert.is_empty() {
            return Err(
                "server ca cert must be set when in TCP mode (uds-name is empty)".to_owned(),
            );
        }
        // 9-10: port ranges.
        let ports = [
            ("server", self.server_port),
            ("agent", self.agent_port),
            ("admin", self.admin_port),
            ("health", self.health_port),
        ];
        for (name, port) in ports {
            if port > 49151 {
                return Err(format!(
                    "please do not try to use ephemeral port {port} for the {name} port"
                ));
            }
        }
        for (name, port) in ports {
            let uds_exempt = name == "server" && !self.uds_name.is_empty();
            if port < 1024 && !uds_exempt {
                return Err(format!(
                    "please do not try to use reserved port {port} for the {name} port"
                ));
            }
        }
        // 11: profiling.
        if self.enable_contention_profiling && !self.enable_profiling {
            return Err(
                "if --enable-contention-profiling is set, --enable-profiling must also be set"
                    .to_owned(),
            );
        }
        // 12: token authentication.
        if self.token_auth_enabled() {
            if !self.cluster_ca_cert.is_empty() {
                return Err(
                    "--cluster-ca-cert can not be used when agent authentication is enabled"
                        .to_owned(),
                );
            }
            for (flag, value) in [
                ("agent-namespace", &self.agent_namespace),
                ("agent-service-account", &self.agent_service_account),
                ("authentication-audience", &self.authentication_audience),
            ] {
                if value.is_empty() {
                    return Err(format!(
                        "--{flag} cannot be empty when agent authentication is enabled"
                    ));
                }
            }
        }
        // 13: kubeconfig.
        check_file(&self.kubeconfig, |p, e| {
            format!(
                "checking KubeconfigPath {}, got {e}",
                crate::go::strconv::quote(p)
            )
        })?;
        // 14: strategies.
        self.proxy_strategies().map_err(|e| e.to_string())?;
        // 15: channel size.
        if self.xfr_channel_size <= 0 {
            return Err(format!(
                "channel size {} must be greater than 0",
                self.xfr_channel_size
            ));
        }
        // 16-17: TLS.
        self.tls_min_version().map_err(|e| e.to_string())?;
        tls::validate_cipher_suites(&self.cipher_suites)?;
        // 18: lease labels, only when they will be used for leases.
        if self.enable_lease_controller {
            labels::parse_lease_labels(&self.lease_label)?;
        }
        // 19: timeouts.
        if self.graceful_shutdown_timeout.is_negative() {
            return Err(format!(
                "graceful-shutdown-timeout must be >= 0, got {}",
                self.graceful_shutdown_timeout
            ));
        }
        if self.backend_dial_timeout.is_negative() {
            return Err(format!(
                "backend-dial-timeout must be >= 0, got {}",
                self.backend_dial_timeout
            ));
        }
        Ok(())
    }

    /// `--mode` parsed.
    pub fn mode(&self) -> Result<Mode, ConfigError> {
        match self.mode.as_str() {
            "grpc" => Ok(Mode::Grpc),
            "http-connect" => Ok(Mode::HttpConnect),
            other => Err(ConfigError::Invalid(format!(
                "mode must be set to either 'grpc' or 'http-connect' not {}",
                crate::go::strconv::quote(other)
            ))),
        }
    }

    /// `--proxy-strategies` parsed, in order.
    pub fn proxy_strategies(&self) -> Result<Vec<ProxyStrategy>, ConfigError> {
        if self.proxy_strategies.is_empty() {
            return Err(ConfigError::Invalid(
                "ProxyStrategies cannot be empty".to_owned(),
            ));
        }
        parse_proxy_strategies(&self.proxy_strategies)
            .map_err(|e| ConfigError::Invalid(format!("invalid proxy strategies: {e}")))
    }

    /// `--tls-min-version` parsed (empty ⇒ TLS 1.2).
    pub fn tls_min_version(&self) -> Result<TlsVersion, ConfigError> {
        TlsVersion::parse(&self.tls_min_version).map_err(ConfigError::Invalid)
    }

    /// `--lease-label` parsed into a sorted map (needed by the lease controller).
    pub fn lease_labels(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        labels::parse_lease_labels(&self.lease_label).map_err(ConfigError::Invalid)
    }

    /// Token authentication is on when any of namespace / service account / audience is set.
    pub fn token_auth_enabled(&self) -> bool {
        !self.agent_namespace.is_empty()
            || !self.agent_service_account.is_empty()
            || !self.authentication_audience.is_empty()
    }

    /// A Kubernetes client is needed for token reviews or the lease controller.
    pub fn needs_kubernetes_client(&self) -> bool {
        self.token_auth_enabled() || self.enable_lease_controller
    }
}

#[cfg(test)]
mod tests;
