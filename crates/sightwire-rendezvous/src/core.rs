//! The rendezvous protocol core: sans-IO. It never touches a socket or a clock; the
//! driver passes in each decrypted signaling message with its session, the session's
//! authenticated static key and source address, and `now`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::{CryptoRng, RngCore};
use sightwire_signal::cert::{CertificateError, IdCertificate, TrustedIssuers};
use sightwire_signal::grant::{GRANT_NONCE_LEN, GrantClaims, GrantRole, RelayGrantKey};
use sightwire_signal::{
    Body, Candidate, CandidateSet, CandidateUpdate, Close, CloseReason, ConnectId, ConnectOffer,
    ConnectRequest, ConnectResponse, DecodeError, Envelope, ErrorCode, ErrorReply, Limit,
    MAX_MESSAGE_LEN, PunchParams, Register, RegisterAck, RelayGrant,
};

use crate::Rate;
use crate::presence::{PresenceEntry, PresenceTable};
use crate::ratelimit::{RateLimiter, RateRefusal};
use crate::registry::Registry;

/// Default keepalive interval told to devices. Below the 30 s UDP mapping timeout of
/// common NATs.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default presence lifetime without keepalive (three missed keepalives).
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(60);
/// Default lifetime of a connect attempt's state (candidate forwarding, relay grants).
pub const DEFAULT_CONNECT_TTL: Duration = Duration::from_secs(30);
/// Default delay after which both peers start punching.
pub const DEFAULT_PUNCH_START_DELAY: Duration = Duration::from_millis(200);
/// Default lifetime of a relay grant.
pub const DEFAULT_RELAY_GRANT_TTL: Duration = Duration::from_secs(120);
/// How often expired state is swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound on online devices.
pub const DEFAULT_MAX_PRESENCE: usize = 1_000_000;
/// Default bound on pending connect attempts.
pub const DEFAULT_MAX_PENDING_CONNECTS: usize = 65_536;
/// Default bound on sources tracked by each rate limiter.
pub const DEFAULT_MAX_RATE_SOURCES: usize = 65_536;
/// Bound on queued outgoing messages (the driver drains after every input, so this is
/// only reached if it does not).
pub const MAX_OUTBOX: usize = 1_024;
/// Default lookups (connect requests) per source: rate and burst.
pub const DEFAULT_LOOKUP_RATE: Rate = Rate {
    per_second: 2,
    burst: 10,
};
/// Default registrations per source: rate and burst. A NAT may hide many cameras, so
/// this is higher than the lookup rate.
pub const DEFAULT_REGISTER_RATE: Rate = Rate {
    per_second: 20,
    burst: 100,
};
/// Priority given to a server-reflexive candidate the rendezvous adds.
pub const SERVER_REFLEXIVE_PRIORITY: u32 = 90 << 24;

/// Where the relay is and the key its grants are sealed with.
#[derive(Clone)]
pub struct RelayConfig {
    /// The relay's public UDP address.
    pub address: SocketAddr,
    /// The secret shared with the relay.
    pub key: RelayGrantKey,
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Timers and limits of the core. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Interval told to devices.
    pub keepalive_interval: Duration,
    /// Presence expires after this long without keepalive.
    pub presence_ttl: Duration,
    /// Connect attempt state lifetime.
    pub connect_ttl: Duration,
    /// Punch start delay given to both peers.
    pub punch_start_delay: Duration,
    /// Relay grant lifetime.
    pub relay_grant_ttl: Duration,
    /// Most online devices.
    pub max_presence: usize,
    /// Most pending connect attempts.
    pub max_pending_connects: usize,
    /// Most sources per rate limiter.
    pub max_rate_sources: usize,
    /// Connect requests per source.
    pub lookup_rate: Rate,
    /// Registrations per source.
    pub register_rate: Rate,
    /// Refuse certificates that are not in the registry (`UNKNOWN_ID`) instead of
    /// recording them. Off by default: a valid certificate is proof enough and the
    /// issuer may run elsewhere.
    pub require_issued: bool,
    /// The relay, if one is deployed.
    pub relay: Option<RelayConfig>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            presence_ttl: DEFAULT_PRESENCE_TTL,
            connect_ttl: DEFAULT_CONNECT_TTL,
            punch_start_delay: DEFAULT_PUNCH_START_DELAY,
            relay_grant_ttl: DEFAULT_RELAY_GRANT_TTL,
            max_presence: DEFAULT_MAX_PRESENCE,
            max_pending_connects: DEFAULT_MAX_PENDING_CONNECTS,
            max_rate_sources: DEFAULT_MAX_RATE_SOURCES,
            lookup_rate: DEFAULT_LOOKUP_RATE,
            register_rate: DEFAULT_REGISTER_RATE,
            require_issued: false,
            relay: None,
        }
    }
}

