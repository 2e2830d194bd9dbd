//! Builds the XDP gate and leaves the object in OUT_DIR.
include!("../xtask/build_ebpf.rs");

fn main() -> anyhow::Result<()> {
    build_ebpf_package("ackgate-gateway-ebpf")
}
