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

pub mod agent;
pub mod compat;
pub mod duration;
pub mod error;
pub mod extensions;
mod files;
pub mod flags;
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

/// What a binary's options offer to the shared start-up (`konnectivity_tunnel::process::main`):
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

impl Program for AgentOptions {
    const NAME: &'static str = "proxy-agent";
    fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Self, ConfigError> {
        Self::parse(args)
    }
    fn log(&self) -> &LogOptions {
        &self.log
    }
    fn deprecations(&self) -> &[String] {
        &self.deprecation_notices
    }
    fn unimplemented(&self) -> Vec<String> {
        compat::not_implemented_warnings(&self.explicit_flags, false)
    }
    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

impl Program for ServerOptions {
    const NAME: &'static str = "proxy-server";
    fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Self, ConfigError> {
        Self::parse(args)
    }
    fn log(&self) -> &LogOptions {
        &self.log
    }
    fn deprecations(&self) -> &[String] {
        &self.deprecation_notices
    }
    fn unimplemented(&self) -> Vec<String> {
        compat::not_implemented_warnings(&self.explicit_flags, true)
    }
    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}
