//! SYN stage: a stateless cookie SYN/ACK that looks exactly like the
//! gateway kernel's own; for stealth services without a valid stamp,
//! silence, or with the `reset` response a closed port's RST+ACK.

use ackgate_common::abi::{RESPONSE_RESET, ServicePolicy};
use ackgate_common::cookie::{ClientOffer, mss_index, ts_offset};
use ackgate_common::mac::{Binding, syn_tick};
use ackgate_common::net::{Ipv4Tcp, TCP_FIN, TcpHdr};
use ackgate_common::option::{Capability, NO_WSCALE, OptionBytes, OptionScan, TCPOLEN_MSS, TCPOPT_MSS};
use ackgate_common::reason;
use ackgate_common::reply::{
    SynAckMss, SynAckTs, SynAckTsWs, TCP_CWR, TCP_ECE, TcpWithOptions, cookie_synack, handshake_options, reset_for_syn,
};
use aya_ebpf::bindings::xdp_action::XDP_DROP;
use aya_ebpf::bindings::{iphdr, tcphdr};
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_ktime_get_tai_ns, bpf_tcp_raw_gen_syncookie_ipv4};

use crate::program::Verdict;
use crate::respond::transmit;
use crate::settings;
use crate::{integrity, maps};
use ackgate_common::kernel::config;
use ackgate_common::kernel::frame::XdpFrame;

/// RFC 9293 default MSS when the SYN carries none (TCP_MSS_DEFAULT).
const DEFAULT_MSS: u16 = 536;

#[inline(never)]
pub fn on_syn(frame: &XdpFrame, seg: &Ipv4Tcp, policy: &ServicePolicy) -> Verdict {
    // A listening Linux socket discards SYN+FIN silently
    // (tcp_rcv_state_process in net/ipv4/tcp_input.c); answering it would
    // tell a scanner (nmap's T3 probe) which port is protected.
    if seg.tcp.flags & TCP_FIN != 0 {
        return Verdict::new(XDP_DROP, reason::DROP_MALFORMED);
    }
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let Some(opts) = OptionBytes::read_into(&mut scratch.opts, frame, seg) else {
        return Verdict::new(XDP_DROP, reason::ERR_OPTIONS_COPY);
    };
    let hs = &mut scratch.hs;
    let scan = opts.scan_handshake(config::option_id(), hs);
    if policy.stealth != 0 && !stealth_stamp_valid(&scan, seg) {
        if policy.default_response != RESPONSE_RESET {
            return Verdict::new(XDP_DROP, reason::SYN_STEALTH_REFUSED);
        }
        // Stealth + reset: the port looks closed, not filtered.
        if !integrity::checksums_valid(frame, seg) {
            return Verdict::new(XDP_DROP, reason::DROP_BAD_CHECKSUM);
        }
        let (ip, rst) = reset_for_syn(&seg.ip, &seg.tcp, seg.payload_len);
        return transmit(frame, seg.l3_off, &ip, &rst, reason::SYN_STEALTH_RESET);
    }
    if !integrity::checksums_valid(frame, seg) {
        return Verdict::new(XDP_DROP, reason::DROP_BAD_CHECKSUM);
    }
    let Some((cookie, client_mss)) = syncookie(seg, if scan.mss == 0 { DEFAULT_MSS } else { scan.mss }) else {
        return Verdict::new(XDP_DROP, reason::ERR_COOKIE);
    };
    let profile = settings::synack_profile();
    if hs.ts_ok == 0 {
        // Nothing would bring window scale, SACK or ECN back to the gate
        // (the kernel's cookie mode drops them too, tcp_conn_request).
        let (bytes, _) = handshake_options(profile.mss, false, None, None);
        let (ip, synack) = cookie_synack::<4>(&seg.ip, &seg.tcp, cookie, profile.window_no_ts, false, &bytes);
        return send::<SynAckMss>(frame, seg, &ip, &synack);
    }
    // ECN as tcp_ecn_create_request (net/ipv4/tcp_input.c): ECE+CWR on a
    // SYN that is not itself ECN-capable, and ECN enabled on the host.
    let ece = profile.ecn != 0 && seg.tcp.flags & (TCP_ECE | TCP_CWR) == TCP_ECE | TCP_CWR && seg.ip.tos & 3 == 0;
    let offer =
        ClientOffer { mss_index: mss_index(client_mss), wscale: hs.wscale(), sack_ok: hs.sack_ok, ecn: u8::from(ece) };
    // SAFETY: helper without arguments.
    let now_ms = (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32;
    let tsval = offer.encode(now_ms.wrapping_add(ts_offset(profile.ts_secret, seg.ip.daddr, seg.ip.saddr)));
    let ts = Some((tsval, hs.tsval));
    let sack = hs.sack_ok != 0;
    if hs.wscale() == NO_WSCALE {
        let (bytes, _) = handshake_options(profile.mss, sack, ts, None);
        let (ip, synack) = cookie_synack::<16>(&seg.ip, &seg.tcp, cookie, profile.window_ts, ece, &bytes);
        return send::<SynAckTs>(frame, seg, &ip, &synack);
    }
    let (bytes, _) = handshake_options(profile.mss, sack, ts, Some(profile.wscale));
    let (ip, synack) = cookie_synack::<20>(&seg.ip, &seg.tcp, cookie, profile.window_ts, ece, &bytes);
    send::<SynAckTsWs>(frame, seg, &ip, &synack)
}

#[inline(always)]
fn send<L4: ackgate_common::net::Wire>(
    frame: &XdpFrame,
    seg: &Ipv4Tcp,
    ip: &ackgate_common::net::Ipv4Hdr,
    l4: &L4,
) -> Verdict {
    transmit(frame, seg.l3_off, ip, l4, reason::SYN_COOKIE)
}

/// Asks the kernel for a cookie ISN and the MSS it encodes (the client's
/// MSS rounded down to the cookie table).
///
/// The helper wants a TCP header whose length equals its data offset, and
/// the verifier only accepts a constant length (a runtime `doff * 4` is
/// rejected as a possible out-of-packet access). So it gets a copy on the
/// stack with the same ports and sequence number (all the cookie hashes)
/// and only the MSS option, which is all it parses.
#[inline(always)]
fn syncookie(seg: &Ipv4Tcp, mss: u16) -> Option<(u32, u16)> {
    let mut ip = seg.ip;
    let mut probe = TcpWithOptions::<4> {
        tcp: TcpHdr { doff_res: 6 << 4, ..seg.tcp },
        opts: [TCPOPT_MSS, TCPOLEN_MSS, (mss >> 8) as u8, mss as u8],
    };
    // SAFETY: both pointers are to initialised stack copies of the sizes
    // the helper expects (struct iphdr; 24 bytes = doff 6).
    let r = unsafe {
        bpf_tcp_raw_gen_syncookie_ipv4(
            (&raw mut ip).cast::<iphdr>(),
            (&raw mut probe).cast::<tcphdr>(),
            core::mem::size_of::<TcpWithOptions<4>>() as u32,
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
