//! Idempotent installation of what the build and the tests need. Each step
//! checks first and only acts when something is missing, so running it on a
//! ready machine costs a second.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Debian packages: LLVM 22 for bpf-linker; iproute2/ethtool/ping/nft for
/// the namespace tests and benchmarks; qemu, udev (else the guest command's
/// exit code is lost), busybox-static and kmod for virtme-ng.
const BUILD_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];
const TEST_PACKAGES: &[&str] = &["iproute2", "ethtool", "iputils-ping", "nftables", "tcpdump", "curl"];
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "udev", "python3-venv"];
/// What the splice benchmark compares against (HAProxy) and measures with
/// (iperf3).
const BENCH_PACKAGES: &[&str] = &["haproxy", "iperf3"];

pub const VIRTME_NG_VERSION: &str = "1.42";
/// A pinned Debian kernel the VM suite boots.
pub struct VmKernel {
    /// Short name for the command line and the tally ("vm 6.1: test").
    pub name: &'static str,
    pub package: &'static str,
    /// The package version `apt-get download` asks for: a rebuilt package
    /// under the same name is not silently taken.
    pub version: &'static str,
    /// `uname -r` in the guest (and the modules directory).
    pub release: &'static str,
    /// VMs that share this kernel's suite, each taking the next test from
    /// a common queue.
    pub vms: usize,
}

/// The VM matrix: Debian 12's backports kernel (6.12) and its own LTS
/// kernel (6.1), the oldest kernel the project supports (docs/kernels.md).
pub const VM_KERNELS: &[VmKernel] = &[
    VmKernel {
        name: "6.12",
        package: "linux-image-6.12.117+deb12-amd64",
        version: "6.12.117-1~deb12u1",
        release: "6.12.117+deb12-amd64",
        vms: 2,
    },
    // Two VMs per kernel, four in all on a 2-core machine: the emulated
    // guests are CPU-bound, and a kernel whose suite runs in one VM finishes
    // long after one whose suite is shared (docs/kernels.md has the times).
    VmKernel {
        name: "6.1",
        package: "linux-image-6.1.0-56-amd64",
        version: "6.1.192-2",
        release: "6.1.0-56-amd64",
        vms: 2,
    },
];

/// The pinned kernel called `name` ("6.1", "6.12").
pub fn vm_kernel_named(name: &str) -> Result<&'static VmKernel> {
    VM_KERNELS.iter().find(|k| k.name == name).with_context(|| {
        let names: Vec<&str> = VM_KERNELS.iter().map(|k| k.name).collect();
        format!("no pinned VM kernel {name:?} (pinned: {})", names.join(", "))
    })
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("ACKGATE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/ackgate")
    })
}

pub fn all() -> Result<()> {
    build_tools()?;
    bench_tools()?;
    vm_tools(&VM_KERNELS.iter().collect::<Vec<_>>())?;
    println!("setup: everything is in place");
    Ok(())
}

/// What `cargo build` of the workspace needs.
pub fn build_tools() -> Result<()> {
    apt(BUILD_PACKAGES)?;
    nightly()?;
    bpf_linker()
}

/// What the namespace tests need.
pub fn test_tools() -> Result<()> {
    apt(TEST_PACKAGES)?;
    nginx()
}

/// What the benchmarks need besides the test tools.
pub fn bench_tools() -> Result<()> {
    test_tools()?;
    apt(BENCH_PACKAGES)
}

