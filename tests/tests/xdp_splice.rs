//! BPF_PROG_TEST_RUN table tests of the splice: segments of spliced flows
//! through the edge and internal programs, with exact bytes out (expected
//! frames are built from scratch, checksums included, so the incremental
//! updates are checked too), and the completion of the target's handshake.
//!
//! The test gate runs in a fresh network namespace with nothing routed, so
//! the FIB never resolves a next hop and every spliced segment takes the
//! kernel-forwarding path (XDP_PASS of the rewritten segment): the rewrite
//! is what these rows check. The redirect path is covered end to end. ICMP
//! errors about spliced segments are translated (exact bytes too), and the
//! MTU test routes the target's network over a narrow link.

use std::net::Ipv6Addr;

use ackgate_common::abi::{
    END_FIN, END_RST_TARGET, EVENT_ENDED, EVENT_REFUSED, EVENT_SPLICED, FAMILY_IPV6, FlowKey, FlowOwner,
    REFUSED_UNREACHABLE, RESPONSE_DROP, SPLICE_ESTABLISHED, SPLICE_F_FIN, SPLICE_F_RST, port_field, v4_words, v6_words,
};
use ackgate_common::icmp::{ICMPV6_DEST_UNREACH, ICMPV6_PKT_TOOBIG};
use ackgate_common::net::{IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use ackgate_common::reason;
use ackgate_common::splice::{SpliceSetup, TargetAnswer, complete};
use ackgate_gateway::events::Events;
use ackgate_gateway::splice::HeldRing;
use ackgate_tests::fixture::{TestGate, linux_handshake, service};
use ackgate_tests::packet::{CLIENT_MAC, GATE_MAC, IcmpFrame, TcpFrame, icmpv6_error, packet_too_big, v6_of};
use ackgate_tests::table::{Out, Program, Row, XDP_DROP, XDP_PASS, XDP_TX, run_rows};

const CLIENT: [u8; 4] = [10, 0, 0, 2];
const VIP: [u8; 4] = [10, 0, 0, 1];
const TARGET: [u8; 4] = [10, 99, 0, 2];
const VPORT: u16 = 443;
const TPORT: u16 = 8443;
const CLIENT_ISN: u32 = 0x1000_0000;
const COOKIE: u32 = 0xc00c_1e00;
const TARGET_ISN: u32 = 0x7a76_0000;
/// The cookie SYN/ACK's TSval and the target's.
const COOKIE_TS: u32 = 0x3000_00d7;
const TARGET_TS: u32 = 0x0900_0000;
const CLIENT_TS: u32 = 5000;
/// The window scale the cookie SYN/ACK offered, and the target's.
const GATEWAY_WS: u8 = 7;
const TARGET_WS: u8 = 9;

fn gate() -> TestGate {
    TestGate::new("splice", &[service(VIP, VPORT, RESPONSE_DROP, false)])
}

/// The control plane's setup of the flow from client port `cport`.
fn setup(cport: u16) -> SpliceSetup {
    SpliceSetup {
        client: FlowKey::ipv4(CLIENT, VIP, cport.to_be_bytes(), VPORT.to_be_bytes()),
        source_addr: v4_words(CLIENT),
        source_port: port_field(cport.to_be_bytes()),
        target_addr: v4_words(TARGET),
        target_port: port_field(TPORT.to_be_bytes()),
        client_isn: CLIENT_ISN,
        cookie_isn: COOKIE,
        handshake: linux_handshake(CLIENT_TS, COOKIE_TS),
        gateway_wscale: GATEWAY_WS,
        owner: FlowOwner { user_tag: 1, machine_tag: 2 },
    }
}

/// Writes the connecting entries of the flow from `cport`.
fn connecting(g: &mut TestGate, cport: u16) -> SpliceSetup {
    let s = setup(cport);
    let (ct, tc) = s.connecting::<u32>();
    g.gate.set_splice(&s.target_key::<u32>(), &tc).expect("target-side entry");
    g.gate.set_splice(&s.client_key::<u32>(), &ct).expect("client-side entry");
    s
}

/// Writes the established entries of the flow from `cport`, as if the
/// target had answered with window scale 9 and timestamps.
fn established(g: &mut TestGate, cport: u16) -> SpliceSetup {
    let s = setup(cport);
    let (mut ct, mut tc) = s.connecting::<u32>();
    complete(&mut ct, &mut tc, &TargetAnswer { isn: TARGET_ISN, wscale: TARGET_WS, tsval: Some(TARGET_TS) });
    g.gate.set_splice(&s.target_key::<u32>(), &tc).expect("target-side entry");
    g.gate.set_splice(&s.client_key::<u32>(), &ct).expect("client-side entry");
    s
}

fn ts(tsval: u32, tsecr: u32) -> Vec<u8> {
    [&[1u8, 1, 8, 10][..], &tsval.to_be_bytes(), &tsecr.to_be_bytes()].concat()
}

fn sack(blocks: &[(u32, u32)]) -> Vec<u8> {
    let mut v = vec![1, 1, 5, (2 + 8 * blocks.len()) as u8];
    for (l, r) in blocks {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn seg(
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    opts: Vec<u8>,
    payload: &[u8],
) -> TcpFrame {
    let mut f = TcpFrame::new(from.0, from.1, to.0, to.1, flags);
    f.seq = seq;
    f.ack = ack;
    f.window = window;
    f.tcp_options = opts;
    f.payload = payload.to_vec();
    f
}

fn rewritten(name: &'static str, input: TcpFrame, want: TcpFrame, program: Program) -> (Program, Row) {
    let row = Row {
        name,
        input: input.build(),
        action: XDP_PASS,
        reason: reason::SPLICE_KERNEL,
        out: Out::Exact(want.build()),
    };
    (program, row)
}

fn run(g: &mut TestGate, rows: Vec<(Program, Row)>) {
    for (program, row) in rows {
        run_rows(g, program, vec![row]);
    }
}

#[test]
fn spliced_segments_are_rewritten_both_ways() {
    let mut g = gate();
    let mut events = Events::take(g.gate.ebpf_mut()).expect("event ring");
    let flow = established(&mut g, 40000);
    let (c, v, t) = ((CLIENT, 40000), (VIP, VPORT), (TARGET, TPORT));
    let request = b"GET / HTTP/1.0\r\n\r\n";
    let answer = b"HTTP/1.0 200 OK\r\n\r\nhello";
    let (c_seq, t_seq) = (CLIENT_ISN + 1, TARGET_ISN + 1);
    // Windows: the client scales by 7 towards a target that scales alike
    // (unchanged); the target scales by 9, the client reads it by the
    // gateway's 7: times 4.
    let rows = vec![
        rewritten(
            "client data with timestamps",
            seg(c, v, TCP_ACK | TCP_PSH, c_seq, COOKIE + 1, 1000, ts(6000, COOKIE_TS + 5), request),
            seg(c, t, TCP_ACK | TCP_PSH, c_seq, TARGET_ISN + 1, 1000, ts(6000, TARGET_TS + 5), request),
            Program::Edge,
        ),
        rewritten(
            "client ACK with SACK blocks",
            seg(
                c,
                v,
                TCP_ACK,
                c_seq + 18,
                COOKIE + 1,
                999,
                [ts(6001, COOKIE_TS + 6), sack(&[(COOKIE + 3001, COOKIE + 4001), (COOKIE + 5001, COOKIE + 6001)])]
                    .concat(),
                &[],
            ),
            seg(
                c,
                t,
                TCP_ACK,
                c_seq + 18,
                TARGET_ISN + 1,
                999,
                [
                    ts(6001, TARGET_TS + 6),
                    sack(&[(TARGET_ISN + 3001, TARGET_ISN + 4001), (TARGET_ISN + 5001, TARGET_ISN + 6001)]),
                ]
                .concat(),
                &[],
            ),
            Program::Edge,
        ),
        rewritten(
            "target data, its window rescaled",
            seg(t, c, TCP_ACK | TCP_PSH, t_seq, c_seq + 18, 1000, ts(TARGET_TS + 7, 6001), answer),
            seg(v, c, TCP_ACK | TCP_PSH, COOKIE + 1, c_seq + 18, 4000, ts(COOKIE_TS + 7, 6001), answer),
            Program::Internal,
        ),
        rewritten(
            "target segment without options",
            seg(t, c, TCP_ACK, t_seq + 24, c_seq + 18, 3, vec![], &[]),
            seg(v, c, TCP_ACK, COOKIE + 25, c_seq + 18, 12, vec![], &[]),
            Program::Internal,
        ),
        rewritten(
            "client FIN",
            seg(c, v, TCP_FIN | TCP_ACK, c_seq + 18, COOKIE + 25, 1000, ts(6002, COOKIE_TS + 8), &[]),
            seg(c, t, TCP_FIN | TCP_ACK, c_seq + 18, TARGET_ISN + 25, 1000, ts(6002, TARGET_TS + 8), &[]),
            Program::Edge,
        ),
    ];
    run(&mut g, rows);
    // Each side carries only its own direction: a segment with the
    // client's 4-tuple arriving on the internal side (a spoofed address,
    // which XDP sees before any reverse-path check) is not the splice's.
    run_rows(
        &mut g,
        Program::Internal,
        vec![Row {
            name: "a client segment arriving on the internal side",
            input: seg(c, v, TCP_ACK | TCP_PSH, c_seq + 18, COOKIE + 1, 1000, vec![], b"injected").build(),
            action: XDP_PASS,
            reason: reason::INTERNAL_PASS,
            out: Out::Unchanged,
        }],
    );
    let ct = g.gate.splice(&flow.client_key::<u32>()).expect("map").expect("client-side entry");
    assert_ne!(ct.flags & SPLICE_F_FIN, 0, "the client's FIN must be marked");
    assert_eq!((ct.packets, ct.state), (3, SPLICE_ESTABLISHED), "client-side counters");
    assert_eq!(ct.seq_next, c_seq + 19, "past the client's FIN");
    assert!(events.drain().is_empty(), "one FIN does not end the flow");

    run(
        &mut g,
        vec![rewritten(
            "target FIN after the client's",
            seg(t, c, TCP_FIN | TCP_ACK, t_seq + 24, c_seq + 19, 1000, ts(TARGET_TS + 9, 6002), &[]),
            seg(v, c, TCP_FIN | TCP_ACK, COOKIE + 25, c_seq + 19, 4000, ts(COOKIE_TS + 9, 6002), &[]),
            Program::Internal,
        )],
    );
    let ended = events.drain();
    assert_eq!(ended.len(), 1, "the second FIN ends the flow: {ended:?}");
    assert_eq!((ended[0].kind, ended[0].agent_id, ended[0].flow), (EVENT_ENDED, END_FIN, flow.client));
    let tc = g.gate.splice(&flow.target_key::<u32>()).expect("map").expect("target-side entry");
    assert_eq!(tc.bytes, 76 + 40 + 52, "target-side bytes (IP lengths)");
}

#[test]
fn resets_end_flows_and_stale_entries_forward_nothing() {
    let mut g = gate();
    let mut events = Events::take(g.gate.ebpf_mut()).expect("event ring");
    let flow = established(&mut g, 40001);
    let (c, v, t) = ((CLIENT, 40001), (VIP, VPORT), (TARGET, TPORT));
    run(
        &mut g,
        vec![rewritten(
            "target RST",
            seg(t, c, TCP_RST | TCP_ACK, TARGET_ISN + 1, CLIENT_ISN + 1, 0, vec![], &[]),
            seg(v, c, TCP_RST | TCP_ACK, COOKIE + 1, CLIENT_ISN + 1, 0, vec![], &[]),
            Program::Internal,
        )],
    );
    let tc = g.gate.splice(&flow.target_key::<u32>()).expect("map").expect("entry");
    assert_ne!(tc.flags & SPLICE_F_RST, 0, "the RST must be marked");
    let ended = events.drain();
    assert_eq!(ended.len(), 1, "a RST ends the flow: {ended:?}");
    assert_eq!((ended[0].kind, ended[0].agent_id, ended[0].flow), (EVENT_ENDED, END_RST_TARGET, flow.client));

    // The control plane removed the entries: a late segment is a stranger
    // (no capability on a data segment: the service's default response).
    g.gate.remove_splice(&flow.client_key::<u32>()).expect("remove");
    g.gate.remove_splice(&flow.target_key::<u32>()).expect("remove");
    let late = seg(c, v, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, COOKIE + 1, 1000, vec![], b"late");
    run_rows(
        &mut g,
        Program::Edge,
        vec![Row {
            name: "stale segment",
            input: late.build(),
            action: XDP_DROP,
            reason: reason::ACK_NO_OPTION,
            out: Out::Dropped,
        }],
    );
    let unrelated = seg((TARGET, 22), (CLIENT, 5555), TCP_ACK, 1, 1, 100, vec![], &[]);
    run_rows(
        &mut g,
        Program::Internal,
        vec![Row {
            name: "not spliced on the internal side",
            input: unrelated.build(),
            action: XDP_PASS,
            reason: reason::INTERNAL_PASS,
            out: Out::Unchanged,
        }],
    );
}

#[test]
fn the_target_handshake_completes_in_xdp() {
    let mut g = gate();
    let mut events = Events::take(g.gate.ebpf_mut()).expect("event ring");
    let mut held = HeldRing::take(g.gate.ebpf_mut()).expect("held ring");
    let flow = connecting(&mut g, 40002);
    let (c, v, t) = ((CLIENT, 40002), (VIP, VPORT), (TARGET, TPORT));

    // Client data while the target's handshake is under way: held for the
    // control plane, byte for byte.
    let early = seg(c, v, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, COOKIE + 1, 502, ts(CLIENT_TS + 1, COOKIE_TS), b"GET /");
    run_rows(
        &mut g,
        Program::Edge,
        vec![Row {
            name: "client data while connecting",
            input: early.build(),
            action: XDP_DROP,
            reason: reason::SPLICE_HOLD,
            out: Out::Dropped,
        }],
    );
    let copies = held.drain();
    assert_eq!(copies.len(), 1, "the segment must be held");
    assert_eq!((copies[0].0, &copies[0].1[..]), (flow.client, &early.build()[14..]), "held flow and IPv4 bytes");

    let synack_opts = [
        &[2u8, 4, 5, 0xb4, 4, 2, 8, 10][..],
        &TARGET_TS.to_be_bytes(),
        &CLIENT_TS.to_be_bytes(),
        &[1, 3, 3, TARGET_WS],
    ]
    .concat();
    // A SYN/ACK with the client's 4-tuple on the internal side must not
    // complete the splice (with each direction's entry in the other's
    // place): the client's side is not the internal side's.
    let crossed = seg(c, v, TCP_SYN | TCP_ACK, TARGET_ISN, 0, 65160, synack_opts.clone(), &[]);
    run_rows(
        &mut g,
        Program::Internal,
        vec![Row {
            name: "a SYN/ACK with the client's 4-tuple on the internal side",
            input: crossed.build(),
            action: XDP_PASS,
            reason: reason::INTERNAL_PASS,
            out: Out::Unchanged,
        }],
    );
    let wrong = seg(t, c, TCP_SYN | TCP_ACK, TARGET_ISN, CLIENT_ISN + 5, 65160, synack_opts.clone(), &[]);
    let synack = seg(t, c, TCP_SYN | TCP_ACK, TARGET_ISN, CLIENT_ISN + 1, 65160, synack_opts, &[]);
    // The ACK back to the target: the client's address and next sequence
    // number, its handshake-ACK window and TSval, echoing the target's.
    let mut ack = seg(c, t, TCP_ACK, CLIENT_ISN + 1, TARGET_ISN + 1, 502, ts(CLIENT_TS, TARGET_TS), &[]);
    ack.src_mac = synack.dst_mac;
    ack.dst_mac = synack.src_mac;
    // The gate builds it: IP id 0, as Linux's own segments.
    ack.ip_id = 0;
    run_rows(
        &mut g,
        Program::Internal,
        vec![
            Row {
                name: "SYN/ACK acknowledging another ISN",
                input: wrong.build(),
                action: XDP_DROP,
                reason: reason::INTERNAL_SYNACK_MISMATCH,
                out: Out::Dropped,
            },
            Row {
                name: "target SYN/ACK",
                input: synack.build(),
                action: XDP_TX,
                reason: reason::INTERNAL_SPLICED,
                out: Out::Exact(ack.build()),
            },
        ],
    );
    let ct = g.gate.splice(&flow.client_key::<u32>()).expect("map").expect("client-side entry");
    let tc = g.gate.splice(&flow.target_key::<u32>()).expect("map").expect("target-side entry");
    assert_eq!((ct.state, tc.state), (SPLICE_ESTABLISHED, SPLICE_ESTABLISHED));
    assert_eq!(tc.seq_shift, COOKIE.wrapping_sub(TARGET_ISN), "target → client sequence shift");
    assert_eq!(ct.seq_shift, TARGET_ISN.wrapping_sub(COOKIE), "client → target acknowledgement shift");
    assert_eq!(tc.ts_shift, COOKIE_TS.wrapping_sub(TARGET_TS), "timestamp offset");
    assert_eq!((tc.wnd_shl, tc.wnd_shr, ct.wnd_shl, ct.wnd_shr), (TARGET_WS, GATEWAY_WS, 7, 7), "window rescaling");
    let ev = events.drain();
    assert_eq!(ev.len(), 1, "one event: {ev:?}");
    assert_eq!((ev[0].kind, ev[0].flow, ev[0].server_isn), (EVENT_SPLICED, flow.client, TARGET_ISN));
}

#[test]
fn targets_that_refuse_or_differ_are_handled() {
    let mut g = gate();
    let mut events = Events::take(g.gate.ebpf_mut()).expect("event ring");
    let refusing = connecting(&mut g, 40003);
    let (c3, t) = ((CLIENT, 40003), (TARGET, TPORT));
    let rst = seg(t, c3, TCP_RST | TCP_ACK, 0, CLIENT_ISN + 1, 0, vec![], &[]);
    run_rows(
        &mut g,
        Program::Internal,
        vec![Row {
            name: "target refuses",
            input: rst.build(),
            action: XDP_DROP,
            reason: reason::INTERNAL_TARGET_REFUSED,
            out: Out::Dropped,
        }],
    );
    let ev = events.drain();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].flow), (EVENT_REFUSED, refusing.client));

    // A target without timestamps or window scaling: the ACK carries no
    // options and the client's scaled window is sent unscaled; from then
    // on windows are rescaled both ways.
    let plain = connecting(&mut g, 40004);
    let c4 = (CLIENT, 40004);
    let synack = seg(t, c4, TCP_SYN | TCP_ACK, TARGET_ISN, CLIENT_ISN + 1, 29200, vec![2, 4, 5, 0xb4], &[]);
    let mut ack = seg(c4, t, TCP_ACK, CLIENT_ISN + 1, TARGET_ISN + 1, 64256, vec![], &[]);
    ack.src_mac = synack.dst_mac;
    ack.dst_mac = synack.src_mac;
    // The gate builds it: IP id 0, as Linux's own segments.
    ack.ip_id = 0;
    run_rows(
        &mut g,
        Program::Internal,
        vec![Row {
            name: "SYN/ACK of a target without options",
            input: synack.build(),
            action: XDP_TX,
            reason: reason::INTERNAL_SPLICED,
            out: Out::Exact(ack.build()),
        }],
    );
    let ct = g.gate.splice(&plain.client_key::<u32>()).expect("map").expect("entry");
    let tc = g.gate.splice(&plain.target_key::<u32>()).expect("map").expect("entry");
    assert_eq!((tc.wnd_shl, tc.wnd_shr, ct.wnd_shl, ct.wnd_shr), (0, GATEWAY_WS, 7, 0), "window rescaling");
    assert_eq!((tc.ts_shift, ct.ts_shift), (0, 0), "no timestamps to shift");
    let v = (VIP, VPORT);
    run(
        &mut g,
        vec![
            rewritten(
                "client window to an unscaling target",
                seg(c4, v, TCP_ACK, CLIENT_ISN + 1, COOKIE + 1, 100, ts(6000, COOKIE_TS), &[]),
                seg(c4, t, TCP_ACK, CLIENT_ISN + 1, TARGET_ISN + 1, 12800, ts(6000, COOKIE_TS), &[]),
                Program::Edge,
            ),
            rewritten(
                "unscaled target window to the client",
                seg(t, c4, TCP_ACK, TARGET_ISN + 1, CLIENT_ISN + 1, 29200, vec![], &[]),
                seg(v, c4, TCP_ACK, COOKIE + 1, CLIENT_ISN + 1, 229, vec![], &[]),
                Program::Internal,
            ),
        ],
    );
}

