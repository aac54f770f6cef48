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

/// A set of frame streams, e.g. the streams a viewer is subscribed to: one bit per
/// [`StreamId`], so it is `Copy` and costs nothing to test per frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StreamSet(u16);

// One bit per stream id.
const _: () = assert!(MAX_STREAMS <= u16::BITS as usize);

impl StreamSet {
    /// No stream.
    pub const EMPTY: StreamSet = StreamSet(0);
    /// Every stream id.
    pub const ALL: StreamSet = StreamSet(u16::MAX);

    /// The set of `streams`.
    pub const fn of(streams: &[StreamId]) -> StreamSet {
        let mut set = StreamSet::EMPTY;
        let mut i = 0;
        while i < streams.len() {
            set = set.with(streams[i]);
            i += 1;
        }
        set
    }

    /// This set and `stream`.
    #[must_use]
    pub const fn with(self, stream: StreamId) -> StreamSet {
        StreamSet(self.0 | 1 << stream.0)
    }

    /// This set without `stream`.
    #[must_use]
    pub const fn without(self, stream: StreamId) -> StreamSet {
        StreamSet(self.0 & !(1 << stream.0))
    }

    /// Whether `stream` is in the set.
    pub const fn contains(self, stream: StreamId) -> bool {
        self.0 & (1 << stream.0) != 0
    }

    /// The streams in this set or in `other`.
    #[must_use]
    pub const fn union(self, other: StreamSet) -> StreamSet {
        StreamSet(self.0 | other.0)
    }

    /// The streams in both this set and `other`.
    #[must_use]
    pub const fn intersection(self, other: StreamSet) -> StreamSet {
        StreamSet(self.0 & other.0)
    }

    /// The streams of this set that are not in `other`.
    #[must_use]
    pub const fn difference(self, other: StreamSet) -> StreamSet {
        StreamSet(self.0 & !other.0)
    }

    /// Whether the set has no stream.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The streams in the set, lowest id first.
    pub fn iter(self) -> impl Iterator<Item = StreamId> {
        (0..MAX_STREAMS as u8)
            .map(StreamId)
            .filter(move |stream| self.contains(*stream))
    }
}

impl FromIterator<StreamId> for StreamSet {
    fn from_iter<I: IntoIterator<Item = StreamId>>(streams: I) -> Self {
        streams.into_iter().fold(StreamSet::EMPTY, StreamSet::with)
    }
}

impl std::fmt::Debug for StreamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.iter().map(StreamId::get))
            .finish()
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

    #[test]
    fn stream_sets_hold_every_id_and_nothing_else() {
        let last = StreamId::new(15).expect("id 15");
        let set = StreamSet::of(&[StreamId::VIDEO, last]);
        assert!(set.contains(StreamId::VIDEO) && set.contains(last));
        assert!(!set.contains(StreamId::AUDIO));
        assert_eq!(set.iter().collect::<Vec<_>>(), [StreamId::VIDEO, last]);
        assert_eq!(set.without(last), StreamSet::of(&[StreamId::VIDEO]));
        assert_eq!(set.difference(StreamSet::of(&[last])), set.without(last));
        assert_eq!(StreamSet::ALL.iter().count(), MAX_STREAMS);
        assert!(StreamSet::EMPTY.is_empty() && StreamSet::EMPTY.iter().next().is_none());
        assert_eq!(set.iter().collect::<StreamSet>(), set);
        assert_eq!(set.without(last).union(StreamSet::of(&[last])), set);
        assert_eq!(
            set.intersection(StreamSet::of(&[last])),
            StreamSet::of(&[last])
        );
        assert_eq!(format!("{set:?}"), "{0, 15}");
    }
}
