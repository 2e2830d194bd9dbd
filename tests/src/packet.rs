//! Builds test frames: Ethernet (+ VLAN) / IPv4 (+ options) or IPv6 (+
//! extension headers) / TCP (+ options) with correct checksums, and checks
//! checksums of frames the gate emits.
//!
//! Every checksum here is computed by `etherparse`, never by
//! `ackgate_common::csum`: frames the gate emits are checked against these
//! (by [`assert_checksums`], or byte for byte against a frame built here),
//! so the check must not share the arithmetic of the code under test.

use ackgate_common::icmp::{ICMPV6_PKT_TOOBIG, IPPROTO_ICMP, IPPROTO_ICMPV6};
use ackgate_common::net::{ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP};
use etherparse::checksum::Sum16BitWords;
use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice, TcpSlice, ip_number};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const GATE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The IPv6 twin of an IPv4 address: 2001:db8::a.b.c.d, in the
/// documentation prefix (RFC 3849).
pub fn v6_of(a: [u8; 4]) -> [u8; 16] {
    let mut v6 = [0u8; 16];
    v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    v6[12..].copy_from_slice(&a);
    v6
}

/// What an IPv6 frame has instead of the IPv4 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Fields {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub traffic_class: u8,
    pub flow_label: u32,
    /// Extension headers in order: each its protocol number and its bytes,
    /// whose first (next header) the builder fills in.
    pub extensions: Vec<(u8, Vec<u8>)>,
}

impl Ipv6Fields {
    /// The same with source and destination swapped, no extension
    /// headers: the header of a reply.
    pub fn reply(&self, traffic_class: u8, flow_label: u32) -> Self {
        Self { saddr: self.daddr, daddr: self.saddr, traffic_class, flow_label, extensions: Vec::new() }
    }

    fn extension_len(&self) -> usize {
        self.extensions.iter().map(|(_, b)| b.len()).sum()
    }
}

