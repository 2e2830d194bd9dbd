//! The integration suite inside a virtme-ng VM on the pinned Debian kernel,
//! so it proves more than the host kernel. The guest sees the host's files
//! read-only and runs the host-built test binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::setup::{self, VmKernel};
use crate::suite::{Tally, run_tee, run_tee_prefixed, test_binaries};

/// Integration test targets that run in the guest: the kernel-facing
/// suites and the end-to-end suites with the real daemons. The decoy's
/// comparison with nginx (decoy_nginx) stays on the host: it tests the
/// decoy's protocol answers, not the kernel, and its timing margins are
/// for a real CPU. Longest first (measured), so that VMs sharing a
/// kernel's queue end close together.
const VM_TARGETS: &[&str] =
    &["control_e2e", "splice_e2e", "netns", "page_e2e", "xdp_gate", "xdp_splice", "agent_netns", "tc_stamp"];

/// Runs the benchmark binary `bench` with `groups` in the guest, whose
/// kernel has what the host's lacks (sch_netem). Its figures are ratios
/// measured side by side in the guest; its emulated CPU makes absolute
/// figures meaningless.
pub fn run_bench(k: &VmKernel, bench: &Path, groups: &[&str]) -> Result<()> {
    let rw = std::env::temp_dir().join(format!("ackgate-vm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&rw)?;
    let script = format!(
        "set -u; modprobe -a veth sch_netem; mount -t bpf bpf /sys/fs/bpf 2>/dev/null; {} {}",
        bench.display(),
        groups.join(" ")
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ok, _) = run_tee(&mut vng(k, &rw, cpus, &script))?;
    let _ = std::fs::remove_dir_all(&rw);
    anyhow::ensure!(ok, "the benchmark in the VM failed");
    Ok(())
}

/// How one run of the suite in the VMs is laid out.
pub struct SuiteOptions<'a> {
    /// Only these test targets (default: all of `VM_TARGETS`).
    pub targets: Vec<String>,
    /// Arguments for every test binary (a name filter, `--exact`...).
    pub test_args: &'a [String],
}

/// vng booting kernel `k` with the host's files read-only, `rw` writable,
/// `cpus` virtual CPUs, running `script`. Its stdout must be a pipe (QEMU
/// reopens and truncates a file), which run_tee provides; no KVM here (a
/// PVM device), so TCG emulation.
fn vng(k: &VmKernel, rw: &Path, cpus: usize, script: &str) -> Command {
    let mut cmd = Command::new(setup::vng_bin());
    // vng calls virtme-run from PATH.
    let venv_bin = setup::vng_bin().parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", venv_bin.display()));
    cmd.arg("-r")
        .arg(setup::vm_kernel_image(k))
        .args(["--disable-kvm", "--force-9p", "-m", "2G"])
        .arg(format!("--cpus={cpus}"))
        .arg(format!("--rwdir={}", rw.display()))
        .args(["--exec", script]);
    cmd
}

/// Runs the suite on each kernel of `kernels`, all at once: each kernel's
/// VMs (`VmKernel::vms`) take its test binaries from a shared queue, and
/// every VM gets an equal share of the host's CPUs. Adds each kernel's
/// results to `tally` under "vm NAME" and prints its wall time.
pub fn run_suite(tally: &mut Tally, kernels: &[&'static VmKernel], opts: &SuiteOptions) -> Result<()> {
    let targets: Vec<&str> = match opts.targets.is_empty() {
        true => VM_TARGETS.to_vec(),
        false => opts.targets.iter().map(String::as_str).collect(),
    };
    if let Some(bad) = targets.iter().find(|t| !VM_TARGETS.contains(t)) {
        anyhow::bail!("{bad} is not a VM test target ({})", VM_TARGETS.join(", "));
    }
    let mut bins = test_binaries(&targets)?;
    bins.sort_by_key(|(name, _)| VM_TARGETS.iter().position(|t| t == name));
    let daemons = stripped_daemons(&bins)?;
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let vms: usize = kernels.iter().map(|k| k.vms.max(1)).sum();
    let cpus = (host_cpus / vms.max(1)).max(1);
    let tmp = std::env::temp_dir();
    let pid = std::process::id();
    let queues: Vec<PathBuf> = kernels.iter().map(|k| tmp.join(format!("ackgate-vm-queue-{}-{pid}", k.name))).collect();
    for q in &queues {
        std::fs::create_dir_all(q)?;
    }
    let scripts: Vec<String> = queues.iter().map(|q| guest_script(&bins, &daemons, q, opts)).collect();
    let runs: Vec<(usize, Result<VmRun>)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, &k) in kernels.iter().enumerate() {
            for n in 1..=k.vms.max(1) {
                let label = if k.vms > 1 { format!("{}/{n}", k.name) } else { k.name.to_owned() };
                let (queue, script) = (&queues[i], &scripts[i]);
                handles.push((i, s.spawn(move || run_vm(k, &label, cpus, queue, script))));
            }
        }
        handles
            .into_iter()
            .map(|(i, h)| (i, h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("VM thread panicked")))))
            .collect()
    });
    for q in &queues {
        let _ = std::fs::remove_dir_all(q);
    }
    println!();
    for (i, k) in kernels.iter().enumerate() {
        let name = format!("vm {}", k.name);
        let mine: Vec<VmRun> =
            runs.iter().filter(|(j, _)| *j == i).filter_map(|(_, r)| r.as_ref().ok()).cloned().collect();
        if let Some(Err(e)) = runs.iter().find(|(j, r)| *j == i && r.is_err()).map(|(_, r)| r) {
            anyhow::bail!("{name}: {e}");
        }
        let wall = mine.iter().map(|r| r.wall).max().unwrap_or_default();
        println!("{name} ({}, {} VM x {cpus} vCPU): suite wall time {}", k.release, mine.len(), minutes(wall));
        let out: String = mine.iter().map(|r| r.out.as_str()).collect();
        for (binary, seconds) in seconds_per_binary(&out) {
            println!("{name}: {binary} {seconds} s");
        }
        if mine.iter().any(|r| !r.booted) {
            tally.add_libtest(&format!("{name}: boot"), "", false);
        }
        tally.add_libtest(&name, &out, mine.iter().all(|r| r.ok));
    }
    Ok(())
}

