//! Typed signaling messages and their conversion to and from the protobuf schema.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use prost::Message as _;
use sightwire_id::{DeviceId, PublicKey};

use crate::cert::IdCertificate;
use crate::grant::{GRANT_TOKEN_LEN, RelayGrantToken};
use crate::{DecodeError, EncodeError, MAX_CANDIDATES, MAX_MESSAGE_LEN, PROTOCOL_VERSION, proto};

/// Length of a punch key.
pub const PUNCH_KEY_LEN: usize = 32;
/// Longest login message carried in a [`ConnectRequest`], [`Introduction`] or
/// [`Consent`].
pub const MAX_LOGIN_LEN: usize = 128;

/// Identifies one connect attempt between a viewer and a device; chosen at random by the
/// rendezvous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct ConnectId(pub u64);

/// How a candidate address was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum CandidateKind {
    /// An address of a local interface.
    Host,
    /// The address the rendezvous observed (the NAT's external mapping).
    ServerReflexive,
    /// An address learned from a peer's connectivity check.
    PeerReflexive,
    /// A relay allocation (the relay server's address).
    Relay,
}

/// A transport address a peer may be reachable at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Candidate {
    /// How it was learned.
    pub kind: CandidateKind,
    /// The UDP address.
    pub address: SocketAddr,
    /// Higher is preferred.
    pub priority: u32,
}

/// A peer's candidates for one network generation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct CandidateSet {
    /// Grows by one each time the sender's network changes: a receiver replaces its view
    /// of the sender's candidates when it grows, merges when it is equal and ignores an
    /// older one.
    pub generation: u32,
    /// At most [`MAX_CANDIDATES`] candidates.
    pub candidates: Vec<Candidate>,
}

impl CandidateSet {
    /// Generation 0 with these candidates.
    pub fn new(candidates: Vec<Candidate>) -> Self {
        Self {
            generation: 0,
            candidates,
        }
    }
}

/// Punch parameters shared by both peers of one connect attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct PunchParams {
    /// Random key authenticating connectivity checks.
    pub punch_key: [u8; PUNCH_KEY_LEN],
    /// Start punching this long after receiving the message (millisecond resolution).
    pub start_in: Duration,
}

impl std::fmt::Debug for PunchParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PunchParams")
            .field("punch_key", &"redacted")
            .field("start_in", &self.start_in)
            .finish()
    }
}

/// Device → rendezvous: register under the ID in the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Register {
    /// The device's ID certificate (structurally valid; not yet verified).
    pub certificate: IdCertificate,
    /// The device's host candidates.
    pub candidates: CandidateSet,
}

/// Rendezvous → device: registration accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct RegisterAck {
    /// The device's address as the rendezvous saw it.
    pub observed: SocketAddr,
    /// How often to send a keepalive.
    pub keepalive_interval: Duration,
    /// Presence expires after this long without a keepalive.
    pub presence_ttl: Duration,
}

/// Viewer → rendezvous: introduce me to this device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct ConnectRequest {
    /// The device ID. Six octets on the wire that are no device ID decode to
    /// [`DecodeError::NotADeviceId`].
    pub device_id: DeviceId,
    /// The viewer's host candidates.
    pub candidates: CandidateSet,
    /// Ask for relay grants right away.
    pub want_relay: bool,
    /// The first message of the viewer's password login, or empty when it relies on a
    /// key the device trusts. At most [`MAX_LOGIN_LEN`] bytes.
    pub login: Bytes,
}

/// Rendezvous → device: a viewer asks to be introduced; nothing about its address is
/// disclosed before the device consents.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Introduction {
    /// The connect attempt.
    pub connect_id: ConnectId,
    /// The viewer's static key, as authenticated by its Noise session with the rendezvous.
    pub viewer_key: PublicKey,
    /// The viewer's login opening (may be empty). At most [`MAX_LOGIN_LEN`] bytes.
    pub login: Bytes,
}

/// Device ↔ rendezvous ↔ viewer: one step of the consent exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Consent {
    /// The connect attempt.
    pub connect_id: ConnectId,
    /// The next login message, or empty. At most [`MAX_LOGIN_LEN`] bytes.
    pub login: Bytes,
    /// Device → rendezvous only: the device admits the viewer.
    pub accept: bool,
    /// Device → rendezvous only, with the device's login message:
    /// `sightwire_session::login::confirmation_digest` of the viewer's confirmation it
    /// expects. The rendezvous discloses as soon as the viewer's confirmation matches,
    /// a round trip before the device's `accept` would arrive (spec/signaling.md §4.5).
    pub confirmation_digest: Option<[u8; 32]>,
}

