//! Deterministic, virtual-time tests of whole sessions: two tables and an in-memory
//! network the test controls (drop, duplicate, reorder, rewrite, change addresses).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::wire::{COOKIE_REPLY_LEN, INITIATION_LEN, Packet, RESPONSE_LEN, TYPE_COOKIE_REPLY};
use crate::*;

pub(crate) const DEVICE_ID: DeviceId =
    match DeviceId::from_bytes([0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e]) {
        Ok(id) => id,
        Err(_) => panic!("a unicast address"),
    };

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn rng(seed: u64) -> Box<ChaCha20Rng> {
    Box::new(ChaCha20Rng::seed_from_u64(seed))
}

fn keypair(seed: u64) -> StaticKeypair {
    StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

/// A datagram in flight.
#[derive(Debug, Clone)]
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// A viewer (initiator) and a camera (responder) on a controllable network.
struct Pair {
    viewer: SessionTable,
    camera: SessionTable,
    viewer_addr: SocketAddr,
    camera_addr: SocketAddr,
    camera_public: PublicKey,
    now: Instant,
    viewer_session: Option<SessionId>,
    camera_session: Option<SessionId>,
    viewer_events: Vec<Event>,
    camera_events: Vec<Event>,
}

impl Pair {
    fn new(config: Config) -> Self {
        Self::with_configs(config.clone(), config)
    }

    fn with_configs(viewer_config: Config, camera_config: Config) -> Self {
        let camera_key = keypair(100);
        let camera_public = *camera_key.public();
        Self {
            viewer: SessionTable::new(keypair(200), viewer_config, rng(1)),
            camera: SessionTable::with_responder(
                camera_key,
                SessionKind::Peer {
                    device_id: DEVICE_ID,
                },
                camera_config,
                rng(2),
            ),
            viewer_addr: addr("198.51.100.20:5000"),
            camera_addr: addr("192.0.2.10:7000"),
            camera_public,
            now: Instant::now(),
            viewer_session: None,
            camera_session: None,
            viewer_events: Vec::new(),
            camera_events: Vec::new(),
        }
    }

    fn connect(&mut self) -> SessionId {
        let id = self
            .viewer
            .connect(
                self.now,
                self.camera_addr,
                SessionKind::Peer {
                    device_id: DEVICE_ID,
                },
                self.camera_public,
            )
            .expect("connect");
        self.viewer_session = Some(id);
        id
    }

    fn drain(table: &mut SessionTable, from: SocketAddr) -> Vec<Datagram> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Some(t) = table.poll_transmit(&mut buf) {
            out.push(Datagram {
                from,
                to: t.destination,
                bytes: buf[..t.len].to_vec(),
            });
        }
        out
    }

    fn viewer_out(&mut self) -> Vec<Datagram> {
        Self::drain(&mut self.viewer, self.viewer_addr)
    }

    fn camera_out(&mut self) -> Vec<Datagram> {
        Self::drain(&mut self.camera, self.camera_addr)
    }

    fn deliver_to_camera(&mut self, d: &Datagram) -> Result<Option<Vec<u8>>, InputError> {
        let mut bytes = d.bytes.clone();
        let r = self
            .camera
            .handle_input(self.now, d.from, &mut bytes)
            .map(|i| match i {
                Input::Data { plaintext, .. } => Some(plaintext.to_vec()),
                _ => None,
            });
        self.collect_events();
        r
    }

    fn deliver_to_viewer(&mut self, d: &Datagram) -> Result<Option<Vec<u8>>, InputError> {
        let mut bytes = d.bytes.clone();
        let r = self
            .viewer
            .handle_input(self.now, d.from, &mut bytes)
            .map(|i| match i {
                Input::Data { plaintext, .. } => Some(plaintext.to_vec()),
                _ => None,
            });
        self.collect_events();
        r
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.viewer.poll_event() {
            self.viewer_events.push(e);
        }
        while let Some(e) = self.camera.poll_event() {
            if let Event::Established { session, .. } = e {
                self.camera_session = Some(session);
            }
            self.camera_events.push(e);
        }
    }

    /// Delivers everything both sides transmit until both are quiet.
    fn pump(&mut self) {
        for _ in 0..16 {
            let from_viewer = self.viewer_out();
            let from_camera = self.camera_out();
            if from_viewer.is_empty() && from_camera.is_empty() {
                return;
            }
            for d in &from_viewer {
                let _ = self.deliver_to_camera(d);
            }
            for d in &from_camera {
                let _ = self.deliver_to_viewer(d);
            }
        }
        self.collect_events();
    }

    fn established(config: Config) -> Self {
        let mut pair = Self::new(config);
        pair.connect();
        pair.pump();
        assert!(pair.camera_session.is_some(), "camera established");
        pair
    }

    fn seal_viewer(&mut self, payload: &[u8]) -> Datagram {
        let mut buf = vec![0u8; payload.len() + TRANSPORT_OVERHEAD];
        let id = self.viewer_session.expect("viewer session");
        let t = self
            .viewer
            .seal(id, self.now, payload, &mut buf)
            .expect("seal");
        buf.truncate(t.len);
        Datagram {
            from: self.viewer_addr,
            to: t.destination,
            bytes: buf,
        }
    }

    fn seal_camera(&mut self, payload: &[u8]) -> Datagram {
        let mut buf = vec![0u8; payload.len() + TRANSPORT_OVERHEAD];
        let id = self.camera_session.expect("camera session");
        let t = self
            .camera
            .seal(id, self.now, payload, &mut buf)
            .expect("seal");
        buf.truncate(t.len);
        Datagram {
            from: self.camera_addr,
            to: t.destination,
            bytes: buf,
        }
    }

    /// Advances virtual time to `until`, running both tables' timers and delivering.
    fn run_until(&mut self, until: Instant) {
        loop {
            let next = [self.viewer.poll_timeout(), self.camera.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.viewer.handle_timeout(self.now);
                    self.camera.handle_timeout(self.now);
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = until;
        self.collect_events();
    }
}

#[test]
fn handshake_then_data_both_ways() {
    let mut pair = Pair::established(Config::default());
    let v = pair.viewer_session.unwrap();
    let c = pair.camera_session.unwrap();
    assert!(matches!(
        pair.viewer_events[0],
        Event::Established {
            role: Role::Initiator,
            ..
        }
    ));
    match pair.camera_events[0] {
        Event::Established {
            role,
            remote_static,
            remote_addr,
            ..
        } => {
            assert_eq!(role, Role::Responder);
            assert_eq!(
                remote_static,
                *pair.viewer.local_public(),
                "camera learns the viewer's key"
            );
            assert_eq!(remote_addr, pair.viewer_addr);
        }
        other => panic!("unexpected {other:?}"),
    }
    let hash = pair.viewer.handshake_hash(v).copied().expect("hash");
    assert_eq!(
        pair.camera.handshake_hash(c),
        Some(&hash),
        "both ends share the channel binding"
    );
    let d = pair.seal_viewer(b"to camera");
    assert_eq!(pair.deliver_to_camera(&d), Ok(Some(b"to camera".to_vec())));
    let d = pair.seal_camera(b"to viewer");
    assert_eq!(pair.deliver_to_viewer(&d), Ok(Some(b"to viewer".to_vec())));
    assert_eq!(pair.viewer.half_open(), 0);
    assert_eq!(pair.camera.half_open(), 0);
}

#[test]
fn wrong_device_key_is_refused_by_mac1() {
    // The viewer expects key A; the host at that address holds key B.
    let mut pair = Pair::new(Config::default());
    pair.camera_public = *keypair(999).public();
    pair.connect();
    let initiation = pair.viewer_out().remove(0);
    assert_eq!(
        pair.deliver_to_camera(&initiation),
        Err(InputError::BadMac1)
    );
    assert!(pair.camera_out().is_empty(), "nothing answered");
}

/// A responder that answers key-mismatch notices (a rendezvous server's configuration).
fn noticing(per_second: u32) -> Config {
    Config {
        key_mismatch_notices_per_second: per_second,
        ..Config::default()
    }
}

#[test]
fn wrong_key_gets_a_notice_and_fails_the_handshake_at_once() {
    let mut pair = Pair::with_configs(Config::default(), noticing(4));
    pair.camera_public = *keypair(999).public();
    let id = pair.connect();
    let initiation = pair.viewer_out().remove(0);
    assert_eq!(
        pair.deliver_to_camera(&initiation),
        Err(InputError::BadMac1)
    );
    let notices = pair.camera_out();
    assert_eq!(notices.len(), 1, "one notice");
    assert_eq!(notices[0].bytes.len(), wire::KEY_MISMATCH_LEN);
    assert!(
        notices[0].bytes.len() <= initiation.bytes.len(),
        "no amplification"
    );
    assert_eq!(pair.camera.stats().key_mismatch_notices_sent, 1);
    assert!(pair.deliver_to_viewer(&notices[0]).is_ok());
    assert_eq!(
        pair.viewer_events,
        vec![Event::HandshakeFailed {
            session: id,
            reason: HandshakeFailure::KeyRefused
        }]
    );
    assert_eq!(pair.viewer.half_open(), 0, "the session is gone");
    // A second copy finds nothing.
    assert!(pair.deliver_to_viewer(&notices[0]).is_err());
}

#[test]
fn key_mismatch_notice_must_echo_the_initiation_in_flight() {
    let mut pair = Pair::with_configs(Config::default(), noticing(4));
    pair.camera_public = *keypair(999).public();
    pair.connect();
    let initiation = pair.viewer_out().remove(0);
    let _ = pair.deliver_to_camera(&initiation);
    let mut forged = pair.camera_out().remove(0);
    // Another mac1 (an off-path forger cannot see the real one): ignored.
    forged.bytes[5] ^= 1;
    assert_eq!(pair.deliver_to_viewer(&forged), Err(InputError::Unexpected));
    // Another index: unknown.
    let mut other = forged.clone();
    other.bytes[5] ^= 1;
    other.bytes[1] ^= 0xff;
    assert!(matches!(
        pair.deliver_to_viewer(&other),
        Err(InputError::UnknownIndex(_))
    ));
    assert!(pair.viewer_events.is_empty(), "the handshake goes on");
    // An established session is never refused by a notice (the peer proved its key).
    let mut good = Pair::with_configs(Config::default(), noticing(4));
    good.connect();
    good.pump();
    assert!(good.camera_session.is_some());
    let _ = good.viewer_out();
    let notice = Datagram {
        from: good.camera_addr,
        to: good.viewer_addr,
        bytes: {
            let mut b = vec![wire::TYPE_KEY_MISMATCH];
            b.extend_from_slice(&[0; wire::KEY_MISMATCH_LEN - 1]);
            b
        },
    };
    assert!(good.deliver_to_viewer(&notice).is_err());
}

#[test]
fn limit_key_mismatch_notices_per_second() {
    // A default table (a camera) never answers; a noticing one within its budget.
    let mut quiet = Pair::new(Config::default());
    quiet.camera_public = *keypair(999).public();
    quiet.connect();
    let initiation = quiet.viewer_out().remove(0);
    let _ = quiet.deliver_to_camera(&initiation);
    assert!(quiet.camera_out().is_empty());

    let mut pair = Pair::with_configs(Config::default(), noticing(3));
    pair.camera_public = *keypair(999).public();
    pair.connect();
    let initiation = pair.viewer_out().remove(0);
    for _ in 0..10 {
        let _ = pair.deliver_to_camera(&initiation);
    }
    assert_eq!(pair.camera_out().len(), 3, "the burst");
    let stats = pair.camera.stats();
    assert_eq!(stats.key_mismatch_notices_sent, 3);
    assert_eq!(stats.key_mismatch_notices_limited, 7);
    // The bucket refills.
    pair.now += Duration::from_secs(1);
    let _ = pair.deliver_to_camera(&initiation);
    assert_eq!(pair.camera_out().len(), 1);
}

#[test]
fn wrong_device_id_is_refused_by_the_prologue() {
    let mut pair = Pair::new(Config::default());
    let id = pair
        .viewer
        .connect(
            pair.now,
            pair.camera_addr,
            SessionKind::Peer {
                device_id: DeviceId::from_bytes([0, 1, 2, 3, 4, 5]).unwrap(),
            },
            pair.camera_public,
        )
        .unwrap();
    pair.viewer_session = Some(id);
    let initiation = pair.viewer_out().remove(0);
    assert_eq!(
        pair.deliver_to_camera(&initiation),
        Err(InputError::Handshake(
            HandshakeError::InitiationNotAuthenticated
        ))
    );
    // A rendezvous-kind initiation to a camera fails the same way.
    pair.viewer
        .connect(
            pair.now,
            pair.camera_addr,
            SessionKind::Rendezvous,
            pair.camera_public,
        )
        .unwrap();
    let initiation = pair.viewer_out().remove(0);
    assert_eq!(
        pair.deliver_to_camera(&initiation),
        Err(InputError::Handshake(
            HandshakeError::InitiationNotAuthenticated
        ))
    );
}

/// A man in the middle answers the viewer with a response made by a responder that holds
/// another key (here: a genuine response from an impostor camera to another viewer). The
/// viewer refuses it with a typed error and, at the deadline, reports the mismatch.
#[test]
fn man_in_the_middle_response_is_refused_and_reported() {
    let config = Config::default();
    let mut victim = Pair::new(config.clone());
    let victim_session = victim.connect();
    let victim_initiation = victim.viewer_out().remove(0);
    let Ok(Packet::Initiation(init)) = Packet::decode(&victim_initiation.bytes) else {
        panic!()
    };
    let victim_index = init.sender_index;

    // The attacker runs its own "camera" (key B) and a viewer that expects key B.
    let mut attacker = Pair::new(config.clone());
    attacker.camera = SessionTable::with_responder(
        keypair(777),
        SessionKind::Peer {
            device_id: DEVICE_ID,
        },
        config,
        rng(9),
    );
    attacker.camera_public = *keypair(777).public();
    attacker.connect();
    let their_initiation = attacker.viewer_out().remove(0);
    attacker
        .deliver_to_camera(&their_initiation)
        .expect("impostor answers its own viewer");
    let mut forged = attacker.camera_out().remove(0);
    assert_eq!(forged.bytes.len(), RESPONSE_LEN);
    // Readdress the impostor's response to the victim's handshake.
    forged.bytes[5..9].copy_from_slice(&victim_index.to_be_bytes());
    forged.from = victim.camera_addr;
    assert_eq!(
        victim.deliver_to_viewer(&forged),
        Err(InputError::Handshake(
            HandshakeError::ResponseNotAuthenticated
        ))
    );
    assert!(!victim.viewer.is_established(victim_session));
    let deadline = victim.now + HANDSHAKE_DEADLINE;
    // Keep the real camera unreachable; only the attacker talks.
    while let Some(at) = victim.viewer.poll_timeout() {
        if at > deadline {
            break;
        }
        victim.now = at;
        victim.viewer.handle_timeout(at);
        victim.viewer_out();
    }
    victim.collect_events();
    assert_eq!(
        victim.viewer_events,
        vec![Event::HandshakeFailed {
            session: victim_session,
            reason: HandshakeFailure::RemoteKeyMismatch {
                rejected_responses: 1
            }
        }]
    );
    assert!(victim.viewer.is_empty());
}

#[test]
fn retransmission_backs_off_until_the_deadline() {
    let mut pair = Pair::new(Config::default());
    let start = pair.now;
    let id = pair.connect();
    let mut sent_at = vec![Duration::ZERO];
    let mut indices = std::collections::HashSet::new();
    for d in pair.viewer_out() {
        let Ok(Packet::Initiation(i)) = Packet::decode(&d.bytes) else {
            panic!()
        };
        indices.insert(i.sender_index);
    }
    while let Some(at) = pair.viewer.poll_timeout() {
        pair.now = at;
        pair.viewer.handle_timeout(at);
        for d in pair.viewer_out() {
            // Every retry is a fresh initiation with a fresh index (and ephemeral key).
            let Ok(Packet::Initiation(i)) = Packet::decode(&d.bytes) else {
                panic!()
            };
            assert!(indices.insert(i.sender_index), "index reused");
            sent_at.push(at - start);
        }
    }
    let secs: Vec<u64> = sent_at.iter().map(Duration::as_secs).collect();
    // RTO 1, 2, 4, 8, 8 s (capped) until the 20 s deadline.
    assert_eq!(secs, vec![0, 1, 3, 7, 15]);
    assert_eq!(pair.now - start, HANDSHAKE_DEADLINE);
    assert_eq!(
        pair.viewer.poll_event(),
        Some(Event::HandshakeFailed {
            session: id,
            reason: HandshakeFailure::Timeout
        })
    );
    assert!(pair.viewer.is_empty());
    assert_eq!(pair.viewer.index_count(), 0, "every index freed");
}

#[test]
fn lost_response_is_recovered_by_retransmission() {
    let mut pair = Pair::new(Config::default());
    pair.connect();
    let first = pair.viewer_out().remove(0);
    pair.deliver_to_camera(&first).unwrap();
    let _lost = pair.camera_out();
    pair.run_until(pair.now + Duration::from_secs(2));
    assert!(pair.camera_session.is_some());
    assert!(pair.viewer.is_established(pair.viewer_session.unwrap()));
    // The first, abandoned half-open session on the camera expires after the deadline.
    assert_eq!(pair.camera.len(), 2);
    pair.run_until(pair.now + HANDSHAKE_DEADLINE);
    assert_eq!(pair.camera.len(), 1);
    assert_eq!(pair.camera.half_open(), 0);
}

#[test]
fn roaming_moves_the_endpoint_only_on_authenticated_packets() {
    let mut pair = Pair::established(Config::default());
    let c = pair.camera_session.unwrap();
    let new_addr = addr("203.0.113.5:6000");

    // A forged packet from a new address: refused, endpoint unchanged.
    let mut forged = pair.seal_viewer(b"x");
    forged.from = new_addr;
    let last = forged.bytes.len() - 1;
    forged.bytes[last] ^= 0x80;
    assert_eq!(
        pair.deliver_to_camera(&forged),
        Err(InputError::NotAuthenticated)
    );
    assert_eq!(pair.camera.remote_addr(c), Some(pair.viewer_addr));

    // A replay of a genuine packet from a new address: refused, endpoint unchanged.
    let genuine = pair.seal_viewer(b"y");
    pair.deliver_to_camera(&genuine).unwrap();
    let mut replayed = genuine.clone();
    replayed.from = new_addr;
    assert!(matches!(
        pair.deliver_to_camera(&replayed),
        Err(InputError::Replay(ReplayError::Duplicate(_)))
    ));
    assert_eq!(pair.camera.remote_addr(c), Some(pair.viewer_addr));

    // A genuine packet from the new address: accepted and reported.
    let mut moved = pair.seal_viewer(b"z");
    moved.from = new_addr;
    let mut bytes = moved.bytes.clone();
    match pair.camera.handle_input(pair.now, new_addr, &mut bytes) {
        Ok(Input::Data {
            endpoint_changed,
            plaintext,
            from,
            ..
        }) => {
            assert!(endpoint_changed);
            assert_eq!(from, new_addr);
            assert_eq!(plaintext, b"z");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(pair.camera.remote_addr(c), Some(new_addr));
    let reply = pair.seal_camera(b"back");
    assert_eq!(reply.to, new_addr, "replies follow the roaming peer");
}

#[test]
fn rekey_keeps_traffic_flowing_and_rejects_replays_after_it() {
    rekey_keeps_traffic_flowing(Pair::established(Config::default()));
}

fn compact() -> Config {
    Config {
        footprint: Footprint::Compact,
        ..Config::default()
    }
}

/// A rendezvous-like responder storing its sessions compactly talks to a fast initiator
/// exactly as a fast one does: same handshakes, rekeys and replay refusals.
#[test]
fn compact_responder_rekeys_and_rejects_replays() {
    let mut pair = Pair::with_configs(Config::default(), compact());
    pair.connect();
    pair.pump();
    assert!(pair.camera_session.is_some(), "camera established");
    rekey_keeps_traffic_flowing(pair);
}

/// A compact table's replay window reaches [`COMPACT_REPLAY_WINDOW`] counters back and
/// no further; duplicates inside it are refused.
#[test]
fn limit_compact_replay_window() {
    let mut pair = Pair::with_configs(Config::default(), compact());
    pair.connect();
    pair.pump();
    let window = usize::try_from(COMPACT_REPLAY_WINDOW).unwrap();
    // Counter 0 was the confirmation; these take counters 1 ..= window + 1.
    let packets: Vec<Datagram> = (0..=window)
        .map(|i| pair.seal_viewer(&u32::try_from(i).unwrap().to_be_bytes()))
        .collect();
    let newest = packets.last().unwrap().clone();
    assert!(pair.deliver_to_camera(&newest).is_ok());
    // Counter 1 is `window` behind the newest: out of reach.
    assert!(matches!(
        pair.deliver_to_camera(&packets[0]),
        Err(InputError::Replay(ReplayError::TooOld { .. }))
    ));
    // Counter 2 is the oldest still inside; accepted once.
    assert!(pair.deliver_to_camera(&packets[1]).is_ok());
    assert!(matches!(
        pair.deliver_to_camera(&packets[1]),
        Err(InputError::Replay(ReplayError::Duplicate(_)))
    ));
}

/// What an idle compact session costs the table, beside its map entries: the boxed
/// record, with only the current keys inline (`spec/session.md` §6).
#[test]
fn compact_session_record_is_small() {
    assert!(
        SessionTable::session_record_size() <= 344,
        "session record grew to {} bytes",
        SessionTable::session_record_size()
    );
}

fn rekey_keeps_traffic_flowing(mut pair: Pair) {
    let start = pair.now;
    // In flight across the rekey: sealed on the old keys, delivered after.
    let old_to_camera = pair.seal_viewer(b"old-1");
    let old_to_viewer = pair.seal_camera(b"old-2");
    let delivered_before = pair.seal_viewer(b"seen");
    pair.deliver_to_camera(&delivered_before).unwrap();

    pair.run_until(start + REKEY_AFTER_TIME + Duration::from_secs(1));
    assert!(pair.viewer_events.contains(&Event::Rekeyed {
        session: pair.viewer_session.unwrap()
    }));
    assert!(pair.camera_events.contains(&Event::Rekeyed {
        session: pair.camera_session.unwrap()
    }));

    assert_eq!(
        pair.deliver_to_camera(&old_to_camera),
        Ok(Some(b"old-1".to_vec()))
    );
    assert_eq!(
        pair.deliver_to_viewer(&old_to_viewer),
        Ok(Some(b"old-2".to_vec()))
    );
    // Replay after rekey: still refused.
    assert!(matches!(
        pair.deliver_to_camera(&delivered_before),
        Err(InputError::Replay(_))
    ));
    // New traffic uses the new keys.
    let fresh = pair.seal_viewer(b"new");
    assert_eq!(pair.deliver_to_camera(&fresh), Ok(Some(b"new".to_vec())));
    let fresh = pair.seal_camera(b"new-back");
    assert_eq!(
        pair.deliver_to_viewer(&fresh),
        Ok(Some(b"new-back".to_vec()))
    );

    // Once the old keys are past the reject-after time they are gone entirely.
    pair.run_until(start + REJECT_AFTER_TIME + Duration::from_secs(1));
    assert_eq!(
        pair.deliver_to_camera(&old_to_camera)
            .err()
            .map(|e| matches!(e, InputError::UnknownIndex(_))),
        Some(true)
    );
    // And the session is still alive on the newer keys.
    let fresh = pair.seal_viewer(b"later");
    assert_eq!(pair.deliver_to_camera(&fresh), Ok(Some(b"later".to_vec())));
}

#[test]
fn lost_rekey_confirmation_heals_on_the_next_rekey() {
    let mut pair = Pair::established(Config::default());
    let start = pair.now;
    // First rekey: deliver initiation and response, lose the confirmation keepalive.
    pair.now = start + REKEY_AFTER_TIME;
    pair.viewer.handle_timeout(pair.now);
    for d in pair.viewer_out() {
        pair.deliver_to_camera(&d).unwrap();
    }
    for d in pair.camera_out() {
        pair.deliver_to_viewer(&d).unwrap();
    }
    let lost = pair.viewer_out();
    assert_eq!(lost.len(), 1, "the confirmation");
    assert!(
        !pair
            .camera_events
            .iter()
            .any(|e| matches!(e, Event::Rekeyed { .. }))
    );
    // No traffic at all until the second rekey, which names the unconfirmed keys.
    pair.run_until(start + REKEY_AFTER_TIME * 2 + Duration::from_secs(1));
    assert!(
        pair.camera_events
            .iter()
            .any(|e| matches!(e, Event::Rekeyed { .. }))
    );
    let d = pair.seal_viewer(b"still here");
    assert_eq!(pair.deliver_to_camera(&d), Ok(Some(b"still here".to_vec())));
    let d = pair.seal_camera(b"me too");
    assert_eq!(pair.deliver_to_viewer(&d), Ok(Some(b"me too".to_vec())));
    // Long after: the session survives on rekeys alone.
    pair.run_until(start + REJECT_AFTER_TIME * 4);
    let d = pair.seal_viewer(b"later");
    assert_eq!(pair.deliver_to_camera(&d), Ok(Some(b"later".to_vec())));
}

#[test]
fn rekey_after_messages_limit() {
    let config = Config {
        rekey_after_messages: 5,
        ..Config::default()
    };
    let mut pair = Pair::established(config);
    // The confirmation used counter 0; data packets use 1, 2, 3 without reaching 5 sent.
    for i in 0..3u8 {
        let d = pair.seal_viewer(&[i]);
        pair.deliver_to_camera(&d).unwrap();
        assert!(pair.viewer_out().is_empty(), "no rekey before the limit");
    }
    // The packet with counter 4 is the 5th sent on these keys: the limit.
    let d = pair.seal_viewer(b"limit");
    pair.deliver_to_camera(&d).unwrap();
    let out = pair.viewer_out();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].bytes.len(),
        INITIATION_LEN,
        "a rekey initiation was started"
    );
    for d in &out {
        pair.deliver_to_camera(d).unwrap();
    }
    pair.pump();
    assert!(pair.camera_events.contains(&Event::Rekeyed {
        session: pair.camera_session.unwrap()
    }));
}

#[test]
fn responder_session_expires_without_rekey() {
    let mut pair = Pair::established(Config::default());
    let c = pair.camera_session.unwrap();
    let v = pair.viewer_session.unwrap();
    // The viewer disappears: run only the camera's timers.
    let end = pair.now + REJECT_AFTER_TIME;
    while let Some(at) = pair.camera.poll_timeout() {
        if at > end {
            break;
        }
        pair.now = at;
        pair.camera.handle_timeout(at);
    }
    assert_eq!(
        pair.camera.poll_event(),
        Some(Event::Closed {
            session: c,
            reason: CloseReason::Expired
        })
    );
    assert!(pair.camera.is_empty());
    let _ = v;
}

#[test]
fn rekey_initiation_replay_and_key_change_are_refused() {
    let mut pair = Pair::established(Config::default());
    pair.run_until(pair.now + REKEY_AFTER_TIME);
    // Capture the rekey initiation (sent when the timer fired, already delivered), then replay it.
    let mut pair2 = Pair::established(Config::default());
    let v = pair2.viewer_session.unwrap();
    pair2.now += REKEY_AFTER_TIME;
    pair2.viewer.handle_timeout(pair2.now);
    let rekey = pair2.viewer_out().remove(0);
    assert_eq!(rekey.bytes.len(), INITIATION_LEN);
    pair2.deliver_to_camera(&rekey).unwrap();
    let response = pair2.camera_out();
    assert_eq!(
        pair2.deliver_to_camera(&rekey),
        Err(InputError::StaleAttempt {
            attempt: 2,
            last: 2
        }),
        "a replayed rekey initiation is refused"
    );
    for d in &response {
        pair2.deliver_to_viewer(d).unwrap();
    }
    pair2.pump();
    assert!(pair2.viewer_events.contains(&Event::Rekeyed { session: v }));
}

#[test]
fn cookie_path_under_load() {
    // Every initiation counts as "under load".
    let camera_config = Config {
        under_load_half_open: 0,
        ..Config::default()
    };
    let mut pair = Pair::with_configs(Config::default(), camera_config);
    pair.connect();
    let initiation = pair.viewer_out().remove(0);
    assert_eq!(pair.deliver_to_camera(&initiation), Ok(None));
    let out = pair.camera_out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].bytes[0], TYPE_COOKIE_REPLY);
    assert!(
        out[0].bytes.len() <= initiation.bytes.len(),
        "no amplification"
    );
    assert_eq!(out[0].bytes.len(), COOKIE_REPLY_LEN);
    assert!(pair.camera.is_empty(), "no state kept, no DH done");
    assert_eq!(pair.camera.stats().cookie_replies_sent, 1);
    pair.deliver_to_viewer(&out[0]).unwrap();
    // The retransmission carries mac2 and is served.
    pair.run_until(pair.now + Duration::from_secs(3));
    assert!(pair.camera_session.is_some());
    assert_eq!(pair.camera.stats().cookie_replies_sent, 1);
    // A cookie reply from another address than... a forged one is refused.
    let mut forged = out[0].clone();
    forged.bytes[40] ^= 1;
    assert!(pair.deliver_to_viewer(&forged).is_err());
}

