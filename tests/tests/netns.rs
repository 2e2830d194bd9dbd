//! Namespace integration tests with real TCP stacks: client, gateway (edge
//! and internal veth, the gate in native XDP on the edge) and target,
//! built fresh per test.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ackgate_common::abi::{RESPONSE_DROP, RESPONSE_RESET};
use ackgate_common::net::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, TCP_URG};
use ackgate_common::option::OptionId;
use ackgate_common::reason;
use ackgate_common::reply::{TCP_CWR, TCP_ECE};
use ackgate_gateway::events::Events;
use ackgate_gateway::gate::GateSettings;
use ackgate_gateway::synack::HostTcp;
use ackgate_tests::fixture::{AGENT_ID, TestGate, service};
use ackgate_tests::packet::TcpFrame;
use ackgate_tests::probe::{answers_to, mac_of};
use ackgate_tests::stamper::{stamped_handshake, synack_for};
use ackgate_tests::topology::{Ns, Topology};

const PORT: u16 = 8443;

fn setup(tag: &str, response: u8) -> (Topology, TestGate) {
    let topo = Topology::new(tag);
    let mut gate = TestGate::new(tag, &[service(topo.edge_addr.octets(), PORT, response, false)]);
    topo.attach_gate(&mut gate.gate);
    (topo, gate)
}

/// A listener on the gateway's VIP:PORT that counts accepted connections.
fn listener(topo: &Topology) -> TcpListener {
    let l = topo.run_in(Ns::Gateway, || TcpListener::bind(("0.0.0.0", PORT)).expect("binding the gateway listener"));
    l.set_nonblocking(true).expect("nonblocking listener");
    l
}

fn accepted(l: &TcpListener) -> bool {
    l.accept().is_ok()
}

/// Connects from the client namespace, sends a request and returns what
/// reading the answer gave.
fn client_exchange(topo: &Topology, to: SocketAddr) -> std::io::Result<usize> {
    topo.run_in(Ns::Client, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut buf = [0u8; 64];
        s.read(&mut buf)
    })
}

#[test]
fn drop_mode_never_reaches_the_listener() {
    let (topo, mut gate) = setup("drop", RESPONSE_DROP);
    let l = listener(&topo);
    let r = client_exchange(&topo, SocketAddr::new(topo.edge_addr.into(), PORT));
    // The client kernel completes its side of the handshake on the cookie
    // SYN/ACK, so connect() returns; what matters is that nothing answers
    // at all: no data, no FIN, no reset. The read can only time out.
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "drop mode must stay silent (the read must time out), the client saw {r:?}"
    );
    assert!(!accepted(&l), "the listener behind the gate accepted an unstamped connection");
    let c = gate.counters();
    assert!(c.get(reason::SYN_COOKIE) >= 1, "the SYN must have been answered with a cookie: {c:?}");
    assert!(c.get(reason::ACK_NO_OPTION) >= 1, "the unstamped ACK must have been refused: {c:?}");
}

#[test]
fn reset_mode_resets_the_client() {
    let (topo, mut gate) = setup("reset", RESPONSE_RESET);
    let l = listener(&topo);
    let r = client_exchange(&topo, SocketAddr::new(topo.edge_addr.into(), PORT));
    let err = r.expect_err("reset mode must not give the client a working connection");
    assert!(
        matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
        "the client should see a reset, saw {err:?}"
    );
    assert!(!accepted(&l), "the listener behind the gate accepted an unstamped connection");
    assert!(gate.counters().get(reason::ACK_NO_OPTION) >= 1, "the unstamped ACK must be counted");
}