/// A TCP frame under construction: IPv4, or IPv6 when `ipv6` is set (the
/// IPv4 addresses, options, id and fragment field are then unused; `ttl`
/// is the hop limit).
#[derive(Clone, Debug)]
pub struct TcpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlans: Vec<u16>,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub ipv6: Option<Ipv6Fields>,
    /// IPv4 TOS.
    pub tos: u8,
    pub ip_options: Vec<u8>,
    /// IP identification (the gate's own replies carry 0, as Linux's).
    pub ip_id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl TcpFrame {
    pub fn new(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16, flags: u8) -> Self {
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: GATE_MAC,
            vlans: Vec::new(),
            saddr,
            daddr,
            ipv6: None,
            tos: 0,
            ip_options: Vec::new(),
            ip_id: 0x1234,
            frag: 0x4000,
            ttl: 64,
            proto: IPPROTO_TCP,
            sport,
            dport,
            seq: 0x1000_0000,
            ack: 0,
            flags,
            window: 64240,
            tcp_options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// The options Linux puts on a SYN: MSS 1460, SACK-permitted,
    /// timestamps, NOP, window scale 7.
    pub fn linux_syn_options(mut self) -> Self {
        self.tcp_options = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
        self
    }

    /// The IPv6 twin of this frame: the same but over IPv6, its addresses
    /// mapped by [`v6_of`].
    pub fn v6(mut self) -> Self {
        self.ipv6 = Some(Ipv6Fields {
            saddr: v6_of(self.saddr),
            daddr: v6_of(self.daddr),
            traffic_class: 0,
            flow_label: 0,
            extensions: Vec::new(),
        });
        self
    }

    /// This frame over IPv4 (`v6` false) or as its IPv6 twin.
    pub fn family(self, v6: bool) -> Self {
        if v6 { self.v6() } else { self }
    }

    /// Offset of the IP header in the built frame.
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.vlans.len()
    }

    /// Offset of the TCP header in the built frame.
    pub fn l4_offset(&self) -> usize {
        match &self.ipv6 {
            Some(v6) => self.l3_offset() + 40 + v6.extension_len(),
            None => self.l3_offset() + 20 + self.ip_options.len(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        assert!(
            self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40,
            "IPv4 options must be 4-aligned, <= 40"
        );
        assert!(
            self.tcp_options.len().is_multiple_of(4) && self.tcp_options.len() <= 40,
            "TCP options must be 4-aligned, <= 40"
        );
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for vid in &self.vlans {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        let tcp_len = 20 + self.tcp_options.len() + self.payload.len();
        if let Some(v6) = &self.ipv6 {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            let word = 6u32 << 28 | (v6.traffic_class as u32) << 20 | (v6.flow_label & 0xfffff);
            f.extend_from_slice(&word.to_be_bytes());
            f.extend_from_slice(&((v6.extension_len() + tcp_len) as u16).to_be_bytes());
            f.push(v6.extensions.first().map_or(self.proto, |(kind, _)| *kind));
            f.push(self.ttl);
            f.extend_from_slice(&v6.saddr);
            f.extend_from_slice(&v6.daddr);
            for (i, (_, bytes)) in v6.extensions.iter().enumerate() {
                let next = v6.extensions.get(i + 1).map_or(self.proto, |(kind, _)| *kind);
                f.push(next);
                f.extend_from_slice(&bytes[1..]);
            }
        } else {
            self.push_ipv4_header(&mut f, tcp_len);
        }
        let l4 = f.len();
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push((((20 + self.tcp_options.len()) / 4) as u8) << 4);
        f.push(self.flags);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&self.tcp_options);
        f.extend_from_slice(&self.payload);
        let tcp_sum = match &self.ipv6 {
            Some(v6) => tcp_checksum_v6(v6.saddr, v6.daddr, &f[l4..]),
            None => tcp_checksum(self.saddr, self.daddr, &f[l4..]),
        };
        let tcp_sum = tcp_sum.expect("a TCP segment was just built");
        f[l4 + 16..l4 + 18].copy_from_slice(&tcp_sum.to_be_bytes());
        f
    }

    fn push_ipv4_header(&self, f: &mut Vec<u8>, tcp_len: usize) {
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ihl = 20 + self.ip_options.len();
        let l3 = f.len();
        f.push(0x40 | (ihl / 4) as u8);
        f.push(self.tos);
        f.extend_from_slice(&((ihl + tcp_len) as u16).to_be_bytes());
        f.extend_from_slice(&self.ip_id.to_be_bytes());
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.push(self.ttl);
        f.push(self.proto);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.saddr);
        f.extend_from_slice(&self.daddr);
        f.extend_from_slice(&self.ip_options);
        let ip_sum = checksum(&f[l3..l3 + ihl]);
        f[l3 + 10..l3 + 12].copy_from_slice(&ip_sum);
    }
}

/// An ICMPv4 error frame: `kind`/`code` from `saddr` to `daddr`, with
/// the type-specific word `rest` (the next-hop MTU of "fragmentation
/// needed" in its low half), quoting `quote` (an IPv4 packet, or its
/// first bytes).
#[derive(Clone, Debug)]
pub struct IcmpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub tos: u8,
    pub ip_id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub kind: u8,
    pub code: u8,
    pub rest: [u8; 4],
    pub quote: Vec<u8>,
}

impl IcmpFrame {
    /// "Fragmentation needed" from a router, as Linux sends it (TOS 0xc0,
    /// DF clear), quoting the first `quote_len` bytes of the IPv4 packet in
    /// `frame` (an Ethernet frame).
    pub fn frag_needed(saddr: [u8; 4], daddr: [u8; 4], mtu: u16, frame: &[u8], quote_len: usize) -> Self {
        let mut rest = [0; 4];
        rest[2..].copy_from_slice(&mtu.to_be_bytes());
        let ip = &frame[14..];
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: GATE_MAC,
            saddr,
            daddr,
            tos: 0xc0,
            ip_id: 0x4242,
            frag: 0,
            ttl: 64,
            kind: 3,
            code: 4,
            rest,
            quote: ip[..quote_len.min(ip.len())].to_vec(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        let total = 20 + 8 + self.quote.len();
        f.extend_from_slice(&[0x45, self.tos]);
        f.extend_from_slice(&(total as u16).to_be_bytes());
        f.extend_from_slice(&self.ip_id.to_be_bytes());
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.extend_from_slice(&[self.ttl, IPPROTO_ICMP, 0, 0]);
        f.extend_from_slice(&self.saddr);
        f.extend_from_slice(&self.daddr);
        let ip_sum = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&ip_sum);
        f.extend_from_slice(&[self.kind, self.code, 0, 0]);
        f.extend_from_slice(&self.rest);
        f.extend_from_slice(&self.quote);
        let icmp_sum = checksum(&f[34..]);
        f[36..38].copy_from_slice(&icmp_sum);
        f
    }
}

