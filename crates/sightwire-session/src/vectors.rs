//! Checks the implementation against `spec/vectors/session-ik.json`, produced by an
//! independent Python implementation (`spec/vectors/session-gen.py`).

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::Value;

use crate::auth::{AuthRequest, PasswordKey};
use crate::config::Footprint;
use crate::cookie::{CookieChecker, CookieJar};
use crate::noise::{self, DeviceId, PublicKey, SessionKind, StaticKeypair, fixed_ephemeral};
use crate::wire::{
    INITIATION_LEN, INITIATION_NOISE_LEN, Packet, RESPONSE_NOISE_LEN, TRANSPORT_HEADER_LEN,
};

fn load() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/session-ik.json");
    let text = std::fs::read_to_string(path).expect("vector file");
    serde_json::from_str(&text).expect("vector JSON")
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn key(v: &Value) -> [u8; 32] {
    bytes(v).try_into().expect("32 bytes")
}

fn int(v: &Value) -> u64 {
    v.as_u64().expect("integer")
}

fn kind_of(name: &str, device_id: DeviceId) -> SessionKind {
    if name == "rendezvous" {
        SessionKind::Rendezvous
    } else {
        SessionKind::Peer { device_id }
    }
}

#[test]
fn handshake_and_transport_vectors() {
    let all = load();
    let device_id = DeviceId::from_bytes(bytes(&all["device_id"]).try_into().unwrap()).unwrap();
    let now = Instant::now();
    let handshakes = all["handshakes"].as_array().unwrap();
    assert_eq!(handshakes.len(), 3);
    for v in handshakes {
        let name = v["name"].as_str().unwrap();
        let kind = kind_of(name, device_id);
        assert_eq!(
            kind.prologue().as_bytes(),
            &bytes(&v["prologue"])[..],
            "{name}: prologue"
        );
        assert_eq!(v["protocol_name"], noise::NOISE_PATTERN);
        let initiator = StaticKeypair::from_private(key(&v["initiator_static_private"]));
        let responder = StaticKeypair::from_private(key(&v["responder_static_private"]));
        assert_eq!(
            &initiator.public().as_bytes()[..],
            &bytes(&v["initiator_static_public"])[..]
        );
        assert_eq!(
            &responder.public().as_bytes()[..],
            &bytes(&v["responder_static_public"])[..]
        );
        let sender = int(&v["initiator_index"]) as u32;
        let hint = int(&v["receiver_index_in_initiation"]) as u32;
        let responder_index = int(&v["responder_index"]) as u32;
        let attempt = int(&v["attempt"]);
        let timestamp = crate::dos::tai64n(int(&v["unix_nanos"]));
        assert_eq!(
            hex::encode(timestamp),
            v["timestamp"].as_str().unwrap(),
            "{name}: timestamp"
        );

        let (mut init_state, mut initiation) = noise::write_initiation(
            &initiator,
            responder.public(),
            &kind.prologue(),
            &fixed_ephemeral(key(&v["initiator_ephemeral_private"])),
            sender,
            hint,
            &noise::InitiationPayload { attempt, timestamp },
        )
        .unwrap();
        CookieJar::new(responder.public()).stamp(now, &mut initiation);
        assert_eq!(
            hex::encode(initiation),
            v["initiation"].as_str().unwrap(),
            "{name}: initiation"
        );

        let Ok(Packet::Initiation(parsed)) = Packet::decode(&initiation) else {
            panic!("{name}")
        };
        assert!(CookieChecker::new(responder.public()).mac1_ok(&initiation));
        let noise1: [u8; INITIATION_NOISE_LEN] = *parsed.noise;
        let accepted = noise::read_initiation(
            &responder,
            &kind.prologue(),
            &fixed_ephemeral(key(&v["responder_ephemeral_private"])),
            &noise1,
        )
        .unwrap();
        assert_eq!(accepted.attempt, attempt);
        assert_eq!(accepted.timestamp, timestamp);
        assert_eq!(&accepted.remote_static, initiator.public());
        let (response, mut responder_keys, responder_hash) =
            // The responder stores its keys compactly, the initiator expanded: both
            // footprints must give the vectors' bytes.
            noise::write_response(
                accepted.state,
                responder_index,
                sender,
                now,
                Footprint::Compact,
            )
            .unwrap();
        assert_eq!(
            hex::encode(response),
            v["response"].as_str().unwrap(),
            "{name}: response"
        );
        let noise2: [u8; RESPONSE_NOISE_LEN] = response[9..].try_into().unwrap();
        let (mut initiator_keys, initiator_hash) = noise::read_response(
            &mut init_state,
            &noise2,
            sender,
            responder_index,
            now,
            Footprint::Fast,
        )
        .unwrap();
        assert_eq!(
            hex::encode(initiator_hash),
            v["handshake_hash"].as_str().unwrap(),
            "{name}: hash"
        );
        assert_eq!(initiator_hash, responder_hash);

        for t in v["transport"].as_array().unwrap() {
            let plaintext = bytes(&t["plaintext"]);
            let expected = bytes(&t["packet"]);
            let (sealer, opener) = if t["direction"] == "i2r" {
                (&mut initiator_keys, &mut responder_keys)
            } else {
                (&mut responder_keys, &mut initiator_keys)
            };
            assert_eq!(sealer.send_counter, int(&t["counter"]));
            let mut buf = vec![0u8; expected.len()];
            buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + plaintext.len()]
                .copy_from_slice(&plaintext);
            let len = sealer.seal_in_place(&mut buf, plaintext.len()).unwrap();
            assert_eq!(
                hex::encode(&buf[..len]),
                hex::encode(&expected),
                "{name}: transport"
            );
            let Ok(Packet::Transport(p)) = Packet::decode(&expected) else {
                panic!("{name}")
            };
            let mut ciphertext = p.ciphertext.to_vec();
            let n = opener.open_in_place(p.counter, &mut ciphertext).unwrap();
            assert_eq!(&ciphertext[..n], &plaintext[..]);
        }
    }
}

