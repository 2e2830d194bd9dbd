//! `cargo xtask fuzz`: mutated frames through the real gate by test run,
//! then mutated control-protocol frames into the agent listener and the
//! validator link (`ackgate_tests::fuzz` says what and why). Prints what
//! each verdict and each server received, and every broken invariant with
//! the seed and the frame's bytes; exits 1 if there was one.
//!
//! `fuzz [--frames N] [--control N] [--seed S]`: N gate frames (default a
//! million), N control frames per server (default 2000), seed S (decimal
//! or 0x-hex; default from the clock).

use ackgate_tests::fuzz::{control, gate, random_seed};

const USAGE: &str = "usage: fuzz [--frames N] [--control N] [--seed S]";

struct Args {
    frames: u64,
    control: u64,
    seed: u64,
}

fn number(s: &str) -> Option<u64> {
    let s = s.replace('_', "");
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn args() -> Result<Args, String> {
    let mut a = Args { frames: 1_000_000, control: 2000, seed: random_seed() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| number(&v)).ok_or_else(|| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--frames" => a.frames = value,
            "--control" => a.control = value,
            "--seed" => a.seed = value,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let a = args().unwrap_or_else(|e| {
        eprintln!("fuzz: {e}\n{USAGE}");
        std::process::exit(2);
    });
    println!("seed {:#x}", a.seed);
    // The gate moves its thread into a fresh network namespace; the
    // control plane's servers need this one's loopback.
    let gate = std::thread::spawn(move || gate::GateFuzz::new().run(a.seed, a.frames))
        .join()
        .unwrap_or_else(|_| std::process::exit(1));
    println!("{gate}");
    let control = control::run(a.seed, a.control);
    println!("{control}");
    let broken = gate.violations.total + control.violations.total;
    if broken > 0 {
        eprintln!("fuzz: {broken} violation(s) with seed {:#x}", a.seed);
        std::process::exit(1);
    }
}
