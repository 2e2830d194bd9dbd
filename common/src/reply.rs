//! Headers the gate sends back out of the interface it received on: the
//! cookie SYN/ACK (byte for byte what the gateway kernel itself would send
//! for the same SYN, see `SynAckProfile`) and the policy RST, for IPv4 and
//! IPv6. Built from the parsed request into a [`Reply`] the caller owns
//! (map memory in the gate: an IPv6 reply on the BPF stack, with the
//! request's copy, does not fit it), so that the same code is exercised
//! by host tests.
//!
//! Replies always carry a fresh IP header (the request's IPv4 options or
//! IPv6 extension headers are not echoed, as Linux does not echo them
//! either) and keep the request's L2 header, VLAN tags included, with the
//! MAC addresses swapped.

use crate::csum;
use crate::net::{IpHeader, Ipv4Hdr, Ipv6Hdr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, Wire};
use crate::option::{
    TCPOLEN_MSS, TCPOLEN_SACK_PERM, TCPOLEN_TIMESTAMP, TCPOLEN_WINDOW, TCPOPT_MSS, TCPOPT_NOP, TCPOPT_SACK_PERM,
    TCPOPT_TIMESTAMP, TCPOPT_WINDOW,
};

/// Default TTL of Linux (net.ipv4.ip_default_ttl), so replies look like the
/// host's own.
pub const REPLY_TTL: u8 = 64;
/// IPv4 "don't fragment", as Linux sets on TCP.
/// TCP flags ECE and CWR (RFC 3168).
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// A TCP header followed by `N` bytes of options (`N` a multiple of 4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpWithOptions<const N: usize> {
    pub tcp: TcpHdr,
    pub opts: [u8; N],
}

unsafe impl<const N: usize> Wire for TcpWithOptions<N> {}

/// A whole reply from the IP header on: what the gate writes over the
/// request.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<I, const N: usize> {
    pub ip: I,
    pub tcp: TcpWithOptions<N>,
}

unsafe impl<I: Wire, const N: usize> Wire for Reply<I, N> {}

/// The largest reply: an IPv6 header and a TCP header with 20 bytes of
/// options.
pub const MAX_REPLY_BYTES: usize = core::mem::size_of::<Reply<Ipv6Hdr, 20>>();

/// IPv6 flow label bits (RFC 6437).
pub const FLOW_LABEL_MASK: u32 = 0x000f_ffff;

/// The header a family puts on a TCP segment the host sends itself.
pub trait ReplyHeader: IpHeader {
    /// The header of a reply of `tcp_len` bytes to a packet with header
    /// `req` (addresses swapped), with DSCP/ECN `dsfield` and, for IPv6,
    /// `flow_label`.
    fn tcp_reply(req: &Self, tcp_len: usize, dsfield: u8, flow_label: u32) -> Self;
}

impl ReplyHeader for Ipv4Hdr {
    #[inline(always)]
    fn tcp_reply(req: &Self, tcp_len: usize, dsfield: u8, _flow_label: u32) -> Self {
        let mut ip = tcp_ipv4_header(req.daddr, req.saddr, tcp_len);
        if dsfield != 0 {
            let old = csum::word2([ip.version_ihl, ip.tos]);
            ip.tos = dsfield;
            ip.check = csum::replace(ip.check, old, csum::word2([ip.version_ihl, ip.tos]));
        }
        ip
    }
}

impl ReplyHeader for Ipv6Hdr {
    #[inline(always)]
    fn tcp_reply(req: &Self, tcp_len: usize, dsfield: u8, flow_label: u32) -> Self {
        tcp_ipv6_header(req.daddr, req.saddr, tcp_len, dsfield, flow_label)
    }
}

