//! What the stages need from an address family that `common` cannot give
//! them: the kernel's cookie helpers, the family's working memory in the
//! scratch map, its splice map, route and ICMP error. The stages
//! themselves are written once, for `F: Family`.

use ackgate_common::abi::{FlowKey, SpliceEntry, SpliceKey};
use ackgate_common::icmp;
use ackgate_common::mac::BoundAddr;
use ackgate_common::net::{IP_DF, Ipv4Hdr, Ipv4Tcp, Ipv6Hdr, Ipv6Tcp, TcpHdr, TcpSegment, Wire, overlay};
use ackgate_common::reason;
use ackgate_common::reply::{FLOW_LABEL_MASK, ReplyHeader, TcpWithOptions, reset_flow_label};
use ackgate_common::splice::{Ipv6Rewrite, SpliceHeader};
use aya_ebpf::bindings::{iphdr, ipv6hdr, tcphdr};
use aya_ebpf::helpers::{
    bpf_get_prandom_u32, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
    bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6,
};
use aya_ebpf::maps::HashMap;

use crate::forward::{self, Route};
use crate::maps::{self, SPLICE, SPLICE6, Scratch};
use crate::program::Verdict;
use crate::{respond, settings, splice, stage};
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

    /// The family's splice map.
    fn splice_map() -> &'static SpliceMap<Self::SpliceAddr>;

    /// What the splice rewrites of the IP header: IPv4's whole header,
    /// IPv6's address sum and hop limit (`splice::Ipv6Rewrite`).
    type Rewrite: SpliceHeader<EntryAddr = Self::SpliceAddr>;

    /// `seg`'s IP header, to rewrite.
    fn rewrite_copy(seg: &TcpSegment<Self>) -> Self::Rewrite;

    /// Writes the rewritten IP header at `l3_off`, for the entry `e`:
    /// IPv4's from registers; IPv6's hop limit, and its addresses from the
    /// entry through the helper (`XdpFrame::store_copy`).
    fn store_header(
        frame: &XdpFrame,
        l3_off: usize,
        ip: &Self::Rewrite,
        e: &SpliceEntry<Self::SpliceAddr>,
    ) -> Option<()>;

    /// Writes a rewritten header `v` at `offset`: IPv4's from registers,
    /// IPv6's through the helper (`XdpFrame::store_copy`), which keeps its
    /// rewrite's bytes out of registers and off the stack.
    fn store<T: Wire>(frame: &XdpFrame, offset: usize, v: &T) -> Option<()>;

    /// The family's room for a flow's two splice entries in `scratch`.
    fn splice_pair(scratch: &mut Scratch) -> &mut [SpliceEntry<Self::SpliceAddr>; 2];

    /// Where a segment of the flow whose entry is `e` goes after the
    /// rewrite (`e`'s addresses are the rewritten ones).
    fn route(frame: &XdpFrame, seg: &TcpSegment<Self>, e: &SpliceEntry<Self::SpliceAddr>) -> Route;

    /// Whether a router may fragment the segment: IPv4 without DF. IPv6
    /// routers never fragment (RFC 8200 §5).
    fn may_fragment(seg: &TcpSegment<Self>) -> bool;

    /// TTL or hop limit.
    fn hop_limit(seg: &TcpSegment<Self>) -> u8;

    /// Answers a segment that does not fit the next hop's `mtu` with the
    /// family's ICMP error.
    fn too_big(frame: &XdpFrame, seg: &TcpSegment<Self>, mtu: u16) -> Verdict;
}

