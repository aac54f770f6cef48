//! Password login by PAKE (SPAKE2 on Ed25519), run before any session exists, through a
//! rendezvous that sees every message and must learn nothing testable offline.
//!
//! Three opaque messages, 1.5 round trips:
//!
//! ```text
//! viewer                                   device
//!   ViewerLogin::start      ── msg1 ──▶   DeviceLogin::respond
//!   ViewerLogin::finish     ◀── msg2 ──   (SPAKE2 B message || device confirmation)
//!   (checks the device)     ── msg3 ──▶   DeviceLogin::finish (checks the viewer)
//! ```
//!
//! The password input is the 32-byte [`PasswordKey`] (Argon2id of the password, salted
//! with the device ID), so the device stores only that key. The SPAKE2 identities bind the
//! viewer's static X25519 key and the device ID: a rendezvous that swaps the viewer key,
//! or introduces the viewer to another device ID, makes the login fail. Key confirmation
//! is HMAC-SHA256 over the transcript, one label per direction, compared in constant
//! time. Each party learns at most whether *one* password guess was right per login it
//! takes part in; a passive observer learns nothing (`spec/session.md`, "Login (PAKE)").
//!
//! What the login proves: the viewer knows the password and chose the static key that
//! the device saw. It does not prove the viewer holds that key's private half; the
//! session that follows (Noise `IK`) does, and the device must admit only that key.
//!
//! ```
//! use rand::SeedableRng;
//! use sightwire_session::auth::PasswordKey;
//! use sightwire_session::login::{DeviceLogin, ViewerLogin};
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! let device_id: sightwire_session::DeviceId = "00:1A:2B:3C:4D:5E".parse().expect("a device ID");
//! let viewer_static = sightwire_session::PublicKey::from_bytes([9u8; 32]); // the viewer's X25519 public key
//! // Both derive the same key; the device stores it (never the password).
//! let key = PasswordKey::from_bytes([42; 32]); // PasswordKey::derive(password, &device_id)
//!
//! let (viewer, msg1) = ViewerLogin::start(&key, &viewer_static, &device_id, &mut rng);
//! let (device, msg2) = DeviceLogin::respond(&key, &viewer_static, &device_id, &msg1, &mut rng)?;
//! let msg3 = viewer.finish(&msg2)?; // the viewer has checked the device
//! device.finish(&msg3)?; // the device has checked the viewer
//! # Ok::<(), sightwire_session::login::LoginError>(())
//! ```
//!
//! On the device, gate `respond` with a [`LoginThrottle`] (see its docs for the order of
//! calls); trusted viewer keys should not need a password login at all.

mod throttle;

use curve25519_dalek::traits::IsIdentity;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::auth::PasswordKey;
use crate::noise::{DEVICE_ID_LEN, DeviceId, PublicKey};

pub use throttle::{
    FREE_FAILURES_PER_VIEWER, GLOBAL_FAILURE_BURST, GLOBAL_FAILURE_INTERVAL, LoginThrottle,
    MAX_THROTTLED_VIEWERS, ThrottleScope, Throttled, VIEWER_BACKOFF_BASE, VIEWER_BACKOFF_CAP,
    VIEWER_FAILURES_FORGOTTEN_AFTER,
};

/// Protocol label: prefix of the identities and the confirmation labels.
pub const LOGIN_LABEL: &[u8] = b"sightwire-login-v1";
/// SPAKE2 identity A prefix (followed by the viewer's 32-byte static public key).
pub const VIEWER_IDENTITY_LABEL: &[u8] = b"sightwire-login-v1 viewer";
/// SPAKE2 identity B prefix (followed by the 6-byte device ID).
pub const DEVICE_IDENTITY_LABEL: &[u8] = b"sightwire-login-v1 device";
/// HMAC label of the device's key confirmation (in msg2).
pub const DEVICE_CONFIRM_LABEL: &[u8] = b"sightwire-login-v1 device confirm";
/// HMAC label of the viewer's key confirmation (msg3).
pub const VIEWER_CONFIRM_LABEL: &[u8] = b"sightwire-login-v1 viewer confirm";

