//! OPAQUE's server half (docs/protocol.md, "The login"), run by whoever
//! holds the password records: the gateway's embedded validator, or the
//! remote validator service (then the gateway only relays the messages).
//!
//! [`Logins`] keeps every login under way and every accepted login's proof
//! key, in a bounded table; [`Logins::prove`] checks a profile's proof
//! under them. The records themselves come from a [`Credentials`] store.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ackgate_common::abi::ANY_ACCOUNT;
use ackgate_common::proto::pake::{LOGIN_CONTEXT, LoginClient, Suite, proof_key};
use ackgate_common::proto::{
    ClaimFinish, LoginFinish, LoginGrant, LoginStart, LoginStep, Profile, ProfileRequest, verify_profile_proof,
};
use lru::LruCache;
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload, ServerLogin,
    ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand_core::OsRng;
use zeroize::Zeroizing;

/// The server's long-term OPAQUE secrets: the OPRF seed and the key
/// exchange key pair. Kept in the store beside the records; losing it voids
/// every record.
pub type Setup = ServerSetup<Suite>;

/// A fresh setup, serialized for the store.
pub fn new_setup() -> Vec<u8> {
    Setup::new(&mut OsRng).serialize().to_vec()
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the stored OPAQUE setup is damaged: {0}")]
    Setup(String),
    #[error("OPAQUE registration: {0}")]
    Registration(String),
}

pub fn load_setup(bytes: &[u8]) -> Result<Setup, LoginError> {
    Setup::deserialize(bytes).map_err(|e| LoginError::Setup(e.to_string()))
}

/// One user's (or claim's) OPAQUE record: the agent's envelope and public
/// key, and the identifier its OPRF key was derived for. Neither is a
/// password-equivalent: testing a guess against it takes the server's OPRF
/// key and one argon2id run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordRecord {
    pub record: Vec<u8>,
    pub credential_id: Vec<u8>,
}

/// The credential identifier of a valid user's record.
pub fn user_credential_id(user: &str) -> Vec<u8> {
    [b"user\0".as_slice(), user.as_bytes()].concat()
}

/// The credential identifier of `agent_id`'s claim on `user`.
fn claim_credential_id(user: &str, agent_id: u32) -> Vec<u8> {
    [b"claim\0".as_slice(), &agent_id.to_be_bytes(), user.as_bytes()].concat()
}

/// Registers `password` under `credential_id` with both halves run here:
/// for an administrator who sets a user's password (`users add`,
/// `users passwd`). Runs argon2id once.
pub fn register(setup: &Setup, password: &str, credential_id: &[u8]) -> Result<PasswordRecord, LoginError> {
    let err = |e: opaque_ke::errors::ProtocolError| LoginError::Registration(e.to_string());
    let (client, start) =
        LoginClient::start("", ANY_ACCOUNT, password).map_err(|e| LoginError::Registration(e.to_string()))?;
    let request = RegistrationRequest::deserialize(&start.registration_request).map_err(err)?;
    let response = ServerRegistration::<Suite>::start(setup, request, credential_id).map_err(err)?;
    let finish = client.claim(&response.message.serialize()).map_err(|e| LoginError::Registration(e.to_string()))?;
    let upload = RegistrationUpload::<Suite>::deserialize(&finish.registration_upload).map_err(err)?;
    let record = ServerRegistration::finish(upload).serialize().to_vec();
    Ok(PasswordRecord { record, credential_id: credential_id.to_vec() })
}

/// What the store has for a login of `user` through an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// A valid user's record.
    User(PasswordRecord),
    /// A valid user whose password was set before logins were OPAQUE
    /// exchanges: no login works until an administrator sets it again.
    UserWithoutRecord,
    /// The agent's own claim on a name no valid user has.
    Claim(u64, PasswordRecord),
    Unknown,
}

/// The password records, as the login needs them. Blocking (a store).
pub trait Credentials: Send + Sync + 'static {
    fn find(&self, user: &str, agent_id: u32) -> Result<Found, String>;
    /// Records `agent_id`'s claim on the unknown name `user`; `None` when
    /// the agent holds [`crate::agents::CLAIMS_PER_AGENT`] claims already.
    fn add_claim(
        &self,
        user: &str,
        agent_id: u32,
        source: &str,
        record: &PasswordRecord,
    ) -> Result<Option<u64>, String>;
}

