//! `cargo xtask`: the project's developer commands. Every command first
//! installs, idempotently, whatever it needs (`setup` does all of it).

include!("../ebpf_toolchain.rs");

mod setup;
mod suite;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ackgate developer tasks (run as root)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything a fresh machine lacks: apt packages, nightly
    /// rust-src, bpf-linker (LLVM 22), virtme-ng and the pinned VM kernels.
    Setup,
    /// Everything: fmt, clippy (host and eBPF), unit, property, test-run and
    /// namespace tests on this kernel, then the integration suite in VMs on
    /// the pinned Debian kernels (6.12 and 6.1, side by side). Ends with
    /// `N passed, N failed`.
    Test {
        /// Skip the VM run (quicker local iterations).
        #[arg(long)]
        no_vm: bool,
    },
    /// Only the integration suite in the VMs, with each binary's (or each
    /// test's) wall time.
    Vm {
        /// Pinned kernels to boot, by name: 6.12, 6.1 (default: all, side
        /// by side).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Only these test targets (e.g. xdp_gate).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Passed to every test binary (a name filter, --exact...).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Build, create a namespace topology and show the product at work with
    /// the real daemons: an unknown client, enrollment, login, approval.
    Demo,
    /// Benchmarks, each next to a baseline measured in the same run: gate
    /// verdict paths and SYN floods, the agent's stamper and memory, the
    /// control plane's authorizations/s, validator lookups and memory.
    Bench {
        /// Only these groups: gate, agent, control, flood, splice, delayed
        /// (default: all but delayed, which runs in the VM).
        groups: Vec<String>,
    },
    /// Mutated frames through the real gate by test run (SYNs, stamped
    /// ACKs, held and spliced segments, ICMP errors), then mutated control
    /// frames into the agent listener and the validator link; prints what
    /// each verdict and server received and fails on any frame without a
    /// valid MAC that became pending or reached a target, and on any
    /// server that panicked, hung or authorized without credentials.
    Fuzz {
        /// Gate frames.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Control frames per server.
        #[arg(long, default_value_t = 2000)]
        control: u64,
        /// PRNG seed, decimal or 0x-hex (default: from the clock; printed).
        #[arg(long)]
        seed: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::all(),
        Command::Test { no_vm } => {
            let kernels: Vec<_> = if no_vm { Vec::new() } else { setup::VM_KERNELS.iter().collect() };
            suite::run(&kernels)
        }
        Command::Vm { kernels, targets, test_args } => {
            let kernels = match kernels.is_empty() {
                true => setup::VM_KERNELS.iter().collect(),
                false => kernels.iter().map(|n| setup::vm_kernel_named(n)).collect::<Result<Vec<_>>>()?,
            };
            setup::build_tools()?;
            setup::test_tools()?;
            setup::vm_tools(&kernels)?;
            suite::cargo_build_workspace()?;
            let mut tally = suite::Tally::default();
            let opts = vm::SuiteOptions { targets, test_args: &test_args };
            vm::run_suite(&mut tally, &kernels, &opts)?;
            tally.finish()
        }
        Command::Demo => {
            setup::build_tools()?;
            suite::cargo_build("ackgate-gateway")?;
            suite::cargo_build("ackgate-agent")?;
            suite::cargo_run_bin("demo", &[])
        }
        Command::Bench { groups } => {
            setup::build_tools()?;
            setup::bench_tools()?;
            suite::cargo_build_release("ackgate-agent")?;
            suite::cargo_build_release("ackgate-gateway")?;
            // The delayed link needs sch_netem, which only the VM's kernel
            // has: that group runs there, the rest on the host.
            let (in_vm, on_host): (Vec<&str>, Vec<&str>) =
                groups.iter().map(String::as_str).partition(|g| *g == "delayed");
            if !on_host.is_empty() || in_vm.is_empty() {
                let mut args = vec!["--release", "--"];
                args.extend(on_host);
                suite::cargo_run_bin("bench", &args)?;
            }
            if !in_vm.is_empty() {
                // The newest pinned kernel: what the delayed group measures
                // does not differ between them.
                let kernel = &setup::VM_KERNELS[0];
                setup::vm_tools(&[kernel])?;
                let bench = suite::cargo_build_release_bin("ackgate-tests", "bench")?;
                vm::run_bench(kernel, &bench, &in_vm)?;
            }
            Ok(())
        }
        Command::Fuzz { frames, control, seed } => {
            setup::build_tools()?;
            let (frames, control) = (frames.to_string(), control.to_string());
            let mut args = vec!["--", "--frames", &frames, "--control", &control];
            if let Some(seed) = &seed {
                args.extend(["--seed", seed]);
            }
            // The dev profile, as the tests build it: no second build.
            suite::cargo_run_bin("fuzz", &args)
        }
    }
}
