//! A small command-line parser with spf13/pflag semantics.
//!
//! Upstream binaries are cobra commands over pflag, and Kubernetes manifests are written against
//! its exact behaviour: `--flag=value` and `--flag value`, bare bools that never swallow the next
//! argument, last-wins repeats, CSV string slices that append, Go integer prefixes, `--` ending
//! the flags, positional arguments ignored, and pflag's error texts. This module owns that
//! grammar, driven by a static [`FlagSpec`] table per binary; it knows nothing about what any
//! flag means. The typed option structs read the [`ParsedFlags`] it returns.

use std::collections::VecDeque;

use crate::error::ConfigError;
use crate::go::duration::GoDuration;
use crate::go::strconv::{self, NumErrorKind, quote};

/// Validates the text of a [`FlagKind::Custom`] flag; `Err` carries the reason shown after
/// `invalid argument "<v>" for "--<name>" flag: `.
pub type CheckFn = fn(&str) -> Result<(), String>;

/// How a flag's argument is parsed (pflag's `Value` types, plus the Go `flag` package types
/// that klog registers and pflag wraps).
#[derive(Clone, Copy, Debug)]
pub enum FlagKind {
    /// pflag `bool`: bare `--x` means true; `--x=<ParseBool>`.
    Bool,
    /// pflag `int` (Go `int`, 64-bit): `strconv.ParseInt(s, 0, 64)`.
    Int,
    /// pflag `float32`.
    Float32,
    /// pflag `string`.
    String,
    /// pflag `stringSlice`: CSV; the first explicit use replaces the default, repeats append.
    StringSlice,
    /// pflag `duration`: Go `time.ParseDuration`.
    Duration,
    /// Go `flag` bool wrapped by pflag (klog): like [`FlagKind::Bool`], errors read `parse error`.
    GoBool,
    /// Go `flag` uint64 wrapped by pflag (klog): `strconv.ParseUint(s, 0, 64)`.
    GoUint64,
    /// Any other `Value`: checked by `check`, stored as text, printed with `type_name`.
    Custom {
        /// What pflag's `Value.Type()` returns for it.
        type_name: &'static str,
        /// Syntax check run when the flag is set.
        check: CheckFn,
    },
}

/// One row of a binary's flag table: everything pflag knows about a flag.
#[derive(Clone, Copy, Debug)]
pub struct FlagSpec {
    /// Long name, without dashes.
    pub name: &'static str,
    /// One-letter form (`-v`, `-h`), if any.
    pub shorthand: Option<char>,
    /// Value type.
    pub kind: FlagKind,
    /// Default in the form pflag prints it (`Value.String()` of the default).
    pub default: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Left out of the usage text.
    pub hidden: bool,
    /// Deprecation message; using the flag yields a notice
    /// `Flag --<name> has been deprecated, <message>`.
    pub deprecated: Option<&'static str>,
}

impl FlagSpec {
    /// A visible, non-deprecated flag without shorthand.
    pub const fn new(
        name: &'static str,
        kind: FlagKind,
        default: &'static str,
        help: &'static str,
    ) -> Self {
        FlagSpec {
            name,
            shorthand: None,
            kind,
            default,
            help,
            hidden: false,
            deprecated: None,
        }
    }

    /// The same flag with a one-letter form.
    pub const fn with_shorthand(mut self, c: char) -> Self {
        self.shorthand = Some(c);
        self
    }

    /// The same flag, deprecated (and therefore hidden, as pflag's `MarkDeprecated` does).
    pub const fn deprecated(mut self, message: &'static str) -> Self {
        self.deprecated = Some(message);
        self.hidden = true;
        self
    }

    /// True for flags that take no argument when given bare.
    pub fn is_bool(&self) -> bool {
        matches!(self.kind, FlagKind::Bool | FlagKind::GoBool)
    }

