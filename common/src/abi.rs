//! Map keys and values shared by the kernel programs and userspace.
//!
//! Rules (docs/design.md §8): `#[repr(C)]`, explicit padding fields, integers
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

use crate::net::{IpHeader, TcpSegment};
use core::mem::size_of;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Pinned map names (the directory is chosen by userspace).
pub const MAP_SERVICES: &str = "ACKGATE_SERVICES";
pub const MAP_VIPS: &str = "ACKGATE_VIPS";
pub const MAP_AGENT_KEYS: &str = "ACKGATE_AGENT_KEYS";
pub const MAP_PENDING: &str = "ACKGATE_PENDING";
pub const MAP_EVENTS: &str = "ACKGATE_EVENTS";
pub const MAP_COUNTERS: &str = "ACKGATE_COUNTERS";
pub const MAP_SPLICE: &str = "ACKGATE_SPLICE";
/// IPv6 spliced flows (`SpliceKey<[u32; 4]>`, `SpliceEntry<[u32; 4]>`).
pub const MAP_SPLICE6: &str = "ACKGATE_SPLICE6";
/// The gate's tail-called stages, by `STAGE_*` index.
pub const MAP_STAGES: &str = "ACKGATE_STAGES";
pub const MAP_HELD: &str = "ACKGATE_HELD";
pub const MAP_REDIRECT: &str = "ACKGATE_REDIRECT";
pub const MAP_TRANSIT: &str = "ACKGATE_TRANSIT";

/// `MAP_STAGES` index of the IPv6 splice stage (`ackgate_splice_v6`).
pub const STAGE_SPLICE_V6: u32 = 0;
/// Slots of `MAP_STAGES`.
pub const STAGE_SLOTS: u32 = 1;

pub const MAX_SERVICES: u32 = 4096;
pub const MAX_AGENTS: u32 = 65536;
/// Default size of the flow map (`[gateway] max_flows` overrides it).
pub const MAX_PENDING: u32 = 65536;
/// Ring buffer bytes (a power of two and a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Default number of spliced flows (`[gateway] max_spliced` overrides it);
/// each takes two entries of the splice map, one per direction.
pub const MAX_SPLICED: u32 = 65536;
/// Held-segment ring bytes: about 650 full-size segments.
pub const HELD_BYTES: u32 = 1 << 20;
/// Client bytes held per flow while it is pending or connecting; beyond,
/// segments are dropped (the client retransmits them after the splice).
pub const HELD_PER_FLOW: u32 = 32 * 1024;
/// Largest IPv4 packet the gate copies into the held ring (a 1500-byte
/// MTU); larger ones are dropped and retransmitted.
pub const HELD_MAX_PACKET: usize = 1500;
/// Allowed-transit prefixes (`[gateway] allowed_transit`).
pub const MAX_TRANSIT_PREFIXES: u32 = 1024;

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

