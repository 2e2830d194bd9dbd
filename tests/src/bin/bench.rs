//! `cargo xtask bench`: single-shot median ns/packet per verdict through
//! BPF_PROG_TEST_RUN, each next to a do-nothing XDP program measured in the
//! same run. Single shots, because with repeat > 1 the kernel reuses one
//! buffer and a rewriting path only takes its real branch the first time.
//! Prints `name: value` lines; ratios are what to compare across machines.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ackgate_agent::stamper::Target;
use ackgate_common::abi::RESPONSE_DROP;
use ackgate_common::net::{TCP_ACK, TCP_SYN};
use ackgate_common::option::OptionId;
use ackgate_common::reason;
use ackgate_tests::fixture::service;
use ackgate_tests::fixture::{AGENT_ID, AGENT_KEY, TestGate};
use ackgate_tests::flood::SynFlood;
use ackgate_tests::kernel_alt;
use ackgate_tests::packet::{TcpFrame, stamp};
use ackgate_tests::stamp_fixture::TestStamper;
use ackgate_tests::stamper::stamped_handshake;
use ackgate_tests::test_gateway::TestGateway;
use ackgate_tests::topology::{Ns, Topology};

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
    test_run_bench();
    stamp_bench();
    agent_memory_bench();
    for defence in [Defence::Gate, Defence::KernelSyncookies, Defence::NftSynproxy] {
        flood_bench(defence);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defence {
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
fn flood_bench(defence: Defence) {
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

fn test_run_bench() {
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

/// The agent's TC program: single-shot medians of the stamping path (a
/// handshake ACK after its SYN), the SYN bookkeeping and a non-target
/// packet, each next to the do-nothing TC program in the same run.
fn stamp_bench() {
    let mut st = TestStamper::new(&[Target { addr: VIP, port: 443, stealth: false }], true);
    let other = TcpFrame::new(CLIENT, 40000, [10, 9, 9, 9], 443, TCP_ACK).build();
    let mut t: [Vec<u64>; 4] = Default::default();
    for i in 0..RUNS {
        let sport = 20000 + i as u16;
        let s = syn(sport);
        let mut a = TcpFrame::new(CLIENT, sport, VIP, 443, TCP_ACK);
        a.seq = s.seq.wrapping_add(1);
        a.ack = 0x5000_0001;
        a.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 1];
        let ack = a.build();
        t[0].push(st.run_pass(&ack).duration_ns);
        t[1].push(st.run(&other).duration_ns);
        t[2].push(st.run(&s.build()).duration_ns);
        let out = st.run(&ack);
        assert_eq!(out.frame.len(), ack.len() + 20, "every handshake ACK must be stamped");
        t[3].push(out.duration_ns);
    }
    let [base, other, syn_rec, stamp_ack] = t.map(median);
    println!("tc_baseline_do_nothing_ns: {base:.0}");
    for (name, v) in [("tc_not_target", other), ("tc_syn_recorded", syn_rec), ("tc_stamp_ack", stamp_ack)] {
        println!("{name}_ns: {v:.0}");
        println!("{name}_ratio: {:.2}", v / base);
    }
}

/// Resident memory of the real `ackgate-agent run` daemon (enrolled with an
/// in-process gateway in the gateway namespace, stamper on the client's
/// egress): idle, and at the end of a burst of 1,000 connects.
fn agent_memory_bench() {
    let Some(agent_bin) = sibling_binary("ackgate-agent") else {
        println!("agent_rss: skipped (build ackgate-agent in the same profile first)");
        return;
    };
    let topo = Topology::new("rss");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = topo.run_in(Ns::Gateway, || std::net::TcpListener::bind((topo.edge_addr, 4433)).expect("bind"));
    listener.set_nonblocking(true).expect("nonblocking");
    let dir = std::env::temp_dir().join(format!("ackgate-rss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let gw = rt.block_on(async { TestGateway::start_on(tokio::net::TcpListener::from_std(listener).expect("tokio")) });
    let invite = gw.invite(Duration::from_secs(60)).encode();
    let config = dir.join("agent.toml");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}/state\"\ncontrol_socket = \"{}/ctl.sock\"\ninterfaces = [\"{}\"]\n",
            dir.display(),
            dir.display(),
            topo.client_if
        ),
    )
    .expect("config");
    let ns = topo.ns(Ns::Client).to_owned();
    let cfg = config.display().to_string();
    let enroll_cmd = {
        let (ns, agent_bin, cfg) = (ns.clone(), agent_bin.clone(), cfg.clone());
        move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns, &agent_bin, "--config", &cfg, "enroll", &invite])
                .output()
        }
    };
    // Enrollment talks to the gateway from the client namespace, while the
    // in-process gateway serves on this runtime.
    let enrolled = rt.block_on(async { tokio::task::spawn_blocking(enroll_cmd).await });
    let enrolled = enrolled.expect("join").expect("enroll");
    assert!(enrolled.status.success(), "enroll failed: {}", String::from_utf8_lossy(&enrolled.stderr));
    let mut daemon = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, &agent_bin, "--config", &cfg, "run"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting the agent");
    let pid = daemon.id();
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(2)).await });
    let idle = rss_kib(pid);
    let server = topo.run_in(Ns::Gateway, || TcpListener::bind((topo.edge_addr, 9001)).expect("bind"));
    let acceptor = std::thread::spawn(move || {
        for _ in 0..1000 {
            if server.accept().is_err() {
                break;
            }
        }
    });
    let to = SocketAddr::new(topo.edge_addr.into(), 9001);
    let peak = std::thread::scope(|s| {
        let burst = s.spawn(|| {
            topo.run_in(Ns::Client, || {
                let mut conns = Vec::with_capacity(1000);
                for _ in 0..1000 {
                    conns.push(TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect"));
                }
                conns
            })
        });
        let mut peak = idle;
        while !burst.is_finished() {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(burst.join().expect("burst"));
        peak.max(rss_kib(pid))
    });
    acceptor.join().expect("acceptor");
    // SAFETY: signalling the child this function started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    println!("agent_rss_idle_kib: {idle}");
    println!("agent_rss_burst_1000_connects_kib: {peak}");
}

/// Resident set of `pid` and its descendants (`ip netns exec` execs the
/// agent in place, so this is the agent itself).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn sibling_binary(name: &str) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(name);
    path.exists().then(|| path.display().to_string())
}
