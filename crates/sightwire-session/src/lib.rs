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
//! let device_id = [0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e];
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
//!     Input::Data { session, plaintext, endpoint_changed } => {
//!         assert_eq!(session, at_camera);
//!         assert_eq!(plaintext, b"hello camera");
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

pub mod auth;
mod config;
mod cookie;
mod noise;
mod replay;
mod table;
pub mod wire;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

pub use config::{
    Config, HANDSHAKE_DEADLINE, HANDSHAKE_INITIAL_RTO, HANDSHAKE_MAX_RTO, MAX_HALF_OPEN,
    MAX_QUEUED_EVENTS, MAX_QUEUED_TRANSMITS, MAX_SESSIONS, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME, UNDER_LOAD_HALF_OPEN, UNDER_LOAD_INITIATIONS_PER_SECOND,
};
pub use cookie::{COOKIE_LIFETIME, COOKIE_SECRET_LIFETIME, LABEL_COOKIE, LABEL_MAC1};
pub use noise::{
    DEVICE_ID_LEN, HANDSHAKE_HASH_LEN, HandshakeError, HandshakeHash, MAX_PROLOGUE_LEN,
    NOISE_PATTERN, PROLOGUE_KIND_PEER, PROLOGUE_KIND_RENDEZVOUS, PROLOGUE_LABEL, PROTOCOL_VERSION,
    Prologue, PublicKey, SealError, SessionKind, StaticKeypair,
};
pub use replay::{REJECT_AFTER_MESSAGES, REPLAY_WINDOW, ReplayError, ReplayWindow};
pub use table::{
    CloseReason, ConnectError, Event, HandshakeFailure, Input, InputError, MAX_INDEX_DRAWS, Role,
    SessionId, SessionRng, SessionTable, Stats, Transmit,
};
pub use wire::{INITIATION_LEN, MAX_PLAINTEXT_LEN, TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD};

/// Fuzzing entry points (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    use std::net::SocketAddr;
    use std::time::Instant;

    use rand::SeedableRng;

    use crate::{Config, SessionKind, SessionTable, StaticKeypair};

    /// Decodes arbitrary bytes as a session packet and re-encodes what decodes.
    pub fn decode_packet(data: &[u8]) {
        if let Ok(packet) = crate::wire::Packet::decode(data) {
            let mut out = vec![0u8; data.len()];
            let len = packet.encode(&mut out);
            assert_eq!(
                len.map(|l| &out[..l]),
                Some(data),
                "decode/encode must round-trip"
            );
        }
        let _ = crate::auth::AuthRequest::decode(data);
        let _ = crate::auth::AuthResponse::decode(data);
    }

    /// Feeds arbitrary datagrams to a responder table (a device), as an attacker could.
    /// The first byte of each chunk picks a fake source port; chunks are split on `0xff 0xff`.
    pub fn responder_input(data: &[u8]) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0);
        let key = StaticKeypair::generate(&mut rng);
        let mut table = SessionTable::with_responder(
            key,
            SessionKind::Peer {
                device_id: [0, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e],
            },
            Config::default(),
            Box::new(rng),
        );
        let now = Instant::now();
        let mut buf = [0u8; 2048];
        for chunk in data.split(|b| *b == 0xff).take(64) {
            let Some((&port, datagram)) = chunk.split_first() else {
                continue;
            };
            let from = SocketAddr::from(([192, 0, 2, 1], u16::from(port)));
            let mut owned = datagram.to_vec();
            let _ = table.handle_input(now, from, &mut owned);
            while table.poll_transmit(&mut buf).is_some() {}
            while table.poll_event().is_some() {}
        }
        table.handle_timeout(now + std::time::Duration::from_secs(200));
    }
}
