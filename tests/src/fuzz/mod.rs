//! `cargo xtask fuzz`: mutated frames through the real gate by test run
//! (`gate`), and mutated control-protocol frames into the real agent
//! listener and the validator link (`control`). Each target builds frames
//! from valid seeds, mutates them with a seeded PRNG, and judges every
//! outcome with an oracle. Gate frames are read by etherparse, not by the
//! gate's parser, and stamps checked by recomputing the MAC as the agent
//! does; control frames are read by the protocol's codec (what they hold),
//! and what is judged is what the servers did with them.
//!
//! What must hold: nothing without a valid MAC for its own handshake
//! becomes a pending flow or reaches a target; no frame makes a daemon
//! panic, hang or authorize anything it was not given the credentials for.

pub mod control;
pub mod gate;
mod mutate;
mod oracle;

use std::fmt::Write as _;

use rand::SeedableRng as _;
use rand_chacha::ChaCha8Rng;

/// A broken invariant, with what it takes to look at it again.
#[derive(Clone, Debug)]
pub struct Violation {
    pub target: &'static str,
    /// Index of the frame (or case) in its run.
    pub case: u64,
    pub what: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} case {}: {}\n  bytes: {}", self.target, self.case, self.what, hex(&self.bytes))
    }
}

/// Violations kept in full; beyond, only counted.
const KEPT: usize = 20;

/// The violations of one run: the first [`KEPT`] in full, and how many.
#[derive(Debug, Default)]
pub struct Violations {
    pub total: u64,
    pub kept: Vec<Violation>,
}

impl Violations {
    pub fn push(&mut self, v: Violation) {
        self.total += 1;
        if self.kept.len() < KEPT {
            self.kept.push(v);
        }
    }
}

/// The PRNG of case `case` of a run with `seed`: each case its own stream,
/// so that one case is the same whatever the cases before it drew.
fn case_rng(seed: u64, case: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(case);
    rng
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A fresh seed from the clock, for runs that do not name one.
pub fn random_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id()) << 48
}
