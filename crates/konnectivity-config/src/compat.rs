//! How each upstream flag is supported here — the single source for the startup
//! warnings of both binaries and for `docs/compatibility.md` (a test regenerates the
//! document and fails when the committed copy differs, so it cannot drift).
use std::fmt::Write as _;

use crate::go::pflag::FlagSpec;

/// Support status of a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Same name, type, default and behaviour as upstream.
    Same,
    /// Accepted, behaves differently (the text says how).
    Different(&'static str),
    /// Accepted but without effect yet (the text says why); logged as a warning when set.
    NotImplemented(&'static str),
    /// A konnectivity-rs addition (upstream does not have it).
    Extension,
}

const LOGS_TO_STDERR: &str = "logs always go to standard error (structured, `tracing`)";

/// proxy-server flags that differ from upstream.
pub fn server_flag(name: &str) -> Support {
    match name {
        "kubeconfig-qps" | "kubeconfig-burst" => {
            Support::NotImplemented("the Kubernetes client is not rate-limited client-side")
        }
        "xfr-channel-size" => Support::NotImplemented(
            "queues are bounded in bytes per connection (flow control), not in packets per stream",
        ),
        "cipher-suites" => Support::Different(
            "names validated as upstream; CBC-SHA suites are accepted but not offered (rustls implements only AEAD suites)",
        ),
        "tls-min-version" => Support::Different(
            "VersionTLS10/11 are accepted with a warning and act as VersionTLS12 (rustls has no TLS < 1.2)",
        ),
        "uds-name" => Support::Different(
            "the socket is bound and then set to mode 0770 (upstream binds under umask 0007)",
        ),
        "backend-dial-timeout" => {
            Support::Different("when 0, --dial-deadline (60 s) still bounds pending dials")
        }
        "agent-namespace" | "agent-service-account" | "authentication-audience" => {
            Support::Different(
                "successful TokenReviews are cached for --authentication-cache-ttl (10 s)",
            )
        }
        _ => common(name),
    }
}

/// proxy-agent flags that differ from upstream.
pub fn agent_flag(name: &str) -> Support {
    match name {
        "probe-interval" => Support::NotImplemented(
            "streams are watched directly and by HTTP/2 keepalive; no polling",
        ),
        "xfr-channel-size" => Support::NotImplemented(
            "queues are bounded in bytes per connection (flow control) and per process (--max-buffered-bytes), not in packets",
        ),
        "warn-on-channel-limit" => {
            Support::NotImplemented("queues never block the shared stream; nothing to warn about")
        }
        "proxy-server-host" => Support::Different(
            "also accepts a comma-separated list; every resolved address of every host is dialed directly",
        ),
        "count-server-leases" => Support::Different(
            "leases are listed every 10 s instead of watched through an informer",
        ),
        _ => common(name),
    }
}

/// Flags of both binaries (klog's, ours, and upstream's that both take the same way).
fn common(name: &str) -> Support {
    match name {
        "enable-profiling" | "enable-contention-profiling" => {
            Support::NotImplemented("Go pprof endpoints have no Rust equivalent; not served")
        }
        "kube-api-content-type" => Support::NotImplemented("the Kubernetes client speaks JSON"),
        "logtostderr" | "alsologtostderr" => Support::Different("logs always go to standard error"),
        "log-dir"
        | "log-file"
        | "log-file-max-size"
        | "alsologtostderrthreshold"
        | "stderrthreshold"
        | "one-output"
        | "skip-log-headers"
        | "legacy-stderr-threshold-behavior" => Support::NotImplemented(LOGS_TO_STDERR),
        "add-dir-header" | "skip-headers" | "log-backtrace-at" => {
            Support::NotImplemented("klog header options have no effect on `tracing` output")
        }
        "vmodule" => Support::NotImplemented("per-file verbosity is not supported; use RUST_LOG"),
        "v" => Support::Different("mapped onto levels: ≤1 warn, 2–4 info, 5–9 debug, ≥10 trace"),
        "keepalive-time" => Support::Different(
            "a ping not answered within the same period (at most 20 s) drops the peer",
        ),
        // Every row of the extension table, and klog's one addition of ours.
        "logging-format" => Support::Extension,
        _ if crate::extensions::EXT_FLAGS.iter().any(|f| f.name == name) => Support::Extension,
        _ => Support::Same,
    }
}

/// The warnings a binary logs for flags that were set explicitly but have no effect.
pub fn not_implemented_warnings(explicit: &[String], server: bool) -> Vec<String> {
    explicit
        .iter()
        .filter_map(|f| {
            let s = if server {
                server_flag(f)
            } else {
                agent_flag(f)
            };
            match s {
                Support::NotImplemented(why) => {
                    Some(format!("flag --{f} is accepted but has no effect: {why}"))
                }
                _ => None,
            }
        })
        .collect()
}

fn table(o: &mut String, flags: &[FlagSpec], status: fn(&str) -> Support) {
    o.push_str("| flag | type | default | status |\n|---|---|---|---|\n");
    for f in flags.iter().filter(|f| f.name != "help") {
        let st = match status(f.name) {
            Support::Same => "same".to_owned(),
            Support::Different(w) => format!("**different**: {w}"),
            Support::NotImplemented(w) => format!("**accepted, no effect** (warns): {w}"),
            Support::Extension => format!(
                "**konnectivity-rs extension**: {}",
                f.help.trim_start_matches("konnectivity-rs: ")
            ),
        };
        let hidden = if f.hidden { " (hidden)" } else { "" };
        let _ = writeln!(
            o,
            "| `--{}`{hidden} | {} | `{}` | {} |",
            f.name,
            f.value_type(),
            f.default,
            st
        );
    }
}

/// The text of `docs/compatibility.md`.
pub fn render_markdown() -> String {
    let mut o = String::new();
    o.push_str("# Compatibility with upstream apiserver-network-proxy\n\n");
    o.push_str("Generated from the flag tables and `konnectivity-config::compat` by the test\n");
    o.push_str(
        "`compatibility_doc_is_up_to_date` (run it with `UPDATE_COMPAT=1` to rewrite this file).\n",
    );
    o.push_str(
        "Every upstream flag is accepted with pflag syntax; the table says what it does here.\n\n",
    );
    o.push_str("## proxy-server flags\n\n");
    table(&mut o, crate::server::server_flags(), server_flag);
    o.push_str("\n## proxy-agent flags\n\n");
    table(&mut o, crate::agent::agent_flags(), agent_flag);
    o.push_str(ENDPOINTS_AND_METRICS);
    o.push_str(GO_CLIENT);
    o
}

const ENDPOINTS_AND_METRICS: &str = r#"
## Wire protocol and endpoints

| item | status |
|---|---|
| `/ProxyService/Proxy`, `/AgentService/Connect`, packet types 0–6, field numbers | same (protos have no package) |
| metadata `agentid`, `agentidentifiers`, `authorization`, `serverid`, `servercount` | same |
| metadata `konnectivity-rs-window`, packet type `WINDOW_UPDATE` (100) | **extension**, only between konnectivity-rs peers (negotiated) |
| server `/healthz`, `/readyz`, `/ready` (500 `no connection to any proxy agent`) | same |
| agent `/healthz`, `/readyz[?verbose]` (503 body), admin `/metrics` → 301 to the health port | same; verbose adds a `server-count degraded` line when connected to fewer servers than known |
| server admin `/metrics` | same |
| server admin `/status` (JSON, typed in `konnectivity_server::status::document`), `/status.html` (live page: agents, rate charts, open connections, failed dials, buffer budget) | **extension** |
| `/debug/pprof/*` | not served |
| HTTP-CONNECT: `200 Connection Established`, 405/500/502/503/504 texts | same; plus 403 for the destination policy, 503 for limits, 408 for a slow request head |
| a `Proxy` stream's DATA / CLOSE_REQ naming a connect ID its own dial did not establish (another frontend's, or any before its DIAL_RSP) | **difference**: never forwarded to the agent (upstream forwards it: one frontend can write into and close another's connection); answered `CLOSE_RSP{id, "mismatched connection IDs"}`, counted in `konnectivity_rs_server_foreign_connect_id_total`; the stream's own tunnel is untouched (upstream closes the first ID it saw). DIAL_CLS only abandons the stream's own dial |
| `DialRequest.protocol` | **difference**: only `tcp` is served, and `udp` from gRPC frontends with `--enable-udp` (off by default). Our server answers any other value (`unix`, `udp` when off, empty, other spellings) with `DIAL_RSP` error `protocol "unix" is not allowed (allowed: tcp)` without asking an agent (`dial_failure_count{reason="protocol_not_allowed"}`, an extension label value); our agent refuses it the same way instead of dialing (`endpoint_dial_failure_total{reason="protocol_not_allowed"}`; its refusal lists `tcp, udp` unless `--max-udp-sockets=0`). Upstream's server forwards any value and its agent passes it to Go's dialer (`unix` reaches a UNIX socket on the node). konnectivity-client and HTTP-CONNECT send `tcp` (our Rust `konnectivity_client::grpc_dial_protocol` can send `udp`; the Go client refuses anything but `tcp`) |
| `DialRequest.protocol "udp"` | same wire behaviour as upstream's agent (Go `net.Dial("udp")`: one datagram per DATA packet each way), so either agent serves our server. **Extensions** on our agent: the destination policy applies; `--max-udp-sockets` (default 1024, agent-wide; 0 serves no UDP) refuses extra dials with `DIAL_RSP` `dial udp …: too many UDP sockets open on this agent (--max-udp-sockets=N)`; a DATA payload above 65,507 bytes closes the connection with `CLOSE_RSP` `datagram of N bytes exceeds the maximum UDP payload of 65507 bytes (datagrams are never split)` (upstream's write fails or truncates); `--udp-idle-timeout` (default 1m0s) closes a connection with no datagram either way with `CLOSE_RSP` `udp connection idle for 60s (--udp-idle-timeout)` (upstream has none); datagrams from the destination are dropped, not queued, while our server's flow-control window is spent (`konnectivity_rs_agent_udp_datagrams_dropped_total`). Datagram boundaries are kept through our server (DATA of a UDP connection is never merged). SOCKS5 UDP ASSOCIATE (`--enable-udp` with `--socks5-port`) uses the same connections, one per destination |
| SOCKS5 frontend (`--socks5-port` on loopback `--socks5-bind-address`, `--socks5-uds`) | **extension**: RFC 1928 CONNECT, method 0 only (with `--socks5-auth-file`: method 2 only, RFC 1929 username/password, and the port may bind a non-loopback address; with `--socks5-tls-cert-file`/`--socks5-tls-key-file`: the port speaks TLS and requires a client certificate signed by `--socks5-tls-client-ca-file`, default `--server-ca-cert`, and may bind a non-loopback address), IPv4/IPv6/domain (names resolved by the agent); BIND gets reply 7; UDP ASSOCIATE is served with `--enable-udp` on `--socks5-port` (relay socket on the address the client connected to, datagrams only from the control connection's IP, FRAG != 0 dropped, at most 64 destinations per association), else reply 7. Failed dials map to reply codes in one place (`DialError::socks_reply`): no agent 3 (network unreachable), destination or protocol policy 2, refused 5, a timeout (server bound or the agent's 5 s dial), no route or an unknown name 4 (host unreachable; 6 "TTL expired" is not a timeout), anything else (limits, a lost agent) 1 |
| `--dial-deadline` | bounds pending dials on both frontends (gRPC: `DIAL_RSP` error `timed out waiting for backend dial`; CONNECT: 504) when `--backend-dial-timeout` is off |

