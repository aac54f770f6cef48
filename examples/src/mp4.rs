//! Writes received frames into an MP4 file, in Rust, while they arrive: one video track
//! (H.264 `avc1`/`avcC` or H.265 `hvc1`/`hvcC`) and one audio track (AAC `mp4a`/`esds`,
//! G.711 `alaw`/`ulaw`). Sample data goes to disk as it comes, and [`Mp4Writer::finish`]
//! writes the sample tables (`moov`) at the end. The viewer calls `finish` on Ctrl-C, so
//! an interrupted recording is still a playable file.
//!
//! The MP4 boxes come from `shiguredo_mp4`'s sans-IO [`Mp4FileMuxer`]; this module turns
//! frames into what MP4 wants: parameter sets (VPS/SPS/PPS) move from the stream into the
//! sample entry (picture size read from the SPS), each NAL unit's start code becomes a
//! 4-byte length prefix, the AAC AudioSpecificConfig (the codec-config frame) goes into
//! `esds`.
//!
//! Timing: a video sample lasts from its capture time to the next one's, both converted
//! to the 90 kHz track clock from the first frame's time (not frame to frame), so
//! rounding never accumulates: 90000/2999 fps over 10 minutes comes out exact. An audio
//! sample lasts what it holds (1024 samples for AAC, one tick per byte for G.711), in the
//! sample rate as timescale.
//!
//! Frames before the first parameter sets (or AudioSpecificConfig) cannot be decoded by a
//! player and are skipped. A change of parameter sets mid-stream starts a new sample entry.

use std::io::{Seek, SeekFrom, Write};
use std::num::{NonZeroU16, NonZeroU32};

use shiguredo_mp4::boxes::{
    AudioSampleEntryFields, Avc1Box, AvccBox, EsdsBox, Hev1Box, HvccBox, HvccNalUintArray, Mp4aBox,
    SampleEntry, UnknownBox, VisualSampleEntryFields,
};
use shiguredo_mp4::descriptors::{
    DecoderConfigDescriptor, DecoderSpecificInfo, EsDescriptor, SlConfigDescriptor,
};
use shiguredo_mp4::mux::{Mp4FileMuxer, Sample};
use shiguredo_mp4::{BoxSize, BoxType, Encode, FixedPointNumber, TrackKind, Uint};
use sightwire::Codec;

use crate::audio::{AAC_SAMPLES_PER_FRAME, AacConfig, AudioError, G711_SAMPLE_RATE};
use crate::hevc::{self, HevcSpsError};

/// MP4 media timescale for the video track: the 90 kHz RTP video clock, so RTP-derived
/// capture times convert without rounding.
pub const TIMESCALE_HZ: u32 = 90_000;

/// Duration given to the last sample (and to any sample whose successor has a capture time
/// that does not advance): one frame at 30 fps.
pub const DEFAULT_FRAME_TICKS: u32 = TIMESCALE_HZ / 30;

/// Longest sample duration accepted; a larger gap between capture times (a stall or a
/// clock jump) is shortened to this so one frame does not freeze the picture for minutes.
pub const MAX_FRAME_TICKS: u32 = TIMESCALE_HZ * 10;

/// Largest parameter set (VPS, SPS, PPS) accepted (`avcC`/`hvcC` store lengths in 16 bits).
pub const MAX_PARAMETER_SET_LEN: usize = u16::MAX as usize;

