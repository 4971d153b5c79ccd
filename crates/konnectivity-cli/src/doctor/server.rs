//! `doctor server`: on the control plane, reads the server's `/status`, explains the route
//! of each destination, dials it through the tunnel and tries TLS with what answers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use konnectivity_client::{ClientError, Frontend};
use konnectivity_tls::{ServerName, TlsConnector};

use super::agent::rustls_error;
use super::report::{Finding, Status, finding, ok};
use super::route::{fetch_status, route, status_finding};
use super::{Output, go_duration, host_port};

/// Arguments of `konnectivity doctor server`. The frontend flags are [`FrontendArgs`]'s,
/// with help for this command.
///
/// [`FrontendArgs`]: crate::FrontendArgs
#[derive(Args, Debug)]
#[command(
    mut_arg("ca", |a| a.help("CA that signed the server certificate (with --tcp)")),
    mut_arg("cert", |a| a.help("Client certificate (with --tcp)")),
    mut_arg("key", |a| a.help("Client key (with --tcp)")),
    mut_arg("http_connect", |a| {
        a.help("Use the HTTP-CONNECT frontend (a server in `--mode=http-connect`)")
    })
)]
pub(super) struct ServerArgs {
    /// The server's admin address (`--admin-bind-address:--admin-port`), for `/status`.
    #[arg(long)]
    admin: String,
    #[command(flatten)]
    fe: crate::FrontendArgs,
    /// A destination to check: a node IP or name as kube-apiserver dials it
    /// (repeatable).
    #[arg(long = "node", value_name = "IP_OR_NAME")]
    nodes: Vec<String>,
    /// Also check every IP address the connected agents announce (the default when no
    /// --node is given). Names are not probed: kube-apiserver dials nodes by IP unless
    /// its --kubelet-preferred-address-types says otherwise; use --node NAME for those.
    #[arg(long)]
    all_agents: bool,
    /// The port to dial on each destination.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// Do not try a TLS handshake after a successful dial (for ports that are not TLS).
    #[arg(long)]
    no_tls: bool,
    /// Bound of each dial and handshake (Go duration). The agent itself gives up on a
    /// dial after 5 s.
    #[arg(long, default_value = "10s", value_parser = go_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub(super) output: Output,
}

pub(super) async fn run(a: ServerArgs) -> anyhow::Result<Vec<Finding>> {
    let frontend = a.fe.frontend()?;
    let mut out = Vec::new();
    let status = fetch_status(&a.admin, a.timeout, None).await;
    out.push(status_finding(&a.admin, &status));
    let st = status.ok();

    let mut dests: Vec<String> = a.nodes.clone();
    if a.all_agents || a.nodes.is_empty() {
        let mut names: Vec<&str> = Vec::new();
        for ag in st.iter().flat_map(|s| s.agents.iter()) {
            for h in &ag.hosts {
                if h.parse::<IpAddr>().is_err() {
                    if !names.contains(&h.as_str()) && !a.nodes.contains(h) {
                        names.push(h);
                    }
                } else if !dests.contains(h) {
                    dests.push(h.clone());
                }
            }
        }
        if !names.is_empty()
            && let Some(f) = out.first_mut()
        {
            f.cause.push_str(&format!(
                "; announced names not probed (kube-apiserver dials node IPs by default; use --node NAME): {}",
                names.join(", ")
            ));
        }
    }
    if dests.is_empty() && st.is_some() {
        out.push(finding(
            "route",
            "--node",
            Status::Skipped,
            "nothing to probe: the connected agents announce no IP address (no ipv4=/ipv6= in --agent-identifiers)",
            "give the node addresses kube-apiserver dials with --node IP",
        ));
    }
    let a = &a;
    let frontend = &frontend;
    let st = &st;
    let per_dest = futures::stream::iter(dests.into_iter().map(|d| async move {
        let mut fs = Vec::new();
        if let Some(st) = st {
            // The server explains its own choice for this destination, now.
            match fetch_status(&a.admin, a.timeout, Some(&d)).await {
                Ok(konnectivity_server::status::document::Status { route: Some(r), .. }) => fs.push(route(&r, &st.strategies)),
                Ok(_) => fs.push(finding(
                    "route",
                    d.as_str(),
                    Status::Skipped,
                    "the server's /status has no route explanation (a konnectivity-rs server older than the explain query)",
                    "upgrade proxy-server; dials are still probed",
                )),
                Err(e) => fs.push(finding(
                    "route",
                    d.as_str(),
                    Status::Failed,
                    format!("cannot ask the server how it routes {d}: {e}"),
                    "",
                )),
            }
        }
        fs.extend(probe(frontend, a, &d).await);
        fs
    }))
    .buffered(16)
    .collect::<Vec<_>>()
    .await;
    out.extend(per_dest.into_iter().flatten());
    Ok(out)
}