## Metrics

| metric | status |
|---|---|
| server `dial_failure_count{reason}`, `established_connections`, `grpc_connections{service_method}`, `http_connections`, `pending_backend_dials`, `ready_backend_connections`, `ready_backends{proxy_strategy}`, `dial_duration_seconds`, `connection_duration_seconds`, `frontend_write_duration_seconds` (gRPC frontend), `stream_packets_total{segment,packet_type}`, process metrics | same names, types, labels, buckets, HELP |
| server `full_receive_channels` | not exported: no receive queue ever blocks here |
| server `stream_errors_total{segment,code,packet_type}` | same names, labels, HELP; counted when an agent stream (`from_agent`) or a live frontend stream (`from_client`) fails while receiving (`packet_type="Unknown"`; `code` is the peer's gRPC status, `Canceled` for a stream reset with CANCEL, `Unavailable` for a lost transport). A client that tears down a tunnel it already finished (CLOSE_RSP sent, or a failed dial answered) is not counted, where upstream counts every non-EOF receive error |
| server lease metrics `lease_list_total`, `lease_list_latency_seconds`, `lease_delete_total`, `lease_delete_latency_seconds` (`http_status_code`, `reason`), `culled_leases_count` (with `--enable-lease-controller`) | same names, labels, default buckets and HELP texts (upstream's typos kept); calls that fail before kube-apiserver answers are not counted, as upstream |
| agent `open_server_connections`, `known_server_count`, `open_endpoint_connections`, `endpoint_dial_failure_total{reason}` | same (exported from startup, where upstream exports some only after first use) |
| agent `dial_duration_seconds` (successful dials, upstream's buckets), `stream_packets_total{segment,packet_type}` (`from_agent` = sent, `to_agent` = received), `stream_errors_total{segment,code,packet_type}` and the deprecated `server_connection_failure_count{direction}` | same names, types, labels, HELP; no zero series. Errors are counted when the server stream fails while receiving (`to_agent`/`from_server`, `packet_type="Unknown"`, code `Unavailable` for a lost transport); a failed write ends the stream and is counted as that receive failure, so `to_server`/`from_agent` series do not appear |
| `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`, `process_virtual_memory_bytes`, `process_resident_memory_bytes`, `process_start_time_seconds`, `process_threads` | on the server and the agent, read from `/proc/self`, with the names, types and HELP texts of the Prometheus client libraries' process collector; Go's `go_*` runtime metrics are not exported |
| agent lease metrics `lease_lists_total{http_response_code,reason}`, `lease_list_latency_seconds{http_response_code}` (with `--count-server-leases`), `lease_watches_total` | same names, labels, buckets and HELP; `lease_watches_total` is declared and never incremented (the agent lists and does not watch; upstream registers it and never increments it either). A list call that fails before kube-apiserver answers is not counted, as upstream, and its latency is not recorded (upstream records it under `200`) |
| `konnectivity_rs_server_buffer_overflow_total`, `_limit_hits_total{limit}`, `_destination_denied_total`, `_connection_closes_total{reason}`, `_bytes_total{direction}`, `_oldest_pending_dial_seconds`, `_buffered_bytes`, `_buffer_budget_bytes`, `_stream_pauses_total`, `_stalled_connections_total`, `_foreign_connect_id_total`, `_certificate_reloads_total`, `_certificate_reload_failures_total`; `konnectivity_rs_agent_degraded`, `_buffered_bytes`, `_buffer_budget_bytes`, `_stream_pauses_total`, `_stalled_connections_total`, `_certificate_reloads_total`, `_certificate_reload_failures_total`, `_udp_open_sockets`, `_udp_dials_total`, `_udp_dials_refused_total`, `_udp_datagrams_to_destination_total`, `_udp_datagrams_from_destination_total`, `_udp_datagrams_dropped_total` | **extensions** |
"#;

const GO_CLIENT: &str = r#"
## Limits of konnectivity-client (kube-apiserver's side) under load

Measured with the real Go client (v0.37.0, `tests/go-interop -load`) against every
server + agent pairing; they hold with upstream's server as with ours.

| behaviour of the client | effect | what the server does |
|---|---|---|
| It registers a new connection only after the goroutine that waits in `DialContext` has taken the DIAL_RSP; its reader loop hands the DIAL_RSP over and moves on at once. | DATA that reaches the client right behind the DIAL_RSP, i.e. data the backend sends *before the client has written anything*, can be dropped with `Connection not recognized` and a CLOSE_REQ sent: the connection is lost. Client-first protocols (HTTP, the kubelet API, `kubectl logs` and `exec`) never meet it; a server-first backend (a banner, a stream that starts at once) can. | Nothing yet: our server forwards DATA as soon as it arrives, as upstream. It **could soften this without a protocol change**: hold a connection's first DATA until the client has sent its first packet on the stream (which proves the client has registered the connection), or at most a short grace time for server-first backends. That narrows the race; only the client can close it, by registering the connection before it hands over the DIAL_RSP. |
| It hands each DATA message to the connection with a timer and a channel send (channel of 10 messages), one message at a time. | Its consumption rate is bounded per message, not per byte: with 4 KiB messages (what upstream's agent sends) a single connection reads far slower than with 256 KiB ones. | Small DATA chunks waiting for the same connection are sent on as one message of up to 256 KiB, toward the client and toward agents (`konnectivity-tunnel::queue`, `::outbound`). |
| If the application does not take a message within 10 s (`readTimeoutSeconds`), it closes the whole tunnel. | A stalled reader is cut by the client itself after 10 s, whatever the server does; `--stall-timeout` defaults to the same 10 s. | Against an agent without flow control, our server pauses that agent's stream while a connection or the process is over budget, and closes a connection whose consumer made no progress for `--stall-timeout` as stalled (`konnectivity_rs_server_stalled_connections_total`). |
| `Close` sends CLOSE_REQ and waits up to 10 s for CLOSE_RSP. | With a backend that keeps streaming, the CLOSE_RSP queues behind DATA nobody reads any more, so `Close` takes the full 10 s (with either server). Cancelling the tunnel's context ends it at once. | Nothing yet (the server could stop forwarding DATA once the client sent CLOSE_REQ). |
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_doc_is_up_to_date() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/compatibility.md");
        let want = render_markdown();
        if std::env::var_os("UPDATE_COMPAT").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/compatibility.md is stale: run `UPDATE_COMPAT=1 cargo test -p konnectivity-config compatibility_doc`"
        );
    }

    #[test]
    fn every_extension_flag_is_marked_as_such() {
        for f in crate::server::server_flags()
            .iter()
            .chain(crate::agent::agent_flags())
        {
            let ext = f.help.starts_with("konnectivity-rs") || f.help.contains("(konnectivity-rs)");
            let st = if crate::server::server_flags()
                .iter()
                .any(|s| s.name == f.name)
            {
                server_flag(f.name)
            } else {
                agent_flag(f.name)
            };
            assert_eq!(ext, st == Support::Extension, "{}", f.name);
        }
    }
}
