//! Agents, invites and user credentials as the agent server needs them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ackgate_common::host::{lock, unix_secs};
use ackgate_common::mac::MacKey;
use ackgate_common::proto::{ErrorCode, Invite, Profile, ProfileRequest, invite_secret_digest};
use tokio::sync::Semaphore;

use crate::logins::{
    Credentials, Found, LoginAuthority, Logins, PasswordRecord, Proven, load_setup, new_setup, register,
    user_credential_id,
};

/// Why an enrollment was refused (sent to the agent as is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnrollRefusal {
    #[error("unknown invite or wrong secret")]
    BadInvite,
    #[error("the invite has expired; ask for a new one")]
    Expired,
    #[error("the invite was already used; ask for a new one")]
    Used,
}

impl EnrollRefusal {
    pub fn code(self) -> ErrorCode {
        match self {
            EnrollRefusal::BadInvite => ErrorCode::BadInvite,
            EnrollRefusal::Expired => ErrorCode::InviteExpired,
            EnrollRefusal::Used => ErrorCode::InviteUsed,
        }
    }
}

/// An agent as enrollment creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAgent {
    pub hostname: String,
    pub install_serial: String,
    pub mac_key: MacKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: u32,
    pub hostname: String,
    pub install_serial: String,
    pub mac_key: MacKey,
    /// SHA-256 of the client certificate the agent authenticates with.
    pub cert_sha256: Option<[u8; 32]>,
}

/// What the agent server asks of the store about agents, invites and
/// login locks. Logins themselves go to a [`LoginAuthority`].
pub trait Directory: Send + Sync + 'static {
    /// Checks and consumes invite `invite_id` and records a new agent, in
    /// one step: a second redemption of the same invite fails.
    fn enroll(&self, invite_id: u64, secret: &[u8; 32], agent: NewAgent) -> Result<u32, EnrollRefusal>;
    /// Binds the certificate issued to `agent_id`.
    fn bind_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]);
    /// The agent that authenticates with this certificate.
    fn agent_by_certificate(&self, cert_sha256: &[u8; 32]) -> Option<AgentRecord>;
    /// Records a flow stamped with `agent_id`'s key that the agent says it
    /// never stamped: someone at `source` holds a copy of the key. Blocking
    /// (a store write).
    fn record_key_misuse(&self, agent_id: u32, source: &str, service: &str) -> Result<(), String>;
    /// Binds a renewed certificate to `agent_id`; its earlier certificates
    /// stay valid until they expire.
    fn renew_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) -> Result<(), String>;
    /// Whether `user` is locked after too many failed logins.
    fn login_locked(&self, user: &str) -> bool;
    /// Records a failed login (an audit row), and locks the user if `lock`.
    fn record_login_failure(&self, failure: &LoginFailure<'_>, lock: bool);
}

/// Claims one agent may hold on unknown names at once: each costs a
/// record and a row, and none is a valid user until approved.
pub const CLAIMS_PER_AGENT: usize = 16;

/// One failed login, as the audit log keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginFailure<'a> {
    pub user: &'a str,
    pub agent_id: u32,
    /// The agent's address.
    pub source: &'a str,
}

/// Where a suspected stolen key was used from, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyMisuse {
    pub agent_id: u32,
    /// The client address the stamped handshakes came from.
    pub source: String,
    /// The service of the latest one.
    pub service: String,
    pub first_unix: u64,
    pub last_unix: u64,
    pub count: u64,
}

/// A fresh agent id: random and non-zero (0 means "no agent" in the gate's
/// maps).
pub fn random_agent_id() -> u32 {
    rand::random::<u32>().max(1)
}

/// Login steps (OPAQUE's server half and its store lookups) allowed at
/// once in a process: one per CPU, so a crowd of logins queues on the
/// blocking pool instead of crowding out the decisions of flows.
pub fn login_workers() -> usize {
    std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(1)
}