/// The steps of a login, wherever the records are: [`Logins`] here, or
/// relayed to the remote validator. Blocking: call off the async threads.
pub trait LoginAuthority: Send + Sync + 'static {
    fn begin(&self, start: &LoginStart, agent_id: u32, source: &str) -> LoginStep;
    fn claim(&self, login: u64, finish: &ClaimFinish) -> LoginStep;
    fn finish(&self, login: u64, finish: &LoginFinish) -> LoginStep;
    /// The login is over: its proof key dies.
    fn end(&self, login: u64);
    /// The login table's size and counters, where it is in this process
    /// (not when the logins are relayed to a remote validator).
    fn table(&self) -> Option<LoginTable> {
        None
    }
}

/// A snapshot of a [`Logins`] table, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginTable {
    /// Logins under way and accepted.
    pub entries: u64,
    pub evicted: u64,
    pub unknown_steps: u64,
    pub malformed: u64,
}

/// Logins kept at most (under way and accepted together). An accepted
/// login lives as long as its agent session; the least recently used go
/// first when the table is full, and are counted.
pub const MAX_LOGINS: usize = 65_536;

/// Time an agent has from one login message to its next. The agent runs
/// argon2id in between (well under a second on any client).
pub const LOGIN_STEP_TIMEOUT: Duration = Duration::from_secs(30);

enum Stage {
    /// A claim's registration response went out; the login's KE1 waits
    /// for the record.
    Registering {
        credential_request: Vec<u8>,
        credential_id: Vec<u8>,
    },
    /// KE2 went out.
    Exchanging {
        server: Box<ServerLogin<Suite>>,
        claim: Option<u64>,
    },
    Accepted {
        proof_key: Zeroizing<[u8; 32]>,
        claim: Option<u64>,
    },
}

struct Entry {
    user: String,
    agent_id: u32,
    source: String,
    stage: Stage,
    since: Instant,
}

/// A profile proof that verified: under a login of the named user, which
/// was for `claim` when the name is no valid user's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proven {
    pub claim: Option<u64>,
}

#[derive(Debug, Default)]
pub struct LoginStats {
    /// Accepted logins pushed out of the full table.
    pub evicted: AtomicU64,
    /// Steps for no login under way (expired, evicted, or never begun).
    pub unknown_steps: AtomicU64,
    /// Malformed OPAQUE messages.
    pub malformed: AtomicU64,
}

pub struct Logins<C: ?Sized> {
    setup: Setup,
    credentials: Arc<C>,
    table: Mutex<LruCache<u64, Entry>>,
    pub stats: LoginStats,
}

fn params() -> ServerLoginParameters<'static, 'static> {
    ServerLoginParameters { context: Some(LOGIN_CONTEXT), ..Default::default() }
}

const REFUSED: LoginStep = LoginStep::Done(LoginGrant::Refused);

