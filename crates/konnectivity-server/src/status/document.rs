//! The `/status` document, typed: what the admin port's `/status` returns as JSON and
//! what the status page (`/status.html`) and `konnectivity doctor` read.
//!
//! Every struct here both serializes (the server) and deserializes (tools), so a reader
//! can share these types instead of picking fields out of a `serde_json::Value`. The
//! shape is stable: fields are only ever added. Fields that existed before the live
//! status page (`server_id`, `server_count`, `strategies`, `ready`,
//! `established_connections`, `pending_dials`, `frontends`, `buffers`, and per agent
//! `agent_id`, `stream`, `hosts`, `cidrs`, `default_route`, `connected_since`,
//! `draining`, `flow_control`, `connections`, `pending_dials`, `bytes_to_agent`,
//! `bytes_from_agent`) keep their names, types and meaning; readers that predate a
//! field get its default when they deserialize an older server's document.
//!
//! Times are Unix times: whole seconds where the field always was (`connected_since`),
//! milliseconds in the fields named `…_ms`. Durations are seconds as floats. Ages are
//! meant to be computed against [`Status::now_ms`], the server's clock, not the reader's.
use serde::{Deserialize, Serialize};

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `--server-id`.
    pub server_id: String,
    /// `--server-count`.
    pub server_count: u32,
    /// `--proxy-strategies`, in order, by their flag names.
    pub strategies: Vec<String>,
    /// Whether the first strategy holds an agent (what `/readyz` answers).
    pub ready: bool,
    /// Tunneled connections established through every frontend.
    pub established_connections: i64,
    /// Dials sent to agents and not answered yet.
    pub pending_dials: usize,
    /// Frontend streams and connections open now.
    pub frontends: Frontends,
    /// Data queued in the server against its budget.
    pub buffers: Buffers,
    /// Every agent stream, sorted by agent ID then stream.
    pub agents: Vec<Agent>,
    /// The server's clock when the document was made (Unix milliseconds).
    #[serde(default)]
    pub now_ms: u64,
    /// The spacing of the samples in each agent's [`History`].
    #[serde(default)]
    pub sample_interval_seconds: f64,
    /// The most recent failed dials, newest first (a bounded ring in the server).
    #[serde(default)]
    pub dial_failures: Vec<DialFailure>,
    /// Failed dials since the server started, including those the ring forgot.
    #[serde(default)]
    pub dial_failures_total: u64,
    /// With `/status?explain=<host>`: which agent stream a dial to that host would take
    /// now, and why (the server's own selection, `BackendTable::explain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
}

/// How a dial to [`Route::destination`] would be routed, by the strategies in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The host asked about (port stripped).
    pub destination: String,
    /// What decided.
    pub how: RouteHow,
    /// The strategy that decided (`destHost`, `default`, `defaultRoute`); none for
    /// [`RouteHow::NoAgent`].
    pub strategy: Option<String>,
    /// For [`RouteHow::Cidr`]: the announced prefix that contains the destination.
    pub cidr: Option<String>,
    /// For [`RouteHow::Host`] and [`RouteHow::Cidr`]: the stream it takes.
    pub agent: Option<RouteAgent>,
    /// For [`RouteHow::Random`]: the streams it chooses among (the first stream of
    /// each key), non-draining ones first at dial time.
    #[serde(default)]
    pub candidates: Vec<RouteAgent>,
}

/// What decided a [`Route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteHow {
    /// A stream announced the host exactly (`host=`, `ipv4=`, `ipv6=`).
    Host,
    /// The longest announced `cidr=` containing the destination IP.
    Cidr,
    /// `default` or `defaultRoute`: one of the candidates at random.
    Random,
    /// No strategy has a candidate: the dial gets `No agent available`.
    NoAgent,
}

/// An agent stream named by a [`Route`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteAgent {
    /// `agentid`.
    pub agent_id: String,
    /// The stream (unique per server).
    pub stream: u64,
    /// Whether it announced DRAIN.
    pub draining: bool,
    /// When it connected (Unix seconds).
    pub connected_since: u64,
}

/// Frontend streams and connections open now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frontends {
    /// `ProxyService.Proxy` streams (one per tunneled connection of kube-apiserver).
    pub grpc_streams: i64,
    /// HTTP-CONNECT client connections.
    pub http_connections: i64,
}

/// The process-wide buffer budget (`--max-buffered-bytes`, `--stall-timeout`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buffers {
    /// DATA queued for consumers that have not taken it yet, summed over connections.
    pub buffered_bytes: usize,
    /// The budget (0: unlimited).
    pub budget_bytes: usize,
    /// A consumer over its budget without progress for this long is closed.
    pub stall_timeout_seconds: f64,
    /// Times an agent stream's reader paused because of the budget.
    pub stream_pauses: u64,
    /// Connections closed because their consumer stalled.
    pub stalled_connections: u64,
}

