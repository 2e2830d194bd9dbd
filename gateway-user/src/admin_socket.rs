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
    /// Re-read the services from the config file.
    ReloadServices,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum AdminReply {
    /// How many live flows were ended.
    Ended(usize),
    /// Services now in the gate; a note when something needs a restart.
    Reloaded {
        services: usize,
        note: Option<String>,
    },
    Error(String),
}

pub use ackgate_common::proto::local::LocalError as AdminError;

/// A request for the daemon's main loop, with where to send the reply.
pub type Pending = (AdminRequest, oneshot::Sender<AdminReply>);

/// Binds `path` (root-only) and forwards each request to `requests`.
pub fn serve(path: &Path, requests: mpsc::Sender<Pending>) -> Result<(), AdminError> {
    let listener = local::bind_private(path)?;
    let handle = move |req: AdminRequest| {
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
