//! The agent listener: TLS 1.3 with the gateway CA, enrollment on
//! connections without a client certificate, sessions on connections with
//! one, and per-flow profile requests over the live sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ackgate_common::abi::{ANY_ACCOUNT, MAX_ACCOUNTS};
use ackgate_common::host::lock;
use ackgate_common::mac::MacKey;
use ackgate_common::proto::{
    CertificateRenewed, ClaimChallenge, ClaimFinish, Enrolled, ErrorCode, ErrorReport, FlowSummary, LoginChallenge,
    LoginFinish, LoginGrant, LoginResult, LoginStart, LoginStep, Logout, Message, MessageCodec, Profile, ProfileAnswer,
    ProfileRequest, ProtoError, RefusalReason, Welcome,
};
use futures_util::{SinkExt, StreamExt};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Framed;

use super::directory::{Directory, LoginFailure, NewAgent};
use super::guard::{LoginGuard, LoginPolicy, Throttled};
use super::verifier::EnrolledAgents;
use crate::accept::Acceptor;
use crate::logins::{LOGIN_STEP_TIMEOUT, LoginAuthority};
use crate::pki::{AGENT_CERT_VALIDITY, Ca, PkiError, ReissuingServerCert};

type Conn = Framed<TlsStream<TcpStream>, MessageCodec>;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Time for the TLS handshake, for each expected reply, and for the
    /// agent to take each message sent to it.
    pub handshake_timeout: Duration,
    /// Ping interval; three missed pongs end the session.
    pub heartbeat: Duration,
    /// Backoff and lockout of failed logins.
    pub login: LoginPolicy,
    /// Login steps (OPAQUE's server half, relayed or not) at once across
    /// all sessions.
    pub login_workers: usize,
    /// Validity of the agents' certificates (renewed over the session when
    /// a third is left).
    pub agent_cert_validity: Duration,
    /// Connections not yet authenticated at once (see `serve`).
    pub max_unauthenticated: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            login: LoginPolicy::default(),
            login_workers: super::login_workers(),
            agent_cert_validity: AGENT_CERT_VALIDITY,
            max_unauthenticated: 256,
        }
    }
}

/// The answer to a profile request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileOutcome {
    pub agent_id: u32,
    pub profile: Profile,
    /// The request the profile answers: its id, nonce and flow are bound
    /// in the proof.
    pub request: ProfileRequest,
    /// The login the agent's session held when the answer arrived. The
    /// decider, which ran that login, checks the proof under its key; the
    /// gateway never holds the key when the validator is remote.
    pub login: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("agent {0} has no session")]
    NoSession(u32),
    #[error("agent {0} did not answer within {1:?}")]
    Timeout(u32, Duration),
    #[error("the session of agent {0} closed before it answered")]
    SessionClosed(u32),
    /// The agent's stamper never stamped this handshake, yet it carried the
    /// agent's capability: a copy of the agent's MAC key is in use
    /// elsewhere.
    #[error("agent {0} did not stamp this flow: suspected stolen key")]
    NotStamped(u32),
    /// The agent stamped the flow for a local account that has no login
    /// any more.
    #[error("agent {0}: the flow's local account is not logged in")]
    NotLoggedIn(u32),
    /// The profile names another install serial than the agent's
    /// enrollment: its state directory was copied or tampered with.
    #[error("agent {0} answered with an install serial other than the one it enrolled with")]
    SerialMismatch(u32),
}

/// Counters of the listener (all since start).
#[derive(Debug, Default)]
pub struct SessionStats {
    pub enrolled: AtomicU64,
    /// Failed accepts (out of descriptors, mostly), each waited out.
    pub accept_errors: Arc<AtomicU64>,
    /// Connections closed at once: `max_unauthenticated` were already
    /// before their first authenticated message.
    pub unauthenticated_refused: AtomicU64,
    pub enroll_refused: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub bad_frames: AtomicU64,
    pub logins_accepted: AtomicU64,
    pub logins_refused: AtomicU64,
    /// Of the refused: turned away by the backoff before any check.
    pub logins_throttled: AtomicU64,
    /// Of the refused: the user is locked.
    pub logins_locked: AtomicU64,
    /// Of the refused: the login could not be checked (validator
    /// unreachable); not counted as a failed login.
    pub logins_unavailable: AtomicU64,
    /// Answers to no outstanding request, or with the wrong nonce: replays.
    pub answers_refused: AtomicU64,
    /// Flows the named agent says it never stamped (suspected stolen keys).
    pub not_stamped: AtomicU64,
    /// Flows the agent stamped for a local account that logged out since.
    pub not_logged_in: AtomicU64,
    /// Profiles or sessions with an install serial other than the agent's
    /// enrollment.
    pub serial_mismatches: AtomicU64,
    pub certificates_renewed: AtomicU64,
    pub logouts: AtomicU64,
}

/// What the agent said about a flow: its profile and the session's login
/// when it arrived, or why there is no profile to decide on.
type Reply = Result<(ProfileAnswer, Option<u64>), NoProfile>;

