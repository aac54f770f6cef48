//! Sightwire signaling: the messages peers exchange with the rendezvous (and, through
//! it, with each other), the ID certificates that bind a device ID to a device key, and
//! the relay grants the rendezvous mints for the relay.
//!
//! - [`Envelope`] / [`Body`]: typed messages, encoded as protobuf (schema in
//!   `proto/sightwire/signal/v1/signal.proto`, compiled at build time by protox, so no
//!   `protoc` is needed). Decoding checks the size limit ([`MAX_MESSAGE_LEN`], one UDP
//!   datagram), the protocol version, and every field, and returns a typed
//!   [`DecodeError`]; prost's types never appear in this API.
//! - [`cert`]: the 135-byte Ed25519 ID certificate, issuing and verification.
//! - [`grant`]: relay grant tokens (HMAC-SHA256 under a key shared with the relay).
//! - `SignalCodec` (feature `codec`): length-prefixed framing for stream transports
//!   (`tokio-util`).
//! - [`nodes`]: the rendezvous nodes of a deployment and which one a device ID lives on
//!   (highest random weight hashing, `spec/multinode.md`).
//! - [`punch`]: conversions to and from `sightwire-punch`'s signal types.
//! - [`server_addr`]: a server's address as configured: an IP socket address or a
//!   checked host name and port (resolving it is the endpoint driver's job).
//!
//! What it is not for: it does no I/O and holds no state. Encryption and peer
//! authentication are the session layer's job (`sightwire-session`): signaling travels as
//! the plaintext of Noise transport packets. Which messages a server accepts from whom is
//! the rendezvous's job. The wire format is specified in `spec/signaling.md` and
//! `spec/registration.md`.
//!
//! ```
//! use sightwire_signal::cert::{CertificateFields, IssuerKey, TrustedIssuers};
//! use sightwire_signal::{Body, CandidateSet, DeviceId, Envelope, PublicKey, Register};
//!
//! // The operator issues a certificate for a device ID and the device's static key.
//! let issuer = IssuerKey::from_seed(&[42; 32]);
//! let certificate = issuer.issue(CertificateFields {
//!     device_id: "1C:C3:16:AB:CD:EF".parse::<DeviceId>()?,
//!     device_key: PublicKey::from_bytes([7; 32]),
//!     not_before: 1_700_000_000,
//!     not_after: 2_000_000_000,
//!     serial: 1,
//! })?;
//!
//! // The device registers with it...
//! let register = Envelope::new(1, Body::Register(Register { certificate, candidates: CandidateSet::default() }));
//! let datagram = register.to_bytes()?;
//!
//! // ...and the rendezvous decodes and verifies it.
//! let received = Envelope::decode(&datagram)?;
//! let Body::Register(register) = received.body else { unreachable!() };
//! let trust = TrustedIssuers::single(issuer.public());
//! let fields = register.certificate.verify(&trust, 1_800_000_000)?;
//! assert_eq!(fields.device_key, PublicKey::from_bytes([7; 32]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

pub mod cert;
#[cfg(feature = "codec")]
mod codec;
pub mod grant;
mod message;
pub mod nodes;
pub mod punch;
pub mod server_addr;

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod proto {
    include!(concat!(env!("OUT_DIR"), "/sightwire.signal.v1.rs"));
}

#[cfg(feature = "codec")]
pub use codec::{CodecError, FRAME_HEADER_LEN, SignalCodec};
pub use message::{
    Body, Candidate, CandidateKind, CandidateSet, CandidateUpdate, Close, CloseReason, ConnectId,
    ConnectOffer, ConnectRequest, ConnectResponse, Consent, Envelope, ErrorCode, ErrorReply,
    Introduction, Limit, MAX_LOGIN_LEN, PUNCH_KEY_LEN, PunchParams, Register, RegisterAck,
    RelayGrant,
};
/// The device ID type of certificates, grants and messages (re-exported for the same
/// reason).
pub use sightwire_id::DeviceId;
/// The static public key type of certificates, grants and messages (re-exported so that
/// users of this crate need not depend on `sightwire-id`).
pub use sightwire_id::PublicKey;

