//! Structure-aware mutations of gate frames: a seed is a frame under
//! construction (fields, a list of TCP options, capabilities whose MAC is
//! made when the frame is built); mutations bend its fields and options,
//! then, on the bytes, its header lengths, tags and checksums.

use ackgate_common::mac::{Binding, DOMAIN_ACK, DOMAIN_SYN, MacKey};
use ackgate_common::net::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP};
use ackgate_common::option::{CAPABILITY_LEN, CAPABILITY_VERSION, OptionId};
use ackgate_common::reply::{TCP_CWR, TCP_ECE};
use etherparse::checksum::Sum16BitWords;
use rand::Rng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand_chacha::ChaCha8Rng;

use crate::packet::{IcmpFrame, TcpFrame, checksum};

/// Which MAC a capability carries.
#[derive(Clone, Copy, Debug)]
pub enum Domain {
    /// A handshake ACK's: both ISNs from the ACK's own numbers.
    Ack,
    /// A stealth SYN's, at this coarse TAI tick.
    Syn(u32),
}

/// One TCP option as the mutations see it.
#[derive(Clone, Debug)]
pub enum Opt {
    Bytes(Vec<u8>),
    /// A capability whose MAC is made when the frame is built, over the
    /// frame's final fields: whatever else a mutation changed, this MAC is
    /// the one the agent holding `key` would write.
    Cap {
        agent: u32,
        key: MacKey,
        domain: Domain,
    },
}

/// A TCP frame under construction: `tcp.tcp_options` is made from `opts`.
#[derive(Clone, Debug)]
pub struct Draft {
    pub tcp: TcpFrame,
    pub opts: Vec<Opt>,
}

#[derive(Clone, Debug)]
pub enum Body {
    Tcp(Draft),
    Icmp(IcmpFrame),
}

/// What the mutations may draw from: addresses, ports and agents the gate
/// knows, so that a bent field often lands on something meaningful.
pub struct Palette {
    pub option: OptionId,
    pub addrs: Vec<[u8; 4]>,
    pub ports: Vec<u16>,
    /// Agents and keys: the gate's own, and ones it does not hold.
    pub agents: Vec<(u32, MacKey)>,
}

impl Opt {
    fn bytes(&self, tcp: &TcpFrame, option: OptionId) -> Vec<u8> {
        match self {
            Opt::Bytes(b) => b.clone(),
            Opt::Cap { agent, key, domain } => capability(tcp, option, *agent, key, *domain),
        }
    }
}

/// The capability option the agent holding `key` writes on `tcp`.
pub fn capability(tcp: &TcpFrame, option: OptionId, agent: u32, key: &MacKey, domain: Domain) -> Vec<u8> {
    let (client_isn, second, domain) = match domain {
        Domain::Ack => (tcp.seq.wrapping_sub(1), tcp.ack.wrapping_sub(1), DOMAIN_ACK),
        Domain::Syn(tick) => (tcp.seq, tick, DOMAIN_SYN),
    };
    let mac = Binding {
        saddr: tcp.saddr,
        daddr: tcp.daddr,
        sport: tcp.sport.to_be_bytes(),
        dport: tcp.dport.to_be_bytes(),
        client_isn,
        second,
        agent_id: agent,
        domain,
        exid: option.exid,
    }
    .mac(key);
    let mut o = vec![option.kind, CAPABILITY_LEN as u8];
    o.extend_from_slice(&option.exid.to_be_bytes());
    o.extend_from_slice(&[CAPABILITY_VERSION, 0, 0, 0]);
    o.extend_from_slice(&agent.to_be_bytes());
    o.extend_from_slice(&mac.to_be_bytes());
    o
}

impl Draft {
    pub fn new(tcp: TcpFrame, opts: Vec<Opt>) -> Self {
        Self { tcp, opts }
    }

