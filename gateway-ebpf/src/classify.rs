//! First stage: is this packet about a protected service at all? What is
//! not goes to the transit check (`transit`), called by the entry point.
//! IPv4 is classified here; IPv6 in `classify_v6`, a subprogram of its
//! own, so that its larger parse does not weigh on IPv4's stack frame.

use ackgate_common::abi::{FlowKey, ServiceKey, ServicePolicy, SpliceKey, VipKey};
use ackgate_common::icmp::IPPROTO_ICMPV6;
use ackgate_common::net::{
    ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv4Tcp, Ipv6Hdr, Ipv6Refusal, Parsed, Parsed6, parse_ipv4_tcp, parse_ipv6_tcp,
};
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};
use core::mem::size_of;

use crate::maps::{SERVICES, Scratch, VIPS};
use crate::program::{ICMP_V6, Verdict};
use ackgate_common::kernel::frame::XdpFrame;

/// Parses the frame into `scratch` (segment, service policy, 4-tuple).
/// Returns [`Verdict::CONTINUE`] for a segment to a protected service,
/// else the verdict for the packet. A subprogram of its own, so that its
/// frame is not part of the later stages' call chain.
#[inline(never)]
pub fn classify(frame: &XdpFrame, scratch: &mut Scratch) -> Verdict {
    match classify_inner(frame) {
        Class::Protected { seg, policy } => {
            scratch.key = FlowKey::of_segment(&seg);
            scratch.seg = seg;
            scratch.policy = policy;
            Verdict::CONTINUE
        }
        Class::TransitV4 { ip, l3_off, local } => {
            scratch.seg.ip = ip;
            scratch.seg.l3_off = l3_off;
            Verdict::transit(false, local)
        }
        Class::NotIpv4 { ether_type, l3_off } if ether_type == ETH_P_IPV6 => classify_v6(frame, l3_off, scratch),
        // ARP, LLDP, ...: not routed.
        Class::NotIpv4 { .. } => Verdict::new(XDP_PASS, reason::PASS_NOT_IPV4),
        Class::Other(verdict) => verdict,
    }
}

enum Class {
    Protected {
        seg: Ipv4Tcp,
        policy: ServicePolicy,
    },
    /// IPv4 not for a protected service (at `l3_off`): the transit check
    /// decides; `local` is the reason if it is for the gateway itself.
    TransitV4 {
        ip: Ipv4Hdr,
        l3_off: usize,
        local: u32,
    },
    NotIpv4 {
        ether_type: u16,
        l3_off: usize,
    },
    /// Decided already: unusable.
    Other(Verdict),
}

#[inline(always)]
fn classify_inner(frame: &XdpFrame) -> Class {
    let seg = match parse_ipv4_tcp(frame) {
        Parsed::Tcp(seg) => seg,
        Parsed::NotIpv4 { ether_type, l3_off } => return Class::NotIpv4 { ether_type, l3_off },
        Parsed::Ipv4Other { ip, l3_off } => return Class::TransitV4 { ip, l3_off, local: reason::PASS_NOT_TCP },
        Parsed::Ipv4Fragment { ip, l3_off } => {
            // A handshake never needs fragments, and a non-first fragment has
            // no port to check: to a VIP they are dropped.
            if VIPS.get_ptr(VipKey::ipv4(ip.daddr)).is_some() {
                return Class::Other(Verdict::new(XDP_DROP, reason::DROP_FRAGMENT));
            }
            return Class::TransitV4 { ip, l3_off, local: reason::PASS_NOT_SERVICE };
        }
        // The stack would drop these as well (ip_rcv_core in
        // net/ipv4/ip_input.c, tcp_v4_rcv in net/ipv4/tcp_ipv4.c), and a
        // header we cannot read is one we cannot vouch for.
        Parsed::Malformed => return Class::Other(Verdict::new(XDP_DROP, reason::DROP_MALFORMED)),
    };
    // A VLAN-tagged frame belongs to that VLAN's device, not to the
    // interface the gate is attached to: to the stack, which drops it when
    // no VLAN device exists for its tag (vlan_do_receive in
    // net/8021q/vlan_core.c leaves it PACKET_OTHERHOST), as it would for an
    // ordinary port. Answering it would single out the protected ports.
    if seg.l3_off != size_of::<EthHdr>() {
        return Class::TransitV4 { ip: seg.ip, l3_off: seg.l3_off, local: reason::PASS_NOT_SERVICE };
    }
    let key = ServiceKey::ipv4(seg.ip.daddr, seg.tcp.dport);
    // SAFETY: the value is copied out at once; services are replaced whole.
    match unsafe { SERVICES.get(key) } {
        Some(policy) => Class::Protected { seg, policy: *policy },
        None => Class::TransitV4 { ip: seg.ip, l3_off: seg.l3_off, local: reason::PASS_NOT_SERVICE },
    }
}

