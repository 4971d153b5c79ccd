//! The server's status, for people and tools, on the admin port:
//!
//! - `/status`: the [`document::Status`] as JSON (typed, documented field by field in
//!   [`document`]); `konnectivity doctor` and the status page read it;
//! - `/status.html` (and `/`): a live page, one self-contained file (inline CSS and
//!   JavaScript, hand-drawn SVG charts, no external assets), that fetches `/status`
//!   every two seconds and renders agents, their rates over the last minutes, open
//!   connections, recent failed dials and the buffer budget.
//!
//! The history behind the charts and the failed-dial ring are kept by [`history`],
//! bounded in memory and off the data path.
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use konnectivity_core::select::Candidate;

use crate::state::Shared;
use konnectivity_core::dial::DialError;

pub mod document;
pub mod history;

use document::{Agent, Buffers, Connection, FrontendKind, Frontends, MAX_LISTED_CONNECTIONS};

/// The page, served as is: it renders itself from `/status`.
pub const PAGE: &str = include_str!("page.html");

/// The status document, now.
pub fn document(s: &Shared) -> document::Status {
    let mut agents: Vec<Agent> = s
        .table()
        .entries()
        .into_iter()
        .map(|(b, ident)| {
            let (connections, open_connections) = {
                let conns = b.conns();
                // The oldest MAX_LISTED_CONNECTIONS, chosen without copying the others.
                let mut oldest: Vec<_> = conns.iter().map(|(id, e)| (e.since, *id)).collect();
                if oldest.len() > MAX_LISTED_CONNECTIONS {
                    oldest.select_nth_unstable(MAX_LISTED_CONNECTIONS);
                    oldest.truncate(MAX_LISTED_CONNECTIONS);
                }
                oldest.sort_unstable();
                let open: Vec<Connection> = oldest
                    .into_iter()
                    .filter_map(|(since, id)| {
                        let e = conns.get(&id)?;
                        Some(Connection {
                            connect_id: id,
                            destination: e.destination.clone(),
                            frontend: e.frontend,
                            protocol: e.protocol.as_str().to_owned(),
                            age_seconds: (since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                            bytes_to_agent: e.credit.as_ref().map(|c| c.sent()),
                            bytes_from_agent: e.bytes_from_agent,
                            queued_bytes: e.queue.queued(),
                        })
                    })
                    .collect();
                (conns.len(), open)
            };
            let omitted = connections.saturating_sub(open_connections.len());
            let flow_control = b.peer_window.is_some() && s.settings.flow_window.is_some();
            Agent {
                agent_id: b.agent_id.clone(),
                stream: b.stream_id,
                hosts: ident.hosts,
                cidrs: ident.cidrs.iter().map(|c| c.to_string()).collect(),
                default_route: ident.default_route,
                connected_since: history::unix_ms(b.since) / 1000,
                draining: b.is_draining(),
                flow_control,
                peer_window: b.peer_window.filter(|_| flow_control),
                connections,
                pending_dials: b.pending_dials(),
                bytes_to_agent: b.tx.data_bytes(),
                bytes_from_agent: b.bytes_from_agent.load(Ordering::Relaxed),
                dials: b.dials.load(Ordering::Relaxed),
                failed_dials: b.failed_dials.load(Ordering::Relaxed),
                history: crate::state::lock(&b.history).rates(),
                open_connections,
                open_connections_omitted: omitted,
            }
        })
        .collect();
    agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id).then(a.stream.cmp(&b.stream)));
    document::Status {
        server_id: s.settings.server_id.clone(),
        server_count: s.settings.server_count,
        strategies: s
            .settings
            .strategies
            .iter()
            .map(|st| st.name().to_owned())
            .collect(),
        ready: s.ready(),
        established_connections: s.metrics.established(),
        pending_dials: s.pending().len(),
        frontends: Frontends {
            grpc_streams: s.metrics.grpc_proxy_streams(),
            http_connections: s.metrics.http_connections(),
        },
        buffers: Buffers {
            buffered_bytes: s.budget.used(),
            budget_bytes: s.budget.limit(),
            stall_timeout_seconds: s.budget.stall().as_secs_f64(),
            stream_pauses: s.budget.pauses(),
            stalled_connections: s.budget.stalled(),
        },
        agents,
        now_ms: history::unix_ms(SystemTime::now()),
        sample_interval_seconds: history::SAMPLE_INTERVAL.as_secs_f64(),
        dial_failures: s.dial_failures.recent(),
        dial_failures_total: s.dial_failures.total(),
        route: None,
    }
}

/// How a dial to `host` (port stripped) would be routed now: the table's own
/// [`BackendTable::explain`](konnectivity_core::select::BackendTable::explain).
pub fn explain(s: &Shared, host: &str) -> document::Route {
    use document::{Route, RouteAgent, RouteHow};
    use konnectivity_core::select::Route as R;
    let agent = |b: &std::sync::Arc<crate::state::Backend>| RouteAgent {
        agent_id: b.agent_id.clone(),
        stream: b.stream_id,
        draining: b.is_draining(),
        connected_since: history::unix_ms(b.since) / 1000,
    };
    let found = s.table().explain(host);
    let (how, strategy, cidr, one, candidates) = match &found {
        R::Host(b) => (
            RouteHow::Host,
            Some("destHost"),
            None,
            Some(agent(b)),
            Vec::new(),
        ),
        R::Cidr(c, b) => (
            RouteHow::Cidr,
            Some("destHost"),
            Some(c.to_string()),
            Some(agent(b)),
            Vec::new(),
        ),
        R::Random(st, bs) => (
            RouteHow::Random,
            Some(st.name()),
            None,
            None,
            bs.iter().map(agent).collect(),
        ),
        R::NoAgent => (RouteHow::NoAgent, None, None, None, Vec::new()),
    };
    Route {
        destination: host.to_owned(),
        how,
        strategy: strategy.map(str::to_owned),
        cidr,
        agent: one,
        candidates,
    }
}

/// The status document as JSON.
pub fn json(s: &Shared) -> String {
    json_explaining(s, None)
}

/// The status document as JSON, with [`document::Status::route`] for `explain` (a
/// host, port stripped) when given.
pub fn json_explaining(s: &Shared, explain: Option<&str>) -> String {
    let mut doc = document(s);
    doc.route = explain.map(|h| self::explain(s, h));
    serde_json::to_string(&doc)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}

/// Remembers a dial that could not be sent to an agent (a dial that was sent is
/// remembered by its [`crate::state::Pending`]).
pub(crate) fn record_start_error(s: &Shared, frontend: FrontendKind, address: &str, e: &DialError) {
    match e {
        // Recorded with its agent where the pending dial is taken back.
        DialError::BackendDialTimeout | DialError::SendFailed(_) => {}
        _ => s
            .dial_failures
            .record(None, address, frontend, &e.wire_text()),
    }
}
