//! Mutations of control-protocol frames: a valid message's fields bent
//! (ids, keys, strings, byte strings, options), then its encoding (length
//! prefix, version byte, variant tag, varints, truncation, trailing bytes).

use ackgate_common::proto::{
    ErrorCode, ErrorReport, LoginFinish, MAX_FRAME, Message, MessageCodec, PROTOCOL_VERSION, ProtoError, RefusalReason,
    RelayStep,
};
use bytes::BytesMut;
use rand::Rng;
use rand::seq::IndexedRandom as _;
use rand_chacha::ChaCha8Rng;
use tokio_util::codec::Decoder as _;

/// `msg` framed as docs/protocol.md says (length, version, postcard),
/// without the codec's size check: a seed bent past the limit must reach
/// the server as it is.
pub fn encode(msg: &Message) -> Vec<u8> {
    let body = postcard::to_allocvec(msg).unwrap_or_else(|e| panic!("encoding a seed: {e}"));
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(&body);
    frame
}

/// What a stream of bytes holds, read as the protocol's own codec reads it.
#[derive(Debug, Default)]
pub struct Decoded {
    pub messages: Vec<Message>,
    /// The error the codec stops at: garbage, oversize, version, empty.
    pub error: Option<String>,
}

impl Decoded {
    pub fn of(bytes: &[u8]) -> Self {
        let mut buf = BytesMut::from(bytes);
        let mut codec = MessageCodec::default();
        let mut d = Decoded::default();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => d.messages.push(m),
                Ok(None) => return d,
                Err(e) => {
                    d.error = Some(frame_error(&e).to_owned());
                    return d;
                }
            }
        }
    }
}

/// Whether a reader of `bytes` waits for more: cut where their length
/// prefixes say, they end in a frame cut short (one past the size limit is
/// refused at once instead).
pub fn waits_for_more(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(head) = rest.get(..4) else { return true };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_FRAME {
            return false;
        }
        let Some(next) = rest.get(4 + len..) else { return true };
        rest = next;
    }
    false
}

/// The words a refusal of this error carries (docs/protocol.md).
fn frame_error(e: &ProtoError) -> &'static str {
    match e {
        ProtoError::Oversize => "exceeds",
        ProtoError::Version { .. } => "version",
        ProtoError::Empty => "empty frame",
        _ => "undecodable",
    }
}

/// Whether `finish` carries `genuine`'s KE3. opaque-ke reads the
/// fixed-size MAC it expects and ignores whatever follows
/// (`CredentialFinalization::deserialize`), so a longer one that starts
/// with the genuine MAC is the genuine step: it proves the password all
/// the same.
pub fn carries_ke3(finish: &LoginFinish, genuine: &LoginFinish) -> bool {
    match (&finish.credential_finalization, &genuine.credential_finalization) {
        (Some(f), Some(g)) => f.starts_with(g),
        _ => false,
    }
}

/// A seed, mutated: unchanged one time in ten (the genuine frame must
/// keep working), or its fields bent, its encoding, or both.
pub fn mutated(seed: Message, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut msg = seed;
    let style = rng.random_range(0..10);
    if (1..6).contains(&style) {
        fields(&mut msg, rng);
    }
    let mut frame = encode(&msg);
    if style >= 4 {
        bytes(&mut frame, rng);
    }
    frame
}

/// Bends one to three fields of `msg`.
pub fn fields(msg: &mut Message, rng: &mut ChaCha8Rng) {
    for _ in 0..rng.random_range(1..=3) {
        field(msg, rng);
    }
}

