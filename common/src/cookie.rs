//! What the cookie SYN/ACK offers, and how the gate remembers it without
//! keeping state (docs/design.md §2 step 2).
//!
//! A SYN cookie ISN only has room for the MSS bucket, and the kernel's
//! raw cookie helpers do not even hand that back
//! (`bpf_tcp_raw_check_syncookie_ipv4` returns 0 or -EACCES). Like the
//! kernel's `cookie_init_timestamp` (net/ipv4/syncookies.c), the gate
//! therefore hides the client's choices in the low bits of the SYN/ACK's
//! TSval, which the client echoes in the TSecr of its handshake ACK:
//!
//! ```text
//! bit 7..6  MSS bucket index (0..3 into the family's cookie MSS table)
//! bit 5     ECN requested (ECE+CWR on the SYN)
//! bit 4     SACK-permitted
//! bit 3..0  client window scale (0..14; 0xf: none)
//! ```
//!
//! The kernel uses six bits and keeps the MSS in the ISN; the gate also
//! needs the MSS back (for the SYN it sends the target), so it uses eight.
//! The rest of the TSval is a millisecond clock plus a per-address-pair
//! offset, as Linux's own TSvals are (`secure_tcp_ts_off`), so it neither
//! reveals uptime nor differs in kind from the host's other ports.
//!
//! A client that sends no timestamps gets an MSS-only SYN/ACK: without a
//! TSecr nothing would bring window scale or SACK back (the kernel's
//! cookie mode does the same, `tcp_conn_request`).

use crate::abi::FAMILY_IPV6;
use crate::net::IpHeader;
use crate::option::{MAX_WSCALE, NO_WSCALE};

/// MSS values a cookie can encode (the kernel's `msstab`,
/// net/ipv4/syncookies.c): `bpf_tcp_raw_gen_syncookie_ipv4` rounds the
/// client's MSS down to one of these.
pub const MSS_TABLE_V4: [u16; 4] = [536, 1300, 1440, 1460];
/// The same for IPv6 (`msstab`, net/ipv6/syncookies.c: 1280, 1480, 1500
/// and 9000 less 60 bytes of headers), `bpf_tcp_raw_gen_syncookie_ipv6`'s.
pub const MSS_TABLE_V6: [u16; 4] = [1220, 1420, 1440, 8940];

/// The cookie MSS table of family `I`.
#[inline(always)]
pub const fn mss_table<I: IpHeader>() -> [u16; 4] {
    if I::FAMILY == FAMILY_IPV6 { MSS_TABLE_V6 } else { MSS_TABLE_V4 }
}

/// The MSS a client's SYN stands for when it carries no MSS option: 536
/// over IPv4 (TCP_MSS_DEFAULT, RFC 9293), 1220 over IPv6 (IPV6_MIN_MTU less
/// headers, as tcp_v6_init_sock and RFC 8200's minimum MTU have it).
#[inline(always)]
pub const fn default_mss<I: IpHeader>() -> u16 {
    if I::FAMILY == FAMILY_IPV6 { 1220 } else { 536 }
}

/// Low TSval bits that carry the client's choices.
pub const TS_OPT_BITS: u32 = 8;
const TS_OPT_MASK: u32 = (1 << TS_OPT_BITS) - 1;
const TS_WSCALE_MASK: u32 = 0x0f;
const TS_WSCALE_NONE: u32 = 0x0f;
const TS_SACK: u32 = 1 << 4;
const TS_ECN: u32 = 1 << 5;
const TS_MSS_SHIFT: u32 = 6;

/// The options a client's SYN offered, as the cookie remembers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOffer {
    /// Index into the family's cookie MSS table.
    pub mss_index: u8,
    /// Window scale shift, or [`NO_WSCALE`].
    pub wscale: u8,
    /// 1: SACK-permitted.
    pub sack_ok: u8,
    /// 1: the SYN asked for ECN.
    pub ecn: u8,
}

impl ClientOffer {
    /// The client's MSS, rounded down to family `I`'s cookie table.
    #[inline(always)]
    pub fn mss<I: IpHeader>(&self) -> u16 {
        mss_table::<I>()[(self.mss_index & 3) as usize]
    }

