//! BPF_PROG_TEST_RUN table tests of the agent's TC stamper: packet in →
//! reason counter and exact bytes out (the verdict is always TC_ACT_OK).

use ackgate_agent::stamper::Target;
use ackgate_common::abi::ANY_ACCOUNT;
use ackgate_common::net::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN};
use ackgate_common::option::OptionId;
use ackgate_common::stamp::reason;
use ackgate_tests::fixture::{AGENT_ID, AGENT_KEY};
use ackgate_tests::packet::{TcpFrame, assert_checksums, stamp, v6_of};
use ackgate_tests::stamp_fixture::{TC_ACT_OK, TestStamper};

const CLIENT: [u8; 4] = [10, 0, 0, 2];
const GATEWAY: [u8; 4] = [10, 0, 0, 1];
const STEALTH_GW: [u8; 4] = [10, 0, 0, 5];
const ELSEWHERE: [u8; 4] = [10, 9, 9, 9];
const PORT: u16 = 443;
const ISN: u32 = 0x1000_0000;
const SERVER_ISN: u32 = 0x7000_0000;
const TIMESTAMPS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5];

ackgate_tests::twins!(
    handshake_ack_with_timestamps_gets_the_option_and_valid_checksums,
    stealth_syn_is_stamped_with_the_time_bound_mac,
    other_traffic_leaves_byte_for_byte,
    segments_without_room_or_identity_go_out_unstamped_and_counted,
    an_already_stamped_ack_is_not_stamped_twice,
    only_logged_in_accounts_are_stamped,
    the_first_data_segment_becomes_the_stamped_ack_when_none_left,
);

fn targets() -> Vec<Target> {
    let both = |addr: [u8; 4], port, stealth| {
        [Target { addr: addr.into(), port, stealth }, Target { addr: v6_of(addr).into(), port, stealth }]
    };
    [both(GATEWAY, 0, false), both(STEALTH_GW, PORT, true)].concat()
}

fn syn(v6: bool, daddr: [u8; 4], sport: u16) -> TcpFrame {
    TcpFrame { seq: ISN, ..TcpFrame::new(CLIENT, sport, daddr, PORT, TCP_SYN) }.linux_syn_options().family(v6)
}

fn handshake_ack(v6: bool, daddr: [u8; 4], sport: u16) -> TcpFrame {
    TcpFrame {
        seq: ISN + 1,
        ack: SERVER_ISN + 1,
        tcp_options: TIMESTAMPS.to_vec(),
        ..TcpFrame::new(CLIENT, sport, daddr, PORT, TCP_ACK)
    }
    .family(v6)
}

/// Runs `input`, asserts TC_ACT_OK and exactly one count of `why`, and
/// returns the bytes that left.
fn run(st: &mut TestStamper, name: &str, input: &[u8], why: u32) -> Vec<u8> {
    let before = st.counters();
    let out = st.run(input);
    let bumped: Vec<(&str, u64)> = st.counters().since(&before).labelled().filter(|(_, n)| *n != 0).collect();
    assert_eq!(out.action, TC_ACT_OK, "{name}: the stamper must never drop or redirect");
    assert_eq!(bumped, vec![(reason::LABELS[why as usize], 1)], "{name}: expected exactly one count of that reason");
    out.frame
}

fn handshake_ack_with_timestamps_gets_the_option_and_valid_checksums(v6: bool) {
    let mut st = TestStamper::new(&targets(), true);
    let s = syn(v6, GATEWAY, 40000).build();
    assert_eq!(run(&mut st, "SYN", &s, reason::SYN_RECORDED), s, "a non-stealth SYN must leave unchanged");
    let ack = handshake_ack(v6, GATEWAY, 40000);
    let out = run(&mut st, "handshake ACK", &ack.build(), reason::STAMPED_ACK);
    let mut expected = ack.clone();
    stamp::ack(&mut expected, OptionId::default(), AGENT_ID, &AGENT_KEY);
    assert_checksums(&out, 14);
    assert_eq!(out, expected.build(), "stamped ACK differs from timestamps + capability with recomputed checksums");
    let again = ack.build();
    assert_eq!(
        run(&mut st, "second ACK of the flow", &again, reason::PASS_NOT_HANDSHAKE),
        again,
        "only the first ACK of a flow may be stamped"
    );
    let recent = st.stamper.recent_stamps(10).expect("stamped flows readable");
    assert_eq!(recent.len(), 1, "the stamped flow must be listed for status: {recent:?}");
    let (flow, _) = recent[0];
    let family = if v6 { ackgate_common::abi::FAMILY_IPV6 } else { ackgate_common::abi::FAMILY_IPV4 };
    assert_eq!((flow.family, flow.sport), (family, 40000u16.to_be()), "the stamped flow's family and port");
}