/// Type byte of msg1 (viewer → device).
pub const TYPE_LOGIN_START: u8 = 0x21;
/// Type byte of msg2 (device → viewer).
pub const TYPE_LOGIN_RESPONSE: u8 = 0x22;
/// Type byte of msg3 (viewer → device).
pub const TYPE_LOGIN_CONFIRM: u8 = 0x23;

/// SPAKE2 side byte of the viewer's element (`'A'`).
const SIDE_A: u8 = 0x41;
/// SPAKE2 side byte of the device's element (`'B'`).
const SIDE_B: u8 = 0x42;
/// A compressed Edwards25519 point.
const ELEMENT_LEN: usize = 32;
/// Length of a key confirmation (HMAC-SHA256).
pub const CONFIRMATION_LEN: usize = 32;

/// msg1: type || `'A'` || X (32).
pub const LOGIN_START_LEN: usize = 2 + ELEMENT_LEN;
/// msg2: type || `'B'` || Y (32) || device confirmation (32).
pub const LOGIN_RESPONSE_LEN: usize = 2 + ELEMENT_LEN + CONFIRMATION_LEN;
/// msg3: type || viewer confirmation (32).
pub const LOGIN_CONFIRM_LEN: usize = 1 + CONFIRMATION_LEN;
/// The longest login message (msg2); the introduction carries at most 128 bytes.
pub const MAX_LOGIN_MESSAGE_LEN: usize = LOGIN_RESPONSE_LEN;

/// Which login message an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum LoginMessage {
    /// msg1, viewer → device.
    Start,
    /// msg2, device → viewer.
    Response,
    /// msg3, viewer → device.
    Confirm,
}

/// Why a login failed. Do not send the detail to the peer: on the wire, every failure
/// should look the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The message has the wrong length for its type.
    #[error("login {message:?} has length {len}, expected {expected}")]
    WrongLength {
        /// Which message.
        message: LoginMessage,
        /// Length received.
        len: usize,
        /// Length required.
        expected: usize,
    },
    /// The type byte is not the expected message's.
    #[error("login {message:?} has type {found:#04x}")]
    WrongType {
        /// Which message was expected.
        message: LoginMessage,
        /// Type byte received.
        found: u8,
    },
    /// The SPAKE2 element is not a canonical point of the prime-order group (or its side
    /// byte is wrong).
    #[error("login {message:?} carries an invalid group element")]
    InvalidElement {
        /// Which message.
        message: LoginMessage,
    },
    /// The peer's key confirmation does not match: a wrong password, a different viewer
    /// key or device ID on the other side, or an altered message.
    #[error("login key confirmation failed")]
    ConfirmationFailed,
}

fn identities(viewer_static_public: &PublicKey, device_id: &DeviceId) -> [Identity; 2] {
    let mut a =
        Vec::with_capacity(VIEWER_IDENTITY_LABEL.len() + viewer_static_public.as_bytes().len());
    a.extend_from_slice(VIEWER_IDENTITY_LABEL);
    a.extend_from_slice(viewer_static_public.as_bytes());
    let mut b = Vec::with_capacity(DEVICE_IDENTITY_LABEL.len() + DEVICE_ID_LEN);
    b.extend_from_slice(DEVICE_IDENTITY_LABEL);
    b.extend_from_slice(device_id.as_bytes());
    [Identity::new(&a), Identity::new(&b)]
}

/// Checks a SPAKE2 message (side byte || element): the element must be the canonical
/// encoding of a point in the prime-order subgroup other than the identity. (The
/// `spake2` crate only decompresses; this rejects small-order and mixed-order points.)
fn check_element(
    side_and_element: &[u8],
    side: u8,
    message: LoginMessage,
) -> Result<(), LoginError> {
    let invalid = LoginError::InvalidElement { message };
    let (&found_side, element) = side_and_element.split_first().ok_or(invalid)?;
    let bytes: [u8; ELEMENT_LEN] = element.try_into().map_err(|_| invalid)?;
    if found_side != side {
        return Err(invalid);
    }
    let compressed = curve25519_dalek::edwards::CompressedEdwardsY(bytes);
    let point = compressed.decompress().ok_or(invalid)?;
    if point.compress() != compressed || !point.is_torsion_free() || point.is_identity() {
        return Err(invalid);
    }
    Ok(())
}

