//! The integration suite inside a virtme-ng VM on the pinned Debian kernel,
//! so it proves more than the host kernel. The guest sees the host's files
//! read-only and runs the host-built test binaries.

use std::process::Command;

use anyhow::Result;

use crate::setup;
use crate::suite::{Tally, run_tee, test_binaries};

/// Integration test targets that run in the guest: the kernel-facing
/// suites and the end-to-end suites with the real daemons. The decoy's
/// comparison with nginx (decoy_nginx) stays on the host: it tests the
/// decoy's protocol answers, not the kernel, and its timing margins are
/// for a real CPU.
const VM_TARGETS: &[&str] =
    &["xdp_gate", "xdp_splice", "tc_stamp", "netns", "agent_netns", "control_e2e", "splice_e2e", "page_e2e"];

/// Runs the benchmark binary `bench` with `groups` in the guest, whose
/// kernel has what the host's lacks (sch_netem). Its figures are ratios
/// measured side by side in the guest; its emulated CPU makes absolute
/// figures meaningless.
pub fn run_bench(bench: &std::path::Path, groups: &[&str]) -> Result<()> {
    let rw = std::env::temp_dir().join(format!("ackgate-vm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&rw)?;
    let script = format!(
        "set -u; modprobe -a veth sch_netem; mount -t bpf bpf /sys/fs/bpf 2>/dev/null; {} {}",
        bench.display(),
        groups.join(" ")
    );
    let (ok, _) = run_tee(&mut vng(&rw, &script))?;
    let _ = std::fs::remove_dir_all(&rw);
    anyhow::ensure!(ok, "the benchmark in the VM failed");
    Ok(())
}

/// vng booting the pinned kernel with the host's files read-only, `rw`
/// writable, running `script`. Its stdout must be a pipe (QEMU reopens and
/// truncates a file), which run_tee provides; no KVM here (a PVM device),
/// so TCG emulation.
fn vng(rw: &std::path::Path, script: &str) -> Command {
    let mut cmd = Command::new(setup::vng_bin());
    // vng calls virtme-run from PATH.
    let venv_bin = setup::vng_bin().parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", venv_bin.display()));
    cmd.arg("-r")
        .arg(setup::vm_kernel_image())
        .args(["--disable-kvm", "--force-9p", "-m", "2G"])
        .arg(format!("--rwdir={}", rw.display()))
        .args(["--exec", script]);
    cmd
}

pub fn run_suite(tally: &mut Tally) -> Result<()> {
    let bins = test_binaries(VM_TARGETS)?;
    let rw = std::env::temp_dir().join(format!("ackgate-vm-{}", std::process::id()));
    std::fs::create_dir_all(&rw)?;
    // Module autoloading does not reach modprobe in the guest; load veth
    // and macvlan (a second machine on the client's segment) by hand.
    let mut script =
        String::from("set -u; modprobe -a veth macvlan; mount -t bpf bpf /sys/fs/bpf 2>/dev/null; uname -r; rc=0; ");
    // The guest's CPU is emulated (about 14 times slower): bulk transfers
    // and large flow maps are scaled down there (`ackgate_tests::emulated`).
    for (_, exe) in &bins {
        script.push_str(&format!("ACKGATE_EMULATED=1 {exe} --test-threads=1 || rc=1; "));
    }
    script.push_str("exit $rc");
    let (ok, out) = run_tee(&mut vng(&rw, &script))?;
    let _ = std::fs::remove_dir_all(&rw);
    let booted = out.lines().any(|l| l.trim() == setup::VM_KERNEL_RELEASE);
    if !booted {
        tally.add_libtest("vm: boot", "", false);
        return Ok(());
    }
    tally.add_libtest("vm", &out, ok);
    Ok(())
}
