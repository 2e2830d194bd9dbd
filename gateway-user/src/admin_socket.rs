//! The running gateway's administration socket: a Unix socket only root
//! can open (mode 0600). Commands that must act on live state (ending a
//! revoked user's flows) go through it; the store-only commands work
//! without it. Socket and framing: `ackgate_common::proto::local`.

use std::path::Path;

use ackgate_common::proto::local;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Serialize, Deserialize)]
pub enum AdminRequest {
    /// End the live flows of `user` (of one machine, if given as a hex
    /// fingerprint prefix).
    EndFlows { user: String, machine: Option<String> },
    /// Take a revoked agent out of the gate, end its session and its live
    /// flows (the store already marks it revoked).
    RevokeAgent { agent_id: u32 },
    /// Forget the failed logins of a user an administrator unlocked.
    ForgiveLogins { user: String },
    /// Re-read the services from the config file.
    ReloadServices,
    /// What the control plane is doing.
    Status,
}

/// The running control plane, for `ackgate status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub uptime_secs: u64,
    pub agent_listen: String,
    pub agents_connected: usize,
    /// Flows whose profile or validation is under way.
    pub awaiting_decision: usize,
    pub authorized: u64,
    pub denied: u64,
    pub timed_out: u64,
    /// Refused at once: too many flows were awaiting a decision.
    pub overloaded: u64,
    pub sessions_opened: u64,
    pub logins_accepted: u64,
    pub logins_refused: u64,
    /// Flows whose agent said it never stamped them (suspected stolen keys).
    pub not_stamped: u64,
    /// Live spliced flows, and of those the ones whose target handshake is
    /// under way.
    pub spliced: usize,
    pub splice_connecting: usize,
    pub splice: crate::splice::SpliceTotals,
    /// Flows the full flow map evicted since start (the latest census's
    /// count).
    #[serde(default)]
    pub flows_evicted: u64,
    /// `page` connections closed at once because `page_max_connections`
    /// were being served.
    pub page_refused: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum AdminReply {
    /// How many live flows were ended.
    Ended(usize),
    AgentRevoked {
        session_ended: bool,
        flows_ended: usize,
    },
    /// Services now in the gate; a note when something needs a restart.
    Reloaded {
        services: usize,
        note: Option<String>,
    },
    Status(DaemonStatus),
    Done,
    Error(String),
}

pub use ackgate_common::proto::local::LocalError as AdminError;

/// A request for the daemon's main loop, with where to send the reply.
pub type Pending = (AdminRequest, oneshot::Sender<AdminReply>);

/// Binds `path` (root-only) and forwards each request to `requests`.
pub fn serve(path: &Path, requests: mpsc::Sender<Pending>) -> Result<(), AdminError> {
    let listener = local::bind_private(path)?;
    // Root only (mode 0600): every caller may do everything.
    let handle = move |req: AdminRequest, _caller| {
        let requests = requests.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            if requests.send((req, tx)).await.is_err() {
                return AdminReply::Error("the gateway is shutting down".into());
            }
            rx.await.unwrap_or(AdminReply::Error("no answer".into()))
        }
    };
    tokio::spawn(local::serve(listener, handle, AdminReply::Error));
    Ok(())
}

/// Sends one request to the daemon at `path`.
pub async fn request(path: &Path, req: &AdminRequest) -> Result<AdminReply, AdminError> {
    local::call(path, req).await
}
