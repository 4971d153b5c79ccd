//! TLS knobs of the server's listeners, by their Go names.
//!
//! `--tls-min-version` and `--cipher-suites` take Go `crypto/tls` names. This module owns the
//! accepted names and the validation messages; turning them into a rustls configuration is the
//! TLS crate's job (TLS 1.3 suites are accepted but, as in Go, not configurable).

/// A minimum TLS protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    /// `VersionTLS10`
    Tls10,
    /// `VersionTLS11`
    Tls11,
    /// `VersionTLS12` (the default when the flag is empty)
    Tls12,
    /// `VersionTLS13`
    Tls13,
}

impl TlsVersion {
    /// Parses a `--tls-min-version` value; empty means TLS 1.2.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "" | "VersionTLS12" => Ok(TlsVersion::Tls12),
            "VersionTLS10" => Ok(TlsVersion::Tls10),
            "VersionTLS11" => Ok(TlsVersion::Tls11),
            "VersionTLS13" => Ok(TlsVersion::Tls13),
            _ => Err(format!(
                "unsupported TLS version {}, supported values are: VersionTLS10, VersionTLS11, VersionTLS12, VersionTLS13",
                crate::go::strconv::quote(name)
            )),
        }
    }

    /// True below TLS 1.2 (accepted, but worth a warning: RFC 8996).
    pub fn is_insecure(self) -> bool {
        self < TlsVersion::Tls12
    }

    /// The Go constant name.
    pub fn go_name(self) -> &'static str {
        match self {
            TlsVersion::Tls10 => "VersionTLS10",
            TlsVersion::Tls11 => "VersionTLS11",
            TlsVersion::Tls12 => "VersionTLS12",
            TlsVersion::Tls13 => "VersionTLS13",
        }
    }
}

/// Go's secure cipher-suite list (`tls.CipherSuites()`): the only accepted `--cipher-suites`.
pub const ACCEPTED_CIPHER_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Checks every name against [`ACCEPTED_CIPHER_SUITES`]; the first unknown one is reported.
pub fn validate_cipher_suites(names: &[String]) -> Result<(), String> {
    match names
        .iter()
        .find(|n| !ACCEPTED_CIPHER_SUITES.contains(&n.as_str()))
    {
        Some(bad) => Err(format!(
            "cipher suite {bad} not supported, doesn't exist or considered as insecure"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_versions_parse_by_go_name() {
        assert_eq!(TlsVersion::parse(""), Ok(TlsVersion::Tls12));
        assert_eq!(TlsVersion::parse("VersionTLS10"), Ok(TlsVersion::Tls10));
        assert_eq!(TlsVersion::parse("VersionTLS11"), Ok(TlsVersion::Tls11));
        assert_eq!(TlsVersion::parse("VersionTLS12"), Ok(TlsVersion::Tls12));
        assert_eq!(TlsVersion::parse("VersionTLS13"), Ok(TlsVersion::Tls13));
        assert!(TlsVersion::Tls11.is_insecure());
        assert!(!TlsVersion::Tls12.is_insecure());
        assert_eq!(
            TlsVersion::parse("TLS1.3"),
            Err("unsupported TLS version \"TLS1.3\", supported values are: VersionTLS10, VersionTLS11, VersionTLS12, VersionTLS13".to_owned())
        );
    }

    #[test]
    fn cipher_suites_accept_only_the_secure_list() {
        let ok = vec![
            "TLS_AES_256_GCM_SHA384".to_owned(),
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA".to_owned(),
        ];
        assert_eq!(validate_cipher_suites(&ok), Ok(()));
        assert_eq!(validate_cipher_suites(&[]), Ok(()));
        for bad in [
            "TLS_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
            "bogus",
        ] {
            assert_eq!(
                validate_cipher_suites(&[bad.to_owned()]),
                Err(format!(
                    "cipher suite {bad} not supported, doesn't exist or considered as insecure"
                ))
            );
        }
    }
}
