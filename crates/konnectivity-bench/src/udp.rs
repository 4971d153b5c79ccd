//! UDP through separate processes (issue 16 item 6): datagram round trips and loss to a
//! UDP echo backend, direct and through one proxy-server + proxy-agent pair started
//! with `--enable-udp`, by both of the server's UDP entrances: the gRPC frontend's
//! `DialRequest.protocol "udp"` (one datagram per DATA packet) and SOCKS5 UDP
//! ASSOCIATE on `--socks5-port` (a relay socket; one `udp` tunnel connection per
//! destination). Each path is measured idle, then beside a bulk TCP download through
//! the same server and agent. When upstream's binaries are built (`--upstream-bin-dir`,
//! as the `upstream` phase), the two tunneled paths again through our server and
//! upstream's agent (Go `net.Dial("udp")`); without them the phase says so.
//!
//! One run of a path ([`run`]) sends a fixed number of datagrams at a fixed pace
//! ([`PACE`]), each carrying its sequence number and a checked pattern, and reads the
//! echoes in the same task: the sender never waits for a reply, so a path that cannot
//! keep up shows as loss and tail latency rather than a slower pace. An echo that
//! arrives more than [`TIMEOUT`] after its datagram, or never, is lost. The run ends
//! [`TIMEOUT`] after the last datagram at the latest, so every run is bounded in count
//! and time. The client runs on a thread of its own (current-thread runtime) and the
//! echo on another (a blocking socket), as the TCP round trips of `rtt_processes`.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use konnectivity_client::{Frontend, GrpcStream, Socks5Udp};
use konnectivity_core::socks::Destination;
use konnectivity_testkit::pki::Pki;
use konnectivity_testkit::process::free_port;
use serde_json::{Map, Value, json};
use tokio::net::UdpSocket;

use crate::DIAL;
use crate::config::Cfg;
use crate::hops::{Hop, on_own_thread, stoppable_thread};
use crate::load::Background;
use crate::procs::TunnelProcs;
use crate::report::{Results, Row, progress};
use crate::stats::{gbps, latency, num, round};

/// Bytes per datagram (a sequence number and a pattern): a small request, DNS-sized.
const PAYLOAD: usize = 64;
/// One datagram every `PACE`.
const PACE: Duration = Duration::from_millis(1);
/// An echo later than this after its datagram counts as lost.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Stop-and-wait round trips before a run, not counted: the SOCKS5 relay dials its
/// destination on the first datagram, and every path warms its buffers.
const WARMUP: usize = 20;
/// Bound of the warm-up (each round trip is retried every [`TIMEOUT`] until then).
const WARMUP_LIMIT: Duration = Duration::from_secs(10);

/// Where one run's datagrams go.
#[derive(Clone)]
enum Route {
    /// A UDP socket connected to the echo.
    Direct(SocketAddr),
    /// A gRPC frontend's `udp` dial to the echo.
    Grpc(Frontend, SocketAddr),
    /// A SOCKS5 UDP ASSOCIATE at `proxy`, datagrams addressed to `echo`.
    Socks5 { proxy: SocketAddr, echo: SocketAddr },
}

/// An open path to the echo.
enum Conn {
    Direct(UdpSocket, Vec<u8>),
    Grpc(GrpcStream),
    Socks5(Socks5Udp, Destination),
}

impl Route {
    async fn open(&self) -> anyhow::Result<Conn> {
        Ok(match self {
            Route::Direct(echo) => {
                let s = UdpSocket::bind("127.0.0.1:0").await?;
                s.connect(echo).await?;
                Conn::Direct(s, vec![0; 64 * 1024])
            }
            Route::Grpc(f, echo) => Conn::Grpc(
                konnectivity_client::grpc_dial_protocol(f, "udp", &echo.to_string(), DIAL).await?,
            ),
            Route::Socks5 { proxy, echo } => Conn::Socks5(
                Socks5Udp::associate(*proxy, DIAL).await?,
                Destination::from(*echo),
            ),
        })
    }
}