/// The IPv6 header Linux puts on a TCP segment of `tcp_len` bytes the host
/// sends itself: no extension headers, hop limit 64 (the default
/// net.ipv6.conf.*.hop_limit).
#[inline(always)]
pub fn tcp_ipv6_header(saddr: [u8; 16], daddr: [u8; 16], tcp_len: usize, dsfield: u8, flow_label: u32) -> Ipv6Hdr {
    let word = 6u32 << 28 | (dsfield as u32) << 20 | (flow_label & FLOW_LABEL_MASK);
    Ipv6Hdr {
        version_class_flow: word.to_be_bytes(),
        payload_len: (tcp_len as u16).to_be_bytes(),
        next_header: crate::net::IPPROTO_TCP,
        hop_limit: REPLY_TTL,
        saddr,
        daddr,
    }
}

/// The flow label of a reset answering a packet between `a` and `b`
/// (address words and port fields): Linux hashes a socketless reply's flow
/// with a boot-time key, the same either way round
/// (__flow_hash_consistentify in net/core/flow_dissector.c, then
/// ip6_make_flowlabel), so repeated resets on one 4-tuple share a label.
/// Keyed here with `secret`, symmetric in the two ends.
#[inline(always)]
pub fn reset_flow_label(secret: u64, a: &[u32; 4], a_port: u16, b: &[u32; 4], b_port: u16) -> u32 {
    let end = |addr: &[u32; 4], port: u16| {
        let folded = (addr[0] as u64) << 32 | addr[1] as u64;
        let folded = crate::cookie::mix(folded ^ secret) ^ ((addr[2] as u64) << 32 | addr[3] as u64);
        crate::cookie::mix(folded ^ port as u64)
    };
    let h = end(a, a_port).wrapping_add(end(b, b_port));
    (h ^ h >> 32) as u32 & FLOW_LABEL_MASK
}

/// DSCP of a request without its ECN bits: what Linux reflects in a RST
/// (tcp_v4_send_reset through ip_send_unicast_reply, tcp_v6_send_reset).
#[inline(always)]
pub fn reflected_dscp(dsfield: u8) -> u8 {
    dsfield & !3
}

/// Cookie SYN/ACK to a SYN with timestamps and window scale.
pub type SynAckTsWs = TcpWithOptions<20>;
/// ... with timestamps, without window scale.
pub type SynAckTs = TcpWithOptions<16>;
/// ... without timestamps: MSS only.
pub type SynAckMss = TcpWithOptions<4>;

const _: () = assert!(core::mem::size_of::<SynAckTsWs>() == 40);
const _: () = assert!(core::mem::size_of::<SynAckMss>() == 24);

/// The handshake options of a SYN or SYN/ACK in the order Linux writes
/// them (`tcp_options_write`, net/ipv4/tcp_output.c): MSS; SACK-permitted +
/// timestamps, or NOP NOP + timestamps; NOP + window scale; NOP NOP +
/// SACK-permitted when there are no timestamps. Returns the bytes and how
/// many of them are used (a multiple of 4, at most 20).
///
/// `ts` is (TSval, TSecr); `wscale` is `None` to leave the option out.
#[inline(always)]
pub fn handshake_options(mss: u16, sack: bool, ts: Option<(u32, u32)>, wscale: Option<u8>) -> ([u8; 20], usize) {
    let mut o = [TCPOPT_NOP; 20];
    o[0] = TCPOPT_MSS;
    o[1] = TCPOLEN_MSS;
    o[2..4].copy_from_slice(&mss.to_be_bytes());
    let mut n = 4;
    if let Some((tsval, tsecr)) = ts {
        if sack {
            o[4] = TCPOPT_SACK_PERM;
            o[5] = TCPOLEN_SACK_PERM;
        }
        o[6] = TCPOPT_TIMESTAMP;
        o[7] = TCPOLEN_TIMESTAMP;
        o[8..12].copy_from_slice(&tsval.to_be_bytes());
        o[12..16].copy_from_slice(&tsecr.to_be_bytes());
        n = 16;
    }
    if let Some(ws) = wscale {
        o[n + 1] = TCPOPT_WINDOW;
        o[n + 2] = TCPOLEN_WINDOW;
        o[n + 3] = ws;
        n += 4;
    }
    if sack && ts.is_none() {
        o[n + 2] = TCPOPT_SACK_PERM;
        o[n + 3] = TCPOLEN_SACK_PERM;
        n += 4;
    }
    (o, n)
}

