//! The control plane's side of the splice (docs/design.md §2 steps 7–8): it
//! opens the connection to the target when a flow is authorized, hands the
//! client's held first data over once XDP has completed that connection,
//! and ends flows (FIN, RST, idle, revocation, a target that refuses).
//! The data path itself is XDP's (gateway-ebpf `splice`, `internal`);
//! nothing here touches a spliced segment.
//!
//! ```text
//! authorized ─▶ connecting ──SYN/ACK (XDP)──▶ established ──FIN/FIN, RST──▶ ending ─▶ removed
//!                   │ └── RST from target, no answer ──▶ refused (default response)
//!                   └── (client data meanwhile: held, delivered at establishment)
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use ackgate_common::abi::{
    END_FIN, END_RST_CLIENT, END_RST_TARGET, EVENT_ENDED, EVENT_REFUSED, EVENT_SPLICED, FAMILY_IPV6, FlowKey,
    FlowOwner, GateEvent, HELD_PER_FLOW, HeldSegment, MAP_HELD, REFUSED_UNREACHABLE, RESPONSE_DROP, RESPONSE_RESET,
    SPLICE_CONNECTING, SPLICE_F_FIN, SPLICE_F_RST, SPLICE_F_TO_TARGET, SpliceAddr, SpliceEntry, SpliceKey,
    last_seen_ago_ns, port_field, port_value, socket_addr, v4_bytes, v4_words, v6_bytes, v6_words,
};
use ackgate_common::net::Wire as _;
use ackgate_common::net::{
    Frame as _, IpHeader, Ipv4Hdr, Ipv6Tcp, Parsed6, TCP_SYN, TcpHdr, TcpSegment, parse_ipv6_tcp,
};
use ackgate_common::option::OptionBytes;
use ackgate_common::reply::{TCP_CWR, TCP_ECE, handshake_options};
use ackgate_common::splice::{SpliceSetup, rescale_window, rewrite};
use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::gate::{Gate, GateError};

#[derive(Debug, Error)]
pub enum SpliceError {
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error("sending to the target {target}: {source}")]
    Send { target: SocketAddr, source: std::io::Error },
    #[error("raw socket for the splice: {0}")]
    Socket(std::io::Error),
    #[error("service {0}: source_nat needs an IPv4 address on the internal interface (IPv6 targets: not yet)")]
    NoSourceAddress(String),
    #[error("no free source-NAT port towards {0} (gateway.source_nat_ports is exhausted)")]
    NoSourcePort(SocketAddr),
    #[error("a flow from {client} cannot be spliced to the target {target}: their address families differ")]
    MixedFamilies { client: SocketAddr, target: SocketAddr },
}

/// Where an authorized flow goes, and how it is treated.
#[derive(Clone, Debug)]
pub struct Target {
    pub service: String,
    pub addr: SocketAddr,
    /// The service's default response (`RESPONSE_*`), for a target that
    /// refuses and for revocations.
    pub response: u8,
    pub idle_timeout: Duration,
    /// The target sees the gateway's internal address, not the client's.
    pub source_nat: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct SpliceSettings {
    /// The target's time to answer the SYN (sent again every second).
    pub connect_timeout: Duration,
    /// How long ended flows keep their entries, so the last ACK and late
    /// retransmissions still go through.
    pub linger: Duration,
    /// The internal interface's MTU (clamps the MSS offered to targets).
    pub internal_mtu: u32,
    /// The window scale the cookie SYN/ACK offers.
    pub gateway_wscale: u8,
    /// `source_nat` services: the internal interface's address and the
    /// ports it may use.
    pub source_nat: Option<(Ipv4Addr, [u16; 2])>,
}

/// How a spliced flow ended (the access log's `ended` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// FIN in both directions.
    Fin,
    RstClient,
    RstTarget,
    Idle,
    Revoked,
    /// The target answered the splice's SYN with a RST.
    TargetRefused,
    /// An ICMP error (unreachable, time exceeded) answered the splice's
    /// SYN.
    TargetUnreachable,
    /// The target did not answer the splice's SYN in time.
    TargetTimeout,
}

impl EndReason {
    pub fn label(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::RstClient => "rst_client",
            EndReason::RstTarget => "rst_target",
            EndReason::Idle => "idle",
            EndReason::Revoked => "revoked",
            EndReason::TargetRefused => "target_refused",
            EndReason::TargetUnreachable => "target_unreachable",
            EndReason::TargetTimeout => "target_timeout",
        }
    }

    /// Whether the client got the service's default response instead of
    /// the target.
    pub fn never_spliced(self) -> bool {
        matches!(self, EndReason::TargetRefused | EndReason::TargetUnreachable | EndReason::TargetTimeout)
    }
}

