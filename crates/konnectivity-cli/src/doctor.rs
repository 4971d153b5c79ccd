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
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use konnectivity_client::{ClientError, Frontend};
use konnectivity_config::{AgentOptions, ConfigError, GoDuration};
use konnectivity_core::select::Cidr;
use konnectivity_tls::{ServerName, TlsConnector};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

fn go_duration(s: &str) -> Result<Duration, String> {
    GoDuration::parse(s)
        .map_err(|e| e.to_string())?
        .to_std()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s}: must be positive"))
}

/// Arguments of `konnectivity doctor server`.
#[derive(Args, Debug)]
struct ServerArgs {
    /// The server's admin address (`--admin-bind-address:--admin-port`), for `/status`.
    #[arg(long)]
    admin: String,
    /// The server's frontend UNIX socket (`--uds-name`).
    #[arg(long)]
    uds: Option<PathBuf>,
    /// The server's frontend TCP address (mTLS).
    #[arg(long)]
    tcp: Option<String>,
    /// CA that signed the server certificate (with --tcp).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (with --tcp).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (with --tcp).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Server name to verify (default: the host of --tcp).
    #[arg(long)]
    server_name: Option<String>,
    /// Use the HTTP-CONNECT frontend (a server in `--mode=http-connect`).
    #[arg(long)]
    http_connect: bool,
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
    output: Output,
}

/// Arguments of `konnectivity doctor agent`.
#[derive(Args, Debug)]
struct AgentArgs {
    /// The kubelet port to check on this node (127.0.0.1 and the node IPs of
    /// --agent-identifiers).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Bound of each network check (Go duration).
    #[arg(long, default_value = "5s", value_parser = go_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    /// proxy-agent's flags, exactly as the agent is started (after `--`).
    #[arg(last = true, value_name = "PROXY_AGENT_FLAGS")]
    agent_flags: Vec<String>,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Ok,
    /// Works, but something deserves attention.
    Warning,
    /// Not applicable with the given flags.
    Skipped,
    /// Failed for a reason none of the other words names.
    Failed,
    /// No answer: packets are dropped somewhere.
    TimedOut,
    /// Actively refused: nothing listens (or a REJECT rule).
    Refused,
    /// No route.
    Unreachable,
    /// The server has no agent for the destination.
    NoAgent,
    /// A TLS handshake failed.
    TlsFailed,
    /// A name did not resolve.
    DnsFailed,
    /// A credential expired.
    Expired,
    /// The peer refused us (the server refused the agent, a policy denied a dial).
    Rejected,
}

impl Status {
    /// The status word (JSON `status`, and the first word of a text line).
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::TimedOut => "timed out",
            Status::Refused => "refused",
            Status::Unreachable => "unreachable",
            Status::NoAgent => "no agent",
            Status::TlsFailed => "tls failed",
            Status::DnsFailed => "dns failed",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
        }
    }

    /// Whether this status makes the exit code 1.
    pub fn is_failure(self) -> bool {
        !matches!(self, Status::Ok | Status::Warning | Status::Skipped)
    }
}

/// One result.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What was checked (`status`, `route`, `dial`, `tls`, `config`, `dns`, `tcp`,
    /// `token`, `connect`, `kubelet`).
    pub check: &'static str,
    /// What it was checked against.
    pub target: String,
    /// How it ended.
    pub status: Status,
    /// One line: what was found.
    pub cause: String,
    /// One line: what to do about it (empty when nothing is needed).
    pub hint: String,
}

fn finding(
    check: &'static str,
    target: impl Into<String>,
    status: Status,
    cause: impl Into<String>,
    hint: impl Into<String>,
) -> Finding {
    Finding {
        check,
        target: target.into(),
        status,
        cause: cause.into(),
        hint: hint.into(),
    }
}

fn ok(check: &'static str, target: impl Into<String>, cause: impl Into<String>) -> Finding {
    finding(check, target, Status::Ok, cause, "")
}

/// Runs a doctor subcommand, prints its findings; `true` when none failed.
pub async fn run(a: DoctorArgs) -> anyhow::Result<bool> {
    let (findings, output) = match a.cmd {
        DoctorCmd::Server(s) => {
            let out = s.output;
            (server(s).await?, out)
        }
        DoctorCmd::Agent(s) => {
            let out = s.output;
            (agent(s).await?, out)
        }
    };
    print(&findings, output);
    Ok(!findings.iter().any(|f| f.status.is_failure()))
}

