//! ICMP and ICMPv6 errors about spliced segments (RFC 792, RFC 1191,
//! RFC 4443).
//!
//! A router on either side of the gateway reports a problem with a spliced
//! segment to the address that segment carried after the rewrite: an error
//! about a client → target segment goes to the client (or the source-NAT
//! address) and quotes the target's address and port; one about a target →
//! client segment goes to the VIP and quotes the VIP. Neither endpoint
//! would recognise the quote, so path MTU discovery through the splice
//! would black-hole. The gateway translates such an error as the opposite
//! direction's entry rewrites segments, and quotes what the endpoint itself
//! sent (the kernel's tcp_v4_err in net/ipv4/tcp_ipv4.c finds the socket by
//! the quoted 4-tuple and checks the quoted sequence number):
//! - outer source and destination become the reply entry's, so the error
//!   comes from the address the endpoint talks to (VIP, or the client as
//!   the target knows it);
//! - the quoted addresses and ports become the endpoint's own;
//! - the quoted SEQ (and ACK, when quoted) move back into the endpoint's
//!   sequence space;
//! - the quoted IPv4 checksum, the quoted TCP checksum when the whole TCP
//!   header is quoted, the ICMP checksum and the outer checksum are updated
//!   incrementally. Quoted TCP options (timestamps, SACK) keep their
//!   rewritten values: no receiver reads them.
//!
//! The gateway also sends errors of its own: when a spliced segment does
//! not fit the next hop's MTU, [`frag_needed`] (IPv4) and
//! [`packet_too_big`] (ICMPv6, RFC 4443 §3.2) build the error a router
//! there would send, quoting the segment as it arrived.

use crate::abi::{SpliceEntry, v6_words};
use crate::csum::{self, word2, word4};
use crate::net::{Frame, IPPROTO_TCP, Ipv4Hdr, Ipv6Hdr, TcpHdr, Wire};

pub const IPPROTO_ICMP: u8 = 1;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;
/// `ICMP_DEST_UNREACH` code: fragmentation needed and DF set; the next
/// hop's MTU is in the low half of the header's last word.
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 "packet too big"; the next hop's MTU is the header's last word.
pub const ICMPV6_PKT_TOOBIG: u8 = 2;

/// The ICMP header: type, code, checksum and the type-specific word.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

unsafe impl Wire for IcmpHdr {}

const _: () = assert!(core::mem::size_of::<IcmpHdr>() == 8);

/// The first eight bytes of a TCP header: all that RFC 792 guarantees an
/// error quotes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpPorts {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
}

unsafe impl Wire for TcpPorts {}

impl TcpPorts {
    /// A TCP header with these first eight bytes, the rest zero.
    #[inline(always)]
    pub fn header(self) -> TcpHdr {
        TcpHdr {
            sport: self.sport,
            dport: self.dport,
            seq: self.seq,
            ack: [0; 4],
            doff_res: 0,
            flags: 0,
            window: [0; 2],
            check: [0; 2],
            urg: [0; 2],
        }
    }
}

/// The quoted TCP header: whole when the error quotes 20 bytes or more of
/// it (Linux quotes up to 576 bytes of the packet in all), else only its
/// first eight bytes, the rest zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedTcp {
    pub tcp: TcpHdr,
    pub complete: bool,
}

/// An ICMPv4 error that quotes a TCP segment, located in the frame.
#[derive(Clone, Copy, Debug)]
pub struct IcmpError {
    pub l3_off: usize,
    pub ip: Ipv4Hdr,
    pub icmp_off: usize,
    pub icmp: IcmpHdr,
    /// Offset of the quoted IPv4 header.
    pub inner_off: usize,
    pub inner: Ipv4Hdr,
    /// Offset of the quoted TCP header.
    pub inner_l4_off: usize,
    pub quoted: QuotedTcp,
}

impl IcmpError {
    /// Whether, for a splice still connecting, the error ends the attempt
    /// as the kernel ends a connecting socket's (tcp_v4_err: any
    /// destination-unreachable or time-exceeded error in SYN-SENT), except
    /// "fragmentation needed", which a SYN that small never earns honestly.
    pub fn is_hard(&self) -> bool {
        match self.icmp.kind {
            ICMP_DEST_UNREACH => self.icmp.code != ICMP_FRAG_NEEDED,
            ICMP_TIME_EXCEEDED => true,
            _ => false,
        }
    }
}

