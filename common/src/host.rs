//! Small userspace helpers shared by the gateway and the agent (feature
//! `user`): interface names, the kernel programs' clock, SIGPIPE for
//! command-line tools, atomic file replacement, Unix time, hex and
//! poison-tolerant locks.

extern crate std;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Whether `name` could be a Linux interface name (shorter than IFNAMSIZ,
/// no NUL, slash or whitespace). aya panics on a NUL, and the kernel
/// refuses the rest.
pub fn is_valid_iface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(['\0', '/'])
        && !name.contains(char::is_whitespace)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns` (and,
/// a tick behind at most, of `bpf_ktime_get_coarse_ns`), so the age of a
/// map entry the kernel stamped.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Seconds since the Unix epoch (0 on a clock set before it).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::UNIX_EPOCH.elapsed().map(|d| d.as_secs()).unwrap_or(0)
}

/// Milliseconds since the Unix epoch (0 on a clock set before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::UNIX_EPOCH.elapsed().map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Locks `m` even if a thread panicked while holding it: the state these
/// locks guard (counters, tables, session lists) stays consistent between
/// statements, and one panicked task must not take the daemon down.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lets a command-line tool end when whoever reads its output goes away
/// (`ackgate status | head`), as Unix tools do. Rust's runtime ignores
/// SIGPIPE, so the write fails instead and `println!` panics on that;
/// this restores the signal's default action, which ends the process
/// quietly. Not for daemons: there a peer that goes away is an error to
/// handle, not a reason to stop.
pub fn end_quietly_when_output_closes() {
    // SAFETY: sets the process's disposition of one signal to its default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Replaces the file at `path` with `bytes`, so that a crash at any point
/// leaves either the old file or the new one, whole: a temporary file in
/// the same directory, given `mode` (umask aside), written and synced,
/// renamed over `path`, then the directory synced so the rename itself
/// survives a power cut.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".ackgate-").tempfile_in(dir)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in ["eth0", "veth-a.10", "a"] {
            assert!(is_valid_iface_name(good), "{good:?} is a valid name");
        }
        for bad in ["", "a/b", "a b", "nul\0", "0123456789abcdef"] {
            assert!(!is_valid_iface_name(bad), "{bad:?} must be refused");
        }
    }
}
