//! Packet layouts: one symmetric codec per packet type (see `spec/session.md`, "Packets").
//!
//! Decoding borrows from the datagram and never allocates; encoding writes into a buffer
//! the caller owns.

use thiserror::Error;

/// First byte of a handshake initiation (initiator → responder).
pub const TYPE_INITIATION: u8 = 0x01;
/// First byte of a handshake response (responder → initiator).
pub const TYPE_RESPONSE: u8 = 0x02;
/// First byte of a cookie reply (responder under load → initiator).
pub const TYPE_COOKIE_REPLY: u8 = 0x03;
/// First byte of a transport packet (either direction).
pub const TYPE_TRANSPORT: u8 = 0x04;
/// First byte of a key-mismatch notice (a responder that answers them → initiator whose
/// initiation's `mac1` was not made for the responder's key; `spec/session.md` §2.5).
pub const TYPE_KEY_MISMATCH: u8 = 0x05;

/// Length of an X25519 public key.
pub const KEY_LEN: usize = 32;
/// Length of a ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Length of a `mac1` / `mac2` field (keyed BLAKE2s-128).
pub const MAC_LEN: usize = 16;
/// Length of a cookie (keyed BLAKE2s-128 of the source address).
pub const COOKIE_LEN: usize = 16;
/// Length of the XChaCha20-Poly1305 nonce in a cookie reply.
pub const COOKIE_NONCE_LEN: usize = 24;

/// Length of the TAI64N-style timestamp in message 1: seconds since the Unix epoch plus
/// 2⁶² (u64 big-endian) || nanoseconds (u32 big-endian). Big-endian, so comparing the
/// bytes compares the times (see `spec/session.md`, §2.1).
pub const TIMESTAMP_LEN: usize = 12;
/// Plaintext payload of Noise message 1: the initiator's handshake attempt counter (u64
/// big-endian) || its timestamp ([`TIMESTAMP_LEN`] bytes).
pub const INITIATION_PAYLOAD_LEN: usize = 8 + TIMESTAMP_LEN;
/// Noise `IK` message 1: `e` (32) || encrypted `s` (32 + 16) || encrypted payload (20 + 16).
pub const INITIATION_NOISE_LEN: usize =
    KEY_LEN + KEY_LEN + TAG_LEN + INITIATION_PAYLOAD_LEN + TAG_LEN;
/// Noise `IK` message 2: `e` (32) || encrypted empty payload (16).
pub const RESPONSE_NOISE_LEN: usize = KEY_LEN + TAG_LEN;

/// Header of every handshake packet: type (1) || sender index (4) || receiver index (4).
const HANDSHAKE_HEADER_LEN: usize = 1 + 4 + 4;
/// Total length of a handshake initiation (157 bytes).
pub const INITIATION_LEN: usize = HANDSHAKE_HEADER_LEN + INITIATION_NOISE_LEN + MAC_LEN + MAC_LEN;
/// Offset of `mac1` in an initiation: the MAC covers every byte before it.
pub const INITIATION_MAC1_OFFSET: usize = HANDSHAKE_HEADER_LEN + INITIATION_NOISE_LEN;
/// Offset of `mac2` in an initiation: the MAC covers every byte before it.
pub const INITIATION_MAC2_OFFSET: usize = INITIATION_MAC1_OFFSET + MAC_LEN;
/// Total length of a handshake response (57 bytes).
pub const RESPONSE_LEN: usize = HANDSHAKE_HEADER_LEN + RESPONSE_NOISE_LEN;
/// Total length of a cookie reply (61 bytes).
pub const COOKIE_REPLY_LEN: usize = 1 + 4 + COOKIE_NONCE_LEN + COOKIE_LEN + TAG_LEN;
/// Total length of a key-mismatch notice (21 bytes): type (1) || receiver index (4) ||
/// the initiation's `mac1` (16).
pub const KEY_MISMATCH_LEN: usize = 1 + 4 + MAC_LEN;
/// Header of a transport packet: type (1) || receiver index (4) || counter (8).
pub const TRANSPORT_HEADER_LEN: usize = 1 + 4 + 8;
/// Bytes a transport packet adds to its plaintext (header + tag = 29).
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// Largest Noise message (the Noise specification's limit).
pub const MAX_NOISE_MESSAGE_LEN: usize = 65_535;
/// Largest plaintext a transport packet may carry.
pub const MAX_PLAINTEXT_LEN: usize = MAX_NOISE_MESSAGE_LEN - TAG_LEN;
/// Largest transport packet (header + largest Noise message).
pub const MAX_PACKET_LEN: usize = TRANSPORT_HEADER_LEN + MAX_NOISE_MESSAGE_LEN;

/// Lowest first byte owned by the session layer (see `spec/README.md`).
pub const FIRST_BYTE_MIN: u8 = 0x01;
/// Highest first byte owned by the session layer.
pub const FIRST_BYTE_MAX: u8 = 0x0F;

