//! Relay grants: the rendezvous mints them, the relay checks them without any database.
//!
//! A grant token is 128 bytes, opaque to everyone but the rendezvous and the relay: the
//! claims are sealed with ChaCha20-Poly1305 under a key derived from the grant key that
//! only those two know, with a random nonce carried in the token (spec/signaling.md,
//! "Relay grants"). An observer of a BIND learns neither the camera nor the viewer, only
//! the random relay channel (which every DATA packet shows anyway).

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sightwire_id::{DeviceId, PublicKey};

/// Length of a grant token, in bytes.
pub const GRANT_TOKEN_LEN: usize = 128;
/// The only grant format version this crate reads and writes (version 1 carried the
/// claims in clear and is refused).
pub const GRANT_VERSION: u8 = 2;
/// Domain-separation label: HKDF-Expand info for the sealing key and the start of the
/// associated data.
pub const GRANT_KEY_CONTEXT: &[u8] = b"sightwire relay grant v2";
/// Length of an allocation identifier.
pub const ALLOCATION_ID_LEN: usize = 16;
/// Length of the random nonce in a token.
pub const GRANT_NONCE_LEN: usize = 12;

/// Length of the channel number carried in clear (the first 8 bytes of the allocation id).
pub const GRANT_CHANNEL_LEN: usize = 8;

/// Length of the sealed claims (and of their ciphertext).
const CLAIMS_LEN: usize = 91;
const CHANNEL_AT: usize = 1;
const NONCE_AT: usize = CHANNEL_AT + GRANT_CHANNEL_LEN;
const CIPHERTEXT_AT: usize = NONCE_AT + GRANT_NONCE_LEN;
/// Length of the associated data: context, version and channel.
const AAD_LEN: usize = GRANT_KEY_CONTEXT.len() + 1 + GRANT_CHANNEL_LEN;
const TAG_AT: usize = CIPHERTEXT_AT + CLAIMS_LEN;
const _: () = assert!(TAG_AT + 16 == GRANT_TOKEN_LEN);

/// Which side of the call a grant is for; the relay binds at most one endpoint per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum GrantRole {
    /// The camera.
    Device = 1,
    /// The viewer.
    Viewer = 2,
}

/// What a grant says: who may use which allocation until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct GrantClaims {
    /// Random identifier of the allocation (the same in both peers' grants).
    pub allocation_id: [u8; ALLOCATION_ID_LEN],
    /// The side this grant is for.
    pub role: GrantRole,
    /// Expiry, Unix seconds; the relay refuses the grant after it.
    pub expires_at: u64,
    /// The device's ID.
    pub device_id: DeviceId,
    /// The device's static key.
    pub device_key: PublicKey,
    /// The viewer's static key.
    pub viewer_key: PublicKey,
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
    /// The version byte is not [`GRANT_VERSION`] (checked first: it selects the format).
    #[error("grant version {version} is not supported")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The authentication tag does not verify (forged, altered, or minted under another
    /// key); nothing in the token was read.
    #[error("grant token does not authenticate")]
    BadMac,
    /// The role byte is neither 1 nor 2.
    #[error("grant role {role} is not defined")]
    InvalidRole {
        /// The role byte found.
        role: u8,
    },
    /// The device ID octets are not a device ID (all zeros, broadcast, multicast:
    /// `spec/id.md` §1). Only a relay key holder could mint such a token.
    #[error("grant names no device ID")]
    InvalidDeviceId {
        /// Which rule the octets break.
        #[source]
        source: sightwire_id::ParseError,
    },
    /// The reserved bytes of the claims are not zero.
    #[error("grant reserved bytes are not zero")]
    ReservedNotZero,
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
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct RelayGrantToken(pub [u8; GRANT_TOKEN_LEN]);

impl fmt::Debug for RelayGrantToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayGrantToken(..)")
    }
}

