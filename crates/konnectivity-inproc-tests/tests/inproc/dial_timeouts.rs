//! Dials that nobody answers: the agent's own 5 s dial timeout,
//! `--backend-dial-timeout` and `--dial-deadline`, on both frontends, each answered at
//! its time with upstream's text. One matrix: which bound is set × which frontend.
use std::time::Duration;

use konnectivity_agent::dialer::DIAL_TIMEOUT;
use konnectivity_core::wire;
use konnectivity_server::metrics::DialFailureReason;
use konnectivity_testkit::inproc::Harness;
use konnectivity_testkit::servers;
use tokio::time::Instant;

use crate::{assert_at, connect_error, dial_error, one_agent};

/// The bound on a pending dial under test; the others are off.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// Neither server bound: the agent's own dial timeout answers.
    Agent,
    /// `--backend-dial-timeout=1s`.
    BackendDialTimeout,
    /// `--dial-deadline=2s` with `--backend-dial-timeout` off.
    DialDeadline,
}

impl Bound {
    fn settings(self) -> konnectivity_server::Settings {
        let (backend_dial_timeout, dial_deadline) = match self {
            Bound::Agent => (None, None),
            Bound::BackendDialTimeout => (Some(Duration::from_secs(1)), None),
            Bound::DialDeadline => (None, Some(Duration::from_secs(2))),
        };
        konnectivity_server::Settings {
            backend_dial_timeout,
            dial_deadline,
            ..Harness::server_settings()
        }
    }

    /// When the dial is answered.
    fn at(self) -> Duration {
        match self {
            Bound::Agent => DIAL_TIMEOUT,
            Bound::BackendDialTimeout => Duration::from_secs(1),
            Bound::DialDeadline => Duration::from_secs(2),
        }
    }
}

/// The frontend the dial comes through.
#[derive(Debug, Clone, Copy)]
enum Via {
    Grpc,
    Connect,
}

/// Dials a destination whose TCP handshake never completes and checks when and how
/// the dial is answered, and that the server forgot it.
async fn unanswered_dial(bound: Bound, via: Via) -> anyhow::Result<()> {
    let (_h, server, _agent) = one_agent(bound.settings()).await?;
    let dest = servers::unresponsive()?;
    let io_timeout = format!("dial tcp {}: i/o timeout", dest.addr());
    let t = Instant::now();
    match via {
        Via::Grpc => {
            let text = dial_error(server.grpc_dial(dest.addr()).await)?;
            assert_at(t.elapsed(), bound.at());
            match bound {
                Bound::Agent => assert_eq!(text, io_timeout),
                Bound::BackendDialTimeout | Bound::DialDeadline => {
                    assert_eq!(text, wire::BACKEND_DIAL_TIMEOUT)
                }
            }
        }
        Via::Connect => {
            let (status, body) = connect_error(server.connect_dial(dest.addr()).await)?;
            assert_at(t.elapsed(), bound.at());
            assert_eq!(status, "504 Gateway Timeout");
            match bound {
                Bound::Agent => assert_eq!(body, io_timeout),
                Bound::BackendDialTimeout | Bound::DialDeadline => assert_eq!(
                    body,
                    format!("Backend dial timeout: {}\r\n", wire::BACKEND_DIAL_TIMEOUT)
                ),
            }
        }
    }
    let metrics = &server.shared.metrics;
    let reason = match bound {
        Bound::Agent => DialFailureReason::ErrorResponse,
        Bound::BackendDialTimeout | Bound::DialDeadline => DialFailureReason::BackendDialTimeout,
    };
    assert_eq!(metrics.dial_failures(reason), 1, "{reason:?}");
    assert!(
        server.shared.pending().is_empty(),
        "the pending dial is forgotten"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn refused_destination_is_answered_at_once_with_gos_text() -> anyhow::Result<()> {
    let (_h, server, _agent) = one_agent(Bound::Agent.settings()).await?;
    let dest = servers::closed_port()?;
    let t = Instant::now();
    let text = dial_error(server.grpc_dial(dest).await)?;
    assert_eq!(
        text,
        format!("dial tcp {dest}: connect: connection refused")
    );
    assert_at(t.elapsed(), Duration::ZERO);
    let (status, body) = connect_error(server.connect_dial(dest).await)?;
    assert_eq!(status, "502 Bad Gateway");
    assert_eq!(body, text);
    Ok(())
}

/// One test of [`unanswered_dial`] for each `name: bound, via` (a case of the matrix).
macro_rules! unanswered_dial_tests {
    ($($name:ident: $bound:ident, $via:ident;)*) => {$(
        #[tokio::test(start_paused = true)]
        async fn $name() -> anyhow::Result<()> {
            unanswered_dial(Bound::$bound, Via::$via).await
        }
    )*};
}

unanswered_dial_tests! {
    agent_dial_timeout_answers_grpc_dial_after_5s_with_io_timeout: Agent, Grpc;
    agent_dial_timeout_answers_connect_with_504_after_5s: Agent, Connect;
    backend_dial_timeout_answers_grpc_dial_before_the_agent_does: BackendDialTimeout, Grpc;
    backend_dial_timeout_answers_connect_with_504_before_the_agent_does: BackendDialTimeout, Connect;
    dial_deadline_answers_connect_when_backend_dial_timeout_is_off: DialDeadline, Connect;
    dial_deadline_answers_grpc_dial_when_backend_dial_timeout_is_off: DialDeadline, Grpc;
}
