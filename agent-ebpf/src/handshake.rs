//! Handshake stage: which segments get a capability, and which MAC.
//!
//! A flow's handshake ACK is recognised by the SYN before it: the SYN's ISN
//! is remembered per flow, and the first pure ACK with SEQ = ISN + 1 is the
//! handshake ACK. That ACK is stamped once; later ACKs of the flow (and
//! unrelated ACKs to the same address) leave as they are, byte for byte.
//!
//! The gate cannot tell the flow's data from anyone's until it has the
//! stamped ACK. So when the flow's first data segment leaves and no stamped
//! ACK has (the stack merged the ACK into the data, or a local firewall
//! dropped it before this hook), or leaves again after a stamped ACK that
//! may have been lost on the way, that segment is cut down to the pure ACK
//! and stamped; TCP sends the data again, as it would after a loss. The
//! flow's entry stays until the client acknowledges data of the server's,
//! which only a flow the gate has spliced can receive.

use ackgate_common::abi::{
    AgentHandshake, FlowKey, HANDSHAKE_ACK_STAMPED, HANDSHAKE_DATA_SENT, HANDSHAKE_SYN_SENT, STAMP_KIND_ACK,
    STAMP_KIND_SYN, StampedFlow, TargetPolicy,
};
use ackgate_common::kernel::config;
use ackgate_common::kernel::frame::SkbFrame;
use ackgate_common::mac::{Binding, BoundAddr, syn_tick};
use ackgate_common::net::{IpHeader, TCP_FIN, TcpSegment};
use ackgate_common::option::{Capability, CapabilityOption, OptionBytes};
use ackgate_common::stamp::reason;
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_ktime_get_tai_ns};

use crate::edit;
use crate::maps::{self, HANDSHAKES, STAMPED};

