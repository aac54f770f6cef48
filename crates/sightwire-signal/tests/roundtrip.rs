//! Property tests: every message round-trips, size limits hold, and arbitrary bytes never
//! panic the decoders.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use sightwire_signal::cert::{CertificateFields, IdCertificate, IssuerKey};
use sightwire_signal::grant::{GRANT_TOKEN_LEN, RelayGrantToken};
use sightwire_signal::{
    Body, Candidate, CandidateKind, CandidateSet, CandidateUpdate, Close, CloseReason, CodecError,
    ConnectId, ConnectOffer, ConnectRequest, ConnectResponse, Consent, DecodeError, DeviceId,
    EncodeError, Envelope, ErrorCode, ErrorReply, Introduction, Limit, MAX_CANDIDATES,
    MAX_LOGIN_LEN, MAX_MESSAGE_LEN, PunchParams, Register, RegisterAck, RelayGrant, SignalCodec,
};
use tokio_util::codec::{Decoder, Encoder};

fn address() -> impl Strategy<Value = SocketAddr> {
    (any::<std::net::IpAddr>(), 1u16..).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn candidates() -> impl Strategy<Value = CandidateSet> {
    let kind = prop_oneof![
        Just(CandidateKind::Host),
        Just(CandidateKind::ServerReflexive),
        Just(CandidateKind::PeerReflexive),
        Just(CandidateKind::Relay),
    ];
    prop::collection::vec(
        (kind, address(), any::<u32>()).prop_map(|(kind, address, priority)| Candidate {
            kind,
            address,
            priority,
        }),
        0..=MAX_CANDIDATES,
    )
    .prop_flat_map(|candidates| {
        any::<u32>().prop_map(move |generation| CandidateSet {
            generation,
            candidates: candidates.clone(),
        })
    })
}

fn device_id() -> impl Strategy<Value = DeviceId> {
    any::<[u8; 6]>().prop_filter_map("a device ID", |octets| DeviceId::from_bytes(octets).ok())
}

fn certificate() -> impl Strategy<Value = IdCertificate> {
    (
        device_id(),
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(device_id, device_key, a, b, serial)| {
            IssuerKey::from_seed(&[1; 32])
                .issue(CertificateFields {
                    device_id,
                    device_key: device_key.into(),
                    not_before: a.min(b),
                    not_after: a.max(b),
                    serial,
                })
                .unwrap()
        })
}

fn connect_id() -> impl Strategy<Value = ConnectId> {
    (1u64..).prop_map(ConnectId)
}

fn login() -> impl Strategy<Value = bytes::Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=MAX_LOGIN_LEN).prop_map(bytes::Bytes::from)
}

fn millis() -> impl Strategy<Value = Duration> {
    any::<u32>().prop_map(|ms| Duration::from_millis(u64::from(ms)))
}

