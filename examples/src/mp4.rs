//! Writes received H.264 frames (Annex-B access units) into an MP4 file, in Rust, while
//! they arrive: sample data goes to disk frame by frame, and [`Mp4Writer::finish`] writes
//! the sample tables (`moov`) at the end. The viewer calls `finish` on Ctrl-C, so an
//! interrupted recording is still a playable file.
//!
//! The MP4 boxes come from `shiguredo_mp4`'s sans-IO [`Mp4FileMuxer`]; this module turns
//! Annex-B into what MP4 wants: SPS/PPS move from the stream into the `avcC` sample entry
//! (width and height read from the SPS), and each NAL unit's start code becomes a 4-byte
//! length prefix.
//!
//! Frames before the first SPS/PPS cannot be decoded by a player and are skipped. A
//! change of SPS/PPS mid-stream starts a new sample entry.

use std::io::{Seek, SeekFrom, Write};
use std::num::NonZeroU32;

use shiguredo_mp4::boxes::{Avc1Box, AvccBox, SampleEntry, VisualSampleEntryFields};
use shiguredo_mp4::mux::{Mp4FileMuxer, Sample};
use shiguredo_mp4::{TrackKind, Uint};

/// MP4 media timescale for the video track: the 90 kHz RTP video clock, so RTP-derived
/// capture times convert without rounding.
pub const TIMESCALE_HZ: u32 = 90_000;

/// Duration given to the last sample (and to any sample whose successor has a capture time
/// that does not advance): one frame at 30 fps.
pub const DEFAULT_FRAME_TICKS: u32 = TIMESCALE_HZ / 30;

/// Longest sample duration accepted; a larger gap between capture times (a stall or a
/// clock jump) is shortened to this so one frame does not freeze the picture for minutes.
pub const MAX_FRAME_TICKS: u32 = TIMESCALE_HZ * 10;

/// Largest SPS or PPS accepted (the `avcC` box stores their lengths in 16 bits).
pub const MAX_PARAMETER_SET_LEN: usize = u16::MAX as usize;

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
    /// The SPS could not be parsed, so the picture size is unknown.
    #[error("unreadable SPS: {0}")]
    BadSps(String),
    /// An SPS or PPS is larger than `avcC` can hold.
    #[error("parameter set of {size} bytes exceeds the limit of {limit} bytes")]
    ParameterSetTooLarge {
        /// Its size.
        size: usize,
        /// [`MAX_PARAMETER_SET_LEN`].
        limit: usize,
    },
    /// The frame is larger than an MP4 sample size field (32 bits) can describe.
    #[error("frame of {size} bytes is too large for an MP4 sample")]
    FrameTooLarge {
        /// Its size once converted to length-prefixed NAL units.
        size: usize,
    },
}

impl From<shiguredo_mp4::mux::MuxError> for Mp4Error {
    fn from(error: shiguredo_mp4::mux::MuxError) -> Self {
        Self::Mux(error.to_string())
    }
}

/// What [`Mp4Writer::write_frame`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameWritten {
    /// The frame is in the file.
    Written,
    /// No SPS/PPS has been seen yet, so the frame was skipped.
    SkippedBeforeCodecConfig,
    /// The frame held nothing but parameter sets (they went into the sample entry).
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

/// The codec configuration currently in the sample entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CodecConfig {
    sps: Vec<u8>,
    pps: Vec<u8>,
}

/// A frame whose data is on disk but whose duration is known only when the next frame
/// (or the end) arrives.
#[derive(Debug)]
struct PendingSample {
    offset: u64,
    size: usize,
    keyframe: bool,
    capture_time_us: u64,
    sample_entry: Option<SampleEntry>,
}

