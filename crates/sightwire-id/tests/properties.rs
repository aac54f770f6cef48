//! Property tests: round trips, what phones type, look-alikes, and the check characters
//! catching every single edit.

use proptest::prelude::*;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint, MAX_INPUT_LEN, ParseError};

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

/// Invisible characters that pastes carry (all default-ignorable): zero-width space,
/// non-joiner, joiner, word joiner, BOM, soft hyphen, the bidi marks, embeddings,
/// left-to-right override, pop, isolates, Arabic letter mark, Mongolian vowel separator,
/// a variation selector, a tag character, Hangul filler.
const INVISIBLES: &[char] = &[
    '\u{200B}',
    '\u{200C}',
    '\u{200D}',
    '\u{2060}',
    '\u{FEFF}',
    '\u{00AD}',
    '\u{200E}',
    '\u{200F}',
    '\u{202A}',
    '\u{202B}',
    '\u{202C}',
    '\u{202D}',
    '\u{2066}',
    '\u{2067}',
    '\u{2068}',
    '\u{2069}',
    '\u{061C}',
    '\u{180E}',
    '\u{FE0F}',
    '\u{E0041}',
    '\u{3164}',
];

/// Unicode spaces (`White_Space`).
const SPACES: &[char] = &[
    ' ', '\t', '\n', '\r', '\u{00A0}', '\u{1680}', '\u{2000}', '\u{2003}', '\u{2007}', '\u{2009}',
    '\u{200A}', '\u{2028}', '\u{202F}', '\u{205F}', '\u{3000}',
];

/// Every accepted separator, in the forms a phone types.
const SEPARATORS: &[&str] = &[
    "", ":", "-", ".", " ", "：", "－", "．", "\u{3000}", "\u{2010}", "\u{2011}", "\u{2012}",
    "\u{2013}", "\u{2014}", "\u{2015}", "\u{2212}", "ー", "ｰ", "。", "｡", " - ",
];

/// The full-width form of ASCII text: `!`..`~` shifted to `U+FF01`..`U+FF5E`, space to
/// the ideographic space; other characters unchanged.
fn full_width(text: &str) -> String {
    text.chars()
        .map(|ch| match ch {
            ' ' => '\u{3000}',
            '!'..='~' => char::from_u32(u32::from(ch) + 0xFEE0).unwrap(),
            _ => ch,
        })
        .collect()
}

/// `text` with `insertions` (index modulo the length, character) inserted.
fn insert_all(text: &str, insertions: &[(usize, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(index, ch) in insertions {
        chars.insert(index % (chars.len() + 1), ch);
    }
    chars.into_iter().collect()
}

/// The ID's 12 digits joined in pairs or quads by `separator`, in either case.
fn spelled(id: DeviceId, separator: &str, group: usize, lower: bool) -> String {
    let digits: String = id.as_bytes().iter().map(|b| format!("{b:02X}")).collect();
    let digits = if lower { digits.to_lowercase() } else { digits };
    digits
        .as_bytes()
        .chunks(group)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect::<Vec<_>>()
        .join(separator)
}

/// Characters that resemble `ch` (a hex digit or letter) but are refused: its
/// mathematical bold and double-struck forms, its circled form, and the Latin, Greek and
/// Cyrillic letters that look like it.
fn look_alikes(ch: char) -> Vec<char> {
    let offset = |base: u32, first: char| char::from_u32(base + u32::from(ch) - u32::from(first));
    let mut out: Vec<char> = match ch {
        '0'..='9' => [0x1D7CE, 0x1D7D8]
            .iter()
            .filter_map(|&base| offset(base, '0'))
            .chain(match ch {
                '0' => Some('\u{24EA}'),
                _ => offset(0x2460 - 1, '0'),
            })
            .collect(),
        'A'..='F' => [0x1D400, 0x1D538, 0x24B6]
            .iter()
            .filter_map(|&base| offset(base, 'A'))
            .filter(|c| *c != '\u{1D53A}') // double-struck C is U+2102, below
            .collect(),
        'a'..='f' => [0x1D41A, 0x1D552, 0x24D0]
            .iter()
            .filter_map(|&base| offset(base, 'a'))
            .collect(),
        _ => Vec::new(),
    };
    out.extend(match ch {
        '0' => &[
            'O', 'o', '\u{041E}', '\u{043E}', '\u{039F}', '\u{03BF}', 'Ｏ',
        ][..],
        '1' => &['I', 'l', '\u{0406}', '\u{0399}', '\u{04C0}', 'Ｉ', 'ｌ'][..],
        '3' => &['\u{0417}'][..],
        '6' => &['\u{0431}'][..],
        'A' => &['\u{0410}', '\u{0391}'][..],
        'B' => &['\u{0412}', '\u{0392}'][..],
        'C' => &['\u{0421}', '\u{03F9}', '\u{2102}', '\u{216D}'][..],
        'E' => &['\u{0415}', '\u{0395}'][..],
        'a' => &['\u{0430}', '\u{03B1}'][..],
        'b' => &['\u{042C}'][..],
        'c' => &['\u{0441}', '\u{03F2}', '\u{217D}'][..],
        'd' => &['\u{0501}'][..],
        'e' => &['\u{0435}'][..],
        _ => &[][..],
    });
    out
}

/// The kind of an outcome, without the characters and positions an error names.
fn outcome(result: Result<DeviceId, ParseError>) -> Result<DeviceId, String> {
    result.map_err(|error| match error {
        ParseError::InvalidCharacter { .. } => "invalid-character".to_string(),
        ParseError::LookAlike { looks_like, .. } => format!("look-alike {looks_like}"),
        other => format!("{other:?}"),
    })
}

/// Any character, weighted towards the ones the normaliser treats specially.
fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        3 => prop::sample::select(b"0123456789abcdefABCDEF:-. ".iter().map(|&b| char::from(b)).collect::<Vec<_>>()),
        1 => prop::sample::select(INVISIBLES.to_vec()),
        1 => prop::sample::select(SPACES.to_vec()),
        1 => prop::sample::select(vec!['\u{202E}', '\u{0600}', 'O', 'l', '\u{0421}', '\u{1D400}', '\u{FF10}', '\u{FF21}', '\u{FF1A}', '\u{2013}', '\u{30FC}', '\u{FE55}', '\u{0301}']),
    ]
}

