//! Unit tests of `proxy-server`'s flags: defaults, parsing, and each validation rule.

use super::*;
use crate::testing::*;

fn parse(a: &[&str]) -> ServerOptions {
    crate::testing::parse(a)
}

/// `o` with the server CA of [`valid`].
fn with_valid_ca(o: ServerOptions) -> ServerOptions {
    ServerOptions {
        server_ca_cert: valid().server_ca_cert,
        ..o
    }
}

/// Options that pass validation: TCP mode with a server CA that exists.
fn valid() -> ServerOptions {
    let mut o = ServerOptions::with_server_id("id".to_owned());
    o.server_ca_cert = existing_file("server-ca.crt");
    o
}

#[test]
fn defaults_equal_the_spec_table() {
    let o = ServerOptions::with_server_id("sid".to_owned());
    assert_defaults(&o.flag_values(), server_flags(), Some(("server-id", "sid")));
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
    assert_value_types(server_flags(), &expect);
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
    assert_eq!(hidden(server_flags()), ["warn-on-channel-limit"]);
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
    let mut want = ServerOptions {
        server_cert: "sc".into(),
        server_key: "sk".into(),
        server_ca_cert: "sca".into(),
        cluster_cert: "cc".into(),
        cluster_key: "ck".into(),
        cluster_ca_cert: "cca".into(),
        mode: "http-connect".into(),
        uds_name: "/s.sock".into(),
        delete_existing_uds_file: false,
        server_port: 0,
        server_bind_address: "1.1.1.1".into(),
        agent_port: 9001,
        agent_bind_address: "2.2.2.2".into(),
        admin_port: 9002,
        admin_bind_address: "3.3.3.3".into(),
        health_port: 9003,
        health_bind_address: "4.4.4.4".into(),
        keepalive_time: GoDuration::from_secs(30),
        frontend_keepalive_time: GoDuration::from_secs(45),
        enable_profiling: true,
        enable_contention_profiling: true,
        server_count: 3,
        agent_namespace: "ns".into(),
        agent_service_account: "sa".into(),
        authentication_audience: "aud".into(),
        kubeconfig: "/kc".into(),
        kubeconfig_qps: 2.5,
        kubeconfig_burst: 7,
        kube_api_content_type: "application/json".into(),
        proxy_strategies: "destHost,default".into(),
        cipher_suites: vec!["TLS_AES_128_GCM_SHA256".into()],
        tls_min_version: "VersionTLS13".into(),
        xfr_channel_size: 20,
        enable_lease_controller: true,
        lease_namespace: "ns2".into(),
        lease_label: "a=b".into(),
        graceful_shutdown_timeout: GoDuration::from_secs(5),
        backend_dial_timeout: GoDuration::from_millis(500),
        explicit_flags: o.explicit_flags.clone(),
        ..ServerOptions::with_server_id("s1".to_owned())
    };
    want.log.logtostderr = false;
    want.log.v = 2;
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
    let has = [
        "--mode string",
        "(default \"grpc\")",
        "--keepalive-time duration",
        "(default 1h0m0s)",
        "--cipher-suites strings",
        "-v, --v Level",
    ];
    let lacks = ["warn-on-channel-limit"];
    assert_help::<ServerOptions>("--help", "Usage:\n  proxy [flags]", (&has, &lacks));
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
fn rules_1_to_6_key_cert_and_ca_files() {
    assert_pair_rules(valid, "server", |o| {
        [&mut o.server_key, &mut o.server_cert, &mut o.server_ca_cert]
    });
    assert_pair_rules(valid, "cluster", |o| {
        [
            &mut o.cluster_key,
            &mut o.cluster_cert,
            &mut o.cluster_ca_cert,
        ]
    });
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
    assert_eq!(checked(valid(), |o| o.mode = "http-connect".into()), Ok(()));
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
    assert_eq!(
        rejected(valid(), |o| {
            o.server_port = 80;
            o.health_port = 60000;
        }),
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
    assert_eq!(
        checked(valid(), |o| {
            o.enable_contention_profiling = true;
            o.enable_profiling = true;
        }),
        Ok(())
    );
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
    assert_eq!(
        checked(valid(), |o| o.kubeconfig = existing_file("kubeconfig")),
        Ok(())
    );
}

#[test]
fn rule_14_proxy_strategies() {
    let with = |s: &str| ServerOptions {
        proxy_strategies: s.into(),
        ..valid()
    };
    assert_rejections(
        with,
        &[
            ("", "ProxyStrategies cannot be empty"),
            (
                "invalid",
                "invalid proxy strategies: unknown proxy strategy: invalid",
            ),
            (
                "DestHost",
                "invalid proxy strategies: unknown proxy strategy: DestHost",
            ),
            (
                ",,",
                "invalid proxy strategies: proxy strategies cannot be empty",
            ),
        ],
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
    assert_channel_size_rule(valid, |o| &mut o.xfr_channel_size);
}

#[test]
fn rule_16_tls_version() {
    assert_eq!(
        rejected(valid(), |o| o.tls_min_version = "VersionTLS14".into()),
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
    let o = parse(&["--cipher-suites=TLS_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"]);
    let o = with_valid_ca(o);
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
    assert_eq!(checked(valid(), |o| o.lease_label = String::new()), Ok(()));
    assert_eq!(
        rejected(valid(), |o| {
            o.lease_label = String::new();
            o.enable_lease_controller = true;
        }),
        "empty string provided"
    );
    assert_eq!(
        rejected(valid(), |o| {
            o.lease_label = "a=b,c".into();
            o.enable_lease_controller = true;
        }),
        "invalid label format: c"
    );
    let o = ServerOptions {
        lease_label: "b=2, a = 1".into(),
        enable_lease_controller: true,
        ..valid()
    };
    assert_eq!(o.validate(), Ok(()));
    let want = [("a", "1"), ("b", "2")].map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(o.lease_labels().unwrap(), want.into());
    assert!(o.needs_kubernetes_client());
}

#[test]
fn rule_19_negative_durations() {
    let o = parse(&["--graceful-shutdown-timeout=-1s"]);
    let o = with_valid_ca(o);
    assert_eq!(
        invalid_message(&o),
        "graceful-shutdown-timeout must be >= 0, got -1s"
    );
    assert_eq!(
        rejected(valid(), |o| o.backend_dial_timeout =
            GoDuration::from_millis(-1500)),
        "backend-dial-timeout must be >= 0, got -1.5s"
    );
    assert_eq!(
        checked(valid(), |o| {
            o.backend_dial_timeout = GoDuration::from_secs(5);
            o.graceful_shutdown_timeout = GoDuration::from_secs(1);
        }),
        Ok(())
    );
}

#[test]
fn validation_error_display_has_the_wrapper() {
    let tcp = ServerOptions::with_server_id("id".into());
    assert_eq!(
        tcp.validate().unwrap_err().to_string(),
        "failed to validate server options with server ca cert must be set when in TCP mode (uds-name is empty)"
    );
}

#[test]
fn socks5_frontend_is_off_by_default_and_only_binds_loopback() {
    let o = parse(&[]);
    assert_eq!(o.ext.socks5_port, 0);
    assert_eq!(o.ext.socks5_uds, "");
    assert_eq!(o.ext.socks5_bind_address, "127.0.0.1");
    let o = parse(&["--socks5-port=1080", "--socks5-uds=/run/s.sock"]);
    assert_eq!(o.ext.socks5_port, 1080);
    assert_eq!(o.ext.socks5_uds, "/run/s.sock");
    for ok in ["127.0.0.1", "127.1.2.3", "::1"] {
        let mut o = valid();
        o.ext.socks5_bind_address = ok.into();
        assert!(o.validate().is_ok(), "{ok}");
    }
    for bad in ["0.0.0.0", "10.0.0.1", "::"] {
        let mut o = valid();
        o.ext.socks5_bind_address = bad.into();
        let msg = invalid_message(&o);
        assert!(
            msg.contains("--socks5-bind-address must be a loopback address"),
            "{msg}"
        );
        // With username/password authentication it may face the network.
        o.ext.socks5_auth_file = "/etc/konnectivity/socks5-users".into();
        assert!(o.validate().is_ok(), "{bad} with --socks5-auth-file");
        // So may it with client certificates.
        o.ext.socks5_auth_file = String::new();
        o.ext.socks5_tls_cert_file = "/etc/konnectivity/socks5.crt".into();
        o.ext.socks5_tls_key_file = "/etc/konnectivity/socks5.key".into();
        assert!(o.validate().is_ok(), "{bad} with --socks5-tls-cert-file");
    }
    let mut o = valid();
    o.ext.socks5_tls_cert_file = "/etc/konnectivity/socks5.crt".into();
    assert!(
        invalid_message(&o)
            .contains("--socks5-tls-cert-file and --socks5-tls-key-file must be set together")
    );
    for bad in ["localhost", ""] {
        let mut o = valid();
        o.ext.socks5_bind_address = bad.into();
        o.ext.socks5_auth_file = "/etc/konnectivity/socks5-users".into();
        let msg = invalid_message(&o);
        assert!(
            msg.contains("--socks5-bind-address must be an IP address"),
            "{msg}"
        );
    }
    let mut o = valid();
    o.ext.socks5_port = 70000;
    assert!(invalid_message(&o).contains("--socks5-port must be a port"));
}