#[test]
fn cookie_replies_under_an_initiation_flood_from_the_rate_limit() {
    let camera_config = Config {
        under_load_initiations_per_second: 3,
        ..Config::default()
    };
    let mut pair = Pair::with_configs(Config::default(), camera_config);
    let mut answered = Vec::new();
    for _ in 0..6 {
        pair.connect();
        let initiation = pair.viewer_out().remove(0);
        pair.deliver_to_camera(&initiation).unwrap();
        for d in pair.camera_out() {
            assert!(
                d.bytes.len() <= initiation.bytes.len(),
                "response larger than request"
            );
            answered.push(d.bytes[0]);
        }
    }
    assert_eq!(answered, vec![0x02, 0x02, 0x02, 0x03, 0x03, 0x03]);
    // A second later the bucket has refilled.
    pair.now += Duration::from_secs(1);
    pair.connect();
    let initiation = pair.viewer_out().remove(0);
    pair.deliver_to_camera(&initiation).unwrap();
    assert_eq!(pair.camera_out()[0].bytes[0], 0x02);
}

#[test]
fn limit_max_sessions() {
    let config = Config {
        max_sessions: 2,
        ..Config::default()
    };
    let mut pair = Pair::new(config.clone());
    pair.connect();
    pair.connect();
    assert_eq!(
        pair.viewer.connect(
            pair.now,
            pair.camera_addr,
            SessionKind::Rendezvous,
            pair.camera_public
        ),
        Err(ConnectError::TableFull { limit: 2 })
    );
    // Responder side: two viewers fill the camera with established sessions, a third is
    // dropped (a half-open session would have been evicted instead; see
    // `finding_2_full_half_open_table_evicts_the_oldest`).
    pair.pump();
    assert_eq!((pair.camera.len(), pair.camera.half_open()), (2, 0));
    let mut third = SessionTable::new(keypair(300), Config::default(), rng(30));
    third
        .connect(
            pair.now,
            pair.camera_addr,
            SessionKind::Peer {
                device_id: DEVICE_ID,
            },
            pair.camera_public,
        )
        .unwrap();
    let mut buf = [0u8; 256];
    let t = third.poll_transmit(&mut buf).unwrap();
    assert_eq!(
        pair.camera
            .handle_input(pair.now, addr("203.0.113.9:1"), &mut buf[..t.len]),
        Err(InputError::TableFull { limit: 2 })
    );
    assert_eq!(pair.camera.stats().limit_drops, 1);
}

