//! Relay grants: the rendezvous mints them, the relay checks them without any database.
//!
//! A grant token is 128 bytes: 96 bytes of claims and an HMAC-SHA256 tag under a key
//! that only the rendezvous and the relay know (spec/signaling.md, "Relay grants").

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a grant token, in bytes.
pub const GRANT_TOKEN_LEN: usize = 128;
/// The only grant format version this crate reads and writes.
pub const GRANT_VERSION: u8 = 1;
/// Domain-separation prefix of the MAC input.
pub const GRANT_MAC_CONTEXT: &[u8] = b"sightwire relay grant v1";
/// Length of an allocation identifier.
pub const ALLOCATION_ID_LEN: usize = 16;

const CLAIMS_LEN: usize = 96;

/// Which side of the call a grant is for; the relay binds at most one endpoint per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantRole {
    /// The camera.
    Device = 1,
    /// The viewer.
    Viewer = 2,
}

/// What a grant says: who may use which allocation until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantClaims {
    /// Random identifier of the allocation (the same in both peers' grants).
    pub allocation_id: [u8; ALLOCATION_ID_LEN],
    /// The side this grant is for.
    pub role: GrantRole,
    /// Expiry, Unix seconds; the relay refuses the grant after it.
    pub expires_at: u64,
    /// The device's ID.
    pub device_id: [u8; 6],
    /// The device's static key.
    pub device_key: [u8; 32],
    /// The viewer's static key.
    pub viewer_key: [u8; 32],
}

/// What can be wrong with a grant token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The token is not exactly [`GRANT_TOKEN_LEN`] bytes.
    #[error("grant token is {len} bytes, expected {GRANT_TOKEN_LEN}")]
    WrongLength {
        /// Length of the input.
        len: usize,
    },
    /// The MAC does not verify (forged, altered, or minted under another key).
    #[error("grant token MAC does not verify")]
    BadMac,
    /// The version byte is not [`GRANT_VERSION`].
    #[error("grant version {version} is not supported")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The role byte is neither 1 nor 2.
    #[error("grant role {role} is not defined")]
    InvalidRole {
        /// The role byte found.
        role: u8,
    },
    /// The grant has expired.
    #[error("grant expired at {expires_at} (now {now})")]
    Expired {
        /// Expiry, Unix seconds.
        expires_at: u64,
        /// The time it was checked at.
        now: u64,
    },
}

/// An encoded grant token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RelayGrantToken(pub [u8; GRANT_TOKEN_LEN]);

impl fmt::Debug for RelayGrantToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayGrantToken(..)")
    }
}

impl RelayGrantToken {
    /// Reads a token from bytes of the right length (does not verify it).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, GrantError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| GrantError::WrongLength { len: bytes.len() })
    }
}

/// The 32-byte secret shared by the rendezvous (which mints grants) and the relay (which
/// verifies them).
#[derive(Clone)]
pub struct RelayGrantKey([u8; 32]);

impl fmt::Debug for RelayGrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayGrantKey(redacted)")
    }
}

impl RelayGrantKey {
    /// Wraps a 32-byte secret (draw it from a cryptographic RNG).
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    fn mac(&self, claims: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(GRANT_MAC_CONTEXT);
        mac.update(claims);
        mac
    }

    /// Mints a token for `claims`.
    pub fn seal(&self, claims: &GrantClaims) -> RelayGrantToken {
        let mut token = [0u8; GRANT_TOKEN_LEN];
        token[0] = GRANT_VERSION;
        token[1..17].copy_from_slice(&claims.allocation_id);
        token[17] = claims.role as u8;
        token[18..26].copy_from_slice(&claims.expires_at.to_be_bytes());
        token[26..32].copy_from_slice(&claims.device_id);
        token[32..64].copy_from_slice(&claims.device_key);
        token[64..96].copy_from_slice(&claims.viewer_key);
        let tag = self.mac(&token[..CLAIMS_LEN]).finalize().into_bytes();
        token[CLAIMS_LEN..].copy_from_slice(&tag);
        RelayGrantToken(token)
    }

    /// Checks the MAC (in constant time) first, then the fields and the expiry at
    /// `now_unix`, and returns the claims.
    pub fn verify(
        &self,
        token: &RelayGrantToken,
        now_unix: u64,
    ) -> Result<GrantClaims, GrantError> {
        let bytes = &token.0;
        self.mac(&bytes[..CLAIMS_LEN])
            .verify_slice(&bytes[CLAIMS_LEN..])
            .map_err(|_| GrantError::BadMac)?;
        if bytes[0] != GRANT_VERSION {
            return Err(GrantError::UnsupportedVersion { version: bytes[0] });
        }
        let role = match bytes[17] {
            1 => GrantRole::Device,
            2 => GrantRole::Viewer,
            role => return Err(GrantError::InvalidRole { role }),
        };
        let mut claims = GrantClaims {
            allocation_id: [0; ALLOCATION_ID_LEN],
            role,
            expires_at: 0,
            device_id: [0; 6],
            device_key: [0; 32],
            viewer_key: [0; 32],
        };
        claims.allocation_id.copy_from_slice(&bytes[1..17]);
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&bytes[18..26]);
        claims.expires_at = u64::from_be_bytes(expires);
        claims.device_id.copy_from_slice(&bytes[26..32]);
        claims.device_key.copy_from_slice(&bytes[32..64]);
        claims.viewer_key.copy_from_slice(&bytes[64..96]);
        if now_unix > claims.expires_at {
            return Err(GrantError::Expired {
                expires_at: claims.expires_at,
                now: now_unix,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> GrantClaims {
        GrantClaims {
            allocation_id: [3; 16],
            role: GrantRole::Viewer,
            expires_at: 1_000,
            device_id: [0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef],
            device_key: [4; 32],
            viewer_key: [5; 32],
        }
    }

    #[test]
    fn sealed_grant_verifies_until_expiry() {
        let key = RelayGrantKey::from_bytes([7; 32]);
        let token = key.seal(&claims());
        assert_eq!(key.verify(&token, 1_000), Ok(claims()));
        assert_eq!(
            key.verify(&token, 1_001),
            Err(GrantError::Expired {
                expires_at: 1_000,
                now: 1_001
            })
        );
    }

    #[test]
    fn any_change_or_other_key_is_rejected() {
        let key = RelayGrantKey::from_bytes([7; 32]);
        let token = key.seal(&claims());
        for byte in 0..GRANT_TOKEN_LEN {
            let mut tampered = token;
            tampered.0[byte] ^= 0x80;
            assert_eq!(
                key.verify(&tampered, 0),
                Err(GrantError::BadMac),
                "byte {byte}"
            );
        }
        let other = RelayGrantKey::from_bytes([8; 32]);
        assert_eq!(other.verify(&token, 0), Err(GrantError::BadMac));
        assert_eq!(
            RelayGrantToken::from_slice(&[0; 127]),
            Err(GrantError::WrongLength { len: 127 })
        );
    }
}
