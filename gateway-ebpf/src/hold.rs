//! Holding: client segments of a flow that waits (for the control plane's
//! decision, or for the target's handshake) are copied to the held ring and
//! dropped. Once the flow is spliced, the control plane rewrites them like
//! any spliced segment and sends them to the target, so the client's first
//! data (a request sent right after the handshake) arrives without waiting
//! for the client's retransmission timeout, while the SYN/ACK stays the
//! kernel's (a zero window there would stall the client instead, and give
//! the protected port away; SPLICE-NOTES in docs/splice.md).

use ackgate_common::abi::{FlowKey, HELD_MAX_PACKET, HELD_PER_FLOW, HeldSegment};
use ackgate_common::net::TcpSegment;
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::XDP_DROP;

use crate::maps::HELD;
use crate::program::Verdict;
use ackgate_common::kernel::frame::XdpFrame;

/// Holds `seg` of `flow`, whose earlier held segments total `held` bytes.
/// Returns the verdict (always a drop, counted as `why` when the data was
/// copied or there was none) and the payload bytes copied.
#[inline(always)]
pub fn hold<I>(frame: &XdpFrame, seg: &TcpSegment<I>, flow: &FlowKey, held: u64, why: u32) -> (Verdict, u32) {
    let payload = seg.payload_len as u64;
    if payload == 0 {
        // A pure ACK or window update: nothing for the target.
        return (Verdict::new(XDP_DROP, why), 0);
    }
    let total = seg.packet_len();
    if total > HELD_MAX_PACKET || held + payload > HELD_PER_FLOW as u64 {
        return (Verdict::new(XDP_DROP, reason::HOLD_FULL), 0);
    }
    let Some(mut entry) = HELD.reserve::<HeldSegment>(0) else {
        return (Verdict::new(XDP_DROP, reason::HOLD_FULL), 0);
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points at a reserved record of HeldSegment's size; the
    // fields are written one by one (the record is larger than the BPF
    // stack, so it is never built there).
    let copied = unsafe {
        core::ptr::addr_of_mut!((*rec).flow).write(*flow);
        core::ptr::addr_of_mut!((*rec).len).write(total as u32);
        core::ptr::addr_of_mut!((*rec)._pad).write(0);
        frame.copy_packet(seg.l3_off, total, &mut *core::ptr::addr_of_mut!((*rec).packet))
    };
    if copied.is_none() {
        entry.discard(0);
        return (Verdict::new(XDP_DROP, reason::HOLD_FULL), 0);
    }
    entry.submit(0);
    (Verdict::new(XDP_DROP, why), payload as u32)
}
