//! ICMP and ICMPv6 errors about spliced segments, on either interface:
//! translated for the endpoint that sent the quoted segment
//! (`common::icmp` says how and why) and sent on as a spliced segment is.
//! An error about the splice's own SYN ends the splice as a RST does.
//! IPv6's are translated in the IPv6 splice stage (`stage`).

use ackgate_common::abi::{
    EVENT_REFUSED, REFUSED_UNREACHABLE, SPLICE_ESTABLISHED, SPLICE_F_TO_TARGET, SpliceAddr, SpliceEntry, SpliceKey,
    port_field,
};
use ackgate_common::icmp::{self, TcpPorts};
use ackgate_common::kernel::frame::XdpFrame;
use ackgate_common::net::{Ipv4Hdr, Ipv6Hdr};
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::XDP_DROP;
use core::mem::{offset_of, size_of};

use crate::maps::{self, SPLICE, SPLICE6};
use crate::program::Verdict;
use crate::{events, forward};

/// The IPv4 packet `ip` at `l3_off`, not TCP, arriving on the edge
/// (`from_edge`) or the internal side. [`Verdict::CONTINUE`] unless it is
/// an ICMP error about a segment the splice sent out of this side.
#[inline(never)]
pub fn on_ipv4(frame: &XdpFrame, l3_off: usize, ip: &Ipv4Hdr, from_edge: bool) -> Verdict {
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let err = &mut scratch.icmp;
    if icmp::parse_error(frame, l3_off, ip, err).is_none() {
        return Verdict::CONTINUE;
    }
    // The entry of the direction opposite to the quoted segment's: it
    // knows what the quoted segment's sender calls everything.
    let quoted = &err.quoted.tcp;
    let reply_key = SpliceKey {
        saddr: u32::from_ne_bytes(err.inner.daddr),
        daddr: u32::from_ne_bytes(err.inner.saddr),
        sport: port_field(quoted.dport),
        dport: port_field(quoted.sport),
    };
    let Some(reply) = SPLICE.get_ptr(reply_key) else {
        return Verdict::CONTINUE;
    };
    // SAFETY: a map value pointer valid for this run; entries change only
    // by whole-value replacement while connecting, which is checked first.
    let reply = unsafe { &*reply };
    if let Some(verdict) = not_established(reply, from_edge, err.is_hard()) {
        return verdict;
    }
    let route = forward::route_v4(frame, l3_off, ip, reply.saddr.to_ne_bytes(), reply.daddr.to_ne_bytes());
    if route.is_redirect() && ip.ttl <= 1 {
        return Verdict::new(XDP_DROP, reason::SPLICE_TTL_EXPIRED);
    }
    icmp::translate(err, reply, route.is_redirect());
    let t = &err.quoted.tcp;
    let written = frame
        .store(err.l3_off, &err.ip)
        .and_then(|_| frame.store(err.icmp_off, &err.icmp))
        .and_then(|_| frame.store(err.inner_off, &err.inner))
        .and_then(|_| {
            if err.quoted.complete {
                frame.store(err.inner_l4_off, t)
            } else {
                frame.store(err.inner_l4_off, &TcpPorts { sport: t.sport, dport: t.dport, seq: t.seq })
            }
        });
    if written.is_none() {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    }
    forward::send(frame, &route, reason::ICMP_TRANSLATED, reason::ICMP_TRANSLATED_KERNEL)
}

/// Whether an error about the flow whose entry `reply` carries it on
/// stops short of translation: `Some(CONTINUE)` when it is none of the
/// splice's, `Some(verdict)` when it answered the splice's SYN, `None`
/// to translate it.
#[inline(always)]
fn not_established<A: SpliceAddr>(reply: &SpliceEntry<A>, from_edge: bool, hard: bool) -> Option<Verdict> {
    // The segment went out of this side, so the direction that carries
    // the error on is the one that arrives here: to the target from the
    // edge, to the client from the internal side. A quote of the other
    // direction is no error the splice caused on this side.
    if (reply.flags & SPLICE_F_TO_TARGET != 0) != from_edge {
        return Some(Verdict::CONTINUE);
    }
    if reply.state == SPLICE_ESTABLISHED {
        return None;
    }
    // The splice's SYN, to the target, is the only segment a connecting
    // flow sends: an error about it comes from the internal side; from
    // the edge, it is none of the splice's.
    if from_edge {
        return Some(Verdict::CONTINUE);
    }
    if hard {
        events::emit(EVENT_REFUSED, &reply.peer_key().flow(), REFUSED_UNREACHABLE, 0);
        return Some(Verdict::new(XDP_DROP, reason::INTERNAL_TARGET_UNREACHABLE));
    }
    Some(Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED))
}

