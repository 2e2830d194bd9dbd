//! Wire headers and the one bounds-checked accessor every packet read goes
//! through ([`Frame::load`]), plus the Ethernet/VLAN/IPv4/TCP and IPv6/TCP
//! parsers shared by the gateway gate and the agent stamper.

use core::mem::size_of;

/// Marker for types that may be copied straight out of packet bytes: plain
/// `#[repr(C)]` structs of byte arrays, for which every bit pattern is valid.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain no padding-sensitive invariants
/// and accept any bit pattern.
pub unsafe trait Wire: Copy {
    /// The value's bytes, as they go on the wire.
    #[inline(always)]
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: implementors are plain bytes (the trait's contract).
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }

    /// All bytes zero: a valid value of every `Wire` type.
    #[inline(always)]
    fn zeroed() -> Self {
        // SAFETY: implementors accept any bit pattern (the trait's contract).
        unsafe { core::mem::zeroed() }
    }
}

/// A `T` laid over the front of `buf`: working memory that holds values of
/// several types in turn (the gate's replies, in map memory).
#[inline(always)]
pub fn overlay<T: Wire, const N: usize>(buf: &mut [u8; N]) -> &mut T {
    const { assert!(size_of::<T>() <= N && core::mem::align_of::<T>() == 1) };
    // SAFETY: `buf` holds at least `size_of::<T>()` bytes, `T` needs no
    // alignment and accepts any bytes, and the borrow is `buf`'s.
    unsafe { &mut *buf.as_mut_ptr().cast::<T>() }
}

unsafe impl Wire for u8 {}
unsafe impl<const N: usize> Wire for [u8; N] {}
/// Address words (`abi::SpliceAddr`), written to packets as they are.
unsafe impl Wire for [u32; 4] {}

/// Read access to one frame, starting at the Ethernet header.
pub trait Frame {
    /// Frame length in bytes.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the `T` that starts `offset` bytes into the frame, or `None`
    /// when any byte of it lies past the end. This is the only way the parsers
    /// read packet data; in BPF its comparison is the bounds check the
    /// verifier needs.
    fn load<T: Wire>(&self, offset: usize) -> Option<T>;

    /// Copies the `len` bytes at `offset` into the front of `dst`; `None` if
    /// they are not all inside the frame or `len` exceeds `dst`.
    ///
    /// The option parser runs over this stack copy rather than the packet:
    /// a byte-by-byte walk of packet memory gives the verifier a different
    /// checked range on every path and blows its state budget, while a walk
    /// over a stack buffer prunes well.
    fn load_bytes(&self, offset: usize, len: usize, dst: &mut [u8; crate::option::MAX_OPTION_BYTES]) -> Option<()>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline(always)]
    fn load<T: Wire>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(size_of::<T>())?;
        if end > <[u8]>::len(self) {
            return None;
        }
        // SAFETY: `offset..end` is inside the slice; `T: Wire` accepts any
        // bytes and `read_unaligned` has no alignment requirement.
        Some(unsafe { core::ptr::read_unaligned(self.as_ptr().add(offset).cast::<T>()) })
    }

    fn load_bytes(&self, offset: usize, len: usize, dst: &mut [u8; crate::option::MAX_OPTION_BYTES]) -> Option<()> {
        let src = self.get(offset..offset.checked_add(len)?)?;
        dst.get_mut(..len)?.copy_from_slice(src);
        Some(())
    }
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers (RFC 8200 §4) and "no next header".
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv4 don't-fragment flag (in `Ipv4Hdr::frag`).
pub const IP_DF: u16 = 0x4000;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

/// Most VLAN tags parsed in front of IPv4 (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub inner_type: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    /// Data offset in the high nibble.
    pub doff_res: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

