//! The sans-IO core in virtual time: registration and ID ownership, presence, connect,
//! relay grants, and every limit.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use sightwire_rendezvous::{
    CONSENT_WINDOW, CoreConfig, MAX_OUTBOX, OFFER_RESEND_AT, Peer, Rate, Registry, RelayConfig,
};
use sightwire_signal::grant::{GrantRole, RelayGrantKey};
use sightwire_signal::{
    Body, Candidate, CandidateKind, CandidateSet, CandidateUpdate, Close, CloseReason, ConnectId,
    ConnectRequest, Consent, Envelope, ErrorCode, ErrorReply, Limit, MAX_MESSAGE_LEN,
};

/// Sends a connect request from `viewer` for `id` and checks that nothing at all comes
/// back before the consent window closes; returns the answer at that moment.
fn unavailable_after_window(h: &mut Harness, viewer: &Peer<u64>, message: &[u8]) -> ErrorReply {
    let replies = h.send(viewer, message);
    assert!(
        replies.iter().all(|(s, _)| *s != viewer.session),
        "{replies:?}"
    );
    h.advance(CONSENT_WINDOW - Duration::from_millis(1));
    let early = h.drain();
    assert!(early.iter().all(|(s, _)| *s != viewer.session), "{early:?}");
    h.advance(Duration::from_millis(1));
    let replies: Vec<_> = h
        .drain()
        .into_iter()
        .filter(|(s, _)| *s == viewer.session)
        .collect();
    error_of(&replies)
}

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
        h.registry
            .lookup(device_id(1))
            .unwrap()
            .unwrap()
            .certificate,
        certificate(1, 1)
    );
}

/// A node of a three-node deployment holds the IDs it is home or successor of, and
/// refuses the others with `NOT_HOME` (spec/multinode.md §3) before looking at the
/// certificate.
#[test]
fn a_node_refuses_ids_it_is_neither_home_nor_successor_of() {
    use sightwire_rendezvous::Deployment;
    use sightwire_signal::nodes::{NodeList, NodeName};
    let names: Vec<NodeName> = ["rv1", "rv2", "rv3"]
        .iter()
        .map(|n| NodeName::new(n).unwrap())
        .collect();
    let nodes = NodeList::new(names.iter().map(|n| (n.clone(), ())).collect()).unwrap();
    let mut config = CoreConfig::default();
    config.deployment = Some(Deployment::new(nodes.clone(), &names[0]).unwrap());
    let mut h = Harness::new(config);
    let (mut served, mut refused) = (0, 0);
    for n in 1..=60 {
        let replies = h.register(n);
        if nodes.serves(0, device_id(n).to_bytes()) {
            assert!(
                matches!(
                    replies.as_slice(),
                    [(
                        _,
                        Envelope {
                            body: Body::RegisterAck(_),
                            ..
                        }
                    )]
                ),
                "{n}: {replies:?}"
            );
            served += 1;
        } else {
            assert_eq!(error_of(&replies).code, ErrorCode::NotHome, "{n}");
            refused += 1;
        }
    }
    // With three nodes a node is home or successor of two IDs in three.
    assert!((30..=50).contains(&served), "served {served} of 60");
    assert_eq!(h.core.online(), served);
    assert_eq!(h.core.stats().not_home, refused);
    assert_eq!(h.core.stats().certificates_refused, 0);
    // Even a forged certificate gets NOT_HOME, not CERTIFICATE_INVALID: the answer
    // depends on public things only.
    let n = (1..)
        .find(|n| !nodes.serves(0, device_id(*n).to_bytes()))
        .unwrap();
    let mut message = register_message(certificate(n, 1));
    let bytes = certificate(n, 1).to_bytes();
    let at = message
        .windows(bytes.len())
        .position(|w| w == &bytes[..])
        .unwrap();
    // The last byte of the issuer's signature.
    message[at + bytes.len() - 1] ^= 1;
    let replies = h.send(&device_peer(n), &message);
    assert_eq!(error_of(&replies).code, ErrorCode::NotHome);
}

#[test]
fn impersonation_is_refused_and_the_real_registration_is_untouched() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    // The attacker knows the ID and even has the real certificate, but its Noise session
    // is keyed by its own static key.
    let attacker = Peer::new(666, [0xAA; 32].into(), "203.0.113.66:1".parse().unwrap());
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
    let replies = h.connect_and_accept(&viewer_peer(1), 1, false);
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
    h.registry.revoke(device_id(3)).unwrap();
    // Revocation applies at the next lookup even though the device is online; the viewer
    // hears what it hears for any unreachable ID.
    assert_eq!(
        unavailable_after_window(
            &mut h,
            &viewer_peer(1),
            &connect_message(device_id(3), false)
        )
        .code,
        ErrorCode::Unavailable
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
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.require_issued = true;
        value
    });
    assert_eq!(error_of(&h.register(4)).code, ErrorCode::UnknownId);
    h.registry.record(&certificate(4, 1)).unwrap();
    assert!(matches!(h.register(4)[0].1.body, Body::RegisterAck(_)));
}

#[test]
fn keepalives_refresh_presence_and_report_the_observed_address() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    // The device's NAT rebinds to a new port: the ack tells it.
    let moved = {
        let mut value = device_peer(1);
        value.address = "10.0.0.1:9999".parse().unwrap();
        value
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
    let replies = h.connect_and_accept(&viewer_peer(1), 1, false);
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
        unavailable_after_window(
            &mut h,
            &viewer_peer(1),
            &connect_message(device_id(2), false)
        )
        .code,
        ErrorCode::Unavailable
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
    let replies = h.connect_and_accept(&viewer, 1, false);
    assert_eq!(replies.len(), 3, "{replies:?}");
    // In this order: the introduction, the offer to the device, the response.
    assert!(matches!(replies[0].1.body, Body::Introduction(_)));
    assert!(matches!(replies[1].1.body, Body::ConnectOffer(_)));
    assert!(matches!(replies[2].1.body, Body::ConnectResponse(_)));
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
fn lookup_rate_limit_is_hit_and_says_so() {
    let rate = Rate::new(1, 3);
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.lookup_rate = rate;
        value
    });
    for request_id in 0..3 {
        let message = connect_message_with(device_id(7), false, request_id, &[]);
        assert!(h.send(&viewer_peer(1), &message).is_empty());
    }
    let message = connect_message_with(device_id(7), false, 3, &[]);
    let refused = error_of(&h.send(&viewer_peer(1), &message));
    assert_eq!(
        (refused.code, refused.limit),
        (ErrorCode::RateLimited, Some(Limit::LookupRate))
    );
    assert_eq!(refused.retry_after, Duration::from_secs(1));
    // Another source is not affected; the first recovers after retry_after.
    assert!(
        h.send(&viewer_peer(2), &connect_message(device_id(7), false))
            .is_empty()
    );
    h.advance(refused.retry_after);
    h.drain();
    let message = connect_message_with(device_id(7), false, 4, &[]);
    assert!(h.send(&viewer_peer(1), &message).is_empty());
    assert_eq!(h.core.stats().rate_limited, 1);
}

