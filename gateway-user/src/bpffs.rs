//! The BPF filesystem that holds pinned maps.
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BpffsError {
    #[error("{path} is not on a BPF filesystem and mounting bpffs there failed: {source}")]
    Mount { path: String, source: nix::Error },
    #[error("cannot create pin directory {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error(
        "another `ackgate run` holds the pin directory {path}: one gate per pin directory \
         (stop the running one first, or give this one its own pin_dir and interface)"
    )]
    Held { path: String },
    #[error("cannot lock pin directory {path}: {source}")]
    Lock { path: String, source: nix::Error },
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == BPF_FS_MAGIC).unwrap_or(false)
}

/// Makes sure `/sys/fs/bpf` is bpffs (mounting it if not, as systemd does
/// at boot) and creates `dir` under it.
pub fn ensure_pin_dir(dir: &Path) -> Result<(), BpffsError> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|source| BpffsError::Mount { path: root.display().to_string(), source })?;
    }
    std::fs::create_dir_all(dir).map_err(|source| BpffsError::Create { path: dir.display().to_string(), source })?;
    Ok(())
}

/// A running gate's hold on its pin directory; let go when dropped, or
/// when the process ends however it ends (an flock on the directory).
pub struct PinDirLock {
    _held: nix::fcntl::Flock<std::fs::File>,
}

/// Takes `dir` (created if needed) for this process, or fails at once if
/// another process holds it: a second `ackgate run` on the same pins must
/// refuse before it touches the gate, the maps or the admin socket.
pub fn lock_pin_dir(dir: &Path) -> Result<PinDirLock, BpffsError> {
    ensure_pin_dir(dir)?;
    let path = || dir.display().to_string();
    let file = std::fs::File::open(dir).map_err(|source| BpffsError::Create { path: path(), source })?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(PinDirLock { _held: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(BpffsError::Held { path: path() }),
        Err((_, source)) => Err(BpffsError::Lock { path: path(), source }),
    }
}
