//! The gate fuzzer's oracle: what a frame is, read by etherparse (never by
//! `ackgate_common::net`, the parser under test), what it may earn, and
//! whether what the gate did with it is allowed.

use std::collections::{HashMap, HashSet};

use ackgate_common::abi::{EVENT_PENDING, EVENT_REFUSED, FlowKey, GateEvent, SpliceKey, port_field};
use ackgate_common::mac::{Binding, DOMAIN_ACK, DOMAIN_SYN, MacKey};
use ackgate_common::net::{TCP_ACK, TCP_RST, TCP_SYN};
use ackgate_common::option::{CAPABILITY_LEN, CAPABILITY_VERSION, OptionId};
use ackgate_common::reason as r;
use etherparse::{Ipv4HeaderSlice, NetSlice, SlicedPacket, TransportSlice};

use crate::packet::check_checksums;
use crate::table::{Program, XDP_DROP, XDP_PASS, XDP_TX};

/// An unfragmented TCP segment as etherparse reads it.
#[derive(Clone, Debug)]
pub struct Seg {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The option bytes, as far as the data offset says.
    pub options: Vec<u8>,
}

impl Seg {
    pub fn flow(&self) -> FlowKey {
        FlowKey::ipv4(self.saddr, self.daddr, self.sport.to_be_bytes(), self.dport.to_be_bytes())
    }

    pub fn splice_key(&self) -> SpliceKey {
        splice_key(self.saddr, self.daddr, self.sport, self.dport)
    }
}

fn splice_key(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16) -> SpliceKey {
    SpliceKey {
        saddr: u32::from_ne_bytes(saddr),
        daddr: u32::from_ne_bytes(daddr),
        sport: port_field(sport.to_be_bytes()),
        dport: port_field(dport.to_be_bytes()),
    }
}

/// A frame as etherparse reads it; empty where it does not parse.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// VLAN (or other link extension) headers before the network header.
    pub tags: usize,
    /// Source and destination of an IPv4 header.
    pub ip: Option<([u8; 4], [u8; 4])>,
    pub seg: Option<Seg>,
    /// An ICMP error's quote, reversed: the splice key of the direction
    /// that would carry the error (`icmp::on_ipv4`'s reply entry).
    pub quote_reply: Option<SpliceKey>,
}

impl Seen {
    pub fn of(frame: &[u8]) -> Self {
        let Ok(p) = SlicedPacket::from_ethernet(frame) else { return Self::default() };
        let mut seen = Seen { tags: p.link_exts.len(), ..Self::default() };
        let Some(NetSlice::Ipv4(ip)) = &p.net else { return seen };
        let h = ip.header();
        seen.ip = Some((h.source(), h.destination()));
        match &p.transport {
            Some(TransportSlice::Tcp(t)) => {
                seen.seg = Some(Seg {
                    saddr: h.source(),
                    daddr: h.destination(),
                    sport: t.source_port(),
                    dport: t.destination_port(),
                    seq: t.sequence_number(),
                    ack: t.acknowledgment_number(),
                    flags: t.header_slice()[13],
                    options: t.options().to_vec(),
                });
            }
            Some(TransportSlice::Icmpv4(icmp)) => seen.quote_reply = quote_reply(icmp.payload()),
            _ => {}
        }
        seen
    }
}

/// The reversed 4-tuple of the TCP segment an ICMP error quotes.
fn quote_reply(quote: &[u8]) -> Option<SpliceKey> {
    let inner = Ipv4HeaderSlice::from_slice(quote).ok()?;
    if inner.protocol() != etherparse::IpNumber::TCP || inner.fragments_offset().value() != 0 {
        return None;
    }
    let ports = quote.get(inner.slice().len()..inner.slice().len() + 4)?;
    let (sport, dport) = (u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]));
    Some(splice_key(inner.destination(), inner.source(), dport, sport))
}

/// What the gate holds: services, keys, splices, accepted flows.
pub struct Known {
    pub option: OptionId,
    /// (VIP, port) → stealth.
    pub services: HashMap<([u8; 4], u16), bool>,
    /// The agents whose keys the gate holds.
    pub keys: Vec<(u32, MacKey)>,
    /// Splice keys → whether the entry carries segments to the target.
    pub splices: HashMap<SpliceKey, bool>,
    /// Flows whose stamped handshake the gate legitimately holds.
    pub flows: HashSet<FlowKey>,
}

/// A handshake ACK's valid stamp: what its pending record must say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub flow: FlowKey,
    pub agent_id: u32,
    pub client_isn: u32,
    pub server_isn: u32,
}

/// What a frame may earn.
#[derive(Clone, Copy, Debug, Default)]
pub struct Authority {
    /// A handshake ACK (untagged, to a service, ACK without SYN or RST)
    /// with a capability whose MAC verifies, under a key the gate holds,
    /// for this ACK's own 4-tuple and ISNs.
    pub ack: Option<Stamp>,
    /// A SYN to a stealth service with a capability whose MAC verifies
    /// for its 4-tuple and ISN at a recent tick.
    pub stealth_syn: bool,
}