/// A router on the target's side, and one on the client's.
const INTERNAL_ROUTER: [u8; 4] = [10, 99, 0, 254];
const EDGE_ROUTER: [u8; 4] = [10, 0, 0, 254];

#[test]
fn icmp_errors_about_spliced_segments_are_translated() {
    let mut g = gate();
    let mut events = Events::take(g.gate.ebpf_mut()).expect("event ring");
    established(&mut g, 40005);
    let (c, v, t) = ((CLIENT, 40005), (VIP, VPORT), (TARGET, TPORT));
    let data = [0x5a; 1000];
    // A client segment as the client sent it and as the splice forwarded
    // it; a target segment likewise. The quoted options and window keep
    // their forwarded values (nobody reads them), so the segments the
    // translated errors must quote carry those.
    let forwarded =
        seg(c, t, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, TARGET_ISN + 1, 1000, ts(6000, TARGET_TS + 5), &data).build();
    let as_client_sent =
        seg(c, v, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, COOKIE + 1, 1000, ts(6000, TARGET_TS + 5), &data).build();
    let delivered = seg(v, c, TCP_ACK, COOKIE + 1, CLIENT_ISN + 1, 4000, ts(COOKIE_TS + 7, 6000), &data).build();
    let as_target_sent =
        seg(t, c, TCP_ACK, TARGET_ISN + 1, CLIENT_ISN + 1, 4000, ts(COOKIE_TS + 7, 6000), &data).build();
    let full = 576 - 28;
    let translated = |name, program, input: IcmpFrame, want: IcmpFrame| {
        let row = Row {
            name,
            input: input.build(),
            action: XDP_PASS,
            reason: reason::ICMP_TRANSLATED_KERNEL,
            out: Out::Exact(want.build()),
        };
        (program, row)
    };
    run(
        &mut g,
        vec![
            translated(
                "fragmentation needed about a client segment, ports and SEQ quoted",
                Program::Internal,
                IcmpFrame::frag_needed(INTERNAL_ROUTER, CLIENT, 1280, &forwarded, 28),
                IcmpFrame::frag_needed(VIP, CLIENT, 1280, &as_client_sent, 28),
            ),
            translated(
                "fragmentation needed about a client segment, 548 bytes quoted",
                Program::Internal,
                IcmpFrame::frag_needed(INTERNAL_ROUTER, CLIENT, 1280, &forwarded, full),
                IcmpFrame::frag_needed(VIP, CLIENT, 1280, &as_client_sent, full),
            ),
            translated(
                "fragmentation needed about a target segment",
                Program::Edge,
                IcmpFrame::frag_needed(EDGE_ROUTER, VIP, 1280, &delivered, full),
                IcmpFrame::frag_needed(CLIENT, TARGET, 1280, &as_target_sent, full),
            ),
        ],
    );
    let stranger = seg((TARGET, 22), (CLIENT, 5555), TCP_ACK, 1, 1, 100, vec![], &[]).build();
    run_rows(
        &mut g,
        Program::Internal,
        vec![
            Row {
                name: "an error about a flow that is not spliced",
                input: IcmpFrame::frag_needed(INTERNAL_ROUTER, TARGET, 1280, &stranger, 40).build(),
                action: XDP_PASS,
                reason: reason::INTERNAL_PASS,
                out: Out::Unchanged,
            },
            Row {
                name: "an error about a target segment arriving on the internal side",
                input: IcmpFrame::frag_needed(INTERNAL_ROUTER, VIP, 1280, &delivered, full).build(),
                action: XDP_PASS,
                reason: reason::INTERNAL_PASS,
                out: Out::Unchanged,
            },
        ],
    );
    // On the edge, neither an error about what the splice sent the target
    // nor a VLAN-tagged one (its VLAN's device decides, as for segments)
    // is translated; both go to the transit check (here: for the gateway).
    let mut tagged = IcmpFrame::frag_needed(EDGE_ROUTER, VIP, 1280, &delivered, full).build();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
    run_rows(
        &mut g,
        Program::Edge,
        vec![
            Row {
                name: "an error about a client segment arriving on the edge",
                input: IcmpFrame::frag_needed(EDGE_ROUTER, CLIENT, 1280, &forwarded, 28).build(),
                action: XDP_PASS,
                reason: reason::PASS_NOT_TCP,
                out: Out::Unchanged,
            },
            Row {
                name: "a VLAN-tagged error about a target segment",
                input: tagged,
                action: XDP_PASS,
                reason: reason::PASS_NOT_TCP,
                out: Out::Unchanged,
            },
        ],
    );
    assert!(events.drain().is_empty(), "translating errors tells the control plane nothing");

    // An unreachable target answers the splice's SYN with an error: the
    // splice is refused at once, as by a RST.
    let refused = connecting(&mut g, 40006);
    let syn = seg((CLIENT, 40006), t, TCP_SYN, CLIENT_ISN, 0, 64240, vec![], &[]).build();
    let mut unreachable = IcmpFrame::frag_needed(INTERNAL_ROUTER, CLIENT, 0, &syn, 28);
    unreachable.code = 1;
    // The splice sent nothing to the client yet: an error from the edge is
    // none of its, and refuses nothing.
    let cookie_synack = seg(v, (CLIENT, 40006), TCP_SYN | TCP_ACK, COOKIE, CLIENT_ISN + 1, 65160, vec![], &[]);
    let mut from_edge = IcmpFrame::frag_needed(EDGE_ROUTER, VIP, 0, &cookie_synack.build(), 28);
    from_edge.code = 1;
    run_rows(
        &mut g,
        Program::Edge,
        vec![Row {
            name: "host unreachable from the edge about a connecting flow",
            input: from_edge.build(),
            action: XDP_PASS,
            reason: reason::PASS_NOT_TCP,
            out: Out::Unchanged,
        }],
    );
    run_rows(
        &mut g,
        Program::Internal,
        vec![Row {
            name: "host unreachable about the splice's SYN",
            input: unreachable.build(),
            action: XDP_DROP,
            reason: reason::INTERNAL_TARGET_UNREACHABLE,
            out: Out::Dropped,
        }],
    );
    let ev = events.drain();
    assert_eq!(ev.len(), 1, "one refusal: {ev:?}");
    assert_eq!((ev[0].kind, ev[0].agent_id, ev[0].flow), (EVENT_REFUSED, REFUSED_UNREACHABLE, refused.client));
}