impl<C: Credentials + ?Sized> Logins<C> {
    pub fn new(setup: Setup, credentials: Arc<C>) -> Self {
        let capacity = NonZeroUsize::new(MAX_LOGINS).unwrap_or(NonZeroUsize::MIN);
        Self { setup, credentials, table: Mutex::new(LruCache::new(capacity)), stats: LoginStats::default() }
    }

    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, entry: Entry) -> u64 {
        let mut table = self.entries();
        let login = loop {
            let id = rand::random::<u64>();
            if !table.contains(&id) {
                break id;
            }
        };
        self.push(&mut table, login, entry);
        login
    }

    /// Puts `entry` under `login`, counting an accepted login the full
    /// table pushed out.
    fn push(&self, table: &mut LruCache<u64, Entry>, login: u64, entry: Entry) {
        if let Some((_, old)) = table.push(login, entry)
            && matches!(old.stage, Stage::Accepted { .. })
        {
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the login under way, if it is at a step and not stale.
    fn take_pending(&self, login: u64) -> Option<Entry> {
        let mut table = self.entries();
        let fresh = table
            .peek(&login)
            .is_some_and(|e| !matches!(e.stage, Stage::Accepted { .. }) && e.since.elapsed() < LOGIN_STEP_TIMEOUT);
        let entry = if fresh { table.pop(&login) } else { None };
        if entry.is_none() {
            self.stats.unknown_steps.fetch_add(1, Ordering::Relaxed);
        }
        entry
    }

    fn malformed(&self, what: &str, e: impl std::fmt::Display) -> LoginStep {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::info!("malformed {what}: {e}");
        REFUSED
    }

    /// KE2 for `record`, and the entry that waits for KE3.
    fn challenge(&self, mut entry: Entry, record: &PasswordRecord, ke1: &[u8], claim: Option<u64>) -> LoginStep {
        let file = match ServerRegistration::<Suite>::deserialize(&record.record) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(user = %entry.user, "damaged OPAQUE record: {e}");
                return REFUSED;
            }
        };
        let request = match CredentialRequest::deserialize(ke1) {
            Ok(r) => r,
            Err(e) => return self.malformed("credential request", e),
        };
        match ServerLogin::start(&mut OsRng, &self.setup, Some(file), request, &record.credential_id, params()) {
            Ok(started) => {
                let credential_response = started.message.serialize().to_vec();
                entry.stage = Stage::Exchanging { server: Box::new(started.state), claim };
                entry.since = Instant::now();
                LoginStep::Challenge { login: self.insert(entry), credential_response }
            }
            Err(e) => self.malformed("credential request", e),
        }
    }

    /// Checks `profile`'s proof for `request` under accepted login `login`,
    /// which must be the named user's.
    pub fn prove(&self, login: u64, request: &ProfileRequest, profile: &Profile) -> Option<Proven> {
        let mut table = self.entries();
        let entry = table.get(&login)?;
        match &entry.stage {
            Stage::Accepted { proof_key, claim }
                if entry.user == profile.user && verify_profile_proof(proof_key, request, profile) =>
            {
                Some(Proven { claim: *claim })
            }
            _ => None,
        }
    }

    /// Logins in the table (under way and accepted).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<C: Credentials + ?Sized> LoginAuthority for Logins<C> {
    fn begin(&self, start: &LoginStart, agent_id: u32, source: &str) -> LoginStep {
        let entry = Entry {
            user: start.user.clone(),
            agent_id,
            source: source.to_owned(),
            stage: Stage::Registering { credential_request: Vec::new(), credential_id: Vec::new() },
            since: Instant::now(),
        };
        match self.credentials.find(&start.user, agent_id) {
            Ok(Found::User(record)) => self.challenge(entry, &record, &start.credential_request, None),
            Ok(Found::Claim(claim, record)) => self.challenge(entry, &record, &start.credential_request, Some(claim)),
            Ok(Found::UserWithoutRecord) => {
                tracing::warn!(
                    user = %start.user,
                    "login refused: the user's password predates OPAQUE logins; set it again (`ackgate users passwd`)"
                );
                REFUSED
            }
            Ok(Found::Unknown) => {
                let request = match RegistrationRequest::deserialize(&start.registration_request) {
                    Ok(r) => r,
                    Err(e) => return self.malformed("registration request", e),
                };
                let credential_id = claim_credential_id(&start.user, agent_id);
                match ServerRegistration::<Suite>::start(&self.setup, request, &credential_id) {
                    Ok(response) => {
                        let entry = Entry {
                            stage: Stage::Registering {
                                credential_request: start.credential_request.clone(),
                                credential_id,
                            },
                            ..entry
                        };
                        let registration_response = response.message.serialize().to_vec();
                        LoginStep::Claim { login: self.insert(entry), registration_response }
                    }
                    Err(e) => self.malformed("registration request", e),
                }
            }
            Err(e) => {
                tracing::error!(user = %start.user, "looking up a login's record: {e}");
                REFUSED
            }
        }
    }

    fn claim(&self, login: u64, finish: &ClaimFinish) -> LoginStep {
        let Some(entry) = self.take_pending(login) else { return REFUSED };
        let Stage::Registering { credential_request, credential_id } = &entry.stage else {
            return self.malformed("claim", "the login is not registering a claim");
        };
        let upload = match RegistrationUpload::<Suite>::deserialize(&finish.registration_upload) {
            Ok(u) => u,
            Err(e) => return self.malformed("registration upload", e),
        };
        let record = PasswordRecord {
            record: ServerRegistration::finish(upload).serialize().to_vec(),
            credential_id: credential_id.clone(),
        };
        let ke1 = credential_request.clone();
        match self.credentials.add_claim(&entry.user, entry.agent_id, &entry.source, &record) {
            Ok(Some(claim)) => self.challenge(entry, &record, &ke1, Some(claim)),
            Ok(None) => {
                tracing::warn!(
                    agent_id = entry.agent_id,
                    "refusing a claim on {:?}: the agent holds {} claims",
                    entry.user,
                    crate::agents::CLAIMS_PER_AGENT
                );
                REFUSED
            }
            Err(e) => {
                tracing::error!(user = %entry.user, "recording a claim: {e}");
                REFUSED
            }
        }
    }

    fn finish(&self, login: u64, finish: &LoginFinish) -> LoginStep {
        let Some(mut entry) = self.take_pending(login) else { return REFUSED };
        let Stage::Exchanging { server, claim } = entry.stage else {
            return self.malformed("login finish", "the login has not sent its challenge");
        };
        // No KE3: the agent's password did not open its envelope.
        let Some(ke3) = &finish.credential_finalization else { return REFUSED };
        let finalization = match CredentialFinalization::deserialize(ke3) {
            Ok(f) => f,
            Err(e) => return self.malformed("credential finalization", e),
        };
        match server.finish(finalization, params()) {
            Ok(done) => {
                entry.stage = Stage::Accepted { proof_key: proof_key(&done.session_key), claim };
                entry.since = Instant::now();
                self.push(&mut self.entries(), login, entry);
                LoginStep::Done(claim.map_or(LoginGrant::User, LoginGrant::Claim))
            }
            // A KE3 that does not verify: a wrong password whose agent
            // sent one anyway, or a forgery.
            Err(_) => REFUSED,
        }
    }

    fn end(&self, login: u64) {
        self.entries().pop(&login);
    }

    fn table(&self) -> Option<LoginTable> {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Some(LoginTable {
            entries: self.len() as u64,
            evicted: n(&self.stats.evicted),
            unknown_steps: n(&self.stats.unknown_steps),
            malformed: n(&self.stats.malformed),
        })
    }
}