const _: () = assert!(size_of::<EthHdr>() == 14);
const _: () = assert!(size_of::<VlanHdr>() == 4);
const _: () = assert!(size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(size_of::<TcpHdr>() == 20);
const _: () = assert!(size_of::<Ipv6Hdr>() == 40);

/// The fixed IPv6 header (RFC 8200 §3); extension headers follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

unsafe impl Wire for Ipv6Hdr {}

unsafe impl Wire for EthHdr {}
unsafe impl Wire for VlanHdr {}
unsafe impl Wire for Ipv4Hdr {}
unsafe impl Wire for TcpHdr {}

impl Ipv4Hdr {
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }
    #[inline(always)]
    pub fn total_len(&self) -> usize {
        u16::from_be_bytes(self.total_len) as usize
    }
    /// More-fragments set or a non-zero fragment offset.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag) & 0x3fff != 0
    }
}

impl TcpHdr {
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.doff_res >> 4) as usize) * 4
    }
    #[inline(always)]
    pub fn seq(&self) -> u32 {
        u32::from_be_bytes(self.seq)
    }
    #[inline(always)]
    pub fn ack_seq(&self) -> u32 {
        u32::from_be_bytes(self.ack)
    }
    #[inline(always)]
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// An IP header a TCP segment can ride in: IPv4 or IPv6. What differs
/// between the families for the gate and the stamper is here; the stages
/// above it are written once.
pub trait IpHeader: Wire {
    /// `abi::FAMILY_IPV4` or `abi::FAMILY_IPV6`.
    const FAMILY: u8;
    /// An address as it is on the wire.
    type Addr: Copy + core::fmt::Debug + PartialEq;
    fn saddr(&self) -> Self::Addr;
    fn daddr(&self) -> Self::Addr;
    /// An address as map keys hold it (`abi`'s network-order words).
    fn words(addr: Self::Addr) -> [u32; 4];
    /// DSCP and ECN: IPv4's TOS byte, IPv6's traffic class.
    fn dsfield(&self) -> u8;
    /// Sum of the TCP pseudo-header of a segment of `tcp_len` bytes
    /// carried by this header.
    fn tcp_pseudo_sum(&self, tcp_len: u16) -> u32;
    /// Offset of the length field in the header, and how many bytes of the
    /// packet it does not count (IPv6's payload length leaves out the fixed
    /// header).
    const LENGTH_OFFSET: usize;
    const LENGTH_EXCLUDES: usize;
    /// Offset of the header checksum; 0 for a header without one (IPv6).
    const CHECKSUM_OFFSET: usize;
    /// The length field and the header checksum ([0, 0] without one), as
    /// on the wire.
    fn length_field(&self) -> [u8; 2];
    fn header_checksum(&self) -> [u8; 2];
    /// An address as the family's splice map holds it.
    type SpliceAddr: crate::abi::SpliceAddr;
    /// A segment's source and destination as its splice map holds them.
    /// From the segment rather than the header: read through the segment,
    /// whose alignment the compiler knows, an IPv4 address is one word
    /// load, not four byte loads (which cost the gate 20 instructions and
    /// 6.1's verifier 24k).
    fn splice_addrs(seg: &TcpSegment<Self>) -> (Self::SpliceAddr, Self::SpliceAddr)
    where
        Self: Sized;
}

impl IpHeader for Ipv4Hdr {
    const FAMILY: u8 = crate::abi::FAMILY_IPV4;
    const LENGTH_OFFSET: usize = 2;
    const LENGTH_EXCLUDES: usize = 0;
    const CHECKSUM_OFFSET: usize = 10;
    #[inline(always)]
    fn length_field(&self) -> [u8; 2] {
        self.total_len
    }
    #[inline(always)]
    fn header_checksum(&self) -> [u8; 2] {
        self.check
    }
    type Addr = [u8; 4];
    #[inline(always)]
    fn words(addr: [u8; 4]) -> [u32; 4] {
        crate::abi::v4_words(addr)
    }
    type SpliceAddr = u32;
    #[inline(always)]
    fn splice_addrs(seg: &Ipv4Tcp) -> (u32, u32) {
        (u32::from_ne_bytes(seg.ip.saddr), u32::from_ne_bytes(seg.ip.daddr))
    }

