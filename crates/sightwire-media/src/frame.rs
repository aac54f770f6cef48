//! Media frames as the application hands them in: stream, codec, flags, capture time and
//! the encoded bytes; and their zero-copy split into fragments.

use bytes::Bytes;

use crate::wire::{FRAGMENT_HEADER_LEN, MAX_FRAGMENT_COUNT, MAX_FRAME_SIZE_LIMIT};

/// Number of frame streams a connection multiplexes (stream ids `0..MAX_STREAMS`).
///
/// Fixed so the per-stream receiver table is a fixed array that hostile input cannot grow.
pub const MAX_STREAMS: usize = 16;

/// A frame stream on one connection (video, audio, metadata, ...).
///
/// The reliable control channel is not a frame stream; it has its own packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(u8);

impl StreamId {
    /// The main video stream.
    pub const VIDEO: StreamId = StreamId(0);
    /// The main audio stream (camera microphone, or viewer talk-back).
    pub const AUDIO: StreamId = StreamId(1);
    /// Timed metadata (analytics events, ONVIF metadata, ...).
    pub const METADATA: StreamId = StreamId(2);

    /// Returns the stream id for `id`, or `None` if `id >= MAX_STREAMS`.
    pub const fn new(id: u8) -> Option<StreamId> {
        if (id as usize) < MAX_STREAMS {
            Some(StreamId(id))
        } else {
            None
        }
    }

    /// The id as carried on the wire.
    pub const fn get(self) -> u8 {
        self.0
    }

    pub(crate) const fn index(self) -> usize {
        self.0 as usize
    }
}

/// The codec of a frame's payload. The wire value is the `u8` in `spec/media.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// H.264 / AVC access unit in Annex B byte-stream format.
    H264,
    /// H.265 / HEVC access unit in Annex B byte-stream format.
    H265,
    /// One complete JPEG image (Motion JPEG).
    Mjpeg,
    /// One raw AAC access unit (no ADTS header); the config is the AudioSpecificConfig.
    Aac,
    /// G.711 µ-law samples (8 kHz).
    G711Mu,
    /// G.711 A-law samples (8 kHz).
    G711A,
    /// One Opus packet.
    Opus,
    /// Opaque timed metadata chosen by the application.
    Metadata,
}

impl Codec {
    /// Every codec, in wire-value order.
    pub const ALL: [Codec; 8] = [
        Codec::H264,
        Codec::H265,
        Codec::Mjpeg,
        Codec::Aac,
        Codec::G711Mu,
        Codec::G711A,
        Codec::Opus,
        Codec::Metadata,
    ];

    /// The codec's wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            Codec::H264 => 0x01,
            Codec::H265 => 0x02,
            Codec::Mjpeg => 0x03,
            Codec::Aac => 0x10,
            Codec::G711Mu => 0x11,
            Codec::G711A => 0x12,
            Codec::Opus => 0x13,
            Codec::Metadata => 0x20,
        }
    }

    /// The codec for a wire value, or `None` if it is not assigned.
    pub const fn from_u8(value: u8) -> Option<Codec> {
        Some(match value {
            0x01 => Codec::H264,
            0x02 => Codec::H265,
            0x03 => Codec::Mjpeg,
            0x10 => Codec::Aac,
            0x11 => Codec::G711Mu,
            0x12 => Codec::G711A,
            0x13 => Codec::Opus,
            0x20 => Codec::Metadata,
            _ => return None,
        })
    }

    /// Whether frames of this codec may depend on earlier frames (inter prediction), so
    /// that after a lost frame later non-key frames cannot be decoded until a keyframe.
    pub const fn has_interframe_dependency(self) -> bool {
        matches!(self, Codec::H264 | Codec::H265)
    }
}

/// One encoded media frame: what an encoder produces and a decoder consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The stream the frame belongs to.
    pub stream: StreamId,
    /// The payload codec.
    pub codec: Codec,
    /// The frame can be decoded without any earlier frame (IDR / IRAP, or any audio frame).
    pub keyframe: bool,
    /// The payload carries the codec configuration (SPS/PPS/VPS, AudioSpecificConfig).
    pub codec_config: bool,
    /// Capture (presentation) time in microseconds on the stream's media clock. The origin
    /// is the sender's choice; it must not go backwards within a stream.
    pub capture_time_us: u64,
    /// The encoded payload; `1..=MAX_FRAME_SIZE_LIMIT` bytes.
    pub data: Bytes,
}

/// Why a frame cannot be packetized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketizeError {
    /// The frame has no payload; every frame carries at least one byte.
    #[error("frame is empty")]
    EmptyFrame,
    /// The frame is larger than this configuration or the protocol allows.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Payload size of the frame.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The frame would need more than [`MAX_FRAGMENT_COUNT`] fragments at this packet size.
    #[error("frame of {size} bytes needs {needed} fragments, more than the limit of {limit}")]
    TooManyFragments {
        /// Payload size of the frame.
        size: usize,
        /// Fragments it would need.
        needed: usize,
        /// [`MAX_FRAGMENT_COUNT`].
        limit: usize,
    },
    /// The packet size leaves no room for fragment payload after the header.
    #[error("packet size {packet_size} leaves no room for payload")]
    PacketTooSmall {
        /// The packet size asked for.
        packet_size: usize,
    },
}

/// A frame split into fragments once, for every viewer.
///
/// Fragments are `Bytes` slices of [`Frame::data`]: splitting copies nothing, and cloning a
/// `PacketizedFrame` for another viewer only bumps reference counts. The split is even:
/// `fragment_count = ceil(size / max_payload)` fragments of `ceil(size / fragment_count)`
/// bytes, the last one possibly shorter, so a receiver can place any fragment knowing only
/// the frame size, the fragment count and the fragment index.
#[derive(Debug, Clone)]
pub struct PacketizedFrame {
    frame: Frame,
    fragment_len: usize,
    fragment_count: u16,
}