/// Network-order address words from IPv6 wire bytes.
#[inline(always)]
pub const fn v6_words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// IPv6 wire bytes from network-order address words.
#[inline(always)]
pub const fn v6_bytes(words: &[u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = [words[0].to_ne_bytes(), words[1].to_ne_bytes(), words[2].to_ne_bytes(), words[3].to_ne_bytes()];
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
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

    /// From IPv6 wire bytes.
    #[inline(always)]
    pub fn ipv6(addr: [u8; 16], port: [u8; 2]) -> Self {
        Self { addr: v6_words(addr), port: port_field(port), proto: crate::net::IPPROTO_TCP, family: FAMILY_IPV6 }
    }

    /// The service a segment is addressed to.
    #[inline(always)]
    pub fn of_destination<I: IpHeader>(seg: &TcpSegment<I>) -> Self {
        Self {
            addr: I::words(seg.ip.daddr()),
            port: port_field(seg.tcp.dport),
            proto: crate::net::IPPROTO_TCP,
            family: I::FAMILY,
        }
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

    #[inline(always)]
    pub fn of<I: IpHeader>(addr: I::Addr) -> Self {
        Self { addr: I::words(addr), family: I::FAMILY, _pad0: 0, _pad1: 0 }
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
    pub fn of_segment<I: IpHeader>(seg: &TcpSegment<I>) -> Self {
        Self {
            saddr: I::words(seg.ip.saddr()),
            daddr: I::words(seg.ip.daddr()),
            sport: port_field(seg.tcp.sport),
            dport: port_field(seg.tcp.dport),
            family: I::FAMILY,
            proto: crate::net::IPPROTO_TCP,
            _pad: 0,
        }
    }

    /// The client's address and port, of either family.
    pub fn client_addr(&self) -> SocketAddr {
        socket_addr(self.family, &self.saddr, self.sport)
    }

    /// The service's address (VIP) and port, of either family.
    pub fn service_addr(&self) -> SocketAddr {
        socket_addr(self.family, &self.daddr, self.dport)
    }

    /// The TCP flow from `client` to `service`; `None` when their
    /// families differ.
    pub fn of_sockets(client: SocketAddr, service: SocketAddr) -> Option<Self> {
        let (family, saddr, daddr) = match (client.ip(), service.ip()) {
            (IpAddr::V4(c), IpAddr::V4(s)) => (FAMILY_IPV4, v4_words(c.octets()), v4_words(s.octets())),
            (IpAddr::V6(c), IpAddr::V6(s)) => (FAMILY_IPV6, v6_words(c.octets()), v6_words(s.octets())),
            _ => return None,
        };
        Some(Self {
            saddr,
            daddr,
            sport: port_field(client.port().to_be_bytes()),
            dport: port_field(service.port().to_be_bytes()),
            family,
            proto: crate::net::IPPROTO_TCP,
            _pad: 0,
        })
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

/// An address of `family` held as map words, with a port field (network
/// order), as a socket address.
pub fn socket_addr(family: u8, words: &[u32; 4], port: u16) -> SocketAddr {
    let ip = match family {
        FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(v6_bytes(words))),
        _ => IpAddr::V4(Ipv4Addr::from(v4_bytes(words))),
    };
    SocketAddr::new(ip, port_value(port))
}

/// Flow states in the flow map (`PendingFlow::state`), written by the gate
/// (pending) and the control plane (the rest).
pub const FLOW_PENDING: u8 = 1;
/// The control plane authorized the flow; held until the splice carries it.
pub const FLOW_AUTHORIZED: u8 = 2;
/// Denied or timed out: the service's default response from then on.
pub const FLOW_DENIED: u8 = 3;

/// Every flow-map state with the name status, flows and metrics show.
pub const FLOW_STATES: [(u8, &str); 3] =
    [(FLOW_PENDING, "pending"), (FLOW_AUTHORIZED, "authorized"), (FLOW_DENIED, "denied")];

/// The name of a flow-map state.
pub fn flow_state_label(state: u8) -> &'static str {
    FLOW_STATES.iter().find(|(s, _)| *s == state).map_or("unknown", |(_, name)| name)
}

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
    /// What the handshake agreed (the splice repeats it to the target).
    pub handshake: HandshakeInfo,
    /// Client bytes copied to the held ring while the flow waits
    /// (bounded by [`HELD_PER_FLOW`]).
    pub held_bytes: u32,
    pub _pad2: u32,
}

/// What a client's handshake agreed with the gate's cookie SYN/ACK,
/// decoded from the handshake ACK (its TSecr carries the cookie's
/// `ClientOffer`, see `cookie`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// TSval of the handshake ACK (meaningful when `ts_ok`).
    pub client_tsval: u32,
    /// TSecr of the handshake ACK: the TSval of the gate's SYN/ACK.
    pub cookie_tsval: u32,
    /// Raw window of the handshake ACK.
    pub window: u16,
    /// Client MSS, rounded down to the cookie table (536 without
    /// timestamps: nothing brings it back).
    pub mss: u16,
    /// Client window scale, `option::NO_WSCALE` when not agreed.
    pub wscale: u8,
    pub sack_ok: u8,
    pub ts_ok: u8,
    pub ecn: u8,
}

/// Tags of an authorized flow's user and machine (gateway-user `owner`
/// computes them; the kernel only stores zeros).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowOwner {
    pub user_tag: u64,
    pub machine_tag: u64,
}

/// A stamped handshake was accepted: decide it.
pub const EVENT_PENDING: u32 = 1;
/// The target answered the splice's SYN and the gate completed the
/// handshake: the flow is spliced (`server_isn` holds the target's ISN).
pub const EVENT_SPLICED: u32 = 2;
/// The target refused the splice's SYN: `agent_id` holds the
/// `REFUSED_*` reason.
pub const EVENT_REFUSED: u32 = 3;
/// A spliced flow ended: `agent_id` holds the `END_*` reason.
pub const EVENT_ENDED: u32 = 4;