/// One direction's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    pub packets: u64,
    pub bytes: u64,
}

/// A flow the splicer ended, for the access log and metrics.
#[derive(Clone, Debug)]
pub struct Ended {
    pub client: FlowKey,
    pub target: SocketAddr,
    pub service: String,
    pub agent_id: u32,
    pub owner: FlowOwner,
    pub reason: EndReason,
    pub to_target: DirectionStats,
    pub to_client: DirectionStats,
    /// From the authorization to the end.
    pub duration: Duration,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct SpliceTotals {
    pub started: u64,
    pub spliced: u64,
    pub held_delivered: u64,
    /// Held segments dropped: their flow was denied or ended, or the held
    /// store was full (the client retransmits what mattered).
    pub held_dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting { attempts: u32, last_syn: Instant },
    Established,
    Ending { since: Instant, reason: EndReason },
}

struct Flow {
    client_key: EntryKey,
    target_key: EntryKey,
    target: Target,
    agent_id: u32,
    owner: FlowOwner,
    phase: Phase,
    started: Instant,
    /// When the idle check next looks at the flow.
    next_check: Instant,
    /// The SYN sent to the target (sent again while connecting).
    syn: Vec<u8>,
    /// The source-NAT port the flow holds, if any.
    nat_port: Option<u16>,
}

/// Source-NAT ports in use, per target: a port may serve flows to other
/// targets at once (their 4-tuples differ).
#[derive(Default)]
struct NatPorts {
    in_use: HashMap<SocketAddr, std::collections::BTreeSet<u16>>,
    /// Where the next search starts, so ports are not reused at once
    /// (a target may still hold the last flow in TIME_WAIT).
    next: u16,
}

impl NatPorts {
    fn take(&mut self, target: SocketAddr, [first, last]: [u16; 2]) -> Option<u16> {
        let used = self.in_use.entry(target).or_default();
        let span = u32::from(last - first) + 1;
        let start = u32::from(self.next.clamp(first, last) - first);
        let port = (0..span).map(|i| first + ((start + i) % span) as u16).find(|p| !used.contains(p))?;
        used.insert(port);
        self.next = if port == last { first } else { port + 1 };
        Some(port)
    }

    fn give_back(&mut self, target: SocketAddr, port: u16) {
        if let Some(used) = self.in_use.get_mut(&target) {
            used.remove(&port);
            if used.is_empty() {
                self.in_use.remove(&target);
            }
        }
    }
}

/// Held client segments of flows that wait, bounded per flow and overall.
#[derive(Default)]
struct HeldStore {
    by_flow: HashMap<FlowKey, Vec<Vec<u8>>>,
    bytes: usize,
}

/// Total bytes of held segments kept in memory.
const HELD_STORE_BYTES: usize = 16 << 20;

/// One direction's key, in its family's splice map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryKey {
    V4(SpliceKey<u32>),
    V6(SpliceKey<[u32; 4]>),
}

/// One direction's entry, its addresses as words whatever the family
/// (`SpliceEntry::with_addrs`).
type Entry = SpliceEntry<[u32; 4]>;

impl EntryKey {
    /// The key of `flow`'s own direction (its 4-tuple as it arrives).
    fn of_flow(flow: &FlowKey) -> Self {
        match SpliceKey::<u32>::of_flow(flow) {
            Some(key) => EntryKey::V4(key),
            None => {
                EntryKey::V6(SpliceKey { saddr: flow.saddr, daddr: flow.daddr, sport: flow.sport, dport: flow.dport })
            }
        }
    }

    fn get(&self, gate: &mut Gate) -> Result<Option<Entry>, GateError> {
        Ok(match self {
            EntryKey::V4(k) => gate.splice(k)?.map(|e| e.with_addrs()),
            EntryKey::V6(k) => gate.splice(k)?,
        })
    }

    fn remove(&self, gate: &mut Gate) -> Result<(), GateError> {
        match self {
            EntryKey::V4(k) => gate.remove_splice(k),
            EntryKey::V6(k) => gate.remove_splice(k),
        }
    }
}

