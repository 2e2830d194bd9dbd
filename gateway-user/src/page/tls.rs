//! The TLS side of the decoy: what nginx 1.22 with OpenSSL 3.0 answers on
//! a `listen 443 ssl` server with `ssl_reject_handshake on`, which has no
//! certificate to show. nginx's SNI callback (`ngx_http_ssl_servername`,
//! src/http/ngx_http_request.c) rejects every ClientHello, named or not,
//! with a fatal `unrecognized_name` alert, so a well-formed ClientHello
//! gets the seven bytes `15 03 0x 00 02 02 70` and the connection closes.
//! The record's version is the one OpenSSL negotiated before the callback
//! ran: TLS 1.0, 1.1 or 1.2 as the client asked (`03 01` to `03 03`), and
//! `03 03` for TLS 1.3.
//!
//! Before that callback, OpenSSL checks the records and the ClientHello in
//! a fixed order and answers what it refuses with alerts of its own
//! (ssl/record/ssl3_record.c `ssl3_get_record`, ssl/statem/statem_srvr.c
//! `tls_process_client_hello` and `tls_early_post_process_client_hello`,
//! ssl/statem/statem_lib.c `ssl_choose_server_version`,
//! ssl/statem/extensions.c and extensions_srvr.c): the model below keeps
//! that order and those alerts. Bytes are read as OpenSSL reads them with
//! nginx's read-ahead (as much as its 16 KiB buffer takes), so what a
//! client sends beyond that stays unread, as with nginx, and the close
//! then resets.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// TLS alert descriptions (RFC 8446 §6, RFC 5246 §7.2).
pub mod alert {
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const HANDSHAKE_FAILURE: u8 = 40;
    pub const ILLEGAL_PARAMETER: u8 = 47;
    pub const DECODE_ERROR: u8 = 50;
    pub const PROTOCOL_VERSION: u8 = 70;
    pub const INAPPROPRIATE_FALLBACK: u8 = 86;
    pub const MISSING_EXTENSION: u8 = 109;
    pub const UNRECOGNIZED_NAME: u8 = 112;
}

const TLS1_0: u16 = 0x0301;
const TLS1_2: u16 = 0x0303;
const TLS1_3: u16 = 0x0304;
const SSL3: u16 = 0x0300;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;

/// `SSL3_RT_MAX_ENCRYPTED_LENGTH` less the compression overhead: a longer
/// record is refused from its header.
const MAX_RECORD: usize = 16704;
/// `SSL3_RT_MAX_PLAIN_LENGTH`: a longer record is refused once read.
const MAX_PLAIN: usize = 16384;
/// `CLIENT_HELLO_MAX_LENGTH`.
const MAX_CLIENT_HELLO: usize = 131_396;
/// `MAX_EMPTY_RECORDS`.
const MAX_EMPTY_RECORDS: usize = 32;
/// OpenSSL's read buffer (`ssl3_setup_read_buffer`: 16384 + 320 + 5 + 7
/// bytes; no compression).
const READ_BUFFER: usize = 16716;

/// What OpenSSL (behind nginx) does with what it has read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send this fatal alert in a record of this version, then close.
    Alert { version: u16, description: u8 },
    /// Close without a word.
    Close,
}

impl Verdict {
    /// The alert record's bytes (empty for a silent close).
    pub fn bytes(self) -> Vec<u8> {
        match self {
            Verdict::Alert { version, description } => {
                // `ssl3_send_alert`: SSL 3.0 has no protocol_version alert.
                let description = if version == SSL3 && description == alert::PROTOCOL_VERSION {
                    alert::HANDSHAKE_FAILURE
                } else {
                    description
                };
                let [hi, lo] = version.to_be_bytes();
                vec![ALERT, hi, lo, 0, 2, 2, description]
            }
            Verdict::Close => Vec::new(),
        }
    }
}

/// An alert before any version was negotiated: OpenSSL's handle still
/// holds its highest version, TLS 1.3, written as TLS 1.2 on the record.
fn early(description: u8) -> Verdict {
    Verdict::Alert { version: TLS1_2, description }
}

/// The record version of an alert sent once `version` is negotiated.
fn record_version(version: u16) -> u16 {
    version.min(TLS1_2)
}

/// The record layer and handshake reassembly, fed as OpenSSL reads.
#[derive(Default)]
pub struct Reader {
    /// Bytes read and not yet taken, from a record boundary on.
    buf: Vec<u8>,
    /// Whether the header of the record at the start of `buf` passed.
    header_checked: bool,
    /// The handshake bytes of the records taken so far.
    handshake: Vec<u8>,
    /// Whether the first record is through (only it may be an SSLv2
    /// ClientHello, and only its version may be outside SSL 3 quietly).
    past_first: bool,
    empty_records: usize,
}

