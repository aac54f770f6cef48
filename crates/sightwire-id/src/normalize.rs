//! What each character of a typed or pasted ID means: the normalisation of `spec/id.md`
//! §2.1, one character at a time.
//!
//! Phones add characters a label never shows: CJK input methods type full-width digits,
//! letters and punctuation (`１Ｃ：Ｃ３`), web pages and chat apps carry invisible format
//! characters (zero-width space, BOM, bidi marks) and unusual spaces along with the text.
//! Those are read as what the person meant. Characters that only *look* like hex digits
//! (Cyrillic `С`, Greek `Α`, mathematical `𝐀`, the letter `O` for the digit `0`) are
//! refused with the character they resemble, so a viewer app can say what to retype.
//!
//! Every decision is per character and needs no look-ahead, so the work is bounded by
//! the input length (itself capped before anything is examined) and positions in errors
//! are positions in the caller's own string.

use unicode_normalization::UnicodeNormalization;

/// What one input character contributes to an ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A hex digit with this value (0–15).
    Digit(u8),
    /// Nothing: whitespace, a separator, or an invisible character.
    Skip,
    /// Refused: the character resembles this accepted character but is a different one.
    LookAlike(char),
    /// Refused: neither a hex digit, a separator, whitespace nor invisible.
    Invalid,
}

/// Classifies one input character (spec/id.md §2.1, steps 2–6).
pub(crate) fn classify(ch: char) -> Class {
    // The common case first: an ASCII hex digit is never removed, folded or a separator.
    if let Some(value) = ch.to_digit(16) {
        return Class::Digit(value as u8);
    }
    if is_removed(ch) {
        return Class::Skip;
    }
    let folded = fold_width(ch);
    if is_separator(folded) {
        return Class::Skip;
    }
    if let Some(value) = folded.to_digit(16) {
        // `to_digit(16)` accepts only ASCII `0-9a-zA-Z` and returns at most 15.
        return Class::Digit(value as u8);
    }
    match look_alike(ch, folded) {
        Some(resembles) => Class::LookAlike(resembles),
        None => Class::Invalid,
    }
}

/// Whether `ch` is dropped wherever it stands: Unicode whitespace or a default-ignorable
/// (invisible) character other than the right-to-left override.
pub(crate) fn is_removed(ch: char) -> bool {
    ch.is_whitespace() || is_ignorable(ch)
}

/// `U+202E RIGHT-TO-LEFT OVERRIDE`: displays the characters after it in reverse order,
/// so the string a person sees is not the string that would be read. Refused.
pub(crate) const RIGHT_TO_LEFT_OVERRIDE: char = '\u{202E}';

/// The code points with the Unicode property `Default_Ignorable_Code_Point` (Unicode
/// 14.0, including the code points reserved for future invisible characters):
/// characters that render as nothing when a font or a renderer does not support them.
/// Inclusive ranges, sorted.
///
/// It holds every invisible character that pastes carry: soft hyphen `U+00AD`, the
/// Arabic letter mark `U+061C`, the Mongolian vowel separator `U+180E`, zero-width space,
/// non-joiner, joiner `U+200B`–`U+200D`, the bidi marks, embeddings, overrides and
/// isolates `U+200E`, `U+200F`, `U+202A`–`U+202E`, `U+2066`–`U+2069`, the word joiner and
/// invisible operators `U+2060`–`U+2064`, the BOM / zero-width no-break space `U+FEFF`,
/// variation selectors and tag characters, and the Hangul fillers. It excludes the
/// format characters that are visible (the Arabic number signs `U+0600`–`U+0605`, for
/// example), which stay refused.
const DEFAULT_IGNORABLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFF8}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Default-ignorable and not the right-to-left override.
fn is_ignorable(ch: char) -> bool {
    // Below the first range (all of ASCII) nothing is ignorable.
    ch >= DEFAULT_IGNORABLE[0].0 && ch != RIGHT_TO_LEFT_OVERRIDE && in_ranges(DEFAULT_IGNORABLE, ch)
}