/// The IPv6 packet at `l3_off`: as `classify`, parsing into `scratch.seg6`
/// (and its splice key into `scratch.splice_key6`) for
/// [`Verdict::PROTECTED_V6`]. A transit verdict leaves the offset in
/// `scratch.seg.l3_off`.
#[inline(never)]
fn classify_v6(frame: &XdpFrame, l3_off: usize, scratch: &mut Scratch) -> Verdict {
    scratch.seg.l3_off = l3_off;
    let seg = &mut scratch.seg6;
    match parse_ipv6_tcp(frame, l3_off, seg) {
        Parsed6::Tcp => {}
        // ICMPv6 errors may concern spliced flows (`icmp::on_ipv6`); the
        // rest, neighbour discovery first, goes to the transit check.
        Parsed6::Other { next_header, l4_off } if next_header == IPPROTO_ICMPV6 && l3_off == size_of::<EthHdr>() => {
            seg.l4_off = l4_off;
            return Verdict::new(ICMP_V6, reason::PASS_NOT_TCP);
        }
        Parsed6::Other { .. } => return Verdict::transit(true, reason::PASS_NOT_TCP),
        Parsed6::Refused(why) => {
            // To a VIP each refusal is dropped and counted on its own;
            // elsewhere, the stack handles the packet as it would anyway.
            if VIPS.get_ptr(VipKey::of::<Ipv6Hdr>(seg.ip.daddr)).is_none() {
                return Verdict::transit(true, reason::PASS_NOT_SERVICE);
            }
            let why = match why {
                Ipv6Refusal::Fragment => reason::DROP_FRAGMENT,
                Ipv6Refusal::Routed => reason::DROP_IPV6_ROUTED,
                Ipv6Refusal::Options => reason::DROP_IPV6_OPTIONS,
                Ipv6Refusal::TooDeep => reason::DROP_IPV6_EXTENSIONS,
            };
            return Verdict::new(XDP_DROP, why);
        }
        // ipv6_rcv_core (net/ipv6/ip6_input.c) and tcp_v6_rcv drop these too.
        Parsed6::Malformed => return Verdict::new(XDP_DROP, reason::DROP_MALFORMED),
    }
    // Tagged frames: the VLAN device's, as for IPv4.
    if seg.l3_off != size_of::<EthHdr>() {
        return Verdict::transit(true, reason::PASS_NOT_SERVICE);
    }
    // SAFETY: the value is copied out at once; services are replaced whole.
    let Some(policy) = (unsafe { SERVICES.get(ServiceKey::of_destination(seg)) }) else {
        return Verdict::transit(true, reason::PASS_NOT_SERVICE);
    };
    scratch.policy = *policy;
    scratch.key = FlowKey::of_segment(&scratch.seg6);
    scratch.splice_key6 = SpliceKey::of_segment(&scratch.seg6);
    Verdict::PROTECTED_V6
}
