//! The agent's one session with the gateway (DESIGN.md §4): outbound TLS 1.3
//! with the enrolled client certificate, a login per session (and per
//! `ackgate-agent login`), answers to profile requests, and reconnects with
//! jittered exponential backoff.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ackgate_common::proto::pake::{LoginClient, PakeError};
use ackgate_common::proto::{
    FlowSummary, Hello, Message, MessageCodec, Profile, ProfileAnswer, ProfileRefusal, ProfileRequest, ProtoError,
    RefusalReason, RenewCertificate, profile_proof,
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

/// The user's credentials, kept in memory only (zeroed on drop).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Zeroizing<String>,
}

/// Result of the last login, as the gateway answered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LoginOutcome {
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
    pub profile_requests: u64,
    /// Requests about flows this machine never stamped, refused: someone
    /// else is using a copy of this agent's key.
    pub profile_refusals: u64,
    /// Session certificates renewed since the agent started.
    pub certificate_renewals: u64,
    pub last_error: Option<String>,
    pub login: Option<LoginOutcome>,
    /// Unix seconds of the last state change.
    pub since_unix: u64,
}

/// State shared between the session task and the control socket.
pub struct Shared {
    status: Mutex<SessionStatus>,
    /// The credentials and their generation (one per change). A watch, so
    /// a session started after a change does not see it again.
    credentials: watch::Sender<(u64, Option<Credentials>)>,
    /// The verdict on the login of a generation, for the `login` command
    /// that set it (and only that one).
    login_outcome: watch::Sender<(u64, Option<LoginOutcome>)>,
}

/// A `login` command's wait for its own verdict.
pub struct LoginWait {
    generation: u64,
    outcome: watch::Receiver<(u64, Option<LoginOutcome>)>,
    credentials: watch::Receiver<(u64, Option<Credentials>)>,
}

impl LoginWait {
    /// The gateway's verdict; none within `timeout` (no session), or at
    /// once when a newer login or a logout replaces this one.
    pub async fn verdict(mut self, timeout: Duration) -> Option<LoginOutcome> {
        let generation = self.generation;
        let mine = self.outcome.wait_for(|(g, o)| *g == generation && o.is_some());
        let replaced = self.credentials.wait_for(|(g, _)| *g > generation);
        let waited = tokio::time::timeout(timeout, async {
            tokio::select! {
                v = mine => v.ok().and_then(|v| v.1.clone()),
                _ = replaced => None,
            }
        });
        waited.await.ok().flatten()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix() -> u64 {
    SystemTime::UNIX_EPOCH.elapsed().map(|d| d.as_secs()).unwrap_or(0)
}

impl Shared {
    pub fn new(gateway: &str) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(SessionStatus {
                state: "connecting".into(),
                gateway: gateway.into(),
                ..Default::default()
            }),
            credentials: watch::channel((0, None)).0,
            login_outcome: watch::channel((0, None)).0,
        })
    }

    pub fn status(&self) -> SessionStatus {
        lock(&self.status).clone()
    }

    fn set_state(&self, state: &str, error: Option<String>) {
        let mut s = lock(&self.status);
        s.state = state.into();
        s.since_unix = now_unix();
        if error.is_some() {
            s.last_error = error;
        }
    }

    /// Replaces the credentials and logs in on the live session (or on the
    /// next one); none logs out.
    pub fn set_credentials(&self, c: Option<Credentials>) -> LoginWait {
        let outcome = self.login_outcome.subscribe();
        // Under the status lock, as in `record_login`: a verdict on an
        // older login cannot slip in after this change clears the status.
        let mut status = lock(&self.status);
        status.login = None;
        let mut generation = 0;
        self.credentials.send_modify(|(g, creds)| {
            *g += 1;
            generation = *g;
            *creds = c;
        });
        LoginWait { generation, outcome, credentials: self.credentials.subscribe() }
    }

    /// Publishes the verdict on the login of `generation`, unless newer
    /// credentials (or a logout) replaced it meanwhile.
    fn record_login(&self, generation: u64, outcome: LoginOutcome) {
        let mut status = lock(&self.status);
        if self.credentials.borrow().0 != generation {
            return;
        }
        status.login = Some(outcome.clone());
        self.login_outcome.send_replace((generation, Some(outcome)));
    }
}

/// The flows this machine stamped. A profile is given only for those: the
/// MAC key alone, copied to another machine, stamps handshakes this log
/// never saw, and the agent refuses to vouch for them.
pub trait StampLog: Send + Sync {
    /// Whether this machine stamped the handshake ACK of `flow` (same
    /// 4-tuple, same ISNs). A lookup that fails answers no.
    fn stamped(&self, flow: &FlowSummary) -> bool;
}

