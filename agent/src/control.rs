//! The running agent's control socket: a Unix socket only root can open
//! (mode 0600), for `ackgate-agent login` and `ackgate-agent status`.
//! Frames are length-prefixed postcard, like the gateway protocol.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use zeroize::Zeroizing;

use crate::session::{Credentials, LoginOutcome, SessionStatus, Shared};
use crate::stamper::Stamper;

/// How long `login` waits for the gateway's verdict.
const LOGIN_WAIT: Duration = Duration::from_secs(15);
const MAX_CONTROL_FRAME: usize = 64 * 1024;

#[derive(Serialize, Deserialize)]
pub enum Request {
    Login { user: String, password: Zeroizing<String> },
    Logout,
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Login(Option<LoginOutcome>),
    LoggedOut,
    Status(StatusReport),
    Error(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecentStamp {
    pub client: String,
    pub service: String,
    /// "syn" or "ack".
    pub kind: String,
    pub age_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub agent_id: u32,
    pub interfaces: Vec<String>,
    pub session: SessionStatus,
    /// Stamper counters by reason (non-zero ones).
    pub counters: Vec<(String, u64)>,
    pub recent: Vec<RecentStamp>,
}

/// What the control socket serves from.
pub struct Daemon {
    pub agent_id: u32,
    pub interfaces: Vec<String>,
    pub shared: Arc<Shared>,
    pub stamper: Mutex<Stamper>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("control socket: the agent sent an unreadable reply: {0}")]
    Decode(postcard::Error),
    #[error("control socket: the agent closed the connection without a reply")]
    Closed,
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io { path: path.display().to_string(), source };
    if path.exists() {
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    while let Ok((stream, _)) = listener.accept().await {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &daemon).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn handle(stream: UnixStream, daemon: &Daemon) -> Result<(), std::io::Error> {
    let mut conn = Framed::new(stream, LengthDelimitedCodec::builder().max_frame_length(MAX_CONTROL_FRAME).new_codec());
    let Some(frame) = conn.next().await.transpose()? else {
        return Ok(());
    };
    let reply = match postcard::from_bytes::<Request>(&frame) {
        Err(e) => Reply::Error(format!("unreadable request: {e}")),
        Ok(Request::Status) => status(daemon),
        Ok(Request::Logout) => {
            daemon.shared.set_credentials(None);
            Reply::LoggedOut
        }
        Ok(Request::Login { user, password }) => {
            let mut verdict = daemon.shared.set_credentials(Some(Credentials { user, password }));
            let outcome = tokio::time::timeout(LOGIN_WAIT, verdict.wait_for(Option::is_some)).await;
            Reply::Login(outcome.ok().and_then(|r| r.ok().map(|v| v.clone())).flatten())
        }
    };
    let bytes = postcard::to_stdvec(&reply).map_err(std::io::Error::other)?;
    conn.send(bytes::Bytes::from(bytes)).await
}

fn status(daemon: &Daemon) -> Reply {
    let stamper = daemon.stamper.lock().unwrap_or_else(|p| p.into_inner());
    let counters = match stamper.counters() {
        Ok(c) => c.labelled().filter(|(_, n)| *n != 0).map(|(l, n)| (l.to_owned(), n)).collect(),
        Err(e) => return Reply::Error(e.to_string()),
    };
    let now = monotonic_ns();
    let recent = match stamper.recent_stamps(20) {
        Ok(r) => r
            .into_iter()
            .map(|(flow, s)| {
                let (ca, cp) = flow.client_v4();
                let (sa, sp) = flow.service_v4();
                RecentStamp {
                    client: format!("{}:{cp}", std::net::Ipv4Addr::from(ca)),
                    service: format!("{}:{sp}", std::net::Ipv4Addr::from(sa)),
                    kind: if s.kind == ackgate_common::abi::STAMP_KIND_SYN { "syn" } else { "ack" }.into(),
                    age_ms: now.saturating_sub(s.stamped_ns) / 1_000_000,
                }
            })
            .collect(),
        Err(e) => return Reply::Error(e.to_string()),
    };
    Reply::Status(StatusReport {
        agent_id: daemon.agent_id,
        interfaces: daemon.interfaces.clone(),
        session: daemon.shared.status(),
        counters,
        recent,
    })
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Client side: one request, one reply.
pub async fn request(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    let io = |source| ControlError::Io { path: path.display().to_string(), source };
    let stream = UnixStream::connect(path).await.map_err(io)?;
    let mut conn = Framed::new(stream, LengthDelimitedCodec::builder().max_frame_length(MAX_CONTROL_FRAME).new_codec());
    let bytes = postcard::to_stdvec(req).map_err(|e| io(std::io::Error::other(e)))?;
    conn.send(bytes::Bytes::from(bytes)).await.map_err(io)?;
    let frame = conn.next().await.ok_or(ControlError::Closed)?.map_err(io)?;
    postcard::from_bytes(&frame).map_err(ControlError::Decode)
}
