//! Command-line configuration of `proxy-server` and `proxy-agent`.
//!
//! Turns argument lists into validated, typed options with the flag names, defaults, syntax
//! (Go pflag) and error messages of upstream Konnectivity, so operators can keep their
//! manifests. Binaries call [`ServerOptions::parse`] / [`AgentOptions::parse`], print
//! [`ConfigError::Help`] on `--help`, print deprecation notices, then call `validate()`.
//!
//! Module map: [`go`] (the Go behaviour flags expose: pflag's grammar and usage text, Go
//! durations, `strconv` syntax and quoting), [`flags`] (one declaration per flag: the
//! `options!` macro that turns rows into the struct, the flag table, defaults, reading and
//! printing), [`server`], [`agent`] and [`extensions`] (the rows of each binary and
//! upstream's cross-flag validation), [`logging`] (klog flags), [`identifiers`] (agent
//! identifiers), [`labels`] (lease labels and selectors), [`tls`] (TLS version / cipher
//! names), [`compat`] (how each flag is supported; `docs/compatibility.md`), [`error`].

#![deny(missing_docs)]

pub mod agent;
pub mod compat;
pub mod error;
pub mod extensions;
mod files;
pub mod flags;
pub mod go;
pub mod identifiers;
pub mod labels;
pub mod logging;
pub mod server;
#[cfg(test)]
mod testing;
pub mod tls;

pub use agent::{AgentOptions, ServerCountSource, agent_flags};
pub use error::ConfigError;
pub use go::duration::GoDuration;
pub use go::pflag::{FlagKind, FlagSpec};
pub use identifiers::{AgentIdentifiers, IdentifierError, IdentifierMode};
pub use labels::LabelSelector;
pub use logging::LogOptions;
pub use server::{Mode, ProxyStrategy, ServerOptions, server_flags};
pub use tls::TlsVersion;

/// What a binary's options offer to the shared start-up (`konnectivity_runtime::process::main`):
/// parsing, logging settings, notices and validation, the same way for proxy-server and
/// proxy-agent.
pub trait Program: Sized {
    /// The program's name in messages (`proxy-server`, `proxy-agent`).
    const NAME: &'static str;
    /// Parses the command line (without the program name).
    fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Self, ConfigError>;
    /// klog's settings.
    fn log(&self) -> &LogOptions;
    /// Notices about deprecated flags, logged before validation.
    fn deprecations(&self) -> &[String];
    /// Warnings about flags accepted but not implemented, logged after validation.
    fn unimplemented(&self) -> Vec<String>;
    /// Checks the flags together, as upstream does before starting.
    fn check(&self) -> Result<(), ConfigError>;
}
