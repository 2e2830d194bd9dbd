//! The gateway's private CA (docs/design.md §4): it signs the gateway's TLS
//! server certificate and every enrolled agent's client certificate. Agents
//! pin it by the SHA-256 of its DER encoding, carried in their invite.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use ackgate_common::proto::GATEWAY_SERVER_NAME;
pub use rcgen::ExtendedKeyUsagePurpose;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use thiserror::Error;

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
/// Agent certificates: a month. Agents renew theirs over the live session
/// when a third of its validity is left (docs/protocol.md), so a copied
/// certificate of an agent nobody revoked stops working within a month.
pub const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// The agent listener's own certificate: a month, reissued in the running
/// gateway after ten days (`ReissuingServerCert`).
pub const GATEWAY_CERT_VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// The gateway–validator link's certificates (files an administrator
/// deploys): a year; `ackgate validator credentials` makes new ones.
pub const LINK_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// Certificates start this far in the past, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a PEM {what}")]
    Pem { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("the agent's certificate request is unusable: {0}")]
    BadRequest(rcgen::Error),
}

pub struct Ca {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

/// A TLS server identity: chain (leaf, CA) and key.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Ca {
    /// A new CA in memory.
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("ackgate gateway CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2045, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert: cert.der().clone(), key })
    }

    /// Creates a CA and writes it to `dir` (`ca.pem`, `ca.key` mode 0600);
    /// refuses to overwrite an existing one.
    pub fn create(dir: &Path) -> Result<Self, PkiError> {
        let ca = Self::generate()?;
        write_new(&dir.join(CA_CERT_FILE), certificate_pem(&ca.cert).as_bytes(), 0o644)?;
        write_new(&dir.join(CA_KEY_FILE), ca.key.serialize_pem().as_bytes(), 0o600)?;
        Ok(ca)
    }

    /// Loads the CA that [`Ca::create`] wrote to `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        use rustls_pki_types::pem::PemObject;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = std::fs::read(&cert_path).map_err(|source| io_error(&cert_path, source))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|source| io_error(&key_path, source))?;
        let cert = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|_| PkiError::Pem { path: cert_path.display().to_string(), what: "certificate" })?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|_| PkiError::Pem { path: key_path.display().to_string(), what: "key" })?;
        Ok(Self { cert, key })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// SHA-256 of the CA certificate (what invites carry).
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.cert).into()
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.cert, &self.key)?)
    }

    /// A fresh server certificate for the agent listener, for
    /// [`GATEWAY_SERVER_NAME`], server authentication only.
    pub fn issue_server(&self) -> Result<ServerIdentity, PkiError> {
        self.issue(GATEWAY_SERVER_NAME, "ackgate gateway", ExtendedKeyUsagePurpose::ServerAuth, GATEWAY_CERT_VALIDITY)
    }

    /// A certificate for `dns_name` with one extended key usage (server or
    /// client authentication), valid for `validity` from now; chain (leaf,
    /// CA) and key.
    pub fn issue(
        &self,
        dns_name: &str,
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
        validity: Duration,
    ) -> Result<ServerIdentity, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![dns_name.to_owned()])?;
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, validity);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(ServerIdentity {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Checks an agent's certificate request (parsed, self-signature
    /// verified) before anything is spent on it, such as an invite.
    pub fn check_agent_request(csr_der: &[u8]) -> Result<(), PkiError> {
        let der = CertificateSigningRequestDer::from(csr_der);
        CertificateSigningRequestParams::from_der(&der).map(drop).map_err(PkiError::BadRequest)
    }

    /// Signs an agent's certificate request: client authentication only, so
    /// an agent certificate can never pose as the gateway.
    pub fn sign_agent(
        &self,
        csr_der: &[u8],
        agent_id: u32,
        validity: Duration,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let der = CertificateSigningRequestDer::from(csr_der);
        let mut csr = CertificateSigningRequestParams::from_der(&der).map_err(PkiError::BadRequest)?;
        csr.params = CertificateParams::default();
        csr.params.distinguished_name = name(&format!("ackgate agent {agent_id}"));
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut csr.params, validity);
        Ok(csr.signed_by(&self.issuer()?)?.der().clone())
    }
}

/// Makes `params` valid for `validity` from now (and a little before).
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = rcgen::date_time_ymd(1970, 1, 1) + std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// The agent listener's certificate, reissued by the CA once `reissue_after`
/// has passed (a third of its validity), so a gateway that runs for months
/// never serves an expired certificate. A failed reissue keeps the current
/// one and says so; the next handshake tries again.
pub struct ReissuingServerCert {
    ca: Arc<Ca>,
    reissue_after: Duration,
    current: Mutex<(Instant, Arc<CertifiedKey>)>,
}

impl core::fmt::Debug for ReissuingServerCert {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReissuingServerCert").field("reissue_after", &self.reissue_after).finish_non_exhaustive()
    }
}

impl ReissuingServerCert {
    pub fn new(ca: Arc<Ca>) -> Result<Self, PkiError> {
        Self::with_reissue_after(ca, GATEWAY_CERT_VALIDITY / 3)
    }

    pub fn with_reissue_after(ca: Arc<Ca>, reissue_after: Duration) -> Result<Self, PkiError> {
        let first = certified(&ca)?;
        Ok(Self { ca, reissue_after, current: Mutex::new((Instant::now(), first)) })
    }

    /// The certificate to serve now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0.elapsed() >= self.reissue_after {
            match certified(&self.ca) {
                Ok(fresh) => *current = (Instant::now(), fresh),
                Err(e) => tracing::warn!("reissuing the agent listener's certificate: {e}"),
            }
        }
        current.1.clone()
    }
}

impl ResolvesServerCert for ReissuingServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn certified(ca: &Ca) -> Result<Arc<CertifiedKey>, PkiError> {
    let identity = ca.issue_server()?;
    let key =
        rustls::crypto::ring::sign::any_supported_type(&identity.key).map_err(|e| PkiError::Tls(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(identity.chain, key)))
}

/// PEM text of a DER certificate.
pub fn certificate_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

fn io_error(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io { path: path.display().to_string(), source }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|source| io_error(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_have_sane_lifetimes_and_the_listeners_is_reissued() {
        let ca = Arc::new(Ca::generate().expect("CA"));
        let days = |der: &[u8]| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
            let v = cert.validity();
            (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400
        };
        let listener = ReissuingServerCert::with_reissue_after(ca.clone(), Duration::ZERO).expect("listener cert");
        let first = listener.current();
        assert_eq!(days(&first.cert[0]), 30, "the agent listener's certificate lasts a month");
        assert_ne!(listener.current().cert[0], first.cert[0], "past reissue_after, a new certificate is served");
        let steady = ReissuingServerCert::new(ca.clone()).expect("listener cert");
        assert_eq!(steady.current().cert[0], steady.current().cert[0], "before reissue_after, the same one");
        let link = ca.issue("v.invalid", "v", ExtendedKeyUsagePurpose::ServerAuth, LINK_CERT_VALIDITY).expect("link");
        assert_eq!(days(&link.chain[0]), 365, "link certificates last a year");
        let key = KeyPair::generate().expect("key");
        let csr = CertificateParams::default().serialize_request(&key).expect("csr");
        let agent = ca.sign_agent(csr.der(), 7, AGENT_CERT_VALIDITY).expect("agent cert");
        assert_eq!(days(&agent), 30, "agent certificates last a month");
    }
}
