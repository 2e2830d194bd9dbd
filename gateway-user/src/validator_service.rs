//! The validator as its own service (docs/design.md §4): the same framing as the
//! agent protocol, over mutual TLS 1.3 between one gateway and the
//! validator. Both certificates come from the gateway's CA
//! (`ackgate validator credentials`); the validator accepts only the one
//! gateway certificate it was given, so an agent (whose certificate the same
//! CA signed) cannot query it.
//!
//! Files in a credentials directory: `ca.pem`, `validator.pem` +
//! `validator.key` (server), `gateway.pem` + `gateway.key` (client).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ackgate_common::proto::{
    ClaimFinish, LoginFinish, LoginGrant, LoginStart, LoginStep, Message, MessageCodec, ProtoError, Relay, RelayStep,
    Relayed, Validate, Validated,
};
use futures_util::{SinkExt, StreamExt};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::Framed;

use crate::accept::Acceptor;
use crate::agents::ProfileOutcome;
use crate::logins::LoginAuthority;
use crate::pki::{Ca, ExtendedKeyUsagePurpose, LINK_CERT_VALIDITY, PkiError, certificate_pem};
use crate::validator::{Decider, ServiceRule, Verdict};

/// The name the validator's certificate carries and the gateway checks.
pub const VALIDATOR_SERVER_NAME: &str = "validator.ackgate.invalid";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("validator credentials {path}: {reason}")]
    Credentials { path: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Protocol(#[from] ProtoError),
    #[error("cannot reach the validator at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_cert(dir: &Path, name: &str) -> Result<CertificateDer<'static>, LinkError> {
    let path = dir.join(name);
    CertificateDer::from_pem_file(&path)
        .map_err(|e| LinkError::Credentials { path: path.display().to_string(), reason: e.to_string() })
}

fn read_key(dir: &Path, name: &str) -> Result<PrivateKeyDer<'static>, LinkError> {
    let path = dir.join(name);
    PrivateKeyDer::from_pem_file(&path)
        .map_err(|e| LinkError::Credentials { path: path.display().to_string(), reason: e.to_string() })
}

