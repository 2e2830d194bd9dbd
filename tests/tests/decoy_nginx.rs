//! The `page` decoy against the server it imitates: a stock nginx 1.22
//! (`server_tokens off`, `location / { return 404; }`, `error_page 404` to
//! a file, and a `listen ... ssl` server with `ssl_reject_handshake on`
//! and the protocols Debian's nginx.conf enables, TLS 1.0 to 1.3)
//! and the decoy run side by side in one namespace with the same
//! timeouts. Each probe goes to both; the bytes that come back (their
//! `Date` aside), how the connection ends (FIN, reset, still open) and
//! when must agree.

use std::net::SocketAddr;
use std::time::Duration;

use ackgate_gateway::page::{Decoy, NotFound, PageService, Timeouts};
use ackgate_tests::decoy::{self, End, Hello, Netns, Nginx, Seen, Step, ext, record, rustls_hello};

/// Ports of nginx's three servers; the decoy's are these plus 1000.
const HTTP: u16 = 8080;
const FILE: u16 = 8081;
const TLS: u16 = 8443;
const DECOY: u16 = 1000;

/// Short, distinct timeouts, set alike in nginx and the decoy, so that
/// which one ended a connection shows in when it ended.
const TIMEOUTS: Timeouts = Timeouts {
    header: Duration::from_millis(2000),
    keepalive: Duration::from_millis(3000),
    send: Duration::from_millis(4000),
    lingering: Duration::from_millis(1000),
    lingering_time: Duration::from_millis(2500),
};
/// How long a probe watches when it expects an answer at once.
const QUICK: Duration = Duration::from_millis(700);
/// How long a probe watches when a timeout should end it.
const LONG: Duration = Duration::from_millis(4500);
/// How far apart nginx's and the decoy's ends may be.
const SLACK: Duration = Duration::from_millis(400);

fn nginx_conf(page_dir: &str) -> String {
    format!(
        "server_tokens off;\n  client_header_timeout 2s;\n  keepalive_timeout 3s;\n  send_timeout 4s;\n  \
         lingering_timeout 1s;\n  lingering_time 2500ms;\n  types {{ text/html html; }}\n  \
         default_type application/octet-stream;\n  \
         server {{ listen 127.0.0.1:{HTTP}; location / {{ return 404; }} }}\n  \
         server {{ listen 127.0.0.1:{FILE}; root {page_dir}; error_page 404 /404.html; \
         location = /404.html {{ internal; }} location / {{ return 404; }} }}\n  \
         ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;\n  \
         server {{ listen 127.0.0.1:{TLS} ssl; ssl_reject_handshake on; }}"
    )
}

struct Case {
    name: String,
    port: u16,
    steps: Vec<Step>,
    watch: Duration,
}

fn case(name: &str, port: u16, bytes: &[u8]) -> Case {
    Case { name: name.to_owned(), port, steps: vec![Step::Send(bytes.to_vec())], watch: QUICK }
}

fn timed(name: &str, port: u16, steps: Vec<Step>) -> Case {
    Case { name: name.to_owned(), port, steps, watch: LONG }
}

