//! `proxy-server` options: its flag table, parsing, and validation.
//!
//! Flag names, types and defaults are upstream's, so that existing manifests start unchanged;
//! [`ServerOptions::validate`] applies upstream's rules in upstream's order with its messages,
//! so the first complaint an operator sees is the same one the Go binary would print.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::duration::GoDuration;
use crate::error::ConfigError;
use crate::extensions::{self, Extensions};
use crate::files::check_file;
use crate::flags::{FlagSet, options};
use crate::labels;
use crate::logging::{KLOG_FLAGS, LogOptions};
use crate::pflag::{self, FlagKind, FlagSpec};
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

/// The default `--server-id`: the environment value when non-empty, else a random UUIDv4.
pub fn default_server_id(env_value: Option<String>) -> String {
    env_value
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
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
    extra {
        /// True when the deprecated no-op `--warn-on-channel-limit` was given.
        warn_on_channel_limit_used: bool = false;
        /// klog flags.
        log: LogOptions = LogOptions::default();
        /// Flags given on the command line, in order of first use.
        explicit_flags: Vec<String> = Vec::new();
        /// konnectivity-rs extension flags.
        ext: Extensions = Extensions::default();
        /// Notices to print for deprecated flags that were used (pflag's wording).
        deprecation_notices: Vec<String> = Vec::new();
    }
}

/// Every flag `proxy-server` accepts (its own, klog's and `--help`), sorted by name.
pub fn server_flags() -> &'static [FlagSpec] {
    static ALL: OnceLock<Vec<FlagSpec>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all: Vec<FlagSpec> = SERVER_OWN_FLAGS
            .iter()
            .chain(KLOG_FLAGS)
            .chain(extensions::flags_of(true))
            .copied()
            .collect();
        all.sort_by_key(|s| s.name);
        all
    })
}

impl Default for ServerOptions {
    /// Upstream defaults; `server_id` from `$PROXY_SERVER_ID` or a fresh UUID.
    fn default() -> Self {
        Self::with_server_id(default_server_id(std::env::var(SERVER_ID_ENV).ok()))
    }
}

impl ServerOptions {
    /// Upstream defaults with the given server ID.
    pub fn with_server_id(server_id: String) -> Self {
        ServerOptions {
            server_id,
            ..Self::declared_defaults()
        }
    }

    /// Parses the arguments (without the program name). Does not validate.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<ServerOptions, ConfigError> {
        let p = pflag::parse(server_flags(), SERVER_COMMAND, args)?;
        let mut o = if p.is_set("server-id") {
            Self::with_server_id(String::new())
        } else {
            Self::default()
        };
        o.read_flags(&p);
        o.warn_on_channel_limit_used = p.is_set("warn-on-channel-limit");
        o.log = LogOptions::from_flags(&p);
        o.ext = Extensions::from_flags(&p);
        o.explicit_flags = p.explicit_flags().iter().map(|n| (*n).to_owned()).collect();
        o.deprecation_notices = p.deprecation_notices().to_vec();
        Ok(o)
    }

    /// Applies upstream's validation rules in order; the first failure is returned as
    /// `failed to validate server options with <msg>`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().and_then(|()| self.ext.check()).map_err(|msg| {
            ConfigError::Invalid(format!("failed to validate server options with {msg}"))
        })
    }

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
                crate::strconv::quote(p)
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
                crate::strconv::quote(other)
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

    /// Every flag with its effective value in pflag's `String()` form, sorted by name
    /// (what upstream logs at `-v=1` before validating).
    pub fn flag_values(&self) -> Vec<(&'static str, String)> {
        let mut out = self.declared_values();
        out.extend(self.log.flag_values());
        out.extend(self.ext.flag_values(true));
        out.sort_by_key(|(n, _)| *n);
        out
    }
}

