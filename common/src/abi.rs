//! Map keys and values shared by the kernel programs and userspace.
//!
//! Rules (DESIGN.md §8): `#[repr(C)]`, explicit padding fields, integers
//! rather than bool/enum, layout pinned by `const` asserts.
//!
//! Addresses and ports hold network-order bytes, exactly as on the wire, so
//! the kernel side builds keys without byte swapping: an address is four
//! `u32` words whose memory is the 16 address bytes (IPv4 in the first word,
//! the rest zero, so IPv6 services fit the same maps when they come), a port
//! is a `u16` whose memory is the two port bytes. Word-sized fields matter
//! on the kernel side: zeroing byte arrays compiles to calls of a
//! byte-at-a-time `memset`, which dominated the per-packet cost. The
//! constructors and accessors below do the conversions.

use core::mem::size_of;

pub const FAMILY_IPV4: u8 = 4;

/// Pinned map names (the directory is chosen by userspace).
pub const MAP_SERVICES: &str = "ACKGATE_SERVICES";
pub const MAP_VIPS: &str = "ACKGATE_VIPS";
pub const MAP_AGENT_KEYS: &str = "ACKGATE_AGENT_KEYS";
pub const MAP_PENDING: &str = "ACKGATE_PENDING";
pub const MAP_EVENTS: &str = "ACKGATE_EVENTS";
pub const MAP_COUNTERS: &str = "ACKGATE_COUNTERS";

pub const MAX_SERVICES: u32 = 4096;
pub const MAX_AGENTS: u32 = 65536;
/// Default size of the flow map (`[gateway] max_flows` overrides it).
pub const MAX_PENDING: u32 = 65536;
/// Ring buffer bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Default response of a service to a handshake that fails the gate.
pub const RESPONSE_DROP: u8 = 0;
pub const RESPONSE_RESET: u8 = 1;
pub const RESPONSE_PAGE: u8 = 2;

/// Network-order address words from IPv4 wire bytes.
#[inline(always)]
pub const fn v4_words(a: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(a), 0, 0, 0]
}

/// IPv4 wire bytes from network-order address words.
#[inline(always)]
pub const fn v4_bytes(words: &[u32; 4]) -> [u8; 4] {
    words[0].to_ne_bytes()
}

/// A port field from wire bytes.
#[inline(always)]
pub const fn port_field(wire: [u8; 2]) -> u16 {
    u16::from_ne_bytes(wire)
}

