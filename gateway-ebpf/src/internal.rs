//! The internal interface (facing the targets): the target's side of
//! spliced flows, and the completion of the splice's handshake: the
//! target's SYN/ACK is answered with the ACK in XDP (the gateway's stack
//! never sees it, so it cannot answer with a RST: tcp_v4_rcv has no socket
//! for it), both directions' entries become established, and the control
//! plane is told. IPv6 segments of spliced flows go on in the splice stage
//! (`stage`), which completes their handshake with the same
//! [`connecting`]. Everything else passes.

use ackgate_common::abi::{EVENT_REFUSED, EVENT_SPLICED, FlowKey, REFUSED_RST, SPLICE_CONNECTING, SpliceKey};
use ackgate_common::icmp::{IPPROTO_ICMP, IPPROTO_ICMPV6};
use ackgate_common::net::{
    ETH_P_IPV6, Ipv4Hdr, Ipv6Hdr, Parsed, Parsed6, TCP_ACK, TCP_RST, TCP_SYN, TcpSegment, overlay, parse_ipv4_tcp,
    parse_ipv6_tcp,
};
use ackgate_common::option::Capability;
use ackgate_common::reason;
use ackgate_common::reply::{Reply, handshake_ack, handshake_ack_ts};
use ackgate_common::splice::{CompletingAck, TargetAnswer, complete};
use aya_ebpf::bindings::BPF_EXIST;
use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};

use crate::family::Family;
use crate::maps::{self, Scratch};
use crate::program::{ICMP_V4, ICMP_V6, SPLICE_V6, Verdict};
use crate::respond::transmit;
use crate::stage::{STAGE_JOB_ICMP, STAGE_JOB_SEGMENT};
use crate::{events, icmp, options, splice, stage};
use ackgate_common::kernel::frame::XdpFrame;

#[inline(always)]
pub fn internal(frame: &XdpFrame) -> Verdict {
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let parsed = parse(frame, scratch);
    if parsed.action() == ICMP_V4 {
        let translated = icmp::on_ipv4(frame, scratch.seg.l3_off, &scratch.seg.ip, false);
        return if translated.is_continue() { Verdict::new(XDP_PASS, reason::INTERNAL_PASS) } else { translated };
    }
    if parsed.action() == SPLICE_V6 {
        return stage::enter_splice_v6(frame, STAGE_JOB_SEGMENT);
    }
    if parsed.action() == ICMP_V6 {
        let translated = icmp::on_ipv6(frame, false);
        if translated.action() == SPLICE_V6 {
            return stage::enter_splice_v6(frame, STAGE_JOB_ICMP);
        }
        return if translated.is_continue() { Verdict::new(XDP_PASS, reason::INTERNAL_PASS) } else { translated };
    }
    if !parsed.is_continue() {
        return parsed;
    }
    let (seg, key, splice_key) = (&scratch.seg, &scratch.key, &scratch.splice_key);
    let Some(entry) = maps::splice_entry::<Ipv4Hdr>(splice_key, false) else {
        return Verdict::new(XDP_PASS, reason::INTERNAL_PASS);
    };
    // SAFETY: copied out at once.
    if unsafe { (*entry).state } == SPLICE_CONNECTING {
        return connecting(frame, seg, splice_key);
    }
    splice::on_segment(frame, seg, key, entry)
}

/// Parses a TCP segment into `scratch`, as `classify` does on the edge.
/// An ICMP packet's header goes there too, with the `ICMP_V4` marker: the
/// caller translates it, so that the two stages do not share a call
/// chain's stack.
#[inline(never)]
fn parse(frame: &XdpFrame, scratch: &mut Scratch) -> Verdict {
    match parse_ipv4_tcp(frame) {
        Parsed::Tcp(seg) => {
            scratch.key = FlowKey::of_segment(&seg);
            scratch.splice_key = SpliceKey::of_segment(&seg);
            scratch.seg = seg;
            Verdict::CONTINUE
        }
        Parsed::Ipv4Other { ip, l3_off } if ip.proto == IPPROTO_ICMP => {
            scratch.seg.ip = ip;
            scratch.seg.l3_off = l3_off;
            Verdict::new(ICMP_V4, reason::INTERNAL_PASS)
        }
        Parsed::NotIpv4 { ether_type, l3_off } if ether_type == ETH_P_IPV6 => parse_v6(frame, l3_off, scratch),
        _ => Verdict::new(XDP_PASS, reason::INTERNAL_PASS),
    }
}

