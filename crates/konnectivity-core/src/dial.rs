//! Why a dial failed, as one typed error with one mapping to everything that reports it:
//! the text a gRPC frontend receives in `DIAL_RSP.error` (upstream's strings, byte for
//! byte), the HTTP response of the CONNECT frontend, and the `reason` label of
//! `dial_failure_count`.
//!
//! The server classifies a failure where it happens (no agent, a timer, the agent's
//! DIAL_RSP) and carries the variant to the frontend; nothing downstream inspects error
//! text to decide what happened. The one exception is inherited from upstream and kept
//! on purpose: the HTTP status of an *agent's* dial error is chosen from the agent's
//! free-form Go error text ([`crate::connect::status_for`]), because that text is all
//! the agent sends.
use std::borrow::Cow;

use crate::connect::status_for;
use crate::protocol::ProtocolNotAllowed;
use crate::socks::Reply;
use crate::wire;

/// The `reason` label of `dial_failure_count` (spec §8.3), upstream's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DialFailureReason {
    /// No agent for the destination.
    NoAgent,
    /// The agent answered with an error.
    ErrorResponse,
    /// A DIAL_RSP matched no pending dial.
    UnrecognizedResponse,
    /// Forwarding the DIAL_RSP to the frontend failed.
    SendRsp,
    /// The agent closed the dial, or its stream ended.
    BackendClose,
    /// `--backend-dial-timeout` (or `--dial-deadline`) elapsed.
    BackendDialTimeout,
    /// The frontend went away before the dial completed.
    FrontendClose,
    /// The frontend asked for a protocol the server does not serve (our extension
    /// value: upstream forwards any protocol).
    ProtocolNotAllowed,
}

impl DialFailureReason {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoAgent => "no_agent",
            Self::ErrorResponse => "error_response",
            Self::UnrecognizedResponse => "unrecognized_response",
            Self::SendRsp => "send_rsp",
            Self::BackendClose => "backend_close",
            Self::BackendDialTimeout => "backend_dial_timeout",
            Self::FrontendClose => "frontend_close",
            Self::ProtocolNotAllowed => "protocol_not_allowed",
        }
    }
}

/// Why a dial did not produce a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// No proxy strategy found an agent for the destination.
    #[error("{}", wire::NO_AGENT_AVAILABLE)]
    NoAgent,
    /// The frontend's dial ID is already pending (a collision, or a reused ID).
    #[error("dial ID already in use")]
    DuplicateDialId,
    /// The DIAL_REQ asked for a protocol the server does not serve (anything but
    /// `tcp`); refused before an agent is chosen, never forwarded.
    #[error(transparent)]
    ProtocolNotAllowed(#[from] ProtocolNotAllowed),
    /// `--allowed-destination-*` denies the destination; the text says why.
    #[error("{0}")]
    Denied(String),
    /// A server limit was reached; the text names the flag.
    #[error("{0}")]
    Limit(String),
    /// `--backend-dial-timeout` (sending the DIAL_REQ, or waiting for the answer) or
    /// `--dial-deadline` elapsed.
    #[error("{}", wire::BACKEND_DIAL_TIMEOUT)]
    BackendDialTimeout,
    /// The DIAL_REQ could not be handed to the agent's stream (it was closing).
    #[error("{0}")]
    SendFailed(String),
    /// The agent answered DIAL_RSP with this error (Go's dial error text, verbatim).
    #[error("{0}")]
    Agent(String),
    /// The agent answered DIAL_CLS.
    #[error("dial closed")]
    AgentClosed,
    /// The agent's stream ended before it answered.
    #[error("{}", wire::AGENT_DISCONNECTED)]
    AgentDisconnected,
    /// The agent answered with a connect ID that is still open on its stream.
    #[error("agent reused connect ID {0} that is still open")]
    ConnectIdReused(i64),
}