impl Reader {
    /// How many bytes the next read may take: what OpenSSL's read buffer
    /// has room for (nginx turns read-ahead on, `SSL_CTX_set_read_ahead`
    /// in src/event/ngx_event_openssl.c, so OpenSSL reads as much as its
    /// buffer holds, not one record at a time).
    pub fn want(&self) -> usize {
        READ_BUFFER.saturating_sub(self.buf.len()).max(1)
    }

    /// Takes `bytes` read from the client: the verdict once there is one.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<Verdict> {
        self.buf.extend_from_slice(bytes);
        loop {
            if self.buf.len() < 5 {
                return None;
            }
            if !self.header_checked {
                if let Some(v) = self.check_header() {
                    return Some(v);
                }
                self.header_checked = true;
            }
            let len = self.record_len();
            if self.buf.len() < len {
                return None;
            }
            let record: Vec<u8> = self.buf.drain(..len).collect();
            self.header_checked = false;
            let sslv2 = self.is_sslv2(&record);
            self.past_first = true;
            if let Some(v) = self.take(&record, sslv2) {
                return Some(v);
            }
        }
    }

    /// An SSLv2-format ClientHello (only as the first record).
    fn is_sslv2(&self, r: &[u8]) -> bool {
        !self.past_first && r.len() >= 3 && r[0] & 0x80 != 0 && r[2] == CLIENT_HELLO
    }

    /// The whole length of the record starting `buf`, header included.
    fn record_len(&self) -> usize {
        if self.is_sslv2(&self.buf) {
            2 + (usize::from(self.buf[0] & 0x7f) << 8 | usize::from(self.buf[1]))
        } else {
            5 + usize::from(u16::from_be_bytes([self.buf[3], self.buf[4]]))
        }
    }

    /// `ssl3_get_record`'s checks on a record header.
    fn check_header(&self) -> Option<Verdict> {
        if self.is_sslv2(&self.buf) {
            // MIN_SSL2_RECORD_LEN: the fixed part of an SSLv2 ClientHello.
            return (self.record_len() - 2 < 9).then(|| early(alert::DECODE_ERROR));
        }
        let version = u16::from_be_bytes([self.buf[1], self.buf[2]]);
        if version >> 8 != 3 {
            // Not TLS: on the first record no alert (OpenSSL's "doesn't
            // look like TLS"), later a protocol_version alert.
            return Some(if self.past_first { early(alert::PROTOCOL_VERSION) } else { Verdict::Close });
        }
        (self.record_len() - 5 > MAX_RECORD).then(|| early(alert::RECORD_OVERFLOW))
    }

    /// A whole record.
    fn take(&mut self, record: &[u8], sslv2: bool) -> Option<Verdict> {
        if sslv2 {
            return Some(sslv2_client_hello(&record[2..]));
        }
        let (kind, version, body) = (record[0], u16::from_be_bytes([record[1], record[2]]), &record[5..]);
        if body.len() > MAX_PLAIN {
            return Some(early(alert::RECORD_OVERFLOW));
        }
        if kind != HANDSHAKE {
            // `ssl3_read_bytes`: a server that has negotiated no version
            // yet takes nothing but handshake records, and answers in the
            // record's version. A ChangeCipherSpec while a message header
            // is still incomplete is refused before that
            // (`tls_get_message_header`), in OpenSSL's own version.
            if kind == CHANGE_CIPHER_SPEC && self.handshake.len() < 4 {
                return Some(early(alert::UNEXPECTED_MESSAGE));
            }
            return Some(Verdict::Alert { version, description: alert::UNEXPECTED_MESSAGE });
        }
        if body.is_empty() {
            self.empty_records += 1;
            return (self.empty_records > MAX_EMPTY_RECORDS).then(|| early(alert::UNEXPECTED_MESSAGE));
        }
        self.empty_records = 0;
        self.handshake.extend_from_slice(body);
        if self.handshake.len() < 4 {
            return None;
        }
        // `tls_get_message_header`: only a ClientHello, of a size a
        // ClientHello may have.
        if self.handshake[0] != CLIENT_HELLO {
            return Some(early(alert::UNEXPECTED_MESSAGE));
        }
        let len =
            usize::from(self.handshake[1]) << 16 | usize::from(self.handshake[2]) << 8 | usize::from(self.handshake[3]);
        if len > MAX_CLIENT_HELLO {
            return Some(early(alert::ILLEGAL_PARAMETER));
        }
        if self.handshake.len() < 4 + len {
            return None;
        }
        // Bytes after the ClientHello in its record: TLS 1.3 wants the
        // message to end on a record boundary.
        let trailing = self.handshake.len() > 4 + len;
        Some(client_hello(&self.handshake[4..4 + len], trailing))
    }
}