/// Largest AudioSpecificConfig accepted (`esds` descriptors are small; real ones are 2-5
/// bytes).
pub const MAX_AUDIO_CONFIG_LEN: usize = 64;

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// Why a frame or the file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Mp4Error {
    /// Writing or seeking the output failed.
    #[error("writing the MP4 file: {0}")]
    Io(#[from] std::io::Error),
    /// The MP4 muxer refused a sample or could not build the boxes.
    #[error("MP4 muxer: {0}")]
    Mux(String),
    /// The H.264 SPS could not be parsed, so the picture size is unknown.
    #[error("unreadable SPS: {0}")]
    BadSps(String),
    /// The H.265 SPS could not be parsed.
    #[error(transparent)]
    BadHevcSps(#[from] HevcSpsError),
    /// The AAC AudioSpecificConfig could not be used.
    #[error(transparent)]
    BadAudioConfig(#[from] AudioError),
    /// A parameter set or AudioSpecificConfig is larger than its box can hold.
    #[error("parameter set of {size} bytes exceeds the limit of {limit} bytes")]
    ParameterSetTooLarge {
        /// Its size.
        size: usize,
        /// [`MAX_PARAMETER_SET_LEN`] or [`MAX_AUDIO_CONFIG_LEN`].
        limit: usize,
    },
    /// The frame is larger than an MP4 sample size field (32 bits) can describe.
    #[error("frame of {size} bytes is too large for an MP4 sample")]
    FrameTooLarge {
        /// Its size once converted to length-prefixed NAL units.
        size: usize,
    },
    /// The codec has no MP4 mapping here (Motion JPEG, Opus, metadata).
    #[error("codec {0:?} cannot be written to MP4")]
    UnsupportedCodec(Codec),
    /// A track's codec changed mid-file (one MP4 track holds one codec).
    #[error("the {track} track started as {first:?} and got a {now:?} frame")]
    CodecChanged {
        /// `video` or `audio`.
        track: &'static str,
        /// The track's codec.
        first: Codec,
        /// The frame's codec.
        now: Codec,
    },
}

impl From<shiguredo_mp4::mux::MuxError> for Mp4Error {
    fn from(error: shiguredo_mp4::mux::MuxError) -> Self {
        Self::Mux(error.to_string())
    }
}

impl From<shiguredo_mp4::Error> for Mp4Error {
    fn from(error: shiguredo_mp4::Error) -> Self {
        Self::Mux(error.to_string())
    }
}

/// What [`Mp4Writer::write`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameWritten {
    /// The frame is in the file.
    Written,
    /// No parameter sets (or AudioSpecificConfig) have been seen yet, so it was skipped.
    SkippedBeforeCodecConfig,
    /// The frame held nothing but codec configuration (it went into the sample entry).
    NoPicture,
}

/// Picture size and codec description read from an SPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    /// Displayed width in pixels (after cropping).
    pub width: u32,
    /// Displayed height in pixels (after cropping).
    pub height: u32,
    /// `profile_idc`.
    pub profile_idc: u8,
    /// The constraint flags byte.
    pub constraint_flags: u8,
    /// `level_idc`.
    pub level_idc: u8,
    /// `chroma_format_idc` (1 = 4:2:0 unless the SPS says otherwise).
    pub chroma_format_idc: u8,
    /// `bit_depth_luma_minus8`.
    pub bit_depth_luma_minus8: u8,
    /// `bit_depth_chroma_minus8`.
    pub bit_depth_chroma_minus8: u8,
}

/// Profiles whose `avcC` carries the chroma format and bit depths (ISO/IEC 14496-15
/// 5.3.3.1.2: High, High 10, High 4:2:2, High 4:4:4).
const PROFILES_WITH_AVCC_EXTENSION: [u8; 4] = [100, 110, 122, 144];

/// Parses an SPS NAL unit (header byte included, no start code).
pub fn parse_sps(sps_nal: &[u8]) -> Result<SpsInfo, Mp4Error> {
    use h264_reader::nal::sps::{ChromaFormat, SeqParameterSet};
    let rbsp =
        h264_reader::rbsp::decode_nal(sps_nal).map_err(|e| Mp4Error::BadSps(e.to_string()))?;
    let sps = SeqParameterSet::from_bits(h264_reader::rbsp::BitReader::new(&*rbsp))
        .map_err(|e| Mp4Error::BadSps(format!("{e:?}")))?;
    let (width, height) = sps
        .pixel_dimensions()
        .map_err(|e| Mp4Error::BadSps(format!("{e:?}")))?;
    let chroma_format_idc = match sps.chroma_info.chroma_format {
        ChromaFormat::Monochrome => 0,
        ChromaFormat::YUV420 => 1,
        ChromaFormat::YUV422 => 2,
        ChromaFormat::YUV444 => 3,
        ChromaFormat::Invalid(idc) => {
            return Err(Mp4Error::BadSps(format!("chroma_format_idc {idc}")));
        }
    };
    Ok(SpsInfo {
        width,
        height,
        profile_idc: sps.profile_idc.into(),
        constraint_flags: sps.constraint_flags.into(),
        level_idc: sps.level_idc,
        chroma_format_idc,
        bit_depth_luma_minus8: sps.chroma_info.bit_depth_luma_minus8,
        bit_depth_chroma_minus8: sps.chroma_info.bit_depth_chroma_minus8,
    })
}

/// The NAL units of an Annex-B byte string, without start codes. Bytes before the first
/// start code are ignored; trailing zero bytes before a start code belong to it.
pub fn nal_units(annexb: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = annexb;
    // Skip to just after the first start code.
    let first = find_start_code(rest);
    rest = first.map_or(&[][..], |(_, after)| &rest[after..]);
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (nal, next) = match find_start_code(rest) {
            Some((at, after)) => (&rest[..at], &rest[after..]),
            None => (rest, &[][..]),
        };
        rest = next;
        // Zero bytes before a 4-byte start code (trailing_zero_8bits) are not NAL data.
        let end = nal.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        Some(&nal[..end])
    })
    .filter(|nal| !nal.is_empty())
}

