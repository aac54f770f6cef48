//! The messages a camera and a viewer exchange over the control channel (`spec/control.md`):
//! the camera's stream catalog, the viewer's choice of stream and the codecs it can take,
//! and the camera's status (its source failing, and why). Each message is one control
//! channel message (at most [`crate::wire::MAX_CONTROL_MESSAGE_LEN`] bytes), hand-laid:
//! a type byte, then the fields. Every count and length is checked against a limit before
//! it is used; a decoder never panics and returns a [`ControlMessageError`].

use crate::stream::{Codec, StreamId};

/// Type byte of [`ControlMessage::Catalog`].
pub const MSG_CATALOG: u8 = 0x01;
/// Type byte of [`ControlMessage::Select`].
pub const MSG_SELECT: u8 = 0x02;
/// Type byte of [`ControlMessage::Status`].
pub const MSG_STATUS: u8 = 0x03;

/// Most streams a catalog lists (a camera's main, sub and third stream, with room).
pub const MAX_CATALOG_STREAMS: usize = 8;
/// Most tracks (stream id + codec) one catalog stream has.
pub const MAX_STREAM_TRACKS: usize = 4;
/// Longest stream name, in bytes of UTF-8.
pub const MAX_STREAM_NAME_LEN: usize = 32;
/// Most codecs a viewer lists as acceptable.
pub const MAX_ACCEPTED_CODECS: usize = Codec::ALL.len();
/// Longest status text, in bytes of UTF-8.
pub const MAX_STATUS_TEXT_LEN: usize = 200;

/// One frame stream of a catalog stream: its id on the connection and its codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Track {
    /// The frame stream its frames use.
    pub stream: StreamId,
    /// The codec of its frames.
    pub codec: Codec,
}

/// One stream a camera offers (for example `main`, the full-resolution encoder, or `sub`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct CatalogStream {
    /// Its name, `1..=MAX_STREAM_NAME_LEN` bytes.
    pub name: String,
    /// Its tracks (video, audio, ...), at most [`MAX_STREAM_TRACKS`].
    pub tracks: Vec<Track>,
}

/// The state of the camera's media source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceState {
    /// Frames are flowing.
    Running,
    /// The source is starting or reconnecting; frames may follow.
    Starting,
    /// The source fails; the reason says why. The camera keeps retrying.
    Failing,
}

impl SourceState {
    const fn to_u8(self) -> u8 {
        match self {
            SourceState::Running => 0,
            SourceState::Starting => 1,
            SourceState::Failing => 2,
        }
    }

    const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => SourceState::Running,
            1 => SourceState::Starting,
            2 => SourceState::Failing,
            _ => return None,
        })
    }
}

/// Why the camera reports what it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusReason {
    /// Nothing to add.
    None,
    /// The camera's source refused its login (RTSP 401/403).
    SourceLoginRefused,
    /// The camera's source does not answer or refuses the connection.
    SourceUnreachable,
    /// The source connected but sends no usable media.
    SourceNoMedia,
    /// The chosen stream's codec is not among those the viewer said it takes.
    CodecNotAccepted,
    /// The viewer chose a stream the catalog does not have.
    UnknownStream,
}

impl StatusReason {
    const fn to_u8(self) -> u8 {
        match self {
            StatusReason::None => 0,
            StatusReason::SourceLoginRefused => 1,
            StatusReason::SourceUnreachable => 2,
            StatusReason::SourceNoMedia => 3,
            StatusReason::CodecNotAccepted => 4,
            StatusReason::UnknownStream => 5,
        }
    }

    const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => StatusReason::None,
            1 => StatusReason::SourceLoginRefused,
            2 => StatusReason::SourceUnreachable,
            3 => StatusReason::SourceNoMedia,
            4 => StatusReason::CodecNotAccepted,
            5 => StatusReason::UnknownStream,
            _ => return None,
        })
    }

    /// A stable name for logs and JSON (`source_login_refused`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            StatusReason::None => "none",
            StatusReason::SourceLoginRefused => "source_login_refused",
            StatusReason::SourceUnreachable => "source_unreachable",
            StatusReason::SourceNoMedia => "source_no_media",
            StatusReason::CodecNotAccepted => "codec_not_accepted",
            StatusReason::UnknownStream => "unknown_stream",
        }
    }
}

