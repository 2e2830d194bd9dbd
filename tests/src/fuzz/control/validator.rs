//! The validator link (gateway-user's `validator_service::serve` with the
//! real validator over an in-memory store) under mutated frames: decisions
//! on a profile whose proof verifies for an approved machine, the steps of
//! a relayed login, and anything at all from clients that are not the
//! configured gateway.

use std::sync::Arc;

use ackgate_common::proto::pake::LoginClient;
use ackgate_common::proto::{
    ClaimFinish, FlowSummary, Hello, LoginGrant, LoginStep, Message, MessageCodec, Profile, ProfileRequest, Relay,
    RelayStep, Validate, Validated, profile_proof,
};
use ackgate_gateway::pki::{Ca, ExtendedKeyUsagePurpose, LINK_CERT_VALIDITY};
use ackgate_gateway::store::{Attempt, Store};
use ackgate_gateway::validator::{Decider, Validator};
use ackgate_gateway::validator_service::{VALIDATOR_SERVER_NAME, serve, write_credentials};
use futures_util::SinkExt as _;
use rand::Rng as _;
use rand_chacha::ChaCha8Rng;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

use super::frames::{self, Decoded, mutated};
use super::{DEADLINE, End, Exchange, Scratch, TargetReport, exchange, read_until, violation};
use crate::fuzz::{Violations, case_rng};

const TARGET: &str = "validator link";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse";
/// The agent the gateway names in its requests, and its approved machine.
const AGENT: u32 = 7;
const MACHINE: [u8; 32] = [7; 32];
const SERIAL: &str = "fuzz-serial";

type Conn = Framed<TlsStream<TcpStream>, MessageCodec>;

/// Which client certificate a connection presents.
#[derive(Clone, Copy)]
enum Client {
    Gateway,
    /// Signed by the same CA for client authentication (as an agent's
    /// is), but not the gateway's.
    Stranger,
    Anonymous,
}

struct LinkFuzz {
    addr: String,
    gateway: Arc<ClientConfig>,
    stranger: Arc<ClientConfig>,
    anonymous: Arc<ClientConfig>,
    _dir: Scratch,
    link: Option<Conn>,
    /// A login relayed through the link, accepted: its id and proof key.
    login: Option<(u64, [u8; 32])>,
    next_request: u64,
    report: TargetReport,
}

