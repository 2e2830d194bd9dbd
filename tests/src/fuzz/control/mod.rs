//! Mutated control-protocol frames into the real agent listener (`agent`)
//! and the real validator link (`validator`), over TLS connections with
//! and without valid credentials. Each case opens (or reuses) a connection,
//! brings it to the point where the seed belongs, sends the mutated frame
//! and a ping after it, and reads until the pong, the server's close, or a
//! deadline. The server must answer or close in time, count and refuse bad
//! frames, keep serving well-formed clients, never panic, and authorize
//! nothing (an enrollment, a session, a login, a profile, a decision)
//! unless the frame carried the genuine credentials for it.

mod agent;
mod frames;
mod validator;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ackgate_common::proto::{LoginGrant, LoginStep, Message, MessageCodec};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_util::codec::Framed;

use super::{Violation, Violations};

/// Longest a server may take to answer a frame or close: twice the
/// listener's own deadlines in these runs.
const DEADLINE: Duration = Duration::from_secs(5);

/// What one target received and did.
#[derive(Debug, Default)]
pub struct TargetReport {
    pub name: &'static str,
    pub cases: u64,
    /// What the server answered (message names, refusal codes) and how the
    /// connection ended → cases.
    pub outcomes: BTreeMap<String, u64>,
    /// The server's own counters over the run.
    pub counters: Vec<(&'static str, u64)>,
}

#[derive(Debug, Default)]
pub struct ControlReport {
    pub seed: u64,
    pub elapsed: Duration,
    pub targets: Vec<TargetReport>,
    pub violations: Violations,
}

impl std::fmt::Display for ControlReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cases: u64 = self.targets.iter().map(|t| t.cases).sum();
        writeln!(f, "control: {cases} frames, seed {:#x}, {:.1} s", self.seed, self.elapsed.as_secs_f64())?;
        for t in &self.targets {
            writeln!(f, "{}: {} frames", t.name, t.cases)?;
            for (outcome, n) in &t.outcomes {
                writeln!(f, "  {n:>7}  {outcome}")?;
            }
            let counters: Vec<String> = t.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
            if !counters.is_empty() {
                writeln!(f, "  counted: {}", counters.join(", "))?;
            }
        }
        writeln!(f, "violations: {}", self.violations.total)?;
        for v in &self.violations.kept {
            writeln!(f, "{v}")?;
        }
        Ok(())
    }
}

/// `cases` mutated frames into each of the agent listener and the
/// validator link, from `seed`. Needs loopback (the calling thread's
/// network namespace must have it up).
pub fn run(seed: u64, cases: u64) -> ControlReport {
    count_panics();
    let panics = PANICS.load(Ordering::SeqCst);
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let mut report = ControlReport { seed, ..ControlReport::default() };
    rt.block_on(async {
        let agent = agent::run(seed, cases, &mut report.violations).await;
        report.targets.push(agent);
        let link = validator::run(seed, cases, &mut report.violations).await;
        report.targets.push(link);
    });
    drop(rt);
    let panicked = PANICS.load(Ordering::SeqCst) - panics;
    if panicked > 0 {
        let what = format!("{panicked} panic(s) in the servers' tasks (their messages are above)");
        report.violations.push(Violation { target: "control", case: cases, what, bytes: Vec::new() });
    }
    report.elapsed = started.elapsed();
    report
}

/// Panics in the servers' tasks: tokio catches a task's panic and goes
/// on, so only a panic hook sees it. The runtime's threads (workers and
/// blocking ones) carry this name, so that panics elsewhere in the process
/// (another test's) are not counted.
static PANICS: AtomicU64 = AtomicU64::new(0);
const SERVER_THREADS: &str = "ackgate-fuzz-servers";

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(SERVER_THREADS) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The ping after the frame was answered: the session goes on.
    Alive,
    /// The server closed the connection.
    Closed,
    /// Neither within [`DEADLINE`].
    Hung,
}

/// What the server sent back for one mutated frame.
struct Exchange {
    got: Vec<Message>,
    end: End,
}