#[test]
fn rate_limiter_source_table_limit_is_hit_and_says_so() {
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.max_rate_sources = 2;
        value.lookup_rate = Rate::new(1, 5);
        value
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
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.max_presence = 3;
        value
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
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.max_pending_connects = 2;
        value.lookup_rate = Rate::new(100, 100);
        value
    });
    h.register(1);
    h.send(&viewer_peer(1), &connect_message(device_id(1), false));
    h.send(&viewer_peer(2), &connect_message(device_id(1), false));
    let refused = error_of(&h.send(&viewer_peer(3), &connect_message(device_id(1), false)));
    assert_eq!(
        (refused.code, refused.limit),
        (ErrorCode::Capacity, Some(Limit::ConnectTable))
    );
    // Attempts without consent end at the consent deadline and free the table.
    h.advance(CONSENT_WINDOW);
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
        Body::ConnectRequest(ConnectRequest {
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
    let relay = RelayConfig::new("198.51.100.1:3478".parse().unwrap(), Some(443), key.clone());
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.relay = Some(relay);
        value
    });
    h.register(1);
    let viewer = viewer_peer(1);
    let replies = h.connect_and_accept(&viewer, 1, true);
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
        assert_eq!(grant.relay_stream_port, Some(443));
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
    let replies = h.connect_and_accept(&viewer_peer(1), 1, false);
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
        login: bool,
    },
    /// A `CONSENT` for one of the connect ids seen so far, from any session.
    Consent {
        from_device: bool,
        who: u32,
        pick: usize,
        login: bool,
        accept: bool,
    },
    /// A candidate update, relay request or close for a seen connect id, from anyone.
    Other {
        from_device: bool,
        who: u32,
        pick: usize,
        kind: u8,
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
        (0u32..4, 0u32..8, any::<bool>(), any::<bool>()).prop_map(
            |(viewer, device, want_relay, login)| Op::Connect {
                viewer,
                device,
                want_relay,
                login
            }
        ),
        (
            any::<bool>(),
            0u32..6,
            any::<usize>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(from_device, who, pick, login, accept)| Op::Consent {
                from_device,
                who,
                pick,
                login,
                accept
            }),
        (any::<bool>(), 0u32..6, any::<usize>(), 0u8..3).prop_map(
            |(from_device, who, pick, kind)| Op::Other {
                from_device,
                who,
                pick,
                kind
            }
        ),
        (0u32..4, prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(viewer, bytes)| Op::Garbage { viewer, bytes }),
        (0u32..4_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Checks the consent invariant on everything the core sent: no `CONNECT_RESPONSE`,
/// `CONNECT_OFFER`, `RELAY_GRANT` or `CANDIDATE_UPDATE` for an attempt whose introduced
/// device session has not sent `accept`; an `INTRODUCTION` goes only to the device
/// session the ID is registered on.
fn check_consent(
    sent: &[(u64, Envelope)],
    introduced: &mut std::collections::HashMap<ConnectId, u64>,
    accepted: &std::collections::HashSet<ConnectId>,
    online: &[(u64, u32)],
) -> Result<(), TestCaseError> {
    for (session, envelope) in sent {
        let disclosed = match &envelope.body {
            Body::Introduction(intro) => {
                prop_assert!(online.iter().any(|(s, _)| s == session));
                introduced.insert(intro.connect_id, *session);
                None
            }
            Body::ConnectResponse(r) => Some(r.connect_id),
            Body::ConnectOffer(o) => Some(o.connect_id),
            Body::RelayGrant(g) => Some(g.connect_id),
            Body::CandidateUpdate(u) => Some(u.connect_id),
            _ => None,
        };
        if let Some(id) = disclosed {
            prop_assert!(accepted.contains(&id), "disclosed {:?} without accept", id);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happens: no panic; a device is only ever online on a session keyed by its
    /// certified key; tables stay within their limits; nothing sent to a session that
    /// is not a registered device is larger than the request that caused it; and no
    /// sequence of messages from any sessions discloses an attempt without the accept of
    /// its introduced device session.
    #[test]
    fn invariants_hold_under_arbitrary_traffic(ops in prop::collection::vec(op(), 1..80)) {
        let relay = RelayConfig::new("198.51.100.1:3478".parse().unwrap(), Some(443), RelayGrantKey::from_bytes([1; 32]));
        let mut h = Harness::new({ let mut value = CoreConfig::default(); value.max_presence = 4; value.max_pending_connects = 3; value.relay = Some(relay); value });
        let mut introduced = std::collections::HashMap::new();
        let mut accepted = std::collections::HashSet::new();
        let mut seen: Vec<ConnectId> = Vec::new();
        for op in ops {
            let online: Vec<(u64, u32)> = (0..6).filter_map(|n| h.core.session_of(device_id(n)).map(|s| (s, n))).collect();
            let (peer, message) = match op {
                Op::Register { device, as_key_of } => {
                    let peer = { let mut value = device_peer(device); value.remote_static = device_key(as_key_of); value };
                    (peer, register_message(certificate(device, 1)))
                }
                Op::Keepalive { device } => (device_peer(device), keepalive_message(3)),
                Op::Connect { viewer, device, want_relay, login } => {
                    let login: &[u8] = if login { &[0x42; 32] } else { &[] };
                    let mut message = connect_message_with(device_id(device), want_relay, 9, login);
                    // Sometimes unpadded.
                    if viewer % 2 == 0 && device % 2 == 0 {
                        message = Envelope::decode(&message).unwrap().to_bytes().unwrap().to_vec();
                    }
                    (viewer_peer(viewer), message)
                }
                Op::Consent { from_device, who, pick, login, accept } => {
                    let Some(id) = (!seen.is_empty()).then(|| seen[pick % seen.len()]) else { continue };
                    let peer = if from_device { device_peer(who) } else { viewer_peer(who) };
                    if accept && introduced.get(&id) == Some(&peer.session) {
                        accepted.insert(id);
                    }
                    let login: &[u8] = if login { &[0x43; 65] } else { &[] };
                    (peer, consent_message(id, login, accept))
                }
                Op::Other { from_device, who, pick, kind } => {
                    let Some(connect_id) = (!seen.is_empty()).then(|| seen[pick % seen.len()]) else { continue };
                    let peer = if from_device { device_peer(who) } else { viewer_peer(who) };
                    let body = match kind {
                        0 => Body::CandidateUpdate(CandidateUpdate { connect_id, candidates: CandidateSet::new(vec![host("10.1.1.1:1")]) }),
                        1 => Body::RelayRequest { connect_id },
                        _ => Body::Close(Close { connect_id: Some(connect_id), reason: CloseReason::Done }),
                    };
                    let mut message = Vec::new();
                    Envelope::new(5, body).encode_padded(MAX_MESSAGE_LEN, &mut message).unwrap();
                    (peer, message)
                }
                Op::Garbage { viewer, bytes } => (viewer_peer(viewer), bytes),
                Op::Advance { ms } => {
                    h.advance(Duration::from_millis(u64::from(ms)));
                    let sent = h.drain();
                    check_consent(&sent, &mut introduced, &accepted, &online)?;
                    continue;
                }
            };
            let registered_before: Vec<u64> = online.iter().map(|(s, _)| *s).collect();
            h.core.handle_message(h.now, &peer, &message);
            h.answer_queries();
            let mut sent = Vec::new();
            while let Some(t) = h.core.poll_transmit() {
                let to_device = registered_before.contains(&t.session) || (0..6).any(|n| h.core.session_of(device_id(n)) == Some(t.session));
                if t.session == peer.session && !to_device {
                    prop_assert!(t.payload.len() <= message.len(), "{} > {}", t.payload.len(), message.len());
                }
                sent.push((t.session, Envelope::decode(&t.payload).unwrap()));
            }
            for (_, envelope) in &sent {
                let id = match &envelope.body {
                    Body::Introduction(i) => Some(i.connect_id),
                    Body::Consent(c) => Some(c.connect_id),
                    _ => None,
                };
                if let Some(id) = id && !seen.contains(&id) {
                    seen.push(id);
                }
            }
            check_consent(&sent, &mut introduced, &accepted, &online)?;
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

fn to(replies: &[(u64, Envelope)], session: u64) -> Vec<Envelope> {
    replies
        .iter()
        .filter(|(s, _)| *s == session)
        .map(|(_, e)| e.clone())
        .collect()
}

fn generous() -> CoreConfig {
    let many = Rate::new(1_000, 1_000);
    {
        let mut value = CoreConfig::default();
        value.lookup_rate = many;
        value.identity_lookup_rate = many;
        value.session_message_rate = many;
        value.introduction_rate_per_minute = many;
        value
    }
}

#[test]
fn finding_3_unknown_offline_and_refused_look_the_same() {
    let mut h = Harness::new(CoreConfig::default());
    // 43 goes offline, 44 refuses, 45 stays silent, 42 was never issued.
    for n in [43, 44, 45] {
        h.register(n);
    }
    let close = Envelope::new(
        0,
        Body::Close(Close {
            connect_id: None,
            reason: CloseReason::Shutdown,
        }),
    )
    .to_bytes()
    .unwrap();
    h.send(&device_peer(43), &close);
    let viewers: Vec<_> = (1..=4).map(viewer_peer).collect();
    let mut sent = Vec::new();
    for (viewer, n) in viewers.iter().zip([42, 43, 44, 45]) {
        sent.extend(h.send(viewer, &connect_message(device_id(n), false)));
    }
    let refusing = introduction_to(&sent, device_peer(44).session).unwrap();
    sent.extend(h.send(&device_peer(44), &consent_message(refusing, &[], false)));
    for viewer in &viewers {
        assert!(
            to(&sent, viewer.session).is_empty(),
            "nothing before the deadline"
        );
    }
    h.advance(CONSENT_WINDOW - Duration::from_millis(1));
    let early = h.drain();
    for viewer in &viewers {
        assert!(to(&early, viewer.session).is_empty(), "{early:?}");
    }
    h.advance(Duration::from_millis(1));
    let answers = h.drain();
    let mut bodies = Vec::new();
    for viewer in &viewers {
        let mine = to(&answers, viewer.session);
        assert_eq!(mine.len(), 1, "{answers:?}");
        bodies.push(mine[0].clone());
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert!(matches!(bodies[0].body, Body::Error(e) if e.code == ErrorCode::Unavailable));
    assert_eq!(h.core.pending_connects(), 0);
}

#[test]
fn finding_3_no_address_before_consent() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let viewer = viewer_peer(1);
    let replies = h.send(
        &viewer,
        &connect_message_with(device_id(1), false, 9, &[0x42; 32]),
    );
    // Only the introduction, to the device: the viewer's key and login, no address.
    assert_eq!(replies.len(), 1, "{replies:?}");
    let (
        session,
        Envelope {
            body: Body::Introduction(intro),
            ..
        },
    ) = &replies[0]
    else {
        panic!("{replies:?}")
    };
    assert_eq!(*session, device_peer(1).session);
    assert_eq!(intro.viewer_key, viewer.remote_static);
    assert_eq!(&intro.login[..], &[0x42; 32]);
    let encoded = replies[0].1.to_bytes().unwrap();
    let std::net::IpAddr::V4(viewer_ip) = viewer.address.ip() else {
        panic!()
    };
    for needle in [&viewer_ip.octets()[..], &[10, 9, 9, 9][..]] {
        assert!(
            !encoded.windows(4).any(|w| w == needle),
            "viewer address leaked"
        );
    }
    // The device's login message reaches the viewer without any device address.
    let relayed = h.send(
        &device_peer(1),
        &consent_message(intro.connect_id, &[0x43; 65], false),
    );
    let mine = to(&relayed, viewer.session);
    assert!(
        matches!(&mine[..], [Envelope { request_id: 9, body: Body::Consent(c) }] if c.login[..] == [0x43; 65] && !c.accept)
    );
    let encoded = mine[0].to_bytes().unwrap();
    let std::net::IpAddr::V4(device_ip) = address(1).ip() else {
        panic!()
    };
    for needle in [&device_ip.octets()[..], &[192, 168, 1, 20][..]] {
        assert!(
            !encoded.windows(4).any(|w| w == needle),
            "device address leaked"
        );
    }
    // Addresses travel only on accept.
    let accepted = h.send(
        &device_peer(1),
        &consent_message(intro.connect_id, &[], true),
    );
    assert!(matches!(accepted[0].1.body, Body::ConnectOffer(_)));
    assert!(matches!(
        &to(&accepted, viewer.session)[..],
        [Envelope {
            body: Body::ConnectResponse(_),
            ..
        }]
    ));
    assert_eq!(h.core.stats().disclosures, 1);
}

#[test]
fn finding_3_consent_exchange_is_relayed_only_between_the_attempts_sessions() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    h.register(2);
    let (viewer, stranger) = (viewer_peer(1), viewer_peer(2));
    let replies = h.send(
        &viewer,
        &connect_message_with(device_id(1), false, 9, &[1; 32]),
    );
    let id = introduction_to(&replies, 1).unwrap();
    // A stranger's and another device's consent do nothing.
    assert!(
        h.send(&stranger, &consent_message(id, &[7; 65], false))
            .is_empty()
    );
    assert!(
        h.send(&device_peer(2), &consent_message(id, &[7; 65], true))
            .is_empty()
    );
    // The viewer cannot speak before the device, nor accept for it.
    assert!(
        h.send(&viewer, &consent_message(id, &[3; 64], false))
            .is_empty()
    );
    assert!(h.send(&viewer, &consent_message(id, &[], true)).is_empty());
    // One login message each way.
    let relayed = h.send(&device_peer(1), &consent_message(id, &[2; 65], false));
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].0, viewer.session);
    assert!(
        h.send(&device_peer(1), &consent_message(id, &[9; 65], false))
            .is_empty()
    );
    let relayed = h.send(&viewer, &consent_message(id, &[3; 64], false));
    assert!(
        matches!(&relayed[..], [(1, Envelope { request_id: 0, body: Body::Consent(c) })] if c.login[..] == [3; 64])
    );
    assert!(
        h.send(&viewer, &consent_message(id, &[4; 64], false))
            .is_empty()
    );
    // A retransmitted request (something was lost) resends what was sent so far and
    // nothing new: the introduction to the device, the device's login message to the
    // viewer.
    let again = h.send(
        &viewer,
        &connect_message_with(device_id(1), false, 9, &[1; 32]),
    );
    assert!(
        matches!(&to(&again, viewer.session)[..], [Envelope { request_id: 9, body: Body::Consent(c) }] if c.login[..] == [2; 65])
    );
    assert_eq!(introduction_to(&again, 1), Some(id));
    assert_eq!(again.len(), 2);
    // The same login message again from either side is a retransmission: forwarded.
    let repeated = h.send(&device_peer(1), &consent_message(id, &[2; 65], false));
    assert_eq!(to(&repeated, viewer.session).len(), 1);
    let repeated = h.send(&viewer, &consent_message(id, &[3; 64], false));
    assert_eq!(repeated.len(), 1);
    assert_eq!(h.core.pending_connects(), 1);
    assert_eq!(h.core.stats().disclosures, 0);
    assert_eq!(h.core.stats().logins_relayed, 4);
    // Only the device's accept discloses.
    let accepted = h.send(&device_peer(1), &consent_message(id, &[], true));
    assert!(matches!(
        &to(&accepted, viewer.session)[..],
        [Envelope {
            body: Body::ConnectResponse(_),
            ..
        }]
    ));
}

/// A `CONSENT` from the device carrying its login message and the digest of the
/// confirmation it expects.
fn consent_with_digest(connect_id: ConnectId, login: &[u8], digest: [u8; 32]) -> Vec<u8> {
    Envelope::new(
        0,
        Body::Consent(Consent {
            connect_id,
            login: bytes::Bytes::copy_from_slice(login),
            accept: false,
            confirmation_digest: Some(digest),
        }),
    )
    .to_bytes()
    .unwrap()
    .to_vec()
}

/// Issue 14: the device's digest of the confirmation it expects lets the rendezvous
/// disclose on the viewer's confirmation itself, a round trip before the device's
/// accept; any other confirmation discloses nothing (and the viewer hears UNAVAILABLE
/// at the deadline, exactly as for a wrong password without the digest).
#[test]
fn a_confirmation_matching_the_devices_digest_discloses_at_once() {
    use sightwire_session::login::confirmation_digest;
    let right = [3u8; 33];
    for (confirmation, discloses) in [(right, true), ([4u8; 33], false)] {
        let mut h = Harness::new(CoreConfig::default());
        h.register(1);
        let viewer = viewer_peer(1);
        let replies = h.send(
            &viewer,
            &connect_message_with(device_id(1), false, 9, &[1; 34]),
        );
        let id = introduction_to(&replies, 1).unwrap();
        let relayed = h.send(
            &device_peer(1),
            &consent_with_digest(id, &[2; 66], confirmation_digest(&right)),
        );
        // The digest is for the rendezvous alone.
        assert!(
            matches!(&to(&relayed, viewer.session)[..], [Envelope { body: Body::Consent(c), .. }] if c.confirmation_digest.is_none() && c.login[..] == [2; 66])
        );
        let answered = h.send(&viewer, &consent_message(id, &confirmation, false));
        let to_device = to(&answered, 1);
        // The confirmation reaches the device either way (it checks it itself)...
        assert!(
            matches!(to_device.first(), Some(Envelope { body: Body::Consent(c), .. }) if c.login[..] == confirmation),
            "{to_device:?}"
        );
        let to_viewer = to(&answered, viewer.session);
        if discloses {
            // ...and, when it matches, the offer follows it and the viewer has its
            // answer now, with no accept from the device.
            assert!(
                matches!(
                    &to_device[..],
                    [
                        _,
                        Envelope {
                            body: Body::ConnectOffer(_),
                            ..
                        }
                    ]
                ),
                "{to_device:?}"
            );
            assert!(
                matches!(
                    &to_viewer[..],
                    [Envelope {
                        request_id: 9,
                        body: Body::ConnectResponse(_)
                    }]
                ),
                "{to_viewer:?}"
            );
            assert_eq!(h.core.stats().disclosed_on_digest, 1);
            // The device's accept, a round trip later, gets the offer again (a repeated
            // accept), not a second disclosure.
            let late = h.send(&device_peer(1), &consent_message(id, &[], true));
            assert!(to(&late, viewer.session).is_empty());
            assert_eq!(h.core.stats().disclosures, 1);
        } else {
            assert_eq!(to_device.len(), 1, "{to_device:?}");
            assert!(to_viewer.is_empty(), "{to_viewer:?}");
            assert_eq!(h.core.stats().disclosures, 0);
            assert_eq!(h.core.stats().disclosed_on_digest, 0);
            let error = unavailable_after_window(&mut h, &viewer, &[]);
            assert_eq!(error.code, ErrorCode::Unavailable);
        }
    }
}

/// Each side's `start_in` makes up for the other's longer signaling delay, as measured
/// during the consent exchange: both reach the punch start at the same moment, the
/// margin after the slower one heard from the rendezvous (spec/punch.md §3).
#[test]
fn each_side_starts_punching_when_the_slower_one_can() {
    use sightwire_session::login::confirmation_digest;
    let confirmation = [3u8; 33];
    let margin = CoreConfig::default().punch_start_delay;
    // (device round trip, viewer round trip) → (device start_in, viewer start_in)
    for (device_rtt, viewer_rtt) in [(80, 20), (20, 80), (50, 50)] {
        let mut h = Harness::new(CoreConfig::default());
        h.register(1);
        let viewer = viewer_peer(1);
        let replies = h.send(
            &viewer,
            &connect_message_with(device_id(1), false, 9, &[1; 34]),
        );
        let id = introduction_to(&replies, 1).unwrap();
        h.advance(Duration::from_millis(device_rtt));
        h.send(
            &device_peer(1),
            &consent_with_digest(id, &[2; 66], confirmation_digest(&confirmation)),
        );
        h.advance(Duration::from_millis(viewer_rtt));
        let answered = h.send(&viewer, &consent_message(id, &confirmation, false));
        let offer = to(&answered, 1)
            .into_iter()
            .find_map(|e| match e.body {
                Body::ConnectOffer(offer) => Some(offer),
                _ => None,
            })
            .expect("disclosed on the digest");
        let response = to(&answered, viewer.session)
            .into_iter()
            .find_map(|e| match e.body {
                Body::ConnectResponse(response) => Some(response),
                _ => None,
            })
            .expect("the viewer's answer");
        let (device_one_way, viewer_one_way) = (
            Duration::from_millis(device_rtt / 2),
            Duration::from_millis(viewer_rtt / 2),
        );
        let slower = device_one_way.max(viewer_one_way);
        assert_eq!(
            offer.punch.start_in,
            margin + (slower - device_one_way),
            "device {device_rtt} ms, viewer {viewer_rtt} ms"
        );
        assert_eq!(
            response.punch.start_in,
            margin + (slower - viewer_one_way),
            "device {device_rtt} ms, viewer {viewer_rtt} ms"
        );
        assert_eq!(offer.punch.punch_key, response.punch.punch_key);
    }
}

proptest! {
    /// Both sides reach the start together (unless a skew is capped), never sooner than
    /// the margin after their own `start_in` arrived, and never wait beyond the cap.
    #[test]
    fn punch_start_delays_meet_at_one_moment(
        margin_ms in 0u64..200,
        viewer_rtt_us in proptest::option::of(0u64..5_000_000),
        device_rtt_us in proptest::option::of(0u64..5_000_000),
    ) {
        use sightwire_rendezvous::{MAX_PUNCH_START_SKEW, punch_start_delays};
        let margin = Duration::from_millis(margin_ms);
        let viewer_rtt = viewer_rtt_us.map(Duration::from_micros);
        let device_rtt = device_rtt_us.map(Duration::from_micros);
        let (viewer, device) = punch_start_delays(margin, viewer_rtt, device_rtt);
        prop_assert!(viewer >= margin && device >= margin);
        prop_assert!(viewer <= margin + MAX_PUNCH_START_SKEW);
        prop_assert!(device <= margin + MAX_PUNCH_START_SKEW);
        match (viewer_rtt, device_rtt) {
            (Some(v), Some(d)) => {
                let (v, d) = (v / 2, d / 2);
                prop_assert!(viewer == margin || device == margin);
                let skew = v.abs_diff(d);
                if skew <= MAX_PUNCH_START_SKEW {
                    prop_assert_eq!(v + viewer, d + device);
                }
            }
            _ => prop_assert_eq!((viewer, device), (margin, margin)),
        }
    }
}

/// The offer of an attempt disclosed on the digest is resent behind the forwarded
/// confirmation: a device that lost the confirmation takes the offer only after it.
#[test]
fn an_offer_disclosed_on_the_digest_is_resent_behind_the_confirmation() {
    use sightwire_session::login::confirmation_digest;
    let confirmation = [3u8; 33];
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let viewer = viewer_peer(1);
    let replies = h.send(
        &viewer,
        &connect_message_with(device_id(1), false, 9, &[1; 34]),
    );
    let id = introduction_to(&replies, 1).unwrap();
    h.send(
        &device_peer(1),
        &consent_with_digest(id, &[2; 66], confirmation_digest(&confirmation)),
    );
    h.send(&viewer, &consent_message(id, &confirmation, false));
    h.advance(Duration::from_millis(300));
    let resent = to(&h.drain(), 1);
    assert!(
        matches!(&resent[..], [Envelope { body: Body::Consent(c), .. }, Envelope { body: Body::ConnectOffer(_), .. }] if c.login[..] == confirmation),
        "{resent:?}"
    );
}

/// A viewer cannot name its own server-reflexive (or any non-host) candidate: the
/// device serves a viewer's first packets at once only from the reflexive address the
/// rendezvous saw (spec/endpoint.md §2), so that one must be the rendezvous's.
#[test]
fn a_viewer_cannot_claim_a_reflexive_address() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let viewer = viewer_peer(1);
    let claimed: SocketAddr = "198.51.100.77:4000".parse().unwrap();
    let request = Envelope::new(
        9,
        Body::ConnectRequest(ConnectRequest {
            device_id: device_id(1),
            candidates: CandidateSet::new(vec![
                host("10.9.9.9:6000"),
                Candidate {
                    kind: CandidateKind::ServerReflexive,
                    address: claimed,
                    priority: 1,
                },
            ]),
            want_relay: false,
            login: bytes::Bytes::new(),
        }),
    );
    let mut wire = Vec::new();
    request.encode_padded(MAX_MESSAGE_LEN, &mut wire).unwrap();
    let replies = h.send(&viewer, &wire);
    let id = introduction_to(&replies, 1).unwrap();
    let disclosed = h.send(&device_peer(1), &consent_message(id, &[], true));
    let offer = to(&disclosed, 1)
        .into_iter()
        .find_map(|e| match e.body {
            Body::ConnectOffer(offer) => Some(offer),
            _ => None,
        })
        .expect("an offer");
    let reflexive: Vec<SocketAddr> = offer
        .candidates
        .candidates
        .iter()
        .filter(|c| c.kind != CandidateKind::Host)
        .map(|c| c.address)
        .collect();
    assert_eq!(reflexive, vec![viewer.address]);
}

#[test]
fn finding_3_unreachable_ids_get_a_decoy_login_reply() {
    let mut h = Harness::new(CoreConfig::default());
    let viewer = viewer_peer(1);
    // A real login opening: a malformed one makes a real device (and so the stand-in)
    // stay silent.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let password = sightwire_session::auth::PasswordKey::random(&mut rng);
    let (_, opening) = sightwire_session::login::ViewerLogin::start(
        &password,
        &viewer.remote_static,
        &device_id(42),
        &mut rng,
    );
    assert!(
        h.send(
            &viewer,
            &connect_message_with(device_id(42), false, 9, &opening)
        )
        .is_empty()
    );
    h.advance(sightwire_rendezvous::DECOY_DELAY_MIN - Duration::from_millis(1));
    assert!(h.drain().is_empty());
    h.advance(
        sightwire_rendezvous::DECOY_DELAY_MAX - sightwire_rendezvous::DECOY_DELAY_MIN
            + Duration::from_millis(1),
    );
    let decoy = h.drain();
    assert!(
        matches!(&decoy[..], [(s, Envelope { request_id: 9, body: Body::Consent(c) })]
        if *s == viewer.session && c.login.len() == sightwire_rendezvous::DECOY_LOGIN_REPLY_LEN && !c.accept),
        "{decoy:?}"
    );
    // The viewer's confirmation goes nowhere; UNAVAILABLE at the deadline as for a wrong password.
    let Body::Consent(c) = &decoy[0].1.body else {
        panic!()
    };
    assert!(
        h.send(&viewer, &consent_message(c.connect_id, &[5; 64], false))
            .is_empty()
    );
    let at = CONSENT_WINDOW - sightwire_rendezvous::DECOY_DELAY_MAX - Duration::from_millis(1);
    h.advance(at);
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(error_of(&h.drain()).code, ErrorCode::Unavailable);
    assert_eq!(h.core.stats().decoys, 1);
}

#[test]
fn finding_4_one_identity_cannot_fill_the_pending_table() {
    // The default cap (64) is a viewer wall's worth; 8 keeps the test short.
    let mut h = Harness::new({
        let mut value = generous();
        value.max_pending_per_identity = 8;
        value
    });
    let key = viewer_peer(1).remote_static;
    for n in 0..20u32 {
        // One key, many sessions from many sources.
        let peer = Peer::new(
            5_000 + u64::from(n),
            key,
            SocketAddr::from(([203, 0, 113, n as u8], 7)),
        );
        let replies = h.send(&peer, &connect_message(device_id(100 + n), false));
        if n < 8 {
            assert!(replies.is_empty(), "{replies:?}");
        } else {
            let refused = error_of(&replies);
            assert_eq!(
                (refused.code, refused.limit),
                (ErrorCode::Capacity, Some(Limit::ConnectTable))
            );
        }
    }
    assert_eq!(h.core.pending_connects(), 8);
    // Everybody else still gets in.
    assert!(
        h.send(&viewer_peer(2), &connect_message(device_id(7), false))
            .is_empty()
    );
    assert_eq!(h.core.pending_connects(), 9);
    // Attempts end at the deadline and give the identity its room back.
    h.advance(CONSENT_WINDOW);
    assert_eq!(h.core.pending_connects(), 0);
}

#[test]
fn finding_4_one_session_from_many_sources_is_limited() {
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.max_pending_per_identity = 1_000;
        value.max_pending_connects = 1_000;
        value
    });
    let mut admitted = 0;
    for n in 0..100u32 {
        // The same session, each datagram from another IPv4 source or IPv6 /64.
        let address = if n % 2 == 0 {
            SocketAddr::from(([203, 0, 113, n as u8], 7))
        } else {
            SocketAddr::new(
                std::net::IpAddr::V6(std::net::Ipv6Addr::new(
                    0x2001, 0xdb8, n as u16, 0, 0, 0, 0, 1,
                )),
                7,
            )
        };
        let peer = {
            let mut value = viewer_peer(1);
            value.address = address;
            value
        };
        let replies = h.send(
            &peer,
            &connect_message_with(device_id(100 + n), false, u64::from(n), &[]),
        );
        if replies.is_empty() {
            admitted += 1;
        } else {
            assert_eq!(error_of(&replies).code, ErrorCode::RateLimited);
        }
    }
    assert_eq!(admitted, 10, "the burst of one source and one identity");
}

#[test]
fn finding_4_a_session_cannot_spend_a_victims_source_budget() {
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.max_pending_per_identity = 100;
        value
    });
    let victim = viewer_peer(1);
    let attacker = Peer::new(666, [0x66; 32].into(), "203.0.113.66:1".parse().unwrap());
    h.core
        .handle_session_established(attacker.session, attacker.address);
    // The attacker's packets claim the victim's source.
    for n in 0..10 {
        let claimed = {
            let mut value = attacker;
            value.address = victim.address;
            value
        };
        h.send(
            &claimed,
            &connect_message_with(device_id(100 + n), false, u64::from(n), &[]),
        );
    }
    // The victim still has its whole budget.
    for n in 0..10 {
        let replies = h.send(
            &victim,
            &connect_message_with(device_id(200 + n), false, u64::from(n), &[]),
        );
        assert!(replies.is_empty(), "{replies:?}");
    }
}

