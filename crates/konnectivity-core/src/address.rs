//! Destination addresses: the host key used for routing, and dial error texts in the
//! form Go's `net.Dial` prints them (kube-apiserver users and upstream tests match on
//! substrings such as `connection refused` and `no such host`).
use std::io;

/// Strips the port from a dial address the way upstream does (spec §5.3): at most one
/// `:` ⇒ everything before it; otherwise, with a `[`, cut at the last `:` and trim the
/// brackets; otherwise (a bare IPv6 literal) keep the whole string.
pub fn host_of(address: &str) -> &str {
    let colons = address.matches(':').count();
    if colons <= 1 {
        return address.split(':').next().unwrap_or(address);
    }
    if address.contains('[') {
        let cut = address.rfind(':').map_or(address, |i| &address[..i]);
        return cut.trim_start_matches('[').trim_end_matches(']');
    }
    address
}

/// Why a dial failed, classified for metrics (`endpoint_dial_failure_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// The dial timed out.
    Timeout,
    /// The DIAL_REQ asked for a protocol the agent does not serve (extension label
    /// `protocol_not_allowed`; upstream dials whatever it is asked).
    ProtocolNotAllowed,
    /// Anything else.
    Unknown,
}

/// Go's text for a failed TCP connect: `dial tcp <addr>: connect: connection refused`.
pub fn connect_error_text(address: &str, err: &io::Error) -> (String, DialFailure) {
    let reason = match err.kind() {
        io::ErrorKind::TimedOut => {
            return (
                format!("dial tcp {address}: i/o timeout"),
                DialFailure::Timeout,
            );
        }
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".to_owned(),
        io::ErrorKind::HostUnreachable => "no route to host".to_owned(),
        io::ErrorKind::NetworkUnreachable => "network is unreachable".to_owned(),
        io::ErrorKind::AddrNotAvailable => "cannot assign requested address".to_owned(),
        _ => match err.raw_os_error() {
            Some(24) => "too many open files".to_owned(),
            _ => strip_os_suffix(&err.to_string()).to_lowercase(),
        },
    };
    (
        format!("dial tcp {address}: connect: {reason}"),
        DialFailure::Unknown,
    )
}

/// Go's text for a failed name lookup: `dial tcp: lookup <host>: no such host`.
pub fn lookup_error_text(host: &str, err: &io::Error) -> String {
    let msg = err.to_string();
    if msg.contains("failed to lookup")
        || msg.contains("Name or service not known")
        || msg.contains("No address associated")
    {
        format!("dial tcp: lookup {host}: no such host")
    } else {
        format!("dial tcp: lookup {host}: {}", strip_os_suffix(&msg))
    }
}

/// Go's text for an address without a port: `dial tcp <addr>: missing port in address`.
pub fn bad_address_text(address: &str) -> String {
    format!("dial tcp: address {address}: missing port in address")
}

fn strip_os_suffix(s: &str) -> &str {
    s.find(" (os error").map_or(s, |i| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_matches_the_upstream_table() {
        for (input, want) in [
            ("localhost:8080", "localhost"),
            ("192.168.0.1:8080", "192.168.0.1"),
            ("::", "::"),
            ("[a:b::1]:8080", "a:b::1"),
            ("9878::7675:1292:9183:7562", "9878::7675:1292:9183:7562"),
            (" node1.example:10250", " node1.example"),
            ("nohost", "nohost"),
        ] {
            assert_eq!(host_of(input), want, "{input}");
        }
    }

    #[test]
    fn refused_dial_reads_like_go() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        let (text, why) = connect_error_text("127.0.0.1:1", &e);
        assert_eq!(text, "dial tcp 127.0.0.1:1: connect: connection refused");
        assert_eq!(why, DialFailure::Unknown);
        let (text, why) =
            connect_error_text("10.0.0.1:1", &io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(text, "dial tcp 10.0.0.1:1: i/o timeout");
        assert_eq!(why, DialFailure::Timeout);
    }
}