impl Exchange {
    fn label(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for m in &self.got {
            let l = message_label(m);
            if parts.last() != Some(&l) {
                parts.push(l);
            }
        }
        parts.push(format!("{:?}", self.end).to_lowercase());
        parts.join(", ")
    }

    /// Refusals of frames the codec could not read, as the server words
    /// them (docs/protocol.md): what its `bad_frames` counts.
    fn frame_refusals(&self) -> u64 {
        let words = ["undecodable message", "frame exceeds the", "peer speaks protocol version", "empty frame"];
        self.got
            .iter()
            .filter(|m| matches!(m, Message::Error(e) if words.iter().any(|w| e.message.starts_with(w))))
            .count() as u64
    }
}

fn message_label(m: &Message) -> String {
    match m {
        Message::Error(e) => format!("Error({:?})", e.code),
        Message::LoginResult(r) => format!("LoginResult({})", if r.accepted { "accepted" } else { "refused" }),
        Message::Validated(v) => format!("Validated({})", if v.authorized { "authorized" } else { "denied" }),
        Message::Relayed(r) => match &r.step {
            LoginStep::Challenge { .. } => "Relayed(challenge)".into(),
            LoginStep::Claim { .. } => "Relayed(claim)".into(),
            LoginStep::Done(g) => format!("Relayed({})", grant_label(g)),
        },
        other => other.name().to_owned(),
    }
}

fn grant_label(g: &LoginGrant) -> &'static str {
    match g {
        LoginGrant::User => "user",
        LoginGrant::Claim(_) => "claim",
        LoginGrant::Refused => "refused",
        LoginGrant::Unavailable => "unavailable",
    }
}

/// Writes `bytes`, then a ping with `probe` (or, when the server would wait
/// for the rest of a cut frame, closes the writing side), and reads what
/// comes back until the pong, the close, or the deadline. The server's own
/// pings are answered meanwhile.
async fn exchange<S>(conn: &mut Framed<S, MessageCodec>, bytes: &[u8], probe: u64) -> Exchange
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut got = Vec::new();
    let half_close = frames::waits_for_more(bytes);
    let written = async {
        conn.get_mut().write_all(bytes).await?;
        if half_close {
            conn.get_mut().shutdown().await
        } else {
            conn.get_mut().write_all(&frames::encode(&Message::Ping(probe))).await?;
            conn.get_mut().flush().await
        }
    };
    // A server that refuses a frame closes with the rest unread, which can
    // cut the write short: what it sent before is still to be read.
    let written = written.await.is_ok();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let end = loop {
        match tokio::time::timeout_at(deadline, conn.next()).await {
            Err(_) => break End::Hung,
            Ok(None | Some(Err(_))) => break End::Closed,
            Ok(Some(Ok(Message::Pong(n)))) if n == probe && !half_close => break End::Alive,
            Ok(Some(Ok(Message::Ping(n)))) => {
                if written && !half_close {
                    let _ = conn.send(Message::Pong(n)).await;
                }
            }
            Ok(Some(Ok(m))) => got.push(m),
        }
    };
    Exchange { got, end }
}

/// Reads from a live connection until `want` says it has its message,
/// answering pings; `None` if the connection ends or the deadline passes.
async fn read_until<S, T>(conn: &mut Framed<S, MessageCodec>, mut want: impl FnMut(Message) -> Option<T>) -> Option<T>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, conn.next()).await {
            Ok(Some(Ok(Message::Ping(n)))) => conn.send(Message::Pong(n)).await.ok()?,
            Ok(Some(Ok(m))) => {
                if let Some(t) = want(m) {
                    return Some(t);
                }
            }
            _ => return None,
        }
    }
}

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ackgate-fuzz-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn violation(violations: &mut Violations, target: &'static str, case: u64, what: String, bytes: &[u8]) {
    violations.push(Violation { target, case, what, bytes: bytes.to_vec() });
}

/// A fresh PKCS#10 request for a new key, as an agent makes one.
fn certificate_request() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("key pair: {e}"));
    let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap_or_else(|e| panic!("CSR: {e}"));
    csr.der().to_vec()
}
