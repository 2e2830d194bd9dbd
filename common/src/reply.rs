//! Headers the gate sends back out of the interface it received on: the
//! cookie SYN/ACK (byte for byte what the gateway kernel itself would send
//! for the same SYN, see `SynAckProfile`) and the policy RST. Built on the stack from the parsed
//! request so that the same code is exercised by host tests.
//!
//! Replies always carry a fresh 20-byte IPv4 header (the request's IP options
//! are not echoed, as Linux does not echo them either) and keep the request's
//! L2 header, VLAN tags included, with the MAC addresses swapped.

use crate::csum;
use crate::net::{Ipv4Hdr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, Wire};
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

#[inline(always)]
fn reply_ip(req: &Ipv4Hdr, tcp_len: usize) -> Ipv4Hdr {
    tcp_ipv4_header(req.daddr, req.saddr, tcp_len)
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

/// The SYN/ACK answering `syn` with ISN `cookie`: `window` unscaled (as
/// Linux sends it), ECE when `ece`, then `opts` (from
/// [`handshake_options`], cut to `N`).
#[inline(always)]
pub fn cookie_synack<const N: usize>(
    ip: &Ipv4Hdr,
    syn: &TcpHdr,
    cookie: u32,
    window: u16,
    ece: bool,
    opts: &[u8; 20],
) -> (Ipv4Hdr, TcpWithOptions<N>) {
    let len = core::mem::size_of::<TcpWithOptions<N>>();
    let out_ip = reply_ip(ip, len);
    let mut out = TcpWithOptions {
        tcp: TcpHdr {
            sport: syn.dport,
            dport: syn.sport,
            seq: cookie.to_be_bytes(),
            ack: syn.seq().wrapping_add(1).to_be_bytes(),
            doff_res: ((len / 4) as u8) << 4,
            flags: TCP_SYN | TCP_ACK | if ece { TCP_ECE } else { 0 },
            window: window.to_be_bytes(),
            check: [0, 0],
            urg: [0, 0],
        },
        opts: [0; N],
    };
    let mut i = 0;
    while i < N {
        out.opts[i] = opts[i];
        i += 1;
    }
    let pseudo = csum::tcp_pseudo_sum(out_ip.saddr, out_ip.daddr, len as u16);
    out.tcp.check = csum::finish(csum::sum_words(&out, pseudo));
    (out_ip, out)
}

/// The RST a closed Linux port sends for an ACK-bearing segment
/// (net/ipv4/tcp_ipv4.c, tcp_v4_send_reset: seq = SEG.ACK, RST only).
/// Callers only use it for segments with ACK set.
#[inline(always)]
pub fn reset_for_ack(ip: &Ipv4Hdr, seg: &TcpHdr) -> (Ipv4Hdr, TcpHdr) {
    closed_port_reset(ip, seg, seg.ack, [0; 4], TCP_RST)
}

/// The RST+ACK a closed Linux port sends for a segment without ACK, such as
/// a SYN (net/ipv4/tcp_ipv4.c, tcp_v4_send_reset: seq 0, acknowledging
/// the SYN, any FIN and the `payload_len` bytes of data, window 0).
#[inline(always)]
pub fn reset_for_syn(ip: &Ipv4Hdr, seg: &TcpHdr, payload_len: usize) -> (Ipv4Hdr, TcpHdr) {
    let consumed = 1 + u32::from(seg.flags & TCP_FIN != 0) + payload_len as u32;
    closed_port_reset(ip, seg, [0; 4], seg.seq().wrapping_add(consumed).to_be_bytes(), TCP_RST | TCP_ACK)
}

/// tcp_v4_send_reset's segment: no options, window 0, answering `seg`.
#[inline(always)]
fn closed_port_reset(ip: &Ipv4Hdr, seg: &TcpHdr, seq: [u8; 4], ack: [u8; 4], flags: u8) -> (Ipv4Hdr, TcpHdr) {
    let out_ip = reply_ip(ip, core::mem::size_of::<TcpHdr>());
    let mut out = TcpHdr {
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
    let pseudo = csum::tcp_pseudo_sum(out_ip.saddr, out_ip.daddr, core::mem::size_of::<TcpHdr>() as u16);
    out.check = csum::finish(csum::sum_words(&out, pseudo));
    (out_ip, out)
}

/// The ACK that completes the target's handshake, answering its SYN/ACK
/// (`synack_ip`) on behalf of the client, with timestamps.
#[inline(always)]
pub fn handshake_ack_ts(
    synack_ip: &Ipv4Hdr,
    synack: &TcpHdr,
    seq: u32,
    ack: u32,
    window: u16,
    ts: (u32, u32),
) -> (Ipv4Hdr, TcpWithOptions<12>) {
    let len = core::mem::size_of::<TcpWithOptions<12>>();
    let out_ip = reply_ip(synack_ip, len);
    let mut opts = [TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, TCPOLEN_TIMESTAMP, 0, 0, 0, 0, 0, 0, 0, 0];
    opts[4..8].copy_from_slice(&ts.0.to_be_bytes());
    opts[8..12].copy_from_slice(&ts.1.to_be_bytes());
    let mut out = TcpWithOptions { tcp: ack_header(synack, seq, ack, window, len), opts };
    let pseudo = csum::tcp_pseudo_sum(out_ip.saddr, out_ip.daddr, len as u16);
    out.tcp.check = csum::finish(csum::sum_words(&out, pseudo));
    (out_ip, out)
}

/// As [`handshake_ack_ts`], without timestamps.
#[inline(always)]
pub fn handshake_ack(synack_ip: &Ipv4Hdr, synack: &TcpHdr, seq: u32, ack: u32, window: u16) -> (Ipv4Hdr, TcpHdr) {
    let len = core::mem::size_of::<TcpHdr>();
    let out_ip = reply_ip(synack_ip, len);
    let mut out = ack_header(synack, seq, ack, window, len);
    let pseudo = csum::tcp_pseudo_sum(out_ip.saddr, out_ip.daddr, len as u16);
    out.check = csum::finish(csum::sum_words(&out, pseudo));
    (out_ip, out)
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
