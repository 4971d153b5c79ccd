//! Go `time.Duration` as it appears on the command line.
//!
//! Durations are parsed with Go's `time.ParseDuration` grammar (`100ms`, `1h0m0s`, `1.5h`, `-1s`,
//! a bare `0`) into a signed nanosecond count, because upstream accepts negative values at
//! parse time and only rejects them during validation (with messages that print the value back
//! in Go's `String()` form, which [`GoDuration`]'s `Display` reproduces).

use std::fmt;
use std::str::FromStr;

const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

/// A signed duration in nanoseconds with Go's parsing and formatting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(i64);

/// A duration string that Go's `time.ParseDuration` would reject; `Display` gives Go's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

impl GoDuration {
    /// Zero.
    pub const ZERO: GoDuration = GoDuration(0);

    /// From a signed nanosecond count.
    pub const fn from_nanos(nanos: i64) -> Self {
        GoDuration(nanos)
    }

    /// From whole milliseconds (saturating).
    pub const fn from_millis(millis: i64) -> Self {
        GoDuration(millis.saturating_mul(MILLISECOND as i64))
    }

    /// From whole seconds (saturating).
    pub const fn from_secs(secs: i64) -> Self {
        GoDuration(secs.saturating_mul(SECOND as i64))
    }

    /// The signed nanosecond count.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// True for durations below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// The same duration as a `std::time::Duration`; `None` when negative.
    pub fn to_std(self) -> Option<std::time::Duration> {
        u64::try_from(self.0)
            .ok()
            .map(std::time::Duration::from_nanos)
    }

    /// From a `std::time::Duration`; `None` when it exceeds Go's range (~292 years).
    pub fn from_std(d: std::time::Duration) -> Option<Self> {
        i64::try_from(d.as_nanos()).ok().map(GoDuration)
    }

    /// Go `time.ParseDuration`.
    pub fn parse(orig: &str) -> Result<Self, DurationError> {
        let invalid = || DurationError(format!("time: invalid duration {}", quote_time(orig)));
        let mut s = orig;
        let mut neg = false;
        if let Some(c) = s.chars().next()
            && (c == '-' || c == '+')
        {
            neg = c == '-';
            s = &s[1..];
        }
        if s == "0" {
            return Ok(GoDuration::ZERO);
        }
        if s.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        while !s.is_empty() {
            let first = s.as_bytes()[0];
            if !(first == b'.' || first.is_ascii_digit()) {
                return Err(invalid());
            }
            // Integer part.
            let before = s.len();
            let (v, rest) = leading_int(s).ok_or_else(invalid)?;
            s = rest;
            let pre = before != s.len();
            // Fraction.
            let mut post = false;
            let mut frac: u64 = 0;
            let mut scale: f64 = 1.0;
            if let Some(rest) = s.strip_prefix('.') {
                let before = rest.len();
                let (f, sc, rest) = leading_fraction(rest);
                frac = f;
                scale = sc;
                s = rest;
                post = before != s.len();
            }
            if !pre && !post {
                return Err(invalid());
            }
            // Unit.
            let unit_len = s
                .bytes()
                .position(|c| c == b'.' || c.is_ascii_digit())
                .unwrap_or(s.len());
            if unit_len == 0 {
                return Err(DurationError(format!(
                    "time: missing unit in duration {}",
                    quote_time(orig)
                )));
            }
            let (u, rest) = s.split_at(unit_len);
            s = rest;
            let unit = match u {
                "ns" => NANOSECOND,
                "us" | "\u{b5}s" | "\u{3bc}s" => MICROSECOND,
                "ms" => MILLISECOND,
                "s" => SECOND,
                "m" => MINUTE,
                "h" => HOUR,
                _ => {
                    return Err(DurationError(format!(
                        "time: unknown unit {} in duration {}",
                        quote_time(u),
                        quote_time(orig)
                    )));
                }
            };
            const LIMIT: u64 = 1 << 63;
            if v > LIMIT / unit {
                return Err(invalid());
            }
            let mut v = v * unit;
            if frac > 0 {
                // Float arithmetic is what Go does here; keep it for identical rounding.
                v += (frac as f64 * (unit as f64 / scale)) as u64;
                if v > LIMIT {
                    return Err(invalid());
                }
            }
            total += v;
            if total > LIMIT {
                return Err(invalid());
            }
        }
        if neg {
            // total <= 2^63, so the negation is exact.
            return Ok(GoDuration((total as i64).wrapping_neg()));
        }
        i64::try_from(total).map(GoDuration).map_err(|_| invalid())
    }
}

/// Consumes leading decimal digits; `None` on overflow past 2^63.
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    let mut x: u64 = 0;
    for c in s[..n].bytes() {
        if x > (1u64 << 63) / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > 1 << 63 {
            return None;
        }
    }
    Some((x, &s[n..]))
}

/// Consumes leading fraction digits, keeping as many as fit (Go drops excess precision).
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    let mut x: u64 = 0;
    let mut scale = 1.0;
    let mut overflow = false;
    for c in s[..n].bytes() {
        if overflow {
            continue;
        }
        if x > (i64::MAX as u64) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(c - b'0');
        if y > 1 << 63 {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[n..])
}

