//! The klog flags both binaries accept, and the [`LogOptions`] they fill.
//!
//! Upstream registers klog's Go flags with `_` normalised to `-` and sets `--v=4`. Manifests
//! pass `--logtostderr`, `--log-file`, `--log-file-max-size=0`, `-v=…`; refusing any of them
//! would stop a real deployment from starting, so every klog flag is accepted with klog's
//! syntax and kept here for the binary's logging setup to map onto `tracing`.

use crate::flags::{Codec, FlagSet, Native, options};
use crate::go::pflag::{FlagKind, FlagSpec, FlagValue, ParsedFlags};
use crate::go::strconv;

options! {
    /// klog's settings as given on the command line, one row per flag (names normalised to
    /// dashes, as upstream registers them).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct LogOptions in KLOG_FLAGS {
        /// If true, adds the file directory to the header.
        add_dir_header: bool = "add-dir-header", "false",
            "If true, adds the file directory to the header of the log messages",
            via GoBool;
        alsologtostderr: bool = "alsologtostderr", "false",
            "log to standard error as well as files (no effect when -logtostderr=true)",
            via GoBool;
        /// Severity number (0 = INFO).
        alsologtostderrthreshold: i32 = "alsologtostderrthreshold", "0",
            "logs at or above this threshold go to stderr when -alsologtostderr=true (no effect when -logtostderr=true)",
            via Severity;
        legacy_stderr_threshold_behavior: bool = "legacy-stderr-threshold-behavior", "true",
            "If true, stderrthreshold is ignored when logtostderr=true (legacy behavior). If false, stderrthreshold is honored even when logtostderr=true",
            via GoBool;
        /// Kubernetes component-base's flag: `text` or `json`. Not a klog flag; upstream's
        /// binaries do not have it.
        format: String = "logging-format", "text",
            "Sets the log format. Permitted formats: \"json\", \"text\". (konnectivity-rs)",
            via LoggingFormat;
        /// As `file.go:N`; empty when unset.
        log_backtrace_at: String = "log-backtrace-at", ":0",
            "when logging hits line file:N, emit a stack trace",
            via TraceLocation;
        log_dir: String = "log-dir", "",
            "If non-empty, write log files in this directory (no effect when -logtostderr=true)";
        log_file: String = "log-file", "",
            "If non-empty, use this log file (no effect when -logtostderr=true)";
        /// In MB (0 = unlimited).
        log_file_max_size: u64 = "log-file-max-size", "1800",
            "Defines the maximum size a log file can grow to (no effect when -logtostderr=true). Unit is megabytes. If the value is 0, the maximum file size is unlimited.",
            via GoUint64;
        logtostderr: bool = "logtostderr", "true",
            "log to standard error instead of files",
            via GoBool;
        one_output: bool = "one-output", "false",
            "If true, only write logs to their native severity level (vs also writing to each lower severity level; no effect when -logtostderr=true)",
            via GoBool;
        skip_headers: bool = "skip-headers", "false",
            "If true, avoid header prefixes in the log messages",
            via GoBool;
        skip_log_headers: bool = "skip-log-headers", "false",
            "If true, avoid headers when opening log files (no effect when -logtostderr=true)",
            via GoBool;
        /// Severity number (2 = ERROR).
        stderrthreshold: i32 = "stderrthreshold", "2",
            "logs at or above this threshold go to stderr when writing to files and stderr (no effect when -logtostderr=true or -alsologtostderr=true unless -legacy_stderr_threshold_behavior=false)",
            via Severity;
        /// Also `-v`: verbosity.
        v: i32 = "v", "4",
            "number for the log level verbosity",
            via Level, short 'v';
        /// Per-file verbosity overrides (`pattern=N`, zero levels dropped).
        vmodule: Vec<(String, i32)> = "vmodule", "",
            "comma-separated list of pattern=N settings for file-filtered logging",
            via VModule;
    }
    also []
    extra {}
}

impl Default for LogOptions {
    fn default() -> Self {
        Self::declared_defaults()
    }
}

const SEVERITIES: [&str; 4] = ["INFO", "WARNING", "ERROR", "FATAL"];

fn parse_level(s: &str) -> Result<i32, String> {
    strconv::parse_int(s, 10, 32)
        .map(|v| v as i32)
        .map_err(|e| e.to_string())
}

fn parse_severity(s: &str) -> Result<i32, String> {
    let upper = s.to_uppercase();
    match SEVERITIES.iter().position(|n| *n == upper) {
        Some(i) => Ok(i as i32),
        None => parse_level(s),
    }
}

