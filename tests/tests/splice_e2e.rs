//! The splice end to end, with the real daemons (`ackgate run`,
//! `ackgate-agent run`) on a fresh client / gateway / target topology:
//! bulk transfers both ways (also with loss on the edge link), targets
//! tuned differently from the gateway, the kernel-forwarding path, a
//! target that refuses, idle flows, a transfer that a revocation cuts or
//! that outlives a kill -9 of the control plane, and an IPv6 service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ackgate_tests::daemons::{Daemon, eventually, run_ok};
use ackgate_tests::deployment::{PORT, Setup, WAIT, start_wait};
use ackgate_tests::target::pattern_sha256;
use ackgate_tests::topology::Ns;

const MB: usize = 1 << 20;

/// `n` MiB; a 32nd of that under emulation (the VM run, whose CPU is
/// about 14 times slower than the host's; 100 MiB is still some 2,300
/// segments there).
fn mib(n: usize) -> usize {
    if ackgate_tests::emulated() { n * MB / 32 } else { n * MB }
}

/// An approved user with a working agent on a fresh deployment.
fn approved(tag: &str, response: &str, extra_gateway: &str) -> (Setup, Daemon, Daemon) {
    approved_with(tag, response, extra_gateway, "")
}

/// As [`approved`], with `extra_service` in the service's table.
fn approved_with(tag: &str, response: &str, extra_gateway: &str, extra_service: &str) -> (Setup, Daemon, Daemon) {
    let s = Setup::with_gateway(tag, response, 3000, "", extra_gateway, extra_service);
    let (gateway, agent) = s.start_approved("alice");
    (s, gateway, agent)
}

fn transfer_both_ways(s: &Setup, len: usize) {
    let want = pattern_sha256(len);
    let got = s.download(len, |_| {}).unwrap_or_else(|e| panic!("download of {len} bytes: {e}"));
    assert_eq!(got, want, "the download's SHA-256 differs");
    let got = s.upload(len).unwrap_or_else(|e| panic!("upload of {len} bytes: {e}"));
    assert_eq!(got, want, "the upload's SHA-256 (computed by the target) differs");
}

#[test]
fn transfers_of_100_mb_arrive_intact_both_ways() {
    let (s, _gateway, _agent) = approved("bulk", "drop", "");
    transfer_both_ways(&s, mib(100));
    assert!(s.gate_counter("splice_redirect") > 1000, "the data must have gone through the redirect path");
}

/// 1 % of the data is lost each way: the endpoints recover with SACK,
/// whose blocks the splice translates. Each end drops 1 % of what it
/// receives (nftables `numgen random` at input; netem would do the same
/// where the kernel has sch_netem). Drops at output would be no loss at
/// all: a segment refused by a local hook is an error to TCP, which keeps
/// it queued and sends it later (tcp_transmit_skb's return value in
/// tcp_write_xmit, net/ipv4/tcp_output.c), so the sender never recovers.
#[test]
fn transfers_survive_loss_on_the_edge_link() {
    let (s, _gateway, _agent) = approved("loss", "drop", "");
    let rules = "table inet ackgate_loss {\n\
                 chain in { type filter hook input priority 0; numgen random mod 100 0 drop; }\n}\n";
    // Per segment, not per 64 KiB offload super-packet.
    for (ns, dev) in [(Ns::Client, &s.topo.client_if), (Ns::Target, &s.topo.target_if)] {
        s.topo.cmd_ok(ns, &["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"]);
        s.nft(ns, rules);
    }
    transfer_both_ways(&s, mib(100));
    // Both senders lost segments and recovered with SACK, and neither
    // found a SACK block invalid (a mistranslated edge is discarded and
    // counted as TCPSACKDiscard, tcp_sacktag_write_queue in
    // net/ipv4/tcp_input.c).
    for ns in [Ns::Client, Ns::Target] {
        let c = s.topo.nstat(ns, &["TcpRetransSegs", "TcpExtTCPSackRecovery", "TcpExtTCPSACKDiscard"]);
        assert!(c["TcpRetransSegs"] > 5, "{ns:?}: the loss must cause retransmissions: {c:?}");
        assert!(c["TcpExtTCPSackRecovery"] >= 1, "{ns:?}: recovery must use SACK: {c:?}");
        assert_eq!(c["TcpExtTCPSACKDiscard"], 0, "{ns:?}: SACK blocks discarded as invalid: {c:?}");
    }
}

