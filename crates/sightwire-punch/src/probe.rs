//! The probe packets: connectivity check request, check response and NAT-opening packet.
//!
//! Layouts are in `spec/punch.md` §"Probe packets". Every probe ends in a 16-byte tag,
//! HMAC-SHA256 keyed with the attempt's [`PunchKey`] over [`TAG_DOMAIN`] followed by
//! every byte before the tag, truncated to its first 16 bytes and compared in constant
//! time. A probe that does not authenticate is dropped without further parsing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::role::Role;

/// First byte of a connectivity check request.
pub const TYPE_CHECK_REQUEST: u8 = 0x20;
/// First byte of a connectivity check response.
pub const TYPE_CHECK_RESPONSE: u8 = 0x21;
/// First byte of a NAT-opening packet (sent with a low TTL; never answered).
pub const TYPE_OPEN: u8 = 0x22;
/// Lowest first byte reserved for punch packets (`spec/README.md`).
pub const FIRST_BYTE_MIN: u8 = 0x20;
/// Highest first byte reserved for punch packets (`spec/README.md`).
pub const FIRST_BYTE_MAX: u8 = 0x2F;
/// Probe format version carried in byte 1.
pub const PROBE_VERSION: u8 = 1;
/// Length of a transaction id.
pub const TRANSACTION_ID_LEN: usize = 12;
/// Length of the truncated authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of the punch key given to both peers by the rendezvous.
pub const KEY_LEN: usize = 32;
/// Length of a request or opening packet.
pub const REQUEST_LEN: usize = 4 + TRANSACTION_ID_LEN + TAG_LEN;
/// Length of a response carrying an IPv4 observed address.
pub const RESPONSE_V4_LEN: usize = 4 + TRANSACTION_ID_LEN + 2 + 4 + TAG_LEN;
/// Length of a response carrying an IPv6 observed address.
pub const RESPONSE_V6_LEN: usize = 4 + TRANSACTION_ID_LEN + 2 + 16 + TAG_LEN;
/// Largest probe of any kind; also the size of [`crate::Transmit`]'s inline buffer.
pub const MAX_PROBE_LEN: usize = RESPONSE_V6_LEN;
/// Bytes fed to the MAC before the packet, so a punch tag can never be valid for
/// another protocol that happens to share the key.
pub const TAG_DOMAIN: &[u8] = b"sightwire punch v1";

/// Flag bit: this request nominates the pair (sent only by the controlling agent).
pub const FLAG_NOMINATE: u8 = 0x01;
/// Flag bit: the sender is the controlling agent. Binding the role into the tag stops a
/// probe reflected back at its sender from looking like one of the peer's.
pub const FLAG_CONTROLLING: u8 = 0x02;

const ADDRESS_FAMILY_V4: u8 = 4;
const ADDRESS_FAMILY_V6: u8 = 6;

type HmacSha256 = Hmac<Sha256>;

/// SHA-256's block size, the length HMAC pads its key to.
const HMAC_BLOCK_LEN: usize = 64;

/// The per-attempt secret both peers receive from the rendezvous.
///
/// Zeroed on drop; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct PunchKey([u8; KEY_LEN]);

impl PunchKey {
    /// Wraps key bytes chosen by the rendezvous (32 uniformly random bytes).
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key bytes, for mapping into a signaling message.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC pads a key shorter than the hash block (64 bytes for SHA-256) with zeros,
        // so keying with the padded block is exactly HMAC(key) and needs no fallible
        // variable-length constructor.
        let mut block = [0u8; HMAC_BLOCK_LEN];
        block[..KEY_LEN].copy_from_slice(&self.0);
        let mut mac = <HmacSha256 as KeyInit>::new(&block.into());
        block.zeroize();
        mac.update(TAG_DOMAIN);
        mac
    }
}

impl fmt::Debug for PunchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PunchKey(..)")
    }
}

/// A check's transaction id: random, chosen by the requester, echoed in the response.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct TransactionId(pub [u8; TRANSACTION_ID_LEN]);

