//! The sans-IO core in virtual time: registration and ID ownership, presence, connect,
//! relay grants, and every limit.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use sightwire_rendezvous::{CoreConfig, MAX_OUTBOX, Peer, Rate, Registry, RelayConfig};
use sightwire_signal::grant::{GrantRole, RelayGrantKey};
use sightwire_signal::{
    Body, CandidateKind, CandidateSet, CandidateUpdate, Close, CloseReason, ConnectId, Envelope,
    ErrorCode, ErrorReply, Limit,
};

fn error_of(replies: &[(u64, Envelope)]) -> ErrorReply {
    match replies {
        [
            (
                _,
                Envelope {
                    body: Body::Error(error),
                    ..
                },
            ),
        ] => *error,
        other => panic!("expected one error, got {other:?}"),
    }
}

#[test]
fn device_registers_and_learns_its_observed_address() {
    let mut h = Harness::new(CoreConfig::default());
    let replies = h.register(1);
    let [
        (
            session,
            Envelope {
                request_id: 1,
                body: Body::RegisterAck(ack),
            },
        ),
    ] = replies.as_slice()
    else {
        panic!("{replies:?}")
    };
    assert_eq!(*session, 1);
    assert_eq!(ack.observed, address(1));
    assert_eq!(ack.keepalive_interval, Duration::from_secs(20));
    assert_eq!(h.core.online(), 1);
    assert_eq!(h.core.stats().registrations, 1);
    // The certificate was recorded in the registry.
    assert_eq!(
        h.core
            .registry()
            .lookup(device_id(1))
            .unwrap()
            .unwrap()
            .certificate,
        certificate(1, 1)
    );
}

#[test]
fn impersonation_is_refused_and_the_real_registration_is_untouched() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    // The attacker knows the ID and even has the real certificate, but its Noise session
    // is keyed by its own static key.
    let attacker = Peer {
        session: 666,
        remote_static: [0xAA; 32],
        address: "203.0.113.66:1".parse().unwrap(),
    };
    let replies = h.send(&attacker, &register_message(certificate(1, 1)));
    assert_eq!(error_of(&replies).code, ErrorCode::NotAuthorized);
    assert_eq!(h.core.stats().impersonations_refused, 1);
    // Swapping its own key into the real certificate breaks the issuer's signature.
    let mut tampered = certificate(1, 1).to_bytes();
    tampered[7..39].copy_from_slice(&[0xAA; 32]);
    let mut message = register_message(certificate(1, 1));
    let at = message
        .windows(tampered.len())
        .position(|w| w[..7] == tampered[..7])
        .unwrap();
    message[at..at + tampered.len()].copy_from_slice(&tampered);
    assert_eq!(
        error_of(&h.send(&attacker, &message)).code,
        ErrorCode::CertificateInvalid
    );
    // The real device is still online on its own session.
    assert_eq!(h.core.session_of(device_id(1)), Some(1));
    assert_eq!(h.core.online(), 1);
    // A viewer still reaches the real device.
    let replies = h.send(&viewer_peer(1), &connect_message(device_id(1), false));
    assert!(
        replies
            .iter()
            .any(|(session, e)| *session == 1 && matches!(e.body, Body::ConnectOffer(_)))
    );
}

#[test]
fn certificate_problems_get_distinct_codes() {
    let mut h = Harness::new(CoreConfig::default());
    let other_issuer = sightwire_signal::cert::IssuerKey::from_seed(&[9; 32]);
    let foreign = other_issuer
        .issue(sightwire_signal::cert::CertificateFields {
            device_id: device_id(2),
            device_key: device_key(2),
            not_before: 0,
            not_after: u64::MAX,
            serial: 1,
        })
        .unwrap();
    assert_eq!(
        error_of(&h.send(&device_peer(2), &register_message(foreign))).code,
        ErrorCode::CertificateInvalid
    );
    let expired = certificate_for(device_id(2), device_key(2), 1, 0, UNIX_START - 1);
    assert_eq!(
        error_of(&h.send(&device_peer(2), &register_message(expired))).code,
        ErrorCode::CertificateExpired
    );
    assert_eq!(h.core.stats().certificates_refused, 2);
    assert_eq!(h.core.online(), 0);
}

