//! proxy-agent: the node end of the Konnectivity tunnel.
//!
//! The agent dials *out* to proxy-server (nodes can reach the control plane; the
//! reverse is what we tunnel), keeps one stream per server, and opens TCP connections
//! on the node on the server's behalf.
//!
//! - [`stream`]: opening one stream and serving it (dispatch, per-connection tasks);
//! - [`backoff`]: when the sync loop tries again, and why that cannot become a storm;
//! - [`probe`]: the TCP connect that keeps probing a server that does not answer;
//! - [`dialer`]: destination dials with Go's error texts;
//! - [`metrics`]: the agent's Prometheus metrics;
//! - [`options`]: proxy-agent's flags turned into [`Settings`] (the binary and `doctor agent`);
//! - this module: the connection sync loop (spec §6.3), readiness, drain.
#![deny(missing_docs)]

pub mod backoff;
pub mod dialer;
pub mod metrics;
pub mod options;
pub mod probe;
pub mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use konnectivity_core::packet;
use konnectivity_runtime::endpoints::{self, Reply, Router};
use konnectivity_tls::ClientConfig;
use konnectivity_tunnel::budget::MemoryBudget;
use konnectivity_tunnel::outbound::StreamTx;
use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use stream::Hello;

use crate::backoff::{Backoff, Failure};

use crate::metrics::Metrics;

/// Runtime settings of the agent (already validated).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Server hosts (`--proxy-server-host`, a comma list is our extension).
    pub hosts: Vec<String>,
    /// `--proxy-server-port`.
    pub port: u16,
    /// TLS toward the servers.
    pub tls: Arc<ClientConfig>,
    /// What the agent announces.
    pub hello: Hello,
    /// `--sync-interval`.
    pub sync_interval: Duration,
    /// `--sync-interval-cap`.
    pub sync_interval_cap: Duration,
    /// `--sync-forever`.
    pub sync_forever: bool,
    /// `--keepalive-time`.
    pub keepalive: Duration,
    /// Largest DATA payload read from a destination.
    pub max_chunk: usize,
    /// Lease-based server counting (`--count-server-leases`), if enabled.
    pub leases: Option<LeaseCounting>,
    /// After DRAIN, how long the agent keeps serving before it exits.
    pub drain_timeout: Duration,
    /// Destinations this agent may dial.
    pub policy: konnectivity_core::policy::DestinationPolicy,
    /// How UDP connections are served (`--udp-idle-timeout`, `--max-udp-sockets`).
    pub udp: stream::udp::UdpSettings,
}

/// `--count-server-leases` with `--server-count-source`.
#[derive(Debug, Clone)]
pub struct LeaseCounting {
    /// Counts valid server leases.
    pub counter: konnectivity_k8s::lease::LeaseCounter,
    /// `max`: the larger of the lease count and the servers' `servercount`; otherwise
    /// the lease count alone.
    pub use_max: bool,
}

/// How often the agent re-counts server leases (upstream's informer resync).
pub const LEASE_RECOUNT: Duration = Duration::from_secs(10);

/// The agent's live state.
#[derive(Debug)]
pub struct Agent {
    settings: Settings,
    /// Metric values.
    pub metrics: Arc<Metrics>,
    /// Connected servers by server ID: (our serial for the stream, its sender).
    servers: Mutex<HashMap<String, (u64, StreamTx)>>,
    /// Which server each dialed address led to last time.
    addr_owner: Mutex<HashMap<SocketAddr, String>>,
    serial: AtomicU64,
    /// Last `servercount` seen on a new, non-duplicate stream (0: none yet).
    last_count: AtomicU64,
    /// Valid server leases at the last count (0: none, or never counted).
    lease_count: AtomicU64,
    draining: AtomicBool,
    /// The `agentidentifiers` new streams announce: `--agent-identifiers`, plus the
    /// Node's pod CIDRs with `--node-name` ([`Agent::announce_pod_cidrs`]).
    identifiers: Mutex<String>,
    /// The process-wide budget of bytes queued for destinations (`--max-buffered-bytes`).
    pub budget: Arc<MemoryBudget>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl stream::OpenError {
    /// Which schedule the sync loop follows after this failure: only a TCP connect
    /// that nothing answered is [`Failure::Unanswered`].
    pub fn failure(&self) -> Failure {
        match self {
            stream::OpenError::Tcp { source, .. } => source.failure(),
            _ => Failure::Answered,
        }
    }
}

impl Agent {
    /// A new agent with the default buffer budget and stall timeout.
    pub fn new(settings: Settings) -> Arc<Self> {
        Self::with_budget(settings, MemoryBudget::default_budget())
    }