/// Offset of the first `00 00 01` and the offset just after it.
fn find_start_code(data: &[u8]) -> Option<(usize, usize)> {
    data.windows(3)
        .position(|w| w == [0, 0, 1])
        .map(|at| (at, at + 3))
}

/// The parameter sets last seen in the stream, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ParameterSets {
    vps: Option<Vec<u8>>,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

/// A video sample held until the next frame tells its duration: the muxer takes samples in
/// file order, so it is written to disk only then (audio samples may come in between).
#[derive(Debug)]
struct PendingSample {
    data: Vec<u8>,
    keyframe: bool,
    /// Start in track ticks.
    start: i64,
    sample_entry: Option<SampleEntry>,
}

/// Converts capture times to track ticks from the first frame's time, so rounding does
/// not accumulate; `shift` is what clamped durations removed from (or added to) the clock.
#[derive(Debug, Default)]
struct TrackClock {
    origin_us: Option<u64>,
    shift: i64,
}

impl TrackClock {
    /// The unclamped tick of `capture_time_us` (nearest tick).
    fn ticks(&mut self, capture_time_us: u64) -> i64 {
        let origin = *self.origin_us.get_or_insert(capture_time_us);
        let us = u128::from(capture_time_us.saturating_sub(origin));
        let ticks = (us * u128::from(TIMESCALE_HZ) + 500_000) / 1_000_000;
        i64::try_from(ticks).unwrap_or(i64::MAX)
    }

    /// The duration of a sample starting at `start` whose successor was captured at
    /// `next_us`, within `1..=MAX_FRAME_TICKS` (a capture time that does not advance gets
    /// [`DEFAULT_FRAME_TICKS`]).
    fn duration(&mut self, start: i64, next_us: u64) -> u32 {
        let target = self.ticks(next_us);
        let wanted = target.saturating_sub(self.shift).saturating_sub(start);
        let duration = if wanted <= 0 {
            DEFAULT_FRAME_TICKS
        } else {
            u32::try_from(wanted).map_or(MAX_FRAME_TICKS, |d| d.min(MAX_FRAME_TICKS))
        };
        // What the clamp changed moves every later sample with it.
        self.shift = target.saturating_sub(start.saturating_add(i64::from(duration)));
        duration
    }
}

/// The video track's state.
#[derive(Debug, Default)]
struct VideoTrack {
    codec: Option<Codec>,
    parameter_sets: ParameterSets,
    /// Parameter sets now in the sample entry.
    in_entry: Option<ParameterSets>,
    /// A sample entry built from new parameter sets, to attach to the next sample.
    next_sample_entry: Option<SampleEntry>,
    pending: Option<PendingSample>,
    clock: TrackClock,
    last_duration: u32,
    /// Reused buffer for the length-prefixed sample being built.
    sample: Vec<u8>,
    /// The written sample's buffer, reused for the next frame but one.
    spare: Vec<u8>,
}

/// The audio track's state.
#[derive(Debug, Default)]
struct AudioTrack {
    codec: Option<Codec>,
    /// Sample rate of the sample entry in use (the track's timescale).
    sample_rate: Option<NonZeroU32>,
    config: Vec<u8>,
    next_sample_entry: Option<SampleEntry>,
}

/// Writes video and audio frames into an MP4 file as they arrive.
#[derive(Debug)]
pub struct Mp4Writer<W: Write + Seek> {
    out: W,
    muxer: Mp4FileMuxer,
    position: u64,
    video: VideoTrack,
    audio: AudioTrack,
    frames: u64,
    audio_frames: u64,
}

impl Mp4Writer<std::io::BufWriter<std::fs::File>> {
    /// Creates (truncates) the file at `path`.
    pub fn create(path: &std::path::Path) -> Result<Self, Mp4Error> {
        Self::new(std::io::BufWriter::new(std::fs::File::create(path)?))
    }
}

impl<W: Write + Seek> Mp4Writer<W> {
    /// Starts an MP4 file in `out` (written from its current start, position 0).
    pub fn new(mut out: W) -> Result<Self, Mp4Error> {
        let muxer = Mp4FileMuxer::new()?;
        let initial = muxer.initial_boxes_bytes();
        out.write_all(initial)?;
        let position = initial.len() as u64;
        Ok(Self {
            out,
            muxer,
            position,
            video: VideoTrack {
                last_duration: DEFAULT_FRAME_TICKS,
                ..VideoTrack::default()
            },
            audio: AudioTrack::default(),
            frames: 0,
            audio_frames: 0,
        })
    }

    /// Video frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Audio frames written so far.
    pub fn audio_frames(&self) -> u64 {
        self.audio_frames
    }

