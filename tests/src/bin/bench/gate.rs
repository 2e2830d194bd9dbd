//! The XDP gate: verdict paths through BPF_PROG_TEST_RUN, and a SYN flood
//! against the gate and the kernel's own defences.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ackgate_common::abi::RESPONSE_DROP;
use ackgate_common::net::{TCP_ACK, TCP_SYN};
use ackgate_common::option::OptionId;
use ackgate_common::reason;
use ackgate_tests::fixture::{AGENT_ID, AGENT_KEY, TestGate, service};
use ackgate_tests::flood::SynFlood;
use ackgate_tests::kernel_alt;
use ackgate_tests::packet::{TcpFrame, stamp, v6_of};
use ackgate_tests::stamper::stamped_handshake;
use ackgate_tests::topology::{Ns, Topology};

use crate::{CLIENT, RUNS, VIP, median, syn};

/// The client's handshake ACK after the gate's SYN/ACK, with timestamps as
/// Linux sends them, over IPv4 or (`v6`) IPv6.
fn handshake_ack(g: &mut TestGate, sport: u16, v6: bool) -> TcpFrame {
    let s = syn(sport).family(v6);
    let out = g.run(&s.build());
    assert_eq!(out.action, 3, "SYN must be answered (XDP_TX)");
    let l4 = s.l4_offset();
    let cookie = u32::from_be_bytes(out.frame[l4 + 4..l4 + 8].try_into().expect("4 bytes"));
    let mut a = TcpFrame::new(CLIENT, sport, VIP, 443, TCP_ACK).family(v6);
    a.seq = s.seq.wrapping_add(1);
    a.ack = cookie.wrapping_add(1);
    a.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 1];
    a
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defence {
    Gate,
    KernelSyncookies,
    NftSynproxy,
}

const FLOOD_PORT: u16 = 8443;
const FLOOD_SECS: u64 = 3;
const LEGIT_TRIES: u16 = 20;

/// One flood source against one defence on a fresh topology: flood SYNs/s
/// the gateway answered, softirq CPU per answered SYN (all packet work of
/// every defence runs in the NET_RX softirq), and the share of a
/// legitimate client's connects that succeeded meanwhile.
pub fn flood_bench(defence: Defence) {
    let topo = Topology::new("flood");
    let gw = topo.ns(Ns::Gateway).to_owned();
    let vip = topo.edge_addr;
    let mut gate = None;
    let mut listener = None;
    match defence {
        Defence::Gate => {
            let mut g = TestGate::new("flood", &[service(vip.octets(), FLOOD_PORT, RESPONSE_DROP, false)]);
            topo.attach_gate(&mut g.gate);
            gate = Some(g);
        }
        Defence::KernelSyncookies | Defence::NftSynproxy => {
            if defence == Defence::KernelSyncookies {
                kernel_alt::kernel_syncookies(&gw);
            } else {
                kernel_alt::nft_synproxy(&gw, FLOOD_PORT);
            }
            let l = topo.run_in(Ns::Gateway, || TcpListener::bind(("0.0.0.0", FLOOD_PORT)).expect("listener"));
            l.set_nonblocking(true).expect("nonblocking");
            listener = Some(l);
        }
    }
    let answered = |gate: &mut Option<TestGate>| match defence {
        Defence::Gate => gate.as_mut().map(|g| g.counters().get(reason::SYN_COOKIE)).unwrap_or(0),
        Defence::KernelSyncookies => kernel_alt::tcpext(&gw, "SyncookiesSent"),
        Defence::NftSynproxy => kernel_alt::nft_syn_count(&gw),
    };
    let before = answered(&mut gate);
    let soft_before = kernel_alt::softirq_ns();
    let client = topo.client_addr;
    let (sent, legit_ok) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            topo.run_in(Ns::Client, || {
                SynFlood::new(client, vip, FLOOD_PORT)
                    .expect("raw socket for the flood")
                    .run_for(Duration::from_secs(FLOOD_SECS))
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut ok = 0u32;
        for i in 0..LEGIT_TRIES {
            let port = 50000 + i;
            let success = topo.run_in(Ns::Client, || match defence {
                Defence::Gate => stamped_handshake(client, port, vip, FLOOD_PORT, Duration::from_secs(1)).is_some(),
                _ => {
                    TcpStream::connect_timeout(&SocketAddr::new(vip.into(), FLOOD_PORT), Duration::from_secs(1)).is_ok()
                }
            });
            ok += u32::from(success);
            std::thread::sleep(Duration::from_millis(100));
        }
        (flood.join().expect("flood thread"), ok)
    });
    let soft = kernel_alt::softirq_ns() - soft_before;
    let answered_n = answered(&mut gate) - before;
    // The gate's legitimate handshakes must also have become pending.
    let legit_ok = match gate.as_mut() {
        Some(g) => legit_ok.min(g.gate.pending_flows().map(|p| p.len() as u32).unwrap_or(0)),
        None => {
            while listener.as_ref().is_some_and(|l| l.accept().is_ok()) {}
            legit_ok
        }
    };
    let name = match defence {
        Defence::Gate => "flood_ackgate",
        Defence::KernelSyncookies => "flood_kernel_syncookies",
        Defence::NftSynproxy => "flood_nft_synproxy",
    };
    println!("{name}_sent_pps: {}", sent / FLOOD_SECS);
    println!("{name}_answered_pps: {}", answered_n / FLOOD_SECS);
    println!("{name}_softirq_ns_per_syn: {:.0}", soft as f64 / answered_n.max(1) as f64);
    println!("{name}_legit_connects_ok: {legit_ok}/{LEGIT_TRIES}");
}

