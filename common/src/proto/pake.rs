//! Logins with OPAQUE (RFC 9807), an augmented PAKE: the password never
//! leaves the agent, the store holds no password-equivalent, and a captured
//! transcript allows no offline dictionary attack (docs/protocol.md, "The
//! login").
//!
//! This module is what both halves share: the cipher suite, the context
//! every login is bound to, the client half the agent runs, and the
//! derivation of the per-flow proof key from the login's session key. The
//! server half lives with the password records (the gateway's or the
//! validator's store).

use hmac::{Hmac, Mac};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration, ClientRegistrationFinishParameters,
    CredentialResponse, RegistrationResponse,
};
use rand_core::OsRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{ClaimFinish, LoginFinish, LoginStart};

/// Ristretto255 for the OPRF and the 3DH key exchange, SHA-512, and
/// argon2id (19 MiB, 2 passes: argon2's defaults, the RFC 9106 second
/// recommendation) as the key-stretching function. The stretching runs on
/// the agent, once per login: a stolen store must be attacked one argon2id
/// guess at a time, per user.
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

/// Bound into every login's key exchange: a transcript of another protocol
/// (or another version of this one) does not finish here.
pub const LOGIN_CONTEXT: &[u8] = b"ackgate login v1";

const PROOF_KEY_LABEL: &[u8] = b"ackgate profile proof key v1";

/// The per-flow proof key of a login, from its OPAQUE session key. Only
/// the agent and the holder of the password record (gateway or validator)
/// can compute it; a gateway that only relays the login cannot.
pub fn proof_key(session_key: &[u8]) -> Zeroizing<[u8; 32]> {
    // An HMAC accepts keys of any length.
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(session_key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    m.update(PROOF_KEY_LABEL);
    Zeroizing::new(m.finalize().into_bytes().into())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PakeError {
    /// The server's answer does not open this password's envelope: the
    /// password is wrong (or the server is not the one the user registered
    /// with).
    #[error("wrong user name or password")]
    WrongPassword,
    #[error("malformed login message from the gateway: {0}")]
    Malformed(String),
}

/// The agent's half of one login, from `LoginStart` to `LoginFinish`. It
/// holds the password until the login ends, then forgets it.
pub struct LoginClient {
    password: Zeroizing<Vec<u8>>,
    login: ClientLogin<Suite>,
    registration: ClientRegistration<Suite>,
}

/// A finished login on the agent's side.
pub struct ClientFinished {
    pub message: LoginFinish,
    /// None when the password did not open the envelope; the gateway is
    /// told so (an empty finish) and counts a failed login.
    pub proof_key: Option<Zeroizing<[u8; 32]>>,
}

impl LoginClient {
    /// Starts a login of `user` for the local `account`. The first message carries both a login
    /// request and a registration request: a name the server does not know
    /// becomes a claim in the same exchange (docs/protocol.md).
    pub fn start(user: &str, account: u32, password: &str) -> Result<(Self, LoginStart), PakeError> {
        let bytes = password.as_bytes();
        let login = ClientLogin::<Suite>::start(&mut OsRng, bytes).map_err(|e| PakeError::Malformed(e.to_string()))?;
        let registration =
            ClientRegistration::<Suite>::start(&mut OsRng, bytes).map_err(|e| PakeError::Malformed(e.to_string()))?;
        let start = LoginStart {
            user: user.to_owned(),
            account,
            credential_request: login.message.serialize().to_vec(),
            registration_request: registration.message.serialize().to_vec(),
        };
        let client =
            Self { password: Zeroizing::new(bytes.to_vec()), login: login.state, registration: registration.state };
        Ok((client, start))
    }

    /// Answers the server's registration response (the name is unknown, so
    /// this login makes a claim on it). Runs the key-stretching function:
    /// call it off the async threads.
    pub fn claim(&self, registration_response: &[u8]) -> Result<ClaimFinish, PakeError> {
        let response = RegistrationResponse::<Suite>::deserialize(registration_response)
            .map_err(|e| PakeError::Malformed(e.to_string()))?;
        let finished = self
            .registration
            .clone()
            .finish(&mut OsRng, &self.password, response, ClientRegistrationFinishParameters::default())
            .map_err(|e| PakeError::Malformed(e.to_string()))?;
        Ok(ClaimFinish { registration_upload: finished.message.serialize().to_vec() })
    }

    /// Answers the server's credential response. Runs the key-stretching
    /// function: call it off the async threads.
    pub fn finish(self, credential_response: &[u8]) -> Result<ClientFinished, PakeError> {
        let response = CredentialResponse::<Suite>::deserialize(credential_response)
            .map_err(|e| PakeError::Malformed(e.to_string()))?;
        let params = ClientLoginFinishParameters::new(Some(LOGIN_CONTEXT), Default::default(), None);
        match self.login.finish(&mut OsRng, &self.password, response, params) {
            Ok(done) => Ok(ClientFinished {
                message: LoginFinish { credential_finalization: Some(done.message.serialize().to_vec()) },
                proof_key: Some(proof_key(&done.session_key)),
            }),
            Err(opaque_ke::errors::ProtocolError::InvalidLoginError) => {
                Ok(ClientFinished { message: LoginFinish { credential_finalization: None }, proof_key: None })
            }
            Err(e) => Err(PakeError::Malformed(e.to_string())),
        }
    }
}

impl core::fmt::Debug for LoginClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoginClient").finish_non_exhaustive()
    }
}