/// The client's handshake ACK never leaves (a local firewall drops it
/// before the agent's hook, as it could drop any segment): the request
/// then becomes the stamped ACK, TCP sends it again, and the download
/// goes through. Before, the flow was dead: the gate dropped its data
/// for ever (or reset it, as this service's default response would).
#[test]
fn a_flow_whose_handshake_ack_was_dropped_still_goes_through() {
    let (s, _gateway, _agent) = approved("lostack", "reset", "");
    // Only the first pure ACK to the service: the handshake ACK.
    let rules = format!(
        "table inet ackgate_lost_ack {{\n\
         chain out {{ type filter hook output priority 0; \
         tcp dport {PORT} tcp flags == ack ip length 52 numgen inc mod 1000000 0 counter drop; }}\n}}\n"
    );
    let cut_to_ack = || {
        let status = s.agent_status();
        let counters = status["counters"].as_array().cloned().unwrap_or_default();
        counters.iter().find(|c| c[0] == "stamped_ack_from_data").map_or(0, |c| c[1].as_u64().unwrap_or(0))
    };
    let before = cut_to_ack();
    s.nft(Ns::Client, &rules);
    transfer_both_ways(&s, mib(4));
    let out = s.topo.cmd(Ns::Client, &["nft", "list", "table", "inet", "ackgate_lost_ack"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("packets 1 "), "exactly one handshake ACK must have been dropped:\n{listing}");
    // The request, and nothing else, becomes the stamped ACK; again every
    // second time TCP sends it again before the target answers (the
    // agent's rule for a stamped ACK that may have been lost,
    // agent-ebpf/src/handshake.rs), which a slow emulated CPU can take
    // long enough for.
    let cut = cut_to_ack() - before;
    let resent = s.topo.nstat(Ns::Client, &["TcpRetransSegs"])["TcpRetransSegs"];
    assert!(
        (1..=1 + resent / 2).contains(&cut),
        "the request, and nothing else, must have become the stamped ACK: {cut} cut, {resent} segments resent"
    );
}

/// A target without window scaling, SACK or timestamps, behind a gateway
/// whose cookie SYN/ACK offered all three.
#[test]
fn a_target_tuned_differently_still_works() {
    let (s, _gateway, _agent) = approved("tuned", "drop", "");
    for knob in ["net.ipv4.tcp_window_scaling=0", "net.ipv4.tcp_sack=0", "net.ipv4.tcp_timestamps=0"] {
        let out = s.topo.cmd(Ns::Target, &["sysctl", "-qw", knob]);
        assert!(out.status.success(), "sysctl {knob} in the target namespace");
    }
    transfer_both_ways(&s, mib(20));
}

/// `source_nat`: the target sees the gateway's internal address (a port
/// from `source_nat_ports`) and needs no route back to clients; here it has
/// none, so nothing else could work.
#[test]
fn source_nat_serves_a_target_without_a_route_to_clients() {
    let (s, _gateway, _agent) = approved_with("snat", "drop", "source_nat_ports = [21000, 21009]", "source_nat = true");
    let out = s.topo.cmd(Ns::Target, &["ip", "route", "del", "default"]);
    assert!(out.status.success(), "removing the target's default route");
    let (code, body) = s.fetch(5);
    assert_eq!(code, 0, "curl through source NAT: {body}");
    let seen: std::net::SocketAddr = body
        .rsplit("you are ")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("the target's page names the peer: {body:?}"));
    assert_eq!(seen.ip(), std::net::IpAddr::from(s.topo.internal_addr), "the target must see the gateway");
    assert!((21000..=21009).contains(&seen.port()), "a port from source_nat_ports: {seen}");
    transfer_both_ways(&s, mib(10));
    let reserved = s.topo.cmd(Ns::Gateway, &["sysctl", "-n", "net.ipv4.ip_local_reserved_ports"]);
    assert!(String::from_utf8_lossy(&reserved.stdout).contains("21000-21009"), "the range must be reserved");
}

/// `forwarding = "kernel"`: spliced segments are rewritten in XDP and
/// routed by the kernel, never redirected.
#[test]
fn the_kernel_forwarding_path_carries_flows_too() {
    let (s, _gateway, _agent) = approved("kernel", "drop", "forwarding = \"kernel\"");
    transfer_both_ways(&s, mib(10));
    assert!(s.gate_counter("splice_kernel") > 100, "segments must take the kernel path");
    assert_eq!(s.gate_counter("splice_redirect"), 0, "no segment may be redirected");
}

