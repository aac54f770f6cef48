//! [`DeviceId`]: parsing what people type, the canonical display and the checked form.

use std::fmt;
use std::str::FromStr;

use crate::check::{CHECK_CHARS, crc8};
use crate::normalize::{self, Class};

/// Longest input, in bytes (UTF-8), that the parsers look at. Anything longer is refused
/// before a single character is examined, so a huge paste costs nothing.
///
/// The longest spelling a phone produces fits with room to spare: the checked form in
/// full-width characters (3 bytes each) with full-width colons between every pair is 60
/// bytes; ideographic spaces around each separator and a zero-width character after
/// every other character, as some chat apps insert, still stay under 200.
pub const MAX_INPUT_LEN: usize = 256;

/// Hex digits in an EUI-48.
const ID_DIGITS: usize = 12;
/// Hex digits in the checked human form.
const CHECKED_DIGITS: usize = ID_DIGITS + CHECK_CHARS;

/// A Sightwire device ID: the camera's EUI-48 MAC address.
///
/// Every value of this type is a valid device ID: it is not all zeros, not the broadcast
/// address, and does not have the multicast bit (the low bit of the first octet) set.
/// Locally administered addresses (second-lowest bit) are accepted.
///
/// Parsing ([`FromStr`]) accepts everything people write for a MAC address, in any
/// case, with separators `:` `-` `.` and whitespace (including none at all) anywhere
/// between digits: `1C:C3:16:AB:CD:EF`, `1c-c3-16-ab-cd-ef`, `1CC3.16AB.CDEF`,
/// `1cc316abcdef`, ` 1C C3 16 AB CD EF `. It also accepts the checked form (12 digits
/// followed by the [`CHECK_CHARS`] check digits, see [`DeviceId::to_checked_string`]),
/// and then verifies the check digits.
///
/// It also accepts what phones produce (`spec/id.md` §2.1): full-width digits, letters
/// and separators from CJK input methods (`１Ｃ：Ｃ３：１６：ＡＢ：ＣＤ：ＥＦ`), the dashes
/// that "smart punctuation" substitutes for `-`, and invisible characters pasted along
/// with the text (zero-width space, BOM, soft hyphen, bidi marks, any Unicode space). It
/// refuses characters that only look like hex digits — Cyrillic `С`, Greek `Α`,
/// mathematical `𝐀`, circled `Ⓐ`, the letter `O` for the digit `0` — with
/// [`ParseError::LookAlike`], and the right-to-left override `U+202E` (which would
/// display the ID reversed) with [`ParseError::InvalidCharacter`].
///
/// The canonical display ([`fmt::Display`]) is six upper-case hex pairs separated by
/// colons: `1C:C3:16:AB:CD:EF`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 6]);

