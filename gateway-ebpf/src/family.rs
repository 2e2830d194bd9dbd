//! What the stages need from an address family that `common` cannot give
//! them: the kernel's cookie helpers, the family's working memory in the
//! scratch map, and the spliced-flow lookup (IPv4 only, for now). The
//! stages themselves are written once, for `F: Family`.

use ackgate_common::abi::FlowKey;
use ackgate_common::mac::BoundAddr;
use ackgate_common::net::{Ipv4Hdr, Ipv4Tcp, Ipv6Hdr, Ipv6Tcp, TcpHdr, TcpSegment, overlay};
use ackgate_common::reply::{FLOW_LABEL_MASK, ReplyHeader, TcpWithOptions, reset_flow_label};
use aya_ebpf::bindings::{iphdr, ipv6hdr, tcphdr};
use aya_ebpf::helpers::{
    bpf_get_prandom_u32, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
    bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6,
};

use crate::maps::{self, Scratch};
use crate::program::Verdict;
use crate::{settings, splice};
use ackgate_common::kernel::frame::XdpFrame;

/// The copy of a SYN's TCP header the cookie helper hashes (see
/// `syn::syncookie`).
pub type CookieProbe = TcpWithOptions<4>;

pub trait Family: ReplyHeader<Addr: BoundAddr> {
    /// A cookie ISN for the SYN whose IP header and TCP probe are in
    /// `scratch` (`cookie_ip`, `cookie_tcp`); the helper's raw result.
    fn gen_cookie(scratch: &mut Scratch) -> i64;

    /// Whether the handshake ACK whose headers are in `scratch`
    /// (`cookie_ip`, `cookie_tcp`) acknowledges a cookie.
    fn cookie_valid(scratch: &mut Scratch) -> bool;

    /// The flow label of a SYN/ACK: Linux derives it from the request's
    /// random txhash (tcp_make_synack, ip6_make_flowlabel), so a new one
    /// per SYN/ACK. IPv4 has none.
    fn synack_flow_label() -> u32;

    /// The flow label of a reset on `flow`: Linux hashes a socketless
    /// reply's flow (`reply::reset_flow_label`). IPv4 has none, and skips
    /// the hash.
    fn reset_flow_label(flow: &FlowKey) -> u32;

    /// The verdict of the splice, if `seg` belongs to a spliced flow.
    fn spliced(frame: &XdpFrame, seg: &TcpSegment<Self>, key: &FlowKey) -> Option<Verdict>;
}

/// The helpers take map memory: copies of the headers there cost no stack
/// (an IPv6 header and a TCP probe on it, with the callers' frames, pushed
/// the call chain past the verifier's 512 bytes).
impl Family for Ipv4Hdr {
    #[inline(always)]
    fn gen_cookie(scratch: &mut Scratch) -> i64 {
        let ip = overlay::<Ipv4Hdr, _>(&mut scratch.cookie_ip);
        let tcp = overlay::<CookieProbe, _>(&mut scratch.cookie_tcp);
        // SAFETY: map memory holding exactly a struct iphdr and a TCP
        // header of the length passed.
        unsafe {
            bpf_tcp_raw_gen_syncookie_ipv4(
                (ip as *mut Ipv4Hdr).cast::<iphdr>(),
                (tcp as *mut CookieProbe).cast::<tcphdr>(),
                size_of::<CookieProbe>() as u32,
            )
        }
    }

    #[inline(always)]
    fn cookie_valid(scratch: &mut Scratch) -> bool {
        let ip = overlay::<Ipv4Hdr, _>(&mut scratch.cookie_ip);
        let tcp = overlay::<TcpHdr, _>(&mut scratch.cookie_tcp);
        // SAFETY: map memory holding exactly a struct iphdr and tcphdr.
        unsafe {
            bpf_tcp_raw_check_syncookie_ipv4(
                (ip as *mut Ipv4Hdr).cast::<iphdr>(),
                (tcp as *mut TcpHdr).cast::<tcphdr>(),
            ) == 0
        }
    }

    #[inline(always)]
    fn synack_flow_label() -> u32 {
        0
    }

    #[inline(always)]
    fn reset_flow_label(_flow: &FlowKey) -> u32 {
        0
    }

    #[inline(always)]
    fn spliced(frame: &XdpFrame, seg: &Ipv4Tcp, key: &FlowKey) -> Option<Verdict> {
        let entry = maps::splice_entry(&ackgate_common::abi::SpliceKey::of_segment(seg), true)?;
        Some(splice::on_segment(frame, seg, key, entry))
    }
}

impl Family for Ipv6Hdr {
    #[inline(always)]
    fn gen_cookie(scratch: &mut Scratch) -> i64 {
        let ip = overlay::<Ipv6Hdr, _>(&mut scratch.cookie_ip);
        let tcp = overlay::<CookieProbe, _>(&mut scratch.cookie_tcp);
        // SAFETY: map memory holding exactly a struct ipv6hdr and a TCP
        // header of the length passed.
        unsafe {
            bpf_tcp_raw_gen_syncookie_ipv6(
                (ip as *mut Ipv6Hdr).cast::<ipv6hdr>(),
                (tcp as *mut CookieProbe).cast::<tcphdr>(),
                size_of::<CookieProbe>() as u32,
            )
        }
    }

    #[inline(always)]
    fn cookie_valid(scratch: &mut Scratch) -> bool {
        let ip = overlay::<Ipv6Hdr, _>(&mut scratch.cookie_ip);
        let tcp = overlay::<TcpHdr, _>(&mut scratch.cookie_tcp);
        // SAFETY: map memory holding exactly a struct ipv6hdr and tcphdr.
        unsafe {
            bpf_tcp_raw_check_syncookie_ipv6(
                (ip as *mut Ipv6Hdr).cast::<ipv6hdr>(),
                (tcp as *mut TcpHdr).cast::<tcphdr>(),
            ) == 0
        }
    }

    #[inline(always)]
    fn synack_flow_label() -> u32 {
        // SAFETY: helper without arguments.
        unsafe { bpf_get_prandom_u32() & FLOW_LABEL_MASK }
    }

    #[inline(always)]
    fn reset_flow_label(flow: &FlowKey) -> u32 {
        let secret = settings::synack_profile().ts_secret;
        reset_flow_label(secret, &flow.saddr, flow.sport, &flow.daddr, flow.dport)
    }

    /// IPv6 flows are not spliced yet: none is found.
    #[inline(always)]
    fn spliced(_frame: &XdpFrame, _seg: &Ipv6Tcp, _key: &FlowKey) -> Option<Verdict> {
        None
    }
}
