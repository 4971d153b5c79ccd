//! The sans-IO core of konnectivity-rs.
//!
//! Everything here is pure data and logic: no sockets, no tasks, no clock reads. The
//! server and agent crates wrap it with I/O.
//!
//! - [`packet`]: building packets and reading them with proto3 "getter" semantics.
//! - [`wire`]: the exact error strings and metadata keys that peers match on.
//! - [`connect`]: the HTTP-CONNECT request head parser and error status mapping.
//! - [`address`]: destination host extraction and Go-compatible dial error texts.
//! - [`frame`]: gRPC message framing of packets without copying DATA payloads.
//! - [`hpack`]: HTTP/2 header-block decoding, for the server's `:authority` rewrite.
//! - [`flow`]: per-connection credit accounting for the negotiated flow control.
//! - [`select`]: backend tables and the proxy strategies that pick an agent.
//! - [`policy`]: allowed destinations (CIDRs and ports).
//! - [`protocol`]: the allowlist of `DialRequest.protocol` values (`tcp`).
//! - [`dial`]: the typed dial error and its one mapping to wire text, HTTP status and
//!   metric label.
//! - [`socks`]: SOCKS5 (RFC 1928) greeting and CONNECT request parsing, replies.
//! - [`tunnel`]: one tunnel's state machine (both frontends), with the isolation rule
//!   and the pending dial's deadline.
#![deny(missing_docs)]

pub mod address;
pub mod connect;
pub mod datagram;
pub mod dial;
pub mod flow;
pub mod frame;
pub mod hpack;
pub mod packet;
pub mod policy;
pub mod protocol;
pub mod select;
pub mod socks;
pub mod tunnel;
pub mod wire;

pub use konnectivity_proto::{Packet, PacketType};
