//! Property tests: round trips, and the check characters catching every single edit.

use proptest::prelude::*;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint, ParseError};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn device_id() -> impl Strategy<Value = DeviceId> {
    any::<[u8; 6]>().prop_filter_map("not a device address", |b| DeviceId::from_bytes(b).ok())
}

/// The checked form's 14 digits, without separators.
fn checked_digits(id: DeviceId) -> Vec<u8> {
    id.to_checked_string()
        .bytes()
        .filter(|b| *b != b'-')
        .collect()
}

/// Whether `digits` parse, as a checked ID, to anything at all.
fn accepted(digits: &[u8]) -> Option<DeviceId> {
    DeviceId::parse_checked(std::str::from_utf8(digits).unwrap()).ok()
}

proptest! {
    #[test]
    fn display_parses_back(id in device_id()) {
        prop_assert_eq!(id.to_string().parse::<DeviceId>(), Ok(id));
        prop_assert_eq!(id.to_string().to_lowercase().parse::<DeviceId>(), Ok(id));
        prop_assert_eq!(DeviceId::parse_checked(&id.to_checked_string()), Ok(id));
    }

    #[test]
    fn every_separator_style_parses(id in device_id(), sep in prop::sample::select(vec!["", ":", "-", ".", " ", " - "])) {
        let text = id
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(sep);
        prop_assert_eq!(text.parse::<DeviceId>(), Ok(id));
    }

    /// Every substitution of every one of the 14 digits by each of the 15 other hex
    /// digits is refused: none parses to any ID at all.
    #[test]
    fn check_catches_every_single_substitution(id in device_id()) {
        let digits = checked_digits(id);
        for position in 0..digits.len() {
            for &replacement in HEX.iter().filter(|h| **h != digits[position]) {
                let mut edited = digits.clone();
                edited[position] = replacement;
                prop_assert_eq!(accepted(&edited), None, "position {} -> {}", position, replacement as char);
            }
        }
    }

    /// Every swap of two neighbouring, different digits is refused.
    #[test]
    fn check_catches_every_adjacent_transposition(id in device_id()) {
        let digits = checked_digits(id);
        for position in 0..digits.len() - 1 {
            if digits[position] == digits[position + 1] {
                continue;
            }
            let mut edited = digits.clone();
            edited.swap(position, position + 1);
            prop_assert_eq!(accepted(&edited), None, "swap at {}", position);
        }
    }

    /// Deleting or inserting one digit changes the digit count and is refused.
    #[test]
    fn check_catches_every_deletion_and_insertion(id in device_id()) {
        let digits = checked_digits(id);
        for position in 0..digits.len() {
            let mut deleted = digits.clone();
            deleted.remove(position);
            let result = DeviceId::parse_checked(std::str::from_utf8(&deleted).unwrap());
            prop_assert_eq!(result, Err(ParseError::WrongLength { digits: 13 }));
        }
        for position in 0..=digits.len() {
            for &inserted in HEX {
                let mut edited = digits.clone();
                edited.insert(position, inserted);
                prop_assert_eq!(accepted(&edited), None);
            }
        }
    }

    #[test]
    fn uri_round_trips(id in device_id(), fp in any::<[u8; 16]>()) {
        let uri = DeviceUri::new(id, KeyFingerprint::from_bytes(fp));
        prop_assert_eq!(uri.to_string().parse::<DeviceUri>(), Ok(uri));
    }

    #[test]
    fn arbitrary_input_never_panics(input in ".{0,80}") {
        sightwire_id::fuzzing::parse_all(&input);
    }

    #[test]
    fn arbitrary_uri_input_never_panics(tail in "[0-9a-fA-F:?&=#%.-]{0,100}") {
        sightwire_id::fuzzing::parse_all(&format!("sightwire:{tail}"));
    }
}

proptest! {
    /// The fuzzing oracle itself holds on valid inputs of every form, so a fuzzer
    /// finding a violation means a real bug, not a wrong oracle.
    #[test]
    fn fuzz_oracle_holds_on_valid_inputs(id in device_id(), fp in any::<[u8; 16]>()) {
        sightwire_id::fuzzing::parse_all(&id.to_string());
        sightwire_id::fuzzing::parse_all(&id.to_checked_string());
        sightwire_id::fuzzing::parse_all(&DeviceUri::new(id, KeyFingerprint::from_bytes(fp)).to_string());
    }
}