// The two stages, and each family's instance, are BPF subprograms of their
// own: inlined together they overflowed the 512-byte stack.
#[inline(never)]
pub fn on_syn<I: IpHeader<Addr: BoundAddr>>(
    frame: &SkbFrame,
    seg: &TcpSegment<I>,
    flow: &FlowKey,
    target: &TargetPolicy,
) -> u32 {
    // A socket of a local account without a login is never followed: its
    // handshake ACK leaves unstamped and the gate lets the flow reach
    // nothing.
    let Some(account) = maps::account(frame) else {
        return reason::SKIP_NO_ACCOUNT;
    };
    let hs = AgentHandshake { client_isn: seg.tcp.seq(), ..AgentHandshake::default() };
    if HANDSHAKES.insert(flow, hs, 0).is_err() {
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
    let mac = Binding::<I::Addr>::stealth_syn_on(flow, &seg.tcp, me.agent_id, id.exid, tick).mac(&me.key);
    let option = CapabilityOption::new(id.kind, id.exid, me.agent_id, mac);
    let stamp = StampedFlow { kind: STAMP_KIND_SYN, client_isn: seg.tcp.seq(), account, ..StampedFlow::default() };
    finish(frame, seg, option, flow, stamp, reason::STAMPED_SYN)
}

/// A segment with ACK (and maybe FIN) to a target: the flow's handshake
/// ACK gets the stamp. So does its first data segment, cut down to a pure
/// ACK, when no stamped ACK has left before it, and every second time it
/// is sent again (the stamped ACK may have been lost): without a stamped
/// ACK the gate drops the flow's data for good, while TCP sends data it
/// lost again within a tail-loss probe.
#[inline(never)]
pub fn on_ack<I: IpHeader<Addr: BoundAddr>>(frame: &SkbFrame, seg: &TcpSegment<I>, flow: &FlowKey) -> u32 {
    let Some(hs) = HANDSHAKES.get_ptr_mut(flow) else {
        return reason::PASS_NOT_HANDSHAKE;
    };
    // SAFETY: a map value pointer valid for this run. One socket's
    // segments are sent one at a time, so nothing else writes this entry
    // meanwhile.
    let hs = unsafe { &mut *hs };
    let server_isn = seg.tcp.ack_seq().wrapping_sub(1);
    if hs.state != HANDSHAKE_SYN_SENT && server_isn != hs.server_isn {
        // The client acknowledges the server's data: the gate has the flow.
        let _ = HANDSHAKES.remove(flow);
        return reason::PASS_NOT_HANDSHAKE;
    }
    if seg.tcp.seq() != hs.client_isn.wrapping_add(1) {
        return reason::PASS_NOT_HANDSHAKE;
    }
    let client_isn = hs.client_isn;
    if seg.payload_len == 0 && seg.tcp.flags & TCP_FIN == 0 {
        if hs.state != HANDSHAKE_SYN_SENT {
            // A window update or duplicate ACK: leaves as it is.
            return reason::PASS_NOT_HANDSHAKE;
        }
        hs.state = HANDSHAKE_ACK_STAMPED;
        hs.server_isn = server_isn;
        if let Some(why) = refuse_restamp(frame, seg) {
            return why;
        }
        return stamp_ack(frame, seg, flow, client_isn, reason::STAMPED_ACK);
    }
    if hs.state == HANDSHAKE_ACK_STAMPED {
        // Right after a stamped ACK: most likely it arrived.
        hs.state = HANDSHAKE_DATA_SENT;
        return reason::PASS_NOT_HANDSHAKE;
    }
    hs.state = HANDSHAKE_ACK_STAMPED;
    hs.server_isn = server_isn;
    stamp_ack_from_data(frame, seg, flow, client_isn)
}

/// The first data segment (or FIN) cut down to a pure ACK and stamped.
/// Cutting this very segment rather than sending a copy of it ahead
/// (`bpf_clone_redirect`) works with every gate: generic XDP passes a
/// redirected skb without running (`netif_receive_generic_xdp` in
/// net/core/dev.c), and a veth keeps the mark across namespaces.
#[inline(always)]
fn stamp_ack_from_data<I: IpHeader<Addr: BoundAddr>>(
    frame: &SkbFrame,
    seg: &TcpSegment<I>,
    flow: &FlowKey,
    client_isn: u32,
) -> u32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let Some(opts) = OptionBytes::read_into(&mut slot, frame, seg) else {
        return reason::SKIP_MALFORMED;
    };
    if opts.scan(config::option_id()).capability != Capability::Absent {
        return reason::SKIP_ALREADY_STAMPED;
    }
    let ack = match edit::cut_to_pure_ack(frame, seg, opts) {
        Ok(cut) => cut.segment(seg),
        Err(why) => return why,
    };
    stamp_ack(frame, &ack, flow, client_isn, reason::STAMPED_ACK_FROM_DATA)
}

/// Stamps the pure ACK `seg` and records the flow as stamped.
#[inline(always)]
fn stamp_ack<I: IpHeader<Addr: BoundAddr>>(
    frame: &SkbFrame,
    seg: &TcpSegment<I>,
    flow: &FlowKey,
    client_isn: u32,
    done: u32,
) -> u32 {
    let Some(me) = maps::identity() else {
        return reason::SKIP_NO_IDENTITY;
    };
    // Asked again: the account may have logged out since its SYN.
    let Some(account) = maps::account(frame) else {
        return reason::SKIP_NO_ACCOUNT;
    };
    let id = config::option_id();
    let mac = Binding::<I::Addr>::handshake_ack_on(flow, &seg.tcp, me.agent_id, id.exid).mac(&me.key);
    let option = CapabilityOption::new(id.kind, id.exid, me.agent_id, mac);
    let stamp = StampedFlow {
        kind: STAMP_KIND_ACK,
        client_isn,
        server_isn: seg.tcp.ack_seq().wrapping_sub(1),
        account,
        ..StampedFlow::default()
    };
    finish(frame, seg, option, flow, stamp, done)
}

/// A segment that already carries a capability (a second agent on the path,
/// or a stamp of its own) or an unparseable option list is left alone:
/// stamping again would make a duplicate, which the gate treats as hostile.
#[inline(always)]
fn refuse_restamp<I>(frame: &SkbFrame, seg: &TcpSegment<I>) -> Option<u32> {
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
fn finish<I: IpHeader>(
    frame: &SkbFrame,
    seg: &TcpSegment<I>,
    option: CapabilityOption,
    flow: &FlowKey,
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
