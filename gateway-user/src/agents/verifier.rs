//! The agent listener's client-certificate check: the CA's signature (as
//! webpki checks it), and then that the certificate is one the store binds
//! to an enrolled, unrevoked agent. A revoked agent's certificate fails in
//! the TLS handshake itself (alert "certificate revoked"), so it never gets
//! as far as a session.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};

use super::Directory;

pub struct EnrolledAgents {
    pub signed: Arc<dyn ClientCertVerifier>,
    pub directory: Arc<dyn Directory>,
}

impl core::fmt::Debug for EnrolledAgents {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EnrolledAgents").field("signed", &self.signed).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for EnrolledAgents {
    fn offer_client_auth(&self) -> bool {
        self.signed.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.signed.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.signed.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.signed.verify_client_cert(end_entity, intermediates, now)?;
        // An indexed lookup in the store; sessions open once per agent
        // start or reconnect, not per flow. rustls calls this inside the
        // handshake's future, on a runtime thread, and the lookup takes the
        // store's lock, which a writer can hold for its busy timeout: on the
        // daemon's multi-threaded runtime the thread first hands its other
        // tasks to the rest (`block_in_place`).
        let digest: [u8; 32] = Sha256::digest(end_entity).into();
        let lookup = || self.directory.agent_by_certificate(&digest);
        let found = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(lookup)
            }
            _ => lookup(),
        };
        match found {
            Some(_) => Ok(verified),
            None => Err(Error::InvalidCertificate(CertificateError::Revoked)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signed.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signed.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signed.supported_verify_schemes()
    }
}