    /// pflag's `Value.Type()` for this flag.
    pub fn value_type(&self) -> &'static str {
        match self.kind {
            FlagKind::Bool | FlagKind::GoBool => "bool",
            FlagKind::Int => "int",
            FlagKind::Float32 => "float32",
            FlagKind::String => "string",
            FlagKind::StringSlice => "stringSlice",
            FlagKind::Duration => "duration",
            FlagKind::GoUint64 => "uint64",
            FlagKind::Custom { type_name, .. } => type_name,
        }
    }

    /// The type word the usage text prints after the name (empty for bools).
    pub fn type_name(&self) -> &'static str {
        match self.value_type() {
            "bool" => "",
            "stringSlice" => "strings",
            "uint64" => "uint",
            other => other,
        }
    }

    /// pflag prints `(default …)` only when the default is not the type's zero value.
    fn default_is_zero(&self) -> bool {
        match self.kind {
            FlagKind::Bool | FlagKind::GoBool => self.default == "false",
            FlagKind::Duration => matches!(self.default, "0" | "0s"),
            FlagKind::Int | FlagKind::GoUint64 | FlagKind::Float32 => self.default == "0",
            FlagKind::String => self.default.is_empty(),
            FlagKind::StringSlice => self.default == "[]",
            FlagKind::Custom { .. } => matches!(self.default, "" | "false" | "<nil>" | "0"),
        }
    }

    /// How errors name the flag: `--name`, or `-v, --v` when it has a shorthand.
    fn display_name(&self) -> String {
        match self.shorthand {
            Some(c) => format!("-{c}, --{}", self.name),
            None => format!("--{}", self.name),
        }
    }

    /// Parses one argument for this flag.
    pub(crate) fn parse_value(&self, raw: &str) -> Result<FlagValue, String> {
        match self.kind {
            FlagKind::Bool => strconv::parse_bool(raw)
                .map(FlagValue::Bool)
                .map_err(|e| e.to_string()),
            FlagKind::GoBool => strconv::parse_bool(raw)
                .map(FlagValue::Bool)
                .map_err(|_| "parse error".to_owned()),
            FlagKind::Int => strconv::parse_int(raw, 0, 64)
                .map(FlagValue::Int)
                .map_err(|e| e.to_string()),
            FlagKind::GoUint64 => strconv::parse_uint(raw, 0, 64)
                .map(FlagValue::Uint64)
                .map_err(|e| match e.kind {
                    NumErrorKind::Syntax => "parse error".to_owned(),
                    NumErrorKind::Range => "value out of range".to_owned(),
                }),
            FlagKind::Float32 => strconv::parse_float32(raw)
                .map(FlagValue::Float32)
                .map_err(|e| e.to_string()),
            FlagKind::String => Ok(FlagValue::String(raw.to_owned())),
            FlagKind::StringSlice => {
                // `[]` is how pflag prints an empty slice; accept it back as empty.
                if raw == "[]" {
                    Ok(FlagValue::StringSlice(Vec::new()))
                } else {
                    parse_csv_record(raw).map(FlagValue::StringSlice)
                }
            }
            FlagKind::Duration => GoDuration::parse(raw)
                .map(FlagValue::Duration)
                .map_err(|e| e.to_string()),
            FlagKind::Custom { check, .. } => {
                check(raw).map(|()| FlagValue::String(raw.to_owned()))
            }
        }
    }
}

/// A parsed flag argument.
#[derive(Clone, Debug, PartialEq)]
pub enum FlagValue {
    /// From [`FlagKind::Bool`] / [`FlagKind::GoBool`].
    Bool(bool),
    /// From [`FlagKind::Int`].
    Int(i64),
    /// From [`FlagKind::GoUint64`].
    Uint64(u64),
    /// From [`FlagKind::Float32`].
    Float32(f32),
    /// From [`FlagKind::String`] and [`FlagKind::Custom`].
    String(String),
    /// From [`FlagKind::StringSlice`]: the accumulated list after this use.
    StringSlice(Vec<String>),
    /// From [`FlagKind::Duration`].
    Duration(GoDuration),
}

