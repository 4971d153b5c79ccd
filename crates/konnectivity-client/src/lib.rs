//! A frontend client for proxy-server, used by the `konnectivity` CLI, the demo and
//! the tests: what kube-apiserver does, in Rust.
//!
//! - [`grpc_dial`]: one `ProxyService.Proxy` stream per connection (the protocol of
//!   konnectivity-client), returned as a byte stream; [`grpc_dial_protocol`] asks for
//!   another `DialRequest.protocol` (`udp`: then [`GrpcStream::send_datagram`] and
//!   [`GrpcStream::recv_datagram`] keep one datagram per DATA packet);
//! - [`connect_dial`]: an HTTP CONNECT tunnel.
//!
//! Both work over the server's UNIX socket or its mTLS TCP port ([`Frontend`]).
//! The SOCKS5 frontend (our extension) has its own client in [`socks5`]:
//! [`socks5_dial`] (CONNECT) and [`Socks5Udp`] (UDP ASSOCIATE).
#![deny(missing_docs)]

pub mod socks5;
pub use socks5::{Socks5Udp, socks5_dial};

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use konnectivity_core::flow::MAX_CHUNK;
use konnectivity_core::packet::{self, Kind};
use konnectivity_core::{Packet, PacketType};
use konnectivity_tls::{ClientConfig, ServerName, TlsConnector};
use konnectivity_tunnel::grpc::{PacketBody, PacketReader, status_of};
use konnectivity_tunnel::outbound;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Where the server's frontend listens.
#[derive(Debug, Clone)]
pub enum Frontend {
    /// `--uds-name`.
    Uds(PathBuf),
    /// `--server-port` with mTLS.
    Tcp {
        /// host:port.
        addr: String,
        /// TLS with a client certificate.
        tls: Arc<ClientConfig>,
        /// Name to verify in the server certificate.
        server_name: String,
    },
}

/// Errors of a tunneled dial.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Reaching the frontend failed.
    #[error("connecting to the proxy-server frontend: {0}")]
    Connect(#[source] io::Error),
    /// The gRPC stream could not be opened.
    #[error("opening the Proxy stream: {0}")]
    Stream(String),
    /// The agent or server refused the dial (their error text, verbatim).
    #[error("{0}")]
    Dial(String),
    /// The dial was closed (DIAL_CLS) or the stream ended first.
    #[error("dial closed")]
    Closed,
    /// No answer in time.
    #[error("dial timeout")]
    Timeout,
    /// The SOCKS5 proxy refused the request or answered something unexpected.
    #[error("SOCKS5: {0}")]
    Socks5(String),
    /// A CONNECT response other than 200.
    #[error("CONNECT failed: {status}: {body}")]
    Http {
        /// The status line.
        status: String,
        /// The response body (possibly truncated).
        body: String,
    },
}

