//! A loopback TCP relay that a test can freeze, cut or turn into a refusing port: the
//! link between an agent and a server, made breakable.
//!
//! Put it between a proxy-agent and the server's agent port to model what the network
//! does to a long-lived stream: a silent black hole ([`Link::Frozen`]: nothing is read
//! or written, so keepalive pings go unanswered), a server that went away
//! ([`Link::Refusing`]: live connections are closed, new ones accepted and closed at
//! once), and recovery ([`Link::Forwarding`]). Every accepted connection is recorded
//! with the (tokio) time it arrived, which shows a client's reconnect schedule.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the relay does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow both ways.
    Forwarding,
    /// Connections stay open but no byte moves in either direction (new connections
    /// are accepted and held). Back to [`Link::Forwarding`], they resume.
    Frozen,
    /// Live connections are closed; new ones are accepted and closed at once.
    Refusing,
}

/// A relay from a loopback port to `target`. Stops when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    /// The mode every connection task follows; dropping it stops them all.
    link: watch::Sender<Link>,
    accepted: Arc<Mutex<Vec<Instant>>>,
}

impl Relay {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (link, rx) = watch::channel(Link::Forwarding);
        let accepted = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(accept_loop(listener, target, rx, accepted.clone()));
        Ok(Self {
            addr,
            link,
            accepted,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches every connection, live and future, to `link`.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// When each connection was accepted, in order.
    pub fn accepted(&self) -> Vec<Instant> {
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mut link: watch::Receiver<Link>,
    accepted: Arc<Mutex<Vec<Instant>>>,
) {
    loop {
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            r = link.changed() => match r {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now());
        tokio::spawn(connection(sock, target, link.clone()));
    }
}

/// Waits while the link is frozen; false once it is refusing or the relay is gone.
async fn until_forwarding(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        match *link.borrow_and_update() {
            Link::Forwarding => return true,
            Link::Refusing => return false,
            Link::Frozen => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}

async fn connection(client: TcpStream, target: SocketAddr, mut link: watch::Receiver<Link>) {
    if !until_forwarding(&mut link).await {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(pump(cr, sw, link.clone()), pump(sr, cw, link));
}

/// Copies one direction while the link forwards; ends (dropping, i.e. closing, both
/// halves) when the link refuses or the relay is dropped.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !until_forwarding(&mut link).await {
            return;
        }
        tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            // Re-check the mode (a read is cancel-safe: nothing was consumed).
            r = link.changed() => if r.is_err() {
                return;
            },
        }
    }
}