/// A cursor over a message, as OpenSSL's PACKET.
#[derive(Clone, Copy)]
struct Packet<'a>(&'a [u8]);

impl<'a> Packet<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn prefixed1(&mut self) -> Option<Packet<'a>> {
        let n = usize::from(self.u8()?);
        self.take(n).map(Packet)
    }
    fn prefixed2(&mut self) -> Option<Packet<'a>> {
        let n = usize::from(self.u16()?);
        self.take(n).map(Packet)
    }
    /// `PACKET_as_length_prefixed_*`: the prefix must cover the rest.
    fn all_prefixed1(mut self) -> Option<Packet<'a>> {
        let inner = self.prefixed1()?;
        self.0.is_empty().then_some(inner)
    }
    fn all_prefixed2(mut self) -> Option<Packet<'a>> {
        let inner = self.prefixed2()?;
        self.0.is_empty().then_some(inner)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The extensions OpenSSL 3.0 knows, in its table's order (`ext_defs`,
/// ssl/statem/extensions.c): duplicates of these are refused, and they
/// are parsed in this order.
const KNOWN: [u16; 26] = [
    0xff01, // renegotiate
    0,      // server_name
    1,      // max_fragment_length
    12,     // srp
    11,     // ec_point_formats
    10,     // supported_groups
    35,     // session_ticket
    5,      // status_request
    13172,  // next_proto_neg
    16,     // application_layer_protocol_negotiation
    14,     // use_srtp (DTLS only: refused in TLS)
    22,     // encrypt_then_mac
    18,     // signed_certificate_timestamp
    23,     // extended_master_secret
    50,     // signature_algorithms_cert
    49,     // post_handshake_auth
    13,     // signature_algorithms
    43,     // supported_versions
    45,     // psk_kex_modes
    51,     // key_share
    44,     // cookie
    0xfde8, // cryptopro_bug
    42,     // early_data
    47,     // certificate_authorities
    21,     // padding
    41,     // pre_shared_key (must be last)
];
const USE_SRTP: u16 = 14;
const PSK: u16 = 41;

/// Extensions of TLS 1.2 and below, not looked at in TLS 1.3.
const TLS12_ONLY: [u16; 6] = [0xff01, 12, 11, 35, 13172, 22];
/// Extensions of TLS 1.3 only.
const TLS13_ONLY: [u16; 7] = [49, 45, 51, 44, 42, 47, 41];

/// The ciphersuites OpenSSL 3.0 enables for TLS 1.3 by default.
const TLS13_SUITES: [u16; 3] = [0x1301, 0x1302, 0x1303];
/// The groups OpenSSL 3.0 offers by default (`supported_groups_default`):
/// the X curves with their key length, the NIST curves, the FFDHE groups
/// (whose keys OpenSSL takes as they come).
enum Share {
    X(usize),
    Nist(Curve),
    Ffdhe,
}
#[derive(Clone, Copy)]
enum Curve {
    P256,
    P384,
    P521,
}
const GROUPS: [(u16, Share); 10] = [
    (29, Share::X(32)),
    (23, Share::Nist(Curve::P256)),
    (30, Share::X(56)),
    (25, Share::Nist(Curve::P521)),
    (24, Share::Nist(Curve::P384)),
    (0x100, Share::Ffdhe),
    (0x101, Share::Ffdhe),
    (0x102, Share::Ffdhe),
    (0x103, Share::Ffdhe),
    (0x104, Share::Ffdhe),
];

/// Whether OpenSSL loads `key` as a TLS 1.3 key share on `curve`: an
/// uncompressed point (OpenSSL refuses compressed ones there) on the
/// curve. P-256 and P-384 points are checked by a key agreement with them
/// (ring, through rustls); a P-521 point only for its form.
fn nist_point_ok(curve: Curve, key: &[u8]) -> bool {
    use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1};
    let (coord, group) = match curve {
        Curve::P256 => (32, Some(SECP256R1)),
        Curve::P384 => (48, Some(SECP384R1)),
        Curve::P521 => (66, None),
    };
    if key.len() != 1 + 2 * coord || key[0] != 4 {
        return false;
    }
    match group {
        Some(g) => g.start().is_ok_and(|kx| kx.complete(key).is_ok()),
        None => true,
    }
}

