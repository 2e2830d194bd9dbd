//! The one bounds-checked packet accessor, for XDP frames and TC skbs.

use aya_ebpf::helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes, bpf_xdp_store_bytes};
use aya_ebpf::programs::{TcContext, XdpContext};
use core::mem::size_of;

use crate::net::{Frame, Wire};
use crate::option::MAX_OPTION_BYTES;

/// An XDP frame.
pub struct XdpFrame<'a> {
    ctx: &'a XdpContext,
}

impl<'a> XdpFrame<'a> {
    pub fn new(ctx: &'a XdpContext) -> Self {
        Self { ctx }
    }

    pub fn ctx(&self) -> &XdpContext {
        self.ctx
    }

    /// Writes `v` at `offset`, or `None` if it would run past the frame.
    #[inline(always)]
    pub fn store<T: Wire>(&self, offset: usize, v: &T) -> Option<()> {
        let at = checked_ptr::<T>(self.ctx.data(), self.ctx.data_end(), offset)?;
        // SAFETY: `checked_ptr` compared exactly this pointer with data_end.
        unsafe { core::ptr::write_unaligned(at as *mut T, *v) };
        Some(())
    }

    /// Writes the first `len` bytes of `src` at `offset` (rewritten TCP
    /// options), through the helper for the same verifier reasons as
    /// `load_bytes`.
    #[inline(always)]
    pub fn store_bytes(&self, offset: usize, len: usize, src: &[u8; MAX_OPTION_BYTES]) -> Option<()> {
        let len = bounded_len(len, MAX_OPTION_BYTES)?;
        // SAFETY: `src` holds MAX_OPTION_BYTES >= len bytes; the helper
        // checks the packet range itself.
        let rc = unsafe { bpf_xdp_store_bytes(self.ctx.ctx, offset as u32, src.as_ptr() as *mut _, len as u32) };
        (rc == 0).then_some(())
    }

    /// Writes `v` at `offset` through the helper, which copies from `v`'s
    /// memory: for headers the compiler would otherwise store a byte at a
    /// time from registers (packet memory has no alignment it can rely
    /// on), each byte worked out and spilled first (an IPv6 header's
    /// addresses took the splice's frame past 512 bytes).
    #[inline(always)]
    pub fn store_copy<T: Wire>(&self, offset: usize, v: &T) -> Option<()> {
        // SAFETY: `v` is a `T` of the size passed; the helper checks the
        // packet range itself.
        let rc = unsafe {
            bpf_xdp_store_bytes(self.ctx.ctx, offset as u32, (v as *const T).cast_mut().cast(), size_of::<T>() as u32)
        };
        (rc == 0).then_some(())
    }

    /// Copies `len` bytes at `offset` (a whole IPv4 packet, a TCP segment)
    /// into `dst`.
    #[inline(always)]
    pub fn copy_packet<const N: usize>(&self, offset: usize, len: usize, dst: &mut [u8; N]) -> Option<()> {
        let len = bounded_len(len, N)?;
        // SAFETY: `dst` holds N >= len bytes; the helper checks the packet
        // range itself.
        let rc = unsafe { bpf_xdp_load_bytes(self.ctx.ctx, offset as u32, dst.as_mut_ptr().cast(), len as u32) };
        (rc == 0).then_some(())
    }

    /// Index of the interface the frame arrived on.
    #[inline(always)]
    pub fn ingress_ifindex(&self) -> u32 {
        self.ctx.ingress_ifindex() as u32
    }
}

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.data_end() - self.ctx.data()
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, len: usize, dst: &mut [u8; MAX_OPTION_BYTES]) -> Option<()> {
        let len = bounded_len(len, MAX_OPTION_BYTES)?;
        // SAFETY: `dst` holds MAX_OPTION_BYTES >= len bytes; the helper
        // checks the packet range itself.
        let rc = unsafe { bpf_xdp_load_bytes(self.ctx.ctx, offset as u32, dst.as_mut_ptr().cast(), len as u32) };
        (rc == 0).then_some(())
    }

    #[inline(always)]
    fn load<T: Wire>(&self, offset: usize) -> Option<T> {
        let at = checked_ptr::<T>(self.ctx.data(), self.ctx.data_end(), offset)?;
        // SAFETY: `checked_ptr` compared exactly this pointer with data_end.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
}

/// A socket buffer at TC. Header reads go to the linear part (`data` ..
/// `data_end`); `len` is the whole packet, so that a large segment whose
/// payload sits in page fragments still parses (its headers are linear).
pub struct SkbFrame<'a> {
    ctx: &'a TcContext,
}

impl<'a> SkbFrame<'a> {
    pub fn new(ctx: &'a TcContext) -> Self {
        Self { ctx }
    }