#[derive(Clone)]
struct VmRun {
    ok: bool,
    booted: bool,
    out: String,
    wall: std::time::Duration,
}

/// One VM on kernel `k` (`label` names it in the output), taking test
/// binaries from `queue` until none is left.
fn run_vm(k: &VmKernel, label: &str, cpus: usize, queue: &Path, script: &str) -> Result<VmRun> {
    // A writable directory per VM: the guests' files must not meet.
    let rw = std::env::temp_dir().join(format!("ackgate-vm-{}-{}", label.replace('/', "-"), std::process::id()));
    std::fs::create_dir_all(&rw)?;
    // The script goes in a file: vng hands --exec to the guest on the
    // kernel command line, whose length is limited (2048 bytes on x86),
    // and a longer one leaves the guest waiting for nothing.
    let file = rw.join("suite.sh");
    std::fs::write(&file, script)?;
    let start = Instant::now();
    let exec = format!("sh {}", file.display());
    let mut cmd = vng(k, &rw, cpus, &exec);
    cmd.arg(format!("--rwdir={}", queue.display()));
    let result = run_tee_prefixed(&mut cmd, &format!("[{label}] "));
    let wall = start.elapsed();
    let _ = std::fs::remove_dir_all(&rw);
    let (ok, out) = result?;
    let booted = out.lines().any(|l| l.trim() == k.release);
    Ok(VmRun { ok, booted, out, wall })
}

