//! The splice (docs/design.md §2 step 7): how a spliced segment's headers are
//! rewritten, and how the two directions' entries are set up and completed.
//!
//! The client's connection was accepted by the gate's cookie SYN/ACK (ISN =
//! cookie, TSval = cookie clock); the target's by the SYN the control plane
//! sent with the client's own ISN and options. So:
//! - client → target: SEQ unchanged (the target saw the client's ISN);
//!   ACK and SACK edges + (target ISN − cookie); TSecr + (target TSval −
//!   cookie TSval);
//! - target → client: SEQ − (target ISN − cookie); TSval likewise; ACK,
//!   SACK edges and TSecr unchanged;
//! - windows rescaled where the two sides scale differently;
//! - addresses and ports VIP ↔ target (and client ↔ source-NAT address);
//! - checksums updated incrementally (RFC 1624).
//!
//! This is what netfilter's SYNPROXY + seqadj do
//! (net/netfilter/nf_synproxy_core.c, nf_conntrack_seqadj.c), in XDP and
//! without conntrack. The same functions run in the XDP program, in the
//! control plane (held segments it injects after the splice) and in the
//! host property tests.

use crate::abi::{
    FlowKey, HandshakeInfo, SPLICE_CONNECTING, SPLICE_ESTABLISHED, SPLICE_F_TO_TARGET, SPLICE_F_TS_SENT,
    SPLICE_F_WS_SENT, SpliceAddr, SpliceEntry, SpliceKey, v6_bytes, v6_words,
};
use crate::csum::{self, word2, word4};
use crate::net::{Ipv4Hdr, Ipv6Hdr, TCP_ACK, TCP_FIN, TCP_SYN, TcpHdr};
use crate::option::{NO_WSCALE, OptionBytes};

/// Rewrites one segment for the entry of its direction: addresses, ports,
/// SEQ, ACK, window, the timestamp option and SACK blocks, with the TCP
/// checksum (and IPv4's header checksum) updated incrementally. `opts`
/// holds the segment's options (empty when it has none); returns whether
/// they changed and must be written back. `forwarding` decrements the TTL or hop limit (the
/// gate routes the segment itself; on the kernel-forwarding path the stack
/// does it).
#[inline(always)]
pub fn rewrite<I: SpliceHeader>(
    ip: &mut I,
    tcp: &mut TcpHdr,
    opts: &mut OptionBytes,
    e: &SpliceEntry<I::EntryAddr>,
    forwarding: bool,
) -> bool {
    // Only segments with options pay for summing them.
    let (opts_old, opts_changed) = if opts.len == 0 {
        (0, false)
    } else {
        (opts.word_sum(), opts.shift_for_splice(e.tsval_add(), e.tsecr_add(), e.ack_add()))
    };
    let opts_new = if opts_changed { opts.word_sum() } else { opts_old };
    I::rewrite_headers(ip, tcp, e, forwarding, opts_old, opts_new);
    opts_changed
}

/// The option block of nearly every segment of a connection with
/// timestamps: NOP, NOP, timestamp (RFC 7323 appendix A; Linux sends
/// exactly this on every segment without SACK blocks).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlignedTimestamp {
    pub nops: [u8; 2],
    pub kind: u8,
    pub len: u8,
    pub tsval: [u8; 4],
    pub tsecr: [u8; 4],
}

unsafe impl crate::net::Wire for AlignedTimestamp {}

const _: () = assert!(core::mem::size_of::<AlignedTimestamp>() == 12);

impl AlignedTimestamp {
    #[inline(always)]
    pub fn is_aligned_timestamp(&self) -> bool {
        self.nops == [crate::option::TCPOPT_NOP; 2]
            && self.kind == crate::option::TCPOPT_TIMESTAMP
            && self.len == crate::option::TCPOLEN_TIMESTAMP
    }
}

/// [`rewrite`] for a segment whose options are exactly an
/// [`AlignedTimestamp`]: the data path's fast path, with no option walk
/// and no copy of the options.
#[inline(always)]
pub fn rewrite_aligned_timestamp<I: SpliceHeader>(
    ip: &mut I,
    tcp: &mut TcpHdr,
    ts: &mut AlignedTimestamp,
    e: &SpliceEntry<I::EntryAddr>,
    forwarding: bool,
) {
    let old = csum::sum_words(&ts.tsval, 0) + csum::sum_words(&ts.tsecr, 0);
    ts.tsval = u32::from_be_bytes(ts.tsval).wrapping_add(e.tsval_add()).to_be_bytes();
    ts.tsecr = u32::from_be_bytes(ts.tsecr).wrapping_add(e.tsecr_add()).to_be_bytes();
    let new = csum::sum_words(&ts.tsval, 0) + csum::sum_words(&ts.tsecr, 0);
    I::rewrite_headers(ip, tcp, e, forwarding, old, new);
}

