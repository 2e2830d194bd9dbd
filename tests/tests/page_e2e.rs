//! `page` mode end to end, through the gate and `ackgate run`: the decoy a
//! refused client reaches, and what such a client can leave behind on the
//! gateway.
//!
//! - A segment arriving while SYNPROXY's handshake with the responder is
//!   under way (the client's first data, duplicated on the client's
//!   egress so that both copies arrive in one receive batch) must not
//!   open a second backend handshake: one SYN/ACK reaches the client, the
//!   request is answered once the client retransmits it, and the drop is
//!   counted.
//! - A client that vanishes after its handshake sees nothing but the
//!   responder's FIN (no ACK or SYN/ACK a real server would not send),
//!   and leaves a conntrack entry whose established timeout is the
//!   responder's own bound, not five days, and no socket retransmitting
//!   past the configured bounds.
//! - The decoy answers as the nginx it imitates: a TLS service refuses
//!   ClientHellos with nginx's alert and plain HTTP with nginx's 497 page,
//!   an HTTP service serves the page file as nginx's static error page and
//!   answers garbage with a 400, each within the configured timeouts.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use ackgate_common::net::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN};
use ackgate_tests::daemons::{Daemon, eventually};
use ackgate_tests::deployment::{PORT, Setup, WAIT, start_wait};
use ackgate_tests::packet::TcpFrame;
use ackgate_tests::stamper::{raw_tcp_socket, send_ip};
use ackgate_tests::topology::Ns;

/// The raw client's port.
const SPORT: u16 = 40321;
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// `ackgate run` for a `page` service, up with its responder.
fn start(tag: &str, extra_gateway: &str, extra_service: &str) -> (Setup, Daemon) {
    let s = Setup::with_gateway(tag, "page", 3000, "", extra_gateway, extra_service);
    let mut gateway = Daemon::start(s.ackgate(&["run"]), "ackgate run", s.dir.join("gateway.log"));
    gateway.wait_for_log("page responder up", start_wait());
    (s, gateway)
}

/// A TCP segment the raw client received from the service.
#[derive(Clone, Debug)]
struct Segment {
    flags: u8,
    seq: u32,
    /// TSval, when the segment has a timestamp option.
    tsval: Option<u32>,
    payload: Vec<u8>,
}

/// A client speaking TCP by hand from the client namespace (its own
/// kernel's resets dropped), so that it can repeat a segment, or vanish.
struct RawClient {
    fd: OwnedFd,
    client: [u8; 4],
    vip: [u8; 4],
    isn: u32,
    cookie: u32,
    ts_echo: u32,
}

impl RawClient {
    /// Sends the SYN and takes the gate's cookie SYN/ACK.
    fn connect(s: &Setup) -> Self {
        s.nft(
            Ns::Client,
            &format!(
                "table ip agpgraw {{\n chain out {{\n  type filter hook output priority 0\n  tcp sport {SPORT} tcp flags rst drop\n }}\n}}\n"
            ),
        );
        let fd = s.topo.run_in(Ns::Client, || raw_tcp_socket().unwrap_or_else(|e| panic!("raw socket: {e}")));
        let mut c = Self {
            fd,
            client: s.topo.client_addr.octets(),
            vip: s.topo.edge_addr.octets(),
            isn: 0x1000_0000,
            cookie: 0,
            ts_echo: 0,
        };
        let mut syn = TcpFrame::new(c.client, SPORT, c.vip, PORT, TCP_SYN).linux_syn_options();
        syn.seq = c.isn;
        send_ip(&c.fd, &syn).unwrap_or_else(|e| panic!("sending the SYN: {e}"));
        let got = c.receive(Instant::now() + WAIT, |seg| seg.flags & TCP_SYN != 0);
        let synack = got.last().cloned().unwrap_or_else(|| panic!("no SYN/ACK to the SYN: {got:?}"));
        c.cookie = synack.seq;
        c.ts_echo = synack.tsval.unwrap_or_else(|| panic!("the SYN/ACK has no timestamp: {synack:?}"));
        c
    }