/// What kind of probe this is and its kind-specific fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum ProbeKind {
    /// A connectivity check request; the receiver answers with a response.
    Request {
        /// Set by the controlling agent to nominate the pair it arrives on.
        nominate: bool,
    },
    /// A check response.
    Response {
        /// The source address the responder saw the request come from (the requester's
        /// address as mapped by its NAT). Informational: lets the requester learn its
        /// own mapping.
        observed: SocketAddr,
    },
    /// A NAT-opening packet: sent with a low TTL so it opens the sender's own NAT
    /// without reaching the peer's. Authenticated, never answered.
    Open,
}

/// A decoded, authenticated probe.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Probe {
    /// Which probe and its fields.
    pub kind: ProbeKind,
    /// The role of the agent that sent it.
    pub sender: Role,
    /// Transaction id (random for requests and opens, echoed in responses).
    pub transaction: TransactionId,
}

/// Why a datagram is not a valid probe.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The datagram is empty.
    #[error("empty datagram")]
    Empty,
    /// The first byte is outside the punch range `0x20..=0x2F`.
    #[error("first byte {0:#04x} is not a punch packet")]
    NotPunch(u8),
    /// The first byte is in the punch range but names no probe type of this version.
    #[error("unknown punch packet type {0:#04x}")]
    UnknownType(u8),
    /// The datagram is shorter than its type's fixed header.
    #[error("probe truncated: {actual} bytes, need {needed}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The version byte is not [`PROBE_VERSION`].
    #[error("unsupported probe version {0}")]
    UnsupportedVersion(u8),
    /// The response's address family byte is neither 4 nor 6.
    #[error("unknown address family {0}")]
    UnknownAddressFamily(u8),
    /// The datagram is longer than its type and address family allow.
    #[error("{extra} trailing bytes after a {expected}-byte probe")]
    TrailingBytes {
        /// Length the probe should have.
        expected: usize,
        /// Bytes beyond it.
        extra: usize,
    },
    /// The tag does not verify under the attempt key. Deliberately carries no detail.
    #[error("probe failed authentication")]
    BadTag,
    /// Flag bits that this version does not define are set, or the nominate flag is set
    /// on a packet other than a request.
    #[error("invalid flags {0:#04x}")]
    InvalidFlags(u8),
    /// A response's reserved byte is not zero, or a request's is not zero.
    #[error("reserved byte is {0:#04x}, must be zero")]
    ReservedNotZero(u8),
}

impl Probe {
    /// Encodes this probe, authenticated with `key`, into `out`; returns the length
    /// written (at most [`MAX_PROBE_LEN`]). Allocates nothing.
    pub fn encode(&self, key: &PunchKey, out: &mut [u8; MAX_PROBE_LEN]) -> usize {
        let mut flags = 0u8;
        if self.sender == Role::Controlling {
            flags |= FLAG_CONTROLLING;
        }
        let (first, fourth) = match self.kind {
            ProbeKind::Request { nominate } => {
                if nominate {
                    flags |= FLAG_NOMINATE;
                }
                (TYPE_CHECK_REQUEST, 0)
            }
            ProbeKind::Response { observed } => (
                TYPE_CHECK_RESPONSE,
                if observed.is_ipv4() {
                    ADDRESS_FAMILY_V4
                } else {
                    ADDRESS_FAMILY_V6
                },
            ),
            ProbeKind::Open => (TYPE_OPEN, 0),
        };
        out[0] = first;
        out[1] = PROBE_VERSION;
        out[2] = flags;
        out[3] = fourth;
        out[4..16].copy_from_slice(&self.transaction.0);
        let mut len = 16;
        if let ProbeKind::Response { observed } = self.kind {
            out[16..18].copy_from_slice(&observed.port().to_be_bytes());
            match observed.ip() {
                IpAddr::V4(v4) => {
                    out[18..22].copy_from_slice(&v4.octets());
                    len = 22;
                }
                IpAddr::V6(v6) => {
                    out[18..34].copy_from_slice(&v6.octets());
                    len = 34;
                }
            }
        }
        let mut mac = key.mac();
        mac.update(&out[..len]);
        let tag = mac.finalize().into_bytes();
        out[len..len + TAG_LEN].copy_from_slice(&tag[..TAG_LEN]);
        len + TAG_LEN
    }