#[test]
fn finding_4_introductions_per_device_are_limited() {
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.max_pending_per_identity = 100;
        value
    });
    h.register(1);
    let mut introductions = 0;
    let mut limited = 0;
    for n in 0..40 {
        let replies = h.send(&viewer_peer(n), &connect_message(device_id(1), false));
        introductions += replies
            .iter()
            .filter(|(_, e)| matches!(e.body, Body::Introduction(_)))
            .count();
        if !replies.is_empty() && introduction_to(&replies, 1).is_none() {
            let refused = error_of(&replies);
            assert_eq!(
                (refused.code, refused.limit),
                (ErrorCode::RateLimited, Some(Limit::LookupRate))
            );
            limited += 1;
        }
    }
    assert_eq!(introductions, 10);
    assert_eq!(limited, 30);
    // The same for an ID that does not exist: the limit says nothing about existence.
    for n in 0..10 {
        assert!(
            h.send(
                &viewer_peer(100 + n),
                &connect_message(device_id(99), false)
            )
            .is_empty()
        );
    }
    assert_eq!(
        error_of(&h.send(&viewer_peer(120), &connect_message(device_id(99), false))).code,
        ErrorCode::RateLimited
    );
}

fn candidate_update(connect_id: ConnectId) -> Vec<u8> {
    Envelope::new(
        0,
        Body::CandidateUpdate(CandidateUpdate {
            connect_id,
            candidates: CandidateSet::new(vec![host("10.1.1.1:1")]),
        }),
    )
    .to_bytes()
    .unwrap()
    .to_vec()
}

