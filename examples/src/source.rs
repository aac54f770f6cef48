//! Where a camera's frames come from: an H.264 Annex-B file played at its frame rate
//! (looping), or a synthetic source.

use std::time::Duration;

use bytes::Bytes;
use sightwire::{Codec, Frame, StreamId};

use crate::annexb::access_units;

/// A sequence of video frames with a fixed frame interval: one cycle of frames held in
/// memory, played once or looped.
#[derive(Debug)]
pub struct FrameSource {
    cycle: Vec<(Bytes, bool, bool)>,
    next: usize,
    /// Time between frames.
    pub interval: Duration,
    produced: u64,
    /// Frames to produce in all; `None` loops for ever.
    total: Option<u64>,
}

impl FrameSource {
    /// Frames from an Annex-B H.264 stream, `fps` frames per second, once or looping.
    pub fn annexb(stream: &[u8], fps: u32, looping: bool) -> anyhow::Result<Self> {
        let cycle: Vec<_> = access_units(stream)
            .into_iter()
            .map(|u| (Bytes::from(u.data), u.keyframe, u.codec_config))
            .collect();
        anyhow::ensure!(!cycle.is_empty(), "no H.264 access units in the input");
        let total = (!looping).then_some(cycle.len() as u64);
        Ok(Self {
            cycle,
            next: 0,
            interval: Duration::from_secs(1) / fps.max(1),
            produced: 0,
            total,
        })
    }

    /// A synthetic stream (not decodable video): a 60 KB "keyframe" every `gop` frames
    /// and 6 KB frames in between, each filled with a pattern derived from its position
    /// in the GOP. One GOP is kept in memory and repeated; `frames` bounds the total
    /// (`None`: endless).
    pub fn synthetic(fps: u32, gop: u32, frames: Option<u32>) -> Self {
        let cycle = (0..gop.max(1))
            .map(|i| {
                let keyframe = i == 0;
                let len = if keyframe { 60_000 } else { 6_000 };
                let data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
                (Bytes::from(data), keyframe, keyframe)
            })
            .collect();
        Self {
            cycle,
            next: 0,
            interval: Duration::from_secs(1) / fps.max(1),
            produced: 0,
            total: frames.map(u64::from),
        }
    }

    /// Frames the source produces in all, or per loop when it loops for ever.
    pub fn len(&self) -> usize {
        self.total.map_or(self.cycle.len(), |t| t as usize)
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
        if self.next >= self.cycle.len() {
            self.next = 0;
        }
        let (data, keyframe, codec_config) = self.cycle.get(self.next)?.clone();
        self.next += 1;
        let capture_time_us = self.produced * self.interval.as_micros() as u64;
        self.produced += 1;
        Some(Frame {
            stream: StreamId::VIDEO,
            codec: Codec::H264,
            keyframe,
            codec_config,
            capture_time_us,
            data,
        })
    }
}