/// Locates an ICMP error about a TCP segment in the IPv4 packet `ip` at
/// `l3_off` (already checked by `parse_ipv4_tcp`: total length inside the
/// frame) and writes it to `out` (in BPF, map memory: the error is too big
/// for the stack of the stage that translates it). `None` for anything
/// else: echo, errors about UDP, quotes of fragments or too short to hold
/// the ports and SEQ.
#[inline(always)]
pub fn parse_error<F: Frame + ?Sized>(frame: &F, l3_off: usize, ip: &Ipv4Hdr, out: &mut IcmpError) -> Option<()> {
    if ip.proto != IPPROTO_ICMP || ip.is_fragment() {
        return None;
    }
    let icmp_off = l3_off + ip.header_len();
    let icmp = frame.load::<IcmpHdr>(icmp_off)?;
    if !matches!(icmp.kind, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB) {
        return None;
    }
    let inner_off = icmp_off + core::mem::size_of::<IcmpHdr>();
    let inner = frame.load::<Ipv4Hdr>(inner_off)?;
    let inner_ihl = inner.header_len();
    if inner.version_ihl >> 4 != 4 || inner_ihl < core::mem::size_of::<Ipv4Hdr>() {
        return None;
    }
    // A quoted non-first fragment has no TCP header to translate.
    if inner.proto != IPPROTO_TCP || u16::from_be_bytes(inner.frag) & 0x1fff != 0 {
        return None;
    }
    let inner_l4_off = inner_off + inner_ihl;
    let end = l3_off + ip.total_len();
    // Only what the outer length covers is the quote; the rest is padding.
    if inner_l4_off + core::mem::size_of::<TcpHdr>() <= end {
        out.quoted = QuotedTcp { tcp: frame.load::<TcpHdr>(inner_l4_off)?, complete: true };
    } else if inner_l4_off + core::mem::size_of::<TcpPorts>() <= end {
        out.quoted = QuotedTcp { tcp: frame.load::<TcpPorts>(inner_l4_off)?.header(), complete: false };
    } else {
        return None;
    }
    out.l3_off = l3_off;
    out.ip = *ip;
    out.icmp_off = icmp_off;
    out.icmp = icmp;
    out.inner_off = inner_off;
    out.inner = inner;
    out.inner_l4_off = inner_l4_off;
    Some(())
}

/// Translates `err` with `reply`, the splice entry of the direction
/// opposite to the quoted segment's (its key is the quoted 4-tuple
/// reversed), as the module's docs describe. `forwarding` decrements the
/// outer TTL (the gate routes the error itself). Checksums are updated
/// from the changed words alone: summing whole headers twice costs more
/// BPF stack than a stage has.
#[inline(always)]
pub fn translate(err: &mut IcmpError, reply: &SpliceEntry, forwarding: bool) {
    let (near, far) = (reply.saddr.to_ne_bytes(), reply.daddr.to_ne_bytes());

    let outer_old = word4(err.ip.saddr) + word4(err.ip.daddr) + word2([err.ip.ttl, err.ip.proto]);
    err.ip.saddr = near;
    err.ip.daddr = far;
    if forwarding {
        err.ip.ttl = err.ip.ttl.wrapping_sub(1);
    }
    let outer_new = word4(near) + word4(far) + word2([err.ip.ttl, err.ip.proto]);
    err.ip.check = csum::replace(err.ip.check, outer_old, outer_new);

    // Inside the quote: what changes, summed before and after. The quoted
    // addresses count for the IPv4 header and the TCP pseudo-header.
    let inner = &mut err.inner;
    let tcp = &mut err.quoted.tcp;
    let addrs_old = word4(inner.saddr) + word4(inner.daddr);
    let addrs_new = word4(far) + word4(near);
    let mut tcp_old = word2(tcp.sport) + word2(tcp.dport) + word4(tcp.seq);
    let checks_old = word2(inner.check) + if err.quoted.complete { word2(tcp.check) } else { 0 };

    inner.saddr = far;
    inner.daddr = near;
    tcp.sport = reply.dport.to_ne_bytes();
    tcp.dport = reply.sport.to_ne_bytes();
    // The reply entry adds `ack_add` to what the endpoint acknowledges,
    // i.e. moves the quoted sender's sequence space back to its own; its
    // `seq_add` does the same for the other side's, which ACK quotes.
    tcp.seq = tcp.seq().wrapping_add(reply.ack_add()).to_be_bytes();
    let mut tcp_new = word2(tcp.sport) + word2(tcp.dport) + word4(tcp.seq);
    inner.check = csum::replace(inner.check, addrs_old, addrs_new);
    let mut checks_new = word2(inner.check);
    if err.quoted.complete {
        if tcp.flags & crate::net::TCP_ACK != 0 {
            tcp_old += word4(tcp.ack);
            tcp.ack = tcp.ack_seq().wrapping_add(reply.seq_add()).to_be_bytes();
            tcp_new += word4(tcp.ack);
        }
        tcp.check = csum::replace(tcp.check, addrs_old + tcp_old, addrs_new + tcp_new);
        checks_new += word2(tcp.check);
    }
    err.icmp.check = csum::replace(err.icmp.check, addrs_old + tcp_old + checks_old, addrs_new + tcp_new + checks_new);
}

/// ICMPv6 error types (RFC 4443 §3) the splice translates.
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_TIME_EXCEED: u8 = 3;
pub const ICMPV6_PARAMPROB: u8 = 4;