/// Runs `ip` in the calling thread's network namespace (the test gate's).
fn ip(args: &str) {
    let status = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .unwrap_or_else(|e| panic!("running ip {args}: {e}"));
    assert!(status.success(), "ip {args} failed: {status}");
}

#[test]
fn segments_too_big_for_the_next_hop_earn_fragmentation_needed() {
    let mut g = gate();
    established(&mut g, 40007);
    // The target's network behind a 1280-byte link, forwarding on where
    // test runs arrive (loopback), so that the FIB answers with its MTU.
    ip("link set lo up");
    ip("link add ag-mtu type veth peer name ag-mtu-peer");
    ip("link set ag-mtu mtu 1280 up");
    ip("link set ag-mtu-peer up");
    ip("addr add 10.99.0.1/24 dev ag-mtu");
    std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("forwarding on in the test namespace");
    let (c, v, t) = ((CLIENT, 40007), (VIP, VPORT), (TARGET, TPORT));
    let data = [0x11; 1400];
    let big = seg(c, v, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, COOKIE + 1, 1000, vec![], &data);
    let mut error = IcmpFrame::frag_needed(VIP, CLIENT, 1280, &big.build(), 28);
    (error.src_mac, error.dst_mac, error.ip_id) = (big.dst_mac, big.src_mac, 0);
    let mut fragmentable = big.clone();
    fragmentable.frag = 0;
    let mut fragmentable_out = seg(c, t, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, TARGET_ISN + 1, 1000, vec![], &data);
    fragmentable_out.frag = 0;
    run_rows(
        &mut g,
        Program::Edge,
        vec![
            Row {
                name: "1440-byte segment with DF towards a 1280-byte link",
                input: big.build(),
                action: XDP_TX,
                reason: reason::SPLICE_FRAG_NEEDED,
                out: Out::Exact(error.build()),
            },
            Row {
                name: "the same without DF: the kernel fragments it",
                input: fragmentable.build(),
                action: XDP_PASS,
                reason: reason::SPLICE_KERNEL,
                out: Out::Exact(fragmentable_out.build()),
            },
        ],
    );
}

