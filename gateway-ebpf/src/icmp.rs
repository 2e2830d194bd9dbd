//! ICMP errors about spliced segments, on either interface: translated for
//! the endpoint that sent the quoted segment (`common::icmp` says how and
//! why) and sent on as a spliced segment is. An error about the splice's
//! own SYN ends the splice as a RST does.

use ackgate_common::abi::{
    EVENT_REFUSED, REFUSED_UNREACHABLE, SPLICE_ESTABLISHED, SPLICE_F_TO_TARGET, SpliceKey, port_field,
};
use ackgate_common::icmp::{self, TcpPorts};
use ackgate_common::kernel::frame::XdpFrame;
use ackgate_common::net::Ipv4Hdr;
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::XDP_DROP;

use crate::maps::{self, SPLICE};
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
    // The segment went out of this side, so the direction that carries
    // the error on is the one that arrives here: to the target from the
    // edge, to the client from the internal side. A quote of the other
    // direction is no error the splice caused on this side.
    if (reply.flags & SPLICE_F_TO_TARGET != 0) != from_edge {
        return Verdict::CONTINUE;
    }
    if reply.state != SPLICE_ESTABLISHED {
        // The splice's SYN, to the target, is the only segment a
        // connecting flow sends: an error about it comes from the internal
        // side; from the edge, it is none of the splice's.
        if from_edge {
            return Verdict::CONTINUE;
        }
        if err.is_hard() {
            events::emit(EVENT_REFUSED, &reply.peer_key().flow(), REFUSED_UNREACHABLE, 0);
            return Verdict::new(XDP_DROP, reason::INTERNAL_TARGET_UNREACHABLE);
        }
        return Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED);
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