    #[inline(always)]
    fn saddr(&self) -> [u8; 4] {
        self.saddr
    }
    #[inline(always)]
    fn daddr(&self) -> [u8; 4] {
        self.daddr
    }
    #[inline(always)]
    fn dsfield(&self) -> u8 {
        self.tos
    }
    #[inline(always)]
    fn tcp_pseudo_sum(&self, tcp_len: u16) -> u32 {
        crate::csum::tcp_pseudo_sum(self.saddr, self.daddr, tcp_len)
    }
}

impl IpHeader for Ipv6Hdr {
    const FAMILY: u8 = crate::abi::FAMILY_IPV6;
    const LENGTH_OFFSET: usize = 4;
    const LENGTH_EXCLUDES: usize = size_of::<Ipv6Hdr>();
    const CHECKSUM_OFFSET: usize = 0;
    #[inline(always)]
    fn length_field(&self) -> [u8; 2] {
        self.payload_len
    }
    #[inline(always)]
    fn header_checksum(&self) -> [u8; 2] {
        [0, 0]
    }
    type Addr = [u8; 16];
    #[inline(always)]
    fn words(addr: [u8; 16]) -> [u32; 4] {
        crate::abi::v6_words(addr)
    }
    type SpliceAddr = [u32; 4];
    #[inline(always)]
    fn splice_addrs(seg: &Ipv6Tcp) -> ([u32; 4], [u32; 4]) {
        (crate::abi::v6_words(seg.ip.saddr), crate::abi::v6_words(seg.ip.daddr))
    }

    #[inline(always)]
    fn saddr(&self) -> [u8; 16] {
        self.saddr
    }
    #[inline(always)]
    fn daddr(&self) -> [u8; 16] {
        self.daddr
    }
    #[inline(always)]
    fn dsfield(&self) -> u8 {
        u16::from_be_bytes([self.version_class_flow[0], self.version_class_flow[1]]).wrapping_shr(4) as u8
    }
    #[inline(always)]
    fn tcp_pseudo_sum(&self, tcp_len: u16) -> u32 {
        crate::csum::tcp_pseudo_sum_v6(&self.saddr, &self.daddr, tcp_len)
    }
}

/// A TCP segment, located and length-checked.
#[derive(Clone, Copy, Debug)]
pub struct TcpSegment<I> {
    /// Offset of the IP header (14, 18 or 22 with VLAN tags).
    pub l3_off: usize,
    pub ip: I,
    /// Offset of the TCP header (after any IPv4 options or IPv6 extension
    /// headers).
    pub l4_off: usize,
    pub tcp: TcpHdr,
    /// TCP header length including options (20..=60).
    pub tcp_len: usize,
    /// TCP payload length, from the IP header's length field.
    pub payload_len: usize,
}

/// A TCP segment over IPv4.
pub type Ipv4Tcp = TcpSegment<Ipv4Hdr>;
/// A TCP segment over IPv6.
pub type Ipv6Tcp = TcpSegment<Ipv6Hdr>;

impl<I> TcpSegment<I> {
    /// The IP packet's length without any link-layer padding: from its
    /// header to the end of the segment.
    #[inline(always)]
    pub fn packet_len(&self) -> usize {
        self.l4_off - self.l3_off + self.tcp_len + self.payload_len
    }

    #[inline(always)]
    pub fn options_off(&self) -> usize {
        self.l4_off + size_of::<TcpHdr>()
    }
    #[inline(always)]
    pub fn options_len(&self) -> usize {
        self.tcp_len - size_of::<TcpHdr>()
    }
}

/// What the parser found. Anything it cannot fully vouch for is `Malformed`.
#[derive(Clone, Copy, Debug)]
pub enum Parsed {
    /// Not IPv4 (ARP, IPv6, LLDP, ...); IPv6 goes on to
    /// [`parse_ipv6_tcp`] at `l3_off`.
    NotIpv4 {
        ether_type: u16,
        /// Offset of the network header (after any VLAN tags).
        l3_off: usize,
    },
    /// IPv4 but not TCP (ICMP, UDP, ...).
    Ipv4Other {
        ip: Ipv4Hdr,
        /// Offset of the IPv4 header.
        l3_off: usize,
    },
    /// An IPv4 fragment. A non-first fragment carries no TCP header, so the
    /// gate cannot classify it by port.
    Ipv4Fragment {
        ip: Ipv4Hdr,
        l3_off: usize,
    },
    Tcp(Ipv4Tcp),
    /// Truncated or self-inconsistent headers.
    Malformed,
}

