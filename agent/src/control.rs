//! The running agent's control socket: a Unix socket only root can open
//! (mode 0600), for `ackgate-agent login` and `ackgate-agent status`.
//! Socket and framing: `ackgate_common::proto::local`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ackgate_common::proto::local;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use zeroize::Zeroizing;

use crate::session::{Credentials, LoginOutcome, SessionStatus, Shared};
use crate::stamper::Stamper;

/// How long `login` waits for the gateway's verdict.
const LOGIN_WAIT: Duration = Duration::from_secs(15);

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
    pub stamper: Arc<Mutex<Stamper>>,
}

pub use ackgate_common::proto::local::LocalError as ControlError;

/// Binds the socket (replacing a stale one), root-only.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    local::bind_private(path)
}

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let handle = move |req: Request| {
        let daemon = daemon.clone();
        async move {
            match req {
                Request::Status => status(&daemon),
                Request::Logout => {
                    daemon.shared.set_credentials(None);
                    Reply::LoggedOut
                }
                Request::Login { user, password } => {
                    let wait = daemon.shared.set_credentials(Some(Credentials { user, password }));
                    Reply::Login(wait.verdict(LOGIN_WAIT).await)
                }
            }
        }
    };
    local::serve(listener, handle, Reply::Error).await;
}

fn status(daemon: &Daemon) -> Reply {
    let stamper = daemon.stamper.lock().unwrap_or_else(|p| p.into_inner());
    let counters = match stamper.counters() {
        Ok(c) => c.labelled().filter(|(_, n)| *n != 0).map(|(l, n)| (l.to_owned(), n)).collect(),
        Err(e) => return Reply::Error(e.to_string()),
    };
    let now = ackgate_common::host::monotonic_ns();
    let recent = match stamper.recent_stamps(20) {
        Ok(r) => r
            .into_iter()
            .map(|(flow, s)| RecentStamp {
                client: flow.client_addr().to_string(),
                service: flow.service_addr().to_string(),
                kind: if s.kind == ackgate_common::abi::STAMP_KIND_SYN { "syn" } else { "ack" }.into(),
                age_ms: now.saturating_sub(s.stamped_ns) / 1_000_000,
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

/// Client side: one request, one reply.
pub async fn request(path: &Path, req: &Request) -> Result<Reply, ControlError> {
    local::call(path, req).await
}
