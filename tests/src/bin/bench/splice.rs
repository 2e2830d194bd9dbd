//! The splice: the rewrite's cost per packet through BPF_PROG_TEST_RUN next
//! to the do-nothing program, the kernel memory of the splice map sized
//! for 1,000,000 flows, and, on the namespace topology, time to first
//! byte, request/response transactions and bulk throughput through
//! ackgate next to what a user would deploy instead: nftables DNAT with
//! conntrack, HAProxy in TCP mode, and a direct route (no gateway
//! function but forwarding), each measured in the same run.

use std::io::{Read as _, Write as _};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ackgate_common::abi::{FlowKey, FlowOwner, RESPONSE_DROP, port_field, v4_words, v6_words};
use ackgate_common::net::{TCP_ACK, TCP_PSH};
use ackgate_common::option::OptionId;
use ackgate_common::splice::{SpliceSetup, TargetAnswer, complete};
use ackgate_gateway::gate::{Gate, GateSettings, XdpMode};
use ackgate_tests::daemons::Daemon;
use ackgate_tests::deployment::{PORT, Setup};
use ackgate_tests::fixture::{TestGate, linux_handshake, service, unique_pin_dir};
use ackgate_tests::kernel_alt::ns_exec;
use ackgate_tests::packet::{TcpFrame, v6_of};
use ackgate_tests::target::TargetServer;
use ackgate_tests::topology::{Ns, Topology};

use crate::{CLIENT, RUNS, VIP, median};

const TARGET: [u8; 4] = [10, 99, 0, 2];

pub fn splice_bench() {
    rewrite_cost();
    map_memory();
    let mut results = Vec::new();
    for path in [Path::Direct, Path::NftDnat, Path::Haproxy, Path::Ackgate] {
        results.push((path, measure(path)));
    }
    let get = |p: Path| results.iter().find(|(q, _)| *q == p).map(|(_, r)| *r).expect("measured");
    let (ack, nft, ha, direct) = (get(Path::Ackgate), get(Path::NftDnat), get(Path::Haproxy), get(Path::Direct));
    println!("splice_rr_1b_vs_nft_dnat: {:.2}x (goal > 1.0x)", ack.rr_1b / nft.rr_1b);
    println!("splice_rr_1b_vs_haproxy: {:.2}x (goal >= 3x)", ack.rr_1b / ha.rr_1b);
    println!("splice_rr_1k_vs_nft_dnat: {:.2}x", ack.rr_1k / nft.rr_1k);
    println!("splice_rr_1k_vs_haproxy: {:.2}x", ack.rr_1k / ha.rr_1k);
    println!("splice_bulk_vs_direct: {:.2}x (goal >= 0.9x)", ack.bulk_gbps / direct.bulk_gbps);
    println!("splice_bulk_vs_nft_dnat: {:.2}x", ack.bulk_gbps / nft.bulk_gbps);
    println!("splice_ttfb_median_minus_direct_ms: {:.2} (goal <= 2 ms)", ack.ttfb_median_ms - direct.ttfb_median_ms);
    // What each gateway adds to the machine's CPU per transaction: the
    // same transactions over the direct route cost the rest (client,
    // target, veth), so the difference is the gateway's share.
    let added = |p: Figures| p.cpu_us_per_tx - direct.cpu_us_per_tx;
    for (name, p) in [("nft_dnat", nft), ("haproxy", ha), ("ackgate", ack)] {
        println!("{name}_gateway_cpu_us_per_tx: {:.2}", added(p));
    }
    if added(nft) > 0.0 {
        println!("splice_gateway_cpu_per_tx_vs_nft_dnat: {:.2}x (goal <= 0.5x)", added(ack) / added(nft));
    } else {
        println!("splice_gateway_cpu_per_tx_vs_nft_dnat: n/a (nftables DNAT measured no cost over the direct route)");
    }
}

