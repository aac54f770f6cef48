//! H.264 and H.265 Annex-B byte streams: split into access units (one per video frame)
//! and find which carry a picture decodable on its own (H.264 IDR, H.265 IRAP: keyframe)
//! or parameter sets (codec configuration).
//!
//! The camera reads a file this way and sends each access unit as one frame, start codes
//! included, so the viewer writes the frames back to back and gets a valid Annex-B
//! stream again, byte for byte.

use sightwire::Codec;

use crate::hevc::{is_irap, nal_type, nal_unit_type};

/// NAL unit types that matter here (H.264 Table 7-1).
const NAL_SLICE: u8 = 1;
/// Slice data partition C, the last of the partition types after `NAL_SLICE`.
const NAL_PARTITION_C: u8 = 4;
const NAL_IDR: u8 = 5;
const NAL_SEI: u8 = 6;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// The codec of an Annex-B video stream, from its first NAL unit: H.265 when that reads
/// as an H.265 VPS, SPS, PPS, access unit delimiter or prefix SEI of the base layer
/// (`nuh_layer_id` 0, `nuh_temporal_id_plus1` 1, as an encoder's stream opens), else
/// H.264. (As H.264 headers those bytes, `0x40`–`0x4E` then `0x01`, are no NAL unit a
/// stream opens with: type 0, partitions, or an SEI with a non-zero `nal_ref_idc`.)
pub fn detect_codec(stream: &[u8]) -> Codec {
    let hevc = nal_starts(stream).first().is_some_and(|&(_, header)| {
        let (Some(&first), Some(&second)) = (stream.get(header), stream.get(header + 1)) else {
            return false;
        };
        let kind = nal_unit_type(&[first]);
        first & 0x81 == 0
            && second == 0x01
            && ((nal_type::VPS..=nal_type::AUD).contains(&kind) || kind == nal_type::PREFIX_SEI)
    });
    if hevc { Codec::H265 } else { Codec::H264 }
}

/// What one NAL unit means for splitting a stream into access units.
#[derive(Debug, Clone, Copy, Default)]
struct NalRole {
    /// An access unit delimiter: always starts an access unit.
    delimiter: bool,
    /// Parameter sets, prefix SEI and the like: start an access unit after a slice.
    precedes_picture: bool,
    /// A picture slice.
    slice: bool,
    /// The first slice of a picture: starts an access unit after a slice.
    first_slice: bool,
    /// A slice of a picture decodable on its own.
    keyframe: bool,
    /// A parameter set.
    config: bool,
}

/// H.264 (Table 7-1): `nal` from its header byte on.
fn h264_role(nal: &[u8]) -> NalRole {
    let Some(&header) = nal.first() else {
        return NalRole::default();
    };
    let nal_type = header & 0x1F;
    let slice = nal_type == NAL_SLICE || nal_type == NAL_IDR;
    NalRole {
        delimiter: nal_type == NAL_AUD,
        precedes_picture: matches!(nal_type, NAL_SPS | NAL_PPS | NAL_SEI),
        slice,
        // first_mb_in_slice is ue(v); 0 is coded as a single '1' bit.
        first_slice: slice && nal.get(1).is_some_and(|b| b & 0x80 != 0),
        keyframe: nal_type == NAL_IDR,
        config: nal_type == NAL_SPS,
    }
}

/// H.265 (Table 7-1, 7.4.2.4.4): `nal` from its two header bytes on. Types 0..=31 are
/// picture slices (VCL).
fn h265_role(nal: &[u8]) -> NalRole {
    if nal.is_empty() {
        return NalRole::default();
    }
    let kind = nal_unit_type(nal);
    let slice = kind < 32;
    NalRole {
        delimiter: kind == nal_type::AUD,
        // VPS, SPS, PPS, prefix SEI and the reserved types that open an access unit.
        precedes_picture: matches!(kind, nal_type::VPS..=nal_type::PPS | nal_type::PREFIX_SEI | 41..=44 | 48..=55),
        slice,
        // first_slice_segment_in_pic_flag: the first bit after the header.
        first_slice: slice && nal.get(2).is_some_and(|b| b & 0x80 != 0),
        keyframe: is_irap(kind),
        config: (nal_type::VPS..=nal_type::PPS).contains(&kind),
    }
}

/// One access unit: the bytes of one frame with their start codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// The bytes, start codes included.
    pub data: Vec<u8>,
    /// Contains a slice of a picture decodable on its own (H.264 IDR, H.265 IRAP).
    pub keyframe: bool,
    /// Contains the codec configuration (H.264 SPS; H.265 VPS, SPS or PPS).
    pub codec_config: bool,
}