/// What the guest runs: every test of `bins`, each alone and timed. The
/// unit of work is a test, not a binary: the kernel's VMs share the
/// tests, and one VM left with a whole long binary (control_e2e) would
/// finish long after the others.
fn guest_script(bins: &[(String, String)], daemons: &Path, queue: &Path, opts: &SuiteOptions) -> String {
    // Module autoloading does not reach modprobe in the guest; load veth
    // and macvlan (a second machine on the client's segment) by hand.
    let mut script =
        String::from("set -u; modprobe -a veth macvlan; mount -t bpf bpf /sys/fs/bpf 2>/dev/null; uname -r; rc=0; ");
    // The daemons and admin commands start dozens of times per test: from
    // the guest's memory rather than the host's files over 9p, whose
    // page-ins make each start several times slower under emulation
    // (`ackgate_tests::daemons::workspace_binary`).
    script.push_str(&format!(
        "mkdir -p {GUEST_BIN_DIR} && mount -t tmpfs tmpfs {GUEST_BIN_DIR} && cp {}/* {GUEST_BIN_DIR}/ || exit 1; \
         export ACKGATE_BIN_DIR={GUEST_BIN_DIR}; ",
        daemons.display()
    ));
    let args: Vec<String> = opts.test_args.iter().map(|a| shell_quote(a)).collect();
    let args = args.join(" ");
    // Filters choose the tests; flags (`--nocapture`, `--ignored`) also
    // reach each test's own run.
    let flags: Vec<String> = opts.test_args.iter().filter(|a| a.starts_with('-')).map(|a| shell_quote(a)).collect();
    let flags = flags.join(" ");
    // The guest's CPU is emulated (about 14 times slower): bulk transfers
    // and large flow maps are scaled down there (`ackgate_tests::emulated`).
    // Whole seconds are enough here; the guest's shell may be dash (no
    // $SECONDS).
    // A test is this VM's if it creates the test's claim in the queue the
    // kernel's VMs share (mkdir is atomic on the host's filesystem). The
    // binaries come longest first (`VM_TARGETS`), so the long tests are
    // spread out first and the short ones fill in at the end.
    for (name, exe) in bins {
        script.push_str(&format!(
            "for t in $({exe} --list --format=terse {args} | sed -n 's/: test$//p'); do \
             if mkdir \"{queue}/{name}::$t\" 2>/dev/null; then \
             s=$(date +%s); ACKGATE_EMULATED=1 {exe} --exact \"$t\" --test-threads=1 {flags} || rc=1; \
             echo \"{TIME_MARK}{name} $t $(($(date +%s)-s))\"; fi; done; ",
            queue = queue.display()
        ));
    }
    script.push_str("exit $rc");
    script
}

/// The guest's time marks (`guest_script`) summed per test binary, in
/// the order the binaries first appear.
fn seconds_per_binary(out: &str) -> Vec<(String, u64)> {
    let mut sums: Vec<(String, u64)> = Vec::new();
    for line in out.lines().filter_map(|l| l.split_once(TIME_MARK).map(|(_, rest)| rest)) {
        let mut words = line.split_whitespace();
        let (Some(binary), Some(seconds)) = (words.next(), words.next_back().and_then(|s| s.parse::<u64>().ok()))
        else {
            continue;
        };
        match sums.iter_mut().find(|(b, _)| b == binary) {
            Some((_, total)) => *total += seconds,
            None => sums.push((binary.to_owned(), seconds)),
        }
    }
    sums
}

/// Where the guest keeps its copy of the daemons.
const GUEST_BIN_DIR: &str = "/run/ackgate-bin";

/// The workspace binaries the end-to-end tests start, without their debug
/// information (a quarter of the size, which the guest copies into its
/// memory), in `vm-bin` next to them; returns that directory. Both VMs
/// read the same copy.
fn stripped_daemons(bins: &[(String, String)]) -> Result<PathBuf> {
    let profile_dir = bins
        .first()
        .and_then(|(_, exe)| Path::new(exe).parent()?.parent())
        .context("no test binary to find the profile directory by")?;
    let dir = profile_dir.join("vm-bin");
    std::fs::create_dir_all(&dir)?;
    for name in ["ackgate", "ackgate-agent"] {
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(profile_dir.join(name))
            .arg(dir.join(name))
            .status()
            .context("running objcopy")?;
        anyhow::ensure!(status.success(), "objcopy --strip-debug {name} failed ({status})");
    }
    Ok(dir)
}

/// Marks the guest's timing lines in its output.
const TIME_MARK: &str = "ackgate-vm-time: ";

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn minutes(d: std::time::Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_marks_sum_per_binary_in_first_seen_order() {
        let out = format!(
            "noise\n{TIME_MARK}control_e2e a::b 40\n[6.1/2] {TIME_MARK}xdp_gate v4::syn 3\n\
             {TIME_MARK}control_e2e c 2\n{TIME_MARK}broken\n{TIME_MARK}xdp_gate x not-a-number\n"
        );
        assert_eq!(seconds_per_binary(&out), vec![("control_e2e".to_owned(), 42), ("xdp_gate".to_owned(), 3)]);
    }
}