fn parse_vmodule(s: &str) -> Result<Vec<(String, i32)>, String> {
    const SYNTAX: &str = "syntax error: expect comma-separated list of filename=N";
    let mut out = Vec::new();
    for pat in s.split(',').filter(|p| !p.is_empty()) {
        let parts: Vec<&str> = pat.split('=').collect();
        let [pattern, level] = parts.as_slice() else {
            return Err(SYNTAX.to_owned());
        };
        if pattern.is_empty() || level.is_empty() {
            return Err(SYNTAX.to_owned());
        }
        let level = parse_level(level).map_err(|_| SYNTAX.to_owned())?;
        if level < 0 {
            return Err("negative value for vmodule level".to_owned());
        }
        if level > 0 {
            out.push(((*pattern).to_owned(), level));
        }
    }
    Ok(out)
}

fn check_logging_format(s: &str) -> Result<(), String> {
    match s {
        "text" | "json" => Ok(()),
        _ => Err(format!(
            "unsupported log format {s:?}; permitted formats: \"json\", \"text\""
        )),
    }
}

fn check_trace_location(s: &str) -> Result<(), String> {
    const SYNTAX: &str = "syntax error: expect file.go:234";
    if s.is_empty() {
        return Ok(());
    }
    let parts: Vec<&str> = s.split(':').collect();
    let [file, line] = parts.as_slice() else {
        return Err(SYNTAX.to_owned());
    };
    if !file.contains('.') {
        return Err(SYNTAX.to_owned());
    }
    let line = strconv::parse_int(line, 10, 64).map_err(|_| SYNTAX.to_owned())?;
    if line <= 0 {
        return Err("negative or zero value for level".to_owned());
    }
    Ok(())
}

/// A text flag checked by klog's parser and kept as the number it parses to.
fn number_from(value: &FlagValue, parse: fn(&str) -> Result<i32, String>) -> Option<i32> {
    match value {
        FlagValue::String(s) => parse(s).ok(),
        _ => None,
    }
}

