//! Support for tests, benchmarks and `konnectivity demo`: a throwaway PKI and small
//! destination servers. Nothing here is used by the proxy itself.
//!
//! - [`pki`]: a CA and server/agent/frontend certificates written as PEM files;
//! - [`servers`]: HTTP "hello", TCP echo and byte-source servers on loopback.

pub mod pki;
pub mod servers;
