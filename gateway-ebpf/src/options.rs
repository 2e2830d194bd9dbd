//! The handshake option scan of the SYN and ACK stages and of the
//! internal side's SYN/ACK: a segment's options copied into the scratch map
//! and walked once (`OptionBytes::scan_handshake`), the results left in
//! map memory (`Scratch::scan`, `Scratch::hs`).
//!
//! A subprogram of its own, for the verifier. The walk ends in many
//! different verifier states (one per option layout it can tell apart), and
//! inlined into a stage, everything after it (the MAC, the cookie, the
//! reply) was verified again from each of them. Values read back from map
//! memory are unknown to the verifier, so after this call every path goes
//! on in one state. On Debian's 6.1 kernel, whose verifier prunes less than
//! 6.12's, this took the gate's verification from 968k instructions (of
//! the 1M limit) to 628k, measured on the eBPF crate built alone; the
//! object the daemon embeds verifies at 746k (docs/kernels.md, "Verifier
//! headroom").

use ackgate_common::kernel::config;
use ackgate_common::kernel::frame::XdpFrame;
use ackgate_common::option::OptionBytes;

use crate::maps::Scratch;

/// Scans the `len` option bytes at `off` into `scratch`; false if they
/// could not be copied (the frame is shorter than its header says).
#[inline(never)]
pub fn scan(frame: &XdpFrame, scratch: &mut Scratch, off: usize, len: usize) -> bool {
    let Some(opts) = OptionBytes::read_span(&mut scratch.opts, frame, off, len) else {
        return false;
    };
    scratch.scan = opts.scan_handshake(config::option_id(), &mut scratch.hs);
    true
}
