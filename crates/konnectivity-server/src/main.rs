//! `proxy-server`: parses upstream's flags, binds, and runs the server.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use konnectivity_config::{ProxyStrategy, ServerOptions, TlsVersion};
use konnectivity_core::select::Strategy;
use konnectivity_runtime::process;
use konnectivity_server::{Frontend, FrontendListener, Listeners, Mode, Settings};
use konnectivity_tls::MinVersion;
use tracing::{info, warn};

fn main() -> ExitCode {
    process::main(serve)
}

fn port(p: i64) -> anyhow::Result<u16> {
    u16::try_from(p).map_err(|_| anyhow::anyhow!("port {p} out of range"))
}

async fn serve(o: ServerOptions) -> anyhow::Result<()> {
    konnectivity_tls::install_provider();
    let mode = match o.mode()? {
        konnectivity_config::Mode::Grpc => Mode::Grpc,
        konnectivity_config::Mode::HttpConnect => Mode::HttpConnect,
    };
    let min = match o.tls_min_version()? {
        TlsVersion::Tls13 => MinVersion::Tls13,
        v => {
            if matches!(v, TlsVersion::Tls10 | TlsVersion::Tls11) {
                warn!(
                    "--tls-min-version below VersionTLS12 is insecure; rustls offers TLS 1.2 and 1.3 only"
                );
            }
            MinVersion::Tls12
        }
    };
    let strategies = o
        .proxy_strategies()?
        .into_iter()
        .map(|s| match s {
            ProxyStrategy::Default => Strategy::Default,
            ProxyStrategy::DestHost => Strategy::DestHost,
            ProxyStrategy::DefaultRoute => Strategy::DefaultRoute,
        })
        .collect();
    let settings = Settings {
        server_id: o.server_id.clone(),
        server_count: u32::try_from(o.server_count.max(1)).unwrap_or(1),
        strategies,
        backend_dial_timeout: o.backend_dial_timeout.to_std().filter(|d| !d.is_zero()),
        agent_keepalive: o.keepalive_time.to_std().unwrap_or_default(),
        frontend_keepalive: o.frontend_keepalive_time.to_std().unwrap_or_default(),
        connect_header_timeout: o.ext.connect_header_timeout.to_std().unwrap_or_default(),
        dial_deadline: o.ext.dial_deadline.to_std().filter(|d| !d.is_zero()),
        policy: o.ext.policy(),
        max_pending_per_agent: usize::try_from(o.ext.max_pending_dials_per_agent).unwrap_or(0),
        max_conns_per_agent: usize::try_from(o.ext.max_connections_per_agent).unwrap_or(0),
        max_buffered_bytes: o.ext.buffer_budget(),
        stall_timeout: o.ext.stall_timeout.to_std().unwrap_or_default(),
        enable_udp: o.ext.enable_udp,
        socks5_users: socks5_users(&o.ext.socks5_auth_file)?,
        ..Settings::default()
    };

    for name in &o.cipher_suites {
        if !name.starts_with("TLS_AES_")
            && !name.starts_with("TLS_CHACHA20")
            && konnectivity_tls::tls12_suite(name).is_none()
        {
            warn!(suite = %name, "--cipher-suites: rustls does not implement this suite; it is not offered");
        }
    }
    let policy = konnectivity_tls::TlsPolicy {
        min,
        cipher_suites: o.cipher_suites.clone(),
    };
    let cluster_ca = (!o.cluster_ca_cert.is_empty()).then(|| Path::new(&o.cluster_ca_cert));
    let agent_tls = konnectivity_tls::agent_listener_with(
        Path::new(&o.cluster_cert),
        Path::new(&o.cluster_key),
        cluster_ca,
        &policy,
    )?;
    let frontend = if o.uds_name.is_empty() {
        let tls = konnectivity_tls::frontend_listener_with(
            Path::new(&o.server_cert),
            Path::new(&o.server_key),
            Path::new(&o.server_ca_cert),
            mode == Mode::HttpConnect,
            &policy,
        )?;
        let l = process::bind_tcp(&o.server_bind_address, port(o.server_port)?)?;
        FrontendListener::Tcp(l, Arc::new(tls))
    } else {
        FrontendListener::Uds(bind_uds(&o.uds_name, o.delete_existing_uds_file)?)
    };
    let agent = process::bind_tcp(&o.agent_bind_address, port(o.agent_port)?)?;
    let health = process::bind_tcp(&o.health_bind_address, port(o.health_port)?)?;
    let admin = process::bind_tcp(&o.admin_bind_address, port(o.admin_port)?)?;
    info!(
        agent = ?agent.local_addr().ok(), health = ?health.local_addr().ok(), admin = ?admin.local_addr().ok(),
        uds = %o.uds_name, "listening"
    );
    let mut frontends = vec![Frontend {
        mode,
        listener: frontend,
    }];
    frontends.extend(socks5_frontends(&o, &policy)?);
    let listeners = Listeners {
        agent,
        agent_tls: Arc::new(agent_tls),
        frontends,
        health: Some(health),
        admin: Some(admin),
    };
    let client = if o.needs_kubernetes_client() {
        Some(konnectivity_k8s::connect(&o.kubeconfig).await?)
    } else {
        None
    };
    let auth = match (&client, o.token_auth_enabled()) {
        (Some(c), true) => Some(konnectivity_k8s::auth::TokenAuthenticator::new(
            c.clone(),
            konnectivity_k8s::auth::Expectation {
                namespace: o.agent_namespace.clone(),
                service_account: o.agent_service_account.clone(),
                audience: o.authentication_audience.clone(),
            },
            o.ext.authentication_cache_ttl.to_std().unwrap_or_default(),
        )),
        _ => None,
    };
    let shutdown = process::shutdown_on_signals();
    let shared = konnectivity_server::Shared::with_auth(settings, auth);
    let leases = match (&client, o.enable_lease_controller) {
        (Some(c), true) => {
            let ctl = konnectivity_k8s::lease::LeaseController::new(
                c.clone(),
                &o.lease_namespace,
                &o.server_id,
                o.lease_labels()?,
            )
            .with_events(shared.metrics.clone());
            let stop = shutdown.clone();
            Some(tokio::spawn(ctl.run(stop)))
        }
        _ => None,
    };
    let grace = o.graceful_shutdown_timeout.to_std().unwrap_or_default();
    let drained = {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            // Listeners stop accepting at once; established connections may finish
            // within --graceful-shutdown-timeout (0: exit now).
            let deadline = tokio::time::Instant::now() + grace;
            while shared.metrics.established() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            info!(established = shared.metrics.established(), "shutting down");
        }
    };
    let served = tokio::select! {
        r = konnectivity_server::run_with(shared.clone(), listeners, shutdown.clone()) => r,
        _ = drained => Ok(()),
    };
    shutdown.cancel();
    if let Some(l) = leases {
        // Deletes our lease before exiting.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), l).await;
    }
    served?;
    for path in [&o.uds_name, &o.ext.socks5_uds] {
        if !path.is_empty() {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// `--socks5-auth-file`, read once at start-up: its users, with a warning when others
/// may read it.
fn socks5_users(path: &str) -> anyhow::Result<Option<Arc<konnectivity_core::socks::Users>>> {
    if path.is_empty() {
        return Ok(None);
    }
    let meta =
        std::fs::metadata(path).map_err(|e| anyhow::anyhow!("--socks5-auth-file {path}: {e}"))?;
    if meta.permissions().mode() & 0o004 != 0 {
        warn!(
            path,
            "--socks5-auth-file is readable by every user on this machine; make it 0600 or 0640"
        );
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--socks5-auth-file {path}: {e}"))?;
    let users = konnectivity_core::socks::Users::parse(&text)
        .map_err(|e| anyhow::anyhow!("--socks5-auth-file {path}: {e}"))?;
    info!(
        path,
        users = users.len(),
        "SOCKS5 username/password authentication"
    );
    Ok(Some(Arc::new(users)))
}

/// The SOCKS5 frontends (our extension): `--socks5-port` on `--socks5-bind-address`
/// (validated to be loopback unless `--socks5-auth-file` or `--socks5-tls-cert-file` is
/// set; with the latter it speaks TLS and requires client certificates) and
/// `--socks5-uds`, each off when unset.
fn socks5_frontends(
    o: &ServerOptions,
    policy: &konnectivity_tls::TlsPolicy,
) -> anyhow::Result<Vec<Frontend>> {
    let mut out = Vec::new();
    if o.ext.socks5_port != 0 {
        let listener = if o.ext.socks5_tls() {
            let ca = match (&*o.ext.socks5_tls_client_ca_file, &*o.server_ca_cert) {
                ("", "") => anyhow::bail!(
                    "--socks5-tls-cert-file needs a CA for client certificates: set --socks5-tls-client-ca-file (or --server-ca-cert)"
                ),
                ("", frontend_ca) => frontend_ca,
                (ca, _) => ca,
            };
            let tls = konnectivity_tls::socks5_listener_with(
                Path::new(&o.ext.socks5_tls_cert_file),
                Path::new(&o.ext.socks5_tls_key_file),
                Path::new(ca),
                policy,
            )
            .map_err(|e| {
                anyhow::anyhow!("--socks5-tls-cert-file/--socks5-tls-key-file/client CA {ca}: {e}")
            })?;
            let l = process::bind_tcp(&o.ext.socks5_bind_address, port(o.ext.socks5_port)?)?;
            info!(socks5 = ?l.local_addr().ok(), client_ca = %ca, "listening (TLS, client certificates required)");
            FrontendListener::Tcp(l, Arc::new(tls))
        } else {
            let l = process::bind_tcp(&o.ext.socks5_bind_address, port(o.ext.socks5_port)?)?;
            info!(socks5 = ?l.local_addr().ok(), "listening");
            FrontendListener::Loopback(l)
        };
        out.push(Frontend {
            mode: Mode::Socks5,
            listener,
        });
    }
    if !o.ext.socks5_uds.is_empty() {
        let l = bind_uds(&o.ext.socks5_uds, o.delete_existing_uds_file)?;
        info!(socks5_uds = %o.ext.socks5_uds, "listening");
        out.push(Frontend {
            mode: Mode::Socks5,
            listener: FrontendListener::Uds(l),
        });
    }
    Ok(out)
}

/// Binds the frontend UNIX socket. Upstream creates it under umask 0007; we bind and
/// then restrict it to owner and group (0770) before serving.
fn bind_uds(path: &str, delete_existing: bool) -> anyhow::Result<tokio::net::UnixListener> {
    if delete_existing {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path, error = %e, "failed to delete the existing UDS file"),
        }
    }
    let l = tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("failed to listen on UDS {path}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o770))?;
    Ok(l)
}