#[test]
fn limit_max_half_open() {
    let config = Config {
        max_half_open: 3,
        under_load_half_open: 100,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    for _ in 0..3 {
        pair.connect();
    }
    assert_eq!(
        pair.viewer.connect(
            pair.now,
            pair.camera_addr,
            SessionKind::Rendezvous,
            pair.camera_public
        ),
        Err(ConnectError::TooManyHalfOpen { limit: 3 })
    );
    // The camera's half-open slots are all its own handshakes (never evicted): an
    // initiation finds nothing to evict and is refused before any DH.
    for _ in 0..3 {
        pair.camera
            .connect(
                pair.now,
                addr("192.0.2.99:1"),
                SessionKind::Rendezvous,
                pair.camera_public,
            )
            .unwrap();
    }
    let _ = pair.camera_out();
    let inputs = pair.viewer_out();
    assert_eq!(
        pair.deliver_to_camera(&inputs[0]),
        Err(InputError::TooManyHalfOpen { limit: 3 })
    );
    assert_eq!(pair.camera.half_open(), 3);
    assert_eq!(pair.camera.stats().limit_drops, 1);
}

#[test]
fn limit_transmit_queue() {
    let config = Config {
        max_queued_transmits: 2,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    for _ in 0..3 {
        pair.connect();
    }
    let sent = pair.viewer_out();
    assert_eq!(sent.len(), 2, "third initiation dropped at the queue limit");
    assert_eq!(pair.viewer.stats().transmits_dropped, 1);
    for d in &sent {
        pair.deliver_to_camera(d).unwrap();
    }
    pair.pump();
    assert_eq!(pair.camera.len(), 2);
    // The dropped initiation is simply retransmitted later: the limit costs latency only.
    pair.run_until(pair.now + Duration::from_secs(2));
    assert_eq!(pair.camera.len(), 3);
}

#[test]
fn limit_event_queue_drops_and_counts() {
    let config = Config {
        max_queued_events: 1,
        ..Config::default()
    };
    let mut table = SessionTable::new(keypair(5), config, rng(5));
    let camera = *keypair(6).public();
    let now = Instant::now();
    for _ in 0..3 {
        table
            .connect(now, addr("192.0.2.1:1"), SessionKind::Rendezvous, camera)
            .unwrap();
    }
    // All three time out with no answer: three HandshakeFailed events, one queued.
    table.handle_timeout(now + HANDSHAKE_DEADLINE);
    assert!(matches!(
        table.poll_event(),
        Some(Event::HandshakeFailed { .. })
    ));
    assert_eq!(table.poll_event(), None);
    assert_eq!(table.stats().events_dropped, 2);
}

/// An RNG that always returns the same value: every index draw collides.
struct StuckRng;
impl rand::RngCore for StuckRng {
    fn next_u32(&mut self) -> u32 {
        7
    }
    fn next_u64(&mut self) -> u64 {
        7
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(7);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        dest.fill(7);
        Ok(())
    }
}
impl rand::CryptoRng for StuckRng {}

#[test]
fn limit_index_draws() {
    let mut table = SessionTable::new(keypair(5), Config::default(), Box::new(StuckRng));
    let camera = *keypair(6).public();
    let now = Instant::now();
    table
        .connect(now, addr("192.0.2.1:1"), SessionKind::Rendezvous, camera)
        .unwrap();
    assert_eq!(
        table.connect(now, addr("192.0.2.1:1"), SessionKind::Rendezvous, camera),
        Err(ConnectError::IndexesExhausted)
    );
    assert_eq!(table.len(), 1);
}

#[test]
fn rendezvous_session_exposes_the_client_static_key() {
    let server_key = keypair(50);
    let server_public = *server_key.public();
    let mut server = SessionTable::with_responder(
        server_key,
        SessionKind::Rendezvous,
        Config::default(),
        rng(51),
    );
    let device_key = keypair(52);
    let device_public = *device_key.public();
    let mut device = SessionTable::new(device_key, Config::default(), rng(53));
    let now = Instant::now();
    let server_addr = addr("192.0.2.53:3478");
    let device_addr = addr("198.51.100.1:40000");
    device
        .connect(now, server_addr, SessionKind::Rendezvous, server_public)
        .unwrap();
    let mut buf = [0u8; 512];
    for _ in 0..2 {
        while let Some(t) = device.poll_transmit(&mut buf) {
            let _ = server.handle_input(now, device_addr, &mut buf[..t.len]);
        }
        while let Some(t) = server.poll_transmit(&mut buf) {
            let _ = device.handle_input(now, server_addr, &mut buf[..t.len]);
        }
    }
    let Some(Event::Established {
        session,
        remote_static,
        ..
    }) = server.poll_event()
    else {
        panic!("no session")
    };
    assert_eq!(remote_static, device_public);
    assert_eq!(server.remote_static(session), Some(&device_public));
    assert_eq!(
        server
            .sessions_with_remote(&device_public)
            .collect::<Vec<_>>(),
        vec![session]
    );
}

#[test]
fn limit_plaintext_and_buffer_sizes() {
    let mut pair = Pair::established(Config::default());
    let v = pair.viewer_session.unwrap();
    let now = pair.now;
    let mut big = vec![0u8; MAX_PLAINTEXT_LEN + TRANSPORT_OVERHEAD + 1];
    assert_eq!(
        pair.viewer
            .seal_in_place(v, now, &mut big, MAX_PLAINTEXT_LEN + 1),
        Err(SealError::PlaintextTooLong {
            len: MAX_PLAINTEXT_LEN + 1,
            limit: MAX_PLAINTEXT_LEN
        })
    );
    // The largest plaintext goes through end to end.
    let t = pair
        .viewer
        .seal_in_place(v, now, &mut big, MAX_PLAINTEXT_LEN)
        .unwrap();
    assert_eq!(t.len, wire::MAX_PACKET_LEN);
    let mut bytes = big[..t.len].to_vec();
    assert!(matches!(
        pair.camera.handle_input(now, pair.viewer_addr, &mut bytes),
        Ok(Input::Data { plaintext, .. }) if plaintext.len() == MAX_PLAINTEXT_LEN
    ));
    let mut small = [0u8; 20];
    assert_eq!(
        pair.viewer.seal(v, now, b"hello", &mut small),
        Err(SealError::BufferTooSmall {
            needed: 34,
            available: 20
        })
    );
    assert_eq!(
        pair.viewer
            .seal(SessionId::for_test(999), now, b"x", &mut big),
        Err(SealError::UnknownSession)
    );
    // Replays are dropped and counted.
    let d = pair.seal_viewer(b"once");
    pair.deliver_to_camera(&d).unwrap();
    let before = pair.camera.stats().replays_dropped;
    assert!(pair.deliver_to_camera(&d).is_err());
    assert_eq!(pair.camera.stats().replays_dropped, before + 1);
}

#[test]
fn garbage_is_dropped_with_typed_errors() {
    let mut pair = Pair::established(Config::default());
    let from = pair.viewer_addr;
    let now = pair.now;
    let mut cases: Vec<(Vec<u8>, InputError)> = vec![
        (vec![], InputError::Malformed(wire::DecodeError::Empty)),
        (
            vec![0x09, 1, 2],
            InputError::Malformed(wire::DecodeError::UnknownType(0x09)),
        ),
        (
            {
                let mut v = vec![0x04; 40];
                v[1..5].copy_from_slice(&[0, 0, 0, 1]);
                v
            },
            InputError::UnknownIndex(1),
        ),
        (
            vec![0x03; COOKIE_REPLY_LEN],
            InputError::UnknownIndex(0x0303_0303),
        ),
    ];
    let mut initiation = vec![0u8; INITIATION_LEN];
    initiation[0] = 0x01;
    cases.push((initiation, InputError::BadMac1));
    for (mut bytes, expected) in cases {
        assert_eq!(
            pair.camera.handle_input(now, from, &mut bytes),
            Err(expected)
        );
    }
    // A table without a responder role accepts no initiations.
    let mut initiation = vec![0u8; INITIATION_LEN];
    initiation[0] = 0x01;
    assert_eq!(
        pair.viewer.handle_input(now, from, &mut initiation),
        Err(InputError::NotAccepting)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any reordering with duplicates of packets inside the window is accepted exactly
    /// once per packet, through the whole table.
    #[test]
    fn reordered_duplicated_packets_accepted_once(
        count in 1usize..120,
        order in proptest::collection::vec(any::<proptest::sample::Index>(), 1..250),
    ) {
        let mut pair = Pair::established(Config::default());
        let packets: Vec<Datagram> = (0..count).map(|i| pair.seal_viewer(&(i as u32).to_be_bytes())).collect();
        let mut accepted = vec![0u32; count];
        // Every packet at least once, plus the random extra picks (duplicates, reordering).
        let mut schedule: Vec<usize> = order.iter().map(|ix| ix.index(count)).collect();
        for i in 0..count {
            let at = order.get(i).map_or(0, |ix| ix.index(schedule.len() + 1));
            schedule.insert(at, i);
        }
        for i in schedule {
            match pair.deliver_to_camera(&packets[i]) {
                Ok(Some(p)) => {
                    prop_assert_eq!(p, (i as u32).to_be_bytes().to_vec());
                    accepted[i] += 1;
                }
                Err(InputError::Replay(ReplayError::Duplicate(_))) => {}
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert!(accepted.iter().all(|&n| n == 1), "{:?}", accepted);
    }

    /// Any single bit flip anywhere in a transport packet is rejected.
    #[test]
    fn any_bit_flip_is_rejected(payload in proptest::collection::vec(any::<u8>(), 0..64), bit in any::<proptest::sample::Index>()) {
        let mut pair = Pair::established(Config::default());
        let mut d = pair.seal_viewer(&payload);
        let bits = d.bytes.len() * 8;
        let b = bit.index(bits);
        d.bytes[b / 8] ^= 1 << (b % 8);
        prop_assert!(pair.deliver_to_camera(&d).is_err());
        // The genuine packet still goes through afterwards: the flip did not poison the window.
        d.bytes[b / 8] ^= 1 << (b % 8);
        let opened = pair.deliver_to_camera(&d);
        prop_assert!(opened.is_ok(), "{:?}", opened);
    }

    /// Packets captured before a rekey, replayed after it (in any order), are refused.
    #[test]
    fn replay_after_rekey_is_rejected(count in 1usize..20, seed in any::<u64>()) {
        let mut pair = Pair::established(Config::default());
        let start = pair.now;
        let captured: Vec<Datagram> = (0..count).map(|i| pair.seal_viewer(&[i as u8])).collect();
        for d in &captured {
            prop_assert!(pair.deliver_to_camera(d).is_ok());
        }
        pair.run_until(start + REKEY_AFTER_TIME + Duration::from_secs(1));
        let rekeyed = Event::Rekeyed { session: pair.camera_session.unwrap() };
        prop_assert!(pair.camera_events.contains(&rekeyed), "camera rekeyed");
        let mut order: Vec<usize> = (0..count).collect();
        let mut r = ChaCha20Rng::seed_from_u64(seed);
        rand::seq::SliceRandom::shuffle(&mut order[..], &mut r);
        for i in order {
            prop_assert!(pair.deliver_to_camera(&captured[i]).is_err());
        }
    }
}

#[test]
fn fuzz_entry_points_accept_the_seed_corpus() {
    for target in ["session_packet", "session_responder"] {
        let dir = format!("{}/fuzz-seeds/{target}", env!("CARGO_MANIFEST_DIR"));
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("seed corpus") {
            let path = entry.expect("entry").path();
            // Only the committed seeds: a fuzzer run adds its own (arbitrary) corpus files.
            let is_seed = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"));
            if !is_seed {
                continue;
            }
            let data = std::fs::read(&path).expect("seed");
            if target == "session_packet" {
                assert!(
                    Packet::decode(&data).is_ok() || auth::AuthRequest::decode(&data).is_ok(),
                    "{path:?}"
                );
                fuzzing::decode_packet(&data);
            } else {
                fuzzing::responder_input(&data);
            }
            seen += 1;
        }
        assert!(seen >= 2, "{target}: seeds");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// The responder fuzz harness (no panic, no amplification, limits hold, the genuine
    /// session survives) on arbitrary chunks, with valid-mac1 initiations mixed in.
    #[test]
    fn responder_survives_arbitrary_datagrams(
        chunks in proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..160), any::<bool>()),
            1..12,
        ),
    ) {
        let mut data = Vec::new();
        for (control, mut body, as_initiation) in chunks {
            if as_initiation {
                body.resize(INITIATION_LEN, 0);
                body[0] = 0x01;
            }
            body.retain(|b| *b != 0xff);
            data.push(if as_initiation { control | 0x40 } else { control } & 0xfe);
            data.extend_from_slice(&body);
            data.push(0xff);
        }
        fuzzing::responder_input(&data);
    }
}

/// A seeded lossy network: loss, duplication and reordering (random delays) in both
/// directions, ten minutes of virtual time with traffic both ways, several rekeys.
struct LossyNet {
    rng: ChaCha20Rng,
    loss: f64,
    duplicate: f64,
    in_flight: Vec<(Instant, Datagram)>,
}

impl LossyNet {
    fn send(&mut self, now: Instant, d: Datagram) {
        use rand::Rng;
        if self.rng.gen_bool(self.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = Duration::from_millis(self.rng.gen_range(10..80));
            self.in_flight.push((now + delay, d.clone()));
        }
    }

    fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.iter().map(|(at, _)| *at).min()
    }

    fn take_due(&mut self, now: Instant) -> Vec<Datagram> {
        let (due, later): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|(at, _)| *at <= now);
        self.in_flight = later;
        due.into_iter().map(|(_, d)| d).collect()
    }
}

fn lossy_run(seed: u64, loss: f64, duplicate: f64) {
    lossy_run_with(seed, loss, duplicate, Config::default());
}

fn lossy_run_with(seed: u64, loss: f64, duplicate: f64, camera: Config) {
    let mut pair = Pair::with_configs(Config::default(), camera);
    let mut net = LossyNet {
        rng: ChaCha20Rng::seed_from_u64(seed),
        loss,
        duplicate,
        in_flight: Vec::new(),
    };
    let start = pair.now;
    let end = start + Duration::from_secs(600);
    let send_every = Duration::from_millis(500);
    let mut next_send = start + send_every;
    let mut sent_by_viewer = 0u32;
    let mut accepted_at_camera = std::collections::HashMap::<Vec<u8>, u32>::new();
    let mut accepted_at_viewer = std::collections::HashMap::<Vec<u8>, u32>::new();
    pair.connect();
    loop {
        // Hand everything the tables want to send to the network.
        for d in pair.viewer_out().into_iter().chain(pair.camera_out()) {
            net.send(pair.now, d);
        }
        pair.collect_events();
        for e in std::mem::take(&mut pair.viewer_events) {
            match e {
                // A driver reconnects after a failed first handshake.
                Event::HandshakeFailed { .. } => {
                    pair.connect();
                }
                Event::Closed { .. } => panic!("session closed at {:?}", pair.now - start),
                _ => {}
            }
        }
        let next = [
            pair.viewer.poll_timeout(),
            pair.camera.poll_timeout(),
            net.next_delivery(),
            Some(next_send),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the send timer always exists");
        if next > end {
            break;
        }
        pair.now = pair.now.max(next);
        for d in net.take_due(pair.now) {
            let result = if d.to == pair.camera_addr {
                pair.deliver_to_camera(&d)
            } else {
                pair.deliver_to_viewer(&d)
            };
            match result {
                Ok(Some(payload)) if d.to == pair.camera_addr => {
                    *accepted_at_camera.entry(payload).or_default() += 1
                }
                Ok(Some(payload)) => *accepted_at_viewer.entry(payload).or_default() += 1,
                Ok(None) => {}
                // Duplicates, late packets for retired attempts, stale handshakes.
                Err(
                    InputError::Replay(_) | InputError::UnknownIndex(_) | InputError::Unexpected,
                ) => {}
                Err(InputError::StaleAttempt { .. }) => {}
                // Duplicated (or overtaken) initiations: refused by their timestamp.
                Err(InputError::ReplayedInitiation) => {}
                Err(other) => panic!("unexpected drop {other:?} at {:?}", pair.now - start),
            }
        }
        pair.viewer.handle_timeout(pair.now);
        pair.camera.handle_timeout(pair.now);
        if pair.now >= next_send {
            next_send += send_every;
            let viewer_ready = pair
                .viewer_session
                .is_some_and(|v| pair.viewer.is_established(v));
            if viewer_ready {
                let d = pair.seal_viewer(&sent_by_viewer.to_be_bytes());
                sent_by_viewer += 1;
                net.send(pair.now, d);
            }
            if let Some(c) = pair
                .camera_session
                .filter(|c| pair.camera.is_established(*c))
            {
                let mut buf = vec![0u8; 64];
                if let Ok(t) = pair.camera.seal(
                    c,
                    pair.now,
                    &pair.now.duration_since(start).as_millis().to_be_bytes(),
                    &mut buf,
                ) {
                    buf.truncate(t.len);
                    net.send(
                        pair.now,
                        Datagram {
                            from: pair.camera_addr,
                            to: t.destination,
                            bytes: buf,
                        },
                    );
                }
            }
        }
    }
    assert!(
        sent_by_viewer > 1000,
        "traffic flowed for most of the run ({sent_by_viewer})"
    );
    assert!(
        accepted_at_camera.values().all(|&n| n == 1),
        "a packet was accepted twice"
    );
    assert!(
        accepted_at_viewer.values().all(|&n| n == 1),
        "a packet was accepted twice"
    );
    let delivered = accepted_at_camera.len() as f64 / f64::from(sent_by_viewer);
    assert!(
        delivered > (1.0 - loss) * 0.9,
        "delivered {delivered:.2} with loss {loss}"
    );
    let rekeys = pair
        .camera_events
        .iter()
        .filter(|e| matches!(e, Event::Rekeyed { .. }))
        .count();
    assert!(rekeys >= 3, "rekeyed {rekeys} times in ten minutes");
    // Abandoned half-open attempts were cleaned up; one live session each side.
    assert_eq!(pair.viewer.len(), 1);
    assert_eq!(pair.camera.len(), 1);
}

#[test]
fn lossy_network_ten_minutes_fixed_seeds() {
    for seed in 0..3 {
        lossy_run(seed, 0.2, 0.1);
    }
    lossy_run_with(3, 0.2, 0.1, compact());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn lossy_network_ten_minutes(seed in any::<u64>(), loss in 0.0f64..0.25, duplicate in 0.0f64..0.2) {
        lossy_run(seed, loss, duplicate);
    }
}

#[test]
fn password_proof_is_bound_to_one_session() {
    // Two sessions between the same viewer and camera have different handshake hashes,
    // so a proof captured from one is refused in the other.
    let mut pair = Pair::established(Config::default());
    let first = pair.viewer_session.unwrap();
    let first_camera = pair.camera_session.unwrap();
    let second = pair.connect();
    pair.pump();
    let second_camera = pair.camera_session.unwrap();
    assert_ne!(first_camera, second_camera);
    let h1 = *pair.viewer.handshake_hash(first).unwrap();
    let h2 = *pair.viewer.handshake_hash(second).unwrap();
    assert_ne!(h1, h2);
    assert_eq!(pair.camera.handshake_hash(second_camera), Some(&h2));

    let key = auth::PasswordKey::derive(b"admin", &DEVICE_ID);
    let mut authorizer = auth::ViewerAuthorizer::new(Some(key.clone()));
    let viewer_key = *pair.camera.remote_static(second_camera).unwrap();
    let captured = auth::AuthRequest::password(&key, &h1, false);
    assert_eq!(
        authorizer.authorize(pair.now, &viewer_key, &h2, &captured),
        auth::AuthResponse::Rejected(auth::AuthRejection::WrongPassword)
    );
    let fresh = auth::AuthRequest::password(&key, &h2, true);
    assert_eq!(
        authorizer.authorize(pair.now, &viewer_key, &h2, &fresh),
        auth::AuthResponse::Accepted { remembered: true }
    );
    // Revocation: the device forgets the key and closes that viewer's live sessions.
    assert!(authorizer.revoke(&viewer_key));
    let live: Vec<SessionId> = pair.camera.sessions_with_remote(&viewer_key).collect();
    assert_eq!(live.len(), 2);
    for id in live {
        assert!(pair.camera.close(id));
    }
    assert!(pair.camera.is_empty());
    let d = pair.seal_viewer(b"after revoke");
    assert!(matches!(
        pair.deliver_to_camera(&d),
        Err(InputError::UnknownIndex(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Security issue 12, finding 2: one address filled the 512-entry half-open table while
// answering cookies like an honest client; replayed initiations were accepted.

/// An attacker at one address that builds initiations for the camera (a fresh static key
/// and timestamp each time, as many clients would) and answers cookie replies like an
/// honest client: it stamps every later initiation with the cookie. It never confirms,
/// so every initiation the camera accepts stays half-open.
struct Flooder {
    rng: ChaCha20Rng,
    camera_public: PublicKey,
    jar: cookie::CookieJar,
    sent: u64,
}

impl Flooder {
    fn new(camera_public: PublicKey, seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            camera_public,
            jar: cookie::CookieJar::new(&camera_public),
            sent: 0,
        }
    }

    fn initiation(&mut self, now: Instant) -> Vec<u8> {
        use rand::RngCore;
        self.sent += 1;
        let key = StaticKeypair::generate(&mut self.rng);
        let ephemeral = noise::Ephemeral::from_rng(&mut self.rng);
        let (_, mut packet) = noise::write_initiation(
            &key,
            &self.camera_public,
            &SessionKind::Peer {
                device_id: DEVICE_ID,
            }
            .prologue(),
            &ephemeral,
            self.rng.next_u32() | 1,
            0,
            &noise::InitiationPayload {
                attempt: 1,
                timestamp: dos::tai64n(self.sent),
            },
        )
        .expect("initiation");
        self.jar.stamp(now, &mut packet);
        packet.to_vec()
    }

    /// Takes the camera's answers: keeps cookies, ignores responses (never confirms).
    fn answer(&mut self, now: Instant, datagrams: &[Datagram]) {
        for d in datagrams {
            if let Ok(Packet::CookieReply(reply)) = Packet::decode(&d.bytes) {
                // Bound to the mac1 of the initiation just sent, as for a client.
                assert!(self.jar.consume_reply(now, &reply));
            }
        }
    }
}

/// Sends one flooder initiation from `from` to the pair's camera; returns the result and
/// hands the camera's answers to the flooder.
fn flood_once(
    pair: &mut Pair,
    flooder: &mut Flooder,
    from: SocketAddr,
) -> Result<Option<Vec<u8>>, InputError> {
    let d = Datagram {
        from,
        to: pair.camera_addr,
        bytes: flooder.initiation(pair.now),
    };
    let result = pair.deliver_to_camera(&d);
    let answers: Vec<Datagram> = pair
        .camera_out()
        .into_iter()
        .filter(|a| a.to == from)
        .collect();
    flooder.answer(pair.now, &answers);
    result
}

#[test]
fn finding_2_one_source_cannot_fill_the_half_open_table() {
    // Default limits: the finding's setting (512 half-open, 64 before "under load").
    let mut pair = Pair::new(Config::default());
    let mut flooder = Flooder::new(pair.camera_public, 7);
    let attacker = addr("203.0.113.66:4444");
    let start = pair.now;
    let step = Duration::from_millis(1000 / 26);
    let mut honest_started = false;
    // 30 s at ~26 initiations per second (the finding's rate): more than 512 half-open
    // sessions' worth within the 20 s each one lives.
    while pair.now < start + Duration::from_secs(30) {
        pair.now += step;
        let _ = flood_once(&mut pair, &mut flooder, attacker);
        pair.camera.handle_timeout(pair.now);
        let held = pair.camera.half_open_from(attacker);
        assert!(
            held <= MAX_HALF_OPEN_PER_SOURCE,
            "one source holds {held} half-open sessions"
        );
        assert!(pair.camera.half_open() <= MAX_HALF_OPEN_PER_SOURCE + 1);
        // Mid-flood, at the point where the old table was full, an honest viewer from
        // another address connects and must complete.
        if !honest_started && pair.now >= start + Duration::from_secs(22) {
            honest_started = true;
            pair.connect();
        }
        if honest_started {
            for d in pair.viewer_out() {
                let _ = pair.deliver_to_camera(&d);
            }
            let to_viewer: Vec<Datagram> = pair
                .camera_out()
                .into_iter()
                .filter(|d| d.to == pair.viewer_addr)
                .collect();
            for d in &to_viewer {
                let _ = pair.deliver_to_viewer(d);
            }
            pair.viewer.handle_timeout(pair.now);
        }
    }
    assert!(flooder.sent >= 750);
    let stats = pair.camera.stats();
    assert!(
        stats.cookie_replies_sent >= 1,
        "the attacker had to answer cookies"
    );
    assert!(
        stats.rate_limited > 0 && stats.source_half_open_evicted > 0,
        "{stats:?}"
    );
    let viewer_session = pair.viewer_session.expect("honest viewer connected");
    assert!(pair.viewer.is_established(viewer_session));
    let camera_session = pair.camera_session.expect("honest session established");
    assert_eq!(
        pair.camera.remote_static(camera_session),
        Some(pair.viewer.local_public())
    );
    let d = pair.seal_viewer(b"still watching");
    assert_eq!(
        pair.deliver_to_camera(&d),
        Ok(Some(b"still watching".to_vec()))
    );
}

#[test]
fn finding_2_replayed_initiation_is_rejected() {
    let mut pair = Pair::new(Config::default());
    pair.connect();
    // The first attempt is lost; the retransmission (a newer initiation) gets through.
    let first = pair.viewer_out().remove(0);
    pair.run_until(pair.now + HANDSHAKE_INITIAL_RTO);
    let c = pair
        .camera_session
        .expect("established by the retransmission");
    assert_eq!((pair.camera.len(), pair.camera.half_open()), (1, 0));
    let replayed_before = pair.camera.stats().replayed_initiations;
    // An attacker replays the delivered initiation (captured on the way) and the older,
    // lost one, from its own address and from the viewer's.
    for from in [addr("203.0.113.66:4444"), pair.viewer_addr] {
        let mut replay = first.clone();
        replay.from = from;
        assert_eq!(
            pair.deliver_to_camera(&replay),
            Err(InputError::ReplayedInitiation)
        );
    }
    assert!(pair.camera_out().is_empty(), "no response to a replay");
    assert_eq!((pair.camera.len(), pair.camera.half_open()), (1, 0));
    assert_eq!(
        pair.camera.stats().replayed_initiations,
        replayed_before + 2
    );
    assert!(pair.camera.is_established(c));
    assert_eq!(pair.camera.remote_addr(c), Some(pair.viewer_addr));
}

#[test]
fn finding_2_replayed_initiation_does_not_disturb_the_established_session() {
    let mut pair = Pair::new(Config::default());
    pair.connect();
    let initiation = pair.viewer_out().remove(0);
    pair.deliver_to_camera(&initiation).unwrap();
    for d in pair.camera_out() {
        pair.deliver_to_viewer(&d).unwrap();
    }
    pair.pump();
    let c = pair.camera_session.expect("established");
    for from in [addr("203.0.113.66:4444"), pair.viewer_addr] {
        let mut replay = initiation.clone();
        replay.from = from;
        assert_eq!(
            pair.deliver_to_camera(&replay),
            Err(InputError::ReplayedInitiation)
        );
    }
    assert!(pair.camera_out().is_empty());
    assert_eq!((pair.camera.len(), pair.camera.half_open()), (1, 0));
    let d = pair.seal_viewer(b"fine");
    assert_eq!(pair.deliver_to_camera(&d), Ok(Some(b"fine".to_vec())));
    assert_eq!(pair.camera.remote_addr(c), Some(pair.viewer_addr));
    // Even after the session is gone, the key's greatest timestamp is remembered.
    assert!(pair.camera.close(c));
    assert_eq!(
        pair.deliver_to_camera(&initiation),
        Err(InputError::ReplayedInitiation)
    );
    assert!(pair.camera.is_empty());
    // A new connection from the same viewer (newer timestamp) is accepted.
    pair.viewer.close(pair.viewer_session.unwrap());
    pair.camera_session = None;
    pair.connect();
    pair.pump();
    assert!(pair.camera_session.is_some());
}

#[test]
fn finding_2_per_source_rate_limit() {
    let config = Config {
        initiations_per_source_per_second: 2,
        initiation_burst_per_source: 2,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let mut flooder = Flooder::new(pair.camera_public, 8);
    let attacker = addr("203.0.113.66:4444");
    // Without a cookie: the burst gets a DH, then the source must prove its address.
    assert_eq!(flood_once(&mut pair, &mut flooder, attacker), Ok(None));
    assert_eq!(flood_once(&mut pair, &mut flooder, attacker), Ok(None));
    assert_eq!(pair.camera.half_open(), 2);
    assert_eq!(flood_once(&mut pair, &mut flooder, attacker), Ok(None));
    assert_eq!(pair.camera.half_open(), 2, "answered with a cookie, no DH");
    assert_eq!(pair.camera.stats().source_cookie_replies, 1);
    // With the cookie (address proven): its own bucket, then dropped.
    assert_eq!(flood_once(&mut pair, &mut flooder, attacker), Ok(None));
    assert_eq!(flood_once(&mut pair, &mut flooder, attacker), Ok(None));
    assert_eq!(pair.camera.half_open(), 4);
    assert_eq!(
        flood_once(&mut pair, &mut flooder, attacker),
        Err(InputError::RateLimited { per_second: 2 })
    );
    assert_eq!(pair.camera.stats().rate_limited, 1);
    assert_eq!(pair.camera.half_open(), 4);
    // Other sources are not limited by it.
    pair.connect();
    pair.pump();
    assert!(pair.camera_session.is_some());
    // Half a second refills one token.
    pair.now += Duration::from_millis(500);
    assert_eq!(flood_once(&mut pair, &mut flooder, attacker), Ok(None));
    assert_eq!(
        flood_once(&mut pair, &mut flooder, attacker),
        Err(InputError::RateLimited { per_second: 2 })
    );
}

#[test]
fn finding_2_ipv6_sources_are_grouped_by_64() {
    let config = Config {
        max_half_open_per_source: 2,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let mut flooder = Flooder::new(pair.camera_public, 9);
    // Three addresses (and ports) of one /64: one source.
    let same_64 = [
        addr("[2001:db8:1:2::1]:1000"),
        addr("[2001:db8:1:2:8000::7]:2000"),
        addr("[2001:db8:1:2:ffff:ffff:ffff:ffff]:3000"),
    ];
    assert_eq!(flood_once(&mut pair, &mut flooder, same_64[0]), Ok(None));
    assert_eq!(flood_once(&mut pair, &mut flooder, same_64[1]), Ok(None));
    assert_eq!(pair.camera.half_open(), 2);
    // At the per-source cap: without a cookie, a cookie reply and no DH.
    assert_eq!(flood_once(&mut pair, &mut flooder, same_64[2]), Ok(None));
    assert_eq!(pair.camera.half_open(), 2);
    assert_eq!(pair.camera.stats().source_cookie_replies, 1);
    // The neighbouring /64 is another source.
    let other_64 = addr("[2001:db8:1:3::1]:1000");
    assert_eq!(flood_once(&mut pair, &mut flooder, other_64), Ok(None));
    assert_eq!(pair.camera.half_open(), 3);
    // With the cookie (bound to the exact address), the /64 replaces its own oldest
    // half-open session rather than growing past the cap.
    assert_eq!(flood_once(&mut pair, &mut flooder, same_64[2]), Ok(None));
    assert_eq!(pair.camera.half_open(), 3);
    assert_eq!(pair.camera.stats().source_half_open_evicted, 1);
}

#[test]
fn finding_2_full_half_open_table_evicts_the_oldest() {
    let config = Config {
        max_half_open: 3,
        under_load_half_open: 100,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let mut flooder = Flooder::new(pair.camera_public, 10);
    // Three sources, one half-open session each: the table is full.
    let mut first_response = None;
    for i in 1..=3 {
        let from = addr(&format!("203.0.113.{i}:1"));
        let d = Datagram {
            from,
            to: pair.camera_addr,
            bytes: flooder.initiation(pair.now),
        };
        assert_eq!(pair.deliver_to_camera(&d), Ok(None));
        let out = pair.camera_out();
        first_response.get_or_insert(out[0].bytes.clone());
    }
    assert_eq!(pair.camera.half_open(), 3);
    // An honest viewer is not refused: the oldest half-open session makes room.
    pair.connect();
    pair.pump();
    assert!(pair.camera_session.is_some());
    assert_eq!(pair.camera.stats().half_open_evicted, 1);
    assert_eq!(pair.camera.stats().limit_drops, 0);
    assert_eq!((pair.camera.len(), pair.camera.half_open()), (3, 2));
    // The evicted one was the oldest: its index is gone.
    let Ok(Packet::Response(r)) = Packet::decode(first_response.as_deref().unwrap()) else {
        panic!()
    };
    let mut probe = vec![0u8; TRANSPORT_OVERHEAD];
    probe[0] = wire::TYPE_TRANSPORT;
    probe[1..5].copy_from_slice(&r.sender_index.to_be_bytes());
    assert_eq!(
        pair.camera
            .handle_input(pair.now, addr("203.0.113.1:1"), &mut probe),
        Err(InputError::UnknownIndex(r.sender_index))
    );
}

#[test]
fn limit_max_sources_evicts_instead_of_refusing() {
    let config = Config {
        max_sources: 2,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    let mut flooder = Flooder::new(pair.camera_public, 11);
    for i in 1..=5 {
        let from = addr(&format!("203.0.113.{i}:1"));
        assert_eq!(flood_once(&mut pair, &mut flooder, from), Ok(None));
    }
    assert_eq!(pair.camera.half_open(), 5, "nobody refused");
    assert!(pair.camera.source_count() <= 2);
    assert!(pair.camera.stats().sources_evicted >= 3);
    pair.connect();
    pair.pump();
    assert!(pair.camera_session.is_some());
}

#[test]
fn limit_max_remote_timestamps_evicts_the_least_recent_key() {
    let config = Config {
        max_remote_timestamps: 2,
        ..Config::default()
    };
    let mut pair = Pair::new(config);
    pair.connect();
    let initiation = pair.viewer_out().remove(0);
    pair.deliver_to_camera(&initiation).unwrap();
    assert_eq!(
        pair.deliver_to_camera(&initiation),
        Err(InputError::ReplayedInitiation)
    );
    // Two other keys push the viewer's key out of the bounded table.
    let mut flooder = Flooder::new(pair.camera_public, 12);
    for i in 1..=2 {
        let from = addr(&format!("203.0.113.{i}:1"));
        assert_eq!(flood_once(&mut pair, &mut flooder, from), Ok(None));
    }
    assert_eq!(pair.camera.timestamp_count(), 2);
    assert_eq!(pair.camera.stats().timestamps_evicted, 1);
    // The documented cost of forgetting: the old initiation is accepted once more, as a
    // half-open session that can never complete.
    let before = pair.camera.half_open();
    assert_eq!(pair.deliver_to_camera(&initiation), Ok(None));
    assert_eq!(pair.camera.half_open(), before + 1);
}

#[test]
fn initiation_timestamps_follow_the_wall_clock_and_never_repeat() {
    let camera_key = keypair(100);
    let prologue = SessionKind::Peer {
        device_id: DEVICE_ID,
    }
    .prologue();
    let read = |bytes: &[u8]| {
        let Ok(Packet::Initiation(i)) = Packet::decode(bytes) else {
            panic!()
        };
        noise::read_initiation(
            &camera_key,
            &prologue,
            &noise::Ephemeral::from_rng(&mut ChaCha20Rng::seed_from_u64(0)),
            i.noise,
        )
        .unwrap()
        .timestamp
    };
    let mut viewer = SessionTable::new(keypair(200), Config::default(), rng(1));
    let now = Instant::now();
    let connect = |viewer: &mut SessionTable| {
        viewer
            .connect(
                now,
                addr("192.0.2.10:7000"),
                SessionKind::Peer {
                    device_id: DEVICE_ID,
                },
                *camera_key.public(),
            )
            .unwrap();
        Pair::drain(viewer, addr("198.51.100.20:5000"))
            .remove(0)
            .bytes
    };
    // Never set: a counter.
    assert_eq!(read(&connect(&mut viewer)), dos::tai64n(1));
    assert_eq!(read(&connect(&mut viewer)), dos::tai64n(2));
    // Set: the wall clock.
    let wall = 1_767_225_600_000_000_000;
    viewer.set_unix_time(wall);
    assert_eq!(read(&connect(&mut viewer)), dos::tai64n(wall));
    // Unchanged or stepped back: still strictly increasing.
    assert_eq!(read(&connect(&mut viewer)), dos::tai64n(wall + 1));
    viewer.set_unix_time(wall - 1_000_000_000);
    assert_eq!(read(&connect(&mut viewer)), dos::tai64n(wall + 2));
}

/// §3.4: a responder that completes the handshake early sends in the same flight as its
/// response; the initiator opens that data right after the response, and its own first
/// packet (the confirmation) lands on the keys already current. Nothing else changes.
#[test]
fn a_responder_that_establishes_early_sends_with_its_response() {
    let mut pair = Pair::new(Config::default());
    pair.connect();
    let initiation = pair.viewer_out().remove(0);
    let mut bytes = initiation.bytes.clone();
    let responder = match pair
        .camera
        .handle_input(pair.now, initiation.from, &mut bytes)
    {
        Ok(Input::Handshake {
            session: Some(session),
        }) => session,
        other => panic!("{other:?}"),
    };
    // Not established yet: nothing may be sealed, and no event.
    let mut buf = [0u8; 64];
    assert_eq!(
        pair.camera.seal(responder, pair.now, b"early", &mut buf),
        Err(SealError::NotEstablished)
    );
    pair.collect_events();
    assert!(pair.camera_events.is_empty());
    // Early: established now, with the initiation's key and address.
    assert!(pair.camera.establish_early(responder));
    pair.collect_events();
    assert!(matches!(
        pair.camera_events[..],
        [Event::Established { session, role: Role::Responder, remote_static, remote_addr }]
            if session == responder
                && remote_static == *pair.viewer.local_public()
                && remote_addr == pair.viewer_addr
    ));
    assert_eq!(pair.camera.half_open(), 0);
    // A second call, a session we initiated and an unknown session change nothing.
    assert!(!pair.camera.establish_early(responder));
    let ours = pair.viewer_session.unwrap();
    assert!(!pair.viewer.establish_early(ours));
    pair.camera.close(responder);
    assert!(!pair.camera.establish_early(responder));

    // Again, delivering the flight in order: response, then early data.
    let mut pair = Pair::new(Config::default());
    pair.connect();
    let initiation = pair.viewer_out().remove(0);
    let mut bytes = initiation.bytes.clone();
    let Ok(Input::Handshake {
        session: Some(responder),
    }) = pair
        .camera
        .handle_input(pair.now, initiation.from, &mut bytes)
    else {
        panic!("initiation refused");
    };
    assert!(pair.camera.establish_early(responder));
    pair.collect_events();
    let early = pair.seal_camera(b"keyframe");
    let response = pair.camera_out();
    assert_eq!(response.len(), 1, "the handshake response");
    assert_eq!(pair.deliver_to_viewer(&response[0]), Ok(None));
    assert_eq!(
        pair.deliver_to_viewer(&early),
        Ok(Some(b"keyframe".to_vec()))
    );
    // The initiator's confirmation and data land on the current keys: no second event.
    for datagram in pair.viewer_out() {
        assert_eq!(pair.deliver_to_camera(&datagram), Ok(None));
    }
    let data = pair.seal_viewer(b"hello");
    assert_eq!(pair.deliver_to_camera(&data), Ok(Some(b"hello".to_vec())));
    let established = pair
        .camera_events
        .iter()
        .filter(|e| matches!(e, Event::Established { .. }))
        .count();
    assert_eq!(established, 1);
}