/// A login run with the agent's half here too (tests, benchmarks).
#[derive(Debug, PartialEq, Eq)]
pub struct LoginHere {
    pub grant: LoginGrant,
    /// The login's id, once the authority gave one.
    pub login: Option<u64>,
    /// The agent's proof key, when the password opened the envelope.
    pub proof_key: Option<[u8; 32]>,
}

/// Runs a whole login of `user` through `agent_id` against `authority`,
/// claim included, as an agent would.
pub fn login_here(authority: &(impl LoginAuthority + ?Sized), user: &str, password: &str, agent_id: u32) -> LoginHere {
    let refused = |login| LoginHere { grant: LoginGrant::Refused, login, proof_key: None };
    let Ok((client, start)) = LoginClient::start(user, 0, password) else { return refused(None) };
    let mut step = authority.begin(&start, agent_id, "127.0.0.1");
    if let LoginStep::Claim { login, registration_response } = &step {
        let Ok(finish) = client.claim(registration_response) else { return refused(Some(*login)) };
        step = authority.claim(*login, &finish);
    }
    let LoginStep::Challenge { login, credential_response } = step else {
        let grant = if let LoginStep::Done(g) = step { g } else { LoginGrant::Refused };
        return LoginHere { grant, login: None, proof_key: None };
    };
    let Ok(done) = client.finish(&credential_response) else { return refused(Some(login)) };
    let grant = match authority.finish(login, &done.message) {
        LoginStep::Done(g) => g,
        _ => LoginGrant::Refused,
    };
    LoginHere { grant, login: Some(login), proof_key: done.proof_key.map(|k| *k) }
}