fn stealth_syn_is_stamped_with_the_time_bound_mac(v6: bool) {
    let mut st = TestStamper::new(&targets(), true);
    let input = syn(v6, STEALTH_GW, 40001);
    let before = stamp::tai_tick();
    let out = run(&mut st, "stealth SYN", &input.build(), reason::STAMPED_SYN);
    let after = stamp::tai_tick();
    assert_checksums(&out, 14);
    let expect_at = |tick| {
        let mut f = input.clone();
        stamp::syn(&mut f, OptionId::default(), AGENT_ID, &AGENT_KEY, tick);
        f.build()
    };
    assert!(
        out == expect_at(before) || out == expect_at(after),
        "stamped SYN is not the Linux SYN options + capability for the current tick: {out:02x?}"
    );
    // The handshake ACK of the same flow is stamped as well.
    let ack = handshake_ack(v6, STEALTH_GW, 40001);
    run(&mut st, "stealth handshake ACK", &ack.build(), reason::STAMPED_ACK);
}

fn other_traffic_leaves_byte_for_byte(v6: bool) {
    let mut st = TestStamper::new(&targets(), true);
    let mut udp = TcpFrame::new(CLIENT, 5353, GATEWAY, 53, 0).family(v6);
    udp.proto = 17;
    let mut data = handshake_ack(v6, GATEWAY, 40010);
    data.flags = TCP_ACK | TCP_PSH;
    data.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let rows: Vec<(&str, Vec<u8>, u32)> = vec![
        ("SYN elsewhere", syn(v6, ELSEWHERE, 40002).build(), reason::PASS_NOT_TARGET),
        ("ACK elsewhere", handshake_ack(v6, ELSEWHERE, 40002).build(), reason::PASS_NOT_TARGET),
        (
            "ACK to the gateway without a SYN before",
            handshake_ack(v6, GATEWAY, 40003).build(),
            reason::PASS_NOT_HANDSHAKE,
        ),
        ("data to the gateway", data.build(), reason::PASS_NOT_HANDSHAKE),
        (
            "FIN to the gateway",
            TcpFrame::new(CLIENT, 40004, GATEWAY, PORT, TCP_FIN | TCP_ACK).family(v6).build(),
            reason::PASS_NOT_HANDSHAKE,
        ),
        (
            "stealth gateway, other port",
            TcpFrame { dport: 80, ..syn(v6, STEALTH_GW, 40005) }.build(),
            reason::PASS_NOT_TARGET,
        ),
        ("UDP", udp.build(), reason::PASS_NOT_TCP),
        ("ARP", arp(), reason::PASS_NOT_IPV4),
    ];
    for (name, input, why) in rows {
        assert_eq!(run(&mut st, name, &input, why), input, "{name}: bytes changed");
    }
}

fn segments_without_room_or_identity_go_out_unstamped_and_counted(v6: bool) {
    let mut st = TestStamper::new(&targets(), true);
    // 40 bytes of options on a stealth SYN: no room for 20 more.
    let mut full_syn = syn(v6, STEALTH_GW, 40020);
    full_syn.tcp_options.extend_from_slice(&[1; 20]);
    let input = full_syn.build();
    assert_eq!(run(&mut st, "full SYN", &input, reason::SKIP_NO_ROOM), input);
    // A handshake ACK with 28 bytes of options: 48 + 20 > 60.
    let s = syn(v6, GATEWAY, 40021).build();
    run(&mut st, "SYN", &s, reason::SYN_RECORDED);
    let mut full_ack = handshake_ack(v6, GATEWAY, 40021);
    full_ack.tcp_options.extend_from_slice(&[1; 16]);
    let input = full_ack.build();
    assert_eq!(run(&mut st, "full ACK", &input, reason::SKIP_NO_ROOM), input);
    // Data on a stealth SYN (TCP Fast Open) cannot take a tail option.
    let mut tfo = syn(v6, STEALTH_GW, 40022);
    tfo.payload = b"hello".to_vec();
    let input = tfo.build();
    assert_eq!(run(&mut st, "SYN with data", &input, reason::SKIP_PAYLOAD), input);

    let mut unenrolled = TestStamper::new(&targets(), false);
    run(&mut unenrolled, "SYN", &syn(v6, GATEWAY, 40023).build(), reason::SYN_RECORDED);
    let input = handshake_ack(v6, GATEWAY, 40023).build();
    assert_eq!(run(&mut unenrolled, "ACK before enrollment", &input, reason::SKIP_NO_IDENTITY), input);
}