#[test]
fn finding_7_candidate_updates_are_limited() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let viewer = viewer_peer(1);
    let replies = h.send(&viewer, &connect_message(device_id(1), false));
    let id = introduction_to(&replies, 1).unwrap();
    // Before consent, nobody can make the device probe addresses.
    assert_eq!(
        error_of(&h.send(&viewer, &candidate_update(id))).code,
        ErrorCode::UnknownConnect
    );
    h.send(&device_peer(1), &consent_message(id, &[], true));
    for _ in 0..sightwire_rendezvous::MAX_CANDIDATE_UPDATES_PER_ATTEMPT {
        assert_eq!(h.send(&viewer, &candidate_update(id))[0].0, 1);
        assert_eq!(
            h.send(&device_peer(1), &candidate_update(id))[0].0,
            viewer.session
        );
    }
    assert_eq!(
        error_of(&h.send(&viewer, &candidate_update(id))).code,
        ErrorCode::RateLimited
    );
    assert_eq!(
        error_of(&h.send(&device_peer(1), &candidate_update(id))).code,
        ErrorCode::RateLimited
    );
}

#[test]
fn finding_7_relay_requests_are_limited() {
    let relay = RelayConfig::new(
        "198.51.100.1:3478".parse().unwrap(),
        None,
        RelayGrantKey::from_bytes([1; 32]),
    );
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.relay = Some(relay);
        value
    });
    h.register(1);
    let viewer = viewer_peer(1);
    let replies = h.send(&viewer, &connect_message(device_id(1), false));
    let id = introduction_to(&replies, 1).unwrap();
    let mut request = Vec::new();
    Envelope::new(3, Body::RelayRequest { connect_id: id })
        .encode_padded(MAX_MESSAGE_LEN, &mut request)
        .unwrap();
    assert_eq!(
        error_of(&h.send(&viewer, &request)).code,
        ErrorCode::UnknownConnect
    );
    h.send(&device_peer(1), &consent_message(id, &[], true));
    for _ in 0..sightwire_rendezvous::MAX_RELAY_GRANTS_PER_ATTEMPT {
        let grants = h.send(&viewer, &request);
        assert_eq!(grants.len(), 2, "{grants:?}");
    }
    assert_eq!(
        error_of(&h.send(&viewer, &request)).code,
        ErrorCode::RateLimited
    );
    assert_eq!(
        h.core.stats().relay_grants,
        2 * u64::from(sightwire_rendezvous::MAX_RELAY_GRANTS_PER_ATTEMPT)
    );
}