/// Who sent a message: the Noise session it arrived on, the static key that session
/// authenticated, and the source address of the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer<S> {
    /// The driver's handle for the session.
    pub session: S,
    /// The remote static X25519 key the session's handshake authenticated.
    pub remote_static: [u8; 32],
    /// The datagram's source address (the peer's server-reflexive address).
    pub address: SocketAddr,
}

/// A message to seal into `session` and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit<S> {
    /// The session to send it in.
    pub session: S,
    /// The encoded signaling envelope (plaintext for the session layer).
    pub payload: Bytes,
}

/// Counters of what the core did and refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Registrations accepted.
    pub registrations: u64,
    /// Registrations refused because the session key was not the certified key.
    pub impersonations_refused: u64,
    /// Registrations refused for an invalid, expired or revoked certificate.
    pub certificates_refused: u64,
    /// Keepalives answered.
    pub keepalives: u64,
    /// Connect requests answered with an introduction.
    pub introductions: u64,
    /// Connect requests for unknown or offline IDs.
    pub lookups_failed: u64,
    /// Requests refused by a rate limit.
    pub rate_limited: u64,
    /// Requests refused because a table was full.
    pub capacity_refused: u64,
    /// Messages that did not decode.
    pub malformed: u64,
    /// Replies dropped because they would have been larger than the request of an
    /// unauthenticated session and not even an error fit.
    pub amplification_drops: u64,
    /// Messages dropped because the outbox was full.
    pub outbox_drops: u64,
    /// Presence entries expired.
    pub presence_expired: u64,
    /// Relay grants minted.
    pub relay_grants: u64,
    /// Registry errors (each answered `INTERNAL`).
    pub registry_errors: u64,
}

#[derive(Debug, Clone)]
struct PendingConnect<S> {
    viewer: S,
    device: S,
    device_id: [u8; 6],
    device_key: [u8; 32],
    viewer_key: [u8; 32],
    expires_ms: u64,
    allocation: Option<[u8; 16]>,
}

/// The rendezvous state machine.
///
/// Drive it with [`Rendezvous::handle_message`], [`Rendezvous::handle_session_closed`]
/// and [`Rendezvous::handle_timeout`]; after each, drain [`Rendezvous::poll_transmit`]
/// and sleep until [`Rendezvous::poll_timeout`].
pub struct Rendezvous<R, S> {
    config: CoreConfig,
    trust: TrustedIssuers,
    registry: R,
    rng: Box<dyn RngCoreCrypto>,
    epoch: Instant,
    epoch_unix: u64,
    presence: PresenceTable<S>,
    pending: HashMap<ConnectId, PendingConnect<S>>,
    lookup_limiter: RateLimiter,
    register_limiter: RateLimiter,
    outbox: VecDeque<Transmit<S>>,
    encode_buffer: BytesMut,
    next_sweep: Instant,
    stats: Stats,
}

/// A cryptographically secure RNG, boxed (tests pass a seeded one).
pub trait RngCoreCrypto: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> RngCoreCrypto for T {}

