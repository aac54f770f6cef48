//! A `tokio-util` codec for carrying signaling over a byte stream (TCP, TLS, a Unix
//! socket): each message is a 2-byte big-endian length followed by the encoded
//! [`Envelope`].

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{DecodeError, EncodeError, Envelope, MAX_MESSAGE_LEN};

/// Length of the frame header (the big-endian `u16` message length).
pub const FRAME_HEADER_LEN: usize = 2;

/// What can go wrong on a signaling stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Reading or writing the stream failed.
    #[error("signaling stream I/O failed")]
    Io(#[from] std::io::Error),
    /// A frame announced a length above [`MAX_MESSAGE_LEN`]; the stream cannot be resynchronised.
    #[error("signaling frame of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame's content did not decode.
    #[error("signaling frame did not decode")]
    Decode(#[from] DecodeError),
    /// A message could not be encoded.
    #[error("signaling message did not encode")]
    Encode(#[from] EncodeError),
}

/// Length-prefixed framing of [`Envelope`]s.
#[derive(Debug, Clone, Copy, Default)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a stateless codec: a unit struct users name as the value"
)]
pub struct SignalCodec;

impl Decoder for SignalCodec {
    type Item = Envelope;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        let Some(header) = src.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        // Check the announced length before buffering anything for it.
        if len > MAX_MESSAGE_LEN {
            return Err(CodecError::FrameTooLarge {
                len,
                limit: MAX_MESSAGE_LEN,
            });
        }
        if src.len() < FRAME_HEADER_LEN + len {
            src.reserve(FRAME_HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        let frame = src.split_to(len);
        Ok(Some(Envelope::decode(&frame)?))
    }
}

impl Encoder<&Envelope> for SignalCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = item.encoded_len();
        if len > MAX_MESSAGE_LEN {
            return Err(EncodeError::TooLarge {
                len,
                limit: MAX_MESSAGE_LEN,
            }
            .into());
        }
        dst.reserve(FRAME_HEADER_LEN + len);
        // MAX_MESSAGE_LEN fits in u16, so the cast is lossless.
        dst.put_u16(len as u16);
        item.encode(dst)?;
        Ok(())
    }
}

impl Encoder<Envelope> for SignalCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Envelope>::encode(self, &item, dst)
    }
}
