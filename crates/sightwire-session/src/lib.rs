//! Sightwire's encrypted sessions: Noise `IK` handshakes and UDP transport, sans-IO.
//!
//! **What it is for.** Everything between a camera and a viewer, and between either and
//! the rendezvous, travels inside a session from this crate:
//!
//! - handshakes: `Noise_IK_25519_ChaChaPoly_BLAKE2s`, the initiator pinning the
//!   responder's static key, the prologue binding protocol version, purpose and (for
//!   peer sessions) the device ID ([`SessionKind`]);
//! - retransmission with backoff and a deadline, and a typed failure when the responder
//!   does not hold the expected key ([`HandshakeFailure::RemoteKeyMismatch`]);
//! - transport packets with a receiver index (many sessions on one socket, roaming) and an
//!   explicit 64-bit counter as nonce; a replay window of [`REPLAY_WINDOW`] packets;
//! - WireGuard-style rekeying with the previous keys still accepted, keys zeroized on drop;
//! - stateless DoS cookies under load ([`wire::TYPE_COOKIE_REPLY`]);
//! - password login before any session exists, by PAKE through an untrusted rendezvous,
//!   with a login throttle for the device ([`login`]);
//! - viewer authorization after the handshake ([`auth`]).
//!
//! **What it is not for.** It opens no socket, reads no clock and spawns nothing: the
//! driver (the `sightwire` endpoint, the rendezvous server, a test simulator) passes in
//! datagrams, `now` and an RNG. It does not frame media or signaling; those ride as the
//! plaintext of transport packets. Deciding *which* static key to expect (ID certificates,
//! QR codes) belongs to the caller. The wire format is specified in `spec/session.md`.
//!
//! # The run loop
//!
//! After every input, drain `poll_transmit` and `poll_event`, then sleep until
//! `poll_timeout`. The example runs a viewer and a camera against each other in memory,
//! the way a driver would run one of them against a socket.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//! use rand::SeedableRng;
//! use sightwire_session::{Config, Event, Input, SessionKind, SessionTable, StaticKeypair};
//!
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let device_id: sightwire_session::DeviceId = "00:1A:2B:3C:4D:5E".parse().expect("a device ID");
//! let camera_key = StaticKeypair::generate(&mut rng);
//! let camera_public = *camera_key.public();
//! let mut camera = SessionTable::with_responder(
//!     camera_key,
//!     SessionKind::Peer { device_id },
//!     Config::default(),
//!     Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(2)),
//! );
//! let mut viewer = SessionTable::new(
//!     StaticKeypair::generate(&mut rng),
//!     Config::default(),
//!     Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(3)),
//! );
//! let camera_addr: SocketAddr = "192.0.2.10:7000".parse().unwrap();
//! let viewer_addr: SocketAddr = "198.51.100.20:5000".parse().unwrap();
//! let now = Instant::now();
//!
//! // The viewer knows the camera's key (ID certificate or QR code) and its ID.
//! let session = viewer.connect(now, camera_addr, SessionKind::Peer { device_id }, camera_public)?;
//!
//! // A tiny "network": deliver everything each side transmits to the other.
//! let mut buf = [0u8; 1500];
//! for _ in 0..3 {
//!     while let Some(t) = viewer.poll_transmit(&mut buf) {
//!         let _ = camera.handle_input(now, viewer_addr, &mut buf[..t.len]);
//!     }
//!     while let Some(t) = camera.poll_transmit(&mut buf) {
//!         let _ = viewer.handle_input(now, camera_addr, &mut buf[..t.len]);
//!     }
//! }
//! assert!(matches!(viewer.poll_event(), Some(Event::Established { .. })));
//! let Some(Event::Established { session: at_camera, .. }) = camera.poll_event() else { panic!() };
//!
//! // Hot path: seal into a buffer the caller owns, open in place.
//! let transmit = viewer.seal(session, now, b"hello camera", &mut buf)?;
//! assert_eq!(transmit.destination, camera_addr);
//! match camera.handle_input(now, viewer_addr, &mut buf[..transmit.len])? {
//!     // `from` is authenticated; the session moves its peer address only on such packets.
//!     Input::Data { session, plaintext, from, endpoint_changed } => {
//!         assert_eq!(session, at_camera);
//!         assert_eq!(plaintext, b"hello camera");
//!         assert_eq!(from, viewer_addr);
//!         assert!(!endpoint_changed);
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! // Timers: the driver sleeps until the earliest deadline, then calls handle_timeout.
//! let wake = viewer.poll_timeout().expect("rekey is scheduled");
//! assert!(wake <= now + Duration::from_secs(120));
//! viewer.handle_timeout(wake);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A `tokio` driver has the same shape: `select!` on the socket and on a sleep until
//! `poll_timeout()`, feed `handle_input`/`handle_timeout`, then drain `poll_transmit`
//! into `send_to` and `poll_event` into the application.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

