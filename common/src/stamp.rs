//! The agent's stamping edit (docs/design.md §2 step 3, §3): where the
//! capability option goes in an outgoing handshake segment, and the header
//! and checksum changes that go with it.
//!
//! The TC program applies a [`StampPlan`] with kernel helpers
//! (`bpf_skb_change_tail`, `bpf_skb_store_bytes`, `bpf_l3/l4_csum_replace`);
//! the checksum updates are expressed as RFC 1624 16-bit replacements so
//! that the kernel can apply them to full and to partial (offloaded)
//! checksums alike: for a CHECKSUM_PARTIAL skb `bpf_l4_csum_replace` only
//! applies the pseudo-header part, which is exactly what such a checksum
//! field holds (inet_proto_csum_replace4 in net/core/utils.c).
//!
//! The option is appended after the existing options, which only works on
//! a segment without payload: a SYN or a pure ACK. When the flow's first
//! data segment leaves without a stamped ACK before it (the handshake ACK
//! was merged into the data, dropped before the stamper, or possibly lost
//! on the way), the stamper cuts that segment down to the pure ACK
//! ([`pure_ack`]) and stamps it; TCP sends the data again.

use core::mem::size_of;

use crate::csum;
use crate::net::{IpHeader, Ipv4Hdr, TCP_FIN, TCP_PSH, TCP_URG, TcpHdr, TcpSegment};
use crate::option::{CAPABILITY_LEN, CapabilityOption, OptionBytes};

/// Largest TCP header (data offset 15).
pub const MAX_TCP_HEADER: usize = 60;

/// Why the stamper did what it did: every packet the TC program sees bumps
/// exactly one of these per-CPU counters. The program never drops: every
/// reason lets the packet go.
pub mod reason {
    crate::reason::reasons! {
        /// Not IP.
        PASS_NOT_IPV4 = 0, "pass_not_ipv4";
        /// IP, not TCP, or a fragment (IPv4), or IPv6 with extension
        /// headers the parser refuses.
        PASS_NOT_TCP = 1, "pass_not_tcp";
        /// TCP to an address and port the agent has no target for.
        PASS_NOT_TARGET = 2, "pass_not_target";
        /// TCP to a target, but neither a SYN nor the flow's handshake ACK.
        PASS_NOT_HANDSHAKE = 3, "pass_not_handshake";
        /// SYN to a target without stealth: client ISN remembered for the
        /// handshake ACK, SYN unchanged.
        SYN_RECORDED = 4, "syn_recorded";
        /// Stealth target: SYN stamped (and its ISN remembered).
        STAMPED_SYN = 5, "stamped_syn";
        /// Handshake ACK stamped.
        STAMPED_ACK = 6, "stamped_ack";
        /// The option does not fit in the 60-byte TCP header: sent unstamped.
        SKIP_NO_ROOM = 7, "skip_no_room";
        /// A SYN carrying data (TCP Fast Open): sent unstamped.
        SKIP_PAYLOAD = 8, "skip_payload";
        /// Already carries a capability option (or a malformed one): sent as is.
        SKIP_ALREADY_STAMPED = 9, "skip_already_stamped";
        /// The agent is not enrolled (no identity loaded): sent unstamped.
        SKIP_NO_IDENTITY = 10, "skip_no_identity";
        /// Truncated or inconsistent headers: sent as is.
        SKIP_MALFORMED = 11, "skip_malformed";
        /// Bytes after the IPv4 packet in the frame: sent unstamped.
        SKIP_TRAILER = 12, "skip_trailer";
        /// The kernel refused to grow the packet: sent unstamped.
        ERR_RESIZE = 13, "err_resize";
        /// Writing the option or a header field failed after the packet grew;
        /// the segment may be damaged (the peer's checksum check drops it and
        /// TCP retransmits).
        ERR_WRITE = 14, "err_write";
        /// The handshake map refused the SYN's entry: its ACK will go unstamped.
        ERR_HANDSHAKE_FULL = 15, "err_handshake_full";
        /// The flow's first data segment (or FIN) cut down to a pure ACK
        /// and stamped: the handshake ACK never passed the stamper (merged
        /// into the data, or dropped before it), or the segment is being
        /// sent again and the stamped ACK may have been lost. TCP sends
        /// the data again, as after any loss.
        STAMPED_ACK_FROM_DATA = 16, "stamped_ack_from_data";
        /// A SYN or handshake ACK of a socket whose owner has no login on
        /// this machine (and no machine-wide login is in force): sent
        /// unstamped, so the gate lets it reach nothing.
        SKIP_NO_ACCOUNT = 17, "skip_no_account";
        /// The per-CPU working memory could not be looked up (a map lookup
        /// that does not fail in practice): sent as is.
        ERR_SCRATCH = 18, "err_scratch";
    }
}

