//! The nftables table that completes refused handshakes into the decoy
//! (docs/control-plane.md, "The `page` default responder").
//!
//! The gate answered the SYN with a cookie, so the gateway's own listener
//! never issued one and would refuse the cookie ACK (`cookie_v4_check`
//! wants a recent SYN-queue overflow of that very listener,
//! net/ipv4/syncookies.c). netfilter's SYNPROXY checks the cookie instead
//! (the same kernel cookie the XDP helper makes) and opens the connection
//! to the listener on the client's behalf: the recipe of the kernel's XDP
//! synproxy selftest. It needs `nf_conntrack_tcp_loose = 0` in the
//! gateway's network namespace so that the lone ACK is invalid to
//! conntrack rather than picked up.
//!
//! Three more things keep what a refused client sees ordinary and bound
//! what it can leave behind:
//!
//! - **One backend handshake per flow.** SYNPROXY opens the connection to
//!   the listener with a SYN of its own and completes it when the
//!   listener's SYN/ACK comes back (net/netfilter/nf_synproxy_core.c,
//!   `synproxy_recv_client_ack`, `ipv4_synproxy_hook`). That SYN goes
//!   through the loopback backlog, so another segment of the flow that
//!   arrives in the same receive batch (the data a client sends right
//!   after its ACK, a duplicate) finds the new conntrack entry still in
//!   SYN_SENT, where an ACK is invalid (`tcp_conntracks`,
//!   net/netfilter/nf_conntrack_proto_tcp.c), and SYNPROXY would take it
//!   for another cookie ACK and send the listener a second SYN. The
//!   listener then answers with a Linux SYN/ACK of its own that reaches
//!   the client and is retransmitted, and its half-open socket and an
//!   ESTABLISHED conntrack entry stay behind. So the table remembers, for
//!   a second, each flow SYNPROXY has just opened (its SYN is seen in the
//!   output hook), and drops the flow's invalid segments meanwhile,
//!   counting them (`early_segments`); the client retransmits them once
//!   the flow is established, as for any lost segment.
//! - **A backend handshake that completes.** SYNPROXY's ACK to the
//!   listener echoes the listener's timestamp, and then its own output
//!   hook shifts that echo by the flow's timestamp offset
//!   (`synproxy_tstamp_adjust`, meant for the client's segments), so the
//!   echo is wrong. Kernels since 6.15 check the echo of an ACK in
//!   SYN_RECV ("tcp: be less liberal in TSEcr received while in SYN_RECV
//!   state", `tcp_check_req` in net/ipv4/tcp_minisocks.c, counted as
//!   TcpExtTSEcrRejected) and refuse that ACK: the listener then sits
//!   half-open until the client sends something, retransmitting its own
//!   SYN/ACK to the client meanwhile. The table removes the timestamp
//!   option from SYNPROXY's ACK (`reset tcp option timestamp`: the option
//!   becomes NOPs), which the listener accepts as it accepts any ACK
//!   without one; the connection keeps the timestamps the SYN agreed.
//!   SYNPROXY's own packets are told apart by their source, the client's
//!   address, which is not local.
//! - **Nothing a real server would not send.** A SYN/ACK of the listener
//!   that comes after SYNPROXY took the first one (the flow's sequence
//!   adjustment is set up) would show the client a second, Linux SYN/ACK.
//!   And SYNPROXY answers the listener's SYN/ACK with an ACK to the client
//!   (`synproxy_send_client_ack`) that opens the zero window of its own
//!   SYN/ACKs; the gate's SYN/ACK has a real window, and a server answers
//!   a handshake's ACK with nothing, so that ACK only gives the decoy away.
//!   Both are dropped and counted (`stray_segments`). SYNPROXY's packets
//!   have no socket (`synproxy_send_tcp` sends a bare skb), which tells
//!   its ACK from the responder's own.
//! - **Conntrack entries as short-lived as the decoy's sockets.** An
//!   established entry otherwise lives for `nf_conntrack_tcp_timeout_established`
//!   (five days) after the last segment. The responder's flows get a `ct
//!   timeout` policy, set on SYNPROXY's SYN while the entry is new, whose
//!   established timeout is the longest the responder itself waits
//!   between two segments, plus a margin.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{PageError, PageService};

/// The nftables table the gateway owns.
pub const NFT_TABLE: &str = "ackgate_page";

/// The named counter of segments dropped while their flow's backend
/// handshake was under way.
pub const EARLY_SEGMENTS: &str = "early_segments";

/// The named counter of the segments that would have shown the client
/// what a real server never sends: the responder's late SYN/ACKs and
/// SYNPROXY's window updates.
pub const STRAY_SEGMENTS: &str = "stray_segments";

