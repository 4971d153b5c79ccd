//! The agent side of the server: `AgentService.Connect`, one task per agent stream.
//!
//! The stream's reader dispatches every packet without waiting on any connection:
//! agent DATA goes into the connection's queue (see `konnectivity_tunnel::queue`),
//! DIAL_RSP completes a pending dial, CLOSE_RSP closes a connection. When the stream
//! ends, only the connections dialed over *this* stream are closed, and the dials still
//! pending on it are answered at once instead of being left to time out.
use std::sync::Arc;

use konnectivity_config::identifiers::AgentIdentifiers;
use konnectivity_core::dial::DialError;
use konnectivity_core::packet::{self, Kind};
use konnectivity_core::protocol::Protocol;
use konnectivity_core::select::{Cidr, Identity};
use konnectivity_core::wire::{self, metadata};
use konnectivity_core::{Packet, PacketType};
use konnectivity_tunnel::credit::Credit;
use konnectivity_tunnel::grpc::{PacketBody, PacketReader};
use konnectivity_tunnel::outbound;
use konnectivity_tunnel::queue::{Abort, Budget, Overflow, Pressure, conn_queue};
use tokio::time::Instant;
use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing::{debug, info, warn};

use crate::metrics::{DialFailureReason, Gauge, Segment};
use crate::rpc::{Handled, HttpRequest, HttpResponse, StreamingRpc};
use crate::state::{Backend, ConnEntry, DialOutcome, Established, Shared};

/// The `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentEndpoint {
    shared: Arc<Shared>,
}

impl AgentEndpoint {
    /// Serves agents on behalf of `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn one_value(md: &MetadataMap, key: &str) -> Vec<String> {
    md.get_all(key)
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect()
}

/// Reads the agent's identity from the stream metadata (spec §1.3 preamble order).
fn identity(md: &MetadataMap) -> Result<Identity, Status> {
    let ids = one_value(md, metadata::AGENT_ID);
    if ids.len() != 1 {
        return Err(Status::unknown(format!(
            "expected one agent ID in the context, got {ids:?}"
        )));
    }
    let raw = one_value(md, metadata::AGENT_IDENTIFIERS);
    if raw.len() > 1 {
        return Err(Status::unknown(format!(
            "expected at most one set of agent identifiers in the context, got {raw:?}"
        )));
    }
    let parsed = match raw.first() {
        Some(r) => AgentIdentifiers::parse_server(r)
            .map_err(|e| Status::unknown(format!("fail to parse url encoded string: {e}")))?,
        None => AgentIdentifiers::default(),
    };
    let mut hosts = parsed.hosts.clone();
    hosts.extend(parsed.ipv4.iter().cloned());
    hosts.extend(parsed.ipv6.iter().cloned());
    Ok(Identity {
        agent_id: ids[0].clone(),
        hosts,
        cidrs: parsed.cidrs.iter().filter_map(|c| Cidr::parse(c)).collect(),
        default_route: parsed.default_route,
    })
}

/// `AgentService.Connect`, answered with a [`PacketBody`] (no generic codec in the data
/// path, see `konnectivity_tunnel::grpc`).
impl StreamingRpc for AgentEndpoint {
    const SERVICE: &'static str = "AgentService";
    const PATH: &'static str = konnectivity_proto::CONNECT_PATH;

    fn handle(&self, req: HttpRequest) -> Handled {
        Box::pin(connect(self.shared.clone(), req))
    }
}