#[test]
fn revoked_and_superseded_certificates_are_refused() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(3);
    h.core.registry_mut().revoke(device_id(3)).unwrap();
    // Revocation applies at the next lookup even though the device is online.
    assert_eq!(
        error_of(&h.send(&viewer_peer(1), &connect_message(device_id(3), false))).code,
        ErrorCode::Revoked
    );
    assert_eq!(h.core.online(), 0);
    assert_eq!(
        error_of(&h.send(&device_peer(3), &register_message(certificate(3, 1)))).code,
        ErrorCode::Revoked
    );
    // A re-issued certificate (higher serial) works and supersedes the old one for good.
    assert!(matches!(
        h.send(&device_peer(3), &register_message(certificate(3, 2)))[0]
            .1
            .body,
        Body::RegisterAck(_)
    ));
    assert_eq!(
        error_of(&h.send(&device_peer(3), &register_message(certificate(3, 1)))).code,
        ErrorCode::Revoked
    );
}

#[test]
fn require_issued_refuses_unrecorded_ids() {
    let mut h = Harness::new(CoreConfig {
        require_issued: true,
        ..CoreConfig::default()
    });
    assert_eq!(error_of(&h.register(4)).code, ErrorCode::UnknownId);
    h.core.registry_mut().record(&certificate(4, 1)).unwrap();
    assert!(matches!(h.register(4)[0].1.body, Body::RegisterAck(_)));
}

#[test]
fn keepalives_refresh_presence_and_report_the_observed_address() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    // The device's NAT rebinds to a new port: the ack tells it.
    let moved = Peer {
        address: "10.0.0.1:9999".parse().unwrap(),
        ..device_peer(1)
    };
    let replies = h.send(&moved, &keepalive_message(5));
    let [
        (
            1,
            Envelope {
                request_id: 5,
                body: Body::KeepaliveAck { observed },
            },
        ),
    ] = replies.as_slice()
    else {
        panic!("{replies:?}")
    };
    assert_eq!(*observed, moved.address);
    let replies = h.send(&viewer_peer(1), &connect_message(device_id(1), false));
    let Some(Body::ConnectResponse(response)) = replies
        .iter()
        .map(|(_, e)| &e.body)
        .find(|b| matches!(b, Body::ConnectResponse(_)))
    else {
        panic!("{replies:?}")
    };
    assert!(
        response
            .candidates
            .candidates
            .iter()
            .any(|c| c.kind == CandidateKind::ServerReflexive && c.address == moved.address)
    );
}

#[test]
fn presence_expires_without_keepalives() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    h.register(2);
    for _ in 0..5 {
        h.advance(Duration::from_secs(20));
        h.send(&device_peer(1), &keepalive_message(1));
    }
    assert_eq!(h.core.online(), 1, "device 2 stopped sending keepalives");
    assert_eq!(h.core.stats().presence_expired, 1);
    assert_eq!(
        error_of(&h.send(&viewer_peer(1), &connect_message(device_id(2), false))).code,
        ErrorCode::Offline
    );
    // Its next keepalive is told to register again.
    assert_eq!(
        error_of(&h.send(&device_peer(2), &keepalive_message(1))).code,
        ErrorCode::NotRegistered
    );
}

#[test]
fn connect_introduces_viewer_and_device_with_one_punch_key() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let viewer = viewer_peer(1);
    let replies = h.send(&viewer, &connect_message(device_id(1), false));
    assert_eq!(replies.len(), 2, "{replies:?}");
    let offer = replies.iter().find_map(|(s, e)| match &e.body {
        Body::ConnectOffer(offer) if *s == 1 => Some(offer.clone()),
        _ => None,
    });
    let response = replies.iter().find_map(|(s, e)| match &e.body {
        Body::ConnectResponse(response) if *s == viewer.session && e.request_id == 9 => {
            Some(response.clone())
        }
        _ => None,
    });
    let (offer, response) = (offer.unwrap(), response.unwrap());
    assert_eq!(offer.connect_id, response.connect_id);
    assert_eq!(offer.punch, response.punch);
    assert_eq!(offer.viewer_key, viewer.remote_static);
    assert_eq!(response.certificate, certificate(1, 1));
    assert_eq!(response.observed, viewer.address);
    assert_eq!(offer.observed, address(1));
    assert!(
        offer
            .candidates
            .candidates
            .iter()
            .any(|c| c.kind == CandidateKind::ServerReflexive && c.address == viewer.address)
    );
    assert!(
        response
            .candidates
            .candidates
            .iter()
            .any(|c| c.kind == CandidateKind::Host)
    );
    assert_eq!(h.core.pending_connects(), 1);

    // Candidate updates are forwarded both ways; a stranger cannot inject any.
    let update = |set: u32| {
        Envelope::new(
            0,
            Body::CandidateUpdate(CandidateUpdate {
                connect_id: offer.connect_id,
                candidates: CandidateSet {
                    generation: set,
                    candidates: vec![host("10.1.1.1:1")],
                },
            }),
        )
        .to_bytes()
        .unwrap()
    };
    assert_eq!(h.send(&device_peer(1), &update(1))[0].0, viewer.session);
    assert_eq!(h.send(&viewer, &update(2))[0].0, 1);
    assert_eq!(
        error_of(&h.send(&viewer_peer(2), &update(3))).code,
        ErrorCode::NotAuthorized
    );
    // Close ends the attempt and tells the other side.
    let close = Envelope::new(
        0,
        Body::Close(Close {
            connect_id: Some(offer.connect_id),
            reason: CloseReason::Rejected,
        }),
    )
    .to_bytes()
    .unwrap();
    let replies = h.send(&device_peer(1), &close);
    assert!(
        matches!(replies.as_slice(), [(s, Envelope { body: Body::Close(Close { reason: CloseReason::Rejected, .. }), .. })] if *s == viewer.session)
    );
    assert_eq!(h.core.pending_connects(), 0);
    assert_eq!(
        error_of(&h.send(&viewer, &update(4))).code,
        ErrorCode::UnknownConnect
    );
}

