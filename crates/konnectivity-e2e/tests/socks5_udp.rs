//! SOCKS5 UDP ASSOCIATE with a real client library (issue 16 item 5): Debian's
//! PySocks (`python3-socks`) in the control-plane namespace opens a
//! `socks.socksocket(AF_INET, SOCK_DGRAM)` through proxy-server's `--socks5-port`
//! (`--enable-udp`) and asks Debian's dnsmasq in a firewalled node namespace, through
//! our agent or upstream's, for a name only it knows. Then the hostile part: datagrams with a short
//! header, a bad ATYP, FRAG != 0, and valid ones from foreign source addresses reach
//! the relay socket, are dropped, and the association still answers the next query.
//! Needs root, `ip netns`, iptables, dnsmasq and python3-socks (scripts/setup.sh);
//! fails (does not skip) without.
use std::time::Duration;

use konnectivity_e2e::netns::{Link, firewall_inbound, output, succeeds};
use konnectivity_e2e::{AgentKind, ServerSpec, free_port, start_across, temp_pki};

mod dns;
use dns::{ANSWER, NAME, a_answers, a_query, dnsmasq};

/// Debian's python, which has the `socks` module (a pyenv one on PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// argv: SOCKS5 port, DNS server IP, then hex of: the first query, a query only sent
/// in malformed or foreign datagrams, the last query. Prints the hex of the two
/// answers PySocks receives; exits 1 if a foreign sender got an answer.
const CLIENT: &str = r#"
import socket, sys
import socks
port, dns_ip = int(sys.argv[1]), sys.argv[2]
first, bad, last = (bytes.fromhex(a) for a in sys.argv[3:6])
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", port)
s.settimeout(10)
s.sendto(first, (dns_ip, 53))
print(s.recv(4096).hex(), flush=True)
relay = socket.socket.getpeername(s)
addr = socket.inet_aton(dns_ip) + (53).to_bytes(2, "big")
for junk in [b"\0", b"\0\0\0\x01\x0a", b"\0\0\0\x09" + addr + bad, b"\0\0\x01\x01" + addr + bad]:
    socket.socket.send(s, junk)
for src in ["127.0.0.2", "127.0.0.1"]:
    f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    f.bind((src, 0))
    f.settimeout(1)
    f.sendto(b"\0\0\0\x01" + addr + bad, relay)
    try:
        f.recv(4096)
        print("a foreign sender got an answer", file=sys.stderr)
        sys.exit(1)
    except socket.timeout:
        pass
s.sendto(last, (dns_ip, 53))
print(s.recv(4096).hex(), flush=True)
"#;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[test]
fn pysocks_resolves_through_udp_associate_and_malformed_datagrams_are_dropped() {
    pysocks_through_udp_associate(false, "s5u", 200);
}

/// The mixed fleet: upstream's v0.36.0 agent in the node namespace serves the
/// association's `udp` dials (Go's `net.Dial("udp")`, one datagram per DATA packet).
#[test]
fn pysocks_resolves_through_udp_associate_with_upstreams_agent() {
    pysocks_through_udp_associate(true, "s5v", 150);
}

fn pysocks_through_udp_associate(upstream_agent: bool, tag: &str, subnet: u8) {
    assert!(
        succeeds("", &[PYTHON, "-c", "import socks"]),
        "python3-socks is installed (scripts/setup.sh)"
    );
    let link = Link::create(tag, subnet + (std::process::id() % 50) as u8);
    firewall_inbound(&link.node);
    let (dir, pki) = temp_pki(&[&link.cp_ip]).expect("pki");
    let d = dir.path();
    let _dns = dnsmasq(&link.node_ip, 53, Some(&link.node), d);

    let socks_port = free_port();
    let spec = ServerSpec {
        bind: link.cp_ip.clone(),
        extra: vec!["--enable-udp".into(), format!("--socks5-port={socks_port}")],
        ..ServerSpec::grpc_uds(d.join("konnectivity.sock"))
    };
    let kind = if upstream_agent {
        AgentKind::Upstreams
    } else {
        AgentKind::Ours
    };
    let (server, ports, agent, _) =
        start_across(&link, &pki, &spec, kind, d).expect("server and agent");

    let (first, bad, last) = (
        a_query(0x6161, NAME),
        a_query(0x6262, NAME),
        a_query(0x6363, NAME),
    );
    let port = socks_port.to_string();
    let args = [hex(&first), hex(&bad), hex(&last)];
    let mut out = None;
    // dnsmasq may still be starting: a first query can go unanswered.
    for _ in 0..5 {
        out = output(
            &link.cp,
            &[
                PYTHON,
                "-c",
                CLIENT,
                &port,
                &link.node_ip,
                &args[0],
                &args[1],
                &args[2],
            ],
        );
        if out.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = out.expect("PySocks gets both answers, no foreign sender gets one");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        a_answers(&first, &unhex(lines[0])),
        Ok(vec![ANSWER]),
        "the first answer"
    );
    // Had a malformed or foreign datagram been relayed, its answer (ID 0x6262) would
    // have come first.
    assert_eq!(
        a_answers(&last, &unhex(lines[1])),
        Ok(vec![ANSWER]),
        "the answer after the junk"
    );
    // The server counted what it dropped (each attempt sends the same junk).
    let metrics = output(
        &link.cp,
        &[
            "curl",
            "-sf",
            "-m",
            "5",
            &format!("http://{}:{}/metrics", link.cp_ip, ports.health),
        ],
    )
    .unwrap_or_default();
    let count = |reason: &str| {
        let key = format!(
            "konnectivity_rs_server_socks5_udp_datagrams_dropped_total{{reason=\"{reason}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("foreign_source") >= 2, "{metrics}");
    assert!(count("malformed") >= 4, "{metrics}");
    assert!(server.child_alive() && agent.child_alive());
}
