//! Kernel-side building blocks shared by the gateway's XDP gate and the
//! agent's TC stamper (feature `kernel`, built for bpfel-unknown-none): the
//! packet accessors behind [`crate::net::Frame`], the load-time option
//! settings, and the panic handler both programs link.

pub mod config;
pub mod frame;

use aya_ebpf::maps::PerCpuArray;

/// Adds one to this CPU's slot `index` of a per-CPU counter array: the
/// verdict counters of both programs.
#[inline(always)]
pub fn count(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU (BPF
        // programs do not nest on one CPU for one hook).
        unsafe { *slot += 1 };
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: every index is bounds-checked and
    // the verifier rejects code paths that could fault.
    loop {}
}