/// Whether a datagram belongs to the session layer (first byte `0x01`–`0x0F`), for the
/// endpoint's first-byte demultiplexer. Reserved types in the range are still routed
/// here and dropped (and counted) by [`crate::SessionTable::handle_input`].
pub fn is_session_packet(datagram: &[u8]) -> bool {
    datagram
        .first()
        .is_some_and(|b| (FIRST_BYTE_MIN..=FIRST_BYTE_MAX).contains(b))
}

/// Why a datagram could not be decoded as a session packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The datagram was empty.
    #[error("empty datagram")]
    Empty,
    /// The first byte is not a session packet type (`0x01`–`0x05`).
    #[error("unknown session packet type {0:#04x}")]
    UnknownType(u8),
    /// The packet has the wrong length for its type.
    #[error("packet type {packet_type:#04x} has length {len}, expected {expected}")]
    BadLength {
        /// The packet type byte.
        packet_type: u8,
        /// The length received.
        len: usize,
        /// The length the type requires (minimum for transport packets).
        expected: usize,
    },
    /// A transport packet is longer than [`MAX_PACKET_LEN`].
    #[error("transport packet of {len} bytes exceeds the limit of {limit}")]
    TooLong {
        /// The length received.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// A handshake initiation, borrowed from a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Initiation<'a> {
    /// The initiator's local index for the keypair being negotiated.
    pub sender_index: u32,
    /// `0` for a new session, else the responder's index of the current keypair (rekey).
    pub receiver_index: u32,
    /// Noise message 1.
    pub noise: &'a [u8; INITIATION_NOISE_LEN],
    /// Keyed BLAKE2s over the bytes before it, keyed by the responder's static key.
    pub mac1: &'a [u8; MAC_LEN],
    /// Keyed BLAKE2s over the bytes before it, keyed by a cookie; zero without a cookie.
    pub mac2: &'a [u8; MAC_LEN],
}

/// A handshake response, borrowed from a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Response<'a> {
    /// The responder's local index for the new keypair.
    pub sender_index: u32,
    /// The initiator's index from the initiation.
    pub receiver_index: u32,
    /// Noise message 2.
    pub noise: &'a [u8; RESPONSE_NOISE_LEN],
}

/// A cookie reply, borrowed from a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct CookieReply<'a> {
    /// The initiator's index from the initiation that caused the reply.
    pub receiver_index: u32,
    /// XChaCha20-Poly1305 nonce.
    pub nonce: &'a [u8; COOKIE_NONCE_LEN],
    /// The encrypted cookie and its tag.
    pub encrypted_cookie: &'a [u8; COOKIE_LEN + TAG_LEN],
}

/// A key-mismatch notice, borrowed from a datagram: "your initiation was not made for my
/// key". Not authenticated (nothing the initiator holds could authenticate a server with
/// another key); the echoed `mac1` shows its sender saw the initiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct KeyMismatch<'a> {
    /// The initiator's index from the initiation.
    pub receiver_index: u32,
    /// The initiation's `mac1`, echoed.
    pub mac1: &'a [u8; MAC_LEN],
}

/// A transport packet, borrowed from a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Transport<'a> {
    /// The receiver's local index of the keypair.
    pub receiver_index: u32,
    /// The sender's counter, used as the AEAD nonce.
    pub counter: u64,
    /// Ciphertext and tag (at least [`TAG_LEN`] bytes).
    pub ciphertext: &'a [u8],
}

