//! One agent↔server stream (`AgentService.Connect`): opening it, and serving it.
//!
//! The reader dispatches each packet without waiting on any connection: DIAL_REQ starts
//! a dial task, DATA goes to the connection's queue, CLOSE_REQ closes it. Each
//! connection is one task that dials, answers DIAL_RSP, splices the destination socket
//! and finally answers CLOSE_RSP — all through the same ordered queue, so a DIAL_RSP
//! always precedes the connection's DATA, and its DATA precedes its CLOSE_RSP. A UDP
//! connection (`udp`) is the same with a datagram socket in place of the splice.
pub mod udp;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use konnectivity_core::address::DialFailure;
use konnectivity_core::packet::{self, Kind};
use konnectivity_core::protocol::{Protocol, SERVED, TCP_AND_UDP};
use konnectivity_core::wire::{self, metadata};
use konnectivity_core::{Packet, PacketType};
use konnectivity_tls::{ClientConfig, ServerName, TlsConnector};
use konnectivity_tunnel::budget::MemoryBudget;
use konnectivity_tunnel::credit::Credit;
use konnectivity_tunnel::grpc::{PacketBody, PacketReader, status_of};
use konnectivity_tunnel::outbound::{self, Pacer, StreamTx};
use konnectivity_tunnel::paced::{self, PacedIo};
use konnectivity_tunnel::queue::{
    Abort, Budget, ConnQueue, ConnReceiver, Overflow, Pressure, conn_queue,
};
use konnectivity_tunnel::splice::{SpliceEnd, splice};
use tonic::metadata::MetadataValue;
use tracing::{debug, info, warn};

use crate::dialer;
use crate::metrics::{Metrics, Segment};

