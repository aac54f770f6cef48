//! Relay packets (first bytes `0x30`–`0x3F`), see `spec/relay.md`: the wire format the
//! relay server and the endpoints share, with no server code (so an endpoint depends on
//! this crate, not on the relay).

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

use sightwire_signal::grant::{GRANT_TOKEN_LEN, GrantRole, RelayGrantToken};

/// First byte of a bind request: `0x30 || grant token`, or `0x30 || grant token ||
/// cookie` when answering a [`CHALLENGE`].
pub const BIND: u8 = 0x30;
/// First byte of a bind confirmation: `0x31 || channel || role || peer bound`.
pub const BOUND: u8 = 0x31;
/// First byte of relayed data: `0x32 || channel || payload`, forwarded unchanged.
pub const DATA: u8 = 0x32;
/// First byte of a refused bind: `0x33 || reason`.
pub const BIND_REFUSED: u8 = 0x33;
/// First byte of a return-routability challenge: `0x34 || channel || role || cookie`,
/// sent to a new address that asked to take over a bound side.
pub const CHALLENGE: u8 = 0x34;

/// Length of a channel number on the wire.
pub const CHANNEL_LEN: usize = 8;
/// Length of a challenge cookie.
pub const COOKIE_LEN: usize = 16;
/// Length of a bind request.
pub const BIND_LEN: usize = 1 + GRANT_TOKEN_LEN;
/// Length of a bind request that echoes a challenge cookie.
pub const BIND_ECHO_LEN: usize = BIND_LEN + COOKIE_LEN;
/// Length of a challenge.
pub const CHALLENGE_LEN: usize = 1 + CHANNEL_LEN + 1 + COOKIE_LEN;
/// Length of a bind confirmation.
pub const BOUND_LEN: usize = 1 + CHANNEL_LEN + 2;
/// Length of a bind refusal.
pub const BIND_REFUSED_LEN: usize = 2;
/// Header length of a data packet.
pub const DATA_HEADER_LEN: usize = 1 + CHANNEL_LEN;
/// Largest payload a data packet may carry: a full 1500-byte Ethernet MTU datagram
/// minus IPv4 (20) and UDP (8) headers and the data header. The relay never sees more
/// since endpoints size their packets for the path MTU.
pub const MAX_DATA_PAYLOAD: usize = 1472 - DATA_HEADER_LEN;

/// Why the relay refused a bind (the byte after [`BIND_REFUSED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The grant is malformed, forged or minted under another key.
    InvalidGrant = 1,
    /// The grant has expired; ask the rendezvous for a new one.
    Expired = 2,
    /// The relay holds as many allocations as it is configured for.
    TableFull = 3,
    /// Reserved: sent by earlier relays that rate limited bind verification (which let
    /// garbage starve honest binds, security issue 12 finding 6). Not sent any more;
    /// treat like `InvalidGrant`.
    RateLimited = 4,
}

impl RefusalReason {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::InvalidGrant,
            2 => Self::Expired,
            3 => Self::TableFull,
            4 => Self::RateLimited,
            _ => return None,
        })
    }
}

/// A relay packet, decoded without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum RelayPacket<'a> {
    /// Bind an endpoint to the allocation its grant names.
    Bind {
        /// The grant token (not yet verified).
        token: RelayGrantToken,
        /// The cookie of a [`RelayPacket::Challenge`] this bind answers, if any.
        cookie: Option<[u8; COOKIE_LEN]>,
    },
    /// The relay bound the sender.
    Bound {
        /// Channel number to put in data packets.
        channel: u64,
        /// The role the sender was bound as.
        role: GrantRole,
        /// Whether the other side is bound too.
        peer_bound: bool,
    },
    /// Data for (or from) the other side.
    Data {
        /// Channel number.
        channel: u64,
        /// The opaque payload (a session packet).
        payload: &'a [u8],
    },
    /// The relay refused a bind.
    BindRefused {
        /// Why.
        reason: RefusalReason,
    },
    /// That side of the allocation is bound to another address: to move it here, bind
    /// again with this cookie (proves the sender receives at this address).
    Challenge {
        /// Channel number of the allocation.
        channel: u64,
        /// The role the bind asked for.
        role: GrantRole,
        /// The cookie to echo.
        cookie: [u8; COOKIE_LEN],
    },
}