/// A ClientHello in an SSLv2 record (`tls_process_client_hello`, isv2):
/// only SSL 3 and TLS versions are taken, and an SSLv2 hello carries no
/// extensions, so no SNI: OpenSSL still calls nginx's callback.
fn sslv2_client_hello(body: &[u8]) -> Verdict {
    let mut p = Packet(&body[1..]);
    let Some(legacy) = p.u16() else { return early(alert::DECODE_ERROR) };
    let (Some(cipher_len), Some(session_len), Some(challenge_len)) = (p.u16(), p.u16(), p.u16()) else {
        return early(alert::DECODE_ERROR);
    };
    if session_len > 32 {
        return early(alert::ILLEGAL_PARAMETER);
    }
    let total = usize::from(cipher_len) + usize::from(session_len) + usize::from(challenge_len);
    if p.0.len() != total {
        return early(alert::DECODE_ERROR);
    }
    if legacy >> 8 != 3 {
        return early(alert::PROTOCOL_VERSION);
    }
    let Some(version) = choose_version(legacy, None) else {
        return Verdict::Alert { version: legacy, description: alert::PROTOCOL_VERSION };
    };
    let ciphers = &p.0[..usize::from(cipher_len)];
    if ciphers.is_empty() {
        return Verdict::Alert { version: record_version(version), description: alert::ILLEGAL_PARAMETER };
    }
    if ciphers.len() % 3 != 0 {
        return Verdict::Alert { version: record_version(version), description: alert::DECODE_ERROR };
    }
    let fallback = ciphers.chunks(3).any(|c| c == [0, 0x56, 0]);
    let description =
        if fallback && version < TLS1_3 { alert::INAPPROPRIATE_FALLBACK } else { alert::UNRECOGNIZED_NAME };
    Verdict::Alert { version: record_version(version), description }
}

/// `ssl_choose_server_version` for nginx's protocols (TLS 1.0 to 1.3):
/// the version, or None (a protocol_version alert). `supported` is the
/// supported_versions extension, if sent; `Err` there is a malformed one.
fn choose_version(legacy: u16, supported: Option<Result<Vec<u16>, ()>>) -> Option<u16> {
    match supported {
        Some(list) => {
            if legacy <= SSL3 {
                return None;
            }
            let list = list.ok()?;
            list.into_iter().filter(|v| (TLS1_0..=TLS1_3).contains(v)).max()
        }
        None => {
            let v = legacy.min(TLS1_2);
            (v >= TLS1_0 && v >> 8 == 3).then_some(v)
        }
    }
}

