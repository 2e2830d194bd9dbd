//! Local control sockets (the gateway's admin socket, the agent's control
//! socket): a Unix socket, one request and one reply per connection, each
//! a length-prefixed postcard frame. The server learns each caller's uid
//! from the kernel (`SO_PEERCRED`), never from the request.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const MAX_FRAME: usize = 1 << 20;
/// Connections served at once. Further callers wait in the listen backlog
/// (the kernel's bound) until one ends.
const MAX_CONNECTIONS: usize = 32;
/// How long a caller has to send its request: a caller that connects and
/// says nothing cannot hold a slot.
const REQUEST_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("control socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("control socket {path}: unreadable reply: {source}")]
    Decode { path: String, source: postcard::Error },
    #[error("control socket {path}: closed without a reply")]
    Closed { path: String },
    #[error("control socket {path}: a running daemon answers on it; stop that one first")]
    InUse { path: String },
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME).new_codec()
}

/// Binds `path` (replacing a stale socket) and makes it root-only.
pub fn bind_private(path: &Path) -> Result<UnixListener, LocalError> {
    bind_mode(path, 0o600)
}

/// Binds `path` (replacing a stale socket) for every local account: the
/// server decides what each caller may do by its uid.
pub fn bind_shared(path: &Path) -> Result<UnixListener, LocalError> {
    bind_mode(path, 0o666)
}

fn bind_mode(path: &Path, mode: u32) -> Result<UnixListener, LocalError> {
    let io = |source| LocalError::Io { path: path.display().to_string(), source };
    if path.exists() {
        // A socket someone still answers on belongs to a live daemon:
        // unlinking it would cut that daemon off from its clients.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(LocalError::InUse { path: path.display().to_string() });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(listener)
}

/// The caller on a control connection, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
}

/// Answers every connection on `listener` with `handle(request, caller)`;
/// an unreadable request gets `bad_request(why)`.
pub async fn serve<Q, R, F, Fut>(listener: UnixListener, handle: F, bad_request: fn(String) -> R)
where
    Q: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(Q, Caller) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { return };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let caller = stream.peer_cred().map(|c| Caller { uid: c.uid() });
            let mut conn = Framed::new(stream, codec());
            let Ok(Some(Ok(frame))) = tokio::time::timeout(REQUEST_WITHIN, conn.next()).await else {
                return;
            };
            let reply = match (postcard::from_bytes::<Q>(&frame), caller) {
                (Ok(req), Ok(caller)) => handle(req, caller).await,
                (Err(e), _) => bad_request(format!("unreadable request: {e}")),
                (_, Err(e)) => bad_request(format!("the caller's credentials are unreadable: {e}")),
            };
            if let Ok(bytes) = postcard::to_stdvec(&reply) {
                let _ = conn.send(bytes::Bytes::from(bytes)).await;
            }
        });
    }
}

/// Sends one request to the socket at `path` and returns the reply.
pub async fn call<Q: Serialize, R: DeserializeOwned>(path: &Path, req: &Q) -> Result<R, LocalError> {
    let p = || path.display().to_string();
    let io = |source| LocalError::Io { path: p(), source };
    let stream = UnixStream::connect(path).await.map_err(io)?;
    let mut conn = Framed::new(stream, codec());
    let bytes = postcard::to_stdvec(req).map_err(|e| io(std::io::Error::other(e)))?;
    conn.send(bytes::Bytes::from(bytes)).await.map_err(io)?;
    let frame = conn.next().await.ok_or_else(|| LocalError::Closed { path: p() })?.map_err(io)?;
    postcard::from_bytes(&frame).map_err(|source| LocalError::Decode { path: p(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket a live daemon answers on is never taken over; one left
    /// behind by a daemon that is gone is replaced.
    #[tokio::test]
    async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let path = std::env::temp_dir().join(format!("ackgate-local-{}.sock", std::process::id()));
        let live = bind_private(&path).expect("first bind");
        assert!(
            matches!(bind_private(&path), Err(LocalError::InUse { .. })),
            "a second daemon must not unlink the live daemon's socket"
        );
        assert!(path.exists(), "the live socket must still be there");
        drop(live);
        let again = bind_private(&path).expect("a stale socket is replaced");
        drop(again);
        let _ = std::fs::remove_file(&path);
    }
}
