//! The messages. Field order is the wire order (postcard); a change of
//! layout is a new [`super::PROTOCOL_VERSION`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::abi::FlowKey;

/// Every message of either direction (docs/protocol.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Agent → gateway, first message of an enrollment connection.
    EnrollRequest(EnrollRequest),
    /// Gateway → agent: the enrollment answer.
    Enrolled(Enrolled),
    /// Agent → gateway, first message of a session.
    Hello(Hello),
    /// Gateway → agent: the session is open.
    Welcome(Welcome),
    /// Agent → gateway: the first OPAQUE message of a login (once per
    /// session and per `ackgate-agent login`).
    LoginStart(LoginStart),
    /// Gateway → agent: the name is unknown; register a claim on it.
    ClaimChallenge(ClaimChallenge),
    /// Agent → gateway: the claim's registration record.
    ClaimFinish(ClaimFinish),
    /// Gateway → agent: OPAQUE's credential response.
    LoginChallenge(LoginChallenge),
    /// Agent → gateway: the last OPAQUE message (or none: wrong password).
    LoginFinish(LoginFinish),
    /// Gateway → agent: the verdict on the login.
    LoginResult(LoginResult),
    /// Gateway → agent: who is behind this flow?
    ProfileRequest(ProfileRequest),
    /// Agent → gateway.
    ProfileAnswer(ProfileAnswer),
    /// Agent → gateway: no profile for this flow (this machine did not
    /// stamp it).
    ProfileRefused(ProfileRefusal),
    /// Agent → gateway: an account's user logged out; that login's proof
    /// key dies.
    Logout(Logout),
    /// Agent → gateway: a certificate request for a fresh key, to renew the
    /// session certificate before it expires (at most once per session).
    RenewCertificate(RenewCertificate),
    /// Gateway → agent: the renewed certificate.
    CertificateRenewed(CertificateRenewed),
    /// Either side: liveness probe, answered by `Pong` with the same value.
    Ping(u64),
    Pong(u64),
    /// Either side, before it closes the session.
    Error(ErrorReport),
    /// Gateway → remote validator: one step of an agent's login, relayed.
    Relay(Relay),
    /// Validator → gateway: the validator's next login message or verdict.
    Relayed(Relayed),
    /// Gateway → remote validator: decide one profile.
    Validate(Validate),
    /// Validator → gateway.
    Validated(Validated),
}

impl Message {
    /// The variant name, for errors and logs (never the contents).
    pub fn name(&self) -> &'static str {
        match self {
            Message::EnrollRequest(_) => "EnrollRequest",
            Message::Enrolled(_) => "Enrolled",
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::LoginStart(_) => "LoginStart",
            Message::ClaimChallenge(_) => "ClaimChallenge",
            Message::ClaimFinish(_) => "ClaimFinish",
            Message::LoginChallenge(_) => "LoginChallenge",
            Message::LoginFinish(_) => "LoginFinish",
            Message::LoginResult(_) => "LoginResult",
            Message::ProfileRequest(_) => "ProfileRequest",
            Message::ProfileAnswer(_) => "ProfileAnswer",
            Message::ProfileRefused(_) => "ProfileRefused",
            Message::Logout(_) => "Logout",
            Message::RenewCertificate(_) => "RenewCertificate",
            Message::CertificateRenewed(_) => "CertificateRenewed",
            Message::Ping(_) => "Ping",
            Message::Pong(_) => "Pong",
            Message::Error(_) => "Error",
            Message::Relay(_) => "Relay",
            Message::Relayed(_) => "Relayed",
            Message::Validate(_) => "Validate",
            Message::Validated(_) => "Validated",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub invite_id: u64,
    pub secret: [u8; 32],
    /// PKCS#10 request for the agent's client certificate; the private key
    /// never leaves the agent.
    pub csr_der: Vec<u8>,
    pub hostname: String,
    /// Random serial of this installation, chosen by the agent.
    pub install_serial: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    pub agent_id: u32,
    /// SipHash key of the capability MAC (docs/design.md §3).
    pub mac_key: [u8; 16],
    /// The agent's client certificate, signed by the gateway CA.
    pub cert_der: Vec<u8>,
    /// The CA certificate whose fingerprint the invite carried.
    pub ca_der: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must match the client certificate's agent id.
    pub agent_id: u32,
    pub install_serial: String,
    pub agent_version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub session_id: u64,
    /// The gateway pings at this interval; the agent treats three missed
    /// intervals as a dead session and reconnects.
    pub heartbeat_secs: u32,
}

/// OPAQUE's KE1, and a registration request in case the name is unknown
/// (then the login makes a claim on it). Sent inside the mutually
/// authenticated TLS session; neither message reveals the password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginStart {
    pub user: String,
    /// The local account logging in: its uid, or
    /// [`crate::abi::ANY_ACCOUNT`] for a machine-wide login. A session
    /// holds one login per account; a new login of an account replaces its
    /// old one.
    pub account: u32,
    pub credential_request: Vec<u8>,
    pub registration_request: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimChallenge {
    pub registration_response: Vec<u8>,
}

/// The claim's OPAQUE record (RegistrationUpload): the agent's envelope and
/// public key, nothing a password could be read from without an argon2id
/// guess per candidate and the server's OPRF key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimFinish {
    pub registration_upload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginChallenge {
    pub credential_response: Vec<u8>,
}

/// OPAQUE's KE3; `None` when the password did not open the envelope (the
/// gateway counts the failure at once instead of waiting out the login).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFinish {
    pub credential_finalization: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResult {
    /// Who tried: answers name this user, and a refused or unknown user's
    /// answers are what the gateway records as a potential user.
    pub user: String,
    /// The account of the login this verdict ends.
    pub account: u32,
    /// The proof key both sides derived from the login's session key
    /// ([`super::pake::proof_key`]) is in force.
    pub accepted: bool,
    /// Why not, for the person at the agent.
    pub message: String,
}

/// The flow a profile request is about, as the gate saw its handshake:
/// IPv4 or IPv6 (both ends of one family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowSummary {
    pub client: SocketAddr,
    pub service: SocketAddr,
    pub client_isn: u32,
    pub server_isn: u32,
}