/// An ICMPv6 error that quotes a TCP segment, located in the frame. Where
/// [`IcmpError`] keeps the IPv4 headers, this keeps what the translation
/// needs of the IPv6 ones: the outer addresses' checksum sum and hop
/// limit, and the quoted addresses as splice-map words. The new addresses
/// are the splice entry's, which the gate writes to the packet from the
/// map: IPv6's 32 address bytes, copied through registers, take a BPF
/// frame past its room (docs/kernels.md).
#[derive(Clone, Copy, Debug)]
pub struct Icmp6Error {
    pub l3_off: usize,
    pub hop_limit: u8,
    /// The outer addresses' big-endian one's-complement sum (they count in
    /// the ICMPv6 checksum's pseudo-header).
    pub outer_sum: u32,
    pub icmp_off: usize,
    pub icmp: IcmpHdr,
    /// Offset of the quoted IPv6 header.
    pub inner_off: usize,
    pub inner_saddr: [u32; 4],
    pub inner_daddr: [u32; 4],
    /// Offset of the quoted TCP header.
    pub inner_l4_off: usize,
    pub quoted: QuotedTcp,
}

impl Icmp6Error {
    /// Whether, for a splice still connecting, the error ends the attempt:
    /// tcp_v6_err (net/ipv6/tcp_ipv6.c) ends a SYN-SENT socket on any error
    /// but "packet too big"; as for IPv4, only unreachable and time
    /// exceeded count here.
    pub fn is_hard(&self) -> bool {
        matches!(self.icmp.kind, ICMPV6_DEST_UNREACH | ICMPV6_TIME_EXCEED)
    }

    /// Offsets of the outer and quoted addresses, for writing them back.
    pub fn outer_saddr_off(&self) -> usize {
        self.l3_off + core::mem::offset_of!(Ipv6Hdr, saddr)
    }
    pub fn inner_saddr_off(&self) -> usize {
        self.inner_off + core::mem::offset_of!(Ipv6Hdr, saddr)
    }
}

/// Locates an ICMPv6 error about a TCP segment: `ip` at `l3_off` (checked
/// by `parse_ipv6_tcp`: payload inside the frame), its ICMPv6 header at
/// `icmp_off` (after any extension headers). Writes it to `out` (map
/// memory in BPF). `None` for anything else: informational messages
/// (neighbour discovery, echo), errors about other protocols, quotes with
/// extension headers or too short to hold the ports and SEQ.
#[inline(always)]
pub fn parse_error_v6<F: Frame + ?Sized>(
    frame: &F,
    l3_off: usize,
    ip: &Ipv6Hdr,
    icmp_off: usize,
    out: &mut Icmp6Error,
) -> Option<()> {
    let icmp = frame.load::<IcmpHdr>(icmp_off)?;
    if !matches!(icmp.kind, ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED | ICMPV6_PARAMPROB) {
        return None;
    }
    let inner_off = icmp_off + core::mem::size_of::<IcmpHdr>();
    let inner = frame.load::<Ipv6Hdr>(inner_off)?;
    // The gate sends spliced segments with the extension headers their
    // sender put on them; a quote of one with extension headers is rare
    // enough to leave untranslated.
    if inner.version_class_flow[0] >> 4 != 6 || inner.next_header != IPPROTO_TCP {
        return None;
    }
    let inner_l4_off = inner_off + core::mem::size_of::<Ipv6Hdr>();
    let end = l3_off + core::mem::size_of::<Ipv6Hdr>() + u16::from_be_bytes(ip.payload_len) as usize;
    if inner_l4_off + core::mem::size_of::<TcpHdr>() <= end {
        out.quoted = QuotedTcp { tcp: frame.load::<TcpHdr>(inner_l4_off)?, complete: true };
    } else if inner_l4_off + core::mem::size_of::<TcpPorts>() <= end {
        out.quoted = QuotedTcp { tcp: frame.load::<TcpPorts>(inner_l4_off)?.header(), complete: false };
    } else {
        return None;
    }
    out.l3_off = l3_off;
    out.hop_limit = ip.hop_limit;
    out.outer_sum = csum::words_sum(&v6_words(ip.saddr)) + csum::words_sum(&v6_words(ip.daddr));
    out.icmp_off = icmp_off;
    out.icmp = icmp;
    out.inner_off = inner_off;
    out.inner_saddr = v6_words(inner.saddr);
    out.inner_daddr = v6_words(inner.daddr);
    out.inner_l4_off = inner_l4_off;
    Some(())
}