fn an_already_stamped_ack_is_not_stamped_twice(v6: bool) {
    let mut st = TestStamper::new(&targets(), true);
    run(&mut st, "SYN", &syn(v6, GATEWAY, 40030).build(), reason::SYN_RECORDED);
    let mut ack = handshake_ack(v6, GATEWAY, 40030);
    stamp::ack(&mut ack, OptionId::default(), AGENT_ID, &AGENT_KEY);
    let input = ack.build();
    assert_eq!(run(&mut st, "stamped ACK", &input, reason::SKIP_ALREADY_STAMPED), input);
}

/// The flow's first data segment, as the client sends it right after the
/// handshake (`ack` acknowledges `SERVER_ISN + 1 + server_bytes`).
/// The uid `bpf_get_socket_uid` reads in a test run: the kernel gives the
/// skb a socket of its own (`bpf_prog_test_run_skb` in net/bpf/test_run.c),
/// owned by root.
const TEST_RUN_UID: u32 = 0;

/// Only the sockets of an account with a login are stamped: a SYN of
/// another account is not even followed, and an account that logs out
/// between its SYN and its handshake ACK gets no stamp. The stamp records
/// the account it was made for.
fn only_logged_in_accounts_are_stamped(v6: bool) {
    let mut st = TestStamper::new(&targets(), true);
    st.set_account(ANY_ACCOUNT, false);
    // A logout of an account without a login is no error (the agent logs
    // out every account it has no login for at start).
    st.set_account(4242, false);
    st.set_account(1000, true);
    let (s, ack) = (syn(v6, GATEWAY, 40010).build(), handshake_ack(v6, GATEWAY, 40010).build());
    assert_eq!(run(&mut st, "SYN of an account without a login", &s, reason::SKIP_NO_ACCOUNT), s);
    assert_eq!(run(&mut st, "its handshake ACK", &ack, reason::PASS_NOT_HANDSHAKE), ack, "unfollowed, unstamped");

    st.set_account(TEST_RUN_UID, true);
    let (s, ack) = (syn(v6, GATEWAY, 40011).build(), handshake_ack(v6, GATEWAY, 40011).build());
    run(&mut st, "SYN of a logged-in account", &s, reason::SYN_RECORDED);
    run(&mut st, "its handshake ACK", &ack, reason::STAMPED_ACK);
    let recent = st.stamper.recent_stamps(1).expect("stamped flows readable");
    assert_eq!(recent[0].1.account, TEST_RUN_UID, "the stamp names the socket's account: {recent:?}");

    let (s, ack) = (syn(v6, GATEWAY, 40012).build(), handshake_ack(v6, GATEWAY, 40012).build());
    run(&mut st, "SYN before a logout", &s, reason::SYN_RECORDED);
    st.set_account(TEST_RUN_UID, false);
    assert_eq!(run(&mut st, "handshake ACK after the logout", &ack, reason::SKIP_NO_ACCOUNT), ack);

    st.set_account(ANY_ACCOUNT, true);
    let (s, ack) = (syn(v6, GATEWAY, 40013).build(), handshake_ack(v6, GATEWAY, 40013).build());
    run(&mut st, "SYN under a machine-wide login", &s, reason::SYN_RECORDED);
    run(&mut st, "its handshake ACK", &ack, reason::STAMPED_ACK);
    let recent = st.stamper.recent_stamps(1).expect("stamped flows readable");
    assert_eq!(recent[0].1.account, ANY_ACCOUNT, "a machine-wide login's stamp: {recent:?}");
}