    /// A segment of the flow with `flags` and `payload`, at the first
    /// sequence number after the SYN.
    fn segment(&self, flags: u8, payload: &[u8]) -> TcpFrame {
        let mut f = TcpFrame::new(self.client, SPORT, self.vip, PORT, flags);
        f.seq = self.isn.wrapping_add(1);
        f.ack = self.cookie.wrapping_add(1);
        f.window = 502;
        // NOP NOP TS(val 2, ecr the SYN/ACK's)
        let [a, b, c, d] = self.ts_echo.to_be_bytes();
        f.tcp_options = vec![1, 1, 8, 10, 0, 0, 0, 2, a, b, c, d];
        f.payload = payload.to_vec();
        f
    }

    fn send(&self, frame: &TcpFrame) {
        send_ip(&self.fd, frame).unwrap_or_else(|e| panic!("sending a segment: {e}"));
    }

    /// The service's segments to this client until one satisfies `stop`
    /// (included) or `deadline` passes.
    fn receive(&self, deadline: Instant, mut stop: impl FnMut(&Segment) -> bool) -> Vec<Segment> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            // SAFETY: a valid buffer; the socket has a receive timeout.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            let p = &buf[..n];
            let Some(ihl) = p.first().map(|b| usize::from(b & 0x0f) * 4) else { continue };
            let Some(t) = p.get(ihl..) else { continue };
            if t.len() < 20 || p[12..16] != self.vip || u16::from_be_bytes([t[2], t[3]]) != SPORT {
                continue;
            }
            let doff = usize::from(t[12] >> 4) * 4;
            let options = t.get(20..doff).unwrap_or_default();
            let tsval = options
                .windows(10)
                .find(|w| w[0] == 8 && w[1] == 10)
                .map(|w| u32::from_be_bytes([w[2], w[3], w[4], w[5]]));
            let seg = Segment {
                flags: t[13],
                seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                tsval,
                payload: t.get(doff..).unwrap_or_default().to_vec(),
            };
            let done = stop(&seg);
            got.push(seg);
            if done {
                break;
            }
        }
        got
    }
}

fn synacks(segments: &[Segment]) -> usize {
    segments.iter().filter(|s| s.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK).count()
}

/// The conntrack entry of the raw client's flow in the gateway's
/// namespace: (state, seconds left), if there is one.
fn conntrack_entry(s: &Setup) -> Option<(String, u64)> {
    let table = s
        .topo
        .run_in(Ns::Gateway, || std::fs::read_to_string("/proc/thread-self/net/nf_conntrack").unwrap_or_default());
    let want = format!("src={} dst={} sport={SPORT} dport={PORT} ", s.topo.client_addr, s.topo.edge_addr);
    table.lines().find(|l| l.contains(&want)).map(|l| {
        // "ipv4 2 tcp 6 <timeout> <STATE> src=..."
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(5).copied().unwrap_or_default().to_owned(), f.get(4).and_then(|t| t.parse().ok()).unwrap_or(0))
    })
}

