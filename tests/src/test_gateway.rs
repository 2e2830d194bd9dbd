//! An in-process gateway control plane for agent session tests: the real
//! agent listener (`ackgate_gateway::agents`) with an in-memory directory,
//! on a loopback port, restartable on the same port with the same CA.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ackgate_common::proto::{ClaimFinish, LoginFinish, LoginStart, LoginStep};
use ackgate_gateway::agents::{
    AgentRecord, AgentServer, Directory, EnrollRefusal, LoginFailure, LoginPolicy, MemoryDirectory, NewAgent,
    ProfileOutcome, ServerConfig,
};
use ackgate_gateway::logins::LoginAuthority;
use ackgate_gateway::pki::Ca;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub directory: Arc<MemoryDirectory>,
    /// Holds logins back at their first step, so a test can keep a login
    /// in flight.
    pub logins: Arc<Hold>,
    /// Holds enrollments in the directory, as a store write waits behind
    /// another writer's lock.
    pub store_writes: Arc<Hold>,
    pub server: Arc<AgentServer>,
    config: ServerConfig,
    ca_dir: std::path::PathBuf,
    task: Option<JoinHandle<()>>,
}

pub const HEARTBEAT: Duration = Duration::from_secs(1);

impl TestGateway {
    /// With [`TestGateway::config`].
    pub async fn start() -> Self {
        Self::start_with(Self::config()).await
    }

    /// The listener's settings in these tests: short deadlines, two
    /// login workers whatever the machine (so tests of who gets them do
    /// not depend on its CPU count), and no failed-login backoff or lockout
    /// (tests of those set a policy), so a test may log in wrong and right
    /// in quick succession.
    pub fn config() -> ServerConfig {
        ServerConfig {
            handshake_timeout: Duration::from_secs(2),
            heartbeat: HEARTBEAT,
            login: LoginPolicy { backoff: Duration::ZERO, backoff_max: Duration::ZERO, lockout_after: 0 },
            login_workers: 2,
            ..ServerConfig::default()
        }
    }

    /// With these listener settings.
    pub async fn start_with(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        Self::start_on_with(listener, config)
    }

    /// On a listener bound elsewhere (e.g. inside a test namespace).
    pub fn start_on(listener: TcpListener) -> Self {
        Self::start_on_with(listener, Self::config())
    }

    fn start_on_with(listener: TcpListener, config: ServerConfig) -> Self {
        let ca_dir = std::env::temp_dir().join(format!("ackgate-testgw-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&ca_dir).expect("CA dir");
        Ca::create(&ca_dir).unwrap_or_else(|e| panic!("creating the test CA: {e}"));
        let directory = Arc::new(MemoryDirectory::default());
        let (logins, store_writes) = (Arc::new(Hold::default()), Arc::new(Hold::default()));
        let addr = listener.local_addr().expect("local addr");
        let server = Self::server(&ca_dir, &directory, &logins, &store_writes, config.clone());
        let task = Some(tokio::spawn(server.clone().serve(listener)));
        Self { addr, directory, logins, store_writes, server, config, ca_dir, task }
    }

    fn server(
        ca_dir: &std::path::Path,
        directory: &Arc<MemoryDirectory>,
        logins: &Arc<Hold>,
        store_writes: &Arc<Hold>,
        config: ServerConfig,
    ) -> Arc<AgentServer> {
        let ca = Ca::load(ca_dir).unwrap_or_else(|e| panic!("loading the test CA: {e}"));
        let held = Arc::new(HeldLogins { inner: directory.logins(), hold: logins.clone() });
        let directory = Arc::new(HeldWrites { inner: directory.clone(), hold: store_writes.clone() });
        AgentServer::new(ca, directory, held, config).unwrap_or_else(|e| panic!("agent server: {e}"))
    }

    /// Whether the profile's proof verifies under the login the session
    /// held, as the validator checks it.
    pub fn proven(&self, outcome: &ProfileOutcome) -> bool {
        self.directory.prove(outcome.login, &outcome.request, &outcome.profile).is_some()
    }

    pub fn ca_fingerprint(&self) -> [u8; 32] {
        Ca::load(&self.ca_dir).expect("CA").fingerprint()
    }

    pub fn invite(&self, valid_for: Duration) -> ackgate_common::proto::Invite {
        self.directory.create_invite(&self.addr.to_string(), self.ca_fingerprint(), valid_for)
    }

    /// Stops accepting and drops every live session; returns once the
    /// listener is closed.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        // Sessions hold the server; a new one replaces it.
        self.server =
            Self::server(&self.ca_dir, &self.directory, &self.logins, &self.store_writes, self.config.clone());
    }

    /// Starts again on the same port, same CA and directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebinding the same port");
        self.task = Some(tokio::spawn(self.server.clone().serve(listener)));
    }

