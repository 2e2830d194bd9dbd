//! TLS 1.3 client configurations (rustls, ring provider).
//!
//! - Enrollment: the agent has only the SHA-256 of the gateway CA, from the
//!   invite. The gateway presents its chain (leaf, CA); [`PinnedCa`] finds
//!   the CA with that fingerprint in it and verifies the leaf against it and
//!   nothing else.
//! - Sessions: the enrolled CA is the only root, and the agent presents its
//!   client certificate.
//!
//! Either way the gateway's name is [`GATEWAY_SERVER_NAME`]: trust comes
//! from the private CA, not from DNS.

use std::sync::Arc;
use std::time::Duration;

use ackgate_common::proto::GATEWAY_SERVER_NAME;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot reach the gateway at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("no TCP connection to the gateway at {addr} within {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("TLS handshake with the gateway at {addr} failed: {source}")]
    Handshake { addr: String, source: std::io::Error },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies the server against the one CA whose fingerprint the invite named.
#[derive(Debug)]
struct PinnedCa {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| Sha256::digest(c).as_slice() == self.sha256).ok_or_else(|| {
            rustls::Error::General(
                "the gateway's CA is not the one the invite names (wrong gateway, or the invite was altered)".into(),
            )
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?)
}

pub fn enrollment_config(ca_sha256: [u8; 32]) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(PinnedCa { sha256: ca_sha256, provider: provider() });
    Ok(Arc::new(builder()?.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()))
}

pub fn session_config(
    ca: &CertificateDer<'static>,
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(builder()?.with_root_certificates(roots).with_client_auth_cert(vec![cert.clone()], key.clone_key())?))
}

/// TCP connect (bounded by `timeout`) and TLS handshake (bounded too).
pub async fn connect(
    addr: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, TlsError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| TlsError::ConnectTimeout { addr: addr.to_owned(), after: timeout })?
        .map_err(|source| TlsError::Connect { addr: addr.to_owned(), source })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(GATEWAY_SERVER_NAME).map_err(|e| rustls::Error::General(e.to_string()))?;
    tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| TlsError::ConnectTimeout { addr: addr.to_owned(), after: timeout })?
        .map_err(|source| TlsError::Handshake { addr: addr.to_owned(), source })
}
