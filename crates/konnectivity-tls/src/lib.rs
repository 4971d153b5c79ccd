//! TLS for konnectivity-rs: the one place that builds rustls configurations.
//!
//! Owns PEM loading (certificates, keys, CA bundles), the crypto provider (ring, and
//! only ring: [`install_provider`]), and the three TLS roles:
//! - the agent listener of proxy-server ([`agent_listener`]): ALPN `h2`, client
//!   certificates required and verified when a cluster CA is given;
//! - the TCP frontend of proxy-server ([`frontend_listener`]): client certificates
//!   always required; ALPN `h2` for gRPC, `http/1.1` only for HTTP-CONNECT;
//! - the client side of proxy-agent ([`agent_client`]): roots from `--ca-cert`, an
//!   optional client certificate, ALPN = the custom IDs followed by `h2`.
//!
//! Every certificate/key pair a process presents (server and frontend listeners, the
//! agent's client certificate) is a [`ReloadingCert`]: rotated files take effect on the
//! next handshake, established connections keep theirs. CA bundles are read once.
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use rustls::{ClientConfig, ServerConfig};
pub use rustls_pki_types::ServerName;
/// A client-side TLS stream.
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
/// A server-side TLS stream.
pub use tokio_rustls::server::TlsStream as ServerTlsStream;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate/key pair could not be loaded (upstream's wording).
    #[error("failed to load X509 key pair {cert} and {key}: {reason}")]
    KeyPair {
        /// Certificate path.
        cert: String,
        /// Key path.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// A CA bundle could not be loaded.
    #[error("failed to read CA cert {path}: {reason}")]
    Ca {
        /// Bundle path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// TLS protocol versions allowed by `--tls-min-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3 (upstream's default; also used for 1.0/1.1 requests, which
    /// rustls does not implement).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Installs ring as the process-wide rustls provider. Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Go's names of the TLS 1.2 suites rustls implements, and the suites. Go's other
/// "secure" names (the CBC-SHA suites) are accepted by `--cipher-suites` validation but
/// rustls does not implement them; they are skipped with a warning by the caller.
pub fn tls12_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// The TLS policy of a listener: minimum version and `--cipher-suites` (Go names).
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    /// `--tls-min-version`.
    pub min: MinVersion,
    /// `--cipher-suites`; empty means rustls' defaults. TLS 1.3 suites are always
    /// enabled (as in Go, where they are not configurable).
    pub cipher_suites: Vec<String>,
}

impl TlsPolicy {
    /// The crypto provider restricted to the policy's TLS 1.2 suites.
    fn provider(&self) -> Result<Arc<rustls::crypto::CryptoProvider>, TlsError> {
        let mut p = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            let tls12: Vec<_> = self
                .cipher_suites
                .iter()
                .filter_map(|n| tls12_suite(n))
                .collect();
            if tls12.is_empty() && self.min == MinVersion::Tls12 {
                return Err(TlsError::Config(format!(
                    "--cipher-suites: none of {:?} is a TLS 1.2 suite rustls implements (ECDHE with AES-GCM or ChaCha20-Poly1305); TLS 1.2 clients could not connect",
                    self.cipher_suites
                )));
            }
            p.cipher_suites.retain(|s| match s {
                rustls::SupportedCipherSuite::Tls13(_) => true,
                rustls::SupportedCipherSuite::Tls12(_) => {
                    tls12.iter().any(|t| t.suite() == s.suite())
                }
            });
        }
        Ok(Arc::new(p))
    }
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(v: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match v {
        MinVersion::Tls12 => rustls::ALL_VERSIONS,
        MinVersion::Tls13 => TLS13_ONLY,
    }
}

/// Loads a certificate chain and private key from PEM files.
pub fn load_key_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let err = |reason: String| TlsError::KeyPair {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err(
            "tls: failed to find any PEM data in certificate input".into()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| err(e.to_string()))?;
    Ok((certs, key))
}

/// Loads a CA bundle (non-certificate PEM blocks are ignored).
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let err = |reason: String| TlsError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificates found".into()));
    }
    Ok(roots)
}

fn server_builder(
    policy: &TlsPolicy,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(policy.provider()?)
        .with_protocol_versions(versions(policy.min))
        .map_err(|e| TlsError::Config(e.to_string()))
}