fn check_shape(
    bytes: &[u8],
    message: LoginMessage,
    message_type: u8,
    expected: usize,
) -> Result<(), LoginError> {
    if bytes.len() != expected {
        return Err(LoginError::WrongLength {
            message,
            len: bytes.len(),
            expected,
        });
    }
    match bytes.first() {
        Some(&t) if t == message_type => Ok(()),
        found => Err(LoginError::WrongType {
            message,
            found: found.copied().unwrap_or(0),
        }),
    }
}

/// HMAC-SHA256(key, label || parts…).
fn confirmation(key: &[u8], label: &[u8], parts: &[&[u8]]) -> [u8; CONFIRMATION_LEN] {
    // HMAC accepts keys of any length; the fallback is unreachable.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0; CONFIRMATION_LEN];
    };
    mac.update(label);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The viewer's side of a login, between msg1 and msg2.
pub struct ViewerLogin {
    spake: Spake2<Ed25519Group>,
    msg1: [u8; LOGIN_START_LEN],
}

impl std::fmt::Debug for ViewerLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewerLogin(..)")
    }
}

impl ViewerLogin {
    /// Starts a login to device `device_id` as the viewer with static key
    /// `viewer_static_public`; returns the state and msg1 ([`LOGIN_START_LEN`] bytes).
    pub fn start<R: RngCore + CryptoRng + ?Sized>(
        password_key: &PasswordKey,
        viewer_static_public: &PublicKey,
        device_id: &DeviceId,
        rng: &mut R,
    ) -> (ViewerLogin, Vec<u8>) {
        let [id_a, id_b] = identities(viewer_static_public, device_id);
        let (spake, spake_msg) = Spake2::<Ed25519Group>::start_a_with_rng(
            &Password::new(password_key.as_bytes()),
            &id_a,
            &id_b,
            rng,
        );
        let mut msg1 = [0u8; LOGIN_START_LEN];
        msg1[0] = TYPE_LOGIN_START;
        // The spake2 message is 'A' || X: 33 bytes.
        if let Some(body) = msg1.get_mut(1..1 + spake_msg.len()) {
            body.copy_from_slice(&spake_msg);
        }
        (ViewerLogin { spake, msg1 }, msg1.to_vec())
    }

    /// Checks msg2 (the device's confirmation) and returns msg3 ([`LOGIN_CONFIRM_LEN`]
    /// bytes). On error nothing is to be sent: the device learns no more than that the
    /// login stopped.
    pub fn finish(self, msg2: &[u8]) -> Result<Vec<u8>, LoginError> {
        let message = LoginMessage::Response;
        check_shape(msg2, message, TYPE_LOGIN_RESPONSE, LOGIN_RESPONSE_LEN)?;
        let (body, device_confirm) = msg2.split_at(2 + ELEMENT_LEN);
        let spake_msg = &body[1..];
        check_element(spake_msg, SIDE_B, message)?;
        let key = Zeroizing::new(
            self.spake
                .finish(spake_msg)
                .map_err(|_| LoginError::InvalidElement { message })?,
        );
        let expected = confirmation(&key, DEVICE_CONFIRM_LABEL, &[&self.msg1, body]);
        if !bool::from(expected[..].ct_eq(device_confirm)) {
            return Err(LoginError::ConfirmationFailed);
        }
        let viewer_confirm = confirmation(&key, VIEWER_CONFIRM_LABEL, &[&self.msg1, msg2]);
        let mut msg3 = Vec::with_capacity(LOGIN_CONFIRM_LEN);
        msg3.push(TYPE_LOGIN_CONFIRM);
        msg3.extend_from_slice(&viewer_confirm);
        Ok(msg3)
    }
}

/// Domain label of [`confirmation_digest`].
pub const CONFIRMATION_DIGEST_LABEL: &[u8] = b"sightwire-login-v1 confirmation digest";
/// Length of [`confirmation_digest`].
pub const CONFIRMATION_DIGEST_LEN: usize = 32;

