//! `doctor agent`: on a node, with proxy-agent's own flags: DNS of the server host, TCP to
//! the agent port (and, when it does not answer, which of the usual agent ports 8132, 443,
//! 8091 do), TLS with `--ca-cert`, the token, whether the server accepts the agent's
//! Connect stream (as a check the server does not route to: `metadata::PROBE`),
//! `--keepalive-time` against load-balancer idle timeouts, and whether the local kubelet
//! answers.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use konnectivity_agent::options::{self, OptionsError};
use konnectivity_config::{AgentOptions, ConfigError};
use konnectivity_tls::{ServerName, TlsConnector};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::report::{Finding, Status, finding, ok};
use super::token::token_finding;
use super::{Output, go_duration};

/// Arguments of `konnectivity doctor agent`.
#[derive(Args, Debug)]
pub(super) struct AgentArgs {
    /// The kubelet port to check on this node (127.0.0.1 and the node IPs of
    /// --agent-identifiers).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Bound of each network check (Go duration).
    #[arg(long, default_value = "5s", value_parser = go_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub(super) output: Output,
    /// proxy-agent's flags, exactly as the agent is started (after `--`).
    #[arg(last = true, value_name = "PROXY_AGENT_FLAGS")]
    agent_flags: Vec<String>,
}

pub(super) async fn run(a: AgentArgs) -> anyhow::Result<Vec<Finding>> {
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

    let port = options::port(o.proxy_server_port).unwrap_or(0);
    // The TLS client and the hello proxy-agent would use with these flags; the Connect
    // check does not announce flow control (it opens a stream and closes it).
    let tls = match options::client_tls(&o) {
        Ok(c) => Some(Arc::new(c)),
        Err(OptionsError::NoCaCert) => {
            out.push(finding(
                "tls",
                "--ca-cert",
                Status::Failed,
                "no --ca-cert: proxy-agent cannot verify the server and refuses to start",
                "give --ca-cert (the CA that signed the server's --cluster-cert)",
            ));
            None
        }
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
    };
    // Asks the server not to register the check (ours honours it, upstream's does not).
    let hello = konnectivity_agent::Hello {
        flow_window: None,
        probe: true,
        ..konnectivity_agent::Hello::from_options(&o)
    };
    out.push(keepalive_finding(&o));
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
                    out.push(other_ports_finding(addr, t).await);
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
pub(super) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
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
            let registered = if s.probe_honoured {
                "checked without registering: no dial was routed to this check"
            } else {
                "the server does not know checks (upstream): it registered this check, which announced DRAIN and left at once"
            };
            ok(
                "connect",
                target,
                format!(
                    "server {} accepted agent {} (servercount {}); {registered}",
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

/// The agent ports managed control planes use: kubeadm and k0s 8132, AKS 443 (behind
/// its load balancer), upstream's default 8091.
const KNOWN_AGENT_PORTS: [u16; 3] = [8132, 443, 8091];

/// Common idle timeouts of load balancers and NAT gateways between nodes and the control
/// plane (Azure Load Balancer and NAT gateway: 4 min by default; AWS NLB 350 s).
const LB_IDLE_TIMEOUT: Duration = Duration::from_secs(240);

/// When `--proxy-server-port` does not answer, which of the other usual agent ports on
/// the same address do: a port blocked on the way (8132 dropped by a firewall that lets
/// 443 through) or the wrong port for this control plane.
async fn other_ports_finding(addr: SocketAddr, t: Duration) -> Finding {
    let mut answers = Vec::new();
    let mut silent = Vec::new();
    for p in KNOWN_AGENT_PORTS.into_iter().filter(|p| *p != addr.port()) {
        let a = SocketAddr::new(addr.ip(), p);
        match tcp_connect(a, t).await {
            Ok(_) => answers.push(p),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => silent.push(format!("{p} dropped")),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                silent.push(format!("{p} refused"))
            }
            Err(e) => silent.push(format!("{p}: {e}")),
        }
    }
    let target = addr.ip().to_string();
    let configured = addr.port();
    match answers.as_slice() {
        [] => finding(
            "ports",
            target.as_str(),
            Status::Warning,
            format!(
                "no usual agent port answers on {target} either ({}): the control plane is unreachable from this node, not just port {configured}",
                silent.join(", ")
            ),
            "check the node's route and egress towards the control plane (NAT gateway, security groups / NSGs, the control plane's allowed source ranges)",
        ),
        ports => {
            let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
            finding(
                "ports",
                target.as_str(),
                Status::Warning,
                format!(
                    "port {configured} (--proxy-server-port) is blocked or closed, but {} on {target} accepts TCP connections",
                    list.join(" and ")
                ),
                format!(
                    "if the server's agent port is {} here (AKS exposes it on 443, kubeadm and k0s use 8132), set --proxy-server-port to it; otherwise open port {configured} between the nodes and the control plane",
                    list[0]
                ),
            )
        }
    }
}

/// `--keepalive-time` against the idle timeouts of the load balancers and NAT gateways
/// agents commonly sit behind: longer, and an idle tunnel is dropped silently.
fn keepalive_finding(o: &AgentOptions) -> Finding {
    let k = o.keepalive_time.to_std().unwrap_or_default();
    let flag = format!("--keepalive-time={}", o.keepalive_time);
    if k > LB_IDLE_TIMEOUT {
        finding(
            "keepalive",
            flag.as_str(),
            Status::Warning,
            format!(
                "{flag} is longer than the idle timeout of common load balancers and NAT gateways (Azure Load Balancer and NAT gateway: 4 minutes; AWS NLB: 350 s): through one, an idle agent connection is dropped without a reset and the agent only notices at the next keepalive"
            ),
            "if a load balancer or NAT gateway sits between the nodes and the control plane, set --keepalive-time below its idle timeout (e.g. 30s)",
        )
    } else {
        ok(
            "keepalive",
            flag.as_str(),
            format!("{flag} is within common load-balancer idle timeouts (4 minutes)"),
        )
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
