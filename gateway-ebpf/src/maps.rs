//! Maps shared with userspace. All are pinned by name so that a restarted
//! control plane finds the live state (docs/design.md §7).

use ackgate_common::abi::{
    AgentKey, EVENTS_BYTES, FlowKey, HELD_BYTES, MAX_AGENTS, MAX_PENDING, MAX_SERVICES, MAX_SPLICED,
    MAX_TRANSIT_PREFIXES, PendingFlow, SPLICE_F_TO_TARGET, STAGE_SLOTS, ServiceKey, ServicePolicy, SpliceEntry,
    SpliceKey, TransitKey, VipInfo, VipKey,
};
use ackgate_common::icmp::{Icmp6Error, IcmpError};
use ackgate_common::net::{Ipv4Tcp, Ipv6Tcp};
use ackgate_common::option::{HandshakeOptions, OptionBytes, OptionScan};
use ackgate_common::reason;
use ackgate_common::reply::MAX_REPLY_BYTES;
use aya_ebpf::bindings::BPF_F_NO_COMMON_LRU;
use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf};

use crate::family::Family;

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

/// Spliced flows, one entry per direction (`SpliceEntry`). A plain hash,
/// not an LRU: new or pending handshakes, which strangers with a stolen
/// agent key could multiply, can never evict a live flow. Userspace
/// removes entries when flows end.
#[map(name = "ACKGATE_SPLICE")]
pub static SPLICE: HashMap<SpliceKey, SpliceEntry> = HashMap::pinned(2 * MAX_SPLICED, 0);

/// IPv6 spliced flows, as `SPLICE` (36-byte keys, 80-byte entries: a map
/// of their own, so that IPv4 flows do not pay for IPv6's addresses).
#[map(name = "ACKGATE_SPLICE6")]
pub static SPLICE6: HashMap<SpliceKey<[u32; 4]>, SpliceEntry<[u32; 4]>> = HashMap::pinned(2 * MAX_SPLICED, 0);

/// The tail-called stages (`stage`), by `abi::STAGE_*`. Pinned, like the
/// links: a gateway that stopped leaves its programs in the slots, so
/// spliced flows keep flowing until it restarts and replaces them.
#[map(name = "ACKGATE_STAGES")]
pub static STAGES: ProgramArray = ProgramArray::pinned(STAGE_SLOTS, 0);

/// Client segments of flows that wait for their splice, for the control
/// plane to deliver to the target once it is up (`HeldSegment`).
#[map(name = "ACKGATE_HELD")]
pub static HELD: RingBuf = RingBuf::pinned(HELD_BYTES, 0);

/// Interfaces spliced segments may be redirected to, by ifindex.
#[map(name = "ACKGATE_REDIRECT")]
pub static REDIRECT: DevMapHash = DevMapHash::pinned(64, 0);

/// Destinations the edge may forward to besides spliced flows
/// (`[gateway] allowed_transit`): LPM over [family, address words].
#[map(name = "ACKGATE_TRANSIT")]
pub static TRANSIT: LpmTrie<TransitKey, u8> = LpmTrie::pinned(MAX_TRANSIT_PREFIXES, 0);

/// Large temporaries of one stage, kept out of the BPF stack: a call chain
/// of stages shares one 512-byte stack, and these (the option copy, FIB
/// lookup parameters, a reply's headers, the cookie helpers' inputs)
/// pushed it over.
#[repr(C)]
pub struct Scratch {
    /// The segment being handled, its service and 4-tuple (`classify`,
    /// `internal::parse`): parsed into map memory so that the entry points'
    /// frames stay small. `seg6` for IPv6 (`classify_v6`).
    pub seg: Ipv4Tcp,
    pub seg6: Ipv6Tcp,
    pub policy: ServicePolicy,
    pub key: FlowKey,
    /// The same 4-tuple as a splice-map key (`internal::parse`), and as
    /// IPv6's (`stage::splice_v6`).
    pub splice_key: SpliceKey,
    pub splice_key6: SpliceKey<[u32; 4]>,
    pub opts: core::mem::MaybeUninit<OptionBytes>,
    /// Where the option walk leaves a segment's handshake options: map
    /// memory, which the verifier does not track (see
    /// `OptionBytes::scan_handshake`).
    pub hs: HandshakeOptions,
    /// The rest of the option walk's results (`options::scan`).
    pub scan: OptionScan,
    pub fib: FibParams,
    /// An ICMP error being translated (`icmp`), and an ICMPv6 one.
    pub icmp: IcmpError,
    pub icmp6: Icmp6Error,
    /// What the IPv6 splice stage is to do (`stage::STAGE_JOB_*`).
    pub stage_job: u8,
    /// A flow's two splice entries while the target's handshake completes
    /// them (`internal::connecting`): to the target, to the client.
    pub splice_pair: [SpliceEntry; 2],
    pub splice_pair6: [SpliceEntry<[u32; 4]>; 2],
    /// A reply being built (`reply::Reply` of either family).
    pub reply: [u8; MAX_REPLY_BYTES],
    /// The cookie helpers' copies of a segment's IP header and TCP header
    /// (`family`).
    pub cookie_ip: [u8; 40],
    pub cookie_tcp: [u8; 24],
}

/// Bytes of the per-CPU copy a segment's checksums are verified over
/// (`integrity`): a whole 1500-byte packet's segment, padded, in three of
/// `bpf_csum_diff`'s 512-byte spans.
pub const CHECKSUM_BYTES: usize = 1536;

/// Not pinned: per-CPU copy of a segment whose checksums are verified.
#[map]
static CHECKSUM_BUFFER: PerCpuArray<[u8; CHECKSUM_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// Not pinned: per-CPU working memory.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "ACKGATE_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "ACKGATE_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(reason::COUNT, 0);

/// The splice entry of the segment's own 4-tuple, if it is spliced in the
/// direction the caller receives: client → target on the edge
/// (`to_target`), target → client on the internal side. A 4-tuple of the
/// other direction arriving on this side is not a spliced segment (a
/// spoofed address, say, which XDP sees before any reverse-path check):
/// carrying it on would let either network write into the other side of
/// the flow.
#[inline(always)]
pub fn splice_entry<F: Family>(
    key: &SpliceKey<F::SpliceAddr>,
    to_target: bool,
) -> Option<*mut SpliceEntry<F::SpliceAddr>> {
    let entry = F::splice_map().get_ptr_mut(key)?;
    // SAFETY: a map value pointer valid for this run.
    let flags = unsafe { (*entry).flags };
    ((flags & SPLICE_F_TO_TARGET != 0) == to_target).then_some(entry)
}

/// The flow-map entry of a 4-tuple, for in-place updates.
#[inline(always)]
pub fn flow_mut(key: &FlowKey) -> Option<*mut PendingFlow> {
    PENDING.get_ptr_mut(key)
}

/// The MAC key of `agent_id`, copied out (userspace replaces keys whole).
#[inline(always)]
pub fn agent_key(agent_id: u32) -> Option<AgentKey> {
    // SAFETY: the value is copied before the lookup's RCU section ends.
    unsafe { AGENT_KEYS.get(agent_id) }.copied()
}

/// This CPU's checksum buffer.
#[inline(always)]
pub fn checksum_buffer() -> Option<&'static mut [u8; CHECKSUM_BYTES]> {
    // SAFETY: per-CPU slot; XDP programs do not nest on one CPU, and only
    // `integrity` uses it, within one call.
    CHECKSUM_BUFFER.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// This CPU's scratch space.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU slot; XDP programs do not nest on one CPU, and each
    // stage uses a field only between its own writes and reads.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
