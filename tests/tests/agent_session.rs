//! The agent's enrollment and gateway session against the real agent
//! listener in-process (`TestGateway`): enrollment, login, profile request
//! and answer, reconnect after a gateway restart, and every bad-input case
//! (garbage, oversize frames, unknown versions, wrong CA, expired or reused
//! invites, replayed answers): each a clear error and a closed session,
//! within a deadline.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ackgate_agent::config::SessionSection;
use ackgate_agent::enroll::{EnrollError, enroll};
use ackgate_agent::session::{self, Credentials, Identity, Shared, Stamps};
use ackgate_agent::state::StateDir;
use ackgate_agent::tls;
use ackgate_common::proto::pake::LoginClient;
use ackgate_common::proto::{
    EnrollRequest, ErrorCode, FlowSummary, Hello, Logout, Message, MessageCodec, PROTOCOL_VERSION,
};
use ackgate_gateway::agents::{LOGINS_QUEUED, LoginPolicy, ProfileError, ServerConfig};
use ackgate_tests::TempDir;
use ackgate_tests::test_gateway::{HEARTBEAT, TestGateway};
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;
use zeroize::Zeroizing;

const DEADLINE: Duration = Duration::from_secs(10);
const FLOW: FlowSummary = FlowSummary {
    client: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000)),
    service: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443)),
    client_isn: 11,
    server_isn: 22,
};

/// The local account `FLOW` belongs to.
const ACCOUNT: u32 = 1000;
/// Another local account of the agent's machine, and a flow of its own.
const OTHER_ACCOUNT: u32 = 1001;
const OTHER_FLOW: FlowSummary = FlowSummary {
    client: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40001)),
    client_isn: 33,
    ..FLOW
};

/// The agent's stamper in these tests: it stamped `FLOW` for `ACCOUNT`,
/// `OTHER_FLOW` for `OTHER_ACCOUNT` and nothing else, and keeps the
/// accounts whose sockets it may stamp.
#[derive(Default)]
struct TestStamps {
    accounts: Mutex<BTreeSet<u32>>,
}

impl TestStamps {
    fn accounts(&self) -> BTreeSet<u32> {
        self.accounts.lock().expect("accounts").clone()
    }
}

impl Stamps for TestStamps {
    fn stamped(&self, flow: &FlowSummary) -> Option<u32> {
        [(FLOW, ACCOUNT), (OTHER_FLOW, OTHER_ACCOUNT)].into_iter().find(|(f, _)| f == flow).map(|(_, a)| a)
    }

    fn set_account(&self, account: u32, logged_in: bool) {
        let mut accounts = self.accounts.lock().expect("accounts");
        match logged_in {
            true => accounts.insert(account),
            false => accounts.remove(&account),
        };
    }
}

fn identity(enrollment: ackgate_agent::state::Enrollment, machine: [u8; 32]) -> Identity {
    Identity::new(enrollment, machine, None)
}

fn credentials(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials { user: user.into(), password: Zeroizing::new(password.into()) })
}

fn fast_reconnect() -> SessionSection {
    SessionSection { connect_timeout_secs: 2, reconnect_min_ms: 50, reconnect_max_secs: 1 }
}

async fn enrolled(gw: &TestGateway, dir: &TempDir) -> (u32, StateDir) {
    let state = StateDir::new(&dir.0);
    let id = enroll(&gw.invite(Duration::from_secs(60)), "laptop", &state, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("enrollment against the test gateway failed: {e}"));
    (id, state)
}

/// Runs the agent's session task, with `creds` logged in for `ACCOUNT`;
/// returns its shared state.
fn run_agent(
    state: &StateDir,
    creds: Option<(&str, &str)>,
) -> (Arc<Shared>, Arc<Identity>, tokio::sync::watch::Sender<bool>) {
    run_agent_with(state, creds, Arc::new(TestStamps::default()))
}

fn run_agent_with(
    state: &StateDir,
    creds: Option<(&str, &str)>,
    stamps: Arc<TestStamps>,
) -> (Arc<Shared>, Arc<Identity>, tokio::sync::watch::Sender<bool>) {
    let enrollment = state.load().unwrap_or_else(|e| panic!("loading the enrollment: {e}"));
    let shared = Shared::new(&enrollment.info.gateway, stamps);
    if let Some((user, pw)) = creds {
        shared.set_credentials(ACCOUNT, credentials(user, pw)).expect("room for a login");
    }
    let identity = Arc::new(identity(enrollment, [7; 32]));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(session::run(identity.clone(), shared.clone(), fast_reconnect(), stopped));
    (shared, identity, stop)
}