/// Why opening a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No TCP connection to the server (see `crate::probe`).
    #[error("connecting to {target}: {source}")]
    Tcp {
        /// host:port.
        target: String,
        /// Unanswered, or the error the server's host answered with.
        source: crate::probe::ConnectError,
    },
    /// TLS to the server failed.
    #[error("connecting to {target}: {source}")]
    Connect {
        /// host:port.
        target: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The gRPC layer failed.
    #[error("opening the Connect stream to {target}: {reason}")]
    Grpc {
        /// host:port.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// The server's response headers were not as required.
    #[error("{0}")]
    Headers(String),
}

/// What the agent sends when it opens a stream.
#[derive(Debug, Clone)]
pub struct Hello {
    /// `agentid`.
    pub agent_id: String,
    /// `agentidentifiers` (raw URL query).
    pub identifiers: String,
    /// Token file for `authorization: Bearer …`, read fresh on every attempt.
    pub token_path: Option<std::path::PathBuf>,
    /// Our per-connection receive window (announces flow control), if enabled.
    pub flow_window: Option<u32>,
    /// A check only ([`metadata::PROBE`]): the server is asked not to route to it.
    pub probe: bool,
}

/// An open stream to one server.
#[derive(Debug)]
pub struct ServerStream {
    /// The server's `serverid`.
    pub server_id: String,
    /// The server's `servercount`.
    pub server_count: u32,
    /// The server's window when both sides do flow control.
    pub peer_window: Option<u32>,
    /// The server honoured [`Hello::probe`]: the stream is not in its routing table.
    pub probe_honoured: bool,
    /// Sends to the server.
    pub tx: StreamTx,
    inbound: PacketReader<hyper::body::Incoming>,
}

/// Connects to `host:port` with TLS and opens the Connect stream.
/// `addr` is where to connect (one resolved address of `host`); `host` is the name
/// the server certificate must carry.
pub async fn open(
    host: &str,
    addr: std::net::SocketAddr,
    tls: Arc<ClientConfig>,
    hello: &Hello,
    keepalive: Duration,
    metrics: Option<Arc<Metrics>>,
) -> Result<ServerStream, OpenError> {
    let target = addr.to_string();
    let err = |source: io::Error| OpenError::Connect {
        target: target.clone(),
        source,
    };
    let tcp = crate::probe::connect(addr)
        .await
        .map_err(|source| OpenError::Tcp {
            target: target.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let _ = paced::set_notsent_lowat(&tcp, paced::NOTSENT_LOWAT);
    let name = ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())))?;
    let tls_stream = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| {
        err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        ))
    })?
    .map_err(err)?;

    // One TCP connection per stream, as upstream. HTTP/2 directly (hyper), so that
    // the stream's bodies are ours: no codec copies DATA payloads (see
    // `konnectivity_tunnel::grpc`).
    let pacer = Pacer::new(paced::PACER_LIMIT);
    let io = TokioIo::new(PacedIo::new(tls_stream, pacer.clone()));
    let grpc_err = |reason: String| OpenError::Grpc {
        target: target.clone(),
        reason,
    };
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .max_frame_size(256 * 1024)
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive.min(Duration::from_secs(20)))
        .keep_alive_while_idle(true)
        .handshake::<_, PacketBody>(io)
        .await
        .map_err(|e| grpc_err(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "connection to server ended");
        }
    });

    // Counts every packet as it goes to the wire (`stream_packets_total{from_agent}`).
    let hook = metrics
        .map(|m| -> outbound::Hook { Arc::new(move |p: &Packet| m.packet(Segment::FromAgent, p)) });
    let (tx, out) = outbound::channel_with(hook, Some(pacer));
    let mut md = tonic::metadata::MetadataMap::new();
    add_hello(&mut md, hello).map_err(&grpc_err)?;
    let mut req = http::Request::new(PacketBody::request(out));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("http://{target}{}", konnectivity_proto::CONNECT_PATH)
        .parse()
        .map_err(|e: http::uri::InvalidUri| grpc_err(e.to_string()))?;
    let headers = req.headers_mut();
    *headers = md.into_headers();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!(
            "konnectivity-rs-agent/",
            env!("CARGO_PKG_VERSION")
        )),
    );
    let rsp = send
        .send_request(req)
        .await
        .map_err(|e| grpc_err(e.to_string()))?;
    drop(send);
    let (parts, body) = rsp.into_parts();
    if let Some((code, message)) = status_of(&parts.headers)
        && code != 0
    {
        return Err(grpc_err(message));
    }
    if parts.status != http::StatusCode::OK {
        return Err(grpc_err(format!("unexpected HTTP status {}", parts.status)));
    }
    let md = tonic::metadata::MetadataMap::from_headers(parts.headers);
    let all = |key| -> Vec<String> {
        md.get_all(key)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect()
    };
    let ids = all(metadata::SERVER_ID);
    if ids.len() != 1 {
        return Err(OpenError::Headers(format!(
            "expected one server ID in the context, got {ids:?}"
        )));
    }
    let counts = all(metadata::SERVER_COUNT);
    if counts.len() != 1 {
        return Err(OpenError::Headers(format!(
            "expected one server count, got {}",
            counts.len()
        )));
    }
    let server_count: u32 = counts[0]
        .parse()
        .map_err(|e| OpenError::Headers(format!("strconv.Atoi: parsing {:?}: {e}", counts[0])))?;
    let peer_window = match hello.flow_window {
        Some(_) => md
            .get(metadata::FLOW_WINDOW)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .filter(|w| *w > 0),
        None => None,
    };
    let probe_honoured = hello.probe
        && md
            .get(metadata::PROBE)
            .is_some_and(|v| v.as_bytes() == b"1");
    Ok(ServerStream {
        server_id: ids[0].clone(),
        server_count,
        peer_window,
        probe_honoured,
        tx,
        inbound: PacketReader::new(body, 4 << 20),
    })
}

/// Puts the agent's metadata on the Connect request.
fn add_hello(md: &mut tonic::metadata::MetadataMap, hello: &Hello) -> Result<(), String> {
    fn val(s: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
        MetadataValue::try_from(s).map_err(|e| format!("invalid metadata value: {e}"))
    }
    md.insert(metadata::AGENT_ID, val(&hello.agent_id)?);
    md.insert(metadata::AGENT_IDENTIFIERS, val(&hello.identifiers)?);
    if let Some(path) = &hello.token_path {
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the service account token {}: {e}", path.display()))?;
        md.insert(metadata::AUTHORIZATION, val(&format!("Bearer {token}"))?);
    }
    if let Some(w) = hello.flow_window {
        md.insert(metadata::FLOW_WINDOW, MetadataValue::from(w));
    }
    if hello.probe {
        md.insert(metadata::PROBE, MetadataValue::from_static("1"));
    }
    Ok(())
}

