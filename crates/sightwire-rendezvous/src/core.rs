//! The rendezvous protocol core: sans-IO. It never touches a socket or a clock; the
//! driver passes in each decrypted signaling message with its session, the session's
//! authenticated static key and source address, and `now`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::{CryptoRng, RngCore};
use sightwire_id::{DeviceId, PublicKey};
use sightwire_signal::cert::{CertificateError, IdCertificate, TrustedIssuers};
use sightwire_signal::grant::{GRANT_NONCE_LEN, GrantClaims, GrantRole, RelayGrantKey};
use sightwire_signal::nodes::{NodeList, NodeName};
use sightwire_signal::{
    Body, Candidate, CandidateSet, CandidateUpdate, Close, CloseReason, ConnectId, ConnectOffer,
    ConnectRequest, ConnectResponse, Consent, DecodeError, Envelope, ErrorCode, ErrorReply,
    Introduction, Limit, MAX_MESSAGE_LEN, PunchParams, Register, RegisterAck, RelayGrant,
};

use crate::Rate;
use crate::decoy::{DECOY_STAND_IN_ID, decoy_delay, decoy_login_reply};
use crate::presence::{PresenceEntry, PresenceTable};
use crate::ratelimit::{RateLimiter, RateRefusal, source_key};
use crate::registry::{QueryKind, QueryResult, RegistrationView, RegistryAnswer, RegistryQuery};

/// Default keepalive interval told to devices. Below the 30 s UDP mapping timeout of
/// common NATs.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default presence lifetime without keepalive (three missed keepalives).
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(60);
/// Default lifetime of a connect attempt's state (candidate forwarding, relay grants).
pub const DEFAULT_CONNECT_TTL: Duration = Duration::from_secs(30);
/// Default margin of the punch start: both peers start their checks this long after the
/// slower of them received its `start_in` (each side's `start_in` adds the difference of
/// the two one-way delays, measured during the consent exchange; [`punch_start_delays`]).
/// It covers jitter and a peer's handling of its offer; the triangle inequality covers
/// the rest (a peer's check cannot reach the other before the rendezvous's message did).
pub const DEFAULT_PUNCH_START_DELAY: Duration = Duration::from_millis(15);
/// The most a side's `start_in` adds for the other side's longer signaling delay: a round
/// trip sample inflated by a lost message buys no more waiting than this.
pub const MAX_PUNCH_START_SKEW: Duration = Duration::from_millis(500);

/// Each side's `start_in` (viewer, device) so both reach the punch start `T0` together:
/// `D − d` with `d` the side's one-way delay (half the round trip the rendezvous measured
/// to it during the consent exchange) and `D` the slower side's plus `margin`
/// (spec/punch.md §3, "Choosing `start_in`"). Without both samples, `margin` each.
pub fn punch_start_delays(
    margin: Duration,
    viewer_rtt: Option<Duration>,
    device_rtt: Option<Duration>,
) -> (Duration, Duration) {
    let (Some(viewer_rtt), Some(device_rtt)) = (viewer_rtt, device_rtt) else {
        return (margin, margin);
    };
    let (viewer, device) = (viewer_rtt / 2, device_rtt / 2);
    let slower = viewer.max(device);
    (
        margin + (slower - viewer).min(MAX_PUNCH_START_SKEW),
        margin + (slower - device).min(MAX_PUNCH_START_SKEW),
    )
}
/// Default lifetime of a relay grant.
pub const DEFAULT_RELAY_GRANT_TTL: Duration = Duration::from_secs(120);
/// How often expired state is swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// When a `CONNECT_OFFER` not yet acknowledged (`OFFER_ACK`) is sent again, as times
/// after disclosure (the first copy goes at disclosure): gaps of 0.25, 0.5, 1 and 2 s.
/// Then the rendezvous stops; the viewer's connect-request retransmission remains the
/// last resort (`spec/signaling.md` §4.6).
pub const OFFER_RESEND_AT: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(750),
    Duration::from_millis(1750),
    Duration::from_millis(3750),
];
/// Default bound on keepalive probes (delayed `KEEPALIVE_ACK`s, spec/registration.md §7)
/// waiting at once ([`CoreConfig::max_pending_probes`]); one per session at most. Beyond
/// it a probe is answered at once (the device then keeps its interval).
pub const MAX_PENDING_PROBES: usize = 65_536;
/// Default bound on requests (registrations and connect requests) waiting for the
/// registry at once ([`CoreConfig::max_pending_lookups`]); beyond it a request is answered
/// `CAPACITY` / `REGISTRY_QUEUE` at once.
pub const DEFAULT_MAX_PENDING_LOOKUPS: usize = 4_096;
/// Default time a request waits for the registry before it is answered `INTERNAL`
/// ([`CoreConfig::registry_timeout`]).
pub const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);
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
pub const DEFAULT_LOOKUP_RATE: Rate = Rate::new(2, 10);
/// Default registrations per source: rate and burst. A NAT may hide many cameras, so
/// this is higher than the lookup rate.
pub const DEFAULT_REGISTER_RATE: Rate = Rate::new(20, 100);
/// Default lookups (connect requests) per authenticated identity (the session's static
/// key), whatever sources its packets come from: rate and burst.
pub const DEFAULT_IDENTITY_LOOKUP_RATE: Rate = Rate::new(2, 10);
/// Default introductions per device ID **per minute** (`per_second` is read as per
/// minute) and burst, counted for every connect request naming the ID, whether or not
/// it exists: nobody can flood one camera with introductions.
pub const DEFAULT_INTRODUCTION_RATE_PER_MINUTE: Rate = Rate::new(30, 10);
/// Default rate of the other signaling messages (`CONSENT`, `CANDIDATE_UPDATE`,
/// `RELAY_REQUEST`, `CLOSE`, `REGISTER` and retransmitted `CONNECT_REQUEST`s) per session.
pub const DEFAULT_SESSION_MESSAGE_RATE: Rate = Rate::new(20, 40);
/// Default bound on attempts one identity may have pending (awaiting consent or
/// disclosed and not yet expired): as many cameras as one viewer endpoint watches at
/// once (`sightwire::proto::MAX_WATCHES`), so a 64-camera wall connects in one go.
pub const DEFAULT_MAX_PENDING_PER_IDENTITY: usize = 64;
/// How long after receiving a `CONNECT_REQUEST` the rendezvous answers
/// `ERROR UNAVAILABLE` if the device has not accepted (spec/signaling.md §4.5).
pub const CONSENT_WINDOW: Duration = Duration::from_secs(3);
/// A `CONNECT_REQUEST` must be at least this long (padded): its answers (the device's
/// login message, `CONNECT_RESPONSE` and a `RELAY_GRANT`) must fit in it, and the rule
/// must not depend on whether the ID exists.
pub const MIN_CONNECT_REQUEST_LEN: usize = MAX_MESSAGE_LEN;
/// `CANDIDATE_UPDATE`s forwarded per side of one disclosed attempt.
pub const MAX_CANDIDATE_UPDATES_PER_ATTEMPT: u8 = 8;
/// Relay grant pairs minted per attempt (the one for `want_relay` included).
pub const MAX_RELAY_GRANTS_PER_ATTEMPT: u8 = 2;
/// A reply to a registered device may exceed its request by up to this size: a device
/// holds a certified key (accountable, revocable), its Noise handshake proved its
/// address, and its unpadded `KEEPALIVE` must get a `KEEPALIVE_ACK` (at most 40 bytes).
pub const REGISTERED_REPLY_ALLOWANCE: usize = 64;
/// Priority given to a server-reflexive candidate the rendezvous adds.
pub const SERVER_REFLEXIVE_PRIORITY: u32 = 90 << 24;

/// Where the relay is and the key its grants are sealed with.
#[derive(Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// The relay's public UDP address.
    pub address: SocketAddr,
    /// The relay's TCP/TLS stream port, told to endpoints in grants (`spec/stream.md`);
    /// `None`: it has none.
    pub stream_port: Option<u16>,
    /// The secret shared with the relay.
    pub key: RelayGrantKey,
}

impl RelayConfig {
    /// The relay at `address` (with its stream port, if any), sharing `key`.
    pub fn new(address: SocketAddr, stream_port: Option<u16>, key: RelayGrantKey) -> Self {
        Self {
            address,
            stream_port,
            key,
        }
    }
}

impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("address", &self.address)
            .field("stream_port", &self.stream_port)
            .finish_non_exhaustive()
    }
}

