//! Redeeming an invite (docs/design.md §4): the agent makes its own TLS key and
//! certificate request, proves the invite's one-time secret over a TLS
//! session pinned to the invite's CA, and stores what the gateway issues.

use std::time::Duration;

use ackgate_common::host::unix_secs;
use ackgate_common::mac::MacKey;
use ackgate_common::proto::{EnrollRequest, Invite, Message, MessageCodec, ProtoError};
use futures_util::{SinkExt, StreamExt};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio_util::codec::Framed;

use crate::state::{AgentInfo, Enrollment, StateDir, StateError};
use crate::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("invite: {0}")]
    Invite(#[from] ackgate_common::proto::InviteError),
    #[error("the invite expired (its expiry has passed); ask the administrator for a new one")]
    Expired,
    #[error("this agent is already enrolled (state in {0}); remove that directory to enroll again")]
    AlreadyEnrolled(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("enrollment protocol: {0}")]
    Protocol(#[from] ProtoError),
    #[error("the gateway refused the enrollment: {0}")]
    Refused(ackgate_common::proto::ErrorReport),
    #[error("the gateway answered with a CA other than the invite's")]
    CaMismatch,
    #[error("key generation: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Redeems `invite` and stores the identity in `state`.
pub async fn enroll(invite: &Invite, hostname: &str, state: &StateDir, timeout: Duration) -> Result<u32, EnrollError> {
    if state.is_enrolled() {
        return Err(EnrollError::AlreadyEnrolled(state.path().display().to_string()));
    }
    if invite.expires_unix < unix_secs() {
        return Err(EnrollError::Expired);
    }
    let key = KeyPair::generate()?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    let install_serial: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
    let stream = tls::connect(&invite.gateway, tls::enrollment_config(invite.ca_sha256)?, timeout).await?;
    let mut conn = Framed::new(stream, MessageCodec::default());
    let request = EnrollRequest {
        invite_id: invite.invite_id,
        secret: invite.secret,
        csr_der: csr.der().to_vec(),
        hostname: hostname.to_owned(),
        install_serial: install_serial.clone(),
    };
    conn.send(Message::EnrollRequest(request)).await?;
    let answer = match tokio::time::timeout(timeout, conn.next()).await {
        Err(_) => return Err(ProtoError::Timeout { what: "the enrollment answer", after: timeout }.into()),
        Ok(None) => return Err(ProtoError::Closed.into()),
        Ok(Some(m)) => m?,
    };
    let enrolled = match answer {
        Message::Enrolled(e) => e,
        Message::Error(report) => return Err(EnrollError::Refused(report)),
        other => return Err(ProtoError::Unexpected { want: "Enrolled", got: other.name() }.into()),
    };
    if Sha256::digest(&enrolled.ca_der).as_slice() != invite.ca_sha256 {
        return Err(EnrollError::CaMismatch);
    }
    let enrollment = Enrollment {
        info: AgentInfo {
            agent_id: enrolled.agent_id,
            gateway: invite.gateway.clone(),
            install_serial,
            hostname: hostname.to_owned(),
            enrolled_unix: unix_secs(),
        },
        mac_key: MacKey::from_bytes(enrolled.mac_key),
        cert: CertificateDer::from(enrolled.cert_der),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ca: CertificateDer::from(enrolled.ca_der),
    };
    state.store(&enrollment)?;
    Ok(enrolled.agent_id)
}
