//! Viewer authorization, decided by the device after the peer handshake.
//!
//! The viewer sends one [`AuthRequest`] inside the encrypted session; the device answers
//! one [`AuthResponse`]. The viewer is accepted if its static key is in the device's
//! trusted list, or if it proves knowledge of the device password *bound to this
//! session's handshake hash*:
//!
//! ```text
//! password_key = Argon2id(password, "sightwire-password-v2" || device_id, m = 19 MiB, t = 2, p = 1, 32 bytes)
//! proof        = HMAC-SHA256(password_key, "sightwire-auth-v1" || handshake_hash)
//! ```
//!
//! **Superseded by the PAKE login** ([`crate::login`]) and kept only for compatibility
//! until the endpoint switches to it. The handshake hash is *not* secret: it is a hash of
//! the handshake messages, which anyone on the path sees, so whoever learns a proof can
//! test password guesses against it offline (one Argon2id per guess). The proof travels
//! inside the session, so only the device the viewer pinned ever sees it, and it is
//! useless in any other session (a replay fails); but nothing stronger holds. The login
//! in [`crate::login`] gives no party without the password anything testable offline.
//!
//! Failed proofs are throttled per viewer key, with a global daily budget
//! ([`LoginThrottle`]), not by a global lock that anyone could keep closed. See
//! `spec/session.md`, "Viewer authorization" and "Login (PAKE)", for the threat model.
//!
//! ```
//! use std::time::Instant;
//! use sightwire_session::auth::{AuthRequest, AuthResponse, PasswordKey, ViewerAuthorizer};
//!
//! let device_id: sightwire_session::DeviceId = "00:1A:2B:3C:4D:5E".parse().expect("a device ID");
//! let handshake_hash = [7u8; 32]; // from SessionTable::handshake_hash on both ends
//! let viewer_key = sightwire_session::PublicKey::from_bytes([9u8; 32]); // from SessionTable::remote_static on the device
//!
//! // Device: set up once (stores the derived key, never the password).
//! let mut authorizer = ViewerAuthorizer::new(Some(PasswordKey::derive(b"hunter2", &device_id)));
//!
//! // Viewer: prove the password for this session, asking to be remembered.
//! let request = AuthRequest::password(&PasswordKey::derive(b"hunter2", &device_id), &handshake_hash, true);
//! let mut wire = [0u8; sightwire_session::auth::MAX_AUTH_MESSAGE_LEN];
//! let len = request.encode(&mut wire).unwrap();
//!
//! // Device: decode, decide, answer.
//! let request = AuthRequest::decode(&wire[..len]).unwrap();
//! let response = authorizer.authorize(Instant::now(), &viewer_key, &handshake_hash, &request);
//! assert_eq!(response, AuthResponse::Accepted { remembered: true });
//! assert!(authorizer.is_trusted(&viewer_key));
//! ```

use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::login::LoginThrottle;
use crate::noise::{DEVICE_ID_LEN, DeviceId, HandshakeHash, PublicKey};

/// Domain-separation label of the proof.
pub const AUTH_LABEL: &[u8] = b"sightwire-auth-v1";
/// Salt prefix of the password KDF (followed by the 6-byte device ID).
pub const PASSWORD_SALT_LABEL: &[u8] = b"sightwire-password-v2";
/// Argon2id memory cost in KiB (19 MiB; OWASP's minimum for Argon2id). Fixed by the
/// protocol: both ends must derive the same key.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes over the memory (time cost). Fixed by the protocol.
pub const ARGON2_ITERATIONS: u32 = 2;
/// Argon2id lanes (parallelism). Fixed by the protocol.
pub const ARGON2_PARALLELISM: u32 = 1;
/// Length of a password key and of a proof.
pub const PROOF_LEN: usize = 32;
/// Most keys a device remembers as trusted viewers.
pub const MAX_TRUSTED_VIEWERS: usize = 64;
/// Longest auth message (a password request).
pub const MAX_AUTH_MESSAGE_LEN: usize = 2 + PROOF_LEN;

/// Request type byte: "my static key should be in your trusted list".
pub const REQUEST_TRUSTED_KEY: u8 = 0x01;
/// Request type byte: password proof follows.
pub const REQUEST_PASSWORD: u8 = 0x02;
/// Response type byte: accepted.
pub const RESPONSE_ACCEPTED: u8 = 0x81;
/// Response type byte: rejected, reason follows.
pub const RESPONSE_REJECTED: u8 = 0x82;
/// Request flag: remember my key on success.
pub const FLAG_REMEMBER: u8 = 0x01;