    /// Waits until `agent_id` has a session, or panics after `within`.
    pub async fn wait_connected(&self, agent_id: u32, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.server.connected().contains(&agent_id) {
            assert!(tokio::time::Instant::now() < deadline, "agent {agent_id} did not connect within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Calls a test can hold back (`hold`, then `release`): logins at their
/// first step, or store writes.
#[derive(Default)]
pub struct Hold {
    held: Mutex<bool>,
    released: Condvar,
    waiting: AtomicUsize,
    /// The users whose checks are waiting.
    users: Mutex<Vec<String>>,
}

impl Hold {
    pub fn hold(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    pub fn release(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.released.notify_all();
    }

    /// Logins waiting for `release` now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The users whose logins wait for `release` now, sorted.
    pub fn waiting_users(&self) -> Vec<String> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner()).clone();
        users.sort();
        users
    }

    fn pass(&self, user: &str) {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).push(user.to_owned());
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        drop(held);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = users.iter().position(|u| u == user) {
            users.remove(at);
        }
    }
}

/// The in-memory directory's logins, their first step passing through a
/// hold.
struct HeldLogins {
    inner: Arc<dyn LoginAuthority>,
    hold: Arc<Hold>,
}

impl LoginAuthority for HeldLogins {
    fn begin(&self, start: &LoginStart, agent_id: u32, source: &str) -> LoginStep {
        self.hold.pass(&start.user);
        self.inner.begin(start, agent_id, source)
    }

    fn claim(&self, login: u64, finish: &ClaimFinish) -> LoginStep {
        self.inner.claim(login, finish)
    }

    fn finish(&self, login: u64, finish: &LoginFinish) -> LoginStep {
        self.inner.finish(login, finish)
    }

    fn end(&self, login: u64) {
        self.inner.end(login)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.ca_dir);
    }
}

/// The in-memory directory, with enrollments held by a [`Hold`]: a slow
/// store write (one waiting out the busy timeout behind the CLI's).
struct HeldWrites {
    inner: Arc<MemoryDirectory>,
    hold: Arc<Hold>,
}

impl Directory for HeldWrites {
    fn enroll(&self, invite_id: u64, secret: &[u8; 32], agent: NewAgent) -> Result<u32, EnrollRefusal> {
        self.hold.pass("enroll");
        self.inner.enroll(invite_id, secret, agent)
    }
    fn bind_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) {
        self.inner.bind_certificate(agent_id, cert_sha256)
    }
    fn agent_by_certificate(&self, cert_sha256: &[u8; 32]) -> Option<AgentRecord> {
        self.inner.agent_by_certificate(cert_sha256)
    }
    fn record_key_misuse(&self, agent_id: u32, source: &str, service: &str) -> Result<(), String> {
        self.inner.record_key_misuse(agent_id, source, service)
    }
    fn renew_certificate(&self, agent_id: u32, cert_sha256: [u8; 32]) -> Result<(), String> {
        self.inner.renew_certificate(agent_id, cert_sha256)
    }
    fn login_locked(&self, user: &str) -> bool {
        self.inner.login_locked(user)
    }
    fn record_login_failure(&self, failure: &LoginFailure<'_>, lock: bool) {
        self.inner.record_login_failure(failure, lock)
    }
}
