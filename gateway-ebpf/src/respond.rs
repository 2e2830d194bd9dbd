//! Replies sent back out of the receiving interface, and the default
//! response of a service (docs/design.md §5).

use ackgate_common::abi::{RESPONSE_PAGE, RESPONSE_RESET, ServicePolicy};
use ackgate_common::net::{EthHdr, Frame, TcpSegment, Wire, overlay};
use ackgate_common::reason;
use ackgate_common::reply::{Reply, reset_for_ack, reset_for_syn};
use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX};
use aya_ebpf::helpers::bpf_xdp_adjust_tail;
use core::mem::size_of;

use crate::family::Family;
use crate::program::Verdict;
use crate::{integrity, maps};
use ackgate_common::kernel::frame::XdpFrame;

/// The service's default response to a segment that failed the gate.
/// `page` hands the segment to the local stack, where the default responder
/// listens on VIP:port; the target never sees it.
#[inline(always)]
pub fn refuse<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, policy: &ServicePolicy, why: u32) -> Verdict {
    match policy.default_response {
        RESPONSE_RESET => reset(frame, seg, false, why),
        RESPONSE_PAGE => Verdict::new(XDP_PASS, why),
        _ => Verdict::new(XDP_DROP, why),
    }
}

/// Answers `seg` as a closed Linux port does: RST+ACK to a SYN (`syn`),
/// RST to an ACK-bearing segment. A segment whose checksums fail is
/// dropped unanswered instead, as the kernel drops it (`integrity`).
#[inline(never)]
pub fn reset<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, syn: bool, why: u32) -> Verdict {
    if !integrity::checksums_valid(frame, seg) {
        return Verdict::new(XDP_DROP, reason::DROP_BAD_CHECKSUM);
    }
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    // The segment's flow, as `classify` left it.
    let label = F::reset_flow_label(&scratch.key);
    let rst = overlay::<Reply<F, 0>, _>(&mut scratch.reply);
    if syn {
        reset_for_syn(&seg.ip, &seg.tcp, seg.payload_len, label, rst);
    } else {
        reset_for_ack(&seg.ip, &seg.tcp, label, rst);
    }
    transmit(frame, seg.l3_off, rst, why)
}

/// Rewrites the frame into `reply` after the original L2 header (MACs
/// swapped, VLAN tags kept) and bounces it with XDP_TX.
#[inline(always)]
pub fn transmit<R: Wire>(frame: &XdpFrame, l3_off: usize, reply: &R, why: u32) -> Verdict {
    let new_len = l3_off + size_of::<R>();
    let delta = new_len as i32 - frame.len() as i32;
    // SAFETY: plain helper call on our own context.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(frame.ctx().ctx, delta) } != 0 {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    }
    let Some(eth) = frame.load::<EthHdr>(0) else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let swapped = EthHdr { dst: eth.src, src: eth.dst, ether_type: eth.ether_type };
    match frame.store(0, &swapped).and_then(|_| frame.store(l3_off, reply)) {
        Some(()) => Verdict::new(XDP_TX, why),
        None => Verdict::new(XDP_DROP, reason::ERR_REPLY),
    }
}