/// `EVENT_ENDED` reasons.
pub const END_FIN: u32 = 1;
pub const END_RST_CLIENT: u32 = 2;
pub const END_RST_TARGET: u32 = 3;

/// `EVENT_REFUSED` reasons: a RST, or an ICMP error (unreachable, time
/// exceeded) about the splice's SYN.
pub const REFUSED_RST: u32 = 0;
pub const REFUSED_UNREACHABLE: u32 = 1;

/// Ring buffer record sent to userspace. `flow` is always the client's
/// 4-tuple (client → VIP).
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
    pub handshake: HandshakeInfo,
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
            handshake: f.handshake,
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
pub const MAP_AGENT_ACCOUNTS: &str = "ACKGATE_AGENT_ACCOUNTS";

pub const MAX_TARGETS: u32 = 1024;
/// SYNs in flight whose handshake ACK is still to be stamped.
pub const MAX_HANDSHAKES: u32 = 16384;
/// Stamped flows remembered (LRU). The gateway asks about a flow within
/// milliseconds of its stamp, so this only has to outlast a burst of new
/// connections: a flow evicted before the question is refused as unstamped.
pub const MAX_STAMPED: u32 = 16384;

/// Local accounts logged in on one agent at a time (the agent's account
/// map, and the logins one gateway session holds).
pub const MAX_ACCOUNTS: u32 = 256;
/// The account key of a machine-wide login (the agent's single-user mode):
/// it stands for every local account. No uid is this value (the kernel's
/// `INVALID_UID`).
pub const ANY_ACCOUNT: u32 = u32::MAX;

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

/// `AgentHandshake::state`: the SYN left, the handshake ACK has not.
pub const HANDSHAKE_SYN_SENT: u32 = 0;
/// A stamped pure ACK left (the handshake ACK, or the first data segment
/// cut down to one); the flow's first data segment has not.
pub const HANDSHAKE_ACK_STAMPED: u32 = 1;
/// The first data segment left after the stamped ACK: if it leaves again,
/// the stamped ACK may have been lost.
pub const HANDSHAKE_DATA_SENT: u32 = 2;

/// A handshake the agent's stamper follows (value of the handshake map,
/// keyed by [`FlowKey`]) until the server is heard from: while the client
/// has acknowledged nothing of the server's, the gate may not have the flow
/// yet, and the first data segment may have to become a stamped pure ACK
/// (docs/agent.md, "A lost handshake ACK").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentHandshake {
    /// The SYN's SEQ.
    pub client_isn: u32,
    /// The handshake ACK's ACK - 1; 0 before it left.
    pub server_isn: u32,
    /// `HANDSHAKE_*`.
    pub state: u32,
    pub _pad: u32,
}

pub const STAMP_KIND_SYN: u32 = 1;
pub const STAMP_KIND_ACK: u32 = 2;

/// A flow this machine stamped (value of the stamped map, keyed by
/// [`FlowKey`]). The agent answers a profile request only for a flow whose
/// entry holds the same ISNs: a copy of the MAC key used elsewhere stamps
/// handshakes this map never saw (docs/protocol.md, "A stolen key").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StampedFlow {
    /// CLOCK_MONOTONIC ns of the stamp.
    pub stamped_ns: u64,
    /// `STAMP_KIND_*` of the last stamp.
    pub kind: u32,
    /// The client's ISN (a SYN's SEQ; an ACK's SEQ - 1).
    pub client_isn: u32,
    /// The server's ISN (an ACK's ACK - 1); 0 for a SYN stamp.
    pub server_isn: u32,
    /// The logged-in account the stamp was made for: the socket owner's
    /// uid, or [`ANY_ACCOUNT`] under a machine-wide login.
    pub account: u32,
}

impl StampedFlow {
    /// Whether this is the handshake ACK stamp of the handshake with these
    /// ISNs.
    pub fn is_handshake(&self, client_isn: u32, server_isn: u32) -> bool {
        self.kind == STAMP_KIND_ACK && self.client_isn == client_isn && self.server_isn == server_isn
    }
}

