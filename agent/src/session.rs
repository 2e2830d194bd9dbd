//! The agent's one session with the gateway (docs/design.md §4): outbound TLS 1.3
//! with the enrolled client certificate, a login per session (and per
//! `ackgate-agent login`), answers to profile requests, and reconnects with
//! jittered exponential backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ackgate_common::abi::MAX_ACCOUNTS;
use ackgate_common::host::{lock, unix_secs};
use ackgate_common::proto::pake::{LoginClient, PakeError};
use ackgate_common::proto::{
    FlowSummary, Hello, LoginResult, Logout, Message, MessageCodec, Profile, ProfileAnswer, ProfileRefusal,
    ProfileRequest, ProtoError, RefusalReason, RenewCertificate, profile_proof,
};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::codec::Framed;
use zeroize::Zeroizing;

use crate::config::SessionSection;
use crate::renew::{self, RenewError};
use crate::state::{Enrollment, StateDir, StateError};
use crate::tls::{self, TlsError};

/// One account's credentials, kept in memory only (zeroed on drop).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Zeroizing<String>,
}

/// The logins asked for, by local account (a uid, or
/// [`ackgate_common::abi::ANY_ACCOUNT`] for a
/// machine-wide login), each with the generation of its last change.
/// Generations count every change of any account.
#[derive(Clone, Default)]
struct Wanted {
    last: u64,
    accounts: BTreeMap<u32, (u64, Credentials)>,
}

impl Wanted {
    fn generation(&self, account: u32) -> Option<u64> {
        self.accounts.get(&account).map(|(g, _)| *g)
    }
}

/// Result of an account's last login, as the gateway answered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LoginOutcome {
    pub account: u32,
    pub user: String,
    pub accepted: bool,
    pub message: String,
}

/// What `status` shows of the session.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct SessionStatus {
    /// "connecting", "connected" or "waiting to reconnect".
    pub state: String,
    pub gateway: String,
    pub connects: u64,
    /// Connects that opened no session (no answer, refused, rejected).
    pub failed_connects: u64,
    pub profile_requests: u64,
    /// Requests about flows this machine never stamped, refused: someone
    /// else is using a copy of this agent's key.
    pub profile_refusals: u64,
    /// Session certificates renewed since the agent started.
    pub certificate_renewals: u64,
    pub last_error: Option<String>,
    /// The last verdict of each account's login, by account.
    pub logins: Vec<LoginOutcome>,
    /// Unix seconds of the last state change.
    pub since_unix: u64,
}

/// State shared between the session task and the control socket.
pub struct Shared {
    status: Mutex<SessionStatus>,
    /// The logins asked for. A watch, so a session started after a change
    /// does not see it again.
    wanted: watch::Sender<Wanted>,
    /// The last verdict of each account, with the generation it ended: for
    /// the `login` command that set that generation (and only that one).
    verdicts: watch::Sender<BTreeMap<u32, (u64, LoginOutcome)>>,
    stamps: Arc<dyn Stamps>,
}

/// A `login` command's wait for its own verdict.
pub struct LoginWait {
    account: u32,
    generation: u64,
    verdicts: watch::Receiver<BTreeMap<u32, (u64, LoginOutcome)>>,
    wanted: watch::Receiver<Wanted>,
}