/// The IPv6 twin of [`setup`]: the flow from `cport`, 2001:db8::-mapped
/// addresses (`v6_of`).
fn setup6(cport: u16) -> SpliceSetup {
    let client = FlowKey {
        saddr: v6_words(v6_of(CLIENT)),
        daddr: v6_words(v6_of(VIP)),
        sport: port_field(cport.to_be_bytes()),
        dport: port_field(VPORT.to_be_bytes()),
        family: FAMILY_IPV6,
        proto: IPPROTO_TCP,
        _pad: 0,
    };
    SpliceSetup { client, source_addr: v6_words(v6_of(CLIENT)), target_addr: v6_words(v6_of(TARGET)), ..setup(cport) }
}

/// IPv6 flows go through the splice stage, tail-called from both
/// programs: held while the target's handshake is under way, completed by
/// the target's SYN/ACK, then rewritten both ways.
#[test]
fn ipv6_flows_are_completed_and_spliced_by_the_stage() {
    let mut g = TestGate::new("splice6", &[service(Ipv6Addr::from(v6_of(VIP)), VPORT, RESPONSE_DROP, false)]);
    let mut events = Events::take(g.gate.ebpf_mut()).expect("event ring");
    let mut held = HeldRing::take(g.gate.ebpf_mut()).expect("held ring");
    let flow = setup6(40010);
    let (ct, tc) = flow.connecting::<[u32; 4]>();
    g.gate.set_splice(&flow.target_key::<[u32; 4]>(), &tc).expect("target-side entry");
    g.gate.set_splice(&flow.client_key::<[u32; 4]>(), &ct).expect("client-side entry");
    let (c, v, t) = ((CLIENT, 40010), (VIP, VPORT), (TARGET, TPORT));
    let seg6 = |from, to, flags, seq, ack, window, opts, payload: &[u8]| {
        seg(from, to, flags, seq, ack, window, opts, payload).v6()
    };

    let early = seg6(c, v, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, COOKIE + 1, 502, ts(CLIENT_TS + 1, COOKIE_TS), b"GET /");
    let synack_opts = [
        &[2u8, 4, 5, 0xa0, 4, 2, 8, 10][..],
        &TARGET_TS.to_be_bytes(),
        &CLIENT_TS.to_be_bytes(),
        &[1, 3, 3, TARGET_WS],
    ]
    .concat();
    let crossed = seg6(c, v, TCP_SYN | TCP_ACK, TARGET_ISN, 0, 65160, synack_opts.clone(), &[]);
    let synack = seg6(t, c, TCP_SYN | TCP_ACK, TARGET_ISN, CLIENT_ISN + 1, 65160, synack_opts, &[]);
    // The gate's ACK: hop limit 64, traffic class and flow label 0.
    let mut ack = seg6(c, t, TCP_ACK, CLIENT_ISN + 1, TARGET_ISN + 1, 502, ts(CLIENT_TS, TARGET_TS), &[]);
    ack.src_mac = synack.dst_mac;
    ack.dst_mac = synack.src_mac;
    run_rows(
        &mut g,
        Program::Edge,
        vec![Row {
            name: "IPv6 client data while connecting",
            input: early.build(),
            action: XDP_DROP,
            reason: reason::SPLICE_HOLD,
            out: Out::Dropped,
        }],
    );
    let copies = held.drain();
    assert_eq!(copies.len(), 1, "the IPv6 segment must be held");
    assert_eq!((copies[0].0, &copies[0].1[..]), (flow.client, &early.build()[14..]), "held flow and IPv6 bytes");
    run_rows(
        &mut g,
        Program::Internal,
        vec![
            Row {
                name: "an IPv6 SYN/ACK with the client's 4-tuple on the internal side",
                input: crossed.build(),
                action: XDP_PASS,
                reason: reason::INTERNAL_PASS,
                out: Out::Unchanged,
            },
            Row {
                name: "IPv6 target SYN/ACK",
                input: synack.build(),
                action: XDP_TX,
                reason: reason::INTERNAL_SPLICED,
                out: Out::Exact(ack.build()),
            },
        ],
    );
    let ct = g.gate.splice(&flow.client_key::<[u32; 4]>()).expect("map").expect("client-side entry");
    let tc = g.gate.splice(&flow.target_key::<[u32; 4]>()).expect("map").expect("target-side entry");
    assert_eq!((ct.state, tc.state), (SPLICE_ESTABLISHED, SPLICE_ESTABLISHED), "IPv6 entries established");
    let ev = events.drain();
    assert_eq!(ev.len(), 1, "one event: {ev:?}");
    assert_eq!((ev[0].kind, ev[0].flow, ev[0].server_isn), (EVENT_SPLICED, flow.client, TARGET_ISN));

    let (c_seq, t_seq) = (CLIENT_ISN + 1, TARGET_ISN + 1);
    let request = b"GET / HTTP/1.0\r\n\r\n";
    let answer = b"HTTP/1.0 200 OK\r\n\r\nhello";
    run(
        &mut g,
        vec![
            rewritten(
                "IPv6 client data with timestamps",
                seg6(c, v, TCP_ACK | TCP_PSH, c_seq, COOKIE + 1, 1000, ts(6000, COOKIE_TS + 5), request),
                seg6(c, t, TCP_ACK | TCP_PSH, c_seq, TARGET_ISN + 1, 1000, ts(6000, TARGET_TS + 5), request),
                Program::Edge,
            ),
            rewritten(
                "IPv6 client ACK with SACK blocks",
                seg6(
                    c,
                    v,
                    TCP_ACK,
                    c_seq + 18,
                    COOKIE + 1,
                    999,
                    [ts(6001, COOKIE_TS + 6), sack(&[(COOKIE + 3001, COOKIE + 4001)])].concat(),
                    &[],
                ),
                seg6(
                    c,
                    t,
                    TCP_ACK,
                    c_seq + 18,
                    TARGET_ISN + 1,
                    999,
                    [ts(6001, TARGET_TS + 6), sack(&[(TARGET_ISN + 3001, TARGET_ISN + 4001)])].concat(),
                    &[],
                ),
                Program::Edge,
            ),
            rewritten(
                "IPv6 target data, its window rescaled",
                seg6(t, c, TCP_ACK | TCP_PSH, t_seq, c_seq + 18, 1000, ts(TARGET_TS + 7, 6001), answer),
                seg6(v, c, TCP_ACK | TCP_PSH, COOKIE + 1, c_seq + 18, 4000, ts(COOKIE_TS + 7, 6001), answer),
                Program::Internal,
            ),
        ],
    );
    let ct = g.gate.splice(&flow.client_key::<[u32; 4]>()).expect("map").expect("client-side entry");
    assert_eq!(ct.packets, 2, "client-side packets");
    // The held payload counts too (`bytes` counted it while connecting).
    assert_eq!(ct.bytes, 5 + (40 + 32 + 18) + (40 + 44), "client-side bytes (IPv6 packet lengths)");
}