/// What a session needs across reconnects.
pub struct Identity {
    pub enrollment: Enrollment,
    pub machine: [u8; 32],
    pub stamps: Arc<dyn StampLog>,
    /// Where a renewed certificate is stored (none: kept in memory only).
    pub state: Option<StateDir>,
    /// The session certificate and key: the enrolled ones, then renewed.
    certificate: Mutex<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
}

impl Identity {
    pub fn new(enrollment: Enrollment, machine: [u8; 32], stamps: Arc<dyn StampLog>, state: Option<StateDir>) -> Self {
        let certificate = Mutex::new((enrollment.cert.clone(), enrollment.key.clone_key()));
        Self { enrollment, machine, stamps, state, certificate }
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
        let started = Instant::now();
        let result = serve_once(&identity, &shared, &cfg, shutdown.clone()).await;
        if *shutdown.borrow() {
            return;
        }
        let error = match result {
            Ok(()) => "the gateway closed the session".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::warn!("gateway session: {error}");
        // A session that lasted resets the backoff; a failing one doubles it.
        if started.elapsed() > cfg.reconnect_max() {
            backoff = cfg.reconnect_min();
        }
        let wait = jitter(backoff);
        shared.set_state("waiting to reconnect", Some(error));
        backoff = (backoff * 2).min(cfg.reconnect_max());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut shutdown) => return,
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

/// One session, from connect to its end. On shutdown it closes the TLS
/// session properly (close_notify, then FIN) so the gateway sees a goodbye,
/// not a dead peer.
async fn serve_once(
    identity: &Identity,
    shared: &Shared,
    cfg: &SessionSection,
    mut shutdown: watch::Receiver<bool>,
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
    {
        let mut s = lock(&shared.status);
        s.connects += 1;
    }
    shared.set_state("connected", None);
    tracing::info!(session = welcome.session_id, "gateway session open");
    let silence_limit = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)) * 3);
    let mut login = LoginState::default();
    // The first tick is at once: a session checks its certificate when it
    // opens, then twice a day.
    let mut renewal_check = tokio::time::interval(RENEWAL_CHECK);
    let mut renewal: Option<renew::Pending> = None;
    let mut renewed_here = false;
    let mut credentials = shared.credentials.subscribe();
    let current = credentials.borrow_and_update().clone();
    login.change(&mut conn, current).await?;
    loop {
        tokio::select! {
            // A credentials change first: a logout must not leave one more
            // answer signed under the old key.
            biased;
            Ok(()) = credentials.changed() => {
                let current = credentials.borrow_and_update().clone();
                if login.busy() {
                    login.next = Some(current);
                } else {
                    login.change(&mut conn, current).await?;
                }
            }
            _ = stopped(&mut shutdown) => {
                let _ = conn.close().await;
                shared.set_state("stopped", None);
                return Ok(());
            }
            _ = renewal_check.tick(), if renewal.is_none() && !renewed_here => {
                if renew::due(&identity.certificate(), now_unix() as i64)? {
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
                        if !identity.stamps.stamped(&req.flow) {
                            lock(&shared.status).profile_refusals += 1;
                            tracing::warn!(flow = ?req.flow, "profile request for a flow this machine did not stamp: is a copy of this agent's key in use elsewhere?");
                            let refusal = ProfileRefusal { request_id: req.request_id, nonce: req.nonce, reason: RefusalReason::NotStamped };
                            conn.send(Message::ProfileRefused(refusal)).await?;
                            continue;
                        }
                        // While a login is being checked, answers wait for
                        // its verdict: answered now they would carry no proof.
                        if login.busy() {
                            login.deferred.push(req);
                            continue;
                        }
                        conn.send(Message::ProfileAnswer(login.answer(identity, &req))).await?;
                    }
                    Message::ClaimChallenge(c) => {
                        let Some((generation, client)) = login.in_flight.take() else {
                            return Err(ProtoError::Unexpected { want: "ProfileRequest or Ping (no login under way)", got: "ClaimChallenge" }.into());
                        };
                        let (client, finish) = off_thread(move || {
                            let finish = client.claim(&c.registration_response);
                            (client, finish)
                        })
                        .await;
                        login.in_flight = Some((generation, client));
                        conn.send(Message::ClaimFinish(finish?)).await?;
                    }
                    Message::LoginChallenge(c) => {
                        let Some((generation, client)) = login.in_flight.take() else {
                            return Err(ProtoError::Unexpected { want: "ProfileRequest or Ping (no login under way)", got: "LoginChallenge" }.into());
                        };
                        let finished = off_thread(move || client.finish(&c.credential_response)).await?;
                        login.finished = Some((generation, finished.proof_key));
                        conn.send(Message::LoginFinish(finished.message)).await?;
                    }
                    Message::LoginResult(r) => {
                        // A verdict before the exchange finished (throttled,
                        // locked, or refused early) ends the login too.
                        let Some((generation, proof_key)) =
                            login.finished.take().or_else(|| login.in_flight.take().map(|(g, _)| (g, None)))
                        else {
                            return Err(ProtoError::Unexpected { want: "ProfileRequest or Ping (no login awaits a verdict)", got: "LoginResult" }.into());
                        };
                        if let Some(newer) = login.next.take() {
                            // Replaced while it ran: its key is not used;
                            // the newer login (or logout) goes now.
                            login.change(&mut conn, newer).await?;
                        } else {
                            // The gateway records a verdict before sending
                            // it: from now on it checks proofs under this
                            // login's key.
                            login.proof_key = proof_key.filter(|_| r.accepted);
                            login.user = r.user.clone();
                            let outcome = LoginOutcome { user: r.user, accepted: r.accepted, message: r.message };
                            shared.record_login(generation, outcome);
                        }
                        if !login.busy() {
                            login.flush(&mut conn, identity).await?;
                        }
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

/// Runs the key-stretching (argon2id) part of a login off the async
/// threads; the session waits for it, its socket does not block the
/// runtime.
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// One session's login. At most one login runs at a time: a newer change
/// waits in `next` (only the latest), so the last verdict is always the
/// login the gateway holds and the gateway's login queue never fills.
#[derive(Default)]
struct LoginState {
    /// The user of the last verdict: refused or unknown users still name
    /// themselves, so the gateway can record them as potential users.
    user: String,
    /// Proof key of the last verdict, if it accepted the login.
    proof_key: Option<Zeroizing<[u8; 32]>>,
    /// The login exchange under way: its generation and the agent's half.
    in_flight: Option<(u64, LoginClient)>,
    /// A login whose last message went out: its generation and the proof
    /// key it will have if the gateway accepts it.
    finished: Option<(u64, Option<Zeroizing<[u8; 32]>>)>,
    /// Credentials changed while a login ran.
    next: Option<(u64, Option<Credentials>)>,
    deferred: Vec<ProfileRequest>,
}

impl LoginState {
    fn busy(&self) -> bool {
        self.in_flight.is_some() || self.finished.is_some()
    }

    /// Applies a credentials change: a login starts; a logout drops the
    /// proof key at once, here and (told so) at the gateway.
    async fn change(
        &mut self,
        conn: &mut Conn,
        (generation, credentials): (u64, Option<Credentials>),
    ) -> Result<(), SessionError> {
        let had_login = self.proof_key.is_some() || !self.user.is_empty();
        self.proof_key = None;
        self.user.clear();
        match credentials {
            Some(c) => {
                self.user.clone_from(&c.user);
                let (client, start) = LoginClient::start(&c.user, &c.password)?;
                self.in_flight = Some((generation, client));
                conn.send(Message::LoginStart(start)).await?;
            }
            None if had_login => conn.send(Message::Logout).await?,
            None => {}
        }
        Ok(())
    }

    /// Answers the requests that waited for the login in flight.
    async fn flush(&mut self, conn: &mut Conn, identity: &Identity) -> Result<(), ProtoError> {
        for req in std::mem::take(&mut self.deferred) {
            conn.send(Message::ProfileAnswer(self.answer(identity, &req))).await?;
        }
        Ok(())
    }

    fn answer(&self, identity: &Identity, req: &ProfileRequest) -> ProfileAnswer {
        answer(identity, req, self.user.clone(), self.proof_key.as_deref())
    }
}

/// The profile for `req`. Without an accepted login the proof is zero and
/// the gateway records the attempt as a potential user.
pub fn answer(identity: &Identity, req: &ProfileRequest, user: String, proof_key: Option<&[u8; 32]>) -> ProfileAnswer {
    let mut profile = Profile {
        user,
        proof: [0; 32],
        machine: identity.machine,
        install_serial: identity.enrollment.info.install_serial.clone(),
    };
    if let Some(key) = proof_key {
        profile.proof = profile_proof(key, req, &profile);
    }
    ProfileAnswer { request_id: req.request_id, nonce: req.nonce, profile }
}