enum NoProfile {
    Refused(RefusalReason),
    SerialMismatch,
}

struct Pending {
    request: ProfileRequest,
    reply: oneshot::Sender<Reply>,
}

struct Session {
    id: u64,
    agent_id: u32,
    /// The install serial the agent enrolled with.
    install_serial: String,
    /// The session renewed its certificate already (once per session).
    renewed: std::sync::atomic::AtomicBool,
    outbound: mpsc::Sender<Message>,
    /// Told when a newer session of the same agent takes over, or the agent
    /// is revoked (then with why).
    replaced: Notify,
    revoked: Mutex<Option<String>>,
    /// The session's accepted logins (their ids at the login authority),
    /// one per local account of the agent's machine.
    logins: Mutex<HashMap<u32, u64>>,
    pending: Mutex<HashMap<u64, Pending>>,
}

pub struct AgentServer {
    acceptor: TlsAcceptor,
    ca: Arc<Ca>,
    directory: Arc<dyn Directory>,
    logins: Arc<dyn LoginAuthority>,
    config: ServerConfig,
    sessions: Mutex<HashMap<u32, Arc<Session>>>,
    /// Woken whenever a session opens: profile requests waiting for their
    /// agent's session look again.
    session_opened: Notify,
    next_id: AtomicU64,
    enrollments: Mutex<Option<mpsc::UnboundedSender<(u32, MacKey)>>>,
    /// Login steps running at once, across all sessions.
    login_workers: Arc<Semaphore>,
    /// Connections still before their first authenticated message.
    unauthenticated: Arc<Semaphore>,
    guard: Arc<LoginGuard>,
    pub stats: SessionStats,
}

/// Login messages one session may have waiting for the login task.
pub const LOGINS_QUEUED: usize = 4;

