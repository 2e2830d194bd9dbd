//! Where a spliced segment goes: the next hop from the kernel's FIB
//! (`bpf_fib_lookup`) and a redirect to that interface, or, when redirect
//! cannot deliver, the kernel's own forwarding (XDP_PASS of the rewritten
//! segment). A segment too big for the next hop is the caller's to answer
//! (`Route::too_big`): the kernel would send its "fragmentation needed"
//! about the rewritten segment, which the sender cannot recognise.

use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, bpf_fib_lookup__bindgen_ty_1,
    bpf_fib_lookup__bindgen_ty_2, bpf_fib_lookup__bindgen_ty_3, bpf_fib_lookup__bindgen_ty_4,
    bpf_fib_lookup__bindgen_ty_5,
};
use aya_ebpf::helpers::bpf_fib_lookup;

use crate::maps::{self, REDIRECT};
use crate::settings;
use ackgate_common::kernel::frame::XdpFrame;
use ackgate_common::net::{EthHdr, Frame, Ipv4Hdr};
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS};

use crate::program::Verdict;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// How to send a rewritten segment on.
pub struct Route {
    /// Egress ifindex for a redirect; 0: hand the segment to the kernel.
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The next hop's MTU when the packet does not fit it, else 0.
    pub too_big: u16,
}

impl Route {
    const KERNEL: Route = Route { ifindex: 0, smac: [0; 6], dmac: [0; 6], too_big: 0 };

    #[inline(always)]
    pub fn is_redirect(&self) -> bool {
        self.ifindex != 0
    }
}

/// The route of an IPv4 packet from `saddr` to `daddr` (the rewritten
/// addresses) arriving on the frame's interface. Redirect needs the FIB to
/// resolve the next hop completely (`BPF_FIB_LKUP_RET_SUCCESS`, which also
/// means a valid neighbour entry) and the egress interface to be in the
/// redirect map; anything else (no neighbour yet, a VLAN frame) goes
/// through the kernel, which resolves ARP as a router does. The lookup
/// runs with kernel forwarding too, for its MTU check.
#[inline(always)]
pub fn route_v4(frame: &XdpFrame, l3_off: usize, ip: &Ipv4Hdr, saddr: [u8; 4], daddr: [u8; 4]) -> Route {
    if l3_off != core::mem::size_of::<EthHdr>() {
        return Route::KERNEL;
    }
    let Some(scratch) = maps::scratch() else {
        return Route::KERNEL;
    };
    let p = &mut scratch.fib;
    *p = params(AF_INET, frame.ingress_ifindex(), u16::from_be_bytes(ip.total_len));
    p.__bindgen_anon_3 = bpf_fib_lookup__bindgen_ty_3 { ipv4_src: u32::from_ne_bytes(saddr) };
    p.__bindgen_anon_4 = bpf_fib_lookup__bindgen_ty_4 { ipv4_dst: u32::from_ne_bytes(daddr) };
    lookup(frame, p)
}

/// As [`route_v4`], for an IPv6 packet of `packet_len` bytes from its
/// fixed header on: the FIB compares that length with the route's MTU
/// (bpf_ipv6_fib_lookup in net/core/filter.c checks `tot_len` against
/// ip6_mtu), where IPv6's own length field leaves the fixed header out.
#[inline(always)]
pub fn route_v6(frame: &XdpFrame, l3_off: usize, packet_len: usize, saddr: [u32; 4], daddr: [u32; 4]) -> Route {
    if l3_off != core::mem::size_of::<EthHdr>() {
        return Route::KERNEL;
    }
    let Some(scratch) = maps::scratch() else {
        return Route::KERNEL;
    };
    let p = &mut scratch.fib;
    *p = params(AF_INET6, frame.ingress_ifindex(), packet_len as u16);
    p.__bindgen_anon_3 = bpf_fib_lookup__bindgen_ty_3 { ipv6_src: saddr };
    p.__bindgen_anon_4 = bpf_fib_lookup__bindgen_ty_4 { ipv6_dst: daddr };
    lookup(frame, p)
}

/// Zeroed lookup parameters, written field by field: a zeroed struct
/// compiles to a byte-at-a-time memset on BPF. Callers write them into
/// their scratch space (`maps::Scratch`).
#[inline(always)]
pub fn params(family: u8, ifindex: u32, tot_len: u16) -> FibParams {
    FibParams {
        family,
        l4_protocol: 0,
        sport: 0,
        dport: 0,
        __bindgen_anon_1: bpf_fib_lookup__bindgen_ty_1 { tot_len },
        ifindex,
        __bindgen_anon_2: bpf_fib_lookup__bindgen_ty_2 { flowinfo: 0 },
        __bindgen_anon_3: bpf_fib_lookup__bindgen_ty_3 { ipv6_src: [0; 4] },
        __bindgen_anon_4: bpf_fib_lookup__bindgen_ty_4 { ipv6_dst: [0; 4] },
        __bindgen_anon_5: bpf_fib_lookup__bindgen_ty_5 { tbid: 0 },
        smac: [0; 6],
        dmac: [0; 6],
    }
}

#[inline(always)]
fn lookup(frame: &XdpFrame, p: &mut FibParams) -> Route {
    // SAFETY: `p` is a fully initialised bpf_fib_lookup on the stack.
    let rc = unsafe {
        bpf_fib_lookup(frame.ctx().ctx.cast(), p as *mut FibParams, core::mem::size_of::<FibParams>() as i32, 0)
    };
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // SAFETY: the output side of the union, set with this result.
        return Route { too_big: unsafe { p.__bindgen_anon_1.mtu_result }, ..Route::KERNEL };
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || !settings::redirect_enabled() || REDIRECT.get(p.ifindex).is_none() {
        return Route::KERNEL;
    }
    Route { ifindex: p.ifindex, smac: p.smac, dmac: p.dmac, too_big: 0 }
}

/// Raw result of a FIB lookup for the transit check (`transit`).
#[inline(always)]
pub fn fib_result(frame: &XdpFrame, p: &mut FibParams) -> i64 {
    // SAFETY: as in `lookup`.
    unsafe { bpf_fib_lookup(frame.ctx().ctx.cast(), p as *mut FibParams, core::mem::size_of::<FibParams>() as i32, 0) }
}

/// Sends the rewritten frame on: redirected to `route`'s interface with
/// its next hop's addresses (`redirected` is the reason counted), or
/// handed to the kernel (`kernel`).
#[inline(always)]
pub fn send(frame: &XdpFrame, route: &Route, redirected: u32, kernel: u32) -> Verdict {
    if !route.is_redirect() {
        return Verdict::new(XDP_PASS, kernel);
    }
    let Some(eth) = frame.load::<EthHdr>(0) else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    if frame.store(0, &EthHdr { dst: route.dmac, src: route.smac, ether_type: eth.ether_type }).is_none() {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    }
    match REDIRECT.redirect(route.ifindex, 0) {
        Ok(action) => Verdict::new(action, redirected),
        Err(_) => Verdict::new(XDP_DROP, reason::ERR_REPLY),
    }
}