impl RelayGrantToken {
    /// The relay channel number the token binds to (the first 8 bytes of the allocation
    /// id, big-endian), readable without the key: an endpoint needs it to match the
    /// relay's BOUND and DATA to its connection. Not verified; the channel is random and
    /// appears in clear in every DATA packet anyway.
    pub fn channel(&self) -> u64 {
        let mut channel = [0u8; GRANT_CHANNEL_LEN];
        channel.copy_from_slice(&self.0[CHANNEL_AT..NONCE_AT]);
        u64::from_be_bytes(channel)
    }

    /// Reads a token from bytes of the right length (does not verify it).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, GrantError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| GrantError::WrongLength { len: bytes.len() })
    }
}

/// The 32-byte secret shared by the rendezvous (which mints grants) and the relay (which
/// verifies them). Grants are sealed under a key derived from it, never under the secret
/// itself.
#[derive(Clone)]
pub struct RelayGrantKey {
    secret: [u8; 32],
    /// HKDF-Expand(secret, [`GRANT_KEY_CONTEXT`], 32): the ChaCha20-Poly1305 key.
    sealing: [u8; 32],
}

impl fmt::Debug for RelayGrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayGrantKey(redacted)")
    }
}

impl RelayGrantKey {
    /// Wraps a 32-byte secret (draw it from a cryptographic RNG).
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        Self {
            secret,
            sealing: expand(&secret, GRANT_KEY_CONTEXT),
        }
    }

    /// A 32-byte key for another purpose, independent of the grant sealing key:
    /// HKDF-Expand(secret, `context`, 32). `context` MUST differ from
    /// [`GRANT_KEY_CONTEXT`] (the relay derives its challenge-cookie key this way).
    pub fn derive_key(&self, context: &[u8]) -> [u8; 32] {
        expand(&self.secret, context)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.sealing.into())
    }

    /// Associated data: the context label, then the token's clear header (version and
    /// channel).
    fn aad(header: &[u8]) -> [u8; AAD_LEN] {
        let mut aad = [0u8; AAD_LEN];
        aad[..GRANT_KEY_CONTEXT.len()].copy_from_slice(GRANT_KEY_CONTEXT);
        aad[GRANT_KEY_CONTEXT.len()..].copy_from_slice(header);
        aad
    }

    /// Mints a token for `claims`. `nonce` MUST be fresh random bytes from a
    /// cryptographic RNG for every token (a repeated nonce under one key reveals the XOR
    /// of two grants' claims); 96 random bits allow about 2³² grants per key before a
    /// repeat becomes plausible (p ≈ 2⁻³³).
    pub fn seal(&self, claims: &GrantClaims, nonce: [u8; GRANT_NONCE_LEN]) -> RelayGrantToken {
        let mut token = [0u8; GRANT_TOKEN_LEN];
        token[0] = GRANT_VERSION;
        token[CHANNEL_AT..NONCE_AT].copy_from_slice(&claims.allocation_id[..GRANT_CHANNEL_LEN]);
        token[NONCE_AT..CIPHERTEXT_AT].copy_from_slice(&nonce);
        let aad = Self::aad(&token[..NONCE_AT]);
        let plain = &mut token[CIPHERTEXT_AT..TAG_AT];
        plain[0..8].copy_from_slice(&claims.allocation_id[GRANT_CHANNEL_LEN..]);
        plain[8] = claims.role as u8;
        plain[9..17].copy_from_slice(&claims.expires_at.to_be_bytes());
        plain[17..23].copy_from_slice(claims.device_id.as_bytes());
        plain[23..55].copy_from_slice(claims.device_key.as_bytes());
        plain[55..87].copy_from_slice(claims.viewer_key.as_bytes());
        // plain[87..91]: reserved, zero.
        let tag = self
            .cipher()
            .encrypt_in_place_detached(&Nonce::from(nonce), &aad, plain)
            .unwrap_or_else(|_| unreachable!("91 bytes are far below the AEAD limit"));
        token[TAG_AT..].copy_from_slice(&tag);
        RelayGrantToken(token)
    }

    /// Checks the version, then opens the token (tag checked in constant time before any
    /// claim is read), then the fields and the expiry at `now_unix`, and returns the
    /// claims.
    pub fn verify(
        &self,
        token: &RelayGrantToken,
        now_unix: u64,
    ) -> Result<GrantClaims, GrantError> {
        let bytes = &token.0;
        if bytes[0] != GRANT_VERSION {
            return Err(GrantError::UnsupportedVersion { version: bytes[0] });
        }
        let mut nonce = [0u8; GRANT_NONCE_LEN];
        nonce.copy_from_slice(&bytes[NONCE_AT..CIPHERTEXT_AT]);
        let mut plain = [0u8; CLAIMS_LEN];
        plain.copy_from_slice(&bytes[CIPHERTEXT_AT..TAG_AT]);
        let tag = Tag::clone_from_slice(&bytes[TAG_AT..]);
        self.cipher()
            .decrypt_in_place_detached(
                &Nonce::from(nonce),
                &Self::aad(&bytes[..NONCE_AT]),
                &mut plain,
                &tag,
            )
            .map_err(|_| GrantError::BadMac)?;
        let role = match plain[8] {
            1 => GrantRole::Device,
            2 => GrantRole::Viewer,
            role => return Err(GrantError::InvalidRole { role }),
        };
        if plain[87..] != [0; 4] {
            return Err(GrantError::ReservedNotZero);
        }
        let mut device_id = [0u8; 6];
        device_id.copy_from_slice(&plain[17..23]);
        let device_id = DeviceId::from_bytes(device_id)
            .map_err(|source| GrantError::InvalidDeviceId { source })?;
        let mut claims = GrantClaims {
            allocation_id: [0; ALLOCATION_ID_LEN],
            role,
            expires_at: 0,
            device_id,
            device_key: PublicKey::from_bytes([0; 32]),
            viewer_key: PublicKey::from_bytes([0; 32]),
        };
        claims.allocation_id[..GRANT_CHANNEL_LEN].copy_from_slice(&bytes[CHANNEL_AT..NONCE_AT]);
        claims.allocation_id[GRANT_CHANNEL_LEN..].copy_from_slice(&plain[0..8]);
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&plain[9..17]);
        claims.expires_at = u64::from_be_bytes(expires);
        claims.device_key = PublicKey::from_bytes(key_at(&plain[23..55]));
        claims.viewer_key = PublicKey::from_bytes(key_at(&plain[55..87]));
        if now_unix > claims.expires_at {
            return Err(GrantError::Expired {
                expires_at: claims.expires_at,
                now: now_unix,
            });
        }
        Ok(claims)
    }
}

