//! SYN stage: a stateless cookie SYN/ACK that looks exactly like the
//! gateway kernel's own; for stealth services without a valid stamp,
//! silence, or with the `reset` response a closed port's RST+ACK.

use ackgate_common::abi::{FlowKey, RESPONSE_RESET, ServicePolicy};
use ackgate_common::cookie::{ClientOffer, default_mss, mss_index, ts_offset};
use ackgate_common::mac::{Binding, syn_tick};
use ackgate_common::net::{TCP_FIN, TcpHdr, TcpSegment, overlay};
use ackgate_common::option::{Capability, NO_WSCALE, OptionScan, TCPOLEN_MSS, TCPOPT_MSS};
use ackgate_common::reason;
use ackgate_common::reply::{Reply, TCP_CWR, TCP_ECE, cookie_synack, handshake_options};
use aya_ebpf::bindings::xdp_action::XDP_DROP;
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_ktime_get_tai_ns};

use crate::family::{CookieProbe, Family};
use crate::maps::Scratch;
use crate::program::Verdict;
use crate::respond::{self, transmit};
use crate::settings;
use crate::{integrity, maps, options};
use ackgate_common::kernel::config;
use ackgate_common::kernel::frame::XdpFrame;

#[inline(never)]
pub fn on_syn<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, policy: &ServicePolicy, flow: &FlowKey) -> Verdict {
    // A listening Linux socket discards SYN+FIN silently
    // (tcp_rcv_state_process in net/ipv4/tcp_input.c); answering it would
    // tell a scanner (nmap's T3 probe) which port is protected.
    if seg.tcp.flags & TCP_FIN != 0 {
        return Verdict::new(XDP_DROP, reason::DROP_MALFORMED);
    }
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    if !options::scan(frame, scratch, seg.options_off(), seg.options_len()) {
        return Verdict::new(XDP_DROP, reason::ERR_OPTIONS_COPY);
    }
    let scan = scratch.scan;
    if policy.stealth != 0 && !stealth_stamp_valid::<F>(&scan, seg, flow) {
        if policy.default_response != RESPONSE_RESET {
            return Verdict::new(XDP_DROP, reason::SYN_STEALTH_REFUSED);
        }
        // Stealth + reset: the port looks closed, not filtered.
        return respond::reset(frame, seg, true, reason::SYN_STEALTH_RESET);
    }
    if !integrity::checksums_valid(frame, seg) {
        return Verdict::new(XDP_DROP, reason::DROP_BAD_CHECKSUM);
    }
    let mss = if scan.mss == 0 { default_mss::<F>() } else { scan.mss };
    let Some((cookie, client_mss)) = syncookie(scratch, seg, mss) else {
        return Verdict::new(XDP_DROP, reason::ERR_COOKIE);
    };
    let profile = settings::synack_profile();
    let sizes = profile.sizes::<F>();
    let hs = &scratch.hs;
    let mut synack = SynAck { cookie, window: sizes.window_no_ts, ece: false, ts: None, wscale: None };
    if hs.ts_ok == 0 {
        // Nothing would bring window scale, SACK or ECN back to the gate
        // (the kernel's cookie mode drops them too, tcp_conn_request).
        let (bytes, _) = handshake_options(sizes.mss, false, None, None);
        return send_synack::<F, 4>(frame, seg, &synack, &bytes);
    }
    // ECN as tcp_ecn_create_request (net/ipv4/tcp_input.c): ECE+CWR on a
    // SYN that is not itself ECN-capable, and ECN enabled on the host.
    synack.ece =
        profile.ecn != 0 && seg.tcp.flags & (TCP_ECE | TCP_CWR) == TCP_ECE | TCP_CWR && seg.ip.dsfield() & 3 == 0;
    let offer = ClientOffer {
        mss_index: mss_index::<F>(client_mss),
        wscale: hs.wscale(),
        sack_ok: hs.sack_ok,
        ecn: u8::from(synack.ece),
    };
    // SAFETY: helper without arguments.
    let now_ms = (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32;
    let offset = ts_offset(profile.ts_secret, flow.daddr, flow.saddr);
    synack.ts = Some((offer.encode(now_ms.wrapping_add(offset)), hs.tsval));
    synack.window = sizes.window_ts;
    let sack = hs.sack_ok != 0;
    if hs.wscale() == NO_WSCALE {
        let (bytes, _) = handshake_options(sizes.mss, sack, synack.ts, None);
        return send_synack::<F, 16>(frame, seg, &synack, &bytes);
    }
    synack.wscale = Some(profile.wscale);
    let (bytes, _) = handshake_options(sizes.mss, sack, synack.ts, synack.wscale);
    send_synack::<F, 20>(frame, seg, &synack, &bytes)
}

/// What the cookie SYN/ACK carries besides the SYN's own fields.
struct SynAck {
    cookie: u32,
    window: u16,
    ece: bool,
    ts: Option<(u32, u32)>,
    wscale: Option<u8>,
}

/// Builds the SYN/ACK with `N` bytes of options in the scratch map and
/// sends it.
#[inline(always)]
fn send_synack<F: Family, const N: usize>(
    frame: &XdpFrame,
    seg: &TcpSegment<F>,
    synack: &SynAck,
    opts: &[u8; 20],
) -> Verdict {
    let Some(scratch) = maps::scratch() else {
        return Verdict::new(XDP_DROP, reason::ERR_REPLY);
    };
    let reply = overlay::<Reply<F, N>, _>(&mut scratch.reply);
    let label = F::synack_flow_label();
    cookie_synack(&seg.ip, &seg.tcp, synack.cookie, synack.window, synack.ece, opts, label, reply);
    transmit(frame, seg.l3_off, reply, reason::SYN_COOKIE)
}

/// Asks the kernel for a cookie ISN and the MSS it encodes (the client's
/// MSS rounded down to the cookie table).
///
/// The helper wants a TCP header whose length equals its data offset, and
/// the verifier only accepts a constant length (a runtime `doff * 4` is
/// rejected as a possible out-of-packet access). So it gets a copy with
/// the same ports and sequence number (all the cookie hashes) and only the
/// MSS option, which is all it parses.
#[inline(always)]
fn syncookie<F: Family>(scratch: &mut Scratch, seg: &TcpSegment<F>, mss: u16) -> Option<(u32, u16)> {
    *overlay::<F, _>(&mut scratch.cookie_ip) = seg.ip;
    *overlay::<CookieProbe, _>(&mut scratch.cookie_tcp) = CookieProbe {
        tcp: TcpHdr { doff_res: 6 << 4, ..seg.tcp },
        opts: [TCPOPT_MSS, TCPOLEN_MSS, (mss >> 8) as u8, mss as u8],
    };
    let r = F::gen_cookie(scratch);
    if r < 0 {
        return None;
    }
    Some((r as u32, (r >> 32) as u16))
}

/// A stealth SYN must carry a capability whose MAC covers the 4-tuple, the
/// client ISN and the current or previous coarse TAI tick (§3), so a SYN
/// replayed later than about a minute earns nothing.
#[inline(always)]
fn stealth_stamp_valid<F: Family>(scan: &OptionScan, seg: &TcpSegment<F>, flow: &FlowKey) -> bool {
    if scan.capability != Capability::Present {
        return false;
    }
    let Some(key) = maps::agent_key(scan.agent_id) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let tick = syn_tick(unsafe { bpf_ktime_get_tai_ns() });
    let mut binding = Binding::<F::Addr>::stealth_syn_on(flow, &seg.tcp, scan.agent_id, config::option_id().exid, tick);
    if binding.mac(&key) == scan.mac {
        return true;
    }
    binding.second = tick.wrapping_sub(1);
    binding.mac(&key) == scan.mac
}
