//! Events to the control plane (the ring buffer `ACKGATE_EVENTS`).

use ackgate_common::abi::{FlowKey, GateEvent, HandshakeInfo};
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::EVENTS;

/// Sends a splice event about the client flow `flow`; `detail` goes into
/// the event's `agent_id` slot (the `END_*` reason of `EVENT_ENDED`),
/// `server_isn` is the target's ISN where it matters. Returns false when
/// the ring is full: the control plane's periodic sweep finds such flows
/// from the map instead.
#[inline(never)]
pub fn emit(kind: u32, flow: &FlowKey, detail: u32, server_isn: u32) -> bool {
    let Some(mut entry) = EVENTS.reserve::<GateEvent>(0) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    entry.write(GateEvent {
        kind,
        agent_id: detail,
        flow: *flow,
        client_isn: 0,
        server_isn,
        created_ns: now,
        handshake: HandshakeInfo::default(),
    });
    entry.submit(0);
    true
}
