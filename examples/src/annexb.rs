//! H.264 Annex-B byte streams: split into access units (one per video frame) and find
//! which carry an IDR picture (keyframe) or SPS/PPS (codec configuration).
//!
//! The camera reads a file this way and sends each access unit as one frame, start codes
//! included, so the viewer writes the frames back to back and gets a valid Annex-B
//! stream again, byte for byte.

/// NAL unit types that matter here (H.264 Table 7-1).
const NAL_SLICE: u8 = 1;
/// Slice data partition C, the last of the partition types after `NAL_SLICE`.
const NAL_PARTITION_C: u8 = 4;
const NAL_IDR: u8 = 5;
const NAL_SEI: u8 = 6;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// One access unit: the bytes of one frame with their start codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// The bytes, start codes included.
    pub data: Vec<u8>,
    /// Contains an IDR slice.
    pub keyframe: bool,
    /// Contains an SPS (and so the codec configuration).
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

/// Splits an Annex-B stream into access units. A new access unit starts at an access
/// unit delimiter, at an SPS/PPS/SEI that follows a slice, or at a slice whose
/// `first_mb_in_slice` is 0 (the first slice of a picture) that follows a slice.
/// Bytes before the first start code are ignored.
pub fn access_units(stream: &[u8]) -> Vec<AccessUnit> {
    let starts = nal_starts(stream);
    let mut units: Vec<AccessUnit> = Vec::new();
    let mut current: Option<AccessUnit> = None;
    let mut seen_slice = false;
    for (index, &(code, header)) in starts.iter().enumerate() {
        let end = starts
            .get(index + 1)
            .map_or(stream.len(), |&(next, _)| next);
        let Some(&nal_header) = stream.get(header) else {
            continue;
        };
        let nal_type = nal_header & 0x1F;
        let is_slice = nal_type == NAL_SLICE || nal_type == NAL_IDR;
        // first_mb_in_slice is ue(v); 0 is coded as a single '1' bit.
        let first_slice_of_picture =
            is_slice && stream.get(header + 1).is_some_and(|b| b & 0x80 != 0);
        let begins_unit = match nal_type {
            NAL_AUD => true,
            NAL_SPS | NAL_PPS | NAL_SEI => seen_slice,
            _ => first_slice_of_picture && seen_slice,
        };
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
        unit.keyframe |= nal_type == NAL_IDR;
        unit.codec_config |= nal_type == NAL_SPS;
        seen_slice |= is_slice;
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

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let data: Vec<u8> = (0..len).map(|i| [0u8, 0, 1, 0x65, 0x80][i % 5]).collect();
            let units = access_units(&data);
            assert!(units.iter().map(|u| u.data.len()).sum::<usize>() <= data.len());
        }
    }
}
