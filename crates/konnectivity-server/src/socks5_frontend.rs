//! The SOCKS5 frontend (`--socks5-port` on a loopback address, `--socks5-uds`): RFC 1928
//! CONNECT with method 0 (no authentication), for tools that speak SOCKS (`curl
//! --socks5-hostname`, browsers, `ssh -o ProxyCommand`), an extension of ours.
//!
//! Per client connection: read the greeting and the request (parsed by
//! `konnectivity_core::socks`, both within `--connect-header-timeout`), then the same
//! tunnel as the HTTP-CONNECT frontend (`stream_tunnel`: state machine, policy, limits,
//! deadline, splice). A domain name is passed through as `name:port` and resolved by
//! the agent on its node. Replies: a greeting without method 0 gets `05 FF`; an
//! unsupported command 0x07, an unknown address type 0x08, another malformed request
//! 0x01; a failed dial the code `DialError::socks_reply` chooses; input that is not
//! SOCKS5 at all is closed without a reply.
//!
//! UDP ASSOCIATE is served by `socks5_udp` with `--enable-udp` on `--socks5-port`
//! only; otherwise (or on `--socks5-uds`) it is answered 0x07.
//!
//! Without `--socks5-auth-file` nobody is authenticated, which is why the port then only
//! binds a loopback address (the UNIX socket is mode 0770). With it, every client must
//! choose method 2 and pass RFC 1929 username/password (checked in constant time by
//! `socks::Users`): a greeting without method 2 gets `05 FF`, wrong credentials `01 01`
//! and a close, both within `--connect-header-timeout`. With `--socks5-tls-*` the port
//! speaks TLS and the handshake has already verified a client certificate (the accept
//! loop of `listen`); the SOCKS5 exchange inside is the same.
use std::sync::Arc;

use bytes::BytesMut;
use konnectivity_core::socks::{
    self, Command, NO_ACCEPTABLE_METHOD, Parsed, Reply, SocksError, USER_PASS, parse_greeting,
    parse_request, parse_user_pass, user_pass_reply,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::socks5_udp::{self, Origin};
use crate::state::Shared;
use crate::status::document::FrontendKind;
use crate::stream_tunnel::{self, Answers, write_close};

const SUCCEEDED: [u8; 10] = Reply::Succeeded.encode();

/// The SOCKS5 answers to a dial's outcome.
const ANSWERS: Answers = Answers {
    established: &SUCCEEDED,
    refused: |e| Some(e.socks_reply().encode().to_vec()),
};

/// Why the handshake ended before a dial.
enum Ended {
    /// The client sent something that is not a valid SOCKS5 message.
    Malformed(SocksError),
    /// It closed, failed, or was too slow: nothing to answer.
    Gone(&'static str),
}

/// Serves one accepted client connection; `origin` is its TCP addresses (`None` on a
/// UNIX socket, where UDP ASSOCIATE is not served).
pub async fn serve<S>(s: Arc<Shared>, mut sock: S, origin: Option<Origin>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let within = s.settings.connect_header_timeout;
    let mut buf = BytesMut::with_capacity(512);
    let handshake = tokio::time::timeout(within, async {
        let greeting = read_message(&mut sock, &mut buf, parse_greeting).await?;
        let users = s.settings.socks5_users.as_deref();
        let method = greeting.choose_with(users.is_some());
        sock.write_all(&[socks::VERSION, method])
            .await
            .map_err(|_| Ended::Gone("write failed"))?;
        if method == NO_ACCEPTABLE_METHOD {
            return Err(Ended::Gone("no acceptable authentication method"));
        }
        if let (USER_PASS, Some(users)) = (method, users) {
            let accepted = match read_message(&mut sock, &mut buf, parse_user_pass).await {
                Ok(c) => users.check(&c),
                Err(Ended::Malformed(_)) => false,
                Err(gone) => return Err(gone),
            };
            sock.write_all(&user_pass_reply(accepted))
                .await
                .map_err(|_| Ended::Gone("write failed"))?;
            if !accepted {
                return Err(Ended::Gone("username/password rejected"));
            }
        }
        read_message(&mut sock, &mut buf, parse_request).await
    })
    .await;
    let req = match handshake {
        Ok(Ok(req)) => req,
        Ok(Err(Ended::Malformed(e))) => {
            debug!(error = %e, "malformed SOCKS5 input");
            return match e.reply() {
                Some(r) => write_close(&mut sock, &r.encode()).await,
                None => {
                    let _ = sock.shutdown().await;
                }
            };
        }
        Ok(Err(Ended::Gone(why))) => {
            debug!(why, "SOCKS5 client gone before its request");
            let _ = sock.shutdown().await;
            return;
        }
        Err(_) => {
            debug!("SOCKS5 handshake not completed in time (--connect-header-timeout)");
            let _ = sock.shutdown().await;
            return;
        }
    };
    if req.command == Command::UdpAssociate {
        return match origin {
            Some(origin) if s.settings.enable_udp => {
                socks5_udp::serve(s, sock, origin, req.destination).await
            }
            _ => {
                debug!("SOCKS5 UDP ASSOCIATE refused: needs --enable-udp and --socks5-port");
                write_close(&mut sock, &Reply::CommandNotSupported.encode()).await
            }
        };
    }
    let address = req.destination.dial_address();
    debug!(%address, "SOCKS5 CONNECT");
    stream_tunnel::run(
        &s,
        sock,
        FrontendKind::Socks5,
        &address,
        buf.freeze(),
        ANSWERS,
    )
    .await;
}

/// Reads until `parse` completes a message (the parsers are bounded: a greeting is at
/// most 257 bytes, a request 262), and consumes it from `buf`.
async fn read_message<S, T>(
    sock: &mut S,
    buf: &mut BytesMut,
    parse: fn(&[u8]) -> Parsed<T>,
) -> Result<T, Ended>
where
    S: AsyncRead + Unpin,
{
    loop {
        match parse(buf) {
            Ok(Some((msg, n))) => {
                let _ = buf.split_to(n);
                return Ok(msg);
            }
            Ok(None) => {}
            Err(e) => return Err(Ended::Malformed(e)),
        }
        match sock.read_buf(buf).await {
            Ok(0) => return Err(Ended::Gone("closed")),
            Ok(_) => {}
            Err(_) => return Err(Ended::Gone("read failed")),
        }
    }
}
