//! Map keys and values shared by the kernel programs and userspace.
//!
//! Rules (DESIGN.md §8): `#[repr(C)]`, explicit padding fields, integers
//! rather than bool/enum, layout pinned by `const` asserts. Addresses and
//! ports are kept as network-order bytes, exactly as they appear on the
//! wire, so the kernel side builds keys without any byte swapping. IPv4
//! addresses sit in the first four bytes of a 16-byte field so that IPv6
//! services fit the same maps when they come.

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
pub const MAX_PENDING: u32 = 65536;
/// Ring buffer bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Default response of a service to a handshake that fails the gate.
pub const RESPONSE_DROP: u8 = 0;
pub const RESPONSE_RESET: u8 = 1;
pub const RESPONSE_PAGE: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

impl ServiceKey {
    /// `port` in network order, as on the wire.
    #[inline(always)]
    pub fn ipv4(addr: [u8; 4], port: [u8; 2]) -> Self {
        Self { addr: v4_in_16(addr), port, proto: crate::net::IPPROTO_TCP, family: FAMILY_IPV4 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServicePolicy {
    /// Hidden target; carried now, used by the splice.
    pub target_addr: [u8; 16],
    pub target_port: [u8; 2],
    /// One of the `RESPONSE_*` values.
    pub default_response: u8,
    /// 1: unstamped SYNs are dropped silently.
    pub stealth: u8,
    pub target_family: u8,
    pub _pad: [u8; 3],
}

/// Every address that is a VIP of at least one service, so that packets to a
/// VIP can be told from transit traffic before the port is known (fragments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

impl VipKey {
    #[inline(always)]
    pub fn ipv4(addr: [u8; 4]) -> Self {
        Self { addr: v4_in_16(addr), family: FAMILY_IPV4, _pad: [0; 3] }
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
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    #[inline(always)]
    pub fn ipv4(saddr: [u8; 4], daddr: [u8; 4], sport: [u8; 2], dport: [u8; 2]) -> Self {
        Self {
            saddr: v4_in_16(saddr),
            daddr: v4_in_16(daddr),
            sport,
            dport,
            family: FAMILY_IPV4,
            proto: crate::net::IPPROTO_TCP,
            _pad: [0; 2],
        }
    }
}

pub const FLOW_PENDING: u8 = 1;

/// A flow whose handshake carried a valid capability and now waits for the
/// control plane.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingFlow {
    /// CLOCK_MONOTONIC ns when the gate accepted the stamped ACK.
    pub created_ns: u64,
    pub agent_id: u32,
    pub client_isn: u32,
    pub server_isn: u32,
    /// One of the `FLOW_*` values.
    pub state: u8,
    pub _pad: [u8; 3],
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

const _: () = assert!(size_of::<ServiceKey>() == 20);
const _: () = assert!(size_of::<ServicePolicy>() == 24);
const _: () = assert!(size_of::<VipKey>() == 20);
const _: () = assert!(size_of::<VipInfo>() == 4);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<PendingFlow>() == 24);
const _: () = assert!(size_of::<GateEvent>() == 64);
const _: () = assert!(core::mem::offset_of!(GateEvent, created_ns) == 56);

#[inline(always)]
pub fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}
