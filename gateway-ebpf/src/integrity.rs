//! Checksums, verified before the gate answers for a protected port. The
//! kernel drops a segment whose IPv4 header checksum (ip_rcv_core in
//! net/ipv4/ip_input.c) or TCP checksum (tcp_v4_do_rcv, through
//! tcp_checksum_complete, in net/ipv4/tcp_ipv4.c) does not verify before
//! any socket sees it, so an ordinary port never answers one. A gate that
//! answered would tell a prober which ports it protects.
//!
//! The sums come from `bpf_csum_diff` over a per-CPU copy of the headers
//! and the segment; XDP has no checksum offload result to trust.

use ackgate_common::abi::FAMILY_IPV4;
use ackgate_common::csum::{fold, from_native_partial};
use ackgate_common::kernel::frame::{XdpFrame, bounded_len};
use ackgate_common::net::{IpHeader, TcpSegment};
use aya_ebpf::helpers::bpf_csum_diff;

use crate::{maps, settings};

/// The largest span `bpf_csum_diff` sums in one call (the helper's
/// scratch of 128 words, bpf_csum_diff in net/core/filter.c).
const CHUNK: usize = 512;

/// Whether both checksums of `seg` verify. Segments longer than the copy
/// buffer (a SYN carrying more than about 1.5 KB of data on a jumbo-frame
/// edge) are not checked and count as valid.
#[inline(never)]
pub fn checksums_valid<I: IpHeader>(frame: &XdpFrame, seg: &TcpSegment<I>) -> bool {
    let Some(buf) = maps::checksum_buffer() else {
        return false;
    };
    if I::FAMILY == FAMILY_IPV4 {
        // The header with its options: IHL counts 32-bit words, so no
        // padding is needed.
        let ihl = seg.l4_off - seg.l3_off;
        if frame.copy_packet(seg.l3_off, ihl, buf).is_none() {
            return false;
        }
        let Some(ip_sum) = sum(buf, ihl) else {
            return false;
        };
        if fold(from_native_partial(ip_sum)) != 0xffff {
            return false;
        }
    }
    let tcp_len = seg.tcp_len + seg.payload_len;
    if tcp_len > maps::CHECKSUM_BYTES - 3 {
        return true;
    }
    if frame.copy_packet(seg.l4_off, tcp_len, buf).is_none() {
        return false;
    }
    // Zero up to the next multiple of four: the helper sums whole words,
    // and the buffer still holds the last frame's bytes there.
    let padded = (tcp_len + 3) & !3;
    for i in 0..3 {
        if let Some(b) = buf.get_mut(tcp_len + i)
            && tcp_len + i < padded
        {
            *b = 0;
        }
    }
    let Some(tcp_sum) = sum(buf, padded) else {
        return false;
    };
    let pseudo = seg.ip.tcp_pseudo_sum(tcp_len as u16);
    if fold(from_native_partial(tcp_sum) + pseudo) == 0xffff {
        return true;
    }
    // A partial checksum holds the pseudo-header's sum (the stack's
    // CHECKSUM_PARTIAL, tcp_v4_send_check in net/ipv4/tcp_ipv4.c and
    // __tcp_v6_send_check); the kernel trusts such an skb without summing
    // it.
    settings::partial_checksums() && u16::from_be_bytes(seg.tcp.check) == fold(pseudo)
}

/// The native-endian partial sum of the first `len` bytes of `buf` (a
/// multiple of four), in spans of at most [`CHUNK`] bytes.
#[inline(always)]
fn sum(buf: &mut [u8; maps::CHECKSUM_BYTES], len: usize) -> Option<u32> {
    let mut acc = 0u32;
    // Unrolled: each span has a constant start, so the verifier sees its
    // end within the buffer.
    for k in 0..maps::CHECKSUM_BYTES / CHUNK {
        let start = k * CHUNK;
        if start >= len {
            break;
        }
        let size = bounded_len((len - start).min(CHUNK), CHUNK)?;
        // SAFETY: `size` bytes from `start` lie within `buf` (start + CHUNK
        // <= CHECKSUM_BYTES); no bytes are read from `from`.
        let r =
            unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr().add(start).cast(), size as u32, acc) };
        if r < 0 {
            return None;
        }
        acc = r as u32;
    }
    Some(acc)
}