/// Two established directions of one flow, as `complete` leaves them:
/// over IPv4, and its twin over IPv6 (`v6_of` addresses).
fn spliced(g: &mut TestGate) {
    let client = FlowKey::ipv4(CLIENT, VIP, 40000u16.to_be_bytes(), 443u16.to_be_bytes());
    let s = SpliceSetup {
        client,
        source_addr: v4_words(CLIENT),
        source_port: port_field(40000u16.to_be_bytes()),
        target_addr: v4_words(TARGET),
        target_port: port_field(8443u16.to_be_bytes()),
        client_isn: 1000,
        cookie_isn: 2000,
        handshake: linux_handshake(5, 6),
        gateway_wscale: 7,
        owner: FlowOwner::default(),
    };
    let (mut ct, mut tc) = s.connecting::<u32>();
    complete(&mut ct, &mut tc, &TargetAnswer { isn: 9000, wscale: 9, tsval: Some(77) });
    g.gate.set_splice(&s.target_key::<u32>(), &tc).expect("entry");
    g.gate.set_splice(&s.client_key::<u32>(), &ct).expect("entry");
    let client6 = FlowKey::of_sockets(
        SocketAddr::new(Ipv6Addr::from(v6_of(CLIENT)).into(), 40000),
        SocketAddr::new(Ipv6Addr::from(v6_of(VIP)).into(), 443),
    )
    .expect("one family");
    let s6 = SpliceSetup {
        client: client6,
        source_addr: client6.saddr,
        source_port: client6.sport,
        target_addr: v6_words(v6_of(TARGET)),
        ..s
    };
    let (mut ct, mut tc) = s6.connecting::<[u32; 4]>();
    complete(&mut ct, &mut tc, &TargetAnswer { isn: 9000, wscale: 9, tsval: Some(77) });
    g.gate.set_splice(&s6.target_key::<[u32; 4]>(), &tc).expect("IPv6 entry");
    g.gate.set_splice(&s6.client_key::<[u32; 4]>(), &ct).expect("IPv6 entry");
}

/// ns per packet of the rewrite (client data with timestamps, and the
/// target's answer), single shots next to the do-nothing program. The
/// test gate's namespace routes nothing, so this is the rewrite and the
/// FIB lookup that finds no route, then XDP_PASS: the redirect itself is
/// in the end-to-end figures.
fn rewrite_cost() {
    let vip6 = Ipv6Addr::from(v6_of(VIP));
    let services = [service(VIP, 443, RESPONSE_DROP, false), service(vip6, 443, RESPONSE_DROP, false)];
    let mut g = TestGate::new("bench-splice", &services);
    spliced(&mut g);
    let ts = |a: u32, b: u32| [&[1u8, 1, 8, 10][..], &a.to_be_bytes(), &b.to_be_bytes()].concat();
    let mut to_target = TcpFrame::new(CLIENT, 40000, VIP, 443, TCP_ACK | TCP_PSH);
    (to_target.seq, to_target.ack, to_target.tcp_options, to_target.payload) = (1001, 2001, ts(10, 6), vec![7; 100]);
    let mut to_client = TcpFrame::new(TARGET, 8443, CLIENT, 40000, TCP_ACK | TCP_PSH);
    (to_client.seq, to_client.ack, to_client.tcp_options, to_client.payload) = (9001, 1101, ts(78, 10), vec![7; 1000]);
    let (a, b) = (to_target.build(), to_client.build());
    let (a6, b6) = (to_target.v6().build(), to_client.v6().build());
    let (mut base, mut edge, mut internal, mut edge6, mut internal6) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        base.push(g.run_pass(&a).duration_ns);
        edge.push(g.run(&a).duration_ns);
        internal.push(g.run_internal(&b).duration_ns);
        edge6.push(g.run(&a6).duration_ns);
        internal6.push(g.run_internal(&b6).duration_ns);
    }
    let base = median(base);
    println!("splice_rewrite_baseline_ns: {base:.0}");
    println!("splice_rewrite_to_target: {:.2}x (goal <= 2x)", median(edge) / base);
    println!("splice_rewrite_to_client: {:.2}x (goal <= 2x)", median(internal) / base);
    // IPv6 goes through the tail-called stage (docs/splice.md, "IPv6").
    println!("splice_rewrite_v6_to_target: {:.2}x (goal <= 2x)", median(edge6) / base);
    println!("splice_rewrite_v6_to_client: {:.2}x (goal <= 2x)", median(internal6) / base);
}

