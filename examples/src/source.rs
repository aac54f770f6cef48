//! Where a camera's frames come from: an H.264 Annex-B file played at its frame rate
//! (looping), or a synthetic source whose frame sizes follow a target bitrate
//! ([`FrameSource::set_target_bitrate`], like an encoder told a new bitrate) and that
//! makes a keyframe when asked ([`FrameSource::request_keyframe`], like an encoder told to
//! force an IDR).

use std::time::Duration;

use bytes::Bytes;
use sightwire::{Codec, Frame, StreamId};

use crate::annexb::{access_units_of, detect_codec};

/// Synthetic keyframes are this many times the size of the frames between them.
pub const SYNTHETIC_KEYFRAME_RATIO: usize = 10;
/// Smallest synthetic frame between keyframes, in bytes (the floor of the offered rate).
pub const SYNTHETIC_MIN_DELTA_BYTES: usize = 200;
/// Largest synthetic keyframe, in bytes (the ceiling of the offered rate; within the
/// media layer's default 4 MiB frame limit).
pub const SYNTHETIC_MAX_KEYFRAME_BYTES: usize = 512 * 1024;

/// Sizes of synthetic frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticSizes {
    /// Bytes of a keyframe.
    pub keyframe: usize,
    /// Bytes of a frame between keyframes.
    pub delta: usize,
}

impl Default for SyntheticSizes {
    /// 60 KB keyframes and 6 KB frames between them (1.66 Mbit/s at 30 fps with a
    /// keyframe every 60 frames).
    fn default() -> Self {
        Self {
            keyframe: 60_000,
            delta: 6_000,
        }
    }
}

impl SyntheticSizes {
    /// Sizes that offer `target_bps` at `fps` frames per second with a keyframe every
    /// `gop` frames, keyframes [`SYNTHETIC_KEYFRAME_RATIO`] times the others, within
    /// [`SYNTHETIC_MIN_DELTA_BYTES`] and [`SYNTHETIC_MAX_KEYFRAME_BYTES`].
    pub fn for_target(target_bps: u64, fps: u32, gop: u32) -> Self {
        let fps = u128::from(fps.max(1));
        let gop = u128::from(gop.max(1));
        let ratio = SYNTHETIC_KEYFRAME_RATIO as u128;
        // Bytes per GOP: keyframe + (gop - 1) deltas = delta × (ratio + gop - 1).
        let gop_bytes = u128::from(target_bps) * gop / (8 * fps);
        let delta = gop_bytes / (ratio + gop - 1);
        let max_delta = SYNTHETIC_MAX_KEYFRAME_BYTES / SYNTHETIC_KEYFRAME_RATIO;
        let delta = usize::try_from(delta)
            .unwrap_or(usize::MAX)
            .clamp(SYNTHETIC_MIN_DELTA_BYTES, max_delta);
        Self {
            keyframe: delta * SYNTHETIC_KEYFRAME_RATIO,
            delta,
        }
    }

    /// The bitrate these sizes offer at `fps` with a keyframe every `gop` frames.
    pub fn offered_bps(&self, fps: u32, gop: u32) -> u64 {
        let gop = u64::from(gop.max(1));
        let gop_bytes = self.keyframe as u64 + (gop - 1) * self.delta as u64;
        gop_bytes * 8 * u64::from(fps) / gop
    }
}

/// The frames a [`FrameSource`] plays.
#[derive(Debug)]
enum Frames {
    /// Access units held in memory: (data, keyframe, codec_config).
    Cycle(Vec<(Bytes, bool, bool)>),
    /// Generated: a keyframe every `gop` frames.
    Synthetic {
        gop: u32,
        fps: u32,
        sizes: SyntheticSizes,
        /// Byte `i` is `i as u8`: frame `n` of a GOP is the slice from `n × 31 mod 256`.
        pattern: Bytes,
    },
}

/// A sequence of video frames with a fixed frame interval: one cycle of frames held in
/// memory (or generated), played once or looped.
#[derive(Debug)]
pub struct FrameSource {
    frames: Frames,
    /// The video codec of every frame.
    codec: Codec,
    next: usize,
    /// Time between frames.
    pub interval: Duration,
    produced: u64,
    /// Frames to produce in all; `None` loops for ever.
    total: Option<u64>,
    /// The next synthetic frame starts a new GOP (a viewer asked for a keyframe).
    keyframe_requested: bool,
}

impl FrameSource {
    /// Frames from an Annex-B H.264 or H.265 stream (the codec detected from its first
    /// NAL unit, [`detect_codec`]), `fps` frames per second, once or looping.
    pub fn annexb(stream: &[u8], fps: u32, looping: bool) -> anyhow::Result<Self> {
        Self::annexb_of(detect_codec(stream), stream, fps, looping)
    }

