//! The agent's maps. Not pinned: they live as long as the agent daemon that
//! loaded them, which fills targets and identity at start-up.

use ackgate_common::abi::{
    ANY_ACCOUNT, AgentHandshake, AgentIdentity, FlowKey, MAX_ACCOUNTS, MAX_HANDSHAKES, MAX_STAMPED, MAX_TARGETS,
    StampedFlow, TargetKey, TargetPolicy,
};
use ackgate_common::kernel::frame::SkbFrame;
use ackgate_common::net::{Ipv4Tcp, Ipv6Tcp};
use ackgate_common::stamp::reason;
use aya_ebpf::helpers::bpf_get_socket_uid;
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

/// The local accounts with a login on this machine, by uid (the value is
/// unused); [`ANY_ACCOUNT`] stands for all of them (single-user mode).
/// Only their sockets' handshakes are stamped.
#[map(name = "ACKGATE_AGENT_ACCOUNTS")]
pub static ACCOUNTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ACCOUNTS, 0);

/// Per-CPU working memory: the segment being stamped, parsed into map
/// memory rather than onto the BPF stack (an IPv6 segment, copied along the
/// stages, would take a good part of it).
#[repr(C)]
pub struct Scratch {
    pub seg: Ipv4Tcp,
    pub seg6: Ipv6Tcp,
    /// The segment's 4-tuple: map keys, and the MAC's addresses as aligned
    /// words (read from the header's bytes instead, each byte stayed live
    /// on the stack).
    pub flow: FlowKey,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch space.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU slot; TC programs do not nest on one CPU, and the
    // segment is written by `classify` and only read after it.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[map(name = "ACKGATE_AGENT_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(reason::COUNT, 0);

/// The enrolled identity, copied out; `None` before enrollment.
#[inline(always)]
pub fn identity() -> Option<AgentIdentity> {
    let id = *IDENTITY.get(0)?;
    (id.enrolled == 1).then_some(id)
}

/// The logged-in account the segment's socket belongs to: its owner's uid,
/// or [`ANY_ACCOUNT`] when a machine-wide login is in force; `None` when
/// neither. A segment without a full socket (forwarded, or a timewait
/// socket's) reads as the overflow uid (`bpf_get_socket_uid` in
/// net/core/filter.c), which no login holds.
#[inline(always)]
pub fn account(frame: &SkbFrame) -> Option<u32> {
    // SAFETY: the helper reads the skb of this very run.
    let uid = unsafe { bpf_get_socket_uid(frame.ctx().skb.skb) };
    // SAFETY: a plain lookup; the value is not used.
    let logged_in = |account: u32| unsafe { ACCOUNTS.get(account) }.is_some();
    if logged_in(uid) { Some(uid) } else { logged_in(ANY_ACCOUNT).then_some(ANY_ACCOUNT) }
}
