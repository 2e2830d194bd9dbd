//! The agent listener (gateway-user's `AgentServer`, in process as the
//! session tests run it) under mutated frames: enrollment requests on
//! connections without a certificate; `Hello` and every session message on
//! an enrolled agent's connections; the last step of a login; a profile
//! answer to a live request.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};

use ackgate_agent::enroll::enroll;
use ackgate_agent::state::{Enrollment, StateDir};
use ackgate_agent::tls;
use ackgate_common::proto::pake::LoginClient;
use ackgate_common::proto::{
    ClaimFinish, EnrollRequest, ErrorCode, ErrorReport, FlowSummary, Hello, Invite, LoginFinish, Logout, Message,
    MessageCodec, Profile, ProfileAnswer, ProfileRefusal, ProfileRequest, RefusalReason, RenewCertificate, Welcome,
    profile_proof,
};
use ackgate_gateway::agents::SessionStats;
use futures_util::SinkExt as _;
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

use super::frames::{self, Decoded, mutated};
use super::{DEADLINE, End, Exchange, Scratch, TargetReport, certificate_request, exchange, read_until, violation};
use crate::fuzz::{Violations, case_rng};
use crate::test_gateway::TestGateway;

const TARGET: &str = "agent listener";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse";
/// The local account the fuzzing agent logs in and answers for.
const ACCOUNT: u32 = 1000;
const MACHINE: [u8; 32] = [7; 32];
const FLOW: FlowSummary = FlowSummary {
    client: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000)),
    service: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443)),
    client_isn: 11,
    server_isn: 22,
};
/// The same flow over IPv6: every other case asks about it.
const FLOW6: FlowSummary = FlowSummary {
    client: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), 40000, 0, 0)),
    service: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 443, 0, 0)),
    client_isn: 11,
    server_isn: 22,
};

type Conn = Framed<TlsStream<TcpStream>, MessageCodec>;

/// The listener's counters, by name.
fn counters(s: &SessionStats) -> Vec<(&'static str, u64)> {
    let all: [(&str, &AtomicU64); 14] = [
        ("enrolled", &s.enrolled),
        ("enroll_refused", &s.enroll_refused),
        ("sessions_opened", &s.sessions_opened),
        ("sessions_refused", &s.sessions_refused),
        ("bad_frames", &s.bad_frames),
        ("logins_accepted", &s.logins_accepted),
        ("logins_refused", &s.logins_refused),
        ("answers_refused", &s.answers_refused),
        ("serial_mismatches", &s.serial_mismatches),
        ("not_stamped", &s.not_stamped),
        ("not_logged_in", &s.not_logged_in),
        ("logouts", &s.logouts),
        ("certificates_renewed", &s.certificates_renewed),
        ("unauthenticated_refused", &s.unauthenticated_refused),
    ];
    all.iter().map(|(k, v)| (*k, v.load(Ordering::SeqCst))).collect()
}