/// A 16-bit field and the value it changes to, both as wire bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replace16 {
    pub from: [u8; 2],
    pub to: [u8; 2],
}

impl Replace16 {
    /// The operands of `bpf_l3/l4_csum_replace` for a 2-byte replacement:
    /// the helper takes the wire bytes as a native-endian integer.
    #[inline(always)]
    pub fn helper_args(&self) -> (u64, u64) {
        (u16::from_ne_bytes(self.from) as u64, u16::from_ne_bytes(self.to) as u64)
    }
}

/// Everything the TC program writes to stamp one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StampPlan {
    /// Frame length before, which is also where the option goes.
    pub tail: usize,
    pub option: CapabilityOption,
    /// Offset and new value of the data-offset byte.
    pub doff_off: usize,
    pub doff_byte: u8,
    /// Offset of the IP length field (IPv4 total length, IPv6 payload
    /// length), and its change (also the IPv4 header checksum update).
    pub total_len_off: usize,
    pub total_len: Replace16,
    /// Offset of the IPv4 header checksum; 0 for IPv6, which has none.
    pub ip_check_off: usize,
    pub tcp_check_off: usize,
    /// The data-offset/flags word, with the option's own sum folded into
    /// the new value: one update covers both.
    pub tcp_word: Replace16,
    /// The TCP length in the pseudo-header.
    pub pseudo_len: Replace16,
}

/// Plans the stamp of `seg` (inside a frame of `frame_len` bytes) with
/// `option`, or says why it cannot be stamped.
#[inline(always)]
pub fn plan<I: IpHeader>(seg: &TcpSegment<I>, frame_len: usize, option: CapabilityOption) -> Result<StampPlan, u32> {
    if seg.payload_len != 0 {
        return Err(reason::SKIP_PAYLOAD);
    }
    if seg.tcp_len + CAPABILITY_LEN > MAX_TCP_HEADER {
        return Err(reason::SKIP_NO_ROOM);
    }
    let ip_total = seg.packet_len();
    if frame_len != seg.l3_off + ip_total {
        // Growing the tail would put the option after the trailer.
        return Err(reason::SKIP_TRAILER);
    }
    let new_tcp_len = seg.tcp_len + CAPABILITY_LEN;
    let doff_byte = ((new_tcp_len / 4) as u8) << 4 | (seg.tcp.doff_res & 0x0f);
    let old_word = [seg.tcp.doff_res, seg.tcp.flags];
    let new_word = u16::from_be_bytes([doff_byte, seg.tcp.flags]) as u32;
    let with_option = fold(csum::sum_words(&option, new_word));
    let old_tcp_seg = (seg.tcp_len as u16).to_be_bytes();
    let new_tcp_seg = (new_tcp_len as u16).to_be_bytes();
    Ok(StampPlan {
        tail: frame_len,
        option,
        doff_off: seg.l4_off + 12,
        doff_byte,
        total_len_off: seg.l3_off + I::LENGTH_OFFSET,
        total_len: Replace16 {
            from: ((ip_total - I::LENGTH_EXCLUDES) as u16).to_be_bytes(),
            to: ((ip_total - I::LENGTH_EXCLUDES + CAPABILITY_LEN) as u16).to_be_bytes(),
        },
        ip_check_off: ip_check_off(seg),
        tcp_check_off: seg.l4_off + 16,
        tcp_word: Replace16 { from: old_word, to: with_option.to_be_bytes() },
        pseudo_len: Replace16 { from: old_tcp_seg, to: new_tcp_seg },
    })
}

/// Where `seg`'s IP header checksum is; 0 when the family has none.
#[inline(always)]
fn ip_check_off<I: IpHeader>(seg: &TcpSegment<I>) -> usize {
    if I::CHECKSUM_OFFSET == 0 { 0 } else { seg.l3_off + I::CHECKSUM_OFFSET }
}

/// Everything the TC program writes to cut a segment that carries data
/// (or a FIN) down to the pure ACK that would have preceded it: same SEQ, ACK, window and options, no payload, no PSH, URG or FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PureAckPlan {
    /// Frame length after the cut: the headers only.
    pub frame_len: usize,
    pub total_len_off: usize,
    pub total_len: [u8; 2],
    /// 0 for IPv6, whose header has no checksum.
    pub ip_check_off: usize,
    pub ip_check: [u8; 2],
    pub flags_off: usize,
    pub flags: u8,
    pub tcp_check_off: usize,
    pub tcp_check: [u8; 2],
}