/// `IPS_SEQ_ADJUST` (include/uapi/linux/netfilter/nf_conntrack_common.h):
/// SYNPROXY has taken the listener's SYN/ACK and set up the sequence
/// adjustment. nft has no name for this status bit.
const IPS_SEQ_ADJUST: u32 = 0x40;

/// How long a flow SYNPROXY opened counts as having its backend handshake
/// under way. The handshake runs through the loopback backlog and is over
/// within the same softirq run; a second is the kernel's own initial
/// retransmission timeout (`TCP_TIMEOUT_INIT`, include/net/tcp.h), so a
/// listener that dropped the SYN (a full accept queue) gets SYNPROXY's
/// next try when the client retransmits.
const HANDSHAKE_WINDOW: &str = "1s";

/// Added to the responder's longest wait for the conntrack established
/// timeout, so that the responder's own timers, not conntrack, end a
/// quiet flow.
const ESTABLISHED_MARGIN: Duration = Duration::from_secs(30);

fn nft(script: &str) -> Result<(), PageError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PageError::Nft(format!("cannot run nft (is nftables installed?): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| PageError::Nft(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| PageError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(PageError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

const TCP_LOOSE: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose";
/// How the table's comment records the administrator's own
/// `nf_conntrack_tcp_loose`, so that a clean stop restores it even after a
/// crash and a restart in between (the restarted daemon finds the table).
const TCP_LOOSE_WAS: &str = "nf_conntrack_tcp_loose was ";

/// The conntrack established timeout of the responder's flows, in whole
/// seconds (what a `ct timeout` policy takes): `longest_wait` (the longest
/// the responder waits between two segments of a live connection) plus a
/// margin.
pub fn established_timeout(longest_wait: Duration) -> u64 {
    (longest_wait + ESTABLISHED_MARGIN).as_secs_f64().ceil() as u64
}

/// The table for `services`, recording `tcp_loose_was` in its comment.
fn table(services: &[PageService], established_secs: u64, tcp_loose_was: &str) -> String {
    let flow = "ip saddr . tcp sport . ip daddr . tcp dport";
    let mut script = format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n  comment \"{TCP_LOOSE_WAS}{tcp_loose_was}\"\n"
    );
    script.push_str(&format!(
        "  ct timeout responder {{\n    protocol tcp\n    l3proto ip\n    policy = {{ established: {established_secs} }}\n  }}\n"
    ));
    script.push_str(&format!("  counter {EARLY_SEGMENTS} {{ }}\n  counter {STRAY_SEGMENTS} {{ }}\n"));
    script.push_str(
        "  set opening {\n    type ipv4_addr . inet_service . ipv4_addr . inet_service\n    flags timeout\n  }\n",
    );
    // A rule for the segments to each service, and one for those from it.
    let to = |script: &mut String, rule: &str| {
        for s in services {
            script.push_str(&format!("    ip daddr {} tcp dport {} {rule}\n", s.vip, s.port));
        }
    };
    let from = |script: &mut String, rule: &str| {
        for s in services {
            script.push_str(&format!("    ip saddr {} tcp sport {} {rule}\n", s.vip, s.port));
        }
    };
    // SYNs are the gate's to answer: conntrack must not see them.
    script.push_str("  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n");
    to(&mut script, "tcp flags syn / fin,syn,rst,ack notrack");
    script.push_str("  }\n  chain inp {\n    type filter hook input priority filter; policy accept;\n");
    to(&mut script, &format!("ct state invalid,untracked {flow} @opening counter name {EARLY_SEGMENTS} drop"));
    to(&mut script, "ct state invalid,untracked synproxy mss 1460");
    // SYNPROXY's packets to the listener carry the client's address, which
    // is not local: that tells them from a local client's. Its SYN's
    // conntrack entry is new here (conntrack runs at priority -200 in this
    // hook, confirmation last); its ACK loses the timestamp option.
    script.push_str("  }\n  chain out {\n    type filter hook output priority filter; policy accept;\n");
    to(
        &mut script,
        &format!(
            "fib saddr type != local tcp flags syn / fin,syn,rst,ack ct timeout set \"responder\" add @opening {{ {flow} timeout {HANDSHAKE_WINDOW} }}"
        ),
    );
    to(&mut script, "fib saddr type != local tcp flags ack / fin,syn,rst,ack reset tcp option timestamp");
    // The responder's side: its late SYN/ACKs; then, of what has no
    // socket (SYNPROXY's), the ACKs.
    from(
        &mut script,
        &format!(
            "tcp flags syn,ack / syn,ack ct status & {IPS_SEQ_ADJUST:#x} == {IPS_SEQ_ADJUST:#x} counter name {STRAY_SEGMENTS} drop"
        ),
    );
    from(&mut script, "meta skuid >= 0 accept");
    from(&mut script, &format!("tcp flags ack / fin,syn,rst,ack counter name {STRAY_SEGMENTS} drop"));
    script.push_str("  }\n}\n");
    script
}

/// Installs the SYNPROXY rules for `services` (replacing earlier ones),
/// with `established_secs` as the conntrack established timeout of their
/// flows ([`established_timeout`]). Then turns `nf_conntrack_tcp_loose`
/// off in this network namespace (the sysctl exists once the rules have
/// loaded conntrack); its earlier value is kept in the table's comment for
/// [`remove_synproxy`].
pub fn install_synproxy(services: &[PageService], established_secs: u64) -> Result<(), PageError> {
    // Before conntrack is loaded the sysctl does not exist; it then starts
    // at its default, 1.
    let was = recorded_tcp_loose()
        .or_else(|| std::fs::read_to_string(TCP_LOOSE).ok().map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "1".to_owned());
    nft(&table(services, established_secs, &was))?;
    std::fs::write(TCP_LOOSE, "0")
        .map_err(|e| PageError::Nft(format!("setting net.netfilter.nf_conntrack_tcp_loose = 0: {e}")))
}

/// The `nf_conntrack_tcp_loose` value recorded in the table's comment, if
/// the table is there. From the text listing: nft's JSON output leaves
/// table comments out (nftables 1.0.6).
fn recorded_tcp_loose() -> Option<String> {
    let out = Command::new("nft").args(["list", "table", "ip", NFT_TABLE]).output().ok()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    listing.lines().find_map(|line| {
        let value = line.trim().strip_prefix("comment \"")?.strip_suffix('"')?.strip_prefix(TCP_LOOSE_WAS)?;
        // Only a value the kernel accepts is written back.
        matches!(value, "0" | "1").then(|| value.to_owned())
    })
}

/// What the table dropped, from its counters; `None` without the table
/// (no page service, or another network namespace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    /// Segments of a flow whose handshake with the responder was under way.
    pub early_segments: u64,
    /// Segments a real server would not have sent: the responder's late
    /// SYN/ACKs, SYNPROXY's window updates.
    pub stray_segments: u64,
}

