//! A real DNS server for the UDP tests (udp.rs, socks5_udp.rs): Debian's dnsmasq
//! answering one name only it knows, and an RFC 1035 A query and its answer's parser.
use std::path::{Path, PathBuf};

use konnectivity_e2e::Proc;

/// The name only the test's dnsmasq knows.
pub const NAME: &str = "kubelet.node-only.test";
/// Its A record.
pub const ANSWER: [u8; 4] = [10, 77, 0, 42];

/// dnsmasq as a plain DNS server: no config file, no system resolver, no hosts file,
/// bound to `ip:port` only, answering `NAME` with `ANSWER`.
pub fn dnsmasq(ip: &str, port: u16, netns: Option<&str>, dir: &Path) -> Proc {
    let program = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("dnsmasq is installed (scripts/setup.sh: dnsmasq-base)");
    let a = ANSWER;
    let args: Vec<String> = [
        "--no-daemon".to_owned(),
        "--conf-file=/dev/null".to_owned(),
        "--no-resolv".to_owned(),
        "--no-hosts".to_owned(),
        "--pid-file".to_owned(),
        "--user=root".to_owned(),
        "--bind-interfaces".to_owned(),
        format!("--listen-address={ip}"),
        format!("--port={port}"),
        format!("--address=/{NAME}/{}.{}.{}.{}", a[0], a[1], a[2], a[3]),
    ]
    .into();
    Proc::spawn("dnsmasq", &program, &args, netns, dir).expect("dnsmasq starts")
}

/// A DNS query (RFC 1035 §4.1) for the A record of `name`, with recursion desired.
pub fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; QDCOUNT 1
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, QTYPE A, QCLASS IN
    q
}

/// The IPv4 addresses of the A records in the answer section of `rsp` to the query
/// `query` (same ID, no error).
pub fn a_answers(query: &[u8], rsp: &[u8]) -> Result<Vec<[u8; 4]>, String> {
    let short = || format!("short DNS response: {rsp:?}");
    if rsp.len() < query.len() || rsp[..2] != query[..2] {
        return Err(format!("not the answer to our query: {rsp:?}"));
    }
    if rsp[3] & 0x0f != 0 {
        return Err(format!("DNS error rcode {}", rsp[3] & 0x0f));
    }
    let answers = u16::from_be_bytes([rsp[6], rsp[7]]);
    // The question is echoed as sent; answers follow it.
    let mut at = query.len();
    let mut out = Vec::new();
    for _ in 0..answers {
        // The owner name: a compression pointer, or labels up to the root.
        loop {
            let len = *rsp.get(at).ok_or_else(short)?;
            if len & 0xc0 == 0xc0 {
                at += 2;
                break;
            }
            at += 1 + len as usize;
            if len == 0 {
                break;
            }
        }
        let fixed = rsp.get(at..at + 10).ok_or_else(short)?;
        let (rtype, rdlen) = (
            u16::from_be_bytes([fixed[0], fixed[1]]),
            u16::from_be_bytes([fixed[8], fixed[9]]) as usize,
        );
        at += 10;
        let data = rsp.get(at..at + rdlen).ok_or_else(short)?;
        if rtype == 1 && rdlen == 4 {
            out.push([data[0], data[1], data[2], data[3]]);
        }
        at += rdlen;
    }
    Ok(out)
}