/// The outcome of parsing: explicit assignments in command-line order, plus bookkeeping the
/// binaries need (which flags were set, deprecation notices, positional arguments).
#[derive(Clone, Debug, Default)]
pub struct ParsedFlags {
    assignments: Vec<(&'static str, FlagValue)>,
    explicit: Vec<&'static str>,
    deprecation_notices: Vec<String>,
    positional: Vec<String>,
}

/// Getters of [`ParsedFlags`] for the flag kinds whose value is `Copy`: the last value
/// of the flag `name` when it has that kind.
macro_rules! typed_getters {
    ($($(#[$doc:meta])* $getter:ident -> $ty:ty = $variant:ident;)+) => {$(
        $(#[$doc])*
        pub fn $getter(&self, name: &str) -> Option<$ty> {
            match self.value(name) {
                Some(FlagValue::$variant(v)) => Some(*v),
                _ => None,
            }
        }
    )+};
}

impl ParsedFlags {
    /// The last value assigned to any of `names` (aliases writing one variable share it).
    pub fn last_of(&self, names: &[&str]) -> Option<&FlagValue> {
        self.assignments
            .iter()
            .rev()
            .find(|(n, _)| names.contains(n))
            .map(|(_, v)| v)
    }

    /// The last value assigned to `name`.
    pub fn value(&self, name: &str) -> Option<&FlagValue> {
        self.last_of(&[name])
    }

    /// True when `name` appeared on the command line.
    pub fn is_set(&self, name: &str) -> bool {
        self.explicit.contains(&name)
    }

    /// Last value of a string-typed flag.
    pub fn string(&self, name: &str) -> Option<&str> {
        match self.value(name) {
            Some(FlagValue::String(s)) => Some(s),
            _ => None,
        }
    }

    typed_getters! {
        /// Last value of a bool flag.
        bool -> bool = Bool;
        /// Last value of an int flag.
        int -> i64 = Int;
        /// Last value of a uint64 flag.
        uint64 -> u64 = Uint64;
        /// Last value of a float32 flag.
        float32 -> f32 = Float32;
        /// Last value of a duration flag.
        duration -> GoDuration = Duration;
    }

    /// Accumulated value of a string-slice flag.
    pub fn string_slice(&self, name: &str) -> Option<&[String]> {
        match self.value(name) {
            Some(FlagValue::StringSlice(v)) => Some(v),
            _ => None,
        }
    }

    /// Names of the flags set on the command line, in order of first use.
    pub fn explicit_flags(&self) -> &[&'static str] {
        &self.explicit
    }

    /// One `Flag --<name> has been deprecated, <msg>` notice per use of a deprecated flag.
    pub fn deprecation_notices(&self) -> &[String] {
        &self.deprecation_notices
    }

    /// Non-flag arguments (ignored by both binaries).
    pub fn positional(&self) -> &[String] {
        &self.positional
    }

    fn assign(&mut self, spec: &FlagSpec, raw: &str) -> Result<(), ConfigError> {
        let mut value = spec.parse_value(raw).map_err(|reason| {
            ConfigError::Parse(format!(
                "invalid argument {} for {} flag: {}",
                quote(raw),
                quote(&spec.display_name()),
                reason
            ))
        })?;
        if let FlagValue::StringSlice(items) = &mut value
            && let Some(FlagValue::StringSlice(previous)) = self.value(spec.name)
        {
            let mut all = previous.clone();
            all.append(items);
            *items = all;
        }
        self.assignments.push((spec.name, value));
        if !self.explicit.contains(&spec.name) {
            self.explicit.push(spec.name);
        }
        if let Some(message) = spec.deprecated {
            self.deprecation_notices.push(format!(
                "Flag --{} has been deprecated, {}",
                spec.name, message
            ));
        }
        Ok(())
    }
}

/// Parses `args` (without the program name) against `specs`.
///
/// A `help` bool flag in `specs` set to true turns a successful parse into
/// [`ConfigError::Help`] carrying [`usage`]; flag errors take precedence, as in cobra.
pub fn parse<I>(
    specs: &'static [FlagSpec],
    command: &str,
    args: I,
) -> Result<ParsedFlags, ConfigError>
where
    I: IntoIterator<Item = String>,
{
    let mut args: VecDeque<String> = args.into_iter().collect();
    let mut parsed = ParsedFlags::default();
    while let Some(arg) = args.pop_front() {
        if arg.len() < 2 || !arg.starts_with('-') {
            parsed.positional.push(arg);
        } else if arg == "--" {
            parsed.positional.extend(args.drain(..));
        } else if let Some(body) = arg.strip_prefix("--") {
            parse_long(specs, &mut parsed, &arg, body, &mut args)?;
        } else {
            parse_shorthands(specs, &mut parsed, &arg[1..], &mut args)?;
        }
    }
    if parsed.bool("help") == Some(true) {
        return Err(ConfigError::Help(usage(command, specs)));
    }
    Ok(parsed)
}

fn parse_long(
    specs: &[FlagSpec],
    parsed: &mut ParsedFlags,
    arg: &str,
    body: &str,
    rest: &mut VecDeque<String>,
) -> Result<(), ConfigError> {
    if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
        return Err(ConfigError::Parse(format!("bad flag syntax: {arg}")));
    }
    let (name, inline) = match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    };
    let Some(spec) = specs.iter().find(|s| s.name == name) else {
        return Err(ConfigError::Parse(format!("unknown flag: --{name}")));
    };
    let value = match inline {
        Some(v) => v.to_owned(),
        None if spec.is_bool() => "true".to_owned(),
        None => rest
            .pop_front()
            .ok_or_else(|| ConfigError::Parse(format!("flag needs an argument: {arg}")))?,
    };
    parsed.assign(spec, &value)
}

fn parse_shorthands(
    specs: &[FlagSpec],
    parsed: &mut ParsedFlags,
    mut shorthands: &str,
    rest: &mut VecDeque<String>,
) -> Result<(), ConfigError> {
    while let Some(c) = shorthands.chars().next() {
        // Go test binaries' `-test.*` flags are skipped by pflag; mirror that.
        if shorthands.starts_with("test.") {
            return Ok(());
        }
        let Some(spec) = specs.iter().find(|s| s.shorthand == Some(c)) else {
            return Err(ConfigError::Parse(format!(
                "unknown shorthand flag: '{c}' in -{shorthands}"
            )));
        };
        let after = &shorthands[c.len_utf8()..];
        let value;
        if after.len() > 1 && after.starts_with('=') {
            value = after[1..].to_owned();
            shorthands = "";
        } else if spec.is_bool() {
            value = "true".to_owned();
            shorthands = after;
        } else if !after.is_empty() {
            value = after.to_owned();
            shorthands = "";
        } else if let Some(next) = rest.pop_front() {
            value = next;
            shorthands = "";
        } else {
            return Err(ConfigError::Parse(format!(
                "flag needs an argument: '{c}' in -{shorthands}"
            )));
        }
        parsed.assign(spec, &value)?;
    }
    Ok(())
}

/// Cobra/pflag-style usage text: every visible flag, sorted, with type, help and default.
pub fn usage(command: &str, specs: &[FlagSpec]) -> String {
    let mut visible: Vec<&FlagSpec> = specs.iter().filter(|s| !s.hidden).collect();
    visible.sort_by_key(|s| s.name);
    let rows: Vec<(String, String)> = visible
        .iter()
        .map(|s| {
            let mut head = match s.shorthand {
                Some(c) => format!("  -{c}, --{}", s.name),
                None => format!("      --{}", s.name),
            };
            let t = s.type_name();
            if !t.is_empty() {
                head.push(' ');
                head.push_str(t);
            }
            let mut text = s.help.to_owned();
            if !s.default_is_zero() {
                if s.value_type() == "string" {
                    text.push_str(&format!(" (default {})", quote(s.default)));
                } else {
                    text.push_str(&format!(" (default {})", s.default));
                }
            }
            (head, text)
        })
        .collect();
    let width = rows.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
    let mut out = format!("Usage:\n  {command} [flags]\n\nFlags:\n");
    for (head, text) in rows {
        out.push_str(&format!("{head:<width$}   {text}\n"));
    }
    out
}

/// pflag's `String()` of a string slice: `[a,b]`, fields CSV-quoted where needed.
pub fn format_string_slice(items: &[String]) -> String {
    let fields: Vec<String> = items
        .iter()
        .map(|f| {
            let needs_quotes = f == r"\."
                || f.contains([',', '"', '\r', '\n'])
                || f.chars().next().is_some_and(char::is_whitespace);
            if needs_quotes {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect();
    format!("[{}]", fields.join(","))
}

/// Go `encoding/csv`'s first record of `s` (pflag's string-slice syntax); `""` is empty.
fn parse_csv_record(s: &str) -> Result<Vec<String>, String> {
    let line = s
        .strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .unwrap_or(s);
    if line.is_empty() {
        return Ok(Vec::new());
    }
    let bytes = line.as_bytes();
    let mut fields = Vec::new();
    let mut pos = 0;
    loop {
        if bytes.get(pos) == Some(&b'"') {
            // Quoted field: `""` is a literal quote; the closing quote must end the field.
            let mut field = Vec::new();
            let mut i = pos + 1;
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(format!(
                            "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                            i + 1
                        ));
                    }
                    Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                        field.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&b) => {
                        field.push(b);
                        i += 1;
                    }
                }
            }
            fields.push(String::from_utf8_lossy(&field).into_owned());
            match bytes.get(i) {
                None => return Ok(fields),
                Some(b',') => pos = i + 1,
                Some(_) => {
                    return Err(format!(
                        "parse error on line 1, column {}: extraneous or missing \" in quoted-field",
                        i + 1
                    ));
                }
            }
        } else {
            let end = bytes[pos..]
                .iter()
                .position(|&b| b == b',')
                .map_or(bytes.len(), |e| pos + e);
            let field = &line[pos..end];
            if let Some(q) = field.find('"') {
                return Err(format!(
                    "parse error on line 1, column {}: bare \" in non-quoted field",
                    pos + q + 1
                ));
            }
            fields.push(field.to_owned());
            if end == bytes.len() {
                return Ok(fields);
            }
            pos = end + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_even(s: &str) -> Result<(), String> {
        if s.len().is_multiple_of(2) {
            Ok(())
        } else {
            Err("odd length".to_owned())
        }
    }

    static SPECS: &[FlagSpec] = &[
        FlagSpec::new("name", FlagKind::String, "", "a string"),
        FlagSpec::new("mode", FlagKind::String, "grpc", "a mode"),
        FlagSpec::new("port", FlagKind::Int, "8090", "a port"),
        FlagSpec::new("enabled", FlagKind::Bool, "false", "a bool"),
        FlagSpec::new("on", FlagKind::Bool, "true", "a bool defaulting to true"),
        FlagSpec::new("list", FlagKind::StringSlice, "[]", "a list"),
        FlagSpec::new("wait", FlagKind::Duration, "1h0m0s", "a duration"),
        FlagSpec::new("qps", FlagKind::Float32, "0", "a float"),
        FlagSpec::new("size", FlagKind::GoUint64, "1800", "a go uint64"),
        FlagSpec::new("tostderr", FlagKind::GoBool, "true", "a go bool"),
        FlagSpec::new(
            "even",
            FlagKind::Custom {
                type_name: "string",
                check: check_even,
            },
            "",
            "custom",
        ),
        FlagSpec::new("v", FlagKind::Int, "4", "verbosity").with_shorthand('v'),
        FlagSpec::new("old", FlagKind::Bool, "true", "old").deprecated("Use --new instead"),
        FlagSpec::new("help", FlagKind::Bool, "false", "help for test").with_shorthand('h'),
    ];

    fn run(args: &[&str]) -> Result<ParsedFlags, ConfigError> {
        parse(SPECS, "test", args.iter().map(|s| (*s).to_owned()))
    }

    fn err(args: &[&str]) -> String {
        match run(args) {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn equals_and_separate_value_forms_are_equivalent() {
        let a = run(&["--name=x", "--port=1"]).unwrap();
        let b = run(&["--name", "x", "--port", "1"]).unwrap();
        assert_eq!(a.string("name"), Some("x"));
        assert_eq!(b.string("name"), Some("x"));
        assert_eq!(a.int("port"), Some(1));
        assert_eq!(b.int("port"), Some(1));
    }

    #[test]
    fn empty_value_after_equals_is_an_empty_string() {
        let p = run(&["--name="]).unwrap();
        assert_eq!(p.string("name"), Some(""));
        assert!(p.is_set("name"));
    }

    #[test]
    fn separate_value_may_start_with_a_dash() {
        let p = run(&["--name", "--port"]).unwrap();
        assert_eq!(p.string("name"), Some("--port"));
    }

    #[test]
    fn bare_bool_is_true_and_does_not_consume_next_argument() {
        let p = run(&["--enabled", "false", "--on=false"]).unwrap();
        assert_eq!(p.bool("enabled"), Some(true));
        assert_eq!(p.bool("on"), Some(false));
        assert_eq!(p.positional(), ["false"]);
    }

    #[test]
    fn bool_accepts_every_parse_bool_spelling() {
        for (v, want) in [
            ("1", true),
            ("t", true),
            ("T", true),
            ("TRUE", true),
            ("True", true),
            ("true", true),
        ]
        .into_iter()
        .chain([
            ("0", false),
            ("f", false),
            ("F", false),
            ("FALSE", false),
            ("False", false),
            ("false", false),
        ]) {
            let p = run(&[&format!("--enabled={v}")]).unwrap();
            assert_eq!(p.bool("enabled"), Some(want), "{v}");
        }
        for (arg, want) in [
            (
                "--enabled=yes",
                "invalid argument \"yes\" for \"--enabled\" flag: strconv.ParseBool: parsing \"yes\": invalid syntax",
            ),
            (
                "--tostderr=yes",
                "invalid argument \"yes\" for \"--tostderr\" flag: parse error",
            ),
        ] {
            assert_eq!(err(&[arg]), want, "{arg}");
        }
    }

    #[test]
    fn repeated_scalar_flag_last_wins() {
        let p = run(&[
            "--mode=grpc",
            "--mode",
            "http-connect",
            "--port=1",
            "--port=2",
        ])
        .unwrap();
        assert_eq!(p.string("mode"), Some("http-connect"));
        assert_eq!(p.int("port"), Some(2));
        assert_eq!(p.explicit_flags(), ["mode", "port"]);
    }

    #[test]
    fn string_slice_is_csv_and_repeats_append() {
        let p = run(&["--list=a,b", "--list", "c"]).unwrap();
        assert_eq!(
            p.string_slice("list"),
            Some(&["a".to_owned(), "b".to_owned(), "c".to_owned()][..])
        );
        let p = run(&["--list=\"x,y\",z"]).unwrap();
        assert_eq!(
            p.string_slice("list"),
            Some(&["x,y".to_owned(), "z".to_owned()][..])
        );
        let p = run(&["--list="]).unwrap();
        assert_eq!(p.string_slice("list"), Some(&[][..]));
        let p = run(&["--list=[]"]).unwrap();
        assert_eq!(p.string_slice("list"), Some(&[][..]));
        let p = run(&["--list=a,,b"]).unwrap();
        assert_eq!(p.string_slice("list").map(<[String]>::len), Some(3));
        assert_eq!(
            err(&["--list=a\"b"]),
            "invalid argument \"a\\\"b\" for \"--list\" flag: parse error on line 1, column 2: bare \" in non-quoted field"
        );
        assert!(err(&["--list=\"ab"]).contains("extraneous or missing \" in quoted-field"));
    }

    #[test]
    fn string_slice_formats_like_pflag() {
        assert_eq!(format_string_slice(&[]), "[]");
        assert_eq!(
            format_string_slice(&["a".to_owned(), "b".to_owned()]),
            "[a,b]"
        );
        assert_eq!(
            format_string_slice(&["x,y".to_owned(), "q\"".to_owned()]),
            "[\"x,y\",\"q\"\"\"]"
        );
    }

    #[test]
    fn ints_accept_go_base_prefixes() {
        for (v, want) in [
            ("0x10", 16),
            ("010", 8),
            ("0o10", 8),
            ("0b10", 2),
            ("-5", -5),
            ("+5", 5),
        ] {
            assert_eq!(run(&["--port", v]).unwrap().int("port"), Some(want), "{v}");
        }
        assert_eq!(
            err(&["--port=abc"]),
            "invalid argument \"abc\" for \"--port\" flag: strconv.ParseInt: parsing \"abc\": invalid syntax"
        );
    }

    #[test]
    fn durations_floats_and_uints_parse() {
        let p = run(&["--wait=1.5h", "--qps=2.5", "--size=0x10"]).unwrap();
        assert_eq!(p.duration("wait"), Some(GoDuration::from_secs(5400)));
        assert_eq!(p.float32("qps"), Some(2.5));
        assert_eq!(p.uint64("size"), Some(16));
        for (arg, want) in [
            (
                "--wait=5",
                "invalid argument \"5\" for \"--wait\" flag: time: missing unit in duration \"5\"",
            ),
            (
                "--size=-1",
                "invalid argument \"-1\" for \"--size\" flag: parse error",
            ),
            (
                "--qps=x",
                "invalid argument \"x\" for \"--qps\" flag: strconv.ParseFloat: parsing \"x\": invalid syntax",
            ),
        ] {
            assert_eq!(err(&[arg]), want, "{arg}");
        }
    }

    #[test]
    fn custom_kind_runs_its_check() {
        assert_eq!(run(&["--even=ab"]).unwrap().string("even"), Some("ab"));
        assert_eq!(
            err(&["--even=abc"]),
            "invalid argument \"abc\" for \"--even\" flag: odd length"
        );
    }

    #[test]
    fn single_dash_shorthand_forms_work_for_registered_shorthands() {
        assert_eq!(run(&["-v=2"]).unwrap().int("v"), Some(2));
        assert_eq!(run(&["-v", "3"]).unwrap().int("v"), Some(3));
        assert_eq!(run(&["-v5"]).unwrap().int("v"), Some(5));
        assert_eq!(run(&["--v=6"]).unwrap().int("v"), Some(6));
        for (arg, want) in [
            (
                "-v=x",
                "invalid argument \"x\" for \"-v, --v\" flag: strconv.ParseInt: parsing \"x\": invalid syntax",
            ),
            ("-v", "flag needs an argument: 'v' in -v"),
            ("-x", "unknown shorthand flag: 'x' in -x"),
            ("-name=x", "unknown shorthand flag: 'n' in -name=x"),
        ] {
            assert_eq!(err(&[arg]), want, "{arg}");
        }
    }

    #[test]
    fn double_dash_ends_flags_and_positionals_are_kept_aside() {
        let p = run(&["pos", "-", "--name=a", "--", "--name=b", "--bogus"]).unwrap();
        assert_eq!(p.string("name"), Some("a"));
        assert_eq!(p.positional(), ["pos", "-", "--name=b", "--bogus"]);
    }

    #[test]
    fn unknown_flag_and_missing_argument_use_pflag_wording() {
        for (arg, want) in [
            ("--bogus", "unknown flag: --bogus"),
            ("--bogus=1", "unknown flag: --bogus"),
            ("--name", "flag needs an argument: --name"),
            ("---x", "bad flag syntax: ---x"),
            ("--=x", "bad flag syntax: --=x"),
        ] {
            assert_eq!(err(&[arg]), want, "{arg}");
        }
    }

    #[test]
    fn deprecated_flag_is_accepted_hidden_and_noted() {
        let p = run(&["--old", "--old=false"]).unwrap();
        assert_eq!(p.bool("old"), Some(false));
        assert_eq!(
            p.deprecation_notices(),
            ["Flag --old has been deprecated, Use --new instead"; 2]
        );
        assert!(!usage("test", SPECS).contains("--old"));
    }

    #[test]
    fn help_returns_usage_listing_every_visible_flag() {
        for args in [&["--help"][..], &["-h"][..], &["--name=x", "-h", "pos"][..]] {
            match run(args) {
                Err(ConfigError::Help(text)) => {
                    assert!(
                        text.starts_with("Usage:\n  test [flags]\n\nFlags:\n"),
                        "{text}"
                    );
                    for spec in SPECS.iter().filter(|s| !s.hidden) {
                        assert!(text.contains(&format!("--{}", spec.name)), "{}", spec.name);
                    }
                }
                other => panic!("expected help, got {other:?}"),
            }
        }
        // A flag error wins over help, as in cobra.
        assert_eq!(err(&["--help", "--bogus"]), "unknown flag: --bogus");
    }

    #[test]
    fn usage_prints_types_and_non_zero_defaults_like_pflag() {
        let text = usage("test", SPECS);
        let line = |name: &str| -> String {
            let flag = format!("--{name}");
            text.lines()
                .find(|l| l.split_whitespace().any(|t| t == flag))
                .unwrap_or_default()
                .to_owned()
        };
        // Each flag's line: the name and type, the help and default at its end.
        for (flag, text) in [
            ("mode", "--mode string"),
            ("port", "--port int"),
            ("list", "--list strings"),
            ("size", "--size uint"),
        ] {
            assert!(line(flag).contains(text), "--{flag}: {text:?}");
        }
        for (flag, text) in [
            ("mode", "a mode (default \"grpc\")"),
            ("name", "a string"),
            ("port", "(default 8090)"),
            ("enabled", "a bool"),
            ("on", "(default true)"),
            ("wait", "(default 1h0m0s)"),
        ] {
            assert!(line(flag).ends_with(text), "--{flag}: {text:?}");
        }
        assert!(line("v").starts_with("  -v, --v int"));
        assert!(line("help").starts_with("  -h, --help "));
        // All help texts start in one column.
        let cols: Vec<Option<usize>> = SPECS
            .iter()
            .filter(|s| !s.hidden)
            .map(|s| line(s.name).find(s.help))
            .collect();
        assert!(
            cols.iter().all(|c| c.is_some() && *c == cols[0]),
            "{cols:?}"
        );
    }
}
