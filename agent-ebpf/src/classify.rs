//! First stage: is this segment bound for one of the agent's targets?

use ackgate_common::abi::{ServiceKey, TargetPolicy};
use ackgate_common::kernel::frame::SkbFrame;
use ackgate_common::net::{Ipv4Tcp, Parsed, parse_ipv4_tcp};
use ackgate_common::stamp::reason;

use crate::maps::TARGETS;

pub enum Class {
    Target {
        seg: Ipv4Tcp,
        policy: TargetPolicy,
    },
    /// Not ours; the reason to count.
    Other(u32),
}

/// Headers of every handshake segment fit in this many bytes (Ethernet, two
/// VLAN tags, 60-byte IPv4 and TCP headers).
const HANDSHAKE_HEADROOM: u32 = 22 + 60 + 60;

#[inline(always)]
pub fn classify(frame: &SkbFrame) -> Class {
    pull_headers(frame);
    let seg = match parse_ipv4_tcp(frame) {
        Parsed::Tcp(seg) => seg,
        Parsed::NotIpv4 { .. } => return Class::Other(reason::PASS_NOT_IPV4),
        Parsed::Ipv4Other { .. } | Parsed::Ipv4Fragment { .. } => return Class::Other(reason::PASS_NOT_TCP),
        Parsed::Malformed => return Class::Other(reason::SKIP_MALFORMED),
    };
    // An exact address:port target first, then the whole gateway address.
    let exact = ServiceKey::ipv4(seg.ip.daddr, seg.tcp.dport);
    let any_port = ServiceKey::ipv4(seg.ip.daddr, [0, 0]);
    // SAFETY: values are copied out at once; userspace replaces them whole.
    let policy = unsafe { TARGETS.get(exact).or_else(|| TARGETS.get(any_port)) };
    match policy {
        Some(policy) => Class::Target { seg, policy: *policy },
        None => Class::Other(reason::PASS_NOT_TARGET),
    }
}

/// Makes the headers of a small segment linear so that direct packet reads
/// see them. Locally generated SYNs and ACKs normally are; an skb whose
/// headers sit in fragments would otherwise parse as malformed.
#[inline(always)]
fn pull_headers(frame: &SkbFrame) {
    let ctx = frame.ctx();
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < ctx.len() && linear < HANDSHAKE_HEADROOM {
        let _ = ctx.pull_data(ctx.len().min(HANDSHAKE_HEADROOM));
    }
}
