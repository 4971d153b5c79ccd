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
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;

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
    min: MinVersion,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(min))
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
    let (certs, key_der) = load_key_pair(cert, key)?;
    let b = server_builder(min)?;
    let b = match client_ca {
        Some(ca) => b.with_client_cert_verifier(client_verifier(ca)?),
        None => b.with_no_client_auth(),
    };
    let mut cfg = b
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::KeyPair {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: e.to_string(),
        })?;
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
    let (certs, key_der) = load_key_pair(cert, key)?;
    let mut cfg = server_builder(min)?
        .with_client_cert_verifier(client_verifier(client_ca)?)
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::KeyPair {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: e.to_string(),
        })?;
    cfg.alpn_protocols = if http_connect {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec()]
    };
    Ok(cfg)
}

/// The agent's client side: trust `ca`, optionally present a client certificate,
/// offer `alpn` then `h2`.
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
        Some((cert, key)) => {
            let (certs, key_der) = load_key_pair(cert, key)?;
            b.with_client_auth_cert(certs, key_der)
                .map_err(|e| TlsError::KeyPair {
                    cert: cert.display().to_string(),
                    key: key.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    cfg.alpn_protocols.push(b"h2".to_vec());
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