/// Parses Ethernet, up to [`MAX_VLAN_TAGS`] VLAN tags, IPv4 (honouring IHL
/// and total length, so Ethernet padding and trailing junk are ignored) and
/// the TCP header (honouring the data offset).
#[inline(always)]
pub fn parse_ipv4_tcp<F: Frame + ?Sized>(frame: &F) -> Parsed {
    let Some(eth) = frame.load::<EthHdr>(0) else {
        return Parsed::Malformed;
    };
    let mut ether_type = u16::from_be_bytes(eth.ether_type);
    let mut l3_off = size_of::<EthHdr>();
    // Unrolled on purpose: a fixed number of tags keeps the verifier's view
    // of `l3_off` to three constants.
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Some(vlan) = frame.load::<VlanHdr>(l3_off) else {
            return Parsed::Malformed;
        };
        ether_type = u16::from_be_bytes(vlan.inner_type);
        l3_off += size_of::<VlanHdr>();
    }
    if ether_type != ETH_P_IPV4 {
        // A third stacked tag lands here too and is passed to the stack,
        // which has no VLAN device for it either.
        return Parsed::NotIpv4 { ether_type, l3_off };
    }
    let Some(ip) = frame.load::<Ipv4Hdr>(l3_off) else {
        return Parsed::Malformed;
    };
    let ihl = ip.header_len();
    let total = ip.total_len();
    if ip.version_ihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() || total < ihl {
        return Parsed::Malformed;
    }
    if total > frame.len().saturating_sub(l3_off) {
        return Parsed::Malformed;
    }
    if ip.is_fragment() {
        return Parsed::Ipv4Fragment { ip, l3_off };
    }
    if ip.proto != IPPROTO_TCP {
        return Parsed::Ipv4Other { ip, l3_off };
    }
    let l4_off = l3_off + ihl;
    let Some(tcp) = frame.load::<TcpHdr>(l4_off) else {
        return Parsed::Malformed;
    };
    let tcp_len = tcp.header_len();
    if tcp_len < size_of::<TcpHdr>() || tcp_len > total - ihl {
        return Parsed::Malformed;
    }
    Parsed::Tcp(Ipv4Tcp { l3_off, ip, l4_off, tcp, tcp_len, payload_len: total - ihl - tcp_len })
}

/// Most IPv6 extension headers walked before TCP. Real handshakes carry
/// none; the bound keeps the walk a fixed, verifiable loop.
pub const MAX_IPV6_EXTENSIONS: usize = 4;

/// The first bytes of a routing header (RFC 8200 §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6RoutingHdr {
    pub next_header: u8,
    /// Length in 8-byte units, not counting the first 8 bytes.
    pub hdr_ext_len: u8,
    pub routing_type: u8,
    pub segments_left: u8,
}

unsafe impl Wire for Ipv6RoutingHdr {}

/// Why an IPv6 packet is refused before its transport header is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Refusal {
    /// A fragment header: the TCP header may be in another fragment, and
    /// a handshake never needs one.
    Fragment,
    /// A routing header with segments left: this host is not the packet's
    /// final destination, so its address and port do not say where it goes.
    Routed,
    /// Hop-by-hop or destination options other than padding, or longer
    /// than 8 bytes: options a handshake has no use for, whose meaning
    /// (router alert, jumbo payload, unknown-option actions) the gate would
    /// otherwise have to second-guess.
    Options,
    /// More than [`MAX_IPV6_EXTENSIONS`] extension headers.
    TooDeep,
}

/// What the IPv6 parser found; the headers it read are in the
/// [`Ipv6Tcp`] it filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed6 {
    /// A TCP segment: the whole [`Ipv6Tcp`] is filled.
    Tcp,
    /// Not TCP (ICMPv6, UDP, ...): `next_header` at `l4_off`. Only the IPv6
    /// header is filled.
    Other { next_header: u8, l4_off: usize },
    /// Refused on purpose (see [`Ipv6Refusal`]). Only the IPv6 header is
    /// filled.
    Refused(Ipv6Refusal),
    /// Truncated or self-inconsistent headers, or a hop-by-hop header
    /// anywhere but first (RFC 8200 §4.1; ip6_input.c drops those too).
    Malformed,
}

