//! `cargo xtask bench`: every benchmark prints `name: value` lines, and
//! each figure comes with a baseline measured in the same run (ratios are
//! what to compare across these noisy machines):
//! - gate: single-shot median ns/packet per verdict through
//!   BPF_PROG_TEST_RUN next to a do-nothing XDP program (single shots: with
//!   repeat > 1 the kernel reuses one buffer and a rewriting path only takes
//!   its real branch the first time), and a SYN flood against the gate,
//!   kernel SYN cookies and nftables SYNPROXY;
//! - agent: the TC stamper next to a do-nothing TC program, and the
//!   daemon's resident memory;
//! - control plane: logins per second (OPAQUE next to the argon2id check
//!   logins were before), authorizations per second end to end, validator
//!   lookups against 100,000 users next to a bare SQLite lookup, and the
//!   control plane's memory with many flows;
//! - splice: the rewrite next to the do-nothing program, the splice map's
//!   memory, and time to first byte, transactions/s and bulk throughput
//!   through ackgate next to nftables DNAT, HAProxy and a direct route;
//! - delayed: bulk throughput over a 40 ms edge link, ackgate next to the
//!   direct route (needs sch_netem: `cargo xtask bench delayed` runs it in
//!   the VM).

mod agent;
mod control;
mod gate;
mod splice;

use ackgate_common::net::TCP_SYN;
use ackgate_tests::packet::TcpFrame;

pub const RUNS: usize = 3001;
pub const CLIENT: [u8; 4] = [10, 0, 0, 2];
pub const VIP: [u8; 4] = [10, 0, 0, 1];

pub fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

pub fn syn(sport: u16) -> TcpFrame {
    let mut f = TcpFrame::new(CLIENT, sport, VIP, 443, TCP_SYN).linux_syn_options();
    f.seq = 0x2000_0000 ^ sport as u32;
    f
}

/// `bench [GROUP...]`: gate, agent, control, flood, splice, delayed; all
/// when none given.
fn main() {
    let groups: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |g: &str| groups.is_empty() || groups.iter().any(|a| a == g);
    let known = ["gate", "agent", "control", "flood", "splice", "delayed"];
    if let Some(bad) = groups.iter().find(|g| !known.contains(&g.as_str())) {
        eprintln!("bench: unknown group {bad:?} ({})", known.join(", "));
        std::process::exit(2);
    }
    if wanted("gate") {
        gate::test_run_bench();
    }
    if wanted("agent") {
        agent::stamp_bench();
        agent::agent_memory_bench();
    }
    if wanted("control") {
        control::logins_bench();
        control::validator_bench();
        control::authorizations_bench();
    }
    if wanted("splice") {
        splice::splice_bench();
    }
    if wanted("delayed") {
        splice::delayed_bench();
    }
    if wanted("flood") {
        for defence in [gate::Defence::Gate, gate::Defence::KernelSyncookies, gate::Defence::NftSynproxy] {
            gate::flood_bench(defence);
        }
    }
}

/// Resident set of `pid` and its descendants (`ip netns exec` execs the
/// agent in place, so this is the agent itself).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
