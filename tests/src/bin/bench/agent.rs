//! The agent: its TC stamper next to a do-nothing TC program, and the
//! daemon's resident memory.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ackgate_agent::stamper::Target;
use ackgate_common::net::TCP_ACK;
use ackgate_tests::packet::{TcpFrame, v6_of};
use ackgate_tests::stamp_fixture::TestStamper;
use ackgate_tests::test_gateway::TestGateway;
use ackgate_tests::topology::{Ns, Topology};

use ackgate_tests::daemons::{Daemon, workspace_binary};

use crate::{CLIENT, RUNS, VIP, median, rss_kib, syn};

/// The agent's TC program: single-shot medians of the stamping path (a
/// handshake ACK after its SYN), the SYN bookkeeping and a non-target
/// packet, each next to the do-nothing TC program in the same run; and the
/// IPv6 stamping path next to IPv4's.
pub fn stamp_bench() {
    let targets = [
        Target { addr: VIP.into(), port: 443, stealth: false },
        Target { addr: v6_of(VIP).into(), port: 443, stealth: false },
    ];
    let mut st = TestStamper::new(&targets, true);
    let other = TcpFrame::new(CLIENT, 40000, [10, 9, 9, 9], 443, TCP_ACK).build();
    let handshake = |sport: u16, v6: bool| {
        let s = syn(sport).family(v6);
        let mut a = TcpFrame::new(CLIENT, sport, VIP, 443, TCP_ACK).family(v6);
        a.seq = s.seq.wrapping_add(1);
        a.ack = 0x5000_0001;
        a.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 1];
        (s.build(), a.build())
    };
    let mut t: [Vec<u64>; 6] = Default::default();
    for i in 0..RUNS {
        let sport = 20000 + i as u16;
        let (s, ack) = handshake(sport, false);
        let (s6, ack6) = handshake(sport, true);
        t[0].push(st.run_pass(&ack).duration_ns);
        t[1].push(st.run(&other).duration_ns);
        t[2].push(st.run(&s).duration_ns);
        t[4].push(st.run(&s6).duration_ns);
        for (i, ack) in [(3, &ack), (5, &ack6)] {
            let out = st.run(ack);
            assert_eq!(out.frame.len(), ack.len() + 20, "every handshake ACK must be stamped");
            t[i].push(out.duration_ns);
        }
    }
    let [base, other, syn_rec, stamp_ack, syn_rec6, stamp_ack6] = t.map(median);
    println!("tc_baseline_do_nothing_ns: {base:.0}");
    for (name, v) in [("tc_not_target", other), ("tc_syn_recorded", syn_rec), ("tc_stamp_ack", stamp_ack)] {
        println!("{name}_ns: {v:.0}");
        println!("{name}_ratio: {:.2}", v / base);
    }
    for (name, v6, v4) in [("tc_syn_recorded", syn_rec6, syn_rec), ("tc_stamp_ack", stamp_ack6, stamp_ack)] {
        println!("ipv6_{name}_ns: {v6:.0}");
        println!("ipv6_{name}_vs_ipv4_ratio: {:.2}", v6 / v4);
    }
}

/// Resident memory of the real `ackgate-agent run` daemon (enrolled with an
/// in-process gateway in the gateway namespace, stamper on the client's
/// egress): idle, and at the end of a burst of 1,000 connects.
pub fn agent_memory_bench() {
    let agent_bin = workspace_binary("ackgate-agent").display().to_string();
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
    // Stopped (SIGTERM) when dropped, also if this benchmark panics.
    let mut run = std::process::Command::new("ip");
    run.args(["netns", "exec", &ns, &agent_bin, "--config", &cfg, "run"]);
    let daemon = Daemon::start(run, "ackgate-agent run", dir.join("agent.log"));
    let pid = daemon.pid() as u32;
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
    drop(daemon);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    println!("agent_rss_idle_kib: {idle}");
    println!("agent_rss_burst_1000_connects_kib: {peak}");
}
