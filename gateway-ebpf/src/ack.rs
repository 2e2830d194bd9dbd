//! Handshake ACK stage: cookie, capability, MAC; then the pending record
//! and the event for the control plane.

use ackgate_common::abi::{EVENT_PENDING, FLOW_PENDING, FlowKey, GateEvent, PendingFlow, ServicePolicy};
use ackgate_common::mac::Binding;
use ackgate_common::net::Ipv4Tcp;
use ackgate_common::option::{Capability, OptionBytes};
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::XDP_DROP;
use aya_ebpf::bindings::{iphdr, tcphdr};
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_tcp_raw_check_syncookie_ipv4};

use crate::maps::{self, EVENTS, PENDING};
use crate::program::Verdict;
use crate::respond::refuse;
use ackgate_common::kernel::config;
use ackgate_common::kernel::frame::XdpFrame;

/// Cheapest check first: the option scan and the SipHash MAC cost a
/// fraction of the kernel's SHA-1 cookie check, so an unstamped or forged
/// ACK (the flood case) is refused before the cookie is computed. The MAC
/// binds both ISNs, so no ACK reaches the cookie check without the key.
#[inline(always)]
pub fn on_ack(frame: &XdpFrame, seg: &Ipv4Tcp, policy: &ServicePolicy) -> Verdict {
    let mut slot = core::mem::MaybeUninit::uninit();
    let Some(opts) = OptionBytes::read_into(&mut slot, frame, seg) else {
        return refuse(frame, seg, policy, reason::ACK_BAD_OPTION);
    };
    let scan = opts.scan(config::option_id());
    match scan.capability {
        Capability::Present => {}
        Capability::Absent => return refuse(frame, seg, policy, reason::ACK_NO_OPTION),
        Capability::Malformed => return refuse(frame, seg, policy, reason::ACK_BAD_OPTION),
    }
    let Some(key) = maps::agent_key(scan.agent_id) else {
        return refuse(frame, seg, policy, reason::ACK_UNKNOWN_AGENT);
    };
    let binding = Binding::handshake_ack(seg, scan.agent_id, config::option_id().exid);
    if binding.mac(&key) != scan.mac {
        return refuse(frame, seg, policy, reason::ACK_BAD_MAC);
    }
    if !cookie_valid(seg) {
        return refuse(frame, seg, policy, reason::ACK_BAD_COOKIE);
    }
    record_pending(seg, scan.agent_id, binding.client_isn, binding.second)
}

/// `bpf_tcp_raw_check_syncookie_ipv4` takes ACK = cookie + 1 and
/// SEQ = client ISN + 1; it does not depend on net.ipv4.tcp_syncookies.
#[inline(always)]
fn cookie_valid(seg: &Ipv4Tcp) -> bool {
    let mut ip = seg.ip;
    let mut tcp = seg.tcp;
    // SAFETY: stack copies of exactly struct iphdr and struct tcphdr.
    unsafe { bpf_tcp_raw_check_syncookie_ipv4((&raw mut ip).cast::<iphdr>(), (&raw mut tcp).cast::<tcphdr>()) == 0 }
}

/// Event first, then the map entry, then publish: a full ring buffer or map
/// leaves no half-recorded flow behind.
#[inline(always)]
fn record_pending(seg: &Ipv4Tcp, agent_id: u32, client_isn: u32, server_isn: u32) -> Verdict {
    let Some(mut entry) = EVENTS.reserve::<GateEvent>(0) else {
        return Verdict::new(XDP_DROP, reason::ERR_EVENT_LOST);
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = FlowKey::of_segment(seg);
    let pending =
        PendingFlow { created_ns: now, agent_id, client_isn, server_isn, state: FLOW_PENDING, _pad0: 0, _pad1: 0 };
    if PENDING.insert(flow, pending, 0).is_err() {
        entry.discard(0);
        return Verdict::new(XDP_DROP, reason::ERR_PENDING_FULL);
    }
    entry.write(GateEvent { kind: EVENT_PENDING, agent_id, flow, client_isn, server_isn, created_ns: now });
    entry.submit(0);
    // The client believes the connection is up; its data is held until the
    // control plane decides (it retransmits, nothing is lost).
    Verdict::new(XDP_DROP, reason::ACK_PENDING)
}