/// Writes a credentials directory for one gateway–validator pair.
pub fn write_credentials(ca: &Ca, dir: &Path) -> Result<(), LinkError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |path: &Path, e: std::io::Error| LinkError::Credentials {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io(dir, e))?;
    let server =
        ca.issue(VALIDATOR_SERVER_NAME, "ackgate validator", ExtendedKeyUsagePurpose::ServerAuth, LINK_CERT_VALIDITY)?;
    let client = ca.issue(
        "gateway.client.ackgate.invalid",
        "ackgate gateway client",
        ExtendedKeyUsagePurpose::ClientAuth,
        LINK_CERT_VALIDITY,
    )?;
    let key_pem = |k: &PrivateKeyDer<'_>| pem::encode(&pem::Pem::new("PRIVATE KEY", k.secret_der().to_vec()));
    let files: [(&str, String, u32); 5] = [
        ("ca.pem", certificate_pem(ca.cert_der()), 0o644),
        ("validator.pem", certificate_pem(&server.chain[0]), 0o644),
        ("validator.key", key_pem(&server.key), 0o600),
        ("gateway.pem", certificate_pem(&client.chain[0]), 0o644),
        ("gateway.key", key_pem(&client.key), 0o600),
    ];
    for (name, text, mode) in files {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// How long the validator waits on a connection: for its TLS handshake,
/// and for a word from the gateway, which pings its link every
/// [`LinkTiming::ping`]: a link silent for three of those has lost its
/// gateway, or holds a frame that will never be finished. Without these,
/// every such connection (anyone's, before the handshake) would be held
/// for ever.
#[derive(Clone, Copy, Debug)]
pub struct ServiceTiming {
    pub handshake: Duration,
    pub silence: Duration,
}

impl Default for ServiceTiming {
    fn default() -> Self {
        let link = LinkTiming::default();
        Self { handshake: link.connect, silence: link.ping * 3 }
    }
}

/// Serves validation requests with `decider` until the task is dropped.
pub async fn serve(listener: TcpListener, credentials: &Path, decider: Arc<dyn Decider>) -> Result<(), LinkError> {
    serve_with(listener, credentials, decider, ServiceTiming::default()).await
}

/// As [`serve`], with other deadlines.
pub async fn serve_with(
    listener: TcpListener,
    credentials: &Path,
    decider: Arc<dyn Decider>,
    timing: ServiceTiming,
) -> Result<(), LinkError> {
    let ca = read_cert(credentials, "ca.pem")?;
    let allowed: [u8; 32] = Sha256::digest(read_cert(credentials, "gateway.pem")?).into();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| LinkError::Tls(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let (cert, key) = (read_cert(credentials, "validator.pem")?, read_key(credentials, "validator.key")?);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| b.with_client_cert_verifier(verifier).with_single_cert(vec![cert, ca], key))
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let login_workers = crate::agents::login_worker_limit();
    let mut connections = tokio::task::JoinSet::new();
    let mut incoming = Acceptor::new(listener, "validator", Arc::new(AtomicU64::new(0)));
    loop {
        tokio::select! {
            (tcp, peer) = incoming.next() => {
                let (acceptor, decider, workers) = (acceptor.clone(), decider.clone(), login_workers.clone());
                connections.spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(timing.handshake, acceptor.accept(tcp)).await else {
                        return;
                    };
                    let cert: Option<[u8; 32]> =
                        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Sha256::digest(c).into());
                    if cert != Some(allowed) {
                        tracing::warn!(%peer, "validator: refused a client that is not the configured gateway");
                        return;
                    }
                    let link = Framed::new(tls, MessageCodec::default());
                    if let Err(e) = answer(link, decider, workers, timing.silence).await {
                        tracing::info!(%peer, "validator link ended: {e}");
                    }
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Requests one gateway link may have under way; beyond, the link stops
/// reading until answers go out.
const LINK_IN_FLIGHT: usize = 256;

/// Answers a gateway's requests concurrently, each as soon as it is
/// decided (answers carry the request id): a slow login step must not hold
/// back the validations behind it. Login steps run at most as many at once
/// as there are CPUs. A link with nothing read and nothing answered for
/// `silence` ends.
async fn answer(
    conn: Framed<tokio_rustls::server::TlsStream<TcpStream>, MessageCodec>,
    decider: Arc<dyn Decider>,
    login_workers: Arc<Semaphore>,
    silence: Duration,
) -> Result<(), ProtoError> {
    let (mut sink, mut stream) = conn.split();
    let mut work = tokio::task::JoinSet::new();
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(last_heard + silence) => {
                return Err(ProtoError::Timeout { what: "a word from the gateway", after: silence });
            }
            msg = stream.next(), if work.len() < LINK_IN_FLIGHT => {
                let Some(msg) = msg else { return Ok(()) };
                last_heard = tokio::time::Instant::now();
                let d = decider.clone();
                match msg? {
                    Message::Relay(Relay { request_id, step }) => {
                        let permits = login_workers.clone();
                        work.spawn(async move {
                            let _permit = permits.acquire_owned().await;
                            let step = tokio::task::spawn_blocking(move || relayed_step(&*d, step))
                                .await
                                .unwrap_or(LoginStep::Done(LoginGrant::Unavailable));
                            Message::Relayed(Relayed { request_id, step })
                        });
                    }
                    Message::Validate(v) => {
                        work.spawn(async move { Message::Validated(validate(d, v).await) });
                    }
                    Message::Ping(n) => sink.send(Message::Pong(n)).await?,
                    other => return Err(ProtoError::Unexpected { want: "Relay or Validate", got: other.name() }),
                }
            }
            Some(done) = work.join_next() => {
                last_heard = tokio::time::Instant::now();
                if let Ok(reply) = done {
                    sink.send(reply).await?;
                }
            }
        }
    }
}

/// One relayed login step, run here where the records are. `End` is
/// answered too (with a refusal nobody reads), as every request is.
fn relayed_step(d: &dyn Decider, step: RelayStep) -> LoginStep {
    match step {
        RelayStep::Start { start, agent_id, source } => d.begin(&start, agent_id, &source),
        RelayStep::Claim { login, finish } => d.claim(login, &finish),
        RelayStep::Finish { login, finish } => d.finish(login, &finish),
        RelayStep::End { login } => {
            d.end(login);
            LoginStep::Done(LoginGrant::Refused)
        }
    }
}

async fn validate(d: Arc<dyn Decider>, v: Validate) -> Validated {
    let request_id = v.request_id;
    let outcome = ProfileOutcome { agent_id: v.agent_id, profile: v.profile, request: v.request, login: v.login };
    let rule = ServiceRule { name: v.service, allow_groups: v.allow_groups };
    let verdict = tokio::task::spawn_blocking(move || d.decide(&outcome, &rule, &v.source))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let (authorized, reason, recorded) = match verdict {
        Ok(Verdict::Authorized) => (true, "valid user on an approved machine".to_owned(), false),
        Ok(Verdict::Denied { reason, recorded }) => (false, reason, recorded),
        Err(e) => (false, format!("validator failed: {e}"), false),
    };
    Validated { request_id, authorized, reason, recorded }
}

type Link = Framed<tokio_rustls::client::TlsStream<TcpStream>, MessageCodec>;

/// A request for the link task, with where its answer goes.
type LinkRequest = (u64, Message, oneshot::Sender<Message>);

/// The link's deadlines. Every wait on the validator has one: a validator
/// that hangs (or a link whose peer vanished without a reset) costs each
/// request at most `request`, and the blocking thread and the login
/// worker that wait on it are returned then.
#[derive(Clone, Copy, Debug)]
pub struct LinkTiming {
    /// How long one request waits for its answer.
    pub request: Duration,
    /// Time to connect, TCP and TLS.
    pub connect: Duration,
    /// The link pings this often, and ends after three intervals without
    /// a word from the validator: the next request connects anew.
    pub ping: Duration,
}

impl Default for LinkTiming {
    fn default() -> Self {
        Self { request: Duration::from_secs(10), connect: Duration::from_secs(5), ping: Duration::from_secs(5) }
    }
}

/// The gateway's side: a [`Decider`] that asks the remote validator. One
/// connection carries many requests at once (answered in any order, by
/// request id); it is reconnected when it fails or goes silent.
pub struct RemoteValidator {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    timing: LinkTiming,
    link: tokio::sync::Mutex<Option<mpsc::Sender<LinkRequest>>>,
    next: std::sync::atomic::AtomicU64,
    runtime: tokio::runtime::Handle,
}

impl RemoteValidator {
    /// `credentials` holds `ca.pem`, `gateway.pem`, `gateway.key`. Must be
    /// created inside the runtime it will use.
    pub fn new(addr: &str, credentials: &Path) -> Result<Self, LinkError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(read_cert(credentials, "ca.pem")?).map_err(|e| LinkError::Tls(e.to_string()))?;
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![read_cert(credentials, "gateway.pem")?], read_key(credentials, "gateway.key")?)
            .map_err(|e| LinkError::Tls(e.to_string()))?;
        Ok(Self {
            addr: addr.to_owned(),
            tls: Arc::new(tls),
            timing: LinkTiming::default(),
            link: tokio::sync::Mutex::new(None),
            next: std::sync::atomic::AtomicU64::new(1),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Other deadlines than [`LinkTiming::default`].
    pub fn with_timing(mut self, timing: LinkTiming) -> Self {
        self.timing = timing;
        self
    }

    async fn connect(&self) -> Result<Link, LinkError> {
        let after = self.timing.connect;
        let connected = tokio::time::timeout(after, async {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|source| LinkError::Connect { addr: self.addr.clone(), source })?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(VALIDATOR_SERVER_NAME).map_err(|e| LinkError::Tls(e.to_string()))?;
            tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| LinkError::Connect { addr: self.addr.clone(), source })
        });
        let tls = connected.await.map_err(|_| ProtoError::Timeout { what: "connecting to the validator", after })??;
        Ok(Framed::new(tls, MessageCodec::default()))
    }

    /// The live link, connecting a new one if there is none.
    async fn link(&self) -> Result<mpsc::Sender<LinkRequest>, LinkError> {
        let mut link = self.link.lock().await;
        if let Some(live) = link.as_ref().filter(|l| !l.is_closed()) {
            return Ok(live.clone());
        }
        let (requests, queue) = mpsc::channel(LINK_IN_FLIGHT);
        tokio::spawn(run_link(self.connect().await?, queue, self.timing.ping));
        *link = Some(requests.clone());
        Ok(requests)
    }

    /// One request and its answer, within the request deadline; a link
    /// lost before the answer is reconnected and the request sent once
    /// more.
    async fn call(&self, request_id: u64, request: Message) -> Result<Message, LinkError> {
        let after = self.timing.request;
        let answered = tokio::time::timeout(after, async {
            for attempt in 0..2 {
                let link = self.link().await?;
                let (reply, answer) = oneshot::channel();
                if link.send((request_id, request.clone(), reply)).await.is_ok()
                    && let Ok(answer) = answer.await
                {
                    return Ok(answer);
                }
                if attempt == 0 {
                    tracing::info!("validator link lost before an answer; reconnecting");
                }
            }
            Err(ProtoError::Closed.into())
        });
        answered.await.map_err(|_| ProtoError::Timeout { what: "the validator's answer", after })?
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Carries requests out and routes answers back by request id until the
/// connection fails or the validator says nothing (not even a pong) for
/// three `ping` intervals; the requests still waiting then see the link
/// closed. Requests whose callers gave up are forgotten at each ping.
async fn run_link(conn: Link, mut requests: mpsc::Receiver<LinkRequest>, ping: Duration) {
    let mut waiting = HashMap::new();
    carry(conn, &mut requests, &mut waiting, ping).await;
    // Closed before the waiting callers hear that the link is gone, so
    // that their second try cannot find it still open and queue on it.
    requests.close();
    drop(waiting);
}

async fn carry(
    conn: Link,
    requests: &mut mpsc::Receiver<LinkRequest>,
    waiting: &mut HashMap<u64, oneshot::Sender<Message>>,
    ping: Duration,
) {
    let (mut sink, mut stream) = conn.split();
    let mut ticker = tokio::time::interval(ping);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_heard.elapsed() > ping * 3 {
                    return tracing::warn!("validator link: no answer for {:?}; reconnecting", ping * 3);
                }
                waiting.retain(|_, reply| !reply.is_closed());
                if let Err(e) = sink.send(Message::Ping(0)).await {
                    return tracing::info!("validator link: {e}");
                }
            }
            request = requests.recv() => {
                let Some((id, msg, reply)) = request else { return };
                waiting.insert(id, reply);
                if let Err(e) = sink.send(msg).await {
                    return tracing::info!("validator link: {e}");
                }
            }
            answer = stream.next() => {
                let msg = match answer {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return tracing::info!("validator link: {e}"),
                    None => return tracing::info!("validator link closed by the validator"),
                };
                last_heard = tokio::time::Instant::now();
                let id = match &msg {
                    Message::Relayed(r) => r.request_id,
                    Message::Validated(v) => v.request_id,
                    Message::Pong(_) => continue,
                    other => return tracing::warn!("validator link: unexpected {}", other.name()),
                };
                if let Some(reply) = waiting.remove(&id) {
                    let _ = reply.send(msg);
                }
            }
        }
    }
}