/// The signaling protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest encoded [`Envelope`], in bytes, padding included.
///
/// Signaling travels as the plaintext of one Noise transport packet in one UDP datagram;
/// 1024 leaves room for the session header and tag, the UDP header and an IPv6 header
/// inside the IPv6 minimum MTU of 1280 bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Most candidates one message may carry.
pub const MAX_CANDIDATES: usize = 16;

/// Why a message did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than [`MAX_MESSAGE_LEN`].
    #[error("signaling message of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid protobuf encoding of the schema.
    #[error("signaling message is not valid protobuf: {reason}")]
    Protobuf {
        /// What the protobuf decoder reported.
        reason: String,
    },
    /// The envelope's version is not [`PROTOCOL_VERSION`].
    #[error("signaling protocol version {version} is not supported (only {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version in the envelope.
        version: u32,
        /// The request id, so the receiver can answer `VERSION_UNSUPPORTED`.
        request_id: u64,
    },
    /// A required field is absent (or a body of unknown type was sent).
    #[error("signaling message lacks required field `{field}`")]
    MissingField {
        /// The field.
        field: &'static str,
    },
    /// A fixed-length field has the wrong length.
    #[error("field `{field}` is {len} bytes, expected {expected}")]
    WrongLength {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The required length.
        expected: usize,
    },
    /// A field's value is outside what the schema allows.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More than [`MAX_CANDIDATES`] candidates.
    #[error("{count} candidates exceed the limit of {limit}")]
    TooManyCandidates {
        /// How many were sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A `ConnectRequest`'s `device_id` has the right length but is not a device ID: all
    /// zeros, broadcast, or the multicast bit set (`spec/id.md` §1). Every other field of
    /// the request decoded; the error carries what a rendezvous needs to answer it
    /// exactly like an ID no device holds (`spec/signaling.md` §4.5), so that a
    /// malformed-looking ID is no probe.
    #[error("field `device_id` is not a device ID: {source}")]
    NotADeviceId {
        /// The envelope's request id.
        request_id: u64,
        /// The six octets as sent.
        octets: [u8; 6],
        /// The request's `login` field (already checked against [`MAX_LOGIN_LEN`]).
        login: bytes::Bytes,
        /// Which rule the octets break.
        #[source]
        source: sightwire_id::ParseError,
    },
    /// An embedded certificate is structurally invalid.
    #[error("embedded certificate is invalid")]
    Certificate(#[source] cert::CertificateError),
}

impl DecodeError {
    fn from_prost(error: prost::DecodeError) -> Self {
        DecodeError::Protobuf {
            reason: error.to_string(),
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message would exceed [`MAX_MESSAGE_LEN`].
    #[error("signaling message of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The output buffer has too little room.
    #[error("output buffer has {remaining} bytes free, message needs {needed}")]
    BufferTooSmall {
        /// Encoded length.
        needed: usize,
        /// Room in the buffer.
        remaining: usize,
    },
}

/// Fuzzing entry points; not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    use super::Envelope;

    /// Decodes `input` as a datagram and as a stream; whatever decodes must re-encode
    /// within the size limit and decode to the same value. Panics on a violation.
    pub fn decode_all(input: &[u8]) {
        if let Ok(envelope) = Envelope::decode(input) {
            let encoded = envelope.to_bytes().expect("a decoded message re-encodes");
            assert_eq!(Envelope::decode(&encoded).as_ref(), Ok(&envelope));
        }
        #[cfg(feature = "codec")]
        {
            use tokio_util::codec::Decoder;
            let mut stream = bytes::BytesMut::from(input);
            let mut codec = super::SignalCodec;
            // Each successful frame consumes at least its 2-byte header, so this ends.
            while let Ok(Some(_)) = codec.decode(&mut stream) {}
        }
        let _ = super::cert::IdCertificate::decode(input);
    }
}