/// A message of the camera–viewer control protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// Camera → viewer, when the viewer is admitted and when it changes: the streams the
    /// camera offers, the first being its default.
    Catalog {
        /// The streams, `1..=MAX_CATALOG_STREAMS`.
        streams: Vec<CatalogStream>,
    },
    /// Viewer → camera: the stream it wants (empty: the camera's default) and the codecs
    /// it can decode.
    Select {
        /// A catalog stream's name, or empty for the default.
        stream: String,
        /// Codecs the viewer takes, at most [`MAX_ACCEPTED_CODECS`], no repeats.
        accepts: Vec<Codec>,
    },
    /// Camera → viewer: the source's state and why, with a line for people.
    Status {
        /// The source's state.
        state: SourceState,
        /// Why.
        reason: StatusReason,
        /// Free text, at most [`MAX_STATUS_TEXT_LEN`] bytes (e.g. the RTSP error).
        text: String,
    },
}

/// Why a control message could not be decoded (or encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlMessageError {
    /// The message ends before a field it announces.
    #[error("control message truncated")]
    Truncated,
    /// Bytes follow the end of the message.
    #[error("{count} bytes after the end of the control message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The type byte is not assigned. Receivers ignore such messages (newer peers).
    #[error("unknown control message type {0:#04x}")]
    UnknownType(u8),
    /// A count or length exceeds its limit.
    #[error("{field} is {value}, over the limit of {limit}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The limit.
        limit: usize,
    },
    /// A catalog with no stream, or a stream with an empty name.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A string is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A stream id is not below [`crate::MAX_STREAMS`].
    #[error("stream id {0} is out of range")]
    BadStreamId(u8),
    /// A codec value is not assigned.
    #[error("codec {0:#04x} is not assigned")]
    UnknownCodec(u8),
    /// A codec is listed twice in a Select.
    #[error("codec {0:#04x} is listed twice")]
    RepeatedCodec(u8),
    /// A source state or status reason value is not assigned.
    #[error("{field} value {value} is not assigned")]
    UnknownValue {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u8,
    },
}

impl ControlMessage {
    /// Encodes the message, checking every limit (so a message that encodes decodes).
    pub fn encode(&self) -> Result<Vec<u8>, ControlMessageError> {
        let mut out = Vec::new();
        match self {
            ControlMessage::Catalog { streams } => {
                out.push(MSG_CATALOG);
                if streams.is_empty() {
                    return Err(ControlMessageError::Empty("catalog"));
                }
                push_count(&mut out, "streams", streams.len(), MAX_CATALOG_STREAMS)?;
                for stream in streams {
                    if stream.name.is_empty() {
                        return Err(ControlMessageError::Empty("stream name"));
                    }
                    push_text(&mut out, "stream name", &stream.name, MAX_STREAM_NAME_LEN)?;
                    push_count(&mut out, "tracks", stream.tracks.len(), MAX_STREAM_TRACKS)?;
                    for track in &stream.tracks {
                        out.push(track.stream.get());
                        out.push(track.codec.to_u8());
                    }
                }
            }
            ControlMessage::Select { stream, accepts } => {
                out.push(MSG_SELECT);
                push_text(&mut out, "stream name", stream, MAX_STREAM_NAME_LEN)?;
                push_count(
                    &mut out,
                    "accepted codecs",
                    accepts.len(),
                    MAX_ACCEPTED_CODECS,
                )?;
                for (index, codec) in accepts.iter().enumerate() {
                    if accepts[..index].contains(codec) {
                        return Err(ControlMessageError::RepeatedCodec(codec.to_u8()));
                    }
                    out.push(codec.to_u8());
                }
            }
            ControlMessage::Status {
                state,
                reason,
                text,
            } => {
                out.push(MSG_STATUS);
                out.push(state.to_u8());
                out.push(reason.to_u8());
                push_text(&mut out, "status text", text, MAX_STATUS_TEXT_LEN)?;
            }
        }
        Ok(out)
    }

