// The nightly that builds the eBPF crates (`include!`d by the build scripts
// and by xtask). Pinned because bpf-linker reads the bitcode rustc emits:
// bpf-linker is built against LLVM 22, and a nightly on a newer LLVM emits
// bitcode it cannot read ("ERROR llvm: Invalid record"). Move this together
// with the LLVM version in xtask/src/setup.rs.

/// `rustup` toolchain name of the pinned nightly.
#[allow(dead_code)]
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";
