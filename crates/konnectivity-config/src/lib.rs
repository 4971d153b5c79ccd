//! Command-line configuration of `proxy-server` and `proxy-agent`.
//!
//! Turns argument lists into validated, typed options with the flag names, defaults, syntax
//! (Go pflag) and error messages of upstream Konnectivity, so operators can keep their
//! manifests. Binaries call [`ServerOptions::parse`] / [`AgentOptions::parse`], print
//! [`ConfigError::Help`] on `--help`, print deprecation notices, then call `validate()`.
//!
//! Module map: [`pflag`] (generic flag grammar), [`duration`] (Go durations), [`strconv`]
//! (Go number/bool syntax and quoting), [`identifiers`] (agent identifiers), [`labels`]
//! (lease labels and selectors), [`tls`] (TLS version / cipher names), [`logging`] (klog
//! flags), [`server`] and [`agent`] (per-binary tables, options and validation), [`error`].

#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod compat;
pub mod duration;
pub mod error;
pub mod extensions;
mod files;
pub mod identifiers;
pub mod labels;
pub mod logging;
pub mod pflag;
pub mod server;
pub mod strconv;
pub mod tls;

pub use agent::{AgentOptions, ServerCountSource, agent_flags};
pub use duration::GoDuration;
pub use error::ConfigError;
pub use identifiers::{AgentIdentifiers, IdentifierError, IdentifierMode};
pub use labels::LabelSelector;
pub use logging::LogOptions;
pub use pflag::{FlagKind, FlagSpec};
pub use server::{Mode, ProxyStrategy, ServerOptions, server_flags};
pub use tls::TlsVersion;