fn in_ranges(ranges: &[(char, char)], ch: char) -> bool {
    ranges
        .binary_search_by(|&(low, high)| {
            if high < ch {
                std::cmp::Ordering::Less
            } else if low > ch {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// First and last code point of the full-width forms of ASCII `!`..`~`.
const FULLWIDTH_FIRST: char = '\u{FF01}';
const FULLWIDTH_LAST: char = '\u{FF5E}';
/// Distance between a full-width form and its ASCII character.
const FULLWIDTH_OFFSET: u32 = 0xFEE0;

/// The width folding of NFKC: `U+FF01`..`U+FF5E` to ASCII `!`..`~` (the `<wide>`
/// compatibility mappings of that block); every other character unchanged. (`U+3000
/// IDEOGRAPHIC SPACE`, the other `<wide>` character that matters, is whitespace.)
pub(crate) fn fold_width(ch: char) -> char {
    if (FULLWIDTH_FIRST..=FULLWIDTH_LAST).contains(&ch) {
        char::from_u32(u32::from(ch) - FULLWIDTH_OFFSET).unwrap_or(ch)
    } else {
        ch
    }
}

/// The separators, after width folding: what people write between digit groups and
/// what phones turn those into. They carry no value, so widening this set can never
/// change which ID a string names, and none of them looks like a hex digit.
pub(crate) const SEPARATORS: &[char] = &[
    // What labels print.
    ':', '-', '.',
    // Hyphens and dashes that word processors, web pages and phones' "smart
    // punctuation" put in place of `-`: hyphen, non-breaking hyphen, figure dash, en
    // dash, em dash, horizontal bar, minus sign.
    '\u{2010}', '\u{2011}', '\u{2012}', '\u{2013}', '\u{2014}', '\u{2015}', '\u{2212}',
    // What Japanese input methods type for `-` and `.`: the prolonged sound mark and the
    // ideographic full stop, and their half-width forms.
    '\u{30FC}', '\u{FF70}', '\u{3002}', '\u{FF61}',
];

fn is_separator(folded: char) -> bool {
    SEPARATORS.contains(&folded)
}

/// Letters that look like a hex digit or letter, with the character they resemble,
/// sorted by code point. Two sources:
///
/// - the Latin letters `O`, `o`, `I`, `l`, typed for the digits `0` and `1`;
/// - every Latin, Greek and Cyrillic letter that Unicode's confusables data (UTS #39,
///   `confusables.txt` 14.0) maps to a hex digit or letter, or to `O`, `o` or `l` (its
///   prototypes for `0` and `1`). These are the scripts of the keyboards people type
///   IDs on: a Russian or Greek layout types `С` or `Α` for the key marked C or A.
///
/// Look-alikes from other scripts (Cherokee `Ꭺ`, Lisu `ꓮ`, …) are refused too, as
/// invalid characters.
pub(crate) const CONFUSABLES: &[(char, char)] = &[
    ('I', '1'),
    ('O', '0'),
    ('l', '1'),
    ('o', '0'),
    ('\u{017F}', 'f'), // ſ LATIN SMALL LETTER LONG S
    ('\u{0184}', 'b'), // Ƅ LATIN CAPITAL LETTER TONE SIX
    ('\u{0196}', '1'), // Ɩ LATIN CAPITAL LETTER IOTA
    ('\u{01A7}', '2'), // Ƨ LATIN CAPITAL LETTER TONE TWO
    ('\u{01B7}', '3'), // Ʒ LATIN CAPITAL LETTER EZH
    ('\u{01BC}', '5'), // Ƽ LATIN CAPITAL LETTER TONE FIVE
    ('\u{01C0}', '1'), // ǀ LATIN LETTER DENTAL CLICK
    ('\u{021C}', '3'), // Ȝ LATIN CAPITAL LETTER YOGH
    ('\u{0222}', '8'), // Ȣ LATIN CAPITAL LETTER OU
    ('\u{0223}', '8'), // ȣ LATIN SMALL LETTER OU
    ('\u{0251}', 'a'), // ɑ LATIN SMALL LETTER ALPHA
    ('\u{0391}', 'A'), // Α GREEK CAPITAL LETTER ALPHA
    ('\u{0392}', 'B'), // Β GREEK CAPITAL LETTER BETA
    ('\u{0395}', 'E'), // Ε GREEK CAPITAL LETTER EPSILON
    ('\u{0399}', '1'), // Ι GREEK CAPITAL LETTER IOTA
    ('\u{039F}', '0'), // Ο GREEK CAPITAL LETTER OMICRON
    ('\u{03B1}', 'a'), // α GREEK SMALL LETTER ALPHA
    ('\u{03BF}', '0'), // ο GREEK SMALL LETTER OMICRON
    ('\u{03C3}', '0'), // σ GREEK SMALL LETTER SIGMA
    ('\u{03DC}', 'F'), // Ϝ GREEK LETTER DIGAMMA
    ('\u{03F2}', 'c'), // ϲ GREEK LUNATE SIGMA SYMBOL
    ('\u{03F9}', 'C'), // Ϲ GREEK CAPITAL LUNATE SIGMA SYMBOL
    ('\u{0406}', '1'), // І CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I
    ('\u{0410}', 'A'), // А CYRILLIC CAPITAL LETTER A
    ('\u{0412}', 'B'), // В CYRILLIC CAPITAL LETTER VE
    ('\u{0415}', 'E'), // Е CYRILLIC CAPITAL LETTER IE
    ('\u{0417}', '3'), // З CYRILLIC CAPITAL LETTER ZE
    ('\u{041E}', '0'), // О CYRILLIC CAPITAL LETTER O
    ('\u{0421}', 'C'), // С CYRILLIC CAPITAL LETTER ES
    ('\u{042C}', 'b'), // Ь CYRILLIC CAPITAL LETTER SOFT SIGN
    ('\u{0430}', 'a'), // а CYRILLIC SMALL LETTER A
    ('\u{0431}', '6'), // б CYRILLIC SMALL LETTER BE
    ('\u{0435}', 'e'), // е CYRILLIC SMALL LETTER IE
    ('\u{043E}', '0'), // о CYRILLIC SMALL LETTER O
    ('\u{0441}', 'c'), // с CYRILLIC SMALL LETTER ES
    ('\u{04BD}', 'e'), // ҽ CYRILLIC SMALL LETTER ABKHASIAN CHE
    ('\u{04C0}', '1'), // Ӏ CYRILLIC LETTER PALOCHKA
    ('\u{04E0}', '3'), // Ӡ CYRILLIC CAPITAL LETTER ABKHASIAN DZE
    ('\u{0501}', 'd'), // ԁ CYRILLIC SMALL LETTER KOMI DE
    ('\u{1D04}', 'c'), // ᴄ LATIN LETTER SMALL CAPITAL C
    ('\u{1D0F}', '0'), // ᴏ LATIN LETTER SMALL CAPITAL O
    ('\u{1D11}', '0'), // ᴑ LATIN SMALL LETTER SIDEWAYS O
    ('\u{1E9D}', 'f'), // ẝ LATIN SMALL LETTER LONG S WITH HIGH STROKE
    ('\u{A644}', '2'), // Ꙅ CYRILLIC CAPITAL LETTER REVERSED DZE
    ('\u{A75A}', '2'), // Ꝛ LATIN CAPITAL LETTER R ROTUNDA
    ('\u{A76A}', '3'), // Ꝫ LATIN CAPITAL LETTER ET
    ('\u{A76E}', '9'), // Ꝯ LATIN CAPITAL LETTER CON
    ('\u{A798}', 'F'), // Ꞙ LATIN CAPITAL LETTER F WITH STROKE
    ('\u{A799}', 'f'), // ꞙ LATIN SMALL LETTER F WITH STROKE
    ('\u{A7AB}', '3'), // Ɜ LATIN CAPITAL LETTER REVERSED OPEN E
    ('\u{A7B4}', 'B'), // Ꞵ LATIN CAPITAL LETTER BETA
    ('\u{AB32}', 'e'), // ꬲ LATIN SMALL LETTER BLACKLETTER E
    ('\u{AB35}', 'f'), // ꬵ LATIN SMALL LETTER LENIS F
    ('\u{AB3D}', '0'), // ꬽ LATIN SMALL LETTER BLACKLETTER O
];

fn confusable(ch: char) -> Option<char> {
    CONFUSABLES
        .binary_search_by_key(&ch, |&(from, _)| from)
        .ok()
        .map(|index| CONFUSABLES[index].1)
}

/// The accepted character that `ch` (width-folded: `folded`) resembles, if any:
///
/// 1. `folded` is in [`CONFUSABLES`];
/// 2. otherwise NFKC maps `ch` alone to one character that is a hex digit or a
///    separator (mathematical `𝐀`, circled `Ⓐ`, superscript `²`, Roman numeral `Ⅽ`,
///    small colon `﹕`, …), or that is in [`CONFUSABLES`] (mathematical `𝐎`).
///
/// Only the width folding of NFKC is *accepted*: phones type full-width forms, but no
/// keyboard types the others; they come from "fancy text" generators and crafted
/// strings, and an ID written in them is not what any label shows.
fn look_alike(ch: char, folded: char) -> Option<char> {
    if let Some(resembles) = confusable(folded) {
        return Some(resembles);
    }
    let mut normalized = std::iter::once(ch).nfkc();
    let (first, rest) = (normalized.next()?, normalized.next());
    if rest.is_some() || first == ch {
        return None;
    }
    if first.is_ascii_hexdigit() || is_separator(first) {
        Some(first)
    } else {
        confusable(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nfkc_single(ch: char) -> Option<char> {
        let mut normalized = std::iter::once(ch).nfkc();
        match (normalized.next(), normalized.next()) {
            (Some(first), None) => Some(first),
            _ => None,
        }
    }

    fn all_chars() -> impl Iterator<Item = char> {
        (0..=u32::from(char::MAX)).filter_map(char::from_u32)
    }

    #[test]
    fn tables_are_sorted_and_disjoint() {
        assert!(DEFAULT_IGNORABLE.windows(2).all(|w| w[0].1 < w[1].0));
        assert!(DEFAULT_IGNORABLE.iter().all(|(low, high)| low <= high));
        assert!(CONFUSABLES.windows(2).all(|w| w[0].0 < w[1].0));
        for &(from, to) in CONFUSABLES {
            assert!(from.to_digit(16).is_none(), "{from:?} is a hex digit");
            assert!(to.is_ascii_hexdigit(), "{from:?} -> {to:?}");
        }
        for &separator in SEPARATORS {
            assert!(!separator.is_whitespace() && !is_ignorable(separator));
            assert_eq!(fold_width(separator), separator);
        }
    }

    /// The accepted mapping is exactly NFKC's, character by character: every character
    /// read as a digit or separator is one whose NFKC form is that digit or an accepted
    /// separator (or a separator kept as such), over all of Unicode.
    #[test]
    fn accepted_characters_are_what_nfkc_says() {
        for ch in all_chars() {
            match classify(ch) {
                Class::Digit(value) => {
                    let normal = nfkc_single(ch).expect("digits normalise to one character");
                    assert_eq!(normal.to_digit(16), Some(u32::from(value)), "{ch:?}");
                }
                Class::Skip if !is_removed(ch) => {
                    let normal = nfkc_single(ch).unwrap_or(ch);
                    assert!(is_separator(normal), "{ch:?} skipped, NFKC {normal:?}");
                }
                _ => {}
            }
        }
    }

    /// Nothing that NFKC would turn into a hex digit or separator is refused as merely
    /// invalid: it is either accepted (ASCII, full-width) or named as a look-alike.
    /// Full-width forms are the only compatibility characters read as digits.
    #[test]
    fn nfkc_look_alikes_are_named_and_only_width_forms_are_accepted() {
        let mut accepted_compat = 0;
        for ch in all_chars() {
            let Some(normal) = nfkc_single(ch) else {
                continue;
            };
            if normal == ch || !(normal.is_ascii_hexdigit() || is_separator(normal)) {
                continue;
            }
            match classify(ch) {
                Class::Digit(_) => {
                    assert!((FULLWIDTH_FIRST..=FULLWIDTH_LAST).contains(&ch), "{ch:?}");
                    accepted_compat += 1;
                }
                Class::Skip => {
                    assert!(
                        is_separator(fold_width(ch)) || SEPARATORS.contains(&ch),
                        "{ch:?}"
                    );
                }
                Class::LookAlike(resembles) => assert_eq!(resembles, normal, "{ch:?}"),
                Class::Invalid => panic!("{ch:?} normalises to {normal:?} but is invalid"),
            }
        }
        // 0-9, A-F, a-f in full width.
        assert_eq!(accepted_compat, 22);
    }

    /// The table is the one spec/id.md §2.2 gives, as the independent generator of the
    /// test vectors writes it out.
    #[test]
    fn confusables_are_the_spec_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/id.json");
        let text = std::fs::read_to_string(path).expect("spec/vectors/id.json is readable");
        let vectors: serde_json::Value = serde_json::from_str(&text).unwrap();
        let spec: Vec<(char, char)> = vectors["look_alike_table"]
            .as_array()
            .expect("look_alike_table")
            .iter()
            .map(|entry| {
                let one = |key: &str| {
                    let text = entry[key].as_str().unwrap();
                    let mut chars = text.chars();
                    let ch = chars.next().unwrap();
                    assert!(chars.next().is_none(), "{text:?}");
                    ch
                };
                (one("letter"), one("looks_like"))
            })
            .collect();
        assert_eq!(spec, CONFUSABLES);
        for &(letter, resembles) in CONFUSABLES {
            assert_eq!(classify(letter), Class::LookAlike(resembles), "{letter:?}");
        }
    }

    #[test]
    fn width_folding_is_nfkc_on_its_block() {
        for ch in FULLWIDTH_FIRST..=FULLWIDTH_LAST {
            assert_eq!(Some(fold_width(ch)), nfkc_single(ch), "{ch:?}");
        }
        assert_eq!(nfkc_single('\u{3000}'), Some(' '));
        assert!('\u{3000}'.is_whitespace());
    }

    #[test]
    fn examples() {
        assert_eq!(classify('Ｃ'), Class::Digit(12));
        assert_eq!(classify('ｆ'), Class::Digit(15));
        assert_eq!(classify('９'), Class::Digit(9));
        for skipped in [
            '：', '－', '．', '\u{3000}', '\u{200B}', '\u{FEFF}', '\u{00AD}', '\u{2060}',
            '\u{200E}', '\u{2066}', '\u{00A0}', '\u{2013}', 'ー', '。',
        ] {
            assert_eq!(classify(skipped), Class::Skip, "{skipped:?}");
        }
        assert_eq!(classify('С'), Class::LookAlike('C'));
        assert_eq!(classify('Α'), Class::LookAlike('A'));
        assert_eq!(classify('O'), Class::LookAlike('0'));
        assert_eq!(classify('Ｏ'), Class::LookAlike('0'));
        assert_eq!(classify('𝐀'), Class::LookAlike('A'));
        assert_eq!(classify('𝐎'), Class::LookAlike('0'));
        assert_eq!(classify('①'), Class::LookAlike('1'));
        assert_eq!(classify('²'), Class::LookAlike('2'));
        assert_eq!(classify('Ⅽ'), Class::LookAlike('C'));
        assert_eq!(classify('﹕'), Class::LookAlike(':'));
        assert_eq!(classify(RIGHT_TO_LEFT_OVERRIDE), Class::Invalid);
        assert_eq!(classify('\u{0600}'), Class::Invalid);
        assert_eq!(classify('G'), Class::Invalid);
        assert_eq!(classify('·'), Class::Invalid);
        assert_eq!(classify('Ꭺ'), Class::Invalid);
    }
}