/// What the VM run needs, with the kernels of `kernels`.
pub fn vm_tools(kernels: &[&VmKernel]) -> Result<()> {
    apt(VM_PACKAGES)?;
    virtme_ng()?;
    for k in kernels {
        vm_kernel(k)?;
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn nightly() -> Result<()> {
    let have = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", crate::EBPF_TOOLCHAIN])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if have.contains("rust-src") && have.contains("clippy") {
        return Ok(());
    }
    println!("setup: {} toolchain with rust-src and clippy", crate::EBPF_TOOLCHAIN);
    run(Command::new("rustup").args(["toolchain", "install", crate::EBPF_TOOLCHAIN, "--profile", "minimal"]))?;
    run(Command::new("rustup").args(["component", "add", "rust-src", "clippy", "--toolchain", crate::EBPF_TOOLCHAIN]))
}

fn bpf_linker() -> Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    println!("setup: building bpf-linker against LLVM 22 (a few minutes)");
    // Without LLVM_PREFIX it finds Debian's default llvm-config (14) and
    // fails to link -lLLVM.
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

/// Debian's nginx, which the `page` decoy imitates and is compared with
/// (tests/tests/decoy_nginx.rs finds it here). Unpacked from the package
/// into the cache rather than installed: an install would start and
/// enable a system nginx on port 80.
pub const NGINX_PACKAGE: &str = "nginx";

pub fn nginx_root() -> PathBuf {
    cache_dir().join("nginx")
}

fn nginx() -> Result<()> {
    let bin = nginx_root().join("usr/sbin/nginx");
    if bin.exists() {
        return Ok(());
    }
    println!("setup: downloading and unpacking {NGINX_PACKAGE} into {}", nginx_root().display());
    let dl = cache_dir().join("nginx-download");
    std::fs::create_dir_all(&dl)?;
    run(Command::new("apt-get").args(["download", "-qq", NGINX_PACKAGE]).current_dir(&dl))?;
    let deb = std::fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(nginx_root()))?;
    std::fs::remove_dir_all(&dl)?;
    if !bin.exists() {
        bail!("{} has no {}", deb.display(), bin.display());
    }
    Ok(())
}

pub fn vng_bin() -> PathBuf {
    cache_dir().join("venv/bin/vng")
}

fn virtme_ng() -> Result<()> {
    let vng = vng_bin();
    if succeeds(Command::new(&vng).arg("--version")) {
        return Ok(());
    }
    println!("setup: virtme-ng {VIRTME_NG_VERSION} in {}", cache_dir().join("venv").display());
    std::fs::create_dir_all(cache_dir())?;
    run(Command::new("python3").args(["-m", "venv"]).arg(cache_dir().join("venv")))?;
    run(Command::new(cache_dir().join("venv/bin/pip"))
        .args(["install", "-q"])
        .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")))
}

/// Root of the unpacked kernel package.
pub fn vm_kernel_root(k: &VmKernel) -> PathBuf {
    cache_dir().join("kernel").join(k.release)
}

pub fn vm_kernel_image(k: &VmKernel) -> PathBuf {
    vm_kernel_root(k).join(format!("boot/vmlinuz-{}", k.release))
}

fn vm_kernel(k: &VmKernel) -> Result<()> {
    if !vm_kernel_image(k).exists() {
        unpack_vm_kernel(k)?;
    }
    link_vm_modules(k)
}

/// The guest mounts the host's root read-only and looks for modules in
/// /lib/modules/<release>; point that at the unpacked package. The host
/// never runs this release, so the link changes nothing for it.
fn link_vm_modules(k: &VmKernel) -> Result<()> {
    let link = PathBuf::from("/lib/modules").join(k.release);
    let target = vm_kernel_root(k).join("lib/modules").join(k.release);
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    if link.exists() && std::fs::read_link(&link).is_err() {
        // A real install of this kernel: its modules are as good as ours.
        return Ok(());
    }
    std::fs::create_dir_all("/lib/modules")?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking {}", link.display()))
}

fn unpack_vm_kernel(k: &VmKernel) -> Result<()> {
    println!("setup: downloading and unpacking {} {}", k.package, k.version);
    // One download directory per kernel: two VM runs may set up at once.
    let dl = cache_dir().join("kernel").join(format!("download-{}", k.release));
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl)?;
    run(Command::new("apt-get").args(["download", "-qq", &format!("{}={}", k.package, k.version)]).current_dir(&dl))?;
    let deb = std::fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let root = vm_kernel_root(k);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::remove_dir_all(&dl)?;
    if !vm_kernel_image(k).exists() {
        bail!("{} has no {}", deb.display(), vm_kernel_image(k).display());
    }
    Ok(())
}