/// Kernel memory (memlock, from fdinfo) of the splice map sized for
/// 1,000,000 flows (preallocated: the figure does not depend on the fill).
fn map_memory() {
    let pin_dir = unique_pin_dir("bench-mem");
    let mut settings = GateSettings::new(OptionId::default(), ackgate_common::abi::MAX_PENDING);
    settings.max_spliced = 1_000_000;
    let gate = Gate::load(&pin_dir, &settings).expect("loading the gate with 1,000,000 spliced flows");
    let memlock = |name: &str| -> u64 {
        let path = pin_dir.join(name);
        let data = aya::maps::MapData::from_pin(&path).expect("pinned map");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(data.fd()));
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let splice = memlock(ackgate_common::abi::MAP_SPLICE);
    println!("splice_map_mib_1m_flows: {:.0} (goal <= 256)", splice as f64 / (1 << 20) as f64);
    let splice6 = memlock(ackgate_common::abi::MAP_SPLICE6);
    println!("splice6_map_mib_1m_flows: {:.0}", splice6 as f64 / (1 << 20) as f64);
    drop(gate);
    let _ = std::fs::remove_dir_all(&pin_dir);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    NftDnat,
    Haproxy,
    Ackgate,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::NftDnat => "nft_dnat",
            Path::Haproxy => "haproxy",
            Path::Ackgate => "ackgate",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Figures {
    ttfb_median_ms: f64,
    rr_1b: f64,
    rr_1k: f64,
    /// CPU time of the whole machine per 1-byte transaction.
    cpu_us_per_tx: f64,
    bulk_gbps: f64,
}

/// What a path runs on: ackgate's full deployment (its daemons first, so
/// they stop before the topology goes), or a bare topology.
enum Deployed {
    Ackgate { _daemons: (Daemon, Daemon), setup: Box<Setup>, _peers: Gate },
    Bare { topo: Topology, target: TargetServer, _proxy: Option<Proxy> },
}

/// HAProxy, stopped on drop.
struct Proxy(Child, std::path::PathBuf);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

impl Deployed {
    fn topo(&self) -> &Topology {
        match self {
            Deployed::Ackgate { setup, .. } => &setup.topo,
            Deployed::Bare { topo, .. } => topo,
        }
    }

    fn stop_target(&mut self) {
        match self {
            Deployed::Ackgate { setup, .. } => setup.target.stop(),
            Deployed::Bare { target, .. } => target.stop(),
        }
    }
}

fn deploy(path: Path) -> (Deployed, SocketAddr) {
    if path == Path::Ackgate {
        // Native mode, as on a real edge. Native XDP_TX and redirect into
        // a veth deliver only when its peer runs XDP (drivers/net/veth.c):
        // the client's and the target's ends get the do-nothing program.
        let s = Setup::with_gateway("bench", "drop", 3000, "", "xdp_mode = \"native\"", "");
        let pin_dir = unique_pin_dir("bench-peers");
        let mut peers = Gate::load(&pin_dir, &GateSettings::new(OptionId::default(), 1024)).expect("peer programs");
        let _ = std::fs::remove_dir_all(&pin_dir);
        for (ns, dev) in [(Ns::Client, &s.topo.client_if), (Ns::Target, &s.topo.target_if)] {
            s.topo
                .run_in(ns, || peers.attach_pass(dev, XdpMode::Native))
                .unwrap_or_else(|e| panic!("the do-nothing program on {dev}: {e}"));
        }
        let daemons = s.start_approved("alice");
        let to = SocketAddr::new(s.topo.edge_addr.into(), PORT);
        return (Deployed::Ackgate { _daemons: daemons, setup: Box::new(s), _peers: peers }, to);
    }
    let topo = Topology::new("bench");
    let target = TargetServer::start(&topo, PORT);
    let gw = topo.ns(Ns::Gateway).to_owned();
    let (vip, tgt) = (topo.edge_addr, topo.target_addr);
    let mut proxy = None;
    let to = match path {
        Path::Direct => SocketAddr::new(tgt.into(), PORT),
        Path::NftDnat => {
            let rules = format!(
                "table ip ackgate_bench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
                 ip daddr {vip} tcp dport {PORT} dnat to {tgt}:{PORT}\n  }}\n}}\n"
            );
            let file = std::env::temp_dir().join(format!("ackgate-bench-dnat-{}.nft", std::process::id()));
            std::fs::write(&file, rules).expect("writing the DNAT rules");
            ns_exec(&gw, &["nft", "-f", &file.display().to_string()]);
            let _ = std::fs::remove_file(&file);
            SocketAddr::new(vip.into(), PORT)
        }
        Path::Haproxy => {
            let dir = std::env::temp_dir().join(format!("ackgate-bench-haproxy-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("haproxy dir");
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  \
                     timeout server 60s\nfrontend f\n  bind {vip}:{PORT}\n  default_backend b\nbackend b\n  \
                     server t {tgt}:{PORT}\n"
                ),
            )
            .expect("haproxy config");
            let child = Command::new("ip")
                .args(["netns", "exec", &gw, "haproxy", "-db", "-f"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting haproxy (cargo xtask bench installs it)");
            proxy = Some(Proxy(child, dir));
            let to = SocketAddr::new(vip.into(), PORT);
            wait_listening(&topo, to);
            to
        }
        Path::Ackgate => unreachable!("handled above"),
    };
    (Deployed::Bare { topo, target, _proxy: proxy }, to)
}