/// `tls_process_client_hello` and `tls_early_post_process_client_hello`
/// up to nginx's SNI callback. `trailing`: more handshake bytes followed
/// the message in its record.
fn client_hello(msg: &[u8], trailing: bool) -> Verdict {
    let mut p = Packet(msg);
    let Some(legacy) = p.u16() else { return early(alert::DECODE_ERROR) };
    let (Some(_random), Some(session_id)) = (p.take(32), p.prefixed1()) else {
        return early(alert::DECODE_ERROR);
    };
    if session_id.0.len() > 32 {
        return early(alert::DECODE_ERROR);
    }
    let (Some(ciphers), Some(compressions)) = (p.prefixed2(), p.prefixed1()) else {
        return early(alert::DECODE_ERROR);
    };
    let extensions = if p.is_empty() {
        Packet(&[])
    } else {
        match p.all_prefixed2() {
            Some(e) => e,
            None => return early(alert::DECODE_ERROR),
        }
    };
    // `tls_collect_extensions`.
    let mut exts: Vec<(u16, &[u8])> = Vec::new();
    let mut rest = extensions;
    while !rest.is_empty() {
        let (Some(kind), Some(body)) = (rest.u16(), rest.prefixed2()) else {
            return early(alert::DECODE_ERROR);
        };
        let known = KNOWN.contains(&kind);
        if kind == USE_SRTP || (known && exts.iter().any(|(k, _)| *k == kind)) || (kind == PSK && !rest.is_empty()) {
            return early(alert::ILLEGAL_PARAMETER);
        }
        exts.push((kind, body.0));
    }
    let ext = |kind: u16| exts.iter().find(|(k, _)| *k == kind).map(|(_, b)| Packet(b));
    // Version negotiation.
    let supported = ext(43).map(|b| {
        let list = b.all_prefixed1().ok_or(())?;
        if list.0.len() % 2 != 0 {
            return Err(());
        }
        Ok(list.0.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
    });
    let Some(version) = choose_version(legacy, supported) else {
        return Verdict::Alert { version: legacy, description: alert::PROTOCOL_VERSION };
    };
    let fail = |description| Verdict::Alert { version: record_version(version), description };
    let tls13 = version == TLS1_3;
    if tls13 && trailing {
        return fail(alert::UNEXPECTED_MESSAGE);
    }
    // `bytes_to_cipher_list` and the signalling suites.
    if ciphers.0.is_empty() {
        return fail(alert::ILLEGAL_PARAMETER);
    }
    if ciphers.0.len() % 2 != 0 {
        return fail(alert::DECODE_ERROR);
    }
    let suites: Vec<u16> = ciphers.0.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    if suites.contains(&0x5600) && !tls13 {
        return fail(alert::INAPPROPRIATE_FALLBACK);
    }
    if tls13 && !suites.iter().any(|s| TLS13_SUITES.contains(s)) {
        return fail(alert::HANDSHAKE_FAILURE);
    }
    if !tls13
        && let Some(ems) = ext(23)
        && !ems.is_empty()
    {
        return fail(alert::DECODE_ERROR);
    }
    if tls13 {
        // `ssl_get_prev_session`: psk_kex_modes, then pre_shared_key,
        // which is looked at only with a mode OpenSSL takes (psk_dhe_ke;
        // psk_ke needs SSL_OP_ALLOW_NO_DHE_KEX, which nginx does not set).
        let mut dhe = false;
        if let Some(modes) = ext(45) {
            match modes.all_prefixed1() {
                Some(m) if !m.is_empty() => dhe = m.0.contains(&1),
                _ => return fail(alert::DECODE_ERROR),
            }
        }
        if dhe
            && let Some(psk) = ext(PSK)
            && let Some(d) = psk_identities(psk)
        {
            return fail(d);
        }
    }
    if !compressions.0.contains(&0) {
        return fail(alert::DECODE_ERROR);
    }
    // `tls_parse_all_extensions`, in the table's order.
    for kind in KNOWN {
        let Some(body) = ext(kind) else { continue };
        if (tls13 && TLS12_ONLY.contains(&kind)) || (!tls13 && TLS13_ONLY.contains(&kind)) {
            continue;
        }
        if let Some(description) = parse_extension(kind, body, &exts) {
            return fail(description);
        }
    }
    // The finals: renegotiation info passes on a first handshake, then
    // nginx's SNI callback refuses the handshake.
    fail(alert::UNRECOGNIZED_NAME)
}

/// `tls_parse_ctos_psk` over the identities (none can be resumed here):
/// an alert description for a malformed list or an empty identity (an
/// empty ticket, `SSL_TICKET_EMPTY`).
fn psk_identities(body: Packet<'_>) -> Option<u8> {
    let mut b = body;
    let Some(mut identities) = b.prefixed2() else { return Some(alert::DECODE_ERROR) };
    while !identities.is_empty() {
        let (Some(identity), Some(_age)) = (identities.prefixed2(), identities.u32()) else {
            return Some(alert::DECODE_ERROR);
        };
        if identity.is_empty() {
            return Some(alert::DECODE_ERROR);
        }
    }
    None
}

/// One extension's `tls_parse_ctos_*`: an alert description if OpenSSL
/// refuses it.
fn parse_extension(kind: u16, body: Packet<'_>, exts: &[(u16, &[u8])]) -> Option<u8> {
    let decode = Some(alert::DECODE_ERROR);
    match kind {
        // renegotiate: an empty binding on a first handshake.
        0xff01 => {
            let mut b = body;
            match b.prefixed1() {
                None => decode,
                Some(binding) if !binding.is_empty() => Some(alert::HANDSHAKE_FAILURE),
                Some(_) => None,
            }
        }
        // server_name: one host_name, at most 255 bytes, no NUL.
        0 => {
            let Some(mut list) = body.all_prefixed2() else { return decode };
            if list.is_empty() || list.u8() != Some(0) {
                return decode;
            }
            let Some(name) = list.all_prefixed2() else { return decode };
            if name.0.len() > 255 || name.0.contains(&0) {
                return Some(alert::UNRECOGNIZED_NAME);
            }
            None
        }
        // max_fragment_length: one byte, 1 to 4.
        1 => match body.0 {
            [v] if (1..=4).contains(v) => None,
            [_] => Some(alert::ILLEGAL_PARAMETER),
            _ => decode,
        },
        // srp: a login without NUL.
        12 => match body.all_prefixed1() {
            Some(login) if !login.0.contains(&0) => None,
            _ => decode,
        },
        // ec_point_formats: a non-empty list.
        11 => match body.all_prefixed1() {
            Some(list) if !list.is_empty() => None,
            _ => decode,
        },
        // supported_groups: a non-empty list of 16-bit groups.
        10 => match body.all_prefixed2() {
            Some(list) if !list.is_empty() && list.0.len() % 2 == 0 => None,
            _ => decode,
        },
        // status_request: OCSP ResponderIDs and request extensions, DER
        // that OpenSSL decodes (`d2i_OCSP_RESPID`, `d2i_X509_EXTENSIONS`).
        5 => {
            let mut b = body;
            match b.u8() {
                None => decode,
                Some(1) => {
                    let Some(mut ids) = b.prefixed2() else { return decode };
                    while !ids.is_empty() {
                        match ids.prefixed2() {
                            Some(id) if der::responder_id(id.0) => {}
                            _ => return decode,
                        }
                    }
                    match b.all_prefixed2() {
                        Some(exts) if exts.is_empty() || der::extensions(exts.0) => None,
                        _ => decode,
                    }
                }
                Some(_) => None,
            }
        }
        // ALPN: a list of non-empty names.
        16 => {
            let Some(mut list) = body.all_prefixed2() else { return decode };
            if list.0.len() < 2 {
                return decode;
            }
            while !list.is_empty() {
                match list.prefixed1() {
                    Some(name) if !name.is_empty() => {}
                    _ => return decode,
                }
            }
            None
        }
        // signature_algorithms(_cert): a non-empty list of 16-bit schemes.
        13 | 50 => match body.all_prefixed2() {
            Some(list) if !list.is_empty() && list.0.len() % 2 == 0 => None,
            _ => decode,
        },
        // post_handshake_auth, early_data: empty.
        49 | 42 => (!body.is_empty()).then_some(alert::DECODE_ERROR),
        // key_share: needs supported_groups; each share well framed, in
        // the client's groups; the first one OpenSSL can use must be a
        // key it can load.
        51 => {
            let Some(mut shares) = body.all_prefixed2() else { return decode };
            // supported_groups was parsed first (table order): whole pairs.
            let groups: Vec<u16> = exts
                .iter()
                .find(|(k, _)| *k == 10)
                .and_then(|(_, b)| Packet(b).all_prefixed2())
                .map(|l| l.0.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect())
                .unwrap_or_default();
            if groups.is_empty() {
                return Some(alert::MISSING_EXTENSION);
            }
            let mut found = false;
            while !shares.is_empty() {
                let (Some(group), Some(point)) = (shares.u16(), shares.prefixed2()) else { return decode };
                if point.is_empty() {
                    return decode;
                }
                if found {
                    continue;
                }
                if !groups.contains(&group) {
                    return Some(alert::ILLEGAL_PARAMETER);
                }
                let Some((_, share)) = GROUPS.iter().find(|(g, _)| *g == group) else { continue };
                let key = point.0;
                let ok = match share {
                    Share::X(len) => key.len() == *len,
                    Share::Nist(curve) => nist_point_ok(*curve, key),
                    Share::Ffdhe => true,
                };
                if !ok {
                    return Some(alert::ILLEGAL_PARAMETER);
                }
                found = true;
            }
            None
        }
        // certificate_authorities: a list of distinguished names, DER that
        // OpenSSL decodes (`d2i_X509_NAME`).
        47 => match body.all_prefixed2() {
            Some(mut list) => {
                while !list.is_empty() {
                    match list.prefixed2() {
                        Some(name) if der::name(name.0) => {}
                        _ => return decode,
                    }
                }
                None
            }
            None => decode,
        },
        _ => None,
    }
}

/// The outline of the DER that OpenSSL decodes in a ClientHello: each
/// value whole, of the type OpenSSL expects there, with exactly the bytes
/// it claims (what a string holds is not checked).
mod der {
    /// One TLV at the start of `b`, definite length: (tag, contents, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, mut b) = b.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n].iter().fold(0usize, |acc, &x| acc << 8 | usize::from(x));
            b = &b[n..];
            len
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }

    /// Exactly one TLV with `tag`: its contents.
    fn only(b: &[u8], tag: u8) -> Option<&[u8]> {
        match tlv(b)? {
            (t, contents, []) if t == tag => Some(contents),
            _ => None,
        }
    }

    /// The TLVs filling `b`, each checked by `each`.
    fn all(mut b: &[u8], mut each: impl FnMut(u8, &[u8]) -> bool) -> bool {
        while !b.is_empty() {
            let Some((tag, contents, rest)) = tlv(b) else { return false };
            if !each(tag, contents) {
                return false;
            }
            b = rest;
        }
        true
    }

    /// An OBJECT IDENTIFIER's contents: sub-identifiers without padding,
    /// the last one whole.
    fn oid(c: &[u8]) -> bool {
        !c.is_empty()
            && c.last().is_some_and(|b| b & 0x80 == 0)
            && c.windows(2).all(|w| w[0] & 0x80 == 0 || w[1] != 0x80)
            && c[0] != 0x80
    }

    /// A Name: a SEQUENCE of SETs of (OID, value) SEQUENCEs.
    pub fn name(b: &[u8]) -> bool {
        only(b, 0x30).is_some_and(|rdns| {
            all(rdns, |tag, set| {
                tag == 0x31
                    && !set.is_empty()
                    && all(set, |tag, atv| {
                        tag == 0x30
                            && tlv(atv).is_some_and(|(t, o, value)| {
                                t == 0x06 && oid(o) && tlv(value).is_some_and(|(_, _, rest)| rest.is_empty())
                            })
                    })
            })
        })
    }

    /// An OCSP ResponderID: `[1]` a Name, or `[2]` an OCTET STRING.
    pub fn responder_id(b: &[u8]) -> bool {
        match tlv(b) {
            Some((0xa1, inner, [])) => name(inner),
            Some((0xa2, inner, [])) => only(inner, 0x04).is_some(),
            _ => false,
        }
    }

    /// Extensions: a SEQUENCE of (OID, optional BOOLEAN, OCTET STRING).
    pub fn extensions(b: &[u8]) -> bool {
        only(b, 0x30).is_some_and(|list| {
            all(list, |tag, ext| {
                if tag != 0x30 {
                    return false;
                }
                let Some((0x06, o, rest)) = tlv(ext) else { return false };
                if !oid(o) {
                    return false;
                }
                let rest = match tlv(rest) {
                    Some((0x01, [_], rest)) => rest,
                    Some((0x01, _, _)) | None => return false,
                    Some(_) => rest,
                };
                only(rest, 0x04).is_some()
            })
        })
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn der_outlines() {
            // CN=a
            let cn = [0x30, 0x0c, 0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x01, b'a'];
            assert!(super::name(&cn));
            assert!(super::name(&[0x30, 0x00]));
            assert!(!super::name(&[0x30, 0x99]));
            assert!(!super::name(&cn[..cn.len() - 1]));
            assert!(super::responder_id(&[0xa2, 0x02, 0x04, 0x00]));
            assert!(!super::responder_id(&[0xa3, 0x02, 0x04, 0x00]));
            assert!(super::extensions(&[0x30, 0x00]));
            assert!(super::extensions(&[0x30, 0x08, 0x30, 0x06, 0x06, 0x01, 0x01, 0x04, 0x01, 0x00]));
            assert!(!super::extensions(&[0x30, 0x05, 0x30, 0x03, 0x06, 0x01, 0x01]));
        }
    }
}

