//! First stage: is this packet about a protected service at all?

use ackgate_common::abi::{ServiceKey, ServicePolicy, VipKey};
use ackgate_common::net::{Ipv4Tcp, Parsed, parse_ipv4_tcp};
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};

use crate::maps::{SERVICES, VIPS};
use crate::program::Verdict;
use ackgate_common::kernel::frame::XdpFrame;

pub enum Class {
    Protected {
        seg: Ipv4Tcp,
        policy: ServicePolicy,
    },
    /// Decided already: not ours, or unusable.
    Other(Verdict),
}

#[inline(always)]
pub fn classify(frame: &XdpFrame) -> Class {
    let seg = match parse_ipv4_tcp(frame) {
        Parsed::Tcp(seg) => seg,
        Parsed::NotIpv4 { .. } => return Class::Other(Verdict::new(XDP_PASS, reason::PASS_NOT_IPV4)),
        Parsed::Ipv4Other { .. } => return Class::Other(Verdict::new(XDP_PASS, reason::PASS_NOT_TCP)),
        Parsed::Ipv4Fragment { daddr } => {
            // A handshake never needs fragments, and a non-first fragment has
            // no port to check; to a VIP they are dropped, elsewhere passed.
            let verdict = if VIPS.get_ptr(VipKey::ipv4(daddr)).is_some() {
                Verdict::new(XDP_DROP, reason::DROP_FRAGMENT)
            } else {
                Verdict::new(XDP_PASS, reason::PASS_NOT_SERVICE)
            };
            return Class::Other(verdict);
        }
        // The stack would drop these as well (ip_rcv_core in
        // net/ipv4/ip_input.c, tcp_v4_rcv in net/ipv4/tcp_ipv4.c), and a
        // header we cannot read is one we cannot vouch for.
        Parsed::Malformed => return Class::Other(Verdict::new(XDP_DROP, reason::DROP_MALFORMED)),
    };
    let key = ServiceKey::ipv4(seg.ip.daddr, seg.tcp.dport);
    // SAFETY: the value is copied out at once; services are replaced whole.
    match unsafe { SERVICES.get(key) } {
        Some(policy) => Class::Protected { seg, policy: *policy },
        None => Class::Other(Verdict::new(XDP_PASS, reason::PASS_NOT_SERVICE)),
    }
}