/// One agent stream (`AgentService.Connect`). An agent connected twice is listed twice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// The `agentid` it announced.
    pub agent_id: String,
    /// The server's ID for this stream (unique in this process).
    pub stream: u64,
    /// `host=`, `ipv4=` and `ipv6=` identifiers, in that order.
    pub hosts: Vec<String>,
    /// `cidr=` identifiers.
    pub cidrs: Vec<String>,
    /// `default-route=true`.
    pub default_route: bool,
    /// When the stream was accepted (Unix seconds).
    pub connected_since: u64,
    /// The agent sent DRAIN (or the server retired the stream).
    pub draining: bool,
    /// Both sides negotiated our per-connection window extension (WINDOW_UPDATE);
    /// false for an upstream agent or with the extension turned off.
    pub flow_control: bool,
    /// The receive window the agent announced, when it did and we use it.
    #[serde(default)]
    pub peer_window: Option<u32>,
    /// Established connections over this stream.
    pub connections: usize,
    /// Dials pending on this stream.
    pub pending_dials: usize,
    /// DATA payload bytes sent to the agent.
    pub bytes_to_agent: u64,
    /// DATA payload bytes received from the agent.
    pub bytes_from_agent: u64,
    /// Dials sent over this stream.
    #[serde(default)]
    pub dials: u64,
    /// Of those, the ones that failed.
    #[serde(default)]
    pub failed_dials: u64,
    /// Rates over the last minutes, oldest first.
    #[serde(default)]
    pub history: History,
    /// Open connections, oldest first, at most [`MAX_LISTED_CONNECTIONS`].
    #[serde(default)]
    pub open_connections: Vec<Connection>,
    /// Open connections left out of `open_connections` by the bound.
    #[serde(default)]
    pub open_connections_omitted: usize,
}

/// The most connections listed per agent stream.
pub const MAX_LISTED_CONNECTIONS: usize = 100;

/// An agent stream's rates, one entry per completed sample interval, oldest first; the
/// vectors have equal lengths (columns, so a chart takes one whole).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// When each interval ended (Unix milliseconds).
    pub end_ms: Vec<u64>,
    /// DATA bytes per second sent to the agent.
    pub bytes_to_agent_per_s: Vec<u64>,
    /// DATA bytes per second received from the agent.
    pub bytes_from_agent_per_s: Vec<u64>,
    /// Dials per second sent to the agent.
    pub dials_per_s: Vec<f64>,
    /// Failed dials per second.
    pub failed_dials_per_s: Vec<f64>,
}

/// Which frontend a connection or dial came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrontendKind {
    /// `ProxyService.Proxy` (kube-apiserver's konnectivity-client).
    Grpc,
    /// HTTP CONNECT.
    Connect,
    /// SOCKS5 CONNECT (`--socks5-port`, `--socks5-uds`).
    Socks5,
}

/// One open tunneled connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// The agent's connect ID (unique per agent stream).
    pub connect_id: i64,
    /// The address the frontend dialed.
    pub destination: String,
    /// The frontend it came through.
    pub frontend: FrontendKind,
    /// `tcp` or `udp` (a datagram connection: gRPC `protocol "udp"` or SOCKS5 UDP
    /// ASSOCIATE).
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Since the dial completed.
    pub age_seconds: f64,
    /// DATA payload bytes sent to the agent; known only with flow control, where the
    /// connection's credit counts them (`None` otherwise).
    pub bytes_to_agent: Option<u64>,
    /// DATA payload bytes received from the agent.
    pub bytes_from_agent: u64,
    /// Bytes from the agent waiting for the frontend to take them.
    pub queued_bytes: usize,
}

fn tcp() -> String {
    "tcp".into()
}

/// One failed dial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialFailure {
    /// When it failed (Unix milliseconds).
    pub at_ms: u64,
    /// The address the frontend dialed.
    pub destination: String,
    /// The agent ID the dial went to; `None` when none was chosen (no agent, denied).
    /// (Named `agent`, not `agent_id`, so that `"agent_id"` in the document still
    /// occurs once per agent stream: scripts count agents that way.)
    pub agent: Option<String>,
    /// The frontend it came through.
    pub frontend: FrontendKind,
    /// The cause, in the words `konnectivity doctor` uses.
    pub cause: DialCause,
    /// The cause as a sentence.
    pub explanation: String,
    /// The error text the frontend got (the agent's own text for a failed dial).
    pub error: String,
}

/// Why a dial failed, classified from its error text with the same rules as
/// `konnectivity doctor dial` (the text is all an agent sends back in DIAL_RSP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DialCause {
    /// No connected agent serves the destination.
    NoAgent,
    /// Nothing accepts connections on the destination (or a REJECT rule).
    Refused,
    /// No answer in time: packets dropped, or the agent did not answer the dial.
    TimedOut,
    /// The agent's node has no route to the destination.
    Unreachable,
    /// The agent's node cannot resolve the destination.
    DnsFailed,
    /// The agent stream ended while the dial was pending.
    AgentDisconnected,
    /// A destination policy refused it.
    Denied,
    /// A limit of the server was reached.
    Limit,
    /// The frontend closed or cancelled the dial before the agent answered.
    FrontendClosed,
    /// Anything else.
    Failed,
}

