//! The BPF filesystem that holds pinned maps.
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BpffsError {
    #[error("{path} is not on a BPF filesystem and mounting bpffs there failed: {source}")]
    Mount { path: String, source: nix::Error },
    #[error("cannot create pin directory {path}: {source}")]
    Create { path: String, source: std::io::Error },
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