/// Rendezvous → viewer: the device and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct ConnectResponse {
    /// The connect attempt.
    pub connect_id: ConnectId,
    /// The device's certificate: verify it and pin the key in it.
    pub certificate: IdCertificate,
    /// The device's candidates.
    pub candidates: CandidateSet,
    /// Punch parameters.
    pub punch: PunchParams,
    /// The viewer's address as the rendezvous saw it.
    pub observed: SocketAddr,
}

/// Rendezvous → device: a viewer wants to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct ConnectOffer {
    /// The connect attempt.
    pub connect_id: ConnectId,
    /// The viewer's static key, as authenticated by its Noise session with the rendezvous.
    pub viewer_key: PublicKey,
    /// The viewer's candidates.
    pub candidates: CandidateSet,
    /// Punch parameters.
    pub punch: PunchParams,
    /// The device's address as the rendezvous saw it.
    pub observed: SocketAddr,
    /// The rendezvous resends the offer until the device answers [`Body::OfferAck`]
    /// (`spec/signaling.md` §4.6); a device acknowledges every copy that asks.
    pub ack_requested: bool,
}

/// Either peer → rendezvous → the other peer: more candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct CandidateUpdate {
    /// The connect attempt.
    pub connect_id: ConnectId,
    /// The sender's candidates.
    pub candidates: CandidateSet,
}

/// Rendezvous → peer: permission to use a relay allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct RelayGrant {
    /// The connect attempt.
    pub connect_id: ConnectId,
    /// The relay to present the token to.
    pub relay: SocketAddr,
    /// The token (see [`crate::grant`]).
    pub token: RelayGrantToken,
    /// The relay's TCP/TLS stream port, for endpoints whose UDP is blocked
    /// (`spec/stream.md`); `None`: the relay has none (0 on the wire; also what a value
    /// above 65535 reads as).
    pub relay_stream_port: Option<u16>,
}

/// Why a connect attempt or registration ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// No reason given (also what an unknown reason from a newer peer reads as).
    Unspecified,
    /// Finished normally.
    Done,
    /// The device refused the viewer.
    Rejected,
    /// Gave up waiting.
    Timeout,
    /// The sender is shutting down.
    Shutdown,
}

/// Ends a connect attempt, or a registration when `connect_id` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Close {
    /// The connect attempt, or `None` for the sender's registration.
    pub connect_id: Option<ConnectId>,
    /// Why.
    pub reason: CloseReason,
}

/// What went wrong, in terms a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The envelope's protocol version is not implemented; the client cannot talk to
    /// this server.
    VersionUnsupported,
    /// The request could not be decoded.
    Malformed,
    /// No certificate has ever been issued for this ID.
    UnknownId,
    /// The ID exists but its device is not online now; retry later.
    Offline,
    /// The session's static key is not the certified key, or the request is not allowed
    /// for this session.
    NotAuthorized,
    /// The certificate does not verify under a trusted issuer.
    CertificateInvalid,
    /// The certificate is outside its validity period; get a new one.
    CertificateExpired,
    /// The certificate has been revoked by the operator.
    Revoked,
    /// A rate limit was hit; see `limit` and `retry_after`.
    RateLimited,
    /// A table is full; see `limit`.
    Capacity,
    /// The session has no registration (presence expired or the server restarted):
    /// register again.
    NotRegistered,
    /// The connect ID is unknown or has expired.
    UnknownConnect,
    /// No relay is configured.
    RelayUnavailable,
    /// The request must be padded to at least `min_request_len` bytes.
    PaddingRequired,
    /// The server failed internally.
    Internal,
    /// The device cannot be reached by this viewer: unknown, offline, refused, or no
    /// consent in time — deliberately indistinguishable.
    Unavailable,
    /// A registration reached a node that is neither the home nor the successor of the
    /// device's ID (`spec/multinode.md` §3): the device's node list is stale or wrong.
    NotHome,
    /// A code this implementation does not know (from a newer peer).
    Unknown(i32),
}

/// Which limit a [`ErrorCode::RateLimited`] or [`ErrorCode::Capacity`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// Connect requests (ID lookups) per source.
    LookupRate,
    /// Registrations per source.
    RegisterRate,
    /// Online devices.
    PresenceTable,
    /// Pending connect attempts.
    ConnectTable,
    /// Sources tracked by the rate limiter.
    SourceTable,
    /// Queued outgoing messages.
    Outbox,
    /// Requests waiting for the registry (the database is slow or down).
    RegistryQueue,
}

/// An error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorCode,
    /// Which limit, for rate and capacity errors.
    pub limit: Option<Limit>,
    /// When to retry (zero when not applicable).
    pub retry_after: Duration,
    /// For [`ErrorCode::PaddingRequired`]: the size the request must reach.
    pub min_request_len: u32,
}

impl ErrorReply {
    /// A reply with only a code.
    pub fn code(code: ErrorCode) -> Self {
        Self {
            code,
            limit: None,
            retry_after: Duration::ZERO,
            min_request_len: 0,
        }
    }
}