/// Any session packet, borrowed from a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum Packet<'a> {
    /// `0x01`.
    Initiation(Initiation<'a>),
    /// `0x02`.
    Response(Response<'a>),
    /// `0x03`.
    CookieReply(CookieReply<'a>),
    /// `0x04`.
    Transport(Transport<'a>),
    /// `0x05`.
    KeyMismatch(KeyMismatch<'a>),
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        word.copy_from_slice(src);
    }
    u32::from_be_bytes(word)
}

fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<&[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn exact(packet_type: u8, bytes: &[u8], expected: usize) -> Result<(), DecodeError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(DecodeError::BadLength {
            packet_type,
            len: bytes.len(),
            expected,
        })
    }
}

impl<'a> Packet<'a> {
    /// Decodes a datagram whose first byte is in the session range.
    ///
    /// Handshake and cookie packets have fixed lengths (trailing bytes are an error);
    /// transport packets are at least [`TRANSPORT_OVERHEAD`] and at most
    /// [`MAX_PACKET_LEN`] bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let &packet_type = bytes.first().ok_or(DecodeError::Empty)?;
        let bad = DecodeError::BadLength {
            packet_type,
            len: bytes.len(),
            expected: 0,
        };
        match packet_type {
            TYPE_INITIATION => {
                exact(packet_type, bytes, INITIATION_LEN)?;
                Ok(Packet::Initiation(Initiation {
                    sender_index: u32_at(bytes, 1),
                    receiver_index: u32_at(bytes, 5),
                    noise: array_at(bytes, HANDSHAKE_HEADER_LEN).ok_or(bad)?,
                    mac1: array_at(bytes, INITIATION_MAC1_OFFSET).ok_or(bad)?,
                    mac2: array_at(bytes, INITIATION_MAC2_OFFSET).ok_or(bad)?,
                }))
            }
            TYPE_RESPONSE => {
                exact(packet_type, bytes, RESPONSE_LEN)?;
                Ok(Packet::Response(Response {
                    sender_index: u32_at(bytes, 1),
                    receiver_index: u32_at(bytes, 5),
                    noise: array_at(bytes, HANDSHAKE_HEADER_LEN).ok_or(bad)?,
                }))
            }
            TYPE_COOKIE_REPLY => {
                exact(packet_type, bytes, COOKIE_REPLY_LEN)?;
                Ok(Packet::CookieReply(CookieReply {
                    receiver_index: u32_at(bytes, 1),
                    nonce: array_at(bytes, 5).ok_or(bad)?,
                    encrypted_cookie: array_at(bytes, 5 + COOKIE_NONCE_LEN).ok_or(bad)?,
                }))
            }
            TYPE_KEY_MISMATCH => {
                exact(packet_type, bytes, KEY_MISMATCH_LEN)?;
                Ok(Packet::KeyMismatch(KeyMismatch {
                    receiver_index: u32_at(bytes, 1),
                    mac1: array_at(bytes, 5).ok_or(bad)?,
                }))
            }
            TYPE_TRANSPORT => {
                if bytes.len() < TRANSPORT_OVERHEAD {
                    return Err(DecodeError::BadLength {
                        packet_type,
                        len: bytes.len(),
                        expected: TRANSPORT_OVERHEAD,
                    });
                }
                if bytes.len() > MAX_PACKET_LEN {
                    return Err(DecodeError::TooLong {
                        len: bytes.len(),
                        limit: MAX_PACKET_LEN,
                    });
                }
                let counter = array_at::<8>(bytes, 5).map_or(0, |b| u64::from_be_bytes(*b));
                Ok(Packet::Transport(Transport {
                    receiver_index: u32_at(bytes, 1),
                    counter,
                    ciphertext: bytes.get(TRANSPORT_HEADER_LEN..).ok_or(bad)?,
                }))
            }
            other => Err(DecodeError::UnknownType(other)),
        }
    }

    /// The receiver index a packet is addressed to (`0` for a new-session initiation).
    pub fn receiver_index(&self) -> u32 {
        match self {
            Packet::Initiation(p) => p.receiver_index,
            Packet::Response(p) => p.receiver_index,
            Packet::CookieReply(p) => p.receiver_index,
            Packet::Transport(p) => p.receiver_index,
            Packet::KeyMismatch(p) => p.receiver_index,
        }
    }

    /// Encodes the packet into `out`, returning the number of bytes written, or `None`
    /// when `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        match self {
            Packet::Initiation(p) => {
                let out = out.get_mut(..INITIATION_LEN)?;
                write_handshake_header(out, TYPE_INITIATION, p.sender_index, p.receiver_index);
                out[HANDSHAKE_HEADER_LEN..INITIATION_MAC1_OFFSET].copy_from_slice(p.noise);
                out[INITIATION_MAC1_OFFSET..INITIATION_MAC2_OFFSET].copy_from_slice(p.mac1);
                out[INITIATION_MAC2_OFFSET..].copy_from_slice(p.mac2);
                Some(INITIATION_LEN)
            }
            Packet::Response(p) => {
                let out = out.get_mut(..RESPONSE_LEN)?;
                write_handshake_header(out, TYPE_RESPONSE, p.sender_index, p.receiver_index);
                out[HANDSHAKE_HEADER_LEN..].copy_from_slice(p.noise);
                Some(RESPONSE_LEN)
            }
            Packet::CookieReply(p) => {
                let out = out.get_mut(..COOKIE_REPLY_LEN)?;
                out[0] = TYPE_COOKIE_REPLY;
                out[1..5].copy_from_slice(&p.receiver_index.to_be_bytes());
                out[5..5 + COOKIE_NONCE_LEN].copy_from_slice(p.nonce);
                out[5 + COOKIE_NONCE_LEN..].copy_from_slice(p.encrypted_cookie);
                Some(COOKIE_REPLY_LEN)
            }
            Packet::KeyMismatch(p) => {
                let out = out.get_mut(..KEY_MISMATCH_LEN)?;
                out[0] = TYPE_KEY_MISMATCH;
                out[1..5].copy_from_slice(&p.receiver_index.to_be_bytes());
                out[5..].copy_from_slice(p.mac1);
                Some(KEY_MISMATCH_LEN)
            }
            Packet::Transport(p) => {
                let len = TRANSPORT_HEADER_LEN.checked_add(p.ciphertext.len())?;
                let out = out.get_mut(..len)?;
                write_transport_header(out, p.receiver_index, p.counter);
                out[TRANSPORT_HEADER_LEN..].copy_from_slice(p.ciphertext);
                Some(len)
            }
        }
    }
}

