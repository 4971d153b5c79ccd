//! The gRPC frontend: `ProxyService.Proxy`, one stream per tunneled connection (the
//! protocol of konnectivity-client, i.e. of kube-apiserver).
//!
//! One task per stream runs the state machine of spec §2.3 in both directions:
//! frontend packets go to the agent (DATA only while the agent has granted credit, so a
//! destination that stops reading back-pressures only this frontend, through HTTP/2);
//! agent packets for this connection come from its queue and are written to the
//! frontend, whose own HTTP/2 stream window back-pressures only this connection.
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use konnectivity_core::packet::{self, Kind};
use konnectivity_core::wire;
use konnectivity_core::{Packet, PacketType};
use konnectivity_tunnel::grpc::{PacketBody, PacketReader};
use konnectivity_tunnel::queue::Inbound;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, warn};

use crate::dial::{self, StartError};
use crate::metrics::{DialFailureReason, Gauge, Segment};
use crate::rpc::{HttpRequest, HttpResponse, StreamingRpc};
use crate::state::{Backend, DialOutcome, Established, Shared};

/// Packets queued toward one frontend before its HTTP/2 stream pushes back. DATA leaves
/// its connection queue merged up to 256 KiB, so two keep the stream busy; what waits
/// here no longer counts against the buffer budget (it was 8: 2 MiB per stream).
const OUT_QUEUE: usize = 2;

/// The `ProxyService` implementation.
#[derive(Debug, Clone)]
pub struct ProxyEndpoint {
    shared: Arc<Shared>,
}

impl ProxyEndpoint {
    /// Serves frontends on behalf of `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// `ProxyService.Proxy`: the request and response bodies are framed by
/// `konnectivity_tunnel::grpc`, so DATA payloads pass through without a codec copying
/// them.
impl StreamingRpc for ProxyEndpoint {
    const SERVICE: &'static str = "ProxyService";
    const PATH: &'static str = konnectivity_proto::PROXY_PATH;

    fn handle(
        &self,
        req: HttpRequest,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, Status>> + Send>> {
        let shared = self.shared.clone();
        let inbound = PacketReader::new(req.into_body(), shared.settings.max_message);
        let (tx, mut rx) = mpsc::channel(OUT_QUEUE);
        tokio::spawn(serve_stream(shared.clone(), inbound, tx));
        let out = futures::StreamExt::inspect(
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)),
            move |p| {
                shared.metrics.packet(Segment::ToClient, p);
            },
        );
        let body = PacketBody::response(Box::pin(out) as PacketStream);
        let mut rsp = http::Response::new(tonic::body::Body::new(body));
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        Box::pin(async move { Ok(rsp) })
    }
}

type PacketStream = Pin<Box<dyn Stream<Item = Packet> + Send>>;

type Out = mpsc::Sender<Packet>;

/// Where the stream is in its life.
struct Tunnel {
    /// The backend chosen at DIAL_REQ; used for every later packet (spec §2.2).
    backend: Option<Arc<Backend>>,
    /// The pending dial's ID and outcome receiver.
    dialing: Option<(i64, tokio::sync::oneshot::Receiver<DialOutcome>)>,
    /// `--backend-dial-timeout` deadline of the pending dial.
    deadline: Option<Instant>,
    /// The established connection, until the agent closes it.
    conn: Option<Established>,
    /// The first non-zero connect ID the frontend used in DATA.
    first_data_id: Option<i64>,
    /// After a terminal packet: read and discard until the frontend closes.
    discard: bool,
}