impl DialError {
    /// The text a gRPC frontend receives in `DIAL_RSP.error`.
    pub fn wire_text(&self) -> Cow<'_, str> {
        match self {
            Self::Denied(t) | Self::Limit(t) | Self::SendFailed(t) | Self::Agent(t) => {
                Cow::Borrowed(t)
            }
            other => Cow::Owned(other.to_string()),
        }
    }

    /// The `dial_failure_count` reason, for failures upstream counts there (policy and
    /// limit refusals have their own extension metrics; a duplicate ID is not counted).
    pub fn reason(&self) -> Option<DialFailureReason> {
        match self {
            Self::NoAgent => Some(DialFailureReason::NoAgent),
            Self::ProtocolNotAllowed(_) => Some(DialFailureReason::ProtocolNotAllowed),
            Self::BackendDialTimeout => Some(DialFailureReason::BackendDialTimeout),
            Self::SendFailed(_) | Self::AgentClosed | Self::AgentDisconnected => {
                Some(DialFailureReason::BackendClose)
            }
            Self::Agent(_) | Self::ConnectIdReused(_) => Some(DialFailureReason::ErrorResponse),
            Self::DuplicateDialId | Self::Denied(_) | Self::Limit(_) => None,
        }
    }

    /// The whole HTTP/1.1 response the CONNECT frontend writes before closing the
    /// client's socket, or `None` when the socket is closed without one (upstream
    /// closes it on an agent's DIAL_CLS).
    pub fn http_response(&self) -> Option<String> {
        const TEXT: &str = "Content-Type: text/plain; charset=utf-8";
        Some(match self {
            Self::NoAgent => format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available: {}",
                wire::NO_AGENT_AVAILABLE
            ),
            Self::DuplicateDialId => "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ndial ID collision".to_owned(),
            Self::Denied(_) | Self::ProtocolNotAllowed(_) => {
                format!("HTTP/1.1 403 Forbidden\r\nConnection: close\r\n{TEXT}\r\n\r\n{self}")
            }
            Self::Limit(e) => format!(
                "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n{TEXT}\r\n\r\n{e}"
            ),
            Self::BackendDialTimeout => format!(
                "HTTP/1.1 504 Gateway Timeout\r\n{TEXT}\r\n\r\nBackend dial timeout: {}\r\n",
                wire::BACKEND_DIAL_TIMEOUT
            ),
            Self::SendFailed(e) => format!(
                "HTTP/1.1 502 Bad Gateway\r\n{TEXT}\r\n\r\nFailed to tunnel dial request: {e}\r\n"
            ),
            Self::Agent(e) => format!(
                "HTTP/1.1 {}\r\nConnection: close\r\n{TEXT}\r\n\r\n{e}",
                status_for(e)
            ),
            Self::ConnectIdReused(_) => format!(
                "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n{TEXT}\r\n\r\n{self}"
            ),
            Self::AgentDisconnected => format!(
                "HTTP/1.1 502 Bad Gateway\r\n{TEXT}\r\n\r\nBackend context error: context canceled\r\n"
            ),
            Self::AgentClosed => return None,
        })
    }
}

