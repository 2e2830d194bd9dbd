//! The data path of a spliced flow, for segments arriving on either
//! interface: lifecycle flags, counters, the rewrite (`common::splice`) and
//! the forward (`forward`). No userspace in the path.

use ackgate_common::abi::v4_bytes;
use ackgate_common::abi::{
    END_FIN, END_RST_CLIENT, END_RST_TARGET, EVENT_ENDED, FAMILY_IPV4, FlowKey, SPLICE_CONNECTING, SPLICE_ESTABLISHED,
    SPLICE_F_FIN, SPLICE_F_RST, SPLICE_F_TO_TARGET, SpliceEntry,
};
use ackgate_common::icmp;
use ackgate_common::net::{IP_DF, Ipv4Tcp, TCP_ACK, TCP_FIN, TCP_RST};
use ackgate_common::option::OptionBytes;
use ackgate_common::reason;
use ackgate_common::splice::{advance_seq_next, rewrite};
use aya_ebpf::bindings::xdp_action::XDP_DROP;
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::{self, SPLICE};
use crate::program::Verdict;
use crate::{events, forward, hold, respond};
use ackgate_common::kernel::frame::XdpFrame;

/// A segment whose 4-tuple `key` has the splice entry `entry`.
#[inline(never)]
pub fn on_segment(frame: &XdpFrame, seg: &Ipv4Tcp, key: &FlowKey, entry: *mut SpliceEntry) -> Verdict {
    // SAFETY: a map value pointer, valid for this program run; fields are
    // read and written one at a time (another CPU may update counters of
    // the same entry: they are approximate under such races, never torn).
    let e = unsafe { &mut *entry };
    if e.state != SPLICE_ESTABLISHED {
        if e.state == SPLICE_CONNECTING && e.flags & SPLICE_F_TO_TARGET != 0 {
            // While connecting, `bytes` counts what was held.
            let (verdict, copied) = hold::hold(frame, seg, key, e.bytes, reason::SPLICE_HOLD);
            e.bytes += copied as u64;
            return verdict;
        }
        return Verdict::new(XDP_DROP, reason::SPLICE_UNEXPECTED);
    }
    // Checked here, not in `lifecycle`: most segments carry neither flag,
    // and the call into that subprogram is not free.
    if seg.tcp.flags & (TCP_FIN | TCP_RST) != 0 {
        lifecycle(seg, key, e);
    }
    // SAFETY: helper without arguments.
    e.last_ns = unsafe { bpf_ktime_get_ns() };
    e.packets += 1;
    e.bytes += seg.ip.total_len() as u64;
    advance_seq_next(e, &seg.tcp, seg.payload_len);
    if seg.tcp.flags & TCP_ACK != 0 {
        // What this sender expects next from the other side: the exact
        // sequence number of a RST it accepts at once (see `SpliceEntry`).
        e.aux = seg.tcp.ack_seq();
    }
    forward(frame, seg, e)
}

/// Marks FIN and RST, and tells the control plane when the flow ended: a
/// RST from either side, or the second direction's FIN. The segment itself
/// still goes through; the control plane removes the entries a moment
/// later, after the last ACK.
#[inline(never)]
fn lifecycle(seg: &Ipv4Tcp, key: &FlowKey, e: &mut SpliceEntry) {
    let flags = seg.tcp.flags;
    let to_target = e.flags & SPLICE_F_TO_TARGET != 0;
    let client = if to_target { *key } else { e.peer_key(FAMILY_IPV4) };
    if flags & TCP_RST != 0 {
        if e.flags & SPLICE_F_RST == 0 {
            e.flags |= SPLICE_F_RST;
            events::emit(EVENT_ENDED, &client, if to_target { END_RST_CLIENT } else { END_RST_TARGET }, 0);
        }
        return;
    }
    if e.flags & SPLICE_F_FIN != 0 {
        return;
    }
    e.flags |= SPLICE_F_FIN;
    // SAFETY: copied out at once.
    let peer_fin = unsafe { SPLICE.get(e.peer_key(FAMILY_IPV4)) }.is_some_and(|p| p.flags & SPLICE_F_FIN != 0);
    if peer_fin {
        events::emit(EVENT_ENDED, &client, END_FIN, 0);
    }
}

/// Rewrites the segment for `e` and sends it on. Its own subprogram, for
/// stack room (see `on_segment`).
#[inline(never)]
fn forward(frame: &XdpFrame, seg: &Ipv4Tcp, e: &SpliceEntry) -> Verdict {
    let route = forward::route_v4(frame, seg.l3_off, &seg.ip, v4_bytes(&e.saddr), v4_bytes(&e.daddr));
    if route.too_big != 0 && u16::from_be_bytes(seg.ip.frag) & IP_DF != 0 {
        // What a router between the two would answer; without it the
        // kernel would, about the rewritten segment, and the sender could
        // not match the error to its connection.
        let (ip, error) = icmp::frag_needed(&seg.ip, &seg.tcp, route.too_big);
        return respond::transmit(frame, seg.l3_off, &ip, &error, reason::SPLICE_FRAG_NEEDED);
    }
    if route.is_redirect() && seg.ip.ttl <= 1 {
        return Verdict::new(XDP_DROP, reason::SPLICE_TTL_EXPIRED);
    }
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let Some(opts) = OptionBytes::read_into(&mut scratch.opts, frame, seg) else {
        return Verdict::new(XDP_DROP, reason::DROP_MALFORMED);
    };
    let (mut ip, mut tcp) = (seg.ip, seg.tcp);
    let opts_changed = rewrite(&mut ip, &mut tcp, opts, e, route.is_redirect());
    let written = frame.store(seg.l3_off, &ip).and_then(|_| frame.store(seg.l4_off, &tcp)).and_then(|_| {
        if opts_changed { frame.store_bytes(seg.options_off(), opts.len, opts.bytes()) } else { Some(()) }
    });
    if written.is_none() {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    }
    forward::send(frame, &route, reason::SPLICE_REDIRECT, reason::SPLICE_KERNEL)
}
