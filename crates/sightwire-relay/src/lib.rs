//! The Sightwire relay: the path of last resort when two NATs leave no direct path.
//!
//! A relay forwards opaque datagrams between exactly the two endpoints of an
//! **allocation**. It holds nothing secret about the media: what it forwards are Noise
//! transport packets it cannot read or forge. Allocations are authorized by **grants**
//! that the rendezvous mints and the relay verifies with a shared key and no database
//! lookup (`sightwire_signal::grant`); the grants are sealed, so neither the relay's
//! observers nor a copied BIND reveal who is calling whom. Each side binds with its own
//! grant; from then on the relay forwards data packets from one bound address to the
//! other, unchanged, so it never sends more than it received (no amplification). A bound
//! side moves to a new address only after that address echoes a challenge cookie (return
//! routability), so a replayed BIND cannot divert a stream. Allocations expire when idle
//! and are metered (rate and total bytes); grants are checked for expiry on every bind. A
//! flood of bogus packets costs one hash-map lookup each; a bogus bind costs one AEAD
//! open, and charges nothing that honest binds need.
//!
//! What it is not for: it does not punch holes, pick paths or look inside packets; the
//! endpoints (`sightwire-punch`) decide when to use it. The wire format is in
//! `spec/relay.md`.
//!
//! [`Relay`] is the sans-IO core (datagrams and `now` in, actions out); [`RelayServer`]
//! drives it on a tokio UDP socket; the `sightwire-relay` binary wraps that in a CLI.
//!
//! ```
//! use std::time::Instant;
//! use sightwire_relay::{Action, Relay, RelayConfig, RelayPacket};
//! use sightwire_signal::grant::{GrantClaims, GrantRole, RelayGrantKey};
//!
//! let key = RelayGrantKey::from_bytes([1; 32]);
//! let mut relay = Relay::new(RelayConfig::default(), key.clone());
//! let claims = |role| GrantClaims {
//!     allocation_id: [7; 16], role, expires_at: 2_000_000_000,
//!     device_id: sightwire_signal::DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef]).expect("a unicast address"),
//!     device_key: [2; 32].into(), viewer_key: [3; 32].into(),
//! };
//! let (camera, viewer) = ("198.51.100.7:4000".parse()?, "203.0.113.9:5000".parse()?);
//! let (now, unix) = (Instant::now(), 1_900_000_000);
//! let mut packet = [0u8; 1500];
//! let mut reply = [0u8; 64];
//!
//! // Each side binds with its grant and learns the channel.
//! let mut reply_len = 0;
//! for (from, role) in [(camera, GrantRole::Device), (viewer, GrantRole::Viewer)] {
//!     // The rendezvous seals each grant with a fresh random nonce.
//!     let token = key.seal(&claims(role), [role as u8; 12]);
//!     let len = RelayPacket::Bind { token, cookie: None }.encode(&mut packet).unwrap();
//!     let Action::Reply(len) = relay.handle_datagram(now, unix, from, &packet[..len], &mut reply) else { panic!() };
//!     reply_len = len;
//! }
//! let Ok(RelayPacket::Bound { channel, peer_bound: true, .. }) = RelayPacket::decode(&reply[..reply_len]) else { panic!() };
//!
//! // Data from the camera goes to the viewer, byte for byte.
//! let len = RelayPacket::Data { channel, payload: b"noise packet" }.encode(&mut packet).unwrap();
//! assert_eq!(relay.handle_datagram(now, unix, camera, &packet[..len], &mut reply), Action::Forward(viewer));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

mod batch;
mod core;
pub mod metrics;
mod server;
/// The relay packets (re-exported from `sightwire-relay-wire`, which endpoints use).
pub use sightwire_relay_wire as wire;

pub use crate::core::{
    Action, COOKIE_EPOCH_SECS, COOKIE_KEY_CONTEXT, DropReason, Relay, RelayConfig, RelayStats,
    channel_of,
};
pub use server::{RelayServer, unix_now};
pub use wire::{RefusalReason, RelayPacket, WireError};