/// The gateway's sockets to the raw client (`ss` states).
fn sockets_to_client(s: &Setup) -> Vec<String> {
    let peer = format!("{}:{SPORT}", s.topo.client_addr);
    let out = s.topo.cmd_ok(Ns::Gateway, &["ss", "-tanH"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(peer.as_str()))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

/// SYNPROXY's successful cookie checks in the gateway's namespace: each
/// one opened a handshake with the responder.
fn synproxy_cookies_valid(s: &Setup) -> u64 {
    let stat = s
        .topo
        .run_in(Ns::Gateway, || std::fs::read_to_string("/proc/thread-self/net/stat/synproxy").unwrap_or_default());
    // One line per CPU: entries syn_received cookie_invalid cookie_valid ...
    stat.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum()
}

#[test]
fn a_segment_during_the_backend_handshake_opens_no_second_one() {
    let (s, _gateway) = start("pgdup", "", "");
    let client = RawClient::connect(&s);
    // Every data segment the client sends leaves twice in one go (the
    // copy from within the transmit path), so both copies reach the
    // gateway in one receive batch: the second arrives while SYNPROXY's
    // SYN to the responder still waits in the loopback backlog.
    s.nft(
        Ns::Client,
        &format!(
            "table netdev agpgdup {{\n chain egress {{\n  type filter hook egress device \"{0}\" priority 0\n  \
             meta mark 0 tcp dport {PORT} tcp flags & (syn | ack | psh) == ack | psh meta mark set 1 dup to \"{0}\"\n }}\n}}\n",
            s.topo.client_if
        ),
    );
    let data = client.segment(TCP_ACK | TCP_PSH, REQUEST);
    client.send(&data);
    // SYNPROXY took the first copy for the handshake's ACK (and its data
    // is lost with it), so once its handshake with the responder is done
    // (the flow is established in conntrack) the client sends the request
    // again, as a client retransmits what was not acknowledged.
    eventually(WAIT, "the flow established through SYNPROXY", || {
        conntrack_entry(&s).filter(|(state, _)| state == "ESTABLISHED")
    });
    s.topo.cmd_ok(Ns::Client, &["nft", "delete", "table", "netdev", "agpgdup"]);
    client.send(&data);
    let mut answer = Vec::new();
    let seen = client.receive(Instant::now() + WAIT, |seg| {
        answer.extend_from_slice(&seg.payload);
        seg.flags & TCP_SYN != 0 || seg.flags & TCP_FIN != 0
    });
    assert_eq!(synacks(&seen), 0, "a second SYN/ACK reached the client: {seen:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "the retransmitted request must be answered: {answer:?}");
    assert_eq!(synproxy_cookies_valid(&s), 1, "one handshake with the responder");
    let status = s.json(&["status", "--json"]);
    assert!(status["page_dropped"]["early_segments"].as_u64() >= Some(1), "the dropped copy must be counted: {status}");
}

#[test]
fn a_vanished_client_leaves_nothing_behind_for_long() {
    // Short decoy bounds: the responder gives up a silent connection after
    // a second and its unacknowledged FIN after two.
    let (header, send) = (Duration::from_millis(1000), Duration::from_millis(2000));
    let (s, _gateway) = start(
        "pgvan",
        &format!("page_header_timeout_ms = {}\npage_send_timeout_ms = {}", header.as_millis(), send.as_millis()),
        "",
    );
    let client = RawClient::connect(&s);
    let opened = Instant::now();
    client.send(&client.segment(TCP_ACK, b""));
    // The responder's conntrack entry: its established timeout is the
    // responder's longest wait (here the default keep-alive, 75 s) plus
    // 30 s, not nf_conntrack_tcp_timeout_established (five days).
    let (state, left) =
        eventually(WAIT, "the flow's conntrack entry", || conntrack_entry(&s).filter(|(st, _)| st == "ESTABLISHED"));
    assert!(left <= 105, "conntrack keeps the decoy's flow {state} for {left} s");
    // The client is gone from here on: it answers nothing.
    let bound = header + send + Duration::from_secs(5);
    let mut states_seen = Vec::new();
    let gone = loop {
        let now = sockets_to_client(&s);
        if now.is_empty() {
            break opened.elapsed();
        }
        states_seen.extend(now.iter().filter(|st| !states_seen.contains(*st)).cloned().collect::<Vec<_>>());
        assert!(
            opened.elapsed() < bound,
            "a socket to the vanished client is still there after {:?} ({now:?}; seen {states_seen:?})",
            opened.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // What reached the client meanwhile: the responder's FIN (and its
    // retransmissions), nothing else (a server sends nothing after its
    // handshake until it has something to say).
    let seen = client.receive(Instant::now() + Duration::from_millis(300), |_| false);
    assert!(
        !seen.is_empty() && seen.iter().all(|seg| seg.flags & TCP_FIN != 0 && seg.flags & TCP_SYN == 0),
        "the client must see the responder's FIN and nothing else: {seen:?}"
    );
    assert!(
        states_seen.iter().any(|st| st == "FIN-WAIT-1"),
        "the responder's close should wait for its FIN's acknowledgement first: {states_seen:?}"
    );
    assert!(gone >= header, "the socket went before the header timeout ({gone:?})");
    eprintln!("the socket to the vanished client went {gone:?} after the handshake ({states_seen:?})");
    // What conntrack keeps of the flow now is a closing entry, bounded by
    // the kernel's closing timeouts (fin_wait, 120 s).
    if let Some((state, left)) = conntrack_entry(&s) {
        eprintln!("its conntrack entry then: {state}, {left} s left");
        assert_ne!(state, "ESTABLISHED", "the decoy's flow is over; conntrack says {state} for {left} s");
        assert!(left <= 120, "conntrack keeps the ended flow {state} for {left} s");
    }
}

/// What a connection from the client namespace to the service got: the
/// bytes, and when the service closed (None: it did not within `within`).
fn fetch(s: &Setup, send: &[u8], within: Duration) -> (Vec<u8>, Option<Duration>) {
    let to = SocketAddr::new(s.topo.edge_addr.into(), PORT);
    s.topo.run_in(Ns::Client, || {
        let start = Instant::now();
        let mut c = TcpStream::connect_timeout(&to, WAIT).expect("connecting to the service");
        c.write_all(send).expect("sending");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = within.saturating_sub(start.elapsed());
            if left.is_zero() {
                return (got, None);
            }
            c.set_read_timeout(Some(left)).expect("read timeout");
            match c.read(&mut buf) {
                Ok(0) => return (got, Some(start.elapsed())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the answer: {e}"),
            }
        }
    })
}

#[test]
fn a_tls_decoy_refuses_handshakes_as_nginx() {
    let header = Duration::from_millis(1500);
    let (s, _gateway) = start("pgtls", &format!("page_header_timeout_ms = {}", header.as_millis()), "decoy = \"tls\"");
    let hello = ackgate_tests::decoy::rustls_hello("intranet.example", &[&rustls::version::TLS13]);
    let (alert, closed) = fetch(&s, &hello, WAIT);
    assert_eq!(alert, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70], "nginx's fatal unrecognized_name alert");
    assert!(closed.is_some(), "the connection must close after the alert");
    let (page, _) = fetch(&s, b"GET / HTTP/1.1\r\nHost: intranet.example\r\n\r\n", WAIT);
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 400 Bad Request\r\nServer: nginx\r\n"), "{page}");
    assert!(page.contains("<center>The plain HTTP request was sent to HTTPS port</center>"), "{page}");
    let (nothing, closed) = fetch(&s, b"", WAIT);
    assert!(nothing.is_empty(), "a silent client gets no answer: {nothing:?}");
    let closed = closed.expect("the decoy must close a silent connection");
    assert!(
        closed >= header && closed < header + Duration::from_secs(2),
        "closed after {closed:?}, the header timeout is {header:?}"
    );
}

#[test]
fn an_http_decoy_serves_the_page_file_and_refuses_garbage_as_nginx() {
    let dir = ackgate_tests::TempDir::new("pgfile");
    let file = ackgate_tests::decoy::page_file(&dir.0);
    let (s, _gateway) = start("pgfile", "", &format!("page_file = \"{}\"", file.display()));
    let body = std::fs::read(&file).expect("page file");
    let (answer, _) = fetch(&s, b"GET /admin HTTP/1.0\r\n\r\n", WAIT);
    let text = String::from_utf8_lossy(&answer);
    // The page file's ETag: its modification time and size, in hex.
    let etag = format!("ETag: \"{:x}-{:x}\"\r\n", 1_700_000_000, body.len());
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\nServer: nginx\r\nDate: "), "{text}");
    assert!(
        text.contains(&format!(
            "Content-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n{etag}\r\n",
            body.len()
        )),
        "{text}"
    );
    assert!(answer.ends_with(&body), "the page file is the body: {text}");
    let (answer, _) = fetch(&s, b"\x16\x03\x01\x00\x05hello", WAIT);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "garbage gets nginx's 400: {text}");
    assert!(
        text.contains("Connection: close\r\n")
            && text.ends_with("<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    );
}
