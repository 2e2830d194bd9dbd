//! Renewing the session certificate over the live session: when a third
//! of its validity is left, the agent makes a fresh key, sends its
//! certificate request (`RenewCertificate`), and stores the certificate the
//! gateway answers with, for its next connection. The old certificate stays
//! valid at the gateway until it expires, so a renewal the agent never
//! stores costs nothing.

use rcgen::{CertificateParams, KeyPair, PublicKeyData as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("the session certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error("making a key and certificate request: {0}")]
    Request(#[from] rcgen::Error),
    #[error("the renewed certificate is not for the key this agent asked with")]
    WrongKey,
}

/// Whether `cert` has a third of its validity or less left at `now_unix`
/// (or has expired).
pub fn due(cert: &CertificateDer<'_>, now_unix: i64) -> Result<bool, RenewError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| RenewError::BadCertificate(e.to_string()))?;
    let validity = parsed.validity();
    let (from, until) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    Ok(until - now_unix <= (until - from) / 3)
}

/// A renewal under way: the fresh key, until its certificate comes.
pub struct Pending {
    key: KeyPair,
}

impl Pending {
    /// A fresh key and the DER certificate request for it.
    pub fn start() -> Result<(Self, Vec<u8>), RenewError> {
        let key = KeyPair::generate()?;
        let csr = CertificateParams::default().serialize_request(&key)?;
        Ok((Self { key }, csr.der().to_vec()))
    }

    /// The certificate and key to use from now on, once `cert_der` is
    /// checked to certify this renewal's key.
    pub fn finish(self, cert_der: Vec<u8>) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), RenewError> {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| RenewError::BadCertificate(e.to_string()))?;
        if parsed.public_key().raw != self.key.subject_public_key_info().as_slice() {
            return Err(RenewError::WrongKey);
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        Ok((CertificateDer::from(cert_der), key))
    }
}
