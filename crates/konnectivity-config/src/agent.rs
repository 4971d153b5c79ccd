//! `proxy-agent` options: its flag table, parsing, and validation.
//!
//! Names, types and defaults are upstream's (including the hidden, deprecated `--lease-label`
//! alias of `--lease-label-selector`), so that manifests and the upstream integration-test
//! harness, which passes every flag as `--name=<value>`, work unchanged. Validation follows
//! upstream's order and messages.

use crate::error::ConfigError;
use crate::files::{check_file, check_pair};
use crate::flags::{binary, options};
use crate::go::duration::GoDuration;
use crate::go::pflag::{FlagKind, FlagSpec};
use crate::go::strconv::quote;
use crate::identifiers::{AgentIdentifiers, IdentifierError};
use crate::labels::LabelSelector;

/// The command name cobra prints in the usage text.
pub const AGENT_COMMAND: &str = "agent";

/// Environment variable that provides the default `--agent-id`.
pub const AGENT_ID_ENV: &str = "PROXY_AGENT_ID";

/// The default of `--lease-label-selector`.
pub const DEFAULT_LEASE_SELECTOR: &str = "k8s-app=konnectivity-server";

/// How the agent combines server counts (`--server-count-source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCountSource {
    /// `""` or `default`: the lease count when lease counting is on, else the response count.
    Default,
    /// `max`: the larger of the lease count and the response count.
    Max,
}

options! {
    /// Typed `proxy-agent` options, one row per flag. Integer flags keep Go's `int` range so
    /// that validation can report out-of-range values exactly as given.
    #[derive(Clone, Debug, PartialEq)]
    pub struct AgentOptions in AGENT_OWN_FLAGS {
        agent_cert: String = "agent-cert", "",
            "If non-empty, the client certificate presented to the proxy server.";
        agent_key: String = "agent-key", "",
            "If non-empty, the private key for --agent-cert.";
        ca_cert: String = "ca-cert", "",
            "CA bundle used to verify the proxy server's certificate.";
        /// As given; see [`AgentOptions::server_hosts`].
        proxy_server_host: String = "proxy-server-host", "127.0.0.1",
            "Host name of the proxy server (or its load balancer); a comma-separated list dials each.";
        proxy_server_port: i64 = "proxy-server-port", "8091",
            "Port of the proxy server's agent listener.";
        /// `[]` given literally means none.
        alpn_proto: Vec<String> = "alpn-proto", "[]",
            "Extra ALPN protocol IDs offered before h2, for front doors that share an address with the apiserver.";
        health_server_host: String = "health-server-host", "",
            "Health endpoint bind host, without port; empty binds all interfaces.";
        health_server_port: i64 = "health-server-port", "8093",
            "Port for the health endpoint.";
        admin_server_port: i64 = "admin-server-port", "8094",
            "Port for the admin endpoint.";
        admin_bind_address: String = "admin-bind-address", "127.0.0.1",
            "Admin endpoint bind address.";
        enable_profiling: bool = "enable-profiling", "false",
            "Serve profiling data at host:admin-server-port/debug/pprof.";
        enable_contention_profiling: bool = "enable-contention-profiling", "false",
            "Also profile lock contention; requires --enable-profiling.";
        agent_id: String = "agent-id", "",
            "Unique ID of this agent; defaults to $PROXY_AGENT_ID, else a random UUID.";
        sync_interval: GoDuration = "sync-interval", "1s",
            "Initial interval between checks that the agent is connected to every proxy server.";
        probe_interval: GoDuration = "probe-interval", "1s",
            "Interval between readiness checks of each proxy server connection.";
        sync_interval_cap: GoDuration = "sync-interval-cap", "10s",
            "Upper bound of the sync interval while backing off after failures.";
        keepalive_time: GoDuration = "keepalive-time", "1h0m0s",
            "Keepalive ping interval on proxy server connections.";
        service_account_token_path: String = "service-account-token-path", "",
            "If non-empty, a token file sent to the proxy server to authenticate this agent.";
        /// Verbatim (sent as the `agentidentifiers` header).
        agent_identifiers: String = "agent-identifiers", "",
            "URL-encoded identifiers the server uses to pick this agent, e.g. host=node1&ipv4=10.0.0.5&ipv6=fd00::5&cidr=10.0.0.0/8&default-route=true";
        warn_on_channel_limit: bool = "warn-on-channel-limit", "false",
            "Log a warning when a connection's transfer queue is full.";
        sync_forever: bool = "sync-forever", "false",
            "Keep dialing after the server count is reached, to discover added servers.";
        xfr_channel_size: i64 = "xfr-channel-size", "150",
            "Capacity of each per-connection transfer queue.";
        count_server_leases: bool = "count-server-leases", "false",
            "Derive the number of proxy servers from their Leases.";
        lease_namespace: String = "lease-namespace", "kube-system",
            "Namespace of the server Leases.";
        /// Or its deprecated alias `--lease-label`; the last one given wins.
        lease_label_selector: LabelSelector = "lease-label-selector", DEFAULT_LEASE_SELECTOR,
            "Label selector of the server Leases to count.",
            alias "lease-label" deprecated "Use --lease-label-selector instead";
        /// As given; see [`AgentOptions::server_count_source`].
        server_count_source: String = "server-count-source", "default",
            "How lease and server-reported counts combine: 'default' uses one source, 'max' the larger.";
        kubeconfig: String = "kubeconfig", "",
            "Path to a kubeconfig file for lease listing; empty uses the in-cluster configuration.";
        kube_api_content_type: String = "kube-api-content-type", "application/vnd.kubernetes.protobuf",
            "Content type of requests to the Kubernetes API.";
    }
    also [FlagSpec::new("help", FlagKind::Bool, "false", "help for agent").with_shorthand('h')]
    extra binary {
    }
}

