//! Invites: what an administrator hands to a new agent, as one line of text
//! (`ackgate-invite-1.` + base64url of the postcard encoding).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PREFIX: &str = "ackgate-invite-1.";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// Where the agent connects: `host:port` of the gateway's agent port.
    pub gateway: String,
    /// SHA-256 of the gateway CA certificate (DER); the agent trusts only it.
    pub ca_sha256: [u8; 32],
    pub invite_id: u64,
    /// One-time secret; the gateway keeps only its SHA-256.
    pub secret: [u8; 32],
    /// Unix seconds after which the gateway refuses it.
    pub expires_unix: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteError {
    #[error("not an ackgate invite (it should start with {PREFIX})")]
    Prefix,
    #[error("the invite text is damaged (base64): {0}")]
    Base64(String),
    #[error("the invite text is damaged (fields): {0}")]
    Fields(String),
}

impl Invite {
    pub fn encode(&self) -> String {
        // Serializing plain fields into a Vec cannot fail.
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn parse(text: &str) -> Result<Self, InviteError> {
        let body = text.trim().strip_prefix(PREFIX).ok_or(InviteError::Prefix)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|e| InviteError::Base64(e.to_string()))?;
        postcard::from_bytes(&bytes).map_err(|e| InviteError::Fields(e.to_string()))
    }
}

/// What the gateway stores instead of the secret.
pub fn invite_secret_digest(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_text_roundtrips_and_damage_is_named() {
        let inv = Invite {
            gateway: "10.0.0.1:4433".into(),
            ca_sha256: [1; 32],
            invite_id: 42,
            secret: [2; 32],
            expires_unix: 1_900_000_000,
        };
        let text = inv.encode();
        assert_eq!(Invite::parse(&text), Ok(inv));
        assert_eq!(Invite::parse("hello"), Err(InviteError::Prefix));
        assert!(matches!(Invite::parse("ackgate-invite-1.!!"), Err(InviteError::Base64(_))));
        assert!(matches!(Invite::parse(&text[..text.len() - 10]), Err(InviteError::Fields(_))));
    }
}
