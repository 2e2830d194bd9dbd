//! The internal interface (facing the targets): the target's side of
//! spliced flows, and the completion of the splice's handshake: the
//! target's SYN/ACK is answered with the ACK in XDP (the gateway's stack
//! never sees it, so it cannot answer with a RST: tcp_v4_rcv has no socket
//! for it), both directions' entries become established, and the control
//! plane is told. Everything else passes.

use ackgate_common::abi::{EVENT_REFUSED, EVENT_SPLICED, FlowKey, REFUSED_RST, SPLICE_CONNECTING, SpliceKey};
use ackgate_common::icmp::IPPROTO_ICMP;
use ackgate_common::net::{Ipv4Tcp, Parsed, TCP_ACK, TCP_RST, TCP_SYN, parse_ipv4_tcp};
use ackgate_common::option::Capability;
use ackgate_common::reason;
use ackgate_common::reply::{handshake_ack, handshake_ack_ts};
use ackgate_common::splice::{TargetAnswer, complete};
use aya_ebpf::bindings::BPF_EXIST;
use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};

use crate::maps::{self, SPLICE, Scratch};
use crate::program::{ICMP_V4, Verdict};
use crate::respond::transmit;
use crate::{events, icmp, options, splice};
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
    if !parsed.is_continue() {
        return parsed;
    }
    let (seg, key, splice_key) = (&scratch.seg, &scratch.key, &scratch.splice_key);
    let Some(entry) = maps::splice_entry(splice_key, false) else {
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
        _ => Verdict::new(XDP_PASS, reason::INTERNAL_PASS),
    }
}

/// A segment from the target while the splice's SYN is out: the SYN/ACK
/// completes the splice, a RST refuses it.
#[inline(never)]
fn connecting(frame: &XdpFrame, seg: &Ipv4Tcp, target_key: &SpliceKey) -> Verdict {
    // SAFETY: copied out at once.
    let Some(mut to_client) = (unsafe { SPLICE.get(target_key) }).copied() else {
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
    // SAFETY: copied out at once.
    let Some(mut to_target) = (unsafe { SPLICE.get(client_key) }).copied() else {
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
    let ack = complete(&mut to_target, &mut to_client, &answer);
    // The idle clock starts now, even for a flow that never sends anything.
    let now = splice::last_seen_now();
    to_target.last_seen = now;
    to_client.last_seen = now;
    // Whole-value updates: another CPU reading an entry sees the old value
    // or the new one, never a mix (htab_map_update_elem swaps elements).
    // By reference on purpose: by value, the two entries are copied onto
    // the stack again and the frame grows past what the stage can spare.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let written = SPLICE.insert(target_key, &to_client, BPF_EXIST as u64).is_ok()
        && SPLICE.insert(&client_key, &to_target, BPF_EXIST as u64).is_ok();
    if !written {
        return Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED);
    }
    events::emit(EVENT_SPLICED, &client_key.flow(), 0, answer.isn);
    match ack.ts {
        Some(ts) => {
            let reply = handshake_ack_ts(&seg.ip, &seg.tcp, ack.seq, ack.ack, ack.window, ts);
            transmit(frame, seg.l3_off, &reply, reason::INTERNAL_SPLICED)
        }
        None => {
            let reply = handshake_ack(&seg.ip, &seg.tcp, ack.seq, ack.ack, ack.window);
            transmit(frame, seg.l3_off, &reply, reason::INTERNAL_SPLICED)
        }
    }
}
