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

/// The maps a start pinned into a pin directory that held none: if the
/// start fails before the gate is attached, they are removed again, so a
/// failed `run` leaves no gate-shaped debris for `status` to report on.
pub struct FreshPins {
    dir: Option<std::path::PathBuf>,
}

impl FreshPins {
    /// Watches `dir` if it holds no pinned objects yet.
    pub fn watch(dir: &Path) -> Self {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        Self { dir: empty.then(|| dir.to_owned()) }
    }

    /// The gate is attached: its pins are the running gate's from now on.
    pub fn keep(mut self) {
        self.dir = None;
    }
}

impl Drop for FreshPins {
    fn drop(&mut self) {
        let Some(dir) = &self.dir else { return };
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.filter_map(Result::ok) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