/// Why a string is not a device ID.
///
/// Positions count characters (Unicode scalar values, not bytes) of the input from 1,
/// invisible ones included, so a program can find the character in the string it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The input holds no hex digits at all.
    Empty,
    /// The input is longer than [`MAX_INPUT_LEN`] bytes.
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit, [`MAX_INPUT_LEN`].
        limit: usize,
    },
    /// A character that is neither a hex digit, a separator, whitespace nor an invisible
    /// (default-ignorable) character, and does not resemble a hex digit or separator.
    InvalidCharacter {
        /// The offending character.
        ch: char,
        /// Its position among the input's characters, counting from 1.
        position: usize,
    },
    /// A character that looks like a hex digit or separator but is a different one: a
    /// letter of another script (Cyrillic `С`, Greek `Α`), a compatibility form no
    /// keyboard types (mathematical `𝐀`, circled `Ⓐ`, superscript `²`), or the letter `O`
    /// or `I`/`l` for the digit `0` or `1`. Refused rather than guessed, so what a person
    /// sees is always what is read.
    LookAlike {
        /// The offending character.
        ch: char,
        /// Its position among the input's characters, counting from 1.
        position: usize,
        /// The hex digit or separator it resembles, as the person probably meant it.
        looks_like: char,
    },
    /// The input has the wrong number of hex digits: a device ID has 12, or 14 with its
    /// check characters.
    WrongLength {
        /// How many hex digits the input has (counting stops at the first digit past 14).
        digits: usize,
    },
    /// The check characters are present but do not match the ID: a digit was mistyped
    /// or two digits were swapped.
    CheckMismatch,
    /// [`DeviceId::parse_checked`] was given an ID without its check characters.
    MissingCheck,
    /// The multicast bit (lowest bit of the first octet) is set; no camera has such an
    /// address.
    Multicast {
        /// The first octet as typed.
        first_octet: u8,
    },
    /// `00:00:00:00:00:00` is not an address.
    AllZeros,
    /// `FF:FF:FF:FF:FF:FF` is the broadcast address, not a device.
    Broadcast,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("no device ID given"),
            Self::TooLong { len, limit } => {
                write!(
                    f,
                    "input is {len} bytes long; a device ID is at most {limit}"
                )
            }
            Self::InvalidCharacter { ch, position } => write!(
                f,
                "{ch:?} (U+{:04X}) at position {position} is not a hex digit (0-9, A-F) or separator",
                u32::from(*ch)
            ),
            Self::LookAlike {
                ch,
                position,
                looks_like,
            } => write!(
                f,
                "{ch:?} (U+{:04X}) at position {position} looks like {looks_like:?} but is a different \
                 character (IDs use the digits 0-9 and the Latin letters A-F)",
                u32::from(*ch)
            ),
            Self::WrongLength { digits } => write!(
                f,
                "a device ID has 12 hex digits (14 with check characters), this has {digits}"
            ),
            Self::CheckMismatch => {
                f.write_str("check characters do not match: a digit is mistyped or two are swapped")
            }
            Self::MissingCheck => f.write_str("the check characters are missing"),
            Self::Multicast { first_octet } => write!(
                f,
                "first octet {first_octet:02X} has the multicast bit set; a camera's address never does"
            ),
            Self::AllZeros => f.write_str("00:00:00:00:00:00 is not a device address"),
            Self::Broadcast => f.write_str("FF:FF:FF:FF:FF:FF is the broadcast address"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Hex digits read from an input, before any meaning is given to them.
struct Digits {
    values: [u8; CHECKED_DIGITS],
    count: usize,
}

impl Digits {
    /// Collects hex digits, skipping separators, whitespace and invisible characters
    /// (`spec/id.md` §2.1). Stops with
    /// [`ParseError::WrongLength`] at the first digit past [`CHECKED_DIGITS`], so the
    /// work per input is bounded by [`MAX_INPUT_LEN`].
    fn scan(input: &str) -> Result<Self, ParseError> {
        if input.len() > MAX_INPUT_LEN {
            return Err(ParseError::TooLong {
                len: input.len(),
                limit: MAX_INPUT_LEN,
            });
        }
        let mut digits = Digits {
            values: [0; CHECKED_DIGITS],
            count: 0,
        };
        for (index, ch) in input.chars().enumerate() {
            let position = index + 1;
            let value = match normalize::classify(ch) {
                Class::Digit(value) => value,
                Class::Skip => continue,
                Class::LookAlike(looks_like) => {
                    return Err(ParseError::LookAlike {
                        ch,
                        position,
                        looks_like,
                    });
                }
                Class::Invalid => return Err(ParseError::InvalidCharacter { ch, position }),
            };
            let slot = digits
                .values
                .get_mut(digits.count)
                .ok_or(ParseError::WrongLength {
                    digits: CHECKED_DIGITS + 1,
                })?;
            *slot = value;
            digits.count += 1;
        }
        Ok(digits)
    }

    /// The first `2 * N` digits as `N` bytes.
    fn bytes<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        for (byte, pair) in out.iter_mut().zip(self.values.chunks_exact(2)) {
            *byte = (pair[0] << 4) | pair[1];
        }
        out
    }
}

impl DeviceId {
    /// The ID with these six octets, if it is a valid device ID (see the type docs).
    ///
    /// `const`, so a program can name a fixed ID in a constant:
    /// `const ID: DeviceId = match DeviceId::from_bytes([0x02, 0, 0, 0, 0, 1]) { Ok(id) => id, Err(_) => panic!() };`
    pub const fn from_bytes(octets: [u8; 6]) -> Result<Self, ParseError> {
        let [a, b, c, d, e, f] = octets;
        if a | b | c | d | e | f == 0 {
            Err(ParseError::AllZeros)
        } else if a & b & c & d & e & f == 0xFF {
            Err(ParseError::Broadcast)
        } else if a & 0x01 != 0 {
            Err(ParseError::Multicast { first_octet: a })
        } else {
            Ok(Self(octets))
        }
    }

