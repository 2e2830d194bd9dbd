//! Handshake ACK stage: cookie, capability, MAC; then the pending record
//! and the event for the control plane.

use ackgate_common::abi::{
    EVENT_PENDING, FLOW_PENDING, FlowKey, FlowOwner, GateEvent, HandshakeInfo, PendingFlow, ServicePolicy,
};
use ackgate_common::cookie::ClientOffer;
use ackgate_common::mac::Binding;
use ackgate_common::net::{TcpHdr, TcpSegment, overlay};
use ackgate_common::option::{Capability, HandshakeOptions, NO_WSCALE};
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::XDP_DROP;
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::family::Family;
use crate::maps::{self, EVENTS, PENDING, Scratch};
use crate::options;
use crate::program::Verdict;
use crate::respond::refuse;
use crate::settings;
use ackgate_common::kernel::config;
use ackgate_common::kernel::frame::XdpFrame;

/// The outcome of [`check`]: `reason` is `ACK_PENDING` when the ACK holds
/// a valid capability and cookie. A plain struct rather than a `Result`:
/// an enum with a payload leaves bytes undefined on the error path, which
/// LLVM spills and the verifier refuses (see `option::Capability`).
struct Checked {
    reason: u32,
    agent_id: u32,
    client_isn: u32,
    server_isn: u32,
    handshake: HandshakeInfo,
}

impl Checked {
    #[inline(always)]
    fn refused(reason: u32) -> Self {
        Self { reason, agent_id: 0, client_isn: 0, server_isn: 0, handshake: HandshakeInfo::default() }
    }
}

/// What the handshake agreed: the TSecr echoes the cookie SYN/ACK's TSval,
/// whose low bits hold the client's SYN options (`cookie`). Without
/// timestamps the SYN/ACK offered MSS only; the client's MSS is then
/// unknown and taken to be the gateway's own (both sit on the edge link).
#[inline(always)]
fn handshake_of<F: Family>(scan: &HandshakeOptions, seg: &TcpSegment<F>) -> HandshakeInfo {
    let window = u16::from_be_bytes(seg.tcp.window);
    if scan.ts_ok == 0 {
        return HandshakeInfo {
            client_tsval: 0,
            cookie_tsval: 0,
            window,
            mss: settings::synack_profile().sizes::<F>().mss,
            wscale: NO_WSCALE,
            sack_ok: 0,
            ts_ok: 0,
            ecn: 0,
        };
    }
    let offer = ClientOffer::decode(scan.tsecr);
    HandshakeInfo {
        client_tsval: scan.tsval,
        cookie_tsval: scan.tsecr,
        window,
        mss: offer.mss::<F>(),
        wscale: offer.wscale,
        sack_ok: offer.sack_ok,
        ts_ok: 1,
        ecn: offer.ecn,
    }
}

/// Cheapest check first: the option scan and the SipHash MAC cost a
/// fraction of the kernel's SHA-1 cookie check, so an unstamped or forged
/// ACK (the flood case) is refused before the cookie is computed. The MAC
/// binds both ISNs, so no ACK reaches the cookie check without the key.
#[inline(always)]
fn check<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, flow: &FlowKey) -> Checked {
    let Some(scratch) = maps::scratch() else {
        return Checked::refused(reason::ERR_REPLY);
    };
    if !options::scan(frame, scratch, seg.options_off(), seg.options_len()) {
        return Checked::refused(reason::ERR_OPTIONS_COPY);
    }
    let scan = scratch.scan;
    match scan.capability {
        Capability::Present => {}
        Capability::Absent => return Checked::refused(reason::ACK_NO_OPTION),
        Capability::Malformed => return Checked::refused(reason::ACK_BAD_OPTION),
    }
    let Some(key) = maps::agent_key(scan.agent_id) else {
        return Checked::refused(reason::ACK_UNKNOWN_AGENT);
    };
    let binding = Binding::<F::Addr>::handshake_ack_on(flow, &seg.tcp, scan.agent_id, config::option_id().exid);
    if binding.mac(&key) != scan.mac {
        return Checked::refused(reason::ACK_BAD_MAC);
    }
    if !cookie_valid(&mut *scratch, seg) {
        return Checked::refused(reason::ACK_BAD_COOKIE);
    }
    Checked {
        reason: reason::ACK_PENDING,
        agent_id: scan.agent_id,
        client_isn: binding.client_isn,
        server_isn: binding.second,
        handshake: handshake_of(&scratch.hs, seg),
    }
}

/// A handshake ACK for a 4-tuple the gate holds no flow for.
#[inline(never)]
pub fn on_ack<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, policy: &ServicePolicy, flow: &FlowKey) -> Verdict {
    let c = check(frame, seg, flow);
    if c.reason != reason::ACK_PENDING {
        return refuse(frame, seg, policy, c.reason);
    }
    record_pending(flow, &c, reason::ACK_PENDING)
}

/// A pure ACK on a 4-tuple the gate already holds a flow for, acknowledging
/// another server ISN: the client opened a new connection on the same
/// 4-tuple (the old one ended without the gate noticing, e.g. its RST was
/// held before the splice). A valid stamp replaces the old flow; anything
/// else is dropped without a response, so that a forged ACK cannot make
/// the gate answer on behalf of a live flow.
#[inline(never)]
pub fn on_reused_tuple<F: Family>(frame: &XdpFrame, seg: &TcpSegment<F>, flow: &FlowKey) -> Verdict {
    let c = check(frame, seg, flow);
    if c.reason != reason::ACK_PENDING {
        return Verdict::new(XDP_DROP, reason::DROP_REUSED_TUPLE);
    }
    record_pending(flow, &c, reason::ACK_PENDING_REPLACED)
}

/// The cookie helpers take ACK = cookie + 1 and SEQ = client ISN + 1; they
/// do not depend on net.ipv4.tcp_syncookies. They get copies of the
/// headers in the scratch map (`Family::cookie_valid`).
#[inline(always)]
fn cookie_valid<F: Family>(scratch: &mut Scratch, seg: &TcpSegment<F>) -> bool {
    *overlay::<F, _>(&mut scratch.cookie_ip) = seg.ip;
    *overlay::<TcpHdr, _>(&mut scratch.cookie_tcp) = seg.tcp;
    F::cookie_valid(scratch)
}

/// Event first, then the map entry, then publish: a full ring buffer or map
/// leaves no half-recorded flow behind.
#[inline(always)]
fn record_pending(flow: &FlowKey, c: &Checked, recorded: u32) -> Verdict {
    let (agent_id, client_isn, server_isn, handshake) = (c.agent_id, c.client_isn, c.server_isn, c.handshake);
    let Some(mut entry) = EVENTS.reserve::<GateEvent>(0) else {
        return Verdict::new(XDP_DROP, reason::ERR_EVENT_LOST);
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let pending = PendingFlow {
        created_ns: now,
        owner: FlowOwner::default(),
        agent_id,
        client_isn,
        server_isn,
        state: FLOW_PENDING,
        _pad0: 0,
        _pad1: 0,
        handshake,
        held_bytes: 0,
        _pad2: 0,
    };
    if PENDING.insert(flow, pending, 0).is_err() {
        entry.discard(0);
        return Verdict::new(XDP_DROP, reason::ERR_PENDING_FULL);
    }
    entry.write(GateEvent {
        kind: EVENT_PENDING,
        agent_id,
        flow: *flow,
        client_isn,
        server_isn,
        created_ns: now,
        handshake,
    });
    entry.submit(0);
    // The client believes the connection is up; its data is held until the
    // splice is up (`hold`).
    Verdict::new(XDP_DROP, recorded)
}
