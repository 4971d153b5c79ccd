//! Dials destinations on the node, with upstream's fixed 5 s timeout and Go's error
//! texts (which reach kube-apiserver users verbatim).
use std::net::SocketAddr;
use std::time::Duration;

use konnectivity_core::address::{
    DialFailure, bad_address_text, connect_error_text, lookup_error_text,
};
use konnectivity_core::policy::DestinationPolicy;
use tokio::net::{TcpStream, UdpSocket};

/// Upstream's dial timeout.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a TCP connection to `address` (`host:port`). Names resolve on the node.
/// Resolved addresses the `policy` denies are not dialed.
pub async fn dial(
    address: &str,
    timeout: Duration,
    policy: &DestinationPolicy,
) -> Result<TcpStream, (String, DialFailure)> {
    let Some((host, _port)) = address.rsplit_once(':') else {
        return Err((bad_address_text(address), DialFailure::Unknown));
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let attempt = first_allowed(address, &host, policy, TcpStream::connect);
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err((
            format!("dial tcp {address}: i/o timeout"),
            DialFailure::Timeout,
        )),
    }
}

/// Resolves `address` (whose host is `host`) on the node and `connect`s to each resolved
/// address the `policy` allows, in order, until one succeeds. Errors are Go's `dial tcp`
/// texts for the last address tried.
async fn first_allowed<S, F>(
    address: &str,
    host: &str,
    policy: &DestinationPolicy,
    connect: impl Fn(SocketAddr) -> F,
) -> Result<S, (String, DialFailure)>
where
    F: std::future::Future<Output = std::io::Result<S>>,
{
    let addrs: Vec<_> = tokio::net::lookup_host(address)
        .await
        .map_err(|e| (lookup_error_text(host, &e), DialFailure::Unknown))?
        .collect();
    let mut last = None;
    for a in addrs {
        if let Err(e) = policy.check_resolved(a) {
            last = Some((e, DialFailure::Unknown));
            continue;
        }
        match connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(connect_error_text(&a.to_string(), &e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        (
            format!("dial tcp: lookup {host}: no such host"),
            DialFailure::Unknown,
        )
    }))
}

/// Opens a UDP socket connected to `address` (`host:port`), like Go's
/// `net.Dial("udp")`: names resolve on the node, the `policy` applies to every resolved
/// address, and the first allowed one is used (connecting a UDP socket sends nothing).
/// Error texts are Go's, `dial udp …`.
pub async fn dial_udp(
    address: &str,
    timeout: Duration,
    policy: &DestinationPolicy,
) -> Result<UdpSocket, (String, DialFailure)> {
    let udp = |(text, why): (String, DialFailure)| (text.replacen("dial tcp", "dial udp", 1), why);
    let Some((host, _port)) = address.rsplit_once(':') else {
        return Err(udp((bad_address_text(address), DialFailure::Unknown)));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let attempt = first_allowed(address, host, policy, |a: SocketAddr| async move {
        let local: SocketAddr = if a.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(local).await?;
        s.connect(a).await.map(|()| s)
    });
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r.map_err(udp),
        Err(_) => Err((
            format!("dial udp {address}: i/o timeout"),
            DialFailure::Timeout,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_reports_connection_refused_like_go() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let (text, why) = dial(&addr, DIAL_TIMEOUT, &DestinationPolicy::default())
            .await
            .unwrap_err();
        assert_eq!(
            text,
            format!("dial tcp {addr}: connect: connection refused")
        );
        assert_eq!(why, DialFailure::Unknown);
    }

    #[tokio::test]
    async fn an_unknown_name_reports_no_such_host() {
        let (text, _) = dial(
            "thisdefinitelydoesnotexist.invalid:80",
            DIAL_TIMEOUT,
            &DestinationPolicy::default(),
        )
        .await
        .unwrap_err();
        assert!(text.contains("no such host"), "{text}");
    }

    /// A policy allowing only 10.0.0.0/8 (so not what `localhost` resolves to).
    fn only_10() -> DestinationPolicy {
        DestinationPolicy::parse(&["10.0.0.0/8".into()], &[]).unwrap()
    }

    /// Asserts that the destination policy refused the dial.
    async fn assert_denied<T: std::fmt::Debug>(
        dialing: impl std::future::Future<Output = Result<T, (String, DialFailure)>>,
    ) {
        let (text, _) = dialing.await.unwrap_err();
        assert!(
            text.contains("denied by the agent's destination policy"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_agents_destination_policy_is_checked_after_resolution() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let localhost = format!("localhost:{}", addr.port());
        assert_denied(dial(&localhost, DIAL_TIMEOUT, &only_10())).await;
        dial(
            &addr.to_string(),
            DIAL_TIMEOUT,
            &DestinationPolicy::default(),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn udp_dials_connect_and_the_policy_applies_after_resolution() {
        let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = dest.local_addr().unwrap();
        let s = dial_udp(
            &addr.to_string(),
            DIAL_TIMEOUT,
            &DestinationPolicy::default(),
        )
        .await
        .unwrap();
        assert_eq!(s.peer_addr().unwrap(), addr);
        let localhost = format!("localhost:{}", addr.port());
        assert_denied(dial_udp(&localhost, DIAL_TIMEOUT, &only_10())).await;
        let (text, _) = dial_udp("nohost", DIAL_TIMEOUT, &DestinationPolicy::default())
            .await
            .unwrap_err();
        assert_eq!(text, "dial udp: address nohost: missing port in address");
    }

    #[tokio::test]
    async fn an_address_without_port_is_rejected() {
        let (text, _) = dial("nohost", DIAL_TIMEOUT, &DestinationPolicy::default())
            .await
            .unwrap_err();
        assert!(text.contains("missing port"), "{text}");
    }
}