/// Why bytes are not a relay packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The datagram is empty.
    #[error("empty datagram")]
    Empty,
    /// The first byte is not a relay packet type.
    #[error("first byte {0:#04x} is not a relay packet type")]
    UnknownType(u8),
    /// The packet is not the length its type requires.
    #[error("packet type {kind:#04x} is {len} bytes long, which that type does not allow")]
    BadLength {
        /// The packet type.
        kind: u8,
        /// Length of the datagram.
        len: usize,
    },
    /// A role byte other than 1 (device) or 2 (viewer).
    #[error("role byte {0} is not defined")]
    BadRole(u8),
    /// A flag byte other than 0 or 1.
    #[error("flag byte {0} is neither 0 nor 1")]
    BadFlag(u8),
    /// A refusal reason the relay does not define.
    #[error("refusal reason {0} is not defined")]
    BadReason(u8),
}

/// The role byte after the channel of a BOUND or CHALLENGE.
fn role_at(bytes: &[u8]) -> Result<GrantRole, WireError> {
    match bytes[1 + CHANNEL_LEN] {
        1 => Ok(GrantRole::Device),
        2 => Ok(GrantRole::Viewer),
        other => Err(WireError::BadRole(other)),
    }
}

fn channel_at(bytes: &[u8]) -> u64 {
    let mut channel = [0u8; CHANNEL_LEN];
    channel.copy_from_slice(&bytes[1..1 + CHANNEL_LEN]);
    u64::from_be_bytes(channel)
}

impl<'a> RelayPacket<'a> {
    /// Decodes one datagram. Every length is checked before it is used.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, WireError> {
        let (&kind, _) = bytes.split_first().ok_or(WireError::Empty)?;
        let bad_length = WireError::BadLength {
            kind,
            len: bytes.len(),
        };
        match kind {
            BIND => {
                if bytes.len() != BIND_LEN && bytes.len() != BIND_ECHO_LEN {
                    return Err(bad_length);
                }
                let token =
                    RelayGrantToken::from_slice(&bytes[1..BIND_LEN]).map_err(|_| bad_length)?;
                let cookie = match bytes.get(BIND_LEN..) {
                    Some(rest) if !rest.is_empty() => {
                        Some(rest.try_into().map_err(|_| bad_length)?)
                    }
                    _ => None,
                };
                Ok(Self::Bind { token, cookie })
            }
            BOUND => {
                if bytes.len() != BOUND_LEN {
                    return Err(bad_length);
                }
                let role = role_at(bytes)?;
                let peer_bound = match bytes[2 + CHANNEL_LEN] {
                    0 => false,
                    1 => true,
                    other => return Err(WireError::BadFlag(other)),
                };
                Ok(Self::Bound {
                    channel: channel_at(bytes),
                    role,
                    peer_bound,
                })
            }
            DATA => {
                if bytes.len() < DATA_HEADER_LEN || bytes.len() > DATA_HEADER_LEN + MAX_DATA_PAYLOAD
                {
                    return Err(bad_length);
                }
                Ok(Self::Data {
                    channel: channel_at(bytes),
                    payload: &bytes[DATA_HEADER_LEN..],
                })
            }
            BIND_REFUSED => {
                if bytes.len() != BIND_REFUSED_LEN {
                    return Err(bad_length);
                }
                let reason =
                    RefusalReason::from_byte(bytes[1]).ok_or(WireError::BadReason(bytes[1]))?;
                Ok(Self::BindRefused { reason })
            }
            CHALLENGE => {
                if bytes.len() != CHALLENGE_LEN {
                    return Err(bad_length);
                }
                let role = role_at(bytes)?;
                let cookie = bytes[2 + CHANNEL_LEN..]
                    .try_into()
                    .map_err(|_| bad_length)?;
                Ok(Self::Challenge {
                    channel: channel_at(bytes),
                    role,
                    cookie,
                })
            }
            other => Err(WireError::UnknownType(other)),
        }
    }

    /// Writes the packet into `out` and returns its length, or `None` if `out` is too
    /// small (or a data payload is over [`MAX_DATA_PAYLOAD`]).
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        match *self {
            Self::Bind { token, cookie } => {
                let len = if cookie.is_some() {
                    BIND_ECHO_LEN
                } else {
                    BIND_LEN
                };
                let out = out.get_mut(..len)?;
                out[0] = BIND;
                out[1..BIND_LEN].copy_from_slice(&token.0);
                if let Some(cookie) = cookie {
                    out[BIND_LEN..].copy_from_slice(&cookie);
                }
                Some(len)
            }
            Self::Bound {
                channel,
                role,
                peer_bound,
            } => {
                let out = out.get_mut(..BOUND_LEN)?;
                out[0] = BOUND;
                out[1..1 + CHANNEL_LEN].copy_from_slice(&channel.to_be_bytes());
                out[1 + CHANNEL_LEN] = role as u8;
                out[2 + CHANNEL_LEN] = u8::from(peer_bound);
                Some(BOUND_LEN)
            }
            Self::Data { channel, payload } => {
                if payload.len() > MAX_DATA_PAYLOAD {
                    return None;
                }
                let len = DATA_HEADER_LEN + payload.len();
                let out = out.get_mut(..len)?;
                write_data_header(out, channel);
                out[DATA_HEADER_LEN..].copy_from_slice(payload);
                Some(len)
            }
            Self::BindRefused { reason } => {
                let out = out.get_mut(..BIND_REFUSED_LEN)?;
                out[0] = BIND_REFUSED;
                out[1] = reason as u8;
                Some(BIND_REFUSED_LEN)
            }
            Self::Challenge {
                channel,
                role,
                cookie,
            } => {
                let out = out.get_mut(..CHALLENGE_LEN)?;
                out[0] = CHALLENGE;
                out[1..1 + CHANNEL_LEN].copy_from_slice(&channel.to_be_bytes());
                out[1 + CHANNEL_LEN] = role as u8;
                out[2 + CHANNEL_LEN..].copy_from_slice(&cookie);
                Some(CHALLENGE_LEN)
            }
        }
    }
}

