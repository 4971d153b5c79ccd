//! The ServiceAccount token check of `doctor agent`: the file, its JWT claims, expiry.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::report::{Finding, Status, finding, ok};

/// Decodes unpadded (or padded) base64url.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The payload claims of a JWT (not verified).
fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.trim().split('.');
    let (_h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice(&base64url_decode(p)?).ok()
}

/// `2026-01-02T03:04:05Z` from Unix seconds.
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(super) fn human_secs(s: i64) -> String {
    let s = s.abs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub(super) fn token_finding(path: &str) -> Finding {
    if path.is_empty() {
        return finding(
            "token",
            "--service-account-token-path",
            Status::Skipped,
            "not set: the agent authenticates with its client certificate only",
            "",
        );
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return finding(
                "token",
                path,
                Status::Failed,
                format!("cannot read the token: {e}"),
                "the agent reads this file on every connection attempt: mount the projected ServiceAccount token volume at this path",
            );
        }
    };
    let Some(claims) = jwt_claims(&text) else {
        return finding(
            "token",
            path,
            Status::Failed,
            "the file does not hold a JWT (three base64url parts with a JSON payload)",
            "the path must hold a ServiceAccount token (a projected serviceAccountToken volume)",
        );
    };
    let aud = match &claims["aud"] {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    };
    let Some(exp) = claims["exp"]
        .as_i64()
        .or_else(|| claims["exp"].as_f64().map(|f| f as i64))
    else {
        return finding(
            "token",
            path,
            Status::Warning,
            format!(
                "the token has no exp claim (audience {aud:?}); a legacy Secret-based token never expires"
            ),
            "prefer a projected, expiring token (audience system:konnectivity-server)",
        );
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if exp <= now {
        finding(
            "token",
            path,
            Status::Expired,
            format!(
                "the token expired at {} ({} ago)",
                rfc3339(exp),
                human_secs(now - exp)
            ),
            "the kubelet refreshes projected ServiceAccount tokens well before they expire: a stale token means the file is not a projected serviceAccountToken volume (or a copy), or the kubelet cannot reach the API server; mount the projected token (audience system:konnectivity-server) and restart the agent",
        )
    } else {
        ok(
            "token",
            path,
            format!(
                "a JWT valid until {} (in {}){}",
                rfc3339(exp),
                human_secs(exp - now),
                if aud.is_empty() {
                    String::new()
                } else {
                    format!(", audience {aud}")
                }
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_and_jwt_claims() {
        assert_eq!(base64url_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64url_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64url_decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert!(base64url_decode("a b").is_none());
        // {"alg":"none"}.{"exp":1000,"aud":["x"]}.sig
        let tok = "eyJhbGciOiJub25lIn0.eyJleHAiOjEwMDAsImF1ZCI6WyJ4Il19.c2ln";
        let c = jwt_claims(tok).unwrap_or_default();
        assert_eq!(c["exp"], 1000);
        assert!(jwt_claims("not-a-jwt").is_none());
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