/// Plans the cut of `seg`, whose option bytes are `options`.
///
/// The segment it leaves is [`PureAckPlan::segment`].
///
/// Written whole rather than updated: the payload's share of a full
/// checksum is unknown without summing the payload. A locally sent TCP
/// segment is CHECKSUM_PARTIAL (its field holds the folded pseudo-header
/// sum alone, `__tcp_v4_send_check` in net/ipv4/tcp_ipv4.c; the device or
/// `skb_checksum_help` adds the rest), anything else carries the full sum;
/// the field tells which (a full sum equal to the pseudo-header's by
/// chance, 1 in 65,536, gives the ACK a bad checksum, which the gate,
/// which never forwards a handshake ACK, does not check).
#[inline(always)]
pub fn pure_ack<I: IpHeader>(seg: &TcpSegment<I>, options: &OptionBytes) -> PureAckPlan {
    let old_pseudo = seg.ip.tcp_pseudo_sum((seg.tcp_len + seg.payload_len) as u16);
    let new_pseudo = seg.ip.tcp_pseudo_sum(seg.tcp_len as u16);
    let partial = seg.tcp.check == csum::fold(old_pseudo).to_be_bytes();
    let flags = seg.tcp.flags & !(TCP_PSH | TCP_URG | TCP_FIN);
    let tcp_check = if partial {
        csum::fold(new_pseudo).to_be_bytes()
    } else {
        let header = TcpHdr { flags, check: [0, 0], ..seg.tcp };
        csum::finish(csum::sum_words(&header, new_pseudo) + options.word_sum())
    };
    let total_len = ((seg.l4_off - seg.l3_off + seg.tcp_len - I::LENGTH_EXCLUDES) as u16).to_be_bytes();
    let old_len = csum::word2(seg.ip.length_field());
    PureAckPlan {
        frame_len: seg.l4_off + seg.tcp_len,
        total_len_off: seg.l3_off + I::LENGTH_OFFSET,
        total_len,
        ip_check_off: ip_check_off(seg),
        ip_check: csum::replace(seg.ip.header_checksum(), old_len, csum::word2(total_len)),
        flags_off: seg.l4_off + 13,
        flags,
        tcp_check_off: seg.l4_off + 16,
        tcp_check,
    }
}

impl PureAckPlan {
    /// `seg` as the cut leaves it: the same headers at the same offsets,
    /// no payload, the new flags and checksum (the IP header's length field
    /// and checksum are not refreshed in the copy: [`plan`] reads neither).
    #[inline(always)]
    pub fn segment<I: Copy>(&self, seg: &TcpSegment<I>) -> TcpSegment<I> {
        TcpSegment { tcp: TcpHdr { flags: self.flags, check: self.tcp_check, ..seg.tcp }, payload_len: 0, ..*seg }
    }
}

/// Folds a 32-bit one's-complement accumulator to 16 bits (no complement).
#[inline(always)]
fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word of the summed data
/// changes (`HC' = ~(~HC + ~m + m')`). Host reference for what the kernel
/// helpers do.
pub fn csum_replace2(check: [u8; 2], r: Replace16) -> [u8; 2] {
    let hc = !u16::from_be_bytes(check) as u32;
    let m = !u16::from_be_bytes(r.from) as u32;
    let m2 = u16::from_be_bytes(r.to) as u32;
    (!fold(hc + m + m2)).to_be_bytes()
}