/// The error text recorded when a frontend goes away while its dial is pending.
pub const FRONTEND_CLOSED: &str = "the frontend closed the dial before the agent answered";

impl DialCause {
    /// Classifies an error text.
    pub fn of(error: &str) -> Self {
        let lower = error.to_lowercase();
        if error == FRONTEND_CLOSED {
            Self::FrontendClosed
        } else if error.contains(konnectivity_core::wire::NO_AGENT_AVAILABLE) {
            Self::NoAgent
        } else if lower.contains("connection refused") {
            Self::Refused
        } else if lower.contains("i/o timeout")
            || error.contains(konnectivity_core::wire::BACKEND_DIAL_TIMEOUT)
            || lower.contains("timed out")
        {
            Self::TimedOut
        } else if lower.contains("no route to host")
            || lower.contains("network is unreachable")
            || lower.contains("host is unreachable")
        {
            Self::Unreachable
        } else if lower.contains("no such host") || lower.contains("lookup") {
            Self::DnsFailed
        } else if error.contains(konnectivity_core::wire::AGENT_DISCONNECTED) {
            Self::AgentDisconnected
        } else if lower.contains("denied") || lower.contains("not allowed") {
            Self::Denied
        } else if error.contains("(--max-") {
            Self::Limit
        } else {
            Self::Failed
        }
    }

    /// The cause as a sentence, for people.
    pub fn explanation(self) -> &'static str {
        match self {
            Self::NoAgent => "no connected agent serves this destination",
            Self::Refused => "nothing accepts connections on the destination port",
            Self::TimedOut => "no answer in time: packets are dropped, or the agent did not answer",
            Self::Unreachable => "the agent's node has no route to the destination",
            Self::DnsFailed => "the agent's node cannot resolve the destination",
            Self::AgentDisconnected => "the agent disconnected during the dial",
            Self::Denied => "a destination policy refused it",
            Self::Limit => "a limit of the server was reached",
            Self::FrontendClosed => "the client gave up before the agent answered",
            Self::Failed => "the dial failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_causes_are_named_as_doctor_names_them() {
        let cases = [
            ("No agent available", DialCause::NoAgent),
            (
                "dial tcp 127.0.0.1:1: connect: connection refused",
                DialCause::Refused,
            ),
            ("dial tcp 10.0.0.9:10250: i/o timeout", DialCause::TimedOut),
            (
                konnectivity_core::wire::BACKEND_DIAL_TIMEOUT,
                DialCause::TimedOut,
            ),
            (
                "dial tcp 10.9.9.9:1: connect: no route to host",
                DialCause::Unreachable,
            ),
            (
                "dial tcp: lookup nowhere.invalid: no such host",
                DialCause::DnsFailed,
            ),
            (
                konnectivity_core::wire::AGENT_DISCONNECTED,
                DialCause::AgentDisconnected,
            ),
            (
                "too many pending dials on agent a (--max-pending-dials-per-agent=1)",
                DialCause::Limit,
            ),
            (FRONTEND_CLOSED, DialCause::FrontendClosed),
            ("something else", DialCause::Failed),
        ];
        for (text, cause) in cases {
            assert_eq!(DialCause::of(text), cause, "{text}");
        }
    }

    #[test]
    fn agent_id_occurs_once_per_agent_stream_even_with_failed_dials() {
        let doc = Status {
            agents: vec![Agent {
                agent_id: "a".into(),
                ..Default::default()
            }],
            dial_failures: vec![DialFailure {
                at_ms: 1,
                destination: "10.0.0.1:1".into(),
                agent: Some("a".into()),
                frontend: FrontendKind::Grpc,
                cause: DialCause::Refused,
                explanation: DialCause::Refused.explanation().into(),
                error: "dial tcp 10.0.0.1:1: connect: connection refused".into(),
            }],
            ..Default::default()
        };
        let json = serde_json::to_string(&doc).expect("serializes");
        assert_eq!(json.matches("\"agent_id\"").count(), 1, "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).expect("reads"), doc);
    }

    #[test]
    fn a_document_without_the_new_fields_still_reads() {
        let old = r#"{"server_id":"s","server_count":1,"strategies":["default"],"ready":true,
            "established_connections":0,"pending_dials":0,
            "frontends":{"grpc_streams":0,"http_connections":0},
            "buffers":{"buffered_bytes":0,"budget_bytes":1,"stall_timeout_seconds":10.0,
                       "stream_pauses":0,"stalled_connections":0},
            "agents":[{"agent_id":"a","stream":1,"hosts":[],"cidrs":[],"default_route":false,
                       "connected_since":1,"draining":false,"flow_control":true,
                       "connections":0,"pending_dials":0,"bytes_to_agent":0,"bytes_from_agent":0}]}"#;
        let s: Status = serde_json::from_str(old).expect("reads");
        assert_eq!(s.agents[0].agent_id, "a");
        assert!(s.dial_failures.is_empty());
    }
}