/// A key derived from the device password and device ID. The device stores this (not
/// the password); zeroized on drop.
#[derive(Clone)]
pub struct PasswordKey(Zeroizing<[u8; PROOF_LEN]>);

impl std::fmt::Debug for PasswordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordKey(..)")
    }
}

/// Argon2id cost parameters of [`PasswordKey::derive_with_params`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct KdfParams {
    /// Memory cost in KiB (at least `8 * parallelism`).
    pub memory_kib: u32,
    /// Passes over the memory (at least 1).
    pub iterations: u32,
    /// Lanes (at least 1).
    pub parallelism: u32,
}

impl KdfParams {
    /// The protocol's parameters ([`ARGON2_MEMORY_KIB`], [`ARGON2_ITERATIONS`],
    /// [`ARGON2_PARALLELISM`]); [`PasswordKey::derive`] uses these.
    pub const PROTOCOL: KdfParams = KdfParams {
        memory_kib: ARGON2_MEMORY_KIB,
        iterations: ARGON2_ITERATIONS,
        parallelism: ARGON2_PARALLELISM,
    };
}

// `PasswordKey::derive` relies on Argon2's defaults being the protocol's parameters.
const _: () = assert!(
    argon2::Params::DEFAULT_M_COST == ARGON2_MEMORY_KIB
        && argon2::Params::DEFAULT_T_COST == ARGON2_ITERATIONS
        && argon2::Params::DEFAULT_P_COST == ARGON2_PARALLELISM
        && argon2::Params::DEFAULT_OUTPUT_LEN == PROOF_LEN
);

/// [`KdfParams`] that Argon2 refuses (too little memory, zero passes or lanes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid Argon2id parameters {0:?}")]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct InvalidKdfParams(pub KdfParams);

impl PasswordKey {
    /// A key no password derives: what the rendezvous logs in with when it stands in
    /// for a device that cannot be reached (`spec/signaling.md` §4.5), so its answer
    /// fails exactly like a wrong password.
    pub fn random<R: rand::RngCore + rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = Zeroizing::new([0u8; PROOF_LEN]);
        rng.fill_bytes(&mut key[..]);
        Self(key)
    }

    /// Derives the key with Argon2id at the protocol's parameters ([`KdfParams::PROTOCOL`]:
    /// 19 MiB, 2 passes, 1 lane; tens of milliseconds on a phone or PC, an estimated few
    /// hundred on a camera SoC, so a device derives once at setup and stores the key). The salt is
    /// [`PASSWORD_SALT_LABEL`] followed by the device ID, so a key does not transfer to
    /// another device with the same password.
    pub fn derive(password: &[u8], device_id: &DeviceId) -> Self {
        // `Params::DEFAULT` is exactly the protocol's (checked at compile time above), so
        // this path has no invalid-parameter error to handle.
        Self::derive_argon2(password, device_id, argon2::Params::DEFAULT)
    }

    /// Derives with other Argon2id costs. **For tests and benchmarks only**: a key
    /// derived with anything but [`KdfParams::PROTOCOL`] does not match the other end's.
    pub fn derive_with_params(
        password: &[u8],
        device_id: &DeviceId,
        params: KdfParams,
    ) -> Result<Self, InvalidKdfParams> {
        let argon_params = argon2::Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(PROOF_LEN),
        )
        .map_err(|_| InvalidKdfParams(params))?;
        Ok(Self::derive_argon2(password, device_id, argon_params))
    }

    fn derive_argon2(password: &[u8], device_id: &DeviceId, params: argon2::Params) -> Self {
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut salt = [0u8; PASSWORD_SALT_LABEL.len() + DEVICE_ID_LEN];
        salt[..PASSWORD_SALT_LABEL.len()].copy_from_slice(PASSWORD_SALT_LABEL);
        salt[PASSWORD_SALT_LABEL.len()..].copy_from_slice(device_id.as_bytes());
        let mut key = Zeroizing::new([0u8; PROOF_LEN]);
        // With valid parameters, a 28-byte salt and a 32-byte output, Argon2 fails only
        // for a password of 4 GiB or more: hash such a password down first (both ends do
        // the same, so they still agree). A 32-byte password cannot fail.
        if argon
            .hash_password_into(password, &salt, &mut key[..])
            .is_err()
        {
            let digest: Zeroizing<[u8; 32]> =
                Zeroizing::new(<Sha256 as sha2::Digest>::digest(password).into());
            let _ = argon.hash_password_into(&digest[..], &salt, &mut key[..]);
        }
        Self(key)
    }

    /// Restores a stored key.
    pub fn from_bytes(bytes: [u8; PROOF_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key bytes, for storage on the device.
    pub fn as_bytes(&self) -> &[u8; PROOF_LEN] {
        &self.0
    }

    /// The proof for one session.
    pub fn proof(&self, handshake_hash: &HandshakeHash) -> [u8; PROOF_LEN] {
        // HMAC accepts keys of any length; the fallback is unreachable.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..]) else {
            return [0; PROOF_LEN];
        };
        mac.update(AUTH_LABEL);
        mac.update(handshake_hash);
        mac.finalize().into_bytes().into()
    }
}