    /// Frames from an Annex-B stream of `codec` (H.264 or H.265), `fps` frames per
    /// second, once or looping.
    pub fn annexb_of(codec: Codec, stream: &[u8], fps: u32, looping: bool) -> anyhow::Result<Self> {
        anyhow::ensure!(
            matches!(codec, Codec::H264 | Codec::H265),
            "an Annex-B stream is H.264 or H.265, not {codec:?}"
        );
        let cycle: Vec<_> = access_units_of(codec, stream)
            .into_iter()
            .map(|u| (Bytes::from(u.data), u.keyframe, u.codec_config))
            .collect();
        anyhow::ensure!(!cycle.is_empty(), "no {codec:?} access units in the input");
        let total = (!looping).then_some(cycle.len() as u64);
        Ok(Self {
            frames: Frames::Cycle(cycle),
            codec,
            next: 0,
            interval: Duration::from_secs(1) / fps.max(1),
            produced: 0,
            total,
            keyframe_requested: false,
        })
    }

    /// A synthetic stream (not decodable video): a keyframe every `gop` frames, sized
    /// [`SyntheticSizes::default`] until [`FrameSource::set_target_bitrate`], each filled
    /// with a pattern derived from its position in the GOP. `frames` bounds the total
    /// (`None`: endless).
    pub fn synthetic(fps: u32, gop: u32, frames: Option<u32>) -> Self {
        let pattern: Vec<u8> = (0..SYNTHETIC_MAX_KEYFRAME_BYTES + 256)
            .map(|i| i as u8)
            .collect();
        Self {
            codec: Codec::H264,
            frames: Frames::Synthetic {
                gop: gop.max(1),
                fps: fps.max(1),
                sizes: SyntheticSizes::default(),
                pattern: Bytes::from(pattern),
            },
            next: 0,
            interval: Duration::from_secs(1) / fps.max(1),
            produced: 0,
            total: frames.map(u64::from),
            keyframe_requested: false,
        }
    }

    /// Follows a target bitrate where the source can: a synthetic source sizes its frames
    /// to offer it ([`SyntheticSizes::for_target`]; `None` restores the default sizes) and
    /// returns the new sizes. A file plays what it holds (`None` returned); the camera
    /// drops frames instead ([`crate::rate::FrameDropper`]).
    pub fn set_target_bitrate(&mut self, target_bps: Option<u64>) -> Option<SyntheticSizes> {
        match &mut self.frames {
            Frames::Cycle(_) => None,
            Frames::Synthetic {
                gop, fps, sizes, ..
            } => {
                *sizes = target_bps.map_or_else(SyntheticSizes::default, |bps| {
                    SyntheticSizes::for_target(bps, *fps, *gop)
                });
                Some(*sizes)
            }
        }
    }

    /// Asks for a keyframe (a viewer's `Event::KeyframeRequested`): a synthetic source
    /// makes its next frame a keyframe and starts its GOP over, as an encoder forcing an
    /// IDR does, and returns true. A file cannot re-encode (false); the device's GOP cache
    /// serves a joining viewer from the last keyframe instead.
    pub fn request_keyframe(&mut self) -> bool {
        match self.frames {
            Frames::Cycle(_) => false,
            Frames::Synthetic { .. } => {
                self.keyframe_requested = true;
                true
            }
        }
    }

    /// Whether the source generates its frames (and so follows a target by itself).
    pub fn is_synthetic(&self) -> bool {
        matches!(self.frames, Frames::Synthetic { .. })
    }

    /// Frames per cycle (one GOP for a synthetic source).
    fn cycle_len(&self) -> usize {
        match &self.frames {
            Frames::Cycle(cycle) => cycle.len(),
            Frames::Synthetic { gop, .. } => *gop as usize,
        }
    }

    /// Frames the source produces in all, or per loop when it loops for ever.
    pub fn len(&self) -> usize {
        self.total.map_or(self.cycle_len(), |t| t as usize)
    }