impl LoginWait {
    /// The gateway's verdict; none within `timeout` (no session), or at
    /// once when a newer login or a logout of the account replaces this one.
    pub async fn verdict(mut self, timeout: Duration) -> Option<LoginOutcome> {
        let (account, generation) = (self.account, self.generation);
        let mine = self.verdicts.wait_for(|v| v.get(&account).is_some_and(|(g, _)| *g == generation));
        let replaced = self.wanted.wait_for(|w| w.generation(account) != Some(generation));
        let waited = tokio::time::timeout(timeout, async {
            tokio::select! {
                v = mine => v.ok().and_then(|v| v.get(&account).map(|(_, o)| o.clone())),
                _ = replaced => None,
            }
        });
        waited.await.ok().flatten()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{MAX_ACCOUNTS} local accounts are logged in on this machine already")]
pub struct TooManyAccounts;

impl Shared {
    pub fn new(gateway: &str, stamps: Arc<dyn Stamps>) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(SessionStatus {
                state: "connecting".into(),
                gateway: gateway.into(),
                ..Default::default()
            }),
            wanted: watch::channel(Wanted::default()).0,
            verdicts: watch::channel(BTreeMap::new()).0,
            stamps,
        })
    }

    pub fn status(&self) -> SessionStatus {
        lock(&self.status).clone()
    }

    pub fn stamps(&self) -> &dyn Stamps {
        &*self.stamps
    }

    fn set_state(&self, state: &str, error: Option<String>) {
        let mut s = lock(&self.status);
        s.state = state.into();
        s.since_unix = unix_secs();
        if error.is_some() {
            s.last_error = error;
        }
    }

    /// Replaces the credentials of `account` and logs it in on the live
    /// session (or on the next one); none logs it out. Either way the
    /// account's sockets are no longer stamped from now until a login of
    /// it is accepted.
    pub fn set_credentials(&self, account: u32, c: Option<Credentials>) -> Result<LoginWait, TooManyAccounts> {
        let verdicts = self.verdicts.subscribe();
        // Under the status lock, as in `record_login`: a verdict on an
        // older login cannot slip in after this change clears the status.
        let mut status = lock(&self.status);
        let (mut generation, mut full) = (0, false);
        self.wanted.send_if_modified(|w| {
            let new_account = c.is_some() && !w.accounts.contains_key(&account);
            if new_account && w.accounts.len() >= MAX_ACCOUNTS as usize {
                full = true;
                return false;
            }
            w.last += 1;
            generation = w.last;
            match c {
                Some(c) => w.accounts.insert(account, (generation, c)),
                None => w.accounts.remove(&account),
            };
            true
        });
        if full {
            return Err(TooManyAccounts);
        }
        status.logins.retain(|l| l.account != account);
        self.stamps.set_account(account, false);
        Ok(LoginWait { account, generation, verdicts, wanted: self.wanted.subscribe() })
    }

    /// Publishes the verdict on the login of `generation`, unless newer
    /// credentials (or a logout) of its account replaced it meanwhile. An
    /// accepted login's account is stamped from now on.
    fn record_login(&self, generation: u64, outcome: LoginOutcome) {
        let mut status = lock(&self.status);
        if self.wanted.borrow().generation(outcome.account) != Some(generation) {
            return;
        }
        self.stamps.set_account(outcome.account, outcome.accepted);
        status.logins.retain(|l| l.account != outcome.account);
        status.logins.push(outcome.clone());
        status.logins.sort_by_key(|l| l.account);
        self.verdicts.send_modify(|v| {
            v.insert(outcome.account, (generation, outcome));
        });
    }
}

/// The stamper, as the session sees it: what this machine stamped, and
/// whose sockets it stamps.
pub trait Stamps: Send + Sync {
    /// The account this machine stamped the handshake ACK of `flow` for
    /// (same 4-tuple, same ISNs); `None` when it did not stamp it (the MAC
    /// key alone, copied to another machine, stamps handshakes this log
    /// never saw, and the agent refuses to vouch for them). A lookup that
    /// fails answers `None`.
    fn stamped(&self, flow: &FlowSummary) -> Option<u32>;
    /// Lets the sockets of `account` be stamped, or stops it.
    fn set_account(&self, account: u32, logged_in: bool);
}

/// What a session needs across reconnects.
pub struct Identity {
    pub enrollment: Enrollment,
    pub machine: [u8; 32],
    /// Where a renewed certificate is stored (none: kept in memory only).
    pub state: Option<StateDir>,
    /// The session certificate and key: the enrolled ones, then renewed.
    certificate: Mutex<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
}

impl Identity {
    pub fn new(enrollment: Enrollment, machine: [u8; 32], state: Option<StateDir>) -> Self {
        let certificate = Mutex::new((enrollment.cert.clone(), enrollment.key.clone_key()));
        Self { enrollment, machine, state, certificate }
    }

    /// The certificate sessions present now.
    pub fn certificate(&self) -> CertificateDer<'static> {
        lock(&self.certificate).0.clone()
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let c = lock(&self.certificate);
        tls::session_config(&self.enrollment.ca, &c.0, &c.1)
    }

    /// Stores a renewed certificate and key, and uses them from the next
    /// connection on.
    fn renewed(&self, cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Result<(), StateError> {
        if let Some(state) = &self.state {
            state.store_renewed(&cert, &key)?;
        }
        *lock(&self.certificate) = (cert, key);
        Ok(())
    }
}

