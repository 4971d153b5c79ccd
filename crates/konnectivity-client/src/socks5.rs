//! A SOCKS5 client (RFC 1928, no authentication or RFC 1929 username/password) for the
//! server's SOCKS5 frontend (`--socks5-port`, `--socks5-uds`), used by the bench and
//! `konnectivity dial --socks5`: [`socks5_dial`] opens a CONNECT tunnel and returns the
//! raw stream ([`socks5_dial_on`] on a stream the caller opened, e.g. TLS for a port
//! with `--socks5-tls-*`); [`Socks5Udp`] holds a UDP ASSOCIATE (its control connection
//! and a UDP socket talking to the relay) and wraps and unwraps the datagram header.
//! The message encodings are `konnectivity_core::socks`; this module only does the I/O,
//! and every read of the proxy's answers is bounded by the caller's timeout.
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use konnectivity_core::socks::{
    self, Destination, UserPass, parse_reply, parse_udp_header, reply_text, udp_header,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket, UnixStream};

use crate::{ClientError, Io};

/// SOCKS5 command UDP ASSOCIATE (RFC 1928 §4).
const CMD_UDP_ASSOCIATE: u8 = 3;

/// Where a SOCKS5 proxy listens: `host:port`, or a UNIX socket path (anything with a
/// `/`, as `konnectivity dial --socks5` takes it).
async fn open_proxy(proxy: &str) -> Result<Box<dyn Io>, ClientError> {
    if proxy.contains('/') {
        Ok(Box::new(
            UnixStream::connect(proxy)
                .await
                .map_err(ClientError::Connect)?,
        ))
    } else {
        let s = TcpStream::connect(proxy)
            .await
            .map_err(ClientError::Connect)?;
        let _ = s.set_nodelay(true);
        Ok(Box::new(s))
    }
}

/// Greets (offering username/password when `credentials` are given, no
/// authentication otherwise), logs in, sends `request`, and reads the reply; returns it
/// (the reply's bytes) and any bytes that arrived behind it.
async fn handshake<S: Io + ?Sized>(
    io: &mut S,
    credentials: Option<&UserPass>,
    request: &[u8],
    what: &str,
) -> Result<(Vec<u8>, BytesMut), ClientError> {
    let method = match credentials {
        Some(_) => socks::USER_PASS,
        None => socks::NO_AUTH,
    };
    io.write_all(&[socks::VERSION, 1, method])
        .await
        .map_err(ClientError::Connect)?;
    let mut chosen = [0u8; 2];
    io.read_exact(&mut chosen)
        .await
        .map_err(ClientError::Connect)?;
    if chosen != [socks::VERSION, method] {
        return Err(ClientError::Socks5(match credentials {
            Some(_) => "the proxy does not accept username/password authentication".into(),
            None => "the proxy does not accept unauthenticated clients (it wants a username and password)".into(),
        }));
    }
    if let Some(c) = credentials {
        let login = c.encode().ok_or_else(|| {
            ClientError::Socks5("the username and the password must be 1 to 255 bytes".into())
        })?;
        io.write_all(&login).await.map_err(ClientError::Connect)?;
        let mut status = [0u8; 2];
        io.read_exact(&mut status)
            .await
            .map_err(ClientError::Connect)?;
        if status[1] != 0 {
            return Err(ClientError::Socks5(
                "the proxy rejected the username or password".into(),
            ));
        }
    }
    io.write_all(request).await.map_err(ClientError::Connect)?;
    let mut buf = BytesMut::with_capacity(512);
    loop {
        match parse_reply(&buf) {
            Ok(Some((0, n))) => {
                let reply = buf.split_to(n).to_vec();
                return Ok((reply, buf));
            }
            Ok(Some((code, _))) => {
                return Err(ClientError::Socks5(format!(
                    "{what} refused: {} (reply {code})",
                    reply_text(code)
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(ClientError::Socks5(format!("malformed reply: {e}"))),
        }
        if io.read_buf(&mut buf).await.map_err(ClientError::Connect)? == 0 {
            return Err(ClientError::Closed);
        }
    }
}

/// Opens `address` (`host:port`, as the agent's node sees it) through the SOCKS5 proxy
/// at `proxy` (`host:port`, or a UNIX socket path). Returns the raw stream after a
/// successful reply, with any bytes the proxy sent behind the reply.
pub async fn socks5_dial(
    proxy: &str,
    address: &str,
    timeout: Duration,
) -> Result<(Box<dyn Io>, BytesMut), ClientError> {
    let dest = Destination::from_address(address)
        .ok_or_else(|| ClientError::Socks5(format!("{address:?} is not host:port")))?;
    let dial = async {
        let io = open_proxy(proxy).await?;
        connect(io, &dest, address, None).await
    };
    tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| ClientError::Timeout)?
}

/// [`socks5_dial`] on `io`, a stream to the proxy the caller opened (TLS, say), logging
/// in with `credentials` when given.
pub async fn socks5_dial_on(
    io: Box<dyn Io>,
    address: &str,
    credentials: Option<&UserPass>,
    timeout: Duration,
) -> Result<(Box<dyn Io>, BytesMut), ClientError> {
    let dest = Destination::from_address(address)
        .ok_or_else(|| ClientError::Socks5(format!("{address:?} is not host:port")))?;
    tokio::time::timeout(timeout, connect(io, &dest, address, credentials))
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn connect(
    mut io: Box<dyn Io>,
    dest: &Destination,
    address: &str,
    credentials: Option<&UserPass>,
) -> Result<(Box<dyn Io>, BytesMut), ClientError> {
    let what = format!("CONNECT {address}");
    let (_, rest) = handshake(io.as_mut(), credentials, &dest.connect_request(), &what).await?;
    Ok((io, rest))
}

/// The address in a reply's `ATYP BND.ADDR BND.PORT` (IPv4 or IPv6; a name is
/// refused: a relay is an address).
fn bound_address(reply: &[u8]) -> Option<SocketAddr> {
    let atyp = *reply.get(3)?;
    let (ip, at) = match atyp {
        1 => {
            let o: [u8; 4] = reply.get(4..8)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(o)), 8)
        }
        4 => {
            let o: [u8; 16] = reply.get(4..20)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(o)), 20)
        }
        _ => return None,
    };
    let p: [u8; 2] = reply.get(at..at + 2)?.try_into().ok()?;
    Some(SocketAddr::new(ip, u16::from_be_bytes(p)))
}