/// The verdict on `ACCOUNT`'s login.
async fn wait_login(shared: &Shared) -> ackgate_agent::session::LoginOutcome {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(l) = shared.status().logins.into_iter().find(|l| l.account == ACCOUNT) {
            return l;
        }
        assert!(tokio::time::Instant::now() < deadline, "no login verdict within {DEADLINE:?}: {:?}", shared.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_login_and_profile_answer() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("alice", "correct horse battery");
    let dir = TempDir::new("enroll");
    let (id, state) = enrolled(&gw, &dir).await;

    let mode = |name: &str| std::fs::metadata(dir.0.join(name)).expect(name).permissions().mode() & 0o777;
    assert_eq!(mode(""), 0o700, "state dir must be root-only");
    assert_eq!(mode("mac.key"), 0o600, "MAC key must be root-only");
    assert_eq!(mode("client.key"), 0o600, "TLS key must be root-only");
    let enrollment = state.load().expect("enrollment loads");
    let record = gw.directory.agent(id).expect("the gateway recorded the agent");
    assert_eq!(record.mac_key, enrollment.mac_key, "agent and gateway must hold the same MAC key");
    assert_eq!(record.install_serial, enrollment.info.install_serial);

    let (shared, identity, stop) = run_agent(&state, Some(("alice", "correct horse battery")));
    gw.wait_connected(id, DEADLINE).await;
    let login = wait_login(&shared).await;
    assert!(login.accepted, "the right password must be accepted: {login:?}");
    let outcome = gw.server.request_profile(id, FLOW, DEADLINE).await.expect("profile answer");
    assert!(gw.proven(&outcome), "the proof must verify under the session's login");
    assert_eq!(outcome.profile.user, "alice");
    assert_eq!(outcome.profile.machine, identity.machine);
    assert_eq!(outcome.profile.install_serial, enrollment.info.install_serial);
    let logins = gw.server.stats.logins_accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(logins, 1, "credentials set before the session started must give one login per session, not {logins}");
    for file in ["agent.toml", "mac.key", "client.pem", "client.key", "ca.pem"] {
        let text = std::fs::read(dir.0.join(file)).expect(file);
        assert!(
            !text.windows(7).any(|w| w == b"correct"),
            "{file} contains the password; no credential may be stored on disk"
        );
    }
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_gives_no_profile() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("bob", "right");
    let dir = TempDir::new("wrongpw");
    let (id, state) = enrolled(&gw, &dir).await;
    let (shared, _identity, stop) = run_agent(&state, Some(("bob", "wrong")));
    gw.wait_connected(id, DEADLINE).await;
    let login = wait_login(&shared).await;
    assert!(!login.accepted, "a wrong password must be refused: {login:?}");
    let asked = gw.server.request_profile(id, FLOW, DEADLINE).await;
    assert_eq!(asked, Err(ProfileError::NotLoggedIn(id)), "no profile for an account without an accepted login");
    stop.send(true).expect("stop");
}

/// Waits until `n` password checks are held at the gateway.
async fn held_checks(gw: &TestGateway, n: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while gw.logins.waiting() != n {
        assert!(tokio::time::Instant::now() < deadline, "expected {n} password check(s) held at the gateway");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A login typed while another is being checked waits for it and then
/// replaces it: the session ends on the latest, each `login` sees its own
/// verdict or none, and a logout during a check leaves answers without
/// proof. The gateway's password checks are held back to have a login in
/// flight for exactly as long as each step needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_during_a_check_replaces_it_and_a_logout_drops_the_proof() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("frank", "right");
    let dir = TempDir::new("rapid");
    let (id, state) = enrolled(&gw, &dir).await;
    let (shared, _identity, stop) = run_agent(&state, None);
    gw.wait_connected(id, DEADLINE).await;
    let set = |pw: Option<&str>| {
        shared.set_credentials(ACCOUNT, pw.and_then(|pw| credentials("frank", pw))).expect("room for a login")
    };
    let checks = || {
        let s = &gw.server.stats;
        s.logins_accepted.load(std::sync::atomic::Ordering::Relaxed)
            + s.logins_refused.load(std::sync::atomic::Ordering::Relaxed)
    };

    gw.logins.hold();
    let replaced = set(Some("wrong"));
    held_checks(&gw, 1).await;
    let latest = set(Some("right"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.logins.waiting(), 1, "the agent must not send a second login while one awaits its verdict");
    gw.logins.release();
    let verdict = latest.verdict(DEADLINE).await.expect("the latest login must get its verdict");
    assert!(verdict.accepted, "the latest login (right password) decides: {verdict:?}");
    assert_eq!(replaced.verdict(Duration::from_millis(200)).await, None, "a replaced login gets no verdict of its own");
    assert_eq!(checks(), 2, "the replaced login and the latest were each checked once");
    let outcome = gw.server.request_profile(id, FLOW, DEADLINE).await.expect("profile answer");
    assert!(gw.proven(&outcome), "answers must be signed under the latest login's key");

    gw.logins.hold();
    let _in_flight = set(Some("right"));
    held_checks(&gw, 1).await;
    let _logout = set(None);
    gw.logins.release();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while checks() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the login sent before the logout was never checked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = gw.server.request_profile(id, FLOW, DEADLINE).await;
    assert_eq!(asked, Err(ProfileError::NotLoggedIn(id)), "after a logout the account's flows get no profile");
    assert!(shared.status().logins.is_empty(), "status must not show a login after the logout");
    stop.send(true).expect("stop");
}

/// Two local accounts logged in on one session as two users: each
/// account's flows are answered as its own user under its own login's
/// key, only logged-in accounts are stamped, and one account's logout
/// leaves the other's login alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_local_account_answers_as_its_own_user() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("alice", "pw-alice");
    gw.directory.add_user("bob", "pw-bob");
    let dir = TempDir::new("accounts");
    let (id, state) = enrolled(&gw, &dir).await;
    let stamps = Arc::new(TestStamps::default());
    let (shared, _identity, stop) = run_agent_with(&state, Some(("alice", "pw-alice")), stamps.clone());
    gw.wait_connected(id, DEADLINE).await;
    assert!(wait_login(&shared).await.accepted, "alice's login must be accepted");
    assert_eq!(stamps.accounts(), BTreeSet::from([ACCOUNT]), "only the logged-in account is stamped");
    assert_eq!(
        gw.server.request_profile(id, OTHER_FLOW, DEADLINE).await,
        Err(ProfileError::NotLoggedIn(id)),
        "a flow of an account without a login must get no profile, not alice's"
    );

    let bob = shared.set_credentials(OTHER_ACCOUNT, credentials("bob", "pw-bob")).expect("room for a login");
    let verdict = bob.verdict(DEADLINE).await.expect("bob's login must get its verdict");
    assert!(verdict.accepted && verdict.account == OTHER_ACCOUNT, "{verdict:?}");
    assert_eq!(stamps.accounts(), BTreeSet::from([ACCOUNT, OTHER_ACCOUNT]));
    for (flow, account, user) in [(FLOW, ACCOUNT, "alice"), (OTHER_FLOW, OTHER_ACCOUNT, "bob")] {
        let outcome = gw.server.request_profile(id, flow, DEADLINE).await.expect("profile answer");
        assert_eq!((outcome.profile.account, outcome.profile.user.as_str()), (account, user), "{outcome:?}");
        assert!(gw.proven(&outcome), "{user}'s answer must verify under {user}'s own login");
    }

    shared.set_credentials(OTHER_ACCOUNT, None).expect("logout");
    assert_eq!(stamps.accounts(), BTreeSet::from([ACCOUNT]), "a logout stops the account's stamps at once");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while gw.server.stats.logouts.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the gateway was never told of bob's logout");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.server.request_profile(id, OTHER_FLOW, DEADLINE).await, Err(ProfileError::NotLoggedIn(id)));
    let outcome = gw.server.request_profile(id, FLOW, DEADLINE).await.expect("alice's flow is still answered");
    assert!(gw.proven(&outcome) && outcome.profile.user == "alice", "bob's logout must leave alice's login");
    let logins: Vec<(u32, String)> = shared.status().logins.into_iter().map(|l| (l.account, l.user)).collect();
    assert_eq!(logins, vec![(ACCOUNT, "alice".to_owned())], "status shows each account's login");
    stop.send(true).expect("stop");
}

/// Connections that never finish their TLS handshake hold at most
/// `max_unauthenticated` slots: beyond, a new one is closed at once and
/// counted, and once the silent ones go, an agent's session opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_before_authentication_are_bounded() {
    let config =
        ServerConfig { max_unauthenticated: 2, handshake_timeout: Duration::from_secs(30), ..TestGateway::config() };
    let gw = TestGateway::start_with(config).await;
    let dir = TempDir::new("preauth");
    let (id, state) = enrolled(&gw, &dir).await;
    let server = gw.server.clone();
    let held = |n: usize| {
        let server = server.clone();
        async move {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while server.unauthenticated() != n {
                assert!(tokio::time::Instant::now() < deadline, "expected {n} unauthenticated connection(s) held");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    held(0).await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(gw.addr).await.expect("connect"));
    }
    held(2).await;
    let mut third = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let read = tokio::time::timeout(DEADLINE, third.read(&mut [0u8; 1])).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "with both slots held, a third connection must be closed at once, not kept for the handshake: {read:?}"
    );
    let refused = gw.server.stats.unauthenticated_refused.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 1, "the refused connection must be counted");
    drop(silent);
    let (_shared, _identity, stop) = run_agent(&state, None);
    gw.wait_connected(id, DEADLINE).await;
    stop.send(true).expect("stop");
}