impl Conn {
    async fn send(&mut self, d: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Direct(s, _) => {
                s.send(d).await?;
            }
            Conn::Grpc(g) => g.send_datagram(Bytes::copy_from_slice(d)).await?,
            Conn::Socks5(s, to) => s.send_to(to, d).await?,
        }
        Ok(())
    }

    /// The next datagram from the echo. Cancel-safe (used in `select!`).
    async fn recv(&mut self) -> anyhow::Result<Bytes> {
        match self {
            Conn::Direct(s, buf) => {
                let n = s.recv(buf).await?;
                Ok(Bytes::copy_from_slice(&buf[..n]))
            }
            Conn::Grpc(g) => g
                .recv_datagram()
                .await?
                .context("the tunnel closed the UDP connection"),
            Conn::Socks5(s, echo) => {
                let (from, d) = s.recv_from().await?;
                ensure!(
                    from == *echo,
                    "the relay returned a datagram from {from}, not {echo}"
                );
                Ok(d)
            }
        }
    }
}

/// Datagram `seq`: its sequence number, then a pattern that depends on it.
fn datagram(seq: u64) -> [u8; PAYLOAD] {
    let mut d = [0u8; PAYLOAD];
    d[..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in d[8..].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_add(i as u8);
    }
    d
}

/// The sequence number of an echo, when it is one of ours, intact.
fn echoed_seq(d: &[u8]) -> Option<u64> {
    let seq = u64::from_be_bytes(d.get(..8)?.try_into().ok()?);
    (d == datagram(seq)).then_some(seq)
}

/// What one run saw.
#[derive(Debug, Default)]
struct Outcome {
    /// Round trips of the datagrams echoed within [`TIMEOUT`].
    rtts: Vec<Duration>,
    sent: usize,
    /// Echoes after [`TIMEOUT`] (counted lost) and duplicates.
    late: usize,
    /// Datagrams that are not an intact echo of one we sent.
    corrupt: usize,
}

impl Outcome {
    fn json(mut self) -> Value {
        let echoed = self.rtts.len();
        let lost = self.sent - echoed;
        let mut v = latency(&mut self.rtts);
        v["sent"] = json!(self.sent);
        v["echoed"] = json!(echoed);
        v["lost"] = json!(lost);
        v["loss_percent"] = json!(round(100.0 * lost as f64 / self.sent.max(1) as f64));
        v["late_or_duplicate"] = json!(self.late);
        v["corrupt"] = json!(self.corrupt);
        v
    }
}

/// Stop-and-wait round trips until [`WARMUP`] have been echoed, within
/// [`WARMUP_LIMIT`]. Uses sequence numbers above every run's.
async fn warm_up(c: &mut Conn) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done = 0;
    let mut seq = u64::MAX - WARMUP as u64 * 100;
    while done < WARMUP {
        ensure!(
            started.elapsed() < WARMUP_LIMIT,
            "{done} of {WARMUP} warm-up datagrams echoed within {WARMUP_LIMIT:?}"
        );
        seq += 1;
        c.send(&datagram(seq)).await?;
        let wait = async {
            loop {
                if echoed_seq(&c.recv().await?) == Some(seq) {
                    return anyhow::Ok(());
                }
            }
        };
        if let Ok(r) = tokio::time::timeout(TIMEOUT, wait).await {
            r?;
            done += 1;
        }
    }
    Ok(())
}

