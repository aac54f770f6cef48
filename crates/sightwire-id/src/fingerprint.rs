//! [`KeyFingerprint`]: a short, collision-resistant name for a device's static key.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::PublicKey;

/// Length of a key fingerprint in bytes (128 bits; written as 32 hex digits).
pub const FINGERPRINT_LEN: usize = 16;

/// Domain separation, so a fingerprint can never be confused with another SHA-256 use.
const DOMAIN: &[u8] = b"sightwire key fingerprint v1";

/// The fingerprint of a device's static X25519 public key:
/// the first [`FINGERPRINT_LEN`] bytes of `SHA-256("sightwire key fingerprint v1" || key)`.
///
/// A viewer that got the fingerprint from a label's QR code checks the key it later
/// learns from the device's ID certificate against it, so neither a forged certificate
/// nor a malicious rendezvous can substitute another key. 128 bits leave an attacker a
/// second-preimage search of about 2¹²⁸ hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint([u8; FINGERPRINT_LEN]);

/// Why a string is not a key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FingerprintError {
    /// A fingerprint is exactly 32 hex digits.
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

impl fmt::Display for FingerprintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength { len } => write!(
                f,
                "a key fingerprint has {} hex digits, this is {len} bytes long",
                FINGERPRINT_LEN * 2
            ),
            Self::InvalidCharacter { ch, position } => {
                write!(f, "{ch:?} at position {position} is not a hex digit")
            }
        }
    }
}

impl std::error::Error for FingerprintError {}

impl KeyFingerprint {
    /// The fingerprint of a static public key.
    pub fn of_public_key(public_key: &PublicKey) -> Self {
        let digest = Sha256::new()
            .chain_update(DOMAIN)
            .chain_update(public_key.as_bytes())
            .finalize();
        let mut out = [0u8; FINGERPRINT_LEN];
        out.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        Self(out)
    }

    /// Whether `public_key` is the key this fingerprint names.
    pub fn matches(&self, public_key: &PublicKey) -> bool {
        *self == Self::of_public_key(public_key)
    }

    /// A fingerprint from its raw bytes (for example, read from storage).
    pub const fn from_bytes(bytes: [u8; FINGERPRINT_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; FINGERPRINT_LEN] {
        &self.0
    }
}

impl FromStr for KeyFingerprint {
    type Err = FingerprintError;

    /// Parses 32 hex digits, any case, without separators.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        // Reject by byte length first so nothing long is ever scanned.
        if input.len() != FINGERPRINT_LEN * 2 {
            return Err(FingerprintError::WrongLength { len: input.len() });
        }
        let mut out = [0u8; FINGERPRINT_LEN];
        let mut chars = input.chars().enumerate();
        for byte in out.iter_mut() {
            for _ in 0..2 {
                // 32 bytes hold 32 characters unless some are multi-byte; those are
                // refused as non-hex before the characters can run out.
                let (index, ch) = chars
                    .next()
                    .ok_or(FingerprintError::WrongLength { len: input.len() })?;
                let value = ch.to_digit(16).ok_or(FingerprintError::InvalidCharacter {
                    ch,
                    position: index + 1,
                })?;
                *byte = (*byte << 4) | value as u8;
            }
        }
        Ok(Self(out))
    }
}

impl fmt::Display for KeyFingerprint {
    /// 32 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip_and_case() {
        let fp = KeyFingerprint::of_public_key(&PublicKey::from_bytes([9u8; 32]));
        let text = fp.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<KeyFingerprint>(), Ok(fp));
        assert_eq!(text.to_uppercase().parse::<KeyFingerprint>(), Ok(fp));
        assert!(fp.matches(&PublicKey::from_bytes([9u8; 32])));
        assert!(!fp.matches(&PublicKey::from_bytes([8u8; 32])));
    }

    #[test]
    fn malformed_fingerprints_are_refused() {
        assert_eq!(
            "abc".parse::<KeyFingerprint>(),
            Err(FingerprintError::WrongLength { len: 3 })
        );
        let mut bad = "0".repeat(32);
        bad.replace_range(5..6, "x");
        assert_eq!(
            bad.parse::<KeyFingerprint>(),
            Err(FingerprintError::InvalidCharacter {
                ch: 'x',
                position: 6
            })
        );
        // 32 bytes but fewer characters.
        let multibyte = format!("{}é", "0".repeat(30));
        assert!(matches!(
            multibyte.parse::<KeyFingerprint>(),
            Err(FingerprintError::InvalidCharacter { ch: 'é', .. })
        ));
    }
}