    /// The options as `TcpFrame::build` wants them: padded with NOPs to a
    /// multiple of four, cut at 40 bytes (a cut may split an option: one
    /// more way to be malformed).
    pub fn build(&self, option: OptionId) -> Vec<u8> {
        let mut opts: Vec<u8> = self.opts.iter().flat_map(|o| o.bytes(&self.tcp, option)).collect();
        opts.truncate(40);
        while !opts.len().is_multiple_of(4) {
            opts.push(1);
        }
        let mut tcp = self.tcp.clone();
        tcp.tcp_options = opts;
        tcp.build()
    }
}

impl Body {
    pub fn build(&self, option: OptionId) -> Vec<u8> {
        match self {
            Body::Tcp(d) => d.build(option),
            Body::Icmp(i) => i.build(),
        }
    }
}

/// One to four structural mutations of `body`.
pub fn structural(body: &mut Body, rng: &mut ChaCha8Rng, p: &Palette) {
    for _ in 0..rng.random_range(1..=4) {
        match body {
            Body::Tcp(d) => tcp_field(d, rng, p),
            Body::Icmp(i) => icmp_field(i, rng, p),
        }
    }
}

fn tcp_field(d: &mut Draft, rng: &mut ChaCha8Rng, p: &Palette) {
    let f = &mut d.tcp;
    match rng.random_range(0..16) {
        0 => {
            const COMBOS: [u8; 12] = [0x02, 0x10, 0x12, 0x04, 0x14, 0x11, 0x18, 0x03, 0x00, 0xff, 0x30, 0x02 | 0xc0];
            f.flags = if rng.random_bool(0.5) { *COMBOS.choose(rng).unwrap_or(&0) } else { rng.random() };
        }
        1 => f.flags ^= 1 << rng.random_range(0..8),
        2 => f.seq = bend_u32(f.seq, rng),
        3 => f.ack = bend_u32(f.ack, rng),
        4 => f.saddr = pick_addr(f.saddr, rng, p),
        5 => f.daddr = pick_addr(f.daddr, rng, p),
        6 => f.sport = pick_port(f.sport, rng, p),
        7 => f.dport = pick_port(f.dport, rng, p),
        8..=11 => options(d, rng, p),
        12 => f.ip_options = ip_options(rng),
        13 => {
            let n = *[0usize, 1, 1, 2, 2, 3].choose(rng).unwrap_or(&0);
            f.vlans = (0..n).map(|_| if rng.random_bool(0.3) { 0 } else { rng.random_range(0..4096) }).collect();
        }
        14 => {
            // MF, an offset, DF: every fragment shape and none.
            f.frag = match rng.random_range(0..5) {
                0 => 0x2000,
                1 => rng.random_range(1..0x2000),
                2 => 0x2000 | rng.random_range(1..0x2000),
                3 => f.frag ^ 0x4000,
                _ => rng.random(),
            };
        }
        _ => match rng.random_range(0..6) {
            0 => f.ttl = *[0u8, 1, 2, 255].choose(rng).unwrap_or(&1),
            1 => f.proto = *[17u8, 1, 0, 255, IPPROTO_TCP].choose(rng).unwrap_or(&17),
            2 => f.payload.clear(),
            3 => {
                let n = *[1usize, 5, 100, 1200, 1460, 1480].choose(rng).unwrap_or(&1);
                f.payload = (0..n).map(|_| rng.random()).collect();
            }
            4 => f.window = rng.random(),
            _ => f.flags |= TCP_ECE | TCP_CWR,
        },
    }
}

fn bend_u32(v: u32, rng: &mut ChaCha8Rng) -> u32 {
    match rng.random_range(0..4) {
        0 => v.wrapping_add(1),
        1 => v.wrapping_sub(1),
        2 => v ^ 1 << rng.random_range(0..32),
        _ => rng.random(),
    }
}

fn pick_addr(v: [u8; 4], rng: &mut ChaCha8Rng, p: &Palette) -> [u8; 4] {
    match rng.random_range(0..4) {
        0 | 1 => *p.addrs.choose(rng).unwrap_or(&v),
        2 => {
            let mut a = v;
            a[3] = a[3].wrapping_add(1);
            a
        }
        _ => rng.random(),
    }
}