/// klog codecs that print with `to_string`: the struct, its field type, its pflag kind
/// and how a parsed value becomes the field.
macro_rules! klog_codecs {
    ($($(#[$doc:meta])* $codec:ident: $ty:ty = $kind:expr, from |$v:ident| $from:expr;)+) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $codec;

        impl Codec<$ty> for $codec {
            const KIND: FlagKind = $kind;
            fn from_value($v: &FlagValue) -> Option<$ty> {
                $from
            }
            fn show(value: &$ty) -> String {
                value.to_string()
            }
        }
    )+};
}

klog_codecs! {
    /// klog's Go `flag` bool, as pflag wraps it (errors read `parse error`).
    GoBool: bool = FlagKind::GoBool,
        from |value| if let FlagValue::Bool(b) = value { Some(*b) } else { None };
    /// klog's Go `flag` uint64.
    GoUint64: u64 = FlagKind::GoUint64,
        from |value| if let FlagValue::Uint64(u) = value { Some(*u) } else { None };
    /// klog's `Level` (`-v`).
    Level: i32 = FlagKind::Custom { type_name: "Level", check: |s| parse_level(s).map(drop) },
        from |value| number_from(value, parse_level);
    /// klog's `severity` (a name or a number), kept as the number.
    Severity: i32 = FlagKind::Custom {
            type_name: "severity",
            check: |s| parse_severity(s).map(drop),
        },
        from |value| number_from(value, parse_severity);
}

/// klog's `moduleSpec` (`--vmodule`).
#[derive(Debug)]
pub struct VModule;

impl Codec<Vec<(String, i32)>> for VModule {
    const KIND: FlagKind = FlagKind::Custom {
        type_name: "moduleSpec",
        check: |s| parse_vmodule(s).map(drop),
    };
    fn from_value(value: &FlagValue) -> Option<Vec<(String, i32)>> {
        match value {
            FlagValue::String(s) => parse_vmodule(s).ok(),
            _ => None,
        }
    }
    fn show(value: &Vec<(String, i32)>) -> String {
        let items: Vec<String> = value.iter().map(|(p, l)| format!("{p}={l}")).collect();
        items.join(",")
    }
}

/// klog's `traceLocation` (`--log-backtrace-at`): printed `:0` when unset, which klog itself
/// would not accept back, so the default is the empty text.
#[derive(Debug)]
pub struct TraceLocation;

impl Codec<String> for TraceLocation {
    const KIND: FlagKind = FlagKind::Custom {
        type_name: "traceLocation",
        check: check_trace_location,
    };
    fn default(_: &FlagSpec) -> String {
        String::new()
    }
    fn show(value: &String) -> String {
        if value.is_empty() {
            ":0".to_owned()
        } else {
            value.clone()
        }
    }
    fn from_value(value: &FlagValue) -> Option<String> {
        <Native as Codec<String>>::from_value(value)
    }
}

/// `--logging-format`: a string checked against the permitted formats.
#[derive(Debug)]
pub struct LoggingFormat;

/// A string to pflag, printed as it is; only the check is `--logging-format`'s own.
impl Codec<String> for LoggingFormat {
    const KIND: FlagKind = FlagKind::Custom {
        type_name: "string",
        check: check_logging_format,
    };
    fn from_value(value: &FlagValue) -> Option<String> {
        <Native as Codec<String>>::from_value(value)
    }
    fn show(value: &String) -> String {
        <Native as Codec<String>>::show(value)
    }
}

impl LogOptions {
    /// Builds the options from defaults plus whatever klog flags were given.
    pub(crate) fn from_flags(p: &ParsedFlags) -> Self {
        let mut o = LogOptions::default();
        o.read_flags(p);
        o
    }

    /// Each klog flag with its effective value in the form pflag prints it.
    pub fn flag_values(&self) -> Vec<(&'static str, String)> {
        self.declared_values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::go::pflag;

    fn parse(args: &[&str]) -> Result<LogOptions, String> {
        pflag::parse(KLOG_FLAGS, "test", args.iter().map(|s| (*s).to_owned()))
            .map(|p| LogOptions::from_flags(&p))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn klog_defaults_match_flag_table() {
        let values = LogOptions::default().flag_values();
        crate::testing::assert_defaults(&values, KLOG_FLAGS, None);
    }

    #[test]
    fn manifest_style_klog_flags_are_accepted() {
        let o = parse(&[
            "--logtostderr=false",
            "--log-file=/var/log/konnectivity-server.log",
            "--log-file-max-size=0",
            "--alsologtostderr",
            "-v=5",
            "--vmodule=server=6,agent=0",
            "--stderrthreshold=warning",
            "--log-backtrace-at=server.go:12",
            "--one-output=true",
            "--skip-headers",
            "--skip-log-headers",
            "--add-dir-header",
            "--log-dir=/tmp",
            "--legacy-stderr-threshold-behavior=false",
            "--alsologtostderrthreshold=1",
        ])
        .unwrap();
        assert!(!o.logtostderr);
        assert_eq!(o.log_file, "/var/log/konnectivity-server.log");
        assert_eq!(o.log_file_max_size, 0);
        assert!(o.alsologtostderr);
        assert_eq!(o.v, 5);
        assert_eq!(o.vmodule, [("server".to_owned(), 6)]);
        assert_eq!(o.stderrthreshold, 1);
        assert_eq!(o.log_backtrace_at, "server.go:12");
        assert!(o.one_output && o.skip_headers && o.skip_log_headers && o.add_dir_header);
        assert_eq!(o.log_dir, "/tmp");
        assert!(!o.legacy_stderr_threshold_behavior);
        assert_eq!(o.alsologtostderrthreshold, 1);
        assert_eq!(parse(&["-v", "2"]).map(|o| o.v), Ok(2));
        assert_eq!(parse(&["--v=3"]).map(|o| o.v), Ok(3));
    }

    #[test]
    fn bad_klog_values_are_rejected_with_klog_reasons() {
        for (arg, want) in [
            (
                "--v=x",
                "invalid argument \"x\" for \"-v, --v\" flag: strconv.ParseInt: parsing \"x\": invalid syntax",
            ),
            (
                "--vmodule=a",
                "invalid argument \"a\" for \"--vmodule\" flag: syntax error: expect comma-separated list of filename=N",
            ),
            (
                "--log-backtrace-at=nodot:1",
                "invalid argument \"nodot:1\" for \"--log-backtrace-at\" flag: syntax error: expect file.go:234",
            ),
            (
                "--logtostderr=maybe",
                "invalid argument \"maybe\" for \"--logtostderr\" flag: parse error",
            ),
        ] {
            assert_eq!(parse(&[arg]), Err(want.to_owned()), "{arg}");
        }
        assert!(parse(&["--stderrthreshold=loud"]).is_err());
        assert!(parse(&["--log-file-max-size=-1"]).is_err());
    }
}
