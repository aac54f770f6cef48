//! Audio frames as files want them: the AAC AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1)
//! read for its sample rate and channels, and the 7-byte ADTS header (14496-3 1.A.2) that
//! turns raw AAC access units into a `.aac` file ffmpeg and players read.
//!
//! On the wire an AAC stream carries raw access units; its codec-config frame carries the
//! AudioSpecificConfig alone (`spec/media.md`, `Codec::Aac`).

/// Sample rates by `samplingFrequencyIndex` (14496-3 table 1.18).
const SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

/// The escape index: the sample rate follows as 24 bits.
const EXPLICIT_RATE_INDEX: u8 = 15;

/// Largest AAC access unit an ADTS header can frame (13-bit frame length, header included).
pub const MAX_ADTS_PAYLOAD: usize = 0x1FFF - ADTS_HEADER_LEN;

/// Length of an ADTS header without CRC.
pub const ADTS_HEADER_LEN: usize = 7;

/// Samples per AAC-LC access unit (the frame length every AAC camera uses).
pub const AAC_SAMPLES_PER_FRAME: u32 = 1024;

/// G.711 sample rate (one byte per sample).
pub const G711_SAMPLE_RATE: u32 = 8_000;

/// Why an AudioSpecificConfig or an access unit cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The AudioSpecificConfig ends before its sample rate and channels.
    #[error("AudioSpecificConfig of {len} bytes is too short")]
    ConfigTooShort {
        /// Its length.
        len: usize,
    },
    /// `samplingFrequencyIndex` is reserved (13 or 14).
    #[error("AudioSpecificConfig has reserved sample rate index {index}")]
    ReservedSampleRate {
        /// The index.
        index: u8,
    },
    /// The channel configuration is 0 (described in-band) or reserved: ADTS cannot say it.
    #[error("AudioSpecificConfig has channel configuration {config}, which ADTS cannot carry")]
    UnsupportedChannels {
        /// `channelConfiguration`.
        config: u8,
    },
    /// The object type cannot be framed by ADTS (only types 1-4 fit its 2-bit profile).
    #[error("AAC object type {object_type} cannot be framed as ADTS")]
    UnsupportedObjectType {
        /// `audioObjectType`.
        object_type: u8,
    },
    /// An ADTS frame does not start with the sync word (or carries a CRC, not read here).
    #[error("no ADTS frame (without CRC) at byte {offset}")]
    AdtsSync {
        /// Where one was expected.
        offset: usize,
    },
    /// An ADTS frame's length runs past the data or is shorter than its header.
    #[error("ADTS frame at byte {offset} has a bad length {len}")]
    AdtsLength {
        /// Where the frame starts.
        offset: usize,
        /// Its frame length field.
        len: usize,
    },
    /// The access unit is longer than an ADTS frame can describe.
    #[error("AAC access unit of {size} bytes exceeds the ADTS limit of {limit} bytes")]
    AccessUnitTooLarge {
        /// Its size.
        size: usize,
        /// [`MAX_ADTS_PAYLOAD`].
        limit: usize,
    },
}

/// What an AudioSpecificConfig says about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    /// `audioObjectType` (2 = AAC-LC).
    pub object_type: u8,
    /// `samplingFrequencyIndex` (15 when the rate is explicit).
    pub sample_rate_index: u8,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// `channelConfiguration` (1 mono, 2 stereo, ...).
    pub channel_config: u8,
}

impl AacConfig {
    /// Reads the fields of an AudioSpecificConfig that ADTS and MP4 need.
    pub fn parse(asc: &[u8]) -> Result<Self, AudioError> {
        let too_short = AudioError::ConfigTooShort { len: asc.len() };
        let mut bits = BitCursor::new(asc);
        let mut object_type = bits.read(5).ok_or(too_short.clone())? as u8;
        if object_type == 31 {
            object_type = 32 + bits.read(6).ok_or(too_short.clone())? as u8;
        }
        let sample_rate_index = bits.read(4).ok_or(too_short.clone())? as u8;
        let sample_rate = match sample_rate_index {
            EXPLICIT_RATE_INDEX => bits.read(24).ok_or(too_short.clone())?,
            index => *SAMPLE_RATES
                .get(usize::from(index))
                .ok_or(AudioError::ReservedSampleRate { index })?,
        };
        let channel_config = bits.read(4).ok_or(too_short)? as u8;
        Ok(Self {
            object_type,
            sample_rate_index,
            sample_rate,
            channel_config,
        })
    }