fn pick_port(v: u16, rng: &mut ChaCha8Rng, p: &Palette) -> u16 {
    match rng.random_range(0..4) {
        0 | 1 => *p.ports.choose(rng).unwrap_or(&v),
        2 => v.wrapping_add(1),
        _ => rng.random(),
    }
}

/// The option list: capabilities put in, taken out, doubled, bent and
/// moved; real options and garbage around them.
fn options(d: &mut Draft, rng: &mut ChaCha8Rng, p: &Palette) {
    let at = rng.random_range(0..=d.opts.len());
    match rng.random_range(0..12) {
        0 => {
            let domain = match d.opts.iter().find_map(|o| match o {
                Opt::Cap { domain, .. } => Some(*domain),
                Opt::Bytes(_) => None,
            }) {
                Some(domain) => domain,
                None => Domain::Ack,
            };
            let (agent, key) = *p.agents.choose(rng).unwrap_or(&(0, MacKey::default()));
            d.opts.insert(at, Opt::Cap { agent, key, domain });
        }
        1 => {
            // An agent's id with another agent's key, or a made-up MAC.
            let (agent, _) = *p.agents.choose(rng).unwrap_or(&(0, MacKey::default()));
            let (_, key) = *p.agents.choose(rng).unwrap_or(&(0, MacKey::default()));
            let mut cap = capability(&d.tcp, p.option, agent, &key, Domain::Ack);
            if rng.random_bool(0.5) {
                let mac: [u8; 8] = rng.random();
                cap[12..20].copy_from_slice(&mac);
            }
            d.opts.insert(at, Opt::Bytes(cap));
        }
        2 if !d.opts.is_empty() => {
            d.opts.remove(rng.random_range(0..d.opts.len()));
        }
        3 if !d.opts.is_empty() => {
            let o = d.opts[rng.random_range(0..d.opts.len())].clone();
            d.opts.insert(at, o);
        }
        4 | 5 if !d.opts.is_empty() => {
            // Bend one byte of an option: kind, length, ExID, version,
            // reserved, agent id or MAC of a capability.
            let i = rng.random_range(0..d.opts.len());
            let mut b = d.opts[i].bytes(&d.tcp, p.option);
            if !b.is_empty() {
                let j = rng.random_range(0..b.len());
                b[j] = match rng.random_range(0..3) {
                    0 => b[j] ^ 1 << rng.random_range(0..8),
                    1 => *[0u8, 1, 2, 19, 20, 21, 40, 255].choose(rng).unwrap_or(&0),
                    _ => rng.random(),
                };
            }
            if rng.random_bool(0.2) {
                b.truncate(rng.random_range(0..=b.len()));
            }
            d.opts[i] = Opt::Bytes(b);
        }
        6 => d.opts.shuffle(rng),
        7 => d.opts.clear(),
        _ => d.opts.insert(at, Opt::Bytes(plain_option(rng, p))),
    }
}

/// A real TCP option, or one a network could carry: odd lengths,
/// experimental kinds with other ExIDs, garbage.
fn plain_option(rng: &mut ChaCha8Rng, p: &Palette) -> Vec<u8> {
    match rng.random_range(0..14) {
        0 => vec![1],
        1 => vec![0],
        2 => vec![2, 4, 5, 0xb4],
        3 => vec![3, 3, rng.random_range(0..20)],
        4 => vec![4, 2],
        5 => [&[8u8, 10][..], &rng.random::<[u8; 8]>()].concat(),
        6 => {
            let blocks = rng.random_range(1..=4);
            let mut o = vec![5, 2 + 8 * blocks];
            o.extend((0..8 * blocks).map(|_| rng.random::<u8>()));
            o
        }
        7 => [&[19u8, 18][..], &rng.random::<[u8; 16]>()].concat(),
        8 => [&[p.option.kind, rng.random_range(4..=20)][..], &rng.random::<[u8; 2]>()].concat(),
        9 => vec![rng.random(), 0],
        10 => vec![rng.random(), 1],
        11 => vec![rng.random(), rng.random_range(20..=255), 0, 0],
        12 => vec![34, 10, 1, 2, 3, 4, 5, 6, 7, 8],
        _ => (0..rng.random_range(1..8)).map(|_| rng.random()).collect(),
    }
}