/// Serves a connection whose first byte says TLS: reads records as
/// OpenSSL does until it can judge, answers, closes. `deadline` bounds the
/// whole handshake (nginx's `client_header_timeout`).
pub async fn serve<W: AsyncRead + AsyncWrite + Unpin>(wire: &mut W, deadline: Instant) {
    let mut reader = Reader::default();
    let mut buf = vec![0u8; READ_BUFFER];
    let verdict = loop {
        let want = reader.want().min(buf.len());
        let n = match tokio::time::timeout_at(deadline, wire.read(&mut buf[..want])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        if let Some(v) = reader.feed(&buf[..n]) {
            break v;
        }
    };
    let bytes = verdict.bytes();
    if !bytes.is_empty() {
        let _ = tokio::time::timeout_at(deadline, wire.write_all(&bytes)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record: `legacy` version, `suites`, `exts` (type,
    /// body).
    fn hello(legacy: u16, suites: &[u16], exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = legacy.to_be_bytes().to_vec();
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        let mut e = Vec::new();
        for (kind, data) in exts {
            e.extend_from_slice(&kind.to_be_bytes());
            e.extend_from_slice(&(data.len() as u16).to_be_bytes());
            e.extend_from_slice(data);
        }
        if !exts.is_empty() {
            body.extend_from_slice(&(e.len() as u16).to_be_bytes());
            body.extend_from_slice(&e);
        }
        let mut msg = vec![CLIENT_HELLO, 0, 0, 0];
        msg[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut rec = vec![HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    fn verdict(bytes: &[u8]) -> Option<Verdict> {
        let mut r = Reader::default();
        let mut at = 0;
        while at < bytes.len() {
            let n = r.want().min(bytes.len() - at);
            if let Some(v) = r.feed(&bytes[at..at + n]) {
                return Some(v);
            }
            at += n;
        }
        None
    }

    fn sni(name: &[u8]) -> Vec<u8> {
        let mut v = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name);
        v
    }

    fn versions(list: &[u16]) -> Vec<u8> {
        let mut v = vec![(list.len() * 2) as u8];
        for x in list {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    #[test]
    fn a_client_hello_gets_unrecognized_name_in_the_negotiated_version() {
        let alert = |version, description| Some(Verdict::Alert { version, description });
        let named = vec![(0, sni(b"example.com"))];
        assert_eq!(verdict(&hello(0x0303, &[0xc02f], &named)), alert(0x0303, 112));
        assert_eq!(verdict(&hello(0x0303, &[0xc02f], &[])), alert(0x0303, 112));
        assert_eq!(verdict(&hello(0x0301, &[0x002f], &[])), alert(0x0301, 112));
        assert_eq!(verdict(&hello(0x0302, &[0x002f], &[])), alert(0x0302, 112));
        assert_eq!(verdict(&hello(0x0305, &[0x002f], &[])), alert(0x0303, 112), "no supported_versions: at most 1.2");
        let tls13 = vec![
            (10, vec![0, 2, 0, 29]),
            (43, versions(&[0x0304, 0x0303])),
            (51, [vec![0, 36, 0, 29, 0, 32], vec![9; 32]].concat()),
        ];
        assert_eq!(verdict(&hello(0x0303, &[0x1301], &tls13)), alert(0x0303, 112));
        assert_eq!(verdict(&hello(0x0303, &[0xc02f], &tls13)), alert(0x0303, 40), "no TLS 1.3 suite");
        assert_eq!(verdict(&hello(0x0300, &[0x002f], &[])), alert(0x0300, 70));
        assert_eq!(
            Verdict::Alert { version: 0x0300, description: 70 }.bytes(),
            [21, 3, 0, 0, 2, 2, 40],
            "no protocol_version in SSL 3"
        );
        assert_eq!(verdict(&hello(0x0303, &[0xc02f, 0x5600], &[])), alert(0x0303, 86));
        assert_eq!(verdict(&hello(0x0303, &[], &[])), alert(0x0303, 47));
        assert_eq!(verdict(&hello(0x0303, &[0xc02f], &[(0, sni(b"a")), (0, sni(b"b"))])), alert(0x0303, 47));
        assert_eq!(verdict(&hello(0x0303, &[0xc02f], &[(0, vec![0, 1])])), alert(0x0303, 50));
        assert_eq!(verdict(&hello(0x0303, &[0xc02f], &[(0, sni(b"a\0b"))])), alert(0x0303, 112));
    }

    #[test]
    fn what_is_not_a_client_hello() {
        let alert = |description| Some(Verdict::Alert { version: 0x0303, description });
        assert_eq!(verdict(b"\x16\x03\x01\x00\x05hello"), alert(10));
        assert_eq!(verdict(b"\x16\x03\x01\x41\x41"), alert(22), "a record over 16704 bytes, from its header");
        assert_eq!(verdict(b"\x80hello"), Some(Verdict::Close), "not TLS: no alert");
        assert_eq!(verdict(b"\x16\x03\x01\x00\x04\x01\x00\x00"), None, "a ClientHello still coming");
        let mut split = hello(0x0303, &[0xc02f], &[]);
        let second = split.split_off(9);
        let mut two = split.clone();
        two[3..5].copy_from_slice(&4u16.to_be_bytes());
        two.extend_from_slice(&[HANDSHAKE, 3, 1]);
        two.extend_from_slice(&(second.len() as u16).to_be_bytes());
        two.extend_from_slice(&second);
        assert_eq!(verdict(&two), Some(Verdict::Alert { version: 0x0303, description: 112 }), "over two records");
    }
}