#[test]
fn cookie_vectors() {
    let all = load();
    let v = &all["cookie"];
    let now = Instant::now();
    let responder_public = PublicKey::from_bytes(key(&v["responder_static_public"]));
    let initiation: [u8; INITIATION_LEN] = bytes(&v["initiation"]).try_into().unwrap();
    let source: SocketAddr = v["source"].as_str().unwrap().parse().unwrap();
    let mut checker = CookieChecker::new(&responder_public);
    checker.set_secret_for_test(key(&v["cookie_secret"]), now);
    let nonce: [u8; 24] = bytes(&v["nonce"]).try_into().unwrap();
    let mut out = [0u8; 128];
    let mut unused_rng = rand_chacha::ChaCha20Rng::from_seed_for_vectors();
    let len = checker
        .reply(now, &mut unused_rng, &initiation, source, nonce, &mut out)
        .unwrap();
    assert_eq!(
        hex::encode(&out[..len]),
        v["cookie_reply"].as_str().unwrap()
    );

    // The initiator decrypts the cookie and stamps mac2 with it.
    let mut jar = CookieJar::new(&responder_public);
    let mut stamped = initiation;
    jar.stamp(now, &mut stamped);
    let Ok(Packet::CookieReply(reply)) = Packet::decode(&out[..len]) else {
        panic!()
    };
    assert!(jar.consume_reply(now, &reply));
    jar.stamp(now, &mut stamped);
    assert_eq!(
        hex::encode(stamped),
        v["initiation_with_mac2"].as_str().unwrap()
    );
    assert!(checker.mac2_ok(now, &mut unused_rng, &stamped, source));
    // And a cookie set directly gives the same mac2 (cross-check of the cookie value).
    let mut jar2 = CookieJar::new(&responder_public);
    CookieChecker::set_cookie_for_test(&mut jar2, key16(&v["cookie"]), now);
    let mut stamped2 = initiation;
    jar2.stamp(now, &mut stamped2);
    assert_eq!(stamped2, stamped);
}

fn key16(v: &Value) -> [u8; 16] {
    bytes(v).try_into().expect("16 bytes")
}

#[test]
fn auth_vectors() {
    let all = load();
    let v = &all["auth"];
    let device_id = DeviceId::from_bytes(bytes(&v["device_id"]).try_into().unwrap()).unwrap();
    let key = PasswordKey::derive(v["password"].as_str().unwrap().as_bytes(), &device_id);
    assert_eq!(
        hex::encode(key.as_bytes()),
        v["password_key"].as_str().unwrap()
    );
    let hash = noise::HandshakeHash::try_from(bytes(&v["handshake_hash"])).unwrap();
    assert_eq!(hex::encode(key.proof(&hash)), v["proof"].as_str().unwrap());
    let mut out = [0u8; 64];
    let len = AuthRequest::password(&key, &hash, true)
        .encode(&mut out)
        .unwrap();
    assert_eq!(
        hex::encode(&out[..len]),
        v["request_password_remember"].as_str().unwrap()
    );
}

trait ForVectors {
    fn from_seed_for_vectors() -> Self;
}

impl ForVectors for rand_chacha::ChaCha20Rng {
    /// The cookie secret is fixed by the test, so this RNG is never drawn from.
    fn from_seed_for_vectors() -> Self {
        rand::SeedableRng::seed_from_u64(0)
    }
}