fn wait_listening(topo: &Topology, to: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if topo.run_in(Ns::Client, || TcpStream::connect_timeout(&to, Duration::from_millis(200))).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {to}");
}

fn measure(path: Path) -> Figures {
    let (mut d, to) = deploy(path);
    let topo_ttfb = d.topo();
    let mut ttfb: Vec<f64> = (0..60).map(|_| topo_ttfb.run_in(Ns::Client, || first_byte_ms(to))).collect();
    ttfb.sort_by(f64::total_cmp);
    let (med, p99) = (ttfb[ttfb.len() / 2], ttfb[ttfb.len() * 99 / 100]);
    println!("{}_ttfb_ms: median {med:.2} p99 {p99:.2}", path.name());
    // The same port now echoes, then serves iperf3.
    d.stop_target();
    let echo = d.topo().run_in(Ns::Target, || TcpListener::bind(("0.0.0.0", PORT)).expect("echo listener"));
    let echoer = std::thread::spawn(move || echo_server(echo));
    // Three rounds, medians: one round's CPU figure moves with whatever
    // else the machine did in those 3 s.
    let (mut rates, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let cpu_before = busy_cpu_secs();
        let (rate, count) = d.topo().run_in(Ns::Client, || transactions(to, 1));
        cpus.push((busy_cpu_secs() - cpu_before) * 1e6 / count as f64);
        rates.push(rate);
    }
    let (rr_1b, cpu_us_per_tx) = (median_f64(rates), median_f64(cpus));
    let (rr_1k, _) = d.topo().run_in(Ns::Client, || transactions(to, 1024));
    println!("{}_rr_per_s: 1 B {rr_1b:.0}, 1 KiB {rr_1k:.0}", path.name());
    println!("{}_cpu_us_per_tx: {cpu_us_per_tx:.2}", path.name());
    stop_echo(d.topo(), to);
    let _ = echoer.join();
    let bulk_gbps = iperf3(d.topo(), to);
    println!("{}_bulk_gbit_s: {bulk_gbps:.2}", path.name());
    if let Deployed::Ackgate { setup, .. } = &d {
        println!("ackgate_splice_redirect_packets: {}", setup.gate_counter("splice_redirect"));
    }
    Figures { ttfb_median_ms: med, rr_1b, rr_1k, cpu_us_per_tx, bulk_gbps }
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Busy CPU time of the whole machine so far (user, nice, system, irq,
/// softirq and steal of every CPU, from /proc/stat), in seconds: softirq
/// work, where forwarding and XDP run, is charged to no process.
fn busy_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let line = stat.lines().next().expect("/proc/stat has a total line");
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy as f64 / ticks
}

/// A fresh connect, an HTTP GET, and the first byte of the answer.
fn first_byte_ms(to: SocketAddr) -> f64 {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("first byte");
    start.elapsed().as_secs_f64() * 1000.0
}

/// Request/response transactions per second over one connection for 3 s,
/// `size` bytes each way (netperf TCP_RR's measure), and how many.
fn transactions(to: SocketAddr, size: usize) -> (f64, u64) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let (req, mut resp) = (vec![1u8; size], vec![0u8; size]);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        s.write_all(&req).expect("request");
        s.read_exact(&mut resp).expect("response");
        n += 1;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

/// Echoes every connection until a connection sends "stop".
fn echo_server(l: TcpListener) {
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        let _ = c.set_nodelay(true);
        let mut buf = [0u8; 4096];
        let mut first = true;
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) if first && &buf[..n] == b"stop" => return,
                Ok(n) => {
                    first = false;
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
}

fn stop_echo(topo: &Topology, to: SocketAddr) {
    topo.run_in(Ns::Client, || {
        if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            let _ = s.write_all(b"stop");
        }
    });
}