    /// A new agent whose connection queues count against `budget`.
    pub fn with_budget(settings: Settings, budget: Arc<MemoryBudget>) -> Arc<Self> {
        let settings_identifiers = settings.hello.identifiers.clone();
        Arc::new(Self {
            metrics: Arc::new(Metrics::new(&budget)),
            budget,
            settings,
            servers: Mutex::new(HashMap::new()),
            addr_owner: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(0),
            last_count: AtomicU64::new(0),
            lease_count: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            identifiers: Mutex::new(settings_identifiers),
        })
    }

    /// Number of connected servers.
    pub fn connected(&self) -> usize {
        lock(&self.servers).len()
    }

    /// How many servers the agent tries to be connected to (spec §6.2).
    pub fn server_count(&self) -> usize {
        let response = (self.last_count.load(Ordering::Acquire) as usize).max(1);
        let n = match &self.settings.leases {
            None => response,
            Some(l) => {
                let leases = self.lease_count.load(Ordering::Acquire) as usize;
                if l.use_max {
                    leases.max(response)
                } else {
                    leases
                }
            }
        };
        n.max(1)
    }

    /// Re-counts server leases every [`LEASE_RECOUNT`] until `stop`; a failed count
    /// keeps the last good value.
    pub async fn count_leases(self: Arc<Self>, stop: CancellationToken) {
        let Some(l) = self.settings.leases.clone() else {
            return;
        };
        loop {
            let started = std::time::Instant::now();
            let (counted, status) = l.counter.count_with_status().await;
            self.metrics.lease_list(status, started.elapsed());
            match counted {
                Ok(n) => self.lease_count.store(n as u64, Ordering::Release),
                Err(e) => {
                    warn!(error = %e, "counting server leases failed; keeping the last count")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(LEASE_RECOUNT) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// The identifiers new streams announce.
    pub fn identifiers(&self) -> String {
        lock(&self.identifiers).clone()
    }

    /// Announces `cidrs` (the Node's pod CIDRs, `--node-name`) as `cidr=` identifiers
    /// after `--agent-identifiers`. Identifiers travel only when a stream opens, so when
    /// they change every open stream is closed and the sync loop reconnects with the
    /// new ones (connections open at that moment end; a Node's pod CIDRs change only
    /// when it is first allocated or re-registered). Returns whether they changed.
    pub fn announce_pod_cidrs(&self, cidrs: &[String]) -> bool {
        let mut ids = self.settings.hello.identifiers.clone();
        for c in cidrs {
            if !ids.is_empty() {
                ids.push('&');
            }
            ids.push_str("cidr=");
            ids.push_str(c);
        }
        {
            let mut current = lock(&self.identifiers);
            if *current == ids {
                return false;
            }
            info!(pod_cidrs = ?cidrs, identifiers = %ids, "the Node's pod CIDRs changed; announcing them");
            *current = ids;
        }
        self.close_all();
        true
    }

    /// Sends DRAIN on every stream and stops making new connections.
    pub fn drain(&self) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        info!("draining: telling every server to prefer other agents");
        for (_, tx) in lock(&self.servers).values() {
            let _ = tx.control(packet::drain());
        }
    }

    /// Resolves every configured host to all of its addresses, in a stable order.
    async fn targets(&self) -> Vec<(String, SocketAddr)> {
        let mut out = Vec::new();
        for host in &self.settings.hosts {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            match tokio::net::lookup_host((h, self.settings.port)).await {
                Ok(addrs) => {
                    let mut addrs: Vec<_> = addrs.collect();
                    addrs.sort();
                    addrs.dedup();
                    out.extend(addrs.into_iter().map(|a| (h.to_owned(), a)));
                }
                Err(e) => warn!(host = %h, error = %e, "cannot resolve proxy-server host"),
            }
        }
        out
    }

    /// One attempt to add a server connection through `addr`. Returns how it failed,
    /// if it did (a duplicate server is not a failure).
    async fn sync_once(self: &Arc<Self>, host: &str, addr: SocketAddr) -> Option<Failure> {
        let s = &self.settings;
        let hello = Hello {
            identifiers: self.identifiers(),
            ..s.hello.clone()
        };
        match stream::open(
            host,
            addr,
            s.tls.clone(),
            &hello,
            s.keepalive,
            Some(self.metrics.clone()),
        )
        .await
        {
            Ok(st) => {
                let id = st.server_id.clone();
                let serial = self.serial.fetch_add(1, Ordering::Relaxed);
                {
                    let mut servers = lock(&self.servers);
                    if servers.contains_key(&id) {
                        drop(servers);
                        st.tx.close();
                        tracing::debug!(server_id = %id, %addr, "duplicate server: {id}");
                        // Remember which server this address led to, so the next round
                        // tries another address first.
                        lock(&self.addr_owner).insert(addr, id);
                        return None;
                    }
                    // The identifiers changed while this stream was opening (after
                    // `announce_pod_cidrs` closed the registered ones): it announced
                    // the old ones, so it must not serve. Checked under the servers
                    // lock, which `close_all` takes after the identifiers are stored,
                    // so a stream is either closed there or caught here.
                    if *lock(&self.identifiers) != hello.identifiers {
                        drop(servers);
                        st.tx.close();
                        info!(server_id = %id, %addr, "identifiers changed while connecting; reconnecting with the new ones");
                        return None;
                    }
                    servers.insert(id.clone(), (serial, st.tx.clone()));
                    self.metrics
                        .open_server_connections
                        .store(servers.len() as i64, Ordering::Relaxed);
                }
                lock(&self.addr_owner).insert(addr, id.clone());
                self.last_count
                    .store(u64::from(st.server_count), Ordering::Release);
                info!(server_id = %id, host, %addr, server_count = st.server_count, flow_control = st.peer_window.is_some(), "connected to proxy-server");
                if self.draining.load(Ordering::Acquire) {
                    let _ = st.tx.control(packet::drain());
                }
                let agent = self.clone();
                tokio::spawn(async move {
                    stream::serve(
                        st,
                        agent.settings.hello.flow_window,
                        agent.settings.max_chunk,
                        agent.settings.policy.clone(),
                        agent.metrics.clone(),
                        agent.budget.clone(),
                        agent.settings.udp,
                    )
                    .await;
                    let mut servers = lock(&agent.servers);
                    if servers.get(&id).is_some_and(|(s, _)| *s == serial) {
                        servers.remove(&id);
                        info!(server_id = %id, "disconnected from proxy-server");
                    }
                    agent
                        .metrics
                        .open_server_connections
                        .store(servers.len() as i64, Ordering::Relaxed);
                });
                None
            }
            Err(e) => {
                warn!(host, %addr, error = %e, "cannot connect to proxy-server");
                Some(e.failure())
            }
        }
    }

    /// Picks the next address to dial: addresses whose last known server is not
    /// connected (or unknown) first, round-robin; otherwise any, round-robin (a load
    /// balancer may send the next attempt to another server).
    fn pick(
        &self,
        targets: &[(String, SocketAddr)],
        next: &mut usize,
    ) -> Option<(String, SocketAddr)> {
        if targets.is_empty() {
            return None;
        }
        let servers = lock(&self.servers);
        let owners = lock(&self.addr_owner);
        for i in 0..targets.len() {
            let t = &targets[(*next + i) % targets.len()];
            let live = owners.get(&t.1).is_some_and(|id| servers.contains_key(id));
            if !live {
                *next = (*next + i + 1) % targets.len();
                return Some(t.clone());
            }
        }
        let t = targets[*next % targets.len()].clone();
        *next = (*next + 1) % targets.len();
        Some(t)
    }

    /// The connection sync loop (spec §6.3), until `stop`. Unlike upstream it resolves
    /// every address of every `--proxy-server-host` and dials them directly, so it
    /// reaches every server without relying on a load balancer to spread attempts.
    pub async fn sync_loop(self: Arc<Self>, stop: CancellationToken) {
        tokio::spawn(self.budget.clone().run_sweeper(stop.clone()));
        let s = &self.settings;
        let mut backoff = Backoff::new(s.sync_interval, s.sync_interval_cap);
        let mut next = 0usize;
        // Bounded in time by `stop`; every round sleeps (see `backoff` for why no
        // failure makes it spin).
        loop {
            let mut failed = None;
            if !self.draining.load(Ordering::Acquire) {
                let want = self.server_count();
                self.metrics
                    .known_server_count
                    .store(want as i64, Ordering::Relaxed);
                if s.sync_forever || self.connected() < want {
                    let targets = self.targets().await;
                    match self.pick(&targets, &mut next) {
                        Some((host, addr)) => failed = self.sync_once(&host, addr).await,
                        // Nothing resolved: the resolver answered, so back off.
                        None => failed = Some(Failure::Answered),
                    }
                }
            }
            let r: f64 = rand::rng().random();
            let delay = match failed {
                Some(kind) => backoff.failure(kind, r),
                None => backoff.success(r),
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Closes every stream.
    pub fn close_all(&self) {
        for (_, tx) in lock(&self.servers).values() {
            tx.close();
        }
    }
}

/// The health port's routes (spec §8.2).
pub fn health_router(a: Arc<Agent>) -> Router {
    Arc::new(move |path, query, _host| match path {
        "/healthz" => Reply::text(200, "ok"),
        "/readyz" | "/ready" => {
            let verbose = query
                .split('&')
                .any(|kv| kv == "verbose" || kv.starts_with("verbose="));
            let (connected, want) = (a.connected(), a.server_count());
            if connected > 0 {
                if verbose {
                    let count = if connected < want {
                        format!(
                            "[+]server-count degraded: connected to {connected} of {want} servers\n"
                        )
                    } else {
                        String::new()
                    };
                    Reply::text(
                        200,
                        format!("[+]ping ok\n[+]server-connected ok\n{count}check passed\n"),
                    )
                } else {
                    Reply::text(200, "ok")
                }
            } else {
                Reply::text(
                    503,
                    "[+]ping ok\n[-]server-connected failed: no servers connected\n",
                )
            }
        }
        "/metrics" => {
            a.metrics.set_scrape_state(a.connected(), a.server_count());
            Reply::metrics(a.metrics.render())
        }
        _ => Reply::not_found(),
    })
}

/// The admin port's routes: `/metrics` redirects to the health port, as upstream.
pub fn admin_router(health_port: u16) -> Router {
    Arc::new(move |path, _query, host| match path {
        "/metrics" => {
            let h = match host.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => host,
            };
            let mut r = Reply::text(301, "");
            r.headers
                .push(("Location", format!("//{h}:{health_port}{path}")));
            r
        }
        _ => Reply::not_found(),
    })
}

/// Runs the agent: the sync loop and the endpoints. The first cancellation of `drain`
/// sends DRAIN; `stop` ends everything.
pub async fn run(
    agent: Arc<Agent>,
    health: Option<TcpListener>,
    admin: Option<TcpListener>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    if let Some(h) = health {
        let port = h.local_addr().map(|a| a.port()).unwrap_or_default();
        tokio::spawn(endpoints::serve(
            h,
            health_router(agent.clone()),
            stop.clone(),
        ));
        if let Some(a) = admin {
            tokio::spawn(endpoints::serve(a, admin_router(port), stop.clone()));
        }
    }
    if agent.settings.leases.is_some() {
        tokio::spawn(agent.clone().count_leases(stop.clone()));
    }
    let sync = tokio::spawn(agent.clone().sync_loop(stop.clone()));
    tokio::select! {
        _ = drain.cancelled() => {
            agent.drain();
            // Like upstream, a draining agent keeps serving — its established
            // connections, and new dials when it is the only candidate — until a second
            // signal (which exits the process) or the drain bound.
            tokio::select! {
                _ = tokio::time::sleep(agent.settings.drain_timeout) => {
                    info!(open_connections = agent.metrics.open_endpoint_connections.load(Ordering::Relaxed), "drain timeout passed; exiting");
                }
                _ = stop.cancelled() => {}
            }
            stop.cancel();
        }
        _ = stop.cancelled() => {}
    }
    agent.close_all();
    let _ = sync.await;
    // A connection attempt that was under way when `stop` came may have added a stream
    // after the first pass.
    agent.close_all();
}