/// What the viewer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum AuthRequest {
    /// "My static key is already trusted."
    TrustedKey,
    /// A password proof bound to this session.
    Password {
        /// `HMAC-SHA256(password_key, AUTH_LABEL || handshake_hash)`.
        proof: [u8; PROOF_LEN],
        /// Ask the device to trust this static key from now on.
        remember: bool,
    },
}

/// Why the device refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthRejection {
    /// The static key is not trusted (code `0x01`).
    NotTrusted,
    /// The password proof is wrong (code `0x02`).
    WrongPassword,
    /// Too many wrong passwords recently, from this viewer key or from everyone
    /// ([`LoginThrottle`]); try again later (code `0x03`).
    LockedOut,
    /// The device has no password set (code `0x04`).
    NoPassword,
}

impl AuthRejection {
    fn code(self) -> u8 {
        match self {
            AuthRejection::NotTrusted => 0x01,
            AuthRejection::WrongPassword => 0x02,
            AuthRejection::LockedOut => 0x03,
            AuthRejection::NoPassword => 0x04,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => AuthRejection::NotTrusted,
            0x02 => AuthRejection::WrongPassword,
            0x03 => AuthRejection::LockedOut,
            0x04 => AuthRejection::NoPassword,
            _ => return None,
        })
    }
}

/// The device's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum AuthResponse {
    /// The viewer may watch.
    Accepted {
        /// The device now trusts the viewer's static key.
        remembered: bool,
    },
    /// The viewer may not.
    Rejected(AuthRejection),
}

/// Why an auth message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AuthDecodeError {
    /// The message was empty.
    #[error("empty auth message")]
    Empty,
    /// Unknown type byte.
    #[error("unknown auth message type {0:#04x}")]
    UnknownType(u8),
    /// Wrong length for the type.
    #[error("auth message type {message_type:#04x} has length {len}, expected {expected}")]
    BadLength {
        /// Type byte.
        message_type: u8,
        /// Length received.
        len: usize,
        /// Length required.
        expected: usize,
    },
    /// Flags other than [`FLAG_REMEMBER`] were set.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// Unknown rejection reason code.
    #[error("unknown rejection reason {0:#04x}")]
    UnknownReason(u8),
}

fn expect_len(message_type: u8, bytes: &[u8], expected: usize) -> Result<(), AuthDecodeError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(AuthDecodeError::BadLength {
            message_type,
            len: bytes.len(),
            expected,
        })
    }
}

fn flags(bytes: &[u8]) -> Result<bool, AuthDecodeError> {
    let flags = bytes.get(1).copied().unwrap_or(0);
    if flags & !FLAG_REMEMBER != 0 {
        return Err(AuthDecodeError::UnknownFlags(flags));
    }
    Ok(flags & FLAG_REMEMBER != 0)
}

impl AuthRequest {
    /// A password request for the session with `handshake_hash`.
    pub fn password(key: &PasswordKey, handshake_hash: &HandshakeHash, remember: bool) -> Self {
        AuthRequest::Password {
            proof: key.proof(handshake_hash),
            remember,
        }
    }

