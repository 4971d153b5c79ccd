//! Agent identifiers (`--agent-identifiers`, the `agentidentifiers` gRPC header).
//!
//! The agent advertises the hosts and addresses it can reach as a URL query string, e.g.
//! `host=node1&ipv4=10.0.0.5&default-route=true`. It is decoded with Go `net/url.ParseQuery`
//! semantics (`&`-separated, `;` is an error, `+` is a space, bad `%` escapes are errors). The
//! agent rejects unknown keys at startup ([`IdentifierMode::Agent`]); the server ignores them so
//! that newer agents can talk to older servers ([`IdentifierMode::Server`]).

use crate::go::strconv::{self, quote};

/// Identifiers an agent advertises, as the proxy strategies consume them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentIdentifiers {
    /// The text exactly as given (the agent sends it verbatim).
    pub raw: String,
    /// `host=` values, in order.
    pub hosts: Vec<String>,
    /// `ipv4=` values, in order.
    pub ipv4: Vec<String>,
    /// `ipv6=` values, in order.
    pub ipv6: Vec<String>,
    /// `cidr=` values (accepted and kept, used by no strategy).
    pub cidrs: Vec<String>,
    /// The first `default-route=` value parsed as a Go bool; invalid or absent means false.
    pub default_route: bool,
}

/// Which side is parsing, deciding what happens to unknown keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifierMode {
    /// Agent startup: unknown keys are an error.
    Agent,
    /// Server, reading the header: unknown keys (such as `uid`) are ignored.
    Server,
}

/// Why an identifier string was rejected.
///
/// `Display` is the bare Go text; the agent's validation prefixes
/// `agent address is invalid: `, and upstream's server prefixes
/// `fail to parse url encoded string: ` for encoding errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// The query string itself is malformed (Go `url.ParseQuery`'s error text).
    #[error("{0}")]
    Encoding(String),
    /// A key other than `host`, `ipv4`, `ipv6`, `cidr`, `default-route` ([`IdentifierMode::Agent`]).
    #[error("unknown address type: {0}")]
    UnknownAddressType(String),
}

impl AgentIdentifiers {
    /// Parses with the given side's rules.
    pub fn parse(raw: &str, mode: IdentifierMode) -> Result<Self, IdentifierError> {
        let pairs = parse_query(raw).map_err(IdentifierError::Encoding)?;
        let mut ids = AgentIdentifiers {
            raw: raw.to_owned(),
            ..AgentIdentifiers::default()
        };
        let mut default_route_seen = false;
        for (key, value) in pairs {
            match key.as_str() {
                "host" => ids.hosts.push(value),
                "ipv4" => ids.ipv4.push(value),
                "ipv6" => ids.ipv6.push(value),
                "cidr" => ids.cidrs.push(value),
                "default-route" => {
                    if !default_route_seen {
                        default_route_seen = true;
                        ids.default_route = strconv::parse_bool(&value).unwrap_or(false);
                    }
                }
                _ => {
                    if mode == IdentifierMode::Agent {
                        return Err(IdentifierError::UnknownAddressType(key));
                    }
                }
            }
        }
        Ok(ids)
    }

    /// Agent-side (strict) parse.
    pub fn parse_agent(raw: &str) -> Result<Self, IdentifierError> {
        Self::parse(raw, IdentifierMode::Agent)
    }

    /// Server-side (lenient) parse.
    pub fn parse_server(raw: &str) -> Result<Self, IdentifierError> {
        Self::parse(raw, IdentifierMode::Server)
    }
}

/// Go `url.ParseQuery`: the `(key, value)` pairs in order; on any malformed pair, the error Go
/// would return (a semicolon error replaces an earlier escape error, as in Go).
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut error: Option<String> = None;
    for part in query.split('&') {
        if part.contains(';') {
            error = Some("invalid semicolon separator in query".to_owned());
            continue;
        }
        if part.is_empty() {
            continue;
        }
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let decoded = query_unescape(key).and_then(|k| query_unescape(value).map(|v| (k, v)));
        match decoded {
            Ok(pair) => pairs.push(pair),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(pairs),
    }
}

