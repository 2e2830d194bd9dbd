//! `cargo xtask bench`: single-shot median ns/packet per verdict through
//! BPF_PROG_TEST_RUN, each next to a do-nothing XDP program measured in the
//! same run. Single shots, because with repeat > 1 the kernel reuses one
//! buffer and a rewriting path only takes its real branch the first time.
//! Prints `name: value` lines; ratios are what to compare across machines.

use ackgate_common::net::{TCP_ACK, TCP_SYN};
use ackgate_common::option::OptionId;
use ackgate_tests::fixture::{AGENT_ID, AGENT_KEY, TestGate};
use ackgate_tests::packet::{TcpFrame, stamp};

const RUNS: usize = 3001;
const CLIENT: [u8; 4] = [10, 0, 0, 2];
const VIP: [u8; 4] = [10, 0, 0, 1];

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

fn syn(sport: u16) -> TcpFrame {
    let mut f = TcpFrame::new(CLIENT, sport, VIP, 443, TCP_SYN).linux_syn_options();
    f.seq = 0x2000_0000 ^ sport as u32;
    f
}

/// The client's handshake ACK after the gate's SYN/ACK, with timestamps as
/// Linux sends them.
fn handshake_ack(g: &mut TestGate, sport: u16) -> TcpFrame {
    let s = syn(sport);
    let out = g.run(&s.build());
    assert_eq!(out.action, 3, "SYN must be answered (XDP_TX)");
    let cookie = u32::from_be_bytes(out.frame[38..42].try_into().expect("4 bytes"));
    let mut a = TcpFrame::new(CLIENT, sport, VIP, 443, TCP_ACK);
    a.seq = s.seq.wrapping_add(1);
    a.ack = cookie.wrapping_add(1);
    a.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 1];
    a
}

fn main() {
    let mut g = TestGate::single("bench");
    let unprotected = TcpFrame::new(CLIENT, 40000, VIP, 22, TCP_SYN).linux_syn_options().build();
    let syn_frame = syn(40001).build();
    let unstamped = handshake_ack(&mut g, 40002).build();
    // Every accept needs a fresh flow (an accepted flow turns pending).
    let stamped: Vec<Vec<u8>> = (0..RUNS)
        .map(|i| {
            let mut a = handshake_ack(&mut g, 10000 + i as u16);
            stamp::ack(&mut a, OptionId::default(), AGENT_ID, &AGENT_KEY);
            a.build()
        })
        .collect();

    // Interleave the cases so that machine noise hits them alike.
    let mut t: [Vec<u64>; 5] = Default::default();
    for frame in &stamped {
        t[0].push(g.run_pass(&syn_frame).duration_ns);
        t[1].push(g.run(&unprotected).duration_ns);
        t[2].push(g.run(&syn_frame).duration_ns);
        t[3].push(g.run(&unstamped).duration_ns);
        let out = g.run(frame);
        assert_eq!(out.action, 1, "a stamped ACK must be accepted (pending, XDP_DROP)");
        t[4].push(out.duration_ns);
    }
    let c = g.counters();
    assert_eq!(c.get(ackgate_common::reason::ACK_PENDING), RUNS as u64, "every stamped ACK must be accepted");

    let [base, pass, synack, drop, accept] = t.map(median);
    println!("runs_per_case: {RUNS}");
    println!("baseline_do_nothing_ns: {base:.0}");
    for (name, v, goal) in [
        ("unprotected_pass", pass, None),
        ("syn_cookie_synack", synack, Some(4.0)),
        ("unstamped_ack_drop", drop, Some(1.5)),
        ("stamped_ack_accept", accept, Some(5.0)),
    ] {
        println!("{name}_ns: {v:.0}");
        let ratio = v / base;
        match goal {
            Some(goal) => println!("{name}_ratio: {ratio:.2} (goal <= {goal})"),
            None => println!("{name}_ratio: {ratio:.2}"),
        }
    }
}