fn punch() -> impl Strategy<Value = PunchParams> {
    (any::<[u8; 32]>(), millis()).prop_map(|(punch_key, start_in)| PunchParams {
        punch_key,
        start_in,
    })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (certificate(), candidates()).prop_map(|(certificate, candidates)| Body::Register(
            Register {
                certificate,
                candidates
            }
        )),
        (address(), millis(), millis()).prop_map(|(observed, keepalive_interval, presence_ttl)| {
            Body::RegisterAck(RegisterAck {
                observed,
                keepalive_interval,
                presence_ttl,
            })
        }),
        Just(Body::Keepalive),
        address().prop_map(|observed| Body::KeepaliveAck { observed }),
        (device_id(), candidates(), any::<bool>(), login()).prop_map(
            |(device_id, candidates, want_relay, login)| {
                Body::ConnectRequest(ConnectRequest {
                    device_id,
                    candidates,
                    want_relay,
                    login,
                })
            }
        ),
        (connect_id(), any::<[u8; 32]>(), login()).prop_map(|(connect_id, viewer_key, login)| {
            Body::Introduction(Introduction {
                connect_id,
                viewer_key: viewer_key.into(),
                login,
            })
        }),
        (
            connect_id(),
            login(),
            any::<bool>(),
            proptest::option::of(any::<[u8; 32]>())
        )
            .prop_map(|(connect_id, login, accept, confirmation_digest)| {
                Body::Consent(Consent {
                    connect_id,
                    login,
                    accept,
                    confirmation_digest,
                })
            }),
        (
            connect_id(),
            certificate(),
            candidates(),
            punch(),
            address()
        )
            .prop_map(|(connect_id, certificate, candidates, punch, observed)| {
                Body::ConnectResponse(ConnectResponse {
                    connect_id,
                    certificate,
                    candidates,
                    punch,
                    observed,
                })
            }),
        (
            connect_id(),
            any::<[u8; 32]>(),
            candidates(),
            punch(),
            address(),
            any::<bool>()
        )
            .prop_map(
                |(connect_id, viewer_key, candidates, punch, observed, ack_requested)| {
                    Body::ConnectOffer(ConnectOffer {
                        connect_id,
                        viewer_key: viewer_key.into(),
                        candidates,
                        punch,
                        observed,
                        ack_requested,
                    })
                }
            ),
        connect_id().prop_map(|connect_id| Body::OfferAck { connect_id }),
        (1u32..).prop_map(|ms| Body::KeepaliveProbe {
            ack_delay: Duration::from_millis(u64::from(ms))
        }),
        (connect_id(), candidates()).prop_map(|(connect_id, candidates)| Body::CandidateUpdate(
            CandidateUpdate {
                connect_id,
                candidates
            }
        )),
        connect_id().prop_map(|connect_id| Body::RelayRequest { connect_id }),
        (
            connect_id(),
            address(),
            prop::collection::vec(any::<u8>(), GRANT_TOKEN_LEN),
            prop::option::of(1u16..)
        )
            .prop_map(
                |(connect_id, relay, token, relay_stream_port)| Body::RelayGrant(RelayGrant {
                    connect_id,
                    relay,
                    token: RelayGrantToken::from_slice(&token).unwrap(),
                    relay_stream_port,
                })
            ),
        (
            prop::option::of(connect_id()),
            prop_oneof![
                Just(CloseReason::Unspecified),
                Just(CloseReason::Done),
                Just(CloseReason::Rejected),
                Just(CloseReason::Timeout),
                Just(CloseReason::Shutdown),
            ]
        )
            .prop_map(|(connect_id, reason)| Body::Close(Close { connect_id, reason })),
        (
            prop_oneof![
                Just(ErrorCode::VersionUnsupported),
                Just(ErrorCode::UnknownId),
                Just(ErrorCode::Offline),
                Just(ErrorCode::RateLimited),
                Just(ErrorCode::PaddingRequired),
                Just(ErrorCode::Unavailable),
                Just(ErrorCode::NotHome),
                // Past the last known code (NOT_HOME, 17): decoded as unknown.
                (18i32..).prop_map(ErrorCode::Unknown),
            ],
            prop::option::of(prop_oneof![
                Just(Limit::LookupRate),
                Just(Limit::PresenceTable),
                Just(Limit::Outbox),
                Just(Limit::RegistryQueue)
            ]),
            millis(),
            any::<u32>(),
        )
            .prop_map(|(code, limit, retry_after, min_request_len)| {
                Body::Error(ErrorReply {
                    code,
                    limit,
                    retry_after,
                    min_request_len,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_message_round_trips_or_is_refused_as_too_large(request_id: u64, body in body()) {
        let envelope = Envelope::new(request_id, body);
        match envelope.to_bytes() {
            Ok(bytes) => {
                prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
                prop_assert_eq!(bytes.len(), envelope.encoded_len());
                prop_assert_eq!(Envelope::decode(&bytes), Ok(envelope));
            }
            Err(EncodeError::TooLarge { len, limit }) => {
                prop_assert!(len > limit);
                prop_assert_eq!(len, envelope.encoded_len());
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn padding_reaches_the_requested_length(request_id: u64, min_len in 0usize..=MAX_MESSAGE_LEN) {
        let envelope = Envelope::new(request_id, Body::Keepalive);
        let mut out = Vec::new();
        match envelope.encode_padded(min_len, &mut out) {
            Ok(len) => {
                prop_assert_eq!(len, out.len());
                prop_assert!(len >= min_len);
                // Padding never overshoots by more than the padding field's own header.
                prop_assert!(len <= min_len.max(envelope.encoded_len()) + 3);
                prop_assert_eq!(Envelope::decode(&out), Ok(envelope));
            }
            Err(EncodeError::TooLarge { .. }) => prop_assert!(min_len > MAX_MESSAGE_LEN - 3),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn stream_codec_round_trips_a_sequence(bodies in prop::collection::vec(body(), 1..6), split in any::<prop::sample::Index>()) {
        let envelopes: Vec<Envelope> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Envelope::new(i as u64, body))
            .filter(|envelope| envelope.encoded_len() <= MAX_MESSAGE_LEN)
            .collect();
        let mut wire = BytesMut::new();
        for envelope in &envelopes {
            SignalCodec.encode(envelope, &mut wire).unwrap();
        }
        // Deliver the stream in two arbitrary pieces.
        let at = split.index(wire.len() + 1);
        let mut second = wire.split_off(at);
        let mut buffer = wire;
        let mut decoded = Vec::new();
        while let Some(envelope) = SignalCodec.decode(&mut buffer).unwrap() {
            decoded.push(envelope);
        }
        buffer.unsplit(second.split());
        while let Some(envelope) = SignalCodec.decode(&mut buffer).unwrap() {
            decoded.push(envelope);
        }
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(decoded, envelopes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
        sightwire_signal::fuzzing::decode_all(&bytes);
    }
}

#[test]
fn oversized_datagram_is_rejected_before_parsing() {
    let input = vec![0u8; MAX_MESSAGE_LEN + 1];
    assert_eq!(
        Envelope::decode(&input),
        Err(DecodeError::TooLarge {
            len: MAX_MESSAGE_LEN + 1,
            limit: MAX_MESSAGE_LEN
        })
    );
}

#[test]
fn message_at_exactly_the_limit_is_accepted() {
    let envelope = Envelope::new(1, Body::Keepalive);
    let mut out = Vec::new();
    assert_eq!(
        envelope.encode_padded(MAX_MESSAGE_LEN, &mut out),
        Ok(MAX_MESSAGE_LEN)
    );
    assert_eq!(Envelope::decode(&out), Ok(envelope));
}

#[test]
fn too_many_candidates_cannot_be_sent_or_received() {
    let candidate = Candidate {
        kind: CandidateKind::Host,
        address: "192.0.2.1:1".parse().unwrap(),
        priority: 1,
    };
    let envelope = Envelope::new(
        1,
        Body::CandidateUpdate(CandidateUpdate {
            connect_id: ConnectId(9),
            candidates: CandidateSet::new(vec![candidate; MAX_CANDIDATES + 1]),
        }),
    );
    // It fits in size, so it encodes; the receiver enforces the count.
    let bytes = envelope.to_bytes().unwrap();
    assert_eq!(
        Envelope::decode(&bytes),
        Err(DecodeError::TooManyCandidates {
            count: MAX_CANDIDATES + 1,
            limit: MAX_CANDIDATES
        })
    );
}

#[test]
fn stream_frame_over_the_limit_is_refused_from_its_header() {
    let mut buffer = BytesMut::from(&[0x04, 0x01][..]); // announces 1025 bytes
    let error = SignalCodec.decode(&mut buffer).unwrap_err();
    assert!(matches!(
        error,
        CodecError::FrameTooLarge {
            len: 1025,
            limit: MAX_MESSAGE_LEN
        }
    ));
}

#[test]
fn encoding_into_a_small_buffer_fails_cleanly() {
    let envelope = Envelope::new(1, Body::Keepalive);
    let mut storage = [0u8; 2];
    let mut buf = &mut storage[..];
    assert!(matches!(
        envelope.encode(&mut buf),
        Err(EncodeError::BufferTooSmall { .. })
    ));
}

#[test]
fn a_login_longer_than_the_limit_is_refused() {
    let consent = |len: usize| {
        Envelope::new(
            1,
            Body::Consent(Consent {
                connect_id: ConnectId(7),
                login: bytes::Bytes::from(vec![0xAB; len]),
                accept: false,
                confirmation_digest: None,
            }),
        )
    };
    let mut buf = BytesMut::new();
    consent(MAX_LOGIN_LEN).encode(&mut buf).unwrap();
    assert!(Envelope::decode(&buf).is_ok());
    let mut buf = BytesMut::new();
    consent(MAX_LOGIN_LEN + 1).encode(&mut buf).unwrap();
    assert!(matches!(
        Envelope::decode(&buf),
        Err(DecodeError::InvalidField { field: "login", .. })
    ));
}

proptest! {
    /// Six octets on the wire decode to a `ConnectRequest` exactly when they are a device
    /// ID; otherwise to `NotADeviceId`, which carries what a rendezvous needs to answer
    /// the request like an unknown ID (spec/signaling.md §4.5).
    #[test]
    fn wire_device_id_decodes_exactly_when_it_is_a_device_id(
        octets in prop_oneof![
            any::<[u8; 6]>(),
            Just([0u8; 6]),
            Just([0xFF; 6]),
            any::<[u8; 6]>().prop_map(|mut o| { o[0] |= 1; o }),
        ],
        request_id: u64,
        login in login(),
    ) {
        let placeholder: DeviceId = "1C:C3:16:AB:CD:EF".parse().unwrap();
        let request = Envelope::new(
            request_id,
            Body::ConnectRequest(ConnectRequest {
                device_id: placeholder,
                candidates: CandidateSet::default(),
                want_relay: false,
                login: login.clone(),
            }),
        );
        let mut wire = request.to_bytes().unwrap().to_vec();
        let at = wire
            .windows(6)
            .position(|w| w == placeholder.as_bytes())
            .unwrap();
        wire[at..at + 6].copy_from_slice(&octets);
        match DeviceId::from_bytes(octets) {
            Ok(id) => {
                let decoded = Envelope::decode(&wire).unwrap();
                let Body::ConnectRequest(decoded) = decoded.body else {
                    panic!("not a connect request");
                };
                prop_assert_eq!(decoded.device_id, id);
            }
            Err(reason) => prop_assert_eq!(
                Envelope::decode(&wire),
                Err(DecodeError::NotADeviceId { request_id, octets, login, source: reason })
            ),
        }
    }
}