/// IPv4 options: none, NOPs, EOL, record route, timestamps, garbage; a
/// multiple of four up to 40 bytes, as `TcpFrame::build` wants.
fn ip_options(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let len = 4 * rng.random_range(0..=10);
    let mut o = match rng.random_range(0..5) {
        0 => vec![1; len],
        1 => vec![0; len],
        2 if len >= 8 => {
            let mut rr = vec![7, (len - 1) as u8, 4];
            rr.resize(len, 0);
            rr
        }
        3 if len >= 8 => {
            let mut ts = vec![68, len as u8, 5, 0];
            ts.resize(len, 0);
            ts
        }
        _ => (0..len).map(|_| rng.random()).collect(),
    };
    o.truncate(len);
    o
}

fn icmp_field(i: &mut IcmpFrame, rng: &mut ChaCha8Rng, p: &Palette) {
    match rng.random_range(0..8) {
        0 => i.kind = *[3u8, 11, 12, 0, 8, 5, rng.random()].choose(rng).unwrap_or(&3),
        1 => i.code = rng.random_range(0..16),
        2 => i.rest = rng.random(),
        3 => i.quote.truncate(rng.random_range(0..=i.quote.len())),
        4 if !i.quote.is_empty() => {
            let j = rng.random_range(0..i.quote.len());
            i.quote[j] = rng.random();
        }
        5 => i.saddr = pick_addr(i.saddr, rng, p),
        6 => i.daddr = pick_addr(i.daddr, rng, p),
        _ => i.frag = *[0x2000u16, 0x0001, 0x4000].choose(rng).unwrap_or(&0),
    }
}

/// One to three mutations of the built bytes: header lengths (data offset,
/// IHL, total length), version, EtherType and tag types, truncation,
/// trailing bytes, bit flips.
pub fn bytes(frame: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    for _ in 0..rng.random_range(1..=3) {
        let l3 = l3_offset(frame);
        match rng.random_range(0..11) {
            10 => {
                // A tag in front of whatever the frame carries, ICMP
                // errors included.
                let tpid = if rng.random_bool(0.7) { ETH_P_8021Q } else { ETH_P_8021AD };
                let tag = [&tpid.to_be_bytes()[..], &rng.random_range(0..4096u16).to_be_bytes()].concat();
                frame.splice(12..12, tag);
            }
            0 => {
                let doff = l3 + ihl(frame, l3) + 12;
                set_nibble(frame, doff, true, rng.random_range(0..16));
            }
            1 => set_nibble(frame, l3, false, rng.random_range(0..16)),
            2 => set_nibble(frame, l3, true, *[4u8, 6, 0, 5, 15].choose(rng).unwrap_or(&4)),
            3 => {
                let have = frame.len().saturating_sub(l3) as i64;
                let total = match rng.random_range(0..4) {
                    0 => have + rng.random_range(-8..=8),
                    1 => rng.random_range(0..60),
                    2 => have + 1,
                    _ => rng.random_range(0..=u16::MAX as i64),
                };
                if let Some(b) = frame.get_mut(l3 + 2..l3 + 4) {
                    b.copy_from_slice(&(total.clamp(0, u16::MAX as i64) as u16).to_be_bytes());
                }
            }
            4 => {
                let at = 12 + 4 * rng.random_range(0..3usize);
                let t = *[ETH_P_IPV4, ETH_P_IPV6, 0x0806, ETH_P_8021Q, ETH_P_8021AD, 0x9100, rng.random()]
                    .choose(rng)
                    .unwrap_or(&ETH_P_IPV4);
                if let Some(b) = frame.get_mut(at..at + 2) {
                    b.copy_from_slice(&t.to_be_bytes());
                }
            }
            5 => {
                // Cut inside the headers more often than in the data; never
                // inside the Ethernet header, which no device delivers cut
                // (and test runs refuse).
                let end = if rng.random_bool(0.7) { (l3 + 60).min(frame.len()) } else { frame.len() };
                frame.truncate(rng.random_range(ETH_HLEN.min(end)..=end));
            }
            6 => {
                let n = rng.random_range(1..64);
                let junk = rng.random_bool(0.5);
                frame.extend((0..n).map(|_| if junk { rng.random() } else { 0 }));
            }
            7 if frame.len() > ETH_HLEN => {
                let at = rng.random_range(0..frame.len());
                if rng.random_bool(0.5) {
                    frame.insert(at, rng.random());
                } else {
                    frame.remove(at);
                }
            }
            _ if !frame.is_empty() => {
                for _ in 0..rng.random_range(1..=4) {
                    // Mostly the headers: that is where the parser reads.
                    let end = if rng.random_bool(0.8) { (l3 + 60).min(frame.len()) } else { frame.len() };
                    let at = rng.random_range(0..end.max(1));
                    if let Some(b) = frame.get_mut(at) {
                        *b ^= 1 << rng.random_range(0..8);
                    }
                }
            }
            _ => {}
        }
    }
}