pub mod auth;
mod config;
mod cookie;
mod dos;
pub mod login;
mod noise;
mod replay;
mod table;
pub mod wire;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

pub use config::{
    Config, Footprint, HANDSHAKE_DEADLINE, HANDSHAKE_INITIAL_RTO, HANDSHAKE_MAX_RTO,
    INITIATION_BURST_PER_SOURCE, INITIATIONS_PER_SOURCE_PER_SECOND,
    KEY_MISMATCH_NOTICES_PER_SECOND, MAX_HALF_OPEN, MAX_HALF_OPEN_PER_SOURCE, MAX_QUEUED_EVENTS,
    MAX_QUEUED_TRANSMITS, MAX_REMOTE_TIMESTAMPS, MAX_SESSIONS, MAX_SOURCES, REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, UNDER_LOAD_HALF_OPEN,
    UNDER_LOAD_INITIATIONS_PER_SECOND,
};
pub use cookie::{COOKIE_LIFETIME, COOKIE_SECRET_LIFETIME, LABEL_COOKIE, LABEL_MAC1};
pub use noise::{
    DEVICE_ID_LEN, DeviceId, HANDSHAKE_HASH_LEN, HandshakeError, HandshakeHash, MAX_PROLOGUE_LEN,
    NOISE_PATTERN, PROLOGUE_KIND_PEER, PROLOGUE_KIND_RENDEZVOUS, PROLOGUE_LABEL, PROTOCOL_VERSION,
    Prologue, PublicKey, SealError, SessionKind, StaticKeypair,
};
pub use replay::{
    COMPACT_REPLAY_WINDOW, CompactReplayWindow, REJECT_AFTER_MESSAGES, REPLAY_WINDOW, ReplayError,
    ReplayWindow, SlidingWindow,
};
pub use table::{
    CloseReason, ConnectError, Event, HandshakeFailure, Input, InputError, MAX_INDEX_DRAWS, Role,
    SessionId, SessionRng, SessionTable, Stats, Transmit,
};
pub use wire::{
    INITIATION_LEN, MAX_PLAINTEXT_LEN, TIMESTAMP_LEN, TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD,
    is_session_packet,
};