proptest! {
    /// Every spelling, in full width, with invisible characters inserted anywhere and
    /// spaces around it, parses to the same ID.
    #[test]
    fn what_phones_type_parses_to_the_same_id(
        id in device_id(),
        separator in prop::sample::select(SEPARATORS.to_vec()),
        group in prop::sample::select(vec![2usize, 4, 12]),
        lower in any::<bool>(),
        wide in any::<bool>(),
        invisibles in prop::collection::vec((any::<usize>(), prop::sample::select(INVISIBLES.to_vec())), 0..16),
        before in prop::collection::vec(prop::sample::select(SPACES.to_vec()), 0..4),
        after in prop::collection::vec(prop::sample::select(SPACES.to_vec()), 0..4),
    ) {
        let text = spelled(id, separator, group, lower);
        let text = if wide { full_width(&text) } else { text };
        let text = insert_all(&text, &invisibles);
        let text: String = before.iter().chain(std::iter::once(&'\0')).chain(after.iter())
            .map(|ch| if *ch == '\0' { text.clone() } else { ch.to_string() })
            .collect();
        prop_assert!(text.len() <= MAX_INPUT_LEN);
        prop_assert_eq!(text.parse::<DeviceId>(), Ok(id), "{:?}", text);
    }

    /// The checked form survives the same treatment, and still verifies.
    #[test]
    fn checked_form_typed_on_a_phone_still_verifies(
        id in device_id(),
        invisibles in prop::collection::vec((any::<usize>(), prop::sample::select(INVISIBLES.to_vec())), 0..16),
    ) {
        let text = insert_all(&full_width(&id.to_checked_string()), &invisibles);
        prop_assert_eq!(DeviceId::parse_checked(&text), Ok(id));
    }

    /// Inserting invisible characters never changes the outcome for any input (only
    /// the positions an error reports).
    #[test]
    fn invisible_characters_never_change_the_outcome(
        chars in prop::collection::vec(interesting_char(), 0..40),
        invisibles in prop::collection::vec((any::<usize>(), prop::sample::select(INVISIBLES.to_vec())), 1..8),
    ) {
        let text: String = chars.into_iter().collect();
        let inserted = insert_all(&text, &invisibles);
        prop_assume!(inserted.len() <= MAX_INPUT_LEN);
        prop_assert_eq!(outcome(inserted.parse()), outcome(text.parse()), "{:?}", inserted);
    }

    /// The full-width form of any ASCII string means what the string means.
    #[test]
    fn full_width_never_changes_the_outcome(text in "[ -~]{0,80}") {
        let wide = full_width(&text);
        prop_assert_eq!(outcome(wide.parse()), outcome(text.parse()), "{:?}", wide);
    }

    /// Replacing any one digit of a valid ID by a character that looks like it is
    /// refused, naming that character, its position and the digit it resembles.
    #[test]
    fn look_alike_substitutions_are_refused(
        id in device_id(),
        lower in any::<bool>(),
        checked in any::<bool>(),
        digit in 0usize..12,
        pick in any::<prop::sample::Index>(),
    ) {
        let text = if checked { id.to_checked_string() } else { id.to_string() };
        let text = if lower { text.to_lowercase() } else { text };
        let (index, original) = text
            .char_indices()
            .filter(|(_, ch)| ch.is_ascii_hexdigit())
            .nth(digit)
            .unwrap();
        let candidates = look_alikes(original);
        prop_assert!(!candidates.is_empty(), "{}", original);
        let replacement = *pick.get(&candidates);
        let edited: String = text
            .chars()
            .enumerate()
            .map(|(i, ch)| if i == index { replacement } else { ch })
            .collect();
        let expected = Err(ParseError::LookAlike {
            ch: replacement,
            position: index + 1,
            looks_like: original,
        });
        prop_assert_eq!(edited.parse::<DeviceId>(), expected, "{:?}", edited);
        prop_assert_eq!(DeviceId::parse_checked(&edited), expected);
    }

    /// Arbitrary text, long or short, of any characters: never a panic, the oracle
    /// holds, and anything over the limit is refused for its length alone.
    #[test]
    fn arbitrary_unicode_never_panics(chars in prop::collection::vec(interesting_char(), 0..300)) {
        let text: String = chars.into_iter().collect();
        sightwire_id::fuzzing::parse_all(&text);
        if text.len() > MAX_INPUT_LEN {
            prop_assert_eq!(
                text.parse::<DeviceId>(),
                Err(ParseError::TooLong { len: text.len(), limit: MAX_INPUT_LEN })
            );
        }
    }
}