/// Go `url.QueryUnescape`: `%XX` escapes and `+` as space.
pub fn query_unescape(s: &str) -> Result<String, String> {
    query_unescape_bytes(s).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// [`query_unescape`] before the bytes become text (for callers that refuse bytes that are
/// not UTF-8 rather than replace them).
pub fn query_unescape_bytes(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(hi), Some(lo)) => {
                        // Two hex digits are at most 0xff.
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                    }
                    _ => {
                        let end = (i + 3).min(b.len());
                        let bad = String::from_utf8_lossy(&b[i..end]);
                        return Err(format!("invalid URL escape {}", quote(&bad)));
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(s: &str) -> Result<AgentIdentifiers, IdentifierError> {
        AgentIdentifiers::parse_server(s)
    }

    #[test]
    fn semicolon_is_an_error_on_both_sides() {
        let want = IdentifierError::Encoding("invalid semicolon separator in query".to_owned());
        assert_eq!(server("host=a;host=b"), Err(want.clone()));
        assert_eq!(AgentIdentifiers::parse_agent("host=a;b"), Err(want));
    }

    #[test]
    fn bad_escape_is_an_error_with_go_text() {
        assert_eq!(
            server("host=%zz"),
            Err(IdentifierError::Encoding(
                "invalid URL escape \"%zz\"".to_owned()
            ))
        );
        assert_eq!(
            server("host=a%2"),
            Err(IdentifierError::Encoding(
                "invalid URL escape \"%2\"".to_owned()
            ))
        );
        assert_eq!(
            server("%g1x=a"),
            Err(IdentifierError::Encoding(
                "invalid URL escape \"%g1\"".to_owned()
            ))
        );
    }

    #[test]
    fn unknown_key_is_ignored_by_server_and_rejected_by_agent() {
        let ids = server("host=a&weird=1").unwrap();
        assert_eq!(ids.hosts, ["a"]);
        assert_eq!(
            AgentIdentifiers::parse_agent("host=a&weird=1"),
            Err(IdentifierError::UnknownAddressType("weird".to_owned()))
        );
        assert_eq!(
            AgentIdentifiers::parse_agent("weird=1")
                .unwrap_err()
                .to_string(),
            "unknown address type: weird"
        );
    }

    #[test]
    fn uid_is_ignored_by_server() {
        assert_eq!(server("uid=1234&host=h").unwrap().hosts, ["h"]);
        assert!(AgentIdentifiers::parse_agent("uid=1234").is_err());
    }

    #[test]
    fn each_key_type_is_collected_in_order() {
        let raw = "host=node1.example&host=localhost&ipv4=10.0.0.5&ipv6=fd00::5&cidr=10.0.0.0/8&ipv4=1.2.3.4";
        let ids = AgentIdentifiers::parse_agent(raw).unwrap();
        assert_eq!(ids.raw, raw);
        assert_eq!(ids.hosts, ["node1.example", "localhost"]);
        assert_eq!(ids.ipv4, ["10.0.0.5", "1.2.3.4"]);
        assert_eq!(ids.ipv6, ["fd00::5"]);
        assert_eq!(ids.cidrs, ["10.0.0.0/8"]);
        assert!(!ids.default_route);
    }

    #[test]
    fn values_are_unescaped() {
        let ids = server("host=a+b&host=c%20d&ipv6=%3A%3A1&host=e=f").unwrap();
        assert_eq!(ids.hosts, ["a b", "c d", "e=f"]);
        assert_eq!(ids.ipv6, ["::1"]);
    }

    #[test]
    fn default_route_uses_first_value_as_go_bool() {
        assert!(server("default-route=true").unwrap().default_route);
        assert!(server("default-route=1").unwrap().default_route);
        assert!(server("default-route=True").unwrap().default_route);
        assert!(!server("default-route=false").unwrap().default_route);
        assert!(!server("default-route=invalid").unwrap().default_route);
        assert!(!server("default-route=").unwrap().default_route);
        assert!(
            server("default-route=true&default-route=false")
                .unwrap()
                .default_route
        );
        assert!(
            !server("default-route=false&default-route=true")
                .unwrap()
                .default_route
        );
        assert!(
            !server("default-route=yes&default-route=true")
                .unwrap()
                .default_route
        );
        assert!(AgentIdentifiers::parse_agent("default-route=invalid").is_ok());
    }

    #[test]
    fn empty_and_degenerate_strings_parse_to_nothing() {
        assert_eq!(server("").unwrap(), AgentIdentifiers::default());
        let ids = server("&&host&").unwrap();
        assert_eq!(ids.hosts, [""]);
    }
}
