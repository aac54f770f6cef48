//! The H.265 sequence parameter set fields an MP4 `hvcC` box and a player need: profile,
//! tier, level, chroma format, bit depths and the displayed picture size (ITU-T H.265
//! 7.3.2.2). Reads only up to `bit_depth_chroma_minus8`; every read is bounds-checked.

/// H.265 NAL unit types the examples care about (H.265 Table 7-1): the one source of
/// them for the Annex-B splitter, the MP4 writer and the RTSP source.
pub mod nal_type {
    /// First IRAP (intra random access point) type: BLA_W_LP.
    pub const IRAP_FIRST: u8 = 16;
    /// Last IRAP type: reserved IRAP 23 (16..=23 are all random access points).
    pub const IRAP_LAST: u8 = 23;
    /// Video parameter set.
    pub const VPS: u8 = 32;
    /// Sequence parameter set.
    pub const SPS: u8 = 33;
    /// Picture parameter set.
    pub const PPS: u8 = 34;
    /// Access unit delimiter.
    pub const AUD: u8 = 35;
    /// Prefix SEI.
    pub const PREFIX_SEI: u8 = 39;
}

/// Whether an H.265 NAL unit type is an IRAP picture's slice (BLA, IDR, CRA, and the
/// reserved IRAP types 22 and 23): a picture a decoder can start at.
pub const fn is_irap(nal_type: u8) -> bool {
    nal_type >= nal_type::IRAP_FIRST && nal_type <= nal_type::IRAP_LAST
}

/// The type of an H.265 NAL unit from its first header byte.
pub fn nal_unit_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |h| (h >> 1) & 0x3F)
}

/// Why an H.265 SPS could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HevcSpsError {
    /// The SPS ends before the fields that were being read.
    #[error("H.265 SPS truncated at bit {bit}")]
    Truncated {
        /// How far the reader got.
        bit: usize,
    },
    /// An Exp-Golomb code has more than 31 leading zeros.
    #[error("H.265 SPS has an Exp-Golomb code over 32 bits at bit {bit}")]
    BadExpGolomb {
        /// Where it starts.
        bit: usize,
    },
    /// The NAL unit is not an SPS.
    #[error("NAL unit of type {nal_type} is not an H.265 SPS")]
    NotSps {
        /// Its type.
        nal_type: u8,
    },
    /// A field has a value outside its range.
    #[error("H.265 SPS field {field} is out of range: {value}")]
    OutOfRange {
        /// The field's name in H.265.
        field: &'static str,
        /// Its value.
        value: u32,
    },
}

/// What an H.265 SPS says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HevcSpsInfo {
    /// Displayed width (conformance window applied).
    pub width: u32,
    /// Displayed height (conformance window applied).
    pub height: u32,
    /// `sps_max_sub_layers_minus1`.
    pub max_sub_layers_minus1: u8,
    /// `sps_temporal_id_nesting_flag`.
    pub temporal_id_nesting: bool,
    /// `general_profile_space`.
    pub profile_space: u8,
    /// `general_tier_flag`.
    pub tier_flag: bool,
    /// `general_profile_idc`.
    pub profile_idc: u8,
    /// `general_profile_compatibility_flag[0..32]`.
    pub profile_compatibility_flags: u32,
    /// The 48 bits from `general_progressive_source_flag` on.
    pub constraint_indicator_flags: u64,
    /// `general_level_idc`.
    pub level_idc: u8,
    /// `chroma_format_idc`.
    pub chroma_format_idc: u8,
    /// `bit_depth_luma_minus8`.
    pub bit_depth_luma_minus8: u8,
    /// `bit_depth_chroma_minus8`.
    pub bit_depth_chroma_minus8: u8,
}

