//! The HTTP-CONNECT request head parser and the status mapping of dial errors
//! (spec §3.3). Pure functions: the server's CONNECT frontend owns the I/O.

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// `CONNECT authority`: the destination.
    Connect(String),
    /// Any other method.
    Other {
        /// Bytes of body that follow the head (Content-Length), to skip.
        body: usize,
        /// The client asked to close after the response (`Connection: close`, or
        /// HTTP/1.0 without keep-alive).
        close: bool,
    },
}

/// Parses a request head from `buf`. `Ok(None)`: incomplete. On success returns the
/// head and its length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => {
            let method = req.method.unwrap_or_default();
            let path = req.path.unwrap_or_default();
            if method == "CONNECT" {
                if path.is_empty() || path.starts_with('/') {
                    return Err(format!("invalid CONNECT authority {path:?}"));
                }
                return Ok(Some((Head::Connect(path.to_owned()), n)));
            }
            let body = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let connection = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("connection"))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                .unwrap_or_default();
            let close = connection.contains("close")
                || (req.version == Some(0) && !connection.contains("keep-alive"));
            Ok(Some((Head::Other { body, close }, n)))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The status line for an agent dial error (first rule wins, case-insensitive).
pub fn status_for(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("timeout") || e.contains("deadline exceeded") {
        "504 Gateway Timeout"
    } else if e.contains("too many open files") {
        "503 Service Unavailable"
    } else {
        "502 Bad Gateway"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_head_yields_authority_and_length() {
        let req = b"CONNECT 10.0.0.7:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nEXTRA";
        let (h, n) = parse_head(req).unwrap().unwrap();
        assert_eq!(h, Head::Connect("10.0.0.7:10250".into()));
        assert_eq!(&req[n..], b"EXTRA");
        assert_eq!(parse_head(b"CONNECT a:1 HTTP/1.1\r\n").unwrap(), None);
        assert!(parse_head(b"\x00\x01garbage\r\n\r\n").is_err());
    }

    #[test]
    fn dial_errors_map_to_upstream_status_codes() {
        assert_eq!(
            status_for("dial tcp 1.2.3.4:1: i/o timeout"),
            "504 Gateway Timeout"
        );
        assert_eq!(
            status_for("context deadline exceeded"),
            "504 Gateway Timeout"
        );
        assert_eq!(
            status_for("dial tcp: too many open files"),
            "503 Service Unavailable"
        );
        assert_eq!(
            status_for("dial tcp 127.0.0.1:1: connect: connection refused"),
            "502 Bad Gateway"
        );
        assert_eq!(
            status_for("dial tcp: lookup x: no such host"),
            "502 Bad Gateway"
        );
    }
}
