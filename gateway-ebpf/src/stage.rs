//! The tail-called stages: programs of their own, reached from the gate
//! and internal programs through `maps::STAGES`, so that their
//! instructions are verified apart. 6.1's verifier explores the gate's
//! paths to within a fifth of its one-million-instruction limit
//! (docs/kernels.md): IPv6's splice, inlined there too, would take it
//! past. The stage picks up what the caller parsed into the per-CPU
//! scratch map: a tail call stays on the CPU and in the same packet's run.

use ackgate_common::abi::{SPLICE_CONNECTING, SPLICE_F_TO_TARGET, STAGE_SPLICE_V6};
use ackgate_common::net::Ipv6Hdr;
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::XDP_DROP;

use crate::maps::{self, SPLICE6, STAGES};
use crate::program::Verdict;
use crate::{icmp, internal, splice};
use ackgate_common::kernel::frame::XdpFrame;

/// What the IPv6 splice stage is to do (`Scratch::stage_job`): splice the
/// segment in `Scratch::seg6`, or translate the ICMPv6 error in
/// `Scratch::icmp6`.
pub const STAGE_JOB_SEGMENT: u8 = 0;
pub const STAGE_JOB_ICMP: u8 = 1;

/// Hands the frame to the IPv6 splice stage for `job`; returns only if
/// the stage's slot is empty (a gate loaded without it), with the verdict
/// then. Call it from the entry point's own frame: the verifier refuses a
/// tail call below BPF-to-BPF calls whose frames add up to 256 bytes
/// (check_max_stack_depth in kernel/bpf/verifier.c).
#[inline(always)]
pub fn enter_splice_v6(frame: &XdpFrame, job: u8) -> Verdict {
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    scratch.stage_job = job;
    // SAFETY: a tail call with the program's own context; on success it
    // does not return.
    unsafe { STAGES.tail_call(frame.ctx(), STAGE_SPLICE_V6) };
    Verdict::new(XDP_DROP, reason::ERR_STAGE_MISSING)
}

/// The IPv6 splice stage. A segment: the one in `scratch.seg6`, of the
/// flow `scratch.key`, has a splice entry under `scratch.splice_key6` in
/// the direction it arrived (the caller checked). An ICMPv6 error: see
/// `icmp::forward_v6`. While the splice connects, the target's answer
/// completes it; otherwise the segment is spliced as IPv4's are.
#[inline(always)]
pub fn splice_v6(frame: &XdpFrame) -> Verdict {
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    if scratch.stage_job == STAGE_JOB_ICMP {
        return icmp::forward_v6(frame);
    }
    // The caller left the key in map memory: 36 bytes on this frame put
    // the deepest call chain below it over the verifier's 512 bytes.
    let (seg, key, splice_key) = (&scratch.seg6, &scratch.key, &scratch.splice_key6);
    // The caller's entry may be gone by now (the flow ended meanwhile).
    let Some(entry) = SPLICE6.get_ptr_mut(splice_key) else {
        return Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED);
    };
    // SAFETY: copied out at once.
    let (state, flags) = unsafe { ((*entry).state, (*entry).flags) };
    if state == SPLICE_CONNECTING && flags & SPLICE_F_TO_TARGET == 0 {
        return internal::connecting::<Ipv6Hdr>(frame, seg, splice_key);
    }
    splice::on_segment(frame, seg, key, entry)
}