/// Timers and limits of the core. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoreConfig {
    /// Interval told to devices.
    pub keepalive_interval: Duration,
    /// Presence expires after this long without keepalive.
    pub presence_ttl: Duration,
    /// Connect attempt state lifetime.
    pub connect_ttl: Duration,
    /// Margin of the punch start: the least `start_in` either peer gets
    /// ([`punch_start_delays`]).
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
    /// Connect requests per authenticated identity.
    pub identity_lookup_rate: Rate,
    /// Connect requests per device ID, per minute.
    pub introduction_rate_per_minute: Rate,
    /// Other signaling messages per session.
    pub session_message_rate: Rate,
    /// Most pending attempts per identity.
    pub max_pending_per_identity: usize,
    /// Registrations per source.
    pub register_rate: Rate,
    /// Refuse certificates that are not in the registry (`UNKNOWN_ID`) instead of
    /// recording them. Off by default: a valid certificate is proof enough and the
    /// issuer may run elsewhere.
    pub require_issued: bool,
    /// The relay, if one is deployed.
    pub relay: Option<RelayConfig>,
    /// Answer keepalive probes (a `KEEPALIVE` with `ack_delay_ms`) after the delay asked
    /// for, up to `keepalive_interval` (spec/registration.md §7). Off: every keepalive
    /// is answered at once, as by a rendezvous that predates probes.
    pub keepalive_probes: bool,
    /// Most probes waiting at once ([`MAX_PENDING_PROBES`]).
    pub max_pending_probes: usize,
    /// Most requests waiting for the registry at once
    /// ([`DEFAULT_MAX_PENDING_LOOKUPS`]).
    pub max_pending_lookups: usize,
    /// How long a request waits for the registry before it is answered `INTERNAL`
    /// ([`DEFAULT_REGISTRY_TIMEOUT`]).
    pub registry_timeout: Duration,
    /// The deployment's nodes and which one this is (`spec/multinode.md`): a node then
    /// refuses, with `NOT_HOME`, a registration for an ID it is neither the home nor the
    /// successor of. `None` (the default): a lone node, every ID is at home.
    pub deployment: Option<Deployment>,
}

/// The nodes of a deployment, as this node sees them: the list every device and viewer
/// also holds, and this node's place in it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Deployment {
    /// Every node of the deployment, by name (the names are what is hashed).
    pub nodes: NodeList<()>,
    /// This node's index in `nodes`.
    pub this: usize,
}

impl Deployment {
    /// Node `this` of `nodes`; `None` if `this` is not listed.
    pub fn new(nodes: NodeList<()>, this: &NodeName) -> Option<Self> {
        let this = nodes.position(this)?;
        Some(Self { nodes, this })
    }

    /// Whether this node may hold `device_id`'s registration: it is the ID's home or
    /// successor.
    pub fn serves(&self, device_id: DeviceId) -> bool {
        self.nodes.serves(self.this, device_id.to_bytes())
    }
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
            identity_lookup_rate: DEFAULT_IDENTITY_LOOKUP_RATE,
            introduction_rate_per_minute: DEFAULT_INTRODUCTION_RATE_PER_MINUTE,
            session_message_rate: DEFAULT_SESSION_MESSAGE_RATE,
            max_pending_per_identity: DEFAULT_MAX_PENDING_PER_IDENTITY,
            register_rate: DEFAULT_REGISTER_RATE,
            require_issued: false,
            relay: None,
            keepalive_probes: true,
            max_pending_probes: MAX_PENDING_PROBES,
            max_pending_lookups: DEFAULT_MAX_PENDING_LOOKUPS,
            registry_timeout: DEFAULT_REGISTRY_TIMEOUT,
            deployment: None,
        }
    }
}

/// Who sent a message: the Noise session it arrived on, the static key that session
/// authenticated, and the source address of the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peer<S> {
    /// The driver's handle for the session.
    pub session: S,
    /// The remote static X25519 key the session's handshake authenticated.
    pub remote_static: PublicKey,
    /// The datagram's source address (the peer's server-reflexive address).
    pub address: SocketAddr,
}

impl<S> Peer<S> {
    /// The authenticated session `session` whose peer holds `remote_static` and sent
    /// from `address`.
    pub fn new(session: S, remote_static: PublicKey, address: SocketAddr) -> Self {
        Self {
            session,
            remote_static,
            address,
        }
    }
}

/// A message to seal into `session` and send.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Introductions sent to devices.
    pub introductions: u64,
    /// Connect requests for unknown, revoked or offline IDs (answered like a refusal).
    pub lookups_failed: u64,
    /// Attempts disclosed on the device's consent.
    pub disclosures: u64,
    /// `ERROR UNAVAILABLE` answers at the end of the consent window.
    pub unavailable: u64,
    /// Login messages relayed between the sessions of an attempt.
    pub logins_relayed: u64,
    /// Attempts disclosed when the viewer's login confirmation matched the digest the
    /// device sent, without waiting for the device's accept.
    pub disclosed_on_digest: u64,
    /// Retransmitted connect requests (something of the attempt was lost; what was
    /// sent so far is sent again).
    pub retransmissions: u64,
    /// Decoy login replies sent for unreachable IDs.
    pub decoys: u64,
    /// `CONNECT_OFFER`s sent again because the device had not acknowledged them.
    pub offer_resends: u64,
    /// `CONNECT_OFFER`s the device acknowledged (`OFFER_ACK`).
    pub offers_acked: u64,
    /// Keepalive probes accepted (answered after their delay).
    pub keepalive_probes: u64,
    /// Consent, candidate, relay or close messages ignored: from a session that is not
    /// the right party of the attempt, a second login, or a message the stage forbids.
    pub ignored: u64,
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
    /// Requests whose registry answer did not come within `registry_timeout` (each
    /// answered `INTERNAL`).
    pub registry_timeouts: u64,
    /// Registry answers that came after their request was answered or dropped (timed
    /// out, or its session closed).
    pub registry_late_answers: u64,
    /// Online devices dropped because the registry announced their revocation
    /// ([`Rendezvous::handle_revoked`]).
    pub revocations_applied: u64,
    /// Registrations refused because this node is neither the home nor the successor of
    /// the ID (`NOT_HOME`, `spec/multinode.md` §3).
    pub not_home: u64,
}

/// Where an attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The device was introduced (or the ID is unreachable); awaiting consent.
    Introduced,
    /// The device refused (or went away): `UNAVAILABLE` at the deadline.
    Refused,
    /// The device accepted; addresses were disclosed.
    Disclosed,
}

/// The device side of an attempt whose device was introduced.
#[derive(Debug, Clone)]
struct DeviceSide<S> {
    session: S,
    key: PublicKey,
    certificate: IdCertificate,
}

#[derive(Debug, Clone)]
struct PendingConnect<S> {
    viewer: S,
    viewer_key: PublicKey,
    viewer_address: SocketAddr,
    request_id: u64,
    request_len: usize,
    /// `None` when the request named six octets that are no device ID (all zeros,
    /// broadcast, multicast): answered like an ID nobody registered.
    device_id: Option<DeviceId>,
    /// `None` for an unreachable ID: the rendezvous plays the device's part.
    device: Option<DeviceSide<S>>,
    viewer_candidates: CandidateSet,
    want_relay: bool,
    /// The viewer's first login message (for the decoy).
    login: Bytes,
    stage: Stage,
    /// The login message forwarded to the viewer (resent on a retransmission).
    to_viewer: Option<Bytes>,
    /// The login message forwarded to the device (re-forwarded if the viewer repeats it,
    /// and before each offer resend while the offer is not acknowledged).
    to_device: Option<Bytes>,
    /// The device's digest of the confirmation it expects, sent with its login message.
    confirmation_digest: Option<[u8; 32]>,
    /// When the device was introduced, then when its login message went to the viewer:
    /// the start of the round trip being timed.
    timing_from: Instant,
    /// Round trips measured during the consent exchange: introduction → the device's
    /// login message, and that message forwarded → the viewer's confirmation (each
    /// including the peer's handling). They set the two `start_in`s.
    device_rtt: Option<Duration>,
    viewer_rtt: Option<Duration>,
    /// What disclosure sent (resent when either side shows it was lost).
    disclosed: Option<Box<(ConnectOffer, ConnectResponse)>>,
    /// When it was disclosed, and how many copies of the offer went out on the resend
    /// schedule ([`OFFER_RESEND_AT`]).
    disclosed_at: Option<Instant>,
    offer_resends: u8,
    /// The device acknowledged the offer: no more resends.
    offer_acked: bool,
    /// The consent deadline until disclosure, then the end of the attempt's life.
    expires: Instant,
    /// Candidate updates forwarded from the device and from the viewer.
    updates: [u8; 2],
    grants: u8,
    allocation: Option<[u8; 16]>,
}