fn get(c: &[(&'static str, u64)], name: &str) -> u64 {
    c.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v)
}

/// Counters that moved between two readings.
fn moved(before: &[(&'static str, u64)], after: &[(&'static str, u64)], name: &str) -> u64 {
    get(after, name) - get(before, name)
}

struct AgentFuzz {
    gw: TestGateway,
    _dir: Scratch,
    agent_id: u32,
    enrollment: Enrollment,
    csr: Vec<u8>,
    invite: Invite,
    /// A live session of the agent, and the proof key of its account's
    /// login if it has one.
    session: Option<Conn>,
    proof_key: Option<[u8; 32]>,
    report: TargetReport,
}

pub(super) async fn run(seed: u64, cases: u64, violations: &mut Violations) -> TargetReport {
    let gw = TestGateway::start().await;
    gw.directory.add_user(USER, PASSWORD);
    let dir = Scratch::new("agent");
    let (agent_id, enrollment) = enrolled(&gw, &dir).await;
    let invite = gw.invite(std::time::Duration::from_secs(3600));
    let start = counters(&gw.server.stats);
    let mut fuzz = AgentFuzz {
        gw,
        _dir: dir,
        agent_id,
        enrollment,
        csr: certificate_request(),
        invite,
        session: None,
        proof_key: None,
        report: TargetReport { name: TARGET, ..TargetReport::default() },
    };
    for case in 0..cases {
        let mut rng = case_rng(seed, case);
        // A login (its own case, and the one a profile case needs on a
        // fresh session) costs the harness an argon2id run (the agent's
        // half): those cases are the rarest.
        let (kind, label) = match rng.random_range(0..100) {
            0..20 => ("enroll", fuzz.enroll_case(&mut rng, case, violations).await),
            20..30 => ("hello", fuzz.hello_case(&mut rng, case, violations).await),
            30..87 => ("session", fuzz.session_case(&mut rng, case, violations).await),
            87..92 => ("login", fuzz.login_case(&mut rng, case, violations).await),
            _ => ("profile", fuzz.profile_case(&mut rng, case, violations).await),
        };
        *fuzz.report.outcomes.entry(format!("{kind}: {label}")).or_default() += 1;
        fuzz.report.cases += 1;
    }
    fuzz.session = None;
    fuzz.well_formed_client_is_served(cases, violations).await;
    let end = counters(&fuzz.gw.server.stats);
    fuzz.report.counters = end.iter().map(|(k, v)| (*k, v - get(&start, k))).collect();
    fuzz.report
}

/// Enrolls an agent with a fresh invite, as `ackgate-agent enroll` does.
async fn enrolled(gw: &TestGateway, dir: &Scratch) -> (u32, Enrollment) {
    let state = StateDir::new(&dir.0.join("state"));
    let id = enroll(&gw.invite(std::time::Duration::from_secs(60)), "fuzz", &state, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("enrolling against the agent listener: {e}"));
    (id, state.load().unwrap_or_else(|e| panic!("loading the enrollment: {e}")))
}

impl AgentFuzz {
    fn hello(&self) -> Hello {
        Hello {
            agent_id: self.agent_id,
            install_serial: self.enrollment.info.install_serial.clone(),
            agent_version: "fuzz".into(),
        }
    }

    async fn connect_unauthenticated(&self) -> Option<Conn> {
        let config = tls::enrollment_config(self.gw.ca_fingerprint()).ok()?;
        let stream = tls::connect(&self.gw.addr.to_string(), config, DEADLINE).await.ok()?;
        Some(Framed::new(stream, MessageCodec::default()))
    }

    async fn connect_enrolled(&self, e: &Enrollment) -> Option<Conn> {
        let config = tls::session_config(&e.ca, &e.cert, &e.key).ok()?;
        let stream = tls::connect(&self.gw.addr.to_string(), config, DEADLINE).await.ok()?;
        Some(Framed::new(stream, MessageCodec::default()))
    }

    /// The agent's session, opened if there is none.
    async fn session(&mut self) -> Option<&mut Conn> {
        if self.session.is_none() {
            self.drop_session();
            let mut conn = self.connect_enrolled(&self.enrollment).await?;
            conn.send(Message::Hello(self.hello())).await.ok()?;
            read_until(&mut conn, |m| matches!(m, Message::Welcome(_)).then_some(())).await?;
            self.session = Some(conn);
        }
        self.session.as_mut()
    }

    /// Forgets the session (the server ends it when the next one opens).
    fn drop_session(&mut self) {
        self.session = None;
        self.proof_key = None;
    }

    /// A session with its account logged in. A genuine login runs on a
    /// fresh session: on one that fuzzing went through, a stale challenge
    /// could answer it.
    async fn logged_in(&mut self) -> Option<[u8; 32]> {
        if let Some(key) = self.proof_key {
            return Some(key);
        }
        self.drop_session();
        let conn = self.session().await?;
        let key = login(conn).await?;
        self.proof_key = Some(key);
        Some(key)
    }

    /// Checks what every case must hold: an answer or a close in time, a
    /// refusal for a frame the codec cannot read, the refusals counted.
    fn common_checks(
        &self,
        case: u64,
        bytes: &[u8],
        ex: &Exchange,
        before: &[(&'static str, u64)],
        violations: &mut Violations,
    ) -> Decoded {
        let decoded = Decoded::of(bytes);
        let after = counters(&self.gw.server.stats);
        if ex.end == End::Hung {
            violation(violations, TARGET, case, format!("neither an answer nor a close within {DEADLINE:?}"), bytes);
        }
        if let (true, Some(error)) = (decoded.messages.is_empty(), &decoded.error)
            && ex.frame_refusals() != 1
        {
            let what = format!("a frame the codec refuses ({error}) got {}, not one BadFrame refusal", ex.label());
            violation(violations, TARGET, case, what, bytes);
        }
        if moved(before, &after, "bad_frames") != ex.frame_refusals() {
            let what = format!(
                "bad_frames moved by {} for {} frame refusal(s)",
                moved(before, &after, "bad_frames"),
                ex.frame_refusals()
            );
            violation(violations, TARGET, case, what, bytes);
        }
        decoded
    }

    async fn enroll_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        let seed = if rng.random_bool(0.85) {
            Message::EnrollRequest(EnrollRequest {
                invite_id: self.invite.invite_id,
                secret: self.invite.secret,
                csr_der: self.csr.clone(),
                hostname: "fuzz".into(),
                install_serial: "fuzz-serial".into(),
            })
        } else {
            Message::Hello(self.hello())
        };
        let bytes = mutated(seed, rng);
        let Some(mut conn) = self.connect_unauthenticated().await else {
            violation(violations, TARGET, case, "the listener refused a TLS connection".into(), &bytes);
            return "no connection".into();
        };
        let before = counters(&self.gw.server.stats);
        let ex = exchange(&mut conn, &bytes, rng.random()).await;
        let decoded = self.common_checks(case, &bytes, &ex, &before, violations);
        let after = counters(&self.gw.server.stats);
        let answered = ex.got.iter().filter(|m| matches!(m, Message::Enrolled(_))).count() as u64;
        let genuine = matches!(decoded.messages.first(),
            Some(Message::EnrollRequest(r)) if (r.invite_id, r.secret) == (self.invite.invite_id, self.invite.secret));
        if answered > 0 && !genuine {
            violation(violations, TARGET, case, "enrolled without the invite's secret".into(), &bytes);
        }
        if moved(&before, &after, "enrolled") != answered {
            let what = format!("enrolled moved by {} for {answered} answer(s)", moved(&before, &after, "enrolled"));
            violation(violations, TARGET, case, what, &bytes);
        }
        if answered > 0 {
            // Spent: the next requests carry a fresh one.
            self.invite = self.gw.invite(std::time::Duration::from_secs(3600));
        }
        if ex.end == End::Alive {
            violation(
                violations,
                TARGET,
                case,
                "an enrollment connection stayed open after its request".into(),
                &bytes,
            );
        }
        ex.label()
    }

    async fn hello_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        let seed = if rng.random_bool(0.9) { Message::Hello(self.hello()) } else { Message::Ping(rng.random()) };
        let bytes = mutated(seed, rng);
        // A new session of the agent ends the old one.
        self.drop_session();
        let Some(mut conn) = self.connect_enrolled(&self.enrollment).await else {
            violation(violations, TARGET, case, "the listener refused the agent's TLS connection".into(), &bytes);
            return "no connection".into();
        };
        let before = counters(&self.gw.server.stats);
        let ex = exchange(&mut conn, &bytes, rng.random()).await;
        let decoded = self.common_checks(case, &bytes, &ex, &before, violations);
        let after = counters(&self.gw.server.stats);
        let welcomed = ex.got.iter().filter(|m| matches!(m, Message::Welcome(_))).count() as u64;
        let genuine = matches!(decoded.messages.first(),
            Some(Message::Hello(h)) if (h.agent_id, &h.install_serial) == (self.agent_id, &self.enrollment.info.install_serial));
        if welcomed > 0 && !genuine {
            violation(violations, TARGET, case, "a session opened without the agent's own Hello".into(), &bytes);
        }
        if moved(&before, &after, "sessions_opened") != welcomed {
            let what = format!("sessions_opened moved by {} for {welcomed}", moved(&before, &after, "sessions_opened"));
            violation(violations, TARGET, case, what, &bytes);
        }
        if ex.end == End::Alive {
            self.session = Some(conn);
        }
        ex.label()
    }

    async fn session_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        let seed = self.session_seed(rng);
        let bytes = mutated(seed, rng);
        let probe = rng.random();
        let server = self.gw.server.clone();
        let Some(conn) = self.session().await else {
            violation(violations, TARGET, case, "the agent could not open a session".into(), &bytes);
            return "no session".into();
        };
        let before = counters(&server.stats);
        let ex = exchange(conn, &bytes, probe).await;
        let decoded = self.common_checks(case, &bytes, &ex, &before, violations);
        let after = counters(&self.gw.server.stats);
        // No genuine login step is sent in these cases: nothing may log
        // in or enroll.
        for name in ["enrolled", "logins_accepted"] {
            if moved(&before, &after, name) > 0 {
                violation(violations, TARGET, case, format!("{name} moved in a session case"), &bytes);
            }
        }
        if touches_login(&decoded) {
            self.proof_key = None;
        }
        if ex.end != End::Alive {
            self.drop_session();
        }
        ex.label()
    }

    /// A message an agent sends on a session, or one out of place.
    fn session_seed(&self, rng: &mut ChaCha8Rng) -> Message {
        match rng.random_range(0..13) {
            0 => Message::Ping(rng.random()),
            1 => Message::Pong(rng.random()),
            2 => Message::Logout(Logout { account: ACCOUNT }),
            3 | 4 => {
                let user = if rng.random_bool(0.7) { USER } else { "mallory" };
                let (_, start) = LoginClient::start(user, ACCOUNT, "guess").unwrap_or_else(|e| panic!("KE1: {e}"));
                Message::LoginStart(start)
            }
            5 => Message::LoginFinish(LoginFinish { credential_finalization: Some(vec![0; 64]) }),
            6 => Message::ClaimFinish(ClaimFinish { registration_upload: vec![0; 192] }),
            7 => Message::ProfileRefused(ProfileRefusal {
                request_id: rng.random_range(0..4),
                nonce: rng.random(),
                reason: RefusalReason::NotStamped,
            }),
            8 => Message::RenewCertificate(RenewCertificate { csr_der: self.csr.clone() }),
            9 => Message::Error(ErrorReport { code: ErrorCode::Internal, message: "fuzz".into() }),
            10 => Message::Welcome(Welcome { session_id: 1, heartbeat_secs: 1 }),
            11 => Message::Hello(self.hello()),
            _ => Message::ProfileAnswer(ProfileAnswer {
                request_id: rng.random_range(0..4),
                nonce: rng.random(),
                profile: Profile {
                    user: USER.into(),
                    account: ACCOUNT,
                    proof: rng.random(),
                    machine: MACHINE,
                    install_serial: self.enrollment.info.install_serial.clone(),
                },
            }),
        }
    }

    /// A genuine login up to its last step on a fresh session, then that
    /// step (KE3) mutated: accepted only if it is still the genuine one.
    async fn login_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        self.drop_session();
        let server = self.gw.server.clone();
        let Some(conn) = self.session().await else {
            violation(violations, TARGET, case, "the agent could not open a session".into(), &[]);
            return "no session".into();
        };
        let Some((client, start)) = LoginClient::start(USER, ACCOUNT, PASSWORD).ok() else {
            return "no KE1".into();
        };
        if conn.send(Message::LoginStart(start)).await.is_err() {
            self.drop_session();
            return "session lost before the finish".into();
        }
        let challenge = read_until(conn, |m| match m {
            Message::LoginChallenge(c) => Some(c.credential_response),
            _ => None,
        })
        .await;
        let Some(finished) = challenge.and_then(|c| client.finish(&c).ok()) else {
            violation(violations, TARGET, case, "a genuine login got no challenge".into(), &[]);
            self.drop_session();
            return "no challenge".into();
        };
        let genuine = finished.message;
        let bytes = mutated(Message::LoginFinish(genuine.clone()), rng);
        let before = counters(&server.stats);
        let ex = exchange(conn, &bytes, rng.random()).await;
        let mut verdicts: Vec<bool> = ex
            .got
            .iter()
            .filter_map(|m| match m {
                Message::LoginResult(r) => Some(r.accepted),
                _ => None,
            })
            .collect();
        let decoded = Decoded::of(&bytes);
        let finishes = decoded.messages.iter().any(|m| matches!(m, Message::LoginFinish(_)));
        if verdicts.is_empty() && finishes && ex.end == End::Alive {
            // The verdict may trail the pong: the check runs off the
            // session's loop.
            let verdict = read_until(conn, |m| match m {
                Message::LoginResult(r) => Some(r.accepted),
                _ => None,
            })
            .await;
            verdicts.extend(verdict);
        }
        let decoded = self.common_checks(case, &bytes, &ex, &before, violations);
        let after = counters(&self.gw.server.stats);
        let sent_genuine =
            decoded.messages.iter().any(|m| matches!(m, Message::LoginFinish(f) if frames::carries_ke3(f, &genuine)));
        let accepted = verdicts.iter().any(|a| *a) || moved(&before, &after, "logins_accepted") > 0;
        if accepted && !sent_genuine {
            violation(violations, TARGET, case, "a login accepted without its genuine last step".into(), &bytes);
        }
        // A stray step after the verdict would clear the account's login:
        // the next case starts afresh.
        self.drop_session();
        let mut label = ex.label();
        if verdicts.len() > ex.got.iter().filter(|m| matches!(m, Message::LoginResult(_))).count() {
            label.push_str(if accepted { ", then LoginResult(accepted)" } else { ", then LoginResult(refused)" });
        }
        label
    }

    /// A profile request on a logged-in session, answered with the
    /// genuine answer mutated; then the genuine answer, so that the request
    /// does not wait out its deadline. Whatever the outcome, a proof that
    /// verifies must be for the profile the agent signed.
    async fn profile_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        let Some(key) = self.logged_in().await else {
            violation(violations, TARGET, case, "a genuine login was not accepted".into(), &[]);
            self.drop_session();
            return "no login".into();
        };
        let mut flow = if case.is_multiple_of(2) { FLOW } else { FLOW6 };
        flow.client.set_port(1024 + (case % 60000) as u16);
        let server = self.gw.server.clone();
        let agent_id = self.agent_id;
        let asked = tokio::spawn(async move { server.request_profile(agent_id, flow, DEADLINE / 2).await });
        let Some(conn) = self.session.as_mut() else { return "no session".into() };
        let request = read_until(conn, |m| match m {
            Message::ProfileRequest(r) => Some(r),
            _ => None,
        })
        .await;
        let Some(request) = request else {
            self.drop_session();
            let _ = asked.await;
            return "no request".into();
        };
        let genuine = self.answer(&request, &key);
        let seed = if rng.random_bool(0.9) {
            Message::ProfileAnswer(genuine.clone())
        } else {
            let reason = if rng.random_bool(0.5) { RefusalReason::NotStamped } else { RefusalReason::NotLoggedIn };
            Message::ProfileRefused(ProfileRefusal { request_id: request.request_id, nonce: request.nonce, reason })
        };
        let bytes = mutated(seed, rng);
        let before = counters(&self.gw.server.stats);
        let Some(conn) = self.session.as_mut() else { return "no session".into() };
        let ex = exchange(conn, &bytes, rng.random()).await;
        if ex.end == End::Alive {
            let _ = conn.send(Message::ProfileAnswer(genuine.clone())).await;
        } else {
            self.drop_session();
        }
        let outcome = tokio::time::timeout(DEADLINE, asked).await;
        self.common_checks(case, &bytes, &ex, &before, violations);
        let proven = match &outcome {
            Ok(Ok(Ok(o))) => self.gw.proven(o).then_some(o),
            _ => None,
        };
        if let Some(o) = proven
            && (o.profile != genuine.profile || o.request != request)
        {
            let what = format!("a proof verified for a profile the agent did not sign: {:?}", o.profile);
            violation(violations, TARGET, case, what, &bytes);
        }
        let result = match outcome {
            Err(_) => "request hung".to_owned(),
            Ok(Err(e)) => format!("request task failed: {e}"),
            Ok(Ok(Ok(_))) if proven.is_some() => "answer proven".to_owned(),
            Ok(Ok(Ok(_))) => "answer not proven".to_owned(),
            Ok(Ok(Err(e))) => format!("{e}").replace(&agent_id.to_string(), "N"),
        };
        if result == "request hung" {
            violation(violations, TARGET, case, "a profile request outlived its deadline".into(), &bytes);
        }
        if touches_login(&Decoded::of(&bytes)) {
            self.proof_key = None;
        }
        format!("{}; {result}", ex.label())
    }

    fn answer(&self, request: &ProfileRequest, key: &[u8; 32]) -> ProfileAnswer {
        let mut profile = Profile {
            user: USER.into(),
            account: ACCOUNT,
            proof: [0; 32],
            machine: MACHINE,
            install_serial: self.enrollment.info.install_serial.clone(),
        };
        profile.proof = profile_proof(key, request, &profile);
        ProfileAnswer { request_id: request.request_id, nonce: request.nonce, profile }
    }

    /// After all of it, a new agent enrolls, opens a session, logs in and
    /// answers a profile request that proves.
    async fn well_formed_client_is_served(&mut self, case: u64, violations: &mut Violations) {
        let dir = Scratch::new("agent-after");
        let state = StateDir::new(&dir.0.join("state"));
        let served = async {
            let id = enroll(&self.gw.invite(std::time::Duration::from_secs(60)), "after", &state, DEADLINE)
                .await
                .map_err(|e| format!("enrollment: {e}"))?;
            let e = state.load().map_err(|e| format!("enrollment state: {e}"))?;
            let mut conn = self.connect_enrolled(&e).await.ok_or("no TLS session")?;
            let hello =
                Hello { agent_id: id, install_serial: e.info.install_serial.clone(), agent_version: "t".into() };
            conn.send(Message::Hello(hello)).await.map_err(|e| e.to_string())?;
            read_until(&mut conn, |m| matches!(m, Message::Welcome(_)).then_some(())).await.ok_or("no Welcome")?;
            let key = login(&mut conn).await.ok_or("the login was not accepted")?;
            let server = self.gw.server.clone();
            let asked = tokio::spawn(async move { server.request_profile(id, FLOW, DEADLINE).await });
            let request = read_until(&mut conn, |m| match m {
                Message::ProfileRequest(r) => Some(r),
                _ => None,
            })
            .await
            .ok_or("no profile request")?;
            let mut profile = Profile {
                user: USER.into(),
                account: ACCOUNT,
                proof: [0; 32],
                machine: MACHINE,
                install_serial: e.info.install_serial.clone(),
            };
            profile.proof = profile_proof(&key, &request, &profile);
            let answer = ProfileAnswer { request_id: request.request_id, nonce: request.nonce, profile };
            conn.send(Message::ProfileAnswer(answer)).await.map_err(|e| e.to_string())?;
            let outcome = asked.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            if !self.gw.proven(&outcome) {
                return Err("the answer did not prove".to_owned());
            }
            Ok::<(), String>(())
        };
        if let Err(e) = served.await {
            violation(violations, TARGET, case, format!("after the run, a well-formed agent is not served: {e}"), &[]);
        }
    }
}

/// Whether a stream may have changed the account's login (a new one, a
/// step of one, its end).
fn touches_login(d: &Decoded) -> bool {
    d.messages.iter().any(|m| {
        matches!(m, Message::LoginStart(_) | Message::LoginFinish(_) | Message::ClaimFinish(_) | Message::Logout(_))
    })
}

/// A genuine login of the account on `conn`; its proof key.
async fn login(conn: &mut Conn) -> Option<[u8; 32]> {
    let (client, start) = LoginClient::start(USER, ACCOUNT, PASSWORD).ok()?;
    conn.send(Message::LoginStart(start)).await.ok()?;
    let challenge = read_until(conn, |m| match m {
        Message::LoginChallenge(c) => Some(c.credential_response),
        _ => None,
    })
    .await?;
    let finished = client.finish(&challenge).ok()?;
    let key = finished.proof_key.as_deref().copied()?;
    conn.send(Message::LoginFinish(finished.message)).await.ok()?;
    let accepted = read_until(conn, |m| match m {
        Message::LoginResult(r) => Some(r.accepted),
        _ => None,
    })
    .await?;
    accepted.then_some(key)
}