/// The verdict paths against the do-nothing program, over IPv4; then the
/// same paths over IPv6 against IPv4's, from the same interleaved runs.
pub fn test_run_bench() {
    let services = [service(VIP, 443, RESPONSE_DROP, false), service(v6_of(VIP), 443, RESPONSE_DROP, false)];
    let mut g = TestGate::new("bench", &services);
    let unprotected = TcpFrame::new(CLIENT, 40000, VIP, 22, TCP_SYN).linux_syn_options().build();
    let frames = |g: &mut TestGate, v6: bool| {
        let syn_frame = syn(40001).family(v6).build();
        let unstamped = handshake_ack(g, 40002, v6).build();
        // Every accept needs a fresh flow (an accepted flow turns pending).
        let stamped: Vec<Vec<u8>> = (0..RUNS)
            .map(|i| {
                let mut a = handshake_ack(g, 10000 + i as u16, v6);
                stamp::ack(&mut a, OptionId::default(), AGENT_ID, &AGENT_KEY);
                a.build()
            })
            .collect();
        (syn_frame, unstamped, stamped)
    };
    let (syn_frame, unstamped, stamped) = frames(&mut g, false);
    let (syn6, unstamped6, stamped6) = frames(&mut g, true);

    // Interleave the cases so that machine noise hits them alike.
    let mut t: [Vec<u64>; 8] = Default::default();
    for (frame, frame6) in stamped.iter().zip(&stamped6) {
        t[0].push(g.run_pass(&syn_frame).duration_ns);
        t[1].push(g.run(&unprotected).duration_ns);
        t[2].push(g.run(&syn_frame).duration_ns);
        t[3].push(g.run(&unstamped).duration_ns);
        t[5].push(g.run(&syn6).duration_ns);
        t[6].push(g.run(&unstamped6).duration_ns);
        for (i, f) in [(4, frame), (7, frame6)] {
            let out = g.run(f);
            assert_eq!(out.action, 1, "a stamped ACK must be accepted (pending, XDP_DROP)");
            t[i].push(out.duration_ns);
        }
    }
    let c = g.counters();
    assert_eq!(c.get(ackgate_common::reason::ACK_PENDING), 2 * RUNS as u64, "every stamped ACK must be accepted");

    let [base, pass, synack, drop, accept, synack6, drop6, accept6] = t.map(median);
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
    // IPv6 parses a larger header and hashes a longer MAC message; the
    // cookie helper's SHA-1 covers 16-byte addresses.
    for (name, v6, v4) in [
        ("syn_cookie_synack", synack6, synack),
        ("unstamped_ack_drop", drop6, drop),
        ("stamped_ack_accept", accept6, accept),
    ] {
        println!("ipv6_{name}_ns: {v6:.0}");
        println!("ipv6_{name}_vs_ipv4_ratio: {:.2}", v6 / v4);
    }
}