pub(super) async fn run(seed: u64, cases: u64, violations: &mut Violations) -> TargetReport {
    let dir = Scratch::new("link");
    let credentials = dir.0.join("link");
    let ca = Ca::create(&dir.0).unwrap_or_else(|e| panic!("link CA: {e}"));
    write_credentials(&ca, &credentials).unwrap_or_else(|e| panic!("link credentials: {e}"));
    let store = Arc::new(Store::open(std::path::Path::new(":memory:")).unwrap_or_else(|e| panic!("store: {e}")));
    store.add_user(USER, PASSWORD, &[]).unwrap_or_else(|e| panic!("user: {e}"));
    approve_machine(&store);
    let decider: Arc<dyn Decider> =
        Arc::new(Validator::new(store.clone()).unwrap_or_else(|e| panic!("validator: {e}")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("loopback: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("address: {e}")).to_string();
    let served = credentials.clone();
    let service = tokio::spawn(async move { serve(listener, &served, decider).await });
    let read =
        |name: &str| CertificateDer::from_pem_file(credentials.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let key = PrivateKeyDer::from_pem_file(credentials.join("gateway.key")).unwrap_or_else(|e| panic!("key: {e}"));
    let stranger = ca
        .issue("agent.ackgate.invalid", "not the gateway", ExtendedKeyUsagePurpose::ClientAuth, LINK_CERT_VALIDITY)
        .unwrap_or_else(|e| panic!("a stranger's certificate: {e}"));
    let roots = read("ca.pem");
    let mut fuzz = LinkFuzz {
        addr,
        gateway: client_config(&roots, Some((read("gateway.pem"), key))),
        stranger: client_config(&roots, Some((stranger.chain[0].clone(), stranger.key))),
        anonymous: client_config(&roots, None),
        _dir: dir,
        link: None,
        login: None,
        next_request: 1,
        report: TargetReport { name: TARGET, ..TargetReport::default() },
    };
    for case in 0..cases {
        let mut rng = case_rng(seed, case);
        // Each relayed login's last step costs the harness an argon2id
        // run (the agent's half): those cases are the rarest.
        let (kind, label) = match rng.random_range(0..100) {
            0..50 => ("validate", fuzz.validate_case(&mut rng, case, violations).await),
            50..65 => ("relay start", fuzz.start_case(&mut rng, case, violations).await),
            65..70 => ("relay finish", fuzz.finish_case(&mut rng, case, violations).await),
            70..85 => ("other", fuzz.other_case(&mut rng, case, violations).await),
            _ => ("not the gateway", fuzz.stranger_case(&mut rng, case, violations).await),
        };
        *fuzz.report.outcomes.entry(format!("{kind}: {label}")).or_default() += 1;
        fuzz.report.cases += 1;
    }
    fuzz.link = None;
    fuzz.login = None;
    match fuzz.validate(&mut case_rng(seed, cases)).await {
        Some(true) => {}
        other => {
            let what = format!("after the run, the gateway's genuine request is not authorized ({other:?})");
            violation(violations, TARGET, cases, what, &[]);
        }
    }
    if service.is_finished() {
        violation(violations, TARGET, cases, "the validator service ended".into(), &[]);
    }
    service.abort();
    fuzz.report
}

/// Binds `MACHINE` through `AGENT` to the user, as an administrator's
/// approval of a proven attempt does.
fn approve_machine(store: &Store) {
    let attempt = Attempt {
        user: USER,
        machine: MACHINE,
        install_serial: SERIAL,
        agent_id: AGENT,
        source: "10.0.0.2:40000",
        service: "web",
        reason: "known user on an unapproved machine",
        proven: true,
    };
    store.record_attempt(&attempt).unwrap_or_else(|e| panic!("recording an attempt: {e}"));
    store.approve(USER, None, &[]).unwrap_or_else(|e| panic!("approving: {e}"));
}

fn client_config(
    ca: &CertificateDer<'static>,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap_or_else(|e| panic!("link CA: {e}"));
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| panic!("TLS 1.3: {e}"))
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap_or_else(|e| panic!("{e}")),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

fn flow() -> FlowSummary {
    FlowSummary {
        client: "10.0.0.2:40000".parse().expect("address"),
        service: "10.0.0.1:443".parse().expect("address"),
        client_isn: 11,
        server_isn: 22,
    }
}

/// The fields a decision stands on: a profile's proof binds the request
/// and the profile; the agent and the login pick the key and the approval.
fn decision_basis(v: &Validate) -> (u32, Option<u64>, &ProfileRequest, &Profile) {
    (v.agent_id, v.login, &v.request, &v.profile)
}

impl LinkFuzz {
    async fn connect(&self, client: Client) -> Option<Conn> {
        let config = match client {
            Client::Gateway => self.gateway.clone(),
            Client::Stranger => self.stranger.clone(),
            Client::Anonymous => self.anonymous.clone(),
        };
        let tcp = tokio::time::timeout(DEADLINE, TcpStream::connect(&self.addr)).await.ok()?.ok()?;
        let name = ServerName::try_from(VALIDATOR_SERVER_NAME).ok()?;
        let tls = tokio::time::timeout(DEADLINE, tokio_rustls::TlsConnector::from(config).connect(name, tcp));
        Some(Framed::new(tls.await.ok()?.ok()?, MessageCodec::default()))
    }

    /// The gateway's link, connected if there is none.
    async fn link(&mut self) -> Option<&mut Conn> {
        if self.link.is_none() {
            self.link = Some(self.connect(Client::Gateway).await?);
        }
        self.link.as_mut()
    }

    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// A login relayed as the gateway relays an agent's, accepted.
    async fn relayed_login(&mut self) -> Option<(u64, [u8; 32])> {
        if let Some(l) = self.login {
            return Some(l);
        }
        let (start_id, finish_id) = (self.request_id(), self.request_id());
        let conn = self.link().await?;
        let (client, start) = LoginClient::start(USER, 0, PASSWORD).ok()?;
        let step = RelayStep::Start { start, agent_id: AGENT, source: "10.0.0.2".into() };
        conn.send(Message::Relay(Relay { request_id: start_id, step })).await.ok()?;
        let (login, response) = read_until(conn, |m| match m {
            Message::Relayed(r) if r.request_id == start_id => match r.step {
                LoginStep::Challenge { login, credential_response } => Some(Some((login, credential_response))),
                _ => Some(None),
            },
            _ => None,
        })
        .await??;
        let finished = client.finish(&response).ok()?;
        let key = finished.proof_key.as_deref().copied()?;
        let step = RelayStep::Finish { login, finish: finished.message };
        conn.send(Message::Relay(Relay { request_id: finish_id, step })).await.ok()?;
        let granted = read_until(conn, |m| match m {
            Message::Relayed(r) if r.request_id == finish_id => Some(r.step == LoginStep::Done(LoginGrant::User)),
            _ => None,
        })
        .await?;
        self.login = granted.then_some((login, key));
        self.login
    }

    /// The decision the gateway asks for a profile the agent signed under
    /// the relayed login, for the approved machine.
    async fn genuine_validate(&mut self) -> Option<Validate> {
        let (login, key) = self.relayed_login().await?;
        let request = ProfileRequest { request_id: 9, nonce: [3; 16], flow: flow() };
        let mut profile =
            Profile { user: USER.into(), account: 0, proof: [0; 32], machine: MACHINE, install_serial: SERIAL.into() };
        profile.proof = profile_proof(&key, &request, &profile);
        Some(Validate {
            request_id: self.request_id(),
            agent_id: AGENT,
            login: Some(login),
            request,
            profile,
            service: "web".into(),
            allow_groups: Vec::new(),
            source: "10.0.0.2:40000".into(),
        })
    }

    /// The genuine decision, unmutated: whether it is authorized.
    async fn validate(&mut self, rng: &mut ChaCha8Rng) -> Option<bool> {
        let v = self.genuine_validate().await?;
        let id = v.request_id;
        let conn = self.link().await?;
        let ex = exchange(conn, &frames::encode(&Message::Validate(v)), rng.random()).await;
        let mut answers = validated(&ex);
        if answers.is_empty() && ex.end == End::Alive {
            answers.extend(
                read_until(conn, |m| match m {
                    Message::Validated(v) => Some(v),
                    _ => None,
                })
                .await,
            );
        }
        answers.iter().find(|a| a.request_id == id).map(|a| a.authorized)
    }

    /// Sends `bytes` on the gateway's link, reads the answers to every
    /// request they hold (decisions and login steps run beside the link's
    /// loop, so they may trail the pong), and checks what every case must
    /// hold.
    async fn send(&mut self, bytes: &[u8], rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> Exchange {
        let decoded = Decoded::of(bytes);
        let Some(conn) = self.link().await else {
            violation(violations, TARGET, case, "the validator refused the gateway's connection".into(), bytes);
            return Exchange { got: Vec::new(), end: End::Closed };
        };
        let mut ex = exchange(conn, bytes, rng.random()).await;
        let asked = decoded.messages.iter().filter(|m| matches!(m, Message::Relay(_) | Message::Validate(_))).count();
        let answered =
            |got: &[Message]| got.iter().filter(|m| matches!(m, Message::Relayed(_) | Message::Validated(_))).count();
        while ex.end == End::Alive && answered(&ex.got) < asked {
            match read_until(conn, |m| matches!(m, Message::Relayed(_) | Message::Validated(_)).then_some(m)).await {
                Some(m) => ex.got.push(m),
                None => {
                    violation(violations, TARGET, case, "a request on a live link got no answer".into(), bytes);
                    break;
                }
            }
        }
        if ex.end == End::Hung {
            violation(violations, TARGET, case, format!("neither an answer nor a close within {DEADLINE:?}"), bytes);
        }
        if ex.end != End::Alive {
            self.link = None;
        }
        // A relayed login outlives its link (the validator ends it only on
        // `End`); one that may be over is replaced at the next decision.
        let ours = self.login.map(|(l, _)| l);
        let ends_ours = decoded
            .messages
            .iter()
            .any(|m| matches!(m, Message::Relay(Relay { step: RelayStep::End { login }, .. }) if Some(*login) == ours));
        if ends_ours {
            self.login = None;
        }
        ex
    }

    async fn validate_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        let Some(genuine) = self.genuine_validate().await else {
            violation(violations, TARGET, case, "a genuine relayed login was not accepted".into(), &[]);
            self.link = None;
            self.login = None;
            return "no login".into();
        };
        let bytes = mutated(Message::Validate(genuine.clone()), rng);
        let ex = self.send(&bytes, rng, case, violations).await;
        let decoded = Decoded::of(&bytes);
        for a in validated(&ex).iter().filter(|a| a.authorized) {
            let genuine_basis = decoded.messages.iter().any(|m| {
                matches!(m, Message::Validate(v) if v.request_id == a.request_id && decision_basis(v) == decision_basis(&genuine))
            });
            if !genuine_basis {
                violation(
                    violations,
                    TARGET,
                    case,
                    format!("authorized request {} without the genuine proof", a.request_id),
                    &bytes,
                );
            }
        }
        ex.label()
    }

    async fn start_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        let user = if rng.random_bool(0.7) { USER } else { "mallory" };
        let Some((_, start)) = LoginClient::start(user, 0, "guess").ok() else { return "no KE1".into() };
        let step = RelayStep::Start { start, agent_id: AGENT, source: "10.0.0.2".into() };
        let bytes = mutated(Message::Relay(Relay { request_id: self.request_id(), step }), rng);
        let ex = self.send(&bytes, rng, case, violations).await;
        if relayed(&ex).any(|s| matches!(s, LoginStep::Done(LoginGrant::User | LoginGrant::Claim(_)))) {
            violation(violations, TARGET, case, "a login's first step alone was granted".into(), &bytes);
        }
        ex.label()
    }

    /// A relayed login up to its last step, then that step mutated:
    /// granted only if it is still the genuine one.
    async fn finish_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        let start_id = self.request_id();
        let Some(conn) = self.link().await else { return "no link".into() };
        let Some((client, start)) = LoginClient::start(USER, 0, PASSWORD).ok() else { return "no KE1".into() };
        let step = RelayStep::Start { start, agent_id: AGENT, source: "10.0.0.2".into() };
        if conn.send(Message::Relay(Relay { request_id: start_id, step })).await.is_err() {
            self.link = None;
            return "link lost".into();
        }
        let challenge = read_until(conn, |m| match m {
            Message::Relayed(r) if r.request_id == start_id => match r.step {
                LoginStep::Challenge { login, credential_response } => Some(Some((login, credential_response))),
                _ => Some(None),
            },
            _ => None,
        })
        .await
        .flatten();
        let Some((login, finished)) = challenge.and_then(|(l, c)| Some((l, client.finish(&c).ok()?))) else {
            violation(violations, TARGET, case, "a genuine relayed login got no challenge".into(), &[]);
            self.link = None;
            return "no challenge".into();
        };
        let genuine = finished.message;
        let step = RelayStep::Finish { login, finish: genuine.clone() };
        let bytes = mutated(Message::Relay(Relay { request_id: self.request_id(), step }), rng);
        let ex = self.send(&bytes, rng, case, violations).await;
        let decoded = Decoded::of(&bytes);
        let sent_genuine = decoded.messages.iter().any(|m| {
            matches!(m, Message::Relay(Relay { step: RelayStep::Finish { login: l, finish }, .. })
                if *l == login && frames::carries_ke3(finish, &genuine))
        });
        if relayed(&ex).any(|s| *s == LoginStep::Done(LoginGrant::User)) && !sent_genuine {
            violation(violations, TARGET, case, "a relayed login granted without its genuine last step".into(), &bytes);
        }
        ex.label()
    }

    async fn other_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        let login = self.login.map_or(1, |(l, _)| l);
        let seed = match rng.random_range(0..6) {
            0 => Message::Ping(rng.random()),
            1 => Message::Relay(Relay { request_id: self.request_id(), step: RelayStep::End { login } }),
            2 => Message::Relay(Relay {
                request_id: self.request_id(),
                step: RelayStep::Claim { login, finish: ClaimFinish { registration_upload: vec![0; 192] } },
            }),
            3 => Message::Hello(Hello { agent_id: AGENT, install_serial: SERIAL.into(), agent_version: "x".into() }),
            4 => Message::Validated(Validated {
                request_id: 1,
                authorized: true,
                reason: String::new(),
                recorded: false,
            }),
            _ => Message::Pong(rng.random()),
        };
        let bytes = mutated(seed, rng);
        let ex = self.send(&bytes, rng, case, violations).await;
        if validated(&ex).iter().any(|v| v.authorized)
            || relayed(&ex).any(|s| matches!(s, LoginStep::Done(LoginGrant::User)))
        {
            violation(violations, TARGET, case, "granted something on a frame that asks for nothing".into(), &bytes);
        }
        ex.label()
    }

    /// Anything from a client that is not the gateway: no answer at all.
    async fn stranger_case(&mut self, rng: &mut ChaCha8Rng, case: u64, violations: &mut Violations) -> String {
        let client = if rng.random_bool(0.7) { Client::Stranger } else { Client::Anonymous };
        let seed = match self.genuine_validate().await {
            Some(v) if rng.random_bool(0.7) => Message::Validate(v),
            _ => Message::Ping(rng.random()),
        };
        let bytes = mutated(seed, rng);
        let Some(mut conn) = self.connect(client).await else {
            return "TLS refused".into();
        };
        let ex = exchange(&mut conn, &bytes, rng.random()).await;
        if !ex.got.is_empty() || ex.end == End::Alive {
            violation(
                violations,
                TARGET,
                case,
                format!("answered a client that is not the gateway: {}", ex.label()),
                &bytes,
            );
        }
        if ex.end == End::Hung {
            violation(
                violations,
                TARGET,
                case,
                format!("a stranger's connection neither answered nor closed within {DEADLINE:?}"),
                &bytes,
            );
        }
        ex.label()
    }
}

fn validated(ex: &Exchange) -> Vec<Validated> {
    ex.got
        .iter()
        .filter_map(|m| match m {
            Message::Validated(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

fn relayed(ex: &Exchange) -> impl Iterator<Item = &LoginStep> {
    ex.got.iter().filter_map(|m| match m {
        Message::Relayed(r) => Some(&r.step),
        _ => None,
    })
}
