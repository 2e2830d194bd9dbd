//! The data path of a spliced flow, for segments arriving on either
//! interface: lifecycle flags, counters, the rewrite (`common::splice`) and
//! the forward (`forward`). No userspace in the path. Written once for
//! both families: IPv4's runs inside the gate and internal programs,
//! IPv6's in the splice stage (`stage`).

use ackgate_common::abi::{
    END_FIN, END_RST_CLIENT, END_RST_TARGET, EVENT_ENDED, FlowKey, LAST_SEEN_SHIFT, SPLICE_CONNECTING,
    SPLICE_ESTABLISHED, SPLICE_F_FIN, SPLICE_F_RST, SPLICE_F_TO_TARGET, SpliceEntry,
};
use ackgate_common::net::{Frame, TCP_ACK, TCP_FIN, TCP_RST, TcpSegment};
use ackgate_common::option::OptionBytes;
use ackgate_common::reason;
use ackgate_common::splice::{AlignedTimestamp, advance_seq_next, rewrite, rewrite_aligned_timestamp};
use aya_ebpf::bindings::xdp_action::XDP_DROP;
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use core::mem::size_of;

use crate::family::Family;
use crate::maps;
use crate::program::Verdict;
use crate::{events, forward, hold};
use ackgate_common::kernel::frame::XdpFrame;

/// A segment whose 4-tuple `key` has the splice entry `entry`.
#[inline(never)]
pub fn on_segment<F: Family>(
    frame: &XdpFrame,
    seg: &TcpSegment<F>,
    key: &FlowKey,
    entry: *mut SpliceEntry<F::SpliceAddr>,
) -> Verdict {
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
        lifecycle::<F>(seg, key, e);
    }
    e.last_seen = last_seen_now();
    e.packets = e.packets.wrapping_add(1);
    e.bytes += (u16::from_be_bytes(seg.ip.length_field()) as usize + F::LENGTH_EXCLUDES) as u64;
    advance_seq_next(e, &seg.tcp, seg.payload_len);
    if seg.tcp.flags & TCP_ACK != 0 {
        // What this sender expects next from the other side: the exact
        // sequence number of a RST it accepts at once (see `SpliceEntry`).
        e.aux = seg.tcp.ack_seq();
    }
    forward(frame, seg, e)
}

/// The clock of `SpliceEntry::last_seen`: the coarse monotonic clock,
/// which costs a fraction of the precise one per segment and is precise
/// enough (a tick) for idle timeouts.
#[inline(always)]
pub fn last_seen_now() -> u32 {
    // SAFETY: helper without arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } >> LAST_SEEN_SHIFT) as u32
}

/// Marks FIN and RST, and tells the control plane when the flow ended: a
/// RST from either side, or the second direction's FIN. The segment itself
/// still goes through; the control plane removes the entries a moment
/// later, after the last ACK.
#[inline(never)]
fn lifecycle<F: Family>(seg: &TcpSegment<F>, key: &FlowKey, e: &mut SpliceEntry<F::SpliceAddr>) {
    let flags = seg.tcp.flags;
    let to_target = e.flags & SPLICE_F_TO_TARGET != 0;
    let client = if to_target { *key } else { e.peer_key().flow() };
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
    let peer_fin = unsafe { F::splice_map().get(e.peer_key()) }.is_some_and(|p| p.flags & SPLICE_F_FIN != 0);
    if peer_fin {
        events::emit(EVENT_ENDED, &client, END_FIN, 0);
    }
}

/// Routes the segment for `e`, then rewrites it and sends it on. The
/// rewrite and the MTU answer are subprograms of their own, for stack
/// room: each alone fits under this frame, inlined together they do not.
#[inline(never)]
fn forward<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, e: &SpliceEntry<F::SpliceAddr>) -> Verdict {
    let route = F::route(frame, seg, e);
    if route.too_big != 0 && !F::may_fragment(seg) {
        return too_big(frame, seg, route.too_big);
    }
    if route.is_redirect() && F::hop_limit(seg) <= 1 {
        return Verdict::new(XDP_DROP, reason::SPLICE_TTL_EXPIRED);
    }
    let mut written = if seg.options_len() == size_of::<AlignedTimestamp>() {
        rewrite_timestamped(frame, seg, e, route.is_redirect())
    } else {
        Rewritten::NotTimestamped
    };
    if written == Rewritten::NotTimestamped {
        written = rewrite_any(frame, seg, e, route.is_redirect());
    }
    if written != Rewritten::Yes {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    }
    forward::send(frame, &route, reason::SPLICE_REDIRECT, reason::SPLICE_KERNEL)
}

/// The fast path: options that are exactly NOP, NOP, timestamp (nearly
/// every segment of a connection with timestamps), read and written in
/// place. Other 12-byte option lists take the general path.
#[inline(never)]
fn rewrite_timestamped<F: Family>(
    frame: &XdpFrame,
    seg: &TcpSegment<F>,
    e: &SpliceEntry<F::SpliceAddr>,
    forwarding: bool,
) -> Rewritten {
    let Some(mut ts) = frame.load::<AlignedTimestamp>(seg.options_off()) else {
        return Rewritten::No;
    };
    if !ts.is_aligned_timestamp() {
        return Rewritten::NotTimestamped;
    }
    let (mut ip, mut tcp) = (F::rewrite_copy(seg), seg.tcp);
    rewrite_aligned_timestamp(&mut ip, &mut tcp, &mut ts, e, forwarding);
    let written = F::store_header(frame, seg.l3_off, &ip, e)
        .and_then(|_| F::store(frame, seg.l4_off, &tcp))
        .and_then(|_| F::store(frame, seg.options_off(), &ts));
    if written.is_some() { Rewritten::Yes } else { Rewritten::No }
}

/// How a rewrite stage ended. A plain integer enum: subprograms return
/// it in a register.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Rewritten {
    Yes,
    /// Failed: the segment is dropped.
    No,
    /// Not exactly NOP, NOP, timestamp: the general path.
    NotTimestamped,
}

/// The general rewrite: any options, copied to the scratch map, walked
/// (timestamps, SACK blocks) and written back if they changed.
#[inline(never)]
fn rewrite_any<F: Family>(
    frame: &XdpFrame,
    seg: &TcpSegment<F>,
    e: &SpliceEntry<F::SpliceAddr>,
    forwarding: bool,
) -> Rewritten {
    let Some(scratch) = maps::scratch() else {
        return Rewritten::No;
    };
    let Some(opts) = OptionBytes::read_into(&mut scratch.opts, frame, seg) else {
        return Rewritten::No;
    };
    let (mut ip, mut tcp) = (F::rewrite_copy(seg), seg.tcp);
    let opts_changed = rewrite(&mut ip, &mut tcp, opts, e, forwarding);
    let written =
        F::store_header(frame, seg.l3_off, &ip, e).and_then(|_| F::store(frame, seg.l4_off, &tcp)).and_then(|_| {
            if opts_changed { frame.store_bytes(seg.options_off(), opts.len, opts.bytes()) } else { Some(()) }
        });
    if written.is_some() { Rewritten::Yes } else { Rewritten::No }
}

/// Answers a segment that may not be fragmented and does not fit the next
/// hop's `mtu` with "fragmentation needed" or "packet too big", as a router
/// between the two would; left to the kernel, the error would quote the
/// rewritten segment, which the sender cannot match to its connection.
#[inline(never)]
fn too_big<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, mtu: u16) -> Verdict {
    F::too_big(frame, seg, mtu)
}