pub fn dropped() -> Option<Dropped> {
    let read = |name: &str| -> Option<u64> {
        let out = Command::new("nft").args(["list", "counter", "ip", NFT_TABLE, name]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let listing = String::from_utf8_lossy(&out.stdout);
        let mut words = listing.split_whitespace();
        words.find(|w| *w == "packets")?;
        words.next()?.parse().ok()
    };
    Some(Dropped { early_segments: read(EARLY_SEGMENTS)?, stray_segments: read(STRAY_SEGMENTS)? })
}

/// Removes the rules (clean stop) and gives `nf_conntrack_tcp_loose` back
/// the value it had before the first install.
pub fn remove_synproxy() -> Result<(), PageError> {
    let was = recorded_tcp_loose();
    nft(&format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n"))?;
    match was {
        Some(value) => std::fs::write(TCP_LOOSE, value)
            .map_err(|e| PageError::Nft(format!("restoring net.netfilter.nf_conntrack_tcp_loose: {e}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn the_established_timeout_covers_the_longest_wait_with_a_margin() {
        assert_eq!(established_timeout(Duration::from_secs(75)), 105);
        assert_eq!(established_timeout(Duration::from_millis(1500)), 32);
    }

    #[test]
    fn every_service_gets_each_rule() {
        let services: Vec<PageService> =
            [80, 443].into_iter().map(|port| PageService::for_tests(Ipv4Addr::new(192, 0, 2, 1), port)).collect();
        let script = table(&services, 105, "1");
        for port in [80, 443] {
            let rules = script.lines().filter(|l| l.contains(&format!("tcp dport {port} "))).count();
            assert_eq!(rules, 5, "notrack, early drop, synproxy, SYN, ACK for port {port}:\n{script}");
            let stray = script.lines().filter(|l| l.contains(&format!("tcp sport {port} "))).count();
            assert_eq!(stray, 3, "late SYN/ACKs, sockets, SYNPROXY's ACKs for port {port}:\n{script}");
        }
        assert!(script.contains("policy = { established: 105 }"), "{script}");
        assert!(script.contains("comment \"nf_conntrack_tcp_loose was 1\""), "{script}");
    }
}