#[test]
fn stamped_handshake_becomes_pending_and_userspace_reads_its_event() {
    let (topo, mut gate) = setup("stamp", RESPONSE_DROP);
    let (client, vip) = (topo.client_addr, topo.edge_addr);
    let hs = topo
        .run_in(Ns::Client, || stamped_handshake(client, 40123, vip, PORT, Duration::from_secs(2)))
        .expect("no cookie SYN/ACK came back to the stamper");
    let mut events = Events::take(gate.gate.ebpf_mut()).expect("event ring buffer");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        got = events.drain();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got.len(), 1, "expected one pending event, got {got:?}; counters {:?}", gate.counters());
    let ev = got[0];
    assert_eq!(ev.agent_id, AGENT_ID, "event agent id");
    assert_eq!(ev.flow.client_v4(), (client.octets(), 40123), "event client");
    assert_eq!(ev.flow.service_v4(), (vip.octets(), PORT), "event service");
    assert_eq!((ev.client_isn, ev.server_isn), (hs.client_isn, hs.server_isn), "event ISNs");
    let pending = gate.gate.pending_flows().expect("pending map");
    assert!(pending.iter().any(|(k, _)| *k == ev.flow), "the flow must be in the pending map: {pending:?}");
}

fn echo_once(l: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (s, _) = l.accept().expect("accepting the echo connection");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("reading a line");
        (&s).write_all(line.as_bytes()).expect("echoing");
    })
}

fn echo_roundtrip(topo: &Topology, to: SocketAddr) -> String {
    topo.run_in(Ns::Client, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        s.write_all(b"ping\n").expect("writing");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap_or_else(|e| panic!("reading the echo from {to}: {e}"));
        line
    })
}

/// The gateway's own services and ping keep working; the private network
/// behind it is unreachable from the edge (ip_forward is on in the
/// topology) until its prefix is allowed transit.
#[test]
fn edge_forwarding_is_default_deny_except_allowed_transit() {
    let (topo, mut gate) = setup("pass", RESPONSE_DROP);
    let ssh_like =
        topo.run_in(Ns::Gateway, || TcpListener::bind(("0.0.0.0", 2222)).expect("binding an unprotected port"));
    let h = echo_once(ssh_like);
    assert_eq!(echo_roundtrip(&topo, SocketAddr::new(topo.edge_addr.into(), 2222)), "ping\n", "gateway port 2222");
    h.join().expect("gateway echo thread");
    let ping = topo.cmd(Ns::Client, &["ping", "-c1", "-W2", &topo.edge_addr.to_string()]);
    assert!(ping.status.success(), "ping to the gateway failed: {}", String::from_utf8_lossy(&ping.stdout));

    let target = topo.run_in(Ns::Target, || TcpListener::bind(("0.0.0.0", PORT)).expect("binding on the target"));
    let to = SocketAddr::new(topo.target_addr.into(), PORT);
    let bypass = topo.run_in(Ns::Client, || TcpStream::connect_timeout(&to, Duration::from_secs(1)));
    assert!(bypass.is_err(), "the edge reached the private network around the gate");
    let c = gate.counters();
    assert!(c.get(reason::DROP_TRANSIT) >= 1, "the bypass attempt must be dropped as transit: {c:?}");
    assert_eq!(c.get(reason::PASS_TRANSIT), 0, "nothing is allowed transit yet: {c:?}");

    let private_net = std::net::Ipv4Addr::from(u32::from(topo.target_addr) & 0xffff_ff00);
    gate.gate.sync_transit(&[(private_net.into(), 24)]).expect("allowing the private /24 as transit");
    let h = echo_once(target);
    assert_eq!(echo_roundtrip(&topo, to), "ping\n", "allowed transit");
    h.join().expect("target echo thread");
    let c = gate.counters();
    assert!(c.get(reason::PASS_TRANSIT) >= 2, "allowed transit must be counted: {c:?}");
    assert!(c.get(reason::PASS_NOT_SERVICE) >= 2 && c.get(reason::PASS_NOT_TCP) >= 1, "local counters: {c:?}");
    assert_eq!(c.get(reason::SYN_COOKIE), 0, "no SYN here was for the protected port");
}

