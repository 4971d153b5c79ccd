//! The gRPC frontend: `ProxyService.Proxy`, one stream per tunneled connection (the
//! protocol of konnectivity-client, i.e. of kube-apiserver).
//!
//! One task per stream drives the tunnel state machine
//! (`konnectivity_core::tunnel::Tunnel`, spec §2.3 plus the isolation rule) in both
//! directions: frontend packets go to the agent only when the machine says they name
//! the stream's own connection (DATA only while the agent has granted credit, so a
//! destination that stops reading back-pressures only this frontend, through HTTP/2);
//! agent packets for this connection come from its queue and are written to the
//! frontend, whose own HTTP/2 stream window back-pressures only this connection. The
//! pending dial's deadline (`--backend-dial-timeout`, else `--dial-deadline`) comes
//! from the machine too.
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use konnectivity_core::dial::DialError;
use konnectivity_core::packet::{self, Kind};
use konnectivity_core::tunnel::{Io, Leftover, Step, Tunnel, forwarded_len};
use konnectivity_core::wire;
use konnectivity_core::{Packet, PacketType};
use konnectivity_tunnel::grpc::{PacketBody, PacketReader};
use konnectivity_tunnel::inbox;
use konnectivity_tunnel::queue::Inbound;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::dial::{self, Dialing};
use crate::metrics::{Gauge, GaugeGuard, Segment};
use crate::rpc::{Handled, HttpRequest, StreamingRpc};
use crate::state::{Backend, DialOutcome, Established, Shared};
use crate::status::document::FrontendKind;

