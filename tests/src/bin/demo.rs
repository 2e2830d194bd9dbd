//! `cargo xtask demo`: the gate at work on a fresh client / gateway / target
//! topology, told in plain words.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ackgate_common::abi::{RESPONSE_DROP, RESPONSE_RESET};
use ackgate_gateway::events::Events;
use ackgate_tests::fixture::{TestGate, service};
use ackgate_tests::stamper::stamped_handshake;
use ackgate_tests::topology::{Ns, Topology};

fn try_plain_client(topo: &Topology, port: u16) -> String {
    let to = SocketAddr::new(topo.edge_addr.into(), port);
    topo.run_in(Ns::Client, || {
        let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => return format!("connect failed: {e}"),
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => "connection closed, no answer".into(),
            Ok(n) => format!("got {n} bytes back (unexpected!)"),
            Err(e) => format!("no service: {e}"),
        }
    })
}

fn main() {
    println!("Building a topology: client -- gateway (XDP gate on its edge) -- target ...");
    let topo = Topology::new("demo");
    let vip = topo.edge_addr;
    let mut gate = TestGate::new(
        "demo",
        &[service(vip.octets(), 443, RESPONSE_DROP, false), service(vip.octets(), 8443, RESPONSE_RESET, false)],
    );
    topo.attach_gate(&mut gate.gate);
    let listeners: Vec<TcpListener> = [443, 8443]
        .iter()
        .map(|p| topo.run_in(Ns::Gateway, || TcpListener::bind(("0.0.0.0", *p)).expect("binding a listener")))
        .collect();
    println!("  client {}  ->  VIP {vip}  (protected: 443 drop, 8443 reset)", topo.client_addr);
    println!("  listeners on VIP:443 and VIP:8443 stand for the protected services\n");

    println!("1. An ordinary client (no agent, no stamp) connects to VIP:443 (policy: drop):");
    println!("   -> {}", try_plain_client(&topo, 443));
    println!("2. The same client connects to VIP:8443 (policy: reset):");
    println!("   -> {}", try_plain_client(&topo, 8443));

    println!("3. A stamped client (capability option with a valid MAC) handshakes with VIP:443:");
    let (client, mut events) = (topo.client_addr, Events::take(gate.gate.ebpf_mut()).expect("event ring"));
    let hs = topo.run_in(Ns::Client, || stamped_handshake(client, 45000, vip, 443, Duration::from_secs(2)));
    std::thread::sleep(Duration::from_millis(200));
    match hs {
        Some(h) => println!("   -> cookie SYN/ACK received (server ISN {:#010x}); stamped ACK sent", h.server_isn),
        None => println!("   -> no SYN/ACK came back (unexpected!)"),
    }
    for ev in events.drain() {
        let (a, p) = ev.flow.client_v4();
        println!(
            "   -> the control plane got an event: flow {}.{}.{}.{}:{p} from agent {} is PENDING (passed the gate)",
            a[0], a[1], a[2], a[3], ev.agent_id
        );
    }

    println!("\nGate counters (per reason):");
    for (label, n) in gate.counters().labelled().filter(|(_, n)| *n != 0) {
        println!("  {label:22} {n}");
    }
    let reached = listeners.iter().filter(|l| {
        l.set_nonblocking(true).expect("nonblocking listener");
        l.accept().is_ok()
    });
    match reached.count() {
        0 => println!("\nNo connection reached the services' listeners. Tearing the topology down."),
        n => println!("\n{n} listener(s) accepted a connection: the gate let something through!"),
    }
}