/// The gate's cookie SYN/ACK is the gateway kernel's own: the same SYN sent
/// to an ordinary listening port and to the protected port gets replies
/// that agree on everything but the ISN, the TSval and the checksums
/// (options, their order and values, window, window scale, MSS, ECN, TTL,
/// DF, IP id). The gate's profile is computed in the gateway namespace the
/// way `ackgate run` computes it; the kernel's reply is captured here, not
/// copied from anywhere.
#[test]
fn the_cookie_synack_matches_the_kernels_own() {
    let topo = Topology::new("synack");
    let edge = topo.edge_if.clone();
    let host = topo.run_in(Ns::Gateway, || HostTcp::read(&edge)).expect("the gateway's TCP settings");
    let mut settings = GateSettings::new(OptionId::default(), ackgate_common::abi::MAX_PENDING);
    settings.synack = host.profile(0x5eed);
    let mut gate =
        TestGate::with_settings("synack", &[service(topo.edge_addr.octets(), PORT, RESPONSE_DROP, false)], &settings);
    topo.attach_gate(&mut gate.gate);
    let _ordinary =
        topo.run_in(Ns::Gateway, || TcpListener::bind(("0.0.0.0", 2222)).expect("binding an ordinary port"));
    let (client, vip) = (topo.client_addr.octets(), topo.edge_addr.octets());
    let reply = |port: u16, sport: u16, options: &[u8], flags: u8| {
        let mut syn = TcpFrame::new(client, sport, vip, port, flags);
        syn.tcp_options = options.to_vec();
        syn.seq = 0x1234_0000 + sport as u32;
        topo.run_in(Ns::Client, || synack_for(&syn, Duration::from_secs(2)))
    };
    synacks_match_the_kernels(&mut gate, 1460, reply, synack_shape);
}

/// Sends three SYNs (Linux's options; without window scale, with an MSS
/// of `mss`; an ECN SYN) to the ordinary port 2222 and to the protected
/// one, through `reply(port, client port, options, flags)`, which returns
/// the SYN/ACK; their `shape`s must be equal.
fn synacks_match_the_kernels(
    gate: &mut TestGate,
    mss: u16,
    reply: impl Fn(u16, u16, &[u8], u8) -> Option<Vec<u8>>,
    shape: fn(&[u8]) -> Vec<(String, u64)>,
) {
    let linux = TcpFrame::new([0; 4], 0, [0; 4], 0, TCP_SYN).linux_syn_options().tcp_options;
    let [hi, lo] = mss.to_be_bytes();
    let no_wscale = vec![2, 4, hi, lo, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0];
    let cases: [(&str, Vec<u8>, u8); 3] = [
        ("a Linux SYN", linux.clone(), TCP_SYN),
        ("a SYN without window scale", no_wscale, TCP_SYN),
        ("an ECN SYN", linux, TCP_SYN | TCP_ECE | TCP_CWR),
    ];
    for (i, (name, options, flags)) in cases.into_iter().enumerate() {
        let answer = |port: u16, sport: u16| {
            reply(port, sport, &options, flags).unwrap_or_else(|| panic!("{name}: no SYN/ACK from port {port}"))
        };
        let kernel = answer(2222, 41000 + i as u16);
        let gated = answer(PORT, 42000 + i as u16);
        assert_eq!(
            shape(&gated),
            shape(&kernel),
            "{name}: the gate's SYN/ACK (left) differs from the kernel's own (right)"
        );
    }
    assert_eq!(gate.counters().get(reason::SYN_COOKIE), 3, "the gate answered the protected port");
}