/// Fuzzing entry points (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use rand::SeedableRng;

    use crate::wire::{INITIATION_LEN, Packet};
    use crate::{Config, SessionKind, SessionTable, StaticKeypair};

    /// Decodes arbitrary bytes as a session packet (and as auth messages); whatever
    /// decodes must re-encode to the same bytes.
    pub fn decode_packet(data: &[u8]) {
        if let Ok(packet) = Packet::decode(data) {
            let mut out = vec![0u8; data.len()];
            let len = packet.encode(&mut out);
            assert_eq!(
                len.map(|l| &out[..l]),
                Some(data),
                "decode/encode must round-trip"
            );
        }
        if let Ok(request) = crate::auth::AuthRequest::decode(data) {
            let mut out = [0u8; crate::auth::MAX_AUTH_MESSAGE_LEN];
            let len = request.encode(&mut out);
            assert_eq!(
                len.map(|l| &out[..l]),
                Some(data),
                "auth request must round-trip"
            );
        }
        if let Ok(response) = crate::auth::AuthResponse::decode(data) {
            let mut out = [0u8; 2];
            let len = response.encode(&mut out);
            assert_eq!(
                len.map(|l| &out[..l]),
                Some(data),
                "auth response must round-trip"
            );
        }
    }

    /// Arbitrary bytes as each login message (`crate::login`): as msg1 at a device, as
    /// msg2 at a viewer that sent a genuine msg1, as msg3 at a device that answered a
    /// genuine msg1. Checked: no panic, and no forged msg2 or msg3 is accepted.
    pub fn login_messages(data: &[u8]) {
        use crate::auth::PasswordKey;
        use crate::login::{DeviceLogin, ViewerLogin};
        let key = PasswordKey::from_bytes([0x42; 32]);
        let viewer = crate::PublicKey::from_bytes([9u8; 32]);
        let device_id =
            crate::DeviceId::from_bytes([0, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e]).expect("unicast");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let _ = DeviceLogin::respond(&key, &viewer, &device_id, data, &mut rng);
        let (v, msg1) = ViewerLogin::start(&key, &viewer, &device_id, &mut rng);
        assert!(v.finish(data).is_err(), "forged msg2 accepted");
        let Ok((d, _)) = DeviceLogin::respond(&key, &viewer, &device_id, &msg1, &mut rng) else {
            panic!("genuine msg1 refused");
        };
        assert!(d.finish(data).is_err(), "forged msg3 accepted");
    }

    /// A device with one session established with a genuine viewer, and one packet
    /// the viewer sealed on it (built once per process: the handshake is the slow part).
    struct Fixture {
        device: SessionTable,
        device_public: crate::PublicKey,
        viewer_addr: SocketAddr,
        genuine: Vec<u8>,
        start: Instant,
    }

    fn fixture() -> Fixture {
        let device_id =
            crate::DeviceId::from_bytes([0, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e]).expect("unicast");
        let device_key = StaticKeypair::from_private([0x33; 32]);
        let device_public = *device_key.public();
        let mut device = SessionTable::with_responder(
            device_key,
            SessionKind::Peer { device_id },
            Config::default(),
            Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(1)),
        );
        let mut viewer = SessionTable::new(
            StaticKeypair::from_private([0x11; 32]),
            Config::default(),
            Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(2)),
        );
        let start = Instant::now();
        let device_addr = SocketAddr::from(([192, 0, 2, 10], 7000));
        let viewer_addr = SocketAddr::from(([198, 51, 100, 20], 5000));
        let session = viewer
            .connect(
                start,
                device_addr,
                SessionKind::Peer { device_id },
                device_public,
            )
            .expect("fixture connect");
        let mut buf = [0u8; 256];
        for _ in 0..3 {
            while let Some(t) = viewer.poll_transmit(&mut buf) {
                let _ = device.handle_input(start, viewer_addr, &mut buf[..t.len]);
            }
            while let Some(t) = device.poll_transmit(&mut buf) {
                let _ = viewer.handle_input(start, device_addr, &mut buf[..t.len]);
            }
        }
        while device.poll_event().is_some() {}
        let t = viewer
            .seal(session, start, b"still here", &mut buf)
            .expect("fixture seal");
        Fixture {
            device,
            device_public,
            viewer_addr,
            genuine: buf[..t.len].to_vec(),
            start,
        }
    }

    thread_local! {
        static FIXTURE: Fixture = fixture();
    }

    /// Feeds attacker datagrams to a device (responder table) that already has one
    /// established session with a real viewer. `data` is split on `0xff`; in each chunk
    /// the first byte is a control byte: bits 0-5 pick the source port, bit 6 stamps a
    /// valid `mac1` onto a 157-byte initiation (so the fuzzer reaches the Noise code),
    /// bit 7 advances virtual time by 7 s (timers, rekey, expiry). Checked: no panic, no
    /// response larger than its request, limits hold, and afterwards the genuine viewer's
    /// packet is still accepted unless virtual time expired its keys.
    pub fn responder_input(data: &[u8]) {
        FIXTURE.with(|f| responder_input_on(f, data));
    }

    fn responder_input_on(f: &Fixture, data: &[u8]) {
        let mut device = f
            .device
            .fork(Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(3)));
        let mut now = f.start;
        let mut buf = [0u8; 2048];
        let mut jar = crate::cookie::CookieJar::new(&f.device_public);
        for chunk in data.split(|b| *b == 0xff).take(64) {
            let Some((&control, datagram)) = chunk.split_first() else {
                continue;
            };
            if control & 0x80 != 0 {
                now += Duration::from_secs(7);
                device.handle_timeout(now);
            }
            let from = SocketAddr::from(([203, 0, 113, 1], u16::from(control & 0x3f)));
            let mut owned = datagram.to_vec();
            if control & 0x40 != 0
                && let Ok(packet) = <&mut [u8; INITIATION_LEN]>::try_from(owned.as_mut_slice())
            {
                jar.stamp(now, packet);
            }
            let _ = device.handle_input(now, from, &mut owned);
            while let Some(t) = device.poll_transmit(&mut buf) {
                assert!(
                    t.len <= datagram.len(),
                    "a response larger than its request"
                );
            }
            while device.poll_event().is_some() {}
            assert!(device.half_open() <= device.config().max_half_open);
            assert!(device.len() <= device.config().max_sessions);
        }
        if now.saturating_duration_since(f.start) < crate::REJECT_AFTER_TIME {
            let mut genuine = f.genuine.clone();
            match device.handle_input(now, f.viewer_addr, &mut genuine) {
                Ok(crate::Input::Data { plaintext, .. }) => assert_eq!(plaintext, b"still here"),
                other => panic!("genuine session broken by attacker input: {other:?}"),
            }
        }
        device.handle_timeout(now + Duration::from_secs(200));
    }
}
