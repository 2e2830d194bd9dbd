//! Length-prefixed framing (tokio-util) plus the version byte and postcard.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::{MAX_FRAME, Message, PROTOCOL_VERSION, ProtoError};

/// Frames [`Message`]s over any byte stream (use with
/// `tokio_util::codec::Framed`).
#[derive(Debug)]
pub struct MessageCodec {
    frames: LengthDelimitedCodec,
}

impl Default for MessageCodec {
    fn default() -> Self {
        Self { frames: LengthDelimitedCodec::builder().length_field_length(4).max_frame_length(MAX_FRAME).new_codec() }
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtoError> {
        let frame = match self.frames.decode(src) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) => {
                return Err(ProtoError::Oversize);
            }
            Err(e) => return Err(e.into()),
        };
        decode_frame(&frame).map(Some)
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = ProtoError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let mut body = BytesMut::with_capacity(256).writer();
        body.get_mut().put_u8(PROTOCOL_VERSION);
        let body = postcard::to_io(&msg, body).map_err(ProtoError::Encode)?.into_inner();
        if body.len() > MAX_FRAME {
            return Err(ProtoError::Oversize);
        }
        self.frames.encode(body.freeze(), dst).map_err(ProtoError::Io)
    }
}

/// One frame's payload: version byte, then the message.
pub(super) fn decode_frame(frame: &[u8]) -> Result<Message, ProtoError> {
    let (&version, body) = frame.split_first().ok_or(ProtoError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::Version { got: version });
    }
    postcard::from_bytes(body).map_err(ProtoError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorCode;
    use proptest::prelude::*;

    fn roundtrip(msg: Message) -> Message {
        let mut buf = BytesMut::new();
        MessageCodec::default().encode(msg, &mut buf).expect("encodes");
        MessageCodec::default().decode(&mut buf).expect("decodes").expect("one whole frame")
    }

    #[test]
    fn messages_roundtrip() {
        let msg = Message::Error(crate::proto::ErrorReport { code: ErrorCode::BadInvite, message: "no".into() });
        assert_eq!(roundtrip(msg.clone()), msg);
        assert_eq!(roundtrip(Message::Ping(7)), Message::Ping(7));
    }

    #[test]
    fn refusals_are_named() {
        let mut oversize = BytesMut::from(&((MAX_FRAME as u32 + 1).to_be_bytes())[..]);
        assert!(matches!(MessageCodec::default().decode(&mut oversize), Err(ProtoError::Oversize)));
        let mut future = BytesMut::from(&[0, 0, 0, 2, 9, 0][..]);
        assert!(matches!(MessageCodec::default().decode(&mut future), Err(ProtoError::Version { got: 9 })));
        let mut empty = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(MessageCodec::default().decode(&mut empty), Err(ProtoError::Empty)));
        let mut garbage = BytesMut::from(&[0, 0, 0, 3, PROTOCOL_VERSION, 0xff, 0xff][..]);
        assert!(matches!(MessageCodec::default().decode(&mut garbage), Err(ProtoError::Decode(_))));
    }

    proptest! {
        /// Whatever bytes arrive, decoding returns a message, an error, or
        /// "need more": it never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut codec = MessageCodec::default();
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