/// As [`translate`], for IPv6: `reply` is the splice entry of the
/// direction opposite to the quoted segment's. The outer addresses become
/// `reply`'s, the quoted ones `reply`'s reversed (the caller writes both
/// from the entry); ports and sequence numbers as for IPv4; the quoted TCP
/// checksum (when whole) and the ICMPv6 checksum, whose pseudo-header
/// holds the outer addresses, are updated incrementally. `forwarding`
/// decrements the hop limit, which no checksum covers.
#[inline(always)]
pub fn translate_v6(err: &mut Icmp6Error, reply: &SpliceEntry<[u32; 4]>, forwarding: bool) {
    if forwarding {
        err.hop_limit = err.hop_limit.wrapping_sub(1);
    }
    // The quoted addresses become (far, near): the same two as the outer
    // (near, far), so one sum serves both.
    let addrs_new = csum::words_sum(&reply.saddr) + csum::words_sum(&reply.daddr);
    let inner_old = csum::words_sum(&err.inner_saddr) + csum::words_sum(&err.inner_daddr);
    err.inner_saddr = reply.daddr;
    err.inner_daddr = reply.saddr;

    let tcp = &mut err.quoted.tcp;
    let mut tcp_old = word2(tcp.sport) + word2(tcp.dport) + word4(tcp.seq);
    let check_old = if err.quoted.complete { word2(tcp.check) } else { 0 };
    tcp.sport = reply.dport.to_ne_bytes();
    tcp.dport = reply.sport.to_ne_bytes();
    tcp.seq = tcp.seq().wrapping_add(reply.ack_add()).to_be_bytes();
    let mut tcp_new = word2(tcp.sport) + word2(tcp.dport) + word4(tcp.seq);
    let mut check_new = 0;
    if err.quoted.complete {
        if tcp.flags & crate::net::TCP_ACK != 0 {
            tcp_old += word4(tcp.ack);
            tcp.ack = tcp.ack_seq().wrapping_add(reply.seq_add()).to_be_bytes();
            tcp_new += word4(tcp.ack);
        }
        tcp.check = csum::replace(tcp.check, inner_old + tcp_old, addrs_new + tcp_new);
        check_new = word2(tcp.check);
    }
    err.icmp.check = csum::replace(
        err.icmp.check,
        err.outer_sum + inner_old + tcp_old + check_old,
        addrs_new + addrs_new + tcp_new + check_new,
    );
    err.outer_sum = addrs_new;
}

/// The ICMP part of [`frag_needed`]: the header, and the segment's IPv4
/// header (without options) and first eight bytes of TCP, as RFC 792 asks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragNeeded {
    pub icmp: IcmpHdr,
    pub quoted_ip: Ipv4Hdr,
    pub quoted_tcp: TcpPorts,
}

unsafe impl Wire for FragNeeded {}

const _: () = assert!(core::mem::size_of::<FragNeeded>() == 36);

/// A "fragmentation needed" error from its IPv4 header on.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FragNeededPacket {
    pub ip: Ipv4Hdr,
    pub error: FragNeeded,
}

unsafe impl Wire for FragNeededPacket {}

/// TTL of the errors the gateway sends (Linux's default, as for its own
/// TCP replies).
const ERROR_TTL: u8 = 64;

/// "Fragmentation needed" for the segment `ip` + `tcp` (as it arrived),
/// which does not fit the next hop's `mtu`, sent back to its source from
/// the address it was sent to, as a router there would (icmp_send in
/// net/ipv4/icmp.c: TOS 0xc0 for errors, DF clear, TTL 64).
#[inline(always)]
pub fn frag_needed(ip: &Ipv4Hdr, tcp: &TcpHdr, mtu: u16) -> FragNeededPacket {
    let quoted_tcp = TcpPorts { sport: tcp.sport, dport: tcp.dport, seq: tcp.seq };
    let mut icmp = IcmpHdr { kind: ICMP_DEST_UNREACH, code: ICMP_FRAG_NEEDED, check: [0; 2], rest: [0, 0, 0, 0] };
    icmp.rest[2..].copy_from_slice(&mtu.to_be_bytes());
    let mut quoted_ip = *ip;
    // The quote is the header alone: options are not carried over.
    quoted_ip.version_ihl = 0x45;
    if ip.header_len() != core::mem::size_of::<Ipv4Hdr>() {
        let old = csum::sum_words(&[ip.version_ihl, ip.tos], 0);
        quoted_ip.check = csum::replace(ip.check, old, csum::sum_words(&[quoted_ip.version_ihl, ip.tos], 0));
    }
    icmp.check =
        csum::finish(csum::sum_words(&icmp, 0) + csum::sum_words(&quoted_ip, 0) + csum::sum_words(&quoted_tcp, 0));
    let mut out_ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0xc0,
        total_len: ((core::mem::size_of::<Ipv4Hdr>() + core::mem::size_of::<FragNeeded>()) as u16).to_be_bytes(),
        id: [0, 0],
        frag: [0, 0],
        ttl: ERROR_TTL,
        proto: IPPROTO_ICMP,
        check: [0, 0],
        saddr: ip.daddr,
        daddr: ip.saddr,
    };
    out_ip.check = csum::finish(csum::sum_words(&out_ip, 0));
    FragNeededPacket { ip: out_ip, error: FragNeeded { icmp, quoted_ip, quoted_tcp } }
}

/// The ICMPv6 part of [`packet_too_big`]: the header, and the segment's
/// IPv6 header and first eight bytes of TCP, which is what the receiver
/// reads to find its connection (icmpv6_notify in net/ipv6/icmp.c pulls
/// eight bytes past the quoted headers; tcp_v6_err reads ports and SEQ).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketTooBig {
    pub icmp: IcmpHdr,
    pub quoted_ip: Ipv6Hdr,
    pub quoted_tcp: TcpPorts,
}

unsafe impl Wire for PacketTooBig {}

const _: () = assert!(core::mem::size_of::<PacketTooBig>() == 56);

/// A "packet too big" error from its IPv6 header on.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PacketTooBigPacket {
    pub ip: Ipv6Hdr,
    pub error: PacketTooBig,
}

