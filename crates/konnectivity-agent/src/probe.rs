//! The TCP connect to a proxy-server, probing while nothing answers.
//!
//! One `connect()` waits on the kernel's SYN resends (1, 3, 7 s after the first), so
//! after a partition heals the agent could stay silent for seconds. Here the first
//! connect is kept for the whole [`CONNECT_DEADLINE`] (a slow link still gets its
//! answer) and beside it a fresh connect starts every [`probe_gap`] (0.5–0.8 s), each
//! replacing the previous probe: at most two connects are in flight, and a SYN leaves
//! at most 0.8 s after the network heals. The schedule and why it cannot turn into a
//! storm are in [`crate::backoff`].
//!
//! The first connect to succeed wins; the other is dropped (if the network healed
//! under both, the server sees one extra TCP connection close before its TLS
//! handshake). A connect the server's host answered (refused,
//! reset) ends the attempt at once: that is [`Failure::Answered`] and the sync loop
//! backs off. "Host/network unreachable" and silence keep the probes going until the
//! deadline ([`Failure::Unanswered`]), so no failure returns quickly enough to spin.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::backoff::{CONNECT_DEADLINE, Failure, probe_gap};

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connect was answered before the deadline.
    #[error("i/o timeout")]
    Unanswered,
    /// The server's host answered with an error (e.g. connection refused).
    #[error(transparent)]
    Answered(io::Error),
}

impl ConnectError {
    /// Which schedule the sync loop follows after this.
    pub fn failure(&self) -> Failure {
        match self {
            ConnectError::Unanswered => Failure::Unanswered,
            ConnectError::Answered(_) => Failure::Answered,
        }
    }
}

/// Errors that mean no server saw the SYN: keep probing.
fn unanswered(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::TimedOut
    )
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

fn start(addr: SocketAddr) -> Connecting {
    Box::pin(TcpStream::connect(addr))
}

/// The connect in `slot`, or never when there is none.
async fn pending_or(slot: &mut Option<Connecting>) -> io::Result<TcpStream> {
    match slot.as_mut() {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

/// What one attempt's result decides: the connection, or an answer that ends the
/// probing; `None` while unanswered (keep waiting for the other attempts).
fn settled(r: std::io::Result<TcpStream>) -> Option<Result<TcpStream, ConnectError>> {
    match r {
        Ok(s) => Some(Ok(s)),
        Err(e) if unanswered(&e) => None,
        Err(e) => Some(Err(ConnectError::Answered(e))),
    }
}

/// Connects to `addr`: the first connect lives until [`CONNECT_DEADLINE`], and a fresh
/// probe replaces the previous one every 0.5–0.8 s until one is answered.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let deadline = Instant::now() + CONNECT_DEADLINE;
    let mut first: Option<Connecting> = Some(start(addr));
    let mut probe: Option<Connecting> = None;
    let mut next_probe = Instant::now() + probe_gap(rand::rng().random());
    // Bounded: the deadline ends the loop, and probes start at most every 0.5 s.
    loop {
        tokio::select! {
            r = pending_or(&mut first) => {
                first = None;
                if let Some(done) = settled(r) {
                    return done;
                }
            }
            r = pending_or(&mut probe) => {
                probe = None;
                if let Some(done) = settled(r) {
                    return done;
                }
            }
            _ = tokio::time::sleep_until(next_probe) => {
                probe = Some(start(addr));
                next_probe = Instant::now() + probe_gap(rand::rng().random());
            }
            _ = tokio::time::sleep_until(deadline) => return Err(ConnectError::Unanswered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listening_server_is_connected_at_once() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = connect(addr).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), addr);
    }

    #[tokio::test]
    async fn a_refused_connect_is_answered_and_returns_at_once() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let started = std::time::Instant::now();
        let e = connect(addr).await.unwrap_err();
        assert_eq!(e.failure(), Failure::Answered);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_unanswered_after_the_whole_deadline() {
        // A listener whose accept queue is full: the kernel drops every SYN.
        let silent = konnectivity_testkit::servers::unresponsive().unwrap();
        let started = Instant::now();
        let e = connect(silent.addr()).await.unwrap_err();
        assert_eq!(e.failure(), Failure::Unanswered);
        assert!(started.elapsed() >= CONNECT_DEADLINE);
        assert!(started.elapsed() < CONNECT_DEADLINE + std::time::Duration::from_millis(50));
    }
}
