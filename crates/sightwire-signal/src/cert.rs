//! ID certificates: "device ID X belongs to the device whose static key is K", signed by
//! the operator's issuer key (Ed25519).
//!
//! The format is a fixed 135-byte layout (spec/registration.md); vectors are in
//! `spec/vectors/cert-*.json`.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use sightwire_id::{DeviceId, PublicKey};

/// Length of an encoded certificate, in bytes.
pub const CERT_LEN: usize = 135;
/// The only certificate format version this crate reads and writes.
pub const CERT_VERSION: u8 = 1;
/// Domain-separation prefix of the signed message: the signature covers
/// `CERT_SIGNATURE_CONTEXT || certificate[0..71]`.
pub const CERT_SIGNATURE_CONTEXT: &[u8] = b"sightwire id certificate v1";
/// Length of an issuer key identifier (the first bytes of SHA-256 of the issuer's key).
pub const ISSUER_ID_LEN: usize = 8;
/// How many issuer keys a [`TrustedIssuers`] set holds at most (key rotation overlap).
pub const MAX_TRUSTED_ISSUERS: usize = 16;

/// Offset of the signature within an encoded certificate; everything before it is signed.
const SIGNED_LEN: usize = 71;

/// Short identifier of an issuer key: the first 8 bytes of SHA-256 of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct IssuerId(pub [u8; ISSUER_ID_LEN]);

impl fmt::Debug for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerId({self})")
    }
}

impl fmt::Display for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// What can be wrong with a certificate, from decoding to verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The input is not exactly [`CERT_LEN`] bytes.
    #[error("certificate is {len} bytes, expected {CERT_LEN}")]
    WrongLength {
        /// Length of the input.
        len: usize,
    },
    /// The first byte names a format version this crate does not implement.
    #[error("certificate format version {version} is not supported (only {CERT_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// The device ID octets are not a device ID: all zeros, broadcast, or the multicast
    /// bit set (`spec/id.md` §1, `spec/registration.md`).
    #[error("certificate names no device ID")]
    InvalidDeviceId {
        /// Which rule the octets break.
        #[source]
        source: sightwire_id::ParseError,
    },
    /// `not_before` is later than `not_after`.
    #[error("certificate validity is empty: not_before {not_before} > not_after {not_after}")]
    EmptyValidity {
        /// Start of validity (Unix seconds).
        not_before: u64,
        /// End of validity (Unix seconds).
        not_after: u64,
    },
    /// No trusted issuer key has this identifier.
    #[error("certificate was issued by unknown issuer {issuer}")]
    UnknownIssuer {
        /// The issuer identifier in the certificate.
        issuer: IssuerId,
    },
    /// The Ed25519 signature does not verify under the issuer's key.
    #[error("certificate signature does not verify")]
    BadSignature,
    /// The certificate is not valid yet.
    #[error("certificate is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Start of validity (Unix seconds).
        not_before: u64,
        /// The time it was checked at (Unix seconds).
        now: u64,
    },
    /// The certificate has expired.
    #[error("certificate expired at {not_after} (now {now})")]
    Expired {
        /// End of validity (Unix seconds).
        not_after: u64,
        /// The time it was checked at (Unix seconds).
        now: u64,
    },
}

/// The content of a certificate, before it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct CertificateFields {
    /// The device ID (its EUI-48 MAC address). A certificate cannot name six octets that
    /// are no device ID (all zeros, broadcast, multicast: `spec/id.md` §1): the type
    /// refuses them, so the issuer cannot sign one and a decoder refuses one.
    pub device_id: DeviceId,
    /// The device's static X25519 public key, used in its Noise sessions.
    pub device_key: PublicKey,
    /// Start of validity, Unix seconds, inclusive.
    pub not_before: u64,
    /// End of validity, Unix seconds, inclusive.
    pub not_after: u64,
    /// Serial number chosen by the issuer; revocation names certificates by serial.
    pub serial: u64,
}

/// A decoded (not necessarily verified) ID certificate.
///
/// Decoding checks the structure only; call [`IdCertificate::verify`] before trusting it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdCertificate {
    fields: CertificateFields,
    issuer: IssuerId,
    signature: [u8; 64],
}

impl fmt::Debug for IdCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdCertificate")
            .field("device_id", &format_args!("{}", self.fields.device_id))
            .field("serial", &self.fields.serial)
            .field("issuer", &self.issuer)
            .field("not_before", &self.fields.not_before)
            .field("not_after", &self.fields.not_after)
            .finish_non_exhaustive()
    }
}