/// Writes H.264 frames into an MP4 file as they arrive.
#[derive(Debug)]
pub struct Mp4Writer<W: Write + Seek> {
    out: W,
    muxer: Mp4FileMuxer,
    position: u64,
    config: Option<CodecConfig>,
    /// A sample entry built from new parameter sets, to attach to the next sample.
    next_sample_entry: Option<SampleEntry>,
    pending: Option<PendingSample>,
    last_duration: u32,
    /// Reused buffer for the length-prefixed sample.
    sample: Vec<u8>,
    frames: u64,
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
            config: None,
            next_sample_entry: None,
            pending: None,
            last_duration: DEFAULT_FRAME_TICKS,
            sample: Vec::new(),
            frames: 0,
        })
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Appends one access unit in Annex-B form, captured at `capture_time_us` (the clock
    /// only has to be monotonic; the first frame is time 0 in the file).
    pub fn write_frame(
        &mut self,
        annexb: &[u8],
        capture_time_us: u64,
    ) -> Result<FrameWritten, Mp4Error> {
        let mut sps = None;
        let mut pps = None;
        let mut keyframe = false;
        self.sample.clear();
        for nal in nal_units(annexb) {
            let nal_type = nal.first().map_or(0, |h| h & 0x1F);
            match nal_type {
                NAL_SPS => sps = Some(nal),
                NAL_PPS => pps = Some(nal),
                _ => {
                    keyframe |= nal_type == NAL_IDR;
                    let len = u32::try_from(nal.len())
                        .map_err(|_| Mp4Error::FrameTooLarge { size: nal.len() })?;
                    self.sample.extend_from_slice(&len.to_be_bytes());
                    self.sample.extend_from_slice(nal);
                }
            }
        }
        if let (Some(sps), Some(pps)) = (sps, pps) {
            self.update_config(sps, pps)?;
        }
        if self.config.is_none() {
            return Ok(FrameWritten::SkippedBeforeCodecConfig);
        }
        if self.sample.is_empty() {
            return Ok(FrameWritten::NoPicture);
        }
        u32::try_from(self.sample.len()).map_err(|_| Mp4Error::FrameTooLarge {
            size: self.sample.len(),
        })?;
        self.flush_pending(Some(capture_time_us))?;
        self.out.write_all(&self.sample)?;
        self.pending = Some(PendingSample {
            offset: self.position,
            size: self.sample.len(),
            keyframe,
            capture_time_us,
            sample_entry: self.next_sample_entry.take(),
        });
        self.position += self.sample.len() as u64;
        self.frames += 1;
        Ok(FrameWritten::Written)
    }

    /// Writes the sample tables and flushes. Returns the output (positioned at its end).
    pub fn finish(mut self) -> Result<W, Mp4Error> {
        self.flush_pending(None)?;
        let finalized = self.muxer.finalize()?;
        for (offset, bytes) in finalized.offset_and_bytes_pairs() {
            self.out.seek(SeekFrom::Start(offset))?;
            self.out.write_all(bytes)?;
        }
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn update_config(&mut self, sps: &[u8], pps: &[u8]) -> Result<(), Mp4Error> {
        for set in [sps, pps] {
            if set.len() > MAX_PARAMETER_SET_LEN {
                return Err(Mp4Error::ParameterSetTooLarge {
                    size: set.len(),
                    limit: MAX_PARAMETER_SET_LEN,
                });
            }
        }
        if self
            .config
            .as_ref()
            .is_some_and(|c| c.sps == sps && c.pps == pps)
        {
            return Ok(());
        }
        let info = parse_sps(sps)?;
        let dimension = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let extension = PROFILES_WITH_AVCC_EXTENSION.contains(&info.profile_idc);
        self.next_sample_entry = Some(SampleEntry::Avc1(Avc1Box {
            visual: VisualSampleEntryFields {
                data_reference_index: VisualSampleEntryFields::DEFAULT_DATA_REFERENCE_INDEX,
                width: dimension(info.width),
                height: dimension(info.height),
                horizresolution: VisualSampleEntryFields::DEFAULT_HORIZRESOLUTION,
                vertresolution: VisualSampleEntryFields::DEFAULT_VERTRESOLUTION,
                frame_count: VisualSampleEntryFields::DEFAULT_FRAME_COUNT,
                compressorname: VisualSampleEntryFields::NULL_COMPRESSORNAME,
                depth: VisualSampleEntryFields::DEFAULT_DEPTH,
            },
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
        }));
        self.config = Some(CodecConfig {
            sps: sps.to_vec(),
            pps: pps.to_vec(),
        });
        Ok(())
    }

    /// Hands the pending sample to the muxer, its duration running up to `next_time_us`
    /// (or the previous frame's duration at the end).
    fn flush_pending(&mut self, next_time_us: Option<u64>) -> Result<(), Mp4Error> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let duration = match next_time_us {
            Some(next) => {
                let delta_us = next.saturating_sub(pending.capture_time_us);
                let ticks = delta_us.saturating_mul(u64::from(TIMESCALE_HZ)) / 1_000_000;
                match u32::try_from(ticks) {
                    Ok(0) => DEFAULT_FRAME_TICKS,
                    Ok(t) => t.min(MAX_FRAME_TICKS),
                    Err(_) => MAX_FRAME_TICKS,
                }
            }
            None => self.last_duration,
        };
        self.last_duration = duration;
        self.muxer.append_sample(&Sample {
            track_kind: TrackKind::Video,
            sample_entry: pending.sample_entry,
            keyframe: pending.keyframe,
            timescale: TIMESCALE,
            duration,
            data_offset: pending.offset,
            data_size: pending.size,
        })?;
        Ok(())
    }
}

const TIMESCALE: NonZeroU32 = match NonZeroU32::new(TIMESCALE_HZ) {
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
            writer.write_frame(&slice, 0).expect("write"),
            FrameWritten::SkippedBeforeCodecConfig
        );
        let mut huge = vec![0, 0, 0, 1, 0x67];
        huge.resize(MAX_PARAMETER_SET_LEN + 6, 0x11);
        huge.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xCE]);
        assert!(matches!(
            writer.write_frame(&huge, 0),
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
            writer.write_frame(&idr, 1_000).expect("idr"),
            FrameWritten::Written
        );
        assert_eq!(
            writer.write_frame(&p, 41_000).expect("p"),
            FrameWritten::Written
        );
        // 40 ms at 90 kHz.
        assert_eq!(writer.last_duration, 3_600);
        // A stall longer than the cap is shortened.
        writer.write_frame(&p, 3_600_000_000).expect("late p");
        assert_eq!(writer.last_duration, MAX_FRAME_TICKS);
        // A capture time that does not advance gets the default duration.
        writer.write_frame(&p, 3_600_000_000).expect("same time");
        assert_eq!(writer.last_duration, DEFAULT_FRAME_TICKS);
        assert_eq!(writer.frames(), 4);
        let bytes = writer.finish().expect("finish").into_inner();
        assert!(bytes.windows(4).any(|w| w == b"moov"));
        assert!(bytes.windows(4).any(|w| w == b"avcC"));
    }
}
