//! A freshly loaded agent TC stamper for test runs.

use ackgate_agent::stamper::{Stamper, Target};
use ackgate_common::abi::ANY_ACCOUNT;
use ackgate_common::counters::Counters;
use ackgate_common::option::OptionId;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};

use crate::fixture::{AGENT_ID, AGENT_KEY, RunOutput};

/// TC verdict of every stamper run: the packet always leaves.
pub const TC_ACT_OK: u32 = 0;

pub struct TestStamper {
    pub stamper: Stamper,
}

impl TestStamper {
    /// Loaded with `targets`; enrolled as the fixture agent unless
    /// `enrolled` is false.
    pub fn new(targets: &[Target], enrolled: bool) -> Self {
        let mut stamper = Stamper::load(OptionId::default())
            .unwrap_or_else(|e| panic!("the TC stamper must load and pass the verifier: {e}"));
        stamper.set_targets(targets).unwrap_or_else(|e| panic!("filling the target map failed: {e}"));
        if enrolled {
            stamper.set_identity(AGENT_ID, AGENT_KEY).unwrap_or_else(|e| panic!("setting the identity failed: {e}"));
        }
        let mut st = Self { stamper };
        st.set_account(ANY_ACCOUNT, true);
        st
    }

    /// Lets `account`'s sockets be stamped, or stops it. A fresh stamper
    /// has a machine-wide login (`ANY_ACCOUNT`).
    pub fn set_account(&mut self, account: u32, logged_in: bool) {
        self.stamper
            .set_account(account, logged_in)
            .unwrap_or_else(|e| panic!("updating the account map for {account}: {e}"));
    }

    pub fn run(&mut self, frame: &[u8]) -> RunOutput {
        let prog = self.stamper.program().unwrap_or_else(|e| panic!("stamper program: {e}"));
        test_run(prog, frame)
    }

    /// The do-nothing TC program over `frame` (benchmark baseline).
    pub fn run_pass(&mut self, frame: &[u8]) -> RunOutput {
        let prog = self.stamper.pass_program().unwrap_or_else(|e| panic!("pass program: {e}"));
        test_run(prog, frame)
    }

    pub fn counters(&self) -> Counters {
        self.stamper.counters().unwrap_or_else(|e| panic!("reading stamper counters: {e}"))
    }
}

fn test_run(prog: &mut SchedClassifier, frame: &[u8]) -> RunOutput {
    let mut out = vec![0u8; frame.len() + 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    let r = prog.test_run(opts).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of the TC program failed: {e}"));
    out.truncate(r.data_size_out as usize);
    RunOutput { action: r.return_value, frame: out, duration_ns: r.duration.as_nanos() as u64 }
}