#[test]
fn unknown_and_offline_ids_are_distinguished() {
    let mut h = Harness::new(CoreConfig::default());
    assert_eq!(
        error_of(&h.send(&viewer_peer(1), &connect_message(device_id(42), false))).code,
        ErrorCode::UnknownId
    );
    h.register(42);
    let close = Envelope::new(
        0,
        Body::Close(Close {
            connect_id: None,
            reason: CloseReason::Shutdown,
        }),
    )
    .to_bytes()
    .unwrap();
    assert!(h.send(&device_peer(42), &close).is_empty());
    assert_eq!(
        error_of(&h.send(&viewer_peer(1), &connect_message(device_id(42), false))).code,
        ErrorCode::Offline
    );
    assert_eq!(h.core.stats().lookups_failed, 2);
}

#[test]
fn lookup_rate_limit_is_hit_and_says_so() {
    let rate = Rate {
        per_second: 1,
        burst: 3,
    };
    let mut h = Harness::new(CoreConfig {
        lookup_rate: rate,
        ..CoreConfig::default()
    });
    for _ in 0..3 {
        assert_eq!(
            error_of(&h.send(&viewer_peer(1), &connect_message(device_id(7), false))).code,
            ErrorCode::UnknownId
        );
    }
    let refused = error_of(&h.send(&viewer_peer(1), &connect_message(device_id(7), false)));
    assert_eq!(
        (refused.code, refused.limit),
        (ErrorCode::RateLimited, Some(Limit::LookupRate))
    );
    assert_eq!(refused.retry_after, Duration::from_secs(1));
    // Another source is not affected; the first recovers after retry_after.
    assert_eq!(
        error_of(&h.send(&viewer_peer(2), &connect_message(device_id(7), false))).code,
        ErrorCode::UnknownId
    );
    h.advance(refused.retry_after);
    assert_eq!(
        error_of(&h.send(&viewer_peer(1), &connect_message(device_id(7), false))).code,
        ErrorCode::UnknownId
    );
    assert_eq!(h.core.stats().rate_limited, 1);
}

#[test]
fn rate_limiter_source_table_limit_is_hit_and_says_so() {
    let mut h = Harness::new(CoreConfig {
        max_rate_sources: 2,
        lookup_rate: Rate {
            per_second: 1,
            burst: 5,
        },
        ..CoreConfig::default()
    });
    h.send(&viewer_peer(1), &connect_message(device_id(7), false));
    h.send(&viewer_peer(2), &connect_message(device_id(7), false));
    let refused = error_of(&h.send(&viewer_peer(3), &connect_message(device_id(7), false)));
    assert_eq!(
        (refused.code, refused.limit),
        (ErrorCode::RateLimited, Some(Limit::SourceTable))
    );
}

#[test]
fn presence_table_limit_is_hit_and_says_so() {
    let mut h = Harness::new(CoreConfig {
        max_presence: 3,
        ..CoreConfig::default()
    });
    for n in 1..=3 {
        h.register(n);
    }
    let refused = error_of(&h.register(4));
    assert_eq!(
        (refused.code, refused.limit),
        (ErrorCode::Capacity, Some(Limit::PresenceTable))
    );
    // Re-registering a device that is already online still works at capacity.
    assert!(matches!(h.register(2)[0].1.body, Body::RegisterAck(_)));
    assert_eq!(h.core.online(), 3);
}