/// A UDP ASSOCIATE: the control connection (the association lives as long as it is
/// open) and a UDP socket connected to the proxy's relay.
#[derive(Debug)]
pub struct Socks5Udp {
    /// Held open: closing it ends the association.
    _control: TcpStream,
    socket: UdpSocket,
    relay: SocketAddr,
    /// The datagram being sent (header + payload), reused.
    out: Vec<u8>,
    /// Room for a received datagram, reused.
    inbound: Box<[u8]>,
}

impl Socks5Udp {
    /// Asks the SOCKS5 proxy at `proxy` (`host:port`: UDP ASSOCIATE is served on
    /// `--socks5-port` only) for a relay, from a UDP socket bound on the IP the
    /// control connection uses.
    pub async fn associate(proxy: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let open = async {
            let control = TcpStream::connect(proxy)
                .await
                .map_err(ClientError::Connect)?;
            let _ = control.set_nodelay(true);
            let local = control.local_addr().map_err(ClientError::Connect)?;
            let socket = UdpSocket::bind(SocketAddr::new(local.ip(), 0))
                .await
                .map_err(ClientError::Connect)?;
            let from = socket.local_addr().map_err(ClientError::Connect)?;
            // DST is where our datagrams come from: the relay accepts that port only.
            let mut request = vec![socks::VERSION, CMD_UDP_ASSOCIATE, 0];
            request.extend_from_slice(&udp_header(&Destination::from(from))[3..]);
            let mut control = control;
            let (reply, _) = handshake(&mut control, None, &request, "UDP ASSOCIATE").await?;
            let mut relay = bound_address(&reply).ok_or_else(|| {
                ClientError::Socks5("the UDP ASSOCIATE reply names no IP address".into())
            })?;
            if relay.ip().is_unspecified() {
                relay.set_ip(proxy.ip());
            }
            socket.connect(relay).await.map_err(ClientError::Connect)?;
            Ok((control, socket, relay))
        };
        let (control, socket, relay) = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok(Self {
            _control: control,
            socket,
            relay,
            out: Vec::with_capacity(512),
            inbound: vec![0; 64 * 1024].into_boxed_slice(),
        })
    }

    /// The proxy's relay socket.
    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    /// Sends `payload` to `dest` through the relay (one datagram).
    pub async fn send_to(&mut self, dest: &Destination, payload: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(&udp_header(dest));
        self.out.extend_from_slice(payload);
        self.socket.send(&self.out).await.map(|_| ())
    }

    /// The next datagram from the relay: where it came from and its payload. A
    /// datagram whose header does not parse is an error (the relay never sends one).
    pub async fn recv_from(&mut self) -> io::Result<(Destination, Bytes)> {
        let n = self.socket.recv(&mut self.inbound).await?;
        let d = &self.inbound[..n];
        let (from, at) = parse_udp_header(d)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok((from, Bytes::copy_from_slice(&d[at..])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_address_reads_ipv4_and_ipv6_and_refuses_names_and_short_replies() {
        let v4 = socks::Reply::Succeeded.encode_bound("127.0.0.1:4242".parse().unwrap());
        assert_eq!(bound_address(&v4), Some("127.0.0.1:4242".parse().unwrap()));
        let v6 = socks::Reply::Succeeded.encode_bound("[::1]:53".parse().unwrap());
        assert_eq!(bound_address(&v6), Some("[::1]:53".parse().unwrap()));
        assert_eq!(bound_address(&v4[..v4.len() - 1]), None);
        assert_eq!(bound_address(&[5, 0, 0, 3, 1, b'a', 0, 1]), None);
        assert_eq!(bound_address(&[]), None);
    }
}