/// Parses the IPv6 header at `l3_off` (honouring the payload length, so
/// Ethernet padding and trailing junk are ignored), walks up to
/// [`MAX_IPV6_EXTENSIONS`] extension headers and parses the TCP header,
/// into `seg`: the caller's memory, so that the gate can parse into its
/// scratch map rather than onto the BPF stack.
///
/// Extension headers, each decided on purpose:
/// - hop-by-hop (first only) and destination options: skipped when they
///   are 8 bytes of padding, refused otherwise ([`Ipv6Refusal::Options`]);
/// - routing: skipped with no segments left (the packet is at its final
///   destination), refused with some ([`Ipv6Refusal::Routed`]);
/// - fragment: refused ([`Ipv6Refusal::Fragment`]);
/// - anything else ends the walk: the packet is not TCP.
#[inline(always)]
pub fn parse_ipv6_tcp<F: Frame + ?Sized>(frame: &F, l3_off: usize, seg: &mut Ipv6Tcp) -> Parsed6 {
    let Some(ip) = frame.load::<Ipv6Hdr>(l3_off) else {
        return Parsed6::Malformed;
    };
    seg.ip = ip;
    seg.l3_off = l3_off;
    let payload = u16::from_be_bytes(ip.payload_len) as usize;
    if ip.version_class_flow[0] >> 4 != 6 || payload > frame.len().saturating_sub(l3_off + size_of::<Ipv6Hdr>()) {
        return Parsed6::Malformed;
    }
    let end = l3_off + size_of::<Ipv6Hdr>() + payload;
    let mut next = ip.next_header;
    let mut off = l3_off + size_of::<Ipv6Hdr>();
    for i in 0..MAX_IPV6_EXTENSIONS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS => {
                if next == IPPROTO_HOPOPTS && i != 0 {
                    return Parsed6::Malformed;
                }
                let Some(opts) = frame.load::<[u8; 8]>(off) else {
                    return Parsed6::Malformed;
                };
                if off + 8 > end {
                    return Parsed6::Malformed;
                }
                if opts[1] != 0 || !padding_only(&opts) {
                    return Parsed6::Refused(Ipv6Refusal::Options);
                }
                next = opts[0];
                off += 8;
            }
            IPPROTO_ROUTING => {
                let Some(rh) = frame.load::<Ipv6RoutingHdr>(off) else {
                    return Parsed6::Malformed;
                };
                if rh.segments_left != 0 {
                    return Parsed6::Refused(Ipv6Refusal::Routed);
                }
                off += (rh.hdr_ext_len as usize + 1) * 8;
                if off > end {
                    return Parsed6::Malformed;
                }
                next = rh.next_header;
            }
            IPPROTO_FRAGMENT => return Parsed6::Refused(Ipv6Refusal::Fragment),
            _ => break,
        }
    }
    match next {
        IPPROTO_TCP => {}
        IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT => {
            return Parsed6::Refused(Ipv6Refusal::TooDeep);
        }
        _ => return Parsed6::Other { next_header: next, l4_off: off },
    }
    let Some(tcp) = frame.load::<TcpHdr>(off) else {
        return Parsed6::Malformed;
    };
    let tcp_len = tcp.header_len();
    if tcp_len < size_of::<TcpHdr>() || off + tcp_len > end {
        return Parsed6::Malformed;
    }
    seg.tcp = tcp;
    seg.l4_off = off;
    seg.tcp_len = tcp_len;
    seg.payload_len = end - off - tcp_len;
    Parsed6::Tcp
}