fn field(msg: &mut Message, rng: &mut ChaCha8Rng) {
    match msg {
        Message::EnrollRequest(r) => match rng.random_range(0..5) {
            0 => r.invite_id = bend_u64(r.invite_id, rng),
            1 => bend_array(&mut r.secret, rng),
            2 => bend_bytes(&mut r.csr_der, rng),
            3 => bend_string(&mut r.hostname, rng),
            _ => bend_string(&mut r.install_serial, rng),
        },
        Message::Hello(h) => match rng.random_range(0..3) {
            0 => h.agent_id = bend_u32(h.agent_id, rng),
            1 => bend_string(&mut h.install_serial, rng),
            _ => bend_string(&mut h.agent_version, rng),
        },
        Message::LoginStart(s) => match rng.random_range(0..4) {
            0 => bend_string(&mut s.user, rng),
            1 => s.account = bend_u32(s.account, rng),
            2 => bend_bytes(&mut s.credential_request, rng),
            _ => bend_bytes(&mut s.registration_request, rng),
        },
        Message::ClaimFinish(c) => bend_bytes(&mut c.registration_upload, rng),
        Message::LoginFinish(f) => bend_finish(f, rng),
        Message::ProfileAnswer(a) => match rng.random_range(0..7) {
            0 => a.request_id = bend_u64(a.request_id, rng),
            1 => bend_array(&mut a.nonce, rng),
            2 => bend_string(&mut a.profile.user, rng),
            3 => a.profile.account = bend_u32(a.profile.account, rng),
            4 => bend_array(&mut a.profile.proof, rng),
            5 => bend_array(&mut a.profile.machine, rng),
            _ => bend_string(&mut a.profile.install_serial, rng),
        },
        Message::ProfileRefused(r) => match rng.random_range(0..3) {
            0 => r.request_id = bend_u64(r.request_id, rng),
            1 => bend_array(&mut r.nonce, rng),
            _ => {
                r.reason = if r.reason == RefusalReason::NotStamped {
                    RefusalReason::NotLoggedIn
                } else {
                    RefusalReason::NotStamped
                }
            }
        },
        Message::Logout(l) => l.account = bend_u32(l.account, rng),
        Message::RenewCertificate(r) => bend_bytes(&mut r.csr_der, rng),
        Message::Ping(n) | Message::Pong(n) => *n = bend_u64(*n, rng),
        Message::Error(e) => {
            e.code =
                *[ErrorCode::BadFrame, ErrorCode::Internal, ErrorCode::TooManyLogins].choose(rng).unwrap_or(&e.code);
            bend_string(&mut e.message, rng);
        }
        Message::Relay(r) => {
            r.request_id = if rng.random_bool(0.3) { bend_u64(r.request_id, rng) } else { r.request_id };
            match &mut r.step {
                RelayStep::Start { start, agent_id, source } => match rng.random_range(0..4) {
                    0 => bend_string(&mut start.user, rng),
                    1 => bend_bytes(&mut start.credential_request, rng),
                    2 => *agent_id = bend_u32(*agent_id, rng),
                    _ => bend_string(source, rng),
                },
                RelayStep::Claim { login, finish } => match rng.random_range(0..2) {
                    0 => *login = bend_u64(*login, rng),
                    _ => bend_bytes(&mut finish.registration_upload, rng),
                },
                RelayStep::Finish { login, finish } => match rng.random_range(0..2) {
                    0 => *login = bend_u64(*login, rng),
                    _ => bend_finish(finish, rng),
                },
                RelayStep::End { login } => *login = bend_u64(*login, rng),
            }
        }
        Message::Validate(v) => match rng.random_range(0..9) {
            0 => v.request_id = bend_u64(v.request_id, rng),
            1 => v.agent_id = bend_u32(v.agent_id, rng),
            2 => v.login = if rng.random_bool(0.3) { None } else { v.login.map(|l| bend_u64(l, rng)) },
            3 => bend_array(&mut v.request.nonce, rng),
            4 => {
                // Another port, or the client over the other family.
                if rng.random_bool(0.5) {
                    v.request.flow.client.set_port(rng.random());
                } else {
                    v.request.flow.client = std::net::SocketAddr::new(
                        std::net::Ipv6Addr::from(rng.random::<u128>()).into(),
                        v.request.flow.client.port(),
                    );
                }
            }
            5 => bend_array(&mut v.profile.proof, rng),
            6 => bend_array(&mut v.profile.machine, rng),
            7 => bend_string(&mut v.profile.user, rng),
            _ => {
                if rng.random_bool(0.5) {
                    v.allow_groups.clear();
                } else {
                    v.allow_groups.push(random_string(rng));
                }
            }
        },
        other => {
            // Messages of the other direction, or out of place: sent as
            // they are, or replaced by an error report.
            if rng.random_bool(0.2) {
                *other = Message::Error(ErrorReport { code: ErrorCode::Internal, message: random_string(rng) });
            }
        }
    }
}

fn bend_finish(f: &mut LoginFinish, rng: &mut ChaCha8Rng) {
    match (&mut f.credential_finalization, rng.random_range(0..3)) {
        (Some(v), 0 | 1) => bend_bytes(v, rng),
        (Some(_), _) => f.credential_finalization = None,
        (None, _) => f.credential_finalization = Some((0..rng.random_range(0..128)).map(|_| rng.random()).collect()),
    }
}

