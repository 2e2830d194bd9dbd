//! SYN stage: a stateless cookie SYN/ACK, or silence for stealth services.

use ackgate_common::abi::ServicePolicy;
use ackgate_common::mac::{Binding, syn_tick};
use ackgate_common::net::{Ipv4Tcp, TcpHdr};
use ackgate_common::option::{Capability, OptionBytes, OptionScan, TCPOLEN_MSS, TCPOPT_MSS};
use ackgate_common::reason;
use ackgate_common::reply::{SynAckTcp, cookie_synack};
use aya_ebpf::bindings::xdp_action::XDP_DROP;
use aya_ebpf::bindings::{iphdr, tcphdr};
use aya_ebpf::helpers::{bpf_ktime_get_tai_ns, bpf_tcp_raw_gen_syncookie_ipv4};

use crate::maps;
use crate::program::Verdict;
use crate::respond::transmit;
use ackgate_common::kernel::config;
use ackgate_common::kernel::frame::XdpFrame;

/// RFC 9293 default MSS when the SYN carries none (TCP_MSS_DEFAULT).
const DEFAULT_MSS: u16 = 536;

#[inline(always)]
pub fn on_syn(frame: &XdpFrame, seg: &Ipv4Tcp, policy: &ServicePolicy) -> Verdict {
    let mut slot = core::mem::MaybeUninit::uninit();
    let Some(opts) = OptionBytes::read_into(&mut slot, frame, seg) else {
        return Verdict::new(XDP_DROP, reason::DROP_MALFORMED);
    };
    let scan = opts.scan(config::option_id());
    if policy.stealth != 0 && !stealth_stamp_valid(&scan, seg) {
        return Verdict::new(XDP_DROP, reason::SYN_STEALTH_REFUSED);
    }
    let Some((cookie, mss)) = syncookie(seg, if scan.mss == 0 { DEFAULT_MSS } else { scan.mss }) else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let (ip, synack) = cookie_synack(&seg.ip, &seg.tcp, cookie, mss);
    transmit(frame, seg.l3_off, &ip, &synack, reason::SYN_COOKIE)
}

/// Asks the kernel for a cookie ISN and the MSS it encodes.
///
/// The helper wants a TCP header whose length equals its data offset, and
/// the verifier only accepts a constant length (a runtime `doff * 4` is
/// rejected as a possible out-of-packet access). So it gets a copy on the
/// stack with the same ports and sequence number (all the cookie hashes)
/// and only the MSS option, which is all it parses.
#[inline(always)]
fn syncookie(seg: &Ipv4Tcp, mss: u16) -> Option<(u32, u16)> {
    let mut ip = seg.ip;
    let mut probe = SynAckTcp {
        tcp: TcpHdr { doff_res: 6 << 4, ..seg.tcp },
        mss: [TCPOPT_MSS, TCPOLEN_MSS, (mss >> 8) as u8, mss as u8],
    };
    // SAFETY: both pointers are to initialised stack copies of the sizes
    // the helper expects (struct iphdr; 24 bytes = doff 6).
    let r = unsafe {
        bpf_tcp_raw_gen_syncookie_ipv4(
            (&raw mut ip).cast::<iphdr>(),
            (&raw mut probe).cast::<tcphdr>(),
            core::mem::size_of::<SynAckTcp>() as u32,
        )
    };
    if r < 0 {
        return None;
    }
    Some((r as u32, (r >> 32) as u16))
}

/// A stealth SYN must carry a capability whose MAC covers the 4-tuple, the
/// client ISN and the current or previous coarse TAI tick (§3), so a SYN
/// replayed later than about a minute earns nothing.
#[inline(always)]
fn stealth_stamp_valid(scan: &OptionScan, seg: &Ipv4Tcp) -> bool {
    if scan.capability != Capability::Present {
        return false;
    }
    let Some(key) = maps::agent_key(scan.agent_id) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let tick = syn_tick(unsafe { bpf_ktime_get_tai_ns() });
    let mut binding = Binding::stealth_syn(seg, scan.agent_id, config::option_id().exid, tick);
    if binding.mac(&key) == scan.mac {
        return true;
    }
    binding.second = tick.wrapping_sub(1);
    binding.mac(&key) == scan.mac
}