/// The sum of the TCP header words the rewrite changes.
macro_rules! tcp_word_sum {
    ($tcp:ident) => {
        word2($tcp.sport) + word2($tcp.dport) + word4($tcp.seq) + word4($tcp.ack) + word2($tcp.window)
    };
}

/// Ports, SEQ, ACK (when the segment carries one) and the window, for the
/// entry's direction. Macros rather than functions, expanded in place in
/// each family's body: as functions, even inlined, they changed how
/// IPv4's rewrite compiled (see [`SpliceHeader`]).
macro_rules! rewrite_tcp_fields {
    ($tcp:ident, $e:ident) => {
        $tcp.sport = $e.sport.to_ne_bytes();
        $tcp.dport = $e.dport.to_ne_bytes();
        $tcp.seq = $tcp.seq().wrapping_add($e.seq_add()).to_be_bytes();
        if $tcp.flags & TCP_ACK != 0 {
            $tcp.ack = $tcp.ack_seq().wrapping_add($e.ack_add()).to_be_bytes();
        }
        if $e.wnd_shl | $e.wnd_shr != 0 {
            $tcp.window = rescale_window(u16::from_be_bytes($tcp.window), $e.wnd_shl, $e.wnd_shr).to_be_bytes();
        }
    };
}

/// What the rewrite does to each family's fixed headers. Each family's
/// body is written out in the order of its reads and writes, its TCP part
/// expanded in place: with helpers or header accessors, IPv4's compiled
/// differently and 6.1's verifier took 14k to 24k more instructions on the
/// gate (measured on the embedded object).
pub trait SpliceHeader {
    /// An address as the family's splice entries hold it.
    type EntryAddr: SpliceAddr;
    /// The fixed headers' part of the rewrite; `opts_old` and `opts_new`
    /// are the word sums of whatever option bytes changed, before and
    /// after. The checksums are updated from the changed words alone:
    /// summing whole headers twice costs more instructions, and more BPF
    /// stack than the data path's stage can spare.
    fn rewrite_headers(
        ip: &mut Self,
        tcp: &mut TcpHdr,
        e: &SpliceEntry<Self::EntryAddr>,
        forwarding: bool,
        opts_old: u32,
        opts_new: u32,
    );
}

impl SpliceHeader for Ipv4Hdr {
    type EntryAddr = u32;
    #[inline(always)]
    fn rewrite_headers(
        ip: &mut Self,
        tcp: &mut TcpHdr,
        e: &SpliceEntry<u32>,
        forwarding: bool,
        opts_old: u32,
        opts_new: u32,
    ) {
        let addrs_old = word4(ip.saddr) + word4(ip.daddr);
        let ttl_old = word2([ip.ttl, ip.proto]);
        let tcp_old = tcp_word_sum!(tcp);

        ip.saddr = e.saddr.to_ne_bytes();
        ip.daddr = e.daddr.to_ne_bytes();
        if forwarding {
            ip.ttl = ip.ttl.wrapping_sub(1);
        }
        rewrite_tcp_fields!(tcp, e);

        let addrs_new = word4(ip.saddr) + word4(ip.daddr);
        let ttl_new = word2([ip.ttl, ip.proto]);
        let tcp_new = tcp_word_sum!(tcp);
        ip.check = csum::replace(ip.check, addrs_old + ttl_old, addrs_new + ttl_new);
        // The addresses count again for the TCP pseudo-header.
        tcp.check = csum::replace(tcp.check, addrs_old + tcp_old + opts_old, addrs_new + tcp_new + opts_new);
    }
}

/// What IPv6's rewrite needs of the fixed header: the checksum sum of
/// its addresses and its hop limit. The new addresses are the entry's,
/// which the gate writes to the packet straight from the map: copied
/// through registers, the 32 address bytes are single-byte loads and
/// stores on BPF, each spilled first, which took the splice's frame past
/// the verifier's 512 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Rewrite {
    /// The one's-complement sum of the addresses, big-endian.
    pub addr_sum: u32,
    pub hop_limit: u8,
}

impl Ipv6Rewrite {
    #[inline(always)]
    pub fn of(ip: &Ipv6Hdr) -> Self {
        let addr_sum = csum::words_sum(&v6_words(ip.saddr)) + csum::words_sum(&v6_words(ip.daddr));
        Self { addr_sum, hop_limit: ip.hop_limit }
    }
}