/// One connection being served.
#[derive(Debug)]
struct Conn {
    /// Server DATA for the destination (never blocks the reader).
    queue: ConnQueue,
    /// Credit for destination → server DATA.
    credit: Option<Arc<Credit>>,
}

/// Per-stream state shared by the reader and the connection tasks.
#[derive(Debug)]
struct StreamState {
    tx: StreamTx,
    conns: Mutex<HashMap<i64, Conn>>,
    /// Connect IDs are assigned here, per stream, first value 1.
    next_id: AtomicI64,
    our_window: Option<u32>,
    peer_window: Option<u32>,
    max_chunk: usize,
    policy: konnectivity_core::policy::DestinationPolicy,
    metrics: Arc<Metrics>,
    server_id: String,
    budget: Arc<MemoryBudget>,
    /// `--udp-idle-timeout` and `--max-udp-sockets` (the count is in `metrics`, agent-wide).
    udp: udp::UdpSettings,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StreamState {
    fn flow(&self) -> bool {
        self.our_window.is_some() && self.peer_window.is_some()
    }

    /// The protocols this agent dials: `udp` too unless `--max-udp-sockets=0`.
    fn served(&self) -> &'static [Protocol] {
        if self.udp.max_sockets > 0 {
            TCP_AND_UDP
        } else {
            SERVED
        }
    }
}

/// Serves a stream until the server ends it (or `tx` is closed locally).
pub async fn serve(
    stream: ServerStream,
    our_window: Option<u32>,
    max_chunk: usize,
    policy: konnectivity_core::policy::DestinationPolicy,
    metrics: Arc<Metrics>,
    budget: Arc<MemoryBudget>,
    udp: udp::UdpSettings,
) {
    let ServerStream {
        server_id,
        peer_window,
        tx,
        mut inbound,
        ..
    } = stream;
    let st = Arc::new(StreamState {
        tx: tx.clone(),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicI64::new(0),
        our_window,
        peer_window,
        max_chunk,
        policy,
        metrics,
        server_id,
        budget,
        udp,
    });
    loop {
        let next = tokio::select! {
            m = inbound.message() => m,
            _ = tx.closed() => break,
        };
        match next {
            Ok(Some(p)) => {
                st.metrics.packet(Segment::ToAgent, &p);
                if let Some(pressure) = dispatch(&st, p) {
                    // A destination (or the process) is over its budget and the server
                    // has no flow control: stop reading until it drains; a stalled
                    // destination is cut by the budget's sweeper.
                    tokio::select! {
                        _ = pressure.eased() => {}
                        _ = tx.closed() => break,
                    }
                }
            }
            Err(e) if tx.is_closed() => {
                // We were closing it ourselves (shutdown, or the server was retired).
                debug!(server_id = %st.server_id, error = %e, "stream to server ended while closing");
                break;
            }
            Err(e) => {
                warn!(server_id = %st.server_id, error = %e, "stream to server failed");
                st.metrics
                    .stream_error(Segment::ToAgent, e.code_name(), "Unknown");
                break;
            }
            Ok(None) => {
                info!(server_id = %st.server_id, "server closed the stream");
                break;
            }
        }
    }
    tx.close();
    let conns: Vec<_> = lock(&st.conns).drain().collect();
    for (_, c) in conns {
        c.queue.abort(Abort::StreamLost);
    }
}

