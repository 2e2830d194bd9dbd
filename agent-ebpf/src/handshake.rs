//! Handshake stage: which segments get a capability, and which MAC.
//!
//! A flow's handshake ACK is recognised by the SYN before it: the SYN's ISN
//! is remembered per flow, and the first pure ACK with SEQ = ISN + 1 is the
//! handshake ACK. That ACK is stamped once and the entry removed, so later
//! ACKs of the flow (and unrelated ACKs to the same address) leave as they
//! are, byte for byte.

use ackgate_common::abi::{FlowKey, STAMP_KIND_ACK, STAMP_KIND_SYN, StampedFlow, TargetPolicy};
use ackgate_common::kernel::config;
use ackgate_common::kernel::frame::SkbFrame;
use ackgate_common::mac::{Binding, syn_tick};
use ackgate_common::net::Ipv4Tcp;
use ackgate_common::option::{Capability, CapabilityOption, OptionBytes};
use ackgate_common::stamp::reason;
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_ktime_get_tai_ns};

use crate::edit;
use crate::maps::{self, HANDSHAKES, STAMPED};

#[inline(always)]
pub fn on_syn(frame: &SkbFrame, seg: &Ipv4Tcp, target: &TargetPolicy) -> u32 {
    let flow = FlowKey::of_segment(seg);
    if HANDSHAKES.insert(flow, seg.tcp.seq(), 0).is_err() {
        return reason::ERR_HANDSHAKE_FULL;
    }
    if target.stamp_syn == 0 {
        return reason::SYN_RECORDED;
    }
    if let Some(why) = refuse_restamp(frame, seg) {
        return why;
    }
    let Some(me) = maps::identity() else {
        return reason::SKIP_NO_IDENTITY;
    };
    let id = config::option_id();
    // SAFETY: helper without arguments.
    let tick = syn_tick(unsafe { bpf_ktime_get_tai_ns() });
    let mac = Binding::stealth_syn(seg, me.agent_id, id.exid, tick).mac(&me.key);
    let option = CapabilityOption::new(id.kind, id.exid, me.agent_id, mac);
    let stamp = StampedFlow { kind: STAMP_KIND_SYN, client_isn: seg.tcp.seq(), ..StampedFlow::default() };
    finish(frame, seg, option, flow, stamp, reason::STAMPED_SYN)
}

#[inline(always)]
pub fn on_ack(frame: &SkbFrame, seg: &Ipv4Tcp) -> u32 {
    let flow = FlowKey::of_segment(seg);
    // SAFETY: copied out at once.
    let Some(isn) = (unsafe { HANDSHAKES.get(flow) }).copied() else {
        return reason::PASS_NOT_HANDSHAKE;
    };
    if seg.tcp.seq() != isn.wrapping_add(1) {
        return reason::PASS_NOT_HANDSHAKE;
    }
    // Whatever happens next, this flow's handshake is over.
    let _ = HANDSHAKES.remove(flow);
    if let Some(why) = refuse_restamp(frame, seg) {
        return why;
    }
    let Some(me) = maps::identity() else {
        return reason::SKIP_NO_IDENTITY;
    };
    let id = config::option_id();
    let mac = Binding::handshake_ack(seg, me.agent_id, id.exid).mac(&me.key);
    let option = CapabilityOption::new(id.kind, id.exid, me.agent_id, mac);
    let stamp = StampedFlow {
        kind: STAMP_KIND_ACK,
        client_isn: isn,
        server_isn: seg.tcp.ack_seq().wrapping_sub(1),
        ..StampedFlow::default()
    };
    finish(frame, seg, option, flow, stamp, reason::STAMPED_ACK)
}

/// A segment that already carries a capability (a second agent on the path,
/// or a stamp of its own) or an unparseable option list is left alone:
/// stamping again would make a duplicate, which the gate treats as hostile.
#[inline(always)]
fn refuse_restamp(frame: &SkbFrame, seg: &Ipv4Tcp) -> Option<u32> {
    let mut slot = core::mem::MaybeUninit::uninit();
    let Some(opts) = OptionBytes::read_into(&mut slot, frame, seg) else {
        return Some(reason::SKIP_MALFORMED);
    };
    match opts.scan(config::option_id()).capability {
        Capability::Absent => None,
        Capability::Present | Capability::Malformed => Some(reason::SKIP_ALREADY_STAMPED),
    }
}

#[inline(always)]
fn finish(
    frame: &SkbFrame,
    seg: &Ipv4Tcp,
    option: CapabilityOption,
    flow: FlowKey,
    stamp: StampedFlow,
    done: u32,
) -> u32 {
    if let Err(why) = edit::stamp(frame, seg, option) {
        return why;
    }
    // SAFETY: helper without arguments.
    let stamped_ns = unsafe { bpf_ktime_get_ns() };
    let _ = STAMPED.insert(flow, StampedFlow { stamped_ns, ..stamp }, 0);
    done
}