    /// Decodes and authenticates a probe. Cheap structural checks run first, then the
    /// tag (one HMAC computation), then the fields; trailing bytes are an error.
    pub fn decode(bytes: &[u8], key: &PunchKey) -> Result<Probe, ProbeError> {
        let first = *bytes.first().ok_or(ProbeError::Empty)?;
        if !(FIRST_BYTE_MIN..=FIRST_BYTE_MAX).contains(&first) {
            return Err(ProbeError::NotPunch(first));
        }
        if !matches!(first, TYPE_CHECK_REQUEST | TYPE_CHECK_RESPONSE | TYPE_OPEN) {
            return Err(ProbeError::UnknownType(first));
        }
        let header: &[u8; 4] =
            bytes
                .get(..4)
                .and_then(|h| h.try_into().ok())
                .ok_or(ProbeError::Truncated {
                    needed: 4,
                    actual: bytes.len(),
                })?;
        let [_, version, flags, fourth] = *header;
        if version != PROBE_VERSION {
            return Err(ProbeError::UnsupportedVersion(version));
        }
        let expected = match first {
            TYPE_CHECK_RESPONSE => match fourth {
                ADDRESS_FAMILY_V4 => RESPONSE_V4_LEN,
                ADDRESS_FAMILY_V6 => RESPONSE_V6_LEN,
                other => return Err(ProbeError::UnknownAddressFamily(other)),
            },
            _ => REQUEST_LEN,
        };
        if bytes.len() < expected {
            return Err(ProbeError::Truncated {
                needed: expected,
                actual: bytes.len(),
            });
        }
        if bytes.len() > expected {
            return Err(ProbeError::TrailingBytes {
                expected,
                extra: bytes.len() - expected,
            });
        }
        let (body, tag) = bytes.split_at(expected - TAG_LEN);
        let mut mac = key.mac();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| ProbeError::BadTag)?;

        let allowed = if first == TYPE_CHECK_REQUEST {
            FLAG_NOMINATE | FLAG_CONTROLLING
        } else {
            FLAG_CONTROLLING
        };
        if flags & !allowed != 0 {
            return Err(ProbeError::InvalidFlags(flags));
        }
        if first != TYPE_CHECK_RESPONSE && fourth != 0 {
            return Err(ProbeError::ReservedNotZero(fourth));
        }
        let sender = if flags & FLAG_CONTROLLING != 0 {
            Role::Controlling
        } else {
            Role::Controlled
        };
        let mut transaction = [0u8; TRANSACTION_ID_LEN];
        transaction.copy_from_slice(&body[4..16]);
        let kind = match first {
            TYPE_CHECK_REQUEST => ProbeKind::Request {
                nominate: flags & FLAG_NOMINATE != 0,
            },
            TYPE_OPEN => ProbeKind::Open,
            _ => {
                let port = u16::from_be_bytes([body[16], body[17]]);
                let ip = if fourth == ADDRESS_FAMILY_V4 {
                    let mut octets = [0u8; 4];
                    octets.copy_from_slice(&body[18..22]);
                    IpAddr::V4(Ipv4Addr::from(octets))
                } else {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&body[18..34]);
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                ProbeKind::Response {
                    observed: SocketAddr::new(ip, port),
                }
            }
        };
        Ok(Probe {
            kind,
            sender,
            transaction: TransactionId(transaction),
        })
    }
}

