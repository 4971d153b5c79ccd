//! Go `strconv` semantics for the scalar flag values.
//!
//! Upstream flags are parsed by Go's `strconv` (through pflag, the `flag` package and klog), and
//! operators see its error texts (`strconv.ParseInt: parsing "x": invalid syntax`). This module
//! owns the accepted syntax (base prefixes, underscores, signs, the ParseBool spellings) and
//! those texts, so that every other module can report a bad value exactly as upstream does.

use std::fmt;

/// Why a number or bool did not parse, as Go's `strconv.NumError` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumError {
    /// The Go function that failed (`ParseInt`, `ParseUint`, `ParseBool`, `ParseFloat`).
    pub func: &'static str,
    /// The input text.
    pub num: String,
    /// Syntax or range.
    pub kind: NumErrorKind,
}

/// The two failure classes of Go's `strconv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumErrorKind {
    /// `invalid syntax`
    Syntax,
    /// `value out of range`
    Range,
}

impl fmt::Display for NumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match self.kind {
            NumErrorKind::Syntax => "invalid syntax",
            NumErrorKind::Range => "value out of range",
        };
        write!(
            f,
            "strconv.{}: parsing {}: {}",
            self.func,
            quote(&self.num),
            reason
        )
    }
}

impl std::error::Error for NumError {}

fn num_error(func: &'static str, num: &str, kind: NumErrorKind) -> NumError {
    NumError {
        func,
        num: num.to_owned(),
        kind,
    }
}

/// Go `strconv.ParseBool`: `1,t,T,TRUE,true,True` and `0,f,F,FALSE,false,False`.
pub fn parse_bool(s: &str) -> Result<bool, NumError> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(num_error("ParseBool", s, NumErrorKind::Syntax)),
    }
}

/// Go `strconv.ParseUint(s, base, bits)` for `base` 0 (prefix-detected) or 2..=36.
pub fn parse_uint(s: &str, base: u32, bits: u32) -> Result<u64, NumError> {
    parse_uint_as(s, base, bits, "ParseUint")
}

fn parse_uint_as(s0: &str, base: u32, bits: u32, func: &'static str) -> Result<u64, NumError> {
    if s0.is_empty() {
        return Err(num_error(func, s0, NumErrorKind::Syntax));
    }
    let base0 = base == 0;
    let bytes = s0.as_bytes();
    let (base, digits) = if base0 {
        if bytes[0] == b'0' {
            let prefix = bytes.get(1).map(u8::to_ascii_lowercase);
            match prefix {
                Some(b'b') if bytes.len() >= 3 => (2, &bytes[2..]),
                Some(b'o') if bytes.len() >= 3 => (8, &bytes[2..]),
                Some(b'x') if bytes.len() >= 3 => (16, &bytes[2..]),
                _ => (8, &bytes[1..]),
            }
        } else {
            (10, bytes)
        }
    } else {
        (base, bytes)
    };
    let max_val: u64 = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let base64 = u64::from(base);
    let cutoff = u64::MAX / base64 + 1;
    let mut n: u64 = 0;
    let mut underscores = false;
    for &c in digits {
        let d = match c {
            b'_' if base0 => {
                underscores = true;
                continue;
            }
            b'0'..=b'9' => c - b'0',
            _ if c.is_ascii_alphabetic() => c.to_ascii_lowercase() - b'a' + 10,
            _ => return Err(num_error(func, s0, NumErrorKind::Syntax)),
        };
        if u32::from(d) >= base {
            return Err(num_error(func, s0, NumErrorKind::Syntax));
        }
        if n >= cutoff {
            return Err(num_error(func, s0, NumErrorKind::Range));
        }
        n *= base64;
        let n1 = n.wrapping_add(u64::from(d));
        if n1 < n || n1 > max_val {
            return Err(num_error(func, s0, NumErrorKind::Range));
        }
        n = n1;
    }
    if underscores && !underscore_ok(s0) {
        return Err(num_error(func, s0, NumErrorKind::Syntax));
    }
    Ok(n)
}

/// Go's rule for `_` in base-0 literals: only between digits, or after a base prefix.
fn underscore_ok(s: &str) -> bool {
    let mut b = s.as_bytes();
    if let Some(&(b'-' | b'+')) = b.first() {
        b = &b[1..];
    }
    // '^' = start, '0' = digit or prefix, '_' = underscore, '!' = anything else.
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if b.len() >= 2 && b[0] == b'0' && matches!(b[1].to_ascii_lowercase(), b'b' | b'o' | b'x') {
        i = 2;
        saw = b'0';
        hex = b[1].eq_ignore_ascii_case(&b'x');
    }
    while i < b.len() {
        let c = b[i];
        i += 1;
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
            continue;
        }
        if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
            continue;
        }
        if saw == b'_' {
            return false;
        }
        saw = b'!';
    }
    saw != b'_'
}

/// Go `strconv.ParseInt(s, base, bits)`: optional sign, then [`parse_uint`] rules.
pub fn parse_int(s0: &str, base: u32, bits: u32) -> Result<i64, NumError> {
    const FUNC: &str = "ParseInt";
    if s0.is_empty() {
        return Err(num_error(FUNC, s0, NumErrorKind::Syntax));
    }
    let (neg, rest) = match s0.as_bytes()[0] {
        b'+' => (false, &s0[1..]),
        b'-' => (true, &s0[1..]),
        _ => (false, s0),
    };
    let un = match parse_uint_as(rest, base, bits, FUNC) {
        Ok(v) => v,
        Err(e) => {
            return Err(num_error(FUNC, s0, e.kind));
        }
    };
    let cutoff: u64 = 1u64 << (bits.clamp(1, 64) - 1);
    if !neg && un >= cutoff {
        return Err(num_error(FUNC, s0, NumErrorKind::Range));
    }
    if neg && un > cutoff {
        return Err(num_error(FUNC, s0, NumErrorKind::Range));
    }
    // `un <= cutoff <= 2^63`, so the two's-complement reinterpretation below is exact.
    Ok(if neg {
        (un as i64).wrapping_neg()
    } else {
        un as i64
    })
}