fn read_u64(bytes: &[u8; CERT_LEN], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

impl IdCertificate {
    /// Parses the 135-byte form. Checks length, version and that the validity window is
    /// not empty; does not check the signature.
    pub fn decode(input: &[u8]) -> Result<Self, CertificateError> {
        let bytes: &[u8; CERT_LEN] = input
            .try_into()
            .map_err(|_| CertificateError::WrongLength { len: input.len() })?;
        if bytes[0] != CERT_VERSION {
            return Err(CertificateError::UnsupportedVersion { version: bytes[0] });
        }
        let mut device_id = [0u8; 6];
        device_id.copy_from_slice(&bytes[1..7]);
        let device_id = DeviceId::from_bytes(device_id)
            .map_err(|source| CertificateError::InvalidDeviceId { source })?;
        let mut device_key = [0u8; 32];
        device_key.copy_from_slice(&bytes[7..39]);
        let device_key = PublicKey::from_bytes(device_key);
        let not_before = read_u64(bytes, 39);
        let not_after = read_u64(bytes, 47);
        let serial = read_u64(bytes, 55);
        let mut issuer = [0u8; ISSUER_ID_LEN];
        issuer.copy_from_slice(&bytes[63..71]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[71..135]);
        if not_before > not_after {
            return Err(CertificateError::EmptyValidity {
                not_before,
                not_after,
            });
        }
        Ok(Self {
            fields: CertificateFields {
                device_id,
                device_key,
                not_before,
                not_after,
                serial,
            },
            issuer: IssuerId(issuer),
            signature,
        })
    }

    /// The 135-byte encoded form.
    pub fn to_bytes(&self) -> [u8; CERT_LEN] {
        let mut out = [0u8; CERT_LEN];
        out[..SIGNED_LEN].copy_from_slice(&signed_part(&self.fields, self.issuer));
        out[SIGNED_LEN..].copy_from_slice(&self.signature);
        out
    }

    /// Verifies the signature under one of `issuers` and the validity at `now_unix`
    /// (Unix seconds). Returns the certified fields.
    pub fn verify(
        &self,
        issuers: &TrustedIssuers,
        now_unix: u64,
    ) -> Result<&CertificateFields, CertificateError> {
        let issuer = issuers
            .get(self.issuer)
            .ok_or(CertificateError::UnknownIssuer {
                issuer: self.issuer,
            })?;
        let message = signed_message(&self.fields, self.issuer);
        let signature = Signature::from_bytes(&self.signature);
        issuer
            .key
            .verify_strict(&message, &signature)
            .map_err(|_| CertificateError::BadSignature)?;
        if now_unix < self.fields.not_before {
            return Err(CertificateError::NotYetValid {
                not_before: self.fields.not_before,
                now: now_unix,
            });
        }
        if now_unix > self.fields.not_after {
            return Err(CertificateError::Expired {
                not_after: self.fields.not_after,
                now: now_unix,
            });
        }
        Ok(&self.fields)
    }

    /// The certified fields (unverified until [`IdCertificate::verify`] succeeds).
    pub fn fields(&self) -> &CertificateFields {
        &self.fields
    }

    /// The device ID this certificate names.
    pub fn device_id(&self) -> DeviceId {
        self.fields.device_id
    }

    /// The device static key this certificate names.
    pub fn device_key(&self) -> &PublicKey {
        &self.fields.device_key
    }

    /// The serial number.
    pub fn serial(&self) -> u64 {
        self.fields.serial
    }

    /// Which issuer key signed it.
    pub fn issuer(&self) -> IssuerId {
        self.issuer
    }

    /// The Ed25519 signature bytes.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}

fn signed_part(fields: &CertificateFields, issuer: IssuerId) -> [u8; SIGNED_LEN] {
    let mut out = [0u8; SIGNED_LEN];
    out[0] = CERT_VERSION;
    out[1..7].copy_from_slice(fields.device_id.as_bytes());
    out[7..39].copy_from_slice(fields.device_key.as_bytes());
    out[39..47].copy_from_slice(&fields.not_before.to_be_bytes());
    out[47..55].copy_from_slice(&fields.not_after.to_be_bytes());
    out[55..63].copy_from_slice(&fields.serial.to_be_bytes());
    out[63..71].copy_from_slice(&issuer.0);
    out
}

fn signed_message(fields: &CertificateFields, issuer: IssuerId) -> Vec<u8> {
    let mut message = Vec::with_capacity(CERT_SIGNATURE_CONTEXT.len() + SIGNED_LEN);
    message.extend_from_slice(CERT_SIGNATURE_CONTEXT);
    message.extend_from_slice(&signed_part(fields, issuer));
    message
}

/// An issuer's public key, as viewers and the rendezvous hold it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IssuerPublicKey {
    key: VerifyingKey,
    id: IssuerId,
}

impl fmt::Debug for IssuerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerPublicKey({})", self.id)
    }
}

/// An issuer public key that is not a valid Ed25519 point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid Ed25519 public key")]
#[non_exhaustive]
pub struct InvalidIssuerKey;

impl IssuerPublicKey {
    /// Reads a 32-byte Ed25519 public key; rejects non-canonical and weak (small-order)
    /// points.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, InvalidIssuerKey> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| InvalidIssuerKey)?;
        if key.is_weak() {
            return Err(InvalidIssuerKey);
        }
        Ok(Self {
            key,
            id: issuer_id_of(bytes),
        })
    }

    /// The 32-byte key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Its identifier, as written into certificates.
    pub fn id(&self) -> IssuerId {
        self.id
    }
}

fn issuer_id_of(public_key: &[u8; 32]) -> IssuerId {
    let digest = Sha256::digest(public_key);
    let mut id = [0u8; ISSUER_ID_LEN];
    id.copy_from_slice(&digest[..ISSUER_ID_LEN]);
    IssuerId(id)
}

