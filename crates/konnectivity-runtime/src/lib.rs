//! The process around proxy-server and proxy-agent, apart from their data path.
//!
//! Both binaries start, log, stop and answer health checks the same way; this crate is
//! that shared runtime, so the data path (`konnectivity-tunnel`) depends neither on the
//! flags (`konnectivity-config`) nor on the log subscriber.
//!
//! - [`process`]: `main`'s start-up (flags through [`konnectivity_config::Program`],
//!   logging, validation, the runtime) and exit codes, the log subscriber, signals, and
//!   binding listeners the way Go does;
//! - [`endpoints`]: the small HTTP/1.1 server behind the health and admin ports;
//! - [`metrics`]: Prometheus metric types and their text exposition, `process_*` included.
#![deny(missing_docs)]

pub mod endpoints;
pub mod metrics;
pub mod process;