#[test]
fn a_target_that_refuses_gives_the_default_response() {
    let (mut s, _gateway, _agent) = approved("refuse", "reset", "");
    s.target.stop();
    let code = s.curl(5);
    assert_eq!(code, 56, "the client must be reset (curl 56), not left hanging");
    let refused = eventually(WAIT, "the refusal in the access log", || {
        s.access_log().into_iter().find(|r| r["decision"] == "refused")
    });
    assert_eq!(refused["reason"], "target_refused", "{refused}");
    assert!(s.gate_counter("internal_target_refused") >= 1, "the target's RST must be counted");
    assert!(s.live_flows().is_empty(), "a refused splice leaves no live flow: {:?}", s.live_flows());
}

/// A target whose network answers the splice's SYN with "host
/// unreachable": the client gets the default response at once, not after
/// the connect timeout.
#[test]
fn an_unreachable_target_gives_the_default_response_at_once() {
    let (s, _gateway, _agent) = approved_with("unreach", "reset", "connect_timeout_ms = 30000", "");
    let client = s.topo.client_addr;
    s.nft(
        Ns::Target,
        &format!(
            "table ip ackgate_unreach {{\n chain in {{\n type filter hook input priority 0;\n\
             ip saddr {client} tcp flags syn reject with icmp type host-unreachable\n }}\n}}\n"
        ),
    );
    let started = std::time::Instant::now();
    let code = s.curl(20);
    assert_eq!(code, 56, "the client must be reset (curl 56), not left hanging");
    assert!(started.elapsed() < Duration::from_secs(15), "refused at once, not at the 30 s connect timeout");
    let refused = eventually(WAIT, "the refusal in the access log", || {
        s.access_log().into_iter().find(|r| r["decision"] == "refused")
    });
    assert_eq!(refused["reason"], "target_unreachable", "{refused}");
    assert!(s.gate_counter("internal_target_unreachable") >= 1, "the ICMP error must be counted");
}

/// An ICMP error from the target's side about a spliced segment reaches
/// the client translated for the VIP: the client's kernel matches it to
/// its connection (quoted 4-tuple and sequence number, tcp_v4_err in
/// net/ipv4/tcp_ipv4.c), so a socket with IP_RECVERR sees the error.
/// Untranslated, the error would name the target and be ignored, and the
/// writes would only time out.
#[test]
fn icmp_errors_from_the_target_side_reach_the_client() {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;

    let (s, _gateway, _agent) = approved("icmp", "drop", "");
    let to = std::net::SocketAddr::new(s.topo.edge_addr.into(), ackgate_tests::deployment::PORT);
    let client = s.topo.client_addr;
    let err = s.topo.run_in(Ns::Client, || {
        let mut c = std::net::TcpStream::connect_timeout(&to, WAIT).expect("connect through the gateway");
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and option value.
        let rc = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "IP_RECVERR: {}", std::io::Error::last_os_error());
        c.set_write_timeout(Some(WAIT)).expect("write timeout");
        c.write_all(b"POST /sha256 HTTP/1.0\r\nContent-Length: 1000000000\r\n\r\n").expect("request header");
        eventually(WAIT, "the flow to be spliced", || {
            s.live_flows().iter().any(|f| f["state"] == "spliced").then_some(())
        });
        s.nft(
            Ns::Target,
            &format!(
                "table ip ackgate_icmp {{\n chain in {{\n type filter hook input priority 0;\n\
                 ip saddr {client} reject with icmp type port-unreachable\n }}\n}}\n"
            ),
        );
        let chunk = [0x61u8; 16 * 1024];
        loop {
            if let Err(e) = c.write_all(&chunk) {
                return e;
            }
        }
    });
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "the client must see the target's error: {err}");
    assert!(s.gate_counter("icmp_translated") >= 1, "the translated error must be counted");
}

/// The internal link is narrower than the edge (1280 bytes against 1500):
/// the client's full-sized segments do not fit it, and the gateway answers
/// them with "fragmentation needed" from the VIP, as a router there would,
/// so path MTU discovery works and the transfers finish.
#[test]
fn a_narrower_internal_link_is_no_black_hole() {
    let (s, _gateway, _agent) = approved("mtu", "drop", "");
    for (ns, dev) in [(Ns::Gateway, &s.topo.internal_if), (Ns::Target, &s.topo.target_if)] {
        let out = s.topo.cmd(ns, &["ip", "link", "set", dev, "mtu", "1280"]);
        assert!(out.status.success(), "mtu 1280 on {dev}: {}", String::from_utf8_lossy(&out.stderr));
    }
    transfer_both_ways(&s, mib(20));
    assert!(s.gate_counter("splice_frag_needed") >= 1, "the client's large segments must earn the error");
}