    /// A TSval for the SYN/ACK: `clock` with its low bits replaced by the
    /// offer.
    #[inline(always)]
    pub fn encode(&self, clock: u32) -> u32 {
        let ws = if self.wscale == NO_WSCALE { TS_WSCALE_NONE } else { (self.wscale.min(MAX_WSCALE)) as u32 };
        let mut bits = ws | ((self.mss_index as u32 & 3) << TS_MSS_SHIFT);
        if self.sack_ok != 0 {
            bits |= TS_SACK;
        }
        if self.ecn != 0 {
            bits |= TS_ECN;
        }
        (clock & !TS_OPT_MASK) | bits
    }

    /// The offer a handshake ACK's TSecr echoes back.
    #[inline(always)]
    pub fn decode(tsecr: u32) -> Self {
        let ws = tsecr & TS_WSCALE_MASK;
        Self {
            mss_index: ((tsecr >> TS_MSS_SHIFT) & 3) as u8,
            // 15 means none; 14 is the largest real shift (RFC 7323).
            wscale: if ws > MAX_WSCALE as u32 { NO_WSCALE } else { ws as u8 },
            sack_ok: u8::from(tsecr & TS_SACK != 0),
            ecn: u8::from(tsecr & TS_ECN != 0),
        }
    }
}

/// Index of the cookie bucket whose MSS the cookie helper returned (the
/// largest entry of family `I`'s table not above `mss`).
#[inline(always)]
pub fn mss_index<I: IpHeader>(mss: u16) -> u8 {
    let table = mss_table::<I>();
    let mut i = 0u8;
    if mss >= table[1] {
        i = 1;
    }
    if mss >= table[2] {
        i = 2;
    }
    if mss >= table[3] {
        i = 3;
    }
    i
}

/// The per-address-pair TSval offset: a keyed mix of both addresses, so
/// that TSvals of one client look like those of one Linux host (steady
/// millisecond clock, an offset that hides uptime) without the gate
/// keeping state. Not cryptographic: it only has to be unguessable enough
/// that a TSval says nothing about uptime.
#[inline(always)]
pub fn ts_offset(secret: u64, saddr: [u32; 4], daddr: [u32; 4]) -> u32 {
    let mut h = secret;
    let mut i = 0;
    while i < 4 {
        h = mix(h ^ ((saddr[i] as u64) << 32 | daddr[i] as u64));
        i += 1;
    }
    h as u32
}

/// The splitmix64 finaliser.
#[inline(always)]
pub(crate) fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mss_buckets_match_the_cookie_table() {
        for (mss, idx) in
            [(0u16, 0u8), (535, 0), (536, 0), (1299, 0), (1300, 1), (1439, 1), (1440, 2), (1460, 3), (9000, 3)]
        {
            assert_eq!(mss_index::<crate::net::Ipv4Hdr>(mss), idx, "IPv4 MSS {mss}");
        }
        for (mss, idx) in [(0u16, 0u8), (1220, 0), (1419, 0), (1420, 1), (1440, 2), (1460, 2), (8939, 2), (8940, 3)] {
            assert_eq!(mss_index::<crate::net::Ipv6Hdr>(mss), idx, "IPv6 MSS {mss}");
        }
    }

    proptest! {
        /// Whatever the clock, the offer comes back from the TSval intact
        /// and the clock keeps all but the low bits.
        #[test]
        fn offer_round_trips_through_the_timestamp(
            clock in any::<u32>(),
            mss_index in 0u8..4,
            wscale in prop_oneof![Just(NO_WSCALE), 0u8..=14],
            sack in 0u8..2,
            ecn in 0u8..2,
        ) {
            let offer = ClientOffer { mss_index, wscale, sack_ok: sack, ecn };
            let ts = offer.encode(clock);
            prop_assert_eq!(ClientOffer::decode(ts), offer);
            prop_assert_eq!(ts & !TS_OPT_MASK, clock & !TS_OPT_MASK);
        }
    }
}