/// The host-order value of a port field.
#[inline(always)]
pub const fn port_value(field: u16) -> u16 {
    u16::from_be_bytes(field.to_ne_bytes())
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    /// Network order (see the module docs).
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

impl ServiceKey {
    /// From wire bytes.
    #[inline(always)]
    pub fn ipv4(addr: [u8; 4], port: [u8; 2]) -> Self {
        Self { addr: v4_words(addr), port: port_field(port), proto: crate::net::IPPROTO_TCP, family: FAMILY_IPV4 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServicePolicy {
    /// Hidden target; carried now, used by the splice.
    pub target_addr: [u32; 4],
    pub target_port: u16,
    /// One of the `RESPONSE_*` values.
    pub default_response: u8,
    /// 1: unstamped SYNs are dropped silently.
    pub stealth: u8,
    pub target_family: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

/// Every address that is a VIP of at least one service, so that packets to a
/// VIP can be told from transit traffic before the port is known (fragments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

impl VipKey {
    #[inline(always)]
    pub fn ipv4(addr: [u8; 4]) -> Self {
        Self { addr: v4_words(addr), family: FAMILY_IPV4, _pad0: 0, _pad1: 0 }
    }
}

/// Value of the VIP map: how many services use the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    pub services: u32,
}

/// Key of the agent key map is the agent id (u32, host order).
pub use crate::mac::MacKey as AgentKey;

/// A TCP flow as the client sees it: client → VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub _pad: u16,
}

impl FlowKey {
    /// From wire bytes.
    #[inline(always)]
    pub fn ipv4(saddr: [u8; 4], daddr: [u8; 4], sport: [u8; 2], dport: [u8; 2]) -> Self {
        Self {
            saddr: v4_words(saddr),
            daddr: v4_words(daddr),
            sport: port_field(sport),
            dport: port_field(dport),
            family: FAMILY_IPV4,
            proto: crate::net::IPPROTO_TCP,
            _pad: 0,
        }
    }

    /// The flow of a parsed segment, in the direction it travels.
    #[inline(always)]
    pub fn of_segment(seg: &crate::net::Ipv4Tcp) -> Self {
        Self::ipv4(seg.ip.saddr, seg.ip.daddr, seg.tcp.sport, seg.tcp.dport)
    }

    /// Client `addr:port` for display (IPv4).
    pub fn client_v4(&self) -> ([u8; 4], u16) {
        (v4_bytes(&self.saddr), port_value(self.sport))
    }

    /// Service `addr:port` for display (IPv4).
    pub fn service_v4(&self) -> ([u8; 4], u16) {
        (v4_bytes(&self.daddr), port_value(self.dport))
    }
}

/// Flow states in the flow map (`PendingFlow::state`), written by the gate
/// (pending) and the control plane (the rest).
pub const FLOW_PENDING: u8 = 1;
/// The control plane authorized the flow; held until the splice carries it.
pub const FLOW_AUTHORIZED: u8 = 2;
/// Denied or timed out: the service's default response from then on.
pub const FLOW_DENIED: u8 = 3;

/// A flow whose handshake carried a valid capability and now waits for the
/// control plane.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingFlow {
    /// CLOCK_MONOTONIC ns when the gate accepted the stamped ACK.
    pub created_ns: u64,
    /// Who an authorized flow belongs to, written with the decision (zero
    /// before). Kept in the pinned map, not only in the daemon, so a
    /// revocation reaches flows authorized before a restart or a crash.
    pub owner: FlowOwner,
    pub agent_id: u32,
    pub client_isn: u32,
    pub server_isn: u32,
    /// One of the `FLOW_*` values.
    pub state: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

/// Tags of an authorized flow's user and machine (gateway-user `owner`
/// computes them; the kernel only stores zeros).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowOwner {
    pub user_tag: u64,
    pub machine_tag: u64,
}

pub const EVENT_PENDING: u32 = 1;

/// Ring buffer record sent to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateEvent {
    /// One of the `EVENT_*` values.
    pub kind: u32,
    pub agent_id: u32,
    pub flow: FlowKey,
    pub client_isn: u32,
    pub server_isn: u32,
    pub created_ns: u64,
}

impl GateEvent {
    /// The event of a flow the map holds as pending (for flows whose own
    /// event userspace did not act on: left by a previous run, or a newer
    /// handshake on a 4-tuple still being decided).
    pub fn pending(flow: FlowKey, f: &PendingFlow) -> Self {
        Self {
            kind: EVENT_PENDING,
            agent_id: f.agent_id,
            flow,
            client_isn: f.client_isn,
            server_isn: f.server_isn,
            created_ns: f.created_ns,
        }
    }

    /// Whether `f` is the map entry of this very handshake (a newer one on
    /// the same 4-tuple has other ISNs and another creation time).
    pub fn is_handshake_of(&self, f: &PendingFlow) -> bool {
        (self.created_ns, self.agent_id, self.client_isn, self.server_isn)
            == (f.created_ns, f.agent_id, f.client_isn, f.server_isn)
    }
}

/// Agent maps (pinned under the agent's own directory).
pub const MAP_AGENT_TARGETS: &str = "ACKGATE_AGENT_TARGETS";
pub const MAP_AGENT_IDENTITY: &str = "ACKGATE_AGENT_IDENTITY";
pub const MAP_AGENT_HANDSHAKES: &str = "ACKGATE_AGENT_HANDSHAKES";
pub const MAP_AGENT_STAMPED: &str = "ACKGATE_AGENT_STAMPED";
pub const MAP_AGENT_COUNTERS: &str = "ACKGATE_AGENT_COUNTERS";

pub const MAX_TARGETS: u32 = 1024;
/// SYNs in flight whose handshake ACK is still to be stamped.
pub const MAX_HANDSHAKES: u32 = 16384;
/// Recently stamped flows kept for `ackgate-agent status`.
pub const MAX_STAMPED: u32 = 1024;

/// A target of the agent is a [`ServiceKey`]; port 0 stands for every port
/// of that gateway address.
pub type TargetKey = ServiceKey;

/// What the agent does for one target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// 1: stamp the SYN too (stealth services).
    pub stamp_syn: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

/// The agent's enrolled identity; the identity map has one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentIdentity {
    pub agent_id: u32,
    /// 1 once userspace has written an enrolled identity.
    pub enrolled: u32,
    pub key: crate::mac::MacKey,
}

pub const STAMP_KIND_SYN: u32 = 1;
pub const STAMP_KIND_ACK: u32 = 2;

/// A recently stamped flow (value of the stamped map, keyed by [`FlowKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StampedFlow {
    /// CLOCK_MONOTONIC ns of the stamp.
    pub stamped_ns: u64,
    /// `STAMP_KIND_*` of the last stamp.
    pub kind: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<TargetPolicy>() == 4);
const _: () = assert!(size_of::<AgentIdentity>() == 24);
const _: () = assert!(size_of::<StampedFlow>() == 16);
const _: () = assert!(size_of::<ServiceKey>() == 20);
const _: () = assert!(size_of::<ServicePolicy>() == 24);
const _: () = assert!(size_of::<VipKey>() == 20);
const _: () = assert!(size_of::<VipInfo>() == 4);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowOwner>() == 16);
const _: () = assert!(size_of::<PendingFlow>() == 40);
const _: () = assert!(size_of::<GateEvent>() == 64);
const _: () = assert!(core::mem::offset_of!(GateEvent, created_ns) == 56);