unsafe impl Wire for PacketTooBigPacket {}

/// "Packet too big" for the segment `ip` + `tcp` (as it arrived), which
/// does not fit the next hop's `mtu`, sent back to its source from the
/// address it was sent to, as a router there would (icmp6_send in
/// net/ipv6/icmp.c: traffic class 0, hop limit 64, the default). The
/// quoted header says TCP follows it directly, with the length of the TCP
/// part alone: the receiver walks the quote's extension headers to reach
/// the ports, and the gate quotes none (the only ones it lets through to a
/// service are padding and spent routing headers).
#[inline(always)]
pub fn packet_too_big(ip: &Ipv6Hdr, tcp: &TcpHdr, tcp_and_payload: u16, mtu: u32) -> PacketTooBigPacket {
    let quoted_tcp = TcpPorts { sport: tcp.sport, dport: tcp.dport, seq: tcp.seq };
    let icmp = IcmpHdr { kind: ICMPV6_PKT_TOOBIG, code: 0, check: [0; 2], rest: mtu.to_be_bytes() };
    let mut quoted_ip = *ip;
    quoted_ip.next_header = IPPROTO_TCP;
    quoted_ip.payload_len = tcp_and_payload.to_be_bytes();
    let len = core::mem::size_of::<PacketTooBig>() as u16;
    let out_ip = Ipv6Hdr {
        version_class_flow: (6u32 << 28).to_be_bytes(),
        payload_len: len.to_be_bytes(),
        next_header: IPPROTO_ICMPV6,
        hop_limit: ERROR_TTL,
        saddr: ip.daddr,
        daddr: ip.saddr,
    };
    let mut error = PacketTooBig { icmp, quoted_ip, quoted_tcp };
    let pseudo = csum::pseudo_sum_v6(&out_ip.saddr, &out_ip.daddr, IPPROTO_ICMPV6, len);
    error.icmp.check = csum::finish(csum::sum_words(&error, pseudo));
    PacketTooBigPacket { ip: out_ip, error }
}

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    /// An IPv4 header without options, DF set, with its checksum (the
    /// splice's tests use it too).
    pub(crate) fn ipv4(saddr: [u8; 4], daddr: [u8; 4], proto: u8, payload: usize) -> Ipv4Hdr {
        let mut ip = Ipv4Hdr {
            version_ihl: 0x45,
            tos: 0,
            total_len: ((20 + payload) as u16).to_be_bytes(),
            id: [0x12, 0x34],
            frag: [0x40, 0],
            ttl: 61,
            proto,
            check: [0, 0],
            saddr,
            daddr,
        };
        ip.check = csum::finish(csum::sum_words(&ip, 0));
        ip
    }

    fn tcp_segment(ip: &Ipv4Hdr, sport: u16, dport: u16, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let mut tcp = TcpHdr {
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            seq: seq.to_be_bytes(),
            ack: ack.to_be_bytes(),
            doff_res: 5 << 4,
            flags: crate::net::TCP_ACK,
            window: 502u16.to_be_bytes(),
            check: [0, 0],
            urg: [0, 0],
        };
        let len = (20 + payload.len()) as u16;
        let mut bytes = tcp.as_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let mut acc = csum::tcp_pseudo_sum(ip.saddr, ip.daddr, len);
        for c in bytes.chunks(2) {
            acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        tcp.check = csum::finish(acc);
        let mut out = ip.as_bytes().to_vec();
        out.extend_from_slice(tcp.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// An Ethernet frame holding an ICMP error from `from` to `to` that
    /// quotes `quote` bytes of `segment`.
    fn error_frame(from: [u8; 4], to: [u8; 4], kind: u8, code: u8, segment: &[u8], quote: usize) -> Vec<u8> {
        let quote = &segment[..quote.min(segment.len())];
        let ip = ipv4(from, to, IPPROTO_ICMP, 8 + quote.len());
        let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0x00];
        icmp.extend_from_slice(quote);
        let check = csum::finish({
            let mut acc = 0u32;
            for c in icmp.chunks(2) {
                acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
            }
            acc
        });
        icmp[2..4].copy_from_slice(&check);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(ip.as_bytes());
        frame.extend_from_slice(&icmp);
        frame
    }

    /// The reply entry of a spliced flow: target 10.1.0.2:8080 → client
    /// 198.51.100.7:40000, shown to the client as VIP 203.0.113.1:443.
    fn target_to_client() -> SpliceEntry {
        SpliceEntry {
            saddr: u32::from_ne_bytes([203, 0, 113, 1]),
            daddr: u32::from_ne_bytes([198, 51, 100, 7]),
            sport: 443u16.to_be(),
            dport: 40000u16.to_be(),
            seq_shift: 0x1000_0000,
            ..Default::default()
        }
    }

    fn empty() -> IcmpError {
        let ip = ipv4([0; 4], [0; 4], 0, 0);
        let icmp = IcmpHdr { kind: 0, code: 0, check: [0; 2], rest: [0; 4] };
        let tcp = TcpPorts { sport: [0; 2], dport: [0; 2], seq: [0; 4] }.header();
        let quoted = QuotedTcp { tcp, complete: false };
        IcmpError { l3_off: 0, ip, icmp_off: 0, icmp, inner_off: 0, inner: ip, inner_l4_off: 0, quoted }
    }

    fn write_back(frame: &mut [u8], err: &IcmpError) {
        frame[err.l3_off..err.l3_off + 20].copy_from_slice(err.ip.as_bytes());
        frame[err.icmp_off..err.icmp_off + 8].copy_from_slice(err.icmp.as_bytes());
        frame[err.inner_off..err.inner_off + 20].copy_from_slice(err.inner.as_bytes());
        let n = if err.quoted.complete { 20 } else { 8 };
        frame[err.inner_l4_off..err.inner_l4_off + n].copy_from_slice(&err.quoted.tcp.as_bytes()[..n]);
    }

    #[test]
    fn an_error_about_a_client_segment_quotes_what_the_client_sent() {
        let (client, vip, target, router) = ([198, 51, 100, 7], [203, 0, 113, 1], [10, 1, 0, 2], [10, 1, 0, 254]);
        // As the client sent it, and as the splice forwarded it (SEQ as
        // is, ACK + 0xf000_0000: the target's ISN is that far from the
        // cookie).
        let sent_ip = ipv4(client, vip, IPPROTO_TCP, 20 + 1400);
        let sent = tcp_segment(&sent_ip, 40000, 443, 77, 0x2000_0001, &[0xab; 1400]);
        let fwd_ip = ipv4(client, target, IPPROTO_TCP, 20 + 1400);
        let forwarded = tcp_segment(&fwd_ip, 40000, 8080, 77, 0x1000_0001, &[0xab; 1400]);
        let reply = target_to_client();

        for quote in [28, 40, 576 - 28] {
            let mut frame = error_frame(router, client, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, &forwarded, quote);
            let ip = frame.as_slice().load::<Ipv4Hdr>(14).unwrap();
            let mut err = empty();
            parse_error(frame.as_slice(), 14, &ip, &mut err).expect("an error about TCP");
            assert_eq!(err.quoted.complete, quote >= 40, "quote of {quote} bytes");
            translate(&mut err, &reply, true);
            write_back(&mut frame, &err);
            // The error the VIP itself would send about the client's own
            // segment, one hop older.
            let mut want = error_frame(vip, client, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, &sent, quote);
            want[14 + 8] -= 1;
            want[24..26].copy_from_slice(&[0, 0]);
            let check = csum::finish(csum::sum_words(&want.as_slice().load::<Ipv4Hdr>(14).unwrap(), 0));
            want[24..26].copy_from_slice(&check);
            assert_eq!(frame, want, "quote of {quote} bytes");
            assert!(csum::verifies(&frame[34..], 0), "ICMP checksum, quote of {quote} bytes");
        }
    }

    #[test]
    fn echo_udp_and_short_quotes_are_not_errors_to_translate() {
        let seg_ip = ipv4([1, 1, 1, 1], [2, 2, 2, 2], IPPROTO_TCP, 20);
        let seg = tcp_segment(&seg_ip, 1, 2, 3, 4, &[]);
        let cases: [(&str, Vec<u8>); 3] = [
            ("echo request", error_frame([3, 3, 3, 3], [1, 1, 1, 1], 8, 0, &seg, 28)),
            ("quote shorter than ports and SEQ", error_frame([3, 3, 3, 3], [1, 1, 1, 1], 3, 1, &seg, 27)),
            ("quote of UDP", {
                let mut f = error_frame([3, 3, 3, 3], [1, 1, 1, 1], 3, 3, &seg, 28);
                f[14 + 20 + 8 + 9] = 17;
                f
            }),
        ];
        for (what, frame) in cases {
            let ip = frame.as_slice().load::<Ipv4Hdr>(14).unwrap();
            assert!(parse_error(frame.as_slice(), 14, &ip, &mut empty()).is_none(), "{what} must not be translated");
        }
    }

    fn ipv6(saddr: [u8; 16], daddr: [u8; 16], next_header: u8, payload: usize) -> Ipv6Hdr {
        Ipv6Hdr {
            version_class_flow: [0x60, 0x0a, 0xbc, 0xde],
            payload_len: (payload as u16).to_be_bytes(),
            next_header,
            hop_limit: 61,
            saddr,
            daddr,
        }
    }

    fn ones_complement(bytes: &[u8], acc: u32) -> [u8; 2] {
        let mut acc = acc;
        for c in bytes.chunks(2) {
            acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        csum::finish(acc)
    }

    fn tcp_segment_v6(ip: &Ipv6Hdr, sport: u16, dport: u16, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let tcp = TcpHdr {
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            seq: seq.to_be_bytes(),
            ack: ack.to_be_bytes(),
            doff_res: 5 << 4,
            flags: crate::net::TCP_ACK,
            window: 502u16.to_be_bytes(),
            check: [0, 0],
            urg: [0, 0],
        };
        let mut l4 = tcp.as_bytes().to_vec();
        l4.extend_from_slice(payload);
        let pseudo = csum::tcp_pseudo_sum_v6(&ip.saddr, &ip.daddr, l4.len() as u16);
        let check = ones_complement(&l4, pseudo);
        l4[16..18].copy_from_slice(&check);
        let mut out = ip.as_bytes().to_vec();
        out.extend_from_slice(&l4);
        out
    }

    /// An Ethernet frame holding an ICMPv6 error from `from` to `to` that
    /// quotes `quote` bytes of `segment`.
    fn error_frame_v6(from: [u8; 16], to: [u8; 16], kind: u8, code: u8, segment: &[u8], quote: usize) -> Vec<u8> {
        let quote = &segment[..quote.min(segment.len())];
        let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0x00];
        icmp.extend_from_slice(quote);
        let pseudo = csum::pseudo_sum_v6(&from, &to, IPPROTO_ICMPV6, icmp.len() as u16);
        let check = ones_complement(&icmp, pseudo);
        icmp[2..4].copy_from_slice(&check);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x86, 0xdd]);
        frame.extend_from_slice(ipv6(from, to, IPPROTO_ICMPV6, icmp.len()).as_bytes());
        frame.extend_from_slice(&icmp);
        frame
    }

    fn empty_v6() -> Icmp6Error {
        let icmp = IcmpHdr { kind: 0, code: 0, check: [0; 2], rest: [0; 4] };
        let tcp = TcpPorts { sport: [0; 2], dport: [0; 2], seq: [0; 4] }.header();
        Icmp6Error {
            l3_off: 0,
            hop_limit: 0,
            outer_sum: 0,
            icmp_off: 0,
            icmp,
            inner_off: 0,
            inner_saddr: [0; 4],
            inner_daddr: [0; 4],
            inner_l4_off: 0,
            quoted: QuotedTcp { tcp, complete: false },
        }
    }

    /// What the gate writes back: `reply`'s addresses, outside and (in
    /// reverse) inside, and the translated fields.
    fn write_back_v6(frame: &mut [u8], err: &Icmp6Error, reply: &SpliceEntry<[u32; 4]>) {
        let (outer, inner) = (err.outer_saddr_off(), err.inner_saddr_off());
        frame[outer..outer + 16].copy_from_slice(&crate::abi::v6_bytes(&reply.saddr));
        frame[outer + 16..outer + 32].copy_from_slice(&crate::abi::v6_bytes(&reply.daddr));
        frame[err.l3_off + 7] = err.hop_limit;
        frame[err.icmp_off..err.icmp_off + 8].copy_from_slice(err.icmp.as_bytes());
        frame[inner..inner + 16].copy_from_slice(&crate::abi::v6_bytes(&err.inner_saddr));
        frame[inner + 16..inner + 32].copy_from_slice(&crate::abi::v6_bytes(&err.inner_daddr));
        let n = if err.quoted.complete { 20 } else { 8 };
        frame[err.inner_l4_off..err.inner_l4_off + n].copy_from_slice(&err.quoted.tcp.as_bytes()[..n]);
    }

    #[test]
    fn an_icmpv6_error_about_a_client_segment_quotes_what_the_client_sent() {
        let v6 = |last: u8| [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last];
        let (client, vip, target, router) = (v6(7), v6(1), v6(0x42), v6(0xfe));
        let sent =
            tcp_segment_v6(&ipv6(client, vip, IPPROTO_TCP, 20 + 1400), 40000, 443, 77, 0x2000_0001, &[0xab; 1400]);
        let forwarded =
            tcp_segment_v6(&ipv6(client, target, IPPROTO_TCP, 20 + 1400), 40000, 8080, 77, 0x1000_0001, &[0xab; 1400]);
        // The target → client entry: shown to the client as the VIP.
        let reply = SpliceEntry::<[u32; 4]> {
            saddr: v6_words(vip),
            daddr: v6_words(client),
            sport: 443u16.to_be(),
            dport: 40000u16.to_be(),
            seq_shift: 0x1000_0000,
            ..Default::default()
        };
        for (kind, quote) in [(ICMPV6_PKT_TOOBIG, 48), (ICMPV6_DEST_UNREACH, 60), (ICMPV6_TIME_EXCEED, 1232)] {
            let mut frame = error_frame_v6(router, client, kind, 0, &forwarded, quote);
            let ip = frame.as_slice().load::<Ipv6Hdr>(14).unwrap();
            let mut err = empty_v6();
            parse_error_v6(frame.as_slice(), 14, &ip, 54, &mut err).expect("an ICMPv6 error about TCP");
            assert_eq!(err.quoted.complete, quote >= 60, "quote of {quote} bytes");
            assert_eq!((err.inner_saddr, err.inner_daddr), (v6_words(client), v6_words(target)));
            translate_v6(&mut err, &reply, true);
            write_back_v6(&mut frame, &err, &reply);
            // The error the VIP itself would send about the client's own
            // segment, one hop older.
            let mut want = error_frame_v6(vip, client, kind, 0, &sent, quote);
            want[14 + 7] -= 1;
            assert_eq!(frame, want, "type {kind}, quote of {quote} bytes");
        }
    }

    #[test]
    fn informational_icmpv6_and_quotes_of_other_protocols_are_not_errors_to_translate() {
        let (a, b) = ([1; 16], [2; 16]);
        let seg = tcp_segment_v6(&ipv6(a, b, IPPROTO_TCP, 20), 1, 2, 3, 4, &[]);
        let cases: [(&str, Vec<u8>); 4] = [
            ("echo request", error_frame_v6([3; 16], a, 128, 0, &seg, 48)),
            ("neighbour solicitation", error_frame_v6([3; 16], a, 135, 0, &seg, 48)),
            ("quote shorter than ports and SEQ", error_frame_v6([3; 16], a, ICMPV6_DEST_UNREACH, 4, &seg, 47)),
            ("quote of UDP", {
                let mut f = error_frame_v6([3; 16], a, ICMPV6_DEST_UNREACH, 4, &seg, 48);
                f[14 + 40 + 8 + 6] = 17;
                f
            }),
        ];
        for (what, frame) in cases {
            let ip = frame.as_slice().load::<Ipv6Hdr>(14).unwrap();
            let parsed = parse_error_v6(frame.as_slice(), 14, &ip, 54, &mut empty_v6());
            assert!(parsed.is_none(), "{what} must not be translated");
        }
    }

    #[test]
    fn frag_needed_quotes_the_segment_and_verifies() {
        let ip = ipv4([198, 51, 100, 7], [203, 0, 113, 1], IPPROTO_TCP, 1480);
        let seg = tcp_segment(&ip, 40000, 443, 9, 10, &[0; 1460]);
        let tcp = seg.as_slice().load::<TcpHdr>(20).unwrap();
        let packet = frag_needed(&ip, &tcp, 1400);
        let bytes = packet.as_bytes();
        assert_eq!(&bytes[12..16], &[203, 0, 113, 1], "from the address the segment was sent to");
        assert_eq!(&bytes[16..20], &[198, 51, 100, 7], "to its source");
        assert!(csum::verifies(&bytes[..20], 0), "IPv4 checksum");
        assert!(csum::verifies(&bytes[20..], 0), "ICMP checksum");
        assert_eq!(&bytes[20..22], &[ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED], "type and code");
        assert_eq!(u16::from_be_bytes([bytes[26], bytes[27]]), 1400, "next-hop MTU");
        assert_eq!(&bytes[28..56], &seg[..28], "the segment's header and first 8 TCP bytes");
    }

    #[test]
    fn packet_too_big_quotes_the_segment_and_verifies() {
        let (client, vip) = ([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7], [0xfd; 16]);
        let ip = Ipv6Hdr {
            version_class_flow: [0x60, 0x01, 0x23, 0x45],
            payload_len: 1460u16.to_be_bytes(),
            // As if an 8-byte destination options header came first: the
            // quote says TCP follows at once, with the TCP part's length.
            next_header: 60,
            hop_limit: 61,
            saddr: client,
            daddr: vip,
        };
        let tcp = TcpHdr {
            sport: 40000u16.to_be_bytes(),
            dport: 443u16.to_be_bytes(),
            seq: 9u32.to_be_bytes(),
            ack: 10u32.to_be_bytes(),
            doff_res: 5 << 4,
            flags: crate::net::TCP_ACK,
            window: [1, 0],
            check: [0xab, 0xcd],
            urg: [0, 0],
        };
        let packet = packet_too_big(&ip, &tcp, 1452, 1400);
        let bytes = packet.as_bytes();
        assert_eq!(bytes.len(), 96, "IPv6 header, ICMPv6 header, quoted IPv6 header and 8 TCP bytes");
        assert_eq!(bytes[0] >> 4, 6);
        assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), 56, "payload length");
        assert_eq!((bytes[6], bytes[7]), (IPPROTO_ICMPV6, 64), "next header and hop limit");
        assert_eq!(&bytes[8..24], &vip, "from the address the segment was sent to");
        assert_eq!(&bytes[24..40], &client, "to its source");
        assert_eq!((bytes[40], bytes[41]), (ICMPV6_PKT_TOOBIG, 0), "type and code");
        assert_eq!(u32::from_be_bytes([bytes[44], bytes[45], bytes[46], bytes[47]]), 1400, "next-hop MTU");
        let pseudo = csum::pseudo_sum_v6(&vip, &client, IPPROTO_ICMPV6, 56);
        assert!(csum::verifies(&bytes[40..], pseudo), "ICMPv6 checksum over the pseudo-header");
        let quoted = &bytes[48..88];
        assert_eq!(&quoted[..4], &ip.version_class_flow, "the segment's first word");
        assert_eq!(u16::from_be_bytes([quoted[4], quoted[5]]), 1452, "the TCP part's length");
        assert_eq!(quoted[6], IPPROTO_TCP, "TCP follows the quoted header");
        assert_eq!((&quoted[8..24], &quoted[24..40]), (&client[..], &vip[..]), "the segment's addresses");
        assert_eq!(&bytes[88..96], &tcp.as_bytes()[..8], "ports and SEQ");
    }
}
