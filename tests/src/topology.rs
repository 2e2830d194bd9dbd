//! A fresh client / gateway / target network-namespace topology per test,
//! removed on drop (also when the test panics):
//!
//! ```text
//! client [c] ──veth── [e] gateway [i] ──veth── [t] target
//!   10.200.2n.2        .1        10.200.2n+1.1       .2
//! ```
//! Checksum offload is off on every veth (else programs see partial
//! checksums). The gateway forwards between its two sides.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ackgate_gateway::gate::{Gate, XdpMode};

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    Client,
    Gateway,
    Target,
}

pub struct Topology {
    names: [String; 3],
    /// Client's interface (peer of the gateway edge).
    pub client_if: String,
    /// Gateway interface facing clients.
    pub edge_if: String,
    /// Gateway interface facing the private network.
    pub internal_if: String,
    pub target_if: String,
    pub client_addr: Ipv4Addr,
    pub edge_addr: Ipv4Addr,
    pub internal_addr: Ipv4Addr,
    pub target_addr: Ipv4Addr,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl Topology {
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        // /24s unique per process and topology: 10.200.(2k).0 and (2k+1).0.
        let k = ((std::process::id() as u32 * 7 + n) % 100) as u8;
        let edge_net = [10, 200, 2 * k, 0];
        let int_net = [10, 200, 2 * k + 1, 0];
        let addr = |net: [u8; 4], host: u8| Ipv4Addr::new(net[0], net[1], net[2], host);
        let topo = Self {
            names: [format!("ag{id}c{tag:.3}"), format!("ag{id}g{tag:.3}"), format!("ag{id}t{tag:.3}")],
            client_if: format!("agc{id}"),
            edge_if: format!("age{id}"),
            internal_if: format!("agi{id}"),
            target_if: format!("agt{id}"),
            client_addr: addr(edge_net, 2),
            edge_addr: addr(edge_net, 1),
            internal_addr: addr(int_net, 1),
            target_addr: addr(int_net, 2),
        };
        topo.build(int_net);
        topo
    }

    pub fn ns(&self, ns: Ns) -> &str {
        &self.names[ns as usize]
    }

    fn build(&self, int_net: [u8; 4]) {
        let [c, g, t] = [self.ns(Ns::Client), self.ns(Ns::Gateway), self.ns(Ns::Target)];
        for ns in [c, g, t] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for (a, ans, b, bns) in [(&self.client_if, c, &self.edge_if, g), (&self.internal_if, g, &self.target_if, t)] {
            run(&["ip", "link", "add", a, "netns", ans, "type", "veth", "peer", "name", b, "netns", bns]);
            for (ifc, ns) in [(a, ans), (b, bns)] {
                run(&["ip", "netns", "exec", ns, "ethtool", "-K", ifc, "tx", "off"]);
                run(&["ip", "-n", ns, "link", "set", ifc, "up"]);
            }
        }
        let cidr = |a: Ipv4Addr| format!("{a}/24");
        let net = |n: [u8; 4]| format!("{}.{}.{}.0/24", n[0], n[1], n[2]);
        run(&["ip", "-n", c, "addr", "add", &cidr(self.client_addr), "dev", &self.client_if]);
        run(&["ip", "-n", g, "addr", "add", &cidr(self.edge_addr), "dev", &self.edge_if]);
        run(&["ip", "-n", g, "addr", "add", &cidr(self.internal_addr), "dev", &self.internal_if]);
        run(&["ip", "-n", t, "addr", "add", &cidr(self.target_addr), "dev", &self.target_if]);
        run(&["ip", "-n", c, "route", "add", &net(int_net), "via", &self.edge_addr.to_string()]);
        run(&["ip", "-n", t, "route", "add", "default", "via", &self.internal_addr.to_string()]);
        run(&["ip", "netns", "exec", g, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    }

    /// Runs `f` on a thread inside namespace `ns`: sockets it creates live
    /// there. Panics propagate.
    pub fn run_in<R: Send>(&self, ns: Ns, f: impl FnOnce() -> R + Send) -> R {
        run_in_netns(self.ns(ns), f)
    }

    /// `ip netns exec NS ARGS...`, output returned whatever the status.
    pub fn cmd(&self, ns: Ns, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.ns(ns)])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {args:?} in {}: {e}", self.ns(ns)))
    }