    /// Channel count for the MP4 sample entry (configuration 7 is 7.1: 8 channels).
    pub fn channel_count(&self) -> u16 {
        match self.channel_config {
            7 => 8,
            c => u16::from(c),
        }
    }

    /// The ADTS header for one access unit of `payload_len` bytes.
    pub fn adts_header(&self, payload_len: usize) -> Result<[u8; ADTS_HEADER_LEN], AudioError> {
        if !(1..=4).contains(&self.object_type) {
            return Err(AudioError::UnsupportedObjectType {
                object_type: self.object_type,
            });
        }
        if self.sample_rate_index > 12 {
            return Err(AudioError::ReservedSampleRate {
                index: self.sample_rate_index,
            });
        }
        if !(1..=7).contains(&self.channel_config) {
            return Err(AudioError::UnsupportedChannels {
                config: self.channel_config,
            });
        }
        if payload_len > MAX_ADTS_PAYLOAD {
            return Err(AudioError::AccessUnitTooLarge {
                size: payload_len,
                limit: MAX_ADTS_PAYLOAD,
            });
        }
        let frame_len = payload_len + ADTS_HEADER_LEN;
        let profile = self.object_type - 1;
        Ok([
            0xFF,
            // MPEG-4, layer 0, no CRC.
            0xF1,
            (profile << 6) | (self.sample_rate_index << 2) | (self.channel_config >> 2),
            ((self.channel_config & 3) << 6) | ((frame_len >> 11) as u8 & 0x03),
            (frame_len >> 3) as u8,
            (((frame_len & 7) as u8) << 5) | 0x1F,
            // Buffer fullness 0x7FF (variable rate), one raw data block.
            0xFC,
        ])
    }
}

impl AacConfig {
    /// The 2-byte AudioSpecificConfig of this configuration (object types below 31 and a
    /// tabled sample rate, what ADTS can describe).
    pub fn audio_specific_config(&self) -> [u8; 2] {
        [
            (self.object_type << 3) | (self.sample_rate_index >> 1),
            ((self.sample_rate_index & 1) << 7) | (self.channel_config << 3),
        ]
    }
}

/// One frame of an ADTS stream: what its header says and the raw access unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsFrame<'a> {
    /// The configuration from the header.
    pub config: AacConfig,
    /// The raw AAC access unit.
    pub access_unit: &'a [u8],
}

/// The frames of an ADTS stream (`.aac`, without CRC), in order; the first malformed
/// frame ends it with an error.
pub fn adts_frames(data: &[u8]) -> impl Iterator<Item = Result<AdtsFrame<'_>, AudioError>> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let rest = data.get(offset..).filter(|r| !r.is_empty())?;
        let frame = (|| {
            let header = rest
                .get(..ADTS_HEADER_LEN)
                .filter(|h| h[0] == 0xFF && h[1] & 0xF7 == 0xF1)
                .ok_or(AudioError::AdtsSync { offset })?;
            let len = (usize::from(header[3] & 3) << 11)
                | (usize::from(header[4]) << 3)
                | usize::from(header[5] >> 5);
            if len < ADTS_HEADER_LEN || len > rest.len() {
                return Err(AudioError::AdtsLength { offset, len });
            }
            let config = AacConfig {
                object_type: (header[2] >> 6) + 1,
                sample_rate_index: (header[2] >> 2) & 0x0F,
                sample_rate: *SAMPLE_RATES
                    .get(usize::from((header[2] >> 2) & 0x0F))
                    .ok_or(AudioError::ReservedSampleRate {
                        index: (header[2] >> 2) & 0x0F,
                    })?,
                channel_config: ((header[2] & 1) << 2) | (header[3] >> 6),
            };
            Ok((
                AdtsFrame {
                    config,
                    access_unit: &rest[ADTS_HEADER_LEN..len],
                },
                len,
            ))
        })();
        match frame {
            Ok((frame, len)) => {
                offset += len;
                Some(Ok(frame))
            }
            Err(error) => {
                // Stop after the first error.
                offset = data.len();
                Some(Err(error))
            }
        }
    })
}