/// A byte stream to a frontend (UNIX socket, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Opens a byte stream to `f`: the UNIX socket, or TLS over TCP offering `alpn` (none
/// when empty, as for the SOCKS5 port with `--socks5-tls-*`).
pub async fn open_frontend(f: &Frontend, alpn: &[u8]) -> Result<Box<dyn Io>, ClientError> {
    match f {
        Frontend::Uds(path) => Ok(Box::new(
            UnixStream::connect(path)
                .await
                .map_err(ClientError::Connect)?,
        )),
        Frontend::Tcp {
            addr,
            tls,
            server_name,
        } => {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(ClientError::Connect)?;
            let _ = tcp.set_nodelay(true);
            let mut cfg = (**tls).clone();
            cfg.alpn_protocols = if alpn.is_empty() {
                Vec::new()
            } else {
                vec![alpn.to_vec()]
            };
            let name = ServerName::try_from(server_name.clone()).map_err(|e| {
                ClientError::Connect(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
            })?;
            let s = TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(ClientError::Connect)?;
            Ok(Box::new(s))
        }
    }
}

/// Opens `address` through the gRPC frontend: one Proxy stream on its own HTTP/2
/// connection (konnectivity-client's single-use tunnel). The returned stream carries
/// the connection's bytes; shutting down its write side closes the tunnel.
pub async fn grpc_dial(
    f: &Frontend,
    address: &str,
    timeout: Duration,
) -> Result<GrpcStream, ClientError> {
    grpc_dial_protocol(f, "tcp", address, timeout).await
}

/// [`grpc_dial`] with `DialRequest.protocol` set to `protocol` (`"udp"` for a UDP
/// connection through a server started with `--enable-udp`; the server refuses what
/// it does not serve, with a [`ClientError::Dial`] naming the protocol).
pub async fn grpc_dial_protocol(
    f: &Frontend,
    protocol: &str,
    address: &str,
    timeout: Duration,
) -> Result<GrpcStream, ClientError> {
    let io = tokio::time::timeout(timeout, open_frontend(f, b"h2"))
        .await
        .map_err(|_| ClientError::Timeout)??;
    let stream_err = |e: &dyn std::fmt::Display| ClientError::Stream(e.to_string());
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .max_frame_size(256 * 1024)
        .handshake::<_, PacketBody>(TokioIo::new(io))
        .await
        .map_err(|e| stream_err(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (tx, out) = outbound::channel();
    let random = rand::random::<i64>() & i64::MAX;
    tx.control(packet::dial_req(protocol, address, random))
        .map_err(|e| stream_err(&e))?;
    let mut req = http::Request::new(PacketBody::request(out));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static("http://konnectivity/ProxyService/Proxy");
    let h = req.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let rsp = tokio::time::timeout(timeout, send.send_request(req))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| stream_err(&e))?;
    drop(send);
    let (parts, body) = rsp.into_parts();
    if let Some((code, message)) = status_of(&parts.headers)
        && code != 0
    {
        return Err(ClientError::Stream(message));
    }
    let mut inbound = PacketReader::new(body, 16 << 20);
    let first = tokio::time::timeout(timeout, inbound.message())
        .await
        .map_err(|_| ClientError::Timeout)?;
    let connect_id = match first {
        Ok(Some(p)) => match packet::kind(&p) {
            Kind::Known(PacketType::DialRsp) => {
                let r = packet::dial_response(&p);
                if !r.error.is_empty() {
                    return Err(ClientError::Dial(r.error.clone()));
                }
                r.connect_id
            }
            _ => return Err(ClientError::Closed),
        },
        Err(e) => return Err(stream_err(&e)),
        Ok(None) => return Err(ClientError::Closed),
    };
    Ok(GrpcStream {
        connect_id,
        tx,
        inbound: Some(inbound),
        pending: Bytes::new(),
        eof: false,
        failed: None,
        sending: None,
        closed: false,
    })
}

type SendFuture = Pin<Box<dyn Future<Output = Result<(), outbound::StreamClosed>> + Send>>;

/// One tunneled connection over a Proxy stream, as a byte stream.
///
/// Reads hand out the DATA payloads as they arrive; a write becomes one DATA packet
/// (at most [`MAX_CHUNK`] bytes). Shutting down the write side sends CLOSE_REQ; the
/// stream is closed for good when it is dropped, after waiting (in the background, at
/// most 10 s, like the Go client's close timeout) for the server's CLOSE_RSP.
pub struct GrpcStream {
    connect_id: i64,
    tx: outbound::StreamTx,
    inbound: Option<PacketReader<hyper::body::Incoming>>,
    /// The rest of the DATA payload being read.
    pending: Bytes,
    eof: bool,
    /// The error of a CLOSE_RSP (or a broken stream), returned by the next read.
    failed: Option<String>,
    /// A packet handed over but not yet queued (its lane was full).
    sending: Option<SendFuture>,
    /// CLOSE_REQ has been queued.
    closed: bool,
}

impl std::fmt::Debug for GrpcStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcStream")
            .field("connect_id", &self.connect_id)
            .finish_non_exhaustive()
    }
}

impl GrpcStream {
    /// The connect ID the agent assigned.
    pub fn connect_id(&self) -> i64 {
        self.connect_id
    }

    /// Sends `datagram` as one DATA packet, never merged with another (a UDP
    /// connection: the agent writes it as one datagram).
    pub async fn send_datagram(&mut self, datagram: Bytes) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_sending(cx)).await?;
        if self.closed || self.tx.is_closed() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed"));
        }
        self.tx
            .send_whole(packet::data(self.connect_id, datagram))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed"))
    }

    /// The next DATA payload whole (a UDP connection: one datagram); `Ok(None)` after
    /// a CLOSE_RSP without error, an error with the CLOSE_RSP's text otherwise. Do not
    /// mix with byte-stream reads.
    pub async fn recv_datagram(&mut self) -> io::Result<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        loop {
            if self.eof {
                return self.end().map(|()| None);
            }
            let Some(inbound) = self.inbound.as_mut() else {
                return Ok(None);
            };
            let message = inbound.message().await;
            if let Some(data) = self.received(message) {
                return Ok(Some(data));
            }
        }
    }

    /// Takes in what the tunnel stream delivered: a DATA payload is returned, a
    /// CLOSE_RSP (its error kept for [`GrpcStream::end`]), the stream's end or its
    /// failure ends the connection; other packets are ignored.
    fn received<E: std::fmt::Display>(
        &mut self,
        message: Result<Option<Packet>, E>,
    ) -> Option<Bytes> {
        match message {
            Ok(Some(p)) => match packet::kind(&p) {
                Kind::Known(PacketType::Data) => return Some(packet::into_data(p).data),
                Kind::Known(PacketType::CloseRsp) => {
                    let error = &packet::close_response(&p).error;
                    if !error.is_empty() {
                        self.failed = Some(error.clone());
                    }
                    self.eof = true;
                }
                _ => {}
            },
            Ok(None) => self.eof = true,
            Err(e) => {
                self.failed = Some(format!("tunnel stream broken: {e}"));
                self.eof = true;
            }
        }
        None
    }

    /// After the end: a close with an error (the agent went away, a protocol
    /// violation) is reported once, after the data that came before it.
    fn end(&mut self) -> io::Result<()> {
        match self.failed.take() {
            Some(e) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            None => Ok(()),
        }
    }

    fn poll_sending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(f) = self.sending.as_mut() {
            let r = std::task::ready!(f.as_mut().poll(cx));
            self.sending = None;
            if r.is_err() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "tunnel closed",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(&mut self, p: Packet, cx: &mut Context<'_>) {
        let tx = self.tx.clone();
        let mut f: SendFuture = Box::pin(async move { tx.send(p).await });
        // Usually the lane has room and the packet is queued right here.
        match f.as_mut().poll(cx) {
            Poll::Ready(_) => {}
            Poll::Pending => self.sending = Some(f),
        }
    }
}

