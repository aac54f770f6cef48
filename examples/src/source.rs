//! Where a camera's frames come from: an H.264 Annex-B file played at its frame rate
//! (looping), or a synthetic source.

use std::time::Duration;

use bytes::Bytes;
use sightwire::{Codec, Frame, StreamId};

use crate::annexb::access_units;

/// A sequence of video frames with a fixed frame interval.
#[derive(Debug)]
pub struct FrameSource {
    frames: Vec<(Bytes, bool, bool)>,
    next: usize,
    /// Time between frames.
    pub interval: Duration,
    produced: u64,
    looping: bool,
}

impl FrameSource {
    /// Frames from an Annex-B H.264 stream, `fps` frames per second.
    pub fn annexb(stream: &[u8], fps: u32, looping: bool) -> anyhow::Result<Self> {
        let frames: Vec<_> = access_units(stream)
            .into_iter()
            .map(|u| (Bytes::from(u.data), u.keyframe, u.codec_config))
            .collect();
        anyhow::ensure!(!frames.is_empty(), "no H.264 access units in the input");
        Ok(Self {
            frames,
            next: 0,
            interval: Duration::from_secs(1) / fps.max(1),
            produced: 0,
            looping,
        })
    }

    /// A synthetic stream (not decodable video): a 60 KB "keyframe" every `gop` frames
    /// and 6 KB frames in between, each filled with a pattern derived from its index so
    /// a receiver can check it.
    pub fn synthetic(fps: u32, gop: u32, frames: u32) -> Self {
        let frames = (0..frames)
            .map(|i| {
                let keyframe = i % gop.max(1) == 0;
                let len = if keyframe { 60_000 } else { 6_000 };
                let data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
                (Bytes::from(data), keyframe, keyframe)
            })
            .collect();
        Self {
            frames,
            next: 0,
            interval: Duration::from_secs(1) / fps.max(1),
            produced: 0,
            looping: false,
        }
    }

    /// Frames in one pass.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the source has no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The next frame, stamped with its capture time; `None` at the end (never when
    /// looping).
    pub fn next_frame(&mut self) -> Option<Frame> {
        if self.next >= self.frames.len() {
            if !self.looping {
                return None;
            }
            self.next = 0;
        }
        let (data, keyframe, codec_config) = self.frames[self.next].clone();
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