/// Writes a flow's two connecting entries, target side first: once the
/// client side exists, client data is held for this flow. Returns the
/// client → target entry and both keys.
fn write_connecting<A: SpliceAddr>(
    gate: &mut Gate,
    setup: &SpliceSetup,
    key: fn(SpliceKey<A>) -> EntryKey,
) -> Result<(Entry, EntryKey, EntryKey), GateError>
where
    SpliceKey<A>: aya::Pod,
    SpliceEntry<A>: aya::Pod,
{
    let (to_target, to_client) = setup.connecting::<A>();
    let (client_key, target_key) = (setup.client_key::<A>(), setup.target_key::<A>());
    gate.set_splice(&target_key, &to_client)?;
    gate.set_splice(&client_key, &to_target)?;
    Ok((to_target.with_addrs(), key(client_key), key(target_key)))
}

pub struct Splicer {
    raw: Socket,
    /// For IPv6 targets; `None` where the kernel has no IPv6.
    raw6: Option<Socket>,
    settings: SpliceSettings,
    flows: HashMap<FlowKey, Flow>,
    nat: NatPorts,
    held: HeldStore,
    pub totals: SpliceTotals,
}

impl Splicer {
    pub fn new(settings: SpliceSettings) -> Result<Self, SpliceError> {
        // IPPROTO_RAW implies IP_HDRINCL: the kernel sends our IPv4 header
        // as is (the source is the client's address, not the gateway's).
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))
            .map_err(SpliceError::Socket)?;
        // IPPROTO_RAW implies IPV6_HDRINCL too (inet6_create in
        // net/ipv6/af_inet6.c).
        let raw6 = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).ok();
        Ok(Self {
            raw,
            raw6,
            settings,
            flows: HashMap::new(),
            nat: NatPorts::default(),
            held: HeldStore::default(),
            totals: SpliceTotals::default(),
        })
    }

    /// Spliced or connecting flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Starts the splice of an authorized flow: writes both directions'
    /// entries (connecting) and sends the target the client's SYN.
    pub fn start(
        &mut self,
        gate: &mut Gate,
        event: &GateEvent,
        target: &Target,
        owner: FlowOwner,
    ) -> Result<(), SpliceError> {
        let client = event.flow;
        let target_words = match target.addr.ip() {
            IpAddr::V4(ip) if client.family != FAMILY_IPV6 => v4_words(ip.octets()),
            IpAddr::V6(ip) if client.family == FAMILY_IPV6 => v6_words(ip.octets()),
            _ => return Err(SpliceError::MixedFamilies { client: client.client_addr(), target: target.addr }),
        };
        let (source_addr, source_port, nat_port) = if target.source_nat {
            let Some((addr, ports)) = self.settings.source_nat.filter(|_| target.addr.is_ipv4()) else {
                return Err(SpliceError::NoSourceAddress(target.service.clone()));
            };
            let port = self.nat.take(target.addr, ports).ok_or(SpliceError::NoSourcePort(target.addr))?;
            (v4_words(addr.octets()), port_field(port.to_be_bytes()), Some(port))
        } else {
            (client.saddr, client.sport, None)
        };
        let setup = SpliceSetup {
            client,
            source_addr,
            source_port,
            target_addr: target_words,
            target_port: port_field(target.addr.port().to_be_bytes()),
            client_isn: event.client_isn,
            cookie_isn: event.server_isn,
            handshake: event.handshake,
            gateway_wscale: self.settings.gateway_wscale,
            owner,
        };
        let (to_target, client_key, target_key) = match target.addr {
            SocketAddr::V4(_) => write_connecting::<u32>(gate, &setup, EntryKey::V4)?,
            SocketAddr::V6(_) => write_connecting::<[u32; 4]>(gate, &setup, EntryKey::V6)?,
        };
        let syn = self.syn(&setup, &to_target, client.family);
        let now = Instant::now();
        self.flows.insert(
            client,
            Flow {
                client_key,
                target_key,
                target: target.clone(),
                agent_id: event.agent_id,
                owner,
                phase: Phase::Connecting { attempts: 1, last_syn: now },
                started: now,
                next_check: now + target.idle_timeout,
                syn,
                nat_port,
            },
        );
        self.totals.started += 1;
        self.send(&self.flows[&client].syn, target.addr)
    }

    /// The splice's SYN: the client's ISN and SYN options, the MSS clamped
    /// to the internal link, the window of the client's handshake ACK.
    fn syn(&self, s: &SpliceSetup, to_target: &Entry, family: u8) -> Vec<u8> {
        let hs = &s.handshake;
        // The MSS the internal link's MTU leaves after IPv4's or IPv6's
        // header and TCP's.
        let headers = if family == FAMILY_IPV6 { 60 } else { 40 };
        let mss = hs.mss.min(self.settings.internal_mtu.saturating_sub(headers).min(u16::MAX as u32) as u16);
        let ts = (hs.ts_ok != 0).then_some((hs.client_tsval, 0));
        let (opts, n) = handshake_options(mss, hs.sack_ok != 0, ts, s.syn_wscale());
        let mut flags = TCP_SYN;
        if hs.ecn != 0 {
            flags |= TCP_ECE | TCP_CWR;
        }
        let tcp = TcpHdr {
            sport: to_target.sport.to_ne_bytes(),
            dport: to_target.dport.to_ne_bytes(),
            seq: s.client_isn.to_be_bytes(),
            ack: [0; 4],
            doff_res: (((20 + n) / 4) as u8) << 4,
            flags,
            // A SYN's window is never scaled.
            window: rescale_window(hs.window, to_target.wnd_shl, 0).to_be_bytes(),
            check: [0, 0],
            urg: [0, 0],
        };
        segment(family, &to_target.saddr, &to_target.daddr, &tcp, &opts[..n])
    }

    fn send(&self, packet: &[u8], target: SocketAddr) -> Result<(), SpliceError> {
        let sent = match target {
            SocketAddr::V4(t) => self.raw.send_to(packet, &SocketAddr::new((*t.ip()).into(), 0).into()),
            SocketAddr::V6(t) => match &self.raw6 {
                Some(raw6) => raw6.send_to(packet, &SocketAddrV6::new(*t.ip(), 0, 0, 0).into()),
                None => Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no IPv6 raw socket")),
            },
        };
        sent.map(drop).map_err(|source| SpliceError::Send { target, source })
    }

    /// A client segment XDP held while its flow waited.
    pub fn on_held(&mut self, gate: &mut Gate, flow: FlowKey, packet: Vec<u8>) {
        match self.flows.get(&flow).map(|f| f.phase) {
            Some(Phase::Established) => self.deliver(gate, &flow, vec![packet]),
            Some(Phase::Ending { .. }) => self.totals.held_dropped += 1,
            // Pending (not decided yet) or connecting: keep until spliced.
            Some(Phase::Connecting { .. }) | None => {
                let kept = self.held.by_flow.get(&flow).map_or(0, |v| v.iter().map(Vec::len).sum::<usize>());
                if kept + packet.len() > 2 * HELD_PER_FLOW as usize || self.held.bytes + packet.len() > HELD_STORE_BYTES
                {
                    self.totals.held_dropped += 1;
                    return;
                }
                self.held.bytes += packet.len();
                self.held.by_flow.entry(flow).or_default().push(packet);
            }
        }
    }

    /// Forgets what was held for a flow that will not be spliced.
    pub fn discard_held(&mut self, flow: &FlowKey) {
        if let Some(v) = self.held.by_flow.remove(flow) {
            self.held.bytes -= v.iter().map(Vec::len).sum::<usize>();
            self.totals.held_dropped += v.len() as u64;
        }
    }

    /// Rewrites held client segments like XDP rewrites spliced ones and
    /// sends them to the target.
    fn deliver(&mut self, gate: &mut Gate, flow: &FlowKey, packets: Vec<Vec<u8>>) {
        let entry = match EntryKey::of_flow(flow).get(gate) {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.totals.held_dropped += packets.len() as u64;
                return;
            }
            Err(e) => {
                tracing::warn!("reading a splice entry to deliver held data: {e}");
                return;
            }
        };
        let target = socket_addr(flow.family, &entry.daddr, entry.dport);
        for packet in packets {
            match rewrite_packet(&packet, flow.family, &entry) {
                Some(out) => match self.send(&out, target) {
                    Ok(()) => self.totals.held_delivered += 1,
                    Err(e) => {
                        tracing::warn!("{e}");
                        self.totals.held_dropped += 1;
                    }
                },
                None => self.totals.held_dropped += 1,
            }
        }
    }

    /// A splice event from XDP. Returns the flows it ended at once.
    pub fn on_event(&mut self, gate: &mut Gate, ev: &GateEvent) -> Vec<Ended> {
        let Some(flow) = self.flows.get_mut(&ev.flow) else { return Vec::new() };
        match ev.kind {
            EVENT_SPLICED if matches!(flow.phase, Phase::Connecting { .. }) => {
                flow.phase = Phase::Established;
                self.totals.spliced += 1;
                // The held-data flow map entry has served its purpose.
                if let Err(e) = gate.remove_flow(&ev.flow) {
                    tracing::warn!("removing a spliced flow's pending entry: {e}");
                }
                if let Some(held) = self.held.by_flow.remove(&ev.flow) {
                    self.held.bytes -= held.iter().map(Vec::len).sum::<usize>();
                    self.deliver(gate, &ev.flow, held);
                }
                Vec::new()
            }
            EVENT_REFUSED if matches!(flow.phase, Phase::Connecting { .. }) => {
                let reason = if ev.agent_id == REFUSED_UNREACHABLE {
                    EndReason::TargetUnreachable
                } else {
                    EndReason::TargetRefused
                };
                self.end(gate, &ev.flow, reason).into_iter().collect()
            }
            EVENT_ENDED => {
                let reason = match ev.agent_id {
                    END_RST_CLIENT => EndReason::RstClient,
                    END_RST_TARGET => EndReason::RstTarget,
                    END_FIN => EndReason::Fin,
                    _ => return Vec::new(),
                };
                if !matches!(flow.phase, Phase::Ending { .. }) {
                    flow.phase = Phase::Ending { since: Instant::now(), reason };
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Timers: the SYN sent again or given up, idle flows, ended flows
    /// whose linger is over. Returns the flows it ended.
    pub fn tick(&mut self, gate: &mut Gate, now: Instant) -> Vec<Ended> {
        let mut resend = Vec::new();
        let mut end = Vec::new();
        let mut check = Vec::new();
        let mut idle_ends = Vec::new();
        for (key, f) in &mut self.flows {
            match f.phase {
                Phase::Connecting { attempts, last_syn } => {
                    if now.duration_since(f.started) >= self.settings.connect_timeout {
                        end.push((*key, EndReason::TargetTimeout));
                    } else if now.duration_since(last_syn) >= Duration::from_secs(1) {
                        f.phase = Phase::Connecting { attempts: attempts + 1, last_syn: now };
                        resend.push((f.syn.clone(), f.target.addr));
                    }
                }
                Phase::Ending { since, reason } if now.duration_since(since) >= self.settings.linger => {
                    end.push((*key, reason));
                }
                Phase::Established if now >= f.next_check => check.push(*key),
                _ => {}
            }
        }
        for (syn, target) in resend {
            if let Err(e) = self.send(&syn, target) {
                tracing::warn!("{e}");
            }
        }
        for key in check {
            match self.activity(gate, &key) {
                Ok(Activity::Ended(reason)) => {
                    if let Some(f) = self.flows.get_mut(&key) {
                        f.phase = Phase::Ending { since: now, reason };
                    }
                }
                Ok(Activity::LastSeen(idle)) => {
                    let Some(f) = self.flows.get_mut(&key) else { continue };
                    if idle >= f.target.idle_timeout {
                        idle_ends.push(key);
                    } else {
                        f.next_check = now + (f.target.idle_timeout - idle);
                    }
                }
                Err(e) => tracing::warn!("reading a spliced flow's entries: {e}"),
            }
        }
        // Idle flows: both ends are told (unless the service is silent),
        // so neither waits on a connection the gateway forgot.
        for key in idle_ends {
            self.reset_if_not_silent(gate, &key);
            end.push((key, EndReason::Idle));
        }
        end.into_iter().filter_map(|(key, reason)| self.end(gate, &key, reason)).collect()
    }

    /// RSTs to both ends of a live flow, unless its service's default
    /// response is silence.
    fn reset_if_not_silent(&self, gate: &mut Gate, key: &FlowKey) {
        let Some(f) = self.flows.get(key) else { return };
        if f.target.response == RESPONSE_DROP {
            return;
        }
        if let (Ok(Some(ct)), Ok(Some(tc))) = (f.client_key.get(gate), f.target_key.get(gate)) {
            self.reset_both(key, &ct, &tc);
        }
    }

    /// What the map says of an established flow: ended (both FINs or a
    /// RST, when XDP's event was lost) or how long it has been idle.
    fn activity(&mut self, gate: &mut Gate, key: &FlowKey) -> Result<Activity, GateError> {
        let (client_key, target_key) = match self.flows.get(key) {
            Some(f) => (f.client_key, f.target_key),
            None => return Ok(Activity::LastSeen(Duration::ZERO)),
        };
        let (Some(ct), Some(tc)) = (client_key.get(gate)?, target_key.get(gate)?) else {
            return Ok(Activity::Ended(EndReason::Idle));
        };
        if ct.flags & SPLICE_F_RST != 0 {
            return Ok(Activity::Ended(EndReason::RstClient));
        }
        if tc.flags & SPLICE_F_RST != 0 {
            return Ok(Activity::Ended(EndReason::RstTarget));
        }
        if ct.flags & tc.flags & SPLICE_F_FIN != 0 {
            return Ok(Activity::Ended(EndReason::Fin));
        }
        let ago = last_seen_ago_ns(ackgate_common::host::monotonic_ns(), ct.last_seen, tc.last_seen);
        Ok(Activity::LastSeen(Duration::from_nanos(ago)))
    }

    /// Ends a flow: removes both entries, and for a target that refused,
    /// gives the client the service's default response.
    fn end(&mut self, gate: &mut Gate, key: &FlowKey, reason: EndReason) -> Option<Ended> {
        let f = self.flows.remove(key)?;
        if let Some(port) = f.nat_port {
            self.nat.give_back(f.target.addr, port);
        }
        let ct = f.client_key.get(gate).ok().flatten().unwrap_or_default();
        let tc = f.target_key.get(gate).ok().flatten().unwrap_or_default();
        for k in [&f.client_key, &f.target_key] {
            if let Err(e) = k.remove(gate) {
                tracing::warn!("removing a splice entry: {e}");
            }
        }
        if reason.never_spliced() {
            self.discard_held(key);
            // Further client segments meet the flow map's denied entry: the
            // default response. An idle client (a server-speaks-first
            // protocol) gets the reset now.
            if let Err(e) = gate.deny_flow(key) {
                tracing::warn!("marking a refused flow denied: {e}");
            }
            if f.target.response == RESPONSE_RESET {
                let (client, service) = (key.client_addr(), key.service_addr());
                // Still connecting: the target side's `seq_shift` holds
                // the cookie ISN (see `SpliceEntry`).
                let cookie_isn = tc.seq_shift;
                if let Err(e) = crate::rst::reset_client(client, service, cookie_isn) {
                    tracing::warn!(%client, "resetting the client of a refused splice: {e}");
                }
            }
        }
        // While connecting, `bytes` of the client side counted held bytes.
        let to_target = if reason.never_spliced() {
            DirectionStats::default()
        } else {
            DirectionStats { packets: ct.packets.into(), bytes: ct.bytes }
        };
        Some(Ended {
            client: *key,
            target: f.target.addr,
            service: f.target.service,
            agent_id: f.agent_id,
            owner: f.owner,
            reason,
            to_target,
            to_client: DirectionStats { packets: tc.packets.into(), bytes: tc.bytes },
            duration: f.started.elapsed(),
        })
    }

    /// Ends the live flows `revoked` selects by owner and agent id (0 for a
    /// flow resumed from a previous run: the splice map does not keep it): a
    /// RST to both sides unless the service's policy is silence.
    pub fn end_matching(&mut self, gate: &mut Gate, revoked: impl Fn(&FlowOwner, u32) -> bool) -> Vec<Ended> {
        let keys: Vec<FlowKey> =
            self.flows.iter().filter(|(_, f)| revoked(&f.owner, f.agent_id)).map(|(k, _)| *k).collect();
        let mut out = Vec::new();
        for key in keys {
            self.reset_if_not_silent(gate, &key);
            out.extend(self.end(gate, &key, EndReason::Revoked));
        }
        out
    }

    /// RSTs that end both sides. Each end gets two: one with the ACK number
    /// it last sent (its next expected sequence number, exact unless data
    /// arrived since: accepted at once, RFC 5961 §3.2, even with a full
    /// receive window), and one with the other side's highest sequence
    /// number sent (in its window when data is in flight: it answers with a
    /// challenge ACK, which, the flow being gone, gets the gate's reset).
    fn reset_both(&self, client: &FlowKey, ct: &Entry, tc: &Entry) {
        let service = client.service_addr();
        for seq in [ct.aux, tc.seq_next.wrapping_add(tc.seq_add())] {
            if let Err(e) = crate::rst::reset(service, client.client_addr(), seq) {
                tracing::warn!("resetting a flow's client: {e}");
            }
        }
        let source = socket_addr(client.family, &ct.saddr, ct.sport);
        let target = socket_addr(client.family, &ct.daddr, ct.dport);
        for seq in [tc.aux, ct.seq_next.wrapping_add(ct.seq_add())] {
            if let Err(e) = crate::rst::reset(source, target, seq) {
                tracing::warn!("resetting a flow's target: {e}");
            }
        }
    }

    /// Picks up the spliced flows a previous run left in the pinned map
    /// (the data path never stopped). Flows caught connecting are ended:
    /// their SYN's fate is unknown.
    pub fn resume(&mut self, gate: &mut Gate, target_of: impl Fn(&FlowKey) -> Option<Target>) {
        self.resume_family::<u32>(gate, &target_of, EntryKey::V4);
        self.resume_family::<[u32; 4]>(gate, &target_of, EntryKey::V6);
    }

    /// [`Self::resume`] over one family's splice map.
    fn resume_family<A: SpliceAddr>(
        &mut self,
        gate: &mut Gate,
        target_of: &impl Fn(&FlowKey) -> Option<Target>,
        entry_key: fn(SpliceKey<A>) -> EntryKey,
    ) where
        SpliceKey<A>: aya::Pod,
        SpliceEntry<A>: aya::Pod,
    {
        let entries = match gate.splices::<A>() {
            Ok(e) => e,
            Err(e) => return tracing::warn!("reading the splice map: {e}"),
        };
        let now = Instant::now();
        let mut stale = Vec::new();
        let by_key: HashMap<SpliceKey<A>, SpliceEntry<A>> = entries.iter().copied().collect();
        for (key, e) in entries.iter().filter(|(_, e)| e.flags & SPLICE_F_TO_TARGET != 0) {
            let target_key = e.peer_key();
            let client = key.flow();
            let Some(target) = target_of(&client) else {
                // Its service is gone: end it.
                stale.push((*key, target_key));
                continue;
            };
            // The owner's tags are split across the two entries.
            let machine_tag = by_key.get(&target_key).map_or(0, |tc| tc.owner_tag);
            let owner = FlowOwner { user_tag: e.owner_tag, machine_tag };
            let connecting = e.state == SPLICE_CONNECTING;
            let nat_port = self
                .settings
                .source_nat
                .filter(|(addr, _)| e.saddr.words() == v4_words(addr.octets()) && A::FAMILY != FAMILY_IPV6)
                .map(|_| port_value(e.sport));
            if let Some(port) = nat_port {
                self.nat.in_use.entry(target.addr).or_default().insert(port);
            }
            self.flows.insert(
                client,
                Flow {
                    client_key: entry_key(*key),
                    target_key: entry_key(target_key),
                    target,
                    agent_id: 0,
                    owner,
                    phase: if connecting {
                        Phase::Ending { since: now, reason: EndReason::TargetTimeout }
                    } else {
                        Phase::Established
                    },
                    started: now,
                    next_check: now,
                    syn: Vec::new(),
                    nat_port,
                },
            );
        }
        for (key, target_key) in stale {
            for k in [key, target_key] {
                if let Err(e) = gate.remove_splice(&k) {
                    tracing::warn!("removing a splice entry of a service that is gone: {e}");
                }
            }
        }
    }

    /// The owners of the live flows (revocation checks at start).
    pub fn owners(&self) -> Vec<FlowOwner> {
        self.flows.values().map(|f| f.owner).collect()
    }

    /// Flows whose target handshake is under way (`ackgate status`).
    pub fn connecting(&self) -> usize {
        self.flows.values().filter(|f| matches!(f.phase, Phase::Connecting { .. })).count()
    }
}

enum Activity {
    Ended(EndReason),
    LastSeen(Duration),
}

/// Builds a TCP segment of `family` from `saddr` to `daddr` (map words)
/// with correct checksums, its IP header as Linux puts it on the host's
/// own segments.
fn segment(family: u8, saddr: &[u32; 4], daddr: &[u32; 4], tcp: &TcpHdr, opts: &[u8]) -> Vec<u8> {
    let tcp_len = 20 + opts.len();
    let (mut out, pseudo) = if family == FAMILY_IPV6 {
        let ip = ackgate_common::reply::tcp_ipv6_header(v6_bytes(saddr), v6_bytes(daddr), tcp_len, 0, 0);
        (ip.as_bytes().to_vec(), ip.tcp_pseudo_sum(tcp_len as u16))
    } else {
        let ip = ackgate_common::reply::tcp_ipv4_header(v4_bytes(saddr), v4_bytes(daddr), tcp_len);
        (ip.as_bytes().to_vec(), ip.tcp_pseudo_sum(tcp_len as u16))
    };
    let l4 = out.len();
    out.extend_from_slice(tcp.as_bytes());
    out.extend_from_slice(opts);
    let mut acc = pseudo;
    for c in out[l4..].chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    let sum = ackgate_common::csum::finish(acc);
    out[l4 + 16..l4 + 18].copy_from_slice(&sum);
    out
}

/// A held packet of `family` (from its IP header) rewritten for the
/// client → target entry `e`, or `None` if it does not parse (XDP copied
/// it whole, so only a bug or a packet of another build gets here).
pub fn rewrite_packet(packet: &[u8], family: u8, e: &Entry) -> Option<Vec<u8>> {
    if family == FAMILY_IPV6 {
        let mut seg =
            Ipv6Tcp { l3_off: 0, ip: packet.load(0)?, l4_off: 0, tcp: packet.load(0)?, tcp_len: 0, payload_len: 0 };
        if parse_ipv6_tcp(packet, 0, &mut seg) != Parsed6::Tcp || seg.packet_len() != packet.len() {
            return None;
        }
        return rewrite_segment(packet, &seg, e);
    }
    let ip = packet.load::<Ipv4Hdr>(0)?;
    let ihl = ip.header_len();
    let tcp = packet.load::<TcpHdr>(ihl)?;
    let tcp_len = tcp.header_len();
    if ihl < 20 || tcp_len < 20 || packet.len() < ihl + tcp_len || ip.total_len() != packet.len() {
        return None;
    }
    let seg = TcpSegment { l3_off: 0, ip, l4_off: ihl, tcp, tcp_len, payload_len: packet.len() - ihl - tcp_len };
    rewrite_segment(packet, &seg, &e.with_addrs())
}

/// [`rewrite_packet`] for a parsed segment of either family: the fixed IP
/// header, TCP header and options rewritten in a copy.
fn rewrite_segment<I: IpHeader + ackgate_common::splice::SpliceHeader>(
    packet: &[u8],
    seg: &TcpSegment<I>,
    e: &SpliceEntry<I::EntryAddr>,
) -> Option<Vec<u8>> {
    let (mut ip, mut tcp) = (seg.ip, seg.tcp);
    let mut opts = OptionBytes::from_slice(packet.get(seg.options_off()..seg.l4_off + seg.tcp_len)?)?;
    let opts_changed = rewrite(&mut ip, &mut tcp, &mut opts, e, false);
    let mut out = packet.to_vec();
    let ip_len = core::mem::size_of::<I>();
    out[..ip_len].copy_from_slice(ip.as_bytes());
    out[seg.l4_off..seg.l4_off + 20].copy_from_slice(tcp.as_bytes());
    if opts_changed {
        out[seg.options_off()..seg.l4_off + seg.tcp_len].copy_from_slice(&opts.bytes()[..seg.options_len()]);
    }
    Some(out)
}

/// Held segments from the ring XDP fills.
pub struct HeldRing {
    ring: RingBuf<MapData>,
    malformed: u64,
}

impl HeldRing {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, aya::maps::MapError> {
        let map = ebpf.take_map(MAP_HELD).ok_or(aya::maps::MapError::InvalidName { name: MAP_HELD.into() })?;
        Ok(Self { ring: RingBuf::try_from(map)?, malformed: 0 })
    }

    /// Every queued segment: (client flow, IPv4 packet).
    pub fn drain(&mut self) -> Vec<(FlowKey, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            let header = std::mem::offset_of!(HeldSegment, packet);
            if item.len() != std::mem::size_of::<HeldSegment>() {
                self.malformed += 1;
                continue;
            }
            // SAFETY: length checked; FlowKey and u32 are plain integers.
            let (flow, len) = unsafe {
                let p = item.as_ptr().cast::<HeldSegment>();
                (
                    std::ptr::read_unaligned(std::ptr::addr_of!((*p).flow)),
                    std::ptr::read_unaligned(std::ptr::addr_of!((*p).len)) as usize,
                )
            };
            match item.get(header..header + len) {
                Some(packet) => out.push((flow, packet.to_vec())),
                None => self.malformed += 1,
            }
        }
        out
    }

    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

impl std::os::fd::AsRawFd for HeldRing {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports are handed out round robin within the range, never twice
    /// towards one target, and independently per target.
    #[test]
    fn source_nat_ports_do_not_collide() {
        let mut nat = NatPorts::default();
        let (a, b) = ("10.1.0.2:443".parse().expect("addr"), "10.1.0.3:443".parse().expect("addr"));
        let range = [100, 102];
        assert_eq!(nat.take(a, range), Some(100));
        assert_eq!(nat.take(b, range), Some(101), "round robin over all targets");
        assert_eq!(nat.take(a, range), Some(102));
        assert_eq!(nat.take(a, range), Some(101), "wraps around, skips the port in use");
        assert_eq!(nat.take(a, range), None, "range exhausted towards a");
        assert_eq!(nat.take(b, range), Some(102), "b still has ports");
        nat.give_back(a, 101);
        assert_eq!(nat.take(a, range), Some(101), "a port given back is free again");
    }
}