impl SpliceHeader for Ipv6Rewrite {
    type EntryAddr = [u32; 4];
    /// No header checksum, and the hop limit is in no pseudo-header.
    #[inline(always)]
    fn rewrite_headers(
        ip: &mut Self,
        tcp: &mut TcpHdr,
        e: &SpliceEntry<[u32; 4]>,
        forwarding: bool,
        opts_old: u32,
        opts_new: u32,
    ) {
        let addrs_old = ip.addr_sum;
        let tcp_old = tcp_word_sum!(tcp);

        if forwarding {
            ip.hop_limit = ip.hop_limit.wrapping_sub(1);
        }
        rewrite_tcp_fields!(tcp, e);

        let addrs_new = csum::words_sum(&e.saddr) + csum::words_sum(&e.daddr);
        ip.addr_sum = addrs_new;
        let tcp_new = tcp_word_sum!(tcp);
        tcp.check = csum::replace(tcp.check, addrs_old + tcp_old + opts_old, addrs_new + tcp_new + opts_new);
    }
}

/// The wire header, through [`Ipv6Rewrite`] (the control plane's held
/// segments and the tests).
impl SpliceHeader for Ipv6Hdr {
    type EntryAddr = [u32; 4];
    #[inline(always)]
    fn rewrite_headers(
        ip: &mut Self,
        tcp: &mut TcpHdr,
        e: &SpliceEntry<[u32; 4]>,
        forwarding: bool,
        opts_old: u32,
        opts_new: u32,
    ) {
        let mut fields = Ipv6Rewrite::of(ip);
        Ipv6Rewrite::rewrite_headers(&mut fields, tcp, e, forwarding, opts_old, opts_new);
        ip.saddr = v6_bytes(&e.saddr);
        ip.daddr = v6_bytes(&e.daddr);
        ip.hop_limit = fields.hop_limit;
    }
}

/// `(raw << shl) >> shr`, rounded up so that an open window never becomes
/// a zero window, and at most 65535.
#[inline(always)]
pub fn rescale_window(raw: u16, shl: u8, shr: u8) -> u16 {
    let v = (raw as u64) << (shl & 15);
    let shr = shr & 15;
    let out = (v + (1u64 << shr) - 1) >> shr;
    if out > 0xffff { 0xffff } else { out as u16 }
}

/// Advances `seq_next` past a segment (its payload, SYN and FIN), never
/// backwards (retransmissions).
#[inline(always)]
pub fn advance_seq_next<A>(e: &mut SpliceEntry<A>, tcp: &TcpHdr, payload_len: usize) {
    let mut end = tcp.seq().wrapping_add(payload_len as u32);
    if tcp.flags & (TCP_SYN | TCP_FIN) != 0 {
        end = end.wrapping_add(1);
    }
    if (end.wrapping_sub(e.seq_next) as i32) > 0 {
        e.seq_next = end;
    }
}

/// What the control plane writes when it sends the target its SYN.
#[derive(Clone, Copy, Debug)]
pub struct SpliceSetup {
    /// The client's flow (client → VIP).
    pub client: FlowKey,
    /// Where the target sees the connection come from (the client itself,
    /// or the gateway's source-NAT address and port).
    pub source_addr: [u32; 4],
    pub source_port: u16,
    pub target_addr: [u32; 4],
    pub target_port: u16,
    pub client_isn: u32,
    pub cookie_isn: u32,
    pub handshake: HandshakeInfo,
    /// The window scale the cookie SYN/ACK offered.
    pub gateway_wscale: u8,
    pub owner: crate::abi::FlowOwner,
}

impl SpliceSetup {
    /// Key of the target → client entry: the target's replies.
    pub fn target_key<A: SpliceAddr>(&self) -> SpliceKey<A> {
        SpliceKey {
            saddr: A::from_words(self.target_addr),
            daddr: A::from_words(self.source_addr),
            sport: self.target_port,
            dport: self.source_port,
        }
    }

    /// Key of the client → target entry: the client's segments.
    pub fn client_key<A: SpliceAddr>(&self) -> SpliceKey<A> {
        SpliceKey {
            saddr: A::from_words(self.client.saddr),
            daddr: A::from_words(self.client.daddr),
            sport: self.client.sport,
            dport: self.client.dport,
        }
    }

    /// Whether the client and the gate agreed on window scaling (the
    /// cookie SYN/ACK offers it exactly when the client did, with
    /// timestamps).
    fn client_scales(&self) -> bool {
        self.handshake.wscale != NO_WSCALE && self.handshake.ts_ok != 0
    }