#[test]
fn connect_table_limit_is_hit_and_says_so() {
    let mut h = Harness::new(CoreConfig {
        max_pending_connects: 2,
        lookup_rate: Rate {
            per_second: 100,
            burst: 100,
        },
        ..CoreConfig::default()
    });
    h.register(1);
    h.send(&viewer_peer(1), &connect_message(device_id(1), false));
    h.send(&viewer_peer(1), &connect_message(device_id(1), false));
    let refused = error_of(&h.send(&viewer_peer(1), &connect_message(device_id(1), false)));
    assert_eq!(
        (refused.code, refused.limit),
        (ErrorCode::Capacity, Some(Limit::ConnectTable))
    );
    // Attempts expire after connect_ttl and free the table.
    h.advance(Duration::from_secs(31));
    h.send(&device_peer(1), &keepalive_message(1));
    assert_eq!(h.core.pending_connects(), 0);
}

#[test]
fn outbox_limit_is_hit_and_counted() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    for _ in 0..MAX_OUTBOX + 5 {
        h.core
            .handle_message(h.now, &device_peer(1), &keepalive_message(1));
    }
    assert_eq!(h.drain().len(), MAX_OUTBOX);
    assert_eq!(h.core.stats().outbox_drops, 5);
}

#[test]
fn unpadded_lookup_gets_padding_required_not_an_amplified_answer() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let bare = Envelope::new(
        9,
        Body::ConnectRequest(sightwire_signal::ConnectRequest {
            device_id: device_id(1),
            candidates: CandidateSet::default(),
            want_relay: false,
            login: bytes::Bytes::new(),
        }),
    )
    .to_bytes()
    .unwrap();
    let replies = h.send(&viewer_peer(1), &bare);
    let refused = error_of(&replies);
    assert_eq!(refused.code, ErrorCode::PaddingRequired);
    assert!(refused.min_request_len as usize > bare.len());
    assert!(replies[0].1.encoded_len() <= bare.len());
    // The device was not bothered.
    assert!(replies.iter().all(|(s, _)| *s != 1));
}

#[test]
fn relay_grants_verify_at_the_relay_and_bind_both_peers() {
    let key = RelayGrantKey::from_bytes([0x42; 32]);
    let relay = RelayConfig {
        address: "198.51.100.1:3478".parse().unwrap(),
        key: key.clone(),
    };
    let mut h = Harness::new(CoreConfig {
        relay: Some(relay),
        ..CoreConfig::default()
    });
    h.register(1);
    let viewer = viewer_peer(1);
    let replies = h.send(&viewer, &connect_message(device_id(1), true));
    let grants: Vec<_> = replies
        .iter()
        .filter_map(|(s, e)| match &e.body {
            Body::RelayGrant(grant) => Some((*s, *grant)),
            _ => None,
        })
        .collect();
    assert_eq!(grants.len(), 2, "{replies:?}");
    let mut allocation = None;
    for (session, grant) in grants {
        let claims = key.verify(&grant.token, UNIX_START + 60).unwrap();
        assert_eq!(
            claims.role,
            if session == 1 {
                GrantRole::Device
            } else {
                GrantRole::Viewer
            }
        );
        assert_eq!(claims.device_id, device_id(1));
        assert_eq!(claims.device_key, device_key(1));
        assert_eq!(claims.viewer_key, viewer.remote_static);
        assert_eq!(
            *allocation.get_or_insert(claims.allocation_id),
            claims.allocation_id
        );
        assert!(
            key.verify(&grant.token, UNIX_START + 121).is_err(),
            "expires after the grant TTL"
        );
    }
}

#[test]
fn relay_request_without_a_relay_says_unavailable() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let replies = h.send(&viewer_peer(1), &connect_message(device_id(1), false));
    let connect_id = replies.iter().find_map(|(_, e)| match &e.body {
        Body::ConnectResponse(r) => Some(r.connect_id),
        _ => None,
    });
    let mut request = Vec::new();
    Envelope::new(
        3,
        Body::RelayRequest {
            connect_id: connect_id.unwrap(),
        },
    )
    .encode_padded(64, &mut request)
    .unwrap();
    assert_eq!(
        error_of(&h.send(&viewer_peer(1), &request)).code,
        ErrorCode::RelayUnavailable
    );
    let mut unknown = Vec::new();
    Envelope::new(
        3,
        Body::RelayRequest {
            connect_id: ConnectId(12345),
        },
    )
    .encode_padded(64, &mut unknown)
    .unwrap();
    assert_eq!(
        error_of(&h.send(&viewer_peer(1), &unknown)).code,
        ErrorCode::UnknownConnect
    );
}