/// The content of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// See [`Register`].
    Register(Register),
    /// See [`RegisterAck`].
    RegisterAck(RegisterAck),
    /// Device → rendezvous: still here.
    Keepalive,
    /// Rendezvous → device: the observed address.
    KeepaliveAck {
        /// The device's address as the rendezvous saw it.
        observed: SocketAddr,
    },
    /// See [`ConnectRequest`].
    ConnectRequest(ConnectRequest),
    /// See [`ConnectResponse`].
    ConnectResponse(ConnectResponse),
    /// See [`ConnectOffer`].
    ConnectOffer(ConnectOffer),
    /// See [`CandidateUpdate`].
    CandidateUpdate(CandidateUpdate),
    /// Either peer → rendezvous: relay grants for this connect attempt.
    RelayRequest {
        /// The connect attempt.
        connect_id: ConnectId,
    },
    /// See [`RelayGrant`].
    RelayGrant(RelayGrant),
    /// See [`Close`].
    Close(Close),
    /// See [`ErrorReply`].
    Error(ErrorReply),
    /// See [`Introduction`].
    Introduction(Introduction),
    /// See [`Consent`].
    Consent(Consent),
    /// Device → rendezvous: a keepalive whose `KeepaliveAck` the rendezvous sends only
    /// `ack_delay` later — the device learns whether its NAT mapping survives that idle
    /// gap (`spec/registration.md` §7). On the wire, a `Keepalive` with
    /// `ack_delay_ms` > 0 (a zero delay decodes as [`Body::Keepalive`]).
    KeepaliveProbe {
        /// How long the rendezvous waits before answering (whole milliseconds, at most
        /// `u32::MAX` ms).
        ack_delay: Duration,
    },
    /// Device → rendezvous (notification): the [`ConnectOffer`] of this attempt arrived;
    /// stop resending it.
    OfferAck {
        /// The connect attempt.
        connect_id: ConnectId,
    },
}

impl Body {
    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Register(_) => "register",
            Body::RegisterAck(_) => "register_ack",
            Body::Keepalive => "keepalive",
            Body::KeepaliveAck { .. } => "keepalive_ack",
            Body::ConnectRequest(_) => "connect_request",
            Body::ConnectResponse(_) => "connect_response",
            Body::ConnectOffer(_) => "connect_offer",
            Body::CandidateUpdate(_) => "candidate_update",
            Body::RelayRequest { .. } => "relay_request",
            Body::RelayGrant(_) => "relay_grant",
            Body::Close(_) => "close",
            Body::Error(_) => "error",
            Body::Introduction(_) => "introduction",
            Body::Consent(_) => "consent",
            Body::OfferAck { .. } => "offer_ack",
            Body::KeepaliveProbe { .. } => "keepalive_probe",
        }
    }
}

/// One signaling message: protocol version, request id and body.
///
/// The version is implicit: encoding writes [`PROTOCOL_VERSION`] and decoding rejects
/// anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Envelope {
    /// Chosen by the requester, echoed in the response; 0 when no response is expected.
    pub request_id: u64,
    /// The message.
    pub body: Body,
}

impl Envelope {
    /// An envelope.
    pub fn new(request_id: u64, body: Body) -> Self {
        Self { request_id, body }
    }

