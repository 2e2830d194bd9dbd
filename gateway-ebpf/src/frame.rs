//! The XDP side of the one bounds-checked packet accessor.

use ackgate_common::net::{Frame, Wire};
use ackgate_common::option::MAX_OPTION_BYTES;
use aya_ebpf::helpers::bpf_xdp_load_bytes;
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

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
        let at = checked_ptr::<T>(self.ctx, offset)?;
        // SAFETY: `checked_ptr` compared exactly this pointer with data_end.
        unsafe { core::ptr::write_unaligned(at as *mut T, *v) };
        Some(())
    }
}

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.data_end() - self.ctx.data()
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, len: usize, dst: &mut [u8; MAX_OPTION_BYTES]) -> Option<()> {
        // Spelled out for the verifier: the helper's size must be provably
        // within 1..=sizeof(dst).
        if len == 0 || len > MAX_OPTION_BYTES {
            return None;
        }
        // SAFETY: `dst` holds MAX_OPTION_BYTES >= len bytes; the helper
        // checks the packet range itself.
        let rc = unsafe { bpf_xdp_load_bytes(self.ctx.ctx, offset as u32, dst.as_mut_ptr().cast(), len as u32) };
        (rc == 0).then_some(())
    }

    fn load<T: Wire>(&self, offset: usize) -> Option<T> {
        let at = checked_ptr::<T>(self.ctx, offset)?;
        // SAFETY: `checked_ptr` compared exactly this pointer with data_end.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
}

/// `data + offset` if `size_of::<T>()` bytes from there are inside the frame.
///
/// The pointer goes through `black_box` so that LLVM cannot rebuild it from
/// an earlier, differently checked pointer (common-subexpression merging of
/// `data + off + k`). The verifier only credits the bounds check to the very
/// register that was compared with data_end; without the barrier it rejects
/// the program with "invalid access to packet ... R3 offset is outside of
/// the packet". Both values are re-read from the context on every call
/// because bpf_xdp_adjust_tail invalidates earlier packet pointers.
#[inline(always)]
fn checked_ptr<T>(ctx: &XdpContext, offset: usize) -> Option<usize> {
    let at = core::hint::black_box(ctx.data() + offset);
    if at + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(at)
}