    /// The six octets, first octet first (as transmitted on Ethernet and on the wire).
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// The six octets by value (the same as [`DeviceId::as_bytes`], for callers that
    /// want an owned array to put on the wire).
    pub const fn to_bytes(&self) -> [u8; 6] {
        self.0
    }

    /// The two check digits for this ID: [`crc8`] over its six octets, upper-case hex.
    pub fn check_digits(&self) -> [char; CHECK_CHARS] {
        let crc = crc8(&self.0);
        [hex_upper(crc >> 4), hex_upper(crc & 0x0F)]
    }

    /// The checked human form: 12 digits in groups of four, then the two check digits,
    /// joined by `-`, for example `1CC3-16AB-CDEF-BC`.
    ///
    /// This is what a label should print next to the QR code: typing it back with any
    /// one digit wrong, or any two neighbouring digits swapped, is always refused.
    pub fn to_checked_string(&self) -> String {
        let mut out = String::with_capacity(CHECKED_DIGITS + 3);
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 && i % 2 == 0 {
                out.push('-');
            }
            out.push(hex_upper(byte >> 4));
            out.push(hex_upper(byte & 0x0F));
        }
        out.push('-');
        out.extend(self.check_digits());
        out
    }

    /// Parses the checked human form only: the ID *with* its check characters, in any of
    /// the spellings [`FromStr`] accepts. An ID without check characters is refused with
    /// [`ParseError::MissingCheck`].
    pub fn parse_checked(input: &str) -> Result<Self, ParseError> {
        let digits = Digits::scan(input)?;
        match digits.count {
            ID_DIGITS => Err(ParseError::MissingCheck),
            _ => Self::from_digits(&digits),
        }
    }

    fn from_digits(digits: &Digits) -> Result<Self, ParseError> {
        match digits.count {
            0 => Err(ParseError::Empty),
            ID_DIGITS => Self::from_bytes(digits.bytes::<6>()),
            CHECKED_DIGITS => {
                let codeword = digits.bytes::<7>();
                // The CRC of ID bytes followed by their CRC is zero.
                if crc8(&codeword) != 0 {
                    return Err(ParseError::CheckMismatch);
                }
                let mut octets = [0u8; 6];
                octets.copy_from_slice(&codeword[..6]);
                Self::from_bytes(octets)
            }
            count => Err(ParseError::WrongLength { digits: count }),
        }
    }
}

fn hex_upper(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0x0F)])
}

impl FromStr for DeviceId {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::from_digits(&Digits::scan(input)?)
    }
}

impl TryFrom<[u8; 6]> for DeviceId {
    type Error = ParseError;

    fn try_from(octets: [u8; 6]) -> Result<Self, Self::Error> {
        Self::from_bytes(octets)
    }
}