/// True when `datagram`'s first byte belongs to punch (`0x20..=0x2F`): the driver's
/// demultiplexer hands exactly these to [`crate::Agent::handle_datagram`].
pub fn is_punch_packet(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(b) if (FIRST_BYTE_MIN..=FIRST_BYTE_MAX).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> PunchKey {
        PunchKey::new([7u8; KEY_LEN])
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(ip.into()), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(ip.into()), port)),
        ]
    }

    fn arb_probe() -> impl Strategy<Value = Probe> {
        let kind = prop_oneof![
            any::<bool>().prop_map(|nominate| ProbeKind::Request { nominate }),
            arb_addr().prop_map(|observed| ProbeKind::Response { observed }),
            Just(ProbeKind::Open),
        ];
        (kind, any::<bool>(), any::<[u8; TRANSACTION_ID_LEN]>()).prop_map(|(kind, c, t)| Probe {
            kind,
            sender: if c {
                Role::Controlling
            } else {
                Role::Controlled
            },
            transaction: TransactionId(t),
        })
    }

    proptest! {
        #[test]
        fn round_trip(probe in arb_probe()) {
            let mut buf = [0u8; MAX_PROBE_LEN];
            let len = probe.encode(&key(), &mut buf);
            prop_assert_eq!(Probe::decode(&buf[..len], &key()), Ok(probe));
        }

        #[test]
        fn any_bit_flip_is_rejected(probe in arb_probe(), bit in any::<prop::sample::Index>()) {
            let mut buf = [0u8; MAX_PROBE_LEN];
            let len = probe.encode(&key(), &mut buf);
            let bit = bit.index(len * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Probe::decode(&buf[..len], &key()).is_err());
        }

        #[test]
        fn wrong_key_is_rejected(probe in arb_probe(), other in any::<[u8; KEY_LEN]>()) {
            prop_assume!(other != [7u8; KEY_LEN]);
            let mut buf = [0u8; MAX_PROBE_LEN];
            let len = probe.encode(&key(), &mut buf);
            prop_assert_eq!(Probe::decode(&buf[..len], &PunchKey::new(other)), Err(ProbeError::BadTag));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Probe::decode(&bytes, &key());
        }
    }

    #[test]
    fn structural_errors() {
        let k = key();
        assert_eq!(Probe::decode(&[], &k), Err(ProbeError::Empty));
        assert_eq!(Probe::decode(&[0x01], &k), Err(ProbeError::NotPunch(0x01)));
        assert_eq!(
            Probe::decode(&[0x2F], &k),
            Err(ProbeError::UnknownType(0x2F))
        );
        assert_eq!(
            Probe::decode(&[0x20, 1], &k),
            Err(ProbeError::Truncated {
                needed: 4,
                actual: 2
            })
        );
        assert_eq!(
            Probe::decode(&[0x20, 2, 0, 0], &k),
            Err(ProbeError::UnsupportedVersion(2))
        );
        assert_eq!(
            Probe::decode(&[0x21, 1, 0, 5], &k),
            Err(ProbeError::UnknownAddressFamily(5))
        );
        let probe = Probe {
            kind: ProbeKind::Open,
            sender: Role::Controlled,
            transaction: TransactionId([1; TRANSACTION_ID_LEN]),
        };
        let mut buf = [0u8; MAX_PROBE_LEN];
        let len = probe.encode(&k, &mut buf);
        assert_eq!(len, REQUEST_LEN);
        assert_eq!(
            Probe::decode(&buf[..len + 1], &k),
            Err(ProbeError::TrailingBytes {
                expected: REQUEST_LEN,
                extra: 1
            })
        );
        assert_eq!(
            Probe::decode(&buf[..len - 1], &k),
            Err(ProbeError::Truncated {
                needed: REQUEST_LEN,
                actual: REQUEST_LEN - 1
            })
        );
    }

    #[test]
    fn undefined_flags_rejected_even_with_valid_tag() {
        // Build a request with an undefined flag bit and a correct tag by hand.
        let k = key();
        let mut buf = [0u8; REQUEST_LEN];
        buf[0] = TYPE_OPEN;
        buf[1] = PROBE_VERSION;
        buf[2] = FLAG_NOMINATE; // nominate is only valid on requests
        let mut mac = k.mac();
        mac.update(&buf[..16]);
        let tag = mac.finalize().into_bytes();
        buf[16..].copy_from_slice(&tag[..TAG_LEN]);
        assert_eq!(
            Probe::decode(&buf, &k),
            Err(ProbeError::InvalidFlags(FLAG_NOMINATE))
        );
    }

    #[test]
    fn punch_range() {
        assert!(is_punch_packet(&[0x20]));
        assert!(is_punch_packet(&[0x2F]));
        assert!(!is_punch_packet(&[0x30]));
        assert!(!is_punch_packet(&[]));
    }
}