fn http_cases() -> Vec<Case> {
    let chrome =
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let msie6 = "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)";
    let long_uri = |n: usize| format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(n));
    let big_header = |n: usize| format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(n));
    let many_headers = |count: usize| {
        let mut r = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..count {
            r.push_str(&format!("X-H{i}: {}\r\n", "c".repeat(1000)));
        }
        r.push_str("\r\n");
        r
    };
    let mut cases: Vec<Case> = [
        ("HTTP/1.1 GET", "GET /secret HTTP/1.1\r\nHost: example.com\r\n\r\n".to_owned()),
        ("HTTP/1.0 GET", "GET /secret HTTP/1.0\r\n\r\n".into()),
        ("HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".into()),
        ("HTTP/1.1 close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()),
        ("no Host", "GET / HTTP/1.1\r\n\r\n".into()),
        ("garbage", "hello\r\n\r\n".into()),
        ("TLS bytes", "\x16\x03\x01\x00\x05hello".into()),
        ("HTTP/0.9", "GET /\r\n".into()),
        ("HTTP/0.9 POST", "POST /\r\n".into()),
        ("HTTP/2.0 line", "GET / HTTP/2.0\r\n\r\n".into()),
        ("HEAD", "HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("HEAD, bad URI", "HEAD /%zz HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("POST with body", "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".into()),
        ("header without colon", "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".into()),
        ("header name only", "GET / HTTP/1.1\r\nHost: x\r\nX-Empty\r\n\r\n".into()),
        ("underscore header", "GET / HTTP/1.1\r\nHost: x\r\nX_Under: 1\r\n\r\n".into()),
        ("NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n".into()),
        ("LF only", "GET /x HTTP/1.1\nHost: x\n\n".into()),
        ("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("lowercase method", "get / HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("unknown method", "FOO_BAR / HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into()),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into()),
        ("bad Host", "GET / HTTP/1.1\r\nHost: a..b\r\n\r\n".into()),
        ("Host with slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n".into()),
        ("absolute URI", "GET http://example.com/x HTTP/1.1\r\nHost: y\r\n\r\n".into()),
        ("absolute URI, bad host", "GET http://a..b/ HTTP/1.1\r\nHost: y\r\n\r\n".into()),
        ("absolute URI, no path", "GET http://example.com:8080 HTTP/1.1\r\nHost: y\r\n\r\n".into()),
        ("dot segments above root", "GET /../x HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("dot segments", "GET /a/./b/../c HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("bad escape", "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("escaped NUL", "GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("escaped dots", "GET /%2e%2e/x HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("control byte in URI", "GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into()),
        ("bad chunk", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".into()),
        ("gzip transfer coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".into()),
        (
            "chunked and length",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc".into(),
        ),
        ("HTTP/1.0 chunked", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into()),
        ("bad length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".into()),
        ("two lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na".into()),
        ("CONNECT authority", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n".into()),
        ("CONNECT path", "CONNECT / HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("TRACE", "TRACE / HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("Chrome", format!("GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: {chrome}\r\n\r\n")),
        ("Chrome, bad request", format!("GET /%zz HTTP/1.1\r\nHost: x\r\nUser-Agent: {chrome}\r\n\r\n")),
        ("MSIE 6 POST", format!("POST / HTTP/1.1\r\nHost: x\r\nUser-Agent: {msie6}\r\nContent-Length: 0\r\n\r\n")),
        (
            "pipelined",
            "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "pipelined after body",
            "POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcdeGET /2 HTTP/1.0\r\n\r\n".into(),
        ),
        (
            "Expect 100-continue",
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok".into(),
        ),
        ("URI 8100", long_uri(8100)),
        ("URI 8200", long_uri(8200)),
        ("URI 9000", long_uri(9000)),
        ("header 8100", big_header(8100)),
        ("header 8200", big_header(8200)),
        ("31 KiB of headers", many_headers(31)),
        ("40 KiB of headers", many_headers(40)),
        ("CRLFs first", format!("{}GET / HTTP/1.0\r\n\r\n", "\r\n".repeat(600))),
        ("400 then more", "hello\r\n\r\nmore bytes after the error".into()),
    ]
    .into_iter()
    .map(|(name, req)| case(name, HTTP, req.as_bytes()))
    .collect();
    cases.extend([
        timed("silent", HTTP, vec![]),
        timed("half a request line", HTTP, vec![Step::Send(b"GET / HT".to_vec())]),
        timed("request line, then silence", HTTP, vec![Step::Send(b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec())]),
        timed(
            "trickled header",
            HTTP,
            vec![
                Step::Send(b"GET / HTTP/1.1\r\n".to_vec()),
                Step::Pause(Duration::from_millis(1200)),
                Step::Send(b"Host: x\r\n".to_vec()),
            ],
        ),
        timed("keep-alive, idle", HTTP, vec![Step::Send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())]),
        timed(
            "keep-alive, then half a request",
            HTTP,
            vec![
                Step::Send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
                Step::Pause(Duration::from_millis(300)),
                Step::Send(b"GET /2 HT".to_vec()),
            ],
        ),
        timed(
            "body still coming",
            HTTP,
            vec![Step::Send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc".to_vec())],
        ),
        timed(
            "lingering after 400",
            HTTP,
            vec![
                Step::Send(b"hello\r\n\r\n".to_vec()),
                Step::Pause(Duration::from_millis(300)),
                Step::Send(b"still talking".to_vec()),
            ],
        ),
        timed(
            "request and FIN",
            HTTP,
            vec![Step::Send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()), Step::ShutWrite],
        ),
        timed("partial request and FIN", HTTP, vec![Step::Send(b"GET / HTTP/1.1\r\n".to_vec()), Step::ShutWrite]),
    ]);
    cases
}

fn file_cases() -> Vec<Case> {
    [
        ("file: HTTP/1.1", &b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        ("file: HTTP/1.0", b"GET /x HTTP/1.0\r\n\r\n"),
        ("file: HEAD", b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("file: HTTP/0.9", b"GET /x\r\n"),
        ("file: bad chunk", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        ("file: 400", b"hello\r\n\r\n"),
        ("file: the page's own path", b"GET /404.html HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]
    .into_iter()
    .map(|(name, req)| case(name, FILE, req))
    .collect()
}

fn tls_cases() -> Vec<Case> {
    let named = Hello::tls12("example.com");
    let tls13 = Hello::tls13("example.com");
    let versioned = |legacy: u16| Hello {
        legacy_version: legacy,
        suites: vec![0x002f, 0x0035, 0x000a],
        extensions: None,
        ..Hello::tls12("x")
    };
    let trailing = |h: &Hello| {
        let mut m = h.message();
        m.extend_from_slice(&[0x14, 0, 0, 0]);
        record(22, 0x0301, &m)
    };
    let split = |h: &Hello, at: usize| {
        let m = h.message();
        [record(22, 0x0301, &m[..at]), record(22, 0x0301, &m[at..])].concat()
    };
    let mut cases: Vec<Case> = [
        ("rustls TLS 1.3", rustls_hello("example.com", &[&rustls::version::TLS13])),
        ("TLS 1.2, named", named.record()),
        ("TLS 1.2, no SNI", named.clone().without_ext(0).record()),
        ("TLS 1.3, named", tls13.record()),
        ("TLS 1.3, no SNI", tls13.clone().without_ext(0).record()),
        ("TLS 1.0", versioned(0x0301).record()),
        ("TLS 1.1", versioned(0x0302).record()),
        ("SSL 3", versioned(0x0300).record()),
        ("version 2.0", versioned(0x0200).record()),
        ("version 3.5", versioned(0x0305).record()),
        ("supported_versions, nothing known", named.clone().with_ext(43, ext::list8_16(&[0x7f1c])).record()),
        ("supported_versions, malformed", named.clone().with_ext(43, vec![3, 3, 4]).record()),
        ("TLS 1.3 with SSL 3 legacy", Hello { legacy_version: 0x0300, ..tls13.clone() }.record()),
        ("fallback SCSV", Hello { suites: vec![0xc02f, 0x5600], ..named.clone() }.record()),
        ("fallback SCSV on TLS 1.3", Hello { suites: vec![0x1301, 0x5600], ..tls13.clone() }.record()),
        ("no ciphers", Hello { suites: vec![], ..named.clone() }.record()),
        ("TLS 1.3, no TLS 1.3 suite", Hello { suites: vec![0xc02f], ..tls13.clone() }.record()),
        ("no null compression", Hello { compressions: vec![1], ..named.clone() }.record()),
        ("long session id", Hello { session_id: vec![1; 33], ..named.clone() }.record()),
        ("two SNIs", named.clone().with_ext(0, ext::sni("other.example")).record()),
        ("empty SNI list", named.clone().without_ext(0).with_ext(0, vec![0, 0]).record()),
        ("SNI with NUL", named.clone().without_ext(0).with_ext(0, ext::sni("a\0b")).record()),
        ("SNI of 256 bytes", named.clone().without_ext(0).with_ext(0, ext::sni(&"a".repeat(256))).record()),
        ("SNI with bad chars", named.clone().without_ext(0).with_ext(0, ext::sni("a b/c")).record()),
        ("EMS not empty", named.clone().without_ext(23).with_ext(23, vec![0]).record()),
        ("use_srtp", named.clone().with_ext(14, vec![0, 2, 0, 1, 0]).record()),
        ("renegotiation info", named.clone().with_ext(0xff01, vec![0]).record()),
        ("renegotiation info, a binding", named.clone().with_ext(0xff01, vec![1, 9]).record()),
        ("bad ALPN", named.clone().without_ext(16).with_ext(16, vec![0, 1, 0]).record()),
        ("bad groups", named.clone().without_ext(10).with_ext(10, vec![0, 3, 0, 29, 0]).record()),
        ("max fragment 9", named.clone().with_ext(1, vec![9]).record()),
        ("TLS 1.3, key share without groups", tls13.clone().without_ext(10).record()),
        (
            "TLS 1.3, key share of 31 bytes",
            tls13.clone().without_ext(51).with_ext(51, ext::key_share(&[(29, vec![1; 31])])).record(),
        ),
        (
            "TLS 1.3, key share for a group not offered",
            tls13.clone().without_ext(51).with_ext(51, ext::key_share(&[(30, vec![1; 56])])).record(),
        ),
        ("TLS 1.3, psk not last", tls13.clone().with_ext(41, vec![0, 0, 0, 0]).with_ext(21, vec![0; 4]).record()),
        ("TLS 1.3, empty psk identity", tls13.clone().with_ext(41, vec![0, 6, 0, 0, 0, 0, 0, 0, 0, 0]).record()),
        (
            "TLS 1.3, P-256 share off the curve",
            tls13
                .clone()
                .without_ext(51)
                .with_ext(51, ext::key_share(&[(23, [vec![4], vec![7; 64]].concat())]))
                .record(),
        ),
        (
            "TLS 1.3, compressed P-256 share",
            tls13
                .clone()
                .without_ext(51)
                .with_ext(51, ext::key_share(&[(23, [vec![2], vec![7; 32]].concat())]))
                .record(),
        ),
        (
            "TLS 1.3, P-256 share on the curve",
            tls13
                .clone()
                .without_ext(51)
                .with_ext(
                    51,
                    ext::key_share(&[(
                        23,
                        [
                            vec![4],
                            vec![
                                0x6B, 0x17, 0xD1, 0xF2, 0xE1, 0x2C, 0x42, 0x47, 0xF8, 0xBC, 0xE6, 0xE5, 0x63, 0xA4,
                                0x40, 0xF2, 0x77, 0x03, 0x7D, 0x81, 0x2D, 0xEB, 0x33, 0xA0, 0xF4, 0xA1, 0x39, 0x45,
                                0xD8, 0x98, 0xC2, 0x96,
                            ],
                            vec![
                                0x4F, 0xE3, 0x42, 0xE2, 0xFE, 0x1A, 0x7F, 0x9B, 0x8E, 0xE7, 0xEB, 0x4A, 0x7C, 0x0F,
                                0x9E, 0x16, 0x2B, 0xCE, 0x33, 0x57, 0x6B, 0x31, 0x5E, 0xCE, 0xCB, 0xB6, 0x40, 0x68,
                                0x37, 0xBF, 0x51, 0xF5,
                            ],
                        ]
                        .concat(),
                    )]),
                )
                .record(),
        ),
        (
            "TLS 1.3, compressed P-256 share on the curve",
            tls13
                .clone()
                .without_ext(51)
                .with_ext(
                    51,
                    ext::key_share(&[(
                        23,
                        [
                            vec![3],
                            vec![
                                0x6B, 0x17, 0xD1, 0xF2, 0xE1, 0x2C, 0x42, 0x47, 0xF8, 0xBC, 0xE6, 0xE5, 0x63, 0xA4,
                                0x40, 0xF2, 0x77, 0x03, 0x7D, 0x81, 0x2D, 0xEB, 0x33, 0xA0, 0xF4, 0xA1, 0x39, 0x45,
                                0xD8, 0x98, 0xC2, 0x96,
                            ],
                        ]
                        .concat(),
                    )]),
                )
                .record(),
        ),
        (
            "TLS 1.3, P-384 share on the curve",
            tls13
                .clone()
                .without_ext(10)
                .with_ext(10, ext::list16(&[24]))
                .without_ext(51)
                .with_ext(
                    51,
                    ext::key_share(&[(
                        24,
                        [
                            vec![4],
                            vec![
                                0xAA, 0x87, 0xCA, 0x22, 0xBE, 0x8B, 0x05, 0x37, 0x8E, 0xB1, 0xC7, 0x1E, 0xF3, 0x20,
                                0xAD, 0x74, 0x6E, 0x1D, 0x3B, 0x62, 0x8B, 0xA7, 0x9B, 0x98, 0x59, 0xF7, 0x41, 0xE0,
                                0x82, 0x54, 0x2A, 0x38, 0x55, 0x02, 0xF2, 0x5D, 0xBF, 0x55, 0x29, 0x6C, 0x3A, 0x54,
                                0x5E, 0x38, 0x72, 0x76, 0x0A, 0xB7,
                            ],
                            vec![
                                0x36, 0x17, 0xDE, 0x4A, 0x96, 0x26, 0x2C, 0x6F, 0x5D, 0x9E, 0x98, 0xBF, 0x92, 0x92,
                                0xDC, 0x29, 0xF8, 0xF4, 0x1D, 0xBD, 0x28, 0x9A, 0x14, 0x7C, 0xE9, 0xDA, 0x31, 0x13,
                                0xB5, 0xF0, 0xB8, 0xC0, 0x0A, 0x60, 0xB1, 0xCE, 0x1D, 0x7E, 0x81, 0x9D, 0x7A, 0x43,
                                0x1D, 0x7C, 0x90, 0xEA, 0x0E, 0x5F,
                            ],
                        ]
                        .concat(),
                    )]),
                )
                .record(),
        ),
        ("OCSP request, a responder key", named.clone().with_ext(5, vec![1, 0, 6, 0, 4, 0xa2, 2, 4, 0, 0, 0]).record()),
        ("OCSP request, empty extensions", named.clone().with_ext(5, vec![1, 0, 0, 0, 2, 0x30, 0]).record()),
        ("TLS 1.3, an empty CA name", tls13.clone().with_ext(47, vec![0, 4, 0, 2, 0x30, 0]).record()),
        (
            "TLS 1.3, x448 share",
            tls13
                .clone()
                .without_ext(10)
                .with_ext(10, ext::list16(&[30, 29]))
                .without_ext(51)
                .with_ext(51, ext::key_share(&[(30, vec![5; 56])]))
                .record(),
        ),
        (
            "TLS 1.3, FFDHE share",
            tls13
                .clone()
                .without_ext(10)
                .with_ext(10, ext::list16(&[0x100]))
                .without_ext(51)
                .with_ext(51, ext::key_share(&[(0x100, vec![5; 256])]))
                .record(),
        ),
        ("OCSP request, bad DER", named.clone().with_ext(5, vec![1, 0, 4, 0, 2, 0x30, 0x99, 0, 0]).record()),
        ("TLS 1.3, bad DER CA name", tls13.clone().with_ext(47, vec![0, 4, 0, 2, 0x30, 0x99]).record()),
        ("SNI of another type", named.clone().without_ext(0).with_ext(0, vec![0, 4, 1, 0, 1, b'a']).record()),
        (
            "TLS 1.3, psk_ke only, empty psk identity",
            tls13
                .clone()
                .without_ext(45)
                .with_ext(45, vec![1, 0])
                .with_ext(41, vec![0, 6, 0, 0, 0, 0, 0, 0, 0, 0])
                .record(),
        ),
        (
            "warning alert after part of a hello",
            [record(22, 0x0301, &named.message()[..10]), record(21, 0x0301, &[1, 0])].concat(),
        ),
        ("CCS inside a message header", [record(22, 0x0301, &named.message()[..2]), record(20, 0x0301, &[1])].concat()),
        ("empty record, then a CCS", [record(22, 0x0301, &[]), record(20, 0x0303, &[1])].concat()),
        (
            "application data after part of a hello",
            [record(22, 0x0301, &named.message()[..10]), record(23, 0x0302, &[1, 2])].concat(),
        ),
        ("record of type 0x80", b"\x80\x03\x01\x00\x02ab".to_vec()),
        ("odd signature algorithms", named.clone().without_ext(13).with_ext(13, vec![0, 3, 4, 3, 8]).record()),
        ("no signature algorithms", named.clone().without_ext(13).with_ext(13, vec![0, 0]).record()),
        ("no point formats", named.clone().without_ext(11).with_ext(11, vec![0]).record()),
        ("TLS 1.3, post_handshake_auth with a body", tls13.clone().with_ext(49, vec![0]).record()),
        ("TLS 1.3, early_data with a body", tls13.clone().with_ext(42, vec![0]).record()),
        ("SRP login with NUL", named.clone().with_ext(12, vec![2, b'a', 0]).record()),
        ("extensions past the end", {
            let mut r = named.record();
            let n = r.len();
            r[n - 3] = 0x40;
            r
        }),
        ("33 empty records", record(22, 0x0301, &[]).repeat(33)),
        ("a 2 MiB ClientHello announced", record(22, 0x0301, &[1, 0x20, 0, 0])),
        ("TLS 1.2 with a session id", Hello { session_id: vec![3; 32], ..named.clone() }.record()),
        ("version 1.3 without supported_versions", Hello { legacy_version: 0x0304, ..named.clone() }.record()),
        ("renegotiation SCSV", Hello { suites: vec![0xc02f, 0x00ff], ..named.clone() }.record()),
        ("odd cipher list length", {
            let mut h = named.clone();
            h.suites = vec![0xc02f];
            let mut m = h.message();
            m[4 + 2 + 32 + 1 + 1] = 3;
            m.insert(4 + 2 + 32 + 1 + 2 + 2, 0);
            m[3] += 1;
            record(22, 0x0301, &m)
        }),
        ("TLS 1.3, bad psk modes", tls13.clone().without_ext(45).with_ext(45, vec![0]).record()),
        ("TLS 1.3, bytes after the hello", trailing(&tls13)),
        ("TLS 1.2, bytes after the hello", trailing(&named)),
        ("hello over two records", split(&named, 20)),
        ("hello header over two records", split(&tls13, 2)),
        ("not a ClientHello", record(22, 0x0301, &[2, 0, 0, 2, 3, 3])),
        ("handshake garbage", b"\x16\x03\x01\x00\x05hello".to_vec()),
        ("record of 16705 bytes", b"\x16\x03\x01\x41\x41".to_vec()),
        ("record of 16400 bytes", record(22, 0x0301, &[1; 16400])),
        ("record version 2", b"\x16\x02\x00\x00\x05hello".to_vec()),
        ("empty record, then a hello", [record(22, 0x0301, &[]), named.record()].concat()),
        (
            "alert after part of a hello",
            [record(22, 0x0301, &named.message()[..10]), record(21, 0x0301, &[2, 40])].concat(),
        ),
        ("CCS after part of a hello", [record(22, 0x0301, &named.message()[..10]), record(20, 0x0301, &[1])].concat()),
        ("SSLv2 byte, not a hello", b"\x80hello".to_vec()),
        ("SSLv2 hello, TLS 1.0", sslv2_hello(0x0301)),
        ("SSLv2 hello, SSL 2", sslv2_hello(0x0002)),
        ("plain HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("plain HTTP/0.9", b"GET /\r\n".to_vec()),
        ("plain garbage", b"hello\r\n\r\n".to_vec()),
    ]
    .into_iter()
    .map(|(name, bytes)| case(name, TLS, &bytes))
    .collect();
    cases.extend([
        timed("TLS, silent", TLS, vec![]),
        timed("TLS, one byte", TLS, vec![Step::Send(vec![0x16])]),
        timed("TLS, half a hello", TLS, vec![Step::Send(named.record()[..40].to_vec())]),
    ]);
    cases
}

/// An SSLv2-format ClientHello offering `version`.
fn sslv2_hello(version: u16) -> Vec<u8> {
    let mut body = vec![1];
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[0, 6, 0, 0, 0, 16]);
    body.extend_from_slice(&[0, 0, 0x2f, 0, 0, 0x35]);
    body.extend_from_slice(&[0x33; 16]);
    let mut r = (0x8000 | body.len() as u16).to_be_bytes().to_vec();
    r.extend_from_slice(&body);
    r
}

#[test]
fn the_decoy_answers_as_nginx_does() {
    let version = Nginx::version();
    assert!(version.contains("nginx/1.22."), "the decoy imitates nginx 1.22; this nginx is {version}");
    let ns = Netns::new();
    let page_dir = ackgate_tests::TempDir::new(&format!("{}-page", ns.name));
    let page = decoy::page_file(&page_dir.0);
    let nginx = Nginx::start(&ns, &nginx_conf(&page_dir.0.display().to_string()), &[HTTP, FILE, TLS]);
    let not_found = NotFound::load(&page).expect("page file");
    let service = |decoy, not_found| PageService { vip: [127, 0, 0, 1].into(), port: 0, decoy, not_found };
    let _decoy = decoy::Decoy::start(
        &ns,
        vec![
            (HTTP + DECOY, service(Decoy::Http, NotFound::Builtin)),
            (FILE + DECOY, service(Decoy::Http, not_found)),
            (TLS + DECOY, service(Decoy::Tls, NotFound::Builtin)),
        ],
        TIMEOUTS,
    );
    let cases: Vec<Case> = http_cases().into_iter().chain(file_cases()).chain(tls_cases()).collect();
    let seen: Vec<(Seen, Seen)> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|c| {
                let ns = &ns;
                scope.spawn(move || {
                    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
                    std::thread::scope(|inner| {
                        let real = inner.spawn(|| decoy::exchange(ns, at(c.port), &c.steps, c.watch));
                        let ours = decoy::exchange(ns, at(c.port + DECOY), &c.steps, c.watch);
                        (real.join().expect("nginx probe"), ours)
                    })
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("probe thread")).collect()
    });
    let mut differ = Vec::new();
    for (c, (real, ours)) in cases.iter().zip(&seen) {
        let (a, b) = (decoy::undated(&real.bytes), decoy::undated(&ours.bytes));
        let late = real.end != End::Open && real.after.abs_diff(ours.after) > SLACK;
        if a != b || real.end != ours.end || late {
            differ.push(format!(
                "{}:\n  nginx: {:?} after {:?}: {:?}\n  decoy: {:?} after {:?}: {:?}",
                c.name,
                real.end,
                real.after,
                String::from_utf8_lossy(&a),
                ours.end,
                ours.after,
                String::from_utf8_lossy(&b)
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} probes differ:\n{}\nnginx log:\n{}",
        differ.len(),
        cases.len(),
        differ.join("\n"),
        nginx.log()
    );
}
