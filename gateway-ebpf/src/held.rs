//! Segments of a flow whose stamped handshake the gate accepted, before
//! the splice carries it: pending or authorized → held (data copied for
//! the splice); denied → the service's default response.

use ackgate_common::abi::{FLOW_AUTHORIZED, FLOW_DENIED, FlowKey, PendingFlow, ServicePolicy};
use ackgate_common::net::{TCP_RST, TcpSegment};
use ackgate_common::reason;
use aya_ebpf::bindings::xdp_action::XDP_DROP;

use crate::family::Family;
use crate::program::Verdict;
use crate::{hold, respond};
use ackgate_common::kernel::frame::XdpFrame;

// A BPF subprogram of its own (not inlined): each stage gets its own
// stack frame instead of all stages adding up in the entry point's.
#[inline(never)]
pub fn on_segment<F: Family>(
    frame: &XdpFrame,
    seg: &TcpSegment<F>,
    policy: &ServicePolicy,
    key: &FlowKey,
    flow: *mut PendingFlow,
) -> Verdict {
    // SAFETY: a map value pointer valid for this run; `held_bytes` is
    // updated in place.
    let flow = unsafe { &mut *flow };
    let held_as = match flow.state {
        // Never answer a RST with a RST (RFC 9293 §3.10.7.1).
        FLOW_DENIED if seg.tcp.flags & TCP_RST != 0 => return Verdict::new(XDP_DROP, reason::FLOW_DENIED),
        FLOW_DENIED => return respond::refuse(frame, seg, policy, reason::FLOW_DENIED),
        FLOW_AUTHORIZED => reason::AUTHORIZED_HOLD,
        _ => reason::PENDING_HOLD,
    };
    let (verdict, copied) = hold::hold(frame, seg, key, flow.held_bytes as u64, held_as);
    flow.held_bytes += copied;
    verdict
}