/// Writes the [`DATA_HEADER_LEN`]-byte data header at the start of `out`, so an endpoint
/// can seal its session packet straight after it without copying.
///
/// # Panics
/// If `out` is shorter than [`DATA_HEADER_LEN`]; callers size their buffers once.
pub fn write_data_header(out: &mut [u8], channel: u64) {
    out[0] = DATA;
    out[1..DATA_HEADER_LEN].copy_from_slice(&channel.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(packet: RelayPacket<'_>) {
        let mut buf = [0u8; 1500];
        let len = packet.encode(&mut buf).unwrap();
        assert_eq!(RelayPacket::decode(&buf[..len]), Ok(packet));
        // Every shorter prefix is refused, and so is one trailing byte.
        for cut in 0..len {
            let plain_bind = buf[0] == BIND && cut == BIND_LEN;
            assert!(RelayPacket::decode(&buf[..cut]).is_err() || buf[0] == DATA || plain_bind);
        }
        if buf[0] != DATA {
            assert!(RelayPacket::decode(&buf[..len + 1]).is_err());
        }
    }

    #[test]
    fn every_packet_round_trips_and_rejects_wrong_lengths() {
        round_trip(RelayPacket::Bind {
            token: RelayGrantToken([9; GRANT_TOKEN_LEN]),
            cookie: None,
        });
        round_trip(RelayPacket::Bind {
            token: RelayGrantToken([9; GRANT_TOKEN_LEN]),
            cookie: Some([3; COOKIE_LEN]),
        });
        round_trip(RelayPacket::Challenge {
            channel: 0x0102_0304_0506_0708,
            role: GrantRole::Device,
            cookie: [4; COOKIE_LEN],
        });
        round_trip(RelayPacket::Bound {
            channel: 0x0102_0304_0506_0708,
            role: GrantRole::Viewer,
            peer_bound: true,
        });
        round_trip(RelayPacket::Data {
            channel: 7,
            payload: b"opaque",
        });
        round_trip(RelayPacket::BindRefused {
            reason: RefusalReason::TableFull,
        });
    }

    #[test]
    fn data_payload_limit() {
        let mut buf = [0u8; 1600];
        let max = [1u8; MAX_DATA_PAYLOAD];
        let len = RelayPacket::Data {
            channel: 1,
            payload: &max,
        }
        .encode(&mut buf)
        .unwrap();
        assert_eq!(len, 1472);
        assert!(RelayPacket::decode(&buf[..len]).is_ok());
        assert_eq!(
            RelayPacket::decode(&buf[..len + 1]),
            Err(WireError::BadLength {
                kind: DATA,
                len: len + 1
            })
        );
        let over = [1u8; MAX_DATA_PAYLOAD + 1];
        assert_eq!(
            RelayPacket::Data {
                channel: 1,
                payload: &over
            }
            .encode(&mut buf),
            None
        );
    }

    #[test]
    fn responses_are_never_larger_than_a_bind() {
        const {
            assert!(BOUND_LEN < BIND_LEN && BIND_REFUSED_LEN < BIND_LEN && CHALLENGE_LEN < BIND_LEN)
        };
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_accepts_only_what_encodes_back(bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
            if let Ok(packet) = RelayPacket::decode(&bytes) {
                let mut buf = [0u8; 1600];
                let len = packet.encode(&mut buf).unwrap();
                prop_assert_eq!(&buf[..len], &bytes[..]);
            }
        }
    }
}
