//! Media frames as the application hands them in: stream, codec, flags, capture time and
//! the encoded bytes; and their zero-copy split into fragments.

use bytes::Bytes;

use crate::stream::{Codec, StreamId};
use crate::wire::{FRAGMENT_HEADER_LEN, MAX_FRAGMENT_COUNT, MAX_FRAME_SIZE_LIMIT, fragment_range};

/// One encoded media frame: what an encoder produces and a decoder consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// How far into a frame [`Frame::is_discardable`] looks for its first picture NAL unit
/// (parameter sets and SEI come first and are short).
pub const DISCARDABLE_SCAN_LIMIT: usize = 4096;

impl Frame {
    /// A frame of `stream` in `codec` captured at `capture_time_us`, neither a keyframe
    /// nor carrying codec configuration (see [`Frame::keyframe`] and
    /// [`Frame::with_codec_config`]).
    pub fn new(stream: StreamId, codec: Codec, capture_time_us: u64, data: Bytes) -> Self {
        Self {
            stream,
            codec,
            keyframe: false,
            codec_config: false,
            capture_time_us,
            data,
        }
    }

    /// The frame, marked as decodable on its own (or not).
    #[must_use]
    pub fn with_keyframe(mut self, keyframe: bool) -> Self {
        self.keyframe = keyframe;
        self
    }

    /// The frame, marked as carrying the codec configuration (or not).
    #[must_use]
    pub fn with_codec_config(mut self, codec_config: bool) -> Self {
        self.codec_config = codec_config;
        self
    }

    /// Whether no later frame can reference this one, so dropping it alone leaves the
    /// stream decodable: an H.264 picture whose first slice has `nal_ref_idc` 0, an H.265
    /// sub-layer non-reference picture (NAL types 0, 2, …, 14), or any Motion JPEG image.
    /// Keyframes, audio and metadata are never discardable. Looks at most
    /// [`DISCARDABLE_SCAN_LIMIT`] bytes; a frame whose first picture NAL unit starts later
    /// counts as a reference (the safe answer).
    pub fn is_discardable(&self) -> bool {
        if self.keyframe {
            return false;
        }
        match self.codec {
            Codec::Mjpeg => true,
            Codec::H264 => first_picture_nal(&self.data, |header| {
                let nal_type = header[0] & 0x1F;
                (1..=5).contains(&nal_type).then_some(header[0] & 0x60 == 0)
            }),
            Codec::H265 => first_picture_nal(&self.data, |header| {
                let nal_type = (header[0] >> 1) & 0x3F;
                (nal_type < 32).then_some(nal_type <= 14 && nal_type % 2 == 0)
            }),
            _ => false,
        }
    }
}

/// Walks the Annex B start codes in the first [`DISCARDABLE_SCAN_LIMIT`] bytes of `data`
/// and returns what `classify` says about the first NAL unit it has an answer for (it gets
/// the two bytes after the start code); `false` if none.
fn first_picture_nal(data: &[u8], classify: impl Fn([u8; 2]) -> Option<bool>) -> bool {
    let scan = data.get(..DISCARDABLE_SCAN_LIMIT).unwrap_or(data);
    let mut zeros = 0usize;
    for (index, &byte) in scan.iter().enumerate() {
        if byte == 1 && zeros >= 2 {
            let header = [scan.get(index + 1).copied(), scan.get(index + 2).copied()];
            if let [Some(first), Some(second)] = header
                && let Some(answer) = classify([first, second])
            {
                return answer;
            }
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    fn video(codec: Codec, keyframe: bool, data: &[u8]) -> Frame {
        Frame {
            stream: StreamId::VIDEO,
            codec,
            keyframe,
            codec_config: false,
            capture_time_us: 0,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn discardable_pictures_are_recognised_from_their_nal_headers() {
        // H.264: SEI (type 6) first, then a non-reference P slice (ref_idc 0, type 1).
        let h264_non_ref = [0, 0, 0, 1, 0x06, 0x05, 0xFF, 0, 0, 1, 0x01, 0x9A];
        assert!(video(Codec::H264, false, &h264_non_ref).is_discardable());
        // The same slice with nal_ref_idc 2 is a reference.
        let h264_ref = [0, 0, 1, 0x41, 0x9A];
        assert!(!video(Codec::H264, false, &h264_ref).is_discardable());
        // An IDR is never discardable, whatever its flag says.
        assert!(!video(Codec::H264, true, &[0, 0, 1, 0x05, 0x88]).is_discardable());
        // H.265: TRAIL_N (type 0) is, TRAIL_R (type 1) is not.
        assert!(video(Codec::H265, false, &[0, 0, 1, 0x00, 0x01, 0xAF]).is_discardable());
        assert!(!video(Codec::H265, false, &[0, 0, 1, 0x02, 0x01, 0xAF]).is_discardable());
        // Every MJPEG image stands alone; audio and metadata are never dropped this way.
        assert!(video(Codec::Mjpeg, false, &[0xFF, 0xD8]).is_discardable());
        assert!(!video(Codec::Opus, false, &[1, 2, 3]).is_discardable());
        // No start code, a truncated header, or a picture past the scan limit: reference.
        assert!(!video(Codec::H264, false, &[1, 2, 3, 4]).is_discardable());
        assert!(!video(Codec::H264, false, &[0, 0, 1]).is_discardable());
        let mut late = vec![0xAB; DISCARDABLE_SCAN_LIMIT];
        late.extend_from_slice(&[0, 0, 1, 0x01, 0x9A]);
        assert!(!video(Codec::H264, false, &late).is_discardable());
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
