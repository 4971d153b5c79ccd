//! Helpers shared by the unit tests of both binaries' options (`agent`, `server`):
//! parsing argument lists, files that exist, and reading validation failures.
use crate::{ConfigError, FlagSpec, Program};

/// A path that does not exist.
pub(crate) const MISSING: &str = "/nonexistent/konnectivity/file";

pub(crate) fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// The options `a` parses into; panics naming the arguments if they do not parse.
pub(crate) fn parse<P: Program>(a: &[&str]) -> P {
    match P::parse_args(args(a)) {
        Ok(o) => o,
        Err(e) => panic!("parse {a:?}: {e}"),
    }
}

/// A file that exists for the duration of the test process.
pub(crate) fn existing_file(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("konnectivity-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, b"x").unwrap();
    path.to_string_lossy().into_owned()
}

/// The validation failure of `o` without upstream's wrapper
/// (`failed to validate agent options with `); panics if `o` is valid.
pub(crate) fn invalid_message<P: Program>(o: &P) -> String {
    let binary = P::NAME.trim_start_matches("proxy-");
    match o.check() {
        Err(ConfigError::Invalid(msg)) => msg
            .strip_prefix(&format!("failed to validate {binary} options with "))
            .unwrap_or_else(|| panic!("missing prefix: {msg}"))
            .to_owned(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

/// [`invalid_message`] of `base` after `change`.
pub(crate) fn rejected<P: Program>(mut base: P, change: impl FnOnce(&mut P)) -> String {
    change(&mut base);
    invalid_message(&base)
}

/// The rules of a key/cert pair and its CA (`what`: `server`, `cluster`, `agent`), in
/// upstream's order: each file must exist when set, key and cert require each other,
/// both set is valid. `files(o)` are the key, cert and CA fields of options from `valid`.
pub(crate) fn assert_pair_rules<P: Program>(
    valid: impl Fn() -> P,
    what: &str,
    files: impl Fn(&mut P) -> [&mut String; 3],
) {
    let set = |o: &mut P, key: &str, cert: &str| {
        let [k, c, _] = files(o);
        (*k, *c) = (key.to_owned(), cert.to_owned());
    };
    let key = existing_file(&format!("{what}.key"));
    let cert = existing_file(&format!("{what}.crt"));
    let missing = format!("got stat {MISSING}: no such file or directory");
    let cases = [
        (
            MISSING,
            "",
            format!("error checking {what} key {MISSING}, {missing}"),
        ),
        (
            &key,
            "",
            format!("cannot have {what} cert empty when {what} key is set to \"{key}\""),
        ),
        (
            "",
            MISSING,
            format!("error checking {what} cert {MISSING}, {missing}"),
        ),
        (
            "",
            &cert,
            format!("cannot have {what} key empty when {what} cert is set to \"{cert}\""),
        ),
    ];
    for (k, c, want) in cases {
        let got = rejected(valid(), |o| set(o, k, c));
        assert_eq!(got, want, "{what} key {k:?}, cert {c:?}");
    }
    let mut both = valid();
    set(&mut both, &key, &cert);
    assert_eq!(both.check(), Ok(()), "{what} key and cert");
    let no_ca = rejected(valid(), |o| *files(o)[2] = MISSING.into());
    let want = format!("error checking {what} CA cert {MISSING}, got ");
    assert!(no_ca.starts_with(&want), "{no_ca}");
}

/// The hidden flags of `specs`.
pub(crate) fn hidden(specs: &[FlagSpec]) -> Vec<&str> {
    specs.iter().filter(|s| s.hidden).map(|s| s.name).collect()
}

/// Validation of `base` after `change`.
pub(crate) fn checked<P: Program>(
    mut base: P,
    change: impl FnOnce(&mut P),
) -> Result<(), ConfigError> {
    change(&mut base);
    base.check()
}

/// The options `with` makes of each value fail validation with its message.
pub(crate) fn assert_rejections<P: Program>(with: impl Fn(&str) -> P, cases: &[(&str, &str)]) {
    for (value, want) in cases {
        assert_eq!(invalid_message(&with(value)), *want, "{value:?}");
    }
}

/// `--xfr-channel-size` (`field`) must be positive, in both binaries.
pub(crate) fn assert_channel_size_rule<P: Program>(
    valid: impl Fn() -> P,
    field: impl Fn(&mut P) -> &mut i64,
) {
    for n in [0, -10] {
        assert_eq!(
            rejected(valid(), |o| *field(o) = n),
            format!("channel size {n} must be greater than 0")
        );
    }
}

/// The usage text `arg` (`-h`, `--help`) asks for starts with `usage`, has each of `has`
/// and none of `lacks`.
pub(crate) fn assert_help<P: Program + std::fmt::Debug>(
    arg: &str,
    usage: &str,
    (has, lacks): (&[&str], &[&str]),
) {
    let text = match P::parse_args(args(&[arg])) {
        Err(ConfigError::Help(text)) => text,
        other => panic!("expected help, got {other:?}"),
    };
    assert!(text.starts_with(usage), "{text}");
    for part in has {
        assert!(text.contains(part), "{part:?} in the help");
    }
    for part in lacks {
        assert!(!text.contains(part), "{part:?} not in the help");
    }
}

/// Each flag of `specs` has its declared default among `values` (a binary's
/// `flag_values()`), except the ID flag of `id` (flag, value), which has that value.
pub(crate) fn assert_defaults(
    values: &[(&str, String)],
    specs: &[FlagSpec],
    id: Option<(&str, &str)>,
) {
    assert_eq!(values.len(), specs.len());
    for spec in specs {
        let value = values
            .iter()
            .find(|(n, _)| *n == spec.name)
            .map(|(_, v)| v.as_str());
        let want = match id {
            Some((id_flag, id)) if spec.name == id_flag => id,
            _ => spec.default,
        };
        assert_eq!(value, Some(want), "default of --{}", spec.name);
    }
}

/// Each named flag is among `specs` with the pflag value type given.
pub(crate) fn assert_value_types(specs: &[FlagSpec], expect: &[(&str, &str)]) {
    for (name, ty) in expect {
        let spec = specs
            .iter()
            .find(|s| s.name == *name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(spec.value_type(), *ty, "{name}");
    }
}
