//! [`PublicKey`]: the static X25519 public key that names a device, viewer or server.

use std::fmt;
use std::str::FromStr;

/// Length of a static public key in bytes (X25519).
pub const PUBLIC_KEY_LEN: usize = 32;

/// How many leading bytes [`PublicKey`]'s `Debug` shows: enough to tell keys apart in a
/// log, short enough that a log line stays readable.
const DEBUG_PREFIX_LEN: usize = 4;

/// A static X25519 public key: the identity of a device, a viewer or a rendezvous server.
///
/// It is only a name: nothing here checks that the bytes are a point on the curve (X25519
/// accepts any 32 bytes). On the wire it is the 32 raw bytes; in text (`Display`,
/// `FromStr`) it is 64 hex digits; `Debug` shows only the first 8 hex digits, since 32
/// bytes of noise in every log line helps nobody.
///
/// ```
/// use sightwire_id::PublicKey;
///
/// let key = PublicKey::from_bytes([0xab; 32]);
/// assert_eq!(format!("{key:?}"), "PublicKey(abababab…)");
/// let text = key.to_string();
/// assert_eq!(text.len(), 64);
/// assert_eq!(text.parse::<PublicKey>()?, key);
/// assert_eq!(key.as_bytes(), &[0xab; 32]);
/// # Ok::<(), sightwire_id::KeyParseError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
// Fixed by the wire: a public key is 32 bytes and will stay so.
#[allow(clippy::exhaustive_structs)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// A key from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// The raw bytes, by value.
    pub const fn to_bytes(self) -> [u8; PUBLIC_KEY_LEN] {
        self.0
    }
}

impl From<[u8; PUBLIC_KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }
}

impl From<PublicKey> for [u8; PUBLIC_KEY_LEN] {
    fn from(key: PublicKey) -> Self {
        key.0
    }
}

impl AsRef<[u8]> for PublicKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    /// 64 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for PublicKey {
    /// `PublicKey(` the first 8 hex digits of `Display` `…)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublicKey(")?;
        self.0[..DEBUG_PREFIX_LEN]
            .iter()
            .try_for_each(|byte| write!(f, "{byte:02x}"))?;
        f.write_str("…)")
    }
}

/// Why a string is not a [`PublicKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyParseError {
    /// A public key is exactly 64 hex digits.
    WrongLength {
        /// Length of the input in bytes.
        len: usize,
    },
    /// A character that is not a hex digit.
    InvalidCharacter {
        /// The offending character.
        ch: char,
        /// Its position among the input's characters, counting from 1.
        position: usize,
    },
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength { len } => write!(
                f,
                "a public key has {} hex digits, this is {len} bytes long",
                PUBLIC_KEY_LEN * 2
            ),
            Self::InvalidCharacter { ch, position } => {
                write!(f, "{ch:?} at position {position} is not a hex digit")
            }
        }
    }
}

impl std::error::Error for KeyParseError {}

impl FromStr for PublicKey {
    type Err = KeyParseError;

    /// Parses 64 hex digits, any case, without separators.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        // Reject by byte length first so nothing long is ever scanned.
        if input.len() != PUBLIC_KEY_LEN * 2 {
            return Err(KeyParseError::WrongLength { len: input.len() });
        }
        let mut out = [0u8; PUBLIC_KEY_LEN];
        let mut chars = input.chars().enumerate();
        for byte in out.iter_mut() {
            for _ in 0..2 {
                // 64 bytes hold 64 characters unless some are multi-byte; those are
                // refused as non-hex before the characters can run out.
                let (index, ch) = chars
                    .next()
                    .ok_or(KeyParseError::WrongLength { len: input.len() })?;
                let value = ch.to_digit(16).ok_or(KeyParseError::InvalidCharacter {
                    ch,
                    position: index + 1,
                })?;
                *byte = (*byte << 4) | value as u8;
            }
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; PUBLIC_KEY_LEN]>()) {
            let key = PublicKey::from(bytes);
            let text = key.to_string();
            prop_assert_eq!(text.len(), 64);
            prop_assert_eq!(&text, &hex::encode(bytes));
            prop_assert_eq!(text.parse::<PublicKey>(), Ok(key));
            prop_assert_eq!(text.to_uppercase().parse::<PublicKey>(), Ok(key));
            prop_assert_eq!(key.to_bytes(), bytes);
            prop_assert_eq!(<[u8; 32]>::from(key), bytes);
            prop_assert_eq!(key.as_ref(), &bytes[..]);
            // Debug is the first 8 hex digits, never the whole key.
            let debug = format!("{key:?}");
            prop_assert_eq!(debug, format!("PublicKey({}…)", &text[..8]));
        }

        #[test]
        fn order_is_the_byte_order(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            prop_assert_eq!(PublicKey::from(a).cmp(&PublicKey::from(b)), a.cmp(&b));
        }

        #[test]
        fn any_string_parses_or_errs(input in ".{0,80}") {
            // No panic on any input; whatever parses prints back the same (lower case).
            if let Ok(key) = input.parse::<PublicKey>() {
                prop_assert_eq!(key.to_string(), input.to_lowercase());
            }
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(
            "abc".parse::<PublicKey>(),
            Err(KeyParseError::WrongLength { len: 3 })
        );
        assert_eq!(
            "0".repeat(66).parse::<PublicKey>(),
            Err(KeyParseError::WrongLength { len: 66 })
        );
        let mut bad = "0".repeat(64);
        bad.replace_range(9..10, "g");
        assert_eq!(
            bad.parse::<PublicKey>(),
            Err(KeyParseError::InvalidCharacter {
                ch: 'g',
                position: 10
            })
        );
        // 64 bytes but fewer characters.
        let multibyte = format!("{}é", "0".repeat(62));
        assert!(matches!(
            multibyte.parse::<PublicKey>(),
            Err(KeyParseError::InvalidCharacter { ch: 'é', .. })
        ));
        assert!(
            KeyParseError::WrongLength { len: 3 }
                .to_string()
                .contains("64 hex digits")
        );
    }
}