/// After a gateway restart, a flow the gate held meanwhile waits for its
/// agent's session through the grace period, well past the profile
/// timeout, and is answered once the agent is back; without grace, the
/// same wait ends at the profile timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_waits_for_its_agent_through_the_session_grace() {
    const PROFILE_TIMEOUT: Duration = Duration::from_millis(300);
    let gw = TestGateway::start().await;
    gw.directory.add_user("carol", "pw");
    let dir = TempDir::new("grace");
    let (id, state) = enrolled(&gw, &dir).await;
    let started = tokio::time::Instant::now();
    let no_grace = gw.server.request_profile(id, FLOW, PROFILE_TIMEOUT).await;
    assert_eq!(no_grace.err(), Some(ProfileError::NoSession(id)), "without grace, no session is an answer at once");
    assert!(started.elapsed() < DEADLINE, "the wait without grace must end at the profile timeout");
    let server = gw.server.clone();
    let asked = tokio::spawn(async move {
        server.request_profile_after_grace(id, FLOW, PROFILE_TIMEOUT, tokio::time::Instant::now() + DEADLINE).await
    });
    tokio::time::sleep(3 * PROFILE_TIMEOUT).await;
    assert!(!asked.is_finished(), "within the grace, a flow must keep waiting for its agent past the profile timeout");
    let (_shared, _identity, stop) = run_agent(&state, Some(("carol", "pw")));
    let outcome = asked.await.expect("request task").expect("the flow must be answered once its agent connects");
    assert!(gw.proven(&outcome), "the answer must come from carol's login on the new session");
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_after_the_gateway_restarts() {
    let mut gw = TestGateway::start().await;
    gw.directory.add_user("carol", "pw");
    let dir = TempDir::new("restart");
    let (id, state) = enrolled(&gw, &dir).await;
    let (shared, _identity, stop) = run_agent(&state, Some(("carol", "pw")));
    gw.wait_connected(id, DEADLINE).await;
    gw.restart().await;
    gw.wait_connected(id, DEADLINE).await;
    let outcome = gw.server.request_profile(id, FLOW, DEADLINE).await.expect("profile answer after the restart");
    // The new session logged in again (the password lives in memory only).
    assert!(gw.proven(&outcome), "the agent must log in again on the new session");
    let status = shared.status();
    assert!(status.connects >= 2, "expected a second connect: {status:?}");
    assert!(status.last_error.is_some(), "the lost session must be reported in status: {status:?}");
    stop.send(true).expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invites_are_refused_with_a_clear_error() {
    let gw = TestGateway::start().await;
    let invite = gw.invite(Duration::from_secs(60));
    let (a, b) = (TempDir::new("inv-a"), TempDir::new("inv-b"));
    enroll(&invite, "first", &StateDir::new(&a.0), DEADLINE).await.expect("first use works");
    let again = enroll(&invite, "second", &StateDir::new(&b.0), DEADLINE).await;
    assert!(
        matches!(&again, Err(EnrollError::Refused(r)) if r.code == ErrorCode::InviteUsed),
        "a reused invite must be refused as used: {again:?}"
    );

    let mut forged = gw.invite(Duration::from_secs(60));
    forged.secret[0] ^= 1;
    let r = enroll(&forged, "x", &StateDir::new(&TempDir::new("inv-c").0), DEADLINE).await;
    assert!(matches!(&r, Err(EnrollError::Refused(e)) if e.code == ErrorCode::BadInvite), "wrong secret: {r:?}");

    let mut expired = gw.invite(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = enroll(&expired, "x", &StateDir::new(&TempDir::new("inv-d").0), DEADLINE).await;
    assert!(matches!(r, Err(EnrollError::Expired)), "the agent must refuse an invite past its expiry: {r:?}");
    expired.expires_unix += 3600; // the gateway's own record still says expired
    let r = enroll(&expired, "x", &StateDir::new(&TempDir::new("inv-e").0), DEADLINE).await;
    assert!(matches!(&r, Err(EnrollError::Refused(e)) if e.code == ErrorCode::InviteExpired), "expired: {r:?}");

    let mut wrong_ca = gw.invite(Duration::from_secs(60));
    wrong_ca.ca_sha256 = [0xab; 32];
    let r = enroll(&wrong_ca, "x", &StateDir::new(&TempDir::new("inv-f").0), DEADLINE).await;
    let msg = r.as_ref().err().map(ToString::to_string).unwrap_or_default();
    assert!(msg.contains("not the one the invite names"), "a gateway with another CA must be refused: {r:?}");
}

/// Raw TLS connection to the enrollment side, for hostile bytes.
async fn raw_tls(gw: &TestGateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = tls::enrollment_config(gw.ca_fingerprint()).expect("client config");
    tls::connect(&gw.addr.to_string(), config, DEADLINE).await.expect("TLS to the test gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_a_clear_error_and_a_closed_session() {
    let gw = TestGateway::start().await;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("garbage message", vec![0, 0, 0, 5, PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff], "undecodable"),
        ("oversize frame", vec![0x00, 0x10, 0x00, 0x00, 1, 2, 3], "exceeds"),
        ("unknown version", vec![0, 0, 0, 2, 9, 0], "version 9"),
        ("empty frame", vec![0, 0, 0, 0], "empty frame"),
    ];
    for (name, bytes, needle) in cases {
        let outcome = tokio::time::timeout(DEADLINE, async {
            let mut conn = Framed::new(raw_tls(&gw).await, MessageCodec::default());
            conn.get_mut().write_all(&bytes).await.expect("writing");
            conn.get_mut().flush().await.expect("flushing");
            let reply = conn.next().await;
            let closed = conn.next().await;
            (reply, closed.is_none() || matches!(closed, Some(Err(_))))
        })
        .await;
        let (reply, closed) = outcome.unwrap_or_else(|_| panic!("{name}: the gateway hung instead of refusing"));
        match reply {
            Some(Ok(Message::Error(r))) => {
                assert_eq!(r.code, ErrorCode::BadFrame, "{name}: {r:?}");
                assert!(r.message.contains(needle), "{name}: error {:?} should mention {needle:?}", r.message);
            }
            other => panic!("{name}: expected an Error message, got {other:?}"),
        }
        assert!(closed, "{name}: the gateway must close the session after refusing");
    }
    // Not TLS at all: the handshake fails and the connection closes.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("tcp");
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 256];
    let r = tokio::time::timeout(DEADLINE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(r.is_ok(), "a plaintext client must be disconnected, not left hanging");
    assert!(gw.server.stats.bad_frames.load(std::sync::atomic::Ordering::Relaxed) >= 4, "bad frames must be counted");
    // And the gateway still works.
    let dir = TempDir::new("after-hostile");
    enrolled(&gw, &dir).await;
}

type RawSession = Framed<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, MessageCodec>;

/// An enrolled agent's session opened by hand, up to the gateway's Welcome.
async fn raw_session(gw: &TestGateway, dir: &TempDir) -> (u32, ackgate_agent::state::Enrollment, RawSession) {
    let (id, state) = enrolled(gw, dir).await;
    let enrollment = state.load().expect("enrollment");
    let conn = open_session(gw, id, &enrollment).await;
    (id, enrollment, conn)
}

/// Another session of an enrolled agent, up to the gateway's Welcome.
async fn open_session(gw: &TestGateway, id: u32, enrollment: &ackgate_agent::state::Enrollment) -> RawSession {
    let config = tls::session_config(&enrollment.ca, &enrollment.cert, &enrollment.key).expect("session config");
    let stream = tls::connect(&gw.addr.to_string(), config, DEADLINE).await.expect("session TLS");
    let mut conn = Framed::new(stream, MessageCodec::default());
    let hello =
        Hello { agent_id: id, install_serial: enrollment.info.install_serial.clone(), agent_version: "t".into() };
    conn.send(Message::Hello(hello)).await.expect("hello");
    assert!(matches!(conn.next().await, Some(Ok(Message::Welcome(_)))), "expected Welcome");
    conn
}

/// A reconnecting agent's new session ends its old one at once, instead of
/// leaving it to run out its heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_of_an_agent_ends_its_old_one() {
    let gw = TestGateway::start().await;
    let dir = TempDir::new("replace");
    let (id, enrollment, mut old) = raw_session(&gw, &dir).await;
    let _new = open_session(&gw, id, &enrollment).await;
    let ended = tokio::time::timeout(HEARTBEAT * 2, async {
        loop {
            match old.next().await {
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(other)) => panic!("the old session got {other:?}"),
                None | Some(Err(_)) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the old session must be closed well before three missed heartbeats");
    gw.wait_connected(id, DEADLINE).await;
}

/// The first message of a login of `user` (the agent's half is dropped:
/// this login never finishes).
fn login_start(user: &str, password: &str) -> Message {
    Message::LoginStart(LoginClient::start(user, 0, password).expect("client start").1)
}

/// A login cut short by a newer one counts as failed (the agent never
/// proved the password), the newer one goes through, and an agent that
/// piles up login messages is cut off with a clear error instead of
/// queueing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_login_counts_as_failed_and_a_login_flood_is_cut_off() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("erin", "right");
    let dir = TempDir::new("logins");
    let (id, _, mut conn) = raw_session(&gw, &dir).await;
    conn.send(login_start("erin", "right")).await.expect("login");
    loop {
        match tokio::time::timeout(DEADLINE, conn.next()).await {
            Ok(Some(Ok(Message::LoginChallenge(_)))) => break,
            Ok(Some(Ok(Message::Ping(n)))) => conn.send(Message::Pong(n)).await.expect("pong"),
            other => panic!("expected a LoginChallenge, got {other:?}"),
        }
    }
    let (verdict, key) = login_verdict(&mut conn, "erin", "right").await;
    assert!(verdict.accepted && key.is_some(), "the newer login goes through: {verdict:?}");
    let failures = gw.directory.login_failures();
    assert_eq!(failures, vec![("erin".to_owned(), id, "127.0.0.1".to_owned())], "the abandoned login is a failure");

    gw.logins.hold();
    conn.send(login_start("erin", "right")).await.expect("login");
    held_checks(&gw, 1).await;
    for _ in 0..4 * LOGINS_QUEUED {
        if conn.send(login_start("erin", "right")).await.is_err() {
            break;
        }
    }
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            match conn.next().await {
                Some(Ok(Message::Error(report))) => return Some(report),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the flooding session must be closed within the deadline");
    gw.logins.release();
    let report = refused.expect("the gateway must say why it closes the session");
    assert_eq!(report.code, ErrorCode::TooManyLogins, "{report:?}");
    assert!(matches!(conn.next().await, None | Some(Err(_))), "the session must be closed after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_forged_profile_answers_are_refused() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("dave", "pw");
    let dir = TempDir::new("replay");
    let (id, enrollment, mut conn) = raw_session(&gw, &dir).await;
    let key = logged_in(&mut conn, "dave", "pw").await;
    let server = gw.server.clone();
    let asked = tokio::spawn(async move { server.request_profile(id, FLOW, DEADLINE).await });
    let req = next_profile_request(&mut conn).await;
    let identity = identity(enrollment, [1; 32]);
    let good = session::answer(&identity, &req, 0, "dave".into(), &key);
    let mut wrong_nonce = good.clone();
    wrong_nonce.nonce[0] ^= 1;
    conn.send(Message::ProfileAnswer(wrong_nonce)).await.expect("forged answer");
    conn.send(Message::ProfileAnswer(good.clone())).await.expect("answer");
    conn.send(Message::ProfileAnswer(good)).await.expect("replayed answer");
    let outcome = asked.await.expect("join").expect("profile outcome");
    assert!(gw.proven(&outcome), "the genuine answer must verify");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let refused = || gw.server.stats.answers_refused.load(std::sync::atomic::Ordering::Relaxed);
    while refused() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused(), 2, "the forged-nonce answer and the replay must both be refused");
}

/// A profile request whose session ends before the answer fails at once,
/// instead of waiting out its deadline: its flow gets the default
/// response now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_session_that_ends_fails_at_once() {
    let gw = TestGateway::start().await;
    let dir = TempDir::new("ends");
    let (id, _, mut conn) = raw_session(&gw, &dir).await;
    let server = gw.server.clone();
    let asked = tokio::spawn(async move { server.request_profile(id, FLOW, DEADLINE).await });
    next_profile_request(&mut conn).await;
    let ended = std::time::Instant::now();
    drop(conn);
    let outcome = asked.await.expect("join");
    assert_eq!(outcome, Err(ProfileError::SessionClosed(id)), "the request must fail with its session");
    assert!(ended.elapsed() < DEADLINE / 4, "it failed {:?} after the session ended", ended.elapsed());
}

/// A stamped handshake the agent never saw (a copy of its key in use
/// elsewhere): the agent refuses to vouch for it even with a user logged
/// in, and the gateway counts it as a suspected stolen key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_profiles_for_flows_it_did_not_stamp() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("alice", "pw");
    let dir = TempDir::new("unstamped");
    let (id, state) = enrolled(&gw, &dir).await;
    let (shared, _identity, stop) = run_agent(&state, Some(("alice", "pw")));
    gw.wait_connected(id, DEADLINE).await;
    assert!(wait_login(&shared).await.accepted, "the login must be accepted");
    let foreign = [
        FlowSummary { client: SocketAddr::from(([10, 0, 0, 3], 40000)), ..FLOW },
        FlowSummary { client: SocketAddr::from(([10, 0, 0, 2], 40001)), ..FLOW },
        // The same ports and ISNs over IPv6.
        FlowSummary {
            client: "[2001:db8::2]:40000".parse().expect("address"),
            service: "[2001:db8::1]:443".parse().expect("address"),
            ..FLOW
        },
        FlowSummary { client_isn: FLOW.client_isn + 1, ..FLOW },
        FlowSummary { server_isn: FLOW.server_isn + 1, ..FLOW },
    ];
    for flow in foreign {
        let asked = gw.server.request_profile(id, flow, DEADLINE).await;
        assert_eq!(asked, Err(ProfileError::NotStamped(id)), "a flow the agent did not stamp ({flow:?})");
    }
    let outcome = gw.server.request_profile(id, FLOW, DEADLINE).await.expect("the stamped flow is answered");
    assert!(gw.proven(&outcome) && outcome.profile.user == "alice", "the stamped flow must be vouched for");
    let not_stamped = gw.server.stats.not_stamped.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(not_stamped, 5, "each refusal must be counted");
    assert_eq!(shared.status().profile_refusals, 5, "the agent must count its refusals too");
    let _ = stop.send(true);
}

/// `logout` tells the gateway: an answer signed with the old proof key,
/// sent after the logout, no longer verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_kills_the_proof_key_at_the_gateway() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("dave", "pw");
    let dir = TempDir::new("logout");
    let (id, enrollment, mut conn) = raw_session(&gw, &dir).await;
    let key = logged_in(&mut conn, "dave", "pw").await;
    conn.send(Message::Logout(Logout { account: 0 })).await.expect("logout");
    let server = gw.server.clone();
    let asked = tokio::spawn(async move { server.request_profile(id, FLOW, DEADLINE).await });
    let req = next_profile_request(&mut conn).await;
    let identity = identity(enrollment, [1; 32]);
    conn.send(Message::ProfileAnswer(session::answer(&identity, &req, 0, "dave".into(), &key))).await.expect("answer");
    let outcome = asked.await.expect("join").expect("profile outcome");
    assert!(!gw.proven(&outcome), "a proof under a key the user logged out of must not verify");
    assert_eq!(gw.server.stats.logouts.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// An enrollment whose certificate request cannot be signed is refused
/// before the invite is spent: the same invite still enrolls afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_certificate_request_leaves_the_invite_unspent() {
    let gw = TestGateway::start().await;
    let invite = gw.invite(Duration::from_secs(60));
    let mut conn = Framed::new(raw_tls(&gw).await, MessageCodec::default());
    let bad = EnrollRequest {
        invite_id: invite.invite_id,
        secret: invite.secret,
        csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        hostname: "laptop".into(),
        install_serial: "serial".into(),
    };
    conn.send(Message::EnrollRequest(bad)).await.expect("enroll request");
    match tokio::time::timeout(DEADLINE, conn.next()).await {
        Ok(Some(Ok(Message::Error(report)))) => {
            assert_eq!(report.code, ErrorCode::BadFrame, "{report:?}");
            assert!(report.message.contains("certificate request"), "{report:?}");
        }
        other => panic!("expected an Error for the unusable request, got {other:?}"),
    }
    let dir = TempDir::new("csr");
    enroll(&invite, "laptop", &StateDir::new(&dir.0), DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("the invite must still be unspent after a refused request: {e}"));
}

/// Logs `user` in on a raw session; returns the proof key of the accepted
/// login.
async fn logged_in(conn: &mut RawSession, user: &str, password: &str) -> [u8; 32] {
    let (r, key) = login_verdict(conn, user, password).await;
    assert!(r.accepted, "expected an accepted login: {r:?}");
    key.expect("an accepted login has a proof key")
}

/// The next profile request on a raw session (answering pings meanwhile).
async fn next_profile_request(conn: &mut RawSession) -> ackgate_common::proto::ProfileRequest {
    loop {
        match tokio::time::timeout(DEADLINE, conn.next()).await {
            Ok(Some(Ok(Message::ProfileRequest(r)))) => return r,
            Ok(Some(Ok(Message::Ping(n)))) => conn.send(Message::Pong(n)).await.expect("pong"),
            other => panic!("expected a ProfileRequest, got {other:?}"),
        }
    }
}

/// Runs a login on a raw session as the agent does (claim included) and
/// returns the gateway's verdict, with the proof key the agent derived
/// when the password opened its envelope.
async fn login_verdict(
    conn: &mut RawSession,
    user: &str,
    password: &str,
) -> (ackgate_common::proto::LoginResult, Option<[u8; 32]>) {
    let (client, start) = LoginClient::start(user, 0, password).expect("client start");
    conn.send(Message::LoginStart(start)).await.expect("login");
    let mut client = Some(client);
    let mut key = None;
    loop {
        match tokio::time::timeout(DEADLINE, conn.next()).await {
            Ok(Some(Ok(Message::ClaimChallenge(c)))) => {
                let finish = client.as_ref().expect("a claim before the finish").claim(&c.registration_response);
                conn.send(Message::ClaimFinish(finish.expect("claim"))).await.expect("claim finish");
            }
            Ok(Some(Ok(Message::LoginChallenge(c)))) => {
                let done = client.take().expect("one challenge").finish(&c.credential_response).expect("finish");
                key = done.proof_key.map(|k| *k);
                conn.send(Message::LoginFinish(done.message)).await.expect("login finish");
            }
            Ok(Some(Ok(Message::LoginResult(r)))) => return (r, key),
            Ok(Some(Ok(Message::Ping(n)))) => conn.send(Message::Pong(n)).await.expect("pong"),
            other => panic!("expected a login message, got {other:?}"),
        }
    }
}

/// Failed logins back off per user and agent (a login during the backoff
/// is refused without a password check), every failure is recorded with
/// its user, agent and source, and the lockout threshold locks the user
/// until an administrator unlocks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_back_off_and_lock_the_user_out() {
    let backoff = Duration::from_secs(1);
    let policy = LoginPolicy { backoff, backoff_max: 2 * backoff, lockout_after: 2 };
    let gw = TestGateway::start_with(ServerConfig { login: policy, ..TestGateway::config() }).await;
    gw.directory.add_user("erin", "right");
    let dir = TempDir::new("guess");
    let (id, _, mut conn) = raw_session(&gw, &dir).await;
    let stat = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);

    let (first, _) = login_verdict(&mut conn, "erin", "guess 1").await;
    assert!(!first.accepted && first.message.contains("wrong"), "{first:?}");
    let (throttled, _) = login_verdict(&mut conn, "erin", "right").await;
    assert!(!throttled.accepted && throttled.message.contains("try again"), "within the backoff: {throttled:?}");
    assert_eq!(stat(&gw.server.stats.logins_throttled), 1);

    tokio::time::sleep(backoff).await;
    let (second, _) = login_verdict(&mut conn, "erin", "guess 2").await;
    assert!(!second.accepted && second.message.contains("wrong"), "{second:?}");
    tokio::time::sleep(2 * backoff).await;
    let (locked, _) = login_verdict(&mut conn, "erin", "right").await;
    assert!(!locked.accepted && locked.message.contains("locked"), "the second failure locks erin: {locked:?}");
    let failures = gw.directory.login_failures();
    let expected = vec![("erin".to_owned(), id, "127.0.0.1".to_owned()); 2];
    assert_eq!(failures, expected, "each failure is recorded with user, agent and source (a throttled one is not)");

    gw.directory.unlock("erin");
    gw.server.forgive_logins("erin");
    let (unlocked, _) = login_verdict(&mut conn, "erin", "right").await;
    assert!(unlocked.accepted, "unlocked, the right password works again: {unlocked:?}");
}