#[test]
fn finding_7_close_and_other_notifications_are_limited_per_session() {
    let mut h = Harness::new(CoreConfig::default());
    let viewer = viewer_peer(1);
    let mut answered = 0;
    for n in 1..=200 {
        let close = Envelope::new(
            0,
            Body::Close(Close {
                connect_id: Some(ConnectId(n)),
                reason: CloseReason::Done,
            }),
        )
        .to_bytes()
        .unwrap();
        answered += h.send(&viewer, &close).len();
    }
    assert_eq!(
        answered,
        sightwire_rendezvous::DEFAULT_SESSION_MESSAGE_RATE.burst as usize
    );
}

#[test]
fn low_replies_to_registered_devices_are_size_capped() {
    let relay = RelayConfig::new(
        "198.51.100.1:3478".parse().unwrap(),
        None,
        RelayGrantKey::from_bytes([1; 32]),
    );
    let mut h = Harness::new({
        let mut value = CoreConfig::default();
        value.relay = Some(relay);
        value
    });
    h.register(1);
    let replies = h.connect_and_accept(&viewer_peer(1), 1, false);
    let id = introduction_to(&replies, 1).unwrap();
    // A registered device's tiny relay request would get a ~170-byte grant.
    let tiny = Envelope::new(3, Body::RelayRequest { connect_id: id })
        .to_bytes()
        .unwrap();
    let replies = h.send(&device_peer(1), &tiny);
    let mine = to(&replies, 1);
    assert!(
        mine.iter().all(|e| e.encoded_len()
            <= tiny
                .len()
                .max(sightwire_rendezvous::REGISTERED_REPLY_ALLOWANCE)),
        "{mine:?}"
    );
    assert!(
        matches!(&mine[..], [Envelope { body: Body::Error(e), .. }] if e.code == ErrorCode::PaddingRequired)
    );
    // Keepalives still get their ack unpadded.
    let bare = Envelope::new(4, Body::Keepalive).to_bytes().unwrap();
    assert!(matches!(
        h.send(&device_peer(1), &bare)[0].1.body,
        Body::KeepaliveAck { .. }
    ));
}

