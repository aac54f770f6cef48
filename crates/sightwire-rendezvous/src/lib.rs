//! The Sightwire rendezvous: where devices register under their certified IDs and where
//! viewers find them.
//!
//! - [`Rendezvous`] is the protocol core, sans-IO: it takes each decrypted signaling
//!   message with the Noise session it came on (and that session's authenticated static
//!   key), and queues replies. It verifies ID certificates, refuses a registration whose
//!   session key is not the certified key (so knowing an ID is not enough to take it
//!   over), keeps presence with expiry, introduces viewers to devices (certificate,
//!   candidates, punch key and start delay), mints relay grants, rate-limits lookups per
//!   source, bounds every table, and never answers an unregistered session with more
//!   bytes than it sent.
//! - [`Registry`] stores issued IDs, device keys and revocations; [`SqliteRegistry`] is
//!   the default (one file, usable by the issuer tool while the server runs),
//!   `PostgresRegistry` (feature `postgres`) the one several nodes share. The core never
//!   calls it: a request that needs it waits in a bounded table while the driver runs
//!   the [`RegistryQuery`] off the packet loop ([`RegistryPool`]).
//! - [`server`] is the tokio UDP driver: one socket, Noise sessions from
//!   `sightwire-session`, the core, graceful shutdown. The `sightwire-rendezvous` binary
//!   wraps it with a TOML config and the `issuer` tool.
//!
//! What it is not for: it never sees media and cannot read or forge the peers' Noise
//! sessions with each other; it is not a relay. The protocol is in `spec/signaling.md`
//! and `spec/registration.md`.
//!
//! ```
//! use std::time::Instant;
//! use rand::SeedableRng;
//! use sightwire_rendezvous::{CoreConfig, MemoryRegistry, Peer, Rendezvous};
//! use sightwire_signal::cert::{CertificateFields, IssuerKey, TrustedIssuers};
//! use sightwire_signal::{Body, CandidateSet, Envelope, Register};
//!
//! let issuer = IssuerKey::from_seed(&[1; 32]);
//! let device_key = sightwire_signal::PublicKey::from_bytes([7u8; 32]); // the device's static X25519 public key
//! let certificate = issuer.issue(CertificateFields {
//!     device_id: sightwire_signal::DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef]).expect("a unicast address"),
//!     device_key,
//!     not_before: 0,
//!     not_after: u64::MAX,
//!     serial: 1,
//! })?;
//!
//! let now = Instant::now();
//! let mut registry = MemoryRegistry::default();
//! let mut rendezvous = Rendezvous::new(
//!     CoreConfig::default(),
//!     TrustedIssuers::single(issuer.public()),
//!     Box::new(rand::rngs::StdRng::seed_from_u64(1)),
//!     now,
//!     1_800_000_000,
//! );
//!
//! // The session layer says: session 1, authenticated as `device_key`, from this address.
//! let device = Peer::new(1u64, device_key, "203.0.113.5:4000".parse()?);
//! let register = Envelope::new(1, Body::Register(Register { certificate, candidates: CandidateSet::default() }));
//! rendezvous.handle_message(now, &device, &register.to_bytes()?);
//!
//! // The registration waits for the registry. A server runs the query on a worker
//! // thread (`RegistryPool`); an in-memory registry can answer it right here.
//! while let Some(query) = rendezvous.poll_registry_query() {
//!     rendezvous.handle_registry_answer(now, query.run(&mut registry));
//! }
//!
//! let reply = rendezvous.poll_transmit().expect("an answer");
//! assert_eq!(reply.session, 1);
//! assert!(matches!(Envelope::decode(&reply.payload)?.body, Body::RegisterAck(_)));
//! assert_eq!(rendezvous.online(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

#[cfg(feature = "cli")]
pub mod config;
mod core;
mod decoy;
pub mod metrics;
mod presence;
mod ratelimit;
mod registry;
pub mod server;

pub use crate::core::{
    CONSENT_WINDOW, CoreConfig, DEFAULT_CONNECT_TTL, DEFAULT_IDENTITY_LOOKUP_RATE,
    DEFAULT_INTRODUCTION_RATE_PER_MINUTE, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_LOOKUP_RATE,
    DEFAULT_MAX_PENDING_CONNECTS, DEFAULT_MAX_PENDING_LOOKUPS, DEFAULT_MAX_PENDING_PER_IDENTITY,
    DEFAULT_MAX_PRESENCE, DEFAULT_MAX_RATE_SOURCES, DEFAULT_PRESENCE_TTL,
    DEFAULT_PUNCH_START_DELAY, DEFAULT_REGISTER_RATE, DEFAULT_REGISTRY_TIMEOUT,
    DEFAULT_RELAY_GRANT_TTL, DEFAULT_SESSION_MESSAGE_RATE, Deployment,
    MAX_CANDIDATE_UPDATES_PER_ATTEMPT, MAX_OUTBOX, MAX_PENDING_PROBES, MAX_PUNCH_START_SKEW,
    MAX_RELAY_GRANTS_PER_ATTEMPT, MIN_CONNECT_REQUEST_LEN, OFFER_RESEND_AT, Peer,
    REGISTERED_REPLY_ALLOWANCE, RelayConfig, Rendezvous, RngCoreCrypto, SERVER_REFLEXIVE_PRIORITY,
    SWEEP_INTERVAL, Stats, Transmit, punch_start_delays,
};
pub use decoy::{DECOY_DELAY_MAX, DECOY_DELAY_MIN, DECOY_LOGIN_REPLY_LEN, decoy_login_reply};
pub use presence::MAX_STORED_HOST_CANDIDATES;
#[doc(hidden)]
#[cfg(feature = "postgres")]
pub use registry::postgres_testing;
pub use registry::{
    DeviceRecord, MemoryRegistry, QueryKind, QueryResult, RegistrationView, Registry,
    RegistryAnswer, RegistryFailure, RegistryPool, RegistryQuery,
};
#[cfg(feature = "postgres")]
pub use registry::{
    LISTEN_RETRY, POSTGRES_SCHEMA_VERSION, PostgresRegistry, PostgresRegistryError,
    REVOCATION_CHANNEL, RevocationListener,
};
#[cfg(feature = "sqlite")]
pub use registry::{SqliteRegistry, SqliteRegistryError};
pub use sightwire_limits::Rate;
