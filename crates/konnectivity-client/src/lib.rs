//! A frontend client for proxy-server, used by the `konnectivity` CLI, the demo and
//! the tests: what kube-apiserver does, in Rust.
//!
//! - [`grpc_dial`]: one `ProxyService.Proxy` stream per connection (the protocol of
//!   konnectivity-client), returned as a byte stream;
//! - [`connect_dial`]: an HTTP CONNECT tunnel.
//!
//! Both work over the server's UNIX socket or its mTLS TCP port ([`Frontend`]).
#![deny(missing_docs)]

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use konnectivity_core::packet::{self, Kind};
use konnectivity_core::{Packet, PacketType};
use konnectivity_proto::proxy_service_client::ProxyServiceClient;
use konnectivity_tls::{ClientConfig, ServerName, TlsConnector};
use konnectivity_tunnel::outbound;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Endpoint, Uri};

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

async fn open_frontend(f: &Frontend, alpn: &[u8]) -> Result<Box<dyn Io>, ClientError> {
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
            cfg.alpn_protocols = vec![alpn.to_vec()];
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
) -> Result<DuplexStream, ClientError> {
    let io = tokio::time::timeout(timeout, open_frontend(f, b"h2"))
        .await
        .map_err(|_| ClientError::Timeout)??;
    let slot = std::sync::Mutex::new(Some(io));
    let connector = tower::service_fn(move |_: Uri| {
        let io = slot.lock().ok().and_then(|mut s| s.take());
        async move {
            io.map(hyper_util::rt::TokioIo::new).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotConnected, "frontend connection closed")
            })
        }
    });
    let channel = Endpoint::from_static("http://konnectivity")
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .max_frame_size(256 * 1024)
        .connect_with_connector(connector)
        .await
        .map_err(|e| ClientError::Stream(e.to_string()))?;
    let (tx, out) = outbound::channel();
    let random = rand::random::<i64>() & i64::MAX;
    tx.control(packet::dial_req("tcp", address, random))
        .map_err(|e| ClientError::Stream(e.to_string()))?;
    let mut client = ProxyServiceClient::new(channel).max_decoding_message_size(16 << 20);
    let mut inbound = client
        .proxy(out)
        .await
        .map_err(|s| ClientError::Stream(s.message().to_owned()))?
        .into_inner();
    let first = tokio::time::timeout(timeout, inbound.next())
        .await
        .map_err(|_| ClientError::Timeout)?;
    let connect_id = match first {
        Some(Ok(p)) => match packet::kind(&p) {
            Kind::Known(PacketType::DialRsp) => {
                let r = packet::dial_response(&p);
                if !r.error.is_empty() {
                    return Err(ClientError::Dial(r.error.clone()));
                }
                r.connect_id
            }
            _ => return Err(ClientError::Closed),
        },
        Some(Err(s)) => return Err(ClientError::Stream(s.message().to_owned())),
        None => return Err(ClientError::Closed),
    };
    let (user, mine) = tokio::io::duplex(256 * 1024);
    tokio::spawn(bridge(mine, connect_id, tx, inbound));
    Ok(user)
}

/// Relays the duplex half to the Proxy stream until either side ends.
async fn bridge(
    io: DuplexStream,
    connect_id: i64,
    tx: outbound::StreamTx,
    mut inbound: tonic::Streaming<Packet>,
) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async {
        loop {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(packet::close_req(connect_id)).await;
                    return;
                }
                Ok(_) => {
                    if tx
                        .send(packet::data(connect_id, buf.freeze()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        while let Some(Ok(p)) = inbound.next().await {
            match packet::kind(&p) {
                Kind::Known(PacketType::Data) => {
                    let d = packet::into_data(p);
                    if wr.write_all(&d.data).await.is_err() {
                        return;
                    }
                }
                Kind::Known(PacketType::CloseRsp) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    // After our side closes, keep reading until CLOSE_RSP, for at most 10 s (like the
    // Go client's close timeout).
    tokio::select! {
        _ = async { up.await; tokio::time::sleep(Duration::from_secs(10)).await } => {}
        _ = down => {}
    }
    tx.close();
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