#[test]
fn low_revocation_floor_refuses_unrecorded_ids_and_lower_serials() {
    let mut h = Harness::new(CoreConfig::default());
    // Revoked before the rendezvous ever saw the ID (a stolen factory key).
    h.registry.revoke_through(device_id(5), 3).unwrap();
    for serial in [1, 3] {
        let replies = h.send(&device_peer(5), &register_message(certificate(5, serial)));
        assert_eq!(error_of(&replies).code, ErrorCode::Revoked);
    }
    assert_eq!(h.core.online(), 0);
    let replies = h.send(&device_peer(5), &register_message(certificate(5, 4)));
    assert!(matches!(replies[0].1.body, Body::RegisterAck(_)));
}

// ------------------------------------------------------------- offer resends, probes

fn offers_to(replies: &[(u64, Envelope)], session: u64) -> usize {
    replies
        .iter()
        .filter(|(s, e)| *s == session && matches!(e.body, Body::ConnectOffer(_)))
        .count()
}

fn offer_ack(connect_id: ConnectId) -> Vec<u8> {
    Envelope::new(0, Body::OfferAck { connect_id })
        .to_bytes()
        .unwrap()
        .to_vec()
}

#[test]
fn an_offer_is_resent_on_its_schedule_until_the_device_acknowledges_it() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let viewer = viewer_peer(1);
    let replies = h.connect_and_accept(&viewer, 1, false);
    let offer = replies
        .iter()
        .find_map(|(_, e)| match &e.body {
            Body::ConnectOffer(offer) => Some(offer.clone()),
            _ => None,
        })
        .expect("an offer");
    assert!(offer.ack_requested);
    // Just before the first resend: nothing; at it: the same offer again.
    h.advance(OFFER_RESEND_AT[0] - Duration::from_millis(1));
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(1));
    let again = h.drain();
    assert_eq!(offers_to(&again, 1), 1, "{again:?}");
    assert!(matches!(&again[0].1.body, Body::ConnectOffer(o) if *o == offer));
    // The viewer cannot acknowledge for the device, nor can another device.
    assert!(h.send(&viewer, &offer_ack(offer.connect_id)).is_empty());
    assert!(
        h.send(&device_peer(2), &offer_ack(offer.connect_id))
            .is_empty()
    );
    h.advance(OFFER_RESEND_AT[1] - OFFER_RESEND_AT[0]);
    assert_eq!(offers_to(&h.drain(), 1), 1);
    // The device's acknowledgement stops the resends.
    assert!(
        h.send(&device_peer(1), &offer_ack(offer.connect_id))
            .is_empty()
    );
    h.advance(Duration::from_secs(10));
    assert_eq!(offers_to(&h.drain(), 1), 0);
    let stats = h.core.stats();
    assert_eq!(stats.offer_resends, 2);
    assert_eq!(stats.offers_acked, 1);
    assert!(stats.ignored >= 2);
}