impl DialError {
    /// The SOCKS5 reply code the SOCKS5 frontend answers with. Chosen here, once:
    /// no agent for the destination is 0x03 (network unreachable: the tunnel has no
    /// way into that network); a policy refusal (destination or protocol) is 0x02;
    /// a timeout (the server's bound, or the agent's 5 s dial) is 0x04 host
    /// unreachable (0x06 "TTL expired" describes something else); the agent's text
    /// is classified like the CONNECT frontend's status (it is all the agent sends):
    /// `connection refused` 0x05, `network is unreachable` 0x03, no route, no such
    /// host or a timeout 0x04; anything else (limits, a lost agent) is 0x01.
    pub fn socks_reply(&self) -> Reply {
        match self {
            Self::NoAgent => Reply::NetworkUnreachable,
            Self::Denied(_) | Self::ProtocolNotAllowed(_) => Reply::NotAllowed,
            Self::BackendDialTimeout => Reply::HostUnreachable,
            Self::Agent(text) => {
                let e = text.to_ascii_lowercase();
                if e.contains("connection refused") {
                    Reply::ConnectionRefused
                } else if e.contains("network is unreachable") {
                    Reply::NetworkUnreachable
                } else if e.contains("no route to host")
                    || e.contains("host is unreachable")
                    || e.contains("no such host")
                    || e.contains("timeout")
                {
                    Reply::HostUnreachable
                } else {
                    Reply::GeneralFailure
                }
            }
            Self::DuplicateDialId
            | Self::Limit(_)
            | Self::SendFailed(_)
            | Self::AgentClosed
            | Self::AgentDisconnected
            | Self::ConnectIdReused(_) => Reply::GeneralFailure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: &DialError) -> String {
        let r = e.http_response().unwrap_or_default();
        r.lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn timeouts_carry_upstreams_text_and_504_and_their_own_reason() {
        let e = DialError::BackendDialTimeout;
        assert_eq!(e.wire_text(), wire::BACKEND_DIAL_TIMEOUT);
        assert_eq!(status(&e), "HTTP/1.1 504 Gateway Timeout");
        assert!(
            e.http_response()
                .unwrap()
                .ends_with("\r\n\r\nBackend dial timeout: timed out waiting for backend dial\r\n")
        );
        assert_eq!(e.reason(), Some(DialFailureReason::BackendDialTimeout));
        assert_eq!(e.reason().map(|r| r.label()), Some("backend_dial_timeout"));
    }

    #[test]
    fn agent_errors_pass_through_verbatim_with_goish_status() {
        let refused = DialError::Agent("dial tcp 1.2.3.4:5: connect: connection refused".into());
        assert_eq!(
            refused.wire_text(),
            "dial tcp 1.2.3.4:5: connect: connection refused"
        );
        assert_eq!(status(&refused), "HTTP/1.1 502 Bad Gateway");
        let slow = DialError::Agent("dial tcp 1.2.3.4:5: i/o timeout".into());
        assert_eq!(status(&slow), "HTTP/1.1 504 Gateway Timeout");
        assert_eq!(slow.reason(), Some(DialFailureReason::ErrorResponse));
    }

    #[test]
    fn no_agent_uses_upstreams_text_status_and_label() {
        let e = DialError::NoAgent;
        assert_eq!(e.wire_text(), "No agent available");
        assert_eq!(status(&e), "HTTP/1.1 500 Internal Server Error");
        assert!(
            e.http_response()
                .unwrap()
                .ends_with("currently no tunnels available: No agent available")
        );
        assert_eq!(e.reason().map(|r| r.label()), Some("no_agent"));
    }

    #[test]
    fn refusals_by_policy_and_limits_are_not_dial_failures() {
        let denied = DialError::Denied("destination 10.0.0.1 not allowed".into());
        assert_eq!(status(&denied), "HTTP/1.1 403 Forbidden");
        assert_eq!(denied.reason(), None);
        let limit = DialError::Limit("too many (--max-pending-dials-per-agent=1)".into());
        assert_eq!(status(&limit), "HTTP/1.1 503 Service Unavailable");
        assert_eq!(limit.reason(), None);
        assert_eq!(DialError::DuplicateDialId.reason(), None);
    }

    #[test]
    fn socks_replies_are_chosen_from_the_variant_or_the_agents_text() {
        let cases = [
            (DialError::NoAgent, Reply::NetworkUnreachable),
            (DialError::Denied("no".into()), Reply::NotAllowed),
            (DialError::BackendDialTimeout, Reply::HostUnreachable),
            (
                DialError::Limit("(--max-x=1)".into()),
                Reply::GeneralFailure,
            ),
            (DialError::AgentDisconnected, Reply::GeneralFailure),
            (
                DialError::Agent("dial tcp 1.2.3.4:5: connect: connection refused".into()),
                Reply::ConnectionRefused,
            ),
            (
                DialError::Agent("dial tcp 1.2.3.4:5: i/o timeout".into()),
                Reply::HostUnreachable,
            ),
            (
                DialError::Agent("dial tcp: lookup x on 10.0.0.10:53: no such host".into()),
                Reply::HostUnreachable,
            ),
            (
                DialError::Agent("dial tcp 1.2.3.4:5: connect: network is unreachable".into()),
                Reply::NetworkUnreachable,
            ),
            (
                DialError::Agent("something else".into()),
                Reply::GeneralFailure,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.socks_reply(), want, "{e:?}");
        }
    }

    #[test]
    fn a_refused_protocol_is_named_on_the_wire_forbidden_and_counted() {
        let e = DialError::from(crate::protocol::Protocol::parse("unix").unwrap_err());
        assert_eq!(
            e.wire_text(),
            r#"protocol "unix" is not allowed (allowed: tcp)"#
        );
        assert_eq!(status(&e), "HTTP/1.1 403 Forbidden");
        assert!(
            e.http_response()
                .unwrap()
                .ends_with(r#"protocol "unix" is not allowed (allowed: tcp)"#)
        );
        assert_eq!(e.reason().map(|r| r.label()), Some("protocol_not_allowed"));
    }

    #[test]
    fn agent_loss_and_close_count_as_backend_close() {
        assert_eq!(
            DialError::AgentDisconnected.wire_text(),
            wire::AGENT_DISCONNECTED
        );
        assert_eq!(
            status(&DialError::AgentDisconnected),
            "HTTP/1.1 502 Bad Gateway"
        );
        assert_eq!(DialError::AgentClosed.http_response(), None);
        for e in [
            DialError::AgentDisconnected,
            DialError::AgentClosed,
            DialError::SendFailed("stream closed".into()),
        ] {
            assert_eq!(e.reason(), Some(DialFailureReason::BackendClose), "{e:?}");
        }
    }
}