/// Go `strconv.ParseFloat(s, 32)` (decimal forms, exponents, `inf`/`infinity`/`nan`).
pub fn parse_float32(s: &str) -> Result<f32, NumError> {
    const FUNC: &str = "ParseFloat";
    let v: f32 = s
        .parse()
        .map_err(|_| num_error(FUNC, s, NumErrorKind::Syntax))?;
    if v.is_infinite() {
        let lower = s.trim_start_matches(['+', '-']).to_ascii_lowercase();
        if lower != "inf" && lower != "infinity" {
            return Err(num_error(FUNC, s, NumErrorKind::Range));
        }
    }
    Ok(v)
}

/// Go `strconv.FormatFloat(f, 'g', -1, 32)` (pflag's `float32` `String()`): the shortest
/// digits, in exponent form (`1e+06`) when the decimal exponent is below -4 or at least 6.
pub fn format_float32(v: f32) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".to_owned()
        } else {
            "0".to_owned()
        };
    }
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        };
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    } else {
        format!("{v}")
    }
}

/// Go `strconv.Quote` (what `%q` prints): double quotes, backslash escapes for quotes,
/// backslashes and control characters.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_bool_accepts_exactly_go_spellings() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["yes", "tRUE", "", "2", " true"] {
            assert!(parse_bool(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_bool("yes").unwrap_err().to_string(),
            "strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
    }

    #[test]
    fn parse_int_base_zero_handles_go_prefixes_and_signs() {
        assert_eq!(parse_int("8090", 0, 64), Ok(8090));
        assert_eq!(parse_int("0x1F", 0, 64), Ok(31));
        assert_eq!(parse_int("0X1f", 0, 64), Ok(31));
        assert_eq!(parse_int("0o17", 0, 64), Ok(15));
        assert_eq!(parse_int("017", 0, 64), Ok(15));
        assert_eq!(parse_int("0b101", 0, 64), Ok(5));
        assert_eq!(parse_int("-10", 0, 64), Ok(-10));
        assert_eq!(parse_int("+10", 0, 64), Ok(10));
        assert_eq!(parse_int("0", 0, 64), Ok(0));
        assert_eq!(parse_int("-0x10", 0, 64), Ok(-16));
        assert_eq!(parse_int("1_000", 0, 64), Ok(1000));
        assert_eq!(parse_int("0x_1f", 0, 64), Ok(31));
        assert_eq!(parse_int("-9223372036854775808", 0, 64), Ok(i64::MIN));
        assert_eq!(parse_int("9223372036854775807", 0, 64), Ok(i64::MAX));
    }

    #[test]
    fn parse_int_rejects_bad_syntax_with_go_text() {
        for bad in [
            "", "08", "0x", "1_", "_1", "1__0", "abc", "1.0", " 1", "--1",
        ] {
            let err = parse_int(bad, 0, 64).unwrap_err();
            assert_eq!(err.kind, NumErrorKind::Syntax, "{bad}");
        }
        assert_eq!(
            parse_int("abc", 0, 64).unwrap_err().to_string(),
            "strconv.ParseInt: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            parse_int("9223372036854775808", 0, 64)
                .unwrap_err()
                .to_string(),
            "strconv.ParseInt: parsing \"9223372036854775808\": value out of range"
        );
        for (text, base, bits, kind) in [
            ("2147483648", 10, 32, NumErrorKind::Range),
            ("0x10", 10, 32, NumErrorKind::Syntax),
            ("1_0", 10, 32, NumErrorKind::Syntax),
        ] {
            assert_eq!(
                parse_int(text, base, bits).unwrap_err().kind,
                kind,
                "{text}"
            );
        }
    }

    #[test]
    fn parse_uint_rejects_sign_and_overflow() {
        assert_eq!(parse_uint("1800", 0, 64), Ok(1800));
        assert_eq!(parse_uint("18446744073709551615", 0, 64), Ok(u64::MAX));
        let kind = |text| parse_uint(text, 0, 64).map_err(|e| e.kind);
        assert_eq!(kind("18446744073709551616"), Err(NumErrorKind::Range));
        assert_eq!(kind("-1"), Err(NumErrorKind::Syntax));
    }

    #[test]
    fn parse_float32_reports_syntax_and_range() {
        assert_eq!(parse_float32("1.5"), Ok(1.5));
        assert_eq!(parse_float32("0"), Ok(0.0));
        assert_eq!(parse_float32("1e3"), Ok(1000.0));
        assert!(parse_float32("Inf").is_ok_and(f32::is_infinite));
        assert_eq!(
            parse_float32("x").unwrap_err().to_string(),
            "strconv.ParseFloat: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            parse_float32("1e100").unwrap_err().kind,
            NumErrorKind::Range
        );
    }

    #[test]
    fn format_float32_matches_go_g_format() {
        assert_eq!(format_float32(0.0), "0");
        assert_eq!(format_float32(2.5), "2.5");
        assert_eq!(format_float32(100_000.0), "100000");
        assert_eq!(format_float32(1_000_000.0), "1e+06");
        assert_eq!(format_float32(0.0001), "0.0001");
        assert_eq!(format_float32(0.00001), "1e-05");
    }

    #[test]
    fn quote_escapes_like_go() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("a\nb\u{1}"), "\"a\\nb\\x01\"");
        assert_eq!(quote("µs"), "\"µs\"");
    }
}
