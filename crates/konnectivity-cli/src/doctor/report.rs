//! What every check yields: a [`Finding`] with a [`Status`], and how findings are printed
//! (text lines or a JSON array).

use serde_json::{Value, json};

use super::Output;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Ok,
    /// Works, but something deserves attention.
    Warning,
    /// Not applicable with the given flags.
    Skipped,
    /// Failed for a reason none of the other words names.
    Failed,
    /// No answer: packets are dropped somewhere.
    TimedOut,
    /// Actively refused: nothing listens (or a REJECT rule).
    Refused,
    /// No route.
    Unreachable,
    /// The server has no agent for the destination.
    NoAgent,
    /// A TLS handshake failed.
    TlsFailed,
    /// A name did not resolve.
    DnsFailed,
    /// A credential expired.
    Expired,
    /// The peer refused us (the server refused the agent, a policy denied a dial).
    Rejected,
}

impl Status {
    /// The status word (JSON `status`, and the first word of a text line).
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::TimedOut => "timed out",
            Status::Refused => "refused",
            Status::Unreachable => "unreachable",
            Status::NoAgent => "no agent",
            Status::TlsFailed => "tls failed",
            Status::DnsFailed => "dns failed",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
        }
    }

    /// Whether this status makes the exit code 1.
    pub fn is_failure(self) -> bool {
        !matches!(self, Status::Ok | Status::Warning | Status::Skipped)
    }
}

/// One result.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What was checked (`status`, `route`, `dial`, `tls`, `config`, `dns`, `tcp`,
    /// `token`, `connect`, `kubelet`).
    pub check: &'static str,
    /// What it was checked against.
    pub target: String,
    /// How it ended.
    pub status: Status,
    /// One line: what was found.
    pub cause: String,
    /// One line: what to do about it (empty when nothing is needed).
    pub hint: String,
}

pub(super) fn finding(
    check: &'static str,
    target: impl Into<String>,
    status: Status,
    cause: impl Into<String>,
    hint: impl Into<String>,
) -> Finding {
    Finding {
        check,
        target: target.into(),
        status,
        cause: cause.into(),
        hint: hint.into(),
    }
}

pub(super) fn ok(
    check: &'static str,
    target: impl Into<String>,
    cause: impl Into<String>,
) -> Finding {
    finding(check, target, Status::Ok, cause, "")
}

pub(super) fn print(findings: &[Finding], output: Output) {
    match output {
        Output::Json => {
            let arr: Vec<Value> = findings
                .iter()
                .map(|f| {
                    json!({"check": f.check, "target": f.target, "status": f.status.word(),
                           "cause": f.cause, "hint": f.hint})
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&Value::Array(arr)).unwrap_or_default()
            );
        }
        Output::Text => {
            for f in findings {
                println!("{}", text_line(f));
            }
            let failed = findings.iter().filter(|f| f.status.is_failure()).count();
            if failed == 0 {
                println!("all {} checks passed", findings.len());
            } else {
                println!("{failed} of {} checks failed", findings.len());
            }
        }
    }
}

/// `   timed out  dial 10.0.0.7:10250: <cause> — <hint>`
pub fn text_line(f: &Finding) -> String {
    let mut s = format!(
        "{:>11}  {} {}: {}",
        f.status.word(),
        f.check,
        f.target,
        f.cause
    );
    if !f.hint.is_empty() {
        s.push_str(" — ");
        s.push_str(&f.hint);
    }
    s
}
