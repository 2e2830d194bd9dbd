//! Replies sent back out of the receiving interface, and the default
//! response of a service (docs/design.md §5).

use ackgate_common::abi::{RESPONSE_PAGE, RESPONSE_RESET, ServicePolicy};
use ackgate_common::net::{EthHdr, Frame, Ipv4Hdr, Ipv4Tcp, Wire};
use ackgate_common::reason;
use ackgate_common::reply::reset_for_ack;
use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX};
use aya_ebpf::helpers::bpf_xdp_adjust_tail;
use core::mem::size_of;

use crate::integrity;
use crate::program::Verdict;
use ackgate_common::kernel::frame::XdpFrame;

/// The service's default response to a segment that failed the gate.
/// `page` hands the segment to the local stack, where the default responder
/// listens on VIP:port; the target never sees it.
#[inline(always)]
pub fn refuse(frame: &XdpFrame, seg: &Ipv4Tcp, policy: &ServicePolicy, why: u32) -> Verdict {
    match policy.default_response {
        RESPONSE_RESET => {
            if !integrity::checksums_valid(frame, seg) {
                return Verdict::new(XDP_DROP, reason::DROP_BAD_CHECKSUM);
            }
            let (ip, rst) = reset_for_ack(&seg.ip, &seg.tcp);
            transmit(frame, seg.l3_off, &ip, &rst, why)
        }
        RESPONSE_PAGE => Verdict::new(XDP_PASS, why),
        _ => Verdict::new(XDP_DROP, why),
    }
}

/// Rewrites the frame into `ip` + `l4` after the original L2 header (MACs
/// swapped, VLAN tags kept) and bounces it with XDP_TX.
#[inline(always)]
pub fn transmit<L4: Wire>(frame: &XdpFrame, l3_off: usize, ip: &Ipv4Hdr, l4: &L4, why: u32) -> Verdict {
    let new_len = l3_off + size_of::<Ipv4Hdr>() + size_of::<L4>();
    let delta = new_len as i32 - frame.len() as i32;
    // SAFETY: plain helper call on our own context.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(frame.ctx().ctx, delta) } != 0 {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    }
    let Some(eth) = frame.load::<EthHdr>(0) else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let swapped = EthHdr { dst: eth.src, src: eth.dst, ether_type: eth.ether_type };
    let written = frame
        .store(0, &swapped)
        .and_then(|_| frame.store(l3_off, ip))
        .and_then(|_| frame.store(l3_off + size_of::<Ipv4Hdr>(), l4));
    match written {
        Some(()) => Verdict::new(XDP_TX, why),
        None => Verdict::new(XDP_DROP, reason::ERR_REPLY),
    }
}