/// The IPv6 twin of `the_cookie_synack_matches_the_kernels_own`: over
/// IPv6 the kernel advertises MTU − 60 and rounds its window to that, and
/// sends a flow label; the SYNs go out as whole frames and the answers are
/// read off the client's link, IPv6 header included.
#[test]
fn the_ipv6_cookie_synack_matches_the_kernels_own() {
    let topo = Topology::new("synack6");
    let (_, vip6) = topo.add_ipv6();
    let (client_if, edge_if) = (topo.client_if.clone(), topo.edge_if.clone());
    let host = topo.run_in(Ns::Gateway, || HostTcp::read(&edge_if)).expect("the gateway's TCP settings");
    let mut settings = GateSettings::new(OptionId::default(), ackgate_common::abi::MAX_PENDING);
    settings.synack = host.profile(0x5eed);
    let mut gate = TestGate::with_settings("synack6", &[service(vip6, PORT, RESPONSE_DROP, false)], &settings);
    topo.attach_gate(&mut gate.gate);
    let _ordinary = topo.run_in(Ns::Gateway, || TcpListener::bind(("::", 2222)).expect("binding an ordinary port"));
    let client_mac = topo.run_in(Ns::Client, || mac_of(&client_if));
    let gateway_mac = topo.run_in(Ns::Gateway, || mac_of(&edge_if));
    let reply = |port: u16, sport: u16, options: &[u8], flags: u8| {
        let mut syn = TcpFrame::new(topo.client_addr.octets(), sport, topo.edge_addr.octets(), port, flags).v6();
        (syn.src_mac, syn.dst_mac) = (client_mac, gateway_mac);
        syn.tcp_options = options.to_vec();
        syn.seq = 0x1234_0000 + sport as u32;
        let frame = syn.build();
        topo.run_in(Ns::Client, || ipv6_synack_for(&client_if, &frame, (sport, port), Duration::from_secs(2)))
    };
    synacks_match_the_kernels(&mut gate, 1440, reply, synack_shape_v6);
}

/// Sends `frame` (an IPv6 SYN from `ports` = (client port, server port))
/// out of `iface` and returns the IPv6 packet of the SYN/ACK that answers
/// it, read from a packet socket on the same interface.
fn ipv6_synack_for(iface: &str, frame: &[u8], ports: (u16, u16), within: Duration) -> Option<Vec<u8>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let proto = (libc::ETH_P_IPV6 as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ackgate_gateway::netdev::index(iface).expect("the client's interface") as i32;
    // SAFETY: valid address of the stated size.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), size_of::<libc::sockaddr_ll>() as u32) };
    assert_eq!(rc, 0, "binding the packet socket: {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: valid option pointer and length.
    unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), 16);
    }
    ackgate_tests::probe::send_frame(iface, frame).expect("sending the SYN");
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Some(p) = usize::try_from(n).ok().and_then(|n| buf.get(..n)) else { continue };
        if p.len() < 60 || p[6] != 6 {
            continue;
        }
        let t = &p[40..];
        let (sport, dport) = (u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]));
        if (dport, sport) == ports && t[13] & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            return Some(p.to_vec());
        }
    }
    None
}

/// A gated gateway with an ordinary listening port beside the protected
/// one, and a client that sends whole Ethernet frames to either.
struct ProbeBench {
    topo: Topology,
    gate: TestGate,
    _ordinary: TcpListener,
    client_mac: [u8; 6],
    gateway_mac: [u8; 6],
}

/// A port on the gateway with a listener (also the control probe's target).
const ORDINARY: u16 = 2222;

impl ProbeBench {
    fn new(tag: &str, stealth: bool) -> Self {
        let topo = Topology::new(tag);
        let mut gate = TestGate::new(tag, &[service(topo.edge_addr.octets(), PORT, RESPONSE_RESET, stealth)]);
        topo.attach_gate(&mut gate.gate);
        let _ordinary =
            topo.run_in(Ns::Gateway, || TcpListener::bind(("0.0.0.0", ORDINARY)).expect("binding an ordinary port"));
        let (client_if, edge_if) = (topo.client_if.clone(), topo.edge_if.clone());
        let client_mac = topo.run_in(Ns::Client, || mac_of(&client_if));
        let gateway_mac = topo.run_in(Ns::Gateway, || mac_of(&edge_if));
        Self { topo, gate, _ordinary, client_mac, gateway_mac }
    }

    /// A Linux SYN from the client to the gateway's `port`, addressed on
    /// the link.
    fn syn(&self, sport: u16, port: u16) -> TcpFrame {
        let mut syn = TcpFrame::new(self.topo.client_addr.octets(), sport, self.topo.edge_addr.octets(), port, TCP_SYN)
            .linux_syn_options();
        (syn.src_mac, syn.dst_mac) = (self.client_mac, self.gateway_mac);
        syn
    }