/// How often a session looks at its certificate's remaining validity.
const RENEWAL_CHECK: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Protocol(#[from] ProtoError),
    #[error("login: {0}")]
    Login(#[from] PakeError),
    #[error("renewing the session certificate: {0}")]
    Renew(#[from] RenewError),
    #[error("storing the renewed certificate: {0}")]
    State(#[from] StateError),
}

/// Keeps a session up until `shutdown` turns true.
pub async fn run(
    identity: Arc<Identity>,
    shared: Arc<Shared>,
    cfg: SessionSection,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = cfg.reconnect_min();
    loop {
        shared.set_state("connecting", None);
        let mut opened = false;
        let result = serve_once(&identity, &shared, &cfg, shutdown.clone(), &mut opened).await;
        if *shutdown.borrow() {
            return;
        }
        let attempt = match &result {
            _ if opened => Attempt::Lost,
            Err(SessionError::Tls(TlsError::Connect { source, .. }))
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                Attempt::Refused
            }
            _ => Attempt::Failed,
        };
        let error = match result {
            Ok(()) => "the gateway closed the session".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::warn!("gateway session: {error}");
        if !opened {
            lock(&shared.status).failed_connects += 1;
        }
        let wait = reconnect_wait(&mut backoff, attempt, &cfg);
        shared.set_state("waiting to reconnect", Some(error));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// How a connection attempt ended, for the reconnect policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    /// A session was open and ended: the gateway restarted, or the path
    /// to it broke.
    Lost,
    /// The gateway's host refused the connection: it is up, and its
    /// daemon is (re)starting.
    Refused,
    /// Anything else: no answer, TLS or protocol failure, a rejection.
    Failed,
}

/// The longest wait between refused connects. A refused connect costs the
/// gateway's kernel one SYN and one RST, and the daemon behind it is
/// usually back within seconds: its flows held across the restart wait for
/// this agent (the gateway's `session_grace_ms`).
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(1);

/// The wait before the next connect, updating the doubling `backoff`.
/// A lost session is retried at once (within `reconnect_min`, jittered so
/// that agents cut off together do not reconnect in lockstep) and resets
/// the backoff; refused connects double it up to [`REFUSED_RETRY_MAX`];
/// other failures double it up to `reconnect_max`.
fn reconnect_wait(backoff: &mut Duration, attempt: Attempt, cfg: &SessionSection) -> Duration {
    match attempt {
        Attempt::Lost => {
            *backoff = cfg.reconnect_min();
            cfg.reconnect_min().mul_f64(rand::random::<f64>())
        }
        Attempt::Refused => {
            let wait = jitter((*backoff).min(REFUSED_RETRY_MAX));
            *backoff = (*backoff * 2).min(cfg.reconnect_max());
            wait
        }
        Attempt::Failed => {
            let wait = jitter(*backoff);
            *backoff = (*backoff * 2).min(cfg.reconnect_max());
            wait
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone). Wrapped so
/// that no borrow of the channel's value is held across an await.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Between half and all of `d`, so that agents cut off together do not
/// reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

type Conn = Framed<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, MessageCodec>;

/// One session, from connect to its end; `opened` turns true once the
/// gateway has welcomed it. On shutdown it closes the TLS session properly
/// (close_notify, then FIN) so the gateway sees a goodbye, not a dead peer.
async fn serve_once(
    identity: &Identity,
    shared: &Shared,
    cfg: &SessionSection,
    mut shutdown: watch::Receiver<bool>,
    opened: &mut bool,
) -> Result<(), SessionError> {
    let e = &identity.enrollment;
    let stream = tokio::select! {
        s = tls::connect(&e.info.gateway, identity.tls_config()?, cfg.connect_timeout()) => s?,
        _ = stopped(&mut shutdown) => return Ok(()),
    };
    let mut conn = Framed::new(stream, MessageCodec::default());
    let hello = Hello {
        agent_id: e.info.agent_id,
        install_serial: e.info.install_serial.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    };
    conn.send(Message::Hello(hello)).await?;
    let welcome = match tokio::time::timeout(cfg.connect_timeout(), conn.next()).await {
        Err(_) => return Err(ProtoError::Timeout { what: "Welcome", after: cfg.connect_timeout() }.into()),
        Ok(None) => return Err(ProtoError::Closed.into()),
        Ok(Some(m)) => match m? {
            Message::Welcome(w) => w,
            Message::Error(report) => return Err(ProtoError::Remote(report).into()),
            other => return Err(ProtoError::Unexpected { want: "Welcome", got: other.name() }.into()),
        },
    };
    *opened = true;
    {
        let mut s = lock(&shared.status);
        s.connects += 1;
    }
    shared.set_state("connected", None);
    tracing::info!(session = welcome.session_id, "gateway session open");
    let silence_limit = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)) * 3);
    let mut logins = Logins::default();
    // The first tick is at once: a session checks its certificate when it
    // opens, then twice a day.
    let mut renewal_check = tokio::time::interval(RENEWAL_CHECK);
    let mut renewal: Option<renew::Pending> = None;
    let mut renewed_here = false;
    let mut wanted = shared.wanted.subscribe();
    logins.take_changes(&wanted.borrow_and_update());
    logins.send_next(&mut conn).await?;
    loop {
        tokio::select! {
            // A credentials change first: a logout must not leave one more
            // answer signed under the old key.
            biased;
            Ok(()) = wanted.changed() => {
                logins.take_changes(&wanted.borrow_and_update());
                logins.send_next(&mut conn).await?;
            }
            _ = stopped(&mut shutdown) => {
                let _ = conn.close().await;
                shared.set_state("stopped", None);
                return Ok(());
            }
            _ = renewal_check.tick(), if renewal.is_none() && !renewed_here => {
                if renew::due(&identity.certificate(), unix_secs() as i64)? {
                    let (pending, csr_der) = renew::Pending::start()?;
                    renewal = Some(pending);
                    conn.send(Message::RenewCertificate(RenewCertificate { csr_der })).await?;
                }
            }
            msg = tokio::time::timeout(silence_limit, conn.next()) => {
                let msg = match msg {
                    Err(_) => return Err(ProtoError::Timeout { what: "message or ping from the gateway", after: silence_limit }.into()),
                    Ok(None) => return Ok(()),
                    Ok(Some(m)) => m?,
                };
                match msg {
                    Message::ProfileRequest(req) => {
                        lock(&shared.status).profile_requests += 1;
                        let Some(account) = shared.stamps.stamped(&req.flow) else {
                            lock(&shared.status).profile_refusals += 1;
                            tracing::warn!(flow = ?req.flow, "profile request for a flow this machine did not stamp: is a copy of this agent's key in use elsewhere?");
                            conn.send(Message::ProfileRefused(refusal(&req, RefusalReason::NotStamped))).await?;
                            continue;
                        };
                        // While the account's login is being checked, its
                        // answers wait for the verdict: answered now they
                        // would carry no proof.
                        if logins.busy_for(account) {
                            logins.deferred.push((account, req));
                            continue;
                        }
                        conn.send(logins.answer(identity, account, &req)).await?;
                    }
                    Message::ClaimChallenge(c) => {
                        let Some(mut running) = logins.in_flight.take() else {
                            return Err(ProtoError::Unexpected { want: "ProfileRequest or Ping (no login under way)", got: "ClaimChallenge" }.into());
                        };
                        let (client, finish) = off_thread(move || {
                            let finish = running.client.claim(&c.registration_response);
                            (running.client, finish)
                        })
                        .await;
                        running.client = client;
                        logins.in_flight = Some(running);
                        conn.send(Message::ClaimFinish(finish?)).await?;
                    }
                    Message::LoginChallenge(c) => {
                        let Some(running) = logins.in_flight.take() else {
                            return Err(ProtoError::Unexpected { want: "ProfileRequest or Ping (no login under way)", got: "LoginChallenge" }.into());
                        };
                        let client = running.client;
                        let finished = off_thread(move || client.finish(&c.credential_response)).await?;
                        logins.finished = Some(Finished { account: running.account, generation: running.generation, proof_key: finished.proof_key });
                        conn.send(Message::LoginFinish(finished.message)).await?;
                    }
                    Message::LoginResult(r) => {
                        if let Some(outcome) = logins.verdict(r)? {
                            shared.record_login(outcome.0, outcome.1);
                        }
                        logins.send_next(&mut conn).await?;
                        logins.flush(&mut conn, identity).await?;
                    }
                    Message::CertificateRenewed(r) => {
                        let Some(pending) = renewal.take() else {
                            return Err(ProtoError::Unexpected { want: "ProfileRequest, LoginResult or Ping (no renewal asked)", got: "CertificateRenewed" }.into());
                        };
                        let (cert, key) = pending.finish(r.cert_der)?;
                        identity.renewed(cert, key)?;
                        renewed_here = true;
                        lock(&shared.status).certificate_renewals += 1;
                        tracing::info!("session certificate renewed");
                    }
                    Message::Ping(n) => conn.send(Message::Pong(n)).await?,
                    Message::Pong(_) => {}
                    Message::Error(report) => return Err(ProtoError::Remote(report).into()),
                    other => return Err(ProtoError::Unexpected { want: "ProfileRequest, LoginResult or Ping", got: other.name() }.into()),
                }
            }
        }
    }
}

fn refusal(req: &ProfileRequest, reason: RefusalReason) -> ProfileRefusal {
    ProfileRefusal { request_id: req.request_id, nonce: req.nonce, reason }
}

/// Runs the key-stretching (argon2id) part of a login off the async
/// threads; the session waits for it, its socket does not block the
/// runtime.
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A login exchange under way: its account and generation, and the
/// agent's half.
struct Running {
    account: u32,
    generation: u64,
    client: LoginClient,
}

/// A login whose last message went out: the proof key it will have if the
/// gateway accepts it.
struct Finished {
    account: u32,
    generation: u64,
    proof_key: Option<Zeroizing<[u8; 32]>>,
}

/// One session's logins, one per local account. One exchange runs at a
/// time; the other accounts' changes wait in `queued` (only the latest of
/// each), so the gateway's login queue never fills and each account's last
/// verdict is the login the gateway holds for it.
#[derive(Default)]
struct Logins {
    /// Accepted logins: each account's user and proof key.
    accepted: BTreeMap<u32, (String, Zeroizing<[u8; 32]>)>,
    /// Accounts the gateway may hold a login of: told when they log out.
    at_gateway: BTreeSet<u32>,
    in_flight: Option<Running>,
    finished: Option<Finished>,
    /// Changes not sent yet: the generation and credentials (none: log
    /// out), the latest per account.
    queued: BTreeMap<u32, (u64, Option<Credentials>)>,
    /// The generation of each account last taken from the wanted logins.
    seen: BTreeMap<u32, u64>,
    /// Requests waiting for their account's login to end.
    deferred: Vec<(u32, ProfileRequest)>,
}

impl Logins {
    /// Queues what changed in `wanted` since the last look. A changed
    /// account's proof key dies at once.
    fn take_changes(&mut self, wanted: &Wanted) {
        for (&account, (generation, credentials)) in &wanted.accounts {
            if self.seen.insert(account, *generation) != Some(*generation) {
                self.accepted.remove(&account);
                self.queued.insert(account, (*generation, Some(credentials.clone())));
            }
        }
        let gone: Vec<u32> = self.seen.keys().copied().filter(|a| !wanted.accounts.contains_key(a)).collect();
        for account in gone {
            self.seen.remove(&account);
            self.accepted.remove(&account);
            self.queued.insert(account, (wanted.last, None));
        }
    }

    fn exchanging(&self) -> Option<u32> {
        self.in_flight.as_ref().map(|r| r.account).or(self.finished.as_ref().map(|f| f.account))
    }

    /// Whether `account` has a login to finish or to start.
    fn busy_for(&self, account: u32) -> bool {
        self.exchanging() == Some(account) || self.queued.contains_key(&account)
    }

    /// Sends queued logouts, and starts the next queued login unless one
    /// is under way.
    async fn send_next(&mut self, conn: &mut Conn) -> Result<(), SessionError> {
        while self.exchanging().is_none() {
            let Some((account, (generation, credentials))) = self.queued.pop_first() else { break };
            match credentials {
                Some(c) => {
                    let (client, start) = LoginClient::start(&c.user, account, &c.password)?;
                    self.in_flight = Some(Running { account, generation, client });
                    self.at_gateway.insert(account);
                    conn.send(Message::LoginStart(start)).await?;
                }
                None if self.at_gateway.remove(&account) => conn.send(Message::Logout(Logout { account })).await?,
                None => {}
            }
        }
        Ok(())
    }

    /// Ends the exchange under way with the gateway's verdict. Returns the
    /// outcome to publish, with its generation; none when a newer change
    /// of the account replaced the login while it ran (its key is not
    /// used).
    fn verdict(&mut self, r: LoginResult) -> Result<Option<(u64, LoginOutcome)>, ProtoError> {
        // A verdict before the exchange finished (throttled, locked, or
        // refused early) ends the login too.
        let (account, generation, proof_key) = match (self.finished.take(), self.in_flight.take()) {
            (Some(f), _) => (f.account, f.generation, f.proof_key),
            (None, Some(r)) => (r.account, r.generation, None),
            (None, None) => {
                return Err(ProtoError::Unexpected {
                    want: "ProfileRequest or Ping (no login awaits a verdict)",
                    got: "LoginResult",
                });
            }
        };
        if r.account != account {
            return Err(ProtoError::Unexpected { want: "the verdict of the login under way", got: "LoginResult" });
        }
        if !r.accepted {
            // A refused login leaves the gateway without one for the account.
            self.at_gateway.remove(&account);
        }
        if self.queued.contains_key(&account) {
            return Ok(None);
        }
        // The gateway records a verdict before sending it: from now on it
        // checks this account's proofs under this login's key.
        if let Some(key) = proof_key.filter(|_| r.accepted) {
            self.accepted.insert(account, (r.user.clone(), key));
        }
        Ok(Some((generation, LoginOutcome { account, user: r.user, accepted: r.accepted, message: r.message })))
    }

    /// Answers the requests whose account's login is over.
    async fn flush(&mut self, conn: &mut Conn, identity: &Identity) -> Result<(), ProtoError> {
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.deferred).into_iter().partition(|(account, _)| !self.busy_for(*account));
        self.deferred = waiting;
        for (account, req) in ready {
            conn.send(self.answer(identity, account, &req)).await?;
        }
        Ok(())
    }

    /// The answer to `req` about a flow of `account`: its profile, or a
    /// refusal when the account has no accepted login (its user logged out
    /// after the stamp, or the login was refused).
    fn answer(&self, identity: &Identity, account: u32, req: &ProfileRequest) -> Message {
        match self.accepted.get(&account) {
            Some((user, key)) => Message::ProfileAnswer(answer(identity, req, account, user.clone(), key)),
            None => Message::ProfileRefused(refusal(req, RefusalReason::NotLoggedIn)),
        }
    }
}

/// The profile of `account`'s `user` for `req`, signed with the proof key
/// of the account's login.
pub fn answer(
    identity: &Identity,
    req: &ProfileRequest,
    account: u32,
    user: String,
    proof_key: &[u8; 32],
) -> ProfileAnswer {
    let mut profile = Profile {
        user,
        account,
        proof: [0; 32],
        machine: identity.machine,
        install_serial: identity.enrollment.info.install_serial.clone(),
    };
    profile.proof = profile_proof(proof_key, req, &profile);
    ProfileAnswer { request_id: req.request_id, nonce: req.nonce, profile }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_session_is_retried_at_once_and_refusals_stay_fast() {
        let cfg = SessionSection::default();
        let mut backoff = cfg.reconnect_min();
        // A gateway that was down for a while: failures grew the backoff.
        for _ in 0..10 {
            reconnect_wait(&mut backoff, Attempt::Failed, &cfg);
        }
        assert_eq!(backoff, cfg.reconnect_max(), "failures double the backoff up to reconnect_max");
        let wait = reconnect_wait(&mut backoff, Attempt::Refused, &cfg);
        assert!(
            wait <= REFUSED_RETRY_MAX,
            "a refused connect (the daemon restarting) is retried within a second: {wait:?}"
        );
        // Connected, then the gateway restarted.
        let wait = reconnect_wait(&mut backoff, Attempt::Lost, &cfg);
        assert!(wait <= cfg.reconnect_min(), "a lost session is retried at once: {wait:?}");
        assert_eq!(backoff, cfg.reconnect_min(), "a lost session resets the backoff");
        let wait = reconnect_wait(&mut backoff, Attempt::Failed, &cfg);
        assert!(wait <= cfg.reconnect_min(), "the next failure waits from the start again: {wait:?}");
    }
}