fn write_handshake_header(out: &mut [u8], packet_type: u8, sender: u32, receiver: u32) {
    out[0] = packet_type;
    out[1..5].copy_from_slice(&sender.to_be_bytes());
    out[5..9].copy_from_slice(&receiver.to_be_bytes());
}

/// Writes the 13-byte transport header into the front of `out` (which must be at least
/// [`TRANSPORT_HEADER_LEN`] long).
pub(crate) fn write_transport_header(out: &mut [u8], receiver: u32, counter: u64) {
    out[0] = TYPE_TRANSPORT;
    out[1..5].copy_from_slice(&receiver.to_be_bytes());
    out[5..13].copy_from_slice(&counter.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_sizes_match_the_spec() {
        assert_eq!(INITIATION_LEN, 157);
        assert_eq!(RESPONSE_LEN, 57);
        assert_eq!(COOKIE_REPLY_LEN, 61);
        assert_eq!(TRANSPORT_OVERHEAD, 29);
        assert_eq!(KEY_MISMATCH_LEN, 21);
        // The DoS rule: nothing a responder sends in answer to an initiation is larger.
        const {
            assert!(
                RESPONSE_LEN <= INITIATION_LEN
                    && COOKIE_REPLY_LEN <= INITIATION_LEN
                    && KEY_MISMATCH_LEN <= INITIATION_LEN
            )
        };
    }

    #[test]
    fn first_byte_range() {
        assert!(!is_session_packet(&[]));
        assert!(!is_session_packet(&[0x00]));
        assert!(is_session_packet(&[0x01]));
        assert!(is_session_packet(&[0x0F]));
        assert!(!is_session_packet(&[0x10]));
        assert!(!is_session_packet(&[0x20]));
        assert_eq!(
            Packet::decode(&[0x06; 40]),
            Err(DecodeError::UnknownType(0x06))
        );
        assert!(matches!(
            Packet::decode(&[TYPE_KEY_MISMATCH; KEY_MISMATCH_LEN + 1]),
            Err(DecodeError::BadLength {
                len: 22,
                expected: 21,
                ..
            })
        ));
    }

    #[test]
    fn short_and_long_inputs_are_typed_errors() {
        assert_eq!(Packet::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Packet::decode(&[0x20]), Err(DecodeError::UnknownType(0x20)));
        assert!(matches!(
            Packet::decode(&[TYPE_INITIATION; INITIATION_LEN + 1]),
            Err(DecodeError::BadLength {
                len: 158,
                expected: 157,
                ..
            })
        ));
        assert!(matches!(
            Packet::decode(&[TYPE_TRANSPORT; TRANSPORT_OVERHEAD - 1]),
            Err(DecodeError::BadLength { .. })
        ));
        let mut huge = vec![0u8; MAX_PACKET_LEN + 1];
        huge[0] = TYPE_TRANSPORT;
        assert_eq!(
            Packet::decode(&huge),
            Err(DecodeError::TooLong {
                len: MAX_PACKET_LEN + 1,
                limit: MAX_PACKET_LEN
            })
        );
        huge.truncate(MAX_PACKET_LEN);
        assert!(Packet::decode(&huge).is_ok());
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(packet) = Packet::decode(&bytes) {
                let mut out = vec![0u8; bytes.len()];
                let len = packet.encode(&mut out).expect("buffer of the input size fits");
                prop_assert_eq!(&out[..len], &bytes[..]);
            }
        }

        #[test]
        fn every_fixed_length_type_round_trips(kind in 1u8..=5, fill in any::<u8>(), extra in 0usize..64) {
            let len = match kind {
                TYPE_INITIATION => INITIATION_LEN,
                TYPE_RESPONSE => RESPONSE_LEN,
                TYPE_COOKIE_REPLY => COOKIE_REPLY_LEN,
                TYPE_KEY_MISMATCH => KEY_MISMATCH_LEN,
                _ => TRANSPORT_OVERHEAD + extra,
            };
            let mut bytes = vec![fill; len];
            bytes[0] = kind;
            let packet = Packet::decode(&bytes).expect("well-formed");
            let mut out = vec![0u8; len];
            prop_assert_eq!(packet.encode(&mut out), Some(len));
            prop_assert_eq!(out, bytes);
        }
    }
}