    /// What answered `frame` (sent from `sport` to `port`).
    fn answers(&self, frame: &[u8], sport: u16, port: u16) -> Vec<Vec<u8>> {
        let control = self.syn(sport + 1, ORDINARY);
        let client_if = &self.topo.client_if;
        self.topo.run_in(Ns::Client, || answers_to(client_if, frame, (sport, port), &control, Duration::from_secs(5)))
    }
}

/// Probes a listening Linux port ignores (bad checksums, VLAN tags the
/// gateway has no device for, SYN+FIN) get the same from the protected
/// port: nothing. Each probe goes to an ordinary listening port and to the
/// protected one as a whole Ethernet frame, as a scanner sends it.
#[test]
fn odd_probes_get_from_the_protected_port_what_an_ordinary_port_gives() {
    let mut bench = ProbeBench::new("probes", false);
    let flip = |mut f: Vec<u8>, at: usize| {
        f[at] ^= 1;
        f
    };
    type Probe = (&'static str, fn(TcpFrame) -> TcpFrame, Option<usize>);
    let probes: [Probe; 7] = [
        ("TCP checksum one bit off", |f| f, Some(14 + 20 + 17)),
        ("IPv4 header checksum one bit off", |f| f, Some(14 + 11)),
        ("802.1Q tag, VID 10", |f| TcpFrame { vlans: vec![10], ..f }, None),
        ("802.1Q tag, VID 4095", |f| TcpFrame { vlans: vec![4095], ..f }, None),
        ("QinQ tags 100/200", |f| TcpFrame { vlans: vec![100, 200], ..f }, None),
        ("SYN+FIN", |f| TcpFrame { flags: f.flags | TCP_FIN, ..f }, None),
        ("SYN+FIN+PSH+URG", |f| TcpFrame { flags: f.flags | TCP_FIN | TCP_PSH | TCP_URG, ..f }, None),
    ];
    let mut sport = 43000;
    for (name, shape, corrupt_at) in probes {
        let mut answered = Vec::new();
        for port in [ORDINARY, PORT] {
            sport += 2;
            let syn = shape(bench.syn(sport, port));
            let frame = match corrupt_at {
                Some(at) => flip(syn.build(), at),
                None => syn.build(),
            };
            let answers = bench.answers(&frame, sport, port);
            answered.push(answers.iter().map(|p| p[((p[0] & 0x0f) as usize) * 4 + 13]).collect::<Vec<u8>>());
        }
        assert_eq!(
            answered[1], answered[0],
            "{name}: the protected port answered with TCP flags {:?}, an ordinary port with {:?}",
            answered[1], answered[0]
        );
    }
    let counters = bench.gate.counters();
    assert!(counters.get(reason::DROP_BAD_CHECKSUM) >= 2, "the gate must count the bad checksums it dropped");
}

/// A stealth service with the `reset` response answers an unstamped SYN as
/// a closed port of the same gateway does: the same RST+ACK, header for
/// header.
#[test]
fn stealth_with_reset_looks_like_a_closed_port() {
    let mut bench = ProbeBench::new("closed", true);
    const CLOSED: u16 = 2223;
    let mut shapes = Vec::new();
    for (port, sport) in [(CLOSED, 44000), (PORT, 44002)] {
        let mut syn = bench.syn(sport, port);
        syn.payload = b"data on the SYN".to_vec();
        // DSCP AF11 and ECT(0): a RST reflects the DSCP, not the ECN bits.
        syn.tos = 0x2a;
        let answers = bench.answers(&syn.build(), sport, port);
        let [rst] = answers.as_slice() else {
            panic!("port {port} must answer the SYN with exactly one segment, got {answers:?}");
        };
        shapes.push(reset_shape(rst, syn.seq));
    }
    assert_eq!(shapes[1], shapes[0], "the stealth port's RST (left) differs from a closed port's (right)");
    assert_eq!(bench.gate.counters().get(reason::SYN_STEALTH_RESET), 1, "the gate must count its closed-port answer");
}

/// A RST's headers as a scanner compares them: IP TOS, length, id,
/// flags/fragment, TTL; TCP data offset, flags, window, urgent pointer,
/// its sequence number and what it acknowledges relative to the SYN's.
fn reset_shape(p: &[u8], syn_seq: u32) -> Vec<(&'static str, u64)> {
    let ihl = ((p[0] & 0x0f) as usize) * 4;
    let t = &p[ihl..];
    let u16_at = |b: &[u8], i: usize| u64::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let u32_at = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    vec![
        ("ip tos", u64::from(p[1])),
        ("ip length", u16_at(p, 2)),
        ("ip id", u16_at(p, 4)),
        ("ip flags/fragment", u16_at(p, 6)),
        ("ip ttl", u64::from(p[8])),
        ("tcp data offset", u64::from(t[12] >> 4)),
        ("tcp flags", u64::from(t[13])),
        ("tcp window", u16_at(t, 14)),
        ("tcp urgent", u16_at(t, 18)),
        ("tcp seq", u64::from(u32_at(t, 4))),
        ("tcp ack - syn seq", u64::from(u32_at(t, 8).wrapping_sub(syn_seq))),
    ]
}

/// What a SYN/ACK shows a scanner, less what differs per connection by
/// design (ISN, TSval, checksums, ports): IP TOS, id, flags/fragment, TTL,
/// length; TCP data offset, flags, window, urgent pointer; each option with
/// its value (the timestamp option's TSecr only).
fn synack_shape(p: &[u8]) -> Vec<(String, u64)> {
    let ihl = ((p[0] & 0x0f) as usize) * 4;
    let u16_at = |b: &[u8], i: usize| u64::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let mut shape = vec![
        ("ip tos".to_owned(), u64::from(p[1])),
        ("ip length".to_owned(), u16_at(p, 2)),
        ("ip id".to_owned(), u16_at(p, 4)),
        ("ip flags/fragment".to_owned(), u16_at(p, 6)),
        ("ip ttl".to_owned(), u64::from(p[8])),
    ];
    shape.extend(tcp_shape(&p[ihl..]));
    shape
}

/// As [`synack_shape`], for an IPv6 packet: traffic class, payload length,
/// next header, hop limit, whether a flow label is set (its value is random
/// per SYN/ACK, Linux's and the gate's alike), then the TCP part.
fn synack_shape_v6(p: &[u8]) -> Vec<(String, u64)> {
    let word = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
    let mut shape = vec![
        ("ip6 traffic class".to_owned(), u64::from(word >> 20 & 0xff)),
        ("ip6 payload length".to_owned(), u64::from(u16::from_be_bytes([p[4], p[5]]))),
        ("ip6 next header".to_owned(), u64::from(p[6])),
        ("ip6 hop limit".to_owned(), u64::from(p[7])),
        ("ip6 flow label set".to_owned(), u64::from(word & 0xfffff != 0)),
    ];
    shape.extend(tcp_shape(&p[40..]));
    shape
}

/// The TCP part of a SYN/ACK's shape (see [`synack_shape`]).
fn tcp_shape(t: &[u8]) -> Vec<(String, u64)> {
    let u16_at = |b: &[u8], i: usize| u64::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let mut shape = vec![
        ("tcp data offset".to_owned(), u64::from(t[12] >> 4)),
        ("tcp flags".to_owned(), u64::from(t[13])),
        ("tcp window".to_owned(), u16_at(t, 14)),
        ("tcp urgent".to_owned(), u16_at(t, 18)),
    ];
    let opts = &t[20..((t[12] >> 4) as usize) * 4];
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => {
                shape.push(("option NOP".to_owned(), 0));
                i += 1;
            }
            kind => {
                let len = opts.get(i + 1).copied().unwrap_or(2).max(2) as usize;
                let body = opts.get(i + 2..i + len).unwrap_or(&[]);
                let value = match kind {
                    // TSval differs by design; TSecr echoes the SYN's.
                    8 if body.len() == 8 => u64::from(u32::from_be_bytes([body[4], body[5], body[6], body[7]])),
                    _ => body.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
                };
                shape.push((format!("option {kind} len {len}"), value));
                i += len;
            }
        }
    }
    shape
}