/// An Ethernet frame holding an ICMPv6 error of `kind` and `code` from
/// `saddr` to `daddr`, as Linux sends it (traffic class and flow label 0,
/// hop limit 64), with `rest` as the header's last word, quoting `quote`
/// (the start of an IPv6 packet).
#[allow(clippy::too_many_arguments)]
pub fn icmpv6_error(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    saddr: [u8; 16],
    daddr: [u8; 16],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    let len = icmp.len() as u16;
    let sum = Sum16BitWords::new()
        .add_16bytes(saddr)
        .add_16bytes(daddr)
        .add_2bytes(len.to_be_bytes())
        .add_2bytes([0, IPPROTO_ICMPV6])
        .add_slice(&icmp)
        .ones_complement()
        .to_be();
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[IPPROTO_ICMPV6, 64]);
    f.extend_from_slice(&saddr);
    f.extend_from_slice(&daddr);
    f.extend_from_slice(&icmp);
    f
}

/// "Packet too big" from `saddr` to `daddr` about the IPv6 packet in
/// `frame` (an Ethernet frame without extension headers), back to where
/// it came from: its fixed header and first eight TCP bytes quoted.
pub fn packet_too_big(saddr: [u8; 16], daddr: [u8; 16], mtu: u32, frame: &[u8]) -> Vec<u8> {
    let (src_mac, dst_mac) = (frame[..6].try_into().expect("MAC"), frame[6..12].try_into().expect("MAC"));
    icmpv6_error((src_mac, dst_mac), saddr, daddr, ICMPV6_PKT_TOOBIG, 0, mtu.to_be_bytes(), &frame[14..14 + 48])
}

/// The Internet checksum (RFC 1071) of `bytes`, as it goes on the wire
/// (the checksum field inside `bytes` must be zero).
pub fn checksum(bytes: &[u8]) -> [u8; 2] {
    Sum16BitWords::new().add_slice(bytes).ones_complement().to_be().to_be_bytes()
}

/// The checksum `segment` (a TCP header and its payload, whatever its
/// checksum field holds) should carry between `saddr` and `daddr`.
fn tcp_checksum(saddr: [u8; 4], daddr: [u8; 4], segment: &[u8]) -> Result<u16, String> {
    let tcp = TcpSlice::from_slice(segment).map_err(|e| format!("no TCP header: {e}"))?;
    tcp.calc_checksum_ipv4(saddr, daddr).map_err(|e| format!("TCP segment too long: {e}"))
}

/// As [`tcp_checksum`], over IPv6.
fn tcp_checksum_v6(saddr: [u8; 16], daddr: [u8; 16], segment: &[u8]) -> Result<u16, String> {
    let tcp = TcpSlice::from_slice(segment).map_err(|e| format!("no TCP header: {e}"))?;
    tcp.calc_checksum_ipv6(saddr, daddr).map_err(|e| format!("TCP segment too long: {e}"))
}

/// Whether a checksum field holding `found` verifies where `want` was
/// computed: a receiver adds the field into its sum, to which 0xffff adds
/// as much as 0x0000 (both are zero in one's complement).
fn same_checksum(found: u16, want: u16) -> bool {
    found == want || (want == 0 && found == 0xffff)
}