const ETH_HLEN: usize = 14;

fn set_nibble(frame: &mut [u8], at: usize, high: bool, v: u8) {
    if let Some(b) = frame.get_mut(at) {
        *b = if high { (*b & 0x0f) | v << 4 } else { (*b & 0xf0) | (v & 0x0f) };
    }
}

/// Where the IPv4 header would start: after up to two 802.1Q/802.1ad tags.
fn l3_offset(frame: &[u8]) -> usize {
    let mut at = 12;
    for _ in 0..2 {
        match frame.get(at..at + 2).map(|t| u16::from_be_bytes([t[0], t[1]])) {
            Some(ETH_P_8021Q | ETH_P_8021AD) => at += 4,
            _ => break,
        }
    }
    at + 2
}

fn ihl(frame: &[u8], l3: usize) -> usize {
    frame.get(l3).map_or(20, |b| usize::from(b & 0x0f) * 4)
}

/// Makes the IPv4 header checksum and, where the total length lies within
/// the frame, the TCP checksum right again after byte mutations, so that
/// checks past the checksum test see bent headers too.
pub fn fix_checksums(frame: &mut [u8]) {
    let l3 = l3_offset(frame);
    let ihl = ihl(frame, l3);
    if ihl < 20 || frame.len() < l3 + ihl {
        return;
    }
    frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let sum = checksum(&frame[l3..l3 + ihl]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&sum);
    let total = usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]));
    if frame[l3 + 9] != IPPROTO_TCP || total < ihl + 20 || l3 + total > frame.len() {
        return;
    }
    let (l4, end) = (l3 + ihl, l3 + total);
    frame[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&frame[l3 + 12..l3 + 20]);
    pseudo[9] = IPPROTO_TCP;
    pseudo[10..].copy_from_slice(&((end - l4) as u16).to_be_bytes());
    let sum = Sum16BitWords::new().add_slice(&pseudo).add_slice(&frame[l4..end]).ones_complement().to_be();
    frame[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
}

/// Flips one bit of the IPv4 or the TCP checksum of a built frame.
pub fn break_checksum(frame: &mut [u8], rng: &mut ChaCha8Rng) {
    let l3 = l3_offset(frame);
    let at = if rng.random_bool(0.5) { l3 + 10 } else { l3 + ihl(frame, l3) + 16 };
    if let Some(b) = frame.get_mut(at + rng.random_range(0..2)) {
        *b ^= 1 << rng.random_range(0..8);
    }
}