/// The IPv4 header Linux puts on a TCP segment of `tcp_len` bytes the host
/// sends itself: no options, TTL 64, DF, id 0 (a request socket's DF
/// packets, ip_build_and_send_pkt in net/ipv4/ip_output.c), checksum set.
#[inline(always)]
pub fn tcp_ipv4_header(saddr: [u8; 4], daddr: [u8; 4], tcp_len: usize) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        total_len: ((core::mem::size_of::<Ipv4Hdr>() + tcp_len) as u16).to_be_bytes(),
        id: [0, 0],
        frag: crate::net::IP_DF.to_be_bytes(),
        ttl: REPLY_TTL,
        proto: crate::net::IPPROTO_TCP,
        check: [0, 0],
        saddr,
        daddr,
    };
    ip.check = csum::finish(csum::sum_words(&ip, 0));
    ip
}

/// The SYN/ACK answering `syn` (in `ip`) with ISN `cookie`: `window`
/// unscaled (as Linux sends it), ECE when `ece`, then `opts` (from
/// [`handshake_options`], cut to `N`). DSCP 0, as a listener without
/// net.ipv4.tcp_reflect_tos sends it; `flow_label` for IPv6.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn cookie_synack<I: ReplyHeader, const N: usize>(
    ip: &I,
    syn: &TcpHdr,
    cookie: u32,
    window: u16,
    ece: bool,
    opts: &[u8; 20],
    flow_label: u32,
    out: &mut Reply<I, N>,
) {
    let len = core::mem::size_of::<TcpWithOptions<N>>();
    out.ip = I::tcp_reply(ip, len, 0, flow_label);
    out.tcp.tcp = TcpHdr {
        sport: syn.dport,
        dport: syn.sport,
        seq: cookie.to_be_bytes(),
        ack: syn.seq().wrapping_add(1).to_be_bytes(),
        doff_res: ((len / 4) as u8) << 4,
        flags: TCP_SYN | TCP_ACK | if ece { TCP_ECE } else { 0 },
        window: window.to_be_bytes(),
        check: [0, 0],
        urg: [0, 0],
    };
    let mut i = 0;
    while i < N {
        out.tcp.opts[i] = opts[i];
        i += 1;
    }
    let pseudo = out.ip.tcp_pseudo_sum(len as u16);
    out.tcp.tcp.check = csum::finish(csum::sum_words(&out.tcp, pseudo));
}

/// The RST a closed Linux port sends for an ACK-bearing segment
/// (tcp_v4_send_reset in net/ipv4/tcp_ipv4.c, tcp_v6_send_reset in
/// net/ipv6/tcp_ipv6.c: seq = SEG.ACK, RST only). Callers only use it for
/// segments with ACK set.
#[inline(always)]
pub fn reset_for_ack<I: ReplyHeader>(ip: &I, seg: &TcpHdr, flow_label: u32, out: &mut Reply<I, 0>) {
    closed_port_reset(ip, seg, seg.ack, [0; 4], TCP_RST, flow_label, out)
}

/// The RST+ACK a closed Linux port sends for a segment without ACK, such as
/// a SYN (tcp_v4_send_reset, tcp_v6_send_reset: seq 0, acknowledging the
/// SYN, any FIN and the `payload_len` bytes of data, window 0).
#[inline(always)]
pub fn reset_for_syn<I: ReplyHeader>(ip: &I, seg: &TcpHdr, payload_len: usize, flow_label: u32, out: &mut Reply<I, 0>) {
    let consumed = 1 + u32::from(seg.flags & TCP_FIN != 0) + payload_len as u32;
    let ack = seg.seq().wrapping_add(consumed).to_be_bytes();
    closed_port_reset(ip, seg, [0; 4], ack, TCP_RST | TCP_ACK, flow_label, out)
}