impl PacketizedFrame {
    /// Splits `frame` for media packets of at most `max_packet_size` bytes (see
    /// [`crate::Config::max_packet_size`]).
    pub fn new(frame: Frame, max_packet_size: usize) -> Result<PacketizedFrame, PacketizeError> {
        let size = frame.data.len();
        if size == 0 {
            return Err(PacketizeError::EmptyFrame);
        }
        if size > MAX_FRAME_SIZE_LIMIT {
            return Err(PacketizeError::FrameTooLarge {
                size,
                limit: MAX_FRAME_SIZE_LIMIT,
            });
        }
        let max_payload = max_packet_size.saturating_sub(FRAGMENT_HEADER_LEN);
        if max_payload == 0 {
            return Err(PacketizeError::PacketTooSmall {
                packet_size: max_packet_size,
            });
        }
        let needed = size.div_ceil(max_payload);
        let fragment_count = u16::try_from(needed)
            .ok()
            .filter(|&count| usize::from(count) <= MAX_FRAGMENT_COUNT)
            .ok_or(PacketizeError::TooManyFragments {
                size,
                needed,
                limit: MAX_FRAGMENT_COUNT,
            })?;
        let fragment_len = size.div_ceil(needed);
        Ok(PacketizedFrame {
            frame,
            fragment_len,
            fragment_count,
        })
    }

    /// The frame this was made from.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// Number of fragments.
    pub fn fragment_count(&self) -> u16 {
        self.fragment_count
    }

    /// Payload bytes per fragment (all but the last, which may be shorter).
    pub fn fragment_len(&self) -> usize {
        self.fragment_len
    }

    /// The largest media packet this frame produces (header plus largest fragment).
    pub fn max_packet_len(&self) -> usize {
        FRAGMENT_HEADER_LEN + self.fragment_len
    }

    /// Fragment `index` as a zero-copy slice of the frame, or `None` past the end.
    pub fn fragment(&self, index: u16) -> Option<Bytes> {
        fragment_range(self.frame.data.len(), self.fragment_count, index)
            .map(|range| self.frame.data.slice(range))
    }
}

/// The byte range of fragment `index` in a frame of `size` bytes split into `count` even
/// fragments, or `None` if the index is out of range or the layout is impossible.
pub(crate) fn fragment_range(
    size: usize,
    count: u16,
    index: u16,
) -> Option<core::ops::Range<usize>> {
    if index >= count || !layout_is_valid(size, count) {
        return None;
    }
    let chunk = size.div_ceil(usize::from(count));
    let start = chunk.checked_mul(usize::from(index))?;
    let end = start.checked_add(chunk)?.min(size);
    (start < end).then_some(start..end)
}

/// Whether `count` even fragments of a `size`-byte frame all carry at least one byte.
pub(crate) fn layout_is_valid(size: usize, count: u16) -> bool {
    if size == 0 || count == 0 || usize::from(count) > size {
        return false;
    }
    let chunk = size.div_ceil(usize::from(count));
    chunk
        .checked_mul(usize::from(count) - 1)
        .is_some_and(|before_last| before_last < size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_layouts() {
        assert_eq!(fragment_range(10, 4, 0), Some(0..3));
        assert_eq!(fragment_range(10, 4, 3), Some(9..10));
        assert_eq!(fragment_range(10, 4, 4), None);
        // Six slots of two bytes would leave the last one empty.
        assert!(!layout_is_valid(10, 6));
        assert!(!layout_is_valid(2, 3));
        assert!(!layout_is_valid(0, 1));
        assert!(!layout_is_valid(5, 0));
        assert!(layout_is_valid(1, 1));
    }

    #[test]
    fn stream_ids_and_codecs() {
        assert_eq!(StreamId::new(15).map(StreamId::get), Some(15));
        assert_eq!(StreamId::new(16), None);
        for codec in Codec::ALL {
            assert_eq!(Codec::from_u8(codec.to_u8()), Some(codec));
        }
        assert_eq!(Codec::from_u8(0), None);
        assert!(Codec::H265.has_interframe_dependency());
        assert!(!Codec::Mjpeg.has_interframe_dependency());
    }

    #[test]
    fn packetize_rejects_what_cannot_be_sent() {
        let frame = |len: usize| Frame {
            stream: StreamId::VIDEO,
            codec: Codec::H264,
            keyframe: true,
            codec_config: false,
            capture_time_us: 0,
            data: Bytes::from(vec![0; len]),
        };
        assert_eq!(
            PacketizedFrame::new(frame(0), 1200).unwrap_err(),
            PacketizeError::EmptyFrame
        );
        assert_eq!(
            PacketizedFrame::new(frame(1), FRAGMENT_HEADER_LEN).unwrap_err(),
            PacketizeError::PacketTooSmall {
                packet_size: FRAGMENT_HEADER_LEN
            }
        );
        assert!(matches!(
            PacketizedFrame::new(frame(MAX_FRAME_SIZE_LIMIT + 1), 1200),
            Err(PacketizeError::FrameTooLarge { .. })
        ));
        // 65 535 one-byte fragments would be needed: over the count limit.
        assert!(matches!(
            PacketizedFrame::new(frame(MAX_FRAGMENT_COUNT + 1), FRAGMENT_HEADER_LEN + 1),
            Err(PacketizeError::TooManyFragments { .. })
        ));
        let packetized = PacketizedFrame::new(frame(2345), 1200).unwrap();
        assert_eq!(
            (packetized.fragment_count(), packetized.fragment_len()),
            (3, 782)
        );
    }
}