impl RemoteValidator {
    /// Relays one login step; a validator that cannot be reached ends the
    /// login as unavailable (no guess was checked, so no failure counts).
    fn relay(&self, step: RelayStep) -> LoginStep {
        let request_id = self.id();
        match self.runtime.block_on(self.call(request_id, Message::Relay(Relay { request_id, step }))) {
            Ok(Message::Relayed(r)) => r.step,
            Ok(other) => {
                tracing::warn!("validator answered a login step with {}", other.name());
                LoginStep::Done(LoginGrant::Unavailable)
            }
            Err(e) => {
                tracing::warn!("validator: {e}");
                LoginStep::Done(LoginGrant::Unavailable)
            }
        }
    }
}

/// The gateway only relays: the OPAQUE exchange runs between the agent and
/// the validator, and the session key stays with them.
impl LoginAuthority for RemoteValidator {
    fn begin(&self, start: &LoginStart, agent_id: u32, source: &str) -> LoginStep {
        self.relay(RelayStep::Start { start: start.clone(), agent_id, source: source.to_owned() })
    }
    fn claim(&self, login: u64, finish: &ClaimFinish) -> LoginStep {
        self.relay(RelayStep::Claim { login, finish: finish.clone() })
    }
    fn finish(&self, login: u64, finish: &LoginFinish) -> LoginStep {
        self.relay(RelayStep::Finish { login, finish: finish.clone() })
    }
    fn end(&self, login: u64) {
        self.relay(RelayStep::End { login });
    }
}