const _: () = assert!(size_of::<Ipv4Hdr>() == 20);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::mac::{Binding, MacKey};
    use crate::net::{Parsed, TCP_ACK, parse_ipv4_tcp};
    use crate::option::{Capability, DEFAULT_EXPERIMENT_ID, DEFAULT_OPTION_KIND, OptionBytes, OptionId};
    use proptest::prelude::*;

    const KEY: MacKey = MacKey { k0: 3, k1: 4 };

    /// Applies a plan the way the TC program does, with the RFC 1624
    /// replacements standing in for the kernel's csum helpers.
    fn apply(frame: &mut Vec<u8>, p: &StampPlan) {
        let o = p.option;
        frame.extend_from_slice(&[o.kind, o.len, o.exid[0], o.exid[1], o.version]);
        frame.extend_from_slice(&o.reserved);
        frame.extend_from_slice(&o.agent_id);
        frame.extend_from_slice(&o.mac);
        frame[p.doff_off] = p.doff_byte;
        frame[p.total_len_off..p.total_len_off + 2].copy_from_slice(&p.total_len.to);
        let ip_check = [frame[p.ip_check_off], frame[p.ip_check_off + 1]];
        frame[p.ip_check_off..p.ip_check_off + 2].copy_from_slice(&csum_replace2(ip_check, p.total_len));
        let mut tcp_check = [frame[p.tcp_check_off], frame[p.tcp_check_off + 1]];
        tcp_check = csum_replace2(tcp_check, p.tcp_word);
        tcp_check = csum_replace2(tcp_check, p.pseudo_len);
        frame[p.tcp_check_off..p.tcp_check_off + 2].copy_from_slice(&tcp_check);
    }

    /// Ethernet + IPv4 + TCP with `opts` and valid checksums.
    fn segment(opts: &[u8], flags: u8, payload: &[u8], seq: u32, ack: u32) -> Vec<u8> {
        let tcp_len = 20 + opts.len();
        let total = 20 + tcp_len + payload.len();
        let mut f = Vec::new();
        f.extend_from_slice(&[0u8; 12]);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
        let ip_check = csum::finish(csum::sum_words(&<[u8; 20]>::try_from(&f[14..34]).unwrap(), 0));
        f[24..26].copy_from_slice(&ip_check);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&443u16.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&ack.to_be_bytes());
        f.extend_from_slice(&[((tcp_len / 4) as u8) << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
        f.extend_from_slice(opts);
        f.extend_from_slice(payload);
        let mut acc = csum::tcp_pseudo_sum([10, 0, 0, 2], [10, 0, 0, 1], (tcp_len + payload.len()) as u16);
        for c in f[34..].chunks(2) {
            acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        let check = csum::finish(acc);
        f[50..52].copy_from_slice(&check);
        f
    }

    fn parse(f: &[u8]) -> crate::net::Ipv4Tcp {
        match parse_ipv4_tcp(f) {
            Parsed::Tcp(seg) => seg,
            other => panic!("test segment did not parse as TCP: {other:?}"),
        }
    }

    fn stamp(f: &mut Vec<u8>) -> Result<StampPlan, u32> {
        let seg = parse(f);
        let mac = Binding::handshake_ack(&seg, 7, DEFAULT_EXPERIMENT_ID).mac(&KEY);
        let p = plan(&seg, f.len(), CapabilityOption::new(DEFAULT_OPTION_KIND, DEFAULT_EXPERIMENT_ID, 7, mac))?;
        apply(f, &p);
        Ok(p)
    }

    fn checksums_verify(f: &[u8]) -> bool {
        let seg = parse(f);
        let tcp_len = f.len() - seg.l4_off;
        csum::verifies(&f[14..34], 0)
            && csum::verifies(&f[seg.l4_off..], csum::tcp_pseudo_sum(seg.ip.saddr, seg.ip.daddr, tcp_len as u16))
    }

    #[test]
    fn stamped_ack_with_timestamps_verifies_and_carries_the_capability() {
        let ts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5];
        let mut f = segment(&ts, 0x10, &[], 0x1000_0001, 0x2000_0001);
        stamp(&mut f).expect("a handshake ACK with timestamps has room");
        assert!(checksums_verify(&f), "checksums wrong after the stamp: {f:02x?}");
        let seg = parse(&f);
        assert_eq!(seg.tcp_len, 52, "data offset must grow by the option's 20 bytes");
        assert_eq!(&f[seg.options_off()..seg.options_off() + 12], &ts, "existing options must be kept in place");
        let scan = OptionBytes::read_into(&mut core::mem::MaybeUninit::uninit(), &f[..], &seg)
            .expect("options readable")
            .scan(OptionId::default());
        assert_eq!(scan.capability, Capability::Present);
        assert_eq!(scan.mac, Binding::handshake_ack(&seg, 7, DEFAULT_EXPERIMENT_ID).mac(&KEY));
    }

    #[test]
    fn refusals() {
        let full = [1u8; 28];
        assert_eq!(stamp(&mut segment(&full, 0x10, &[], 1, 1)), Err(reason::SKIP_NO_ROOM));
        assert_eq!(stamp(&mut segment(&[], 0x18, b"GET /", 1, 1)), Err(reason::SKIP_PAYLOAD));
        let mut padded = segment(&[], 0x10, &[], 1, 1);
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(stamp(&mut padded), Err(reason::SKIP_TRAILER));
    }

    /// Applies a pure-ACK plan the way the TC program does.
    fn cut(f: &mut Vec<u8>) -> PureAckPlan {
        let seg = parse(f);
        let mut slot = core::mem::MaybeUninit::uninit();
        let opts = OptionBytes::read_into(&mut slot, &f[..], &seg).expect("options");
        let p = pure_ack(&seg, opts);
        f.truncate(p.frame_len);
        f[p.total_len_off..p.total_len_off + 2].copy_from_slice(&p.total_len);
        f[p.ip_check_off..p.ip_check_off + 2].copy_from_slice(&p.ip_check);
        f[p.flags_off] = p.flags;
        f[p.tcp_check_off..p.tcp_check_off + 2].copy_from_slice(&p.tcp_check);
        p
    }

    /// What the device (or `skb_checksum_help`) does to a CHECKSUM_PARTIAL
    /// segment: sums from the TCP header on, field included, and stores
    /// the complement.
    fn complete_partial(f: &mut [u8]) {
        let l4 = parse(f).l4_off;
        let mut acc = 0u32;
        for c in f[l4..].chunks(2) {
            acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        let check = csum::finish(acc);
        f[l4 + 16..l4 + 18].copy_from_slice(&check);
    }

    /// The segment as the local stack hands it over with checksum offload:
    /// the field holds the folded pseudo-header sum.
    fn as_partial(f: &mut [u8]) {
        let seg = parse(f);
        let pseudo = csum::tcp_pseudo_sum(seg.ip.saddr, seg.ip.daddr, (seg.tcp_len + seg.payload_len) as u16);
        f[seg.l4_off + 16..seg.l4_off + 18].copy_from_slice(&csum::fold(pseudo).to_be_bytes());
    }

    #[test]
    fn first_data_cut_to_the_pure_ack_before_it() {
        let ts = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5];
        let data = segment(&ts, TCP_ACK | TCP_PSH, b"GET / HTTP/1.1\r\n\r\n", 0x1000_0001, 0x2000_0001);
        let pure = segment(&ts, TCP_ACK, &[], 0x1000_0001, 0x2000_0001);
        let mut full = data.clone();
        cut(&mut full);
        assert_eq!(full, pure, "a data segment with a full checksum must become exactly the pure ACK");
        let mut partial = data;
        as_partial(&mut partial);
        cut(&mut partial);
        complete_partial(&mut partial);
        assert_eq!(partial, pure, "with checksum offload, the device must complete exactly the pure ACK's checksum");
        let mut fin = segment(&ts, TCP_ACK | TCP_FIN, &[], 0x1000_0001, 0x2000_0001);
        cut(&mut fin);
        assert_eq!(fin, pure, "a bare FIN must become the pure ACK");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Any option list with room and any header values: the planned edit
        /// leaves both checksums valid.
        #[test]
        fn planned_edit_keeps_checksums_valid(
            words in 0usize..=10, fill in any::<u8>(), seq in any::<u32>(), ack in any::<u32>(), flags in any::<u8>(),
        ) {
            let opts: Vec<u8> = std::vec![fill; words * 4];
            let mut f = segment(&opts, flags, &[], seq, ack);
            match stamp(&mut f) {
                Ok(_) => prop_assert!(checksums_verify(&f), "checksum broken for opts {words} words fill {fill}"),
                Err(r) => prop_assert_eq!(r, reason::SKIP_NO_ROOM),
            }
        }

        /// Any options, payload and flags, full or offloaded checksum: the
        /// cut leaves a pure ACK whose checksums verify and which stamps.
        #[test]
        fn cut_to_pure_ack_keeps_checksums_valid(
            words in 0usize..=10, fill in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..300),
            seq in any::<u32>(), ack in any::<u32>(), flags in any::<u8>(), offloaded in any::<bool>(),
        ) {
            let opts: Vec<u8> = std::vec![fill; words * 4];
            let mut f = segment(&opts, flags, &payload, seq, ack);
            if offloaded {
                as_partial(&mut f);
            }
            cut(&mut f);
            if offloaded {
                complete_partial(&mut f);
            }
            let seg = parse(&f);
            prop_assert_eq!(seg.payload_len, 0);
            prop_assert_eq!(seg.tcp.flags & (TCP_PSH | TCP_URG | TCP_FIN), 0);
            prop_assert_eq!(seg.tcp.flags & !(TCP_PSH | TCP_URG | TCP_FIN), flags & !(TCP_PSH | TCP_URG | TCP_FIN));
            prop_assert!(checksums_verify(&f), "checksum broken: {:02x?}", f);
        }
    }
}