#[test]
fn ipv6_segments_too_big_for_the_next_hop_earn_packet_too_big() {
    let mut g = TestGate::new("splice6-mtu", &[service(Ipv6Addr::from(v6_of(VIP)), VPORT, RESPONSE_DROP, false)]);
    let flow = setup6(40011);
    let (mut ct, mut tc) = flow.connecting::<[u32; 4]>();
    complete(&mut ct, &mut tc, &TargetAnswer { isn: TARGET_ISN, wscale: TARGET_WS, tsval: Some(TARGET_TS) });
    g.gate.set_splice(&flow.target_key::<[u32; 4]>(), &tc).expect("target-side entry");
    g.gate.set_splice(&flow.client_key::<[u32; 4]>(), &ct).expect("client-side entry");
    // As the IPv4 test: the target's network behind a 1280-byte link.
    ip("link set lo up");
    ip("link add ag-mtu6 type veth peer name ag-mtu6-peer");
    ip("link set ag-mtu6 mtu 1280 up");
    ip("link set ag-mtu6-peer up");
    ip(&format!("addr add {}/120 dev ag-mtu6 nodad", Ipv6Addr::from(v6_of([10, 99, 0, 1]))));
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").expect("IPv6 forwarding on in the test namespace");
    let (c, v, t) = ((CLIENT, 40011), (VIP, VPORT), (TARGET, TPORT));
    let data = [0x11; 1400];
    let big = seg(c, v, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, COOKIE + 1, 1000, vec![], &data).v6();
    let fits = seg(c, v, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, COOKIE + 1, 1000, vec![], &data[..1200]).v6();
    let fits_out = seg(c, t, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, TARGET_ISN + 1, 1000, vec![], &data[..1200]).v6();
    run_rows(
        &mut g,
        Program::Edge,
        vec![
            Row {
                name: "1460-byte IPv6 segment towards a 1280-byte link",
                input: big.build(),
                action: XDP_TX,
                reason: reason::SPLICE_FRAG_NEEDED,
                out: Out::Exact(packet_too_big(v6_of(VIP), v6_of(CLIENT), 1280, &big.build())),
            },
            Row {
                name: "1260-byte IPv6 segment through the same link",
                input: fits.build(),
                action: XDP_PASS,
                reason: reason::SPLICE_KERNEL,
                out: Out::Exact(fits_out.build()),
            },
        ],
    );
}

