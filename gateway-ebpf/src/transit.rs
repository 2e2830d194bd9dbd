//! Default-deny forwarding on the edge (docs/design.md §2: nothing reaches the
//! private network except spliced flows). With `ip_forward` on (the
//! kernel-forwarding fallback needs it), the stack would route any packet
//! from the edge to the private network, bypassing the gate. So a packet
//! that is not for a protected service passes only if it is for the
//! gateway itself (the FIB does not forward it: local, broadcast,
//! multicast, no route, or forwarding off on the edge) or its destination
//! is in an allowed-transit prefix.

use ackgate_common::abi::{FAMILY_IPV4, FAMILY_IPV6, TransitKey};
use ackgate_common::net::{Frame, Ipv4Hdr, Ipv6Hdr};
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};
use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup__bindgen_ty_3,
    bpf_fib_lookup__bindgen_ty_4,
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::forward::{self, AF_INET, AF_INET6};
use crate::maps::{self, TRANSIT};
use crate::program::Verdict;
use ackgate_common::kernel::frame::XdpFrame;

/// An IPv4 packet not for a protected service; `local` is the reason
/// counted when it is for the gateway itself.
#[inline(never)]
pub fn ipv4(frame: &XdpFrame, ip: &Ipv4Hdr, local: u32) -> Verdict {
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let p = &mut scratch.fib;
    *p = forward::params(AF_INET, frame.ingress_ifindex(), u16::from_be_bytes(ip.total_len));
    p.__bindgen_anon_3 = bpf_fib_lookup__bindgen_ty_3 { ipv4_src: u32::from_ne_bytes(ip.saddr) };
    p.__bindgen_anon_4 = bpf_fib_lookup__bindgen_ty_4 { ipv4_dst: u32::from_ne_bytes(ip.daddr) };
    if !forwarded(forward::fib_result(frame, p)) {
        return Verdict::new(XDP_PASS, local);
    }
    let d = u32::from_ne_bytes(ip.daddr);
    allowed(&[family_word(FAMILY_IPV4), d, 0, 0, 0])
}

/// An IPv6 packet (its header at `l3_off`), checked like IPv4; link-local
/// and multicast destinations (neighbour discovery among them) are the
/// gateway's own business.
#[inline(never)]
pub fn ipv6(frame: &XdpFrame, l3_off: usize, local: u32) -> Verdict {
    let Some(ip6) = frame.load::<Ipv6Hdr>(l3_off) else {
        return Verdict::new(XDP_DROP, reason::DROP_MALFORMED);
    };
    // ff00::/8 multicast, fe80::/10 link-local: never forwarded.
    if ip6.daddr[0] == 0xff || (ip6.daddr[0] == 0xfe && ip6.daddr[1] & 0xc0 == 0x80) {
        return Verdict::new(XDP_PASS, reason::PASS_NOT_IPV4);
    }
    let words = |a: [u8; 16]| {
        [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ]
    };
    let (s, d) = (words(ip6.saddr), words(ip6.daddr));
    let tot_len = u16::from_be_bytes(ip6.payload_len).saturating_add(40);
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let p = &mut scratch.fib;
    *p = forward::params(AF_INET6, frame.ingress_ifindex(), tot_len);
    p.__bindgen_anon_3 = bpf_fib_lookup__bindgen_ty_3 { ipv6_src: s };
    p.__bindgen_anon_4 = bpf_fib_lookup__bindgen_ty_4 { ipv6_dst: d };
    if !forwarded(forward::fib_result(frame, p)) {
        return Verdict::new(XDP_PASS, local);
    }
    allowed(&[family_word(FAMILY_IPV6), d[0], d[1], d[2], d[3]])
}

/// Whether the kernel would route the packet on (to a next hop, possibly
/// after resolving it or fragmenting).
#[inline(always)]
fn forwarded(rc: i64) -> bool {
    rc == BPF_FIB_LKUP_RET_SUCCESS as i64
        || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64
        || rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64
}

#[inline(always)]
fn family_word(family: u8) -> u32 {
    u32::from_ne_bytes([family, 0, 0, 0])
}

#[inline(always)]
fn allowed(data: &TransitKey) -> Verdict {
    let key = Key::new(32 + 128, *data);
    if TRANSIT.get(&key).is_some() {
        Verdict::new(XDP_PASS, reason::PASS_TRANSIT)
    } else {
        Verdict::new(XDP_DROP, reason::DROP_TRANSIT)
    }
}
