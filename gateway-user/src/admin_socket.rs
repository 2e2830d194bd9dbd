//! The running gateway's administration socket: a Unix socket only root
//! can open (mode 0600). Commands that must act on live state (ending a
//! revoked user's flows) go through it; the store-only commands work
//! without it. Frames are length-prefixed postcard.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const MAX_FRAME: usize = 1 << 20;

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

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("admin socket: unreadable reply: {0}")]
    Decode(postcard::Error),
    #[error("admin socket: the gateway closed the connection without a reply")]
    Closed,
}

/// A request for the daemon's main loop, with where to send the reply.
pub type Pending = (AdminRequest, oneshot::Sender<AdminReply>);

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME).new_codec()
}

/// Binds `path` (replacing a stale socket) with mode 0600 and forwards each
/// request to `requests`.
pub fn serve(path: &Path, requests: mpsc::Sender<Pending>) -> Result<(), AdminError> {
    let io = |source| AdminError::Io { path: path.display().to_string(), source };
    if path.exists() {
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut conn = Framed::new(stream, codec());
                let Some(Ok(frame)) = conn.next().await else {
                    return;
                };
                let reply = match postcard::from_bytes::<AdminRequest>(&frame) {
                    Err(e) => AdminReply::Error(format!("unreadable request: {e}")),
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        if requests.send((req, tx)).await.is_err() {
                            AdminReply::Error("the gateway is shutting down".into())
                        } else {
                            rx.await.unwrap_or(AdminReply::Error("no answer".into()))
                        }
                    }
                };
                if let Ok(bytes) = postcard::to_stdvec(&reply) {
                    let _ = conn.send(bytes::Bytes::from(bytes)).await;
                }
            });
        }
    });
    Ok(())
}

/// Sends one request to the daemon at `path`.
pub async fn request(path: &Path, req: &AdminRequest) -> Result<AdminReply, AdminError> {
    let io = |source| AdminError::Io { path: path.display().to_string(), source };
    let stream = UnixStream::connect(path).await.map_err(io)?;
    let mut conn = Framed::new(stream, codec());
    let bytes = postcard::to_stdvec(req).map_err(|e| io(std::io::Error::other(e)))?;
    conn.send(bytes::Bytes::from(bytes)).await.map_err(io)?;
    let frame = conn.next().await.ok_or(AdminError::Closed)?.map_err(io)?;
    postcard::from_bytes(&frame).map_err(AdminError::Decode)
}