/// Accepts one `AgentService.Connect` stream: identity, authentication, then the
/// response headers; the stream itself is read by [`serve_agent`].
async fn connect(s: Arc<Shared>, request: HttpRequest) -> Result<HttpResponse, Status> {
    let (parts, body) = request.into_parts();
    let conn_info = parts
        .extensions
        .get::<crate::listen::AgentConnInfo>()
        .cloned();
    let peer = conn_info.as_ref().map(|c| c.peer);
    let md = MetadataMap::from_headers(parts.headers);
    let ident = identity(&md).inspect_err(|e| {
        warn!(?peer, error = %e.message(), "rejected agent stream");
    })?;
    if let Some(auth) = &s.auth {
        let values = one_value(&md, metadata::AUTHORIZATION);
        if let Err(e) = auth.authenticate(&values).await {
            // Logged with the peer and the reason; never with the token.
            warn!(?peer, agent_id = %ident.agent_id, reason = %e, "rejected agent: authentication failed");
            return Err(Status::unknown(e));
        }
    }
    let peer_window = match s.settings.flow_window {
        Some(_) => md
            .get(metadata::FLOW_WINDOW)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|w| *w > 0),
        None => None,
    };
    if md
        .get(metadata::PROBE)
        .is_some_and(|v| v.as_bytes() == b"1")
    {
        // A check (`konnectivity doctor agent`): answered, never routed to.
        info!(agent_id = %ident.agent_id, ?peer, "agent check answered (not registered)");
        let (tx, out) = outbound::channel_with(None, None);
        tx.close();
        let mut md = response_metadata(&s, None);
        md.insert(metadata::PROBE, MetadataValue::from_static("1"));
        return Ok(grpc_response(out, md));
    }
    let metrics_shared = s.clone();
    let hook: outbound::Hook = std::sync::Arc::new(move |p: &Packet| {
        metrics_shared.metrics.packet(Segment::ToAgent, p);
        if let Some(konnectivity_proto::packet::Payload::Data(d)) = &p.payload {
            metrics_shared.metrics.bytes(true, d.data.len());
        }
    });
    let (tx, out) = outbound::channel_with(Some(hook), conn_info.map(|c| c.pacer));
    let stream_id = s.next_id();
    let backend = Arc::new(Backend::new(
        stream_id,
        ident.agent_id.clone(),
        tx,
        peer_window,
    ));
    info!(
        agent_id = %ident.agent_id, stream = stream_id, ?peer,
        flow_control = peer_window.is_some(), "agent connected"
    );
    s.table().add(backend.clone(), ident);
    s.refresh_backend_gauges();

    let inbound = PacketReader::new(body, s.settings.max_message);
    tokio::spawn(serve_agent(s.clone(), backend, inbound));

    Ok(grpc_response(out, response_metadata(&s, peer_window)))
}

/// The Connect response's metadata: server ID and count, and our window when both
/// sides do flow control.
fn response_metadata(s: &Shared, peer_window: Option<u32>) -> MetadataMap {
    let mut md = MetadataMap::new();
    if let Ok(v) = MetadataValue::try_from(s.settings.server_id.as_str()) {
        md.insert(metadata::SERVER_ID, v);
    }
    md.insert(
        metadata::SERVER_COUNT,
        MetadataValue::from(s.settings.server_count),
    );
    if let (Some(ours), Some(_)) = (s.settings.flow_window, peer_window) {
        md.insert(metadata::FLOW_WINDOW, MetadataValue::from(ours));
    }
    md
}

/// The Connect response: `md` as headers, the packets of `out` as the body.
fn grpc_response(out: outbound::Outbound, md: MetadataMap) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::new(PacketBody::response(out)));
    *response.headers_mut() = md.into_headers();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// Reads one agent stream until it ends, then cleans up after it.