    /// Writes the request; returns its length, or `None` if `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        match self {
            AuthRequest::TrustedKey => {
                out.get_mut(..2)?.copy_from_slice(&[REQUEST_TRUSTED_KEY, 0]);
                Some(2)
            }
            AuthRequest::Password { proof, remember } => {
                let out = out.get_mut(..MAX_AUTH_MESSAGE_LEN)?;
                out[0] = REQUEST_PASSWORD;
                out[1] = if *remember { FLAG_REMEMBER } else { 0 };
                out[2..].copy_from_slice(proof);
                Some(MAX_AUTH_MESSAGE_LEN)
            }
        }
    }

    /// Reads a request (trailing bytes are an error).
    pub fn decode(bytes: &[u8]) -> Result<Self, AuthDecodeError> {
        let &message_type = bytes.first().ok_or(AuthDecodeError::Empty)?;
        match message_type {
            REQUEST_TRUSTED_KEY => {
                expect_len(message_type, bytes, 2)?;
                // "Remember" means nothing for a key that is already trusted: no flags.
                match bytes.get(1).copied().unwrap_or(0) {
                    0 => Ok(AuthRequest::TrustedKey),
                    other => Err(AuthDecodeError::UnknownFlags(other)),
                }
            }
            REQUEST_PASSWORD => {
                expect_len(message_type, bytes, MAX_AUTH_MESSAGE_LEN)?;
                let remember = flags(bytes)?;
                let proof = bytes.get(2..).and_then(|p| p.try_into().ok()).ok_or(
                    AuthDecodeError::BadLength {
                        message_type,
                        len: bytes.len(),
                        expected: MAX_AUTH_MESSAGE_LEN,
                    },
                )?;
                Ok(AuthRequest::Password { proof, remember })
            }
            other => Err(AuthDecodeError::UnknownType(other)),
        }
    }
}

impl AuthResponse {
    /// Writes the response (always 2 bytes); `None` if `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let bytes = match self {
            AuthResponse::Accepted { remembered } => [RESPONSE_ACCEPTED, u8::from(*remembered)],
            AuthResponse::Rejected(reason) => [RESPONSE_REJECTED, reason.code()],
        };
        out.get_mut(..2)?.copy_from_slice(&bytes);
        Some(2)
    }

    /// Reads a response.
    pub fn decode(bytes: &[u8]) -> Result<Self, AuthDecodeError> {
        let &message_type = bytes.first().ok_or(AuthDecodeError::Empty)?;
        match message_type {
            RESPONSE_ACCEPTED => {
                expect_len(message_type, bytes, 2)?;
                Ok(AuthResponse::Accepted {
                    remembered: flags(bytes)?,
                })
            }
            RESPONSE_REJECTED => {
                expect_len(message_type, bytes, 2)?;
                let code = bytes.get(1).copied().unwrap_or(0);
                AuthRejection::from_code(code)
                    .map(AuthResponse::Rejected)
                    .ok_or(AuthDecodeError::UnknownReason(code))
            }
            other => Err(AuthDecodeError::UnknownType(other)),
        }
    }
}

/// The trusted list is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("trusted viewer list is full ({limit} keys)")]
#[non_exhaustive]
pub struct TrustListFull {
    /// The limit ([`MAX_TRUSTED_VIEWERS`]).
    pub limit: usize,
}

/// The device's side: trusted viewer keys, the password key and the login throttle.
#[derive(Debug, Clone)]
pub struct ViewerAuthorizer {
    trusted: Vec<PublicKey>,
    password: Option<PasswordKey>,
    throttle: LoginThrottle,
}

impl ViewerAuthorizer {
    /// An authorizer with no trusted keys and an optional password key.
    pub fn new(password: Option<PasswordKey>) -> Self {
        Self {
            trusted: Vec::new(),
            password,
            throttle: LoginThrottle::new(),
        }
    }

    /// The throttle of failed password logins. A driver that also runs the PAKE login
    /// ([`crate::login`]) should use this one for both, so they share one budget.
    pub fn throttle_mut(&mut self) -> &mut LoginThrottle {
        &mut self.throttle
    }

    /// Replaces the password key (`None` disables password logins).
    pub fn set_password(&mut self, password: Option<PasswordKey>) {
        self.password = password;
    }

    /// Trusts a viewer key. Returns whether it was newly added.
    pub fn trust(&mut self, key: PublicKey) -> Result<bool, TrustListFull> {
        if self.is_trusted(&key) {
            return Ok(false);
        }
        if self.trusted.len() >= MAX_TRUSTED_VIEWERS {
            return Err(TrustListFull {
                limit: MAX_TRUSTED_VIEWERS,
            });
        }
        self.trusted.push(key);
        Ok(true)
    }

