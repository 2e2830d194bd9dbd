//! Headers the gate sends back out of the interface it received on: the
//! cookie SYN/ACK and the policy RST. Built on the stack from the parsed
//! request so that the same code is exercised by host tests.
//!
//! Replies always carry a fresh 20-byte IPv4 header (the request's IP options
//! are not echoed, as Linux does not echo them either) and keep the request's
//! L2 header, VLAN tags included, with the MAC addresses swapped.

use crate::csum;
use crate::net::{Ipv4Hdr, TCP_ACK, TCP_RST, TCP_SYN, TcpHdr, Wire};
use crate::option::{TCPOLEN_MSS, TCPOPT_MSS};

/// Default TTL of Linux (net.ipv4.ip_default_ttl), so replies look like the
/// host's own.
pub const REPLY_TTL: u8 = 64;
/// Window in the cookie SYN/ACK: what Linux offers on a 1500-byte MTU
/// (45 * 1448, tcp_select_initial_window) without window scaling.
pub const SYNACK_WINDOW: u16 = 64240;
/// IPv4 "don't fragment", as Linux sets on TCP.
const IP_DF: u16 = 0x4000;

/// TCP header of the cookie SYN/ACK: 20 bytes + the MSS option.
///
/// Window scale, SACK-permitted and timestamps are left out: a stateless
/// cookie cannot remember them unless it hides them in the timestamp (as
/// the kernel does), and the splice later forwards the client's own options
/// to the target. See docs/gate.md.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAckTcp {
    pub tcp: TcpHdr,
    pub mss: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<SynAckTcp>() == 24);
unsafe impl Wire for SynAckTcp {}

#[inline(always)]
fn reply_ip(req: &Ipv4Hdr, tcp_len: usize) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        total_len: ((core::mem::size_of::<Ipv4Hdr>() + tcp_len) as u16).to_be_bytes(),
        id: [0, 0],
        frag: IP_DF.to_be_bytes(),
        ttl: REPLY_TTL,
        proto: req.proto,
        check: [0, 0],
        saddr: req.daddr,
        daddr: req.saddr,
    };
    ip.check = csum::finish(csum::sum_words(&ip, 0));
    ip
}

/// The SYN/ACK answering `syn` with ISN `cookie`, advertising `mss`.
#[inline(always)]
pub fn cookie_synack(ip: &Ipv4Hdr, syn: &TcpHdr, cookie: u32, mss: u16) -> (Ipv4Hdr, SynAckTcp) {
    let out_ip = reply_ip(ip, core::mem::size_of::<SynAckTcp>());
    let mut out = SynAckTcp {
        tcp: TcpHdr {
            sport: syn.dport,
            dport: syn.sport,
            seq: cookie.to_be_bytes(),
            ack: syn.seq().wrapping_add(1).to_be_bytes(),
            doff_res: ((core::mem::size_of::<SynAckTcp>() / 4) as u8) << 4,
            flags: TCP_SYN | TCP_ACK,
            window: SYNACK_WINDOW.to_be_bytes(),
            check: [0, 0],
            urg: [0, 0],
        },
        mss: [TCPOPT_MSS, TCPOLEN_MSS, (mss >> 8) as u8, mss as u8],
    };
    let pseudo = csum::tcp_pseudo_sum(out_ip.saddr, out_ip.daddr, core::mem::size_of::<SynAckTcp>() as u16);
    out.tcp.check = csum::finish(csum::sum_words(&out, pseudo));
    (out_ip, out)
}

/// The RST a closed Linux port sends for an ACK-bearing segment
/// (net/ipv4/tcp_ipv4.c, tcp_v4_send_reset: seq = SEG.ACK, RST only).
/// Callers only use it for segments with ACK set.
#[inline(always)]
pub fn reset_for_ack(ip: &Ipv4Hdr, seg: &TcpHdr) -> (Ipv4Hdr, TcpHdr) {
    let out_ip = reply_ip(ip, core::mem::size_of::<TcpHdr>());
    let mut out = TcpHdr {
        sport: seg.dport,
        dport: seg.sport,
        seq: seg.ack,
        ack: [0; 4],
        doff_res: 5 << 4,
        flags: TCP_RST,
        window: [0, 0],
        check: [0, 0],
        urg: [0, 0],
    };
    let pseudo = csum::tcp_pseudo_sum(out_ip.saddr, out_ip.daddr, core::mem::size_of::<TcpHdr>() as u16);
    out.check = csum::finish(csum::sum_words(&out, pseudo));
    (out_ip, out)
}