const _: () = assert!(size_of::<TargetPolicy>() == 4);
const _: () = assert!(size_of::<AgentIdentity>() == 24);
const _: () = assert!(size_of::<StampedFlow>() == 24);
const _: () = assert!(size_of::<AgentHandshake>() == 16);
const _: () = assert!(size_of::<ServiceKey>() == 20);
const _: () = assert!(size_of::<ServicePolicy>() == 24);
const _: () = assert!(size_of::<VipKey>() == 20);
const _: () = assert!(size_of::<VipInfo>() == 4);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowOwner>() == 16);
const _: () = assert!(size_of::<HandshakeInfo>() == 16);
const _: () = assert!(size_of::<PendingFlow>() == 64);
const _: () = assert!(size_of::<GateEvent>() == 80);
const _: () = assert!(core::mem::offset_of!(GateEvent, created_ns) == 56);
const _: () = assert!(size_of::<SynAckProfile>() == 24);
const _: () = assert!(size_of::<SynAckSizes>() == 6);
const _: () = assert!(size_of::<HeldSegment>() == 48 + HELD_MAX_PACKET);

/// What the gateway kernel's own SYN/ACK looks like on the edge interface,
/// computed by userspace at load time from the edge MTU and the network
/// namespace's sysctls (the way `tcp_openreq_init_rwin` and
/// `tcp_select_initial_window` in net/ipv4 compute them) and written into
/// the program's .rodata. The cookie SYN/ACK copies it, so a protected port
/// answers exactly like an ordinary one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynAckProfile {
    /// Keys the per-address-pair TSval offset (`cookie::ts_offset`).
    pub ts_secret: u64,
    /// Sizes of an IPv4 SYN/ACK ...
    pub v4: SynAckSizes,
    /// ... and of an IPv6 one.
    pub v6: SynAckSizes,
    /// Window scale offered (to clients that offered one).
    pub wscale: u8,
    /// 1: answer ECN SYNs with ECE (net.ipv4.tcp_ecn != 0, which IPv6
    /// follows too).
    pub ecn: u8,
    pub _pad0: u16,
}

impl SynAckProfile {
    /// The sizes of family `I`'s SYN/ACK.
    #[inline(always)]
    pub fn sizes<I: IpHeader>(&self) -> SynAckSizes {
        if I::FAMILY == FAMILY_IPV6 { self.v6 } else { self.v4 }
    }
}

/// What the SYN/ACK of one family advertises.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynAckSizes {
    /// Advertised MSS: edge MTU − 40 (IPv4) or − 60 (IPv6).
    pub mss: u16,
    /// Window when the SYN/ACK carries timestamps (MSS − 12 multiples) ...
    pub window_ts: u16,
    /// ... and when it does not.
    pub window_no_ts: u16,
}

/// A client segment copied while its flow waits for the splice (held ring
/// record): the IPv4 packet from its first byte, `len` bytes of `packet`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeldSegment {
    pub flow: FlowKey,
    pub len: u32,
    pub _pad: u32,
    pub packet: [u8; HELD_MAX_PACKET],
}

/// Splice entry states (`SpliceEntry::state`).
/// Written by the control plane: the SYN to the target is out.
pub const SPLICE_CONNECTING: u8 = 1;
/// The gate completed the target's handshake: segments are rewritten and
/// forwarded.
pub const SPLICE_ESTABLISHED: u8 = 2;

/// `SpliceEntry::flags`.
/// This entry rewrites client → target segments (else target → client).
pub const SPLICE_F_TO_TARGET: u8 = 1;
/// The splice's SYN offered the client's window scale to the target.
pub const SPLICE_F_WS_SENT: u8 = 2;
/// The splice's SYN offered timestamps to the target.
pub const SPLICE_F_TS_SENT: u8 = 4;
/// A FIN went through in this entry's direction.
pub const SPLICE_F_FIN: u8 = 8;
/// A RST went through in this entry's direction.
pub const SPLICE_F_RST: u8 = 16;

/// An address as the splice map holds it: the network-order words of the
/// family's wire bytes, as in [`FlowKey`], but only as many as the family
/// needs: one for IPv4, four for IPv6. Each flow has two entries, so every
/// byte of key and value counts twice per flow (see [`SpliceEntry`]), and
/// IPv4 flows do not pay for IPv6's addresses: each family has its map.
pub trait SpliceAddr: Copy + Default + PartialEq + Eq + core::hash::Hash + core::fmt::Debug + 'static {
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    const FAMILY: u8;
    /// As a [`FlowKey`]'s address words.
    fn words(self) -> [u32; 4];
    /// From a [`FlowKey`]'s address words.
    fn from_words(words: [u32; 4]) -> Self;
}

impl SpliceAddr for u32 {
    const FAMILY: u8 = FAMILY_IPV4;
    #[inline(always)]
    fn words(self) -> [u32; 4] {
        [self, 0, 0, 0]
    }
    #[inline(always)]
    fn from_words(words: [u32; 4]) -> Self {
        words[0]
    }
}

