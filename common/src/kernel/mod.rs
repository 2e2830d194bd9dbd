//! Kernel-side building blocks shared by the gateway's XDP gate and the
//! agent's TC stamper (feature `kernel`, built for bpfel-unknown-none): the
//! packet accessors behind [`crate::net::Frame`], the load-time option
//! settings, and the panic handler both programs link.

pub mod config;
pub mod frame;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: every index is bounds-checked and
    // the verifier rejects code paths that could fault.
    loop {}
}
