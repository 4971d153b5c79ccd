//! The server's shared state: connected agent streams, pending dials, counters.
//!
//! Locks here are `std::sync::Mutex`es held only for map operations, never across an
//! await.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use konnectivity_core::protocol::Protocol;
use konnectivity_core::select::{BackendTable, Candidate, Strategy};
use konnectivity_tunnel::budget::MemoryBudget;
use konnectivity_tunnel::credit::Credit;
use konnectivity_tunnel::outbound::StreamTx;
use konnectivity_tunnel::queue::{ConnQueue, ConnReceiver, Overflow, Pressure};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::status::document::{FRONTEND_CLOSED, FrontendKind};
use crate::status::history::{DialFailures, History};

/// Runtime settings of the server core (already validated).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--server-id`.
    pub server_id: String,
    /// `--server-count`.
    pub server_count: u32,
    /// `--proxy-strategies`, in order.
    pub strategies: Vec<Strategy>,
    /// `--backend-dial-timeout` (`None` = disabled, upstream's default).
    pub backend_dial_timeout: Option<Duration>,
    /// Our per-connection receive window, announced to agents that support flow
    /// control; `None` turns the extension off.
    pub flow_window: Option<u32>,
    /// Largest DATA payload we read from a CONNECT client.
    pub max_chunk: usize,
    /// Largest gRPC message we accept (grpc-go's default, 4 MiB).
    pub max_message: usize,
    /// `--keepalive-time` on the agent listener.
    pub agent_keepalive: Duration,
    /// `--frontend-keepalive-time`.
    pub frontend_keepalive: Duration,
    /// HTTP-CONNECT request head timeout (upstream: 60 s).
    pub connect_header_timeout: Duration,
    /// Bound on a pending dial when `backend_dial_timeout` is off (`None`: unbounded,
    /// upstream's behaviour).
    pub dial_deadline: Option<Duration>,
    /// Allowed destinations.
    pub policy: konnectivity_core::policy::DestinationPolicy,
    /// Pending dials per agent stream (0: unlimited).
    pub max_pending_per_agent: usize,
    /// Established connections per agent stream (0: unlimited).
    pub max_conns_per_agent: usize,
    /// `--max-buffered-bytes`: the process-wide budget of queued DATA (0: unlimited).
    pub max_buffered_bytes: usize,
    /// `--stall-timeout`: a consumer over its budget that makes no progress for this
    /// long is closed.
    pub stall_timeout: Duration,
    /// `--enable-udp`: gRPC frontends may ask for `udp` (else only `tcp` is served).
    pub enable_udp: bool,
    /// `--socks5-auth-file`: the users SOCKS5 clients must authenticate as (RFC 1929);
    /// `None`: no authentication.
    pub socks5_users: Option<Arc<konnectivity_core::socks::Users>>,
}

impl Settings {
    /// The bounds on a pending dial, for the tunnel state machine.
    pub fn dial_bounds(&self) -> konnectivity_core::tunnel::DialBounds {
        konnectivity_core::tunnel::DialBounds {
            backend_dial_timeout: self.backend_dial_timeout,
            dial_deadline: self.dial_deadline,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server_id: "konnectivity-rs".into(),
            server_count: 1,
            strategies: vec![Strategy::Default],
            backend_dial_timeout: None,
            flow_window: Some(konnectivity_core::flow::DEFAULT_WINDOW),
            max_chunk: konnectivity_core::flow::MAX_CHUNK,
            max_message: 4 << 20,
            agent_keepalive: Duration::from_secs(3600),
            frontend_keepalive: Duration::from_secs(3600),
            connect_header_timeout: Duration::from_secs(60),
            dial_deadline: Some(Duration::from_secs(60)),
            policy: Default::default(),
            max_pending_per_agent: 1000,
            max_conns_per_agent: 20_000,
            max_buffered_bytes: konnectivity_tunnel::budget::DEFAULT_LIMIT,
            stall_timeout: konnectivity_tunnel::budget::DEFAULT_STALL,
            enable_udp: false,
            socks5_users: None,
        }
    }
}

/// One established connection, as the agent stream's reader sees it.
#[derive(Debug)]
pub struct ConnEntry {
    /// Where agent DATA for this connection goes (never blocks).
    pub queue: ConnQueue,
    /// Credit for frontend → agent DATA, granted by the agent's WINDOW_UPDATEs.
    pub credit: Option<Arc<Credit>>,
    /// When the dial completed (for `connection_duration_seconds`).
    pub since: Instant,
    /// The address the frontend dialed (for `/status`).
    pub destination: String,
    /// The frontend the connection came through.
    pub frontend: FrontendKind,
    /// `tcp` or `udp` (one datagram per DATA).
    pub protocol: Protocol,
    /// DATA payload bytes received from the agent, counted under the table's lock the
    /// reader holds anyway (no atomic).
    pub bytes_from_agent: u64,
}