/// HKDF-Expand with a single output block (RFC 5869 2.3): T(1) = HMAC(PRK, info || 0x01).
/// The 32 bytes of a key field; `field` is always a 32-byte range of a fixed-size buffer.
fn key_at(field: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(field);
    key
}

fn expand(prk: &[u8; 32], info: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(prk)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(info);
    mac.update(&[1]);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> GrantClaims {
        GrantClaims {
            allocation_id: [3; 16],
            role: GrantRole::Viewer,
            expires_at: 1_000,
            device_id: DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef]).unwrap(),
            device_key: PublicKey::from_bytes([4; 32]),
            viewer_key: PublicKey::from_bytes([5; 32]),
        }
    }

    #[test]
    fn sealed_grant_verifies_until_expiry() {
        let key = RelayGrantKey::from_bytes([7; 32]);
        let token = key.seal(&claims(), [9; GRANT_NONCE_LEN]);
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
        let token = key.seal(&claims(), [9; GRANT_NONCE_LEN]);
        for byte in 0..GRANT_TOKEN_LEN {
            let mut tampered = token;
            tampered.0[byte] ^= 0x80;
            let expected = if byte == 0 {
                GrantError::UnsupportedVersion { version: 0x82 }
            } else {
                GrantError::BadMac
            };
            assert_eq!(key.verify(&tampered, 0), Err(expected), "byte {byte}");
        }
        let other = RelayGrantKey::from_bytes([8; 32]);
        assert_eq!(other.verify(&token, 0), Err(GrantError::BadMac));
        assert_eq!(
            RelayGrantToken::from_slice(&[0; 127]),
            Err(GrantError::WrongLength { len: 127 })
        );
    }

    /// Finds `needle` anywhere in `haystack`.
    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    #[test]
    fn finding_10_grant_token_reveals_no_identity() {
        // Security issue 12, finding 10: version 1 tokens carried the device ID and both
        // static keys in clear, so a passive observer of a BIND learned who watches which
        // camera. Distinctive values, so an accidental match is impossible.
        let claims = GrantClaims {
            allocation_id: *b"allocation-id-16",
            role: GrantRole::Viewer,
            expires_at: 0x0102_0304_0506_0708,
            device_id: DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef]).unwrap(),
            device_key: PublicKey::from_bytes(*b"device-static-key-32-bytes-long!"),
            viewer_key: PublicKey::from_bytes(*b"viewer-static-key-32-bytes-long!"),
        };
        let key = RelayGrantKey::from_bytes([7; 32]);
        let first = key.seal(&claims, [1; GRANT_NONCE_LEN]);
        let second = key.seal(&claims, [2; GRANT_NONCE_LEN]);
        for token in [first, second] {
            assert!(!contains(&token.0, claims.device_id.as_bytes()));
            // Not even a 4-byte piece of a key or of the allocation id's secret half
            // shows; the first half is the channel, in clear as in every DATA packet.
            assert_eq!(token.channel(), 0x616c_6c6f_6361_7469);
            for field in [
                claims.device_key.as_bytes(),
                claims.viewer_key.as_bytes(),
                &claims.allocation_id[8..],
            ] {
                for piece in field.chunks(4) {
                    assert!(!contains(&token.0, piece));
                }
            }
            assert!(!contains(&token.0, &claims.expires_at.to_be_bytes()[2..]));
            assert_eq!(key.verify(&token, 0), Ok(claims));
        }
        // Two grants for the same claims share nothing but version and channel (and two
        // grants for the same pair in different attempts have different channels).
        assert_ne!(first, second);
        let equal = first.0[NONCE_AT..]
            .iter()
            .zip(&second.0[NONCE_AT..])
            .filter(|(a, b)| a == b)
            .count();
        assert!(equal < 8, "{equal} bytes equal");
    }

    #[test]
    fn version_1_tokens_and_nonzero_reserved_bytes_are_refused() {
        let key = RelayGrantKey::from_bytes([7; 32]);
        let mut token = key.seal(&claims(), [9; GRANT_NONCE_LEN]);
        token.0[0] = 1;
        assert_eq!(
            key.verify(&token, 0),
            Err(GrantError::UnsupportedVersion { version: 1 })
        );
        // A token whose reserved bytes are set, sealed correctly, is still refused.
        let mut token = [0u8; GRANT_TOKEN_LEN];
        token[0] = GRANT_VERSION;
        let mut plain = [0u8; CLAIMS_LEN];
        plain[8] = 1;
        plain[90] = 1;
        let tag = key
            .cipher()
            .encrypt_in_place_detached(
                &Nonce::from([0; 12]),
                &RelayGrantKey::aad(&token[..NONCE_AT]),
                &mut plain,
            )
            .unwrap();
        token[CIPHERTEXT_AT..TAG_AT].copy_from_slice(&plain);
        token[TAG_AT..].copy_from_slice(&tag);
        assert_eq!(
            key.verify(&RelayGrantToken(token), 0),
            Err(GrantError::ReservedNotZero)
        );
    }
}