impl SpliceAddr for [u32; 4] {
    const FAMILY: u8 = FAMILY_IPV6;
    #[inline(always)]
    fn words(self) -> [u32; 4] {
        self
    }
    #[inline(always)]
    fn from_words(words: [u32; 4]) -> Self {
        words
    }
}

/// Key of a splice map: a segment's 4-tuple as it arrives (network-order
/// words and ports, as in [`FlowKey`]). Twelve bytes for IPv4 rather than
/// a [`FlowKey`]'s forty; 36 for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpliceKey<A = u32> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
}

const _: () = assert!(size_of::<SpliceKey<u32>>() == 12);
const _: () = assert!(size_of::<SpliceKey<[u32; 4]>>() == 36);

impl<A: SpliceAddr> SpliceKey<A> {
    /// The key of a parsed segment, in the direction it travels.
    #[inline(always)]
    pub fn of_segment<I: IpHeader<SpliceAddr = A>>(seg: &TcpSegment<I>) -> Self {
        let (saddr, daddr) = I::splice_addrs(seg);
        Self { saddr, daddr, sport: port_field(seg.tcp.sport), dport: port_field(seg.tcp.dport) }
    }

    /// The key of a flow of this family; `None` for another family.
    #[inline(always)]
    pub fn of_flow(flow: &FlowKey) -> Option<Self> {
        (flow.family == A::FAMILY).then(|| Self {
            saddr: A::from_words(flow.saddr),
            daddr: A::from_words(flow.daddr),
            sport: flow.sport,
            dport: flow.dport,
        })
    }

    /// The same 4-tuple as a [`FlowKey`] (events, the flow map).
    #[inline(always)]
    pub fn flow(&self) -> FlowKey {
        FlowKey {
            saddr: self.saddr.words(),
            daddr: self.daddr.words(),
            sport: self.sport,
            dport: self.dport,
            family: A::FAMILY,
            proto: crate::net::IPPROTO_TCP,
            _pad: 0,
        }
    }
}

/// Units of [`SpliceEntry::last_seen`]: CLOCK_MONOTONIC nanoseconds shifted
/// right by this (about a millisecond; the u32 wraps after 52 days, and
/// readers compare with wrapping arithmetic).
pub const LAST_SEEN_SHIFT: u32 = 20;

/// One direction of a spliced flow: the value of its family's splice map, keyed
/// by the [`SpliceKey`] of the segments it rewrites as they arrive (client
/// → VIP on the edge, target → client or source-NAT address on the
/// internal side). Each direction is self-contained, so a segment costs one
/// lookup; the other direction's key is this entry's rewritten 4-tuple
/// reversed.
///
/// 56 bytes for IPv4, so that with its key and the kernel's 48 bytes per
/// element a flow's two entries take 240 bytes (htab_elem in
/// kernel/bpf/hashtab.c): 229 MiB for a million flows (IPv6: 80 bytes, 336
/// per flow). Hence:
/// - one sequence shift and one timestamp shift: the client → target
///   direction keeps SEQ and TSval (the target's SYN carried the client's
///   own) and shifts ACK, SACK edges and TSecr; the target → client one
///   shifts SEQ and TSval and keeps ACK, SACK edges and TSecr (the target
///   acknowledges and echoes the client's own numbers);
/// - the owner's two tags split across the two entries;
/// - a 32-bit packet count (it wraps after 2^32 segments; `bytes` does not)
///   and a coarse last-seen clock.
///
/// While `state` is `SPLICE_CONNECTING`, some fields hold what completing
/// the target's handshake needs (see `splice::complete`): the target →
/// client entry's `seq_shift` holds the cookie ISN and `ts_shift` the
/// cookie TSval, its `aux` the client's handshake-ACK window; the client →
/// target entry's `aux` holds the client's handshake-ACK TSval.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceEntry<A = u32> {
    /// Rewritten source and destination (network-order words, as keys).
    pub saddr: A,
    pub daddr: A,
    /// Rewritten ports (network order).
    pub sport: u16,
    pub dport: u16,
    /// Added to SEQ (target → client), or to ACK and every SACK block edge
    /// (client → target).
    pub seq_shift: u32,
    /// Added to the timestamp option's TSval (target → client) or TSecr
    /// (client → target).
    pub ts_shift: u32,
    /// Window rewrite: `(raw << wnd_shl) >> wnd_shr` (rounded up, at most
    /// 65535); both zero when the two sides scale alike.
    pub wnd_shl: u8,
    pub wnd_shr: u8,
    /// `SPLICE_*` state.
    pub state: u8,
    /// `SPLICE_F_*` flags.
    pub flags: u8,
    /// One past the highest sequence number sent in this direction, in the
    /// sender's space (RSTs that end the flow use it).
    pub seq_next: u32,
    /// Connecting: see the type's docs. Established: the ACK number of
    /// this direction's latest segment, in the sender's view (the sequence
    /// number a RST to this sender must carry to be accepted at once).
    pub aux: u32,
    /// Segments forwarded in this direction (modulo 2^32).
    pub packets: u32,
    /// The coarse monotonic clock at the last segment in this direction,
    /// in units of [`LAST_SEEN_SHIFT`].
    pub last_seen: u32,
    /// Bytes (IP length) forwarded in this direction.
    pub bytes: u64,
    /// Who the flow belongs to (revocation finds it by this): the owner's
    /// user tag in the client → target entry, its machine tag in the
    /// target → client one (`FlowOwner`).
    pub owner_tag: u64,
}

