//! Wire headers and the one bounds-checked accessor every packet read goes
//! through ([`Frame::load`]), plus the Ethernet/VLAN/IPv4/TCP parser shared by
//! the gateway gate and the agent stamper.

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
}

unsafe impl Wire for u8 {}
unsafe impl<const N: usize> Wire for [u8; N] {}

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

/// A TCP segment over IPv4, located and length-checked.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Tcp {
    /// Offset of the IPv4 header (14, 18 or 22 with VLAN tags).
    pub l3_off: usize,
    pub ip: Ipv4Hdr,
    /// Offset of the TCP header (after any IPv4 options).
    pub l4_off: usize,
    pub tcp: TcpHdr,
    /// TCP header length including options (20..=60).
    pub tcp_len: usize,
    /// TCP payload length, from the IPv4 total length.
    pub payload_len: usize,
}

impl Ipv4Tcp {
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
    /// Not IPv4 (ARP, IPv6, LLDP, ...). IPv6 services are a named next step;
    /// until then no IPv6 address can be a protected VIP.
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
