//! Device IDs for Sightwire.
//!
//! A Sightwire camera is known by its **device ID**: its EUI-48 MAC address, the string a
//! person reads off the label and types into a viewer. This crate turns whatever people
//! type into a [`DeviceId`] (phones' full-width forms and pasted invisible characters
//! included, look-alike letters refused), prints it in one canonical form, adds **check
//! characters** that catch every single-character typo and every swap of two neighbouring
//! characters, and reads and writes the **QR/URI form** that carries both the ID and the
//! fingerprint of the camera's static public key, so that scanning a label adds the
//! camera *and* pins its key.
//!
//! It also defines [`PublicKey`], the type every Sightwire crate uses for a static public
//! key, so that the session, signaling and endpoint crates share one name for it.
//!
//! What it is not for: it does no networking, holds no private keys and verifies no
//! certificates (that is `sightwire-signal`); a [`KeyFingerprint`] only pins a key learned
//! elsewhere.
//! The formats are specified in `spec/id.md`, whose test vectors the tests load.
//!
//! ```
//! use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint, ParseError, PublicKey};
//!
//! // Anything people write parses to the same ID.
//! let id: DeviceId = "1c-c3-16-ab-cd-ef".parse()?;
//! assert_eq!(id, "1CC3.16AB.CDEF".parse()?);
//! assert_eq!(id.to_string(), "1C:C3:16:AB:CD:EF");
//!
//! // What a phone's CJK keyboard types, pasted with a zero-width space.
//! assert_eq!("１Ｃ：Ｃ３：１６：ＡＢ：ＣＤ：ＥＦ\u{200B}".parse::<DeviceId>()?, id);
//! // A Cyrillic letter that looks like C is refused, not guessed.
//! assert_eq!(
//!     "1\u{0421}:C3:16:AB:CD:EF".parse::<DeviceId>(),
//!     Err(ParseError::LookAlike { ch: '\u{0421}', position: 2, looks_like: 'C' })
//! );
//!
//! // The checked human form catches typos.
//! let human = id.to_checked_string();
//! assert_eq!(human, "1CC3-16AB-CDEF-BC");
//! assert_eq!(DeviceId::parse_checked(&human)?, id);
//! // Two neighbouring digits swapped (EF -> FE):
//! assert_eq!(
//!     DeviceId::parse_checked("1CC3-16AB-CDFE-BC"),
//!     Err(ParseError::CheckMismatch)
//! );
//!
//! // The QR form pins the camera's static key.
//! let device_public_key = PublicKey::from_bytes([7u8; 32]);
//! let uri = DeviceUri::new(id, KeyFingerprint::of_public_key(&device_public_key));
//! let scanned: DeviceUri = uri.to_string().parse()?;
//! assert!(scanned.fingerprint().matches(&device_public_key));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

mod check;
mod device_id;
mod fingerprint;
mod key;
mod normalize;
mod uri;

pub use check::{CHECK_CHARS, crc8};
pub use device_id::{DeviceId, MAX_INPUT_LEN, ParseError};
pub use fingerprint::{FINGERPRINT_LEN, FingerprintError, KeyFingerprint};
pub use key::{KeyParseError, PUBLIC_KEY_LEN, PublicKey};
pub use uri::{DeviceUri, MAX_URI_LEN, URI_SCHEME, UriError};

/// Fuzzing entry points; not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    use super::{DeviceId, DeviceUri};

    /// Parses `input` every way this crate can and checks that whatever is accepted
    /// formats canonically and parses back to the same value. Panics on a violation,
    /// which is what a fuzzer wants.
    pub fn parse_all(input: &str) {
        if let Ok(id) = input.parse::<DeviceId>() {
            let canonical = id.to_string();
            assert_eq!(canonical.parse::<DeviceId>().ok(), Some(id));
            assert_eq!(
                DeviceId::parse_checked(&id.to_checked_string()).ok(),
                Some(id)
            );
        }
        if let Ok(id) = DeviceId::parse_checked(input) {
            assert_eq!(input.parse::<DeviceId>().ok(), Some(id));
            assert_eq!(
                DeviceId::parse_checked(&id.to_checked_string()).ok(),
                Some(id)
            );
        }
        if let Ok(uri) = input.parse::<DeviceUri>() {
            let formatted = uri.to_string();
            assert_eq!(formatted.parse::<DeviceUri>().ok(), Some(uri));
        }
    }
}