const _: () = assert!(size_of::<SpliceEntry<u32>>() == 56);
const _: () = assert!(core::mem::offset_of!(SpliceEntry<u32>, bytes) == 40);
const _: () = assert!(size_of::<SpliceEntry<[u32; 4]>>() == 80);
const _: () = assert!(core::mem::offset_of!(SpliceEntry<[u32; 4]>, bytes) == 64);

/// How long ago, in ns, the later of two `last_seen` stamps was, at
/// CLOCK_MONOTONIC `now_ns` (wrapping arithmetic: the stamps wrap).
pub fn last_seen_ago_ns(now_ns: u64, a: u32, b: u32) -> u64 {
    let later = if (b.wrapping_sub(a) as i32) > 0 { b } else { a };
    let now = (now_ns >> LAST_SEEN_SHIFT) as u32;
    (now.wrapping_sub(later) as u64) << LAST_SEEN_SHIFT
}

impl<A: SpliceAddr> SpliceEntry<A> {
    /// The same entry with its addresses as `B`'s words: the control plane
    /// reads both families' entries as `SpliceEntry<[u32; 4]>`.
    pub fn with_addrs<B: SpliceAddr>(&self) -> SpliceEntry<B> {
        SpliceEntry {
            saddr: B::from_words(self.saddr.words()),
            daddr: B::from_words(self.daddr.words()),
            sport: self.sport,
            dport: self.dport,
            seq_shift: self.seq_shift,
            ts_shift: self.ts_shift,
            wnd_shl: self.wnd_shl,
            wnd_shr: self.wnd_shr,
            state: self.state,
            flags: self.flags,
            seq_next: self.seq_next,
            aux: self.aux,
            packets: self.packets,
            last_seen: self.last_seen,
            bytes: self.bytes,
            owner_tag: self.owner_tag,
        }
    }

    /// The key of the other direction's entry.
    #[inline(always)]
    pub fn peer_key(&self) -> SpliceKey<A> {
        SpliceKey { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport }
    }

    /// All ones for the client → target direction, else zero: the shifts
    /// below select with it rather than branch (fewer registers live in
    /// the data path's tightest stack frame).
    #[inline(always)]
    fn client_side_mask(&self) -> u32 {
        0u32.wrapping_sub((self.flags & SPLICE_F_TO_TARGET) as u32)
    }

    /// What this direction adds to SEQ.
    #[inline(always)]
    pub fn seq_add(&self) -> u32 {
        self.seq_shift & !self.client_side_mask()
    }

    /// What this direction adds to ACK and SACK edges.
    #[inline(always)]
    pub fn ack_add(&self) -> u32 {
        self.seq_shift & self.client_side_mask()
    }

    /// What this direction adds to TSval.
    #[inline(always)]
    pub fn tsval_add(&self) -> u32 {
        self.ts_shift & !self.client_side_mask()
    }

    /// What this direction adds to TSecr.
    #[inline(always)]
    pub fn tsecr_add(&self) -> u32 {
        self.ts_shift & self.client_side_mask()
    }
}

/// An allowed-transit prefix (LPM trie key data): the address family
/// (`FAMILY_*`, in the first byte of word 0) then the address words, so
/// that IPv4 and IPv6 prefixes never match each other; the prefix length
/// counts the 32 family bits.
pub type TransitKey = [u32; 5];
