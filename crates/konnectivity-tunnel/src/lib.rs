//! The tunnel's I/O building blocks, shared by proxy-server and proxy-agent.
//!
//! An agent stream (`AgentService.Connect`) multiplexes every connection of one
//! agent–server pair. The rule that keeps it free of head-of-line blocking: **the task
//! that reads the shared stream never waits on one connection**. It hands each DATA
//! payload to that connection's [`queue`] (never blocks) and moves on. Each connection
//! has its own task that drains its queue into its socket or frontend, and returns
//! flow-control [`credit`] to the peer as it does. A connection whose reader stops
//! therefore stops only itself.
//!
//! - [`queue`]: the per-connection inbound queue with a byte budget; a push over it
//!   pauses the reader instead of growing memory.
//! - [`inbox`]: the channel under those queues, whose memory grows with what it holds.
//! - [`budget`]: the process-wide bound on queued bytes and the stall sweep.
//! - [`credit`]: the sender side of per-connection flow control, awaitable.
//! - [`outbound`]: the sender half of a shared stream: per-connection lanes taken in
//!   turn, control packets first, paced against what the transport has written.
//! - [`paced`]: the transport wrapper and socket option that bound the bytes below
//!   the scheduler.
//! - [`bufpool`]: reuse of full-size read buffers (no page faults per chunk).
//! - [`splice`]: relays one TCP (or TLS/UDS) socket to and from the shared stream.
//! - [`grpc`]: the agent stream's request/response bodies, framed without copying
//!   DATA payloads.
//!
//! The process around the data path (start-up, logging, signals, the health and admin
//! endpoints) is `konnectivity-runtime`: nothing here reads flags or installs a log
//! subscriber.
#![deny(missing_docs)]

pub mod budget;
pub mod bufpool;
pub mod credit;
pub mod grpc;
pub mod inbox;
pub mod outbound;
pub mod paced;
pub mod queue;
pub mod splice;
