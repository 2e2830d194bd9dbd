//! The agent's TC stamper with real client stacks in namespaces: curl
//! through the stamper to the XDP gate (the gate checks the MAC and records
//! the flow as pending), and a stamped connection to an unprotected
//! listener that must keep working with valid checksums.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ackgate_agent::stamper::Target;
use ackgate_common::abi::{FAMILY_IPV4, FAMILY_IPV6, RESPONSE_DROP, v4_words, v6_words};
use ackgate_common::{reason, stamp};
use ackgate_gateway::events::Events;
use ackgate_tests::fixture::{AGENT_ID, TestGate, service};
use ackgate_tests::stamp_fixture::TestStamper;
use ackgate_tests::topology::{Ns, Topology};

const PORT: u16 = 8443;

#[test]
fn curl_through_the_agent_is_validated_by_the_gate_and_pending() {
    curl_through_the_agent(false);
}

/// The same over IPv6: the kernel's own IPv6 handshake ACK, stamped by the
/// agent, passes the gate's MAC and cookie checks.
#[test]
fn curl_over_ipv6_through_the_agent_is_validated_by_the_gate_and_pending() {
    curl_through_the_agent(true);
}

fn curl_through_the_agent(v6: bool) {
    let topo = Topology::new("agent");
    let (client, vip): (IpAddr, IpAddr) = if v6 {
        let (client, vip) = topo.add_ipv6();
        (client.into(), vip.into())
    } else {
        (topo.client_addr.into(), topo.edge_addr.into())
    };
    let mut gate = TestGate::new("agent", &[service(vip, PORT, RESPONSE_DROP, false)]);
    topo.attach_gate(&mut gate.gate);
    let mut st = TestStamper::new(&[Target { addr: vip, port: PORT, stealth: false }], true);
    topo.run_in(Ns::Client, || st.stamper.attach(&topo.client_if))
        .unwrap_or_else(|e| panic!("attaching the stamper to the client's egress: {e}"));
    let mut events = Events::take(gate.gate.ebpf_mut()).expect("event ring buffer");

    // The gate holds a pending flow (no splice yet), so curl times out; what
    // matters is what the gate saw.
    let url = format!("http://{}/", SocketAddr::new(vip, PORT));
    let curl = topo.cmd(Ns::Client, &["curl", "-s", "-m", "2", "-o", "/dev/null", &url]);
    assert!(!curl.status.success(), "curl must not get an answer while the flow is pending");

    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        got = events.drain();
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = gate.counters();
    assert_eq!(got.len(), 1, "expected one pending event for curl's handshake, got {got:?}; gate counters {c:?}");
    assert_eq!(got[0].agent_id, AGENT_ID, "event agent id");
    let words = |a: IpAddr| match a {
        IpAddr::V4(a) => (FAMILY_IPV4, v4_words(a.octets())),
        IpAddr::V6(a) => (FAMILY_IPV6, v6_words(a.octets())),
    };
    let flow = got[0].flow;
    assert_eq!((flow.family, flow.saddr), words(client), "event client address");
    assert_eq!((flow.family, flow.daddr, flow.dport), (words(vip).0, words(vip).1, PORT.to_be()), "event service");
    assert_eq!(c.get(reason::ACK_PENDING), 1, "the gate must accept exactly curl's stamped ACK: {c:?}");
    assert_eq!(c.get(reason::ACK_BAD_MAC) + c.get(reason::ACK_NO_OPTION), 0, "no refused ACK expected: {c:?}");
    let s = st.counters();
    assert_eq!(s.get(stamp::reason::STAMPED_ACK), 1, "the stamper must have stamped one ACK: {s:?}");
    assert_eq!(s.get(stamp::reason::SYN_RECORDED), 1, "curl's SYN must have been recorded once: {s:?}");
}

#[test]
fn stamped_connection_to_an_unprotected_listener_carries_data_with_valid_checksums() {
    let topo = Topology::new("agentck");
    let gw = topo.edge_addr;
    let mut st = TestStamper::new(&[Target { addr: gw.into(), port: 0, stealth: false }], true);
    topo.run_in(Ns::Client, || st.stamper.attach(&topo.client_if))
        .unwrap_or_else(|e| panic!("attaching the stamper to the client's egress: {e}"));
    let listener = topo.run_in(Ns::Gateway, || TcpListener::bind(("0.0.0.0", 9000)).expect("binding the listener"));
    let echo = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accepting");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("reading");
        (&s).write_all(line.as_bytes()).expect("echoing");
    });
    let to = SocketAddr::new(gw.into(), 9000);
    let line = topo.run_in(Ns::Client, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connecting");
        s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        s.write_all(b"ping\n").expect("writing");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("reading the echo");
        line
    });
    echo.join().expect("echo thread");
    assert_eq!(line, "ping\n", "the stamped connection must carry data both ways");
    let s = st.counters();
    assert_eq!(s.get(stamp::reason::STAMPED_ACK), 1, "the handshake ACK must have been stamped: {s:?}");
    // The gateway's stack checks every checksum it receives (checksum
    // offload is off on these veths, so nothing is trusted blindly).
    let errors = topo.nstat(Ns::Gateway, &["TcpInCsumErrors", "IpInHdrErrors"]);
    assert!(errors.values().all(|n| *n == 0), "checksum or header errors at the receiver: {errors:?}");
}
