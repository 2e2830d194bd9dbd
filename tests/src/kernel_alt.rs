//! The kernel's own SYN-flood defences, set up in a namespace for the
//! benchmarks to compare against: plain SYN cookies on a listener, and
//! nftables SYNPROXY. Plus the counters and CPU figures the comparison reads.

use std::process::Command;

/// Runs `args` inside network namespace `ns`; panics with the command and its
/// stderr if it fails.
pub fn ns_exec(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {args:?} in {ns}: {e}"));
    assert!(out.status.success(), "{args:?} in {ns} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kernel SYN cookies for every SYN (`tcp_syncookies = 2`), so that the
/// comparison measures the cookie path itself, as the gate always does.
pub fn kernel_syncookies(ns: &str) {
    ns_exec(ns, &["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"]);
}

/// nftables SYNPROXY in front of `port` (the recipe of nft(8)): SYNs skip
/// conntrack, the proxy answers them with cookies and only a completed
/// handshake reaches the listener.
pub fn nft_synproxy(ns: &str, port: u16) {
    ns_exec(ns, &["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
    let rules = format!(
        "table ip ackgate_bench {{
  chain pre {{
    type filter hook prerouting priority raw; policy accept;
    tcp dport {port} tcp flags syn / fin,syn,rst,ack counter notrack
  }}
  chain inp {{
    type filter hook input priority filter; policy accept;
    tcp dport {port} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm
    ct state invalid drop
  }}
}}
"
    );
    let path = std::env::temp_dir().join(format!("ackgate-synproxy-{ns}.nft"));
    std::fs::write(&path, rules).expect("writing the nft ruleset");
    ns_exec(ns, &["nft", "-f", path.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(path);
}

/// SYNs the SYNPROXY rules have seen (the `counter` on the notrack rule).
pub fn nft_syn_count(ns: &str) -> u64 {
    let text = ns_exec(ns, &["nft", "list", "chain", "ip", "ackgate_bench", "pre"]);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in:\n{text}"))
}

/// A `TcpExt` counter of namespace `ns` (from /proc/net/netstat).
pub fn tcpext(ns: &str, name: &str) -> u64 {
    let text = ns_exec(ns, &["cat", "/proc/net/netstat"]);
    let mut lines = text.lines();
    while let (Some(head), Some(vals)) = (lines.next(), lines.next()) {
        if !head.starts_with("TcpExt:") {
            continue;
        }
        let idx = head.split_whitespace().position(|h| h == name);
        if let Some(i) = idx {
            return vals.split_whitespace().nth(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    panic!("no TcpExt counter {name} in {ns}");
}

/// Softirq time of all CPUs so far, in nanoseconds (/proc/stat). Packet
/// processing of every defence here runs in the NET_RX softirq.
pub fn softirq_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let cpu = stat.lines().next().expect("cpu line");
    // cpu user nice system idle iowait irq softirq ...
    let ticks: u64 = cpu.split_whitespace().nth(7).and_then(|v| v.parse().ok()).expect("softirq field");
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000_000 / hz
}
