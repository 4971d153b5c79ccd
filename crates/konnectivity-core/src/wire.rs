//! Strings that cross the wire and that peers or operators match on.
//!
//! The error texts are upstream's, byte for byte: konnectivity-client returns them to
//! kube-apiserver verbatim and upstream tests match on them.

/// Server → frontend when no backend manager has an agent for the destination.
pub const NO_AGENT_AVAILABLE: &str = "No agent available";
/// Server → frontend: CLOSE_REQ before any DIAL_REQ on the stream.
pub const BACKEND_UNINITIALIZED: &str = "backend uninitialized";
/// Server → frontend: DATA before any DIAL_REQ on the stream.
pub const BACKEND_NOT_INITIALIZED: &str = "backend not initialized";
/// Server → frontend: a Proxy stream used two different connect IDs.
pub const MISMATCHED_CONNECTION_IDS: &str = "mismatched connection IDs";
/// Server → frontend: forwarding a CLOSE_REQ to the agent failed.
pub const CLOSE_REQ_TO_BACKEND_FAILED: &str = "CLOSE_REQ to backend failed";
/// Server → frontend: `--backend-dial-timeout` elapsed.
pub const BACKEND_DIAL_TIMEOUT: &str = "timed out waiting for backend dial";
/// Agent → server: DATA for a connect ID the agent does not know.
pub const UNRECOGNIZED_CONNECT_ID: &str = "unrecognized connectID";
/// Agent → server: CLOSE_REQ for a connect ID the agent does not know.
pub const UNKNOWN_CONNECT_ID: &str = "Unknown connectID";
/// Server → gRPC frontend when the agent carrying its pending dial disconnected.
/// (Upstream leaves such dials to time out; answering at once is our improvement.)
pub const AGENT_DISCONNECTED: &str = "agent disconnected before the dial completed";
/// Server → frontend (CLOSE_RSP error) for an established connection whose agent
/// stream ended: the connection did not end normally. (Upstream closes without an
/// error; its Go client ignores the text either way.)
pub const AGENT_GONE: &str = "connection closed: the agent carrying it disconnected";
/// Close error when a flow-controlled peer sent more than the connection's window.
pub const BUFFER_OVERFLOW: &str =
    "connection closed: the peer sent more than the connection's flow-control window";
/// Close error when a connection's consumer made no progress within the stall timeout
/// while data was buffered for it.
pub const STALLED_CONSUMER: &str = "connection closed: the receiving side made no progress within the stall timeout while data was buffered for it";

/// gRPC metadata keys. grpc-go lowercases keys on the wire; we always send lowercase.
pub mod metadata {
    /// Agent → server: the agent's ID (exactly one value).
    pub const AGENT_ID: &str = "agentid";
    /// Agent → server: URL-query identifiers (always sent, possibly empty).
    pub const AGENT_IDENTIFIERS: &str = "agentidentifiers";
    /// Agent → server: `Bearer <token>` when token auth is used.
    pub const AUTHORIZATION: &str = "authorization";
    /// Server → agent response header: the server's ID.
    pub const SERVER_ID: &str = "serverid";
    /// Server → agent response header: `--server-count`.
    pub const SERVER_COUNT: &str = "servercount";
    /// konnectivity-rs capability, both directions: the sender's per-connection receive
    /// window in bytes. Present on both ends ⇒ WINDOW_UPDATE flow control is on for
    /// that stream. Upstream ignores unknown metadata.
    pub const FLOW_WINDOW: &str = "konnectivity-rs-window";
    /// konnectivity-rs, agent → server `1`: a check only (`konnectivity doctor agent`):
    /// identify and authenticate the agent and answer, but never add the stream to the
    /// routing table, so no dial can be sent to the check. Server → agent `1`: honoured.
    /// Upstream's server ignores it and registers the stream (the doctor then sends DRAIN
    /// and leaves at once).
    pub const PROBE: &str = "konnectivity-rs-probe";
}