    /// As [`Topology::cmd`], for a command that must succeed: a failure
    /// (or a missing tool) panics with its stderr rather than leaving the
    /// caller to read an empty output as a pass.
    pub fn cmd_ok(&self, ns: Ns, args: &[&str]) -> std::process::Output {
        let out = self.cmd(ns, args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed ({}): {}",
            self.ns(ns),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Gives the client and the gateway's edge IPv6 addresses beside their
    /// IPv4 ones (their twins by `packet::v6_of`, on one /64), without
    /// duplicate address detection so that they work at once; returns
    /// (client, edge).
    pub fn add_ipv6(&self) -> (std::net::Ipv6Addr, std::net::Ipv6Addr) {
        let client = std::net::Ipv6Addr::from(crate::packet::v6_of(self.client_addr.octets()));
        let edge = std::net::Ipv6Addr::from(crate::packet::v6_of(self.edge_addr.octets()));
        for (ns, addr, dev) in [(Ns::Client, client, &self.client_if), (Ns::Gateway, edge, &self.edge_if)] {
            self.cmd_ok(ns, &["ip", "addr", "add", &format!("{addr}/64"), "dev", dev, "nodad"]);
        }
        (client, edge)
    }

    /// Gives every end IPv6 addresses beside its IPv4 ones, for IPv6
    /// services end to end: client and edge as [`Topology::add_ipv6`],
    /// internal and target on a second /64 (2001:db8:1::/64, the IPv4
    /// addresses in its last bytes), the target's default route through
    /// the gateway, and IPv6 forwarding on the gateway.
    pub fn add_ipv6_everywhere(&self) -> Ipv6Ends {
        let (client, edge) = self.add_ipv6();
        let inside = |a: Ipv4Addr| {
            let mut v6 = crate::packet::v6_of(a.octets());
            v6[4..6].copy_from_slice(&[0, 1]);
            std::net::Ipv6Addr::from(v6)
        };
        let (internal, target) = (inside(self.internal_addr), inside(self.target_addr));
        for (ns, addr, dev) in [(Ns::Gateway, internal, &self.internal_if), (Ns::Target, target, &self.target_if)] {
            self.cmd_ok(ns, &["ip", "addr", "add", &format!("{addr}/64"), "dev", dev, "nodad"]);
        }
        self.cmd_ok(Ns::Target, &["ip", "-6", "route", "add", "default", "via", &internal.to_string()]);
        self.cmd_ok(Ns::Gateway, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        Ipv6Ends { client, edge, internal, target }
    }

    /// The kernel's SNMP counters `names` in namespace `ns` (`nstat -az`);
    /// each must be there.
    pub fn nstat(&self, ns: Ns, names: &[&str]) -> std::collections::HashMap<String, u64> {
        let mut args = vec!["nstat", "-az"];
        args.extend(names);
        let out = self.cmd_ok(ns, &args);
        let text = String::from_utf8_lossy(&out.stdout);
        let counters: std::collections::HashMap<String, u64> = text
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                Some((fields.next()?.to_owned(), fields.next()?.parse().ok()?))
            })
            .collect();
        for name in names {
            assert!(counters.contains_key(*name), "nstat in {} has no counter {name}:\n{text}", self.ns(ns));
        }
        counters
    }

    /// Attaches the gate (native XDP) to the gateway's edge, and the
    /// do-nothing program to the client's end: native XDP_TX into a veth
    /// only delivers when the peer runs XDP.
    pub fn attach_gate(&self, gate: &mut Gate) {
        self.run_in(Ns::Gateway, || gate.attach(&self.edge_if, XdpMode::Native))
            .unwrap_or_else(|e| panic!("attaching the gate to {}: {e}", self.edge_if));
        self.run_in(Ns::Client, || gate.attach_pass(&self.client_if, XdpMode::Native))
            .unwrap_or_else(|e| panic!("attaching the pass program to {}: {e}", self.client_if));
    }
}

/// The IPv6 addresses [`Topology::add_ipv6_everywhere`] gives.
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Ends {
    pub client: std::net::Ipv6Addr,
    pub edge: std::net::Ipv6Addr,
    pub internal: std::net::Ipv6Addr,
    pub target: std::net::Ipv6Addr,
}

/// Another machine on the client's segment: its own namespace, on a
/// macvlan of the client's interface, at the client's address + 1. It runs
/// no agent. Removed on drop.
pub struct Neighbour {
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl Topology {
    /// Adds a [`Neighbour`] on the client's segment.
    pub fn neighbour(&self) -> Neighbour {
        let c = self.ns(Ns::Client);
        let ns = format!("{}n", &c[..c.len().min(14)]);
        let ifc = format!("{}n", self.client_if);
        let [a, b, net, host] = self.client_addr.octets();
        let addr = Ipv4Addr::new(a, b, net, host + 1);
        run(&["ip", "netns", "add", &ns]);
        let neighbour = Neighbour { ns, addr };
        run(&["ip", "-n", c, "link", "add", &ifc, "link", &self.client_if, "type", "macvlan", "mode", "bridge"]);
        run(&["ip", "-n", c, "link", "set", &ifc, "netns", &neighbour.ns]);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", &ifc, "up"],
            vec!["addr", "add", &format!("{addr}/24"), "dev", &ifc],
        ] {
            let mut full = vec!["ip", "-n", &neighbour.ns];
            full.extend(args);
            run(&full);
        }
        neighbour
    }
}

impl Neighbour {
    /// Runs `f` on a thread inside the neighbour's namespace.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        run_in_netns(&self.ns, f)
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Runs `f` on a thread inside the network namespace named `ns`.
pub fn run_in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veths.
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
