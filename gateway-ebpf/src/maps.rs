//! Maps shared with userspace. All are pinned by name so that a restarted
//! control plane finds the live state (DESIGN.md §7).

use ackgate_common::abi::{
    AgentKey, EVENTS_BYTES, FlowKey, MAX_AGENTS, MAX_PENDING, MAX_SERVICES, PendingFlow, ServiceKey, ServicePolicy,
    VipInfo, VipKey,
};
use ackgate_common::net::Ipv4Tcp;
use ackgate_common::reason;
use aya_ebpf::bindings::BPF_F_NO_COMMON_LRU;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{HashMap, LruHashMap, PerCpuArray, RingBuf};

#[map(name = "ACKGATE_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServicePolicy> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "ACKGATE_VIPS")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "ACKGATE_AGENT_KEYS")]
pub static AGENT_KEYS: HashMap<u32, AgentKey> = HashMap::pinned(MAX_AGENTS, 0);

/// Every flow whose stamped handshake the gate accepted, with its state
/// (pending, authorized, denied). LRU so that the oldest pending flows give way under pressure instead of
/// new valid handshakes failing; the control plane expires them on time.
/// Per-CPU LRU lists (BPF_F_NO_COMMON_LRU): inserts take no global lock.
#[map(name = "ACKGATE_PENDING")]
pub static PENDING: LruHashMap<FlowKey, PendingFlow> = LruHashMap::pinned(MAX_PENDING, BPF_F_NO_COMMON_LRU);

#[map(name = "ACKGATE_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "ACKGATE_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(reason::COUNT, 0);

/// The segment's flow, if the gate accepted a handshake on its 4-tuple.
#[inline(always)]
pub fn flow(seg: &Ipv4Tcp) -> Option<PendingFlow> {
    // SAFETY: copied out at once.
    unsafe { PENDING.get(FlowKey::of_segment(seg)) }.copied()
}

/// The MAC key of `agent_id`, copied out (userspace replaces keys whole).
#[inline(always)]
pub fn agent_key(agent_id: u32) -> Option<AgentKey> {
    // SAFETY: the value is copied before the lookup's RCU section ends.
    unsafe { AGENT_KEYS.get(agent_id) }.copied()
}