#[test]
fn shutdown_tells_every_device() {
    let mut h = Harness::new(CoreConfig::default());
    for n in 1..=(MAX_OUTBOX as u32 + 10) {
        h.register(n);
        h.drain();
    }
    let mut told = 0;
    loop {
        let step = h.core.shutdown_step();
        if step == 0 {
            break;
        }
        let drained = h.drain();
        assert!(drained.iter().all(|(_, e)| matches!(
            e.body,
            Body::Close(Close {
                connect_id: None,
                reason: CloseReason::Shutdown
            })
        )));
        told += drained.len();
    }
    assert_eq!(told, MAX_OUTBOX + 10);
    assert_eq!(h.core.online(), 0);
}

#[test]
fn version_mismatch_and_garbage_get_actionable_errors() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    // version 2, request id 9, keepalive body, padded a little.
    let future = [0x08, 0x02, 0x10, 0x09, 0x1a, 0x04, 0, 0, 0, 0, 0x62, 0x00];
    let replies = h.send(&device_peer(1), &future);
    assert_eq!(replies[0].1.request_id, 9);
    assert_eq!(error_of(&replies).code, ErrorCode::VersionUnsupported);
    assert_eq!(
        error_of(&h.send(&device_peer(1), &[0xff; 40])).code,
        ErrorCode::Malformed
    );
    assert_eq!(h.core.stats().malformed, 2);
}

#[derive(Debug, Clone)]
enum Op {
    Register {
        device: u32,
        as_key_of: u32,
    },
    Keepalive {
        device: u32,
    },
    Connect {
        viewer: u32,
        device: u32,
        want_relay: bool,
    },
    Garbage {
        viewer: u32,
        bytes: Vec<u8>,
    },
    Advance {
        ms: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..6, 0u32..6).prop_map(|(device, as_key_of)| Op::Register { device, as_key_of }),
        (0u32..6).prop_map(|device| Op::Keepalive { device }),
        (0u32..4, 0u32..8, any::<bool>()).prop_map(|(viewer, device, want_relay)| Op::Connect {
            viewer,
            device,
            want_relay
        }),
        (0u32..4, prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(viewer, bytes)| Op::Garbage { viewer, bytes }),
        (0u32..40_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever happens: no panic; a device is only ever online on a session keyed by its
    /// certified key; tables stay within their limits; and nothing sent to a session that
    /// is not a registered device is larger than the request that caused it.
    #[test]
    fn invariants_hold_under_arbitrary_traffic(ops in prop::collection::vec(op(), 1..60)) {
        let relay = RelayConfig { address: "198.51.100.1:3478".parse().unwrap(), key: RelayGrantKey::from_bytes([1; 32]) };
        let mut h = Harness::new(CoreConfig { max_presence: 4, max_pending_connects: 3, relay: Some(relay), ..CoreConfig::default() });
        for op in ops {
            let (peer, message) = match op {
                Op::Register { device, as_key_of } => {
                    let peer = Peer { remote_static: device_key(as_key_of), ..device_peer(device) };
                    (peer, register_message(certificate(device, 1)))
                }
                Op::Keepalive { device } => (device_peer(device), keepalive_message(3)),
                Op::Connect { viewer, device, want_relay } => {
                    let mut message = connect_message(device_id(device), want_relay);
                    // Sometimes unpadded.
                    if viewer % 2 == 0 {
                        message = Envelope::decode(&message).unwrap().to_bytes().unwrap().to_vec();
                    }
                    (viewer_peer(viewer), message)
                }
                Op::Garbage { viewer, bytes } => (viewer_peer(viewer), bytes),
                Op::Advance { ms } => {
                    h.advance(Duration::from_millis(u64::from(ms)));
                    continue;
                }
            };
            let registered_before: Vec<u64> = (0..6).filter_map(|n| h.core.session_of(device_id(n))).collect();
            h.core.handle_message(h.now, &peer, &message);
            while let Some(t) = h.core.poll_transmit() {
                let to_device = registered_before.contains(&t.session) || (0..6).any(|n| h.core.session_of(device_id(n)) == Some(t.session));
                if t.session == peer.session && !to_device {
                    prop_assert!(t.payload.len() <= message.len(), "{} > {}", t.payload.len(), message.len());
                }
            }
            for n in 0..6 {
                if let Some(session) = h.core.session_of(device_id(n)) {
                    prop_assert_eq!(session, u64::from(n), "device {} online on a foreign session", n);
                }
            }
            prop_assert!(h.core.online() <= 4);
            prop_assert!(h.core.pending_connects() <= 3);
        }
    }
}
