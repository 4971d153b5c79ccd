//! `proxy-agent`: parses upstream's flags and runs the agent.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use konnectivity_agent::{Agent, Hello, Settings};
use konnectivity_config::AgentOptions;
use konnectivity_tunnel::process;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    process::main(serve)
}

fn port(p: i64) -> anyhow::Result<u16> {
    u16::try_from(p).map_err(|_| anyhow::anyhow!("port {p} out of range"))
}

async fn serve(o: AgentOptions) -> anyhow::Result<()> {
    konnectivity_tls::install_provider();
    if o.ca_cert.is_empty() {
        anyhow::bail!("--ca-cert is required: the agent verifies the proxy-server's certificate");
    }
    let client = match (o.agent_cert.is_empty(), o.agent_key.is_empty()) {
        (false, false) => Some((Path::new(&o.agent_cert), Path::new(&o.agent_key))),
        _ => None,
    };
    let alpn: Vec<String> = o
        .alpn_proto
        .iter()
        .filter(|a| !a.is_empty() && a.as_str() != "[]")
        .cloned()
        .collect();
    let tls = konnectivity_tls::agent_client(Path::new(&o.ca_cert), client, &alpn)?;
    let settings = Settings {
        hosts: o.server_hosts(),
        port: port(o.proxy_server_port)?,
        tls: Arc::new(tls),
        hello: Hello {
            agent_id: o.agent_id.clone(),
            identifiers: o.agent_identifiers.clone(),
            token_path: (!o.service_account_token_path.is_empty())
                .then(|| PathBuf::from(&o.service_account_token_path)),
            flow_window: Some(konnectivity_core::flow::DEFAULT_WINDOW),
        },
        sync_interval: o
            .sync_interval
            .to_std()
            .unwrap_or_default()
            .max(std::time::Duration::from_millis(10)),
        sync_interval_cap: o.sync_interval_cap.to_std().unwrap_or_default(),
        sync_forever: o.sync_forever,
        keepalive: o.keepalive_time.to_std().unwrap_or_default(),
        max_chunk: konnectivity_core::flow::MAX_CHUNK,
        leases: None,
        drain_timeout: o.ext.drain_timeout.to_std().unwrap_or_default(),
        policy: o.ext.policy(),
    };
    let mut settings = settings;
    if o.count_server_leases {
        let client = konnectivity_k8s::connect(&o.kubeconfig).await?;
        settings.leases = Some(konnectivity_agent::LeaseCounting {
            counter: konnectivity_k8s::lease::LeaseCounter::new(
                client,
                &o.lease_namespace,
                &o.lease_label_selector.to_string(),
            ),
            use_max: matches!(
                o.server_count_source()?,
                konnectivity_config::ServerCountSource::Max
            ),
        });
    }
    if settings.hosts.is_empty() {
        anyhow::bail!("--proxy-server-host must name at least one host");
    }
    let health = process::bind_tcp(&o.health_server_host, port(o.health_server_port)?)?;
    let admin = process::bind_tcp(&o.admin_bind_address, port(o.admin_server_port)?)?;
    let budget = konnectivity_tunnel::budget::MemoryBudget::new(
        o.ext.buffer_budget(),
        o.ext.stall_timeout.to_std().unwrap_or_default(),
    );
    let agent = Agent::with_budget(settings, budget);
    let drain = process::shutdown_on_signals();
    // The second signal exits the process (see `shutdown_on_signals`); until then the
    // agent drains and keeps serving established connections.
    let stop = CancellationToken::new();
    konnectivity_agent::run(agent, Some(health), Some(admin), drain, stop).await;
    Ok(())
}