async fn serve_agent(
    s: Arc<Shared>,
    backend: Arc<Backend>,
    mut inbound: PacketReader<tonic::body::Body>,
) {
    let _gauge = s.metrics.hold(Gauge::GrpcConnect);
    loop {
        let next = tokio::select! {
            m = inbound.message() => m,
            _ = backend.tx.closed() => break,
        };
        match next {
            Ok(Some(p)) => {
                if let Some(pressure) = dispatch(&s, &backend, p) {
                    // A connection (or the process) is over its budget and the agent
                    // has no flow control: stop reading this stream until it drains,
                    // so the agent waits in HTTP/2 flow control instead of memory
                    // growing. A stalled consumer is cut by the budget's sweeper.
                    tokio::select! {
                        _ = pressure.eased() => {}
                        _ = backend.tx.closed() => break,
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                debug!(agent_id = %backend.agent_id, stream = backend.stream_id, error = %e, "agent stream ended with error");
                s.metrics.stream_error(Segment::FromAgent, e.code_name());
                break;
            }
        }
    }
    info!(agent_id = %backend.agent_id, stream = backend.stream_id, "agent disconnected");
    backend.tx.close();
    s.table().remove(backend.stream_id);
    s.refresh_backend_gauges();
    let conns: Vec<_> = backend.conns().drain().collect();
    for (_, entry) in conns {
        s.metrics
            .connection_closed(entry.since.elapsed(), "agent_disconnected");
        entry.queue.close(wire::AGENT_GONE.to_owned());
    }
    let gone: Vec<_> = {
        let mut pending = s.pending();
        let ids: Vec<i64> = pending
            .iter()
            .filter(|(_, p)| p.backend.stream_id == backend.stream_id)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| pending.remove(&id))
            .collect()
    };
    for p in gone {
        s.metrics.dial_failed(&DialError::AgentDisconnected);
        let _ = p.resolve(DialOutcome::Failed(DialError::AgentDisconnected));
    }
    s.metrics.set_pending(s.pending().len());
}

/// Handles one packet from an agent. Never waits; returns the [`Pressure`] to wait on
/// before reading the stream again when a queue went over its budget.
fn dispatch(s: &Shared, b: &Arc<Backend>, p: Packet) -> Option<Pressure> {
    s.metrics.packet(Segment::FromAgent, &p);
    match packet::kind(&p) {
        Kind::Known(PacketType::DialRsp) => dial_response(s, b, &p),
        Kind::Known(PacketType::DialCls) => {
            let random = packet::close_dial(&p).random;
            let taken = {
                let mut pending = s.pending();
                match pending.get(&random) {
                    Some(pd) if pd.backend.stream_id == b.stream_id => pending.remove(&random),
                    _ => None,
                }
            };
            match taken {
                Some(pd) => {
                    s.metrics.dial_failed(&DialError::AgentClosed);
                    let _ = pd.resolve(DialOutcome::Failed(DialError::AgentClosed));
                }
                None => debug!(random, "DIAL_CLS for an unknown dial"),
            }
        }
        Kind::Known(PacketType::Data) => {
            let d = packet::into_data(p);
            if d.connect_id == 0 {
                return None;
            }
            b.bytes_from_agent
                .fetch_add(d.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            s.metrics.bytes(false, d.data.len());
            let mut conns = b.conns();
            match conns.get_mut(&d.connect_id) {
                Some(entry) => match entry.push_from_agent(d.data) {
                    Ok(pressure) => return pressure,
                    Err(Overflow) => {
                        let since = entry.since;
                        conns.remove(&d.connect_id);
                        drop(conns);
                        s.metrics
                            .connection_closed(since.elapsed(), Abort::Overflow.label());
                        s.metrics.buffer_overflow();
                        warn!(agent_id = %b.agent_id, connect_id = d.connect_id, "closing connection: the agent sent more than the connection's flow-control window");
                        let _ = b.tx.control(packet::close_req(d.connect_id));
                    }
                },
                None => {
                    drop(conns);
                    let _ = b.tx.control(packet::close_req(d.connect_id));
                }
            }
        }
        Kind::Known(PacketType::CloseRsp) => {
            let c = packet::close_response(&p);
            let entry = b.conns().remove(&c.connect_id);
            if let Some(e) = entry {
                s.metrics
                    .connection_closed(e.since.elapsed(), "agent_closed");
                e.queue.close(c.error.clone());
            }
        }
        Kind::Known(PacketType::Drain) => {
            info!(agent_id = %b.agent_id, stream = b.stream_id, "agent is draining");
            b.set_draining();
        }
        Kind::Known(PacketType::WindowUpdate) => {
            let w = packet::window_update_of(&p);
            if let Some(c) = b.conns().get(&w.connect_id).and_then(|e| e.credit.clone()) {
                c.grant(w.bytes);
            }
        }
        _ => {
            debug!(agent_id = %b.agent_id, kind = packet::type_name(&p), "ignoring packet from agent")
        }
    }
    None
}

fn dial_response(s: &Shared, b: &Arc<Backend>, p: &Packet) {
    let r = packet::dial_response(p);
    let taken = {
        let mut pending = s.pending();
        let t = match pending.get(&r.random) {
            Some(pd) if pd.backend.stream_id == b.stream_id => pending.remove(&r.random),
            _ => None,
        };
        s.metrics.set_pending(pending.len());
        t
    };
    let Some(pd) = taken else {
        s.metrics
            .dial_failure(DialFailureReason::UnrecognizedResponse);
        if r.connect_id != 0 {
            let _ = b.tx.control(packet::close_req(r.connect_id));
        }
        return;
    };
    if !r.error.is_empty() {
        let e = DialError::Agent(r.error.clone());
        s.metrics.dial_failed(&e);
        let _ = pd.resolve(DialOutcome::Failed(e));
        return;
    }
    let budget = match (s.settings.flow_window, b.peer_window) {
        (Some(window), Some(_)) => Budget::Flow {
            window,
            max_packet: s.settings.max_message,
        },
        _ => Budget::UNMANAGED,
    };
    let (queue, mut rx) = conn_queue(r.connect_id, budget, b.tx.clone(), s.budget.clone());
    if pd.protocol == Protocol::Udp {
        rx.keep_datagrams();
    }
    let credit = b.peer_window.map(|w| Arc::new(Credit::new(w)));
    {
        let mut conns = b.conns();
        let max = s.settings.max_conns_per_agent;
        if max > 0 && conns.len() >= max {
            drop(conns);
            s.metrics.limit_hit("max-connections-per-agent");
            warn!(agent_id = %b.agent_id, max, "refusing a connection: --max-connections-per-agent reached");
            let _ = b.tx.control(packet::close_req(r.connect_id));
            let _ = pd.resolve(DialOutcome::Failed(DialError::Limit(format!(
                "too many connections through agent {} (--max-connections-per-agent={max})",
                b.agent_id
            ))));
            return;
        }
        if conns.contains_key(&r.connect_id) {
            drop(conns);
            warn!(agent_id = %b.agent_id, connect_id = r.connect_id, "agent reused a connect ID that is still open");
            let e = DialError::ConnectIdReused(r.connect_id);
            s.metrics.dial_failed(&e);
            let _ = pd.resolve(DialOutcome::Failed(e));
            return;
        }
        conns.insert(
            r.connect_id,
            ConnEntry {
                queue,
                credit: credit.clone(),
                since: Instant::now(),
                destination: pd.address.clone(),
                frontend: pd.frontend,
                protocol: pd.protocol,
                bytes_from_agent: 0,
            },
        );
    }
    let outcome = DialOutcome::Connected(Established {
        connect_id: r.connect_id,
        rx,
        credit,
    });
    let elapsed = pd.started.elapsed();
    s.metrics.dial_succeeded(elapsed);
    if !pd.resolve(outcome) {
        s.metrics.dial_failure(DialFailureReason::SendRsp);
        b.conns().remove(&r.connect_id);
        let _ = b.tx.control(packet::close_req(r.connect_id));
    }
    debug!(agent_id = %b.agent_id, connect_id = r.connect_id, ?elapsed, "dial established");
}

/// Sends a DIAL_REQ to `b`, honouring `--backend-dial-timeout` for the send itself: a
/// backend that cannot take it in time is retired (marked draining, its stream ended).
pub(crate) async fn send_dial(s: &Shared, b: &Backend, p: Packet) -> Result<(), DialError> {
    let send = b.tx.send(p);
    let failed = |e: outbound::StreamClosed| DialError::SendFailed(e.to_string());
    match s.settings.backend_dial_timeout {
        None => send.await.map_err(failed),
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r.map_err(failed),
            Err(_) => {
                warn!(agent_id = %b.agent_id, stream = b.stream_id, "retiring backend: DIAL_REQ not accepted within --backend-dial-timeout");
                b.set_draining();
                b.tx.close();
                Err(DialError::BackendDialTimeout)
            }
        },
    }
}
