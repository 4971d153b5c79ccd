//! The one error type of this crate.
//!
//! Every variant's `Display` is exactly the text an operator of the Go binaries would see, so
//! binaries can print it verbatim (`error: <msg>`) and tests can compare it literally.

/// Why command-line arguments did not yield usable options.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `-h`/`--help` was given; carries the usage text to print (exit status 0).
    #[error("{0}")]
    Help(String),
    /// Bad flag usage: unknown flag, missing argument, unparsable value (pflag's wording).
    #[error("{0}")]
    Parse(String),
    /// The flags parsed but break a validation rule; the text includes the
    /// `failed to validate … options with` prefix when it comes from `validate()`.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// True for [`ConfigError::Help`], which is a request rather than a failure.
    pub fn is_help(&self) -> bool {
        matches!(self, ConfigError::Help(_))
    }
}