fn client_verifier(
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let roots = load_roots(ca)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// The agent listener: `--cluster-cert/--cluster-key`, client certs verified against
/// `--cluster-ca-cert` when given (otherwise not requested), ALPN `h2`.
pub fn agent_listener(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    min: MinVersion,
) -> Result<ServerConfig, TlsError> {
    agent_listener_with(
        cert,
        key,
        client_ca,
        &TlsPolicy {
            min,
            cipher_suites: Vec::new(),
        },
    )
}

/// [`agent_listener`] with a full [`TlsPolicy`]. The certificate is re-read when its
/// files change (see [`ReloadingCert`]).
pub fn agent_listener_with(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    policy: &TlsPolicy,
) -> Result<ServerConfig, TlsError> {
    let resolver = Arc::new(ReloadingCert::new(cert, key)?);
    let b = server_builder(policy)?;
    let b = match client_ca {
        Some(ca) => b.with_client_cert_verifier(client_verifier(ca)?),
        None => b.with_no_client_auth(),
    };
    let mut cfg = b.with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The TCP frontend: client certificates required and verified against
/// `--server-ca-cert`; ALPN `h2` for gRPC, `http/1.1` for HTTP-CONNECT.
pub fn frontend_listener(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    http_connect: bool,
    min: MinVersion,
) -> Result<ServerConfig, TlsError> {
    frontend_listener_with(
        cert,
        key,
        client_ca,
        http_connect,
        &TlsPolicy {
            min,
            cipher_suites: Vec::new(),
        },
    )
}

/// [`frontend_listener`] with a full [`TlsPolicy`]; the certificate reloads on change.
pub fn frontend_listener_with(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    http_connect: bool,
    policy: &TlsPolicy,
) -> Result<ServerConfig, TlsError> {
    let resolver = Arc::new(ReloadingCert::new(cert, key)?);
    let mut cfg = server_builder(policy)?
        .with_client_cert_verifier(client_verifier(client_ca)?)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = if http_connect {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec()]
    };
    Ok(cfg)
}

/// The SOCKS5 port over TLS (`--socks5-tls-*`): client certificates required and
/// verified against `client_ca`; no ALPN (SOCKS has no registered protocol id, and
/// clients such as `socat` or `openssl s_client` offer none). The certificate reloads
/// on change.
pub fn socks5_listener_with(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    policy: &TlsPolicy,
) -> Result<ServerConfig, TlsError> {
    let resolver = Arc::new(ReloadingCert::new(cert, key)?);
    Ok(server_builder(policy)?
        .with_client_cert_verifier(client_verifier(client_ca)?)
        .with_cert_resolver(resolver))
}

/// The agent's client side: trust `ca`, optionally present a client certificate
/// (re-read when its files change, see [`ReloadingCert`]), offer `alpn` then `h2`.
pub fn agent_client(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    alpn: &[String],
) -> Result<ClientConfig, TlsError> {
    let roots = load_roots(ca)?;
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => b.with_client_cert_resolver(Arc::new(ReloadingCert::new(cert, key)?)),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    cfg.alpn_protocols.push(b"h2".to_vec());
    // No session resumption (as upstream's Go agent): a resumed TLS 1.3 session skips
    // client authentication and carries the identity of the session's first handshake,
    // so a rotated client certificate would not reach the server until the session
    // expired. A reconnect costs one full handshake.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// A generic client config for tools and tests: trust `ca`, optional client cert,
/// the given ALPN list.
pub fn client(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let mut cfg = agent_client(ca, client, &[])?;
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// **For diagnostics only — never for carrying traffic.** A client config that accepts
/// *any* server certificate (unknown issuer, wrong name, expired, self-signed), while
/// still checking the handshake signatures made with it. `konnectivity doctor` uses it
/// to ask "does a TLS server answer on this port at all?" (e.g. a kubelet's `:10250`,
/// whose certificate it has no CA for), where the only question is whether a TLS
/// handshake completes. No client certificate; ALPN as given.
pub fn diagnostic_client_accepting_any_server_certificate(
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::UnixTime;

    /// The verifier's signature checks: each TLS version's own, with the provider's
    /// algorithms.
    macro_rules! signature_checks {
        ($($method:ident => $check:path),+ $(,)?) => {$(
            fn $method(
                &self,
                message: &[u8],
                cert: &CertificateDer<'_>,
                dss: &DigitallySignedStruct,
            ) -> Result<HandshakeSignatureValid, rustls::Error> {
                $check(message, cert, dss, &self.0.signature_verification_algorithms)
            }
        )+};
    }

    /// Accepts every certificate; verifies signatures with the provider's algorithms.
    #[derive(Debug)]
    struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AcceptAnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        signature_checks! {
            verify_tls12_signature => rustls::crypto::verify_tls12_signature,
            verify_tls13_signature => rustls::crypto::verify_tls13_signature,
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let p = provider();
    let mut cfg = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(p)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// A certificate and key read from PEM files and re-read when either file's
/// modification time changes (checked at most once a second, on use: on a handshake),
/// so rotated certificates take effect for new connections without a restart;
/// established connections keep the certificate they were opened with. A rotation that
/// fails to load (a half-written pair, a key that does not match) keeps the previous
/// certificate, logs a warning, and is tried again at the next check; every outcome is
/// counted ([`reloads`]) for the binaries' metrics.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    state: std::sync::RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamp: (Option<std::time::SystemTime>, Option<std::time::SystemTime>),
    checked: std::time::Instant,
    certified: Arc<rustls::sign::CertifiedKey>,
}

/// Certificates reloaded after their files changed, in this process.
static RELOADS: AtomicU64 = AtomicU64::new(0);
/// Changed certificate files that did not load (the previous pair stayed in use).
static RELOAD_FAILURES: AtomicU64 = AtomicU64::new(0);

/// (reloads, failed reloads) of every [`ReloadingCert`] in this process, for the
/// `konnectivity_rs_{server,agent}_certificate_reloads_total` and
/// `_certificate_reload_failures_total` metrics.
pub fn reloads() -> (u64, u64) {
    (
        RELOADS.load(Ordering::Relaxed),
        RELOAD_FAILURES.load(Ordering::Relaxed),
    )
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    /// Loads the pair now (errors are reported at startup).
    pub fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certified = Self::load(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: std::sync::RwLock::new(Loaded {
                stamp: (mtime(cert), mtime(key)),
                checked: std::time::Instant::now(),
                certified,
            }),
        })
    }

    fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let (certs, key_der) = load_key_pair(cert, key)?;
        rustls::sign::CertifiedKey::from_der(
            certs,
            key_der,
            &rustls::crypto::ring::default_provider(),
        )
        .map(Arc::new)
        .map_err(|e| TlsError::KeyPair {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The current certificate, reloading it first if the files changed.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        {
            let s = self.state.read().unwrap_or_else(|p| p.into_inner());
            if s.checked.elapsed() < std::time::Duration::from_secs(1) {
                return s.certified.clone();
            }
        }
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.checked = std::time::Instant::now();
        let stamp = (mtime(&self.cert), mtime(&self.key));
        if stamp != s.stamp {
            match Self::load(&self.cert, &self.key) {
                Ok(c) => {
                    s.certified = c;
                    s.stamp = stamp;
                    RELOADS.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(cert = %self.cert.display(), key = %self.key.display(), "certificate reloaded: new connections use it");
                }
                Err(e) => {
                    RELOAD_FAILURES.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "certificate files changed but do not load; keeping the previous certificate");
                }
            }
        }
        s.certified.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_certificate_is_served_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = konnectivity_testkit::pki::generate(&dir.path().join("a"), &[]).unwrap();
        let b = konnectivity_testkit::pki::generate(&dir.path().join("b"), &[]).unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::copy(&a.server_cert, &cert).unwrap();
        std::fs::copy(&a.server_key, &key).unwrap();
        let r = ReloadingCert::new(&cert, &key).unwrap();
        let first = r.current().cert[0].clone();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::copy(&b.server_cert, &cert).unwrap();
        std::fs::copy(&b.server_key, &key).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = r.current().cert[0].clone();
        assert_ne!(first, second, "the rotated certificate was not picked up");
        // A broken rotation keeps the last good certificate, and is counted.
        let (_, failed) = reloads();
        std::fs::write(&cert, "garbage").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(r.current().cert[0], second);
        assert!(reloads().1 > failed);
    }

    #[test]
    fn cipher_suites_restrict_tls12_and_reject_unusable_lists() {
        install_provider();
        let p = TlsPolicy {
            min: MinVersion::Tls12,
            cipher_suites: vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()],
        };
        let prov = p.provider().unwrap();
        let tls12 = prov
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .count();
        assert_eq!(tls12, 1);
        let only_cbc = TlsPolicy {
            min: MinVersion::Tls12,
            cipher_suites: vec!["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA".into()],
        };
        assert!(
            only_cbc
                .provider()
                .unwrap_err()
                .to_string()
                .contains("--cipher-suites")
        );
    }
}
