//! The handshake MAC: SipHash-2-4 over a fixed message, 32 bytes for
//! IPv4 and 56 for IPv6.
//!
//! SipHash is written out here rather than taken from a crate because the
//! kernel side needs a fixed-shape, loop-free, allocation-free form the BPF
//! verifier accepts; the host tests check it against the `siphasher` crate.
//!
//! Message (little-endian u64 words, i.e. these bytes in order):
//! ```text
//! IPv4: saddr(4) daddr(4) |
//! IPv6: saddr(16) daddr(16) |
//! then: sport(2) dport(2) client_isn(4, BE) |
//!       second(4, BE) agent_id(4, BE) | domain(1) version(1) exid(2, BE) 0(4)
//! ```
//! `second` is the server ISN for a handshake ACK and the coarse time
//! counter for a stealth SYN; `domain` keeps the two from ever colliding.

use crate::abi::FlowKey;
use crate::net::{IpHeader, TcpHdr, TcpSegment};
use crate::option::CAPABILITY_VERSION;

pub const DOMAIN_ACK: u8 = 1;
pub const DOMAIN_SYN: u8 = 2;

/// Stealth SYN stamps use TAI nanoseconds >> this (about 34 s per tick);
/// the gate accepts the current and the previous tick.
pub const SYN_TIME_SHIFT: u32 = 35;

/// The coarse time counter of a stealth SYN stamp from TAI nanoseconds.
#[inline(always)]
pub const fn syn_tick(tai_ns: u64) -> u32 {
    (tai_ns >> SYN_TIME_SHIFT) as u32
}

/// A 128-bit SipHash key as two little-endian halves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacKey {
    pub k0: u64,
    pub k1: u64,
}

const _: () = assert!(core::mem::size_of::<MacKey>() == 16);

impl MacKey {
    /// The same key with its first half replaced (tests forge with it).
    pub const fn with_k0(self, k0: u64) -> Self {
        Self { k0, k1: self.k1 }
    }

    pub fn from_bytes(b: [u8; 16]) -> Self {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&b[..8]);
        hi.copy_from_slice(&b[8..]);
        Self { k0: u64::from_le_bytes(lo), k1: u64::from_le_bytes(hi) }
    }
}

/// An address a MAC binds: IPv4's 4 bytes or IPv6's 16.
pub trait BoundAddr: Copy + core::fmt::Debug + PartialEq {
    /// The MAC of `binding` under `key` (the family's message).
    fn mac(binding: &Binding<Self>, key: &MacKey) -> u64;
    /// The address from a map key's network-order words.
    fn from_words(words: &[u32; 4]) -> Self;
}

impl BoundAddr for [u8; 4] {
    #[inline(always)]
    fn from_words(words: &[u32; 4]) -> Self {
        words[0].to_ne_bytes()
    }

    #[inline(always)]
    fn mac(b: &Binding<Self>, key: &MacKey) -> u64 {
        let addrs = u32::from_le_bytes(b.saddr) as u64 | (u32::from_le_bytes(b.daddr) as u64) << 32;
        let [w1, w2, w3] = b.tail_words();
        siphash24(key, &[addrs, w1, w2, w3])
    }
}

impl BoundAddr for [u8; 16] {
    #[inline(always)]
    fn from_words(w: &[u32; 4]) -> Self {
        let [a, b, c, d] = [w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes()];
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
    }

    #[inline(always)]
    fn mac(b: &Binding<Self>, key: &MacKey) -> u64 {
        let half = |a: &[u8; 16], i: usize| {
            u64::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5], a[i + 6], a[i + 7]])
        };
        let [w1, w2, w3] = b.tail_words();
        siphash24(key, &[half(&b.saddr, 0), half(&b.saddr, 8), half(&b.daddr, 0), half(&b.daddr, 8), w1, w2, w3])
    }
}

/// What a capability MAC binds; `A` is the family's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding<A = [u8; 4]> {
    pub saddr: A,
    pub daddr: A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub client_isn: u32,
    /// Server ISN (ACK) or time counter (SYN).
    pub second: u32,
    pub agent_id: u32,
    pub domain: u8,
    pub exid: u16,
}

