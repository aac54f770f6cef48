//! [`DeviceId`]: parsing what people type, the canonical display and the checked form.

use std::fmt;
use std::str::FromStr;

use crate::check::{CHECK_CHARS, crc8};

/// Longest input, in bytes, that the parsers look at. Anything longer is refused before
/// it is scanned: the longest sensible spelling of an ID with check characters, spaces
/// and separators is well under this.
pub const MAX_INPUT_LEN: usize = 64;

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
/// The canonical display ([`fmt::Display`]) is six upper-case hex pairs separated by
/// colons: `1C:C3:16:AB:CD:EF`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 6]);

/// Why a string is not a device ID.
///
/// Positions count characters (not bytes) from 1, as a person counts them on screen.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A character that is neither a hex digit, a separator (`:` `-` `.`) nor whitespace.
    InvalidCharacter {
        /// The offending character.
        ch: char,
        /// Its position among the input's characters, counting from 1.
        position: usize,
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
                "{ch:?} at position {position} is not a hex digit (0-9, A-F) or separator"
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
    /// Collects hex digits, skipping separators and whitespace. Stops with
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
            if ch.is_whitespace() || matches!(ch, ':' | '-' | '.') {
                continue;
            }
            let value = ch.to_digit(16).ok_or(ParseError::InvalidCharacter {
                ch,
                position: index + 1,
            })?;
            let slot = digits
                .values
                .get_mut(digits.count)
                .ok_or(ParseError::WrongLength {
                    digits: CHECKED_DIGITS + 1,
                })?;
            // `to_digit(16)` returns at most 15.
            *slot = value as u8;
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
    pub fn from_bytes(octets: [u8; 6]) -> Result<Self, ParseError> {
        if octets == [0; 6] {
            Err(ParseError::AllZeros)
        } else if octets == [0xFF; 6] {
            Err(ParseError::Broadcast)
        } else if octets[0] & 0x01 != 0 {
            Err(ParseError::Multicast {
                first_octet: octets[0],
            })
        } else {
            Ok(Self(octets))
        }
    }

    /// The six octets, first octet first (as transmitted on Ethernet and on the wire).
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
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