/// `SHA-256(CONFIRMATION_DIGEST_LABEL || msg3)`: what a device gives the rendezvous with
/// msg2, so that the rendezvous may disclose as soon as the viewer's msg3 matches it
/// instead of waiting a round trip for the device's accept (spec/session.md §8.2). It
/// tells the rendezvous nothing it could use: msg3 needs the login key `K`, and a hash
/// does not give msg3 back. The device still checks msg3 itself.
pub fn confirmation_digest(msg3: &[u8]) -> [u8; CONFIRMATION_DIGEST_LEN] {
    use sha2::Digest;
    let mut hash = Sha256::new();
    hash.update(CONFIRMATION_DIGEST_LABEL);
    hash.update(msg3);
    hash.finalize().into()
}

/// The device's side of a login, between msg2 and msg3.
pub struct DeviceLogin {
    expected_confirm: Zeroizing<[u8; CONFIRMATION_LEN]>,
}

impl std::fmt::Debug for DeviceLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceLogin(..)")
    }
}

impl DeviceLogin {
    /// Answers msg1 from the viewer with static key `viewer_static_public` (as the
    /// rendezvous reported it); returns the state and msg2 ([`LOGIN_RESPONSE_LEN`] bytes).
    ///
    /// msg2 lets its receiver test one password guess (the one in msg1): count the
    /// attempt in the [`LoginThrottle`] as soon as this returns `Ok`.
    pub fn respond<R: RngCore + CryptoRng + ?Sized>(
        password_key: &PasswordKey,
        viewer_static_public: &PublicKey,
        device_id: &DeviceId,
        msg1: &[u8],
        rng: &mut R,
    ) -> Result<(DeviceLogin, Vec<u8>), LoginError> {
        let message = LoginMessage::Start;
        check_shape(msg1, message, TYPE_LOGIN_START, LOGIN_START_LEN)?;
        let viewer_msg = &msg1[1..];
        check_element(viewer_msg, SIDE_A, message)?;
        let [id_a, id_b] = identities(viewer_static_public, device_id);
        let (spake, spake_msg) = Spake2::<Ed25519Group>::start_b_with_rng(
            &Password::new(password_key.as_bytes()),
            &id_a,
            &id_b,
            rng,
        );
        let key = Zeroizing::new(
            spake
                .finish(viewer_msg)
                .map_err(|_| LoginError::InvalidElement { message })?,
        );
        let mut msg2 = Vec::with_capacity(LOGIN_RESPONSE_LEN);
        msg2.push(TYPE_LOGIN_RESPONSE);
        msg2.extend_from_slice(&spake_msg);
        if msg2.len() != 2 + ELEMENT_LEN {
            // The spake2 crate's B message is 'B' || Y (33 bytes); anything else would be
            // a bug there, reported rather than sent.
            return Err(LoginError::InvalidElement {
                message: LoginMessage::Response,
            });
        }
        let device_confirm = confirmation(&key, DEVICE_CONFIRM_LABEL, &[msg1, &msg2]);
        msg2.extend_from_slice(&device_confirm);
        let expected_confirm =
            Zeroizing::new(confirmation(&key, VIEWER_CONFIRM_LABEL, &[msg1, &msg2]));
        Ok((DeviceLogin { expected_confirm }, msg2))
    }

    /// The [`confirmation_digest`] of the msg3 this login expects.
    pub fn expected_confirmation_digest(&self) -> [u8; CONFIRMATION_DIGEST_LEN] {
        let mut msg3 = Zeroizing::new([0u8; LOGIN_CONFIRM_LEN]);
        msg3[0] = TYPE_LOGIN_CONFIRM;
        msg3[1..].copy_from_slice(&self.expected_confirm[..]);
        confirmation_digest(&msg3[..])
    }

    /// Checks msg3: `Ok` means the viewer knows the password and used the viewer key and
    /// device ID this side did.
    pub fn finish(self, msg3: &[u8]) -> Result<(), LoginError> {
        check_shape(
            msg3,
            LoginMessage::Confirm,
            TYPE_LOGIN_CONFIRM,
            LOGIN_CONFIRM_LEN,
        )?;
        if bool::from(self.expected_confirm[..].ct_eq(&msg3[1..])) {
            Ok(())
        } else {
            Err(LoginError::ConfirmationFailed)
        }
    }
}

#[cfg(test)]
mod tests;
