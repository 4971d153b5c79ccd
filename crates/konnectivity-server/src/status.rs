//! The server's status, for people and tools: `/status` (JSON) and `/status.html` on
//! the admin port. `konnectivity doctor` reads the JSON.
//!
//! JSON shape (stable; new fields may be added):
//! ```json
//! {"server_id": "…", "server_count": 1, "strategies": ["destHost","default"], "ready": true,
//!  "established_connections": 3, "pending_dials": 0,
//!  "frontends": {"grpc_streams": 2, "http_connections": 1},
//!  "buffers": {"buffered_bytes": 0, "budget_bytes": 268435456, "stall_timeout_seconds": 10.0,
//!              "stream_pauses": 0, "stalled_connections": 0},
//!  "agents": [{"agent_id": "node-1", "stream": 7, "hosts": ["node-1","10.0.0.5"],
//!              "cidrs": ["10.244.1.0/24"], "default_route": false,
//!              "connected_since": 1795000000, "draining": false, "flow_control": true,
//!              "connections": 3, "pending_dials": 0,
//!              "bytes_to_agent": 1234, "bytes_from_agent": 5678}]}
//! ```
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use konnectivity_core::select::Candidate;
use serde_json::{Value, json};

use crate::state::Shared;

/// The status document.
pub fn json(s: &Shared) -> Value {
    let mut agents: Vec<Value> = s
        .table()
        .entries()
        .into_iter()
        .map(|(b, ident)| {
            let since = b
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            json!({
                "agent_id": b.agent_id,
                "stream": b.stream_id,
                "hosts": ident.hosts,
                "cidrs": ident.cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "default_route": ident.default_route,
                "connected_since": since,
                "draining": b.is_draining(),
                "flow_control": b.peer_window.is_some() && s.settings.flow_window.is_some(),
                "connections": b.conns().len(),
                "pending_dials": b.pending_dials(),
                "bytes_to_agent": b.tx.data_bytes(),
                "bytes_from_agent": b.bytes_from_agent.load(Ordering::Relaxed),
            })
        })
        .collect();
    agents.sort_by(|a, b| {
        a["agent_id"]
            .as_str()
            .cmp(&b["agent_id"].as_str())
            .then(a["stream"].as_u64().cmp(&b["stream"].as_u64()))
    });
    json!({
        "server_id": s.settings.server_id,
        "server_count": s.settings.server_count,
        "strategies": s.settings.strategies.iter().map(|st| st.name()).collect::<Vec<_>>(),
        "ready": s.ready(),
        "established_connections": s.metrics.established(),
        "pending_dials": s.pending().len(),
        "frontends": {
            "grpc_streams": s.metrics.grpc_proxy_streams(),
            "http_connections": s.metrics.http_connections(),
        },
        "buffers": {
            "buffered_bytes": s.budget.used(),
            "budget_bytes": s.budget.limit(),
            "stall_timeout_seconds": s.budget.stall().as_secs_f64(),
            "stream_pauses": s.budget.pauses(),
            "stalled_connections": s.budget.stalled(),
        },
        "agents": agents,
    })
}

fn esc(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The same, as a self-contained HTML page (no external assets, no scripts).
pub fn html(s: &Shared) -> String {
    let j = json(s);
    let mut o = String::with_capacity(4096);
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>konnectivity-rs proxy-server {id}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         .ok{{color:#070}}.bad{{color:#a00}}</style></head><body>\
         <h1>proxy-server <code>{id}</code></h1>\
         <p>Ready: <b class=\"{rc}\">{ready}</b> · strategies: {strat} · server count: {count} · established connections: {est} · pending dials: {pend} · gRPC frontend streams: {gs} · HTTP-CONNECT connections: {hc}</p>\
         <h2>Agents ({n})</h2><table id=\"agents\"><tr><th>agent ID</th><th>stream</th><th>hosts</th><th>CIDRs</th><th>default route</th><th>connected since (unix)</th><th>draining</th><th>flow control</th><th>connections</th><th>pending dials</th><th>bytes to agent</th><th>bytes from agent</th></tr>",
        id = esc(&j["server_id"]),
        rc = if j["ready"].as_bool() == Some(true) {
            "ok"
        } else {
            "bad"
        },
        ready = j["ready"],
        strat = esc(&j["strategies"]),
        count = j["server_count"],
        est = j["established_connections"],
        pend = j["pending_dials"],
        gs = j["frontends"]["grpc_streams"],
        hc = j["frontends"]["http_connections"],
        n = j["agents"].as_array().map_or(0, Vec::len),
    );
    for a in j["agents"].as_array().into_iter().flatten() {
        let _ = write!(o, "<tr class=\"agent\">");
        for k in [
            "agent_id",
            "stream",
            "hosts",
            "cidrs",
            "default_route",
            "connected_since",
            "draining",
            "flow_control",
            "connections",
            "pending_dials",
            "bytes_to_agent",
            "bytes_from_agent",
        ] {
            let _ = write!(o, "<td>{}</td>", esc(&a[k]));
        }
        o.push_str("</tr>");
    }
    o.push_str("</table><p>Machine-readable: <a href=\"/status\">/status</a> · <a href=\"/metrics\">/metrics</a></p></body></html>");
    o
}