/// A profile request for the unit tests of logins and their relay.
#[cfg(test)]
pub(crate) fn test_request() -> ProfileRequest {
    let flow = ackgate_common::proto::FlowSummary {
        client: std::net::SocketAddr::from(([10, 0, 0, 2], 40000)),
        service: std::net::SocketAddr::from(([10, 0, 0, 1], 443)),
        client_isn: 1,
        server_isn: 2,
    };
    ProfileRequest { request_id: 7, nonce: [5; 16], flow }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Records {
        users: Mutex<Vec<(String, PasswordRecord)>>,
        claims: Mutex<Vec<(String, u32, PasswordRecord)>>,
    }

    impl Credentials for Records {
        fn find(&self, user: &str, agent_id: u32) -> Result<Found, String> {
            if let Some((_, r)) = self.users.lock().unwrap().iter().find(|(u, _)| u == user) {
                return Ok(Found::User(r.clone()));
            }
            let claims = self.claims.lock().unwrap();
            Ok(match claims.iter().position(|(u, a, _)| u == user && *a == agent_id) {
                Some(i) => Found::Claim(i as u64 + 1, claims[i].2.clone()),
                None => Found::Unknown,
            })
        }

        fn add_claim(
            &self,
            user: &str,
            agent_id: u32,
            _: &str,
            record: &PasswordRecord,
        ) -> Result<Option<u64>, String> {
            let mut claims = self.claims.lock().unwrap();
            claims.push((user.to_owned(), agent_id, record.clone()));
            Ok(Some(claims.len() as u64))
        }
    }

    fn logins() -> Logins<Records> {
        let setup = load_setup(&new_setup()).expect("a fresh setup loads");
        let records = Records::default();
        let alice = register(&setup, "right", &user_credential_id("alice")).expect("registration");
        records.users.lock().unwrap().push(("alice".into(), alice));
        Logins::new(setup, Arc::new(records))
    }

    fn login(
        l: &Logins<Records>,
        user: &str,
        password: &str,
        agent_id: u32,
    ) -> (LoginStep, Option<u64>, Option<[u8; 32]>) {
        let done = login_here(l, user, password, agent_id);
        (LoginStep::Done(done.grant), done.login, done.proof_key)
    }

    fn proven_profile(user: &str, key: &[u8; 32], req: &ProfileRequest) -> Profile {
        let mut p =
            Profile { user: user.into(), account: 0, proof: [0; 32], machine: [3; 32], install_serial: "s".into() };
        p.proof = ackgate_common::proto::profile_proof(key, req, &p);
        p
    }

    #[test]
    fn a_right_password_logs_in_and_both_ends_share_the_proof_key() {
        let l = logins();
        let (step, login, key) = login(&l, "alice", "right", 1);
        assert_eq!(step, LoginStep::Done(LoginGrant::User));
        let (login, key) = (login.expect("a login id"), key.expect("the agent's proof key"));
        let req = test_request();
        assert_eq!(l.prove(login, &req, &proven_profile("alice", &key, &req)), Some(Proven { claim: None }));
        assert_eq!(l.prove(login, &req, &proven_profile("bob", &key, &req)), None, "the login is alice's only");
        l.end(login);
        assert_eq!(l.prove(login, &req, &proven_profile("alice", &key, &req)), None, "an ended login proves nothing");
    }

    #[test]
    fn a_wrong_password_is_refused_and_leaves_nothing_behind() {
        let l = logins();
        let (step, _, key) = login(&l, "alice", "wrong", 1);
        assert_eq!(step, REFUSED);
        assert!(key.is_none(), "a wrong password opens no envelope on the agent");
        assert!(l.is_empty(), "a refused login keeps no entry");
    }

    #[test]
    fn an_unknown_name_becomes_the_agents_claim_and_its_password_sticks() {
        let l = logins();
        let (step, login, _) = login(&l, "bob", "mine", 4);
        assert_eq!(step, LoginStep::Done(LoginGrant::Claim(1)), "the first login under a new name claims it");
        assert!(login.is_some());
        assert_eq!(login_again(&l, "bob", "mine", 4), LoginStep::Done(LoginGrant::Claim(1)), "the claim's password");
        assert_eq!(login_again(&l, "bob", "other", 4), REFUSED, "the agent's claim holds its first password");
        assert_eq!(login_again(&l, "bob", "theirs", 5), LoginStep::Done(LoginGrant::Claim(2)), "another agent's claim");
    }

    fn login_again(l: &Logins<Records>, user: &str, password: &str, agent: u32) -> LoginStep {
        login(l, user, password, agent).0
    }

    #[test]
    fn steps_out_of_order_or_garbled_are_refused() {
        let l = logins();
        assert_eq!(l.finish(42, &LoginFinish { credential_finalization: Some(vec![1; 64]) }), REFUSED, "no such login");
        let (_, start) = LoginClient::start("alice", 0, "right").expect("client start");
        let LoginStep::Challenge { login, .. } = l.begin(&start, 1, "10.0.0.2") else { panic!("alice has a record") };
        assert_eq!(l.claim(login, &ClaimFinish { registration_upload: vec![0; 8] }), REFUSED, "not a claim");
        assert_eq!(l.finish(login, &LoginFinish { credential_finalization: Some(vec![0; 3]) }), REFUSED);
        let garbled = LoginStart { credential_request: vec![0xff; 5], ..start };
        assert_eq!(l.begin(&garbled, 1, "10.0.0.2"), REFUSED);
        assert!(l.stats.malformed.load(Ordering::Relaxed) >= 2);
    }
}