impl Decider for RemoteValidator {
    fn decide(&self, outcome: &ProfileOutcome, service: &ServiceRule, source: &str) -> Result<Verdict, String> {
        let request_id = self.id();
        let msg = Message::Validate(Validate {
            request_id,
            agent_id: outcome.agent_id,
            login: outcome.login,
            request: outcome.request.clone(),
            profile: outcome.profile.clone(),
            service: service.name.clone(),
            allow_groups: service.allow_groups.clone(),
            source: source.to_owned(),
        });
        match self.runtime.block_on(self.call(request_id, msg)) {
            Ok(Message::Validated(v)) => Ok(if v.authorized {
                Verdict::Authorized
            } else {
                Verdict::Denied { reason: v.reason, recorded: v.recorded }
            }),
            Ok(other) => Err(format!("unexpected answer {}", other.name())),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use ackgate_common::proto::pake::LoginClient;
    use ackgate_common::proto::{Profile, profile_proof};

    use super::*;
    use crate::logins::test_request;
    use crate::store::Store;
    use crate::validator::Validator;

    /// A validator for the link's tests: each login's first step takes
    /// `login_delay` and grants the user; each decision authorizes, after
    /// waiting on `hold` (until its sender is dropped) when there is one.
    struct TestValidator {
        login_delay: Duration,
        hold: Option<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
    }

    /// Login steps take long; validations are quick.
    fn slow_logins() -> Arc<dyn Decider> {
        Arc::new(TestValidator { login_delay: Duration::from_secs(2), hold: None })
    }

    /// Decisions hang until `hold`'s sender is dropped.
    fn hung(hold: std::sync::mpsc::Receiver<()>) -> Arc<dyn Decider> {
        Arc::new(TestValidator { login_delay: Duration::ZERO, hold: Some(std::sync::Mutex::new(hold)) })
    }

    impl LoginAuthority for TestValidator {
        fn begin(&self, _: &LoginStart, _: u32, _: &str) -> LoginStep {
            std::thread::sleep(self.login_delay);
            LoginStep::Done(LoginGrant::User)
        }
        fn claim(&self, _: u64, _: &ClaimFinish) -> LoginStep {
            LoginStep::Done(LoginGrant::Refused)
        }
        fn finish(&self, _: u64, _: &LoginFinish) -> LoginStep {
            LoginStep::Done(LoginGrant::Refused)
        }
        fn end(&self, _: u64) {}
    }

    impl Decider for TestValidator {
        fn decide(&self, _: &ProfileOutcome, _: &ServiceRule, _: &str) -> Result<Verdict, String> {
            if let Some(hold) = &self.hold {
                let _ = hold.lock().map(|rx| rx.recv_timeout(Duration::from_secs(60)));
            }
            Ok(Verdict::Authorized)
        }
    }

    /// A validator service on loopback with `decider`, and the gateway's
    /// side of its link; the directory to delete afterwards.
    async fn link(tag: &str, decider: Arc<dyn Decider>) -> (Arc<RemoteValidator>, std::path::PathBuf) {
        let (remote, dir, _) = link_through(tag, decider, LinkTiming::default(), None).await;
        (remote, dir)
    }

    /// As [`link`], with `timing`, and through `proxy` if given (its
    /// address then stands for the validator's).
    async fn link_through(
        tag: &str,
        decider: Arc<dyn Decider>,
        timing: LinkTiming,
        proxy: Option<Arc<Blackhole>>,
    ) -> (Arc<RemoteValidator>, std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("ackgate-link-{tag}-{}", std::process::id()));
        let credentials = dir.join("link");
        std::fs::create_dir_all(&dir).expect("test directory");
        Ca::create(&dir).expect("test CA");
        write_credentials(&Ca::load(&dir).expect("CA"), &credentials).expect("link credentials");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback port");
        let mut addr = listener.local_addr().expect("address").to_string();
        let served = credentials.clone();
        tokio::spawn(async move { serve(listener, &served, decider).await });
        if let Some(proxy) = proxy {
            addr = proxy.start(addr).await;
        }
        let remote = RemoteValidator::new(&addr, &credentials).expect("remote validator").with_timing(timing);
        (Arc::new(remote), dir, addr)
    }

    /// A client that never finishes its TLS handshake, and a gateway link
    /// that stops in the middle of a frame, are closed at their deadlines
    /// instead of holding a connection for ever; a link that pings goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_connections_end_at_their_deadlines() {
        let dir = std::env::temp_dir().join(format!("ackgate-link-stalled-{}", std::process::id()));
        let credentials = dir.join("link");
        std::fs::create_dir_all(&dir).expect("test directory");
        Ca::create(&dir).expect("test CA");
        write_credentials(&Ca::load(&dir).expect("CA"), &credentials).expect("link credentials");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback port");
        let addr = listener.local_addr().expect("address").to_string();
        let served = credentials.clone();
        let timing = ServiceTiming { handshake: Duration::from_millis(300), silence: Duration::from_millis(500) };
        tokio::spawn(async move { serve_with(listener, &served, slow_logins(), timing).await });
        let closed_within = |what: &str, started: Instant| {
            let waited = started.elapsed();
            assert!(waited < Duration::from_secs(2), "{what}: closed after {waited:?}, past its deadline");
        };

        let started = Instant::now();
        let mut silent = TcpStream::connect(&addr).await.expect("TCP");
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "a connection without a handshake must be closed: {read:?}");
        closed_within("no handshake", started);