#[test]
fn limit_offer_resends_per_attempt() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    h.connect_and_accept(&viewer_peer(1), 1, false);
    h.advance(Duration::from_secs(20));
    assert_eq!(offers_to(&h.drain(), 1), OFFER_RESEND_AT.len());
    assert_eq!(h.core.stats().offer_resends, OFFER_RESEND_AT.len() as u64);
}

fn probe_message(request_id: u64, delay: Duration) -> Vec<u8> {
    Envelope::new(request_id, Body::KeepaliveProbe { ack_delay: delay })
        .to_bytes()
        .unwrap()
        .to_vec()
}

fn is_ack(replies: &[(u64, Envelope)], session: u64, request_id: u64) -> bool {
    matches!(replies, [(s, Envelope { request_id: r, body: Body::KeepaliveAck { .. } })] if *s == session && *r == request_id)
}

#[test]
fn a_keepalive_probe_is_answered_after_its_delay() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let delay = Duration::from_secs(12);
    assert!(h.send(&device_peer(1), &probe_message(5, delay)).is_empty());
    h.advance(delay - Duration::from_millis(1));
    assert!(h.drain().is_empty(), "not before its delay");
    h.advance(Duration::from_millis(1));
    assert!(is_ack(&h.drain(), 1, 5));
    assert_eq!(h.core.stats().keepalive_probes, 1);
    // An unregistered session gets NOT_REGISTERED at once, as for a keepalive.
    let replies = h.send(&device_peer(9), &probe_message(6, delay));
    assert_eq!(error_of(&replies).code, ErrorCode::NotRegistered);
    // A session that closes loses its probe.
    assert!(h.send(&device_peer(1), &probe_message(7, delay)).is_empty());
    h.core.handle_session_closed(device_peer(1).session);
    h.advance(delay);
    assert!(h.drain().is_empty());
}

#[test]
fn limit_keepalive_probes() {
    let config = {
        let mut value = CoreConfig::default();
        value.max_pending_probes = 1;
        value
    };
    let mut h = Harness::new(config);
    h.register(1);
    h.register(2);
    let delay = Duration::from_secs(10);
    assert!(h.send(&device_peer(1), &probe_message(1, delay)).is_empty());
    // One per session: a second probe from the same session is answered at once.
    assert!(is_ack(
        &h.send(&device_peer(1), &probe_message(2, delay)),
        1,
        2
    ));
    // The table is full: another session's probe is answered at once.
    assert!(is_ack(
        &h.send(&device_peer(2), &probe_message(3, delay)),
        2,
        3
    ));
    // Longer than the keepalive interval: answered at once.
    let long = CoreConfig::default().keepalive_interval + Duration::from_millis(1);
    h.advance(delay);
    assert!(is_ack(&h.drain(), 1, 1));
    assert!(is_ack(
        &h.send(&device_peer(2), &probe_message(4, long)),
        2,
        4
    ));
    assert_eq!(h.core.stats().keepalive_probes, 1);
    // Probes off: every keepalive is answered at once.
    let mut off = Harness::new({
        let mut value = CoreConfig::default();
        value.keepalive_probes = false;
        value
    });
    off.register(1);
    assert!(is_ack(
        &off.send(&device_peer(1), &probe_message(5, delay)),
        1,
        5
    ));
}

/// A viewer on a TCP/TLS stream (`spec/stream.md` §3) arrives from its connection's
/// virtual address: the device is not offered that as a server-reflexive candidate
/// (nobody can send UDP to it), and the viewer is still told it as `observed`.
#[test]
fn a_stream_peer_address_is_never_offered_as_a_candidate() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    let mut viewer = viewer_peer(1);
    viewer.address = sightwire_stream::stream_peer_addr("198.51.100.1:40000".parse().unwrap(), 7);
    let replies = h.connect_and_accept(&viewer, 1, false);
    let offer = replies
        .iter()
        .find_map(|(s, e)| match &e.body {
            Body::ConnectOffer(offer) if *s == 1 => Some(offer.clone()),
            _ => None,
        })
        .expect("an offer to the device");
    assert!(
        offer
            .candidates
            .candidates
            .iter()
            .all(|c| c.address != viewer.address && c.kind != CandidateKind::ServerReflexive),
        "{:?}",
        offer.candidates
    );
    let response = replies
        .iter()
        .find_map(|(s, e)| match &e.body {
            Body::ConnectResponse(response) if *s == viewer.session => Some(response.clone()),
            _ => None,
        })
        .expect("a response to the viewer");
    assert_eq!(response.observed, viewer.address);
}

/// The registry is asked off the packet loop: a registration waits (parked) until its
/// answer comes, and nothing is answered before.
#[test]
fn registration_waits_for_the_registry_answer() {
    let mut h = Harness::new(CoreConfig::default());
    h.answer_at_once = false;
    assert!(h.register(1).is_empty());
    assert_eq!(h.core.pending_lookups(), 1);
    assert_eq!(h.core.online(), 0);
    assert_eq!(h.answer_queries(), 1);
    let replies = h.drain();
    assert!(
        matches!(
            replies.as_slice(),
            [(
                1,
                Envelope {
                    body: Body::RegisterAck(_),
                    ..
                }
            )]
        ),
        "{replies:?}"
    );
    assert_eq!(h.core.online(), 1);
    assert_eq!(h.core.pending_lookups(), 0);
    // Keepalives never wait for the registry.
    let replies = h.send(&device_peer(1), &keepalive_message(2));
    assert!(matches!(replies[0].1.body, Body::KeepaliveAck { .. }));
}

/// The limit of the parked table: the request over it is refused at once with a clear
/// code, and the requests already parked are all answered.
#[test]
fn registry_queue_limit_refuses_new_requests_and_keeps_the_parked_ones() {
    let mut config = CoreConfig::default();
    config.max_pending_lookups = 3;
    let mut h = Harness::new(config);
    h.answer_at_once = false;
    for n in 1..=3 {
        assert!(h.register(n).is_empty());
    }
    assert_eq!(h.core.pending_lookups(), 3);
    let replies = h.register(4);
    let refusal = error_of(&replies);
    assert_eq!(
        (refusal.code, refusal.limit),
        (ErrorCode::Capacity, Some(Limit::RegistryQueue))
    );
    assert_eq!(refusal.retry_after, h.core.config().registry_timeout);
    // A connect request over the limit gets the same answer.
    let viewer = viewer_peer(1);
    let refusal = error_of(&h.send(&viewer, &connect_message(device_id(1), false)));
    assert_eq!(refusal.limit, Some(Limit::RegistryQueue));
    assert_eq!(h.answer_queries(), 3);
    let acks = h
        .drain()
        .into_iter()
        .filter(|(_, e)| matches!(e.body, Body::RegisterAck(_)))
        .count();
    assert_eq!(acks, 3);
    assert_eq!(h.core.online(), 3);
    assert_eq!(h.core.pending_lookups(), 0);
}