/// A semaphore of [`login_workers`] permits.
pub fn login_worker_limit() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(login_workers()))
}

struct InviteRecord {
    digest: [u8; 32],
    expires_unix: u64,
    used: bool,
}

#[derive(Default)]
struct Inner {
    invites: HashMap<u64, InviteRecord>,
    agents: HashMap<u32, AgentRecord>,
    key_misuse: Vec<KeyMisuse>,
    /// Failed logins as (user, agent id, source), and the locked users.
    login_failures: Vec<(String, u32, String)>,
    locked: std::collections::HashSet<String>,
    /// Certificates renewal replaced, by agent.
    earlier_certs: Vec<(u32, [u8; 32])>,
    next_invite: u64,
}

/// Password records in memory: users, and claims on unknown names as
/// (user, agent) → (claim id, record).
#[derive(Default)]
struct MemoryRecords {
    users: Mutex<HashMap<String, PasswordRecord>>,
    claims: Mutex<HashMap<(String, u32), (u64, PasswordRecord)>>,
}

impl Credentials for MemoryRecords {
    fn find(&self, user: &str, agent_id: u32) -> Result<Found, String> {
        if let Some(r) = lock(&self.users).get(user) {
            return Ok(Found::User(r.clone()));
        }
        Ok(match lock(&self.claims).get(&(user.to_owned(), agent_id)) {
            Some((id, r)) => Found::Claim(*id, r.clone()),
            None => Found::Unknown,
        })
    }

    fn add_claim(
        &self,
        user: &str,
        agent_id: u32,
        _source: &str,
        record: &PasswordRecord,
    ) -> Result<Option<u64>, String> {
        let mut claims = lock(&self.claims);
        if claims.keys().filter(|(_, agent)| *agent == agent_id).count() >= CLAIMS_PER_AGENT {
            return Ok(None);
        }
        let id = claims.len() as u64 + 1;
        claims.insert((user.to_owned(), agent_id), (id, record.clone()));
        Ok(Some(id))
    }
}

/// An in-memory [`Directory`] (tests, demos).
pub struct MemoryDirectory {
    inner: Mutex<Inner>,
    records: Arc<MemoryRecords>,
    logins: Arc<Logins<MemoryRecords>>,
}

impl Default for MemoryDirectory {
    fn default() -> Self {
        let records = Arc::new(MemoryRecords::default());
        // A fresh setup always loads.
        let setup = load_setup(&new_setup()).unwrap_or_else(|e| unreachable!("fresh OPAQUE setup: {e}"));
        Self { inner: Mutex::default(), logins: Arc::new(Logins::new(setup, records.clone())), records }
    }
}

impl MemoryDirectory {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// A new one-time invite for an agent connecting to `gateway`.
    pub fn create_invite(&self, gateway: &str, ca_sha256: [u8; 32], valid_for: Duration) -> Invite {
        let secret: [u8; 32] = rand::random();
        let expires_unix = unix_secs() + valid_for.as_secs();
        let mut inner = self.lock();
        inner.next_invite += 1;
        let invite_id = inner.next_invite;
        inner
            .invites
            .insert(invite_id, InviteRecord { digest: invite_secret_digest(&secret), expires_unix, used: false });
        Invite { gateway: gateway.to_owned(), ca_sha256, invite_id, secret, expires_unix }
    }

    /// Adds a valid user (an OPAQUE registration run here: argon2id once).
    pub fn add_user(&self, name: &str, password: &str) {
        let record = register(self.logins.setup(), password, &user_credential_id(name))
            .unwrap_or_else(|e| panic!("registering {name}: {e}"));
        lock(&self.records.users).insert(name.to_owned(), record);
    }

    /// The logins against these records, for the agent server.
    pub fn logins(&self) -> Arc<dyn LoginAuthority> {
        self.logins.clone()
    }