impl AsyncRead for GrpcStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(self.end());
            }
            let Some(inbound) = self.inbound.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let message = std::task::ready!(inbound.poll_message(cx));
            if let Some(data) = self.received(message) {
                self.pending = data;
            }
        }
    }
}

impl AsyncWrite for GrpcStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_sending(cx))?;
        if self.closed || self.tx.is_closed() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel closed",
            )));
        }
        let n = buf.len().min(MAX_CHUNK);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        let id = self.connect_id;
        let chunk = konnectivity_tunnel::bufpool::copy_chunk(&buf[..n]);
        self.start_send(packet::data(id, chunk), cx);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_sending(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_sending(cx))?;
        if !self.closed {
            self.closed = true;
            let id = self.connect_id;
            self.start_send(packet::close_req(id), cx);
        }
        self.poll_sending(cx)
    }
}

impl Drop for GrpcStream {
    fn drop(&mut self) {
        let tx = self.tx.clone();
        let id = self.connect_id;
        let closed = self.closed;
        // The reader saw CLOSE_RSP (or the end of the stream): nothing more to wait for.
        let finished = self.eof;
        let sending = self.sending.take();
        let inbound = self.inbound.take();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tx.close();
            return;
        };
        // Finish the close handshake in the background so the server and agent see a
        // clean CLOSE_REQ/CLOSE_RSP, then end the Proxy stream the way gRPC does: our
        // END_STREAM, then the server's trailers. Dropping the response body before
        // that would reset the stream (CANCEL).
        rt.spawn(async move {
            let finish = async {
                if let Some(f) = sending {
                    let _ = f.await;
                }
                // After CLOSE_RSP the server has forgotten the connection: no CLOSE_REQ.
                if !closed && !finished {
                    let _ = tx.send(packet::close_req(id)).await;
                }
                let Some(mut inbound) = inbound else {
                    return;
                };
                if !finished {
                    while let Ok(Some(p)) = inbound.message().await {
                        if packet::kind(&p) == Kind::Known(PacketType::CloseRsp) {
                            break;
                        }
                    }
                }
                tx.close();
                while let Ok(Some(_)) = inbound.message().await {}
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), finish).await;
            tx.close();
        });
    }
}

/// Opens `address` through the HTTP-CONNECT frontend. Returns the raw stream after a
/// `200`, with any bytes the server sent after the response head.
pub async fn connect_dial(
    f: &Frontend,
    address: &str,
    timeout: Duration,
) -> Result<(Pin<Box<dyn Io>>, Bytes), ClientError> {
    let mut io = tokio::time::timeout(timeout, open_frontend(f, b"http/1.1"))
        .await
        .map_err(|_| ClientError::Timeout)??;
    let req = format!("CONNECT {address} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    io.write_all(req.as_bytes())
        .await
        .map_err(ClientError::Connect)?;
    let mut buf = BytesMut::with_capacity(1024);
    let read_head = async {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut rsp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = rsp.parse(&buf) {
                return Ok((
                    rsp.code.unwrap_or(0),
                    rsp.reason.unwrap_or("").to_owned(),
                    n,
                ));
            }
            if io.read_buf(&mut buf).await.map_err(ClientError::Connect)? == 0 {
                return Err(ClientError::Closed);
            }
        }
    };
    let (code, reason, n) = tokio::time::timeout(timeout, read_head)
        .await
        .map_err(|_| ClientError::Timeout)??;
    let rest = buf.split_off(n).freeze();
    if code != 200 {
        let mut body = rest.to_vec();
        let _ = tokio::time::timeout(Duration::from_secs(2), io.read_to_end(&mut body)).await;
        return Err(ClientError::Http {
            status: format!("{code} {reason}"),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok((Box::pin(io), rest))
}
