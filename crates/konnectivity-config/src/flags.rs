//! One declaration per flag: the `options!` macro, the [`FlagField`] types it accepts and
//! the [`Codec`]s of flags whose Rust type alone does not say how they parse.
//!
//! A binary's options used to name each flag five times (table row, struct field, default,
//! parsing, `flag_values`), and the copies could drift. Here a flag is one row —
//! field, Rust type, flag name, default, help, and optionally a per-flag check — and the
//! macro derives the rest:
//!
//! * the struct, each field documented with its flag name;
//! * the static [`FlagSpec`] table the pflag grammar parses against;
//! * the defaults, parsed from the row's default *text* (the same text the usage and
//!   `docs/compatibility.md` print), so the typed default cannot differ from the printed one;
//! * reading a [`ParsedFlags`](crate::go::pflag::ParsedFlags) into the fields, and printing
//!   every value back in pflag's `String()` form (what upstream logs at `-v=1`);
//! * the per-flag checks, run in row order.
//!
//! What is not per flag but per binary (the sorted table of everything a binary accepts,
//! the ID flag whose default comes from the environment, `parse`, `flag_values`, the
//! [`Program`](crate::Program) start-up) is the `binary!` macro. What stays hand-written is
//! upstream's validation rules that relate several flags, in upstream's order and with its
//! messages.

use crate::go::duration::GoDuration;
use crate::go::pflag::{FlagKind, FlagSpec, FlagValue, format_string_slice};
use crate::go::strconv::format_float32;
use crate::labels::LabelSelector;

/// A Rust type a flag can be read into: its pflag kind, how a parsed value becomes it, and
/// how it prints in pflag's `String()` form.
pub trait FlagField: Sized {
    /// The pflag value type of flags of this Rust type.
    const KIND: FlagKind;
    /// The typed value of a parsed flag argument (`None` if the kinds do not match).
    fn from_value(value: &FlagValue) -> Option<Self>;
    /// pflag's `String()` of the value.
    fn show(&self) -> String;
}

/// [`FlagField`] for a type whose parsed [`FlagValue`] variant holds it as it is.
macro_rules! plain_field {
    ($($ty:ty: $kind:ident, show $show:expr;)+) => {$(
        impl FlagField for $ty {
            const KIND: FlagKind = FlagKind::$kind;
            fn from_value(value: &FlagValue) -> Option<Self> {
                match value {
                    FlagValue::$kind(v) => Some(v.clone()),
                    _ => None,
                }
            }
            fn show(&self) -> String {
                ($show)(self)
            }
        }
    )+};
}

plain_field! {
    String: String, show String::clone;
    bool: Bool, show bool::to_string;
    i64: Int, show i64::to_string;
    f32: Float32, show |f: &f32| format_float32(*f);
    Vec<String>: StringSlice, show |v: &Vec<String>| format_string_slice(v);
    GoDuration: Duration, show GoDuration::to_string;
}

fn check_selector(s: &str) -> Result<(), String> {
    LabelSelector::parse(s).map(drop)
}