/// Reads an SPS NAL unit (2-byte header included, no start code).
pub fn parse_sps(nal: &[u8]) -> Result<HevcSpsInfo, HevcSpsError> {
    let nal_type = nal_unit_type(nal);
    if nal_type != nal_type::SPS {
        return Err(HevcSpsError::NotSps { nal_type });
    }
    let rbsp = unescape(nal.get(2..).unwrap_or_default());
    let mut r = BitReader {
        data: &rbsp,
        bit: 0,
    };
    r.skip(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.bits(3)? as u8;
    let temporal_id_nesting = r.bits(1)? == 1;
    let profile_space = r.bits(2)? as u8;
    let tier_flag = r.bits(1)? == 1;
    let profile_idc = r.bits(5)? as u8;
    let profile_compatibility_flags = r.bits(32)?;
    let constraint_indicator_flags = (u64::from(r.bits(16)?) << 32) | u64::from(r.bits(32)?);
    let level_idc = r.bits(8)? as u8;
    let sub_layers = usize::from(max_sub_layers_minus1);
    let mut present = [(false, false); 8];
    for flags in present.iter_mut().take(sub_layers) {
        *flags = (r.bits(1)? == 1, r.bits(1)? == 1);
    }
    if sub_layers > 0 {
        r.skip(2 * (8 - sub_layers))?; // reserved_zero_2bits
    }
    for (profile_present, level_present) in present.iter().take(sub_layers) {
        if *profile_present {
            r.skip(88)?;
        }
        if *level_present {
            r.skip(8)?;
        }
    }
    r.exp_golomb()?; // sps_seq_parameter_set_id
    let chroma_format_idc = r.exp_golomb()?;
    if chroma_format_idc > 3 {
        return Err(HevcSpsError::OutOfRange {
            field: "chroma_format_idc",
            value: chroma_format_idc,
        });
    }
    if chroma_format_idc == 3 {
        r.skip(1)?; // separate_colour_plane_flag
    }
    let coded_width = r.exp_golomb()?;
    let coded_height = r.exp_golomb()?;
    let (mut crop_x, mut crop_y) = (0u64, 0u64);
    if r.bits(1)? == 1 {
        let (sub_width, sub_height) = match chroma_format_idc {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let left = u64::from(r.exp_golomb()?);
        let right = u64::from(r.exp_golomb()?);
        let top = u64::from(r.exp_golomb()?);
        let bottom = u64::from(r.exp_golomb()?);
        crop_x = sub_width * (left + right);
        crop_y = sub_height * (top + bottom);
    }
    let displayed = |coded: u32, crop: u64, field| {
        u64::from(coded)
            .checked_sub(crop)
            .filter(|v| *v > 0)
            .map(|v| v as u32)
            .ok_or(HevcSpsError::OutOfRange {
                field,
                value: coded,
            })
    };
    let width = displayed(coded_width, crop_x, "pic_width_in_luma_samples")?;
    let height = displayed(coded_height, crop_y, "pic_height_in_luma_samples")?;
    let bit_depth = |value: u32, field| {
        u8::try_from(value)
            .ok()
            .filter(|v| *v <= 8)
            .ok_or(HevcSpsError::OutOfRange { field, value })
    };
    let bit_depth_luma_minus8 = bit_depth(r.exp_golomb()?, "bit_depth_luma_minus8")?;
    let bit_depth_chroma_minus8 = bit_depth(r.exp_golomb()?, "bit_depth_chroma_minus8")?;
    Ok(HevcSpsInfo {
        width,
        height,
        max_sub_layers_minus1,
        temporal_id_nesting,
        profile_space,
        tier_flag,
        profile_idc,
        profile_compatibility_flags,
        constraint_indicator_flags,
        level_idc,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma_minus8,
        bit_depth_chroma_minus8,
    })
}

/// The RBSP of a NAL unit payload: every `00 00 03` loses its `03`.
fn unescape(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    let mut zeros = 0;
    for &byte in payload {
        if zeros >= 2 && byte == 3 {
            zeros = 0;
            continue;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        out.push(byte);
    }
    out
}

struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl BitReader<'_> {
    fn bits(&mut self, count: u32) -> Result<u32, HevcSpsError> {
        let mut value = 0u32;
        for _ in 0..count {
            let byte = self
                .data
                .get(self.bit / 8)
                .ok_or(HevcSpsError::Truncated { bit: self.bit })?;
            value = (value << 1) | u32::from((byte >> (7 - self.bit % 8)) & 1);
            self.bit += 1;
        }
        Ok(value)
    }

    fn skip(&mut self, count: usize) -> Result<(), HevcSpsError> {
        let end = self.bit + count;
        if end > self.data.len() * 8 {
            return Err(HevcSpsError::Truncated { bit: self.bit });
        }
        self.bit = end;
        Ok(())
    }

    fn exp_golomb(&mut self) -> Result<u32, HevcSpsError> {
        let start = self.bit;
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(HevcSpsError::BadExpGolomb { bit: start });
            }
        }
        let rest = self.bits(zeros)?;
        // zeros <= 31, so (1 << zeros) - 1 + rest fits in u32 only up to 2^32 - 2.
        ((1u64 << zeros) - 1 + u64::from(rest))
            .try_into()
            .map_err(|_| HevcSpsError::BadExpGolomb { bit: start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The SPS Debian's ffmpeg/libx265 writes for `testsrc2=size=320x240` (Main, level 2;
    /// 320x240 needs no conformance window).
    const SPS_320X240: &[u8] = &[
        0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x03, 0x00, 0x3C, 0xA0, 0x0A, 0x08, 0x0F, 0x16, 0x59, 0x59, 0xA4, 0x93, 0x2B, 0xC0, 0x5A,
        0x02, 0x00, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x3C, 0x10,
    ];

    #[test]
    fn reads_an_x265_sps() {
        let info = parse_sps(SPS_320X240).expect("valid SPS");
        assert_eq!((info.width, info.height), (320, 240));
        assert_eq!(info.profile_idc, 1);
        assert_eq!(info.chroma_format_idc, 1);
        assert_eq!(info.bit_depth_luma_minus8, 0);
        assert_eq!(info.level_idc, 60);
    }

    #[test]
    fn rejects_other_nal_types_and_truncation() {
        assert_eq!(
            parse_sps(&[0x40, 0x01, 0x0C]),
            Err(HevcSpsError::NotSps { nal_type: 32 })
        );
        assert!(matches!(
            parse_sps(&SPS_320X240[..12]),
            Err(HevcSpsError::Truncated { .. })
        ));
        assert!(matches!(
            parse_sps(&[0x42, 0x01]),
            Err(HevcSpsError::Truncated { .. })
        ));
    }

    #[test]
    fn unescapes_emulation_prevention() {
        assert_eq!(unescape(&[0, 0, 3, 1, 0, 0, 3]), vec![0, 0, 1, 0, 0]);
    }

    proptest! {
        #[test]
        fn parse_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut nal = vec![0x42, 0x01];
            nal.extend_from_slice(&tail);
            let _ = parse_sps(&nal);
        }
    }
}
