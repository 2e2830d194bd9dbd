//! Builds the XDP gate for bpfel-unknown-none (nightly, build-std) and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "ackgate-gateway-ebpf")
        .ok_or_else(|| anyhow!("package ackgate-gateway-ebpf not found in the workspace"))?;
    // aya-build only watches the eBPF crate itself; the kernel code also
    // compiles `common`, so changes there must rebuild the object too.
    if let Some(common) = metadata.packages.iter().find(|p| p.name.as_str() == "ackgate-common")
        && let Some(dir) = common.manifest_path.parent()
    {
        println!("cargo:rerun-if-changed={dir}");
    }
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