/// The IPv6 twin of [`established`].
fn established6(g: &mut TestGate, cport: u16) -> SpliceSetup {
    let s = setup6(cport);
    let (mut ct, mut tc) = s.connecting::<[u32; 4]>();
    complete(&mut ct, &mut tc, &TargetAnswer { isn: TARGET_ISN, wscale: TARGET_WS, tsval: Some(TARGET_TS) });
    g.gate.set_splice(&s.target_key::<[u32; 4]>(), &tc).expect("target-side entry");
    g.gate.set_splice(&s.client_key::<[u32; 4]>(), &ct).expect("client-side entry");
    s
}

#[test]
fn icmpv6_errors_about_spliced_segments_are_translated() {
    let mut g = TestGate::new("splice6-icmp", &[service(Ipv6Addr::from(v6_of(VIP)), VPORT, RESPONSE_DROP, false)]);
    let mut events = Events::take(g.gate.ebpf_mut()).expect("event ring");
    established6(&mut g, 40012);
    let (c, v, t) = ((CLIENT, 40012), (VIP, VPORT), (TARGET, TPORT));
    let data = [0x5a; 1000];
    let v6 = |f: TcpFrame| f.v6().build();
    // As in the IPv4 test: the quoted options and window keep their
    // forwarded values.
    let forwarded =
        v6(seg(c, t, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, TARGET_ISN + 1, 1000, ts(6000, TARGET_TS + 5), &data));
    let as_client_sent =
        v6(seg(c, v, TCP_ACK | TCP_PSH, CLIENT_ISN + 1, COOKIE + 1, 1000, ts(6000, TARGET_TS + 5), &data));
    let delivered = v6(seg(v, c, TCP_ACK, COOKIE + 1, CLIENT_ISN + 1, 4000, ts(COOKIE_TS + 7, 6000), &data));
    let as_target_sent = v6(seg(t, c, TCP_ACK, TARGET_ISN + 1, CLIENT_ISN + 1, 4000, ts(COOKIE_TS + 7, 6000), &data));
    let macs = (CLIENT_MAC, GATE_MAC);
    let error = |from: [u8; 4], to: [u8; 4], kind: u8, code: u8, packet: &[u8], quote: usize| {
        let rest = if kind == ICMPV6_PKT_TOOBIG { 1280u32.to_be_bytes() } else { [0; 4] };
        let quote = &packet[14..(14 + quote).min(packet.len())];
        icmpv6_error(macs, v6_of(from), v6_of(to), kind, code, rest, quote)
    };
    let translated = |name, program, input: Vec<u8>, want: Vec<u8>| {
        let row = Row { name, input, action: XDP_PASS, reason: reason::ICMP_TRANSLATED_KERNEL, out: Out::Exact(want) };
        (program, row)
    };
    let whole = 1232;
    run(
        &mut g,
        vec![
            translated(
                "packet too big about a client segment, ports and SEQ quoted",
                Program::Internal,
                error(INTERNAL_ROUTER, CLIENT, ICMPV6_PKT_TOOBIG, 0, &forwarded, 48),
                error(VIP, CLIENT, ICMPV6_PKT_TOOBIG, 0, &as_client_sent, 48),
            ),
            translated(
                "packet too big about a client segment, quoted whole",
                Program::Internal,
                error(INTERNAL_ROUTER, CLIENT, ICMPV6_PKT_TOOBIG, 0, &forwarded, whole),
                error(VIP, CLIENT, ICMPV6_PKT_TOOBIG, 0, &as_client_sent, whole),
            ),
            translated(
                "address unreachable about a target segment",
                Program::Edge,
                error(EDGE_ROUTER, VIP, ICMPV6_DEST_UNREACH, 3, &delivered, whole),
                error(CLIENT, TARGET, ICMPV6_DEST_UNREACH, 3, &as_target_sent, whole),
            ),
        ],
    );
    let stranger = v6(seg((TARGET, 22), (CLIENT, 5555), TCP_ACK, 1, 1, 100, vec![], &[]));
    run_rows(
        &mut g,
        Program::Internal,
        vec![
            Row {
                name: "an ICMPv6 error about a flow that is not spliced",
                input: error(INTERNAL_ROUTER, TARGET, ICMPV6_DEST_UNREACH, 3, &stranger, 60),
                action: XDP_PASS,
                reason: reason::INTERNAL_PASS,
                out: Out::Unchanged,
            },
            Row {
                name: "an ICMPv6 error about a target segment arriving on the internal side",
                input: error(INTERNAL_ROUTER, VIP, ICMPV6_PKT_TOOBIG, 0, &delivered, whole),
                action: XDP_PASS,
                reason: reason::INTERNAL_PASS,
                out: Out::Unchanged,
            },
            Row {
                name: "a neighbour solicitation",
                input: icmpv6_error(macs, v6_of(TARGET), v6_of([10, 99, 0, 1]), 135, 0, [0; 4], &[0; 16]),
                action: XDP_PASS,
                reason: reason::INTERNAL_PASS,
                out: Out::Unchanged,
            },
        ],
    );
    assert!(events.drain().is_empty(), "translating errors tells the control plane nothing");

    // An unreachable target answers the splice's SYN with an error: the
    // splice is refused at once, as over IPv4.
    let refused = setup6(40013);
    let (ct, tc) = refused.connecting::<[u32; 4]>();
    g.gate.set_splice(&refused.target_key::<[u32; 4]>(), &tc).expect("target-side entry");
    g.gate.set_splice(&refused.client_key::<[u32; 4]>(), &ct).expect("client-side entry");
    let syn = v6(seg((CLIENT, 40013), t, TCP_SYN, CLIENT_ISN, 0, 64240, vec![], &[]));
    let too_big = error(INTERNAL_ROUTER, CLIENT, ICMPV6_PKT_TOOBIG, 0, &syn, 60);
    run_rows(
        &mut g,
        Program::Internal,
        vec![
            Row {
                name: "packet too big about the splice's SYN refuses nothing",
                input: too_big,
                action: XDP_DROP,
                reason: reason::SPLICE_UNEXPECTED,
                out: Out::Dropped,
            },
            Row {
                name: "address unreachable about the splice's SYN",
                input: error(INTERNAL_ROUTER, CLIENT, ICMPV6_DEST_UNREACH, 3, &syn, 60),
                action: XDP_DROP,
                reason: reason::INTERNAL_TARGET_UNREACHABLE,
                out: Out::Dropped,
            },
        ],
    );
    let ev = events.drain();
    assert_eq!(ev.len(), 1, "one refusal: {ev:?}");
    assert_eq!((ev[0].kind, ev[0].agent_id, ev[0].flow), (EVENT_REFUSED, REFUSED_UNREACHABLE, refused.client));
}