/// The operator's signing key. Keep it offline; it can mint any device identity.
pub struct IssuerKey {
    signing: SigningKey,
    public: IssuerPublicKey,
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerKey({}, secret redacted)", self.public.id)
    }
}

impl IssuerKey {
    /// The key whose 32-byte Ed25519 secret seed is `seed`. Draw the seed from a
    /// cryptographic RNG (`IssuerKey::from_seed(rng.gen())`).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let public_bytes = signing.verifying_key().to_bytes();
        let public = IssuerPublicKey {
            key: signing.verifying_key(),
            id: issuer_id_of(&public_bytes),
        };
        Self { signing, public }
    }

    /// The 32-byte secret seed (to store the key).
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> IssuerPublicKey {
        self.public
    }

    /// Signs a certificate for `fields`.
    pub fn issue(&self, fields: CertificateFields) -> Result<IdCertificate, CertificateError> {
        if fields.not_before > fields.not_after {
            return Err(CertificateError::EmptyValidity {
                not_before: fields.not_before,
                not_after: fields.not_after,
            });
        }
        let message = signed_message(&fields, self.public.id);
        let signature = self.signing.sign(&message).to_bytes();
        Ok(IdCertificate {
            fields,
            issuer: self.public.id,
            signature,
        })
    }
}

/// Too many issuer keys for a [`TrustedIssuers`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("at most {MAX_TRUSTED_ISSUERS} issuer keys can be trusted at once")]
#[non_exhaustive]
pub struct TooManyIssuers;

/// The issuer keys a verifier accepts (normally one; two during a key rotation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedIssuers {
    keys: Vec<IssuerPublicKey>,
}

impl TrustedIssuers {
    /// A set holding exactly `key`.
    pub fn single(key: IssuerPublicKey) -> Self {
        Self { keys: vec![key] }
    }

    /// Adds a key; at most [`MAX_TRUSTED_ISSUERS`].
    pub fn add(&mut self, key: IssuerPublicKey) -> Result<(), TooManyIssuers> {
        if self.keys.iter().any(|known| known.id == key.id) {
            return Ok(());
        }
        if self.keys.len() >= MAX_TRUSTED_ISSUERS {
            return Err(TooManyIssuers);
        }
        self.keys.push(key);
        Ok(())
    }

    /// The key with identifier `id`, if trusted.
    pub fn get(&self, id: IssuerId) -> Option<&IssuerPublicKey> {
        self.keys.iter().find(|key| key.id == id)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted (then nothing verifies).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> CertificateFields {
        CertificateFields {
            device_id: DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef]).unwrap(),
            device_key: PublicKey::from_bytes([9; 32]),
            not_before: 100,
            not_after: 200,
            serial: 7,
        }
    }

    #[test]
    fn issued_certificate_round_trips_and_verifies() {
        let issuer = IssuerKey::from_seed(&[1; 32]);
        let cert = issuer.issue(fields()).unwrap();
        let decoded = IdCertificate::decode(&cert.to_bytes()).unwrap();
        assert_eq!(decoded, cert);
        let trust = TrustedIssuers::single(issuer.public());
        assert_eq!(decoded.verify(&trust, 150).unwrap(), &fields());
        assert_eq!(
            decoded.verify(&trust, 201),
            Err(CertificateError::Expired {
                not_after: 200,
                now: 201
            })
        );
        assert_eq!(
            decoded.verify(&trust, 99),
            Err(CertificateError::NotYetValid {
                not_before: 100,
                now: 99
            })
        );
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let issuer = IssuerKey::from_seed(&[1; 32]);
        let trust = TrustedIssuers::single(issuer.public());
        let bytes = issuer.issue(fields()).unwrap().to_bytes();
        for bit in 0..CERT_LEN * 8 {
            let mut tampered = bytes;
            tampered[bit / 8] ^= 1 << (bit % 8);
            let verdict =
                IdCertificate::decode(&tampered).and_then(|c| c.verify(&trust, 150).copied());
            assert!(verdict.is_err(), "bit {bit} flipped still verifies");
        }
    }

    #[test]
    fn trusted_issuer_set_is_bounded() {
        let mut trust = TrustedIssuers::default();
        for seed in 0..MAX_TRUSTED_ISSUERS as u8 {
            trust
                .add(IssuerKey::from_seed(&[seed; 32]).public())
                .unwrap();
        }
        assert_eq!(trust.len(), MAX_TRUSTED_ISSUERS);
        // Adding a known key again is a no-op, a new one hits the limit.
        trust.add(IssuerKey::from_seed(&[0; 32]).public()).unwrap();
        assert_eq!(
            trust.add(IssuerKey::from_seed(&[200; 32]).public()),
            Err(TooManyIssuers)
        );
    }

    #[test]
    fn weak_issuer_key_is_rejected() {
        // The identity point (small order) encodes as 1 followed by zeros.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            IssuerPublicKey::from_bytes(&identity),
            Err(InvalidIssuerKey)
        );
    }
}