type Tunnel = Box<dyn konnectivity_client::Io>;

async fn dial(
    f: &Frontend,
    http_connect: bool,
    addr: &str,
    t: Duration,
) -> Result<Tunnel, ClientError> {
    let attempt = async {
        if http_connect {
            let (io, _rest) = konnectivity_client::connect_dial(f, addr, t).await?;
            Ok::<Tunnel, ClientError>(Box::new(io))
        } else {
            let io = konnectivity_client::grpc_dial(f, addr, t).await?;
            Ok(Box::new(io) as Tunnel)
        }
    };
    tokio::time::timeout(t + Duration::from_secs(1), attempt)
        .await
        .unwrap_or(Err(ClientError::Timeout))
}

/// Dials `dest:port` through the tunnel, then (unless --no-tls) a TLS handshake.
async fn probe(f: &Frontend, a: &ServerArgs, dest: &str) -> Vec<Finding> {
    let addr = host_port(dest, a.port);
    let started = std::time::Instant::now();
    let io = match dial(f, a.fe.http_connect, &addr, a.timeout).await {
        Ok(io) => io,
        Err(e) => return vec![classify_dial(&addr, dest, a.port, a.timeout, &e)],
    };
    let mut out = vec![ok(
        "dial",
        addr.as_str(),
        format!(
            "the tunnel connected to {addr} on the node in {:.1?}",
            started.elapsed()
        ),
    )];
    if !a.no_tls {
        out.push(tls_probe(io, &addr, dest, a.port, a.timeout).await);
    }
    out
}

/// Classifies a failed tunneled dial by the server's or agent's error text.
fn classify_dial(addr: &str, host: &str, port: u16, t: Duration, e: &ClientError) -> Finding {
    let text = match e {
        ClientError::Connect(io) => {
            return finding(
                "dial",
                addr,
                Status::Failed,
                format!("cannot reach the proxy-server frontend: {io}"),
                "--uds must be the server's --uds-name socket (or --tcp its --server-bind-address:--server-port, with the client certificate the server's --server-ca-cert trusts)",
            );
        }
        ClientError::Timeout => {
            return finding(
                "dial",
                addr,
                Status::TimedOut,
                format!("no answer through the tunnel within {t:?}"),
                "neither the agent nor the server answered the dial: check the agent's log on the node and the server's log",
            );
        }
        ClientError::Http { status, body } => format!("{status}: {}", body.trim()),
        other => other.to_string(),
    };
    let quoted = format!("(`{}`)", text.trim());
    let lower = text.to_lowercase();
    if text.contains(konnectivity_core::wire::NO_AGENT_AVAILABLE) {
        finding(
            "dial",
            addr,
            Status::NoAgent,
            format!("the server has no agent for {host} {quoted}"),
            format!(
                "no connected agent announces {host}: start or fix the proxy-agent on that node (`konnectivity doctor agent` there) and include ipv4={host} in its --agent-identifiers"
            ),
        )
    } else if lower.contains("connection refused") {
        finding(
            "dial",
            addr,
            Status::Refused,
            format!("nothing accepts connections on {addr} on the node {quoted}"),
            format!(
                "is the kubelet (or the service) running on the node and listening on port {port}? (`ss -ltn 'sport = :{port}'` on the node); a firewall REJECT rule gives the same answer"
            ),
        )
    } else if lower.contains("i/o timeout")
        || text.contains(konnectivity_core::wire::BACKEND_DIAL_TIMEOUT)
        || lower.contains("timed out")
    {
        finding(
            "dial",
            addr,
            Status::TimedOut,
            format!("packets to {addr} are dropped {quoted}"),
            format!(
                "check the node's firewall (NSG, UFW, iptables) for port {port}; the agent dials from the node itself, so the node's INPUT rules must accept port {port}"
            ),
        )
    } else if lower.contains("no route to host")
        || lower.contains("network is unreachable")
        || lower.contains("host is unreachable")
    {
        finding(
            "dial",
            addr,
            Status::Unreachable,
            format!("the agent's node has no route to {host} {quoted}"),
            format!(
                "{host} is not reachable from the node of the agent that served the dial: check that node's routes, and that the agent announcing {host} runs on the node that owns it"
            ),
        )
    } else if lower.contains("no such host") || lower.contains("lookup") {
        finding(
            "dial",
            addr,
            Status::DnsFailed,
            format!("the agent's node cannot resolve {host} {quoted}"),
            "dial the node by IP (kube-apiserver --kubelet-preferred-address-types=InternalIP,…) or fix DNS on the node",
        )
    } else if text.contains(konnectivity_core::wire::AGENT_DISCONNECTED) {
        finding(
            "dial",
            addr,
            Status::Failed,
            format!("the agent disconnected during the dial {quoted}"),
            "the agent is restarting or its connection to the server flaps: check the agent's log and `konnectivity doctor agent` on the node",
        )
    } else if lower.contains("denied") {
        finding(
            "dial",
            addr,
            Status::Rejected,
            format!("a destination policy refused {addr} {quoted}"),
            "check the destination policy flags of the server and the agent",
        )
    } else {
        finding(
            "dial",
            addr,
            Status::Failed,
            format!("the dial failed {quoted}"),
            "see the server's and the agent's logs for this address",
        )
    }
}

