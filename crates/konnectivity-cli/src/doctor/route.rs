//! Which agent the server would pick for a destination, explained from the server's
//! `/status` document (read untyped for now; a typed document and an explain query
//! answered by the server itself would replace the re-implementation in [`route`]).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use konnectivity_core::select::Cidr;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::report::{Finding, Status, finding, ok};
use super::token::human_secs;

/// One agent stream as `/status` lists it.
#[derive(Debug, Clone)]
pub(super) struct StatusAgent {
    pub(super) id: String,
    pub(super) stream: u64,
    pub(super) hosts: Vec<String>,
    pub(super) cidrs: Vec<String>,
    pub(super) default_route: bool,
    pub(super) draining: bool,
    pub(super) connected_since: u64,
}

#[derive(Debug, Clone, Default)]
pub(super) struct ServerStatus {
    pub(super) server_id: String,
    pub(super) strategies: Vec<String>,
    pub(super) agents: Vec<StatusAgent>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

pub(super) fn parse_status(v: &Value) -> ServerStatus {
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
pub(super) async fn fetch_status(admin: &str, timeout: Duration) -> Result<Value, String> {
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
pub(super) fn route(st: &ServerStatus, dest: &str) -> Finding {
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

pub(super) fn status_finding(admin: &str, r: &Result<Value, String>) -> Finding {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
