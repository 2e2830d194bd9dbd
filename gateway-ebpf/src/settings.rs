//! Load-time settings of the gateway programs, written by userspace into
//! .rodata before load (aya `EbpfLoader::override_global`); the verifier
//! sees them as constants.

use ackgate_common::abi::{SynAckProfile, SynAckSizes};

/// What the gateway kernel's own SYN/ACK looks like (see `SynAckProfile`).
/// The default is Linux on a 1500-byte MTU with default sysctls.
#[unsafe(no_mangle)]
static SYNACK_PROFILE: SynAckProfile = SynAckProfile {
    ts_secret: 0,
    v4: SynAckSizes { mss: 1460, window_ts: 65160, window_no_ts: 64240 },
    v6: SynAckSizes { mss: 1440, window_ts: 64260, window_no_ts: 64800 },
    wscale: 7,
    ecn: 1,
    _pad0: 0,
};

/// 1: spliced segments are redirected between the interfaces
/// (`bpf_redirect_map`); 0: always handed to the kernel to forward.
#[unsafe(no_mangle)]
static REDIRECT_ENABLED: u8 = 1;

/// 1: the edge may deliver frames whose TCP checksum is still partial
/// (offload pending on a virtual device, or generic XDP); such a checksum
/// passes `integrity`'s check. Userspace decides per interface.
#[unsafe(no_mangle)]
static PARTIAL_CHECKSUMS: u8 = 0;

#[inline(always)]
pub fn synack_profile() -> SynAckProfile {
    // SAFETY: plain read of a static; volatile so that the compiler does
    // not fold the default in before userspace patches it.
    unsafe { core::ptr::read_volatile(&SYNACK_PROFILE) }
}

#[inline(always)]
pub fn redirect_enabled() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&REDIRECT_ENABLED) != 0 }
}

#[inline(always)]
pub fn partial_checksums() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&PARTIAL_CHECKSUMS) != 0 }
}