    /// Whether the source produces no frames.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next frame, stamped with its capture time; `None` at the end (never when
    /// looping).
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.total.is_some_and(|total| self.produced >= total) {
            return None;
        }
        if self.next >= self.cycle_len() || std::mem::take(&mut self.keyframe_requested) {
            self.next = 0;
        }
        let (data, keyframe, codec_config) = match &self.frames {
            Frames::Cycle(cycle) => cycle.get(self.next)?.clone(),
            Frames::Synthetic { sizes, pattern, .. } => {
                let keyframe = self.next == 0;
                let len = if keyframe {
                    sizes.keyframe
                } else {
                    sizes.delta
                };
                let start = self.next * 31 % 256;
                let data = pattern.get(start..start + len)?;
                (pattern.slice_ref(data), keyframe, keyframe)
            }
        };
        self.next += 1;
        let capture_time_us = self.produced * self.interval.as_micros() as u64;
        self.produced += 1;
        Some(
            Frame::new(StreamId::VIDEO, self.codec, capture_time_us, data)
                .with_keyframe(keyframe)
                .with_codec_config(codec_config),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_sizes_offer_the_target_within_bounds() {
        for (fps, gop) in [(30, 60), (25, 50), (10, 1), (60, 30)] {
            let low = SyntheticSizes::for_target(0, fps, gop);
            assert_eq!(low.delta, SYNTHETIC_MIN_DELTA_BYTES);
            let high = SyntheticSizes::for_target(u64::MAX, fps, gop);
            assert_eq!(high.keyframe, SYNTHETIC_MAX_KEYFRAME_BYTES / 10 * 10);
            let (floor, ceiling) = (low.offered_bps(fps, gop), high.offered_bps(fps, gop));
            for target in [
                50_000, 100_000, 300_000, 1_000_000, 2_000_000, 8_000_000, 20_000_000,
            ] {
                let sizes = SyntheticSizes::for_target(target, fps, gop);
                assert_eq!(sizes.keyframe, sizes.delta * SYNTHETIC_KEYFRAME_RATIO);
                let offered = sizes.offered_bps(fps, gop);
                if (floor..=ceiling).contains(&target) {
                    // Rounded down to whole bytes per frame: a little under, never over.
                    assert!(
                        offered <= target,
                        "{fps} fps, GOP {gop}: {offered} > {target}"
                    );
                    assert!(
                        offered * 100 >= target * 98,
                        "{fps} fps, GOP {gop}: {offered} for {target}"
                    );
                } else {
                    assert_eq!(offered, if target < floor { floor } else { ceiling });
                }
            }
        }
    }

    #[test]
    fn synthetic_frames_follow_the_target() {
        let mut source = FrameSource::synthetic(30, 60, None);
        assert!(source.is_synthetic());
        let first: Vec<Frame> = (0..60).filter_map(|_| source.next_frame()).collect();
        assert_eq!(first.len(), 60);
        assert!(first[0].keyframe && first[0].codec_config && !first[1].keyframe);
        assert_eq!((first[0].data.len(), first[1].data.len()), (60_000, 6_000));
        // Same content as the generator always had: byte j of frame i is i × 31 + j.
        assert!(
            first[7]
                .data
                .iter()
                .enumerate()
                .all(|(j, &b)| b == (7 * 31 + j) as u8)
        );
        let sizes = source.set_target_bitrate(Some(500_000)).expect("synthetic");
        let bytes: usize = (0..60)
            .filter_map(|_| source.next_frame())
            .map(|f| f.data.len())
            .sum();
        // 60 frames are 2 s: about 1 Mbit.
        let offered = bytes as u64 * 8 / 2;
        assert!((490_000..=500_000).contains(&offered), "{offered}");
        assert_eq!(sizes.offered_bps(30, 60), offered);
        assert_eq!(
            source.set_target_bitrate(None),
            Some(SyntheticSizes::default())
        );
        let clip = FrameSource::annexb(&[0, 0, 0, 1, 0x65, 0x88, 0x80], 30, true);
        assert_eq!(
            clip.expect("one access unit").set_target_bitrate(Some(1)),
            None
        );
    }

    #[test]
    fn an_h265_file_plays_as_h265_frames() {
        // VPS, SPS, PPS, an IDR picture, then a TRAIL_R picture.
        let hevc: Vec<u8> = [(32u8, 0x0C), (33, 0x01), (34, 0xC1), (19, 0xAF), (1, 0xD0)]
            .iter()
            .flat_map(|&(nal_type, first)| [0, 0, 0, 1, nal_type << 1, 0x01, first, 0xAB])
            .collect();
        let mut clip = FrameSource::annexb(&hevc, 30, false).expect("H.265 clip");
        let frames: Vec<Frame> = std::iter::from_fn(|| clip.next_frame()).collect();
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|f| f.codec == Codec::H265));
        assert!(frames[0].keyframe && frames[0].codec_config && !frames[1].keyframe);
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.data.to_vec()).collect();
        assert_eq!(joined, hevc);
        assert!(FrameSource::annexb_of(Codec::Aac, &hevc, 30, false).is_err());
    }

    #[test]
    fn a_synthetic_source_makes_a_keyframe_when_asked() {
        let mut source = FrameSource::synthetic(30, 60, None);
        let keyframes = |source: &mut FrameSource, n: usize| -> Vec<bool> {
            (0..n)
                .map(|_| source.next_frame().expect("endless").keyframe)
                .collect()
        };
        assert_eq!(keyframes(&mut source, 3), [true, false, false]);
        assert!(source.request_keyframe());
        // Asked twice before the next frame: one keyframe.
        assert!(source.request_keyframe());
        let frame = source.next_frame().unwrap();
        assert!(frame.keyframe && frame.codec_config);
        assert_eq!(frame.data.len(), SyntheticSizes::default().keyframe);
        // The capture clock goes on; the GOP starts over from the forced keyframe.
        assert_eq!(
            frame.capture_time_us,
            3 * source.interval.as_micros() as u64
        );
        let rest = keyframes(&mut source, 60);
        assert_eq!(rest.iter().filter(|&&k| k).count(), 1);
        assert!(
            rest[59],
            "the next scheduled keyframe is 60 frames after the forced one"
        );
        // A file cannot re-encode.
        let mut clip = FrameSource::annexb(&[0, 0, 0, 1, 0x65, 0x88, 0x80], 30, true).unwrap();
        assert!(!clip.request_keyframe());
    }
}