/// What a timer of the timer heap does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Send the decoy login reply of an unreachable ID.
    Decoy,
    /// The consent window closed.
    Deadline,
    /// Resend an offer the device has not acknowledged.
    OfferResend,
    /// A request waited too long for the registry.
    RegistryTimeout,
}

/// What an attempt keeps of a `ConnectRequest`.
#[derive(Debug, Clone)]
struct AttemptRequest {
    /// `None` when the request named six octets that are no device ID
    /// ([`DecodeError::NotADeviceId`]): such an attempt runs like one for an unknown ID.
    device_id: Option<DeviceId>,
    candidates: CandidateSet,
    want_relay: bool,
    login: Bytes,
}

impl From<ConnectRequest> for AttemptRequest {
    fn from(request: ConnectRequest) -> Self {
        Self {
            device_id: Some(request.device_id),
            candidates: request.candidates,
            want_relay: request.want_relay,
            login: request.login,
        }
    }
}

/// A request waiting for its registry answer (spec/registration.md §9.1).
#[derive(Debug, Clone)]
enum Parked<S> {
    Register {
        from: Peer<S>,
        request_len: usize,
        request_id: u64,
        register: Register,
    },
    Connect {
        from: Peer<S>,
        request_len: usize,
        request_id: u64,
        request: AttemptRequest,
    },
}

impl<S: Copy> Parked<S> {
    fn request(&self) -> (Peer<S>, usize, u64) {
        match self {
            Parked::Register {
                from,
                request_len,
                request_id,
                ..
            }
            | Parked::Connect {
                from,
                request_len,
                request_id,
                ..
            } => (*from, *request_len, *request_id),
        }
    }
}

/// The rendezvous state machine.
///
/// Drive it with [`Rendezvous::handle_message`], [`Rendezvous::handle_session_closed`]
/// and [`Rendezvous::handle_timeout`]; after each, drain [`Rendezvous::poll_transmit`]
/// and [`Rendezvous::poll_registry_query`] (run each query anywhere but on the loop and
/// hand the answer to [`Rendezvous::handle_registry_answer`]), and sleep until
/// [`Rendezvous::poll_timeout`]. The core never touches the registry itself: a
/// registration or connect request that needs it waits in a bounded table
/// (spec/registration.md §9.1).
pub struct Rendezvous<S> {
    config: CoreConfig,
    trust: TrustedIssuers,
    /// Requests waiting for the registry, by token; at most `max_pending_lookups`.
    parked: HashMap<u64, Parked<S>>,
    /// (viewer session, request id) → token of a parked connect request (retransmissions).
    parked_by_request: HashMap<(S, u64), u64>,
    /// Connect requests among `parked` (they count against the connect table).
    parked_connects: usize,
    /// Queries for the driver (stale ones, whose request is gone, are skipped).
    queries: VecDeque<RegistryQuery>,
    next_token: u64,
    rng: Box<dyn RngCoreCrypto>,
    epoch: Instant,
    epoch_unix: u64,
    presence: PresenceTable<S>,
    pending: HashMap<ConnectId, PendingConnect<S>>,
    /// (viewer session, request id) → attempt, for retransmissions.
    by_request: HashMap<(S, u64), ConnectId>,
    /// Pending attempts per viewer identity.
    pending_by_identity: HashMap<PublicKey, usize>,
    /// Consent deadlines and decoy replies, earliest first (stale entries are skipped).
    timers: BinaryHeap<Reverse<(Instant, TimerKind, u64)>>,
    /// The source each session is charged to: the address its handshake proved (or its
    /// first message came from), never the claimed source of later datagrams.
    session_sources: HashMap<S, u128>,
    lookup_limiter: RateLimiter<u128>,
    identity_limiter: RateLimiter<PublicKey>,
    /// Keyed by the six octets named, so that octets which are no device ID are
    /// counted like any other ID (spec/signaling.md §4.2).
    introduction_limiter: RateLimiter<[u8; 6]>,
    session_limiter: RateLimiter<S>,
    register_limiter: RateLimiter<u128>,
    outbox: VecDeque<Transmit<S>>,
    encode_buffer: BytesMut,
    next_sweep: Instant,
    /// Delayed keepalive answers, by due time (and a sequence number to keep equal times
    /// apart): the session and the request id to answer. Bounded by
    /// `max_pending_probes`, one per session (`probing`).
    probes: BTreeMap<(Instant, u64), (S, u64)>,
    /// The key in `probes` of each session's probe.
    probing: HashMap<S, (Instant, u64)>,
    next_probe_seq: u64,
    stats: Stats,
}

/// A cryptographically secure RNG, boxed (tests pass a seeded one).
pub trait RngCoreCrypto: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> RngCoreCrypto for T {}

impl<S: fmt::Debug> fmt::Debug for Rendezvous<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendezvous")
            .field("online", &self.presence.len())
            .field("pending_connects", &self.pending.len())
            .field("pending_lookups", &self.parked.len())
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

