//! A throwaway PKI: one CA and the three leaf certificates a tunnel needs.
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files written by [`generate`].
#[derive(Debug, Clone)]
pub struct Pki {
    /// Directory holding the files.
    pub dir: PathBuf,
    /// The CA certificate (trust anchor for every role); its key is `ca.key` beside it.
    pub ca: PathBuf,
    /// proxy-server certificate (agent listener and TCP frontend).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// proxy-agent client certificate.
    pub agent_cert: PathBuf,
    /// Its key.
    pub agent_key: PathBuf,
    /// Frontend (kube-apiserver / curl) client certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// An agent client certificate from the same CA that expired in 2020.
    pub expired_agent_cert: PathBuf,
    /// Its key.
    pub expired_agent_key: PathBuf,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    /// TLS server authentication.
    Server,
    /// TLS client authentication.
    Client,
    /// TLS client authentication, valid only in 2019.
    ExpiredClient,
}

/// A certificate `name` for `sans`, signed by `issuer`, and its key, written into `dir`
/// as `<name>.crt` and `<name>.key`; their paths.
fn leaf(
    name: &str,
    sans: &[&str],
    kind: Leaf,
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
) -> anyhow::Result<CertAndKey> {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    if kind == Leaf::ExpiredClient {
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![if kind == Leaf::Server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((c, k))
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "konnectivity-rs test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

/// The paths of a certificate and of its key.
type CertAndKey = (PathBuf, PathBuf);

/// The server certificate (for `localhost`, `kubernetes`, `127.0.0.1`, `::1` and
/// `extra_sans`) and the agent's client certificate, signed by `issuer` into `dir`.
fn server_and_agent(
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    extra_sans: &[&str],
) -> anyhow::Result<(CertAndKey, CertAndKey)> {
    let mut sans = vec!["localhost", "kubernetes", "127.0.0.1", "::1"];
    sans.extend_from_slice(extra_sans);
    let server = leaf("proxy-server", &sans, Leaf::Server, issuer, dir)?;
    let agent = leaf("proxy-agent", &["proxy-agent"], Leaf::Client, issuer, dir)?;
    Ok((server, agent))
}

/// New server and agent certificates (new keys, new serials) from the CA of `pki`,
/// written into `dir`: what a certificate rotation installs. The server certificate
/// carries the same names as [`generate`] gives it plus `extra_sans`.
pub fn reissue(pki: &Pki, dir: &Path, extra_sans: &[&str]) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.dir.join("ca.key"))?)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let ((server_cert, server_key), (agent_cert, agent_key)) =
        server_and_agent(&issuer, dir, extra_sans)?;
    Ok(Pki {
        dir: dir.to_owned(),
        server_cert,
        server_key,
        agent_cert,
        agent_key,
        ..pki.clone()
    })
}

/// Writes a CA and server, agent and client certificates into `dir`. The server
/// certificate is valid for `localhost`, `kubernetes`, `127.0.0.1`, `::1` and
/// `extra_sans` (e.g. a network-namespace address).
pub fn generate(dir: &Path, extra_sans: &[&str]) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca = ca_params()?;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca_cert.pem())?;
    std::fs::write(dir.join("ca.key"), ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);
    let ((server_cert, server_key), (agent_cert, agent_key)) =
        server_and_agent(&issuer, dir, extra_sans)?;
    let (client_cert, client_key) = leaf(
        "frontend-client",
        &["kube-apiserver"],
        Leaf::Client,
        &issuer,
        dir,
    )?;
    let (expired_agent_cert, expired_agent_key) = leaf(
        "expired-agent",
        &["proxy-agent"],
        Leaf::ExpiredClient,
        &issuer,
        dir,
    )?;
    Ok(Pki {
        dir: dir.to_owned(),
        ca: ca_path,
        server_cert,
        server_key,
        agent_cert,
        agent_key,
        client_cert,
        client_key,
        expired_agent_cert,
        expired_agent_key,
    })
}