async fn serve_stream(s: Arc<Shared>, mut inbound: PacketReader<tonic::body::Body>, out: Out) {
    let _gauge = s.metrics.hold(Gauge::GrpcProxy);
    let mut t = Tunnel {
        backend: None,
        dialing: None,
        deadline: None,
        conn: None,
        first_data_id: None,
        discard: false,
    };
    let mut established_gauge = None;
    loop {
        let credit = t.conn.as_ref().and_then(|c| c.credit.clone());
        let may_read = t.discard || credit.as_ref().is_none_or(|c| c.can_send());
        let deadline = t.deadline;
        tokio::select! {
            biased;
            outcome = async { (&mut t.dialing.as_mut().expect("guarded").1).await }, if t.dialing.is_some() => {
                let Some((random, _)) = t.dialing.take() else { continue };
                t.deadline = None;
                let outcome = outcome.unwrap_or(DialOutcome::BackendGone);
                match outcome {
                    DialOutcome::Connected(est) => {
                        let rsp = packet::dial_rsp(random, est.connect_id, "");
                        established_gauge = Some(s.metrics.hold(Gauge::Established));
                        t.conn = Some(est);
                        if out.send(rsp).await.is_err() {
                            break;
                        }
                    }
                    DialOutcome::Failed(e) => {
                        t.discard = true;
                        if out.send(packet::dial_rsp(random, 0, e)).await.is_err() { break; }
                    }
                    DialOutcome::Closed => {
                        t.discard = true;
                        if out.send(packet::dial_cls(random)).await.is_err() { break; }
                    }
                    DialOutcome::BackendGone => {
                        t.discard = true;
                        s.metrics.dial_failure(DialFailureReason::BackendClose);
                        if out.send(packet::dial_rsp(random, 0, wire::AGENT_DISCONNECTED)).await.is_err() { break; }
                    }
                }
            }
            msg = async { t.conn.as_mut().expect("guarded").rx.recv().await }, if t.conn.is_some() => {
                let Some(conn) = t.conn.as_mut() else { continue };
                let id = conn.connect_id;
                match msg {
                    Some(Inbound::Data(b)) => {
                        let n = b.len();
                        let started = Instant::now();
                        // A frontend that never reads holds this send forever; once its
                        // queue is aborted as stalled, the stream ends instead.
                        let sent = tokio::select! {
                            r = out.send(packet::data(id, b)) => r.is_ok(),
                            _ = conn.rx.until_aborted() => false,
                        };
                        if !sent {
                            break;
                        }
                        s.metrics.frontend_write(started.elapsed());
                        conn.rx.written(n);
                    }
                    Some(Inbound::Close(e)) => {
                        let aborted = conn.rx.aborted();
                        t.conn = None;
                        established_gauge = None;
                        t.discard = true;
                        if aborted && let Some(b) = &t.backend {
                            dial::close_conn(&s, b, id).await;
                        }
                        if out.send(packet::close_rsp(id, e)).await.is_err() { break; }
                    }
                    None => {
                        t.conn = None;
                        established_gauge = None;
                        t.discard = true;
                        if out.send(packet::close_rsp(id, "")).await.is_err() { break; }
                    }
                }
            }
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                t.deadline = None;
                if let Some((random, _)) = t.dialing.take()
                    && dial::take_pending(&s, random).is_some()
                {
                    s.metrics.dial_failure(DialFailureReason::BackendDialTimeout);
                    t.discard = true;
                    if out.send(packet::dial_rsp(random, 0, wire::BACKEND_DIAL_TIMEOUT)).await.is_err() { break; }
                }
            }
            next = inbound.message(), if may_read => {
                match next {
                    Ok(Some(p)) => {
                        s.metrics.packet(Segment::FromClient, &p);
                        if !t.discard && !on_frontend_packet(&s, &mut t, p, &out).await {
                            break;
                        }
                    }
                    Ok(None) => {
                        debug!("frontend stream ended");
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "frontend stream ended with error");
                        // A client that tears down a finished tunnel (CLOSE_RSP sent,
                        // or its dial answered with an error) without ending the stream
                        // first has lost nothing: only live tunnels count.
                        if !t.discard {
                            s.metrics.stream_error(Segment::FromClient, e.code_name());
                        }
                        break;
                    }
                }
            }
            _ = async { if let Some(c) = &credit { c.ready().await } }, if !may_read => {}
            _ = out.closed() => break,
        }
    }
    drop(established_gauge);
    // The frontend is gone: release what it held on the agent (spec §2.3 stream end).
    if let Some((random, _)) = t.dialing.take() {
        dial::abandon(&s, random, DialFailureReason::FrontendClose);
    }
    if let (Some(conn), Some(b)) = (t.conn.take(), &t.backend) {
        dial::close_conn(&s, b, conn.connect_id).await;
    }
}