impl<R, S: fmt::Debug> fmt::Debug for Rendezvous<R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendezvous")
            .field("online", &self.presence.len())
            .field("pending_connects", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Chunk the outbox encoder allocates at a time; messages are split off it, so encoding
/// allocates once per this many bytes, not once per message.
const ENCODE_CHUNK: usize = 64 * 1024;

enum Refusal {
    Reply(ErrorReply),
    Silent,
}

impl From<ErrorReply> for Refusal {
    fn from(reply: ErrorReply) -> Self {
        Refusal::Reply(reply)
    }
}

fn error(code: ErrorCode) -> ErrorReply {
    ErrorReply::code(code)
}

fn limited(code: ErrorCode, limit: Limit, retry_after_ms: u64) -> ErrorReply {
    ErrorReply {
        code,
        limit: Some(limit),
        retry_after: Duration::from_millis(retry_after_ms),
        min_request_len: 0,
    }
}

/// Displays a device ID in the canonical form (`1C:C3:16:AB:CD:EF`) for logs without
/// allocating; also IDs that `sightwire_id::DeviceId` would refuse (multicast, zero),
/// which an attacker may send.
#[derive(Clone, Copy)]
pub(crate) struct IdDisplay(pub(crate) [u8; 6]);

impl fmt::Display for IdDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

pub(crate) fn hex_id(id: [u8; 6]) -> IdDisplay {
    IdDisplay(id)
}

impl<R: Registry, S: Copy + Eq + Hash + fmt::Debug> Rendezvous<R, S> {
    /// A rendezvous trusting certificates from `trust`, with the registry `registry`.
    /// `now` and `now_unix` anchor the wall clock (certificates and grants use Unix
    /// time); `rng` draws connect ids, punch keys and allocation ids.
    pub fn new(
        config: CoreConfig,
        trust: TrustedIssuers,
        registry: R,
        rng: Box<dyn RngCoreCrypto>,
        now: Instant,
        now_unix: u64,
    ) -> Self {
        Self {
            presence: PresenceTable::new(config.max_presence),
            pending: HashMap::new(),
            lookup_limiter: RateLimiter::new(config.lookup_rate, config.max_rate_sources),
            register_limiter: RateLimiter::new(config.register_rate, config.max_rate_sources),
            config,
            trust,
            registry,
            rng,
            epoch: now,
            epoch_unix: now_unix,
            outbox: VecDeque::new(),
            encode_buffer: BytesMut::new(),
            next_sweep: now + SWEEP_INTERVAL,
            stats: Stats::default(),
        }
    }

    /// Re-anchors the wall clock (call it now and then so NTP corrections reach the
    /// certificate checks).
    pub fn set_wall_clock(&mut self, now: Instant, now_unix: u64) {
        self.epoch_unix =
            now_unix.saturating_sub(now.saturating_duration_since(self.epoch).as_secs());
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch_unix
            .saturating_add(now.saturating_duration_since(self.epoch).as_secs())
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// How many devices are online.
    pub fn online(&self) -> usize {
        self.presence.len()
    }

    /// How many connect attempts are pending.
    pub fn pending_connects(&self) -> usize {
        self.pending.len()
    }

    /// Whether `device_id` is online, and on which session.
    pub fn session_of(&self, device_id: [u8; 6]) -> Option<S> {
        self.presence.get(&device_id).map(|entry| entry.session)
    }

    /// The registry.
    pub fn registry(&self) -> &R {
        &self.registry
    }

    /// The registry, for the issuer tool's operations on a running core.
    pub fn registry_mut(&mut self) -> &mut R {
        &mut self.registry
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<S>> {
        self.outbox.pop_front()
    }

    /// When to call [`Rendezvous::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.presence.len() == 0
            && self.pending.is_empty()
            && self.lookup_limiter.len() == 0
            && self.register_limiter.len() == 0;
        (!idle).then_some(self.next_sweep)
    }

    /// Expires presence and connect attempts, forgets idle rate-limit buckets.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let now_ms = self.ms(now);
        let ttl_ms = u64::try_from(self.config.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        let expired = self.presence.expire(now_ms.saturating_sub(ttl_ms));
        if expired > 0 {
            tracing::debug!(expired, "presence expired");
        }
        self.stats.presence_expired += expired as u64;
        self.pending
            .retain(|_, pending| pending.expires_ms > now_ms);
        self.lookup_limiter.forget_idle(now);
        self.register_limiter.forget_idle(now);
    }

    /// One step of a graceful shutdown: tells up to the outbox's free room of online
    /// devices that the server is going away (`CLOSE`, reason `SHUTDOWN`, so they
    /// re-handshake as soon as it is back instead of waiting for a missed keepalive) and
    /// forgets them. Returns how many were told; drain [`Rendezvous::poll_transmit`] and
    /// call again until it returns 0.
    pub fn shutdown_step(&mut self) -> usize {
        let room = MAX_OUTBOX.saturating_sub(self.outbox.len());
        let sessions: Vec<S> = self.presence.sessions().take(room).collect();
        let close = Envelope::new(
            0,
            Body::Close(Close {
                connect_id: None,
                reason: CloseReason::Shutdown,
            }),
        );
        for session in &sessions {
            self.presence.remove_session(session);
            self.enqueue(*session, &close);
        }
        sessions.len()
    }

    /// The session layer closed `session`: forget what was bound to it.
    pub fn handle_session_closed(&mut self, session: S) {
        if let Some(device_id) = self.presence.remove_session(&session) {
            tracing::debug!(device = %hex_id(device_id), "device offline: session closed");
        }
        self.pending
            .retain(|_, pending| pending.viewer != session && pending.device != session);
    }

    /// One decrypted signaling message from `from`.
    pub fn handle_message(&mut self, now: Instant, from: &Peer<S>, message: &[u8]) {
        let request_len = message.len();
        let envelope = match Envelope::decode(message) {
            Ok(envelope) => envelope,
            Err(DecodeError::UnsupportedVersion {
                request_id,
                version,
            }) => {
                tracing::debug!(version, "unsupported signaling version");
                self.stats.malformed += 1;
                return self.reply(
                    from,
                    request_len,
                    request_id,
                    error(ErrorCode::VersionUnsupported),
                );
            }
            Err(reason) => {
                tracing::debug!(%reason, "malformed signaling message");
                self.stats.malformed += 1;
                return self.reply(from, request_len, 0, error(ErrorCode::Malformed));
            }
        };
        let request_id = envelope.request_id;
        let outcome = match envelope.body {
            Body::Register(register) => {
                self.on_register(now, from, request_len, request_id, register)
            }
            Body::Keepalive => self.on_keepalive(now, from, request_id),
            Body::ConnectRequest(request) => {
                self.on_connect(now, from, request_len, request_id, request)
            }
            Body::CandidateUpdate(update) => self.on_candidates(from, update),
            Body::RelayRequest { connect_id } => {
                self.on_relay_request(now, from, request_len, request_id, connect_id)
            }
            Body::Close(close) => self.on_close(from, close),
            // Messages only the rendezvous sends, and errors from clients: nothing to do.
            other => {
                tracing::debug!(
                    kind = other.name(),
                    "unexpected signaling message from a client"
                );
                Err(Refusal::Silent)
            }
        };
        if let Err(Refusal::Reply(reply)) = outcome {
            self.reply(from, request_len, request_id, reply);
        }
    }

    fn is_registered_device(&self, session: &S) -> bool {
        self.presence.device_of(session).is_some()
    }

    /// Queues `envelope` to `to`. Answers to a session that is not a registered device
    /// are never larger than the request: a larger one becomes `PADDING_REQUIRED`, and
    /// if even that does not fit, nothing is sent.
    fn send(&mut self, to: S, request_len: Option<usize>, envelope: Envelope) {
        let limit = match request_len {
            Some(len) if !self.is_registered_device(&to) => len,
            _ => MAX_MESSAGE_LEN,
        };
        let len = envelope.encoded_len();
        if len > limit {
            let padding = ErrorReply {
                min_request_len: u32::try_from(len).unwrap_or(u32::MAX),
                ..error(ErrorCode::PaddingRequired)
            };
            let fallback = Envelope::new(envelope.request_id, Body::Error(padding));
            if fallback.encoded_len() > limit {
                self.stats.amplification_drops += 1;
                return;
            }
            return self.enqueue(to, &fallback);
        }
        self.enqueue(to, &envelope);
    }

    fn enqueue(&mut self, session: S, envelope: &Envelope) {
        if self.outbox.len() >= MAX_OUTBOX {
            self.stats.outbox_drops += 1;
            tracing::warn!(
                limit = MAX_OUTBOX,
                "outbox full: dropping a signaling message"
            );
            return;
        }
        if self.encode_buffer.capacity() < MAX_MESSAGE_LEN {
            self.encode_buffer.reserve(ENCODE_CHUNK);
        }
        match envelope.encode(&mut self.encode_buffer) {
            Ok(_) => {
                let payload = self.encode_buffer.split().freeze();
                self.outbox.push_back(Transmit { session, payload });
            }
            Err(reason) => {
                // Only reachable if a message we build exceeds MAX_MESSAGE_LEN.
                self.encode_buffer.clear();
                tracing::error!(%reason, kind = envelope.body.name(), "could not encode a signaling message");
            }
        }
    }

    fn reply(&mut self, to: &Peer<S>, request_len: usize, request_id: u64, reply: ErrorReply) {
        self.send(
            to.session,
            Some(request_len),
            Envelope::new(request_id, Body::Error(reply)),
        );
    }

    fn rate_check(
        limiter: &mut RateLimiter,
        stats: &mut Stats,
        from: &Peer<S>,
        now: Instant,
        limit: Limit,
    ) -> Result<(), Refusal> {
        match limiter.check(from.address.ip(), now) {
            Ok(()) => Ok(()),
            Err(RateRefusal::Empty { retry_after_ms }) => {
                stats.rate_limited += 1;
                tracing::debug!(source = %from.address, ?limit, "rate limited");
                Err(limited(ErrorCode::RateLimited, limit, retry_after_ms).into())
            }
            Err(RateRefusal::TableFull) => {
                stats.rate_limited += 1;
                tracing::warn!(source = %from.address, ?limit, "rate limiter source table full");
                Err(limited(ErrorCode::RateLimited, Limit::SourceTable, 1_000).into())
            }
        }
    }

    fn on_register(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        request_len: usize,
        request_id: u64,
        register: Register,
    ) -> Result<(), Refusal> {
        let now_ms = self.ms(now);
        Self::rate_check(
            &mut self.register_limiter,
            &mut self.stats,
            from,
            now,
            Limit::RegisterRate,
        )?;
        let certificate = register.certificate;
        let device = hex_id(certificate.device_id());
        let fields = match certificate.verify(&self.trust, self.unix(now)) {
            Ok(fields) => *fields,
            Err(reason) => {
                self.stats.certificates_refused += 1;
                tracing::info!(%device, source = %from.address, %reason, "registration refused: certificate");
                return Err(error(match reason {
                    CertificateError::Expired { .. } | CertificateError::NotYetValid { .. } => {
                        ErrorCode::CertificateExpired
                    }
                    _ => ErrorCode::CertificateInvalid,
                })
                .into());
            }
        };
        // The heart of ID ownership: the session must be keyed by the certified key.
        if fields.device_key != from.remote_static {
            self.stats.impersonations_refused += 1;
            tracing::warn!(
                %device,
                source = %from.address,
                session_key = %hex::encode(from.remote_static),
                "registration refused: session key is not the certified key (impersonation attempt)"
            );
            return Err(error(ErrorCode::NotAuthorized).into());
        }
        self.check_registry(&certificate, device)?;
        let entry = PresenceEntry::new(
            from.session,
            from.address,
            now_ms,
            register.candidates.generation,
            &register.candidates.candidates,
        );
        if self.presence.upsert(fields.device_id, entry).is_err() {
            self.stats.capacity_refused += 1;
            tracing::warn!(%device, limit = self.config.max_presence, "presence table full");
            return Err(limited(ErrorCode::Capacity, Limit::PresenceTable, 0).into());
        }
        self.stats.registrations += 1;
        tracing::debug!(%device, source = %from.address, "device registered");
        let ack = RegisterAck {
            observed: from.address,
            keepalive_interval: self.config.keepalive_interval,
            presence_ttl: self.config.presence_ttl,
        };
        self.send(
            from.session,
            Some(request_len),
            Envelope::new(request_id, Body::RegisterAck(ack)),
        );
        Ok(())
    }

    /// Applies the registry's view: revoked or superseded certificates are refused;
    /// newer ones are recorded (or refused if `require_issued`).
    fn check_registry(
        &mut self,
        certificate: &IdCertificate,
        device: IdDisplay,
    ) -> Result<(), Refusal> {
        let record = match self.registry.lookup(certificate.device_id()) {
            Ok(record) => record,
            Err(reason) => {
                self.stats.registry_errors += 1;
                tracing::error!(%reason, "registry lookup failed");
                return Err(error(ErrorCode::Internal).into());
            }
        };
        match record {
            Some(record) if record.certificate == *certificate => {
                if record.revoked {
                    self.stats.certificates_refused += 1;
                    tracing::info!(%device, serial = certificate.serial(), "registration refused: revoked");
                    return Err(error(ErrorCode::Revoked).into());
                }
                Ok(())
            }
            Some(record) if record.certificate.serial() >= certificate.serial() => {
                // Superseded by a re-issue (or a conflicting certificate with the same
                // serial): treat as revoked.
                self.stats.certificates_refused += 1;
                tracing::info!(%device, serial = certificate.serial(), current = record.certificate.serial(), "registration refused: superseded certificate");
                Err(error(ErrorCode::Revoked).into())
            }
            None if self.config.require_issued => {
                self.stats.certificates_refused += 1;
                tracing::info!(%device, "registration refused: ID not in the registry");
                Err(error(ErrorCode::UnknownId).into())
            }
            _ => match self.registry.record(certificate) {
                Ok(_) => Ok(()),
                Err(reason) => {
                    self.stats.registry_errors += 1;
                    tracing::error!(%reason, "registry write failed");
                    Err(error(ErrorCode::Internal).into())
                }
            },
        }
    }

    fn on_keepalive(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        request_id: u64,
    ) -> Result<(), Refusal> {
        let now_ms = self.ms(now);
        if self
            .presence
            .touch(&from.session, from.address, now_ms)
            .is_none()
        {
            return Err(error(ErrorCode::NotRegistered).into());
        }
        self.stats.keepalives += 1;
        self.enqueue(
            from.session,
            &Envelope::new(
                request_id,
                Body::KeepaliveAck {
                    observed: from.address,
                },
            ),
        );
        Ok(())
    }

    fn on_connect(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        request_len: usize,
        request_id: u64,
        request: ConnectRequest,
    ) -> Result<(), Refusal> {
        let now_ms = self.ms(now);
        Self::rate_check(
            &mut self.lookup_limiter,
            &mut self.stats,
            from,
            now,
            Limit::LookupRate,
        )?;
        let device_id = request.device_id;
        let device = hex_id(device_id);
        let record = match self.registry.lookup(device_id) {
            Ok(record) => record,
            Err(reason) => {
                self.stats.registry_errors += 1;
                tracing::error!(%reason, "registry lookup failed");
                return Err(error(ErrorCode::Internal).into());
            }
        };
        let Some(record) = record else {
            self.stats.lookups_failed += 1;
            return Err(error(ErrorCode::UnknownId).into());
        };
        if record.revoked {
            // Revocation takes effect at once, also for a device that is online.
            if self.presence.remove_device(&device_id) {
                tracing::info!(%device, "revoked device removed from presence");
            }
            self.stats.lookups_failed += 1;
            return Err(error(ErrorCode::Revoked).into());
        }
        let Some(entry) = self.presence.get(&device_id) else {
            self.stats.lookups_failed += 1;
            return Err(error(ErrorCode::Offline).into());
        };
        let device_session = entry.session;
        let device_observed = entry.observed.get();
        let device_generation = entry.generation;
        let device_candidates = entry.candidates(SERVER_REFLEXIVE_PRIORITY);
        if self.pending.len() >= self.config.max_pending_connects {
            self.stats.capacity_refused += 1;
            tracing::warn!(
                limit = self.config.max_pending_connects,
                "connect table full"
            );
            return Err(limited(ErrorCode::Capacity, Limit::ConnectTable, 1_000).into());
        }
        let connect_id = self.fresh_connect_id();
        let mut punch_key = [0u8; 32];
        self.rng.fill_bytes(&mut punch_key);
        let punch = PunchParams {
            punch_key,
            start_in: self.config.punch_start_delay,
        };
        let mut viewer_candidates = request.candidates.candidates;
        viewer_candidates.truncate(sightwire_signal::MAX_CANDIDATES - 1);
        viewer_candidates.push(Candidate {
            kind: sightwire_signal::CandidateKind::ServerReflexive,
            address: from.address,
            priority: SERVER_REFLEXIVE_PRIORITY,
        });
        let response = ConnectResponse {
            connect_id,
            certificate: record.certificate,
            candidates: CandidateSet {
                generation: device_generation,
                candidates: device_candidates,
            },
            punch,
            observed: from.address,
        };
        let response_envelope = Envelope::new(request_id, Body::ConnectResponse(response));
        let response_len = response_envelope.encoded_len();
        if response_len > request_len && !self.is_registered_device(&from.session) {
            // Tell the viewer how much to pad; do not bother the device.
            return Err(ErrorReply {
                min_request_len: u32::try_from(response_len).unwrap_or(u32::MAX),
                ..error(ErrorCode::PaddingRequired)
            }
            .into());
        }
        self.pending.insert(
            connect_id,
            PendingConnect {
                viewer: from.session,
                device: device_session,
                device_id,
                device_key: *record.certificate.device_key(),
                viewer_key: from.remote_static,
                expires_ms: now_ms.saturating_add(
                    u64::try_from(self.config.connect_ttl.as_millis()).unwrap_or(u64::MAX),
                ),
                allocation: None,
            },
        );
        self.stats.introductions += 1;
        tracing::debug!(%device, viewer = %from.address, connect = connect_id.0, "introducing");
        let offer = ConnectOffer {
            connect_id,
            viewer_key: from.remote_static,
            candidates: CandidateSet {
                generation: request.candidates.generation,
                candidates: viewer_candidates,
            },
            punch,
            observed: device_observed,
        };
        self.enqueue(device_session, &Envelope::new(0, Body::ConnectOffer(offer)));
        self.send(from.session, Some(request_len), response_envelope);
        if request.want_relay {
            // The response and the viewer's grant together stay within the request size;
            // a viewer that did not pad enough gets no grant here and asks with
            // RELAY_REQUEST.
            let budget = request_len.saturating_sub(response_len);
            if let Err(Refusal::Reply(reply)) = self.grant_relay(now, connect_id, Some(budget)) {
                self.send(
                    from.session,
                    Some(budget),
                    Envelope::new(request_id, Body::Error(reply)),
                );
            }
        }
        Ok(())
    }

    fn fresh_connect_id(&mut self) -> ConnectId {
        // Zero is reserved and a collision with a pending id is astronomically unlikely;
        // the loop is bounded anyway.
        for _ in 0..8 {
            let id = self.rng.next_u64();
            if id != 0 && !self.pending.contains_key(&ConnectId(id)) {
                return ConnectId(id);
            }
        }
        ConnectId(self.rng.next_u64() | 1)
    }

    fn grant_relay(
        &mut self,
        now: Instant,
        connect_id: ConnectId,
        request_len: Option<usize>,
    ) -> Result<(), Refusal> {
        let Some(relay) = self.config.relay.clone() else {
            return Err(error(ErrorCode::RelayUnavailable).into());
        };
        let expires_at = self
            .unix(now)
            .saturating_add(self.config.relay_grant_ttl.as_secs());
        let Some(pending) = self.pending.get(&connect_id) else {
            return Err(error(ErrorCode::UnknownConnect).into());
        };
        let allocation_id = match pending.allocation {
            Some(id) => id,
            None => {
                let mut id = [0u8; 16];
                self.rng.fill_bytes(&mut id);
                id
            }
        };
        let Some(pending) = self.pending.get_mut(&connect_id) else {
            return Err(error(ErrorCode::UnknownConnect).into());
        };
        pending.allocation = Some(allocation_id);
        let pending = pending.clone();
        for (role, session) in [
            (GrantRole::Device, pending.device),
            (GrantRole::Viewer, pending.viewer),
        ] {
            // A fresh random nonce per token: the claims are sealed, so observers of the
            // grant or of the BIND learn neither peer (spec/signaling.md 5).
            let mut nonce = [0u8; GRANT_NONCE_LEN];
            self.rng.fill_bytes(&mut nonce);
            let token = relay.key.seal(
                &GrantClaims {
                    allocation_id,
                    role,
                    expires_at,
                    device_id: pending.device_id,
                    device_key: pending.device_key,
                    viewer_key: pending.viewer_key,
                },
                nonce,
            );
            let grant = Envelope::new(
                0,
                Body::RelayGrant(RelayGrant {
                    connect_id,
                    relay: relay.address,
                    token,
                }),
            );
            // The viewer's grant is bounded by its request size; the device is registered.
            let bound = if role == GrantRole::Viewer {
                request_len
            } else {
                None
            };
            self.send(session, bound, grant);
            self.stats.relay_grants += 1;
        }
        Ok(())
    }

    fn on_relay_request(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        request_len: usize,
        _request_id: u64,
        connect_id: ConnectId,
    ) -> Result<(), Refusal> {
        let Some(pending) = self.pending.get(&connect_id) else {
            return Err(error(ErrorCode::UnknownConnect).into());
        };
        if pending.viewer != from.session && pending.device != from.session {
            return Err(error(ErrorCode::NotAuthorized).into());
        }
        self.grant_relay(now, connect_id, Some(request_len))
    }

    fn on_candidates(&mut self, from: &Peer<S>, update: CandidateUpdate) -> Result<(), Refusal> {
        let Some(pending) = self.pending.get(&update.connect_id) else {
            return Err(error(ErrorCode::UnknownConnect).into());
        };
        let to = if from.session == pending.viewer {
            pending.device
        } else if from.session == pending.device {
            pending.viewer
        } else {
            return Err(error(ErrorCode::NotAuthorized).into());
        };
        // Forwarded as-is: one message out per message in, never larger.
        self.enqueue(to, &Envelope::new(0, Body::CandidateUpdate(update)));
        Ok(())
    }

    fn on_close(&mut self, from: &Peer<S>, close: Close) -> Result<(), Refusal> {
        match close.connect_id {
            None => {
                if let Some(device_id) = self.presence.remove_session(&from.session) {
                    tracing::debug!(device = %hex_id(device_id), reason = ?close.reason, "device went offline");
                }
                Ok(())
            }
            Some(connect_id) => {
                let Some(pending) = self.pending.get(&connect_id) else {
                    return Err(error(ErrorCode::UnknownConnect).into());
                };
                let to = if from.session == pending.viewer {
                    pending.device
                } else if from.session == pending.device {
                    pending.viewer
                } else {
                    return Err(error(ErrorCode::NotAuthorized).into());
                };
                self.pending.remove(&connect_id);
                let reason = if close.reason == CloseReason::Unspecified {
                    CloseReason::Done
                } else {
                    close.reason
                };
                self.enqueue(
                    to,
                    &Envelope::new(
                        0,
                        Body::Close(Close {
                            connect_id: Some(connect_id),
                            reason,
                        }),
                    ),
                );
                Ok(())
            }
        }
    }
}