        let remote = RemoteValidator::new(&addr, &credentials).expect("remote validator");
        let mut link = remote.connect().await.expect("the gateway's link");
        let started = Instant::now();
        link.get_mut().write_all(&[0, 0, 0, 17, 5]).await.expect("a frame's first bytes");
        link.get_mut().flush().await.expect("flush");
        let ended = tokio::time::timeout(Duration::from_secs(5), link.next()).await;
        assert!(matches!(ended, Ok(None | Some(Err(_)))), "a link stalled mid-frame must be closed: {ended:?}");
        closed_within("stalled mid-frame", started);

        let mut live = remote.connect().await.expect("the gateway's link");
        for n in 0..8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            live.send(Message::Ping(n)).await.expect("ping");
            let pong = tokio::time::timeout(Duration::from_secs(2), live.next()).await;
            assert!(matches!(pong, Ok(Some(Ok(Message::Pong(m)))) if m == n), "a pinging link must go on: {pong:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A TCP relay whose connections can be cut off without a word: their
    /// sockets stay open and carry nothing, as when the validator's host
    /// vanishes. Connections made later are relayed again.
    #[derive(Default)]
    struct Blackhole {
        /// Connections numbered below this are cut off.
        cut_below: AtomicUsize,
        made: AtomicUsize,
    }

    impl Blackhole {
        async fn start(self: Arc<Self>, to: String) -> String {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
            let addr = listener.local_addr().expect("address").to_string();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let id = self.made.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(&to).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(self.clone().relay(id, cr, sw));
                    tokio::spawn(self.clone().relay(id, sr, cw));
                }
            });
            addr
        }

        async fn relay(
            self: Arc<Self>,
            id: usize,
            mut from: impl AsyncReadExt + Unpin,
            mut to: impl AsyncWriteExt + Unpin,
        ) {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf).await {
                if id < self.cut_below.load(Ordering::SeqCst) {
                    // Silence, with both sockets held open.
                    std::future::pending::<()>().await;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }

        /// Cuts off every connection made so far.
        fn cut(&self) {
            self.cut_below.store(self.made.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    fn outcome() -> ProfileOutcome {
        ProfileOutcome {
            agent_id: 1,
            profile: Profile {
                user: "alice".into(),
                account: 0,
                proof: [0; 32],
                machine: [1; 32],
                install_serial: "s".into(),
            },
            request: test_request(),
            login: Some(1),
        }
    }

    fn decide(remote: &Arc<RemoteValidator>) -> tokio::task::JoinHandle<Result<Verdict, String>> {
        let r = remote.clone();
        let rule = ServiceRule { name: "web".into(), allow_groups: Vec::new() };
        tokio::task::spawn_blocking(move || r.decide(&outcome(), &rule, "10.0.0.2:1000"))
    }

    /// A validator that never answers costs each request its deadline and
    /// no more: the blocking thread waiting on it is back then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_validator_costs_each_request_its_deadline() {
        let (release, hang) = std::sync::mpsc::channel();
        let timing = LinkTiming { request: Duration::from_millis(300), ..LinkTiming::default() };
        let (remote, dir, _) = link_through("hung", hung(hang), timing, None).await;
        let started = Instant::now();
        let verdict = decide(&remote).await.expect("validation task");
        let waited = started.elapsed();
        assert!(
            matches!(&verdict, Err(e) if e.contains("the validator's answer")),
            "a hung validator must give an error at the deadline: {verdict:?}"
        );
        assert!(waited < Duration::from_secs(2), "the request waited {waited:?}, past its 300 ms deadline");
        drop(release);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A login step the validator cannot be asked about is unavailable,
    /// not refused: no password was checked, so no failure may count
    /// against the user (a validator outage must not lock users out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_validator_leaves_logins_unavailable_not_failed() {
        let (remote, dir, _) = link_through("down", slow_logins(), LinkTiming::default(), None).await;
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("port").local_addr().expect("address");
        let credentials = dir.join("link");
        let down = Arc::new(RemoteValidator::new(&closed.to_string(), &credentials).expect("remote validator"));
        drop(remote);
        let start =
            LoginStart { user: "alice".into(), account: 0, credential_request: vec![], registration_request: vec![] };
        let step = tokio::task::spawn_blocking(move || down.begin(&start, 1, "10.0.0.2")).await.expect("task");
        assert_eq!(step, LoginStep::Done(LoginGrant::Unavailable));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A link whose peer goes silent (its host gone, no reset) is found
    /// dead by its pings (three silent intervals, well within a request's
    /// deadline) and replaced: the request caught on it goes again over a
    /// new connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_link_is_found_dead_and_replaced() {
        let proxy = Arc::new(Blackhole::default());
        let timing =
            LinkTiming { request: Duration::from_secs(3), ping: Duration::from_millis(100), ..LinkTiming::default() };
        let (remote, dir, _) = link_through("silent", slow_logins(), timing, Some(proxy.clone())).await;
        assert_eq!(decide(&remote).await.expect("task"), Ok(Verdict::Authorized), "the link works at first");
        proxy.cut();
        let caught = decide(&remote).await.expect("task");
        assert_eq!(caught, Ok(Verdict::Authorized), "the request caught on the silent link must go over a new one");
        assert_eq!(proxy.made.load(Ordering::SeqCst), 2, "exactly one reconnect");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_login_step_does_not_hold_back_validations() {
        let (remote, dir) = link("slow", slow_logins()).await;
        let r = remote.clone();
        let login = tokio::task::spawn_blocking(move || {
            let start = LoginStart {
                user: "alice".into(),
                account: 0,
                credential_request: vec![],
                registration_request: vec![],
            };
            r.begin(&start, 1, "10.0.0.2")
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let r = remote.clone();
        let outcome = ProfileOutcome {
            agent_id: 1,
            profile: Profile {
                user: "alice".into(),
                account: 0,
                proof: [0; 32],
                machine: [1; 32],
                install_serial: "s".into(),
            },
            request: test_request(),
            login: Some(1),
        };
        let rule = ServiceRule { name: "web".into(), allow_groups: Vec::new() };
        let verdict = tokio::task::spawn_blocking(move || r.decide(&outcome, &rule, "10.0.0.2:1000"))
            .await
            .expect("validation task");
        let waited = started.elapsed();
        assert_eq!(verdict, Ok(Verdict::Authorized));
        assert!(waited < Duration::from_secs(1), "the validation waited {waited:?} behind a login step");
        let step = login.await.expect("login task");
        assert_eq!(step, LoginStep::Done(LoginGrant::User), "the login step must still be answered");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The gateway relays the OPAQUE messages and never holds the session
    /// key: the validator checks the proof itself, and a proof under any
    /// key the gateway could make up is not valid.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relayed_login_is_proven_at_the_validator() {
        let store = Arc::new(Store::open(std::path::Path::new(":memory:")).expect("store"));
        store.add_user("alice", "right", &[]).expect("alice");
        let validator: Arc<dyn Decider> = Arc::new(Validator::new(store.clone()).expect("validator"));
        let (remote, dir) = link("relay", validator).await;
        let r = remote.clone();
        let (login, key) = tokio::task::spawn_blocking(move || {
            let (client, start) = LoginClient::start("alice", 0, "right").expect("client start");
            let LoginStep::Challenge { login, credential_response } = r.begin(&start, 7, "10.0.0.2") else {
                panic!("alice has a record at the validator")
            };
            let done = client.finish(&credential_response).expect("client finish");
            assert_eq!(r.finish(login, &done.message), LoginStep::Done(LoginGrant::User));
            (login, *done.proof_key.expect("the right password opens the envelope"))
        })
        .await
        .expect("login task");
        let req = test_request();
        let mut profile =
            Profile { user: "alice".into(), account: 0, proof: [0; 32], machine: [1; 32], install_serial: "s".into() };
        let decide = |profile: Profile| {
            let (r, req) = (remote.clone(), req.clone());
            tokio::task::spawn_blocking(move || {
                let outcome = ProfileOutcome { agent_id: 7, profile, request: req, login: Some(login) };
                r.decide(&outcome, &ServiceRule { name: "web".into(), allow_groups: vec![] }, "10.0.0.2:1000")
            })
        };
        profile.proof = profile_proof(&[9; 32], &req, &profile);
        let forged = decide(profile.clone()).await.expect("task");
        assert!(
            matches!(&forged, Ok(Verdict::Denied { reason, .. }) if reason.contains("password not verified")),
            "a proof under a key of the gateway's making must fail: {forged:?}"
        );
        profile.proof = profile_proof(&key, &req, &profile);
        let proven = decide(profile).await.expect("task");
        assert!(
            matches!(&proven, Ok(Verdict::Denied { reason, .. }) if reason.contains("unapproved machine")),
            "the agent's proof verifies at the validator (the machine is not approved yet): {proven:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