/// Whether the six option bytes of an 8-byte hop-by-hop or destination
/// options header are only Pad1 and PadN options, with PadN's bytes zero
/// as Linux requires (ip6_parse_tlv in net/ipv6/exthdrs.c).
///
/// Every byte is read at a constant position: a walk driven by the option
/// lengths gives the verifier a variable index per step and fails.
#[inline(always)]
pub fn padding_only(header: &[u8; 8]) -> bool {
    // Bytes of the current PadN still to come; `usize::MAX` while its
    // length byte is.
    let mut pending = 0usize;
    for &byte in &header[2..] {
        if pending == usize::MAX {
            pending = byte as usize;
        } else if pending > 0 {
            if byte != 0 {
                return false;
            }
            pending -= 1;
        } else {
            match byte {
                0 => {}
                1 => pending = usize::MAX,
                _ => return false,
            }
        }
    }
    pending == 0
}

#[cfg(test)]
mod ipv6_tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    /// One extension header of a generated chain.
    #[derive(Clone, Debug)]
    enum Ext {
        /// Hop-by-hop or destination options: `proto`, the option bytes
        /// after next-header and length, and `extra` 8-byte units.
        Options {
            proto: u8,
            body: [u8; 6],
            extra: u8,
        },
        Routing {
            segments_left: u8,
            extra: u8,
        },
        Fragment,
    }

    impl Ext {
        fn proto(&self) -> u8 {
            match self {
                Ext::Options { proto, .. } => *proto,
                Ext::Routing { .. } => IPPROTO_ROUTING,
                Ext::Fragment => IPPROTO_FRAGMENT,
            }
        }

        fn bytes(&self, next: u8) -> Vec<u8> {
            match self {
                Ext::Options { body, extra, .. } => {
                    let mut b = vec![next, *extra];
                    b.extend_from_slice(body);
                    b.resize(8 + 8 * *extra as usize, 0);
                    b
                }
                Ext::Routing { segments_left, extra } => {
                    let mut b = vec![next, *extra, 0, *segments_left];
                    b.resize(8 + 8 * *extra as usize, 0);
                    b
                }
                Ext::Fragment => vec![next, 0, 0, 0, 0, 0, 0, 1],
            }
        }
    }

    /// Ethernet + IPv6 + `exts` + `last` (TCP header of `doff` words and
    /// `payload` bytes, or 8 bytes of another protocol).
    fn frame(exts: &[Ext], last: u8, doff: u8, payload: usize) -> Vec<u8> {
        let mut after = Vec::new();
        for (i, ext) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(last, Ext::proto);
            after.extend(ext.bytes(next));
        }
        if last == IPPROTO_TCP {
            let mut tcp = vec![0u8; (doff as usize * 4).max(20)];
            tcp[12] = doff << 4;
            tcp.resize(tcp.len() + payload, 0xab);
            after.extend(tcp);
        } else {
            after.extend([0u8; 8]);
        }
        let mut f = vec![0u8; 12];
        f.extend(ETH_P_IPV6.to_be_bytes());
        f.extend([0x60, 0, 0, 0]);
        f.extend((after.len() as u16).to_be_bytes());
        f.push(exts.first().map_or(last, Ext::proto));
        f.push(64);
        f.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain([0; 11].iter()).chain([1].iter()));
        f.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain([0; 11].iter()).chain([2].iter()));
        f.extend(after);
        f
    }

    /// The policy, stated independently of the walk: the first refusal or
    /// error in chain order decides.
    fn expected(exts: &[Ext], last: u8, doff: u8) -> &'static str {
        for (i, ext) in exts.iter().enumerate() {
            if i == MAX_IPV6_EXTENSIONS {
                return "too deep";
            }
            match ext {
                Ext::Options { proto, .. } if *proto == IPPROTO_HOPOPTS && i != 0 => return "malformed",
                Ext::Options { body, extra, .. } => {
                    let mut header = [0u8; 8];
                    header[2..].copy_from_slice(body);
                    if *extra != 0 || !reference_padding(&header) {
                        return "options";
                    }
                }
                Ext::Routing { segments_left, .. } if *segments_left != 0 => return "routed",
                Ext::Routing { .. } => {}
                Ext::Fragment => return "fragment",
            }
        }
        match last {
            IPPROTO_TCP if doff < 5 => "malformed",
            IPPROTO_TCP => "tcp",
            _ => "other",
        }
    }

    /// Pad1/PadN by their lengths, as RFC 8200 §4.2 reads.
    fn reference_padding(header: &[u8; 8]) -> bool {
        let mut i = 2;
        while i < 8 {
            match header[i] {
                0 => i += 1,
                1 if i + 1 < 8 => {
                    let n = header[i + 1] as usize;
                    if i + 2 + n > 8 || header[i + 2..i + 2 + n].iter().any(|&b| b != 0) {
                        return false;
                    }
                    i += 2 + n;
                }
                _ => return false,
            }
        }
        true
    }

    fn outcome(parsed: Parsed6) -> &'static str {
        match parsed {
            Parsed6::Tcp => "tcp",
            Parsed6::Other { .. } => "other",
            Parsed6::Refused(Ipv6Refusal::Fragment) => "fragment",
            Parsed6::Refused(Ipv6Refusal::Routed) => "routed",
            Parsed6::Refused(Ipv6Refusal::Options) => "options",
            Parsed6::Refused(Ipv6Refusal::TooDeep) => "too deep",
            Parsed6::Malformed => "malformed",
        }
    }

    fn parse(f: &[u8]) -> (Parsed6, Ipv6Tcp) {
        let mut seg =
            Ipv6Tcp { l3_off: 0, ip: Ipv6Hdr::zeroed(), l4_off: 0, tcp: TcpHdr::zeroed(), tcp_len: 0, payload_len: 0 };
        (parse_ipv6_tcp(f, 14, &mut seg), seg)
    }

    #[test]
    fn each_extension_header_case_is_decided() {
        let pad = |body: [u8; 6]| Ext::Options { proto: IPPROTO_DSTOPTS, body, extra: 0 };
        let hbh = |body: [u8; 6]| Ext::Options { proto: IPPROTO_HOPOPTS, body, extra: 0 };
        let cases: Vec<(&str, Vec<Ext>, &str)> = vec![
            ("no extension", vec![], "tcp"),
            ("hop-by-hop PadN", vec![hbh([1, 4, 0, 0, 0, 0])], "tcp"),
            ("hop-by-hop Pad1s", vec![hbh([0; 6])], "tcp"),
            ("hop-by-hop router alert", vec![hbh([5, 2, 0, 0, 1, 0])], "options"),
            ("PadN with non-zero bytes", vec![pad([1, 4, 0, 9, 0, 0])], "options"),
            ("PadN overrunning", vec![pad([0, 0, 1, 4, 0, 0])], "options"),
            ("PadN length byte missing", vec![pad([0, 0, 0, 0, 0, 1])], "options"),
            (
                "16-byte destination options",
                vec![Ext::Options { proto: IPPROTO_DSTOPTS, body: [0; 6], extra: 1 }],
                "options",
            ),
            ("hop-by-hop second", vec![pad([0; 6]), hbh([0; 6])], "malformed"),
            ("routing, no segments left", vec![Ext::Routing { segments_left: 0, extra: 2 }], "tcp"),
            ("routing, segments left", vec![Ext::Routing { segments_left: 1, extra: 2 }], "routed"),
            ("fragment", vec![Ext::Fragment], "fragment"),
            ("fragment after options", vec![hbh([0; 6]), pad([0; 6]), Ext::Fragment], "fragment"),
            (
                "four headers",
                vec![hbh([0; 6]), pad([0; 6]), Ext::Routing { segments_left: 0, extra: 0 }, pad([0; 6])],
                "tcp",
            ),
            ("five headers", vec![hbh([0; 6]), pad([0; 6]), pad([0; 6]), pad([0; 6]), pad([0; 6])], "too deep"),
        ];
        for (what, exts, want) in cases {
            assert_eq!(expected(&exts, IPPROTO_TCP, 5), want, "{what}: the reference policy disagrees with the table");
            let f = frame(&exts, IPPROTO_TCP, 5, 3);
            assert_eq!(outcome(parse(&f).0), want, "{what}");
        }
    }

    #[test]
    fn a_segment_is_located_after_its_extension_headers() {
        let exts = [
            Ext::Routing { segments_left: 0, extra: 1 },
            Ext::Options { proto: IPPROTO_DSTOPTS, body: [0; 6], extra: 0 },
        ];
        let mut f = frame(&exts, IPPROTO_TCP, 8, 5);
        f.extend([0xee; 7]); // Ethernet padding: not payload
        let (Parsed6::Tcp, seg) = parse(&f) else { panic!("not parsed as TCP") };
        assert_eq!((seg.l4_off, seg.tcp_len, seg.payload_len), (14 + 40 + 16 + 8, 32, 5));
    }

    #[test]
    fn lengths_past_the_frame_are_malformed() {
        let f = frame(&[], IPPROTO_TCP, 5, 0);
        assert!(matches!(parse(&f[..f.len() - 1]).0, Parsed6::Malformed), "payload length past the frame");
        let f = frame(&[Ext::Routing { segments_left: 0, extra: 0 }], IPPROTO_TCP, 5, 0);
        let mut short = f.clone();
        short[14 + 4..14 + 6].copy_from_slice(&4u16.to_be_bytes());
        assert!(matches!(parse(&short).0, Parsed6::Malformed), "extension header past the payload");
        let f = frame(&[], IPPROTO_TCP, 15, 0);
        let mut short = f.clone();
        short[14 + 4..14 + 6].copy_from_slice(&40u16.to_be_bytes());
        assert!(matches!(parse(&short).0, Parsed6::Malformed), "TCP options past the payload");
        let mut v4 = frame(&[], IPPROTO_TCP, 5, 0);
        v4[14] = 0x45;
        assert!(matches!(parse(&v4).0, Parsed6::Malformed), "version 4 in an IPv6 frame");
    }

    fn ext() -> impl Strategy<Value = Ext> {
        let body = prop_oneof![
            Just([0u8; 6]),
            Just([1, 4, 0, 0, 0, 0]),
            Just([0, 1, 3, 0, 0, 0]),
            any::<[u8; 6]>(),
            (0u8..6, any::<u8>()).prop_map(|(at, v)| {
                let mut b = [1, 4, 0, 0, 0, 0];
                b[at as usize] = v;
                b
            }),
        ];
        prop_oneof![
            (prop_oneof![Just(IPPROTO_HOPOPTS), Just(IPPROTO_DSTOPTS)], body, prop_oneof![4 => Just(0u8), 1 => 1u8..3])
                .prop_map(|(proto, body, extra)| Ext::Options { proto, body, extra }),
            (prop_oneof![3 => Just(0u8), 1 => any::<u8>()], 0u8..4)
                .prop_map(|(segments_left, extra)| Ext::Routing { segments_left, extra }),
            Just(Ext::Fragment),
        ]
    }

    proptest! {
        /// Arbitrary chains of extension headers: the parser's outcome is
        /// the policy's, and a TCP segment is found where the chain ends.
        #[test]
        fn arbitrary_extension_chains_follow_the_policy(
            exts in proptest::collection::vec(ext(), 0..7),
            last in prop_oneof![3 => Just(IPPROTO_TCP), 1 => Just(17u8), 1 => Just(58u8)],
            doff in 0u8..16,
            payload in 0usize..64,
        ) {
            let f = frame(&exts, last, doff, payload);
            let (got, seg) = parse(&f);
            prop_assert_eq!(outcome(got), expected(&exts, last, doff));
            if got == Parsed6::Tcp {
                let chain: usize = exts.iter().map(|e| e.bytes(0).len()).sum();
                prop_assert_eq!(seg.l4_off, 14 + 40 + chain);
                prop_assert_eq!(seg.tcp_len + seg.payload_len, f.len() - seg.l4_off);
            }
        }

        /// The padding check agrees with a length-driven reading of RFC 8200.
        #[test]
        fn padding_check_matches_the_rfc_reading(body in any::<[u8; 6]>()) {
            let mut header = [0u8; 8];
            header[2..].copy_from_slice(&body);
            prop_assert_eq!(padding_only(&header), reference_padding(&header));
        }

        /// Any bytes at all: the parser answers, never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }
    }
}