/// Whether the IP header at `l3` in `frame` (IPv4's own checksum) and the
/// TCP segment it carries have valid checksums; the error says which does
/// not. An IPv6 header must be followed by TCP directly.
pub fn check_checksums(frame: &[u8], l3: usize) -> Result<(), String> {
    let packet = frame.get(l3..).ok_or("the frame ends before its IP header")?;
    if packet.first().is_some_and(|b| b >> 4 == 6) {
        let ip = Ipv6HeaderSlice::from_slice(packet).map_err(|e| format!("no IPv6 header: {e}"))?;
        if ip.next_header() != ip_number::TCP {
            return Err(format!("not TCP right after the IPv6 header: {:?}", ip.next_header()));
        }
        let end = 40 + usize::from(ip.payload_length());
        let segment = packet.get(40..end).ok_or_else(|| format!("IPv6 payload length {end} runs past the frame"))?;
        let tcp = TcpSlice::from_slice(segment).map_err(|e| format!("no TCP header: {e}"))?;
        let want = tcp_checksum_v6(ip.source(), ip.destination(), segment)?;
        if !same_checksum(tcp.checksum(), want) {
            return Err(format!("TCP checksum is wrong: {:#06x}, should be {want:#06x}", tcp.checksum()));
        }
        return Ok(());
    }
    let ip = Ipv4HeaderSlice::from_slice(packet).map_err(|e| format!("no IPv4 header: {e}"))?;
    let header = ip.slice();
    let want = Sum16BitWords::new().add_slice(&header[..10]).add_slice(&header[12..]).ones_complement().to_be();
    if !same_checksum(ip.header_checksum(), want) {
        return Err(format!("IPv4 header checksum is wrong: {:#06x}, should be {want:#06x}", ip.header_checksum()));
    }
    if ip.protocol() != ip_number::TCP || ip.is_fragmenting_payload() {
        return Err(format!("not a whole TCP segment: protocol {:?}", ip.protocol()));
    }
    let total = usize::from(ip.total_len());
    let segment = packet
        .get(header.len()..total)
        .ok_or_else(|| format!("IPv4 total length {total} runs past the frame or its header"))?;
    let tcp = TcpSlice::from_slice(segment).map_err(|e| format!("no TCP header: {e}"))?;
    let want =
        tcp.calc_checksum_ipv4(ip.source(), ip.destination()).map_err(|e| format!("TCP segment too long: {e}"))?;
    if !same_checksum(tcp.checksum(), want) {
        return Err(format!("TCP checksum is wrong: {:#06x}, should be {want:#06x}", tcp.checksum()));
    }
    Ok(())
}

/// Asserts that the IPv4 header at `l3` and the TCP segment after it carry
/// valid checksums; panics naming the one that does not.
#[track_caller]
pub fn assert_checksums(frame: &[u8], l3: usize) {
    if let Err(e) = check_checksums(frame, l3) {
        panic!("{e} in {frame:02x?}");
    }
}

/// Client side of the capability (what the agent's TC program does),
/// for tests: appends a valid capability option to an ACK or stealth SYN.
pub mod stamp {
    use super::TcpFrame;
    use ackgate_common::mac::{Binding, DOMAIN_ACK, DOMAIN_SYN, MacKey, SYN_TIME_SHIFT};
    use ackgate_common::option::{CapabilityOption, OptionId};

    fn push(frame: &mut TcpFrame, id: OptionId, agent_id: u32, mac: u64) {
        let opt = CapabilityOption::new(id.kind, id.exid, agent_id, mac);
        frame.tcp_options.extend_from_slice(&[
            opt.kind,
            opt.len,
            opt.exid[0],
            opt.exid[1],
            opt.version,
            opt.reserved[0],
            opt.reserved[1],
            opt.reserved[2],
        ]);
        frame.tcp_options.extend_from_slice(&opt.agent_id);
        frame.tcp_options.extend_from_slice(&opt.mac);
    }

    /// What a stamp binds besides the frame's addresses and ports.
    struct Bound {
        domain: u8,
        client_isn: u32,
        second: u32,
        id: OptionId,
        agent_id: u32,
    }

    /// The MAC binding of a handshake ACK over IPv4 as the frame stands.
    pub fn ack_binding(frame: &TcpFrame, id: OptionId, agent_id: u32) -> Binding {
        binding(frame.saddr, frame.daddr, frame, &ack_bound(frame, id, agent_id))
    }

    fn ack_bound(frame: &TcpFrame, id: OptionId, agent_id: u32) -> Bound {
        Bound {
            domain: DOMAIN_ACK,
            client_isn: frame.seq.wrapping_sub(1),
            second: frame.ack.wrapping_sub(1),
            id,
            agent_id,
        }
    }

    /// The MAC of the frame's binding: its IPv4 or IPv6 addresses.
    fn mac(frame: &TcpFrame, bound: &Bound, key: &MacKey) -> u64 {
        match &frame.ipv6 {
            Some(v6) => binding(v6.saddr, v6.daddr, frame, bound).mac(key),
            None => binding(frame.saddr, frame.daddr, frame, bound).mac(key),
        }
    }