    /// The options the splice's SYN offers the target: the client's own.
    pub fn syn_wscale(&self) -> Option<u8> {
        self.client_scales().then_some(self.handshake.wscale)
    }

    /// Both entries in the connecting state: (client → target,
    /// target → client).
    pub fn connecting<A: SpliceAddr>(&self) -> (SpliceEntry<A>, SpliceEntry<A>) {
        let hs = &self.handshake;
        let mut flags = 0;
        if self.client_scales() {
            flags |= SPLICE_F_WS_SENT;
        }
        if hs.ts_ok != 0 {
            flags |= SPLICE_F_TS_SENT;
        }
        let client_shift = if self.client_scales() { hs.wscale } else { 0 };
        let to_target = SpliceEntry {
            saddr: A::from_words(self.source_addr),
            daddr: A::from_words(self.target_addr),
            sport: self.source_port,
            dport: self.target_port,
            wnd_shl: client_shift,
            // The target scales the client's window alike if it agrees to
            // window scaling; `complete` clears this if it does not.
            wnd_shr: client_shift,
            state: SPLICE_CONNECTING,
            flags: flags | SPLICE_F_TO_TARGET,
            seq_next: self.client_isn.wrapping_add(1),
            aux: hs.client_tsval,
            owner_tag: self.owner.user_tag,
            ..SpliceEntry::default()
        };
        let to_client = SpliceEntry {
            saddr: A::from_words(self.client.daddr),
            daddr: A::from_words(self.client.saddr),
            sport: self.client.dport,
            dport: self.client.sport,
            seq_shift: self.cookie_isn,
            ts_shift: if hs.ts_ok != 0 { hs.cookie_tsval } else { 0 },
            wnd_shr: if self.client_scales() { self.gateway_wscale } else { 0 },
            state: SPLICE_CONNECTING,
            flags,
            aux: hs.window as u32,
            owner_tag: self.owner.machine_tag,
            ..SpliceEntry::default()
        };
        (to_target, to_client)
    }
}

/// What the target's SYN/ACK agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetAnswer {
    pub isn: u32,
    /// Window scale, or `NO_WSCALE`.
    pub wscale: u8,
    /// Timestamps agreed: the SYN/ACK's TSval.
    pub tsval: Option<u32>,
}

/// The ACK that completes the target's handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletingAck {
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// (TSval, TSecr) when timestamps were agreed.
    pub ts: Option<(u32, u32)>,
}

