//! Internet checksum (RFC 1071) over fixed-size header structs, usable in BPF
//! (constant trip counts) and on the host.

use crate::net::{IPPROTO_TCP, Wire};

/// Sums `v` as big-endian 16-bit words into a 32-bit accumulator.
#[inline(always)]
pub fn sum_words<T: Wire>(v: &T, mut acc: u32) -> u32 {
    let n = core::mem::size_of::<T>();
    // SAFETY: `T: Wire` is plain bytes; we read exactly `size_of::<T>()`.
    let bytes = unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), n) };
    let mut i = 0;
    while i + 1 < n {
        acc += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    if n % 2 == 1 {
        acc += (bytes[n - 1] as u32) << 8;
    }
    acc
}

/// A 16-bit field as a checksum word.
#[inline(always)]
pub fn word2(w: [u8; 2]) -> u32 {
    u16::from_be_bytes(w) as u32
}

/// The sum of a 32-bit field's two checksum words.
#[inline(always)]
pub fn word4(a: [u8; 4]) -> u32 {
    word2([a[0], a[1]]) + word2([a[2], a[3]])
}

/// Folds the carries and complements: the value to store in a header.
#[inline(always)]
pub fn finish(mut acc: u32) -> [u8; 2] {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    (!(acc as u16)).to_be_bytes()
}

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Incremental update (RFC 1624, eqn. 3): the checksum `check` of data
/// whose words summed to `old_sum` now that they sum to `new_sum`. The
/// sums may include the checksum field itself as long as both hold the
/// same value there.
#[inline(always)]
pub fn replace(check: [u8; 2], old_sum: u32, new_sum: u32) -> [u8; 2] {
    let acc = (!u16::from_be_bytes(check)) as u32 + (!fold(old_sum)) as u32 + fold(new_sum) as u32;
    (!fold(acc)).to_be_bytes()
}

/// Sum of the IPv4 pseudo-header for a TCP segment of `tcp_len` bytes.
#[inline(always)]
pub fn tcp_pseudo_sum(saddr: [u8; 4], daddr: [u8; 4], tcp_len: u16) -> u32 {
    u16::from_be_bytes([saddr[0], saddr[1]]) as u32
        + u16::from_be_bytes([saddr[2], saddr[3]]) as u32
        + u16::from_be_bytes([daddr[0], daddr[1]]) as u32
        + u16::from_be_bytes([daddr[2], daddr[3]]) as u32
        + IPPROTO_TCP as u32
        + tcp_len as u32
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1) for a TCP segment of
/// `tcp_len` bytes.
#[inline(always)]
pub fn tcp_pseudo_sum_v6(saddr: &[u8; 16], daddr: &[u8; 16], tcp_len: u16) -> u32 {
    pseudo_sum_v6(saddr, daddr, IPPROTO_TCP, tcp_len)
}

/// Sum of the IPv6 pseudo-header for `len` bytes of upper-layer protocol
/// `next_header` (TCP, ICMPv6).
#[inline(always)]
pub fn pseudo_sum_v6(saddr: &[u8; 16], daddr: &[u8; 16], next_header: u8, len: u16) -> u32 {
    let mut acc = next_header as u32 + len as u32;
    let mut i = 0;
    while i < 16 {
        acc +=
            u16::from_be_bytes([saddr[i], saddr[i + 1]]) as u32 + u16::from_be_bytes([daddr[i], daddr[i + 1]]) as u32;
        i += 2;
    }
    acc
}

/// The big-endian word sum of an IPv6 address held as network-order words
/// (`abi::v6_words`): summed as native halves, whose byte-swapped sum is
/// the big-endian one (RFC 1071 §2(B)). Word loads and no byte shuffling:
/// on BPF, summing the 16 address bytes one by one spills each.
#[inline(always)]
pub fn words_sum(words: &[u32; 4]) -> u32 {
    let half = |w: u32| (w & 0xffff) + (w >> 16);
    from_native_partial(half(words[0]) + half(words[1]) + half(words[2]) + half(words[3]))
}

/// The big-endian word sum (as [`sum_words`] builds) of data whose
/// native-endian 16-bit words summed to `partial`, as the kernel's
/// `csum_partial` (and so `bpf_csum_diff`) returns it. A one's-complement
/// sum of byte-swapped words is the byte-swapped sum (RFC 1071 §2(B)).
#[inline(always)]
pub fn from_native_partial(partial: u32) -> u32 {
    u16::from_be(fold(partial)) as u32
}

/// True when `bytes` (a whole header with its checksum in place) sums to
/// 0xffff, i.e. verifies. For host tests and userspace.
pub fn verifies(bytes: &[u8], initial: u32) -> bool {
    let mut acc = initial;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    finish(acc) == [0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A sum taken over native-endian words, as the kernel takes it,
        /// converts to the big-endian sum of the same bytes.
        #[test]
        fn native_partial_sums_convert_to_network_order(words in proptest::collection::vec(any::<[u8; 2]>(), 0..800)) {
            let native: u32 = words.iter().map(|w| u16::from_ne_bytes(*w) as u32).fold(0u32, |a, w| {
                let (s, carry) = a.overflowing_add(w);
                s + carry as u32
            });
            let network: u32 = words.iter().map(|w| word2(*w)).sum();
            prop_assert_eq!(fold(from_native_partial(native)), fold(network));
        }
    }
}