    pub fn ctx(&self) -> &TcContext {
        self.ctx
    }
}

impl Frame for SkbFrame<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.len() as usize
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, len: usize, dst: &mut [u8; MAX_OPTION_BYTES]) -> Option<()> {
        let len = bounded_len(len, MAX_OPTION_BYTES)?;
        // SAFETY: as for XDP; bpf_skb_load_bytes also reads paged data.
        let rc = unsafe {
            bpf_skb_load_bytes(self.ctx.skb.skb as *const _, offset as u32, dst.as_mut_ptr().cast(), len as u32)
        };
        (rc == 0).then_some(())
    }

    #[inline(always)]
    fn load<T: Wire>(&self, offset: usize) -> Option<T> {
        let at = checked_ptr::<T>(self.ctx.data(), self.ctx.data_end(), offset)?;
        // SAFETY: `checked_ptr` compared exactly this pointer with data_end.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
}

/// `len` if it is within 1..=`max`, checked so that the verifier can prove
/// a copy helper's size within 1..=sizeof(buffer): two compares on the very
/// register the helper gets, with a barrier between. Written as one
/// condition, LLVM turns it into `len - 1 < max` on another register, and
/// verifiers before about 6.13 do not carry that bound back to `len`
/// ("R4 min value is negative"); it also drops the zero check when a
/// caller implies it.
///
/// The zero check is a signed `len < 1`: an unsigned one compiles to
/// `if len == 0`, and 6.1's verifier learns nothing on the fall-through of
/// an equality test unless the register is a constant (reg_set_min_max in
/// kernel/bpf/verifier.c), so the size keeps minimum 0 and the helper's
/// non-zero size argument is refused ("invalid access to map value ...
/// size=0"). A signed `<` raises the signed minimum to 1, which 6.1 also
/// carries to the unsigned one (len is at most `max` here, so not negative).
#[inline(always)]
pub fn bounded_len(len: usize, max: usize) -> Option<usize> {
    let len = core::hint::black_box(len);
    if len > max {
        return None;
    }
    let len = core::hint::black_box(len);
    if (len as isize) < 1 {
        return None;
    }
    Some(len)
}

/// `data + offset` if `size_of::<T>()` bytes from there are before
/// `data_end`.
///
/// The pointer goes through `black_box` so that LLVM cannot rebuild it from
/// an earlier, differently checked pointer (common-subexpression merging of
/// `data + off + k`). The verifier only credits the bounds check to the very
/// register that was compared with data_end; without the barrier it rejects
/// the program with "invalid access to packet ... R3 offset is outside of
/// the packet". Callers re-read both values from the context on every call
/// because bpf_xdp_adjust_tail and the skb resize helpers invalidate earlier
/// packet pointers.
///
/// The offset is bounded first: offsets the gate reads back from map
/// memory (a parsed segment kept in per-CPU scratch) are unknown scalars to
/// the verifier, and it refuses arithmetic on a packet pointer with an
/// unbounded register ("math between pkt pointer and register with
/// unbounded min value").
///
/// The bound is also applied as a mask (a no-op after the check, hidden
/// from LLVM by `black_box` so that it stays): LLVM may compare one copy
/// of the offset, refilled from the stack, and add another. Verifiers
/// before 6.8 give a scalar spilled to the stack no id ("bpf: assign ID to
/// scalars on spill", kernel/bpf/verifier.c), so the bound learned on one
/// fill does not reach the other; 6.1 then refuses the addition with the
/// message above. A masked value carries its bound wherever it is spilled.
#[inline(always)]
fn checked_ptr<T>(data: usize, data_end: usize, offset: usize) -> Option<usize> {
    if offset > MAX_FRAME_OFFSET {
        return None;
    }
    let offset = core::hint::black_box(offset) & MAX_FRAME_OFFSET;
    let at = core::hint::black_box(data + offset);
    if at + size_of::<T>() > data_end {
        return None;
    }
    Some(at)
}

/// Largest offset `checked_ptr` accepts. Headers (Ethernet, two VLAN tags,
/// IPv4 and TCP with options: at most 142 bytes) all lie in the first KiB.
/// Well below the kernel's MAX_PACKET_OFF (0xffff) on purpose: the
/// verifier only credits a bounds check to a variable-offset packet
/// pointer when offset + access size stays within MAX_PACKET_OFF
/// (find_good_pkt_pointers, kernel/bpf/verifier.c). One less than a power
/// of two: `checked_ptr` also masks with it.
const MAX_FRAME_OFFSET: usize = 0x3ff;
const _: () = assert!((MAX_FRAME_OFFSET + 1).is_power_of_two());
