//! The `DialRequest.protocol` a frontend may ask for, as an allowlist.
//!
//! Upstream's agent hands the protocol string straight to Go's `net.Dial`, so a frontend
//! that sends `"unix"` reaches a UNIX socket on the node (the container runtime's, the
//! kubelet's) and `"udp"` sends datagrams; upstream's server forwards whatever it gets.
//! Here the string is parsed into [`Protocol`] at both ends: the server refuses anything
//! else before choosing an agent, and the agent refuses anything it does not serve.
//! A protocol beyond `tcp` is a variant served explicitly, never a default: `udp` is
//! accepted by the server only with `--enable-udp` ([`TCP_AND_UDP`]), and the allowed
//! set is named in every refusal.
use std::fmt;

/// A protocol the tunnel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `"tcp"`: the only protocol upstream's client library and CONNECT frontend send.
    Tcp,
    /// `"udp"`: a connected UDP socket on the node, one datagram per DATA packet each
    /// way (what upstream's agent does with Go's `net.Dial("udp")`). Off by default.
    Udp,
}

/// The protocols served by default, in the order error texts list them.
pub const SERVED: &[Protocol] = &[Protocol::Tcp];

/// The protocols served with UDP enabled (`--enable-udp` on the server).
pub const TCP_AND_UDP: &[Protocol] = &[Protocol::Tcp, Protocol::Udp];

/// How much of a refused protocol string an error text repeats.
const MAX_ECHOED: usize = 32;

impl Protocol {
    /// Parses the wire string exactly as Go's dialer spells it (`"tcp"`, lower case);
    /// anything else, the empty string and `"tcp4"`/`"tcp6"` included, is refused.
    pub fn parse(s: &str) -> Result<Self, ProtocolNotAllowed> {
        Self::parse_in(s, SERVED)
    }

    /// Parses `s` if it names one of `allowed` (spelled as Go's dialer spells it);
    /// the refusal names `allowed`.
    pub fn parse_in(s: &str, allowed: &'static [Protocol]) -> Result<Self, ProtocolNotAllowed> {
        allowed
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ProtocolNotAllowed::in_set(s, allowed))
    }

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol outside the allowed set; displays as
/// `protocol "unix" is not allowed (allowed: tcp)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol {requested:?} is not allowed (allowed: {})", names(allowed))]
pub struct ProtocolNotAllowed {
    /// What the peer asked for, cut to 32 characters.
    pub requested: String,
    /// What was allowed where it was refused.
    pub allowed: &'static [Protocol],
}

impl ProtocolNotAllowed {
    /// The refusal of `requested` where only [`SERVED`] is allowed (kept short: it is
    /// peer input echoed to logs).
    pub fn new(requested: &str) -> Self {
        Self::in_set(requested, SERVED)
    }

    /// The refusal of `requested` where `allowed` is allowed.
    pub fn in_set(requested: &str, allowed: &'static [Protocol]) -> Self {
        Self {
            requested: requested.chars().take(MAX_ECHOED).collect(),
            allowed,
        }
    }
}

fn names(allowed: &[Protocol]) -> String {
    let names: Vec<_> = allowed.iter().map(|p| p.as_str()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tcp_parses() {
        assert_eq!(Protocol::parse("tcp"), Ok(Protocol::Tcp));
        for p in [
            "",
            "unix",
            "udp",
            "TCP",
            "tcp4",
            "tcp6",
            "unixpacket",
            "ip:1",
            "tcp ",
        ] {
            assert_eq!(Protocol::parse(p), Err(ProtocolNotAllowed::new(p)), "{p:?}");
        }
    }

    #[test]
    fn refusals_name_the_protocol_and_what_is_allowed() {
        let e = Protocol::parse("unix").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"protocol "unix" is not allowed (allowed: tcp)"#
        );
        let e = Protocol::parse("").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"protocol "" is not allowed (allowed: tcp)"#
        );
    }

    #[test]
    fn refused_strings_are_escaped_and_bounded() {
        let e = Protocol::parse("a\"b\nc").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"protocol "a\"b\nc" is not allowed (allowed: tcp)"#
        );
        let long = "x".repeat(10_000);
        let e = Protocol::parse(&long).unwrap_err();
        assert_eq!(e.requested.len(), 32);
        assert!(e.to_string().len() < 100);
    }

    #[test]
    fn display_is_the_wire_string() {
        assert_eq!(Protocol::Tcp.to_string(), "tcp");
        assert_eq!(Protocol::Udp.to_string(), "udp");
    }

    #[test]
    fn udp_parses_only_where_enabled_and_the_refusal_says_what_is_allowed() {
        assert_eq!(
            Protocol::parse("udp").unwrap_err().to_string(),
            r#"protocol "udp" is not allowed (allowed: tcp)"#
        );
        assert_eq!(Protocol::parse_in("udp", TCP_AND_UDP), Ok(Protocol::Udp));
        assert_eq!(Protocol::parse_in("tcp", TCP_AND_UDP), Ok(Protocol::Tcp));
        for p in ["UDP", "udp4", "udp6", "unixgram", "unix"] {
            assert_eq!(
                Protocol::parse_in(p, TCP_AND_UDP).unwrap_err().to_string(),
                format!("protocol {p:?} is not allowed (allowed: tcp, udp)")
            );
        }
    }
}