    /// Checks `profile`'s proof for `request` under the session login
    /// `login`, as the validator does.
    pub fn prove(&self, login: Option<u64>, request: &ProfileRequest, profile: &Profile) -> Option<Proven> {
        self.logins.prove(login?, request, profile)
    }

    pub fn agent(&self, agent_id: u32) -> Option<AgentRecord> {
        self.lock().agents.get(&agent_id).cloned()
    }

    /// Every failed login recorded, as (user, agent id, source).
    pub fn login_failures(&self) -> Vec<(String, u32, String)> {
        self.lock().login_failures.clone()
    }

    /// Unlocks a user locked after failed logins.
    pub fn unlock(&self, user: &str) {
        self.lock().locked.remove(user);
    }

    /// Every recorded use of a suspected stolen key.
    pub fn key_misuse(&self) -> Vec<KeyMisuse> {
        self.lock().key_misuse.clone()
    }
}

impl Directory for MemoryDirectory {
    fn enroll(&self, invite_id: u64, secret: &[u8; 32], agent: NewAgent) -> Result<u32, EnrollRefusal> {
        let mut inner = self.lock();
        let invite = inner.invites.get_mut(&invite_id).ok_or(EnrollRefusal::BadInvite)?;
        if invite.digest != invite_secret_digest(secret) {
            return Err(EnrollRefusal::BadInvite);
        }
        if invite.used {
            return Err(EnrollRefusal::Used);
        }
        if invite.expires_unix < unix_secs() {
            return Err(EnrollRefusal::Expired);
        }
        invite.used = true;
        let agent_id = loop {
            let id = random_agent_id();
            if !inner.agents.contains_key(&id) {
                break id;
            }
        };
        inner.agents.insert(
            agent_id,
            AgentRecord {
                agent_id,
                hostname: agent.hostname,
                install_serial: agent.install_serial,
                mac_key: agent.mac_key,
                cert_sha256: None,
            },
        );
        Ok(agent_id)
    }

    fn bind_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) {
        if let Some(a) = self.lock().agents.get_mut(&agent_id) {
            a.cert_sha256 = Some(cert_sha256);
        }
    }

    fn agent_by_certificate(&self, cert_sha256: &[u8; 32]) -> Option<AgentRecord> {
        let inner = self.lock();
        let earlier = inner.earlier_certs.iter().find(|(_, c)| c == cert_sha256).map(|(id, _)| *id);
        inner
            .agents
            .values()
            .find(|a| a.cert_sha256.as_ref() == Some(cert_sha256) || Some(a.agent_id) == earlier)
            .cloned()
    }

    fn renew_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) -> Result<(), String> {
        let mut inner = self.lock();
        let agent = inner.agents.get_mut(&agent_id).ok_or_else(|| format!("no agent {agent_id}"))?;
        if let Some(old) = agent.cert_sha256.replace(cert_sha256) {
            inner.earlier_certs.push((agent_id, old));
        }
        Ok(())
    }

    fn login_locked(&self, user: &str) -> bool {
        self.lock().locked.contains(user)
    }

    fn record_login_failure(&self, f: &LoginFailure<'_>, lock: bool) {
        let mut inner = self.lock();
        inner.login_failures.push((f.user.to_owned(), f.agent_id, f.source.to_owned()));
        if lock {
            inner.locked.insert(f.user.to_owned());
        }
    }

    fn record_key_misuse(&self, agent_id: u32, source: &str, service: &str) -> Result<(), String> {
        let now = unix_secs();
        let mut inner = self.lock();
        match inner.key_misuse.iter_mut().find(|m| m.agent_id == agent_id && m.source == source) {
            Some(m) => {
                m.count += 1;
                m.last_unix = now;
                service.clone_into(&mut m.service);
            }
            None => inner.key_misuse.push(KeyMisuse {
                agent_id,
                source: source.to_owned(),
                service: service.to_owned(),
                first_unix: now,
                last_unix: now,
                count: 1,
            }),
        }
        Ok(())
    }
}
