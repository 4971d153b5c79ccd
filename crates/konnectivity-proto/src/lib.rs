//! The Konnectivity wire protocol as generated Rust types.
//!
//! This crate owns nothing but the code `prost`/`tonic` generate from `proto/` at the
//! workspace root: the [`Packet`] message family and the `ProxyService` and
//! `AgentService` client and server stubs. The protos declare no package, so the RPC
//! paths are `/ProxyService/Proxy` and `/AgentService/Connect`, exactly as upstream.
//! Behaviour (state machines, error strings) lives in `konnectivity-core`.
#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

/// The gRPC path of the frontend RPC.
pub const PROXY_PATH: &str = "/ProxyService/Proxy";
/// The gRPC path of the agent RPC.
pub const CONNECT_PATH: &str = "/AgentService/Connect";