/// One user's logins run one at a time: a user under attack from several
/// sessions holds at most one of the login workers, and another user's
/// login gets one meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_under_attack_holds_one_login_worker() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("victim", "secret");
    gw.directory.add_user("alice", "pw");
    gw.logins.hold();
    let dirs = [TempDir::new("attack1"), TempDir::new("attack2"), TempDir::new("bystander")];
    let mut sessions = Vec::new();
    for dir in &dirs {
        sessions.push(raw_session(&gw, dir).await.2);
    }
    for conn in &mut sessions[..2] {
        conn.send(login_start("victim", "guess")).await.expect("login");
    }
    let waiting = |want: &[&str]| {
        let gw = &gw;
        let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        async move {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while gw.logins.waiting_users() != want {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "checks under way: {:?}, expected {want:?}",
                    gw.logins.waiting_users()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    waiting(&["victim"]).await;
    let (alice_client, alice_start) = LoginClient::start("alice", 0, "pw").expect("client start");
    sessions[2].send(Message::LoginStart(alice_start)).await.expect("login");
    waiting(&["alice", "victim"]).await;
    gw.logins.release();
    let mut alice_client = Some(alice_client);
    let alice = loop {
        match tokio::time::timeout(DEADLINE, sessions[2].next()).await {
            Ok(Some(Ok(Message::LoginChallenge(c)))) => {
                let done = alice_client.take().expect("one challenge").finish(&c.credential_response).expect("finish");
                sessions[2].send(Message::LoginFinish(done.message)).await.expect("login finish");
            }
            Ok(Some(Ok(Message::LoginResult(r)))) => break r,
            Ok(Some(Ok(Message::Ping(n)))) => sessions[2].send(Message::Pong(n)).await.expect("pong"),
            other => panic!("expected alice's LoginResult, got {other:?}"),
        }
    };
    assert!(alice.accepted, "{alice:?}");
}

/// A session certificate with a third of its validity left is renewed over
/// the live session, without a new invite: the agent stores the new
/// certificate and key, the gateway binds them, and the next session opens
/// with them. The old certificate stays valid at the gateway until it
/// expires, in case the agent never stored the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_certificate_is_renewed_before_it_expires() {
    // Valid for a minute (and backdated an hour): due at once.
    let config = ServerConfig { agent_cert_validity: Duration::from_secs(60), ..TestGateway::config() };
    let mut gw = TestGateway::start_with(config).await;
    let dir = TempDir::new("renew");
    let (id, state) = enrolled(&gw, &dir).await;
    let old = state.load().expect("enrollment");
    let enrollment = state.load().expect("enrollment");
    let identity = Arc::new(Identity::new(enrollment, [7; 32], Some(StateDir::new(&dir.0))));
    let shared = Shared::new(&old.info.gateway, Arc::new(TestStamps::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(session::run(identity.clone(), shared.clone(), fast_reconnect(), stopped));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while shared.status().certificate_renewals == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no renewal within {DEADLINE:?}: {:?}", shared.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = state.load().expect("the renewed state loads");
    assert_ne!(stored.cert, old.cert, "the renewed certificate must be stored");
    assert_eq!(identity.certificate(), stored.cert, "and used from the next session on");
    let bound = gw.directory.agent(id).and_then(|a| a.cert_sha256);
    assert_eq!(bound, Some(Sha256::digest(&stored.cert).into()), "the gateway binds the renewed certificate");
    assert_eq!(gw.server.stats.certificates_renewed.load(std::sync::atomic::Ordering::Relaxed), 1);
    let _old_session = open_session(&gw, id, &old).await;

    gw.restart().await;
    gw.wait_connected(id, DEADLINE).await;
    assert_eq!(shared.status().state, "connected", "the renewed certificate opens the next session");
    // The agent renews again (its certificate is due at once) into the
    // state directory: it ends before the directory goes.
    let _ = stop.send(true);
    let _ = tokio::time::timeout(DEADLINE, agent).await;
}

/// The install serial is the enrollment's: a session that says another is
/// refused, and a profile that names another gives no profile to decide on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_install_serial_than_the_enrollments_is_refused() {
    let gw = TestGateway::start().await;
    gw.directory.add_user("dave", "pw");
    let dir = TempDir::new("serial");
    let (id, mut enrollment, mut conn) = raw_session(&gw, &dir).await;
    let key = logged_in(&mut conn, "dave", "pw").await;
    let server = gw.server.clone();
    let asked = tokio::spawn(async move { server.request_profile(id, FLOW, DEADLINE).await });
    let req = next_profile_request(&mut conn).await;
    let config = tls::session_config(&enrollment.ca, &enrollment.cert, &enrollment.key).expect("session config");
    enrollment.info.install_serial = "copied-elsewhere".into();
    let identity = identity(enrollment, [1; 32]);
    conn.send(Message::ProfileAnswer(session::answer(&identity, &req, 0, "dave".into(), &key))).await.expect("answer");
    let outcome = asked.await.expect("join");
    assert_eq!(outcome, Err(ProfileError::SerialMismatch(id)), "a profile with another install serial");

    let stream = tls::connect(&gw.addr.to_string(), config, DEADLINE).await.expect("session TLS");
    let mut other = Framed::new(stream, MessageCodec::default());
    let hello = Hello { agent_id: id, install_serial: "copied-elsewhere".into(), agent_version: "t".into() };
    other.send(Message::Hello(hello)).await.expect("hello");
    match tokio::time::timeout(DEADLINE, other.next()).await {
        Ok(Some(Ok(Message::Error(report)))) => {
            assert_eq!(report.code, ErrorCode::UnknownAgent, "{report:?}");
            assert!(report.message.contains("install serial"), "{report:?}");
        }
        other => panic!("expected the session to be refused, got {other:?}"),
    }
    assert_eq!(gw.server.stats.serial_mismatches.load(std::sync::atomic::Ordering::Relaxed), 2);
}

/// The listener's store calls run on the blocking pool: enrollments whose
/// store writes wait (more of them than the runtime has threads) hold up
/// neither another agent's session nor the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_that_wait_hold_up_nothing_else() {
    const WAITING: usize = 3;
    let gw = TestGateway::start().await;
    let dir = TempDir::new("store-wait");
    let (id, state) = enrolled(&gw, &dir).await;
    let enrollment = state.load().expect("enrollment");
    gw.store_writes.hold();
    let invites: Vec<_> = (0..WAITING).map(|_| gw.invite(Duration::from_secs(60))).collect();
    let waiting: Vec<_> = invites
        .into_iter()
        .enumerate()
        .map(|(i, invite)| {
            tokio::spawn(async move {
                let dir = TempDir::new(&format!("store-wait-{i}"));
                enroll(&invite, "waiting", &StateDir::new(&dir.0), Duration::from_secs(30)).await
            })
        })
        .collect();
    // Should the runtime's threads be stuck in the store, the hold must
    // still end for the test to report it.
    let (store, (done, finished)) = (gw.store_writes.clone(), std::sync::mpsc::channel::<()>());
    let watchdog = std::thread::spawn(move || {
        let _ = finished.recv_timeout(Duration::from_secs(5));
        store.release();
    });
    let deadline = std::time::Instant::now() + DEADLINE;
    while gw.store_writes.waiting() < 2 {
        assert!(std::time::Instant::now() < deadline, "the enrollments never reached the store");
        std::thread::sleep(Duration::from_millis(10));
    }
    let asked = std::time::Instant::now();
    let _session = open_session(&gw, id, &enrollment).await;
    let took = asked.elapsed();
    let stuck = gw.store_writes.waiting();
    let _ = done.send(());
    assert!(
        took < Duration::from_secs(2),
        "a session took {took:?} to open while {stuck} enrollments waited on the store: store calls hold runtime threads"
    );
    assert_eq!(stuck, WAITING, "every enrollment waits on the store at once, none on a runtime thread");
    for w in waiting {
        w.await.expect("enrollment task").unwrap_or_else(|e| panic!("a held enrollment must complete: {e}"));
    }
    watchdog.join().expect("watchdog");
}
