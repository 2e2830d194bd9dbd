//! Where a spliced segment goes: the next hop from the kernel's FIB
//! (`bpf_fib_lookup`) and a redirect to that interface, or, when redirect
//! cannot deliver, the kernel's own forwarding (XDP_PASS of the rewritten
//! segment).

use aya_ebpf::bindings::{
    BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, bpf_fib_lookup__bindgen_ty_1, bpf_fib_lookup__bindgen_ty_2,
    bpf_fib_lookup__bindgen_ty_3, bpf_fib_lookup__bindgen_ty_4, bpf_fib_lookup__bindgen_ty_5,
};
use aya_ebpf::helpers::bpf_fib_lookup;

use crate::maps::{self, REDIRECT};
use crate::settings;
use ackgate_common::kernel::frame::XdpFrame;
use ackgate_common::net::Ipv4Hdr;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// How to send a rewritten segment on.
pub struct Route {
    /// Egress ifindex for a redirect; 0: hand the segment to the kernel.
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

impl Route {
    const KERNEL: Route = Route { ifindex: 0, smac: [0; 6], dmac: [0; 6] };

    #[inline(always)]
    pub fn is_redirect(&self) -> bool {
        self.ifindex != 0
    }
}

/// The route of an IPv4 segment from `saddr` to `daddr` (the rewritten
/// addresses) arriving on the frame's interface. Redirect needs the FIB to
/// resolve the next hop completely (`BPF_FIB_LKUP_RET_SUCCESS`, which also
/// means a valid neighbour entry) and the egress interface to be in the
/// redirect map; anything else (no neighbour yet, a VLAN frame, MTU) goes
/// through the kernel, which resolves ARP, fragments or answers with ICMP
/// as a router does.
#[inline(always)]
pub fn route_v4(frame: &XdpFrame, l3_off: usize, ip: &Ipv4Hdr, saddr: [u8; 4], daddr: [u8; 4]) -> Route {
    if !settings::redirect_enabled() || l3_off != core::mem::size_of::<ackgate_common::net::EthHdr>() {
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
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || REDIRECT.get(p.ifindex).is_none() {
        return Route::KERNEL;
    }
    Route { ifindex: p.ifindex, smac: p.smac, dmac: p.dmac }
}

/// Raw result of a FIB lookup for the transit check (`transit`).
#[inline(always)]
pub fn fib_result(frame: &XdpFrame, p: &mut FibParams) -> i64 {
    // SAFETY: as in `lookup`.
    unsafe { bpf_fib_lookup(frame.ctx().ctx.cast(), p as *mut FibParams, core::mem::size_of::<FibParams>() as i32, 0) }
}

/// Redirects the frame to `route.ifindex` (the Ethernet header already
/// rewritten). Returns the XDP action.
#[inline(always)]
pub fn redirect(route: &Route) -> Result<u32, u32> {
    REDIRECT.redirect(route.ifindex, 0)
}
