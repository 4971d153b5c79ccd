//! Where the `:authority` rewrite applies: the gRPC frontend on a UNIX socket (grpc-go
//! names the socket path there), and not the gRPC frontend on mTLS TCP, whose
//! connections reach the HTTP/2 server as the client sent them.
//!
//! One in-process server with both frontends; a hand-written HTTP/2 client sends one
//! request whose `:authority` is a percent-encoded socket path and reports how the
//! server answered its stream.
use std::sync::Arc;
use std::time::Duration;

use konnectivity_server::{Frontend, FrontendListener, Listeners, Mode, Settings, Shared};
use konnectivity_tls::{MinVersion, ServerName, TlsConnector};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// What grpc-go sends as `:authority` when it dials a UNIX socket.
const SOCKET_PATH_AUTHORITY: &str =
    "%2Fetc%2Fkubernetes%2Fkonnectivity-server%2Fkonnectivity-server.socket";

/// The HTTP/2 frame types this client sends or reads (RFC 9113 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameType {
    Headers,
    RstStream,
    Settings,
    GoAway,
}

impl FrameType {
    /// The type's code on the wire.
    fn code(self) -> u8 {
        match self {
            Self::Headers => 0x1,
            Self::RstStream => 0x3,
            Self::Settings => 0x4,
            Self::GoAway => 0x7,
        }
    }

    /// The type whose wire code is `code`, when this client knows it.
    fn of(code: u8) -> Option<Self> {
        [Self::Headers, Self::RstStream, Self::Settings, Self::GoAway]
            .into_iter()
            .find(|t| t.code() == code)
    }
}

/// HEADERS flags (RFC 9113 §6.2): the last frame of the stream, and of the header block.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// How the server answered stream 1.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Response headers: the request reached the gRPC router.
    Headers,
    /// RST_STREAM with this error code (1 is PROTOCOL_ERROR).
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection ended first.
    Closed,
}

fn frame(kind: FrameType, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind.code(), flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literals without indexing (§6.2.2), names and values as they are.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0x00);
        for s in [name, value] {
            b.push(u8::try_from(s.len()).expect("string under 127 bytes"));
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

/// Sends one gRPC request (no body) on stream 1 and reads until the server answers it.
async fn ask(mut io: impl AsyncRead + AsyncWrite + Unpin, scheme: &str, authority: &str) -> Answer {
    let request = block(&[
        (":method", "POST"),
        (":scheme", scheme),
        (":path", "/konnectivity.Test/Nothing"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(FrameType::Settings, 0, 0, &[]));
    out.extend(frame(
        FrameType::Headers,
        END_HEADERS | END_STREAM,
        1,
        &request,
    ));
    io.write_all(&out).await.expect("send the request");
    let answer = async {
        loop {
            let mut head = [0u8; 9];
            if io.read_exact(&mut head).await.is_err() {
                return Answer::Closed;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if io.read_exact(&mut payload).await.is_err() {
                return Answer::Closed;
            }
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            };
            match (FrameType::of(head[3]), stream) {
                (Some(FrameType::Headers), 1) => return Answer::Headers,
                (Some(FrameType::RstStream), 1) => return Answer::Reset(code(0)),
                (Some(FrameType::GoAway), _) => return Answer::GoAway(code(4)),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the server answers within 10 s")
}

#[tokio::test]
async fn socket_path_authority_is_rewritten_on_the_uds_frontend_only() {
    konnectivity_tls::install_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = konnectivity_testkit::pki::generate(dir.path(), &[]).expect("PKI");
    let (cert, key, ca) = (&pki.server_cert, &pki.server_key, &pki.ca);
    let agent_tls = konnectivity_tls::agent_listener(cert, key, Some(ca), MinVersion::default())
        .expect("agent TLS");
    let frontend_tls =
        konnectivity_tls::frontend_listener(cert, key, ca, false, MinVersion::default())
            .expect("frontend TLS");
    let sock = dir.path().join("frontend.socket");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tcp_addr = tcp.local_addr().expect("address");
    let listeners = Listeners {
        agent: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        agent_tls: Arc::new(agent_tls),
        frontends: vec![
            Frontend {
                mode: Mode::Grpc,
                listener: FrontendListener::Uds(UnixListener::bind(&sock).expect("bind")),
            },
            Frontend {
                mode: Mode::Grpc,
                listener: FrontendListener::Tcp(tcp, Arc::new(frontend_tls)),
            },
        ],
        health: None,
        admin: None,
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(konnectivity_server::run_with(
        Shared::new(Settings::default()),
        listeners,
        shutdown.clone(),
    ));

    let client_tls = Arc::new(
        konnectivity_tls::client(ca, Some((&pki.client_cert, &pki.client_key)), &[b"h2"])
            .expect("client TLS"),
    );
    let uds = || async {
        UnixStream::connect(&sock)
            .await
            .expect("connect to the socket")
    };
    let tls = || async {
        let tcp = TcpStream::connect(tcp_addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("server name");
        TlsConnector::from(client_tls.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    };

    // On the socket the path authority is replaced, and the request is routed.
    assert_eq!(
        ask(uds().await, "http", SOCKET_PATH_AUTHORITY).await,
        Answer::Headers
    );
    assert_eq!(ask(uds().await, "http", "localhost").await, Answer::Headers);
    // Over mTLS TCP a valid authority is routed, and the path authority reaches the
    // HTTP/2 server as sent, which refuses the stream (PROTOCOL_ERROR): nothing
    // rewrote it.
    let valid = tcp_addr.to_string();
    assert_eq!(ask(tls().await, "https", &valid).await, Answer::Headers);
    assert_eq!(
        ask(tls().await, "https", SOCKET_PATH_AUTHORITY).await,
        Answer::Reset(1)
    );

    shutdown.cancel();
    server
        .await
        .expect("server task")
        .expect("server ends cleanly");
}