/// The ICMPv6 packet in `Scratch::seg6` (its ICMPv6 header at `l4_off`),
/// arriving on the edge (`from_edge`) or the internal side: as
/// [`on_ipv4`], except that an error to translate is left in the scratch
/// map (`icmp6`, and the reply entry's key in `splice_key6`) with the
/// [`Verdict::SPLICE_V6`] marker, for the IPv6 splice stage
/// ([`forward_v6`]). The parse and the lookup are subprograms one after
/// the other, not one in the other: nested, their frames took the gate's
/// deepest call chain past 512 bytes on 6.1, whose verifier rounds each
/// frame up to 32 bytes (check_max_stack_depth in kernel/bpf/verifier.c;
/// later kernels round to 16 when the program is JITed).
#[inline(always)]
pub fn on_ipv6(frame: &XdpFrame, from_edge: bool) -> Verdict {
    if !parse_v6_error(frame) {
        return Verdict::CONTINUE;
    }
    reply_v6(from_edge)
}

/// Parses the ICMPv6 packet in `Scratch::seg6` into `Scratch::icmp6`, and
/// the key of the entry that would carry it on into `splice_key6`; false
/// when it is no error about a TCP segment.
#[inline(never)]
fn parse_v6_error(frame: &XdpFrame) -> bool {
    let Some(scratch) = maps::scratch() else {
        return false;
    };
    let (seg, err) = (&scratch.seg6, &mut scratch.icmp6);
    if icmp::parse_error_v6(frame, seg.l3_off, &seg.ip, seg.l4_off, err).is_none() {
        return false;
    }
    let quoted = &err.quoted.tcp;
    scratch.splice_key6 = SpliceKey {
        saddr: err.inner_daddr,
        daddr: err.inner_saddr,
        sport: port_field(quoted.dport),
        dport: port_field(quoted.sport),
    };
    true
}

/// The verdict on the error `parse_v6_error` left: not the splice's
/// (CONTINUE), one about the splice's SYN, or the marker to translate it.
#[inline(never)]
fn reply_v6(from_edge: bool) -> Verdict {
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    // By reference: the key stays in map memory, off this frame.
    let reply_key = &scratch.splice_key6;
    let Some(reply) = SPLICE6.get_ptr(reply_key) else {
        return Verdict::CONTINUE;
    };
    // SAFETY: as in `on_ipv4`.
    let reply = unsafe { &*reply };
    not_established(reply, from_edge, scratch.icmp6.is_hard()).unwrap_or(Verdict::SPLICE_V6)
}

/// The IPv6 splice stage's part: translates the error `on_ipv6` left in
/// the scratch map and sends it on. The addresses are written from the
/// entry in the map, and the rest through the helper
/// (`XdpFrame::store_copy`): see `icmp::Icmp6Error`.
#[inline(never)]
pub fn forward_v6(frame: &XdpFrame) -> Verdict {
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    // The entry may be gone by now (the flow ended meanwhile).
    let reply_key = &scratch.splice_key6;
    let Some(reply) = SPLICE6.get_ptr(reply_key) else {
        return Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED);
    };
    // SAFETY: as in `on_ipv4`.
    let reply = unsafe { &*reply };
    let err = &mut scratch.icmp6;
    let packet_len = size_of::<Ipv6Hdr>() + u16::from_be_bytes(scratch.seg6.ip.payload_len) as usize;
    let route = forward::route_v6(frame, err.l3_off, packet_len, reply.saddr, reply.daddr);
    if route.is_redirect() && err.hop_limit <= 1 {
        return Verdict::new(XDP_DROP, reason::SPLICE_TTL_EXPIRED);
    }
    icmp::translate_v6(err, reply, route.is_redirect());
    let (outer, inner) = (err.outer_saddr_off(), err.inner_saddr_off());
    let t = &err.quoted.tcp;
    let written = frame
        .store_copy(outer, &reply.saddr)
        .and_then(|_| frame.store_copy(outer + size_of::<[u32; 4]>(), &reply.daddr))
        .and_then(|_| frame.store(err.l3_off + offset_of!(Ipv6Hdr, hop_limit), &err.hop_limit))
        .and_then(|_| frame.store_copy(err.icmp_off, &err.icmp))
        .and_then(|_| frame.store_copy(inner, &err.inner_saddr))
        .and_then(|_| frame.store_copy(inner + size_of::<[u32; 4]>(), &err.inner_daddr))
        .and_then(|_| {
            if err.quoted.complete {
                frame.store_copy(err.inner_l4_off, t)
            } else {
                frame.store_copy(err.inner_l4_off, &TcpPorts { sport: t.sport, dport: t.dport, seq: t.seq })
            }
        });
    if written.is_none() {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    }
    forward::send(frame, &route, reason::ICMP_TRANSLATED, reason::ICMP_TRANSLATED_KERNEL)
}
