//! `konnectivity doctor`: one command that names the cause when `kubectl logs` fails
//! with `dial tcp <node>:10250: i/o timeout` or `error dialing backend`.
//!
//! - `doctor server` (on the control plane): reads the server's `/status` (admin port),
//!   explains which agent would serve each destination (as the server's strategies
//!   would pick it), then dials `<node>:<port>` *through the tunnel* (the gRPC or
//!   HTTP-CONNECT frontend) and, when that works, tries a TLS handshake with what
//!   answers (the kubelet).
//! - `doctor agent` (on a node, with the agent's own flags): DNS of the server host, TCP
//!   to the agent port, TLS with `--ca-cert`, the ServiceAccount token, whether the
//!   server accepts the agent's Connect stream, and whether the local kubelet answers.
//!
//! Every check yields a [`Finding`] {check, target, status, cause, hint}; the exit code
//! is 0 when no finding has a failing status (`ok`, `warning` and `skipped` do not fail).
//!
//! Module map: [`report`] (findings, their status words and printing), [`server`] (the
//! checks of `doctor server`: probing destinations through the tunnel), [`route`] (which
//! agent the server would pick, explained from its `/status`), [`agent`] (the checks of
//! `doctor agent`, from proxy-agent's own flags through `konnectivity_agent::options`),
//! [`token`] (the ServiceAccount token check).

mod agent;
mod report;
mod route;
mod server;
mod token;

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use konnectivity_config::GoDuration;

use agent::AgentArgs;
use report::print;
use server::ServerArgs;

/// Arguments of `konnectivity doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(subcommand)]
    cmd: DoctorCmd,
}

#[derive(Subcommand, Debug)]
enum DoctorCmd {
    /// On the control plane: which agent serves each node, and what a dial to the node's
    /// port through the tunnel (the gRPC or HTTP-CONNECT frontend) answers.
    Server(ServerArgs),
    /// On a node: can this agent reach and join its server, and does the kubelet
    /// answer? Give proxy-agent's own flags after `--`.
    Agent(AgentArgs),
}

/// Output format.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
enum Output {
    /// One line per finding: status, cause, remediation hint.
    #[default]
    Text,
    /// A JSON array of {check, target, status, cause, hint}.
    Json,
}

pub(super) fn go_duration(s: &str) -> Result<Duration, String> {
    GoDuration::parse(s)
        .map_err(|e| e.to_string())?
        .to_std()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s}: must be positive"))
}

/// Runs a doctor subcommand, prints its findings; `true` when none failed.
pub async fn run(a: DoctorArgs) -> anyhow::Result<bool> {
    let (findings, output) = match a.cmd {
        DoctorCmd::Server(s) => {
            let out = s.output;
            (server::run(s).await?, out)
        }
        DoctorCmd::Agent(s) => {
            let out = s.output;
            (agent::run(s).await?, out)
        }
    };
    print(&findings, output);
    Ok(!findings.iter().any(|f| f.status.is_failure()))
}

/// `host:port`, bracketing IPv6 literals.
pub(super) fn host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}