    /// Revokes a viewer key. Returns whether it was trusted. The driver should also close
    /// that key's live sessions ([`crate::SessionTable::sessions_with_remote`]).
    pub fn revoke(&mut self, key: &PublicKey) -> bool {
        let before = self.trusted.len();
        self.trusted.retain(|k| k != key);
        self.trusted.len() != before
    }

    /// Whether a key is trusted.
    pub fn is_trusted(&self, key: &PublicKey) -> bool {
        self.trusted
            .iter()
            .any(|k| bool::from(k.as_bytes().ct_eq(key.as_bytes())))
    }

    /// The trusted keys (for persistence).
    pub fn trusted(&self) -> &[PublicKey] {
        &self.trusted
    }

    /// Decides a request from the viewer with static key `remote_static` in the session
    /// with `handshake_hash` (both from the [`crate::SessionTable`]).
    pub fn authorize(
        &mut self,
        now: Instant,
        remote_static: &PublicKey,
        handshake_hash: &HandshakeHash,
        request: &AuthRequest,
    ) -> AuthResponse {
        match request {
            AuthRequest::TrustedKey => {
                if self.is_trusted(remote_static) {
                    AuthResponse::Accepted { remembered: true }
                } else {
                    AuthResponse::Rejected(AuthRejection::NotTrusted)
                }
            }
            AuthRequest::Password { proof, remember } => {
                let Some(key) = &self.password else {
                    return AuthResponse::Rejected(AuthRejection::NoPassword);
                };
                if self.throttle.check(now, remote_static).is_err() {
                    return AuthResponse::Rejected(AuthRejection::LockedOut);
                }
                let expected = key.proof(handshake_hash);
                if bool::from(expected.ct_eq(proof)) {
                    self.throttle.record_success(now, remote_static);
                    // `trust` is Ok for a new or already-trusted key, Err only when full.
                    let remembered = *remember && self.trust(*remote_static).is_ok();
                    AuthResponse::Accepted { remembered }
                } else {
                    self.throttle.record_failure(now, remote_static);
                    AuthResponse::Rejected(AuthRejection::WrongPassword)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEVICE: DeviceId = match DeviceId::from_bytes([0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e]) {
        Ok(id) => id,
        Err(_) => panic!("a unicast address"),
    };

    #[test]
    fn proof_is_bound_to_the_handshake() {
        let key = PasswordKey::derive(b"admin123", &DEVICE);
        let mut authorizer = ViewerAuthorizer::new(Some(key.clone()));
        let now = Instant::now();
        let viewer = PublicKey::from_bytes([1u8; 32]);
        let request = AuthRequest::password(&key, &[5; 32], false);
        // The same proof presented in another session (a replay) is refused.
        assert_eq!(
            authorizer.authorize(now, &viewer, &[6; 32], &request),
            AuthResponse::Rejected(AuthRejection::WrongPassword)
        );
        assert_eq!(
            authorizer.authorize(now, &viewer, &[5; 32], &request),
            AuthResponse::Accepted { remembered: false }
        );
        assert!(!authorizer.is_trusted(&viewer));
        // A key derived for another device does not work either.
        let other = PasswordKey::derive(
            b"admin123",
            &DeviceId::from_bytes([0, 1, 2, 3, 4, 5]).unwrap(),
        );
        assert_eq!(
            authorizer.authorize(
                now,
                &viewer,
                &[5; 32],
                &AuthRequest::password(&other, &[5; 32], false)
            ),
            AuthResponse::Rejected(AuthRejection::WrongPassword)
        );
    }

    #[test]
    fn remember_then_revoke() {
        let key = PasswordKey::derive(b"pw", &DEVICE);
        let mut authorizer = ViewerAuthorizer::new(Some(key.clone()));
        let now = Instant::now();
        let viewer = PublicKey::from_bytes([2u8; 32]);
        assert_eq!(
            authorizer.authorize(now, &viewer, &[1; 32], &AuthRequest::TrustedKey),
            AuthResponse::Rejected(AuthRejection::NotTrusted)
        );
        let request = AuthRequest::password(&key, &[1; 32], true);
        assert_eq!(
            authorizer.authorize(now, &viewer, &[1; 32], &request),
            AuthResponse::Accepted { remembered: true }
        );
        assert_eq!(
            authorizer.authorize(now, &viewer, &[2; 32], &AuthRequest::TrustedKey),
            AuthResponse::Accepted { remembered: true }
        );
        assert!(authorizer.revoke(&viewer));
        assert!(!authorizer.revoke(&viewer));
        assert_eq!(
            authorizer.authorize(now, &viewer, &[3; 32], &AuthRequest::TrustedKey),
            AuthResponse::Rejected(AuthRejection::NotTrusted)
        );
    }

    #[test]
    fn trusted_list_limit() {
        let mut authorizer = ViewerAuthorizer::new(None);
        for i in 0..MAX_TRUSTED_VIEWERS {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            assert_eq!(authorizer.trust(PublicKey::from_bytes(key)), Ok(true));
        }
        assert_eq!(
            authorizer.trust(PublicKey::from_bytes([0xff; 32])),
            Err(TrustListFull {
                limit: MAX_TRUSTED_VIEWERS
            })
        );
        assert_eq!(
            authorizer.trust(PublicKey::from_bytes([0; 32])),
            Ok(false),
            "re-trusting a known key is fine"
        );
    }

    #[test]
    fn failures_delay_that_viewer_key_not_everyone() {
        use crate::login::{FREE_FAILURES_PER_VIEWER, VIEWER_BACKOFF_BASE};
        let key = PasswordKey::derive(b"right", &DEVICE);
        let wrong = PasswordKey::derive(b"wrong", &DEVICE);
        let mut authorizer = ViewerAuthorizer::new(Some(key.clone()));
        let now = Instant::now();
        let attacker = PublicKey::from_bytes([3u8; 32]);
        let owner = PublicKey::from_bytes([4u8; 32]);
        let bad = AuthRequest::password(&wrong, &[1; 32], false);
        for _ in 0..=FREE_FAILURES_PER_VIEWER {
            assert_eq!(
                authorizer.authorize(now, &attacker, &[1; 32], &bad),
                AuthResponse::Rejected(AuthRejection::WrongPassword)
            );
        }
        let good = AuthRequest::password(&key, &[1; 32], false);
        // The key that failed waits, even with the right password...
        assert_eq!(
            authorizer.authorize(now, &attacker, &[1; 32], &good),
            AuthResponse::Rejected(AuthRejection::LockedOut)
        );
        // ...while the owner, with another key, is not locked out (the old global lock).
        assert_eq!(
            authorizer.authorize(now, &owner, &[1; 32], &good),
            AuthResponse::Accepted { remembered: false }
        );
        assert_eq!(
            authorizer.authorize(now + VIEWER_BACKOFF_BASE, &attacker, &[1; 32], &good),
            AuthResponse::Accepted { remembered: false }
        );
        let mut none = ViewerAuthorizer::new(None);
        assert_eq!(
            none.authorize(now, &owner, &[1; 32], &good),
            AuthResponse::Rejected(AuthRejection::NoPassword)
        );
    }

    #[test]
    fn argon2id_vector_and_cheap_params() {
        // Same as spec/vectors/session-ik.json "auth" (independent Python argon2-cffi).
        let key = PasswordKey::derive(b"correct horse battery staple", &DEVICE);
        assert_eq!(
            hex::encode(key.as_bytes()),
            "b09af78d255d08033f3e5ec0b1f0d2d927f9ca7ce54473e60ebe15038484814a"
        );
        let cheap = KdfParams {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        };
        let fast = PasswordKey::derive_with_params(b"correct horse battery staple", &DEVICE, cheap)
            .unwrap();
        assert_ne!(fast.as_bytes(), key.as_bytes());
        assert_eq!(
            PasswordKey::derive_with_params(b"x", &DEVICE, KdfParams::PROTOCOL)
                .unwrap()
                .as_bytes(),
            PasswordKey::derive(b"x", &DEVICE).as_bytes()
        );
        let invalid = KdfParams {
            iterations: 0,
            ..cheap
        };
        assert_eq!(
            PasswordKey::derive_with_params(b"x", &DEVICE, invalid).map(|_| ()),
            Err(InvalidKdfParams(invalid))
        );
    }

    proptest! {
        #[test]
        fn codecs_round_trip_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(request) = AuthRequest::decode(&bytes) {
                let mut out = [0u8; MAX_AUTH_MESSAGE_LEN];
                let len = request.encode(&mut out).unwrap();
                prop_assert_eq!(&out[..len], &bytes[..]);
            }
            if let Ok(response) = AuthResponse::decode(&bytes) {
                let mut out = [0u8; 2];
                let len = response.encode(&mut out).unwrap();
                prop_assert_eq!(&out[..len], &bytes[..]);
            }
        }
    }
}