/// Writes audio frames to a raw file: AAC as ADTS (framed from the AudioSpecificConfig the
/// codec-config frame carries; access units before it are skipped), G.711 bytes as they
/// come. The viewer's `--audio-out` and the camera's `--talk-out`.
pub struct AudioFileWriter<W: std::io::Write> {
    out: W,
    aac: Option<AacConfig>,
}

/// Why an audio frame could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioWriteError {
    /// The output failed (a closed pipe shows as `BrokenPipe`).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The AudioSpecificConfig or an access unit cannot be framed.
    #[error(transparent)]
    Audio(#[from] AudioError),
}

impl<W: std::io::Write> std::fmt::Debug for AudioFileWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioFileWriter")
            .field("aac", &self.aac)
            .finish_non_exhaustive()
    }
}

impl<W: std::io::Write> AudioFileWriter<W> {
    /// Writes into `out`.
    pub fn new(out: W) -> Self {
        Self { out, aac: None }
    }

    /// Writes one frame (audio codecs only; others are ignored).
    pub fn write(&mut self, frame: &sightwire::Frame) -> Result<(), AudioWriteError> {
        use sightwire::Codec;
        match frame.codec {
            Codec::Aac if frame.codec_config => self.aac = Some(AacConfig::parse(&frame.data)?),
            Codec::Aac => {
                if let Some(config) = &self.aac {
                    self.out.write_all(&config.adts_header(frame.data.len())?)?;
                    self.out.write_all(&frame.data)?;
                }
            }
            Codec::G711A | Codec::G711Mu => self.out.write_all(&frame.data)?,
            _ => {}
        }
        Ok(())
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// G.711 samples per talk-back frame: 20 ms, as RTP carries G.711.
pub const G711_FRAME_SAMPLES: usize = 160;

/// The audio frames of a file to send as talk-back on [`sightwire::StreamId::AUDIO`], each
/// with its capture time from 0: `.aac` (ADTS) becomes the AudioSpecificConfig frame and
/// one frame per access unit; `.alaw` / `.ulaw` (raw G.711, 8 kHz mono) 20 ms frames.
pub fn talk_frames(
    path: &std::path::Path,
    data: &[u8],
) -> Result<Vec<sightwire::Frame>, AudioError> {
    use sightwire::{Codec, Frame, StreamId};
    let frame = |codec, codec_config, capture_time_us, payload: &[u8]| {
        Frame::new(
            StreamId::AUDIO,
            codec,
            capture_time_us,
            bytes::Bytes::copy_from_slice(payload),
        )
        .with_keyframe(true)
        .with_codec_config(codec_config)
    };
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let g711 = match extension.as_str() {
        "alaw" => Some(Codec::G711A),
        "ulaw" | "mulaw" => Some(Codec::G711Mu),
        _ => None,
    };
    if let Some(codec) = g711 {
        return Ok(data
            .chunks(G711_FRAME_SAMPLES)
            .enumerate()
            .map(|(i, chunk)| {
                let us = (i * G711_FRAME_SAMPLES) as u64 * 1_000_000 / u64::from(G711_SAMPLE_RATE);
                frame(codec, false, us, chunk)
            })
            .collect());
    }
    let mut frames = Vec::new();
    for (index, adts) in adts_frames(data).enumerate() {
        let adts = adts?;
        if index == 0 {
            let asc = adts.config.audio_specific_config();
            frames.push(frame(Codec::Aac, true, 0, &asc));
        }
        let us = index as u64 * u64::from(AAC_SAMPLES_PER_FRAME) * 1_000_000
            / u64::from(adts.config.sample_rate);
        frames.push(frame(Codec::Aac, false, us, adts.access_unit));
    }
    Ok(frames)
}

/// Reads big-endian bit fields; `None` past the end.
struct BitCursor<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitCursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, bit: 0 }
    }

    fn read(&mut self, count: u32) -> Option<u32> {
        let mut value = 0u32;
        for _ in 0..count {
            let byte = *self.data.get(self.bit / 8)?;
            value = (value << 1) | u32::from((byte >> (7 - self.bit % 8)) & 1);
            self.bit += 1;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// AAC-LC, 48 kHz, stereo: what ffmpeg's `aac` encoder writes for `-ar 48000 -ac 2`.
    const ASC_LC_48K_STEREO: [u8; 2] = [0x11, 0x90];

    #[test]
    fn reads_aac_lc_config_and_frames_adts() {
        let config = AacConfig::parse(&ASC_LC_48K_STEREO).expect("valid ASC");
        assert_eq!(
            config,
            AacConfig {
                object_type: 2,
                sample_rate_index: 3,
                sample_rate: 48_000,
                channel_config: 2
            }
        );
        // Profile LC, index 3, 2 channels, frame length 371 (0x173) split 2/8/3 bits.
        assert_eq!(
            config.adts_header(364).expect("header"),
            [0xFF, 0xF1, 0x4C, 0x80, 0x2E, 0x7F, 0xFC]
        );
        assert_eq!(
            config.adts_header(MAX_ADTS_PAYLOAD + 1),
            Err(AudioError::AccessUnitTooLarge {
                size: MAX_ADTS_PAYLOAD + 1,
                limit: MAX_ADTS_PAYLOAD
            })
        );
        assert!(config.adts_header(MAX_ADTS_PAYLOAD).is_ok());
    }

    #[test]
    fn rejects_short_and_reserved_configs() {
        assert_eq!(
            AacConfig::parse(&[0x11]),
            Err(AudioError::ConfigTooShort { len: 1 })
        );
        // Index 13 is reserved.
        assert_eq!(
            AacConfig::parse(&[0x16, 0x90]),
            Err(AudioError::ReservedSampleRate { index: 13 })
        );
        // Explicit 24-bit rate (index 15): parsed, but ADTS cannot carry it.
        let explicit = AacConfig::parse(&[0x17, 0x80, 0x0F, 0xA0, 0x08]).expect("explicit");
        assert_eq!((explicit.sample_rate, explicit.channel_config), (8_000, 1));
        assert!(explicit.adts_header(10).is_err());
    }

    #[test]
    fn adts_frames_round_trip_through_the_header() {
        let config = AacConfig::parse(&ASC_LC_48K_STEREO).expect("valid ASC");
        assert_eq!(config.audio_specific_config(), ASC_LC_48K_STEREO);
        let mut stream = Vec::new();
        for len in [1usize, 300, 0] {
            stream.extend_from_slice(&config.adts_header(len).expect("header"));
            stream.extend(std::iter::repeat_n(0xA5, len));
        }
        let frames: Vec<_> = adts_frames(&stream)
            .collect::<Result<_, _>>()
            .expect("frames");
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|f| f.config == config));
        assert_eq!(frames[1].access_unit.len(), 300);
        stream.push(0x00);
        let last = adts_frames(&stream).last().expect("an item");
        assert_eq!(
            last,
            Err(AudioError::AdtsSync {
                offset: stream.len() - 1
            })
        );
        let mut short = config.adts_header(10).expect("header").to_vec();
        short.push(1);
        assert!(matches!(
            adts_frames(&short).next(),
            Some(Err(AudioError::AdtsLength { len: 17, .. }))
        ));
    }

    #[test]
    fn g711_talk_back_is_cut_in_20_ms_frames() {
        let frames = talk_frames(std::path::Path::new("x.alaw"), &[0xD5; 400]).expect("frames");
        let sizes: Vec<_> = frames
            .iter()
            .map(|f| (f.data.len(), f.capture_time_us))
            .collect();
        assert_eq!(sizes, vec![(160, 0), (160, 20_000), (80, 40_000)]);
        assert!(frames.iter().all(|f| f.codec == sightwire::Codec::G711A));
        assert!(talk_frames(std::path::Path::new("x.aac"), &[0xD5; 10]).is_err());
    }

    proptest! {
        #[test]
        fn adts_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(adts_frames(&bytes).count() <= bytes.len() / ADTS_HEADER_LEN + 1);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..8), len in 0usize..10_000) {
            if let Ok(config) = AacConfig::parse(&bytes) {
                let _ = config.adts_header(len);
            }
        }
    }
}