impl Authority {
    /// `tick`: the coarse TAI tick now; the gate took its own a moment
    /// before and accepts that one and the one before it.
    pub fn of(seen: &Seen, known: &Known, tick: u32) -> Self {
        let Some(seg) = seen.seg.as_ref().filter(|_| seen.tags == 0) else { return Self::default() };
        let Some(&stealth) = known.services.get(&(seg.daddr, seg.dport)) else { return Self::default() };
        let mut a = Self::default();
        if seg.flags & (TCP_ACK | TCP_SYN | TCP_RST) == TCP_ACK {
            let (client_isn, server_isn) = (seg.seq.wrapping_sub(1), seg.ack.wrapping_sub(1));
            a.ack = stamped(seg, known, DOMAIN_ACK, &[server_isn]).map(|agent_id| Stamp {
                flow: seg.flow(),
                agent_id,
                client_isn,
                server_isn,
            });
        }
        if stealth && seg.flags & TCP_SYN != 0 {
            let ticks = [tick, tick.wrapping_sub(1), tick.wrapping_sub(2)];
            a.stealth_syn = stamped(seg, known, DOMAIN_SYN, &ticks).is_some();
        }
        a
    }
}

/// The agent whose capability on `seg` carries a MAC that verifies for it
/// with one of `seconds`. Any well-formed capability anywhere in the
/// options counts: option-list syntax is the scanner's tests' business
/// (common/src/option.rs); what must hold here is that nothing passes
/// without the MAC, which only the key's holders can make.
fn stamped(seg: &Seg, known: &Known, domain: u8, seconds: &[u32]) -> Option<u32> {
    let o = &seg.options;
    (0..o.len().saturating_sub(CAPABILITY_LEN - 1)).find_map(|i| {
        let c = &o[i..i + CAPABILITY_LEN];
        let head = c[0] == known.option.kind && usize::from(c[1]) == CAPABILITY_LEN;
        if !head || c[2..4] != known.option.exid.to_be_bytes() || c[4] != CAPABILITY_VERSION || c[5..8] != [0; 3] {
            return None;
        }
        let agent_id = u32::from_be_bytes([c[8], c[9], c[10], c[11]]);
        let mac = u64::from_be_bytes([c[12], c[13], c[14], c[15], c[16], c[17], c[18], c[19]]);
        let (_, key) = known.keys.iter().find(|(id, _)| *id == agent_id)?;
        let client_isn = if domain == DOMAIN_ACK { seg.seq.wrapping_sub(1) } else { seg.seq };
        seconds
            .iter()
            .any(|&second| {
                let b = Binding {
                    saddr: seg.saddr,
                    daddr: seg.daddr,
                    sport: seg.sport.to_be_bytes(),
                    dport: seg.dport.to_be_bytes(),
                    client_isn,
                    second,
                    agent_id,
                    domain,
                    exid: known.option.exid,
                };
                b.mac(key) == mac
            })
            .then_some(agent_id)
    })
}

/// One test run of one frame, as the runner saw it.
pub struct Outcome<'a> {
    pub program: Program,
    pub input: &'a [u8],
    pub action: u32,
    pub out: &'a [u8],
    /// Reason counters that moved, and by how much.
    pub moved: &'a [(u32, u64)],
    pub events: &'a [GateEvent],
    pub held: &'a [(FlowKey, Vec<u8>)],
}

impl Outcome<'_> {
    /// The one reason the run counted, if it counted exactly one.
    pub fn reason(&self) -> Option<u32> {
        match self.moved {
            [(reason, 1)] => Some(*reason),
            _ => None,
        }
    }
}

/// Reasons whose segment goes on towards the other side of the splice
/// (now, or from the held ring once the splice is up).
fn reaches_other_side(reason: u32) -> bool {
    matches!(
        reason,
        r::SPLICE_REDIRECT
            | r::SPLICE_KERNEL
            | r::SPLICE_HOLD
            | r::PENDING_HOLD
            | r::AUTHORIZED_HOLD
            | r::ICMP_TRANSLATED
            | r::ICMP_TRANSLATED_KERNEL
            | r::PASS_TRANSIT
            | r::INTERNAL_SPLICED
    )
}