/// A TLS handshake over the tunneled connection, accepting any certificate: is there a
/// TLS server (the kubelet) behind the port?
async fn tls_probe(io: Tunnel, addr: &str, host: &str, port: u16, t: Duration) -> Finding {
    let cfg = match konnectivity_tls::diagnostic_client_accepting_any_server_certificate(&[]) {
        Ok(c) => Arc::new(c),
        Err(e) => return finding("tls", addr, Status::Failed, e.to_string(), ""),
    };
    let name = match ServerName::try_from(host.to_owned()) {
        Ok(n) => n,
        Err(e) => return finding("tls", addr, Status::Failed, format!("{host}: {e}"), ""),
    };
    let hint = format!(
        "the tunnel works, but what answers on port {port} is not a TLS server (plain HTTP? another service?): check what listens on port {port} on the node and the kubelet's --port/--tls-cert-file"
    );
    match tokio::time::timeout(t, TlsConnector::from(cfg).connect(name, io)).await {
        Ok(Ok(s)) => {
            let v = s
                .get_ref()
                .1
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            ok(
                "tls",
                addr,
                format!(
                    "a TLS server answers on {addr} ({v}; its certificate is not verified by doctor)"
                ),
            )
        }
        Ok(Err(e)) => {
            let what = match rustls_error(&e) {
                Some(
                    rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. },
                ) => {
                    format!("what answers on {addr} does not speak TLS (plain HTTP?)")
                }
                _ => format!("the TLS handshake with {addr} failed"),
            };
            finding(
                "tls",
                addr,
                Status::TlsFailed,
                format!("the tunnel connected, but {what}: {e}"),
                hint,
            )
        }
        Err(_) => finding(
            "tls",
            addr,
            Status::TlsFailed,
            format!("the tunnel connected, but no TLS answer from {addr} within {t:?}"),
            hint,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_errors_are_classified() {
        let t = Duration::from_secs(1);
        let c = |s: &str| classify_dial("h:1", "h", 1, t, &ClientError::Dial(s.into())).status;
        assert_eq!(c("No agent available"), Status::NoAgent);
        assert_eq!(
            c("dial tcp 1.2.3.4:1: connect: connection refused"),
            Status::Refused
        );
        assert_eq!(c("dial tcp 1.2.3.4:1: i/o timeout"), Status::TimedOut);
        assert_eq!(
            c("dial tcp 1.2.3.4:1: connect: no route to host"),
            Status::Unreachable
        );
        assert_eq!(
            c("dial tcp 1.2.3.4:1: connect: network is unreachable"),
            Status::Unreachable
        );
        assert_eq!(c("dial tcp: lookup h: no such host"), Status::DnsFailed);
        let http = ClientError::Http {
            status: "503 Service Unavailable".into(),
            body: "Failed to tunnel dial request: dial tcp 1.2.3.4:1: i/o timeout".into(),
        };
        assert_eq!(
            classify_dial("h:1", "h", 1, t, &http).status,
            Status::TimedOut
        );
    }
}