/// One run: `n` datagrams at [`PACE`] through `route`, echoes read meanwhile.
async fn run(route: Route, n: usize) -> anyhow::Result<Outcome> {
    let mut c = route.open().await?;
    warm_up(&mut c).await?;
    let mut sent_at: Vec<Option<Instant>> = vec![None; n];
    let mut seen = vec![false; n];
    let mut out = Outcome {
        rtts: Vec::with_capacity(n),
        ..Outcome::default()
    };
    let start = tokio::time::Instant::now();
    let mut last = start;
    loop {
        let all_sent = out.sent >= n;
        if all_sent && out.rtts.len() == n {
            break;
        }
        let next = start + PACE * out.sent as u32;
        tokio::select! {
            biased;
            r = c.recv() => {
                let d = r?;
                let now = Instant::now();
                match echoed_seq(&d).and_then(|s| usize::try_from(s).ok()).filter(|&s| s < n) {
                    Some(s) => match sent_at[s] {
                        Some(t) if !seen[s] && now - t <= TIMEOUT => {
                            seen[s] = true;
                            out.rtts.push(now - t);
                        }
                        Some(_) => out.late += 1,
                        None => out.corrupt += 1,
                    },
                    // A late warm-up echo is ours too; anything else is not.
                    None if echoed_seq(&d).is_some_and(|s| s > u64::MAX / 2) => {}
                    None => out.corrupt += 1,
                }
            }
            _ = tokio::time::sleep_until(next), if !all_sent => {
                c.send(&datagram(out.sent as u64)).await?;
                sent_at[out.sent] = Some(Instant::now());
                out.sent += 1;
                last = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until(last + TIMEOUT), if all_sent => break,
        }
    }
    Ok(out)
}

/// [`run`] on a thread of its own, bounded.
async fn run_on_thread(route: Route, n: usize) -> anyhow::Result<Outcome> {
    let rx = on_own_thread("udp", run(route, n))?;
    let bound = DIAL + WARMUP_LIMIT + PACE * n as u32 * 2 + TIMEOUT + Duration::from_secs(10);
    tokio::time::timeout(bound, rx)
        .await
        .context("the UDP client thread did not finish")?
        .context("the UDP client thread ended without a result")?
}

/// The UDP echo backend on a dedicated OS thread with a blocking socket: every datagram
/// goes back to where it came from. Stops within 100 ms of being dropped.
struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl UdpEcho {
    fn start() -> anyhow::Result<Self> {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").context("binding the UDP echo")?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = s.local_addr()?;
        let stop = stoppable_thread("bench-udp-echo", move |stopped| {
            let mut b = vec![0u8; 64 * 1024];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut b) {
                    let _ = s.send_to(&b[..n], from);
                }
            }
        })
        .context("starting the UDP echo thread")?;
        Ok(Self { addr, stop })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A server + agent pair serving UDP, and its paths.
struct Pair {
    key: &'static str,
    procs: TunnelProcs,
    socks5: SocketAddr,
}

impl Pair {
    async fn start(
        key: &'static str,
        (server, agent): (&Path, &Path),
        pki: &Pki,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let port = free_port();
        let extra = [
            "--enable-udp".to_owned(),
            format!("--socks5-port={port}"),
            "--socks5-bind-address=127.0.0.1".to_owned(),
        ];
        let procs = TunnelProcs::start_programs(
            &format!("udp-{key}"),
            "grpc",
            (server, &extra),
            agent,
            pki,
            dir,
        )
        .await?;
        Ok(Self {
            key,
            procs,
            socks5: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// (JSON key, route) of the pair's two tunneled paths.
    fn routes(&self, echo: SocketAddr) -> [(String, Route); 2] {
        let suffix = if self.key == "ours" {
            String::new()
        } else {
            format!("_{}", self.key)
        };
        [
            (
                format!("grpc_udp{suffix}"),
                Route::Grpc(self.procs.frontend(), echo),
            ),
            (
                format!("socks5_udp{suffix}"),
                Route::Socks5 {
                    proxy: self.socks5,
                    echo,
                },
            ),
        ]
    }
}

/// One path idle, then beside a download through `pair`: `{idle, beside_bulk}`.
async fn measure(
    key: &str,
    route: Route,
    pair: &mut Pair,
    source: SocketAddr,
    n: usize,
) -> anyhow::Result<Value> {
    let idle = run_on_thread(route.clone(), n)
        .await
        .with_context(|| format!("UDP via {key}, idle"))?;
    ensure!(idle.corrupt == 0, "UDP via {key}: corrupt echoes");
    let idle = idle.json();
    let bulk_hop = Hop::Grpc(pair.procs.frontend(), source);
    let bulk = Background::start(bulk_hop.open().await?, key).await?;
    let before = bulk.moved();
    let t0 = Instant::now();
    let r = run_on_thread(route, n).await;
    let window = t0.elapsed();
    let during = bulk.moved() - before;
    let b = bulk.finish(key).await;
    let loaded = r.with_context(|| format!("UDP via {key}, beside bulk"))?;
    b?;
    ensure!(
        loaded.corrupt == 0,
        "UDP via {key} beside bulk: corrupt echoes"
    );
    ensure!(
        during > 0,
        "the bulk transfer through {} did not move during the UDP run",
        pair.key
    );
    let mut loaded = loaded.json();
    loaded["background_gbps"] = json!(round(gbps(during, window)));
    pair.procs.alive()?;
    progress(format!(
        "udp {key:<28} idle p50 {:.0} µs p99 {:.0} µs loss {}%; beside bulk p50 {:.0} µs p99 {:.0} µs loss {}% ({:.2} Gbit/s)",
        num(&idle, &["p50_us"]),
        num(&idle, &["p99_us"]),
        idle["loss_percent"],
        num(&loaded, &["p50_us"]),
        num(&loaded, &["p99_us"]),
        loaded["loss_percent"],
        gbps(during, window)
    ));
    Ok(json!({ "idle": idle, "beside_bulk": loaded }))
}

/// The UDP phase. `upstream`: upstream's (server, agent) when they are built, else why
/// not; only its agent is used (beside our server).
pub(crate) async fn phase_udp(
    cfg: &Cfg,
    (server, agent): (&Path, &Path),
    upstream: Result<(std::path::PathBuf, std::path::PathBuf), String>,
    pki: &Pki,
    dir: &Path,
    source: SocketAddr,
    res: &mut Results,
) -> anyhow::Result<()> {
    let n = cfg.udp_datagrams;
    let echo = UdpEcho::start()?;
    let mut ours = Pair::start("ours", (server, agent), pki, dir).await?;
    let mut paths = Map::new();
    // Direct, beside a download through our pair: what the machine's load alone costs.
    paths.insert(
        "direct".into(),
        measure("direct", Route::Direct(echo.addr), &mut ours, source, n).await?,
    );
    for (key, route) in ours.routes(echo.addr) {
        let v = measure(&key, route, &mut ours, source, n).await?;
        paths.insert(key, v);
    }
    drop(ours);
    let upstream_agent = match upstream {
        Ok((_, up_agent)) => {
            let mut errors = Map::new();
            match Pair::start("upstream_agent", (server, &up_agent), pki, dir).await {
                Ok(mut pair) => {
                    for (key, route) in pair.routes(echo.addr) {
                        // A mixed fleet's failure is a finding: recorded, not fatal.
                        match measure(&key, route, &mut pair, source, n).await {
                            Ok(v) => {
                                paths.insert(key, v);
                            }
                            Err(e) => {
                                progress(format!("udp {key}: {e:#}"));
                                errors.insert(key, json!(format!("{e:#}")));
                            }
                        }
                    }
                }
                Err(e) => {
                    progress(format!("udp: our server + upstream's agent: {e:#}"));
                    errors.insert("start".into(), json!(format!("{e:#}")));
                }
            }
            json!({ "available": true, "errors": errors })
        }
        Err(reason) => {
            progress(format!("udp: upstream's agent not measured: {reason}"));
            json!({ "available": false, "reason": reason })
        }
    };
    drop(echo);
    let p = Value::Object(paths.clone());
    res.sections.push(table(&p, n));
    res.measurements.insert(
        "udp".into(),
        json!({
            "what": format!("{PAYLOAD}-byte datagrams (sequence number + checked pattern), one every {} µs, to a UDP echo on loopback (a dedicated thread); the client on a dedicated thread (current-thread runtime) never waits for replies; an echo later than {} ms counts as lost. direct: a UDP socket; grpc_udp: the gRPC frontend (UNIX socket) with DialRequest.protocol \"udp\"; socks5_udp: SOCKS5 UDP ASSOCIATE on --socks5-port; through separate proxy-server (--enable-udp) + proxy-agent processes; *_upstream_agent: our server with upstream's agent. beside_bulk: while a gRPC TCP download runs through the same server and agent (for direct too)", PACE.as_micros(), TIMEOUT.as_millis()),
            "datagrams_per_run": n,
            "payload_bytes": PAYLOAD,
            "pace_us": PACE.as_micros(),
            "timeout_ms": TIMEOUT.as_millis(),
            "warmup_round_trips": WARMUP,
            "paths": paths,
            "upstream_agent": upstream_agent,
        }),
    );
    let v = |k: &str, run: &str, f: &str| num(&p, &[k, run, f]);
    let loss = |k: &str, run: &str| p[k][run]["loss_percent"].as_f64().unwrap_or(f64::NAN);
    // gRPC "udp"'s round trip in microseconds, against direct (and SOCKS5's).
    let rtt_row = |id: &'static str, label: &str, (run, q): (&str, &str)| {
        let grpc = v("grpc_udp", run, q);
        Row::info(
            id,
            label.into(),
            format!("{grpc:.0} µs"),
            format!(
                "direct {:.0}, SOCKS5 {:.0}",
                v("direct", run, q),
                v("socks5_udp", run, q)
            ),
            Some(grpc / v("direct", run, q)),
            grpc,
            "µs",
        )
    };
    res.rows.extend([
        rtt_row(
            "udp_rtt_p50",
            "UDP RTT p50 idle, gRPC \"udp\", separate processes",
            ("idle", "p50_us"),
        ),
        rtt_row(
            "udp_rtt_p99_loaded",
            "UDP RTT p99 beside bulk, gRPC \"udp\", separate processes",
            ("beside_bulk", "p99_us"),
        ),
        Row::info(
            "udp_loss_loaded",
            "UDP loss beside bulk, gRPC \"udp\" / SOCKS5".into(),
            format!(
                "{}% / {}%",
                loss("grpc_udp", "beside_bulk"),
                loss("socks5_udp", "beside_bulk")
            ),
            format!(
                "direct {}% (idle: {}% / {}%)",
                loss("direct", "beside_bulk"),
                loss("grpc_udp", "idle"),
                loss("socks5_udp", "idle")
            ),
            None,
            loss("grpc_udp", "beside_bulk"),
            "%",
        ),
    ]);
    Ok(())
}

/// The phase's own table: every path, idle and beside bulk.
fn table(p: &Value, n: usize) -> String {
    let mut t = format!(
        "UDP round trips: {n} × {PAYLOAD}-byte datagrams, one every {} µs, echo on loopback, \
         separate processes (lost = no echo within {} ms)\n{:<30}  {:>8}  {:>8}  {:>6}  {:>8}  {:>8}  {:>6}  {:>10}",
        PACE.as_micros(),
        TIMEOUT.as_millis(),
        "path",
        "p50 µs",
        "p99 µs",
        "loss",
        "bulk p50",
        "bulk p99",
        "loss",
        "bulk Gb/s"
    );
    if let Value::Object(m) = p {
        for (k, r) in m {
            let f = |run: &str, x: &str| num(r, &[run, x]);
            t.push_str(&format!(
                "\n{k:<30}  {:>8.0}  {:>8.0}  {:>5}%  {:>8.0}  {:>8.0}  {:>5}%  {:>10.2}",
                f("idle", "p50_us"),
                f("idle", "p99_us"),
                r["idle"]["loss_percent"],
                f("beside_bulk", "p50_us"),
                f("beside_bulk", "p99_us"),
                r["beside_bulk"]["loss_percent"],
                f("beside_bulk", "background_gbps"),
            ));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_recognised_only_intact() {
        let d = datagram(1234);
        assert_eq!(echoed_seq(&d), Some(1234));
        let mut bad = d;
        bad[PAYLOAD - 1] ^= 1;
        assert_eq!(echoed_seq(&bad), None);
        assert_eq!(echoed_seq(&d[..PAYLOAD - 1]), None);
        assert_eq!(echoed_seq(&[]), None);
    }

    #[tokio::test]
    async fn a_direct_run_counts_every_datagram() {
        let echo = UdpEcho::start().unwrap();
        let out = run(Route::Direct(echo.addr), 50).await.unwrap();
        assert_eq!(out.sent, 50);
        assert_eq!(out.corrupt, 0);
        assert_eq!(out.rtts.len() + out.late, 50);
    }
}
