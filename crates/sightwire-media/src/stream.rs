//! Frame streams: the ids that multiplex them on one connection and the codecs their
//! frames carry. A leaf module: the wire format and frames both build on it.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
