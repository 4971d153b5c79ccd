//! Support for tests, benchmarks and `konnectivity demo`: a throwaway PKI, small
//! destination servers and child processes. Nothing here is used by the proxy itself.
//!
//! - [`pki`]: a CA and server/agent/frontend certificates written as PEM files;
//! - [`servers`]: HTTP "hello", TCP echo and byte-source servers on loopback;
//! - [`process`]: child processes killed on drop, free ports, HTTP GET, `/proc` readings.

pub mod pki;
pub mod process;
pub mod servers;