fn bend_u64(v: u64, rng: &mut ChaCha8Rng) -> u64 {
    match rng.random_range(0..5) {
        0 => v.wrapping_add(1),
        1 => v.wrapping_sub(1),
        2 => v ^ 1 << rng.random_range(0..64),
        3 => *[0, u64::MAX, u64::from(u32::MAX)].choose(rng).unwrap_or(&0),
        _ => rng.random(),
    }
}

fn bend_u32(v: u32, rng: &mut ChaCha8Rng) -> u32 {
    bend_u64(u64::from(v), rng) as u32
}

fn bend_array<const N: usize>(a: &mut [u8; N], rng: &mut ChaCha8Rng) {
    if rng.random_bool(0.2) {
        *a = [0; N];
    } else {
        let i = rng.random_range(0..N);
        a[i] ^= 1 << rng.random_range(0..8);
    }
}

fn bend_bytes(v: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    match rng.random_range(0..6) {
        0 => v.clear(),
        1 => v.truncate(rng.random_range(0..=v.len())),
        2 => v.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
        3 => *v = (0..rng.random_range(0..2048)).map(|_| rng.random()).collect(),
        _ if !v.is_empty() => {
            let i = rng.random_range(0..v.len());
            v[i] ^= 1 << rng.random_range(0..8);
        }
        _ => v.push(rng.random()),
    }
}

fn bend_string(s: &mut String, rng: &mut ChaCha8Rng) {
    *s = match rng.random_range(0..6) {
        0 => String::new(),
        1 => "x".repeat(rng.random_range(256..60_000)),
        2 => "\u{0}\u{feff}é\u{10ffff}../..".to_owned(),
        3 => format!("{s}{}", random_string(rng)),
        4 => s.chars().rev().collect(),
        _ => random_string(rng),
    };
}

fn random_string(rng: &mut ChaCha8Rng) -> String {
    (0..rng.random_range(0..24)).map(|_| char::from(rng.random_range(0x20u8..0x7f))).collect()
}

/// One to three mutations of the framed bytes.
pub fn bytes(frame: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    for _ in 0..rng.random_range(1..=3) {
        match rng.random_range(0..9) {
            0 => {
                // The length prefix: off by a little, zero, past the limit.
                let len = frame.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                let new = match rng.random_range(0..5) {
                    0 => len.wrapping_add(rng.random_range(1..8)),
                    1 => len.saturating_sub(rng.random_range(1..8)),
                    2 => 0,
                    3 => MAX_FRAME as u32 + rng.random_range(1..1000),
                    _ => rng.random(),
                };
                if let Some(b) = frame.get_mut(..4) {
                    b.copy_from_slice(&new.to_be_bytes());
                }
            }
            1 => {
                if let Some(v) = frame.get_mut(4) {
                    *v = *[0u8, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 255, rng.random()].choose(rng).unwrap_or(v);
                }
            }
            2 => {
                // The variant tag: any message, or none there is.
                if let Some(v) = frame.get_mut(5) {
                    *v = rng.random_range(0..32);
                }
            }
            3 => frame.truncate(rng.random_range(0..=frame.len())),
            4 => {
                // Cut the body and say so in the prefix: a whole frame
                // whose message ends early.
                let cut = rng.random_range(4.min(frame.len())..=frame.len());
                frame.truncate(cut);
                let len = (cut.saturating_sub(4)) as u32;
                if let Some(b) = frame.get_mut(..4) {
                    b.copy_from_slice(&len.to_be_bytes());
                }
            }
            5 => {
                // Trailing bytes inside the frame.
                let n = rng.random_range(1..16);
                frame.extend((0..n).map(|_| rng.random::<u8>()));
                let len = (frame.len().saturating_sub(4)) as u32;
                if let Some(b) = frame.get_mut(..4) {
                    b.copy_from_slice(&len.to_be_bytes());
                }
            }
            6 => {
                // A varint bent into a huge one (a length, an id).
                if frame.len() > 6 {
                    let at = rng.random_range(6..frame.len());
                    frame[at] |= 0x80;
                }
            }
            7 => {
                // A second frame after this one: garbage, or a copy.
                if rng.random_bool(0.5) {
                    let copy = frame.clone();
                    frame.extend_from_slice(&copy);
                } else {
                    let n = rng.random_range(0..64);
                    frame.extend((0..n).map(|_| rng.random::<u8>()));
                }
            }
            _ => {
                for _ in 0..rng.random_range(1..=4) {
                    if !frame.is_empty() {
                        let at = rng.random_range(0..frame.len());
                        frame[at] ^= 1 << rng.random_range(0..8);
                    }
                }
            }
        }
    }
}