/// Packets queued toward one frontend before its HTTP/2 stream pushes back. DATA leaves
/// its connection queue merged up to 256 KiB, so two keep the stream busy; what waits
/// here no longer counts against the buffer budget (it was 8: 2 MiB per stream). An
/// [`inbox`] keeps a few hundred bytes while idle (tokio's `mpsc` held 2.8 KiB).
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

    fn handle(&self, req: HttpRequest) -> Handled {
        let shared = self.shared.clone();
        let inbound = PacketReader::new(req.into_body(), shared.settings.max_message);
        let (tx, mut rx) = inbox::bounded(OUT_QUEUE);
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

type Out = inbox::Sender<Packet>;

/// What the tunnel state machine carries once the agent answered: the connection's
/// queues and the backend every later packet of this stream goes to (spec §2.2).
struct Conn {
    backend: Arc<Backend>,
    est: Established,
    /// Holds `established_connections` up while the connection is open.
    _gauge: GaugeGuard,
}

/// The stream's tunnel: `Dialing` carries the pending dial, `Established` the
/// connection (see `konnectivity_core::tunnel`).
type Machine = Tunnel<Dialing, Conn>;

/// Something from the agent side for this tunnel.
enum AgentEvent {
    /// The pending dial ended (`Err`: its sender is gone).
    Dial(Result<DialOutcome, oneshot::error::RecvError>),
    /// The connection's next DATA or close (`None`: its queue is gone).
    Conn(Option<Inbound>),
}

/// Waits for the agent side of whatever the tunnel holds now.
async fn agent_event(t: &mut Machine) -> AgentEvent {
    match t.io_mut() {
        Io::Dial(d) => AgentEvent::Dial((&mut d.reply).await),
        Io::Conn(c) => AgentEvent::Conn(c.est.rx.recv().await),
        Io::Nothing => std::future::pending().await,
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn serve_stream(s: Arc<Shared>, mut inbound: PacketReader<tonic::body::Body>, out: Out) {
    let _gauge = s.metrics.hold(Gauge::GrpcProxy);
    let mut t = Machine::new(s.settings.dial_bounds());
    loop {
        // Frontend DATA is read only while the agent has granted credit.
        let credit = match t.is_established() {
            true => t.conn().and_then(|c| c.est.credit.clone()),
            false => None,
        };
        let may_read = credit.as_ref().is_none_or(|c| c.can_send());
        let deadline = t.deadline().map(Instant::from_std);
        let waiting = !matches!(t.io_mut(), Io::Nothing);
        tokio::select! {
            biased;
            ev = agent_event(&mut t), if waiting => {
                let sent = match ev {
                    AgentEvent::Dial(outcome) => on_dial_outcome(&s, &mut t, outcome, &out).await,
                    AgentEvent::Conn(msg) => on_agent_packet(&s, &mut t, msg, &out).await,
                };
                if !sent {
                    break;
                }
            }
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                if t.poll_deadline(now()).is_some()
                    && t.dial_mut().is_some_and(|d| dial::expire(&s, d))
                    && let Some(rsp) = t.pending_failed(&DialError::BackendDialTimeout)
                    && out.send(rsp).await.is_err()
                {
                    break;
                }
            }
            next = inbound.message(), if may_read => {
                match next {
                    Ok(Some(p)) => {
                        s.metrics.packet(Segment::FromClient, &p);
                        if !on_frontend_packet(&s, &mut t, p, &out).await {
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
                        if t.is_live() {
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
    // The frontend is gone: release what it held on the agent (spec §2.3 stream end).
    match t.frontend_gone() {
        Leftover::Dial { dial, .. } => dial::abandon(&s, dial),
        Leftover::Conn { connect_id, conn } => {
            dial::close_conn(&s, &conn.backend, connect_id).await;
        }
        Leftover::Nothing => {}
    }
}

/// The pending dial ended. Returns false when the frontend is gone.
async fn on_dial_outcome(
    s: &Shared,
    t: &mut Machine,
    outcome: Result<DialOutcome, oneshot::error::RecvError>,
    out: &Out,
) -> bool {
    let outcome = outcome.unwrap_or(DialOutcome::Failed(DialError::AgentDisconnected));
    let rsp = match outcome {
        DialOutcome::Connected(est) => {
            let connect_id = est.connect_id;
            let made = t.dial_connected(connect_id, est, |d, est| Conn {
                backend: d.backend,
                est,
                _gauge: s.metrics.hold(Gauge::Established),
            });
            match made {
                Ok(rsp) => rsp,
                // Not dialing any more: unreachable, the outcome is only awaited while
                // dialing (and a dial that is no longer pending was never answered).
                Err(_) => return true,
            }
        }
        DialOutcome::Failed(e) => match t.pending_failed(&e) {
            Some(rsp) => rsp,
            None => return true,
        },
    };
    out.send(rsp).await.is_ok()
}

/// The connection's next DATA or close from the agent. Returns false when the
/// frontend is gone.
async fn on_agent_packet(s: &Shared, t: &mut Machine, msg: Option<Inbound>, out: &Out) -> bool {
    match msg {
        Some(Inbound::Data(b)) => {
            let Some((id, conn)) = t.conn_mut() else {
                return true;
            };
            let n = b.len();
            let started = Instant::now();
            // A frontend that never reads holds this send forever; once its queue is
            // aborted as stalled, the stream ends instead.
            let sent = tokio::select! {
                r = out.send(packet::data(id, b)) => r.is_ok(),
                _ = conn.est.rx.until_aborted() => false,
            };
            if !sent {
                return false;
            }
            s.metrics.frontend_write(started.elapsed());
            conn.est.rx.written(n);
            true
        }
        Some(Inbound::Close(e)) => {
            let Some((id, conn)) = t.agent_closed() else {
                return true;
            };
            if conn.est.rx.aborted() {
                dial::close_conn(s, &conn.backend, id).await;
            }
            out.send(packet::close_rsp(id, e)).await.is_ok()
        }
        None => {
            let Some((id, _)) = t.agent_closed() else {
                return true;
            };
            out.send(packet::close_rsp(id, "")).await.is_ok()
        }
    }
}

/// Handles one frontend packet through the state machine. Returns false when the
/// frontend is gone.
async fn on_frontend_packet(s: &Shared, t: &mut Machine, p: Packet, out: &Out) -> bool {
    match t.on_frontend(p) {
        Step::Nothing => true,
        Step::Ignored => {
            debug!("ignoring a frontend packet (second DIAL_REQ, or the tunnel has ended)");
            true
        }
        // Boxed: the dial's state lives only while it runs instead of enlarging every
        // stream's task for the life of the tunnel.
        Step::Dial {
            random,
            protocol,
            address,
        } => match Box::pin(dial::start(
            s,
            FrontendKind::Grpc,
            &protocol,
            &address,
            random,
        ))
        .await
        {
            Ok(d) => {
                t.dial_started(random, d, now());
                true
            }
            Err(e) => {
                debug!(%address, error = %e, "dial failed");
                out.send(t.dial_failed(random, &e)).await.is_ok()
            }
        },
        Step::Forward(p) => {
            let Some((connect_id, conn)) = t.conn_mut() else {
                return true;
            };
            if packet::kind(&p) == Kind::Known(PacketType::CloseReq) {
                if conn.backend.tx.send(p).await.is_err() {
                    return out
                        .send(packet::close_rsp(
                            connect_id,
                            wire::CLOSE_REQ_TO_BACKEND_FAILED,
                        ))
                        .await
                        .is_ok();
                }
                return true;
            }
            if let Some(c) = &conn.est.credit {
                c.spend(forwarded_len(&p));
            }
            // A UDP connection's DATA payloads are datagrams: never merged on the way.
            let sent = if conn.est.rx.datagrams() {
                conn.backend.tx.send_whole(p).await
            } else {
                conn.backend.tx.send(p).await
            };
            if sent.is_err() {
                debug!(connect_id, "agent stream gone while forwarding DATA");
            }
            true
        }
        Step::Abandon { dial, .. } => {
            dial::abandon(s, dial);
            true
        }
        Step::Reply(p) => out.send(p).await.is_ok(),
        Step::Foreign { what, reply } => {
            s.metrics.foreign_id();
            let own = t.conn().map(|c| c.est.connect_id);
            warn!(
                ?what,
                own_connect_id = ?own,
                "refused a frontend packet naming an ID that is not this stream's own (never forwarded)"
            );
            match reply {
                Some(p) => out.send(p).await.is_ok(),
                None => true,
            }
        }
    }
}