impl From<DeviceId> for [u8; 6] {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_to_the_same_id() {
        let expected = DeviceId([0x1C, 0xC3, 0x16, 0xAB, 0xCD, 0xEF]);
        for input in [
            "1C:C3:16:AB:CD:EF",
            "1c-c3-16-ab-cd-ef",
            "1CC3.16AB.CDEF",
            "1cc316abcdef",
            "  1C C3 16 AB CD EF\t",
            "1c:C3-16.aB cd\u{a0}EF",
        ] {
            assert_eq!(input.parse::<DeviceId>(), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn invalid_character_reports_character_and_position() {
        assert_eq!(
            "1C:C3:16:AG:CD:EF".parse::<DeviceId>(),
            Err(ParseError::InvalidCharacter {
                ch: 'G',
                position: 11
            })
        );
        // Positions count characters, not bytes.
        assert_eq!(
            "é1C".parse::<DeviceId>(),
            Err(ParseError::InvalidCharacter {
                ch: 'é',
                position: 1
            })
        );
    }

    #[test]
    fn what_phones_type_parses_to_the_same_id() {
        let expected = DeviceId([0x1C, 0xC3, 0x16, 0xAB, 0xCD, 0xEF]);
        for input in [
            // CJK input methods: full-width digits, letters, colon, hyphen, full stop,
            // ideographic space.
            "１Ｃ：Ｃ３：１６：ＡＢ：ＣＤ：ＥＦ",
            "１ｃｃ３－１６ａｂ－ｃｄｅｆ",
            "１ＣＣ３．１６ＡＢ．ＣＤＥＦ",
            "\u{3000}１Ｃ\u{3000}Ｃ３\u{3000}１６ ＡＢ ＣＤ ＥＦ\u{3000}",
            // Japanese input: prolonged sound mark for `-`, ideographic full stop for `.`.
            "１ＣＣ３ー１６ＡＢーＣＤＥＦ",
            "1CC3。16AB。CDEF",
            // Smart punctuation: en dash, em dash, non-breaking hyphen, minus sign.
            "1C–C3—16\u{2011}AB\u{2212}CD\u{2010}EF",
            // Pasted from a page or chat: BOM, zero-width space, soft hyphen, word
            // joiner, bidi marks and isolates, NBSP and narrow NBSP.
            "\u{FEFF}1C:C3\u{200B}:16:AB\u{00AD}:CD\u{2060}:EF",
            "\u{200E}\u{2066}1C:C3:16:AB:CD:EF\u{2069}\u{200F}",
            "\u{00A0}1C\u{202F}C3\u{200C}16\u{200D}AB CD EF\u{00A0}",
            // Full-width mixed with ASCII, in any case.
            "1c：Ｃ3-16.ａB cd\u{3000}ef",
        ] {
            assert_eq!(input.parse::<DeviceId>(), Ok(expected), "{input:?}");
        }
        let checked = "１ＣＣ３－１６ＡＢ－ＣＤＥＦ－ＢＣ\u{200B}";
        assert_eq!(DeviceId::parse_checked(checked), Ok(expected));
    }

    #[test]
    fn look_alikes_are_refused_with_what_they_resemble() {
        // Cyrillic Es at position 2.
        assert_eq!(
            "1\u{0421}:C3:16:AB:CD:EF".parse::<DeviceId>(),
            Err(ParseError::LookAlike {
                ch: '\u{0421}',
                position: 2,
                looks_like: 'C'
            })
        );
        // Positions count the invisible characters before it.
        assert_eq!(
            "\u{200B}\u{FEFF}1C:C3:16:\u{0391}B:CD:EF".parse::<DeviceId>(),
            Err(ParseError::LookAlike {
                ch: '\u{0391}',
                position: 12,
                looks_like: 'A'
            })
        );
        // The letter O for the digit 0, in ASCII and in full width.
        assert_eq!(
            "O2:00:00:00:00:01".parse::<DeviceId>(),
            Err(ParseError::LookAlike {
                ch: 'O',
                position: 1,
                looks_like: '0'
            })
        );
        assert_eq!(
            "０２：Ｏ０".parse::<DeviceId>(),
            Err(ParseError::LookAlike {
                ch: 'Ｏ',
                position: 4,
                looks_like: '0'
            })
        );
        // Mathematical bold capital A: NFKC would make it `A`, but no keyboard types it.
        assert_eq!(
            "1C:C3:16:\u{1D400}B:CD:EF".parse::<DeviceId>(),
            Err(ParseError::LookAlike {
                ch: '\u{1D400}',
                position: 10,
                looks_like: 'A'
            })
        );
    }

    #[test]
    fn right_to_left_override_and_visible_format_characters_are_refused() {
        // Displayed as "FE:DC:BA:61:3C:C1", read as 1C:C3:16:AB:CD:EF: refused.
        assert_eq!(
            "\u{202E}1C:C3:16:AB:CD:EF".parse::<DeviceId>(),
            Err(ParseError::InvalidCharacter {
                ch: '\u{202E}',
                position: 1
            })
        );
        // Arabic number sign: a format character that is drawn.
        assert_eq!(
            "1C:C3:16:AB:CD:EF\u{0600}".parse::<DeviceId>(),
            Err(ParseError::InvalidCharacter {
                ch: '\u{0600}',
                position: 18
            })
        );
        // Middle dots are not separators.
        assert_eq!(
            "1CC3\u{00B7}16AB\u{00B7}CDEF".parse::<DeviceId>(),
            Err(ParseError::InvalidCharacter {
                ch: '\u{00B7}',
                position: 5
            })
        );
    }

    #[test]
    fn error_messages_name_the_code_point() {
        let error = "1C:C3:16:AB:CD:E\u{0415}".parse::<DeviceId>().unwrap_err();
        let message = error.to_string();
        assert!(message.contains("U+0415") && message.contains("position 17"));
        assert!(message.contains("'E'"), "{message}");
        let error = "\u{202E}1C".parse::<DeviceId>().unwrap_err();
        assert!(error.to_string().contains("U+202E"));
    }

    #[test]
    fn input_length_limit_is_enforced_before_scanning() {
        let at_limit = format!("{}1cc316abcdef", " ".repeat(MAX_INPUT_LEN - 12));
        assert!(at_limit.parse::<DeviceId>().is_ok());
        let over = format!(" {at_limit}");
        assert_eq!(
            over.parse::<DeviceId>(),
            Err(ParseError::TooLong {
                len: MAX_INPUT_LEN + 1,
                limit: MAX_INPUT_LEN
            })
        );
        // The limit counts bytes, not characters: a full-width ID padded with
        // ideographic spaces (3 bytes each) to exactly the limit is read...
        let wide = "１ＣＣ３１６ＡＢＣＤＥＦ";
        let pad = (MAX_INPUT_LEN - wide.len()) / 3;
        let at_limit = format!(
            "{wide}{}{}",
            "\u{3000}".repeat(pad),
            " ".repeat((MAX_INPUT_LEN - wide.len()) % 3)
        );
        assert_eq!(at_limit.len(), MAX_INPUT_LEN);
        assert!(at_limit.parse::<DeviceId>().is_ok());
        // ...and one invisible character more is refused before anything is read.
        let over = format!("\u{200B}{at_limit}");
        assert_eq!(
            over.parse::<DeviceId>(),
            Err(ParseError::TooLong {
                len: MAX_INPUT_LEN + 3,
                limit: MAX_INPUT_LEN
            })
        );
        // A huge paste is refused by its length alone.
        let huge = "\u{200B}".repeat(1 << 20);
        assert_eq!(
            huge.parse::<DeviceId>(),
            Err(ParseError::TooLong {
                len: 3 << 20,
                limit: MAX_INPUT_LEN
            })
        );
    }

    #[test]
    fn digit_count_errors() {
        assert_eq!("".parse::<DeviceId>(), Err(ParseError::Empty));
        assert_eq!(" : - ".parse::<DeviceId>(), Err(ParseError::Empty));
        assert_eq!(
            "1C:C3:16:AB:CD".parse::<DeviceId>(),
            Err(ParseError::WrongLength { digits: 10 })
        );
        assert_eq!(
            "1C:C3:16:AB:CD:EF:0".parse::<DeviceId>(),
            Err(ParseError::WrongLength { digits: 13 })
        );
        assert_eq!(
            "1C:C3:16:AB:CD:EF:01:23".parse::<DeviceId>(),
            Err(ParseError::WrongLength { digits: 15 })
        );
    }

    #[test]
    fn reserved_addresses_are_refused() {
        assert_eq!(
            "00:00:00:00:00:00".parse::<DeviceId>(),
            Err(ParseError::AllZeros)
        );
        assert_eq!(
            "ff:ff:ff:ff:ff:ff".parse::<DeviceId>(),
            Err(ParseError::Broadcast)
        );
        assert_eq!(
            "01:00:5E:00:00:FB".parse::<DeviceId>(),
            Err(ParseError::Multicast { first_octet: 0x01 })
        );
        // Locally administered unicast is fine.
        assert!("02:00:00:00:00:01".parse::<DeviceId>().is_ok());
    }

    #[test]
    fn checked_form_is_grouped_and_verified() {
        let id: DeviceId = "1C:C3:16:AB:CD:EF".parse().unwrap();
        let checked = id.to_checked_string();
        assert_eq!(checked.len(), 17);
        assert!(checked.starts_with("1CC3-16AB-CDEF-"));
        assert_eq!(DeviceId::parse_checked(&checked), Ok(id));
        assert_eq!(checked.to_lowercase().parse::<DeviceId>(), Ok(id));
        assert_eq!(
            DeviceId::parse_checked("1CC316ABCDEF"),
            Err(ParseError::MissingCheck)
        );
    }
}