fn print(findings: &[Finding], output: Output) {
    match output {
        Output::Json => {
            let arr: Vec<Value> = findings
                .iter()
                .map(|f| {
                    json!({"check": f.check, "target": f.target, "status": f.status.word(),
                           "cause": f.cause, "hint": f.hint})
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&Value::Array(arr)).unwrap_or_default()
            );
        }
        Output::Text => {
            for f in findings {
                println!("{}", text_line(f));
            }
            let failed = findings.iter().filter(|f| f.status.is_failure()).count();
            if failed == 0 {
                println!("all {} checks passed", findings.len());
            } else {
                println!("{failed} of {} checks failed", findings.len());
            }
        }
    }
}

/// `   timed out  dial 10.0.0.7:10250: <cause> — <hint>`
pub fn text_line(f: &Finding) -> String {
    let mut s = format!(
        "{:>11}  {} {}: {}",
        f.status.word(),
        f.check,
        f.target,
        f.cause
    );
    if !f.hint.is_empty() {
        s.push_str(" — ");
        s.push_str(&f.hint);
    }
    s
}

/// `host:port`, bracketing IPv6 literals.
fn host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

// ---------------------------------------------------------------------------------------
// doctor server

/// One agent stream as `/status` lists it.
#[derive(Debug, Clone)]
struct StatusAgent {
    id: String,
    stream: u64,
    hosts: Vec<String>,
    cidrs: Vec<String>,
    default_route: bool,
    draining: bool,
    connected_since: u64,
}

#[derive(Debug, Clone, Default)]
struct ServerStatus {
    server_id: String,
    strategies: Vec<String>,
    agents: Vec<StatusAgent>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

fn parse_status(v: &Value) -> ServerStatus {
    ServerStatus {
        server_id: v["server_id"].as_str().unwrap_or_default().to_owned(),
        strategies: strings(&v["strategies"]),
        agents: v["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| StatusAgent {
                id: a["agent_id"].as_str().unwrap_or_default().to_owned(),
                stream: a["stream"].as_u64().unwrap_or(0),
                hosts: strings(&a["hosts"]),
                cidrs: strings(&a["cidrs"]),
                default_route: a["default_route"].as_bool().unwrap_or(false),
                draining: a["draining"].as_bool().unwrap_or(false),
                connected_since: a["connected_since"].as_u64().unwrap_or(0),
            })
            .collect(),
    }
}

/// GET `http://<admin>/status` (HTTP/1.1, `Connection: close`).
async fn fetch_status(admin: &str, timeout: Duration) -> Result<Value, String> {
    let get = async {
        let mut s = TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET /status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(timeout, get)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP response".to_owned())?;
    let code = head.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!(
            "HTTP {code} (an upstream proxy-server has no /status; this needs konnectivity-rs)"
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))
}