    /// Appends one frame: an H.264 or H.265 access unit in Annex-B form, an AAC access
    /// unit (or, with `codec_config`, the AudioSpecificConfig), or G.711 samples; captured
    /// at `capture_time_us` (the clock only has to be monotonic per stream; the first
    /// video frame is time 0 in the file).
    pub fn write(
        &mut self,
        codec: Codec,
        codec_config: bool,
        data: &[u8],
        capture_time_us: u64,
    ) -> Result<FrameWritten, Mp4Error> {
        match codec {
            Codec::H264 | Codec::H265 => self.write_video(codec, data, capture_time_us),
            Codec::Aac | Codec::G711A | Codec::G711Mu => {
                self.write_audio(codec, codec_config, data)
            }
            other => Err(Mp4Error::UnsupportedCodec(other)),
        }
    }

    /// [`Mp4Writer::write`] for a received frame.
    pub fn write_frame(&mut self, frame: &sightwire::Frame) -> Result<FrameWritten, Mp4Error> {
        self.write(
            frame.codec,
            frame.codec_config,
            &frame.data,
            frame.capture_time_us,
        )
    }

    /// Writes the sample tables and flushes. Returns the output (positioned at its end).
    pub fn finish(mut self) -> Result<W, Mp4Error> {
        let last = self.video.last_duration;
        self.flush_pending_video(last)?;
        let finalized = self.muxer.finalize()?;
        for (offset, bytes) in finalized.offset_and_bytes_pairs() {
            self.out.seek(SeekFrom::Start(offset))?;
            self.out.write_all(bytes)?;
        }
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn write_video(
        &mut self,
        codec: Codec,
        annexb: &[u8],
        capture_time_us: u64,
    ) -> Result<FrameWritten, Mp4Error> {
        check_track_codec("video", &mut self.video.codec, codec)?;
        let track = &mut self.video;
        let mut keyframe = false;
        let mut sets_seen = false;
        track.sample.clear();
        for nal in nal_units(annexb) {
            let slot = match codec {
                Codec::H265 => match hevc::nal_unit_type(nal) {
                    hevc::nal_type::VPS => Some(&mut track.parameter_sets.vps),
                    hevc::nal_type::SPS => Some(&mut track.parameter_sets.sps),
                    hevc::nal_type::PPS => Some(&mut track.parameter_sets.pps),
                    t => {
                        keyframe |= hevc::is_irap(t);
                        None
                    }
                },
                _ => match nal.first().map_or(0, |h| h & 0x1F) {
                    NAL_SPS => Some(&mut track.parameter_sets.sps),
                    NAL_PPS => Some(&mut track.parameter_sets.pps),
                    t => {
                        keyframe |= t == NAL_IDR;
                        None
                    }
                },
            };
            match slot {
                Some(slot) => {
                    if nal.len() > MAX_PARAMETER_SET_LEN {
                        return Err(Mp4Error::ParameterSetTooLarge {
                            size: nal.len(),
                            limit: MAX_PARAMETER_SET_LEN,
                        });
                    }
                    if slot.as_deref() != Some(nal) {
                        *slot = Some(nal.to_vec());
                    }
                    sets_seen = true;
                }
                None => {
                    let len = u32::try_from(nal.len())
                        .map_err(|_| Mp4Error::FrameTooLarge { size: nal.len() })?;
                    track.sample.extend_from_slice(&len.to_be_bytes());
                    track.sample.extend_from_slice(nal);
                }
            }
        }
        if sets_seen {
            self.update_video_entry(codec)?;
        }
        let track = &mut self.video;
        if track.in_entry.is_none() {
            return Ok(FrameWritten::SkippedBeforeCodecConfig);
        }
        if track.sample.is_empty() {
            return Ok(FrameWritten::NoPicture);
        }
        u32::try_from(track.sample.len()).map_err(|_| Mp4Error::FrameTooLarge {
            size: track.sample.len(),
        })?;
        let start = match &track.pending {
            Some(pending) => {
                let duration = track.clock.duration(pending.start, capture_time_us);
                let start = pending.start + i64::from(duration);
                self.flush_pending_video(duration)?;
                start
            }
            None => track.clock.ticks(capture_time_us),
        };
        let track = &mut self.video;
        // Two buffers take turns: the pending sample keeps these bytes, the next frame is
        // built in the flushed sample's allocation.
        let data = std::mem::replace(&mut track.sample, std::mem::take(&mut track.spare));
        track.pending = Some(PendingSample {
            data,
            keyframe,
            start,
            sample_entry: track.next_sample_entry.take(),
        });
        self.frames += 1;
        Ok(FrameWritten::Written)
    }

    /// Writes the pending video sample with `duration` and hands it to the muxer.
    fn flush_pending_video(&mut self, duration: u32) -> Result<(), Mp4Error> {
        let Some(pending) = self.video.pending.as_mut() else {
            return Ok(());
        };
        self.video.last_duration = duration;
        self.out.write_all(&pending.data)?;
        self.muxer.append_sample(&Sample {
            track_kind: TrackKind::Video,
            sample_entry: pending.sample_entry.take(),
            keyframe: pending.keyframe,
            timescale: VIDEO_TIMESCALE,
            duration,
            data_offset: self.position,
            data_size: pending.data.len(),
        })?;
        self.position += pending.data.len() as u64;
        // Keep the buffer for the next frame.
        self.video.spare = std::mem::take(&mut pending.data);
        self.video.pending = None;
        Ok(())
    }

    fn update_video_entry(&mut self, codec: Codec) -> Result<(), Mp4Error> {
        let track = &mut self.video;
        let sets = &track.parameter_sets;
        if track.in_entry.as_ref() == Some(sets) {
            return Ok(());
        }
        let entry = match (codec, &sets.vps, &sets.sps, &sets.pps) {
            (Codec::H265, Some(vps), Some(sps), Some(pps)) => hvc1_entry(vps, sps, pps)?,
            (Codec::H264, _, Some(sps), Some(pps)) => avc1_entry(sps, pps)?,
            _ => return Ok(()),
        };
        track.next_sample_entry = Some(entry);
        track.in_entry = Some(sets.clone());
        Ok(())
    }

    fn write_audio(
        &mut self,
        codec: Codec,
        codec_config: bool,
        data: &[u8],
    ) -> Result<FrameWritten, Mp4Error> {
        check_track_codec("audio", &mut self.audio.codec, codec)?;
        let track = &mut self.audio;
        let duration = match codec {
            Codec::Aac if codec_config => {
                if data.len() > MAX_AUDIO_CONFIG_LEN {
                    return Err(Mp4Error::ParameterSetTooLarge {
                        size: data.len(),
                        limit: MAX_AUDIO_CONFIG_LEN,
                    });
                }
                if track.config != data || track.sample_rate.is_none() {
                    let config = AacConfig::parse(data)?;
                    track.next_sample_entry = Some(mp4a_entry(&config, data));
                    track.sample_rate = NonZeroU32::new(config.sample_rate);
                    track.config = data.to_vec();
                }
                return Ok(FrameWritten::NoPicture);
            }
            Codec::Aac => AAC_SAMPLES_PER_FRAME,
            _ => {
                if track.sample_rate.is_none() {
                    track.next_sample_entry = Some(g711_entry(codec)?);
                    track.sample_rate = NonZeroU32::new(G711_SAMPLE_RATE);
                }
                u32::try_from(data.len())
                    .map_err(|_| Mp4Error::FrameTooLarge { size: data.len() })?
            }
        };
        let Some(timescale) = track.sample_rate else {
            return Ok(FrameWritten::SkippedBeforeCodecConfig);
        };
        if data.is_empty() {
            return Ok(FrameWritten::NoPicture);
        }
        self.out.write_all(data)?;
        self.muxer.append_sample(&Sample {
            track_kind: TrackKind::Audio,
            sample_entry: track.next_sample_entry.take(),
            keyframe: true,
            timescale,
            duration,
            data_offset: self.position,
            data_size: data.len(),
        })?;
        self.position += data.len() as u64;
        self.audio_frames += 1;
        Ok(FrameWritten::Written)
    }
}

/// Fixes a track's codec at its first frame; a later frame of another codec is an error.
fn check_track_codec(
    track: &'static str,
    slot: &mut Option<Codec>,
    codec: Codec,
) -> Result<(), Mp4Error> {
    match *slot.get_or_insert(codec) {
        first if first == codec => Ok(()),
        first => Err(Mp4Error::CodecChanged {
            track,
            first,
            now: codec,
        }),
    }
}

fn visual_fields(width: u32, height: u32) -> VisualSampleEntryFields {
    let dimension = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    VisualSampleEntryFields {
        data_reference_index: VisualSampleEntryFields::DEFAULT_DATA_REFERENCE_INDEX,
        width: dimension(width),
        height: dimension(height),
        horizresolution: VisualSampleEntryFields::DEFAULT_HORIZRESOLUTION,
        vertresolution: VisualSampleEntryFields::DEFAULT_VERTRESOLUTION,
        frame_count: VisualSampleEntryFields::DEFAULT_FRAME_COUNT,
        compressorname: VisualSampleEntryFields::NULL_COMPRESSORNAME,
        depth: VisualSampleEntryFields::DEFAULT_DEPTH,
    }
}

fn avc1_entry(sps: &[u8], pps: &[u8]) -> Result<SampleEntry, Mp4Error> {
    let info = parse_sps(sps)?;
    let extension = PROFILES_WITH_AVCC_EXTENSION.contains(&info.profile_idc);
    Ok(SampleEntry::Avc1(Avc1Box {
        visual: visual_fields(info.width, info.height),
        avcc_box: AvccBox {
            avc_profile_indication: info.profile_idc,
            profile_compatibility: info.constraint_flags,
            avc_level_indication: info.level_idc,
            // 4-byte NAL length prefixes.
            length_size_minus_one: Uint::new(3),
            sps_list: vec![sps.to_vec()],
            pps_list: vec![pps.to_vec()],
            chroma_format: extension.then(|| Uint::new(info.chroma_format_idc)),
            bit_depth_luma_minus8: extension.then(|| Uint::new(info.bit_depth_luma_minus8)),
            bit_depth_chroma_minus8: extension.then(|| Uint::new(info.bit_depth_chroma_minus8)),
            sps_ext_list: Vec::new(),
        },
        unknown_boxes: Vec::new(),
    }))
}

/// `hvc1` (parameter sets only in the sample entry, which is what this writer does, and
/// what Apple players require), built as `shiguredo_mp4`'s `hev1` with the other name.
fn hvc1_entry(vps: &[u8], sps: &[u8], pps: &[u8]) -> Result<SampleEntry, Mp4Error> {
    let info = hevc::parse_sps(sps)?;
    let array = |nal_unit_type: u8, nal: &[u8]| HvccNalUintArray {
        array_completeness: Uint::new(1),
        nal_unit_type: Uint::new(nal_unit_type),
        nalus: vec![nal.to_vec()],
    };
    let hev1 = Hev1Box {
        visual: visual_fields(info.width, info.height),
        hvcc_box: HvccBox {
            general_profile_space: Uint::new(info.profile_space),
            general_tier_flag: Uint::new(u8::from(info.tier_flag)),
            general_profile_idc: Uint::new(info.profile_idc),
            general_profile_compatibility_flags: info.profile_compatibility_flags,
            general_constraint_indicator_flags: Uint::new(info.constraint_indicator_flags),
            general_level_idc: info.level_idc,
            min_spatial_segmentation_idc: Uint::new(0),
            parallelism_type: Uint::new(0),
            chroma_format_idc: Uint::new(info.chroma_format_idc),
            bit_depth_luma_minus8: Uint::new(info.bit_depth_luma_minus8),
            bit_depth_chroma_minus8: Uint::new(info.bit_depth_chroma_minus8),
            avg_frame_rate: 0,
            constant_frame_rate: Uint::new(0),
            num_temporal_layers: Uint::new(info.max_sub_layers_minus1 + 1),
            temporal_id_nested: Uint::new(u8::from(info.temporal_id_nesting)),
            length_size_minus_one: Uint::new(3),
            nalu_arrays: vec![
                array(hevc::nal_type::VPS, vps),
                array(hevc::nal_type::SPS, sps),
                array(hevc::nal_type::PPS, pps),
            ],
        },
        unknown_boxes: Vec::new(),
    };
    Ok(renamed_entry(*b"hvc1", &hev1.encode_to_vec()?))
}

/// A sample entry of type `name` whose body is that of the encoded box `encoded`.
fn renamed_entry(name: [u8; 4], encoded: &[u8]) -> SampleEntry {
    // The encoded box starts with a 32-bit size and its 4-byte type.
    let payload = encoded.get(8..).unwrap_or_default().to_vec();
    let box_type = BoxType::Normal(name);
    SampleEntry::Unknown(UnknownBox {
        box_type,
        box_size: BoxSize::with_payload_size(box_type, payload.len() as u64),
        payload,
    })
}

fn audio_fields(channels: u16, sample_rate: u32) -> AudioSampleEntryFields {
    AudioSampleEntryFields {
        data_reference_index: NonZeroU16::MIN,
        channelcount: channels,
        samplesize: AudioSampleEntryFields::DEFAULT_SAMPLESIZE,
        // 16.16 fixed point; rates above 65535 Hz do not fit and are left to the esds.
        samplerate: FixedPointNumber::new(u16::try_from(sample_rate).unwrap_or(0), 0),
    }
}

fn mp4a_entry(config: &AacConfig, asc: &[u8]) -> SampleEntry {
    SampleEntry::Mp4a(Mp4aBox {
        audio: audio_fields(config.channel_count(), config.sample_rate),
        esds_box: EsdsBox {
            es: EsDescriptor {
                es_id: EsDescriptor::MIN_ES_ID,
                stream_priority: EsDescriptor::LOWEST_STREAM_PRIORITY,
                depends_on_es_id: None,
                url_string: None,
                ocr_es_id: None,
                dec_config_descr: DecoderConfigDescriptor {
                    object_type_indication:
                        DecoderConfigDescriptor::OBJECT_TYPE_INDICATION_AUDIO_ISO_IEC_14496_3,
                    stream_type: DecoderConfigDescriptor::STREAM_TYPE_AUDIO,
                    up_stream: DecoderConfigDescriptor::UP_STREAM_FALSE,
                    buffer_size_db: Uint::new(0),
                    max_bitrate: 0,
                    avg_bitrate: 0,
                    dec_specific_info: Some(DecoderSpecificInfo {
                        payload: asc.to_vec(),
                    }),
                },
                sl_config_descr: SlConfigDescriptor,
            },
        },
        unknown_boxes: Vec::new(),
    })
}

/// `alaw` / `ulaw`: QuickTime's G.711 sample entries, which ffmpeg reads and writes.
fn g711_entry(codec: Codec) -> Result<SampleEntry, Mp4Error> {
    let name = match codec {
        Codec::G711A => *b"alaw",
        _ => *b"ulaw",
    };
    let mut body = vec![0; 8];
    body.extend_from_slice(&audio_fields(1, G711_SAMPLE_RATE).encode_to_vec()?);
    Ok(renamed_entry(name, &body))
}

const VIDEO_TIMESCALE: NonZeroU32 = match NonZeroU32::new(TIMESCALE_HZ) {
    Some(t) => t,
    None => panic!("timescale is not zero"),
};

#[cfg(test)]
mod tests {
    use super::*;