impl FlowSummary {
    /// The summary of `flow`'s handshake.
    pub fn of_flow(flow: &FlowKey, client_isn: u32, server_isn: u32) -> Self {
        Self { client: flow.client_addr(), service: flow.service_addr(), client_isn, server_isn }
    }

    /// The flow's key in the maps; `None` for ends of two families, which
    /// no gate sends.
    pub fn flow_key(&self) -> Option<FlowKey> {
        FlowKey::of_sockets(self.client, self.service)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRequest {
    pub request_id: u64,
    /// Fresh per request; the answer must echo it and bind it in its proof.
    pub nonce: [u8; 16],
    pub flow: FlowSummary,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The user logged in on the flow's account.
    pub user: String,
    /// The local account whose socket the flow is: the login whose proof
    /// key signs this profile.
    pub account: u32,
    /// [`super::profile_proof`] under the account's proof key.
    pub proof: [u8; 32],
    /// SHA-256 machine fingerprint (docs/agent.md says what goes in).
    pub machine: [u8; 32],
    pub install_serial: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileAnswer {
    pub request_id: u64,
    pub nonce: [u8; 16],
    pub profile: Profile,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewCertificate {
    /// PKCS#10 request; the new private key never leaves the agent.
    pub csr_der: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRenewed {
    pub cert_der: Vec<u8>,
}

/// Why an agent gives no profile for a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalReason {
    /// The agent's stamper never stamped a handshake with this 4-tuple and
    /// these ISNs: someone else holds a copy of the agent's MAC key.
    NotStamped,
    /// The agent stamped the flow, but its account has no login any more
    /// (its user logged out since).
    NotLoggedIn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logout {
    pub account: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRefusal {
    pub request_id: u64,
    pub nonce: [u8; 16],
    pub reason: RefusalReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A frame could not be decoded, or exceeded the size limit.
    BadFrame,
    /// A message that does not belong at this point of the conversation.
    UnexpectedMessage,
    /// The invite is unknown or its secret is wrong.
    BadInvite,
    InviteExpired,
    InviteUsed,
    /// The certificate's agent is unknown, revoked, or does not match `Hello`.
    UnknownAgent,
    /// The gateway failed on its side.
    Internal,
    /// More logins awaiting their verdict than a session may have.
    TooManyLogins,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ErrorReport {
    pub code: ErrorCode,
    pub message: String,
}

/// One step of a login the gateway relays to the remote validator, which
/// holds the password records and runs OPAQUE's server half.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayStep {
    Start {
        start: LoginStart,
        /// The agent the login came through, and its address: an unknown
        /// name's claim belongs to them.
        agent_id: u32,
        source: String,
    },
    Claim {
        login: u64,
        finish: ClaimFinish,
    },
    Finish {
        login: u64,
        finish: LoginFinish,
    },
    /// The login is over (logout, a newer login, the session ended): its
    /// proof key dies.
    End {
        login: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    pub request_id: u64,
    pub step: RelayStep,
}

/// Where a login stands after a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginStep {
    /// A record exists (a valid user's, or this agent's claim): KE2.
    Challenge { login: u64, credential_response: Vec<u8> },
    /// The name is unknown: the registration response of a new claim.
    Claim { login: u64, registration_response: Vec<u8> },
    /// The login is over.
    Done(LoginGrant),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relayed {
    pub request_id: u64,
    pub step: LoginStep,
}

/// The verdict on a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginGrant {
    /// A valid user's password.
    User,
    /// A name no valid user has: the password of this agent's claim on it
    /// (the claim is recorded at the agent's first login under the name).
    Claim(u64),
    Refused,
    /// The login could not be checked (the validator did not answer, or
    /// the check failed to run): refused, but no guess was made, so it
    /// does not count as a failed login.
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validate {
    pub request_id: u64,
    pub agent_id: u32,
    /// The agent session's accepted login, if any: the validator checks the
    /// profile's proof under that login's key itself.
    pub login: Option<u64>,
    /// The request the profile answers (its nonce and flow are in the proof).
    pub request: ProfileRequest,
    pub profile: Profile,
    pub service: String,
    pub allow_groups: Vec<String>,
    /// The client's `addr:port`.
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validated {
    pub request_id: u64,
    pub authorized: bool,
    pub reason: String,
    /// The attempt is now a potential-user entry.
    pub recorded: bool,
}