    /// Decodes one message: at most [`MAX_MESSAGE_LEN`] bytes, version
    /// [`PROTOCOL_VERSION`], exactly one body, every field within its limits.
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        if input.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLarge {
                len: input.len(),
                limit: MAX_MESSAGE_LEN,
            });
        }
        let raw = proto::Envelope::decode(input).map_err(DecodeError::from_prost)?;
        if raw.version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                version: raw.version,
                request_id: raw.request_id,
            });
        }
        let body = raw
            .body
            .ok_or(DecodeError::MissingField { field: "body" })?;
        Ok(Self {
            request_id: raw.request_id,
            body: Body::from_proto(raw.request_id, body)?,
        })
    }

    /// The encoded length without padding.
    pub fn encoded_len(&self) -> usize {
        self.fast_len()
            .unwrap_or_else(|| self.to_proto().encoded_len())
    }

    /// Appends the encoded message to `buf`; returns its length. Fails if it would
    /// exceed [`MAX_MESSAGE_LEN`] or the room in `buf` (nothing is written then).
    pub fn encode(&self, buf: &mut impl BufMut) -> Result<usize, EncodeError> {
        self.encode_padded(0, buf)
    }

    /// Like [`Envelope::encode`], but pads the message to at least `min_len` bytes
    /// (clients pad requests whose responses are larger; see spec/signaling.md). The
    /// padding field (number 3) is written last.
    pub fn encode_padded(
        &self,
        min_len: usize,
        buf: &mut impl BufMut,
    ) -> Result<usize, EncodeError> {
        let bare = self.encoded_len();
        let padding = padding_for(bare, min_len);
        let len = bare + padding_field_len(padding);
        if len > MAX_MESSAGE_LEN {
            return Err(EncodeError::TooLarge {
                len,
                limit: MAX_MESSAGE_LEN,
            });
        }
        if buf.remaining_mut() < len {
            return Err(EncodeError::BufferTooSmall {
                needed: len,
                remaining: buf.remaining_mut(),
            });
        }
        if !self.fast_encode(buf) {
            self.to_proto()
                .encode(buf)
                .map_err(|_| EncodeError::BufferTooSmall {
                    needed: len,
                    remaining: 0,
                })?;
        }
        if padding > 0 {
            buf.put_u8(PADDING_TAG);
            prost::encoding::encode_varint(padding as u64, buf);
            buf.put_bytes(0, padding);
        }
        Ok(len)
    }

    /// Encodes into a new buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode(&mut buf)?;
        Ok(Bytes::from(buf))
    }

    fn to_proto(&self) -> proto::Envelope {
        proto::Envelope {
            version: PROTOCOL_VERSION,
            request_id: self.request_id,
            body: Some(self.body.to_proto()),
        }
    }

    /// Length of the envelope header (version and request id fields).
    fn header_len(&self) -> usize {
        // version (tag + one-byte varint 1), request id when non-zero.
        2 + if self.request_id == 0 {
            0
        } else {
            1 + prost::encoding::encoded_len_varint(self.request_id)
        }
    }

    /// Length for the bodies encoded by hand (the keepalive hot path), byte-identical to
    /// prost's encoding (a property test checks this).
    fn fast_len(&self) -> Option<usize> {
        match &self.body {
            Body::Keepalive => Some(self.header_len() + 2),
            Body::KeepaliveAck { observed } => {
                let ack = 2 + address_len(observed);
                Some(self.header_len() + 2 + ack)
            }
            _ => None,
        }
    }

    fn write_header(&self, buf: &mut impl BufMut) {
        buf.put_u8(0x08);
        // PROTOCOL_VERSION is 1: a one-byte varint.
        buf.put_u8(PROTOCOL_VERSION as u8);
        if self.request_id != 0 {
            buf.put_u8(0x10);
            prost::encoding::encode_varint(self.request_id, buf);
        }
    }

    fn fast_encode(&self, buf: &mut impl BufMut) -> bool {
        match &self.body {
            Body::Keepalive => {
                self.write_header(buf);
                // Field 12, length-delimited, empty.
                buf.put_slice(&[0x62, 0x00]);
                true
            }
            Body::KeepaliveAck { observed } => {
                self.write_header(buf);
                let address = address_len(observed);
                // Field 13 { field 1: Address }; both lengths stay below 128 (one byte).
                buf.put_slice(&[0x6a, (2 + address) as u8, 0x0a, address as u8]);
                match observed.ip() {
                    IpAddr::V4(v4) => {
                        buf.put_slice(&[0x0a, 4]);
                        buf.put_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        buf.put_slice(&[0x0a, 16]);
                        buf.put_slice(&v6.octets());
                    }
                }
                if observed.port() != 0 {
                    buf.put_u8(0x10);
                    prost::encoding::encode_varint(u64::from(observed.port()), buf);
                }
                true
            }
            _ => false,
        }
    }
}

/// Tag of the padding field: number 3, wire type 2 (length-delimited).
const PADDING_TAG: u8 = 0x1a;

/// Encoded length of an `Address` message (without its own tag and length).
fn address_len(address: &SocketAddr) -> usize {
    let ip = if address.is_ipv4() { 4 } else { 16 };
    let port = if address.port() == 0 {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(u64::from(address.port()))
    };
    2 + ip + port
}

/// The smallest padding whose field brings `bare` to at least `min_len` bytes.
fn padding_for(bare: usize, min_len: usize) -> usize {
    if bare >= min_len {
        return 0;
    }
    // The field costs a tag byte and a varint length besides the padding itself; start
    // from the byte count and step down while the total still reaches `min_len`
    // (at most a few steps: the overhead is 2 to 3 bytes here).
    let mut padding = min_len - bare;
    while padding > 1 && bare + padding_field_len(padding - 1) >= min_len {
        padding -= 1;
    }
    padding
}

/// Encoded size of the padding field holding `padding` bytes (0 when empty: proto3 omits
/// empty fields).
fn padding_field_len(padding: usize) -> usize {
    if padding == 0 {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(padding as u64) + padding
    }
}

// ---- conversions -------------------------------------------------------------------

fn address_to_proto(address: SocketAddr) -> proto::Address {
    let ip = match address.ip() {
        IpAddr::V4(v4) => Bytes::copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => Bytes::copy_from_slice(&v6.octets()),
    };
    proto::Address {
        ip,
        port: u32::from(address.port()),
    }
}

