//! The messages. Field order is the wire order (postcard); a change of
//! layout is a new [`super::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

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
    /// Agent → gateway: the user's credentials, once per session.
    Login(Login),
    /// Gateway → agent.
    LoginResult(LoginResult),
    /// Gateway → agent: who is behind this flow?
    ProfileRequest(ProfileRequest),
    /// Agent → gateway.
    ProfileAnswer(ProfileAnswer),
    /// Agent → gateway: no profile for this flow (this machine did not
    /// stamp it).
    ProfileRefused(ProfileRefusal),
    /// Agent → gateway: the user logged out; the session's proof key dies.
    Logout,
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
    /// Gateway → remote validator: check a user's password (once per agent
    /// session).
    CheckLogin(CheckLogin),
    /// Validator → gateway.
    LoginChecked(LoginChecked),
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
            Message::Login(_) => "Login",
            Message::LoginResult(_) => "LoginResult",
            Message::ProfileRequest(_) => "ProfileRequest",
            Message::ProfileAnswer(_) => "ProfileAnswer",
            Message::ProfileRefused(_) => "ProfileRefused",
            Message::Logout => "Logout",
            Message::RenewCertificate(_) => "RenewCertificate",
            Message::CertificateRenewed(_) => "CertificateRenewed",
            Message::Ping(_) => "Ping",
            Message::Pong(_) => "Pong",
            Message::Error(_) => "Error",
            Message::CheckLogin(_) => "CheckLogin",
            Message::LoginChecked(_) => "LoginChecked",
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
    /// SipHash key of the capability MAC (DESIGN.md §3).
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

/// Sent inside the mutually authenticated TLS session only. The gateway runs
/// its slow KDF (argon2id) on it once per session, not per flow.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub user: String,
    pub password: Zeroizing<String>,
}

impl core::fmt::Debug for Login {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Login").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResult {
    /// Who tried: answers name this user, and a refused or unknown user's
    /// answers are what the gateway records as a potential user.
    pub user: String,
    pub accepted: bool,
    /// Session key for per-flow profile proofs; zero when not accepted.
    pub proof_key: [u8; 32],
    /// Why not, for the person at the agent.
    pub message: String,
}

/// The flow a profile request is about, as the gate saw its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowSummary {
    pub client_addr: [u8; 4],
    pub client_port: u16,
    pub service_addr: [u8; 4],
    pub service_port: u16,
    pub client_isn: u32,
    pub server_isn: u32,
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
    /// Empty when nobody has logged in on the agent.
    pub user: String,
    /// [`super::profile_proof`] under the session's proof key; zero without
    /// an accepted login.
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

/// Sent only over the mutually authenticated gateway–validator link.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckLogin {
    pub request_id: u64,
    pub user: String,
    pub password: Zeroizing<String>,
    /// The agent the login came through, and its address: an unknown
    /// name's claim belongs to them.
    pub agent_id: u32,
    pub source: String,
}

impl core::fmt::Debug for CheckLogin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CheckLogin")
            .field("request_id", &self.request_id)
            .field("user", &self.user)
            .field("agent_id", &self.agent_id)
            .finish()
    }
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginChecked {
    pub request_id: u64,
    pub grant: LoginGrant,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validate {
    pub request_id: u64,
    pub agent_id: u32,
    pub profile: Profile,
    /// The gateway verified the profile's proof under the session's login.
    pub proof_valid: bool,
    /// The claim that login was for, when the name is not a valid user's.
    pub claim: Option<u64>,
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