    /// Decodes one message; the whole of `bytes` must be that message.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlMessageError> {
        let mut r = Reader(bytes);
        let message = match r.u8()? {
            MSG_CATALOG => {
                let count = r.count("streams", MAX_CATALOG_STREAMS)?;
                if count == 0 {
                    return Err(ControlMessageError::Empty("catalog"));
                }
                let mut streams = Vec::with_capacity(count);
                for _ in 0..count {
                    let name = r.text("stream name", MAX_STREAM_NAME_LEN)?;
                    if name.is_empty() {
                        return Err(ControlMessageError::Empty("stream name"));
                    }
                    let tracks = r.count("tracks", MAX_STREAM_TRACKS)?;
                    let tracks = (0..tracks)
                        .map(|_| {
                            let id = r.u8()?;
                            let stream =
                                StreamId::new(id).ok_or(ControlMessageError::BadStreamId(id))?;
                            Ok(Track {
                                stream,
                                codec: r.codec()?,
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    streams.push(CatalogStream { name, tracks });
                }
                ControlMessage::Catalog { streams }
            }
            MSG_SELECT => {
                let stream = r.text("stream name", MAX_STREAM_NAME_LEN)?;
                let count = r.count("accepted codecs", MAX_ACCEPTED_CODECS)?;
                let mut accepts = Vec::with_capacity(count);
                for _ in 0..count {
                    let codec = r.codec()?;
                    if accepts.contains(&codec) {
                        return Err(ControlMessageError::RepeatedCodec(codec.to_u8()));
                    }
                    accepts.push(codec);
                }
                ControlMessage::Select { stream, accepts }
            }
            MSG_STATUS => {
                let value = r.u8()?;
                let state =
                    SourceState::from_u8(value).ok_or(ControlMessageError::UnknownValue {
                        field: "source state",
                        value,
                    })?;
                let value = r.u8()?;
                let reason =
                    StatusReason::from_u8(value).ok_or(ControlMessageError::UnknownValue {
                        field: "status reason",
                        value,
                    })?;
                let text = r.text("status text", MAX_STATUS_TEXT_LEN)?;
                ControlMessage::Status {
                    state,
                    reason,
                    text,
                }
            }
            other => return Err(ControlMessageError::UnknownType(other)),
        };
        if !r.0.is_empty() {
            return Err(ControlMessageError::TrailingBytes { count: r.0.len() });
        }
        Ok(message)
    }
}

fn push_count(
    out: &mut Vec<u8>,
    field: &'static str,
    value: usize,
    limit: usize,
) -> Result<(), ControlMessageError> {
    if value > limit {
        return Err(ControlMessageError::TooMany {
            field,
            value,
            limit,
        });
    }
    // Every limit is below 256.
    out.push(value as u8);
    Ok(())
}

fn push_text(
    out: &mut Vec<u8>,
    field: &'static str,
    text: &str,
    limit: usize,
) -> Result<(), ControlMessageError> {
    push_count(out, field, text.len(), limit)?;
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, ControlMessageError> {
        let (&first, rest) = self.0.split_first().ok_or(ControlMessageError::Truncated)?;
        self.0 = rest;
        Ok(first)
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], ControlMessageError> {
        if self.0.len() < len {
            return Err(ControlMessageError::Truncated);
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn count(&mut self, field: &'static str, limit: usize) -> Result<usize, ControlMessageError> {
        let value = usize::from(self.u8()?);
        if value > limit {
            return Err(ControlMessageError::TooMany {
                field,
                value,
                limit,
            });
        }
        Ok(value)
    }

    fn text(&mut self, field: &'static str, limit: usize) -> Result<String, ControlMessageError> {
        let len = self.count(field, limit)?;
        let bytes = self.bytes(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ControlMessageError::NotUtf8(field))
    }

    fn codec(&mut self) -> Result<Codec, ControlMessageError> {
        let value = self.u8()?;
        Codec::from_u8(value).ok_or(ControlMessageError::UnknownCodec(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codec() -> impl Strategy<Value = Codec> {
        proptest::sample::select(Codec::ALL.to_vec())
    }

    fn name(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[a-z0-9_é]{{1,{}}}", max / 2)).expect("regex")
    }

    fn message() -> impl Strategy<Value = ControlMessage> {
        let track = (0u8..16, codec()).prop_map(|(id, codec)| Track {
            stream: StreamId::new(id).expect("id"),
            codec,
        });
        let stream = (
            name(MAX_STREAM_NAME_LEN),
            proptest::collection::vec(track, 0..=MAX_STREAM_TRACKS),
        )
            .prop_map(|(name, tracks)| CatalogStream { name, tracks });
        prop_oneof![
            proptest::collection::vec(stream, 1..=MAX_CATALOG_STREAMS)
                .prop_map(|streams| ControlMessage::Catalog { streams }),
            (
                name(MAX_STREAM_NAME_LEN),
                proptest::sample::subsequence(Codec::ALL.to_vec(), 0..=MAX_ACCEPTED_CODECS)
            )
                .prop_map(|(stream, accepts)| ControlMessage::Select { stream, accepts }),
            (0u8..3, 0u8..6, name(MAX_STATUS_TEXT_LEN)).prop_map(|(s, r, text)| {
                ControlMessage::Status {
                    state: SourceState::from_u8(s).expect("state"),
                    reason: StatusReason::from_u8(r).expect("reason"),
                    text,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip_and_fit_one_control_message(message in message()) {
            let bytes = message.encode().expect("encodes");
            prop_assert!(bytes.len() <= crate::wire::MAX_CONTROL_MESSAGE_LEN);
            prop_assert_eq!(ControlMessage::decode(&bytes).expect("decodes"), message);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ControlMessage::decode(&bytes);
        }
    }

    #[test]
    fn every_limit_is_enforced_both_ways() {
        let track = Track {
            stream: StreamId::VIDEO,
            codec: Codec::H264,
        };
        let stream = |name: &str, tracks: usize| CatalogStream {
            name: name.into(),
            tracks: vec![track; tracks],
        };
        let too_many = ControlMessage::Catalog {
            streams: vec![stream("s", 0); MAX_CATALOG_STREAMS + 1],
        };
        assert!(matches!(
            too_many.encode(),
            Err(ControlMessageError::TooMany {
                field: "streams",
                ..
            })
        ));
        let long_name = "n".repeat(MAX_STREAM_NAME_LEN + 1);
        assert!(matches!(
            ControlMessage::Catalog {
                streams: vec![stream(&long_name, 1)]
            }
            .encode(),
            Err(ControlMessageError::TooMany {
                field: "stream name",
                ..
            })
        ));
        assert!(matches!(
            ControlMessage::Catalog {
                streams: vec![stream("main", MAX_STREAM_TRACKS + 1)]
            }
            .encode(),
            Err(ControlMessageError::TooMany {
                field: "tracks",
                ..
            })
        ));
        let full = ControlMessage::Catalog {
            streams: vec![
                stream(&"n".repeat(MAX_STREAM_NAME_LEN), MAX_STREAM_TRACKS);
                MAX_CATALOG_STREAMS
            ],
        };
        let bytes = full.encode().expect("at the limits");
        assert!(bytes.len() <= crate::wire::MAX_CONTROL_MESSAGE_LEN);
        assert_eq!(ControlMessage::decode(&bytes), Ok(full));
        let status = ControlMessage::Status {
            state: SourceState::Failing,
            reason: StatusReason::None,
            text: "x".repeat(MAX_STATUS_TEXT_LEN + 1),
        };
        assert!(matches!(
            status.encode(),
            Err(ControlMessageError::TooMany { .. })
        ));
        // Decoders: a count over its limit, before anything is allocated.
        assert!(matches!(
            ControlMessage::decode(&[MSG_CATALOG, MAX_CATALOG_STREAMS as u8 + 1]),
            Err(ControlMessageError::TooMany {
                field: "streams",
                ..
            })
        ));
        assert!(matches!(
            ControlMessage::decode(&[MSG_STATUS, 2, 1, MAX_STATUS_TEXT_LEN as u8 + 1]),
            Err(ControlMessageError::TooMany {
                field: "status text",
                ..
            })
        ));
        assert_eq!(
            ControlMessage::decode(&[MSG_SELECT, 0, 2, 0x01, 0x01]),
            Err(ControlMessageError::RepeatedCodec(0x01))
        );
    }
}