impl AgentServer {
    /// `logins` runs the agents' logins: the embedded validator, or the
    /// relay to the remote one.
    pub fn new(
        ca: Ca,
        directory: Arc<dyn Directory>,
        logins: Arc<dyn LoginAuthority>,
        config: ServerConfig,
    ) -> Result<Arc<Self>, PkiError> {
        let ca = Arc::new(ca);
        let listener_cert = Arc::new(ReissuingServerCert::new(ca.clone())?);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).map_err(|e| PkiError::Tls(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Enrollment connections have no client certificate yet; sessions
        // must present one (checked per connection below).
        let signed = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let verifier = Arc::new(EnrolledAgents { signed, directory: directory.clone() });
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map(|b| b.with_client_cert_verifier(verifier).with_cert_resolver(listener_cert))
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let (login_workers, login) = (config.login_workers.max(1), config.login);
        let unauthenticated = Arc::new(Semaphore::new(config.max_unauthenticated.max(1)));
        Ok(Arc::new(Self {
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            ca,
            directory,
            logins,
            config,
            sessions: Mutex::new(HashMap::new()),
            session_opened: Notify::new(),
            next_id: AtomicU64::new(1),
            enrollments: Mutex::new(None),
            login_workers: Arc::new(Semaphore::new(login_workers)),
            unauthenticated,
            guard: Arc::new(LoginGuard::new(login)),
            stats: SessionStats::default(),
        }))
    }

    /// Accepts connections until this future is dropped (task aborted),
    /// which also ends every connection it accepted. A connection holds one
    /// of `max_unauthenticated` slots from its accept until it has
    /// authenticated (a session's `Hello` under an enrolled certificate) or
    /// ended (an enrollment, a failure, `handshake_timeout`); with all
    /// slots taken, a new connection is closed at once and counted, so a
    /// flood of half-open TLS handshakes costs a bounded amount of memory
    /// and never holds back the agents' sessions.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut connections = tokio::task::JoinSet::new();
        let mut acceptor = Acceptor::new(listener, "agent listener", self.stats.accept_errors.clone());
        loop {
            tokio::select! {
                (tcp, peer) = acceptor.next() => {
                    let Ok(slot) = self.unauthenticated.clone().try_acquire_owned() else {
                        self.stats.unauthenticated_refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let server = self.clone();
                    connections.spawn(async move {
                        if let Err(e) = server.connection(tcp, peer, slot).await {
                            tracing::info!(%peer, "agent connection ended: {e}");
                        }
                    });
                }
                Some(_) = connections.join_next() => {}
            }
        }
    }

    /// Connections accepted and not yet authenticated (or ended).
    pub fn unauthenticated(&self) -> usize {
        self.config.max_unauthenticated.max(1) - self.unauthenticated.available_permits()
    }

    /// Every later enrollment's agent id and MAC key (the control plane
    /// writes them into the gate's key map).
    pub fn enrollments(&self) -> mpsc::UnboundedReceiver<(u32, MacKey)> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.enrollments) = Some(tx);
        rx
    }

    /// What the server knows about agents, users and invites.
    pub fn directory(&self) -> Arc<dyn Directory> {
        self.directory.clone()
    }

    /// Ends the live session of `agent_id` (revoked) with an error that
    /// says `why`; whether it had one.
    pub fn end_session(&self, agent_id: u32, why: &str) -> bool {
        let Some(session) = lock(&self.sessions).remove(&agent_id) else {
            return false;
        };
        *lock(&session.revoked) = Some(why.to_owned());
        session.replaced.notify_one();
        true
    }

    /// Forgets the failed logins of `user` (an administrator unlocked it).
    pub fn forgive_logins(&self, user: &str) {
        self.guard.forgive(user);
    }

    /// The login table's size and counters, when the logins run in this
    /// process.
    pub fn login_table(&self) -> Option<crate::logins::LoginTable> {
        self.logins.table()
    }

    /// Agents with a live session.
    pub fn connected(&self) -> Vec<u32> {
        lock(&self.sessions).keys().copied().collect()
    }

    /// Asks agent `agent_id` who is behind `flow` and checks the answer,
    /// all within `timeout`. An agent without a session (reconnecting, or
    /// the gateway just restarted) is waited for within the same time.
    pub async fn request_profile(
        &self,
        agent_id: u32,
        flow: FlowSummary,
        timeout: Duration,
    ) -> Result<ProfileOutcome, ProfileError> {
        self.request_profile_after_grace(agent_id, flow, timeout, tokio::time::Instant::now()).await
    }

    /// As [`Self::request_profile`], but a flow asked about before
    /// `grace_until` whose agent has no session waits for the session
    /// (agents reconnect after a gateway restart), and then for the answer
    /// until `grace_until`, or `timeout` after the session opened if that is
    /// later. An agent with a session has `timeout`, as after the grace.
    pub async fn request_profile_after_grace(
        &self,
        agent_id: u32,
        flow: FlowSummary,
        timeout: Duration,
        grace_until: tokio::time::Instant,
    ) -> Result<ProfileOutcome, ProfileError> {
        let asked = tokio::time::Instant::now();
        let in_grace = grace_until > asked;
        let session_deadline = if in_grace { grace_until.max(asked + timeout) } else { asked + timeout };
        let mut waited = false;
        let session = loop {
            // Registered before the look, so a session opening in between
            // still wakes this wait.
            let opened = self.session_opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if let Some(s) = lock(&self.sessions).get(&agent_id).cloned() {
                break s;
            }
            waited = true;
            if tokio::time::timeout_at(session_deadline, opened).await.is_err() {
                return Err(ProfileError::NoSession(agent_id));
            }
        };
        // An agent that had to reconnect in the grace may still be logging
        // its accounts in again on the new session before it can answer.
        let deadline = match in_grace && waited {
            true => grace_until.max(tokio::time::Instant::now() + timeout),
            false => asked + timeout,
        };
        let request =
            ProfileRequest { request_id: self.next_id.fetch_add(1, Ordering::Relaxed), nonce: rand::random(), flow };
        let (reply, answer) = oneshot::channel();
        lock(&session.pending).insert(request.request_id, Pending { request: request.clone(), reply });
        // The session's outbound queue is bounded: a stalled agent makes
        // this wait, within the same deadline.
        let sent = tokio::time::timeout_at(deadline, session.outbound.send(Message::ProfileRequest(request.clone())));
        let answered = async {
            match sent.await {
                Ok(Ok(())) => Ok(tokio::time::timeout_at(deadline, answer).await),
                Ok(Err(_)) => Err(()),
                Err(elapsed) => Ok(Err(elapsed)),
            }
        };
        let Ok(answered) = answered.await else {
            lock(&session.pending).remove(&request.request_id);
            return Err(ProfileError::SessionClosed(agent_id));
        };
        match answered {
            Ok(Ok(Ok((answer, login)))) => Ok(ProfileOutcome { agent_id, profile: answer.profile, request, login }),
            Ok(Ok(Err(NoProfile::Refused(RefusalReason::NotStamped)))) => Err(ProfileError::NotStamped(agent_id)),
            Ok(Ok(Err(NoProfile::Refused(RefusalReason::NotLoggedIn)))) => Err(ProfileError::NotLoggedIn(agent_id)),
            Ok(Ok(Err(NoProfile::SerialMismatch))) => Err(ProfileError::SerialMismatch(agent_id)),
            Ok(Err(_)) => Err(ProfileError::SessionClosed(agent_id)),
            Err(_) => {
                lock(&session.pending).remove(&request.request_id);
                Err(ProfileError::Timeout(agent_id, timeout))
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        slot: OwnedSemaphorePermit,
    ) -> Result<(), ProtoError> {
        let _ = tcp.set_nodelay(true);
        let after = self.config.handshake_timeout;
        let tls = tokio::time::timeout(after, self.acceptor.accept(tcp))
            .await
            .map_err(|_| ProtoError::Timeout { what: "TLS handshake", after })??;
        let peer_cert: Option<[u8; 32]> =
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Sha256::digest(c).into());
        let mut conn = Framed::new(tls, MessageCodec::default());
        let first = self.recv(&mut conn, "the first message").await?;
        match (peer_cert, first) {
            (None, Message::EnrollRequest(req)) => self.enroll(&mut conn, req).await,
            (Some(cert), Message::Hello(hello)) => {
                // Authenticated by its certificate: a session from here on.
                drop(slot);
                self.session(conn, cert, hello, peer).await
            }
            (_, other) => {
                let e = ProtoError::Unexpected { want: "EnrollRequest or Hello", got: other.name() };
                refuse(&mut conn, ErrorCode::UnexpectedMessage, &e.to_string()).await;
                Err(e)
            }
        }
    }

    async fn recv(&self, conn: &mut Conn, what: &'static str) -> Result<Message, ProtoError> {
        let after = self.config.handshake_timeout;
        match tokio::time::timeout(after, conn.next()).await {
            Err(_) => Err(ProtoError::Timeout { what, after }),
            Ok(None) => Err(ProtoError::Closed),
            Ok(Some(Ok(m))) => Ok(m),
            Ok(Some(Err(e))) => Err(self.bad_frame(conn, e).await),
        }
    }

    /// Tells the peer what was wrong with its frame (if the stream still
    /// works) and hands the error back for the log.
    async fn bad_frame(&self, conn: &mut Conn, e: ProtoError) -> ProtoError {
        if matches!(e, ProtoError::Oversize | ProtoError::Version { .. } | ProtoError::Decode(_) | ProtoError::Empty) {
            self.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            refuse(conn, ErrorCode::BadFrame, &e.to_string()).await;
        }
        e
    }

    /// Runs a call of the directory on the blocking pool: the store's calls
    /// take its lock, and a write can wait out SQLite's busy timeout behind
    /// another writer (the CLI); neither may hold a runtime thread.
    async fn in_store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Directory) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let directory = self.directory.clone();
        tokio::task::spawn_blocking(move || call(&*directory)).await
    }

    async fn enroll(&self, conn: &mut Conn, req: ackgate_common::proto::EnrollRequest) -> Result<(), ProtoError> {
        // The invite is spent only on a request that can be signed.
        if let Err(e) = Ca::check_agent_request(&req.csr_der) {
            self.stats.enroll_refused.fetch_add(1, Ordering::Relaxed);
            refuse(conn, ErrorCode::BadFrame, &e.to_string()).await;
            return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::BadFrame, message: e.to_string() }));
        }
        let mac_key: [u8; 16] = rand::random();
        let agent = NewAgent {
            hostname: req.hostname.clone(),
            install_serial: req.install_serial.clone(),
            mac_key: MacKey::from_bytes(mac_key),
        };
        let (invite_id, secret) = (req.invite_id, req.secret);
        let enrolled = match self.in_store(move |d| d.enroll(invite_id, &secret, agent)).await {
            Ok(enrolled) => enrolled,
            Err(e) => {
                tracing::error!("enrolling an agent: {e}");
                let message = "the gateway could not record the enrollment".to_owned();
                refuse(conn, ErrorCode::Internal, &message).await;
                return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::Internal, message }));
            }
        };
        let agent_id = match enrolled {
            Ok(id) => id,
            Err(refusal) => {
                self.stats.enroll_refused.fetch_add(1, Ordering::Relaxed);
                refuse(conn, refusal.code(), &refusal.to_string()).await;
                return Err(ProtoError::Remote(ErrorReport { code: refusal.code(), message: refusal.to_string() }));
            }
        };
        let cert = match self.ca.sign_agent(&req.csr_der, agent_id, self.config.agent_cert_validity) {
            Ok(cert) => cert,
            Err(e) => {
                refuse(conn, ErrorCode::BadFrame, &e.to_string()).await;
                return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::BadFrame, message: e.to_string() }));
            }
        };
        let digest: [u8; 32] = Sha256::digest(&cert).into();
        if let Err(e) = self.in_store(move |d| d.bind_certificate(agent_id, digest)).await {
            tracing::error!(agent_id, "binding the enrolled agent's certificate: {e}");
        }
        self.stats.enrolled.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = lock(&self.enrollments).as_ref() {
            let _ = tx.send((agent_id, MacKey::from_bytes(mac_key)));
        }
        tracing::info!(agent_id, hostname = %req.hostname, "agent enrolled");
        let answer = Enrolled { agent_id, mac_key, cert_der: cert.to_vec(), ca_der: self.ca.cert_der().to_vec() };
        conn.send(Message::Enrolled(answer)).await?;
        conn.close().await
    }

    async fn session(
        self: Arc<Self>,
        mut conn: Conn,
        cert: [u8; 32],
        hello: ackgate_common::proto::Hello,
        peer: std::net::SocketAddr,
    ) -> Result<(), ProtoError> {
        let agent = match self.in_store(move |d| d.agent_by_certificate(&cert)).await.ok().flatten() {
            Some(a) if a.agent_id == hello.agent_id && a.install_serial == hello.install_serial => a,
            Some(a) if a.agent_id == hello.agent_id => {
                self.stats.serial_mismatches.fetch_add(1, Ordering::Relaxed);
                self.stats.sessions_refused.fetch_add(1, Ordering::Relaxed);
                let msg = format!("agent {} says another install serial than the one it enrolled with", a.agent_id);
                refuse(&mut conn, ErrorCode::UnknownAgent, &msg).await;
                return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::UnknownAgent, message: msg }));
            }
            _ => {
                self.stats.sessions_refused.fetch_add(1, Ordering::Relaxed);
                let msg = format!("agent {} is not enrolled here (or was revoked)", hello.agent_id);
                refuse(&mut conn, ErrorCode::UnknownAgent, &msg).await;
                return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::UnknownAgent, message: msg }));
            }
        };
        let (outbound, mut queue) = mpsc::channel(256);
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            agent_id: agent.agent_id,
            install_serial: agent.install_serial.clone(),
            renewed: std::sync::atomic::AtomicBool::new(false),
            outbound,
            replaced: Notify::new(),
            revoked: Mutex::new(None),
            logins: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        });
        // A reconnecting agent replaces its old session, which ends now
        // rather than lingering until its heartbeat runs out.
        if let Some(old) = lock(&self.sessions).insert(agent.agent_id, session.clone()) {
            old.replaced.notify_one();
        }
        self.session_opened.notify_waiters();
        self.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
        tracing::info!(agent_id = agent.agent_id, "agent session open");
        let heartbeat_secs = self.config.heartbeat.as_secs().max(1) as u32;
        let result = async {
            let within = self.config.handshake_timeout;
            send_within(&mut conn, Message::Welcome(Welcome { session_id: session.id, heartbeat_secs }), within)
                .await?;
            let mut ticker = tokio::time::interval(self.config.heartbeat);
            let (replies, mut login_replies) = mpsc::channel::<LoginReply>(LOGINS_QUEUED);
            let (logins, login_queue) = mpsc::channel::<LoginMsg>(LOGINS_QUEUED);
            let task = LoginTask {
                server: self.clone(),
                session: session.clone(),
                agent_id: agent.agent_id,
                source: peer.ip().to_string(),
            };
            tokio::spawn(task.run(login_queue, replies));
            let mut last_heard = Instant::now();
            loop {
                tokio::select! {
                    msg = conn.next() => {
                        let msg = match msg {
                            None => return Err(ProtoError::Closed),
                            Some(Ok(m)) => m,
                            Some(Err(e)) => return Err(self.bad_frame(&mut conn, e).await),
                        };
                        last_heard = Instant::now();
                        self.on_session_message(&mut conn, &session, msg, &logins).await?;
                    }
                    Some(reply) = login_replies.recv() => self.on_login_reply(&mut conn, &session, reply).await?,
                    Some(out) = queue.recv() => send_within(&mut conn, out, within).await?,
                    _ = ticker.tick() => {
                        if last_heard.elapsed() > self.config.heartbeat * 3 {
                            return Err(ProtoError::Timeout { what: "sign of life", after: self.config.heartbeat * 3 });
                        }
                        send_within(&mut conn, Message::Ping(session.id), within).await?;
                    }
                    () = session.replaced.notified() => {
                        let revoked = lock(&session.revoked).take();
                        if let Some(why) = revoked {
                            refuse(&mut conn, ErrorCode::UnknownAgent, &why).await;
                            return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::UnknownAgent, message: why }));
                        }
                        let _ = tokio::time::timeout(GOODBYE_WITHIN, conn.close()).await;
                        return Ok(());
                    }
                }
            }
        }
        .await;
        for (_, login) in lock(&session.logins).drain() {
            self.end_login(login);
        }
        // Requests still waiting for this session's answers fail now
        // (their reply senders go): a request holds the session, so they
        // would otherwise wait out their deadline.
        lock(&session.pending).clear();
        let mut sessions = lock(&self.sessions);
        if sessions.get(&agent.agent_id).is_some_and(|s| s.id == session.id) {
            sessions.remove(&agent.agent_id);
        }
        result
    }

    /// Tells the login authority that `login` is over (its proof key dies),
    /// off the async threads and without waiting.
    fn end_login(&self, login: u64) {
        let logins = self.logins.clone();
        drop(tokio::task::spawn_blocking(move || logins.end(login)));
    }

    /// Passes a login message on to the agent; a verdict also sets (or
    /// clears) the session's login of its account first, so the answers
    /// the agent signs after reading it meet the login they were signed
    /// under.
    async fn on_login_reply(&self, conn: &mut Conn, session: &Session, reply: LoginReply) -> Result<(), ProtoError> {
        let message = match reply {
            LoginReply::Step(message) => *message,
            LoginReply::Verdict { result, login } => {
                let counter = if login.is_some() { &self.stats.logins_accepted } else { &self.stats.logins_refused };
                counter.fetch_add(1, Ordering::Relaxed);
                let mut logins = lock(&session.logins);
                let replaced = match login {
                    Some(login) => logins.insert(result.account, login),
                    None => logins.remove(&result.account),
                };
                drop(logins);
                if let Some(old) = replaced {
                    self.end_login(old);
                }
                Message::LoginResult(result)
            }
        };
        send_within(conn, message, self.config.handshake_timeout).await
    }

    /// The outstanding request an answer (or refusal) with this id and
    /// nonce is for. Anything else is counted as refused: no such request
    /// (a replay), or the wrong nonce (a forgery; the request stays for the
    /// real answer).
    fn take_pending(&self, session: &Session, request_id: u64, nonce: &[u8; 16]) -> Option<Pending> {
        let mut pending = lock(&session.pending);
        match pending.remove(&request_id) {
            Some(p) if p.request.nonce == *nonce => Some(p),
            wrong => {
                if let Some(p) = wrong {
                    pending.insert(request_id, p);
                }
                self.stats.answers_refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Signs a renewed certificate for the session's agent and binds it (the
    /// old one stays valid until it expires, in case the agent never
    /// stores the new one). Once per session: more is refused.
    async fn renew_certificate(&self, conn: &mut Conn, session: &Session, csr_der: &[u8]) -> Result<(), ProtoError> {
        if session.renewed.swap(true, Ordering::Relaxed) {
            let msg = "one certificate renewal per session";
            refuse(conn, ErrorCode::UnexpectedMessage, msg).await;
            return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::UnexpectedMessage, message: msg.into() }));
        }
        let cert = match self.ca.sign_agent(csr_der, session.agent_id, self.config.agent_cert_validity) {
            Ok(cert) => cert,
            Err(e) => {
                refuse(conn, ErrorCode::BadFrame, &e.to_string()).await;
                return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::BadFrame, message: e.to_string() }));
            }
        };
        let (agent_id, digest): (u32, [u8; 32]) = (session.agent_id, Sha256::digest(&cert).into());
        let bound = self.in_store(move |d| d.renew_certificate(agent_id, digest)).await;
        if let Err(e) | Ok(Err(e)) = bound.map_err(|e| e.to_string()) {
            tracing::error!(agent_id, "binding a renewed certificate: {e}");
            refuse(conn, ErrorCode::Internal, "the gateway could not record the renewed certificate").await;
            return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::Internal, message: e }));
        }
        self.stats.certificates_renewed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(agent_id, "agent certificate renewed");
        let renewed = CertificateRenewed { cert_der: cert.to_vec() };
        send_within(conn, Message::CertificateRenewed(renewed), self.config.handshake_timeout).await
    }

    async fn on_session_message(
        &self,
        conn: &mut Conn,
        session: &Session,
        msg: Message,
        logins: &mpsc::Sender<LoginMsg>,
    ) -> Result<(), ProtoError> {
        let login_msg = match msg {
            Message::LoginStart(m) => LoginMsg::Start(m),
            Message::ClaimFinish(m) => LoginMsg::Claim(m),
            Message::LoginFinish(m) => LoginMsg::Finish(m),
            other => return self.on_other_message(conn, session, other).await,
        };
        // Run beside this loop (see `LoginTask`); an agent that piles up
        // login messages is cut off rather than queued.
        if logins.try_send(login_msg).is_err() {
            self.stats.logins_refused.fetch_add(1, Ordering::Relaxed);
            let msg = format!("more than {LOGINS_QUEUED} login messages awaiting the gateway");
            refuse(conn, ErrorCode::TooManyLogins, &msg).await;
            return Err(ProtoError::Remote(ErrorReport { code: ErrorCode::TooManyLogins, message: msg }));
        }
        Ok(())
    }

    async fn on_other_message(&self, conn: &mut Conn, session: &Session, msg: Message) -> Result<(), ProtoError> {
        match msg {
            Message::ProfileAnswer(answer) => {
                let Some(p) = self.take_pending(session, answer.request_id, &answer.nonce) else {
                    return Ok(());
                };
                // The login the session holds now for the profile's
                // account: the proof must verify under it (the decider
                // checks), not under a later one.
                let login = lock(&session.logins).get(&answer.profile.account).copied();
                let reply = if answer.profile.install_serial == session.install_serial {
                    Ok((answer, login))
                } else {
                    self.stats.serial_mismatches.fetch_add(1, Ordering::Relaxed);
                    Err(NoProfile::SerialMismatch)
                };
                let _ = p.reply.send(reply);
                Ok(())
            }
            Message::ProfileRefused(refusal) => {
                if let Some(p) = self.take_pending(session, refusal.request_id, &refusal.nonce) {
                    let counter = match refusal.reason {
                        RefusalReason::NotStamped => &self.stats.not_stamped,
                        RefusalReason::NotLoggedIn => &self.stats.not_logged_in,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let _ = p.reply.send(Err(NoProfile::Refused(refusal.reason)));
                }
                Ok(())
            }
            Message::RenewCertificate(req) => self.renew_certificate(conn, session, &req.csr_der).await,
            Message::Logout(Logout { account }) => {
                // Proofs made under the old key fail from now on.
                let ended = lock(&session.logins).remove(&account);
                if let Some(login) = ended {
                    self.end_login(login);
                }
                self.stats.logouts.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Message::Ping(n) => send_within(conn, Message::Pong(n), self.config.handshake_timeout).await,
            Message::Pong(_) => Ok(()),
            Message::Error(report) => Err(ProtoError::Remote(report)),
            other => {
                let e = ProtoError::Unexpected {
                    want: "LoginStart, ClaimFinish, LoginFinish, Logout, ProfileAnswer, ProfileRefused, \
                           RenewCertificate, Ping or Pong",
                    got: other.name(),
                };
                refuse(conn, ErrorCode::UnexpectedMessage, &e.to_string()).await;
                Err(e)
            }
        }
    }
}

/// A login message from the agent, for the session's login task.
enum LoginMsg {
    Start(LoginStart),
    Claim(ClaimFinish),
    Finish(LoginFinish),
}

/// What the login task has for the agent.
enum LoginReply {
    /// The next OPAQUE message (`ClaimChallenge` or `LoginChallenge`),
    /// boxed: `Message` is many times the verdict's size.
    Step(Box<Message>),
    /// The verdict, with the accepted login's id.
    Verdict { result: LoginResult, login: Option<u64> },
}

/// A session's logins, one at a time and in the order the agent sent them,
/// so the last verdict it reads is the login the gateway holds. The steps
/// (OPAQUE's server half and the store, or a round trip to the remote
/// validator) run off the reactor and off the session loop, so pings and
/// profile traffic go on meanwhile, and no more at once across all
/// sessions than `login_workers`. Before any step, the login guard
/// (`guard.rs`) may turn the login away; one user's logins run one at a
/// time; and a login counts as failed until it finishes, so an agent that
/// never sends its last message has guessed wrong.
struct LoginTask {
    server: Arc<AgentServer>,
    session: Arc<Session>,
    agent_id: u32,
    /// The agent's address, for the audit row of a failure.
    source: String,
}

fn refused(user: &str, account: u32, message: impl Into<String>) -> LoginReply {
    LoginReply::Verdict {
        result: LoginResult { user: user.to_owned(), account, accepted: false, message: message.into() },
        login: None,
    }
}

impl LoginTask {
    async fn run(self, mut steps: mpsc::Receiver<LoginMsg>, replies: mpsc::Sender<LoginReply>) {
        let mut next = None;
        // The account of the last login: a stray step's refusal names it.
        let mut account = ANY_ACCOUNT;
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match steps.recv().await {
                    Some(m) => m,
                    None => return,
                },
            };
            next = match msg {
                LoginMsg::Start(start) => {
                    account = start.account;
                    self.login(start, &mut steps, &replies).await
                }
                // A step of a login that is over (refused, or timed out).
                LoginMsg::Claim(_) | LoginMsg::Finish(_) => {
                    if replies.send(refused("", account, "no login under way")).await.is_err() {
                        return;
                    }
                    None
                }
            };
        }
    }

    /// Runs one login to its verdict; a newer `LoginStart` that cut it
    /// short is handed back.
    async fn login(
        &self,
        start: LoginStart,
        steps: &mut mpsc::Receiver<LoginMsg>,
        replies: &mpsc::Sender<LoginReply>,
    ) -> Option<LoginMsg> {
        let (server, stats) = (&self.server, &self.server.stats);
        let (user, account) = (start.user.clone(), start.account);
        let throttled = |t: Throttled| {
            stats.logins_throttled.fetch_add(1, Ordering::Relaxed);
            refused(&user, account, t.to_string())
        };
        if self.too_many_accounts(account) {
            let why = format!("{MAX_ACCOUNTS} accounts of this machine are logged in already");
            let _ = replies.send(refused(&user, account, why)).await;
            return None;
        }
        if let Err(t) = server.guard.admit(&user, self.agent_id, Instant::now()) {
            let _ = replies.send(throttled(t)).await;
            return None;
        }
        // One login per user at a time; then admitted again, as the login
        // this one waited for may have failed.
        let _serial = server.guard.user_lock(&user).lock_owned().await;
        if let Err(t) = server.guard.admit(&user, self.agent_id, Instant::now()) {
            let _ = replies.send(throttled(t)).await;
            return None;
        }
        let locked_user = user.clone();
        if server.in_store(move |d| d.login_locked(&locked_user)).await.unwrap_or(false) {
            stats.logins_locked.fetch_add(1, Ordering::Relaxed);
            let why = "this user is locked after too many failed logins; an administrator can unlock it";
            let _ = replies.send(refused(&user, account, why)).await;
            return None;
        }
        let (agent_id, source) = (self.agent_id, self.source.clone());
        let mut step = self.step(move |l| l.begin(&start, agent_id, &source)).await;
        let mut login = None;
        loop {
            let (message, claiming) = match step {
                LoginStep::Challenge { login: id, credential_response } => {
                    login = Some(id);
                    (Message::LoginChallenge(LoginChallenge { credential_response }), false)
                }
                LoginStep::Claim { login: id, registration_response } => {
                    login = Some(id);
                    (Message::ClaimChallenge(ClaimChallenge { registration_response }), true)
                }
                LoginStep::Done(grant) => {
                    let _ = replies.send(self.verdict(&user, account, grant, login).await).await;
                    return None;
                }
            };
            if replies.send(LoginReply::Step(Box::new(message))).await.is_err() {
                return None;
            }
            let id = login.unwrap_or_default();
            step = match tokio::time::timeout(LOGIN_STEP_TIMEOUT, steps.recv()).await {
                Ok(Some(LoginMsg::Claim(c))) if claiming => self.step(move |l| l.claim(id, &c)).await,
                Ok(Some(LoginMsg::Finish(f))) if !claiming => self.step(move |l| l.finish(id, &f)).await,
                ended => {
                    self.server.end_login(id);
                    self.failed(&user).await;
                    let why = match ended {
                        // No verdict goes out for these: count the refusal
                        // here (`on_login_reply` counts the others).
                        Ok(Some(newer @ LoginMsg::Start(_))) => {
                            stats.logins_refused.fetch_add(1, Ordering::Relaxed);
                            return Some(newer);
                        }
                        Ok(None) => {
                            stats.logins_refused.fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                        Ok(Some(_)) => "login messages out of order".to_owned(),
                        Err(_) => format!("the login did not finish within {LOGIN_STEP_TIMEOUT:?}"),
                    };
                    let _ = replies.send(refused(&user, account, why)).await;
                    return None;
                }
            };
        }
    }

    /// Whether a login of `account` would exceed the session's bound on
    /// logged-in accounts (an agent keeps to it; a hostile one is cut off).
    fn too_many_accounts(&self, account: u32) -> bool {
        let logins = lock(&self.session.logins);
        logins.len() >= MAX_ACCOUNTS as usize && !logins.contains_key(&account)
    }

    /// One login step at the login authority, within the workers' limit.
    /// A step that could not run (its task panicked) ends the login as
    /// unavailable: the agent must get a verdict, or it would hold its
    /// answers back.
    async fn step(&self, run: impl FnOnce(&dyn LoginAuthority) -> LoginStep + Send + 'static) -> LoginStep {
        let Ok(_permit) = self.server.login_workers.acquire().await else {
            return LoginStep::Done(LoginGrant::Unavailable);
        };
        let logins = self.server.logins.clone();
        tokio::task::spawn_blocking(move || run(&*logins)).await.unwrap_or_else(|e| {
            tracing::warn!("login step failed: {e}");
            LoginStep::Done(LoginGrant::Unavailable)
        })
    }

    /// The verdict for the agent on a finished login.
    async fn verdict(&self, user: &str, account: u32, grant: LoginGrant, login: Option<u64>) -> LoginReply {
        let claim = match grant {
            LoginGrant::User => None,
            LoginGrant::Claim(c) => Some(c),
            LoginGrant::Refused => {
                self.failed(user).await;
                return refused(user, account, "wrong user name or password");
            }
            LoginGrant::Unavailable => {
                self.server.stats.logins_unavailable.fetch_add(1, Ordering::Relaxed);
                return refused(user, account, "the login could not be checked now (validator unreachable); try again");
            }
        };
        self.server.guard.checked(user, self.agent_id, true, Instant::now());
        let message = match claim {
            None => format!("logged in as {user}"),
            Some(c) => format!("logged in as {user}, who is no user here yet: claim {c} waits for an administrator"),
        };
        LoginReply::Verdict { result: LoginResult { user: user.to_owned(), account, accepted: true, message }, login }
    }

    /// Counts a failed login: backoff, the audit row, and the lock when the
    /// user reached the threshold.
    async fn failed(&self, user: &str) {
        let Some(failure) = self.server.guard.checked(user, self.agent_id, false, Instant::now()) else { return };
        let (user, agent_id, source) = (user.to_owned(), self.agent_id, self.source.clone());
        let recorded = self.server.in_store(move |d| {
            let record = LoginFailure { user: &user, agent_id, source: &source };
            d.record_login_failure(&record, failure.lock);
        });
        if let Err(e) = recorded.await {
            tracing::warn!("recording a failed login: {e}");
        }
    }
}

/// Best effort, and briefly: tell the peer why the session ends.
async fn refuse(conn: &mut Conn, code: ErrorCode, message: &str) {
    let goodbye = async {
        let _ = conn.send(Message::Error(ErrorReport { code, message: message.to_owned() })).await;
        let _ = conn.close().await;
    };
    let _ = tokio::time::timeout(GOODBYE_WITHIN, goodbye).await;
}

/// Time for a refusal or a goodbye to go out to a peer that may not read.
const GOODBYE_WITHIN: Duration = Duration::from_secs(2);

/// Sends `msg`, or gives up on an agent that stops reading: a session loop
/// blocked in a send would never notice its missing heartbeats.
async fn send_within(conn: &mut Conn, msg: Message, within: Duration) -> Result<(), ProtoError> {
    tokio::time::timeout(within, conn.send(msg))
        .await
        .map_err(|_| ProtoError::Timeout { what: "the agent to take a message", after: within })?
}