/// Handles one packet from the server without waiting; returns the [`Pressure`] to
/// wait on before reading on when a queue went over its budget.
fn dispatch(st: &Arc<StreamState>, p: Packet) -> Option<Pressure> {
    match packet::kind(&p) {
        Kind::Known(PacketType::DialReq) => {
            let req = packet::dial_request(&p).into_owned();
            match Protocol::parse_in(&req.protocol, st.served()) {
                Ok(Protocol::Tcp) => {
                    let id = st.next_id.fetch_add(1, Ordering::AcqRel) + 1;
                    tokio::spawn(serve_conn(st.clone(), id, req.random, req.address));
                }
                Ok(Protocol::Udp) => {
                    let id = st.next_id.fetch_add(1, Ordering::AcqRel) + 1;
                    tokio::spawn(udp::serve_conn(st.clone(), id, req.random, req.address));
                }
                Err(refused) => {
                    // Upstream hands the string to Go's dialer ("unix" reaches a
                    // UNIX socket on the node); we dial only what we serve.
                    warn!(address = %req.address, error = %refused, "refused a dial request");
                    st.metrics.dial_failure(DialFailure::ProtocolNotAllowed);
                    let _ = st
                        .tx
                        .control(packet::dial_rsp(req.random, 0, refused.to_string()));
                }
            }
        }
        Kind::Known(PacketType::Data) => {
            let d = packet::into_data(p);
            if d.connect_id == 0 {
                return None;
            }
            let conns = lock(&st.conns);
            match conns.get(&d.connect_id) {
                Some(c) => match c.queue.push(d.data) {
                    Ok(pressure) => return pressure,
                    Err(Overflow) => warn!(
                        connect_id = d.connect_id,
                        "closing connection: the server sent more than the connection's flow-control window"
                    ),
                },
                None => {
                    drop(conns);
                    let _ = st.tx.control(packet::close_rsp(
                        d.connect_id,
                        wire::UNRECOGNIZED_CONNECT_ID,
                    ));
                }
            }
        }
        Kind::Known(PacketType::CloseReq) => {
            let id = packet::close_request(&p).connect_id;
            let known = lock(&st.conns).get(&id).map(|c| c.queue.clone());
            match known {
                Some(q) => q.close(String::new()),
                None => {
                    let _ = st
                        .tx
                        .control(packet::close_rsp(id, wire::UNKNOWN_CONNECT_ID));
                }
            }
        }
        Kind::Known(PacketType::WindowUpdate) => {
            let w = packet::window_update_of(&p);
            if let Some(c) = lock(&st.conns)
                .get(&w.connect_id)
                .and_then(|c| c.credit.clone())
            {
                c.grant(w.bytes);
            }
        }
        // DIAL_CLS and DRAIN from the server are ignored, as upstream.
        _ => debug!(kind = packet::type_name(&p), "ignoring packet from server"),
    }
    None
}

/// Dials, answers, splices, and closes one connection.
async fn serve_conn(st: Arc<StreamState>, id: i64, random: i64, address: String) {
    let started = std::time::Instant::now();
    let sock = match dialer::dial(&address, dialer::DIAL_TIMEOUT, &st.policy).await {
        Ok(s) => {
            st.metrics.dial_done(started.elapsed());
            s
        }
        Err((text, why)) => {
            debug!(%address, error = %text, "dial failed");
            st.metrics.dial_failure(why);
            let _ = st.tx.send(packet::dial_rsp(random, 0, text)).await;
            return;
        }
    };
    let Some((rx, credit)) = open_conn(&st, id, random).await else {
        return;
    };
    debug!(%address, connect_id = id, "connected");
    let end = splice(
        sock,
        id,
        rx,
        st.tx.clone(),
        credit,
        st.max_chunk,
        Bytes::new(),
    )
    .await;
    let error = match end {
        SpliceEnd::PeerClosed(e) => Some(e),
        SpliceEnd::LocalEof => Some(String::new()),
        SpliceEnd::LocalError(e) => {
            debug!(connect_id = id, error = %e, "destination connection failed");
            Some(String::new())
        }
        SpliceEnd::StreamGone => None,
    };
    close_conn(&st, id, error).await;
}

