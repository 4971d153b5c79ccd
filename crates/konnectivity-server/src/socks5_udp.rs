//! SOCKS5 UDP ASSOCIATE (RFC 1928 §7), served only with `--enable-udp` and only on
//! `--socks5-port` (a UNIX-socket client has no IP its datagrams could be checked
//! against, so `--socks5-uds` answers UDP ASSOCIATE with 0x07).
//!
//! One association per control connection: a relay UDP socket bound on the address the
//! client connected to (loopback unless `--socks5-auth-file`; the reply's
//! BND.ADDR/PORT). A
//! datagram is accepted only from the control connection's peer IP (and, when the
//! request named a port, from that port); its header is parsed by
//! `konnectivity_core::socks::parse_udp_header`; anything malformed, fragmented
//! (FRAG != 0: reassembly is not built) or foreign is dropped without disturbing the
//! association. Each distinct destination gets its own tunnel connection with
//! protocol `udp` (the gRPC frontend's path: `dial::start`, the agent's UDP socket,
//! one datagram per DATA packet), at most [`MAX_DESTINATIONS`] at a time; replies are
//! wrapped in the header and sent to the client's last source address. Everything
//! ends when the control connection closes or nothing moved for [`IDLE_TIMEOUT`].
//! Datagrams are dropped, never queued without bound: while a destination's dial is
//! in progress, its window is spent, or its queue is full.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use konnectivity_core::packet;
use konnectivity_core::protocol::Protocol;
use konnectivity_core::socks::{Destination, Reply, parse_udp_header, udp_header};
use konnectivity_tunnel::queue::Inbound;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::Gauge;
use crate::state::Shared;
use crate::status::document::FrontendKind;
use crate::stream_tunnel::{self, write_close};

/// Destinations one association may have open at a time; a datagram to one more is
/// dropped until one of them closes (the agent's `--udp-idle-timeout`).
pub const MAX_DESTINATIONS: usize = 64;
/// An association with no datagram either way for this long ends.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Datagrams queued toward one destination while it is dialed or busy.
const QUEUE: usize = 32;

/// Where the control connection runs: the relay binds `local`'s IP; datagrams are
/// accepted from `peer`'s IP only.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The SOCKS5 listener's address the client connected to.
    pub local: SocketAddr,
    /// The client's address on the control connection.
    pub peer: SocketAddr,
}

/// Which source addresses may use the association.
#[derive(Debug, Clone, Copy)]
struct Filter {
    ip: IpAddr,
    port: Option<u16>,
}

impl Filter {
    /// The control connection's IP (always: a request naming another host does not open
    /// the relay to that host), narrowed to the request's DST.PORT when it is not 0.
    fn new(origin: Origin, from: &Destination) -> Self {
        Self {
            ip: origin.peer.ip(),
            port: Some(from.port()).filter(|&p| p != 0),
        }
    }

    fn allows(&self, src: SocketAddr) -> bool {
        src.ip() == self.ip && self.port.is_none_or(|p| p == src.port())
    }
}