/// A registry that does not answer in time: the client hears `INTERNAL` at the timeout,
/// and the late answer changes nothing.
#[test]
fn registry_timeout_answers_internal_and_ignores_the_late_answer() {
    let mut h = Harness::new(CoreConfig::default());
    h.answer_at_once = false;
    assert!(h.register(1).is_empty());
    let query = h.core.poll_registry_query().expect("a registration query");
    h.advance(h.core.config().registry_timeout - Duration::from_millis(1));
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(error_of(&h.drain()).code, ErrorCode::Internal);
    assert_eq!(h.core.stats().registry_timeouts, 1);
    assert_eq!(h.core.pending_lookups(), 0);
    let answer = query.run(&mut h.registry);
    h.core.handle_registry_answer(h.now, answer);
    assert!(h.drain().is_empty());
    assert_eq!(h.core.online(), 0);
    assert_eq!(h.core.stats().registry_late_answers, 1);
}

/// A registry error is answered `INTERNAL` (and counted).
#[test]
fn registry_error_answers_internal() {
    let mut h = Harness::new(CoreConfig::default());
    h.answer_at_once = false;
    assert!(h.register(1).is_empty());
    let query = h.core.poll_registry_query().unwrap();
    let failure = std::io::Error::other("database is down");
    h.core.handle_registry_answer(
        h.now,
        sightwire_rendezvous::RegistryAnswer::new(query.token, Err(Box::new(failure))),
    );
    assert_eq!(error_of(&h.drain()).code, ErrorCode::Internal);
    assert_eq!(h.core.stats().registry_errors, 1);
    assert_eq!(h.core.online(), 0);
}

/// A session that closes while its registration waits never enters presence.
#[test]
fn closed_session_drops_its_parked_registration() {
    let mut h = Harness::new(CoreConfig::default());
    h.answer_at_once = false;
    assert!(h.register(1).is_empty());
    h.core.handle_session_closed(device_peer(1).session);
    assert_eq!(h.core.pending_lookups(), 0);
    // Its query is stale: the driver is not even asked.
    assert_eq!(h.answer_queries(), 0);
    assert!(h.drain().is_empty());
    assert_eq!(h.core.online(), 0);
}

/// A connect request waiting for its lookup: retransmissions do not ask again, the
/// request counts against the connect table, and the attempt goes on once answered.
#[test]
fn parked_connect_request_counts_and_resumes() {
    let mut config = CoreConfig::default();
    config.max_pending_connects = 1;
    let mut h = Harness::new(config);
    h.register(1);
    h.answer_at_once = false;
    let viewer = viewer_peer(1);
    let request = connect_message(device_id(1), false);
    assert!(h.send(&viewer, &request).is_empty());
    assert!(h.send(&viewer, &request).is_empty());
    assert_eq!(h.core.pending_lookups(), 1);
    assert_eq!(h.core.stats().retransmissions, 1);
    // The connect table holds the parked request.
    let other = viewer_peer(2);
    let refusal = error_of(&h.send(&other, &connect_message(device_id(1), false)));
    assert_eq!(refusal.limit, Some(Limit::ConnectTable));
    assert_eq!(h.answer_queries(), 1);
    let replies = h.drain();
    assert!(
        introduction_to(&replies, device_peer(1).session).is_some(),
        "{replies:?}"
    );
    assert_eq!(h.core.pending_connects(), 1);
}

/// A revocation announced by the registry drops the online device at once.
#[test]
fn announced_revocation_drops_the_device_from_presence() {
    let mut h = Harness::new(CoreConfig::default());
    h.register(1);
    h.register(2);
    h.registry.revoke(device_id(1)).unwrap();
    h.core.handle_revoked(h.now, device_id(1));
    h.core.handle_revoked(h.now, device_id(9));
    assert_eq!(h.core.online(), 1);
    assert_eq!(h.core.stats().revocations_applied, 1);
    let replies = h.send(&device_peer(1), &keepalive_message(3));
    assert_eq!(error_of(&replies).code, ErrorCode::NotRegistered);
    assert_eq!(error_of(&h.register(1)).code, ErrorCode::Revoked);
}

/// A registration that read the registry before a revocation committed is asked again
/// when the revocation is announced: it cannot slip into presence.
#[test]
fn announced_revocation_rechecks_a_waiting_registration() {
    let mut h = Harness::new(CoreConfig::default());
    h.answer_at_once = false;
    assert!(h.register(1).is_empty());
    let query = h.core.poll_registry_query().unwrap();
    // The registry answers from before the revocation...
    let stale = query.run(&mut h.registry);
    h.registry.revoke_through(device_id(1), 1).unwrap();
    // ...and the announcement overtakes the answer.
    h.core.handle_revoked(h.now, device_id(1));
    h.core.handle_registry_answer(h.now, stale);
    assert!(h.drain().is_empty());
    assert_eq!(h.core.stats().registry_late_answers, 1);
    assert_eq!(h.answer_queries(), 1);
    assert_eq!(error_of(&h.drain()).code, ErrorCode::Revoked);
    assert_eq!(h.core.online(), 0);
    assert_eq!(h.core.pending_lookups(), 0);
}

/// What the viewer sees of one connect attempt, millisecond by millisecond until after
/// the consent window: (time, request id, body kind, login length, error code).
fn viewer_timeline(message: &[u8]) -> Vec<(Duration, u64, &'static str, usize, Option<ErrorCode>)> {
    let mut h = Harness::new(CoreConfig::default());
    let viewer = viewer_peer(1);
    let mut seen = Vec::new();
    let record = |at: Duration, out: Vec<(u64, Envelope)>, seen: &mut Vec<_>| {
        for (session, envelope) in out {
            assert_eq!(session, viewer.session, "{envelope:?}");
            let (login, code) = match &envelope.body {
                Body::Consent(c) => (c.login.len(), None),
                Body::Error(e) => (0, Some(e.code)),
                _ => (0, None),
            };
            seen.push((at, envelope.request_id, envelope.body.name(), login, code));
        }
    };
    let out = h.send(&viewer, message);
    record(Duration::ZERO, out, &mut seen);
    let step = Duration::from_millis(1);
    let mut at = Duration::ZERO;
    while at <= CONSENT_WINDOW + step {
        h.advance(step);
        at += step;
        let out = h.drain();
        record(at, out, &mut seen);
    }
    assert_eq!(h.core.pending_connects(), 0);
    seen
}

#[test]
fn octets_that_are_no_device_id_are_answered_like_an_unknown_id() {
    // A real login opening, so the decoy answers it (spec/signaling.md §4.5, step 5).
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let password = sightwire_session::auth::PasswordKey::random(&mut rng);
    let (_, opening) = sightwire_session::login::ViewerLogin::start(
        &password,
        &viewer_peer(1).remote_static,
        &device_id(42),
        &mut rng,
    );
    for login in [&[][..], &opening[..]] {
        let unknown = viewer_timeline(&connect_message_with(device_id(42), false, 9, login));
        // UNAVAILABLE at the deadline, after the decoy's login reply if a login was opened.
        assert_eq!(unknown.last().unwrap().4, Some(ErrorCode::Unavailable));
        assert_eq!(unknown.last().unwrap().0, CONSENT_WINDOW);
        assert_eq!(
            unknown.len(),
            if login.is_empty() { 1 } else { 2 },
            "{unknown:?}"
        );
        for octets in [
            [0x00; 6],
            [0xFF; 6],
            [0x01, 0x00, 0x5E, 0x00, 0x00, 0xFB],
            [0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ] {
            let named = viewer_timeline(&connect_message_naming(octets, 9, login));
            assert_eq!(named, unknown, "{octets:02x?}");
        }
    }
}