    /// SPS and PPS of a 1280x720 High-profile stream, as x264 wrote them (ffmpeg testsrc2).
    const SPS_1280X720: &[u8] = &[
        0x67, 0x64, 0x00, 0x1F, 0xAC, 0xB4, 0x02, 0x80, 0x2D, 0xD8, 0x08, 0x80, 0x00, 0x00, 0x03,
        0x00, 0x80, 0x00, 0x00, 0x1E, 0x07, 0x8C, 0x19, 0x50,
    ];
    const PPS: &[u8] = &[0x68, 0xEF, 0x0F, 0xCB];

    #[test]
    fn splits_nal_units_with_three_and_four_byte_start_codes() {
        let stream = [
            0xFF, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0,
        ];
        let nals: Vec<&[u8]> = nal_units(&stream).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3], &[0x65, 4]]);
        assert_eq!(nal_units(&[]).count(), 0);
        assert_eq!(nal_units(&[1, 2, 3]).count(), 0);
    }

    #[test]
    fn reads_picture_size_from_sps() {
        let info = parse_sps(SPS_1280X720).expect("valid SPS");
        assert_eq!((info.width, info.height), (1280, 720));
        assert_eq!(info.profile_idc, 100);
        assert_eq!((info.chroma_format_idc, info.bit_depth_luma_minus8), (1, 0));
        assert!(parse_sps(&[0x67]).is_err());
        assert!(parse_sps(&SPS_1280X720[..4]).is_err());
    }

    #[test]
    fn skips_frames_before_codec_config_and_limits_parameter_sets() {
        let mut writer = Mp4Writer::new(std::io::Cursor::new(Vec::new())).expect("start");
        let slice = [0, 0, 0, 1, 0x41, 0x9A, 1, 2, 3];
        assert_eq!(
            writer.write(Codec::H264, false, &slice, 0).expect("write"),
            FrameWritten::SkippedBeforeCodecConfig
        );
        let mut huge = vec![0, 0, 0, 1, 0x67];
        huge.resize(MAX_PARAMETER_SET_LEN + 6, 0x11);
        huge.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xCE]);
        assert!(matches!(
            writer.write(Codec::H264, false, &huge, 0),
            Err(Mp4Error::ParameterSetTooLarge { .. })
        ));
        assert_eq!(writer.frames(), 0);
    }

    #[test]
    fn sample_durations_follow_capture_times() {
        let mut writer = Mp4Writer::new(std::io::Cursor::new(Vec::new())).expect("start");
        let mut idr = vec![0, 0, 0, 1];
        idr.extend_from_slice(SPS_1280X720);
        idr.extend_from_slice(&[0, 0, 0, 1]);
        idr.extend_from_slice(PPS);
        idr.extend_from_slice(&[0, 0, 1, 0x65, 0x88]);
        let p = [0, 0, 0, 1, 0x41, 0x9A, 0x01];
        assert_eq!(
            writer.write(Codec::H264, false, &idr, 1_000).expect("idr"),
            FrameWritten::Written
        );
        assert_eq!(
            writer.write(Codec::H264, false, &p, 41_000).expect("p"),
            FrameWritten::Written
        );
        // 40 ms at 90 kHz.
        assert_eq!(writer.video.last_duration, 3_600);
        // A stall longer than the cap is shortened.
        writer
            .write(Codec::H264, false, &p, 3_600_000_000)
            .expect("late p");
        assert_eq!(writer.video.last_duration, MAX_FRAME_TICKS);
        // A capture time that does not advance gets the default duration.
        writer
            .write(Codec::H264, false, &p, 3_600_000_000)
            .expect("same time");
        assert_eq!(writer.video.last_duration, DEFAULT_FRAME_TICKS);
        assert_eq!(writer.frames(), 4);
        let bytes = writer.finish().expect("finish").into_inner();
        assert!(bytes.windows(4).any(|w| w == b"moov"));
        assert!(bytes.windows(4).any(|w| w == b"avcC"));
    }

    fn idr_frame() -> Vec<u8> {
        let mut idr = vec![0, 0, 0, 1];
        idr.extend_from_slice(SPS_1280X720);
        idr.extend_from_slice(&[0, 0, 0, 1]);
        idr.extend_from_slice(PPS);
        idr.extend_from_slice(&[0, 0, 1, 0x65, 0x88]);
        idr
    }

    #[test]
    fn durations_from_capture_times_do_not_drift() {
        // 90000/2999 fps for 10 minutes: capture times in whole microseconds round each
        // frame interval to 33322 or 33323 us; durations taken frame to frame would lose
        // up to a tick per frame.
        let mut writer = Mp4Writer::new(std::io::Cursor::new(Vec::new())).expect("start");
        let frames: u64 = 600 * 90_000 / 2_999;
        let p = [0, 0, 0, 1, 0x41, 0x9A, 0x01];
        let mut total: u64 = 0;
        let base_us = 7_777_777;
        for index in 0..=frames {
            let capture_us = base_us + (index * 2_999 * 1_000_000 + 45_000) / 90_000;
            let data = if index == 0 { idr_frame() } else { p.to_vec() };
            writer
                .write(Codec::H264, false, &data, capture_us)
                .expect("write");
            if index > 0 {
                total += u64::from(writer.video.last_duration);
                assert_eq!(writer.video.last_duration, 2_999, "frame {index}");
            }
        }
        assert_eq!(total, frames * 2_999);
    }

    #[test]
    fn a_clamped_gap_does_not_shift_later_durations() {
        let mut clock = TrackClock::default();
        let start = clock.ticks(0);
        assert_eq!(clock.duration(start, 40_000), 3_600);
        // A 20 s stall: clamped, and the next interval is still exact.
        assert_eq!(clock.duration(3_600, 20_040_000), MAX_FRAME_TICKS);
        let next = 3_600 + i64::from(MAX_FRAME_TICKS);
        assert_eq!(clock.duration(next, 20_080_000), 3_600);
        // Backwards: the default, then the clock resumes from there.
        let next = next + 3_600;
        assert_eq!(clock.duration(next, 20_000_000), DEFAULT_FRAME_TICKS);
        let next = next + i64::from(DEFAULT_FRAME_TICKS);
        assert_eq!(clock.duration(next, 20_040_000), 3_600);
    }

    #[test]
    fn one_codec_per_track_and_bounded_audio_config() {
        let mut writer = Mp4Writer::new(std::io::Cursor::new(Vec::new())).expect("start");
        writer
            .write(Codec::H264, false, &idr_frame(), 0)
            .expect("idr");
        assert!(matches!(
            writer.write(Codec::H265, false, &[0, 0, 1, 0x26, 1, 0xAF], 1),
            Err(Mp4Error::CodecChanged { track: "video", .. })
        ));
        assert!(matches!(
            writer.write(Codec::Mjpeg, false, &[0xFF, 0xD8], 1),
            Err(Mp4Error::UnsupportedCodec(Codec::Mjpeg))
        ));
        // AAC before its AudioSpecificConfig: skipped.
        assert_eq!(
            writer
                .write(Codec::Aac, false, &[0x21, 0x10], 0)
                .expect("aac"),
            FrameWritten::SkippedBeforeCodecConfig
        );
        let huge = vec![0x11; MAX_AUDIO_CONFIG_LEN + 1];
        assert!(matches!(
            writer.write(Codec::Aac, true, &huge, 0),
            Err(Mp4Error::ParameterSetTooLarge { .. })
        ));
        assert!(matches!(
            writer.write(Codec::Aac, true, &[0x16, 0x90], 0),
            Err(Mp4Error::BadAudioConfig(_))
        ));
        assert_eq!(
            writer
                .write(Codec::Aac, true, &[0x11, 0x90], 0)
                .expect("asc"),
            FrameWritten::NoPicture
        );
        assert_eq!(
            writer
                .write(Codec::Aac, false, &[0x21, 0x10], 0)
                .expect("aac"),
            FrameWritten::Written
        );
        assert!(matches!(
            writer.write(Codec::G711A, false, &[0xD5; 160], 0),
            Err(Mp4Error::CodecChanged { track: "audio", .. })
        ));
        assert_eq!((writer.frames(), writer.audio_frames()), (1, 1));
        let bytes = writer.finish().expect("finish").into_inner();
        assert!(bytes.windows(4).any(|w| w == b"esds"));
    }
}