/// Serves one UDP ASSOCIATE on its control connection `control`, whose request named
/// `from` (where the client will send from, or zeros).
pub async fn serve<S>(s: Arc<Shared>, mut control: S, origin: Origin, from: Destination)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let relay = match UdpSocket::bind(SocketAddr::new(origin.local.ip(), 0)).await {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "SOCKS5 UDP ASSOCIATE: binding the relay socket failed");
            return write_close(&mut control, &Reply::GeneralFailure.encode()).await;
        }
    };
    let Ok(bound) = relay.local_addr() else {
        return write_close(&mut control, &Reply::GeneralFailure.encode()).await;
    };
    if control
        .write_all(&Reply::Succeeded.encode_bound(bound))
        .await
        .is_err()
    {
        return;
    }
    debug!(%bound, client = %origin.peer, "SOCKS5 UDP ASSOCIATE");
    let filter = Filter::new(origin, &from);
    let ended = CancellationToken::new();
    let _end_all = ended.clone().drop_guard();
    let (to_client, mut replies) = mpsc::channel::<(Destination, Bytes)>(QUEUE);
    let mut dests: HashMap<Destination, mpsc::Sender<Bytes>> = HashMap::new();
    let mut client: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65_536];
    let mut ctl = [0u8; 64];
    let idle = tokio::time::sleep(IDLE_TIMEOUT);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            r = control.read(&mut ctl) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {} // nothing is defined after the reply: ignored
            },
            r = relay.recv_from(&mut buf) => {
                let Ok((n, src)) = r else { continue };
                if !filter.allows(src) {
                    debug!(%src, "SOCKS5 UDP: dropped a datagram from a foreign address");
                    s.metrics.socks5_udp_dropped("foreign_source");
                    continue;
                }
                let (dest, header) = match parse_udp_header(&buf[..n]) {
                    Ok(h) => h,
                    Err(e) => {
                        debug!(%src, error = %e, "SOCKS5 UDP: dropped a malformed datagram");
                        s.metrics.socks5_udp_dropped("malformed");
                        continue;
                    }
                };
                client = Some(src);
                idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
                let payload = Bytes::copy_from_slice(&buf[header..n]);
                let tx = match dests.get(&dest) {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => {
                        dests.retain(|_, tx| !tx.is_closed());
                        if dests.len() >= MAX_DESTINATIONS {
                            debug!(%dest, max = MAX_DESTINATIONS, "SOCKS5 UDP: too many destinations, datagram dropped");
                            s.metrics.socks5_udp_dropped("too_many_destinations");
                            continue;
                        }
                        let (tx, rx) = mpsc::channel(QUEUE);
                        tokio::spawn(destination(
                            s.clone(),
                            dest.clone(),
                            rx,
                            to_client.clone(),
                            ended.clone(),
                        ));
                        dests.insert(dest, tx.clone());
                        tx
                    }
                };
                if tx.try_send(payload).is_err() {
                    s.metrics.socks5_udp_dropped("queue_full");
                }
            }
            Some((dest, data)) = replies.recv() => {
                let Some(c) = client else { continue };
                let mut d = udp_header(&dest);
                d.extend_from_slice(&data);
                let _ = relay.send_to(&d, c).await;
                idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
            }
            () = &mut idle => {
                debug!("SOCKS5 UDP association idle, ended");
                break;
            }
        }
    }
    let _ = control.shutdown().await;
}

/// One destination of an association: dials it with protocol `udp`, then relays each
/// datagram as one DATA packet each way until the agent closes it (its idle timeout)
/// or the association ends.
async fn destination(
    s: Arc<Shared>,
    dest: Destination,
    mut from_client: mpsc::Receiver<Bytes>,
    to_client: mpsc::Sender<(Destination, Bytes)>,
    ended: CancellationToken,
) {
    let address = dest.dial_address();
    let mut o = match stream_tunnel::open(&s, FrontendKind::Socks5, Protocol::Udp, &address).await {
        Ok(o) => o,
        Err(e) => {
            debug!(%address, error = ?e, "SOCKS5 UDP: dial failed, datagrams dropped");
            return;
        }
    };
    let _established = s.metrics.hold(Gauge::Established);
    let id = o.est.connect_id;
    let by_agent = loop {
        tokio::select! {
            () = ended.cancelled() => break false,
            m = from_client.recv() => {
                let Some(p) = m else { break false };
                if let Some(c) = &o.est.credit {
                    if !c.can_send() {
                        s.metrics.socks5_udp_dropped("window_spent");
                        continue; // dropped, not queued
                    }
                    c.spend(p.len());
                }
                if o.backend.tx.send_whole(packet::data(id, p)).await.is_err() {
                    break true;
                }
            }
            m = o.est.rx.recv() => match m {
                Some(Inbound::Data(d)) => {
                    o.est.rx.written(d.len());
                    if to_client.try_send((dest.clone(), d)).is_err() {
                        s.metrics.socks5_udp_dropped("queue_full");
                    }
                }
                Some(Inbound::Close(_)) | None => break true,
            },
        }
    };
    debug!(%address, connect_id = id, by_agent, "SOCKS5 UDP destination closed");
    stream_tunnel::close(&s, o.tunnel, by_agent).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            local: "127.0.0.1:1080".parse().unwrap(),
            peer: "127.0.0.1:50000".parse().unwrap(),
        }
    }

    #[test]
    fn datagrams_are_accepted_only_from_the_clients_ip_and_named_port() {
        let any = Filter::new(origin(), &Destination::from_address("0.0.0.0:0").unwrap());
        assert!(any.allows("127.0.0.1:4000".parse().unwrap()));
        assert!(!any.allows("127.0.0.2:4000".parse().unwrap()));
        // PySocks names "0" and its port: that port only.
        let port = Filter::new(origin(), &Destination::Domain("0".into(), 4000));
        assert!(port.allows("127.0.0.1:4000".parse().unwrap()));
        assert!(!port.allows("127.0.0.1:4001".parse().unwrap()));
        // A DST naming another host does not open the relay to that host.
        let other = Filter::new(origin(), &Destination::from_address("10.0.0.9:0").unwrap());
        assert!(!other.allows("10.0.0.9:4000".parse().unwrap()));
        assert!(other.allows("127.0.0.1:4000".parse().unwrap()));
    }
}
