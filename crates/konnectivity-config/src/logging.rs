//! The klog flags both binaries accept, and the [`LogOptions`] they fill.
//!
//! Upstream registers klog's Go flags with `_` normalised to `-` and sets `--v=4`. Manifests
//! pass `--logtostderr`, `--log-file`, `--log-file-max-size=0`, `-v=…`; refusing any of them
//! would stop a real deployment from starting, so every klog flag is accepted with klog's
//! syntax and kept here for the binary's logging setup to map onto `tracing`.

use crate::go::pflag::{FlagKind, FlagSpec, ParsedFlags};
use crate::go::strconv;

/// klog's settings as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// `--v` / `-v`: verbosity (default 4).
    pub v: i32,
    /// `--vmodule`: per-file verbosity overrides (`pattern=N`, zero levels dropped).
    pub vmodule: Vec<(String, i32)>,
    /// `--log-dir`.
    pub log_dir: String,
    /// `--log-file`.
    pub log_file: String,
    /// `--log-file-max-size` in MB (0 = unlimited; default 1800).
    pub log_file_max_size: u64,
    /// `--logtostderr` (default true).
    pub logtostderr: bool,
    /// `--alsologtostderr`.
    pub alsologtostderr: bool,
    /// `--alsologtostderrthreshold` (severity number; default 0 = INFO).
    pub alsologtostderrthreshold: i32,
    /// `--stderrthreshold` (severity number; default 2 = ERROR).
    pub stderrthreshold: i32,
    /// `--legacy-stderr-threshold-behavior` (default true).
    pub legacy_stderr_threshold_behavior: bool,
    /// `--add-dir-header`.
    pub add_dir_header: bool,
    /// `--skip-headers`.
    pub skip_headers: bool,
    /// `--skip-log-headers`.
    pub skip_log_headers: bool,
    /// `--one-output`.
    pub one_output: bool,
    /// `--log-backtrace-at` as `file.go:N`; empty when unset.
    pub log_backtrace_at: String,
    /// `--logging-format` (Kubernetes component-base's flag): `text` (default) or
    /// `json`. Not a klog flag; upstream's binaries do not have it.
    pub format: String,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            v: 4,
            vmodule: Vec::new(),
            log_dir: String::new(),
            log_file: String::new(),
            log_file_max_size: 1800,
            logtostderr: true,
            alsologtostderr: false,
            alsologtostderrthreshold: 0,
            stderrthreshold: 2,
            legacy_stderr_threshold_behavior: true,
            add_dir_header: false,
            skip_headers: false,
            skip_log_headers: false,
            one_output: false,
            log_backtrace_at: String::new(),
            format: "text".to_owned(),
        }
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

/// The klog flags, as registered by both binaries (names normalised to dashes).
pub(crate) static KLOG_FLAGS: &[FlagSpec] = &[
    FlagSpec::new(
        "add-dir-header",
        FlagKind::GoBool,
        "false",
        "If true, adds the file directory to the header of the log messages",
    ),
    FlagSpec::new(
        "alsologtostderr",
        FlagKind::GoBool,
        "false",
        "log to standard error as well as files (no effect when -logtostderr=true)",
    ),
    FlagSpec::new(
        "alsologtostderrthreshold",
        FlagKind::Custom {
            type_name: "severity",
            check: |s| parse_severity(s).map(drop),
        },
        "0",
        "logs at or above this threshold go to stderr when -alsologtostderr=true (no effect when -logtostderr=true)",
    ),
    FlagSpec::new(
        "legacy-stderr-threshold-behavior",
        FlagKind::GoBool,
        "true",
        "If true, stderrthreshold is ignored when logtostderr=true (legacy behavior). If false, stderrthreshold is honored even when logtostderr=true",
    ),
    FlagSpec::new(
        "logging-format",
        FlagKind::Custom {
            type_name: "string",
            check: check_logging_format,
        },
        "text",
        "Sets the log format. Permitted formats: \"json\", \"text\". (konnectivity-rs)",
    ),
    FlagSpec::new(
        "log-backtrace-at",
        FlagKind::Custom {
            type_name: "traceLocation",
            check: check_trace_location,
        },
        ":0",
        "when logging hits line file:N, emit a stack trace",
    ),
    FlagSpec::new(
        "log-dir",
        FlagKind::String,
        "",
        "If non-empty, write log files in this directory (no effect when -logtostderr=true)",
    ),
    FlagSpec::new(
        "log-file",
        FlagKind::String,
        "",
        "If non-empty, use this log file (no effect when -logtostderr=true)",
    ),
    FlagSpec::new(
        "log-file-max-size",
        FlagKind::GoUint64,
        "1800",
        "Defines the maximum size a log file can grow to (no effect when -logtostderr=true). Unit is megabytes. If the value is 0, the maximum file size is unlimited.",
    ),
    FlagSpec::new(
        "logtostderr",
        FlagKind::GoBool,
        "true",
        "log to standard error instead of files",
    ),
    FlagSpec::new(
        "one-output",
        FlagKind::GoBool,
        "false",
        "If true, only write logs to their native severity level (vs also writing to each lower severity level; no effect when -logtostderr=true)",
    ),
    FlagSpec::new(
        "skip-headers",
        FlagKind::GoBool,
        "false",
        "If true, avoid header prefixes in the log messages",
    ),
    FlagSpec::new(
        "skip-log-headers",
        FlagKind::GoBool,
        "false",
        "If true, avoid headers when opening log files (no effect when -logtostderr=true)",
    ),
    FlagSpec::new(
        "stderrthreshold",
        FlagKind::Custom {
            type_name: "severity",
            check: |s| parse_severity(s).map(drop),
        },
        "2",
        "logs at or above this threshold go to stderr when writing to files and stderr (no effect when -logtostderr=true or -alsologtostderr=true unless -legacy_stderr_threshold_behavior=false)",
    ),
    FlagSpec::new(
        "v",
        FlagKind::Custom {
            type_name: "Level",
            check: |s| parse_level(s).map(drop),
        },
        "4",
        "number for the log level verbosity",
    )
    .with_shorthand('v'),
    FlagSpec::new(
        "vmodule",
        FlagKind::Custom {
            type_name: "moduleSpec",
            check: |s| parse_vmodule(s).map(drop),
        },
        "",
        "comma-separated list of pattern=N settings for file-filtered logging",
    ),
];