impl ConnEntry {
    /// Queues DATA from the agent for the frontend, counting it for `/status`.
    pub fn push_from_agent(&mut self, data: bytes::Bytes) -> Result<Option<Pressure>, Overflow> {
        self.bytes_from_agent += data.len() as u64;
        self.queue.push(data)
    }
}

/// One agent stream (`AgentService.Connect`): a backend.
#[derive(Debug)]
pub struct Backend {
    /// Unique per stream.
    pub stream_id: u64,
    /// The `agentid` it announced.
    pub agent_id: String,
    /// Sends to the agent.
    pub tx: StreamTx,
    /// The agent's announced receive window, when both sides do flow control.
    pub peer_window: Option<u32>,
    draining: AtomicBool,
    /// Dials pending on this stream (maintained by [`Pending`]'s constructor and drop).
    pending: std::sync::atomic::AtomicUsize,
    /// Connections dialed over this stream, by the agent's connect ID.
    conns: Mutex<HashMap<i64, ConnEntry>>,
    /// When the stream was accepted.
    pub since: std::time::SystemTime,
    /// DATA payload bytes received from the agent.
    pub bytes_from_agent: std::sync::atomic::AtomicU64,
    /// Dials sent over this stream (counted when they are registered).
    pub dials: AtomicU64,
    /// Of those, the ones that failed.
    pub failed_dials: AtomicU64,
    /// A few minutes of samples of the counters above, for the status page; written
    /// by the status sampler only.
    pub history: Mutex<History>,
}

impl Backend {
    /// A new backend for a stream.
    pub fn new(stream_id: u64, agent_id: String, tx: StreamTx, peer_window: Option<u32>) -> Self {
        Self {
            stream_id,
            agent_id,
            tx,
            peer_window,
            draining: AtomicBool::new(false),
            pending: Default::default(),
            conns: Mutex::new(HashMap::new()),
            since: std::time::SystemTime::now(),
            bytes_from_agent: Default::default(),
            dials: Default::default(),
            failed_dials: Default::default(),
            history: Mutex::new(History::new()),
        }
    }
    /// Marks the backend draining (DRAIN received, or retired).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
    /// Dials pending on this stream.
    pub fn pending_dials(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
    /// The connection table.
    pub fn conns(&self) -> MutexGuard<'_, HashMap<i64, ConnEntry>> {
        lock(&self.conns)
    }
}

impl Candidate for Backend {
    fn stream_id(&self) -> u64 {
        self.stream_id
    }
    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The frontend's view of an established connection.
#[derive(Debug)]
pub struct Established {
    /// The agent's connect ID.
    pub connect_id: i64,
    /// Agent DATA and the close, in order.
    pub rx: ConnReceiver,
    /// Credit for sending DATA to the agent (`None`: the agent has no flow control).
    pub credit: Option<Arc<Credit>>,
}

/// How a pending dial ended.
#[derive(Debug)]
pub enum DialOutcome {
    /// DIAL_RSP without error.
    Connected(Established),
    /// The dial failed: the agent's error, its DIAL_CLS, its stream's end, a limit.
    Failed(konnectivity_core::dial::DialError),
}

/// A dial sent to an agent and not answered yet. Counted on its backend while it exists.
#[derive(Debug)]
pub struct Pending {
    /// The backend the DIAL_REQ went to.
    pub backend: Arc<Backend>,
    /// When the server received the DIAL_REQ.
    pub started: Instant,
    /// Unique per registration: only the frontend holding it may remove the dial.
    pub ticket: u64,
    /// The address the frontend dialed.
    pub address: String,
    /// The frontend the dial came through.
    pub frontend: FrontendKind,
    /// The protocol asked for: a `udp` connection's DATA payloads are datagrams.
    pub protocol: Protocol,
    /// Delivers the outcome to the frontend task.
    reply: Option<oneshot::Sender<DialOutcome>>,
    /// Where a failure is remembered for the status page.
    failures: Arc<DialFailures>,
    /// Whether the outcome was delivered or the failure recorded (else `drop` records
    /// it as unanswered).
    settled: bool,
}

impl Pending {
    /// A pending dial on `backend` for `address`, from `frontend`, registered under
    /// `ticket`.
    pub fn new(
        backend: Arc<Backend>,
        reply: oneshot::Sender<DialOutcome>,
        ticket: u64,
        address: &str,
        frontend: FrontendKind,
        protocol: Protocol,
        failures: Arc<DialFailures>,
    ) -> Self {
        backend.pending.fetch_add(1, Ordering::AcqRel);
        backend.dials.fetch_add(1, Ordering::Relaxed);
        Self {
            backend,
            started: Instant::now(),
            ticket,
            address: address.to_owned(),
            protocol,
            frontend,
            reply: Some(reply),
            failures,
            settled: false,
        }
    }