/// iperf3 for 3 s through `to` (a server on the target's PORT): Gbit/s.
fn iperf3(topo: &Topology, to: SocketAddr) -> f64 {
    iperf3_run(topo, to, 3, false)
}

/// iperf3 for `secs` through `to`, client to target, or target to client
/// when `reverse`: Gbit/s received.
fn iperf3_run(topo: &Topology, to: SocketAddr, secs: u32, reverse: bool) -> f64 {
    let port = PORT.to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", topo.ns(Ns::Target), "iperf3", "-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting iperf3 (cargo xtask bench installs it)");
    std::thread::sleep(Duration::from_millis(300));
    let (secs, addr) = (secs.to_string(), to.ip().to_string());
    let mut args = vec!["iperf3", "-c", &addr, "-p", &port, "-t", &secs, "-J", "--connect-timeout", "5000"];
    if reverse {
        args.push("-R");
    }
    let out = topo.cmd(Ns::Client, &args);
    let _ = server.kill();
    let _ = server.wait();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9
}

/// Bulk throughput over an edge link with 40 ms of round trip, through
/// ackgate next to the direct route, both directions. The link, not the
/// CPU, is the bottleneck (50 Mbit/s each way, so that the VM's emulated
/// CPU keeps up): the bandwidth-delay product is 250 KB, so anything that
/// kept a side's window from scaling would show (unscaled, 64 KiB per
/// 40 ms is 13 Mbit/s). netem delays the client's side (a redirect into
/// the client's veth would bypass a qdisc on the gateway's side) and
/// limits the rate of both ends. Needs sch_netem: `cargo xtask bench
/// delayed` runs it in the VM, whose kernel has it.
pub fn delayed_bench() {
    if !Command::new("modprobe").arg("sch_netem").status().is_ok_and(|s| s.success()) {
        println!(
            "splice_delayed_bulk: n/a (this kernel has no sch_netem; `cargo xtask bench delayed` runs it in the VM)"
        );
        return;
    }
    let mut figures = Vec::new();
    for path in [Path::Direct, Path::Ackgate] {
        let (mut d, to) = deploy(path);
        d.stop_target();
        let topo = d.topo();
        for (ns, dev, delay) in [(Ns::Client, &topo.client_if, "40ms"), (Ns::Target, &topo.target_if, "0ms")] {
            let args = [
                "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", delay, "rate", "50mbit", "limit", "100000",
            ];
            topo.cmd_ok(ns, &args);
        }
        let up = iperf3_run(topo, to, 10, false) * 1000.0;
        let down = iperf3_run(topo, to, 10, true) * 1000.0;
        println!("{}_delayed_40ms_50mbit_mbit_s: up {up:.1}, down {down:.1}", path.name());
        figures.push((up, down));
    }
    let ((du, dd), (au, ad)) = (figures[0], figures[1]);
    println!("splice_delayed_bulk_vs_direct: up {:.2}x, down {:.2}x (goal >= 0.9x)", au / du, ad / dd);
}