binary! {
    AgentOptions {
        name: "proxy-agent",
        server: false,
        validates: "agent",
        command: AGENT_COMMAND,
        table: AGENT_OWN_FLAGS,
        flags: agent_flags,
        id: agent_id = "agent-id" from AGENT_ID_ENV,
        with_id: with_agent_id,
        default_id: default_agent_id,
    }
}

impl AgentOptions {
    fn check(&self) -> Result<(), String> {
        check_pair("agent", &self.agent_key, &self.agent_cert)?;
        check_file(&self.ca_cert, |p, e| {
            format!("error checking agent CA cert {p}, got {e}")
        })?;
        for (what, port) in [
            ("proxy server", self.proxy_server_port),
            ("health server", self.health_server_port),
            ("admin server", self.admin_server_port),
        ] {
            if port <= 0 {
                return Err(format!("{what} port {port} must be greater than 0"));
            }
        }
        if self.xfr_channel_size <= 0 {
            return Err(format!(
                "channel size {} must be greater than 0",
                self.xfr_channel_size
            ));
        }
        if self.enable_contention_profiling && !self.enable_profiling {
            return Err(
                "if --enable-contention-profiling is set, --enable-profiling must also be set"
                    .to_owned(),
            );
        }
        if self.sync_interval > self.sync_interval_cap {
            return Err(format!(
                "sync interval {} must be less than sync interval cap {}",
                self.sync_interval, self.sync_interval_cap
            ));
        }
        check_file(&self.service_account_token_path, |p, e| {
            format!("error checking service account token path {p}, got {e}")
        })?;
        self.identifiers()
            .map_err(|e| format!("agent address is invalid: {e}"))?;
        check_file(&self.kubeconfig, |p, e| {
            format!("error checking KubeconfigPath {}, got {e}", quote(p))
        })?;
        self.server_count_source().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// `--agent-identifiers` parsed with the agent's strict rules.
    pub fn identifiers(&self) -> Result<AgentIdentifiers, IdentifierError> {
        AgentIdentifiers::parse_agent(&self.agent_identifiers)
    }

    /// The proxy-server hosts to dial: `--proxy-server-host` split on commas, items trimmed,
    /// empty items dropped (our HA extension; a single host is the upstream case). When no
    /// item is left the raw value is returned as the only host.
    pub fn server_hosts(&self) -> Vec<String> {
        let hosts: Vec<String> = self
            .proxy_server_host
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if hosts.is_empty() {
            vec![self.proxy_server_host.clone()]
        } else {
            hosts
        }
    }

    /// `--server-count-source` parsed.
    pub fn server_count_source(&self) -> Result<ServerCountSource, ConfigError> {
        match self.server_count_source.as_str() {
            "" | "default" => Ok(ServerCountSource::Default),
            "max" => Ok(ServerCountSource::Max),
            other => Err(ConfigError::Invalid(format!(
                "--server-count-source must be one of '', 'default', 'max', got {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use std::collections::BTreeMap;

    fn parse(a: &[&str]) -> AgentOptions {
        crate::testing::parse(a)
    }

    fn valid() -> AgentOptions {
        AgentOptions::with_agent_id("agent-1".to_owned())
    }

    #[test]
    fn defaults_equal_the_spec_table() {
        let o = AgentOptions::with_agent_id("aid".to_owned());
        assert_defaults(&o.flag_values(), agent_flags(), Some(("agent-id", "aid")));
        assert_eq!(o.validate(), Ok(()));
        assert_eq!(o.server_hosts(), ["127.0.0.1"]);
        assert_eq!(o.server_count_source().unwrap(), ServerCountSource::Default);
        assert_eq!(
            o.sync_interval.to_std(),
            Some(std::time::Duration::from_secs(1))
        );
        assert_eq!(o.log.v, 4);
    }

    #[test]
    fn flag_table_matches_spec_types() {
        let expect = [
            ("agent-cert", "string"),
            ("agent-key", "string"),
            ("ca-cert", "string"),
            ("proxy-server-host", "string"),
            ("proxy-server-port", "int"),
            ("alpn-proto", "stringSlice"),
            ("health-server-host", "string"),
            ("health-server-port", "int"),
            ("admin-server-port", "int"),
            ("admin-bind-address", "string"),
            ("enable-profiling", "bool"),
            ("enable-contention-profiling", "bool"),
            ("agent-id", "string"),
            ("sync-interval", "duration"),
            ("probe-interval", "duration"),
            ("sync-interval-cap", "duration"),
            ("keepalive-time", "duration"),
            ("service-account-token-path", "string"),
            ("agent-identifiers", "string"),
            ("warn-on-channel-limit", "bool"),
            ("sync-forever", "bool"),
            ("xfr-channel-size", "int"),
            ("count-server-leases", "bool"),
            ("lease-namespace", "string"),
            ("lease-label-selector", "string"),
            ("lease-label", "string"),
            ("server-count-source", "string"),
            ("kubeconfig", "string"),
            ("kube-api-content-type", "string"),
        ];
        assert_value_types(agent_flags(), &expect);
        assert_eq!(AGENT_OWN_FLAGS.len(), expect.len() + 1);
        assert_eq!(hidden(agent_flags()), ["lease-label"]);
        assert!(agent_flags().iter().any(|s| s.name == "logtostderr"));
    }

    #[test]
    fn agent_id_defaults_to_env_then_uuid_and_flag_wins() {
        assert_eq!(default_agent_id(Some("env-id".to_owned())), "env-id");
        assert!(uuid::Uuid::parse_str(&default_agent_id(None)).is_ok());
        assert_eq!(parse(&["--agent-id=a1"]).agent_id, "a1");
        assert!(!parse(&[]).agent_id.is_empty());
    }

    #[test]
    fn upstream_harness_argument_list_parses_and_validates() {
        let cert = existing_file("agent.crt");
        let key = existing_file("agent.key");
        let ca = existing_file("ca.crt");
        let harness: Vec<String> = [
            "--admin-bind-address=127.0.0.1".to_owned(),
            "--admin-server-port=40001".to_owned(),
            format!("--agent-cert={cert}"),
            "--agent-id=test-agent".to_owned(),
            "--agent-identifiers=".to_owned(),
            format!("--agent-key={key}"),
            "--alpn-proto=[]".to_owned(),
            format!("--ca-cert={ca}"),
            "--count-server-leases=false".to_owned(),
            "--enable-contention-profiling=false".to_owned(),
            "--enable-profiling=false".to_owned(),
            "--health-server-host=127.0.0.1".to_owned(),
            "--health-server-port=40000".to_owned(),
            "--keepalive-time=1h0m0s".to_owned(),
            "--kube-api-content-type=application/vnd.kubernetes.protobuf".to_owned(),
            "--kubeconfig=".to_owned(),
            "--lease-label=k8s-app=konnectivity-server".to_owned(),
            "--lease-label-selector=k8s-app=konnectivity-server".to_owned(),
            "--lease-namespace=kube-system".to_owned(),
            "--probe-interval=100ms".to_owned(),
            "--proxy-server-host=127.0.0.1".to_owned(),
            "--proxy-server-port=39999".to_owned(),
            "--server-count-source=default".to_owned(),
            "--service-account-token-path=".to_owned(),
            "--sync-forever=false".to_owned(),
            "--sync-interval=100ms".to_owned(),
            "--sync-interval-cap=1s".to_owned(),
            "--warn-on-channel-limit=false".to_owned(),
            "--xfr-channel-size=150".to_owned(),
        ]
        .into();
        // Every agent flag (upstream's `o.Flags()`) is in the list.
        for spec in AGENT_OWN_FLAGS.iter().filter(|s| s.name != "help") {
            assert!(
                harness
                    .iter()
                    .any(|a| a.starts_with(&format!("--{}=", spec.name))),
                "{}",
                spec.name
            );
        }
        let o = match AgentOptions::parse(harness.clone()) {
            Ok(o) => o,
            Err(e) => panic!("harness arguments rejected: {e}"),
        };
        assert_eq!(o.validate(), Ok(()));
        assert!(o.alpn_proto.is_empty());
        assert_eq!(o.sync_interval, GoDuration::from_millis(100));
        assert_eq!(o.sync_interval_cap, GoDuration::from_secs(1));
        assert_eq!(o.probe_interval, GoDuration::from_millis(100));
        assert_eq!(o.proxy_server_port, 39999);
        assert_eq!(o.health_server_host, "127.0.0.1");
        assert_eq!(o.agent_id, "test-agent");
        assert_eq!(
            o.lease_label_selector.to_string(),
            "k8s-app=konnectivity-server"
        );
        assert_eq!(
            o.deprecation_notices,
            ["Flag --lease-label has been deprecated, Use --lease-label-selector instead"]
        );
        // Our own effective values, printed the way the harness prints them, parse back to the same options.
        let round_trip: Vec<String> = o
            .flag_values()
            .into_iter()
            .filter(|(n, _)| AGENT_OWN_FLAGS.iter().any(|s| s.name == *n))
            .map(|(n, v)| format!("--{n}={v}"))
            .collect();
        let again = AgentOptions::parse(round_trip).unwrap();
        assert_eq!(
            AgentOptions {
                explicit_flags: vec![],
                deprecation_notices: vec![],
                ..again
            },
            AgentOptions {
                explicit_flags: vec![],
                deprecation_notices: vec![],
                ..o
            }
        );
    }

    #[test]
    fn every_flag_is_read_into_its_field() {
        let o = parse(&[
            "--agent-cert=c",
            "--agent-key=k",
            "--ca-cert=ca",
            "--proxy-server-host=a,b",
            "--proxy-server-port=9000",
            "--alpn-proto=x,y",
            "--health-server-host=h",
            "--health-server-port=9001",
            "--admin-server-port=9002",
            "--admin-bind-address=0.0.0.0",
            "--enable-profiling",
            "--enable-contention-profiling",
            "--agent-id=id",
            "--sync-interval=2s",
            "--probe-interval=3s",
            "--sync-interval-cap=20s",
            "--keepalive-time=30s",
            "--service-account-token-path=/t",
            "--agent-identifiers=host=a",
            "--warn-on-channel-limit",
            "--sync-forever",
            "--xfr-channel-size=5",
            "--count-server-leases",
            "--lease-namespace=ns",
            "--lease-label-selector=app in (a,b)",
            "--server-count-source=max",
            "--kubeconfig=/kc",
            "--kube-api-content-type=application/json",
            "--v=1",
        ]);
        let mut want = AgentOptions {
            agent_cert: "c".into(),
            agent_key: "k".into(),
            ca_cert: "ca".into(),
            proxy_server_host: "a,b".into(),
            proxy_server_port: 9000,
            alpn_proto: vec!["x".into(), "y".into()],
            health_server_host: "h".into(),
            health_server_port: 9001,
            admin_server_port: 9002,
            admin_bind_address: "0.0.0.0".into(),
            enable_profiling: true,
            enable_contention_profiling: true,
            sync_interval: GoDuration::from_secs(2),
            probe_interval: GoDuration::from_secs(3),
            sync_interval_cap: GoDuration::from_secs(20),
            keepalive_time: GoDuration::from_secs(30),
            service_account_token_path: "/t".into(),
            agent_identifiers: "host=a".into(),
            warn_on_channel_limit: true,
            sync_forever: true,
            xfr_channel_size: 5,
            count_server_leases: true,
            lease_namespace: "ns".into(),
            lease_label_selector: LabelSelector::parse("app in (a,b)").unwrap(),
            server_count_source: "max".into(),
            kubeconfig: "/kc".into(),
            kube_api_content_type: "application/json".into(),
            explicit_flags: o.explicit_flags.clone(),
            ..AgentOptions::with_agent_id("id".to_owned())
        };
        want.log.v = 1;
        assert_eq!(o, want);
        assert_eq!(o.server_hosts(), ["a", "b"]);
        assert_eq!(o.server_count_source().unwrap(), ServerCountSource::Max);
    }

    #[test]
    fn lease_label_alias_and_selector_share_one_value_last_wins() {
        let o = parse(&["--lease-label-selector=a=1", "--lease-label=b=2"]);
        assert_eq!(o.lease_label_selector.to_string(), "b=2");
        let o = parse(&["--lease-label=b=2", "--lease-label-selector=a=1"]);
        assert_eq!(o.lease_label_selector.to_string(), "a=1");
    }

    #[test]
    fn lease_label_selector_parsing() {
        assert!(
            parse(&["--lease-label-selector="])
                .lease_label_selector
                .is_empty()
        );
        let o = parse(&["--lease-label-selector=k8s-app=konnectivity-server,tier!=test"]);
        let mut labels = BTreeMap::new();
        labels.insert("k8s-app".to_owned(), "konnectivity-server".to_owned());
        assert!(o.lease_label_selector.matches(&labels));
        let err =
            AgentOptions::parse(args(&["--lease-label-selector=*notavalidlabel*"])).unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)));
        assert!(
            err.to_string().starts_with(
                "invalid argument \"*notavalidlabel*\" for \"--lease-label-selector\" flag: "
            ),
            "{err}"
        );
        let err = AgentOptions::parse(args(&["--lease-label=*bad*"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid argument \"*bad*\" for \"--lease-label\" flag: ")
        );
    }

    #[test]
    fn alpn_proto_literal_brackets_mean_none_and_values_append() {
        assert!(parse(&["--alpn-proto=[]"]).alpn_proto.is_empty());
        assert_eq!(
            parse(&["--alpn-proto=a", "--alpn-proto", "b,c"]).alpn_proto,
            ["a", "b", "c"]
        );
    }

    #[test]
    fn server_hosts_split_comma_list() {
        let with = |h: &str| AgentOptions {
            proxy_server_host: h.into(),
            ..valid()
        };
        assert_eq!(
            with("s1.example, s2.example,,").server_hosts(),
            ["s1.example", "s2.example"]
        );
        assert_eq!(with("lb").server_hosts(), ["lb"]);
        assert_eq!(with("").server_hosts(), [""]);
    }

    #[test]
    fn key_and_cert_files_are_checked_in_order() {
        assert_pair_rules(valid, "agent", |o| {
            [&mut o.agent_key, &mut o.agent_cert, &mut o.ca_cert]
        });
    }

    #[test]
    fn ports_must_be_positive_without_range_checks() {
        for port in [0, -1] {
            assert_eq!(
                rejected(valid(), |o| o.proxy_server_port = port),
                format!("proxy server port {port} must be greater than 0")
            );
            let o = AgentOptions {
                health_server_port: port,
                ..valid()
            };
            assert_eq!(
                invalid_message(&o),
                format!("health server port {port} must be greater than 0")
            );
            assert_eq!(
                rejected(valid(), |o| o.admin_server_port = port),
                format!("admin server port {port} must be greater than 0")
            );
        }
        for port in [1023, 49152] {
            assert_eq!(
                checked(valid(), |o| {
                    o.proxy_server_port = port;
                    o.health_server_port = port;
                    o.admin_server_port = port;
                }),
                Ok(()),
                "{port}"
            );
        }
    }

    #[test]
    fn channel_size_and_profiling() {
        assert_channel_size_rule(valid, |o| &mut o.xfr_channel_size);
        assert_eq!(
            rejected(valid(), |o| o.enable_contention_profiling = true),
            "if --enable-contention-profiling is set, --enable-profiling must also be set"
        );
    }

    #[test]
    fn sync_interval_may_equal_but_not_exceed_cap() {
        assert_eq!(
            rejected(valid(), |o| {
                o.sync_interval = GoDuration::from_secs(2);
                o.sync_interval_cap = GoDuration::from_secs(1);
            }),
            "sync interval 2s must be less than sync interval cap 1s"
        );
        assert_eq!(
            checked(valid(), |o| {
                o.sync_interval = GoDuration::from_secs(1);
                o.sync_interval_cap = o.sync_interval;
            }),
            Ok(())
        );
        let o = parse(&["--sync-interval=1h", "--sync-interval-cap=100ms"]);
        assert_eq!(
            invalid_message(&o),
            "sync interval 1h0m0s must be less than sync interval cap 100ms"
        );
    }

    #[test]
    fn token_path_and_kubeconfig_must_exist() {
        let o = AgentOptions {
            service_account_token_path: MISSING.into(),
            ..valid()
        };
        assert_eq!(
            invalid_message(&o),
            format!(
                "error checking service account token path {MISSING}, got stat {MISSING}: no such file or directory"
            )
        );
        assert_eq!(
            rejected(valid(), |o| o.kubeconfig = MISSING.into()),
            format!(
                "error checking KubeconfigPath \"{MISSING}\", got stat {MISSING}: no such file or directory"
            )
        );
    }

    #[test]
    fn identifiers_are_validated_strictly() {
        let with = |s: &str| AgentOptions {
            agent_identifiers: s.into(),
            ..valid()
        };
        let invalid = "agent address is invalid:";
        assert_rejections(
            with,
            &[
                ("uid=1", &format!("{invalid} unknown address type: uid")),
                (
                    "host=a;host=b",
                    &format!("{invalid} invalid semicolon separator in query"),
                ),
                ("host=%zz", &format!("{invalid} invalid URL escape \"%zz\"")),
            ],
        );
        let o = with("host=node1&ipv4=10.0.0.5&ipv6=fd00::5&cidr=10.0.0.0/8&default-route=true");
        assert_eq!(o.validate(), Ok(()));
        let ids = o.identifiers().unwrap();
        assert!(ids.default_route);
        assert_eq!(ids.raw, o.agent_identifiers);
    }

    #[test]
    fn server_count_source_values() {
        for ok in ["", "default", "max"] {
            assert_eq!(
                AgentOptions {
                    server_count_source: ok.into(),
                    ..valid()
                }
                .validate(),
                Ok(()),
                "{ok}"
            );
        }
        assert_eq!(
            rejected(valid(), |o| o.server_count_source = "min".into()),
            "--server-count-source must be one of '', 'default', 'max', got min"
        );
    }

    #[test]
    fn validation_order_reports_earliest_rule() {
        assert_eq!(
            checked(valid(), |o| {
                o.proxy_server_port = 0;
                o.xfr_channel_size = 0;
                o.server_count_source = "bogus".into();
            })
            .unwrap_err()
            .to_string(),
            "failed to validate agent options with proxy server port 0 must be greater than 0"
        );
    }

    #[test]
    fn help_hides_the_deprecated_alias() {
        let has = [
            "--lease-label-selector string",
            "(default \"k8s-app=konnectivity-server\")",
            "--alpn-proto strings",
        ];
        let usage = "Usage:\n  agent [flags]";
        assert_help::<AgentOptions>("-h", usage, (&has, &["--lease-label string"]));
    }
}