    /// Delivers the outcome; false when the frontend is already gone. A failed outcome
    /// is remembered for the status page.
    pub fn resolve(mut self, outcome: DialOutcome) -> bool {
        match &outcome {
            DialOutcome::Connected(_) => self.settled = true,
            DialOutcome::Failed(e) => self.record_failure(&e.wire_text()),
        }
        self.reply.take().is_some_and(|r| r.send(outcome).is_ok())
    }

    /// Ends the dial as failed with `error` without telling the frontend (it is gone,
    /// or the caller answers it).
    pub fn fail(mut self, error: &str) {
        self.record_failure(error);
    }

    /// The frontend went away while the dial was pending.
    pub fn abandon(self) {
        self.fail(FRONTEND_CLOSED);
    }

    fn record_failure(&mut self, error: &str) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        self.backend.failed_dials.fetch_add(1, Ordering::Relaxed);
        self.failures.record(
            Some(&self.backend.agent_id),
            &self.address,
            self.frontend,
            error,
        );
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.backend.pending.fetch_sub(1, Ordering::AcqRel);
        if !self.settled {
            // Every path that knows why a dial ended settles it; what is left is a
            // frontend's deadline taking the dial out of the map.
            let waited = self.started.elapsed();
            self.record_failure(&format!(
                "{} (no answer from the agent after {:.1}s)",
                konnectivity_core::wire::BACKEND_DIAL_TIMEOUT,
                waited.as_secs_f64()
            ));
        }
    }
}

/// Everything the server's tasks share.
#[derive(Debug)]
pub struct Shared {
    /// Validated settings.
    pub settings: Settings,
    /// ServiceAccount token authentication of agents, when enabled.
    pub auth: Option<konnectivity_k8s::auth::TokenAuthenticator>,
    table: Mutex<BackendTable<Arc<Backend>>>,
    /// Pending dials by dial ID (one global map, as upstream).
    pending: Mutex<HashMap<i64, Pending>>,
    /// Counters and gauges (shared with the lease controller, which reports to them).
    pub metrics: Arc<Metrics>,
    /// The process-wide budget every connection queue counts against.
    pub budget: Arc<MemoryBudget>,
    /// The last failed dials, for the status page.
    pub dial_failures: Arc<DialFailures>,
    next_id: AtomicU64,
}

impl Shared {
    /// Shared state for `settings`.
    pub fn new(settings: Settings) -> Arc<Self> {
        Self::with_auth(settings, None)
    }

    /// Shared state that authenticates agents with `auth`.
    pub fn with_auth(
        settings: Settings,
        auth: Option<konnectivity_k8s::auth::TokenAuthenticator>,
    ) -> Arc<Self> {
        let table = BackendTable::new(settings.strategies.clone());
        let budget = MemoryBudget::new(settings.max_buffered_bytes, settings.stall_timeout);
        let metrics = Arc::new(Metrics::new(&settings.strategies, &budget));
        Arc::new(Self {
            budget,
            settings,
            auth,
            table: Mutex::new(table),
            pending: Mutex::new(HashMap::new()),
            metrics,
            dial_failures: Default::default(),
            next_id: AtomicU64::new(1),
        })
    }
    /// A fresh ID for a stream.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
    /// The backend table.
    pub fn table(&self) -> MutexGuard<'_, BackendTable<Arc<Backend>>> {
        lock(&self.table)
    }
    /// The pending-dial map.
    pub fn pending(&self) -> MutexGuard<'_, HashMap<i64, Pending>> {
        lock(&self.pending)
    }
    /// Readiness: the first strategy holds an agent.
    pub fn ready(&self) -> bool {
        self.table().ready()
    }
    /// Updates the gauge computed at scrape time: the oldest pending dial's age.
    pub fn refresh_scrape_gauges(&self) {
        let oldest = self
            .pending()
            .values()
            .map(|p| p.started.elapsed())
            .max()
            .unwrap_or_default();
        self.metrics.set_oldest_pending(oldest);
    }

    /// Refreshes the `ready_backends` gauges from the table.
    pub fn refresh_backend_gauges(&self) {
        let t = self.table();
        for s in t.strategies() {
            self.metrics.set_ready_backends(*s, t.keys(*s));
        }
    }
}

/// Locks a mutex, recovering from poisoning (a panicked holder left only a map).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