impl<A: BoundAddr> Binding<A> {
    /// The binding of a handshake ACK: both ISNs come from the ACK itself
    /// (SEQ = client ISN + 1, ACK = server ISN + 1).
    #[inline(always)]
    pub fn handshake_ack<I: IpHeader<Addr = A>>(seg: &TcpSegment<I>, agent_id: u32, exid: u16) -> Self {
        Self::handshake_ack_on(&FlowKey::of_segment(seg), &seg.tcp, agent_id, exid)
    }

    /// As [`Binding::handshake_ack`], from the segment's flow key: the
    /// gate's, in map memory, where the addresses are aligned words (read
    /// from the packet's bytes instead, each byte stayed live on the BPF
    /// stack until the flow was recorded).
    #[inline(always)]
    pub fn handshake_ack_on(flow: &FlowKey, tcp: &TcpHdr, agent_id: u32, exid: u16) -> Self {
        Self {
            saddr: A::from_words(&flow.saddr),
            daddr: A::from_words(&flow.daddr),
            sport: tcp.sport,
            dport: tcp.dport,
            client_isn: tcp.seq().wrapping_sub(1),
            second: tcp.ack_seq().wrapping_sub(1),
            agent_id,
            domain: DOMAIN_ACK,
            exid,
        }
    }

    /// The binding of a stealth SYN at coarse TAI tick `tick`.
    #[inline(always)]
    pub fn stealth_syn<I: IpHeader<Addr = A>>(seg: &TcpSegment<I>, agent_id: u32, exid: u16, tick: u32) -> Self {
        Self::stealth_syn_on(&FlowKey::of_segment(seg), &seg.tcp, agent_id, exid, tick)
    }

    /// As [`Binding::stealth_syn`], from the segment's flow key.
    #[inline(always)]
    pub fn stealth_syn_on(flow: &FlowKey, tcp: &TcpHdr, agent_id: u32, exid: u16, tick: u32) -> Self {
        Self {
            saddr: A::from_words(&flow.saddr),
            daddr: A::from_words(&flow.daddr),
            sport: tcp.sport,
            dport: tcp.dport,
            client_isn: tcp.seq(),
            second: tick,
            agent_id,
            domain: DOMAIN_SYN,
            exid,
        }
    }

    /// The message's words after the addresses.
    #[inline(always)]
    fn tail_words(&self) -> [u64; 3] {
        let ports = u16::from_le_bytes(self.sport) as u64 | (u16::from_le_bytes(self.dport) as u64) << 16;
        let w1 = ports | (u32::from_le_bytes(self.client_isn.to_be_bytes()) as u64) << 32;
        let w2 = u32::from_le_bytes(self.second.to_be_bytes()) as u64
            | (u32::from_le_bytes(self.agent_id.to_be_bytes()) as u64) << 32;
        let w3 = self.domain as u64
            | (CAPABILITY_VERSION as u64) << 8
            | (u16::from_le_bytes(self.exid.to_be_bytes()) as u64) << 16;
        [w1, w2, w3]
    }

    /// The 64-bit MAC of this binding under `key`.
    #[inline(always)]
    pub fn mac(&self, key: &MacKey) -> u64 {
        A::mac(self, key)
    }
}

#[inline(always)]
fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    sipround(v);
    sipround(v);
    v[0] ^= m;
}