/// The quoting of Go's `time` package: non-ASCII and control bytes become `\xNN`.
fn quote_time(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c.is_ascii() && c >= ' ' {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out.push('"');
    out
}

impl FromStr for GoDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GoDuration::parse(s)
    }
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String()`: `1h0m0s`, `1.5s`, `100ms`, `0s`, `-1s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let u = self.0.unsigned_abs();
        let mut out = String::new();
        if neg {
            out.push('-');
        }
        if u == 0 {
            return f.write_str("0s");
        }
        if u < SECOND {
            let (prec, unit) = if u < MICROSECOND {
                (0, "ns")
            } else if u < MILLISECOND {
                (3, "\u{b5}s")
            } else {
                (6, "ms")
            };
            push_fixed(&mut out, u, prec);
            out.push_str(unit);
        } else {
            let secs_total = u / SECOND;
            let hours = secs_total / 3600;
            let minutes = (secs_total / 60) % 60;
            if hours > 0 {
                out.push_str(&format!("{hours}h{minutes}m"));
            } else if minutes > 0 {
                out.push_str(&format!("{minutes}m"));
            }
            // Seconds with the sub-second part, trailing zeros trimmed.
            push_fixed(&mut out, u % MINUTE, 9);
            out.push('s');
        }
        f.write_str(&out)
    }
}

/// Writes `v / 10^prec` with the fractional digits trimmed of trailing zeros.
fn push_fixed(out: &mut String, v: u64, prec: u32) {
    let div = 10u64.pow(prec);
    let int = v / div;
    let frac = v % div;
    out.push_str(&int.to_string());
    if frac != 0 {
        let digits = format!("{frac:0width$}", width = prec as usize);
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> i64 {
        GoDuration::parse(s)
            .map(GoDuration::as_nanos)
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn parses_go_duration_syntax() {
        let s = SECOND as i64;
        // Whole seconds.
        for (text, secs) in [
            ("1h0m0s", 3600),
            ("1.5h", 5400),
            ("-1s", -1),
            ("+1s", 1),
            ("1s", 1),
            ("10s", 10),
            ("1h30m", 5400),
            ("1m0s", 60),
            ("1.s", 1),
            ("1.0000000001s", 1),
        ] {
            assert_eq!(p(text), secs * s, "{text:?}");
        }
        // Nanoseconds.
        for (text, nanos) in [
            ("100ms", 100_000_000),
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("0s", 0),
            ("300ms", 300_000_000),
            ("1ns", 1),
            ("1us", 1_000),
            ("1µs", 1_000),
            ("1μs", 1_000),
            (".5s", 500_000_000),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
        ] {
            assert_eq!(p(text), nanos, "{text:?}");
        }
    }

    #[test]
    fn rejects_invalid_durations_with_go_messages() {
        let err = |s: &str| GoDuration::parse(s).unwrap_err().to_string();
        for (text, want) in [
            ("", "time: invalid duration \"\""),
            ("x", "time: invalid duration \"x\""),
            ("-", "time: invalid duration \"-\""),
            (".", "time: invalid duration \".\""),
            ("1", "time: missing unit in duration \"1\""),
            ("10", "time: missing unit in duration \"10\""),
            ("1d", "time: unknown unit \"d\" in duration \"1d\""),
            ("1h-1s", "time: unknown unit \"h-\" in duration \"1h-1s\""),
            ("1s-", "time: unknown unit \"s-\" in duration \"1s-\""),
            ("1h1", "time: missing unit in duration \"1h1\""),
            ("-x", "time: invalid duration \"-x\""),
            ("3000000h", "time: invalid duration \"3000000h\""),
            ("1 s", "time: unknown unit \" s\" in duration \"1 s\""),
            (
                "2562047h47m16.854775808s",
                "time: invalid duration \"2562047h47m16.854775808s\"",
            ),
            (
                "1é",
                "time: unknown unit \"\\xc3\\xa9\" in duration \"1\\xc3\\xa9\"",
            ),
        ] {
            assert_eq!(err(text), want, "{text:?}");
        }
    }

    #[test]
    fn formats_like_go_string() {
        let f = |n: i64| GoDuration::from_nanos(n).to_string();
        assert_eq!(f(0), "0s");
        assert_eq!(f(3600 * SECOND as i64), "1h0m0s");
        assert_eq!(f(100_000_000), "100ms");
        assert_eq!(f(1_500_000_000), "1.5s");
        assert_eq!(f(SECOND as i64), "1s");
        assert_eq!(f(10 * SECOND as i64), "10s");
        assert_eq!(f(90 * SECOND as i64), "1m30s");
        assert_eq!(f(5400 * SECOND as i64), "1h30m0s");
        assert_eq!(f(-(SECOND as i64)), "-1s");
        assert_eq!(f(1), "1ns");
        assert_eq!(f(1_500), "1.5µs");
        assert_eq!(f(1_200_000), "1.2ms");
        assert_eq!(f(i64::MAX), "2562047h47m16.854775807s");
        assert_eq!(f(i64::MIN), "-2562047h47m16.854775808s");
    }

    #[test]
    fn format_then_parse_round_trips() {
        for n in [
            0,
            1,
            999,
            1_000,
            1_234_567,
            59 * SECOND as i64 + 1,
            86_400 * SECOND as i64,
            -42,
        ] {
            let d = GoDuration::from_nanos(n);
            assert_eq!(GoDuration::parse(&d.to_string()), Ok(d));
        }
    }

    #[test]
    fn converts_to_std_only_when_non_negative() {
        assert_eq!(
            GoDuration::from_secs(2).to_std(),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(GoDuration::from_secs(-2).to_std(), None);
        assert_eq!(
            GoDuration::from_std(std::time::Duration::from_millis(5)),
            Some(GoDuration::from_millis(5))
        );
    }
}
