//! Which agent the server would pick for a destination, as the server itself explains
//! it: `/status?explain=<host>` answers with the typed `/status` document
//! (`konnectivity_server::status::document`) and a [`Route`] computed by the server's
//! own table (`BackendTable::explain`, the same strategies as a dial). This module only
//! fetches it and words it as findings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use konnectivity_server::status::document::{Route, RouteAgent, RouteHow, Status as ServerStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::report::{Finding, Status, finding, ok};
use super::token::human_secs;

/// GET `http://<admin>/status` (HTTP/1.1, `Connection: close`), with
/// `?explain=<host>` when `explain` is given.
pub(super) async fn fetch_status(
    admin: &str,
    timeout: Duration,
    explain: Option<&str>,
) -> Result<ServerStatus, String> {
    let target = match explain {
        Some(h) => format!("/status?explain={}", percent_encode(h)),
        None => "/status".to_owned(),
    };
    let get = async {
        let mut s = TcpStream::connect(admin).await.map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET {target} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
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
    serde_json::from_str(body).map_err(|e| format!("not a /status document: {e}"))
}

/// Everything but unreserved characters as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The server's explanation of how a dial to `r.destination` is routed, as a finding;
/// `strategies` are the server's, for the message when nothing matches.
pub(super) fn route(r: &Route, strategies: &[String]) -> Finding {
    let dest = r.destination.as_str();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let describe = |a: &RouteAgent| {
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
            a.agent_id,
            a.stream,
            if a.draining { ", draining" } else { "" }
        )
    };
    let taken = |a: &RouteAgent, how: String| {
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
    let is_ip = dest.parse::<std::net::IpAddr>().is_ok();
    match (r.how, &r.agent) {
        (RouteHow::Host, Some(a)) => taken(
            a,
            format!("exact match of its announced host {dest} (strategy destHost)"),
        ),
        (RouteHow::Cidr, Some(a)) => taken(
            a,
            format!(
                "{dest} is inside its announced CIDR {} (strategy destHost)",
                r.cidr.as_deref().unwrap_or("?")
            ),
        ),
        (RouteHow::Random, _) => {
            let mut ids: Vec<&str> = r.candidates.iter().map(|a| a.agent_id.as_str()).collect();
            ids.dedup();
            let strategy = r.strategy.as_deref().unwrap_or("default");
            let among = if strategy == "defaultRoute" {
                "a random agent announcing default-route=true".to_owned()
            } else {
                format!("a random agent among {}", r.candidates.len())
            };
            ok(
                "route",
                dest,
                format!(
                    "default routing: no agent announces {dest}; strategy {strategy} sends the dial to {among} ({})",
                    ids.join(", ")
                ),
            )
        }
        _ => {
            let what = if is_ip {
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
                    strategies.join(",")
                ),
                format!(
                    "is the proxy-agent on that node running and connected? (`konnectivity doctor agent` on the node); its --agent-identifiers must include {}",
                    if is_ip {
                        format!("ipv4={dest} (or a cidr= containing it)")
                    } else {
                        format!("host={dest}")
                    }
                ),
            )
        }
    }
}

pub(super) fn status_finding(admin: &str, r: &Result<ServerStatus, String>) -> Finding {
    match r {
        Err(e) => finding(
            "status",
            admin,
            Status::Failed,
            format!("cannot read http://{admin}/status: {e}"),
            "--admin is the server's --admin-bind-address:--admin-port (127.0.0.1:8095 by default); routing cannot be explained without it, dials are still probed",
        ),
        Ok(st) => {
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
            let mut ids: Vec<&str> = st.agents.iter().map(|a| a.agent_id.as_str()).collect();
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

    fn agent(id: &str, stream: u64, draining: bool) -> RouteAgent {
        RouteAgent {
            agent_id: id.into(),
            stream,
            draining,
            connected_since: 0,
        }
    }

    fn explained(
        how: RouteHow,
        strategy: Option<&str>,
        cidr: Option<&str>,
        agent: Option<RouteAgent>,
        candidates: Vec<RouteAgent>,
    ) -> Route {
        Route {
            destination: "10.244.2.9".into(),
            how,
            strategy: strategy.map(str::to_owned),
            cidr: cidr.map(str::to_owned),
            agent,
            candidates,
        }
    }

    #[test]
    fn the_servers_explanation_is_worded_as_a_finding() {
        use RouteHow::*;
        let s = vec!["destHost".to_owned(), "defaultRoute".to_owned()];
        let cidr = Some("10.244.2.0/24");
        let (n1, n2) = (agent("n1", 1, false), agent("n2", 2, false));
        // (case, the server's explanation, the finding's status if checked, words its cause has)
        let cases: [(&str, Route, Option<Status>, &[&str]); 6] = [
            (
                "exact host",
                explained(Host, Some("destHost"), None, Some(n1.clone()), vec![]),
                Some(Status::Ok),
                &["agent n1", "exact match"],
            ),
            (
                "announced CIDR",
                explained(Cidr, Some("destHost"), cidr, Some(n2.clone()), vec![]),
                None,
                &["agent n2", "10.244.2.0/24"],
            ),
            (
                "a draining agent",
                explained(
                    Cidr,
                    Some("destHost"),
                    cidr,
                    Some(agent("n2", 2, true)),
                    vec![],
                ),
                Some(Status::Warning),
                &[],
            ),
            (
                "default route",
                explained(Random, Some("defaultRoute"), None, None, vec![n2.clone()]),
                None,
                &["defaultRoute", "n2"],
            ),
            (
                "random",
                explained(Random, Some("default"), None, None, vec![n1, n2]),
                None,
                &["random agent among 2"],
            ),
            (
                "no agent",
                explained(NoAgent, None, None, None, vec![]),
                Some(Status::NoAgent),
                &["destHost,defaultRoute"],
            ),
        ];
        for (case, explanation, status, words) in cases {
            let r = route(&explanation, &s);
            if let Some(status) = status {
                assert_eq!(r.status, status, "{case}");
            }
            for w in words {
                assert!(r.cause.contains(w), "{case}: {w:?} in {}", r.cause);
            }
        }
    }

    #[test]
    fn explain_queries_are_percent_encoded() {
        assert_eq!(percent_encode("10.0.0.1"), "10.0.0.1");
        assert_eq!(percent_encode("fd00::1"), "fd00%3A%3A1");
        assert_eq!(percent_encode("a&b"), "a%26b");
    }
}