/// Turns the connecting entries into established ones once the target's
/// SYN/ACK is in, and returns the ACK the gate sends the target.
#[inline(always)]
pub fn complete<A>(
    to_target: &mut SpliceEntry<A>,
    to_client: &mut SpliceEntry<A>,
    answer: &TargetAnswer,
) -> CompletingAck {
    let ws_ok = to_target.flags & SPLICE_F_WS_SENT != 0 && answer.wscale != NO_WSCALE;
    let (ts_ok, target_tsval) = match answer.tsval {
        Some(v) if to_target.flags & SPLICE_F_TS_SENT != 0 => (true, v),
        _ => (false, 0),
    };
    // cookie − target ISN: target sequence numbers into the client's space.
    to_client.seq_shift = to_client.seq_shift.wrapping_sub(answer.isn);
    to_target.seq_shift = 0u32.wrapping_sub(to_client.seq_shift);
    if ts_ok {
        to_client.ts_shift = to_client.ts_shift.wrapping_sub(target_tsval);
        to_target.ts_shift = 0u32.wrapping_sub(to_client.ts_shift);
    } else {
        to_client.ts_shift = 0;
        to_target.ts_shift = 0;
    }
    to_client.wnd_shl = if ws_ok { answer.wscale } else { 0 };
    if !ws_ok {
        to_target.wnd_shr = 0;
    }
    to_client.seq_next = answer.isn.wrapping_add(1);
    let ack = CompletingAck {
        seq: to_target.seq_next,
        ack: answer.isn.wrapping_add(1),
        window: rescale_window(to_client.aux as u16, to_target.wnd_shl, to_target.wnd_shr),
        ts: ts_ok.then_some((to_target.aux, target_tsval)),
    };
    to_target.aux = 0;
    to_client.aux = 0;
    to_target.state = SPLICE_ESTABLISHED;
    to_client.state = SPLICE_ESTABLISHED;
    ack
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::abi::FlowOwner;
    use crate::net::IpHeader;
    use crate::net::{Frame as _, Wire as _};
    use crate::option::{MAX_OPTION_BYTES, OptionBytes};
    use proptest::prelude::*;

    const CLIENT: [u8; 4] = [198, 51, 100, 7];
    const VIP: [u8; 4] = [203, 0, 113, 10];
    const TARGET: [u8; 4] = [10, 1, 0, 20];

    /// A test flow's three addresses, in one family.
    struct Ends<I: IpHeader> {
        client: I::Addr,
        vip: I::Addr,
        target: I::Addr,
    }

    const V4: Ends<Ipv4Hdr> = Ends { client: CLIENT, vip: VIP, target: TARGET };
    const V6: Ends<Ipv6Hdr> = Ends {
        client: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        vip: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0x71, 0, 0, 0, 0, 0, 0, 0, 10],
        target: [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20],
    };

    fn setup_in<I: IpHeader>(
        ends: &Ends<I>,
        cookie: u32,
        client_isn: u32,
        hs: HandshakeInfo,
        gw_ws: u8,
    ) -> SpliceSetup {
        SpliceSetup {
            client: FlowKey {
                saddr: I::words(ends.client),
                daddr: I::words(ends.vip),
                sport: crate::abi::port_field(40000u16.to_be_bytes()),
                dport: crate::abi::port_field(443u16.to_be_bytes()),
                family: I::FAMILY,
                proto: crate::net::IPPROTO_TCP,
                _pad: 0,
            },
            source_addr: I::words(ends.client),
            source_port: crate::abi::port_field(40000u16.to_be_bytes()),
            target_addr: I::words(ends.target),
            target_port: crate::abi::port_field(8443u16.to_be_bytes()),
            client_isn,
            cookie_isn: cookie,
            handshake: hs,
            gateway_wscale: gw_ws,
            owner: FlowOwner::default(),
        }
    }

    fn setup(cookie: u32, client_isn: u32, hs: HandshakeInfo, gw_ws: u8) -> SpliceSetup {
        setup_in(&V4, cookie, client_isn, hs, gw_ws)
    }

    /// An IP header of a test segment: its family's differences.
    trait TestIp:
        IpHeader + SpliceHeader<EntryAddr = <Self as IpHeader>::SpliceAddr> + Clone + core::fmt::Debug + PartialEq
    {
        fn header(saddr: Self::Addr, daddr: Self::Addr, tcp_len: usize) -> Self;
        /// The header's own checksum is valid (IPv6 has none).
        fn header_valid(&self) -> bool;
    }

    impl TestIp for Ipv4Hdr {
        fn header(saddr: [u8; 4], daddr: [u8; 4], tcp_len: usize) -> Self {
            crate::icmp::tests::ipv4(saddr, daddr, crate::net::IPPROTO_TCP, tcp_len)
        }
        fn header_valid(&self) -> bool {
            csum::verifies(self.as_bytes(), 0)
        }
    }

    impl TestIp for Ipv6Hdr {
        fn header(saddr: [u8; 16], daddr: [u8; 16], tcp_len: usize) -> Self {
            Ipv6Hdr {
                version_class_flow: [0x60, 0x01, 0x23, 0x45],
                payload_len: (tcp_len as u16).to_be_bytes(),
                next_header: 6,
                hop_limit: 64,
                saddr,
                daddr,
            }
        }
        fn header_valid(&self) -> bool {
            true
        }
    }

    /// A segment as (IP header, TCP header, options, payload).
    #[derive(Clone, Debug, PartialEq)]
    struct Seg<I> {
        ip: I,
        tcp: TcpHdr,
        opts: Vec<u8>,
        payload: Vec<u8>,
    }

    impl<I: TestIp> Seg<I> {
        fn new(saddr: I::Addr, daddr: I::Addr, sport: u16, dport: u16, seq: u32, ack: u32, opts: Vec<u8>) -> Self {
            let payload: Vec<u8> = (0..37u8).collect();
            let tcp_len = 20 + opts.len() + payload.len();
            let mut s = Seg {
                ip: I::header(saddr, daddr, tcp_len),
                tcp: TcpHdr {
                    sport: sport.to_be_bytes(),
                    dport: dport.to_be_bytes(),
                    seq: seq.to_be_bytes(),
                    ack: ack.to_be_bytes(),
                    doff_res: (((20 + opts.len()) / 4) as u8) << 4,
                    flags: TCP_ACK,
                    window: 1000u16.to_be_bytes(),
                    check: [0, 0],
                    urg: [0, 0],
                },
                opts,
                payload,
            };
            s.tcp.check = s.full_tcp_checksum();
            s
        }

        fn tcp_bytes(&self) -> Vec<u8> {
            let mut b = self.tcp.as_bytes().to_vec();
            b.extend_from_slice(&self.opts);
            b.extend_from_slice(&self.payload);
            b
        }

        fn full_tcp_checksum(&self) -> [u8; 2] {
            let mut b = self.tcp_bytes();
            b[16] = 0;
            b[17] = 0;
            let mut acc = self.ip.tcp_pseudo_sum(b.len() as u16);
            for c in b.chunks(2) {
                acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
            }
            csum::finish(acc)
        }

        fn checksums_valid(&self) -> bool {
            let pseudo = self.ip.tcp_pseudo_sum(self.tcp_bytes().len() as u16);
            self.ip.header_valid() && csum::verifies(&self.tcp_bytes(), pseudo)
        }

        fn apply(&self, e: &SpliceEntry<I::SpliceAddr>) -> Self {
            let mut out = self.clone();
            let mut opts = OptionBytes::from_slice(&self.opts).expect("<= 40 bytes");
            if rewrite(&mut out.ip, &mut out.tcp, &mut opts, e, false) {
                out.opts = opts.bytes()[..self.opts.len()].to_vec();
            }
            out
        }

        fn ts(&self) -> Option<(u32, u32)> {
            let mut hs = crate::option::HandshakeOptions::NONE;
            OptionBytes::from_slice(&self.opts)?.scan_handshake(crate::option::OptionId::default(), &mut hs);
            (hs.ts_ok != 0).then_some((hs.tsval, hs.tsecr))
        }
    }

    fn ts_opts(tsval: u32, tsecr: u32) -> Vec<u8> {
        let mut v = std::vec![1, 1, 8, 10];
        v.extend_from_slice(&tsval.to_be_bytes());
        v.extend_from_slice(&tsecr.to_be_bytes());
        v
    }

    fn sack_opts(tsval: u32, tsecr: u32, blocks: &[(u32, u32)]) -> Vec<u8> {
        let mut v = ts_opts(tsval, tsecr);
        v.extend_from_slice(&[1, 1, 5, (2 + 8 * blocks.len()) as u8]);
        for (l, r) in blocks {
            v.extend_from_slice(&l.to_be_bytes());
            v.extend_from_slice(&r.to_be_bytes());
        }
        assert!(v.len() <= MAX_OPTION_BYTES);
        v
    }

    fn sack_edges(opts: &[u8]) -> Vec<u32> {
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                0 => break,
                1 => i += 1,
                5 => {
                    let n = opts[i + 1] as usize;
                    return opts[i + 2..i + n]
                        .chunks(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                }
                _ => i += opts[i + 1] as usize,
            }
        }
        Vec::new()
    }

    /// The entry that undoes `e` (tests only: a segment rewritten with `e`
    /// and then with this one is the original).
    fn inverse<I: TestIp>(e: &SpliceEntry<I::SpliceAddr>, orig: &Seg<I>) -> SpliceEntry<I::SpliceAddr> {
        SpliceEntry {
            saddr: SpliceAddr::from_words(I::words(orig.ip.saddr())),
            daddr: SpliceAddr::from_words(I::words(orig.ip.daddr())),
            sport: u16::from_ne_bytes(orig.tcp.sport),
            dport: u16::from_ne_bytes(orig.tcp.dport),
            seq_shift: 0u32.wrapping_sub(e.seq_shift),
            ts_shift: 0u32.wrapping_sub(e.ts_shift),
            flags: e.flags & SPLICE_F_TO_TARGET,
            ..SpliceEntry::default()
        }
    }

    fn hs(ws: u8, ts_ok: bool, cookie_tsval: u32) -> HandshakeInfo {
        HandshakeInfo {
            client_tsval: 5000,
            cookie_tsval,
            window: 502,
            mss: 1460,
            wscale: ws,
            sack_ok: 1,
            ts_ok: u8::from(ts_ok),
            ecn: 0,
        }
    }

    #[test]
    fn windows_rescale_up_round_up_and_saturate() {
        assert_eq!(rescale_window(1000, 0, 0), 1000);
        assert_eq!(rescale_window(1000, 7, 10), 125);
        assert_eq!(rescale_window(1, 0, 10), 1, "an open window never becomes zero");
        assert_eq!(rescale_window(0, 7, 10), 0, "a zero window stays zero");
        assert_eq!(rescale_window(60000, 10, 7), 0xffff, "saturates at 65535");
        assert_eq!(rescale_window(502, 7, 0), 64256);
        assert_eq!(rescale_window(600, 7, 0), 0xffff);
    }

    #[test]
    fn completion_builds_the_ack_the_target_expects() {
        let s = setup(0xdead_0000, 0x1000, hs(7, true, 0x2222_1100), 10);
        let (mut ct, mut tc) = s.connecting::<u32>();
        let ack = complete(&mut ct, &mut tc, &TargetAnswer { isn: 0x5000, wscale: 9, tsval: Some(777) });
        assert_eq!(ack.seq, 0x1001, "the client's next sequence number");
        assert_eq!(ack.ack, 0x5001);
        assert_eq!(ack.ts, Some((5000, 777)), "the client's TSval, echoing the target's");
        assert_eq!(ack.window, 502, "the client's window, both sides scaling by the client's shift");
        assert_eq!((tc.wnd_shl, tc.wnd_shr), (9, 10), "target scale 9 to the gateway's 10");
        assert_eq!((ct.wnd_shl, ct.wnd_shr), (7, 7));
        assert_eq!((ct.state, tc.state), (SPLICE_ESTABLISHED, SPLICE_ESTABLISHED));
        // A target without window scaling or timestamps.
        let (mut ct, mut tc) = s.connecting::<u32>();
        let ack = complete(&mut ct, &mut tc, &TargetAnswer { isn: 9, wscale: NO_WSCALE, tsval: None });
        assert_eq!(ack.ts, None);
        assert_eq!((tc.wnd_shl, tc.wnd_shr), (0, 10), "unscaled target windows to the client's scale");
        assert_eq!((ct.wnd_shl, ct.wnd_shr), (7, 0), "the client's scaled windows to an unscaling target");
        assert_eq!(ack.window, 64256, "502 << 7 for a target that does not scale");
        assert_eq!((tc.ts_shift, ct.ts_shift), (0, 0));
    }

    /// Random handshake numbers and SACK blocks for the property below.
    #[derive(Clone, Debug)]
    struct Numbers {
        cookie: u32,
        client_isn: u32,
        target_isn: u32,
        cookie_ts: u32,
        target_ts: u32,
        client_ts: u32,
        sent: u32,
        blocks: Vec<(u32, u32)>,
    }

    fn numbers() -> impl Strategy<Value = Numbers> {
        (
            (any::<u32>(), any::<u32>(), any::<u32>()),
            (any::<u32>(), any::<u32>(), any::<u32>()),
            1u32..1_000_000,
            proptest::collection::vec((any::<u32>(), 1u32..100_000), 0..=3),
        )
            .prop_map(|((cookie, client_isn, target_isn), (cookie_ts, target_ts, client_ts), sent, blocks)| {
                Numbers { cookie, client_isn, target_isn, cookie_ts, target_ts, client_ts, sent, blocks }
            })
    }

    /// The two directions agree: what the target acknowledges, SACKs or
    /// echoes in target space reaches the client in client space and
    /// back; checksums stay valid; and a segment rewritten and rewritten
    /// back is the original, byte for byte.
    fn rewrite_is_consistent_both_ways<I: TestIp>(ends: &Ends<I>, n: &Numbers) -> Result<(), TestCaseError> {
        let (cookie, target_isn, sent) = (n.cookie, n.target_isn, n.sent);
        let s = setup_in(ends, cookie, n.client_isn, hs(7, true, n.cookie_ts), 7);
        let (mut ct, mut tc) = s.connecting::<I::SpliceAddr>();
        complete(&mut ct, &mut tc, &TargetAnswer { isn: target_isn, wscale: 7, tsval: Some(n.target_ts) });

        // Client data: SEQ in client space, ACK acknowledges the cookie
        // side; TSecr echoes a gate-side TSval.
        let c_seq = n.client_isn.wrapping_add(sent);
        let c_ack = cookie.wrapping_add(1 + sent);
        let c_tsecr = n.cookie_ts.wrapping_add(sent);
        let c_blocks: Vec<(u32, u32)> = n
            .blocks
            .iter()
            .map(|(l, len)| (cookie.wrapping_add(*l), cookie.wrapping_add(l.wrapping_add(*len))))
            .collect();
        let client_opts = sack_opts(n.client_ts, c_tsecr, &c_blocks);
        let from_client = Seg::<I>::new(ends.client, ends.vip, 40000, 443, c_seq, c_ack, client_opts);
        prop_assert!(from_client.checksums_valid());
        let at_target = from_client.apply(&ct);
        prop_assert!(at_target.checksums_valid(), "checksums after client → target");
        prop_assert_eq!(at_target.ip.daddr(), ends.target);
        prop_assert_eq!(u16::from_be_bytes(at_target.tcp.dport), 8443);
        prop_assert_eq!(at_target.tcp.seq(), c_seq, "client sequence numbers are not shifted");
        prop_assert_eq!(at_target.tcp.ack_seq(), target_isn.wrapping_add(1 + sent), "ACK into target space");
        prop_assert_eq!(at_target.ts(), Some((n.client_ts, n.target_ts.wrapping_add(sent))), "TSecr into target space");
        let into_target = |edge: u32| edge.wrapping_sub(cookie).wrapping_add(target_isn);
        let want: Vec<u32> = c_blocks.iter().flat_map(|(l, r)| [into_target(*l), into_target(*r)]).collect();
        prop_assert_eq!(sack_edges(&at_target.opts), want, "SACK edges into target space");
        prop_assert_eq!(at_target.apply(&inverse(&ct, &from_client)), from_client.clone(), "there and back");

        // The target's answer acknowledges the client's data and echoes
        // its TSval; its SEQ and TSval are in target space.
        let t_seq = target_isn.wrapping_add(1 + sent);
        let t_ack = c_seq.wrapping_add(37);
        let target_opts = ts_opts(n.target_ts.wrapping_add(sent), n.client_ts);
        let from_target = Seg::<I>::new(ends.target, ends.client, 8443, 40000, t_seq, t_ack, target_opts);
        let at_client = from_target.apply(&tc);
        prop_assert!(at_client.checksums_valid(), "checksums after target → client");
        prop_assert_eq!(at_client.ip.saddr(), ends.vip);
        prop_assert_eq!(u16::from_be_bytes(at_client.tcp.sport), 443);
        prop_assert_eq!(at_client.tcp.seq(), cookie.wrapping_add(1 + sent), "SEQ into the cookie's space");
        prop_assert_eq!(at_client.tcp.ack_seq(), t_ack, "the client's own space is not shifted");
        prop_assert_eq!(at_client.ts(), Some((n.cookie_ts.wrapping_add(sent), n.client_ts)));
        prop_assert_eq!(at_client.apply(&inverse(&tc, &from_target)), from_target.clone(), "there and back");

        // The data path's fast path for the usual option layout gives the
        // same bytes as the general rewrite, both ways.
        let plain_client =
            Seg::<I>::new(ends.client, ends.vip, 40000, 443, c_seq, c_ack, ts_opts(n.client_ts, c_tsecr));
        for (seg, e) in [(&plain_client, &ct), (&from_target, &tc)] {
            let mut fast = seg.clone();
            let mut ts = fast.opts[..].load::<AlignedTimestamp>(0).expect("12 option bytes");
            prop_assert!(ts.is_aligned_timestamp());
            rewrite_aligned_timestamp(&mut fast.ip, &mut fast.tcp, &mut ts, e, false);
            fast.opts = ts.as_bytes().to_vec();
            prop_assert_eq!(fast, seg.apply(e), "fast path");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn ipv4_rewrite_is_consistent_both_ways(n in numbers()) {
            rewrite_is_consistent_both_ways(&V4, &n)?;
        }

        #[test]
        fn ipv6_rewrite_is_consistent_both_ways(n in numbers()) {
            rewrite_is_consistent_both_ways(&V6, &n)?;
        }
    }

    /// Forwarding takes a hop off either family, and keeps IPv4's header
    /// checksum valid; IPv6's header has none to keep.
    #[test]
    fn forwarding_decrements_the_hop_limit() {
        fn forwarded<I: TestIp>(ends: &Ends<I>) -> Seg<I> {
            let s = setup_in(ends, 1, 2, hs(7, true, 3), 7);
            let (ct, _) = s.connecting::<I::SpliceAddr>();
            let mut seg = Seg::<I>::new(ends.client, ends.vip, 40000, 443, 3, 2, ts_opts(4, 3));
            let mut opts = OptionBytes::from_slice(&seg.opts).expect("12 option bytes");
            rewrite(&mut seg.ip, &mut seg.tcp, &mut opts, &ct, true);
            seg
        }
        let v4 = forwarded(&V4);
        assert_eq!(v4.ip.ttl, 60, "IPv4: TTL 61 forwarded");
        assert!(v4.checksums_valid(), "IPv4: both checksums valid after forwarding");
        let v6 = forwarded(&V6);
        assert_eq!(v6.ip.hop_limit, 63, "IPv6: hop limit 64 forwarded");
        assert!(v6.checksums_valid(), "IPv6: the TCP checksum valid after forwarding");
    }
}