fn address_from_proto(
    raw: Option<proto::Address>,
    field: &'static str,
) -> Result<SocketAddr, DecodeError> {
    let raw = raw.ok_or(DecodeError::MissingField { field })?;
    let ip = if let Ok(v4) = <[u8; 4]>::try_from(raw.ip.as_ref()) {
        IpAddr::V4(Ipv4Addr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(raw.ip.as_ref()) {
        IpAddr::V6(Ipv6Addr::from(v6))
    } else {
        return Err(DecodeError::InvalidField {
            field,
            reason: "IP address is neither 4 nor 16 bytes",
        });
    };
    let port = u16::try_from(raw.port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or(DecodeError::InvalidField {
            field,
            reason: "port is not in 1..=65535",
        })?;
    Ok(SocketAddr::new(ip, port))
}

fn candidates_to_proto(set: &CandidateSet) -> Option<proto::CandidateSet> {
    let candidates = set
        .candidates
        .iter()
        .map(|candidate| proto::Candidate {
            kind: match candidate.kind {
                CandidateKind::Host => proto::CandidateKind::Host,
                CandidateKind::ServerReflexive => proto::CandidateKind::ServerReflexive,
                CandidateKind::PeerReflexive => proto::CandidateKind::PeerReflexive,
                CandidateKind::Relay => proto::CandidateKind::Relay,
            } as i32,
            address: Some(address_to_proto(candidate.address)),
            priority: candidate.priority,
        })
        .collect();
    Some(proto::CandidateSet {
        generation: set.generation,
        candidates,
    })
}

/// An absent set reads as generation 0 with no candidates (proto3 omits empty messages
/// only when unset, so both forms mean "none").
fn candidates_from_proto(raw: Option<proto::CandidateSet>) -> Result<CandidateSet, DecodeError> {
    let raw = raw.unwrap_or_default();
    if raw.candidates.len() > MAX_CANDIDATES {
        return Err(DecodeError::TooManyCandidates {
            count: raw.candidates.len(),
            limit: MAX_CANDIDATES,
        });
    }
    let candidates = raw
        .candidates
        .into_iter()
        .map(|candidate| {
            let kind = match proto::CandidateKind::try_from(candidate.kind) {
                Ok(proto::CandidateKind::Host) => CandidateKind::Host,
                Ok(proto::CandidateKind::ServerReflexive) => CandidateKind::ServerReflexive,
                Ok(proto::CandidateKind::PeerReflexive) => CandidateKind::PeerReflexive,
                Ok(proto::CandidateKind::Relay) => CandidateKind::Relay,
                Ok(proto::CandidateKind::Unspecified) | Err(_) => {
                    return Err(DecodeError::InvalidField {
                        field: "candidate.kind",
                        reason: "unknown candidate kind",
                    });
                }
            };
            Ok(Candidate {
                kind,
                address: address_from_proto(candidate.address, "candidate.address")?,
                priority: candidate.priority,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CandidateSet {
        generation: raw.generation,
        candidates,
    })
}

fn certificate_from_proto(raw: &[u8]) -> Result<IdCertificate, DecodeError> {
    IdCertificate::decode(raw).map_err(DecodeError::Certificate)
}

fn fixed<const N: usize>(raw: &[u8], field: &'static str) -> Result<[u8; N], DecodeError> {
    raw.try_into().map_err(|_| DecodeError::WrongLength {
        field,
        len: raw.len(),
        expected: N,
    })
}

fn login_from_proto(raw: Bytes) -> Result<Bytes, DecodeError> {
    if raw.len() > MAX_LOGIN_LEN {
        return Err(DecodeError::InvalidField {
            field: "login",
            reason: "longer than MAX_LOGIN_LEN",
        });
    }
    Ok(raw)
}

fn connect_id_from_proto(raw: u64) -> Result<ConnectId, DecodeError> {
    if raw == 0 {
        return Err(DecodeError::InvalidField {
            field: "connect_id",
            reason: "connect id 0 is reserved",
        });
    }
    Ok(ConnectId(raw))
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn punch_to_proto(punch: &PunchParams) -> proto::PunchParams {
    proto::PunchParams {
        punch_key: Bytes::copy_from_slice(&punch.punch_key),
        start_in_ms: millis(punch.start_in),
    }
}

fn punch_from_proto(raw: Option<proto::PunchParams>) -> Result<PunchParams, DecodeError> {
    let raw = raw.ok_or(DecodeError::MissingField { field: "punch" })?;
    Ok(PunchParams {
        punch_key: fixed(&raw.punch_key, "punch.punch_key")?,
        start_in: Duration::from_millis(u64::from(raw.start_in_ms)),
    })
}

impl ErrorCode {
    fn to_proto(self) -> i32 {
        use proto::ErrorCode as P;
        match self {
            ErrorCode::VersionUnsupported => P::VersionUnsupported as i32,
            ErrorCode::Malformed => P::Malformed as i32,
            ErrorCode::UnknownId => P::UnknownId as i32,
            ErrorCode::Offline => P::Offline as i32,
            ErrorCode::NotAuthorized => P::NotAuthorized as i32,
            ErrorCode::CertificateInvalid => P::CertificateInvalid as i32,
            ErrorCode::CertificateExpired => P::CertificateExpired as i32,
            ErrorCode::Revoked => P::Revoked as i32,
            ErrorCode::RateLimited => P::RateLimited as i32,
            ErrorCode::Capacity => P::Capacity as i32,
            ErrorCode::NotRegistered => P::NotRegistered as i32,
            ErrorCode::UnknownConnect => P::UnknownConnect as i32,
            ErrorCode::RelayUnavailable => P::RelayUnavailable as i32,
            ErrorCode::PaddingRequired => P::PaddingRequired as i32,
            ErrorCode::Internal => P::Internal as i32,
            ErrorCode::Unavailable => P::Unavailable as i32,
            ErrorCode::NotHome => P::NotHome as i32,
            ErrorCode::Unknown(raw) => raw,
        }
    }

    fn from_proto(raw: i32) -> Self {
        use proto::ErrorCode as P;
        match P::try_from(raw) {
            Ok(P::VersionUnsupported) => ErrorCode::VersionUnsupported,
            Ok(P::Malformed) => ErrorCode::Malformed,
            Ok(P::UnknownId) => ErrorCode::UnknownId,
            Ok(P::Offline) => ErrorCode::Offline,
            Ok(P::NotAuthorized) => ErrorCode::NotAuthorized,
            Ok(P::CertificateInvalid) => ErrorCode::CertificateInvalid,
            Ok(P::CertificateExpired) => ErrorCode::CertificateExpired,
            Ok(P::Revoked) => ErrorCode::Revoked,
            Ok(P::RateLimited) => ErrorCode::RateLimited,
            Ok(P::Capacity) => ErrorCode::Capacity,
            Ok(P::NotRegistered) => ErrorCode::NotRegistered,
            Ok(P::UnknownConnect) => ErrorCode::UnknownConnect,
            Ok(P::RelayUnavailable) => ErrorCode::RelayUnavailable,
            Ok(P::PaddingRequired) => ErrorCode::PaddingRequired,
            Ok(P::Internal) => ErrorCode::Internal,
            Ok(P::Unavailable) => ErrorCode::Unavailable,
            Ok(P::NotHome) => ErrorCode::NotHome,
            Ok(P::Unspecified) | Err(_) => ErrorCode::Unknown(raw),
        }
    }
}

impl Limit {
    fn to_proto(limit: Option<Limit>) -> i32 {
        use proto::Limit as P;
        (match limit {
            None => P::Unspecified,
            Some(Limit::LookupRate) => P::LookupRate,
            Some(Limit::RegisterRate) => P::RegisterRate,
            Some(Limit::PresenceTable) => P::PresenceTable,
            Some(Limit::ConnectTable) => P::ConnectTable,
            Some(Limit::SourceTable) => P::SourceTable,
            Some(Limit::Outbox) => P::Outbox,
            Some(Limit::RegistryQueue) => P::RegistryQueue,
        }) as i32
    }

    fn from_proto(raw: i32) -> Option<Limit> {
        use proto::Limit as P;
        match P::try_from(raw) {
            Ok(P::LookupRate) => Some(Limit::LookupRate),
            Ok(P::RegisterRate) => Some(Limit::RegisterRate),
            Ok(P::PresenceTable) => Some(Limit::PresenceTable),
            Ok(P::ConnectTable) => Some(Limit::ConnectTable),
            Ok(P::SourceTable) => Some(Limit::SourceTable),
            Ok(P::Outbox) => Some(Limit::Outbox),
            Ok(P::RegistryQueue) => Some(Limit::RegistryQueue),
            Ok(P::Unspecified) | Err(_) => None,
        }
    }
}

impl CloseReason {
    fn to_proto(self) -> i32 {
        use proto::CloseReason as P;
        (match self {
            CloseReason::Unspecified => P::Unspecified,
            CloseReason::Done => P::Done,
            CloseReason::Rejected => P::Rejected,
            CloseReason::Timeout => P::Timeout,
            CloseReason::Shutdown => P::Shutdown,
        }) as i32
    }

    fn from_proto(raw: i32) -> Self {
        use proto::CloseReason as P;
        match P::try_from(raw) {
            Ok(P::Done) => CloseReason::Done,
            Ok(P::Rejected) => CloseReason::Rejected,
            Ok(P::Timeout) => CloseReason::Timeout,
            Ok(P::Shutdown) => CloseReason::Shutdown,
            Ok(P::Unspecified) | Err(_) => CloseReason::Unspecified,
        }
    }
}

impl Body {
    fn to_proto(&self) -> proto::envelope::Body {
        use proto::envelope::Body as P;
        match self {
            Body::Register(register) => P::Register(proto::Register {
                certificate: Bytes::copy_from_slice(&register.certificate.to_bytes()),
                candidates: candidates_to_proto(&register.candidates),
            }),
            Body::RegisterAck(ack) => P::RegisterAck(proto::RegisterAck {
                observed: Some(address_to_proto(ack.observed)),
                keepalive_interval_ms: millis(ack.keepalive_interval),
                presence_ttl_ms: millis(ack.presence_ttl),
            }),
            Body::Keepalive => P::Keepalive(proto::Keepalive::default()),
            Body::KeepaliveProbe { ack_delay } => P::Keepalive(proto::Keepalive {
                ack_delay_ms: millis(*ack_delay),
            }),
            Body::KeepaliveAck { observed } => P::KeepaliveAck(proto::KeepaliveAck {
                observed: Some(address_to_proto(*observed)),
            }),
            Body::ConnectRequest(request) => P::ConnectRequest(proto::ConnectRequest {
                device_id: Bytes::copy_from_slice(request.device_id.as_bytes()),
                candidates: candidates_to_proto(&request.candidates),
                want_relay: request.want_relay,
                login: request.login.clone(),
            }),
            Body::ConnectResponse(response) => P::ConnectResponse(proto::ConnectResponse {
                connect_id: response.connect_id.0,
                certificate: Bytes::copy_from_slice(&response.certificate.to_bytes()),
                candidates: candidates_to_proto(&response.candidates),
                punch: Some(punch_to_proto(&response.punch)),
                observed: Some(address_to_proto(response.observed)),
            }),
            Body::ConnectOffer(offer) => P::ConnectOffer(proto::ConnectOffer {
                connect_id: offer.connect_id.0,
                viewer_key: Bytes::copy_from_slice(offer.viewer_key.as_bytes()),
                candidates: candidates_to_proto(&offer.candidates),
                punch: Some(punch_to_proto(&offer.punch)),
                observed: Some(address_to_proto(offer.observed)),
                ack_requested: offer.ack_requested,
            }),
            Body::CandidateUpdate(update) => P::CandidateUpdate(proto::CandidateUpdate {
                connect_id: update.connect_id.0,
                candidates: candidates_to_proto(&update.candidates),
            }),
            Body::RelayRequest { connect_id } => P::RelayRequest(proto::RelayRequest {
                connect_id: connect_id.0,
            }),
            Body::RelayGrant(grant) => P::RelayGrant(proto::RelayGrant {
                connect_id: grant.connect_id.0,
                relay: Some(address_to_proto(grant.relay)),
                token: Bytes::copy_from_slice(&grant.token.0),
                relay_stream_port: grant.relay_stream_port.map_or(0, u32::from),
            }),
            Body::Close(close) => P::Close(proto::Close {
                connect_id: close.connect_id.map_or(0, |id| id.0),
                reason: close.reason.to_proto(),
            }),
            Body::Error(error) => P::Error(proto::Error {
                code: error.code.to_proto(),
                limit: Limit::to_proto(error.limit),
                retry_after_ms: millis(error.retry_after),
                min_request_len: error.min_request_len,
            }),
            Body::Introduction(intro) => P::Introduction(proto::Introduction {
                connect_id: intro.connect_id.0,
                viewer_key: Bytes::copy_from_slice(intro.viewer_key.as_bytes()),
                login: intro.login.clone(),
            }),
            Body::Consent(consent) => P::Consent(proto::Consent {
                connect_id: consent.connect_id.0,
                login: consent.login.clone(),
                accept: consent.accept,
                confirmation_digest: consent
                    .confirmation_digest
                    .map(|digest| Bytes::copy_from_slice(&digest))
                    .unwrap_or_default(),
            }),
            Body::OfferAck { connect_id } => P::OfferAck(proto::OfferAck {
                connect_id: connect_id.0,
            }),
        }
    }

    fn from_proto(request_id: u64, raw: proto::envelope::Body) -> Result<Self, DecodeError> {
        use proto::envelope::Body as P;
        Ok(match raw {
            P::Register(register) => Body::Register(Register {
                certificate: certificate_from_proto(&register.certificate)?,
                candidates: candidates_from_proto(register.candidates)?,
            }),
            P::RegisterAck(ack) => Body::RegisterAck(RegisterAck {
                observed: address_from_proto(ack.observed, "observed")?,
                keepalive_interval: Duration::from_millis(u64::from(ack.keepalive_interval_ms)),
                presence_ttl: Duration::from_millis(u64::from(ack.presence_ttl_ms)),
            }),
            P::Keepalive(proto::Keepalive { ack_delay_ms: 0 }) => Body::Keepalive,
            P::Keepalive(proto::Keepalive { ack_delay_ms }) => Body::KeepaliveProbe {
                ack_delay: Duration::from_millis(u64::from(ack_delay_ms)),
            },
            P::KeepaliveAck(ack) => Body::KeepaliveAck {
                observed: address_from_proto(ack.observed, "observed")?,
            },
            P::ConnectRequest(request) => {
                let octets = fixed(&request.device_id, "device_id")?;
                let candidates = candidates_from_proto(request.candidates)?;
                let login = login_from_proto(request.login)?;
                // Checked last, so the error can carry the rest of a request that is
                // otherwise well formed (a rendezvous answers it like an unknown ID).
                let device_id =
                    DeviceId::from_bytes(octets).map_err(|source| DecodeError::NotADeviceId {
                        request_id,
                        octets,
                        login: login.clone(),
                        source,
                    })?;
                Body::ConnectRequest(ConnectRequest {
                    device_id,
                    candidates,
                    want_relay: request.want_relay,
                    login,
                })
            }
            P::ConnectResponse(response) => Body::ConnectResponse(ConnectResponse {
                connect_id: connect_id_from_proto(response.connect_id)?,
                certificate: certificate_from_proto(&response.certificate)?,
                candidates: candidates_from_proto(response.candidates)?,
                punch: punch_from_proto(response.punch)?,
                observed: address_from_proto(response.observed, "observed")?,
            }),
            P::ConnectOffer(offer) => Body::ConnectOffer(ConnectOffer {
                connect_id: connect_id_from_proto(offer.connect_id)?,
                viewer_key: PublicKey::from_bytes(fixed(&offer.viewer_key, "viewer_key")?),
                candidates: candidates_from_proto(offer.candidates)?,
                punch: punch_from_proto(offer.punch)?,
                observed: address_from_proto(offer.observed, "observed")?,
                ack_requested: offer.ack_requested,
            }),
            P::CandidateUpdate(update) => Body::CandidateUpdate(CandidateUpdate {
                connect_id: connect_id_from_proto(update.connect_id)?,
                candidates: candidates_from_proto(update.candidates)?,
            }),
            P::RelayRequest(request) => Body::RelayRequest {
                connect_id: connect_id_from_proto(request.connect_id)?,
            },
            P::RelayGrant(grant) => Body::RelayGrant(RelayGrant {
                connect_id: connect_id_from_proto(grant.connect_id)?,
                relay: address_from_proto(grant.relay, "relay")?,
                token: RelayGrantToken(fixed::<GRANT_TOKEN_LEN>(&grant.token, "token")?),
                relay_stream_port: u16::try_from(grant.relay_stream_port)
                    .ok()
                    .filter(|port| *port != 0),
            }),
            P::Close(close) => Body::Close(Close {
                connect_id: (close.connect_id != 0).then_some(ConnectId(close.connect_id)),
                reason: CloseReason::from_proto(close.reason),
            }),
            P::Error(error) => Body::Error(ErrorReply {
                code: ErrorCode::from_proto(error.code),
                limit: Limit::from_proto(error.limit),
                retry_after: Duration::from_millis(u64::from(error.retry_after_ms)),
                min_request_len: error.min_request_len,
            }),
            P::Introduction(intro) => Body::Introduction(Introduction {
                connect_id: connect_id_from_proto(intro.connect_id)?,
                viewer_key: PublicKey::from_bytes(fixed(&intro.viewer_key, "viewer_key")?),
                login: login_from_proto(intro.login)?,
            }),
            P::Consent(consent) => Body::Consent(Consent {
                connect_id: connect_id_from_proto(consent.connect_id)?,
                login: login_from_proto(consent.login)?,
                accept: consent.accept,
                confirmation_digest: if consent.confirmation_digest.is_empty() {
                    None
                } else {
                    Some(fixed(&consent.confirmation_digest, "confirmation_digest")?)
                },
            }),
            P::OfferAck(ack) => Body::OfferAck {
                connect_id: connect_id_from_proto(ack.connect_id)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The hand-written keepalive encoders produce exactly prost's bytes.
        #[test]
        fn fast_path_matches_prost(request_id: u64, ip: IpAddr, port: u16) {
            let observed = SocketAddr::new(ip, port);
            for body in [Body::Keepalive, Body::KeepaliveAck { observed }] {
                let envelope = Envelope::new(request_id, body);
                let mut fast = Vec::new();
                prop_assert!(envelope.fast_encode(&mut fast));
                let slow = envelope.to_proto().encode_to_vec();
                prop_assert_eq!(&fast, &slow);
                prop_assert_eq!(envelope.fast_len(), Some(slow.len()));
            }
        }
    }
}