impl LogOptions {
    /// Builds the options from defaults plus whatever klog flags were given.
    pub(crate) fn from_flags(p: &ParsedFlags) -> Self {
        let mut o = LogOptions::default();
        if let Some(v) = p.string("v").and_then(|s| parse_level(s).ok()) {
            o.v = v;
        }
        if let Some(m) = p.string("vmodule").and_then(|s| parse_vmodule(s).ok()) {
            o.vmodule = m;
        }
        if let Some(s) = p.string("log-dir") {
            o.log_dir = s.to_owned();
        }
        if let Some(s) = p.string("log-file") {
            o.log_file = s.to_owned();
        }
        if let Some(n) = p.uint64("log-file-max-size") {
            o.log_file_max_size = n;
        }
        if let Some(b) = p.bool("logtostderr") {
            o.logtostderr = b;
        }
        if let Some(b) = p.bool("alsologtostderr") {
            o.alsologtostderr = b;
        }
        if let Some(n) = p
            .string("alsologtostderrthreshold")
            .and_then(|s| parse_severity(s).ok())
        {
            o.alsologtostderrthreshold = n;
        }
        if let Some(n) = p
            .string("stderrthreshold")
            .and_then(|s| parse_severity(s).ok())
        {
            o.stderrthreshold = n;
        }
        if let Some(b) = p.bool("legacy-stderr-threshold-behavior") {
            o.legacy_stderr_threshold_behavior = b;
        }
        if let Some(b) = p.bool("add-dir-header") {
            o.add_dir_header = b;
        }
        if let Some(b) = p.bool("skip-headers") {
            o.skip_headers = b;
        }
        if let Some(b) = p.bool("skip-log-headers") {
            o.skip_log_headers = b;
        }
        if let Some(b) = p.bool("one-output") {
            o.one_output = b;
        }
        if let Some(s) = p.string("log-backtrace-at") {
            o.log_backtrace_at = s.to_owned();
        }
        if let Some(s) = p.string("logging-format") {
            o.format = s.to_owned();
        }
        o
    }

    /// Each klog flag with its effective value in the form pflag prints it.
    pub fn flag_values(&self) -> Vec<(&'static str, String)> {
        let vmodule: Vec<String> = self
            .vmodule
            .iter()
            .map(|(p, l)| format!("{p}={l}"))
            .collect();
        vec![
            ("add-dir-header", self.add_dir_header.to_string()),
            ("alsologtostderr", self.alsologtostderr.to_string()),
            (
                "alsologtostderrthreshold",
                self.alsologtostderrthreshold.to_string(),
            ),
            (
                "legacy-stderr-threshold-behavior",
                self.legacy_stderr_threshold_behavior.to_string(),
            ),
            (
                "log-backtrace-at",
                if self.log_backtrace_at.is_empty() {
                    ":0".to_owned()
                } else {
                    self.log_backtrace_at.clone()
                },
            ),
            ("log-dir", self.log_dir.clone()),
            ("logging-format", self.format.clone()),
            ("log-file", self.log_file.clone()),
            ("log-file-max-size", self.log_file_max_size.to_string()),
            ("logtostderr", self.logtostderr.to_string()),
            ("one-output", self.one_output.to_string()),
            ("skip-headers", self.skip_headers.to_string()),
            ("skip-log-headers", self.skip_log_headers.to_string()),
            ("stderrthreshold", self.stderrthreshold.to_string()),
            ("v", self.v.to_string()),
            ("vmodule", vmodule.join(",")),
        ]
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
        assert_eq!(values.len(), KLOG_FLAGS.len());
        for spec in KLOG_FLAGS {
            let v = values
                .iter()
                .find(|(n, _)| *n == spec.name)
                .map(|(_, v)| v.as_str());
            assert_eq!(v, Some(spec.default), "{}", spec.name);
        }
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
        assert_eq!(
            parse(&["--v=x"]),
            Err("invalid argument \"x\" for \"-v, --v\" flag: strconv.ParseInt: parsing \"x\": invalid syntax".to_owned())
        );
        assert_eq!(
            parse(&["--vmodule=a"]),
            Err("invalid argument \"a\" for \"--vmodule\" flag: syntax error: expect comma-separated list of filename=N".to_owned())
        );
        assert_eq!(
            parse(&["--log-backtrace-at=nodot:1"]),
            Err("invalid argument \"nodot:1\" for \"--log-backtrace-at\" flag: syntax error: expect file.go:234".to_owned())
        );
        assert_eq!(
            parse(&["--logtostderr=maybe"]),
            Err("invalid argument \"maybe\" for \"--logtostderr\" flag: parse error".to_owned())
        );
        assert!(parse(&["--stderrthreshold=loud"]).is_err());
        assert!(parse(&["--log-file-max-size=-1"]).is_err());
    }
}