/// The reset's segment: no options, window 0, answering `seg`, with the
/// request's DSCP (ECN cleared) and, for IPv6, `flow_label` (Linux hashes
/// the 4-tuple: ip6_make_flowlabel on a socketless reply).
#[inline(always)]
fn closed_port_reset<I: ReplyHeader>(
    ip: &I,
    seg: &TcpHdr,
    seq: [u8; 4],
    ack: [u8; 4],
    flags: u8,
    flow_label: u32,
    out: &mut Reply<I, 0>,
) {
    let len = core::mem::size_of::<TcpHdr>();
    out.ip = I::tcp_reply(ip, len, reflected_dscp(ip.dsfield()), flow_label);
    out.tcp.tcp = TcpHdr {
        sport: seg.dport,
        dport: seg.sport,
        seq,
        ack,
        doff_res: 5 << 4,
        flags,
        window: [0, 0],
        check: [0, 0],
        urg: [0, 0],
    };
    let pseudo = out.ip.tcp_pseudo_sum(len as u16);
    out.tcp.tcp.check = csum::finish(csum::sum_words(&out.tcp, pseudo));
}

/// The ACK that completes the target's handshake, answering its SYN/ACK
/// (`synack_ip`) on behalf of the client, with timestamps, into `out` (the
/// gate's scratch map: built on the BPF stack, IPv6's took the splice
/// stage's frame past its room). IPv6's carries flow label 0: the client's
/// own label, which its segments keep through the rewrite, is not known
/// before its data arrives.
#[inline(always)]
pub fn handshake_ack_ts<I: ReplyHeader>(
    synack_ip: &I,
    synack: &TcpHdr,
    (seq, ack, window): (u32, u32, u16),
    ts: (u32, u32),
    out: &mut Reply<I, 12>,
) {
    let len = core::mem::size_of::<TcpWithOptions<12>>();
    out.ip = I::tcp_reply(synack_ip, len, 0, 0);
    out.tcp.tcp = ack_header(synack, seq, ack, window, len);
    out.tcp.opts = [TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP, 0, 0, 0, 0, 0, 0, 0, 0];
    out.tcp.opts[4..8].copy_from_slice(&ts.0.to_be_bytes());
    out.tcp.opts[8..12].copy_from_slice(&ts.1.to_be_bytes());
    let pseudo = out.ip.tcp_pseudo_sum(len as u16);
    out.tcp.tcp.check = csum::finish(csum::sum_words(&out.tcp, pseudo));
}

/// As [`handshake_ack_ts`], without timestamps.
#[inline(always)]
pub fn handshake_ack<I: ReplyHeader>(
    synack_ip: &I,
    synack: &TcpHdr,
    (seq, ack, window): (u32, u32, u16),
    out: &mut Reply<I, 0>,
) {
    let len = core::mem::size_of::<TcpHdr>();
    out.ip = I::tcp_reply(synack_ip, len, 0, 0);
    out.tcp.tcp = ack_header(synack, seq, ack, window, len);
    let pseudo = out.ip.tcp_pseudo_sum(len as u16);
    out.tcp.tcp.check = csum::finish(csum::sum_words(&out.tcp, pseudo));
}

#[inline(always)]
fn ack_header(synack: &TcpHdr, seq: u32, ack: u32, window: u16, len: usize) -> TcpHdr {
    TcpHdr {
        sport: synack.dport,
        dport: synack.sport,
        seq: seq.to_be_bytes(),
        ack: ack.to_be_bytes(),
        doff_res: ((len / 4) as u8) << 4,
        flags: TCP_ACK,
        window: window.to_be_bytes(),
        check: [0, 0],
        urg: [0, 0],
    }
}
