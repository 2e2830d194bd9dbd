//! `cargo xtask fuzz`, short, on every run: gate frames and control frames
//! from a fixed seed and from a fresh one (its seed is in the report on
//! failure), and proof that the oracle catches what it is there to catch.

use ackgate_tests::fuzz::control;
use ackgate_tests::fuzz::gate::GateFuzz;
use ackgate_tests::fuzz::random_seed;

const FIXED_SEED: u64 = 0xac47;
/// Per seed: a tenth of the full run's gate frames, in a few seconds.
const GATE_FRAMES: u64 = 50_000;
/// Per seed and per server.
const CONTROL_FRAMES: u64 = 75;

#[test]
fn gate_frames_without_a_valid_mac_earn_nothing() {
    let mut fuzz = GateFuzz::new();
    for seed in [FIXED_SEED, random_seed()] {
        let report = fuzz.run(seed, GATE_FRAMES);
        assert_eq!(report.violations.total, 0, "{report}");
    }
}

#[test]
fn control_frames_break_no_server() {
    for seed in [FIXED_SEED, random_seed()] {
        let report = control::run(seed, CONTROL_FRAMES);
        assert_eq!(report.violations.total, 0, "{report}");
    }
}

/// A run without violations means something only if a gate that let an
/// unstamped frame through would be caught: a genuine stamped ACK, judged
/// as though it carried no stamp, must be (it becomes pending), and judged
/// as what it is, must not.
#[test]
fn the_oracle_catches_a_pending_flow_without_a_valid_mac() {
    let mut fuzz = GateFuzz::new();
    let ack = fuzz.stamped_ack();
    let problems = fuzz.judge(&ack);
    assert!(problems.is_empty(), "a genuine stamped ACK is what the gate is for: {problems:?}");
    let ack = fuzz.stamped_ack();
    let problems = fuzz.judge_as_unstamped(&ack);
    assert!(
        problems.iter().any(|p| p.starts_with("ack_pending") && p.contains("without a valid MAC")),
        "a pending flow from a frame taken to be unstamped must be a violation: {problems:?}"
    );
}