/// A splice map of either family.
pub type SpliceMap<A> = HashMap<SpliceKey<A>, SpliceEntry<A>>;

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
        let entry = maps::splice_entry::<Self>(&SpliceKey::of_segment(seg), true)?;
        Some(splice::on_segment(frame, seg, key, entry))
    }

    #[inline(always)]
    fn splice_map() -> &'static SpliceMap<u32> {
        &SPLICE
    }

    type Rewrite = Ipv4Hdr;

    #[inline(always)]
    fn rewrite_copy(seg: &Ipv4Tcp) -> Ipv4Hdr {
        seg.ip
    }

    #[inline(always)]
    fn store_header(frame: &XdpFrame, l3_off: usize, ip: &Ipv4Hdr, _e: &SpliceEntry) -> Option<()> {
        frame.store(l3_off, ip)
    }

    #[inline(always)]
    fn store<T: Wire>(frame: &XdpFrame, offset: usize, v: &T) -> Option<()> {
        frame.store(offset, v)
    }

    #[inline(always)]
    fn splice_pair(scratch: &mut Scratch) -> &mut [SpliceEntry; 2] {
        &mut scratch.splice_pair
    }

    #[inline(always)]
    fn route(frame: &XdpFrame, seg: &Ipv4Tcp, e: &SpliceEntry) -> Route {
        forward::route_v4(frame, seg.l3_off, &seg.ip, e.saddr.to_ne_bytes(), e.daddr.to_ne_bytes())
    }

    #[inline(always)]
    fn may_fragment(seg: &Ipv4Tcp) -> bool {
        u16::from_be_bytes(seg.ip.frag) & IP_DF == 0
    }

    #[inline(always)]
    fn hop_limit(seg: &Ipv4Tcp) -> u8 {
        seg.ip.ttl
    }

    #[inline(always)]
    fn too_big(frame: &XdpFrame, seg: &Ipv4Tcp, mtu: u16) -> Verdict {
        let error = icmp::frag_needed(&seg.ip, &seg.tcp, mtu);
        respond::transmit(frame, seg.l3_off, &error, reason::SPLICE_FRAG_NEEDED)
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

    /// The segment goes on in the IPv6 splice stage, a program of its own
    /// (`stage`): inlined here, it would take 6.1's verifier past its
    /// limit on the gate (docs/kernels.md). This runs in the entry point's
    /// frame (the stages above are inlined), where the tail call must be
    /// made. `classify` left the splice key in map memory: its 36 bytes on
    /// that frame put the gate's deepest call chain over the verifier's
    /// 512 bytes.
    #[inline(always)]
    fn spliced(frame: &XdpFrame, _seg: &Ipv6Tcp, _key: &FlowKey) -> Option<Verdict> {
        maps::splice_entry::<Self>(&maps::scratch()?.splice_key6, true)?;
        Some(stage::enter_splice_v6(frame, stage::STAGE_JOB_SEGMENT))
    }

    #[inline(always)]
    fn splice_map() -> &'static SpliceMap<[u32; 4]> {
        &SPLICE6
    }

    type Rewrite = Ipv6Rewrite;

    #[inline(always)]
    fn rewrite_copy(seg: &Ipv6Tcp) -> Ipv6Rewrite {
        Ipv6Rewrite::of(&seg.ip)
    }

    #[inline(always)]
    fn store_header(frame: &XdpFrame, l3_off: usize, ip: &Ipv6Rewrite, e: &SpliceEntry<[u32; 4]>) -> Option<()> {
        frame.store(l3_off + core::mem::offset_of!(Ipv6Hdr, hop_limit), &ip.hop_limit)?;
        frame.store_copy(l3_off + core::mem::offset_of!(Ipv6Hdr, saddr), &e.saddr)?;
        frame.store_copy(l3_off + core::mem::offset_of!(Ipv6Hdr, daddr), &e.daddr)
    }

    #[inline(always)]
    fn store<T: Wire>(frame: &XdpFrame, offset: usize, v: &T) -> Option<()> {
        frame.store_copy(offset, v)
    }

    #[inline(always)]
    fn splice_pair(scratch: &mut Scratch) -> &mut [SpliceEntry<[u32; 4]>; 2] {
        &mut scratch.splice_pair6
    }

    #[inline(always)]
    fn route(frame: &XdpFrame, seg: &Ipv6Tcp, e: &SpliceEntry<[u32; 4]>) -> Route {
        forward::route_v6(frame, seg.l3_off, seg.packet_len(), e.saddr, e.daddr)
    }

    #[inline(always)]
    fn may_fragment(_seg: &Ipv6Tcp) -> bool {
        false
    }

    #[inline(always)]
    fn hop_limit(seg: &Ipv6Tcp) -> u8 {
        seg.ip.hop_limit
    }

    #[inline(always)]
    fn too_big(frame: &XdpFrame, seg: &Ipv6Tcp, mtu: u16) -> Verdict {
        let tcp_part = (seg.tcp_len + seg.payload_len) as u16;
        let error = icmp::packet_too_big(&seg.ip, &seg.tcp, tcp_part, mtu as u32);
        respond::transmit(frame, seg.l3_off, &error, reason::SPLICE_FRAG_NEEDED)
    }
}
