//! First stage: is this segment bound for one of the agent's targets?

use ackgate_common::abi::{FlowKey, ServiceKey, TargetPolicy};
use ackgate_common::kernel::frame::SkbFrame;
use ackgate_common::net::{ETH_P_IPV6, IpHeader, Parsed, Parsed6, TcpSegment, parse_ipv4_tcp, parse_ipv6_tcp};
use ackgate_common::stamp::reason;

use crate::maps::{Scratch, TARGETS};

pub enum Class {
    /// For a target: the segment is in `Scratch::seg`, its 4-tuple in
    /// `Scratch::flow` ...
    Target(TargetPolicy),
    /// ... or, over IPv6, in `Scratch::seg6`.
    TargetV6(TargetPolicy),
    /// Not ours; the reason to count.
    Other(u32),
}

/// Headers of every handshake segment fit in this many bytes (Ethernet, two
/// VLAN tags, a 60-byte IPv4 header or an IPv6 header with four 8-byte
/// extension headers, and a 60-byte TCP header).
const HANDSHAKE_HEADROOM: u32 = 22 + 72 + 60;

/// Parses the segment into `scratch` and looks its destination up.
#[inline(always)]
pub fn classify(frame: &SkbFrame, scratch: &mut Scratch) -> Class {
    pull_headers(frame);
    match parse_ipv4_tcp(frame) {
        Parsed::Tcp(seg) => {
            scratch.seg = seg;
            scratch.flow = FlowKey::of_segment(&scratch.seg);
            target(&scratch.seg).map_or(Class::Other(reason::PASS_NOT_TARGET), Class::Target)
        }
        Parsed::NotIpv4 { ether_type, l3_off } if ether_type == ETH_P_IPV6 => {
            match parse_ipv6_tcp(frame, l3_off, &mut scratch.seg6) {
                Parsed6::Tcp => {
                    scratch.flow = FlowKey::of_segment(&scratch.seg6);
                    target(&scratch.seg6).map_or(Class::Other(reason::PASS_NOT_TARGET), Class::TargetV6)
                }
                // Not TCP, or extension headers no handshake carries (the
                // gate would drop them): left alone.
                Parsed6::Other { .. } | Parsed6::Refused(_) => Class::Other(reason::PASS_NOT_TCP),
                Parsed6::Malformed => Class::Other(reason::SKIP_MALFORMED),
            }
        }
        Parsed::NotIpv4 { .. } => Class::Other(reason::PASS_NOT_IPV4),
        Parsed::Ipv4Other { .. } | Parsed::Ipv4Fragment { .. } => Class::Other(reason::PASS_NOT_TCP),
        Parsed::Malformed => Class::Other(reason::SKIP_MALFORMED),
    }
}

/// The target for the segment's destination: an exact address:port target
/// first, then the whole gateway address.
#[inline(always)]
fn target<I: IpHeader>(seg: &TcpSegment<I>) -> Option<TargetPolicy> {
    let exact = ServiceKey::of_destination(seg);
    let any_port = ServiceKey { port: 0, ..exact };
    // SAFETY: values are copied out at once; userspace replaces them whole.
    unsafe { TARGETS.get(exact).or_else(|| TARGETS.get(any_port)) }.copied()
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
