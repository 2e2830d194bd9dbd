//! The agent <-> gateway control protocol (docs/design.md §4; every message is
//! described in docs/protocol.md).
//!
//! One long-lived TLS 1.3 session per agent carries frames of one versioned
//! message enum: a 4-byte big-endian length, then a version byte, then the
//! postcard encoding of a [`Message`]. Frames above [`MAX_FRAME`] bytes and
//! unknown versions are refused with a clear error, and the session closes.

mod codec;
mod invite;
pub mod local;
mod message;
pub mod pake;
mod proof;

pub use codec::MessageCodec;
pub use invite::{Invite, InviteError, invite_secret_digest};
pub use message::*;
pub use proof::{profile_proof, verify_profile_proof};

use std::time::Duration;

/// The version byte this build writes and accepts. 2: `LoginResult` names
/// the user, `ErrorCode::TooManyLogins`. 3: agents refuse profile requests
/// for flows they did not stamp (`ProfileRefused`), `Logout`, and
/// certificate renewal over the session. 4: logins are OPAQUE exchanges
/// (`LoginStart` … `LoginFinish`); the password never leaves the agent.
/// 5: one login per local account (`account` in logins, logouts and
/// profiles). 6: flows of either family in profile requests
/// (`FlowSummary`'s socket addresses).
pub const PROTOCOL_VERSION: u8 = 6;

/// Largest frame (version byte + message) either side accepts. A profile
/// answer is about 150 bytes and an enrollment answer, with its
/// certificate, under 2 KiB; 64 KiB leaves room without letting a peer
/// make the other side buffer much.
pub const MAX_FRAME: usize = 64 * 1024;

/// The name every gateway certificate carries and every agent checks. The
/// trust comes from the pinned private CA, not from DNS, so one fixed name
/// serves gateways reached by any address. Agent certificates are issued
/// for client authentication only, so one cannot pose as a gateway.
pub const GATEWAY_SERVER_NAME: &str = "gateway.ackgate.invalid";

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("frame exceeds the {MAX_FRAME}-byte limit")]
    Oversize,
    #[error("peer speaks protocol version {got}; this build speaks version {PROTOCOL_VERSION}")]
    Version { got: u8 },
    #[error("empty frame (no version byte)")]
    Empty,
    #[error("undecodable message (garbage or a different protocol): {0}")]
    Decode(postcard::Error),
    #[error("message could not be encoded: {0}")]
    Encode(postcard::Error),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("no {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("expected {want}, the peer sent {got}")]
    Unexpected { want: &'static str, got: &'static str },
    #[error("the peer refused: {0}")]
    Remote(ErrorReport),
}
