//! `proxy-agent`: parses upstream's flags and runs the agent.
use std::process::ExitCode;
use std::sync::Arc;

use konnectivity_agent::options;
use konnectivity_agent::{Agent, Settings};
use konnectivity_config::AgentOptions;
use konnectivity_runtime::process;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    process::main(serve)
}

async fn serve(o: AgentOptions) -> anyhow::Result<()> {
    konnectivity_tls::install_provider();
    let tls = options::client_tls(&o)?;
    let mut settings = Settings::from_options(&o, Arc::new(tls))?;
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
    let health = process::bind_tcp(&o.health_server_host, options::port(o.health_server_port)?)?;
    let admin = process::bind_tcp(&o.admin_bind_address, options::port(o.admin_server_port)?)?;
    let budget = konnectivity_tunnel::budget::MemoryBudget::new(
        o.ext.buffer_budget(),
        o.ext.stall_timeout.to_std().unwrap_or_default(),
    );
    let agent = Agent::with_budget(settings, budget);
    let drain = process::shutdown_on_signals();
    if !o.ext.node_name.is_empty() {
        follow_node(&o, agent.clone(), drain.clone()).await?;
    }
    // The second signal exits the process (see `shutdown_on_signals`); until then the
    // agent drains and keeps serving established connections.
    let stop = CancellationToken::new();
    konnectivity_agent::run(agent, Some(health), Some(admin), drain, stop).await;
    Ok(())
}

/// `--node-name`: announce the Node's pod CIDRs from the first connection on (one GET,
/// bounded; a failure is logged and retried by the watch), then follow them until the
/// agent drains.
async fn follow_node(
    o: &AgentOptions,
    agent: Arc<Agent>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client = konnectivity_k8s::connect(&o.kubeconfig).await?;
    let node = konnectivity_k8s::node::NodeCidrs::new(client, &o.ext.node_name);
    match tokio::time::timeout(std::time::Duration::from_secs(10), node.get()).await {
        Ok(Ok((cidrs, _))) => {
            agent.announce_pod_cidrs(&cidrs);
        }
        Ok(Err(e)) => {
            tracing::warn!(node = %o.ext.node_name, error = %e, "reading the Node's pod CIDRs failed; connecting without them and retrying")
        }
        Err(_) => {
            tracing::warn!(node = %o.ext.node_name, "reading the Node's pod CIDRs timed out; connecting without them and retrying")
        }
    }
    tokio::spawn(async move {
        node.follow(
            move |cidrs| {
                agent.announce_pod_cidrs(&cidrs);
            },
            stop,
        )
        .await
    });
    Ok(())
}