impl<S: Copy + Eq + Hash + fmt::Debug> Rendezvous<S> {
    /// A rendezvous trusting certificates from `trust`. `now` and `now_unix` anchor the
    /// wall clock (certificates and grants use Unix time); `rng` draws connect ids, punch
    /// keys and allocation ids. Its registry queries come out of
    /// [`Rendezvous::poll_registry_query`].
    pub fn new(
        config: CoreConfig,
        trust: TrustedIssuers,
        rng: Box<dyn RngCoreCrypto>,
        now: Instant,
        now_unix: u64,
    ) -> Self {
        Self {
            presence: PresenceTable::new(config.max_presence),
            pending: HashMap::new(),
            by_request: HashMap::new(),
            pending_by_identity: HashMap::new(),
            timers: BinaryHeap::new(),
            session_sources: HashMap::new(),
            lookup_limiter: RateLimiter::new(config.lookup_rate, config.max_rate_sources, now),
            identity_limiter: RateLimiter::new(
                config.identity_lookup_rate,
                config.max_rate_sources,
                now,
            ),
            introduction_limiter: RateLimiter::per_minute(
                config.introduction_rate_per_minute,
                config.max_rate_sources,
                now,
            ),
            session_limiter: RateLimiter::new(
                config.session_message_rate,
                config.max_rate_sources,
                now,
            ),
            register_limiter: RateLimiter::new(config.register_rate, config.max_rate_sources, now),
            config,
            trust,
            parked: HashMap::new(),
            parked_by_request: HashMap::new(),
            parked_connects: 0,
            queries: VecDeque::new(),
            next_token: 0,
            rng,
            epoch: now,
            epoch_unix: now_unix,
            outbox: VecDeque::new(),
            encode_buffer: BytesMut::new(),
            next_sweep: now + SWEEP_INTERVAL,
            probes: BTreeMap::new(),
            probing: HashMap::new(),
            next_probe_seq: 0,
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
    pub fn session_of(&self, device_id: DeviceId) -> Option<S> {
        self.presence.get(&device_id).map(|entry| entry.session)
    }

    /// How many requests wait for the registry.
    pub fn pending_lookups(&self) -> usize {
        self.parked.len()
    }

    /// The next registry query to run. Run it off the packet loop
    /// ([`RegistryQuery::run`] on a worker, `crate::RegistryPool`) and pass the answer to
    /// [`Rendezvous::handle_registry_answer`]; an answer that never comes is answered
    /// `INTERNAL` to the client after `registry_timeout`.
    pub fn poll_registry_query(&mut self) -> Option<RegistryQuery> {
        while let Some(query) = self.queries.pop_front() {
            if self.parked.contains_key(&query.token) {
                return Some(query);
            }
        }
        None
    }

    /// The registry answered: the parked request resumes where it stopped (an answer
    /// for a request already timed out or whose session closed is counted and dropped).
    pub fn handle_registry_answer(&mut self, now: Instant, answer: RegistryAnswer) {
        let Some(parked) = self.unpark(answer.token) else {
            self.stats.registry_late_answers += 1;
            return;
        };
        let (from, request_len, request_id) = parked.request();
        let outcome = match (parked, answer.result) {
            (_, Err(reason)) => {
                self.stats.registry_errors += 1;
                tracing::error!(%reason, "registry query failed");
                Err(error(ErrorCode::Internal).into())
            }
            (Parked::Register { register, .. }, Ok(QueryResult::Registration(view))) => {
                self.finish_register(now, &from, request_len, request_id, register, view)
            }
            (Parked::Connect { request, .. }, Ok(QueryResult::Lookup(record))) => {
                self.finish_connect(now, &from, request_id, request_len, request, record);
                Ok(())
            }
            (_, Ok(_)) => {
                self.stats.registry_errors += 1;
                tracing::error!("registry answered a different question");
                Err(error(ErrorCode::Internal).into())
            }
        };
        if let Err(Refusal::Reply(reply)) = outcome {
            self.reply(&from, request_len, request_id, reply);
        }
    }

    /// The registry announced that `device_id` was revoked (by any node sharing it, or
    /// the issuer tool): if it is online here, it is dropped from presence at once; its
    /// next registration is checked against the registry like any other.
    pub fn handle_revoked(&mut self, now: Instant, device_id: DeviceId) {
        if self.presence.remove_device(&device_id) {
            self.stats.revocations_applied += 1;
            tracing::info!(device = %device_id, "revoked device removed from presence");
        }
        // A registration of this ID still waiting may have read the registry before the
        // revocation committed: ask again (the first answer becomes a late one).
        let stale: Vec<u64> = self
            .parked
            .iter()
            .filter(|(_, parked)| {
                matches!(parked, Parked::Register { register, .. }
                    if register.certificate.device_id() == device_id)
            })
            .map(|(token, _)| *token)
            .collect();
        for token in stale {
            let Some(parked) = self.parked.remove(&token) else {
                continue;
            };
            let Parked::Register { register, .. } = &parked else {
                continue;
            };
            let kind = QueryKind::Registration {
                certificate: register.certificate,
                record_if_new: !self.config.require_issued,
            };
            let token = self.next_token;
            self.next_token = self.next_token.wrapping_add(1);
            self.parked.insert(token, parked);
            self.queries.push_back(RegistryQuery { token, kind });
            self.timers.push(Reverse((
                now + self.config.registry_timeout,
                TimerKind::RegistryTimeout,
                token,
            )));
        }
    }

    /// Parks a request until the registry answers `kind`; refuses it with `CAPACITY` /
    /// `REGISTRY_QUEUE` when `max_pending_lookups` requests already wait.
    fn park(&mut self, now: Instant, parked: Parked<S>, kind: QueryKind) -> Result<(), Refusal> {
        if self.parked.len() >= self.config.max_pending_lookups {
            self.stats.capacity_refused += 1;
            tracing::warn!(
                limit = self.config.max_pending_lookups,
                "registry queue full"
            );
            let retry = u64::try_from(self.config.registry_timeout.as_millis()).unwrap_or(u64::MAX);
            return Err(limited(ErrorCode::Capacity, Limit::RegistryQueue, retry).into());
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        if let Parked::Connect {
            from, request_id, ..
        } = &parked
        {
            self.parked_by_request
                .insert((from.session, *request_id), token);
            self.parked_connects += 1;
            *self
                .pending_by_identity
                .entry(from.remote_static)
                .or_insert(0) += 1;
        }
        self.parked.insert(token, parked);
        self.queries.push_back(RegistryQuery { token, kind });
        self.timers.push(Reverse((
            now + self.config.registry_timeout,
            TimerKind::RegistryTimeout,
            token,
        )));
        Ok(())
    }

    /// Takes a parked request out of the table (and out of the counts it was in).
    fn unpark(&mut self, token: u64) -> Option<Parked<S>> {
        let parked = self.parked.remove(&token)?;
        if let Parked::Connect {
            from, request_id, ..
        } = &parked
        {
            self.parked_by_request.remove(&(from.session, *request_id));
            self.parked_connects = self.parked_connects.saturating_sub(1);
            self.release_identity(from.remote_static);
        }
        Some(parked)
    }

    fn release_identity(&mut self, key: PublicKey) {
        if let Some(count) = self.pending_by_identity.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.pending_by_identity.remove(&key);
            }
        }
    }

    fn fire_registry_timeout(&mut self, token: u64) {
        let Some(parked) = self.unpark(token) else {
            return;
        };
        self.stats.registry_timeouts += 1;
        tracing::warn!(
            timeout_ms = self.config.registry_timeout.as_millis(),
            "registry did not answer in time"
        );
        let (from, request_len, request_id) = parked.request();
        self.reply(&from, request_len, request_id, error(ErrorCode::Internal));
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<S>> {
        self.outbox.pop_front()
    }

    /// When to call [`Rendezvous::handle_timeout`] next: the next consent deadline or
    /// decoy reply, or the next sweep.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.presence.len() == 0
            && self.pending.is_empty()
            && self.lookup_limiter.len() == 0
            && self.identity_limiter.len() == 0
            && self.introduction_limiter.len() == 0
            && self.session_limiter.len() == 0
            && self.register_limiter.len() == 0;
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let probe = self.probes.keys().next().map(|(at, _)| *at);
        [(!idle).then_some(self.next_sweep), timer, probe]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires due consent deadlines and decoy replies; expires presence and connect
    /// attempts and forgets idle rate-limit buckets every [`SWEEP_INTERVAL`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, kind, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match kind {
                TimerKind::Decoy => self.fire_decoy(ConnectId(id)),
                TimerKind::Deadline => self.fire_deadline(ConnectId(id)),
                TimerKind::OfferResend => self.fire_offer_resend(ConnectId(id)),
                TimerKind::RegistryTimeout => self.fire_registry_timeout(id),
            }
        }
        while let Some(entry) = self.probes.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (session, request_id) = entry.remove();
            self.probing.remove(&session);
            self.answer_keepalive(session, request_id);
        }
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
        let expired: Vec<ConnectId> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.stage == Stage::Disclosed && pending.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove_attempt(id);
        }
        self.lookup_limiter.forget_idle(now);
        self.identity_limiter.forget_idle(now);
        self.introduction_limiter.forget_idle(now);
        self.session_limiter.forget_idle(now);
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

    /// The session layer established `session` with a handshake from `address`: the
    /// session's requests are charged to that source, whatever source later datagrams
    /// claim. (A driver that does not call this gets the source of the session's first
    /// message.)
    pub fn handle_session_established(&mut self, session: S, address: SocketAddr) {
        if self.session_sources.len() < self.config.max_rate_sources
            || self.session_sources.contains_key(&session)
        {
            self.session_sources
                .insert(session, source_key(address.ip()));
        }
    }

    /// The session layer closed `session`: forget what was bound to it. Attempts of its
    /// viewer end; attempts awaiting its device's consent are refused (the viewer still
    /// hears `UNAVAILABLE` only at the deadline); disclosed ones end.
    pub fn handle_session_closed(&mut self, session: S) {
        if let Some(device_id) = self.presence.remove_session(&session) {
            tracing::debug!(device = %device_id, "device offline: session closed");
        }
        self.session_sources.remove(&session);
        if !self.parked.is_empty() {
            // Nobody to answer: drop what this session has waiting for the registry (a
            // registration must not put a closed session into presence).
            let gone: Vec<u64> = self
                .parked
                .iter()
                .filter(|(_, parked)| parked.request().0.session == session)
                .map(|(token, _)| *token)
                .collect();
            for token in gone {
                self.unpark(token);
            }
        }
        if let Some(key) = self.probing.remove(&session) {
            self.probes.remove(&key);
        }
        let mut ended = Vec::new();
        for (id, pending) in &mut self.pending {
            let is_device = pending
                .device
                .as_ref()
                .is_some_and(|d| d.session == session);
            if pending.viewer == session {
                ended.push(*id);
            } else if is_device {
                if pending.stage == Stage::Disclosed {
                    ended.push(*id);
                } else {
                    pending.stage = Stage::Refused;
                }
            }
        }
        for id in ended {
            self.remove_attempt(id);
        }
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
            Err(DecodeError::NotADeviceId {
                request_id,
                octets,
                login,
                source,
            }) => {
                // Answered exactly like an ID nobody registered (spec/signaling.md §4.5):
                // a refusal of its own would be a second answer to tell IDs apart by.
                tracing::debug!(id = %hex::encode(octets), %source, "connect request names no device ID");
                let request = AttemptRequest {
                    device_id: None,
                    candidates: CandidateSet::default(),
                    want_relay: false,
                    login,
                };
                if let Err(Refusal::Reply(reply)) =
                    self.on_connect(now, from, request_len, request_id, octets, request)
                {
                    self.reply(from, request_len, request_id, reply);
                }
                return;
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
            Body::Keepalive => self.on_keepalive(now, from, request_id, Duration::ZERO),
            Body::KeepaliveProbe { ack_delay } => {
                self.on_keepalive(now, from, request_id, ack_delay)
            }
            Body::ConnectRequest(request) => {
                let octets = request.device_id.to_bytes();
                self.on_connect(now, from, request_len, request_id, octets, request.into())
            }
            Body::Consent(consent) => self
                .session_check(now, from, request_id == 0)
                .and_then(|()| self.on_consent(now, from, consent)),
            Body::CandidateUpdate(update) => self
                .session_check(now, from, request_id == 0)
                .and_then(|()| self.on_candidates(from, update)),
            Body::RelayRequest { connect_id } => self
                .session_check(now, from, false)
                .and_then(|()| self.on_relay_request(now, from, request_len, connect_id)),
            Body::Close(close) => self
                .session_check(now, from, request_id == 0)
                .and_then(|()| self.on_close(from, close)),
            Body::OfferAck { connect_id } => self
                .session_check(now, from, true)
                .and_then(|()| self.on_offer_ack(from, connect_id)),
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

    /// Queues `envelope` to `to`. Answers (`request_len` given) are never larger than
    /// the request, plus [`REGISTERED_REPLY_ALLOWANCE`] for a registered device: a larger
    /// one becomes `PADDING_REQUIRED`, and if even that does not fit, nothing is sent.
    fn send(&mut self, to: S, request_len: Option<usize>, envelope: Envelope) {
        let limit = match request_len {
            Some(len) if self.is_registered_device(&to) => len.max(REGISTERED_REPLY_ALLOWANCE),
            Some(len) => len,
            None => MAX_MESSAGE_LEN,
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

    fn rate_check<K: Copy + Eq + Hash>(
        limiter: &mut RateLimiter<K>,
        stats: &mut Stats,
        key: K,
        from: &Peer<S>,
        now: Instant,
        limit: Limit,
    ) -> Result<(), Refusal> {
        match limiter.check(key, now) {
            Ok(()) => Ok(()),
            Err(RateRefusal::Empty { retry_after_ms }) => {
                stats.rate_limited += 1;
                tracing::debug!(source = %from.address, ?limit, "rate limited");
                Err(limited(ErrorCode::RateLimited, limit, retry_after_ms).into())
            }
            Err(RateRefusal::TableFull) => {
                stats.rate_limited += 1;
                tracing::warn!(source = %from.address, ?limit, "rate limiter table full");
                Err(limited(ErrorCode::RateLimited, Limit::SourceTable, 1_000).into())
            }
        }
    }

    /// The source `from`'s session is charged to: pinned at its handshake (or first
    /// message), so a session cannot spread over many sources nor spend the budget of a
    /// source it merely claims in later datagrams.
    fn charged_source(&mut self, from: &Peer<S>) -> u128 {
        if let Some(source) = self.session_sources.get(&from.session) {
            return *source;
        }
        let source = source_key(from.address.ip());
        if self.session_sources.len() < self.config.max_rate_sources {
            self.session_sources.insert(from.session, source);
        }
        source
    }

    /// The per-session rate of the other signaling messages. Notifications over it are
    /// dropped (counted); requests get `RATE_LIMITED` without a `limit`.
    fn session_check(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        notification: bool,
    ) -> Result<(), Refusal> {
        match self.session_limiter.check(from.session, now) {
            Ok(()) => Ok(()),
            Err(refusal) => {
                self.stats.rate_limited += 1;
                tracing::debug!(source = %from.address, "session message rate limited");
                if notification {
                    return Err(Refusal::Silent);
                }
                let retry_after_ms = match refusal {
                    RateRefusal::Empty { retry_after_ms } => retry_after_ms,
                    RateRefusal::TableFull => 1_000,
                };
                Err(ErrorReply {
                    retry_after: Duration::from_millis(retry_after_ms),
                    ..error(ErrorCode::RateLimited)
                }
                .into())
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
        self.session_check(now, from, false)?;
        let source = self.charged_source(from);
        Self::rate_check(
            &mut self.register_limiter,
            &mut self.stats,
            source,
            from,
            now,
            Limit::RegisterRate,
        )?;
        let certificate = register.certificate;
        let device = certificate.device_id();
        // Before the certificate is checked: the answer depends on the ID and the node
        // list only, both public, so it tells nobody anything.
        if let Some(deployment) = &self.config.deployment
            && !deployment.serves(certificate.device_id())
        {
            self.stats.not_home += 1;
            tracing::info!(%device, source = %from.address, "registration refused: not this ID's home or successor");
            return Err(error(ErrorCode::NotHome).into());
        }
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
                session_key = %from.remote_static,
                "registration refused: session key is not the certified key (impersonation attempt)"
            );
            return Err(error(ErrorCode::NotAuthorized).into());
        }
        let kind = QueryKind::Registration {
            certificate,
            record_if_new: !self.config.require_issued,
        };
        let parked = Parked::Register {
            from: *from,
            request_len,
            request_id,
            register,
        };
        self.park(now, parked, kind)
    }

    /// A registration resumed with the registry's answer.
    fn finish_register(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        request_len: usize,
        request_id: u64,
        register: Register,
        view: RegistrationView,
    ) -> Result<(), Refusal> {
        let now_ms = self.ms(now);
        let certificate = register.certificate;
        let device = certificate.device_id();
        self.check_registry(&certificate, device, view)?;
        let entry = PresenceEntry::new(
            from.session,
            from.address,
            now_ms,
            register.candidates.generation,
            &register.candidates.candidates,
        );
        if self
            .presence
            .upsert(certificate.device_id(), entry)
            .is_err()
        {
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
    /// a new one was recorded by the query (or is refused if `require_issued`).
    fn check_registry(
        &mut self,
        certificate: &IdCertificate,
        device: DeviceId,
        view: RegistrationView,
    ) -> Result<(), Refusal> {
        let floor = view.floor;
        if certificate.serial() <= floor {
            self.stats.certificates_refused += 1;
            tracing::info!(%device, serial = certificate.serial(), floor, "registration refused: at or below the revocation floor");
            return Err(error(ErrorCode::Revoked).into());
        }
        match view.record {
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
            // New (the query recorded it) or newer than the record.
            _ => Ok(()),
        }
    }

    /// `KEEPALIVE`, answered at once, or after `ack_delay` for a probe
    /// (spec/registration.md §7): one probe per session, at most `keepalive_interval`
    /// long and [`MAX_PENDING_PROBES`] at once; any other is answered at once.
    fn on_keepalive(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        request_id: u64,
        ack_delay: Duration,
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
        let probe = !ack_delay.is_zero()
            && self.config.keepalive_probes
            && ack_delay <= self.config.keepalive_interval
            && !self.probing.contains_key(&from.session)
            && self.probes.len() < self.config.max_pending_probes;
        if probe {
            let key = (now + ack_delay, self.next_probe_seq);
            self.next_probe_seq = self.next_probe_seq.wrapping_add(1);
            self.probes.insert(key, (from.session, request_id));
            self.probing.insert(from.session, key);
            self.stats.keepalive_probes += 1;
            return Ok(());
        }
        self.answer_keepalive(from.session, request_id);
        Ok(())
    }

    /// `KEEPALIVE_ACK` with the address the device's keepalives come from (a probe's
    /// answer: if the device is still online).
    fn answer_keepalive(&mut self, session: S, request_id: u64) {
        let observed = self
            .presence
            .device_of(&session)
            .and_then(|id| self.presence.get(&id))
            .map(|entry| entry.observed.get());
        let Some(observed) = observed else {
            return;
        };
        self.enqueue(
            session,
            &Envelope::new(request_id, Body::KeepaliveAck { observed }),
        );
    }

    /// `CONNECT_REQUEST` (spec/signaling.md §4.5, steps 1–2). Every request that passes
    /// the limits becomes an attempt answered at the same moment in the same way unless
    /// the device accepts, whether or not the ID exists.
    fn on_connect(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        request_len: usize,
        request_id: u64,
        named: [u8; 6],
        request: AttemptRequest,
    ) -> Result<(), Refusal> {
        // A retransmission: something of this attempt was lost. Resend what was sent so
        // far and nothing new: the introduction (the device answers it again), the login
        // message forwarded to the viewer, or — once disclosed — the offer and response.
        if let Some(connect_id) = self.by_request.get(&(from.session, request_id)).copied() {
            self.session_check(now, from, false)?;
            self.stats.retransmissions += 1;
            let Some(pending) = self.pending.get(&connect_id) else {
                return Ok(());
            };
            match (&pending.stage, &pending.device, &pending.disclosed) {
                (Stage::Introduced, Some(side), _) => {
                    let introduction = Introduction {
                        connect_id,
                        viewer_key: pending.viewer_key,
                        login: pending.login.clone(),
                    };
                    let session = side.session;
                    let resend = pending.to_viewer.clone();
                    self.enqueue(session, &Envelope::new(0, Body::Introduction(introduction)));
                    if let Some(login) = resend {
                        // Bounded by this request too: a retransmission may be shorter.
                        self.send_consent_to_viewer(connect_id, login, request_len);
                    }
                }
                (Stage::Introduced, None, _) => {
                    if let Some(login) = pending.to_viewer.clone() {
                        self.send_consent_to_viewer(connect_id, login, request_len);
                    }
                }
                (Stage::Disclosed, Some(side), Some(disclosed)) => {
                    let (offer, response) = (**disclosed).clone();
                    let (session, viewer, request_id) =
                        (side.session, pending.viewer, pending.request_id);
                    self.enqueue(session, &Envelope::new(0, Body::ConnectOffer(offer)));
                    self.send(
                        viewer,
                        Some(request_len),
                        Envelope::new(request_id, Body::ConnectResponse(response)),
                    );
                }
                _ => {}
            }
            return Ok(());
        }
        // A retransmission of a request still waiting for the registry: its answer is
        // on the way.
        if self
            .parked_by_request
            .contains_key(&(from.session, request_id))
        {
            self.session_check(now, from, false)?;
            self.stats.retransmissions += 1;
            return Ok(());
        }
        // Padding first, and independent of the ID: the answers must fit in the request.
        if request_len < MIN_CONNECT_REQUEST_LEN {
            return Err(ErrorReply {
                min_request_len: MIN_CONNECT_REQUEST_LEN as u32,
                ..error(ErrorCode::PaddingRequired)
            }
            .into());
        }
        let source = self.charged_source(from);
        Self::rate_check(
            &mut self.lookup_limiter,
            &mut self.stats,
            source,
            from,
            now,
            Limit::LookupRate,
        )?;
        Self::rate_check(
            &mut self.identity_limiter,
            &mut self.stats,
            from.remote_static,
            from,
            now,
            Limit::LookupRate,
        )?;
        let own = self
            .pending_by_identity
            .get(&from.remote_static)
            .copied()
            .unwrap_or(0);
        if own >= self.config.max_pending_per_identity {
            self.stats.capacity_refused += 1;
            tracing::debug!(viewer = %from.address, limit = self.config.max_pending_per_identity, "pending attempts per identity");
            let retry = u64::try_from(CONSENT_WINDOW.as_millis()).unwrap_or(u64::MAX);
            return Err(limited(ErrorCode::Capacity, Limit::ConnectTable, retry).into());
        }
        if self.pending.len() + self.parked_connects >= self.config.max_pending_connects {
            self.stats.capacity_refused += 1;
            tracing::warn!(
                limit = self.config.max_pending_connects,
                "connect table full"
            );
            return Err(limited(ErrorCode::Capacity, Limit::ConnectTable, 1_000).into());
        }
        // Introductions per device ID, counted for every ID named (existing or not, and
        // octets that are no device ID alike).
        Self::rate_check(
            &mut self.introduction_limiter,
            &mut self.stats,
            named,
            from,
            now,
            Limit::LookupRate,
        )?;
        let Some(device_id) = request.device_id else {
            // No registry holds a record for it: the attempt starts at once as for an
            // ID the registry does not know.
            self.finish_connect(now, from, request_id, request_len, request, None);
            return Ok(());
        };
        let parked = Parked::Connect {
            from: *from,
            request_len,
            request_id,
            request,
        };
        self.park(now, parked, QueryKind::Lookup { device_id })
    }

    /// A connect request resumed with the registry's record of its ID (steps 1–2 go on:
    /// every request becomes an attempt).
    fn finish_connect(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        request_id: u64,
        request_len: usize,
        request: AttemptRequest,
        record: Option<crate::registry::DeviceRecord>,
    ) {
        let device_id = request.device_id;
        let reachable = match (device_id, record) {
            (None, _) => None,
            (Some(device_id), Some(record)) if record.revoked => {
                // Revocation takes effect at once, also for a device that is online.
                if self.presence.remove_device(&device_id) {
                    tracing::info!(device = %device_id, "revoked device removed from presence");
                }
                None
            }
            (Some(device_id), Some(record)) => {
                self.presence.get(&device_id).map(|entry| DeviceSide {
                    session: entry.session,
                    key: *record.certificate.device_key(),
                    certificate: record.certificate,
                })
            }
            (Some(_), None) => None,
        };
        let connect_id = self.fresh_connect_id();
        let deadline = now + CONSENT_WINDOW;
        let login = request.login;
        let device_session = reachable.as_ref().map(|side| side.session);
        if device_session.is_none() {
            self.stats.lookups_failed += 1;
            if !login.is_empty() {
                let at = now + decoy_delay(&mut *self.rng);
                self.timers
                    .push(Reverse((at, TimerKind::Decoy, connect_id.0)));
            }
        }
        self.timers
            .push(Reverse((deadline, TimerKind::Deadline, connect_id.0)));
        self.pending.insert(
            connect_id,
            PendingConnect {
                viewer: from.session,
                viewer_key: from.remote_static,
                viewer_address: from.address,
                request_id,
                request_len,
                device_id,
                device: reachable,
                viewer_candidates: host_candidates_only(request.candidates),
                want_relay: request.want_relay,
                login: login.clone(),
                stage: Stage::Introduced,
                to_viewer: None,
                to_device: None,
                confirmation_digest: None,
                timing_from: now,
                device_rtt: None,
                viewer_rtt: None,
                disclosed: None,
                disclosed_at: None,
                offer_resends: 0,
                offer_acked: false,
                expires: deadline,
                updates: [0; 2],
                grants: 0,
                allocation: None,
            },
        );
        self.by_request
            .insert((from.session, request_id), connect_id);
        *self
            .pending_by_identity
            .entry(from.remote_static)
            .or_insert(0) += 1;
        if let Some(session) = device_session {
            self.stats.introductions += 1;
            tracing::debug!(device = ?device_id, connect = connect_id.0, "introducing a viewer");
            let introduction = Introduction {
                connect_id,
                viewer_key: from.remote_static,
                login,
            };
            self.enqueue(session, &Envelope::new(0, Body::Introduction(introduction)));
        }
    }

    /// Forwards a login message to the viewer of `connect_id` as `CONSENT`, bounded by
    /// its request's size and `bound`.
    fn send_consent_to_viewer(&mut self, connect_id: ConnectId, login: Bytes, bound: usize) {
        let Some(pending) = self.pending.get(&connect_id) else {
            return;
        };
        let (viewer, request_id, request_len) =
            (pending.viewer, pending.request_id, pending.request_len);
        let consent = Consent {
            connect_id,
            login,
            accept: false,
            confirmation_digest: None,
        };
        self.send(
            viewer,
            Some(request_len.min(bound)),
            Envelope::new(request_id, Body::Consent(consent)),
        );
    }

    /// `CONSENT` from a client (§4.5, steps 3–4).
    fn on_consent(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        consent: Consent,
    ) -> Result<(), Refusal> {
        let connect_id = consent.connect_id;
        let Some(pending) = self.pending.get_mut(&connect_id) else {
            self.stats.ignored += 1;
            return Err(Refusal::Silent);
        };
        let from_device = pending
            .device
            .as_ref()
            .is_some_and(|side| side.session == from.session);
        if from_device {
            let refusal = consent.login.is_empty() && !consent.accept;
            if !consent.login.is_empty() {
                let first = pending.to_viewer.is_none();
                let repeat = pending.to_viewer.as_ref() == Some(&consent.login);
                if pending.stage == Stage::Introduced && (first || repeat) {
                    // One login message per attempt; the same one again is a
                    // retransmission (the first may have been lost on its way).
                    pending.to_viewer = Some(consent.login.clone());
                    if first {
                        pending.confirmation_digest = consent.confirmation_digest;
                        pending.device_rtt = Some(now - pending.timing_from);
                        pending.timing_from = now;
                    }
                    self.stats.logins_relayed += 1;
                    self.send_consent_to_viewer(connect_id, consent.login, MAX_MESSAGE_LEN);
                } else {
                    self.stats.ignored += 1;
                }
            }
            let Some(pending) = self.pending.get_mut(&connect_id) else {
                return Err(Refusal::Silent);
            };
            if consent.accept {
                if pending.stage == Stage::Introduced {
                    pending.confirmation_digest = None;
                    return self.disclose(now, connect_id);
                }
                if pending.stage == Stage::Disclosed && pending.confirmation_digest.is_some() {
                    // Disclosed on the digest: this is the accept that was certain to
                    // follow, not a sign that the offer was lost (the resend schedule
                    // covers that).
                    pending.confirmation_digest = None;
                    return Err(Refusal::Silent);
                }
                if let (Stage::Disclosed, Some(disclosed), Some(side)) =
                    (&pending.stage, &pending.disclosed, &pending.device)
                {
                    // The device accepts again: its offer was lost.
                    let (offer, session) = (disclosed.0.clone(), side.session);
                    self.enqueue(session, &Envelope::new(0, Body::ConnectOffer(offer)));
                    return Err(Refusal::Silent);
                }
                self.stats.ignored += 1;
            } else if refusal && pending.stage == Stage::Introduced {
                // An explicit refusal: the viewer hears UNAVAILABLE at the deadline.
                pending.stage = Stage::Refused;
            }
            return Err(Refusal::Silent);
        }
        if pending.viewer == from.session {
            // The viewer's answer to the device's login message: one, after that message,
            // before disclosure. For an unreachable ID it goes nowhere (the decoy's
            // confirmation fails like a wrong password's).
            let repeat = pending.to_device.as_ref() == Some(&consent.login);
            let allowed = !consent.login.is_empty()
                && pending.stage == Stage::Introduced
                && pending.to_viewer.is_some()
                && (pending.to_device.is_none() || repeat);
            if !allowed {
                self.stats.ignored += 1;
                return Err(Refusal::Silent);
            }
            if pending.to_device.is_none() {
                pending.viewer_rtt = Some(now - pending.timing_from);
            }
            pending.to_device = Some(consent.login.clone());
            // The device told us which confirmation it expects: when this is it, the
            // viewer knows the password and the device's accept (a round trip away) is
            // certain, so disclose now (spec/signaling.md §4.5, step 3).
            // (A plain comparison: a digest's prefix says nothing about the msg3 behind
            // it, so timing teaches a guesser nothing.)
            let confirmed = pending.device.is_some()
                && pending.confirmation_digest
                    == Some(sightwire_session::login::confirmation_digest(
                        &consent.login,
                    ));
            if let Some(side) = &pending.device {
                let session = side.session;
                self.stats.logins_relayed += 1;
                let forward = Consent {
                    connect_id,
                    login: consent.login,
                    accept: false,
                    confirmation_digest: None,
                };
                self.enqueue(session, &Envelope::new(0, Body::Consent(forward)));
            }
            if confirmed {
                self.stats.disclosed_on_digest += 1;
                return self.disclose(now, connect_id);
            }
            return Err(Refusal::Silent);
        }
        self.stats.ignored += 1;
        Err(Refusal::Silent)
    }

    /// The device accepted: `CONNECT_OFFER` to the device, then `CONNECT_RESPONSE` to the
    /// viewer (and grants for `want_relay`).
    fn disclose(&mut self, now: Instant, connect_id: ConnectId) -> Result<(), Refusal> {
        let Some(pending) = self.pending.get(&connect_id) else {
            return Err(Refusal::Silent);
        };
        let Some(side) = pending.device.clone() else {
            return Err(Refusal::Silent);
        };
        let Some(entry) = pending
            .device_id
            .and_then(|device_id| self.presence.get(&device_id))
        else {
            return Err(Refusal::Silent);
        };
        if entry.session != side.session {
            return Err(Refusal::Silent);
        }
        let device_observed = entry.observed.get();
        let device_generation = entry.generation;
        let device_candidates = entry.candidates(SERVER_REFLEXIVE_PRIORITY);
        let (viewer, viewer_key, viewer_address) =
            (pending.viewer, pending.viewer_key, pending.viewer_address);
        let (request_id, request_len, want_relay) =
            (pending.request_id, pending.request_len, pending.want_relay);
        let mut viewer_candidates = pending.viewer_candidates.clone();
        let mut punch_key = [0u8; 32];
        self.rng.fill_bytes(&mut punch_key);
        let (viewer_start, device_start) = punch_start_delays(
            self.config.punch_start_delay,
            pending.viewer_rtt,
            pending.device_rtt,
        );
        viewer_candidates
            .candidates
            .truncate(sightwire_signal::MAX_CANDIDATES - 1);
        // A viewer on a TCP/TLS stream has no UDP address anyone could reach
        // (spec/stream.md §3): its connection's virtual address is not a candidate.
        if !sightwire_stream::is_stream_peer(viewer_address) {
            viewer_candidates.candidates.push(Candidate {
                kind: sightwire_signal::CandidateKind::ServerReflexive,
                address: viewer_address,
                priority: SERVER_REFLEXIVE_PRIORITY,
            });
        }
        let response = ConnectResponse {
            connect_id,
            certificate: side.certificate,
            candidates: CandidateSet {
                generation: device_generation,
                candidates: device_candidates,
            },
            punch: PunchParams {
                punch_key,
                start_in: viewer_start,
            },
            observed: viewer_address,
        };
        let offer = ConnectOffer {
            connect_id,
            viewer_key,
            candidates: viewer_candidates,
            punch: PunchParams {
                punch_key,
                start_in: device_start,
            },
            observed: device_observed,
            ack_requested: true,
        };
        let expires = now + self.config.connect_ttl;
        if let Some(pending) = self.pending.get_mut(&connect_id) {
            pending.stage = Stage::Disclosed;
            pending.expires = expires;
            pending.disclosed = Some(Box::new((offer.clone(), response.clone())));
            pending.disclosed_at = Some(now);
        }
        self.timers.push(Reverse((
            now + OFFER_RESEND_AT[0],
            TimerKind::OfferResend,
            connect_id.0,
        )));
        self.stats.disclosures += 1;
        tracing::debug!(device = %side.certificate.device_id(), connect = connect_id.0, "device consented: disclosing");
        self.enqueue(side.session, &Envelope::new(0, Body::ConnectOffer(offer)));
        let response_envelope = Envelope::new(request_id, Body::ConnectResponse(response));
        let response_len = response_envelope.encoded_len();
        self.send(viewer, Some(request_len), response_envelope);
        if want_relay {
            // The response and the viewer's grant together stay within the request size.
            let budget = request_len.saturating_sub(response_len);
            if let Err(Refusal::Reply(reply)) = self.grant_relay(now, connect_id, (viewer, budget))
            {
                self.send(
                    viewer,
                    Some(budget),
                    Envelope::new(request_id, Body::Error(reply)),
                );
            }
        }
        Ok(())
    }

    /// The consent window of `connect_id` closed: `UNAVAILABLE` unless it was disclosed.
    fn fire_deadline(&mut self, connect_id: ConnectId) {
        let Some(pending) = self.pending.get(&connect_id) else {
            return;
        };
        if pending.stage == Stage::Disclosed {
            return;
        }
        let (viewer, request_id, request_len) =
            (pending.viewer, pending.request_id, pending.request_len);
        let device = pending.device.as_ref().map(|side| side.session);
        self.stats.unavailable += 1;
        self.send(
            viewer,
            Some(request_len),
            Envelope::new(request_id, Body::Error(error(ErrorCode::Unavailable))),
        );
        if let Some(session) = device {
            // Tell the device the introduction is over (it may drop its login state).
            let close = Close {
                connect_id: Some(connect_id),
                reason: CloseReason::Timeout,
            };
            self.enqueue(session, &Envelope::new(0, Body::Close(close)));
        }
        self.remove_attempt(connect_id);
    }

    /// An offer's resend time came: unless the device acknowledged it, send it again and
    /// schedule the next (at most [`OFFER_RESEND_AT`]`.len()` resends per attempt).
    fn fire_offer_resend(&mut self, connect_id: ConnectId) {
        let Some(pending) = self.pending.get_mut(&connect_id) else {
            return;
        };
        let (Stage::Disclosed, false, Some(disclosed), Some(side), Some(at)) = (
            pending.stage,
            pending.offer_acked,
            &pending.disclosed,
            &pending.device,
            pending.disclosed_at,
        ) else {
            return;
        };
        let (offer, session) = (disclosed.0.clone(), side.session);
        // Disclosed on the confirmation's digest and the device has not accepted yet: it
        // may have lost the forwarded confirmation too, and takes the offer only once it
        // has checked it. (Its accept clears the digest.)
        let confirmation = pending.confirmation_digest.and(pending.to_device.clone());
        let confirmation = confirmation.map(|login| Consent {
            connect_id,
            login,
            accept: false,
            confirmation_digest: None,
        });
        pending.offer_resends = pending.offer_resends.saturating_add(1);
        let next = OFFER_RESEND_AT.get(usize::from(pending.offer_resends));
        self.stats.offer_resends += 1;
        tracing::debug!(connect = connect_id.0, "offer not acknowledged: resending");
        if let Some(confirmation) = confirmation {
            self.enqueue(session, &Envelope::new(0, Body::Consent(confirmation)));
        }
        self.enqueue(session, &Envelope::new(0, Body::ConnectOffer(offer)));
        if let Some(offset) = next {
            self.timers.push(Reverse((
                at + *offset,
                TimerKind::OfferResend,
                connect_id.0,
            )));
        }
    }

    /// The device acknowledged the offer of `connect_id`: stop resending it. Only the
    /// attempt's device session may; anything else is ignored.
    fn on_offer_ack(&mut self, from: &Peer<S>, connect_id: ConnectId) -> Result<(), Refusal> {
        let acked = self.pending.get_mut(&connect_id).filter(|pending| {
            pending.stage == Stage::Disclosed
                && pending
                    .device
                    .as_ref()
                    .is_some_and(|side| side.session == from.session)
        });
        match acked {
            Some(pending) => {
                if !pending.offer_acked {
                    pending.offer_acked = true;
                    self.stats.offers_acked += 1;
                }
            }
            None => self.stats.ignored += 1,
        }
        Err(Refusal::Silent)
    }

    /// The decoy's login reply for an unreachable ID is due.
    fn fire_decoy(&mut self, connect_id: ConnectId) {
        let Some(pending) = self.pending.get(&connect_id) else {
            return;
        };
        if pending.device.is_some() || pending.to_viewer.is_some() {
            return;
        }
        let (login, viewer_key, device_id) =
            (pending.login.clone(), pending.viewer_key, pending.device_id);
        // Octets that are no device ID get the decoy of a stand-in ID: with a random
        // password key the reply does not depend on the ID it binds.
        let device_id = device_id.unwrap_or(DECOY_STAND_IN_ID);
        let Some(reply) = decoy_login_reply(&login, &viewer_key, device_id, &mut *self.rng) else {
            return;
        };
        if let Some(pending) = self.pending.get_mut(&connect_id) {
            pending.to_viewer = Some(reply.clone());
        }
        self.stats.decoys += 1;
        self.send_consent_to_viewer(connect_id, reply, MAX_MESSAGE_LEN);
    }

    fn remove_attempt(&mut self, connect_id: ConnectId) {
        let Some(pending) = self.pending.remove(&connect_id) else {
            return;
        };
        self.by_request
            .remove(&(pending.viewer, pending.request_id));
        if let Some(count) = self.pending_by_identity.get_mut(&pending.viewer_key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.pending_by_identity.remove(&pending.viewer_key);
            }
        }
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
        request: (S, usize),
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
        if pending.grants >= MAX_RELAY_GRANTS_PER_ATTEMPT {
            self.stats.rate_limited += 1;
            return Err(error(ErrorCode::RateLimited).into());
        }
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
        let (Some(side), Some(device_id)) = (pending.device.clone(), pending.device_id) else {
            return Err(error(ErrorCode::UnknownConnect).into());
        };
        pending.allocation = Some(allocation_id);
        pending.grants += 1;
        let (viewer, viewer_key) = (pending.viewer, pending.viewer_key);
        for (role, session) in [
            (GrantRole::Device, side.session),
            (GrantRole::Viewer, viewer),
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
                    device_id,
                    device_key: side.key,
                    viewer_key,
                },
                nonce,
            );
            let grant = Envelope::new(
                0,
                Body::RelayGrant(RelayGrant {
                    connect_id,
                    relay: relay.address,
                    token,
                    relay_stream_port: relay.stream_port,
                }),
            );
            // The requester's grant is a reply, bounded by its request; the other is a
            // notification (at most MAX_RELAY_GRANTS_PER_ATTEMPT per attempt).
            let bound = (session == request.0).then_some(request.1);
            self.send(session, bound, grant);
            self.stats.relay_grants += 1;
        }
        Ok(())
    }

    /// The disclosed attempt `connect_id` and which side `from` is (0 device, 1 viewer).
    /// Attempts not yet disclosed are `UNKNOWN_CONNECT` to everyone: before consent there
    /// is nothing to update, relay or close through the rendezvous.
    fn disclosed_party(&self, from: &Peer<S>, connect_id: ConnectId) -> Result<usize, Refusal> {
        let Some(pending) = self
            .pending
            .get(&connect_id)
            .filter(|pending| pending.stage == Stage::Disclosed)
        else {
            return Err(error(ErrorCode::UnknownConnect).into());
        };
        if pending
            .device
            .as_ref()
            .is_some_and(|side| side.session == from.session)
        {
            Ok(0)
        } else if pending.viewer == from.session {
            Ok(1)
        } else {
            Err(error(ErrorCode::NotAuthorized).into())
        }
    }

    fn on_relay_request(
        &mut self,
        now: Instant,
        from: &Peer<S>,
        request_len: usize,
        connect_id: ConnectId,
    ) -> Result<(), Refusal> {
        self.disclosed_party(from, connect_id)?;
        self.grant_relay(now, connect_id, (from.session, request_len))
    }

    fn on_candidates(&mut self, from: &Peer<S>, update: CandidateUpdate) -> Result<(), Refusal> {
        let side = self.disclosed_party(from, update.connect_id)?;
        let Some(pending) = self.pending.get_mut(&update.connect_id) else {
            return Err(error(ErrorCode::UnknownConnect).into());
        };
        if pending.updates[side] >= MAX_CANDIDATE_UPDATES_PER_ATTEMPT {
            self.stats.rate_limited += 1;
            return Err(error(ErrorCode::RateLimited).into());
        }
        pending.updates[side] += 1;
        let to = if side == 0 {
            pending.viewer
        } else {
            match &pending.device {
                Some(device) => device.session,
                None => return Err(error(ErrorCode::UnknownConnect).into()),
            }
        };
        // Forwarded as-is: one message out per message in, never larger.
        self.enqueue(to, &Envelope::new(0, Body::CandidateUpdate(update)));
        Ok(())
    }

    fn on_close(&mut self, from: &Peer<S>, close: Close) -> Result<(), Refusal> {
        let Some(connect_id) = close.connect_id else {
            if let Some(device_id) = self.presence.remove_session(&from.session) {
                tracing::debug!(device = %device_id, reason = ?close.reason, "device went offline");
            }
            return Ok(());
        };
        let Some(pending) = self.pending.get_mut(&connect_id) else {
            return Err(error(ErrorCode::UnknownConnect).into());
        };
        let device = pending.device.as_ref().map(|side| side.session);
        let from_device = device == Some(from.session);
        let from_viewer = pending.viewer == from.session;
        if pending.stage != Stage::Disclosed {
            if from_device {
                // A refusal: the viewer still hears UNAVAILABLE only at the deadline.
                pending.stage = Stage::Refused;
                return Ok(());
            }
            if from_viewer {
                // The viewer gave up: the device learns it, nobody is answered.
                self.remove_attempt(connect_id);
                if let Some(session) = device {
                    self.forward_close(session, connect_id, close.reason);
                }
                return Ok(());
            }
            return Err(error(ErrorCode::UnknownConnect).into());
        }
        let to = if from_viewer {
            device
        } else if from_device {
            Some(pending.viewer)
        } else {
            return Err(error(ErrorCode::NotAuthorized).into());
        };
        self.remove_attempt(connect_id);
        if let Some(to) = to {
            self.forward_close(to, connect_id, close.reason);
        }
        Ok(())
    }

    fn forward_close(&mut self, to: S, connect_id: ConnectId, reason: CloseReason) {
        let reason = if reason == CloseReason::Unspecified {
            CloseReason::Done
        } else {
            reason
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
    }
}

/// The candidates a viewer may name itself: its host addresses. Its server-reflexive
/// address is the one the rendezvous sees (appended at disclosure), and a device serves
/// a viewer's first packets at once only from that address (spec/signaling.md §4.5), so
/// a viewer must not be able to claim another.
fn host_candidates_only(mut set: CandidateSet) -> CandidateSet {
    set.candidates
        .retain(|c| c.kind == sightwire_signal::CandidateKind::Host);
    set
}
