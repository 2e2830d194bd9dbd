// Shared by the build scripts of gateway-user and agent (`include!`d, so it
// is not part of the xtask crate): builds one eBPF crate of the workspace for
// bpfel-unknown-none (nightly, build-std) into OUT_DIR, for
// `include_bytes_aligned!`.

include!("ebpf_toolchain.rs");

/// Builds the workspace package `package` with aya-build.
fn build_ebpf_package(package: &str) -> anyhow::Result<()> {
    use anyhow::{Context as _, anyhow};
    let metadata = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == package)
        .ok_or_else(|| anyhow!("package {package} not found in the workspace"))?;
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
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