fn first_data(v6: bool, sport: u16, flags: u8, payload: &[u8], server_bytes: u32) -> TcpFrame {
    let mut f = handshake_ack(v6, GATEWAY, sport);
    f.flags = flags;
    f.payload = payload.to_vec();
    f.ack = SERVER_ISN + 1 + server_bytes;
    f
}

/// The first data segment of a flow whose handshake ACK never passed the
/// stamper (merged into the data, or dropped before it), and every second
/// resend of that segment after a stamped ACK (which may have been lost),
/// leave cut down to the stamped pure ACK: without it the gate would drop
/// the flow's data for good. TCP sends the data again.
fn the_first_data_segment_becomes_the_stamped_ack_when_none_left(v6: bool) {
    let mut st = TestStamper::new(&targets(), true);
    let stamped_pure_ack = |sport| {
        let mut ack = handshake_ack(v6, GATEWAY, sport);
        stamp::ack(&mut ack, OptionId::default(), AGENT_ID, &AGENT_KEY);
        ack.build()
    };
    let request = b"GET / HTTP/1.1\r\n\r\n";
    let data = |sport| first_data(v6, sport, TCP_ACK | TCP_PSH, request, 0);
    let later = |sport| TcpFrame { seq: ISN + 1 + request.len() as u32, ..data(sport) };
    let acks_server_data = |sport| first_data(v6, sport, TCP_ACK, &[], 100);
    let cut = Some(reason::STAMPED_ACK_FROM_DATA);
    // (what, frame in, reason counted (None: passes unchanged))
    let rows: Vec<(&str, TcpFrame, Option<u32>)> = vec![
        ("SYN, flow 1", syn(v6, GATEWAY, 40040), None),
        ("first data without a handshake ACK", data(40040), cut),
        ("the same segment sent again", data(40040), None),
        ("and once more", data(40040), cut),
        ("the next data segment", later(40040), None),
        ("an ACK of the server's data", acks_server_data(40040), None),
        ("the first segment sent again after that", data(40040), None),
        ("SYN, flow 2", syn(v6, GATEWAY, 40041), None),
        ("its handshake ACK", handshake_ack(v6, GATEWAY, 40041), Some(reason::STAMPED_ACK)),
        ("its first data", data(40041), None),
        ("a duplicate ACK", handshake_ack(v6, GATEWAY, 40041), None),
        ("its first data sent again", data(40041), cut),
        ("SYN, flow 3", syn(v6, GATEWAY, 40042), None),
        ("a bare FIN first", first_data(v6, 40042, TCP_ACK | TCP_FIN, &[], 0), cut),
    ];
    for (what, frame, stamped) in rows {
        let input = frame.build();
        let why = match (stamped, frame.flags) {
            (Some(why), _) => why,
            (None, TCP_SYN) => reason::SYN_RECORDED,
            (None, _) => reason::PASS_NOT_HANDSHAKE,
        };
        let out = run(&mut st, what, &input, why);
        if stamped.is_some() {
            assert_checksums(&out, 14);
            assert_eq!(out, stamped_pure_ack(frame.sport), "{what}: must leave as the stamped pure ACK");
        } else {
            assert_eq!(out, input, "{what}: must leave unchanged");
        }
    }
}

fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0; 20]);
    f
}

/// As the gate's budget test (`xdp_gate`): the stamper must load on every
/// kernel of the matrix with room to grow.
#[test]
fn the_stamper_verifies_well_under_the_verifiers_limit() {
    let started = std::time::Instant::now();
    let mut st = TestStamper::new(&targets(), true);
    let loaded_in = started.elapsed();
    let program = st.stamper.program().unwrap_or_else(|e| panic!("stamper: {e}"));
    let info = program.info().unwrap_or_else(|e| panic!("stamper: program info: {e}"));
    let verified = info.verified_instruction_count().unwrap_or_else(|| panic!("stamper: no verified_insns"));
    eprintln!("stamper: {verified} verified instructions, loaded in {loaded_in:?}");
    assert!(verified <= 750_000, "the stamper: the verifier processed {verified} instructions, over the 750k budget");
}