/// Everything wrong with `o`, given what the frame is and may earn.
pub fn judge(o: &Outcome<'_>, seen: &Seen, authority: &Authority, known: &Known) -> Vec<String> {
    let mut bad = Vec::new();
    let Some(reason) = o.reason() else {
        bad.push(format!("counters moved {:?}: every run must count exactly one reason once", o.moved));
        return bad;
    };
    let label = r::LABELS.get(reason as usize).copied().unwrap_or("?");
    if !matches!(o.action, XDP_DROP | XDP_PASS | XDP_TX) {
        bad.push(format!("action {} ({label}): nothing is routed or redirectable in this namespace", o.action));
    }
    let edge = o.program == Program::Edge;
    let untagged_seg = seen.seg.as_ref().filter(|_| seen.tags == 0 || !edge);

    // Pending: only a valid stamp for this very handshake, announced once.
    let pending: Vec<&GateEvent> = o.events.iter().filter(|e| e.kind == EVENT_PENDING).collect();
    // A new flow, or a new handshake on the 4-tuple of one the gate holds.
    let recorded = reason == r::ACK_PENDING || reason == r::ACK_PENDING_REPLACED;
    if recorded || !pending.is_empty() {
        match authority.ack {
            None => {
                bad.push(format!("{label} with {} pending event(s) from a frame without a valid MAC", pending.len()))
            }
            Some(s) => {
                let matches = |e: &&GateEvent| {
                    (e.flow, e.agent_id, e.client_isn, e.server_isn) == (s.flow, s.agent_id, s.client_isn, s.server_isn)
                };
                if !recorded || pending.len() != 1 || !pending.iter().all(matches) {
                    bad.push(format!("{label}: pending events {pending:?} do not record the stamp {s:?} once"));
                }
            }
        }
    }
    // The target's answers (its SYN/ACK, its refusal) come from its side.
    let target_side = matches!(
        reason,
        r::INTERNAL_SPLICED | r::INTERNAL_SYNACK_MISMATCH | r::INTERNAL_TARGET_REFUSED | r::INTERNAL_TARGET_UNREACHABLE
    ) || o.events.iter().any(|e| e.kind == EVENT_REFUSED);
    if edge && target_side {
        bad.push(format!("{label}: a frame from the edge counted as the target's answer"));
    }
    for e in o.events.iter().filter(|e| e.kind != EVENT_PENDING) {
        let spliced = SpliceKey::of_flow(&e.flow).is_some_and(|k| known.splices.contains_key(&k));
        if !spliced {
            bad.push(format!("{label}: event {} about {:?}, which is not a spliced flow", e.kind, e.flow));
        }
    }

    // The other side: spliced flows by their 4-tuple, held flows only if
    // their handshake was stamped.
    if reaches_other_side(reason) {
        let allowed = match reason {
            r::ICMP_TRANSLATED | r::ICMP_TRANSLATED_KERNEL => {
                (seen.tags == 0 || !edge)
                    && seen
                        .quote_reply
                        .is_some_and(|k| known.splices.get(&k).is_some_and(|&to_target| to_target == edge))
            }
            r::PENDING_HOLD | r::AUTHORIZED_HOLD => {
                edge && untagged_seg.is_some_and(|s| known.flows.contains(&s.flow()))
            }
            r::PASS_TRANSIT => false,
            _ => untagged_seg
                .is_some_and(|s| known.splices.get(&s.splice_key()).is_some_and(|&to_target| to_target == edge)),
        };
        if !allowed {
            bad.push(format!("{label}: a frame that is no spliced or stamped flow's reaches the other side"));
        }
    }
    for (flow, _) in o.held {
        let own = untagged_seg.is_some_and(|s| s.flow() == *flow);
        let holding = matches!(reason, r::PENDING_HOLD | r::AUTHORIZED_HOLD | r::SPLICE_HOLD);
        let legit = known.flows.contains(flow)
            || SpliceKey::of_flow(flow).is_some_and(|k| known.splices.get(&k) == Some(&true));
        if !(own && holding && legit) {
            bad.push(format!("{label}: held a copy for {flow:?}, which this frame may not feed"));
        }
    }

    // Stealth: a cookie only for a stamped SYN.
    if reason == r::SYN_COOKIE && edge {
        let stealth = untagged_seg.and_then(|s| known.services.get(&(s.daddr, s.dport))).copied().unwrap_or(false);
        if stealth && !authority.stealth_syn {
            bad.push(format!("{label}: a stealth service answered a SYN without a valid stamp"));
        }
    }

    // What leaves: a reply goes back to the sender, from the address it
    // asked, with sound checksums; a pass is the frame as it came, unless
    // it is a rewritten spliced segment.
    if o.action == XDP_TX {
        let answered = Seen::of(o.out);
        let back = match (seen.ip, answered.ip) {
            (Some((s, d)), Some((rs, rd))) => (rs, rd) == (d, s),
            _ => false,
        };
        if !back {
            bad.push(format!(
                "{label}: a reply that does not go back to the sender ({:?} → {:?})",
                seen.ip, answered.ip
            ));
        }
        if edge && untagged_seg.is_none_or(|s| !known.services.contains_key(&(s.daddr, s.dport))) {
            bad.push(format!("{label}: answered a frame that is not for a protected service"));
        }
        if answered.seg.is_some()
            && let Err(e) = check_checksums(o.out, 14 + 4 * answered.tags)
        {
            bad.push(format!("{label}: reply with a bad checksum: {e}"));
        }
    }
    let rewrites = matches!(reason, r::SPLICE_KERNEL | r::ICMP_TRANSLATED_KERNEL);
    if o.action == XDP_PASS && !rewrites && o.out != o.input {
        bad.push(format!("{label}: passed, but not as it came"));
    }
    bad
}
