//! BPF_PROG_TEST_RUN table tests: a packet in → the verdict, exactly one
//! reason counter, and the exact bytes out.

use ackgate_common::reason;

use crate::fixture::TestGate;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

fn action_name(a: u32) -> &'static str {
    match a {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "other",
    }
}

/// Which of the gateway's programs a row runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// The edge interface's gate.
    Edge,
    /// The internal interface's program.
    Internal,
}

pub enum Out {
    /// The frame leaves exactly as it came in.
    Unchanged,
    /// Exactly these bytes leave.
    Exact(Vec<u8>),
    /// Nothing to compare (dropped).
    Dropped,
}

pub struct Row {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub action: u32,
    pub reason: u32,
    pub out: Out,
}

/// Runs each row once through `program`, in order (rows may depend on the
/// state earlier rows left in the maps).
pub fn run_rows(gate: &mut TestGate, program: Program, rows: Vec<Row>) {
    for row in rows {
        let before = gate.counters();
        let out = match program {
            Program::Edge => gate.run(&row.input),
            Program::Internal => gate.run_internal(&row.input),
        };
        let delta = gate.counters().since(&before);
        assert_eq!(
            out.action,
            row.action,
            "{}: verdict {} ({}), expected {} ({})",
            row.name,
            out.action,
            action_name(out.action),
            row.action,
            action_name(row.action)
        );
        let bumped: Vec<(&str, u64)> = delta.labelled().filter(|(_, n)| *n != 0).collect();
        assert_eq!(
            bumped,
            vec![(reason::LABELS[row.reason as usize], 1)],
            "{}: expected exactly one {} count",
            row.name,
            reason::LABELS[row.reason as usize]
        );
        match row.out {
            Out::Unchanged => assert_eq!(out.frame, row.input, "{}: frame must pass byte for byte", row.name),
            Out::Exact(want) => assert_eq!(out.frame, want, "{}: output bytes differ", row.name),
            Out::Dropped => {}
        }
    }
}
