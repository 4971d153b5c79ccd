//! Emulation of the Go libraries whose behaviour upstream's flags expose: spf13/pflag's
//! command-line grammar and usage text ([`pflag`]), `strconv`'s number, bool and quoting
//! syntax ([`strconv`]), and `time.ParseDuration` / `Duration.String` ([`duration`]).
//!
//! Nothing here knows what any flag means; the flag declarations live in [`crate::flags`]
//! and the per-binary tables in [`crate::server`], [`crate::agent`], [`crate::logging`] and
//! [`crate::extensions`].

pub mod duration;
pub mod pflag;
pub mod strconv;