/// Handles one frontend packet. Returns false when the frontend is gone.
async fn on_frontend_packet(s: &Shared, t: &mut Tunnel, p: Packet, out: &Out) -> bool {
    match packet::kind(&p) {
        Kind::Known(PacketType::DialReq) => {
            if t.backend.is_some() {
                warn!("ignoring a second DIAL_REQ on one Proxy stream (one dial per stream)");
                return true;
            }
            let req = packet::dial_request(&p);
            match dial::start(s, &req.address, req.random).await {
                Ok(d) => {
                    t.deadline = s
                        .settings
                        .backend_dial_timeout
                        .map(|to| Instant::now() + to);
                    t.backend = Some(d.backend);
                    t.dialing = Some((d.random, d.reply));
                    true
                }
                Err(e) => {
                    t.discard = true;
                    let text = match e {
                        StartError::NoAgent => {
                            s.metrics.dial_failure(DialFailureReason::NoAgent);
                            wire::NO_AGENT_AVAILABLE.to_owned()
                        }
                        StartError::DuplicateDialId => "dial ID already in use".to_owned(),
                        StartError::Denied(e) | StartError::Limit(e) => e,
                        StartError::Send { error, .. } => error,
                    };
                    debug!(address = %req.address, error = %text, "dial failed");
                    out.send(packet::dial_rsp(req.random, 0, text))
                        .await
                        .is_ok()
                }
            }
        }
        Kind::Known(PacketType::CloseReq) => {
            let id = packet::close_request(&p).connect_id;
            let Some(b) = &t.backend else {
                return out
                    .send(packet::close_rsp(id, wire::BACKEND_UNINITIALIZED))
                    .await
                    .is_ok();
            };
            t.discard = true;
            if b.tx.send(packet::close_req(id)).await.is_err() {
                return out
                    .send(packet::close_rsp(id, wire::CLOSE_REQ_TO_BACKEND_FAILED))
                    .await
                    .is_ok();
            }
            true
        }
        Kind::Known(PacketType::DialCls) => {
            let random = packet::close_dial(&p).random;
            if t.dialing.as_ref().is_some_and(|(r, _)| *r == random) {
                t.dialing = None;
                t.deadline = None;
            }
            dial::abandon(s, random, DialFailureReason::FrontendClose);
            true
        }
        Kind::Known(PacketType::Data) => {
            let Some(b) = t.backend.clone() else {
                t.discard = true;
                let id = packet::into_data(p).connect_id;
                return out
                    .send(packet::close_rsp(id, wire::BACKEND_NOT_INITIALIZED))
                    .await
                    .is_ok();
            };
            let d = packet::into_data(p);
            if d.connect_id == 0 {
                return true;
            }
            match t.first_data_id {
                None => t.first_data_id = Some(d.connect_id),
                Some(first) if first != d.connect_id => {
                    t.discard = true;
                    let _ = b.tx.send(packet::close_req(d.connect_id)).await;
                    let _ = b.tx.send(packet::close_req(first)).await;
                    let a = out
                        .send(packet::close_rsp(
                            d.connect_id,
                            wire::MISMATCHED_CONNECTION_IDS,
                        ))
                        .await;
                    let c = out
                        .send(packet::close_rsp(first, wire::MISMATCHED_CONNECTION_IDS))
                        .await;
                    return a.is_ok() && c.is_ok();
                }
                Some(_) => {}
            }
            if let Some(c) = t.conn.as_ref().and_then(|c| c.credit.as_ref()) {
                c.spend(d.data.len());
            }
            if b.tx.send(packet::data(d.connect_id, d.data)).await.is_err() {
                debug!(
                    connect_id = d.connect_id,
                    "agent stream gone while forwarding DATA"
                );
            }
            true
        }
        _ => true,
    }
}