/// Key then cert: each must exist when set, and each requires the other.
fn check_pair(what: &str, key: &str, cert: &str) -> Result<(), String> {
    if !key.is_empty() {
        check_file(key, |p, e| {
            format!("error checking {what} key {p}, got {e}")
        })?;
        if cert.is_empty() {
            return Err(format!(
                "cannot have {what} cert empty when {what} key is set to {}",
                crate::strconv::quote(key)
            ));
        }
    }
    if !cert.is_empty() {
        check_file(cert, |p, e| {
            format!("error checking {what} cert {p}, got {e}")
        })?;
        if key.is_empty() {
            return Err(format!(
                "cannot have {what} key empty when {what} cert is set to {}",
                crate::strconv::quote(cert)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    fn parse(a: &[&str]) -> ServerOptions {
        match ServerOptions::parse(args(a)) {
            Ok(o) => o,
            Err(e) => panic!("parse {a:?}: {e}"),
        }
    }

    /// A file that exists for the duration of the test process.
    fn existing_file(name: &str) -> String {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("konnectivity-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, b"x").unwrap();
        path.to_string_lossy().into_owned()
    }

    /// Options that pass validation: TCP mode with a server CA that exists.
    fn valid() -> ServerOptions {
        let mut o = ServerOptions::with_server_id("id".to_owned());
        o.server_ca_cert = existing_file("server-ca.crt");
        o
    }

    fn invalid_message(o: &ServerOptions) -> String {
        match o.validate() {
            Err(ConfigError::Invalid(msg)) => msg
                .strip_prefix("failed to validate server options with ")
                .unwrap_or_else(|| panic!("missing prefix: {msg}"))
                .to_owned(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    const MISSING: &str = "/nonexistent/konnectivity/file";

    #[test]
    fn defaults_equal_the_spec_table() {
        let o = ServerOptions::with_server_id("sid".to_owned());
        let values = o.flag_values();
        let specs = server_flags();
        assert_eq!(values.len(), specs.len());
        for spec in specs {
            let value = values
                .iter()
                .find(|(n, _)| *n == spec.name)
                .map(|(_, v)| v.as_str());
            if spec.name == "server-id" {
                assert_eq!(value, Some("sid"));
            } else {
                assert_eq!(value, Some(spec.default), "default of --{}", spec.name);
            }
        }
        assert_eq!(o.mode().unwrap(), Mode::Grpc);
        assert_eq!(o.proxy_strategies().unwrap(), [ProxyStrategy::Default]);
        assert_eq!(o.tls_min_version().unwrap(), TlsVersion::Tls12);
        assert_eq!(
            o.keepalive_time.to_std(),
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(o.log.v, 4);
        assert!(o.log.logtostderr);
        assert!(!o.needs_kubernetes_client());
    }

    #[test]
    fn flag_table_matches_spec_types() {
        let expect = [
            ("server-cert", "string"),
            ("server-key", "string"),
            ("server-ca-cert", "string"),
            ("cluster-cert", "string"),
            ("cluster-key", "string"),
            ("cluster-ca-cert", "string"),
            ("mode", "string"),
            ("uds-name", "string"),
            ("delete-existing-uds-file", "bool"),
            ("server-port", "int"),
            ("server-bind-address", "string"),
            ("agent-port", "int"),
            ("agent-bind-address", "string"),
            ("admin-port", "int"),
            ("admin-bind-address", "string"),
            ("health-port", "int"),
            ("health-bind-address", "string"),
            ("keepalive-time", "duration"),
            ("frontend-keepalive-time", "duration"),
            ("enable-profiling", "bool"),
            ("enable-contention-profiling", "bool"),
            ("server-id", "string"),
            ("server-count", "int"),
            ("agent-namespace", "string"),
            ("agent-service-account", "string"),
            ("authentication-audience", "string"),
            ("kubeconfig", "string"),
            ("kubeconfig-qps", "float32"),
            ("kubeconfig-burst", "int"),
            ("kube-api-content-type", "string"),
            ("proxy-strategies", "string"),
            ("cipher-suites", "stringSlice"),
            ("tls-min-version", "string"),
            ("xfr-channel-size", "int"),
            ("enable-lease-controller", "bool"),
            ("lease-namespace", "string"),
            ("lease-label", "string"),
            ("graceful-shutdown-timeout", "duration"),
            ("backend-dial-timeout", "duration"),
            ("warn-on-channel-limit", "bool"),
        ];
        for (name, ty) in expect {
            let spec = server_flags()
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(spec.value_type(), ty, "{name}");
        }
        for klog in [
            "v",
            "vmodule",
            "log-dir",
            "log-file",
            "log-file-max-size",
            "logtostderr",
            "alsologtostderr",
            "stderrthreshold",
            "add-dir-header",
            "skip-headers",
            "skip-log-headers",
            "one-output",
            "log-backtrace-at",
            "legacy-stderr-threshold-behavior",
        ] {
            assert!(server_flags().iter().any(|s| s.name == klog), "{klog}");
        }
        let hidden: Vec<_> = server_flags()
            .iter()
            .filter(|s| s.hidden)
            .map(|s| s.name)
            .collect();
        assert_eq!(hidden, ["warn-on-channel-limit"]);
    }

    #[test]
    fn server_id_defaults_to_env_then_uuid_and_flag_wins() {
        assert_eq!(default_server_id(Some("from-env".to_owned())), "from-env");
        let generated = default_server_id(Some(String::new()));
        assert!(
            uuid::Uuid::parse_str(&generated).is_ok_and(|u| u.get_version_num() == 4),
            "{generated}"
        );
        assert_ne!(default_server_id(None), default_server_id(None));
        assert_eq!(parse(&["--server-id=mine"]).server_id, "mine");
        assert!(!parse(&[]).server_id.is_empty());
    }

    #[test]
    fn every_flag_is_read_into_its_field() {
        let o = parse(&[
            "--server-cert=sc",
            "--server-key=sk",
            "--server-ca-cert=sca",
            "--cluster-cert=cc",
            "--cluster-key=ck",
            "--cluster-ca-cert=cca",
            "--mode=http-connect",
            "--uds-name=/s.sock",
            "--delete-existing-uds-file=false",
            "--server-port=0",
            "--server-bind-address=1.1.1.1",
            "--agent-port=9001",
            "--agent-bind-address=2.2.2.2",
            "--admin-port=9002",
            "--admin-bind-address=3.3.3.3",
            "--health-port=9003",
            "--health-bind-address=4.4.4.4",
            "--keepalive-time=30s",
            "--frontend-keepalive-time=45s",
            "--enable-profiling",
            "--enable-contention-profiling",
            "--server-id=s1",
            "--server-count=3",
            "--agent-namespace=ns",
            "--agent-service-account=sa",
            "--authentication-audience=aud",
            "--kubeconfig=/kc",
            "--kubeconfig-qps=2.5",
            "--kubeconfig-burst=7",
            "--kube-api-content-type=application/json",
            "--proxy-strategies=destHost,default",
            "--cipher-suites=TLS_AES_128_GCM_SHA256",
            "--tls-min-version=VersionTLS13",
            "--xfr-channel-size=20",
            "--enable-lease-controller",
            "--lease-namespace=ns2",
            "--lease-label=a=b",
            "--graceful-shutdown-timeout=5s",
            "--backend-dial-timeout=500ms",
            "--logtostderr=false",
            "-v=2",
        ]);
        let mut want = ServerOptions::with_server_id("s1".to_owned());
        want.server_cert = "sc".into();
        want.server_key = "sk".into();
        want.server_ca_cert = "sca".into();
        want.cluster_cert = "cc".into();
        want.cluster_key = "ck".into();
        want.cluster_ca_cert = "cca".into();
        want.mode = "http-connect".into();
        want.uds_name = "/s.sock".into();
        want.delete_existing_uds_file = false;
        want.server_port = 0;
        want.server_bind_address = "1.1.1.1".into();
        want.agent_port = 9001;
        want.agent_bind_address = "2.2.2.2".into();
        want.admin_port = 9002;
        want.admin_bind_address = "3.3.3.3".into();
        want.health_port = 9003;
        want.health_bind_address = "4.4.4.4".into();
        want.keepalive_time = GoDuration::from_secs(30);
        want.frontend_keepalive_time = GoDuration::from_secs(45);
        want.enable_profiling = true;
        want.enable_contention_profiling = true;
        want.server_count = 3;
        want.agent_namespace = "ns".into();
        want.agent_service_account = "sa".into();
        want.authentication_audience = "aud".into();
        want.kubeconfig = "/kc".into();
        want.kubeconfig_qps = 2.5;
        want.kubeconfig_burst = 7;
        want.kube_api_content_type = "application/json".into();
        want.proxy_strategies = "destHost,default".into();
        want.cipher_suites = vec!["TLS_AES_128_GCM_SHA256".into()];
        want.tls_min_version = "VersionTLS13".into();
        want.xfr_channel_size = 20;
        want.enable_lease_controller = true;
        want.lease_namespace = "ns2".into();
        want.lease_label = "a=b".into();
        want.graceful_shutdown_timeout = GoDuration::from_secs(5);
        want.backend_dial_timeout = GoDuration::from_millis(500);
        want.log.logtostderr = false;
        want.log.v = 2;
        want.explicit_flags = o.explicit_flags.clone();
        assert_eq!(o, want);
        assert_eq!(o.explicit_flags.len(), 41);
        assert_eq!(o.explicit_flags[0], "server-cert");
        assert_eq!(
            o.proxy_strategies().unwrap(),
            [ProxyStrategy::DestHost, ProxyStrategy::Default]
        );
        assert_eq!(o.mode().unwrap(), Mode::HttpConnect);
        assert!(o.needs_kubernetes_client());
    }

    #[test]
    fn repeated_mode_flag_last_wins() {
        assert_eq!(
            parse(&["--mode=grpc", "--mode=http-connect"]).mode,
            "http-connect"
        );
        assert_eq!(
            parse(&["--mode", "http-connect", "--mode", "grpc"]).mode,
            "grpc"
        );
    }

    #[test]
    fn cipher_suites_append_across_repeats() {
        let o = parse(&[
            "--cipher-suites=TLS_AES_256_GCM_SHA384",
            "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        ]);
        assert_eq!(
            o.cipher_suites,
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
            ]
        );
    }

    #[test]
    fn warn_on_channel_limit_is_a_deprecated_no_op() {
        let o = parse(&["--warn-on-channel-limit=false"]);
        assert!(o.warn_on_channel_limit_used);
        assert_eq!(
            o.deprecation_notices,
            [
                "Flag --warn-on-channel-limit has been deprecated, This behavior is now thread safe and always on. This flag will be removed in a future release."
            ]
        );
        assert!(!parse(&[]).warn_on_channel_limit_used);
    }

    #[test]
    fn help_lists_flags_but_not_hidden_ones() {
        match ServerOptions::parse(args(&["--help"])) {
            Err(ConfigError::Help(text)) => {
                assert!(text.starts_with("Usage:\n  proxy [flags]"));
                assert!(text.contains("--mode string"));
                assert!(text.contains("(default \"grpc\")"));
                assert!(text.contains("--keepalive-time duration"));
                assert!(text.contains("(default 1h0m0s)"));
                assert!(text.contains("--cipher-suites strings"));
                assert!(text.contains("-v, --v Level"));
                assert!(!text.contains("warn-on-channel-limit"));
            }
            other => panic!("expected help, got {other:?}"),
        }
    }

    #[test]
    fn unknown_flag_is_a_parse_error() {
        assert_eq!(
            ServerOptions::parse(args(&["--bogus"])),
            Err(ConfigError::Parse("unknown flag: --bogus".to_owned()))
        );
        assert_eq!(
            ServerOptions::parse(args(&["--server-port=x"]))
                .unwrap_err()
                .to_string(),
            "invalid argument \"x\" for \"--server-port\" flag: strconv.ParseInt: parsing \"x\": invalid syntax"
        );
    }

    #[test]
    fn valid_baseline_passes() {
        assert_eq!(valid().validate(), Ok(()));
        let uds = ServerOptions {
            uds_name: "/tmp/x.sock".into(),
            server_port: 0,
            ..ServerOptions::with_server_id("id".into())
        };
        assert_eq!(uds.validate(), Ok(()));
    }

    #[test]
    fn rule_1_server_key_missing_or_without_cert() {
        let o = ServerOptions {
            server_key: MISSING.into(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            format!(
                "error checking server key {MISSING}, got stat {MISSING}: no such file or directory"
            )
        );
        let key = existing_file("server.key");
        let o = ServerOptions {
            server_key: key.clone(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            format!("cannot have server cert empty when server key is set to \"{key}\"")
        );
    }

    #[test]
    fn rule_2_server_cert_missing_or_without_key() {
        let o = ServerOptions {
            server_cert: MISSING.into(),
            ..valid()
        };
        assert!(
            invalid_message(&o).starts_with(&format!("error checking server cert {MISSING}, got "))
        );
        let cert = existing_file("server.crt");
        let o = ServerOptions {
            server_cert: cert.clone(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            format!("cannot have server key empty when server cert is set to \"{cert}\"")
        );
        let o = ServerOptions {
            server_cert: cert,
            server_key: existing_file("server.key"),
            ..valid()
        };
        assert_eq!(o.validate(), Ok(()));
    }

    #[test]
    fn rule_3_server_ca_missing() {
        let o = ServerOptions {
            server_ca_cert: MISSING.into(),
            ..valid()
        };
        assert!(
            invalid_message(&o)
                .starts_with(&format!("error checking server CA cert {MISSING}, got "))
        );
    }

    #[test]
    fn rules_4_to_6_cluster_files() {
        let o = ServerOptions {
            cluster_key: MISSING.into(),
            ..valid()
        };
        assert!(
            invalid_message(&o).starts_with(&format!("error checking cluster key {MISSING}, got "))
        );
        let key = existing_file("cluster.key");
        let o = ServerOptions {
            cluster_key: key.clone(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            format!("cannot have cluster cert empty when cluster key is set to \"{key}\"")
        );
        let o = ServerOptions {
            cluster_cert: MISSING.into(),
            ..valid()
        };
        assert!(
            invalid_message(&o)
                .starts_with(&format!("error checking cluster cert {MISSING}, got "))
        );
        let cert = existing_file("cluster.crt");
        let o = ServerOptions {
            cluster_cert: cert.clone(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            format!("cannot have cluster key empty when cluster cert is set to \"{cert}\"")
        );
        let o = ServerOptions {
            cluster_ca_cert: MISSING.into(),
            ..valid()
        };
        assert!(
            invalid_message(&o)
                .starts_with(&format!("error checking cluster CA cert {MISSING}, got "))
        );
    }

    #[test]
    fn rule_7_mode() {
        let o = ServerOptions {
            mode: "http".into(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            "mode must be set to either 'grpc' or 'http-connect' not \"http\""
        );
        let o = ServerOptions {
            mode: "http-connect".into(),
            ..valid()
        };
        assert_eq!(o.validate(), Ok(()));
    }

    #[test]
    fn rule_8_uds_and_tcp_requirements() {
        let uds = || ServerOptions {
            uds_name: "/tmp/s.sock".into(),
            server_port: 0,
            ..ServerOptions::with_server_id("id".into())
        };
        let o = ServerOptions {
            server_port: 8090,
            ..uds()
        };
        assert_eq!(
            invalid_message(&o),
            "server port should be set to 0 not 8090 for UDS"
        );
        let (key, cert) = (existing_file("uds.key"), existing_file("uds.crt"));
        let o = ServerOptions {
            server_key: key,
            server_cert: cert.clone(),
            ..uds()
        };
        assert_eq!(invalid_message(&o), "server key should not be set for UDS");
        let o = ServerOptions {
            server_ca_cert: existing_file("uds-ca.crt"),
            ..uds()
        };
        assert_eq!(
            invalid_message(&o),
            "server ca cert should not be set for UDS"
        );
        // "server cert should not be set for UDS" is shadowed, as upstream: a cert without a
        // key fails rule 2, and a cert with a key fails the key check above.
        let o = ServerOptions {
            server_cert: cert.clone(),
            ..uds()
        };
        assert_eq!(
            invalid_message(&o),
            format!("cannot have server key empty when server cert is set to \"{cert}\"")
        );
        let tcp = ServerOptions::with_server_id("id".into());
        assert_eq!(
            invalid_message(&tcp),
            "server ca cert must be set when in TCP mode (uds-name is empty)"
        );
    }

    #[test]
    fn rules_9_and_10_port_boundaries() {
        for (field, name) in [
            ("server", "server"),
            ("admin", "admin"),
            ("health", "health"),
            ("agent", "agent"),
        ] {
            let with = |port: i64| {
                let mut o = valid();
                match field {
                    "server" => o.server_port = port,
                    "admin" => o.admin_port = port,
                    "health" => o.health_port = port,
                    _ => o.agent_port = port,
                }
                o
            };
            assert_eq!(
                invalid_message(&with(1023)),
                format!("please do not try to use reserved port 1023 for the {name} port")
            );
            assert_eq!(with(1024).validate(), Ok(()), "{name} 1024");
            assert_eq!(with(49151).validate(), Ok(()), "{name} 49151");
            assert_eq!(
                invalid_message(&with(49152)),
                format!("please do not try to use ephemeral port 49152 for the {name} port")
            );
        }
        // Port 0 is reserved for agent/admin/health; the server port is exempt with UDS.
        let o = ServerOptions {
            agent_port: 0,
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            "please do not try to use reserved port 0 for the agent port"
        );
        // Ephemeral checks run for all ports before reserved checks.
        let o = ServerOptions {
            server_port: 80,
            health_port: 60000,
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            "please do not try to use ephemeral port 60000 for the health port"
        );
    }

    #[test]
    fn rule_11_contention_profiling_needs_profiling() {
        let o = ServerOptions {
            enable_contention_profiling: true,
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            "if --enable-contention-profiling is set, --enable-profiling must also be set"
        );
        let o = ServerOptions {
            enable_contention_profiling: true,
            enable_profiling: true,
            ..valid()
        };
        assert_eq!(o.validate(), Ok(()));
    }

    #[test]
    fn rule_12_token_auth_needs_all_three_and_no_cluster_ca() {
        let auth = || ServerOptions {
            agent_namespace: "ns".into(),
            agent_service_account: "sa".into(),
            authentication_audience: "aud".into(),
            ..valid()
        };
        assert_eq!(auth().validate(), Ok(()));
        let o = ServerOptions {
            cluster_ca_cert: existing_file("cluster-ca"),
            ..auth()
        };
        assert_eq!(
            invalid_message(&o),
            "--cluster-ca-cert can not be used when agent authentication is enabled"
        );
        let o = ServerOptions {
            agent_namespace: String::new(),
            ..auth()
        };
        assert_eq!(
            invalid_message(&o),
            "--agent-namespace cannot be empty when agent authentication is enabled"
        );
        let o = ServerOptions {
            agent_service_account: String::new(),
            ..auth()
        };
        assert_eq!(
            invalid_message(&o),
            "--agent-service-account cannot be empty when agent authentication is enabled"
        );
        let o = ServerOptions {
            authentication_audience: String::new(),
            ..auth()
        };
        assert_eq!(
            invalid_message(&o),
            "--authentication-audience cannot be empty when agent authentication is enabled"
        );
    }

    #[test]
    fn rule_13_kubeconfig_must_exist() {
        let o = ServerOptions {
            kubeconfig: MISSING.into(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            format!(
                "checking KubeconfigPath \"{MISSING}\", got stat {MISSING}: no such file or directory"
            )
        );
        let o = ServerOptions {
            kubeconfig: existing_file("kubeconfig"),
            ..valid()
        };
        assert_eq!(o.validate(), Ok(()));
    }

    #[test]
    fn rule_14_proxy_strategies() {
        let with = |s: &str| ServerOptions {
            proxy_strategies: s.into(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&with("")),
            "ProxyStrategies cannot be empty"
        );
        assert_eq!(
            invalid_message(&with("invalid")),
            "invalid proxy strategies: unknown proxy strategy: invalid"
        );
        assert_eq!(
            invalid_message(&with("DestHost")),
            "invalid proxy strategies: unknown proxy strategy: DestHost"
        );
        assert_eq!(
            invalid_message(&with(",,")),
            "invalid proxy strategies: proxy strategies cannot be empty"
        );
        assert_eq!(with("destHost,,defaultRoute,").validate(), Ok(()));
        assert_eq!(
            with("destHost,,defaultRoute,default")
                .proxy_strategies()
                .unwrap(),
            [
                ProxyStrategy::DestHost,
                ProxyStrategy::DefaultRoute,
                ProxyStrategy::Default
            ]
        );
        assert_eq!(ProxyStrategy::DefaultRoute.as_str(), "defaultRoute");
    }

    #[test]
    fn rule_15_channel_size() {
        for n in [0, -10] {
            let o = ServerOptions {
                xfr_channel_size: n,
                ..valid()
            };
            assert_eq!(
                invalid_message(&o),
                format!("channel size {n} must be greater than 0")
            );
        }
    }

    #[test]
    fn rule_16_tls_version() {
        let o = ServerOptions {
            tls_min_version: "VersionTLS14".into(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            "unsupported TLS version \"VersionTLS14\", supported values are: VersionTLS10, VersionTLS11, VersionTLS12, VersionTLS13"
        );
        for v in [
            "VersionTLS10",
            "VersionTLS11",
            "VersionTLS12",
            "VersionTLS13",
        ] {
            assert_eq!(
                ServerOptions {
                    tls_min_version: v.into(),
                    ..valid()
                }
                .validate(),
                Ok(()),
                "{v}"
            );
        }
    }

    #[test]
    fn rule_17_cipher_suites() {
        let o =
            parse(&["--cipher-suites=TLS_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"]);
        let o = ServerOptions {
            server_ca_cert: valid().server_ca_cert,
            ..o
        };
        assert_eq!(o.validate(), Ok(()));
        let o = ServerOptions {
            cipher_suites: vec!["TLS_RSA_WITH_RC4_128_SHA".into()],
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            "cipher suite TLS_RSA_WITH_RC4_128_SHA not supported, doesn't exist or considered as insecure"
        );
    }

    #[test]
    fn rule_18_lease_label_only_checked_with_lease_controller() {
        let o = ServerOptions {
            lease_label: String::new(),
            ..valid()
        };
        assert_eq!(o.validate(), Ok(()));
        let o = ServerOptions {
            lease_label: String::new(),
            enable_lease_controller: true,
            ..valid()
        };
        assert_eq!(invalid_message(&o), "empty string provided");
        let o = ServerOptions {
            lease_label: "a=b,c".into(),
            enable_lease_controller: true,
            ..valid()
        };
        assert_eq!(invalid_message(&o), "invalid label format: c");
        let o = ServerOptions {
            lease_label: "b=2, a = 1".into(),
            enable_lease_controller: true,
            ..valid()
        };
        assert_eq!(o.validate(), Ok(()));
        assert_eq!(labels::format_labels(&o.lease_labels().unwrap()), "a=1,b=2");
        assert!(o.needs_kubernetes_client());
    }

    #[test]
    fn rule_19_negative_durations() {
        let o = parse(&["--graceful-shutdown-timeout=-1s"]);
        let o = ServerOptions {
            server_ca_cert: valid().server_ca_cert,
            ..o
        };
        assert_eq!(
            invalid_message(&o),
            "graceful-shutdown-timeout must be >= 0, got -1s"
        );
        let o = ServerOptions {
            backend_dial_timeout: GoDuration::from_millis(-1500),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            "backend-dial-timeout must be >= 0, got -1.5s"
        );
        let o = ServerOptions {
            backend_dial_timeout: GoDuration::from_secs(5),
            graceful_shutdown_timeout: GoDuration::from_secs(1),
            ..valid()
        };
        assert_eq!(o.validate(), Ok(()));
    }

    #[test]
    fn validation_error_display_has_the_wrapper() {
        let tcp = ServerOptions::with_server_id("id".into());
        assert_eq!(
            tcp.validate().unwrap_err().to_string(),
            "failed to validate server options with server ca cert must be set when in TCP mode (uds-name is empty)"
        );
    }
}