/// Registers connection `id` (its queue and credit) and answers `DIAL_RSP{random, id}`;
/// `None` if the stream went away meanwhile (nothing is left registered).
async fn open_conn(
    st: &Arc<StreamState>,
    id: i64,
    random: i64,
) -> Option<(ConnReceiver, Option<Arc<Credit>>)> {
    let budget = match (st.flow(), st.our_window) {
        (true, Some(window)) => Budget::Flow {
            window,
            max_packet: 4 << 20,
        },
        _ => Budget::UNMANAGED,
    };
    let (queue, rx) = conn_queue(id, budget, st.tx.clone(), st.budget.clone());
    let credit = if st.flow() {
        st.peer_window.map(|w| Arc::new(Credit::new(w)))
    } else {
        None
    };
    lock(&st.conns).insert(
        id,
        Conn {
            queue,
            credit: credit.clone(),
        },
    );
    st.metrics
        .open_endpoint_connections
        .fetch_add(1, Ordering::Relaxed);
    if st.tx.send(packet::dial_rsp(random, id, "")).await.is_err() {
        close_conn(st, id, None).await;
        return None;
    }
    Some((rx, credit))
}

/// Unregisters connection `id` and, unless the stream is gone (`None`), answers
/// `CLOSE_RSP{id, error}`.
async fn close_conn(st: &Arc<StreamState>, id: i64, error: Option<String>) {
    lock(&st.conns).remove(&id);
    st.metrics
        .open_endpoint_connections
        .fetch_sub(1, Ordering::Relaxed);
    if let Some(error) = error {
        let _ = st.tx.send(packet::close_rsp(id, error)).await;
    }
}

#[cfg(test)]
mod tests {
    //! The agent's half of frontend isolation: connect IDs are per server stream, so a
    //! server stream can only reach the connections opened on it.
    use super::*;
    use futures::StreamExt;
    use konnectivity_tunnel::outbound::Outbound;
    use konnectivity_tunnel::queue::Inbound;

    fn stream_state() -> (Arc<StreamState>, Outbound) {
        let (tx, out) = outbound::channel();
        let budget = MemoryBudget::new(0, Duration::from_secs(10));
        let st = Arc::new(StreamState {
            tx,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicI64::new(0),
            our_window: None,
            peer_window: None,
            max_chunk: 4096,
            policy: Default::default(),
            metrics: Arc::new(Metrics::new(&budget)),
            server_id: "s".into(),
            budget,
            udp: udp::UdpSettings::default(),
        });
        (st, out)
    }

    async fn next_close_rsp(out: &mut Outbound) -> (i64, String) {
        let p = tokio::time::timeout(Duration::from_secs(1), out.next())
            .await
            .expect("an answer")
            .expect("the stream is open");
        assert_eq!(packet::kind(&p), Kind::Known(PacketType::CloseRsp));
        let c = packet::close_response(&p);
        (c.connect_id, c.error.clone())
    }

    #[tokio::test]
    async fn data_and_close_for_another_server_streams_connection_are_refused() {
        let (a, _a_out) = stream_state();
        let (b, mut b_out) = stream_state();
        let (queue, mut rx) = conn_queue(1, Budget::UNMANAGED, a.tx.clone(), a.budget.clone());
        lock(&a.conns).insert(
            1,
            Conn {
                queue,
                credit: None,
            },
        );

        // Stream b names stream a's connection 1: answered on b, never delivered.
        assert!(dispatch(&b, packet::data(1, Bytes::from_static(b"INJECTED"))).is_none());
        assert_eq!(
            next_close_rsp(&mut b_out).await,
            (1, wire::UNRECOGNIZED_CONNECT_ID.to_owned())
        );
        assert!(dispatch(&b, packet::close_req(1)).is_none());
        assert_eq!(
            next_close_rsp(&mut b_out).await,
            (1, wire::UNKNOWN_CONNECT_ID.to_owned())
        );
        assert!(lock(&a.conns).contains_key(&1), "a's connection is open");

        // Stream a's own DATA is the first thing its connection receives.
        let _ = dispatch(&a, packet::data(1, Bytes::from_static(b"mine")));
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(Inbound::Data(d))) => assert_eq!(&d[..], b"mine"),
            other => panic!("expected a's own DATA first, got {other:?}"),
        }
    }
}
