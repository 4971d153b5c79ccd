//! The SOCKS5 frontend (issue 16): CONNECT by IP and by name through a real server and
//! agent, dial failures answered with the reply code `DialError::socks_reply` chose,
//! and malformed input answered or closed without disturbing other tunnels.
use std::path::Path;
use std::time::Duration;

use konnectivity_core::policy::DestinationPolicy;
use konnectivity_testkit::inproc::Harness;
use konnectivity_testkit::servers;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::{echoes, one_agent, one_agent_and_echo};

const T: Duration = Duration::from_secs(30);

/// A CONNECT request for `host:port` (an IP literal or a name).
fn request(host: &str, port: u16) -> Vec<u8> {
    let mut r = vec![5, 1, 0];
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            r.push(1);
            r.extend_from_slice(&ip.octets());
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            r.push(4);
            r.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            r.push(3);
            r.push(host.len() as u8);
            r.extend_from_slice(host.as_bytes());
        }
    }
    r.extend_from_slice(&port.to_be_bytes());
    r
}

/// Greets (method 0), sends `req`, and returns the socket and the reply code.
async fn socks_connect(path: &Path, req: &[u8]) -> anyhow::Result<(UnixStream, u8)> {
    let mut s = UnixStream::connect(path).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut method = [0u8; 2];
    tokio::time::timeout(T, s.read_exact(&mut method)).await??;
    anyhow::ensure!(method == [5, 0], "method reply {method:?}");
    s.write_all(req).await?;
    let mut reply = [0u8; 10];
    tokio::time::timeout(T, s.read_exact(&mut reply)).await??;
    anyhow::ensure!(reply[0] == 5 && reply[2] == 0, "reply {reply:?}");
    Ok((s, reply[1]))
}

/// Everything the server sends until it closes the socket.
async fn rest(s: &mut UnixStream) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out)).await??;
    Ok(out)
}

#[tokio::test(start_paused = true)]
async fn socks5_connects_by_ip_and_by_name_the_agent_resolves() -> anyhow::Result<()> {
    let (_h, server, _agent, echo) = one_agent_and_echo().await?;
    let (mut by_ip, code) =
        socks_connect(&server.socks5, &request("127.0.0.1", echo.port())).await?;
    assert_eq!(code, 0);
    echoes(&mut by_ip, b"by ip").await?;
    let (mut by_name, code) =
        socks_connect(&server.socks5, &request("localhost", echo.port())).await?;
    assert_eq!(code, 0);
    echoes(&mut by_name, b"by name").await?;
    // Bytes pipelined right behind the request are not lost.
    let mut s = UnixStream::connect(&server.socks5).await?;
    let mut all = vec![5, 1, 0];
    all.extend(request("127.0.0.1", echo.port()));
    all.extend_from_slice(b"early");
    s.write_all(&all).await?;
    let mut back = [0u8; 2 + 10 + 5];
    tokio::time::timeout(T, s.read_exact(&mut back)).await??;
    assert_eq!(&back[..3], &[5, 0, 5]);
    assert_eq!(back[3], 0, "succeeded");
    assert_eq!(&back[12..], b"early");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn socks5_dial_failures_get_their_reply_codes() -> anyhow::Result<()> {
    let (h, server, _agent) = one_agent(Harness::server_settings()).await?;
    let closed = servers::closed_port()?;
    let (_, refused) = socks_connect(&server.socks5, &request("127.0.0.1", closed.port())).await?;
    assert_eq!(refused, 0x05, "connection refused");
    let hang = servers::unresponsive()?;
    let (_, slow) = socks_connect(
        &server.socks5,
        &request(&hang.addr().ip().to_string(), hang.addr().port()),
    )
    .await?;
    assert_eq!(slow, 0x04, "the agent's dial timed out: host unreachable");
    let (_, unknown) = socks_connect(&server.socks5, &request("no-such-host.invalid", 80)).await?;
    assert_eq!(unknown, 0x04, "the agent's node cannot resolve it");

    let mut settings = Harness::server_settings();
    settings.policy =
        DestinationPolicy::parse(&["127.0.0.0/8".into()], &[]).map_err(|e| anyhow::anyhow!(e))?;
    let lonely = h.server(settings).await?;
    let (_, denied) = socks_connect(&lonely.socks5, &request("10.1.2.3", 80)).await?;
    assert_eq!(denied, 0x02, "not allowed by ruleset");
    let (_, none) = socks_connect(&lonely.socks5, &request("127.0.0.1", 80)).await?;
    assert_eq!(none, 0x03, "no agent: network unreachable");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn malformed_socks5_input_is_answered_or_closed_and_other_tunnels_carry_on()
-> anyhow::Result<()> {
    let (_h, server, _agent, echo) = one_agent_and_echo().await?;
    let mut victim = server.grpc_dial(echo).await?;
    echoes(&mut victim, b"before").await?;
    let (mut socks_victim, _) =
        socks_connect(&server.socks5, &request("127.0.0.1", echo.port())).await?;

    let mut name_with_colon = vec![5, 1, 0, 5, 1, 0, 3, 3];
    name_with_colon.extend_from_slice(b"a:b\x00\x50");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("SOCKS4", vec![4, 1, 0, 80, 127, 0, 0, 1, 0], vec![]),
        ("HTTP", b"GET / HTTP/1.1\r\n\r\n".to_vec(), vec![]),
        ("no methods", vec![5, 0], vec![]),
        ("no acceptable method", vec![5, 2, 1, 2], vec![5, 0xFF]),
        (
            "BIND",
            vec![5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80],
            vec![5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "UDP ASSOCIATE",
            vec![5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0],
            vec![5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "address type 2",
            vec![5, 1, 0, 5, 1, 0, 2, 1, 2],
            vec![5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "reserved byte",
            vec![5, 1, 0, 5, 1, 7, 1, 127, 0, 0, 1, 0, 80],
            vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "name with a colon",
            name_with_colon,
            vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "truncated request, then EOF",
            vec![5, 1, 0, 5, 1, 0, 1, 127],
            vec![5, 0],
        ),
    ];
    for (what, send, want) in cases {
        let mut s = UnixStream::connect(&server.socks5).await?;
        s.write_all(&send).await?;
        if what.ends_with("EOF") {
            s.shutdown().await?;
        }
        let got = rest(&mut s)
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        assert_eq!(got, want, "{what}");
        echoes(&mut victim, what.as_bytes()).await?;
        echoes(&mut socks_victim, what.as_bytes()).await?;
    }

    // A client that never finishes its greeting is cut off at --connect-header-timeout.
    let mut slow = UnixStream::connect(&server.socks5).await?;
    slow.write_all(&[5]).await?;
    let started = tokio::time::Instant::now();
    let cutoff = server.shared.settings.connect_header_timeout;
    let mut out = Vec::new();
    tokio::time::timeout(cutoff * 2, slow.read_to_end(&mut out)).await??;
    assert!(out.is_empty());
    crate::assert_at(started.elapsed(), cutoff);
    echoes(&mut victim, b"after").await?;
    Ok(())
}
