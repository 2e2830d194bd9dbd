//! The agent's maps. Not pinned: they live as long as the agent daemon that
//! loaded them, which fills targets and identity at start-up.

use ackgate_common::abi::{
    AgentHandshake, AgentIdentity, FlowKey, MAX_HANDSHAKES, MAX_STAMPED, MAX_TARGETS, StampedFlow, TargetKey,
    TargetPolicy,
};
use ackgate_common::stamp::reason;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray};

#[map(name = "ACKGATE_AGENT_TARGETS")]
pub static TARGETS: HashMap<TargetKey, TargetPolicy> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Slot 0: the enrolled agent id and MAC key.
#[map(name = "ACKGATE_AGENT_IDENTITY")]
pub static IDENTITY: Array<AgentIdentity> = Array::with_max_entries(1, 0);

/// Each target flow from its SYN until the client acknowledges something
/// of the server's (`AgentHandshake`). LRU: a SYN that never gets an
/// answer, or a flow whose server never sends, ages out instead of filling
/// the map.
#[map(name = "ACKGATE_AGENT_HANDSHAKES")]
pub static HANDSHAKES: LruHashMap<FlowKey, AgentHandshake> = LruHashMap::with_max_entries(MAX_HANDSHAKES, 0);

/// Flows this machine stamped: the profile answer's stolen-key check, and
/// `ackgate-agent status`.
#[map(name = "ACKGATE_AGENT_STAMPED")]
pub static STAMPED: LruHashMap<FlowKey, StampedFlow> = LruHashMap::with_max_entries(MAX_STAMPED, 0);

#[map(name = "ACKGATE_AGENT_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(reason::COUNT, 0);

/// The enrolled identity, copied out; `None` before enrollment.
#[inline(always)]
pub fn identity() -> Option<AgentIdentity> {
    let id = *IDENTITY.get(0)?;
    (id.enrolled == 1).then_some(id)
}