    fn binding<A>(saddr: A, daddr: A, frame: &TcpFrame, bound: &Bound) -> Binding<A> {
        Binding {
            saddr,
            daddr,
            sport: frame.sport.to_be_bytes(),
            dport: frame.dport.to_be_bytes(),
            client_isn: bound.client_isn,
            second: bound.second,
            agent_id: bound.agent_id,
            domain: bound.domain,
            exid: bound.id.exid,
        }
    }

    pub fn ack(frame: &mut TcpFrame, id: OptionId, agent_id: u32, key: &MacKey) {
        let mac = mac(frame, &ack_bound(frame, id, agent_id), key);
        push(frame, id, agent_id, mac);
    }

    /// Appends an option with an arbitrary MAC (forgeries).
    pub fn ack_with_mac(frame: &mut TcpFrame, id: OptionId, agent_id: u32, mac: u64) {
        push(frame, id, agent_id, mac);
    }

    /// Current coarse TAI tick, as the gate computes it.
    pub fn tai_tick() -> u32 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid out pointer.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_TAI, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_TAI) failed");
        let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        (ns >> SYN_TIME_SHIFT) as u32
    }

    pub fn syn(frame: &mut TcpFrame, id: OptionId, agent_id: u32, key: &MacKey, tick: u32) {
        let mac = mac(frame, &Bound { domain: DOMAIN_SYN, client_isn: frame.seq, second: tick, id, agent_id }, key);
        push(frame, id, agent_id, mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ackgate_common::net::{TCP_ACK, TCP_PSH};
    use etherparse::PacketBuilder;

    const OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    /// An odd length, so that the last checksum word is padded.
    const PAYLOAD: &[u8] = b"hello, gate";

    /// An ACK with timestamps and data, written by etherparse alone.
    fn reference() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, GATE_MAC)
            .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .tcp(40000, 443, 0x1000_0001, 502)
            .ack(0xc00c_1e01)
            .psh()
            .options_raw(&OPTIONS)
            .expect("12 bytes of options")
            .write(&mut out, PAYLOAD)
            .expect("writing into a Vec");
        out
    }

    #[test]
    fn a_correct_frame_passes() {
        assert_eq!(check_checksums(&reference(), 14), Ok(()));
    }

    #[test]
    fn a_checksum_one_bit_off_fails() {
        let frame = reference();
        let (ip_check, tcp_check) = (14 + 10, 14 + 20 + 16);
        for bit in 0..16 {
            let mut f = frame.clone();
            f[ip_check + bit / 8] ^= 0x80 >> (bit % 8);
            let e = check_checksums(&f, 14).expect_err("an IPv4 checksum one bit off");
            assert!(e.starts_with("IPv4 header checksum is wrong"), "bit {bit}: {e}");

            let mut f = frame.clone();
            f[tcp_check + bit / 8] ^= 0x80 >> (bit % 8);
            let e = check_checksums(&f, 14).expect_err("a TCP checksum one bit off");
            assert!(e.starts_with("TCP checksum is wrong"), "bit {bit}: {e}");
        }
    }

    /// A bit flipped anywhere past the Ethernet header, checksums left as
    /// they were: in the IPv4 header, the TCP header, the options or the
    /// payload.
    #[test]
    fn any_covered_bit_flipped_fails() {
        let frame = reference();
        for byte in 14..frame.len() {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[byte] ^= 1 << bit;
                assert!(check_checksums(&f, 14).is_err(), "byte {byte} bit {bit} flipped, yet the checksums pass");
            }
        }
    }

    /// The frames the suites compare the gate's output with are built
    /// here; they must come out as etherparse writes them.
    #[test]
    fn frames_built_here_are_etherparse_frames() {
        let mut f = TcpFrame::new([10, 0, 0, 2], 40000, [10, 0, 0, 1], 443, TCP_ACK | TCP_PSH);
        // etherparse's defaults: IP id 0, DF.
        f.ip_id = 0;
        f.seq = 0x1000_0001;
        f.ack = 0xc00c_1e01;
        f.window = 502;
        f.tcp_options = OPTIONS.to_vec();
        f.payload = PAYLOAD.to_vec();
        let built = f.build();
        assert_eq!(built, reference());
        assert_eq!(check_checksums(&built, 14), Ok(()));
    }
}
