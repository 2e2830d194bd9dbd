//! The kernels ackgate runs on (docs/kernels.md), checked when a daemon
//! starts: on an older kernel the loader would only fail with a verifier
//! log ("unknown func ..."), which names no version.

use core::fmt;

use aya::util::KernelVersion;

/// The oldest kernel the gate's and the agent's programs load on: they
/// call `bpf_tcp_raw_gen_syncookie_ipv4`/`..._check_...` (6.0) and
/// `bpf_ktime_get_tai_ns` (6.1, include/uapi/linux/bpf.h). Debian 12's
/// own kernel, 6.1 LTS, is the oldest the VM suite runs on.
pub const OLDEST: KernelVersion = KernelVersion::new(6, 1, 0);

/// From this kernel on, TC programs attach through TCX links
/// (kernel/bpf/tcx.c), which go away with the process that holds them;
/// before it, aya 0.14 attaches a cls_bpf filter to the clsact qdisc,
/// which stays until it is removed.
pub const TCX: KernelVersion = KernelVersion::new(6, 6, 0);

/// The running kernel is older than [`OLDEST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld {
    pub running: KernelVersion,
}

impl fmt::Display for TooOld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this kernel is Linux {}; ackgate's kernel programs need Linux {} or newer (they call \
             bpf_tcp_raw_gen_syncookie_ipv4, 6.0, and bpf_ktime_get_tai_ns, 6.1): see docs/kernels.md",
            self.running, OLDEST
        )
    }
}

impl std::error::Error for TooOld {}

/// `running` if ackgate supports it.
pub fn check(running: KernelVersion) -> Result<KernelVersion, TooOld> {
    if running < OLDEST {
        return Err(TooOld { running });
    }
    Ok(running)
}

/// The running kernel's version, checked with [`check`]; `Ok(None)` when
/// it cannot be read (then the program load is left to tell).
pub fn check_running() -> Result<Option<KernelVersion>, TooOld> {
    match KernelVersion::current() {
        Ok(v) => check(v).map(Some),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_before_6_1_are_refused_in_plain_words() {
        let err = check(KernelVersion::new(5, 15, 167)).expect_err("5.15 lacks bpf_ktime_get_tai_ns");
        let text = err.to_string();
        assert!(text.contains("Linux 5.15.167") && text.contains("6.1.0 or newer"), "{text}");
        assert!(check(KernelVersion::new(6, 0, 19)).is_err());
    }

    #[test]
    fn debian_12s_kernels_and_newer_are_supported() {
        for v in [KernelVersion::new(6, 1, 0), KernelVersion::new(6, 1, 192), KernelVersion::new(6, 12, 117)] {
            assert_eq!(check(v), Ok(v));
        }
    }
}