#[test]
fn idle_flows_end_and_free_their_entries() {
    let (s, _gateway, _agent) = approved("idle", "reset", "idle_timeout_secs = 1");
    let (read, _) = s.idle_client(Duration::from_secs(20));
    assert_eq!(read, Err(std::io::ErrorKind::ConnectionReset), "an idle flow's client is reset when it ends");
    let ended = eventually(WAIT, "the idle end in the access log", || {
        s.access_log().into_iter().find(|r| r["decision"] == "ended")
    });
    assert_eq!(ended["flow_end"]["ended"], "idle", "{ended}");
    assert!(s.live_flows().is_empty(), "an idle flow's entries must be freed: {:?}", s.live_flows());
}

/// Downloads `len` bytes and, once more than 8 MiB (scaled) have arrived, runs
/// `act` while the transfer is still going (the reader stops reading until
/// `act` has run); returns how the transfer ended.
fn during_a_transfer(s: &Setup, len: usize, act: impl FnOnce()) -> std::io::Result<String> {
    let acted = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let transfer = scope.spawn(|| {
            s.download(len, |got| {
                // Held until `act` has run: however slow the machine, the
                // transfer is still under way when it does.
                while got > mib(8) && !acted.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        });
        eventually(WAIT, "the transfer to be under way", || {
            s.live_flows()
                .iter()
                .any(|f| f["splice"]["to_client"]["bytes"].as_u64() > Some(mib(8) as u64))
                .then_some(())
        });
        act();
        acted.store(true, Ordering::Relaxed);
        transfer.join().expect("transfer thread")
    })
}

/// Revocation cuts a transfer in the middle: both ends are reset at once.
#[test]
fn revocation_cuts_a_transfer_mid_way() {
    let (s, _gateway, _agent) = approved("cut", "reset", "");
    let result = during_a_transfer(&s, mib(1024), || {
        let out = run_ok(s.ackgate(&["users", "revoke", "alice"]), None, "users revoke");
        assert!(String::from_utf8_lossy(&out.stdout).contains("ended 1 live flow"), "{out:?}");
    });
    let err = result.expect_err("the revoked transfer must not complete");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "the client must be reset: {err}");
    assert!(s.access_log().iter().any(|r| r["decision"] == "revoked"), "the cut must be in the access log");
}

/// kill -9 of `ackgate run` in the middle of a transfer: XDP keeps
/// splicing (its programs and maps are pinned), the transfer completes
/// intact, and the restarted control plane picks the flow up.
#[test]
fn a_killed_control_plane_does_not_interrupt_a_transfer() {
    let (s, gateway, _agent) = approved("kill", "drop", "");
    let len = mib(200);
    // SAFETY: killing the daemon this test started.
    let digest = during_a_transfer(&s, len, || unsafe {
        libc::kill(gateway.pid(), libc::SIGKILL);
    });
    assert_eq!(digest.expect("the transfer must complete"), pattern_sha256(len), "SHA-256 after the kill");
    drop(gateway);
    let mut restarted = Daemon::start(s.ackgate(&["run"]), "ackgate run (restarted)", s.dir.join("gateway2.log"));
    restarted.wait_for_log("resumed spliced flows", start_wait());
    // Its FINs went by while no control plane ran: the restarted one finds
    // them in the map, ends the flow and logs it.
    let ended = eventually(WAIT, "the resumed flow's end in the access log", || {
        s.access_log().into_iter().find(|r| r["decision"] == "ended")
    });
    assert_eq!(ended["flow_end"]["ended"], "fin", "{ended}");
    assert!(s.live_flows().is_empty(), "its entries must be freed: {:?}", s.live_flows());
}

/// An IPv6 service end to end: the agent's session runs to the gateway's
/// IPv6 listener, its stamper marks the IPv6 handshake, the control plane
/// asks about the IPv6 flow, and the approved user's transfers go through
/// the IPv6 splice intact both ways.
#[test]
fn an_ipv6_service_carries_transfers_intact_both_ways() {
    let s = Setup::ipv6("ipv6", "drop");
    let (_gateway, _agent) = s.start_approved("alice");
    transfer_both_ways(&s, mib(100));
    let authorized: Vec<_> = s.access_log().into_iter().filter(|r| r["decision"] == "authorized").collect();
    assert!(!authorized.is_empty(), "the transfers' flows must have been authorized");
    for r in &authorized {
        let client = r["client"].as_str().unwrap_or_default();
        assert!(client.starts_with("[2001:db8::"), "an IPv6 client in the access log: {r}");
    }
    assert!(s.gate_counter("splice_redirect") > 1000, "the data must have gone through the redirect path");
}