/// An IPv6 packet: [`Verdict::SPLICE_V6`] for a segment of a spliced flow
/// from the target's side (parsed into `scratch.seg6` and `scratch.key`,
/// for the stage), the `ICMP_V6` marker for ICMPv6 (`seg6.l4_off` at its
/// header), else a pass.
#[inline(never)]
fn parse_v6(frame: &XdpFrame, l3_off: usize, scratch: &mut Scratch) -> Verdict {
    match parse_ipv6_tcp(frame, l3_off, &mut scratch.seg6) {
        Parsed6::Tcp => {}
        Parsed6::Other { next_header, l4_off } if next_header == IPPROTO_ICMPV6 => {
            scratch.seg6.l4_off = l4_off;
            return Verdict::new(ICMP_V6, reason::INTERNAL_PASS);
        }
        _ => return Verdict::new(XDP_PASS, reason::INTERNAL_PASS),
    }
    scratch.splice_key6 = SpliceKey::of_segment(&scratch.seg6);
    if maps::splice_entry::<Ipv6Hdr>(&scratch.splice_key6, false).is_none() {
        return Verdict::new(XDP_PASS, reason::INTERNAL_PASS);
    }
    scratch.key = FlowKey::of_segment(&scratch.seg6);
    Verdict::SPLICE_V6
}

/// A segment from the target while the splice's SYN is out: the SYN/ACK
/// completes the splice, a RST refuses it. The two entries are updated in
/// the scratch map: IPv6's two would not fit the stack beside the reply.
#[inline(never)]
pub fn connecting<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, target_key: &SpliceKey<F::SpliceAddr>) -> Verdict {
    let splice = F::splice_map();
    // SAFETY: read before the entries are copied below; userspace replaces
    // entries whole.
    let Some(to_client) = (unsafe { splice.get(target_key) }) else {
        return Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED);
    };
    let client_key = to_client.peer_key();
    let flags = seg.tcp.flags;
    if flags & TCP_RST != 0 {
        events::emit(EVENT_REFUSED, &client_key.flow(), REFUSED_RST, 0);
        return Verdict::new(XDP_DROP, reason::INTERNAL_TARGET_REFUSED);
    }
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK {
        return Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED);
    }
    // SAFETY: as above.
    let Some(to_target) = (unsafe { splice.get(client_key) }) else {
        return Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED);
    };
    if seg.tcp.ack_seq() != to_target.seq_next {
        return Verdict::new(XDP_DROP, reason::INTERNAL_SYNACK_MISMATCH);
    }
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    // Options that do not parse: no target stack sends such a list, and
    // its window scale or timestamps could not be trusted.
    if !options::scan(frame, scratch, seg.options_off(), seg.options_len())
        || scratch.scan.capability == Capability::Malformed
    {
        return Verdict::new(XDP_DROP, reason::DROP_MALFORMED);
    }
    let hs = &scratch.hs;
    let answer = TargetAnswer { isn: seg.tcp.seq(), wscale: hs.wscale(), tsval: (hs.ts_ok != 0).then_some(hs.tsval) };
    let [new_to_target, new_to_client] = F::splice_pair(scratch);
    *new_to_target = *to_target;
    *new_to_client = *to_client;
    let ack = complete(new_to_target, new_to_client, &answer);
    // The idle clock starts now, even for a flow that never sends anything.
    let now = splice::last_seen_now();
    new_to_target.last_seen = now;
    new_to_client.last_seen = now;
    // Whole-value updates: another CPU reading an entry sees the old value
    // or the new one, never a mix (htab_map_update_elem swaps elements).
    // The key by reference on purpose: by value, it is copied onto the
    // stack again.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let written = splice.insert(target_key, new_to_client, BPF_EXIST as u64).is_ok()
        && splice.insert(&client_key, new_to_target, BPF_EXIST as u64).is_ok();
    if !written {
        return Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED);
    }
    events::emit(EVENT_SPLICED, &client_key.flow(), 0, answer.isn);
    send_ack(frame, seg, &ack)
}

/// Answers the target's SYN/ACK with `ack`, built in the scratch map. A
/// subprogram of its own: the reply on `connecting`'s frame took IPv6's
/// call chain past the verifier's 512 bytes.
#[inline(never)]
fn send_ack<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, ack: &CompletingAck) -> Verdict {
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    match ack.ts {
        Some(ts) => {
            let reply = overlay::<Reply<F, 12>, _>(&mut scratch.reply);
            handshake_ack_ts(&seg.ip, &seg.tcp, (ack.seq, ack.ack, ack.window), ts, reply);
            transmit(frame, seg.l3_off, reply, reason::INTERNAL_SPLICED)
        }
        None => {
            let reply = overlay::<Reply<F, 0>, _>(&mut scratch.reply);
            handshake_ack(&seg.ip, &seg.tcp, (ack.seq, ack.ack, ack.window), reply);
            transmit(frame, seg.l3_off, reply, reason::INTERNAL_SPLICED)
        }
    }
}