/// Which agent the server would pick for `dest`, explained (mirrors
/// `konnectivity_core::select::BackendTable::pick`: strategies in order, first hit wins).
fn route(st: &ServerStatus, dest: &str) -> Finding {
    let names = |agents: &[&StatusAgent]| {
        let mut ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
        ids.dedup();
        ids.join(", ")
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let describe = |a: &StatusAgent| {
        let since = if a.connected_since > 0 {
            format!(
                ", connected for {}",
                human_secs(now.saturating_sub(a.connected_since) as i64)
            )
        } else {
            String::new()
        };
        format!(
            "agent {} (stream {}{since}{})",
            a.id,
            a.stream,
            if a.draining { ", draining" } else { "" }
        )
    };
    let draining_warning = |a: &StatusAgent, how: String| {
        if a.draining {
            finding(
                "route",
                dest,
                Status::Warning,
                format!("{} — {how}; it is draining (shutting down)", describe(a)),
                "no other agent announces this destination; when the draining agent exits, dials fail with `No agent available` until its replacement connects",
            )
        } else {
            ok("route", dest, format!("{} — {how}", describe(a)))
        }
    };
    let ip: Option<IpAddr> = dest.parse().ok();
    for s in &st.strategies {
        match s.as_str() {
            "destHost" => {
                let exact: Vec<&StatusAgent> = st
                    .agents
                    .iter()
                    .filter(|a| a.hosts.iter().any(|h| h == dest))
                    .collect();
                if let Some(a) = exact.iter().find(|a| !a.draining).or(exact.first()) {
                    return draining_warning(
                        a,
                        format!("exact match of its announced host {dest} (strategy destHost)"),
                    );
                }
                if let Some(ip) = ip {
                    let mut best: Option<(u8, &str, &StatusAgent)> = None;
                    for a in &st.agents {
                        for c in &a.cidrs {
                            let Some(cidr) = Cidr::parse(c) else { continue };
                            if !cidr.contains(ip) {
                                continue;
                            }
                            let prefix = c
                                .rsplit_once('/')
                                .and_then(|(_, p)| p.parse().ok())
                                .unwrap_or(0);
                            let better = match best {
                                None => true,
                                Some((bp, _, ba)) => {
                                    prefix > bp || (prefix == bp && ba.draining && !a.draining)
                                }
                            };
                            if better {
                                best = Some((prefix, c, a));
                            }
                        }
                    }
                    if let Some((_, c, a)) = best {
                        return draining_warning(
                            a,
                            format!("{dest} is inside its announced CIDR {c} (strategy destHost)"),
                        );
                    }
                }
            }
            "default" if !st.agents.is_empty() => {
                let all: Vec<&StatusAgent> = st.agents.iter().collect();
                return ok(
                    "route",
                    dest,
                    format!(
                        "default routing: no agent announces {dest}; strategy default sends the dial to a random agent among {} ({})",
                        all.len(),
                        names(&all)
                    ),
                );
            }
            "defaultRoute" => {
                let dr: Vec<&StatusAgent> = st.agents.iter().filter(|a| a.default_route).collect();
                if !dr.is_empty() {
                    return ok(
                        "route",
                        dest,
                        format!(
                            "default routing: no agent announces {dest}; strategy defaultRoute sends the dial to a random agent announcing default-route=true ({})",
                            names(&dr)
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    let what = if ip.is_some() {
        "host/ipv4/ipv6, or a cidr= containing it"
    } else {
        "host"
    };
    finding(
        "route",
        dest,
        Status::NoAgent,
        format!(
            "no connected agent announces {dest} ({what}) and strategies {} have no other candidate: the server answers `No agent available`",
            st.strategies.join(",")
        ),
        format!(
            "is the proxy-agent on that node running and connected? (`konnectivity doctor agent` on the node); its --agent-identifiers must include {}",
            if ip.is_some() {
                format!("ipv4={dest} (or a cidr= containing it)")
            } else {
                format!("host={dest}")
            }
        ),
    )
}

fn status_finding(admin: &str, r: &Result<Value, String>) -> Finding {
    match r {
        Err(e) => finding(
            "status",
            admin,
            Status::Failed,
            format!("cannot read http://{admin}/status: {e}"),
            "--admin is the server's --admin-bind-address:--admin-port (127.0.0.1:8095 by default); routing cannot be explained without it, dials are still probed",
        ),
        Ok(v) => {
            let st = parse_status(v);
            if st.agents.is_empty() {
                return finding(
                    "status",
                    admin,
                    Status::NoAgent,
                    format!(
                        "server {} has no agent connected: every dial fails with `No agent available`",
                        st.server_id
                    ),
                    "agents dial out to the server's agent port: run `konnectivity doctor agent -- <proxy-agent flags>` on a node to see why they cannot connect",
                );
            }
            let mut ids: Vec<&str> = st.agents.iter().map(|a| a.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            let draining = st.agents.iter().filter(|a| a.draining).count();
            ok(
                "status",
                admin,
                format!(
                    "server {}: {} agent stream(s) connected ({}){}; strategies {}",
                    st.server_id,
                    st.agents.len(),
                    ids.join(", "),
                    if draining > 0 {
                        format!(", {draining} draining")
                    } else {
                        String::new()
                    },
                    st.strategies.join(",")
                ),
            )
        }
    }
}

async fn server(a: ServerArgs) -> anyhow::Result<Vec<Finding>> {
    let frontend = crate::frontend(
        a.uds.clone(),
        a.tcp.clone(),
        a.ca.clone(),
        a.cert.clone(),
        a.key.clone(),
        a.server_name.clone(),
    )?;
    let mut out = Vec::new();
    let status = fetch_status(&a.admin, a.timeout).await;
    out.push(status_finding(&a.admin, &status));
    let st = status.as_ref().ok().map(parse_status);

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
            fs.push(route(st, &d));
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
    let io = match dial(f, a.http_connect, &addr, a.timeout).await {
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

// ---------------------------------------------------------------------------------------
// doctor agent

async fn agent(a: AgentArgs) -> anyhow::Result<Vec<Finding>> {
    let o = match AgentOptions::parse(a.agent_flags.iter().cloned()) {
        Ok(o) => o,
        Err(ConfigError::Help(usage)) => {
            anyhow::bail!("give proxy-agent's flags after `--`:\n{usage}")
        }
        Err(e) => anyhow::bail!("proxy-agent flags: {e}"),
    };
    let t = a.timeout;
    let mut out = Vec::new();
    match o.validate() {
        Ok(()) => out.push(ok(
            "config",
            "proxy-agent flags",
            "the flags parse and validate as proxy-agent's",
        )),
        Err(e) => out.push(finding(
            "config",
            "proxy-agent flags",
            Status::Failed,
            format!("proxy-agent would refuse to start: {e}"),
            "fix the flag named above (paths are checked on this machine)",
        )),
    }
    out.push(token_finding(&o.service_account_token_path));

    let port = u16::try_from(o.proxy_server_port).unwrap_or(0);
    let client = (!o.agent_cert.is_empty() && !o.agent_key.is_empty())
        .then(|| (Path::new(&o.agent_cert), Path::new(&o.agent_key)));
    let alpn: Vec<String> = o
        .alpn_proto
        .iter()
        .filter(|a| !a.is_empty() && a.as_str() != "[]")
        .cloned()
        .collect();
    let tls = if o.ca_cert.is_empty() {
        out.push(finding(
            "tls",
            "--ca-cert",
            Status::Failed,
            "no --ca-cert: proxy-agent cannot verify the server and refuses to start",
            "give --ca-cert (the CA that signed the server's --cluster-cert)",
        ));
        None
    } else {
        match konnectivity_tls::agent_client(Path::new(&o.ca_cert), client, &alpn) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                out.push(finding(
                    "tls",
                    "--ca-cert/--agent-cert",
                    Status::Failed,
                    format!("cannot load the agent's TLS files: {e}"),
                    "fix the files named above",
                ));
                None
            }
        }
    };
    let hello = konnectivity_agent::Hello {
        agent_id: o.agent_id.clone(),
        identifiers: o.agent_identifiers.clone(),
        token_path: (!o.service_account_token_path.is_empty())
            .then(|| PathBuf::from(&o.service_account_token_path)),
        flow_window: None,
    };
    for host in o.server_hosts() {
        let addrs = match resolve(&host, port, t).await {
            Ok(addrs) => {
                if host.parse::<IpAddr>().is_err() {
                    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                    out.push(ok(
                        "dns",
                        host.as_str(),
                        format!("{host} resolves to {}", list.join(", ")),
                    ));
                }
                addrs
            }
            Err(e) => {
                out.push(finding(
                    "dns",
                    host.as_str(),
                    Status::DnsFailed,
                    format!("cannot resolve {host}: {e}"),
                    "check --proxy-server-host and the node's resolver (/etc/resolv.conf, /etc/hosts); a name that only the cluster DNS knows does not resolve with the agent's hostNetwork",
                ));
                continue;
            }
        };
        for addr in addrs {
            let target = addr.to_string();
            let tcp = match tcp_connect(addr, t).await {
                Ok(s) => {
                    out.push(ok(
                        "tcp",
                        target.as_str(),
                        format!("this node can open TCP connections to {target}"),
                    ));
                    s
                }
                Err(e) => {
                    out.push(agent_tcp_finding(&target, port, t, &e));
                    continue;
                }
            };
            let Some(tls) = &tls else { continue };
            let f = server_tls(tcp, &host, &target, tls.clone(), &o, t).await;
            let passed = f.status == Status::Ok;
            out.push(f);
            if passed {
                out.push(connect_check(&host, addr, tls.clone(), &hello, t).await);
            }
        }
    }
    out.extend(kubelet_checks(&o, a.kubelet_port, t).await);
    Ok(out)
}

async fn resolve(host: &str, port: u16, t: Duration) -> Result<Vec<SocketAddr>, String> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    let r = tokio::time::timeout(t, tokio::net::lookup_host((h, port)))
        .await
        .map_err(|_| format!("no answer from the resolver within {t:?}"))?
        .map_err(|e| {
            let s = e.to_string();
            s.find(" (os error")
                .map_or(s.clone(), |i| s[..i].to_owned())
        })?;
    let mut v: Vec<SocketAddr> = Vec::new();
    for a in r {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    if v.is_empty() {
        return Err("no addresses".into());
    }
    Ok(v)
}

async fn tcp_connect(addr: SocketAddr, t: Duration) -> io::Result<TcpStream> {
    tokio::time::timeout(t, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "i/o timeout"))?
}

fn agent_tcp_finding(target: &str, port: u16, t: Duration, e: &io::Error) -> Finding {
    match e.kind() {
        io::ErrorKind::TimedOut => finding(
            "tcp",
            target,
            Status::TimedOut,
            format!(
                "egress blocked: packets from this node to {target} are dropped (no answer within {t:?})"
            ),
            format!(
                "allow TCP from the nodes to {target}: check this node's egress firewall (iptables OUTPUT, UFW), the security groups / NSGs of the nodes and of the control plane, and any proxy in between, for port {port}"
            ),
        ),
        io::ErrorKind::ConnectionRefused => finding(
            "tcp",
            target,
            Status::Refused,
            format!("nothing accepts connections on {target} (connection refused)"),
            format!(
                "is proxy-server running with --agent-port={port}, bound (--agent-bind-address) to an address this node reaches? A firewall REJECT rule or a load balancer without healthy backends gives the same answer"
            ),
        ),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => finding(
            "tcp",
            target,
            Status::Unreachable,
            format!("this node has no route to {target} ({e})"),
            "check the node's routes (`ip route get`), VPN or peering towards the control plane",
        ),
        _ => finding(
            "tcp",
            target,
            Status::Failed,
            format!("cannot connect to {target}: {e}"),
            "",
        ),
    }
}

/// The rustls error inside an I/O error, if any.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

/// (cause, hint) for a failed TLS handshake with the agent port.
fn explain_tls(e: &io::Error, host: &str, ca: &str, cert: &str) -> (String, String) {
    use rustls::AlertDescription as A;
    use rustls::CertificateError as C;
    use rustls::Error as E;
    let client_cert_hint = format!(
        "the server's --cluster-ca-cert must have signed --agent-cert ({cert}), and it must be valid now (not expired)"
    );
    match rustls_error(e) {
        Some(E::InvalidCertificate(c)) => match c {
            C::UnknownIssuer | C::BadSignature => (
                format!("unknown authority: the server's certificate is not signed by --ca-cert ({ca})"),
                "give the agent the CA that signed the server's --cluster-cert (in kubeadm clusters usually /etc/kubernetes/pki/ca.crt); check that the address is really the proxy-server and not a load balancer terminating TLS".to_owned(),
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => (
                format!("name mismatch: the server's certificate is not valid for {host} ({c:?})"),
                format!("add {host} to the subject alternative names of the server's --cluster-cert, or point --proxy-server-host at a name the certificate carries"),
            ),
            C::Expired | C::ExpiredContext { .. } => (
                format!("expired: the server's certificate has expired ({c:?})"),
                "renew the server's --cluster-cert and restart proxy-server".to_owned(),
            ),
            C::NotValidYet | C::NotValidYetContext { .. } => (
                format!("not yet valid: the server's certificate is not valid yet ({c:?})"),
                "check the clocks of this node and of the CA (NTP)".to_owned(),
            ),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => (
                format!("wrong key usage: the server's certificate is not for TLS servers ({c:?})"),
                "issue the server's --cluster-cert with extended key usage serverAuth".to_owned(),
            ),
            other => (format!("the server's certificate was refused: {other:?}"), String::new()),
        },
        Some(E::AlertReceived(alert)) => match alert {
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateRequired
            | A::AccessDenied
            | A::DecryptError => (
                format!("client certificate rejected: the server refused this agent's certificate (alert {alert:?})"),
                client_cert_hint,
            ),
            A::NoApplicationProtocol => (
                format!("ALPN mismatch: the server accepts none of the agent's protocols (alert {alert:?})"),
                "remove --alpn-proto or make it match what the server (or the load balancer in front) accepts".to_owned(),
            ),
            other => (format!("the server aborted the handshake (alert {other:?})"), String::new()),
        },
        Some(E::NoApplicationProtocol) => (
            "ALPN mismatch: the server chose no protocol the agent offers".to_owned(),
            "remove --alpn-proto or make it match the server".to_owned(),
        ),
        Some(E::InvalidMessage(_)) | Some(E::InappropriateMessage { .. }) => (
            format!("not a TLS server: what answers speaks another protocol ({e})"),
            "check --proxy-server-port: it must be the server's --agent-port".to_owned(),
        ),
        Some(other) => (format!("TLS failed: {other}"), String::new()),
        None if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::ConnectionReset => (
            format!("the server closed the connection during the handshake ({e})"),
            "a TLS-terminating load balancer or a server that rejects this client; check the server's log".to_owned(),
        ),
        None => (format!("TLS failed: {e}"), String::new()),
    }
}

/// TLS to the agent port with the agent's own configuration; then a short read: a
/// server that rejects the client certificate says so only after the handshake (TLS 1.3).
async fn server_tls(
    tcp: TcpStream,
    host: &str,
    target: &str,
    tls: Arc<konnectivity_tls::ClientConfig>,
    o: &AgentOptions,
    t: Duration,
) -> Finding {
    let name = match ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    ) {
        Ok(n) => n,
        Err(e) => return finding("tls", target, Status::Failed, format!("{host}: {e}"), ""),
    };
    let cert = if o.agent_cert.is_empty() {
        "none"
    } else {
        o.agent_cert.as_str()
    };
    let fail = |e: &io::Error| {
        let (cause, hint) = explain_tls(e, host, &o.ca_cert, cert);
        finding("tls", target, Status::TlsFailed, cause, hint)
    };
    let mut s = match tokio::time::timeout(t, TlsConnector::from(tls).connect(name, tcp)).await {
        Err(_) => {
            return finding(
                "tls",
                target,
                Status::TlsFailed,
                format!("no TLS answer from {target} within {t:?}"),
                "check --proxy-server-port: it must be the server's --agent-port",
            );
        }
        Ok(Err(e)) => return fail(&e),
        Ok(Ok(s)) => s,
    };
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await {
        Ok(Err(e)) => return fail(&e),
        Ok(Ok(0)) => {
            return finding(
                "tls",
                target,
                Status::TlsFailed,
                "the server closed the connection right after the TLS handshake",
                format!(
                    "it probably refused this agent's client certificate: the server's --cluster-ca-cert must have signed --agent-cert ({cert})"
                ),
            );
        }
        _ => {}
    }
    let (_, conn) = s.get_ref();
    let v = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "none".into());
    ok(
        "tls",
        target,
        format!(
            "the server's certificate is valid for {host} and signed by --ca-cert ({v}, ALPN {alpn})"
        ),
    )
}

/// Opens the real Connect stream as proxy-agent does, reports the server's answer, and
/// leaves at once (announcing DRAIN first, so the server routes nothing to it meanwhile
/// unless no other agent can serve a dial).
async fn connect_check(
    host: &str,
    addr: SocketAddr,
    tls: Arc<konnectivity_tls::ClientConfig>,
    hello: &konnectivity_agent::Hello,
    t: Duration,
) -> Finding {
    use konnectivity_agent::stream::OpenError;
    let target = addr.to_string();
    let r = tokio::time::timeout(
        t,
        konnectivity_agent::stream::open(host, addr, tls, hello, Duration::from_secs(30), None),
    )
    .await;
    match r {
        Err(_) => finding(
            "connect",
            target,
            Status::TimedOut,
            format!("the server did not answer the Connect stream within {t:?}"),
            "the server is overloaded or something between (a proxy, a load balancer) holds HTTP/2; check the server's log",
        ),
        Ok(Ok(s)) => {
            let _ = s.tx.control(konnectivity_core::packet::drain());
            s.tx.close();
            ok(
                "connect",
                target,
                format!(
                    "server {} accepted agent {} (servercount {})",
                    s.server_id, hello.agent_id, s.server_count
                ),
            )
        }
        Ok(Err(OpenError::Grpc { reason, .. })) => {
            let l = reason.to_lowercase();
            let hint = if l.contains("token") || l.contains("auth") {
                "the server authenticates agents with ServiceAccount tokens: check --service-account-token-path (the `token` finding) and the server's --agent-namespace/--agent-service-account/--authentication-audience".to_owned()
            } else if l.contains("agent id")
                || l.contains("identifiers")
                || l.contains("url encoded")
            {
                "check --agent-id and --agent-identifiers".to_owned()
            } else if l.contains("certificate")
                || l.contains("handshake")
                || l.contains("transport")
                || l.contains("reset")
            {
                "the server may have refused the client certificate: its --cluster-ca-cert must have signed --agent-cert, which must be valid now".to_owned()
            } else {
                "the server's log says why (look for `rejected agent`)".to_owned()
            };
            finding(
                "connect",
                target,
                Status::Rejected,
                format!("the server refused the agent's Connect stream: {reason}"),
                hint,
            )
        }
        Ok(Err(OpenError::Headers(msg))) => finding(
            "connect",
            target,
            Status::Failed,
            format!("the answer is not a Konnectivity server's: {msg}"),
            "check that --proxy-server-host:--proxy-server-port is proxy-server's agent port",
        ),
        Ok(Err(e)) => finding("connect", target, Status::Failed, e.to_string(), ""),
    }
}

/// The kubelet port on loopback and on each node IP of --agent-identifiers.
async fn kubelet_checks(o: &AgentOptions, port: u16, t: Duration) -> Vec<Finding> {
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Ok(ids) = o.identifiers() {
        for s in ids.ipv4.iter().chain(ids.ipv6.iter()) {
            if let Ok(ip) = s.parse::<IpAddr>()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
    }
    let mut results = Vec::new();
    let loopback: IpAddr = IpAddr::from([127, 0, 0, 1]);
    for ip in std::iter::once(loopback).chain(ips.iter().copied()) {
        let addr = SocketAddr::new(ip, port);
        results.push((ip, addr, tcp_connect(addr, t).await));
    }
    let node_ip_ok = results
        .iter()
        .any(|(ip, _, r)| *ip != loopback && r.is_ok());
    results
        .into_iter()
        .map(|(ip, addr, r)| {
            let target = addr.to_string();
            match r {
                Ok(_) => ok("kubelet", target.as_str(), format!("something accepts connections on {target}")),
                Err(_) if ip == loopback && node_ip_ok => finding(
                    "kubelet",
                    target.as_str(),
                    Status::Warning,
                    format!("nothing answers on {target}, but the node IP does"),
                    "the kubelet is bound to the node IP (--address); fine for the tunnel, which dials the node IP",
                ),
                Err(e) => match e.kind() {
                    io::ErrorKind::TimedOut => finding(
                        "kubelet",
                        target.as_str(),
                        Status::TimedOut,
                        format!("packets to {target} are dropped on this node (no answer within {t:?})"),
                        format!("the node's own firewall (iptables INPUT, UFW, NSG rules applied on the host) drops port {port}; the agent dials from the node, so it must accept port {port}"),
                    ),
                    io::ErrorKind::ConnectionRefused => finding(
                        "kubelet",
                        target.as_str(),
                        Status::Refused,
                        format!("nothing listens on {target} (connection refused)"),
                        format!("is the kubelet running (`systemctl status kubelet`) with --port={port}? A firewall REJECT rule gives the same answer"),
                    ),
                    _ => finding(
                        "kubelet",
                        target.as_str(),
                        Status::Failed,
                        format!("cannot connect to {target}: {e}"),
                        "",
                    ),
                },
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// ServiceAccount token

/// Decodes unpadded (or padded) base64url.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The payload claims of a JWT (not verified).
fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.trim().split('.');
    let (_h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice(&base64url_decode(p)?).ok()
}

/// `2026-01-02T03:04:05Z` from Unix seconds.
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn human_secs(s: i64) -> String {
    let s = s.abs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn token_finding(path: &str) -> Finding {
    if path.is_empty() {
        return finding(
            "token",
            "--service-account-token-path",
            Status::Skipped,
            "not set: the agent authenticates with its client certificate only",
            "",
        );
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return finding(
                "token",
                path,
                Status::Failed,
                format!("cannot read the token: {e}"),
                "the agent reads this file on every connection attempt: mount the projected ServiceAccount token volume at this path",
            );
        }
    };
    let Some(claims) = jwt_claims(&text) else {
        return finding(
            "token",
            path,
            Status::Failed,
            "the file does not hold a JWT (three base64url parts with a JSON payload)",
            "the path must hold a ServiceAccount token (a projected serviceAccountToken volume)",
        );
    };
    let aud = match &claims["aud"] {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    };
    let Some(exp) = claims["exp"]
        .as_i64()
        .or_else(|| claims["exp"].as_f64().map(|f| f as i64))
    else {
        return finding(
            "token",
            path,
            Status::Warning,
            format!(
                "the token has no exp claim (audience {aud:?}); a legacy Secret-based token never expires"
            ),
            "prefer a projected, expiring token (audience system:konnectivity-server)",
        );
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if exp <= now {
        finding(
            "token",
            path,
            Status::Expired,
            format!(
                "the token expired at {} ({} ago)",
                rfc3339(exp),
                human_secs(now - exp)
            ),
            "the kubelet refreshes projected ServiceAccount tokens well before they expire: a stale token means the file is not a projected serviceAccountToken volume (or a copy), or the kubelet cannot reach the API server; mount the projected token (audience system:konnectivity-server) and restart the agent",
        )
    } else {
        ok(
            "token",
            path,
            format!(
                "a JWT valid until {} (in {}){}",
                rfc3339(exp),
                human_secs(exp - now),
                if aud.is_empty() {
                    String::new()
                } else {
                    format!(", audience {aud}")
                }
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_and_jwt_claims() {
        assert_eq!(base64url_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64url_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64url_decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert!(base64url_decode("a b").is_none());
        // {"alg":"none"}.{"exp":1000,"aud":["x"]}.sig
        let tok = "eyJhbGciOiJub25lIn0.eyJleHAiOjEwMDAsImF1ZCI6WyJ4Il19.c2ln";
        let c = jwt_claims(tok).unwrap_or_default();
        assert_eq!(c["exp"], 1000);
        assert!(jwt_claims("not-a-jwt").is_none());
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    fn status(strategies: &[&str]) -> ServerStatus {
        ServerStatus {
            server_id: "s".into(),
            strategies: strategies.iter().map(|s| s.to_string()).collect(),
            agents: vec![
                StatusAgent {
                    id: "n1".into(),
                    stream: 1,
                    hosts: vec!["node1".into(), "10.0.0.1".into()],
                    cidrs: vec!["10.244.0.0/16".into()],
                    default_route: false,
                    draining: false,
                    connected_since: 0,
                },
                StatusAgent {
                    id: "n2".into(),
                    stream: 2,
                    hosts: vec!["10.0.0.2".into()],
                    cidrs: vec!["10.244.2.0/24".into()],
                    default_route: true,
                    draining: false,
                    connected_since: 0,
                },
            ],
        }
    }

    #[test]
    fn routing_is_explained_like_the_server_picks() {
        let st = status(&["destHost", "defaultRoute"]);
        let r = route(&st, "10.0.0.1");
        assert_eq!(r.status, Status::Ok);
        assert!(
            r.cause.contains("agent n1") && r.cause.contains("exact match"),
            "{}",
            r.cause
        );
        let r = route(&st, "10.244.2.9");
        assert!(
            r.cause.contains("agent n2") && r.cause.contains("10.244.2.0/24"),
            "{}",
            r.cause
        );
        let r = route(&st, "10.244.7.9");
        assert!(
            r.cause.contains("agent n1") && r.cause.contains("10.244.0.0/16"),
            "{}",
            r.cause
        );
        let r = route(&st, "10.9.9.9");
        assert!(
            r.cause.contains("defaultRoute") && r.cause.contains("n2"),
            "{}",
            r.cause
        );
        let r = route(&status(&["destHost"]), "10.9.9.9");
        assert_eq!(r.status, Status::NoAgent);
        let r = route(&status(&["default", "destHost"]), "10.0.0.1");
        assert!(r.cause.contains("random agent among 2"), "{}", r.cause);
    }

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