/// A Kubernetes label selector, checked when the flag is parsed (a string to pflag).
impl FlagField for LabelSelector {
    const KIND: FlagKind = FlagKind::Custom {
        type_name: "string",
        check: check_selector,
    };
    fn from_value(value: &FlagValue) -> Option<Self> {
        match value {
            FlagValue::String(s) => LabelSelector::parse(s).ok(),
            _ => None,
        }
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// How a row's flag is parsed and printed. Rows without `via` use [`Native`] (what the
/// field's [`FlagField`] type says); klog's Go `flag` types, whose Rust type alone does not
/// say it (an `i32` that is a verbosity or a severity), name a codec of their own.
pub trait Codec<T> {
    /// The pflag value type of the flag.
    const KIND: FlagKind;
    /// The typed value of a parsed flag argument (`None` if the kinds do not match).
    fn from_value(value: &FlagValue) -> Option<T>;
    /// pflag's `String()` of the value.
    fn show(value: &T) -> String;
    /// The typed default of a row: its default text parsed as if given on the command
    /// line.
    ///
    /// A default that does not parse is a mistake in a declaration, not in input; every
    /// table's test (`defaults_equal_the_spec_table`) builds the defaults, so it cannot
    /// ship.
    fn default(spec: &FlagSpec) -> T {
        spec.parse_value(spec.default)
            .ok()
            .as_ref()
            .and_then(Self::from_value)
            .unwrap_or_else(|| panic!("the default of --{} does not parse", spec.name))
    }
}

/// The codec of rows without `via`: the field type's own [`FlagField`].
#[derive(Debug)]
pub struct Native;

impl<T: FlagField> Codec<T> for Native {
    const KIND: FlagKind = T::KIND;
    fn from_value(value: &FlagValue) -> Option<T> {
        T::from_value(value)
    }
    fn show(value: &T) -> String {
        value.show()
    }
}

/// Which binaries accept a flag (for tables shared by both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// proxy-server and proxy-agent.
    Both,
    /// proxy-server only.
    Server,
    /// proxy-agent only.
    Agent,
}

impl Scope {
    /// True when the server (`server`) or the agent (`!server`) accepts the flag.
    pub fn includes(self, server: bool) -> bool {
        match self {
            Scope::Both => true,
            Scope::Server => server,
            Scope::Agent => !server,
        }
    }
}

/// What [`options!`] derives for a struct from its rows.
pub(crate) trait FlagSet: Sized {
    /// Every field at the default its row declares.
    fn declared_defaults() -> Self;
    /// Overwrites each field whose flag (or alias) was given, and sets each extra field
    /// that has a `read` from the parsed flags.
    fn read_flags(&mut self, parsed: &crate::go::pflag::ParsedFlags);
    /// Every declared flag with its value in pflag's `String()` form (aliases and
    /// field-less flags included), in declaration order.
    fn declared_values(&self) -> Vec<(&'static str, String)>;
    /// Runs the rows' own checks in declaration order; messages start with `--<name> `.
    fn check_rows(&self) -> Result<(), String>;
    /// Which binaries accept the flag `name` (rows marked `@server` / `@agent`).
    fn scope(name: &str) -> Scope;
}

/// Declares an options struct from one row per flag.
///
/// ```text
/// options! {
///     /// Struct docs.
///     #[derive(Clone, Debug, PartialEq)]
///     pub struct Opts in OWN_FLAGS {
///         /// Extra field docs (the flag name is added).
///         @server field: Type = "flag-name", "default text", "help text",
///             alias "old-name" deprecated "Use --flag-name instead",
///             check non_negative;
///     }
///     also [FlagSpec::new("help", FlagKind::Bool, "false", "help").with_shorthand('h')]
///     extra {
///         /// A field that is not a flag.
///         notes: Vec<String> = Vec::new();
///     }
/// }
/// ```
///
/// `@server`/`@agent` (optional) restrict a row to one binary, `via` (optional) names the
/// [`Codec`] when the field's type does not say how the flag parses and prints, `short`
/// (optional) gives a one-letter form, `alias` (optional, for rows without `via`) adds a
/// hidden, deprecated second name writing the same field (last one given wins), `check`
/// (optional) is a `fn(&Type) -> Result<(), String>` whose message follows `--<name> `.
/// `also` lists flags without a field (shown with their default), `extra` fields that are
/// not flags (`read` (optional) computes one from the [`ParsedFlags`]). `extra binary`
/// adds the fields every binary has after them: `log` (klog's flags), `explicit_flags`,
/// `ext` (the extension flags) and `deprecation_notices`, which `binary!` relies on.
macro_rules! options {
    // A binary's options: its own extra fields, then the fields every binary has.
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $table:ident { $($rows:tt)* }
        also [$($also:tt)*]
        extra binary { $($extra:tt)* }
    ) => {
        $crate::flags::options! {
            $(#[$meta])*
            pub struct $name in $table { $($rows)* }
            also [$($also)*]
            extra {
                $($extra)*
                /// klog flags.
                log: $crate::logging::LogOptions = $crate::logging::LogOptions::default(),
                    read $crate::logging::LogOptions::from_flags;
                /// Flags given on the command line, in order of first use.
                explicit_flags: Vec<String> = Vec::new(), read $crate::flags::explicit_flags;
                /// konnectivity-rs extension flags.
                ext: $crate::extensions::Extensions = $crate::extensions::Extensions::default(),
                    read $crate::extensions::Extensions::from_flags;
                /// Notices to print for deprecated flags that were used (pflag's wording).
                deprecation_notices: Vec<String> = Vec::new(),
                    read $crate::flags::deprecation_notices;
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $table:ident {
            $(
                $(#[$doc:meta])*
                $(@$scope:ident)? $field:ident: $ty:ty = $flag:literal, $default:expr, $help:expr
                    $(, via $via:ty)?
                    $(, short $short:literal)?
                    $(, alias $alias:literal deprecated $alias_note:literal)?
                    $(, check $check:expr)?;
            )*
        }
        also [$($also:expr),* $(,)?]
        extra {
            $(
                $(#[$extra_doc:meta])*
                $extra:ident: $extra_ty:ty = $extra_default:expr $(, read $extra_read:expr)?;
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                #[doc = concat!("`--", $flag, "`")]
                #[doc = ""]
                $(#[$doc])*
                pub $field: $ty,
            )*
            $( $(#[$extra_doc])* pub $extra: $extra_ty, )*
        }

        /// The flags declared by the struct's rows, in declaration order.
        pub(crate) static $table: &[$crate::go::pflag::FlagSpec] = &[
            $(
                $crate::go::pflag::FlagSpec::new(
                    $flag,
                    <$crate::flags::options!(@codec $($via)?) as $crate::flags::Codec<$ty>>::KIND,
                    $default,
                    $help,
                )
                $(.with_shorthand($short))?,
                $(
                    $crate::go::pflag::FlagSpec::new(
                        $alias,
                        <$ty as $crate::flags::FlagField>::KIND,
                        $default,
                        "",
                    )
                    .deprecated($alias_note),
                )?
            )*
            $($also,)*
        ];

        impl $crate::flags::FlagSet for $name {
            fn declared_defaults() -> Self {
                let spec = |name: &str| {
                    $table.iter().find(|s| s.name == name).copied().unwrap_or_else(|| {
                        panic!("--{name} is not in its table")
                    })
                };
                $name {
                    $(
                        $field: <$crate::flags::options!(@codec $($via)?)
                            as $crate::flags::Codec<$ty>>::default(&spec($flag)),
                    )*
                    $( $extra: $extra_default, )*
                }
            }

            fn read_flags(&mut self, parsed: &$crate::go::pflag::ParsedFlags) {
                $(
                    if let Some(v) = parsed
                        .last_of(&[$flag $(, $alias)?])
                        .and_then(
                            <$crate::flags::options!(@codec $($via)?)
                                as $crate::flags::Codec<$ty>>::from_value,
                        )
                    {
                        self.$field = v;
                    }
                )*
                $($( self.$extra = ($extra_read)(parsed); )?)*
            }

            fn declared_values(&self) -> Vec<(&'static str, String)> {
                let mut out: Vec<(&'static str, String)> = Vec::new();
                $(
                    let shown = <$crate::flags::options!(@codec $($via)?)
                        as $crate::flags::Codec<$ty>>::show(&self.$field);
                    $( out.push(($alias, shown.clone())); )?
                    out.push(($flag, shown));
                )*
                $(
                    let also: $crate::go::pflag::FlagSpec = $also;
                    out.push((also.name, also.default.to_owned()));
                )*
                out
            }

            fn check_rows(&self) -> Result<(), String> {
                $($(
                    ($check)(&self.$field).map_err(|e| format!("--{} {e}", $flag))?;
                )?)*
                Ok(())
            }

            fn scope(name: &str) -> $crate::flags::Scope {
                match name {
                    $( $flag => $crate::flags::options!(@scope $($scope)?), )*
                    _ => $crate::flags::Scope::Both,
                }
            }
        }
    };
    (@codec) => { $crate::flags::Native };
    (@codec $via:ty) => { $via };
    (@scope) => { $crate::flags::Scope::Both };
    (@scope server) => { $crate::flags::Scope::Server };
    (@scope agent) => { $crate::flags::Scope::Agent };
}

pub(crate) use options;

/// What makes options of one binary out of its [`options!`] struct: the sorted table of
/// every flag it accepts, the ID flag whose default comes from the environment, `Default`,
/// `parse` and the [`Program`](crate::Program) start-up.
macro_rules! binary {
    (
        $options:ident {
            name: $name:literal,
            server: $server:literal,
            validates: $validates:literal,
            command: $command:expr,
            table: $table:ident,
            flags: $flags:ident,
            id: $id:ident = $id_flag:literal from $id_env:expr,
            with_id: $with_id:ident,
            default_id: $default_id:ident,
        }
    ) => {
        #[doc = concat!("Every flag `", $name, "` accepts (its own, klog's, the extensions and `--help`), sorted by name.")]
        pub fn $flags() -> &'static [$crate::go::pflag::FlagSpec] {
            static ALL: std::sync::OnceLock<Vec<$crate::go::pflag::FlagSpec>> =
                std::sync::OnceLock::new();
            ALL.get_or_init(|| $crate::flags::binary_table($table, $server))
        }

        #[doc = concat!("The default `--", $id_flag, "`: the environment value when non-empty, else a random UUIDv4.")]
        pub fn $default_id(env_value: Option<String>) -> String {
            env_value
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        }

        impl Default for $options {
            #[doc = concat!("Upstream defaults; `--", $id_flag, "` from the environment or a fresh UUID.")]
            fn default() -> Self {
                Self::$with_id($default_id(std::env::var($id_env).ok()))
            }
        }

        impl $options {
            #[doc = concat!("Applies upstream's validation rules in order (then the extension flags' checks); the first failure is returned as `failed to validate ", $validates, " options with <msg>`.")]
            pub fn validate(&self) -> Result<(), $crate::ConfigError> {
                self.check().and_then(|()| self.ext.check()).map_err(|msg| {
                    $crate::ConfigError::Invalid(format!(
                        concat!("failed to validate ", $validates, " options with {}"),
                        msg
                    ))
                })
            }

            #[doc = concat!("Upstream defaults with the given `--", $id_flag, "`.")]
            pub fn $with_id($id: String) -> Self {
                $options {
                    $id,
                    ..<Self as $crate::flags::FlagSet>::declared_defaults()
                }
            }

            /// Parses the arguments (without the program name). Does not validate (a flag
            /// whose syntax is checked when parsed, like a label selector, is already a
            /// parse error here, as in upstream).
            pub fn parse<I: IntoIterator<Item = String>>(
                args: I,
            ) -> Result<Self, $crate::ConfigError> {
                let p = $crate::go::pflag::parse($flags(), $command, args)?;
                let mut o = if p.is_set($id_flag) {
                    Self::$with_id(String::new())
                } else {
                    Self::default()
                };
                $crate::flags::FlagSet::read_flags(&mut o, &p);
                Ok(o)
            }

            /// Every flag with its effective value in pflag's `String()` form, sorted by
            /// name (what upstream logs at `-v=1`, and what its test harness passes back as
            /// arguments).
            pub fn flag_values(&self) -> Vec<(&'static str, String)> {
                $crate::flags::binary_values(
                    $crate::flags::FlagSet::declared_values(self),
                    &self.log,
                    &self.ext,
                    $server,
                )
            }
        }

        impl $crate::Program for $options {
            const NAME: &'static str = $name;
            fn parse_args<I: IntoIterator<Item = String>>(
                args: I,
            ) -> Result<Self, $crate::ConfigError> {
                Self::parse(args)
            }
            fn log(&self) -> &$crate::LogOptions {
                &self.log
            }
            fn deprecations(&self) -> &[String] {
                &self.deprecation_notices
            }
            fn unimplemented(&self) -> Vec<String> {
                $crate::compat::not_implemented_warnings(&self.explicit_flags, $server)
            }
            fn check(&self) -> Result<(), $crate::ConfigError> {
                self.validate()
            }
        }
    };
}

pub(crate) use binary;

/// Every flag a binary accepts: its own rows, klog's and the extension flags it takes
/// (`server` or not), sorted by name.
pub(crate) fn binary_table(own: &'static [FlagSpec], server: bool) -> Vec<FlagSpec> {
    let mut all: Vec<FlagSpec> = own
        .iter()
        .chain(crate::logging::KLOG_FLAGS)
        .chain(crate::extensions::flags_of(server))
        .copied()
        .collect();
    all.sort_by_key(|s| s.name);
    all
}

/// Every flag of a binary with its value in pflag's `String()` form, sorted by name: its
/// own (`declared`), klog's and its extension flags.
pub(crate) fn binary_values(
    mut declared: Vec<(&'static str, String)>,
    log: &crate::logging::LogOptions,
    ext: &crate::extensions::Extensions,
    server: bool,
) -> Vec<(&'static str, String)> {
    declared.extend(log.flag_values());
    declared.extend(ext.flag_values(server));
    declared.sort_by_key(|(n, _)| *n);
    declared
}

/// The flags given on the command line, in order of first use.
pub(crate) fn explicit_flags(p: &crate::go::pflag::ParsedFlags) -> Vec<String> {
    p.explicit_flags().iter().map(|n| (*n).to_owned()).collect()
}

/// The notices for deprecated flags that were used.
pub(crate) fn deprecation_notices(p: &crate::go::pflag::ParsedFlags) -> Vec<String> {
    p.deprecation_notices().to_vec()
}

/// Row check: a count that must not be negative.
pub(crate) fn non_negative(v: &i64) -> Result<(), String> {
    if *v < 0 {
        return Err(format!("must be >= 0, got {v}"));
    }
    Ok(())
}

/// Row check: a duration that must not be negative.
pub(crate) fn non_negative_duration(d: &GoDuration) -> Result<(), String> {
    if d.is_negative() {
        return Err(format!("must be >= 0, got {d}"));
    }
    Ok(())
}

/// Row check: a duration that must be positive.
pub(crate) fn positive_duration(d: &GoDuration) -> Result<(), String> {
    if d.to_std().is_none_or(|d| d.is_zero()) {
        return Err(format!("must be > 0, got {d}"));
    }
    Ok(())
}
