//! The in-process test tier (tests only; this library is empty).
//!
//! `tests/inproc/` runs a real proxy-server and real proxy-agents in the test's process
//! over loopback (`konnectivity_testkit::inproc`), on tokio's paused clock: behaviour
//! that takes seconds or minutes of protocol time (dial timeouts and deadlines, agent
//! backoff, keepalive loss, drain) is checked in milliseconds of wall time, beside the
//! end-to-end tests of `konnectivity-e2e` that spawn the binaries.
//!
//! Run it with `cargo test -p konnectivity-inproc-tests`.