/// Start offsets of every NAL unit (at its start code) in `stream`.
fn nal_starts(stream: &[u8]) -> Vec<(usize, usize)> {
    // (start code offset, NAL header offset)
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            let code = if i > 0 && stream[i - 1] == 0 {
                i - 1
            } else {
                i
            };
            starts.push((code, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
}

/// Splits an H.264 Annex-B stream into access units (see [`access_units_of`]).
pub fn access_units(stream: &[u8]) -> Vec<AccessUnit> {
    access_units_of(Codec::H264, stream)
}

/// Splits an Annex-B stream of `codec` (H.264 or H.265; anything else is read as H.264)
/// into access units. A new access unit starts at an access unit delimiter, at a
/// parameter set or prefix SEI that follows a slice, or at the first slice of a picture
/// (H.264 `first_mb_in_slice` 0, H.265 `first_slice_segment_in_pic_flag`) that follows
/// a slice. Bytes before the first start code are ignored.
pub fn access_units_of(codec: Codec, stream: &[u8]) -> Vec<AccessUnit> {
    let role_of = if codec == Codec::H265 {
        h265_role
    } else {
        h264_role
    };
    let starts = nal_starts(stream);
    let mut units: Vec<AccessUnit> = Vec::new();
    let mut current: Option<AccessUnit> = None;
    let mut seen_slice = false;
    for (index, &(code, header)) in starts.iter().enumerate() {
        let end = starts
            .get(index + 1)
            .map_or(stream.len(), |&(next, _)| next);
        if header >= stream.len() {
            continue;
        }
        let role = stream
            .get(header..end)
            .map_or_else(NalRole::default, role_of);
        let begins_unit =
            role.delimiter || ((role.precedes_picture || role.first_slice) && seen_slice);
        if begins_unit {
            if let Some(unit) = current.take() {
                units.push(unit);
            }
            seen_slice = false;
        }
        let unit = current.get_or_insert_with(|| AccessUnit {
            data: Vec::new(),
            keyframe: false,
            codec_config: false,
        });
        unit.data.extend_from_slice(&stream[code..end]);
        unit.keyframe |= role.keyframe;
        unit.codec_config |= role.config;
        seen_slice |= role.slice;
    }
    units.extend(current);
    units
}

/// Whether an access unit holds a picture nothing references: it has slices and every
/// slice's `nal_ref_idc` is 0 (H.264 7.4.1), so it can be dropped without breaking the
/// frames after it. An SVC/MVC slice extension (types 20, 21) counts as referenced.
pub fn is_disposable(access_unit: &[u8]) -> bool {
    let mut slices = 0usize;
    for (_, header) in nal_starts(access_unit) {
        let Some(&nal_header) = access_unit.get(header) else {
            continue;
        };
        let nal_type = nal_header & 0x1F;
        let nal_ref_idc = (nal_header >> 5) & 0x03;
        match nal_type {
            NAL_SLICE..=NAL_PARTITION_C if nal_ref_idc == 0 => slices += 1,
            NAL_SLICE..=NAL_PARTITION_C | NAL_IDR | 20 | 21 => return false,
            _ => {}
        }
    }
    slices > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nal(nal_type: u8, first_byte: u8, len: usize) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 1, 0x60 | nal_type, first_byte];
        out.extend(std::iter::repeat_n(0xAB, len));
        out
    }

    #[test]
    fn splits_pictures_and_flags_keyframes() {
        let mut stream = Vec::new();
        stream.extend(nal(NAL_SPS, 0x42, 8));
        stream.extend(nal(NAL_PPS, 0xCE, 3));
        stream.extend(nal(NAL_IDR, 0x88, 100)); // first slice of picture 1
        stream.extend(nal(NAL_IDR, 0x10, 100)); // second slice, same picture
        stream.extend(nal(NAL_SLICE, 0x9A, 50)); // picture 2
        stream.extend(nal(NAL_AUD, 0xF0, 0));
        stream.extend(nal(NAL_SLICE, 0x9A, 40)); // picture 3
        let units = access_units(&stream);
        assert_eq!(units.len(), 3);
        assert!(units[0].keyframe && units[0].codec_config);
        assert!(!units[1].keyframe && !units[1].codec_config);
        assert!(!units[2].keyframe);
        // Nothing lost, nothing duplicated.
        let joined: Vec<u8> = units.iter().flat_map(|u| u.data.clone()).collect();
        assert_eq!(joined, stream);
    }

    #[test]
    fn finds_pictures_nothing_references() {
        // nal_ref_idc in bits 5..6 of the header: 0x01 is a non-reference slice, 0x21 and
        // 0x41 reference slices.
        let unit = |headers: &[u8]| -> Vec<u8> {
            headers
                .iter()
                .flat_map(|&h| [0, 0, 0, 1, h, 0x88, 0xAB])
                .collect()
        };
        assert!(
            is_disposable(&unit(&[0x09, 0x06, 0x01])),
            "AUD, SEI, non-reference slice"
        );
        assert!(
            is_disposable(&unit(&[0x01, 0x01])),
            "two non-reference slices"
        );
        assert!(
            !is_disposable(&unit(&[0x01, 0x21])),
            "one slice is referenced"
        );
        assert!(!is_disposable(&unit(&[0x41])));
        assert!(!is_disposable(&unit(&[0x65])), "IDR");
        assert!(!is_disposable(&unit(&[0x06, 0x67])), "no slice at all");
        assert!(!is_disposable(&unit(&[0x01, 0x14])), "SVC extension");
        assert!(!is_disposable(&[]));
        assert!(!is_disposable(&[0, 0, 1]));
    }

    /// An H.265 NAL unit: type, TemporalId 0, then `first` and filler.
    fn hevc(nal_type: u8, first: u8, len: usize) -> Vec<u8> {
        let mut out = vec![0, 0, 0, 1, nal_type << 1, 0x01, first];
        out.extend(std::iter::repeat_n(0xAB, len));
        out
    }

    #[test]
    fn splits_h265_pictures_by_first_slice_segment_and_parameter_sets() {
        let mut stream = Vec::new();
        stream.extend(hevc(nal_type::VPS, 0x0C, 20));
        stream.extend(hevc(nal_type::SPS, 0x01, 30));
        stream.extend(hevc(nal_type::PPS, 0xC1, 5));
        stream.extend(hevc(nal_type::PREFIX_SEI, 0x05, 10));
        stream.extend(hevc(19, 0xAF, 300)); // IDR_W_RADL, first slice segment
        stream.extend(hevc(19, 0x2F, 300)); // second slice segment, same picture
        stream.extend(hevc(1, 0xD0, 80)); // TRAIL_R: picture 2
        stream.extend(hevc(40, 0x05, 4)); // suffix SEI stays with picture 2
        stream.extend(hevc(0, 0xD0, 40)); // TRAIL_N: picture 3
        stream.extend(hevc(nal_type::AUD, 0x50, 0));
        stream.extend(hevc(21, 0xAF, 200)); // CRA: picture 4, a keyframe without VPS
        stream.extend(hevc(1, 0x80, 60)); // picture 5
        stream.extend(hevc(22, 0x80, 60)); // reserved IRAP 22: picture 6, a keyframe
        stream.extend(hevc(23, 0x80, 60)); // reserved IRAP 23: picture 7, a keyframe
        assert_eq!(detect_codec(&stream), Codec::H265);
        let units = access_units_of(Codec::H265, &stream);
        let flags: Vec<_> = units.iter().map(|u| (u.keyframe, u.codec_config)).collect();
        assert_eq!(
            flags,
            [
                (true, true),
                (false, false),
                (false, false),
                (true, false),
                (false, false),
                (true, false),
                (true, false)
            ]
        );
        let joined: Vec<u8> = units.iter().flat_map(|u| u.data.clone()).collect();
        assert_eq!(joined, stream, "nothing lost, nothing duplicated");
        // Split the H.264 way, the stream is one giant non-key frame (the old bug).
        assert!(access_units(&stream).len() < units.len());
    }

    #[test]
    fn detects_the_codec_from_the_first_nal_unit() {
        assert_eq!(detect_codec(&nal(NAL_SPS, 0x42, 8)), Codec::H264);
        assert_eq!(detect_codec(&nal(NAL_AUD, 0xF0, 1)), Codec::H264);
        assert_eq!(detect_codec(&nal(NAL_IDR, 0x88, 8)), Codec::H264);
        assert_eq!(detect_codec(&hevc(nal_type::VPS, 0x0C, 8)), Codec::H265);
        assert_eq!(detect_codec(&hevc(nal_type::AUD, 0x50, 1)), Codec::H265);
        assert_eq!(detect_codec(&[]), Codec::H264);
        assert_eq!(detect_codec(&[0, 0, 1, 0x40]), Codec::H264, "truncated");
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let data: Vec<u8> = (0..len).map(|i| [0u8, 0, 1, 0x65, 0x80][i % 5]).collect();
            for codec in [Codec::H264, Codec::H265] {
                let units = access_units_of(codec, &data);
                assert!(units.iter().map(|u| u.data.len()).sum::<usize>() <= data.len());
            }
            detect_codec(&data);
        }
    }
}
