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
    /// rust-src, bpf-linker (LLVM 22), virtme-ng and the pinned VM kernel.
    Setup,
    /// Everything: fmt, clippy (host and eBPF), unit, property, test-run and
    /// namespace tests on this kernel, then the integration suite in a VM on
    /// the pinned Debian kernel. Ends with `N passed, N failed`.
    Test {
        /// Skip the VM run (quicker local iterations).
        #[arg(long)]
        no_vm: bool,
    },
    /// Build, create a namespace topology and show the product at work with
    /// the real daemons: an unknown client, enrollment, login, approval.
    Demo,
    /// Benchmarks, each next to a baseline measured in the same run: gate
    /// verdict paths and SYN floods, the agent's stamper and memory, the
    /// control plane's authorizations/s, validator lookups and memory.
    Bench {
        /// Only these groups: gate, agent, control, flood, splice (default: all).
        groups: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::all(),
        Command::Test { no_vm } => suite::run(!no_vm),
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
            let mut args = vec!["--release", "--"];
            args.extend(groups.iter().map(String::as_str));
            suite::cargo_run_bin("bench", &args)
        }
    }
}