/// SipHash-2-4 of exactly `N` little-endian words (8·N bytes, N < 32).
#[inline(always)]
pub fn siphash24<const N: usize>(key: &MacKey, words: &[u64; N]) -> u64 {
    let mut v = [
        key.k0 ^ 0x736f_6d65_7073_6575,
        key.k1 ^ 0x646f_7261_6e64_6f6d,
        key.k0 ^ 0x6c79_6765_6e65_7261,
        key.k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < N {
        compress(&mut v, words[i]);
        i += 1;
    }
    // Final block: no tail bytes, the length's low byte in the top byte.
    compress(&mut v, ((8 * N) as u64) << 56);
    v[2] ^= 0xff;
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::Hasher;

    fn reference(key: &MacKey, bytes: &[u8]) -> u64 {
        let mut h = siphasher::sip::SipHasher24::new_with_keys(key.k0, key.k1);
        h.write(bytes);
        h.finish()
    }

    #[test]
    fn matches_reference_siphash() {
        let key = MacKey::from_bytes(*b"0123456789abcdef");
        let b = Binding {
            saddr: [10, 0, 0, 1],
            daddr: [10, 0, 0, 2],
            sport: 40000u16.to_be_bytes(),
            dport: 443u16.to_be_bytes(),
            client_isn: 0x1122_3344,
            second: 0x5566_7788,
            agent_id: 7,
            domain: DOMAIN_ACK,
            exid: 0xac47,
        };
        let mut bytes = [0u8; 32];
        bytes[0..4].copy_from_slice(&b.saddr);
        bytes[4..8].copy_from_slice(&b.daddr);
        bytes[8..10].copy_from_slice(&b.sport);
        bytes[10..12].copy_from_slice(&b.dport);
        bytes[12..16].copy_from_slice(&b.client_isn.to_be_bytes());
        bytes[16..20].copy_from_slice(&b.second.to_be_bytes());
        bytes[20..24].copy_from_slice(&b.agent_id.to_be_bytes());
        bytes[24] = DOMAIN_ACK;
        bytes[25] = CAPABILITY_VERSION;
        bytes[26..28].copy_from_slice(&0xac47u16.to_be_bytes());
        assert_eq!(b.mac(&key), reference(&key, &bytes), "MAC message layout drifted from the documented byte order");
    }

    #[test]
    fn ipv6_message_matches_reference_siphash() {
        let key = MacKey::from_bytes(*b"fedcba9876543210");
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        for i in 0..16 {
            saddr[i] = 0x20 + i as u8;
            daddr[i] = 0x80 + i as u8;
        }
        let b = Binding {
            saddr,
            daddr,
            sport: 40000u16.to_be_bytes(),
            dport: 443u16.to_be_bytes(),
            client_isn: 0x1122_3344,
            second: 0x5566_7788,
            agent_id: 7,
            domain: DOMAIN_SYN,
            exid: 0xac47,
        };
        let mut bytes = [0u8; 56];
        bytes[0..16].copy_from_slice(&saddr);
        bytes[16..32].copy_from_slice(&daddr);
        bytes[32..34].copy_from_slice(&b.sport);
        bytes[34..36].copy_from_slice(&b.dport);
        bytes[36..40].copy_from_slice(&b.client_isn.to_be_bytes());
        bytes[40..44].copy_from_slice(&b.second.to_be_bytes());
        bytes[44..48].copy_from_slice(&b.agent_id.to_be_bytes());
        bytes[48] = DOMAIN_SYN;
        bytes[49] = CAPABILITY_VERSION;
        bytes[50..52].copy_from_slice(&0xac47u16.to_be_bytes());
        assert_eq!(b.mac(&key), reference(&key, &bytes), "IPv6 MAC message drifted from the documented byte order");
        let mut moved = b;
        moved.daddr[15] ^= 1;
        assert_ne!(moved.mac(&key), b.mac(&key), "the last byte of the IPv6 destination must be bound");
    }

    #[test]
    fn every_bound_field_changes_the_mac() {
        let key = MacKey { k0: 1, k1: 2 };
        let base = Binding {
            saddr: [1, 2, 3, 4],
            daddr: [5, 6, 7, 8],
            sport: [0, 1],
            dport: [0, 2],
            client_isn: 3,
            second: 4,
            agent_id: 5,
            domain: DOMAIN_ACK,
            exid: 6,
        };
        let m = base.mac(&key);
        let variants = [
            Binding { saddr: [1, 2, 3, 5], ..base },
            Binding { daddr: [5, 6, 7, 9], ..base },
            Binding { sport: [0, 9], ..base },
            Binding { dport: [0, 9], ..base },
            Binding { client_isn: 9, ..base },
            Binding { second: 9, ..base },
            Binding { agent_id: 9, ..base },
            Binding { domain: DOMAIN_SYN, ..base },
            Binding { exid: 9, ..base },
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v.mac(&key), m, "variant {i} did not change the MAC: {v:?}");
        }
        assert_ne!(base.mac(&MacKey { k0: 1, k1: 3 }), m, "the key did not change the MAC");
    }
}
