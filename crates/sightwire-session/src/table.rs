//! The session table: many sessions on one socket, keyed by random local indices.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{CryptoRng, RngCore};
use sightwire_limits::{Rate, TokenBucket};
use snow::HandshakeState;
use thiserror::Error;

use crate::config::Config;
use crate::cookie::{CookieChecker, CookieJar};
use crate::dos::{SourceKey, SourceTable, Timestamp, TimestampTable, tai64n};
use crate::noise::{
    self, Ephemeral, HandshakeError, HandshakeHash, Keypair, Prologue, PublicKey, SealError,
    SessionKind, StaticKeypair,
};
use crate::replay::ReplayError;
use crate::wire::{
    COOKIE_NONCE_LEN, DecodeError, INITIATION_LEN, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET,
    Initiation, KEY_MISMATCH_LEN, KeyMismatch, MAC_LEN, MAX_PLAINTEXT_LEN, Packet,
    TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD,
};

/// How many random draws [`SessionTable`] makes to find a free local index before giving up.
/// With at most 3 indices per session and [`Config::max_sessions`] far below 2³², one
/// collision is already rare.
pub const MAX_INDEX_DRAWS: usize = 16;

/// How many of the least recently seen sources each initiation looks at to forget idle
/// ones (bounded garbage collection of the source table; eviction covers the rest).
const SOURCE_EXPIRY_BATCH: usize = 4;

/// Hasher for the index and session maps (hot path: two lookups per packet). Keys are
/// either random indices we chose or sequential ids we assigned, so an attacker cannot
/// pick colliding keys to insert; lookups of attacker-chosen indices cost one probe.
/// A multiply-xorshift mix is enough and several times cheaper than SipHash.
#[derive(Default)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        let mixed = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        mixed ^ (mixed >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).rotate_left(5);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IndexHasher>>;

/// The randomness a table needs (local indices, ephemeral keys, cookie secrets and
/// nonces): any cryptographic RNG. Production passes an OS-seeded RNG; tests pass a
/// seeded one and are deterministic.
pub trait SessionRng: RngCore + CryptoRng + Send {}

impl<T: RngCore + CryptoRng + Send> SessionRng for T {}

/// A handle to one session in a [`SessionTable`] (stable across rekeys; never reused by
/// the same table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

#[cfg(test)]
impl SessionId {
    pub(crate) fn for_test(raw: u64) -> Self {
        SessionId(raw)
    }
}

/// Which side of the handshake this end is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a closed set: two roles, as the protocol defines"
)]
pub enum Role {
    /// Sent the initiation (viewer to device, anyone to the rendezvous). Only the
    /// initiator starts rekeys.
    Initiator,
    /// Answered the initiation (device, rendezvous server).
    Responder,
}

/// A datagram to send: the bytes are in the buffer passed to
/// [`SessionTable::poll_transmit`] or [`SessionTable::seal`], `..len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Length of the datagram at the front of the buffer.
    pub len: usize,
}

/// What an accepted datagram was.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input<'d> {
    /// An authenticated transport packet with application data.
    Data {
        /// The session it belongs to.
        session: SessionId,
        /// The plaintext, decrypted in place inside the datagram buffer.
        plaintext: &'d mut [u8],
        /// The source address, now authenticated: the session's peer address.
        from: SocketAddr,
        /// The packet authenticated from an address other than the session's previous
        /// peer address; the session now sends there (roaming).
        endpoint_changed: bool,
    },
    /// An authenticated transport packet with an empty plaintext (handshake confirmation
    /// or keepalive); nothing for the application.
    Keepalive {
        /// The session it belongs to.
        session: SessionId,
        /// As in [`Input::Data`].
        from: SocketAddr,
        /// As in [`Input::Data`].
        endpoint_changed: bool,
    },
    /// A handshake message or cookie reply was processed; call
    /// [`SessionTable::poll_transmit`] and [`SessionTable::poll_event`].
    Handshake {
        /// The session it concerned, if one exists (a cookie reply sent under load creates none).
        session: Option<SessionId>,
    },
}

/// Why a datagram was dropped. Every case is also counted in [`Stats`]. None of these is
/// ever answered on the wire, so an attacker learns nothing from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InputError {
    /// Not a well-formed session packet.
    #[error("malformed packet: {0}")]
    Malformed(#[from] DecodeError),
    /// No session holds this receiver index.
    #[error("no session has receiver index {0:#010x}")]
    UnknownIndex(u32),
    /// The counter was a duplicate, too old, or beyond the message limit.
    #[error("replayed or out-of-window packet: {0}")]
    Replay(#[from] ReplayError),
    /// The transport packet did not authenticate (forged, corrupted, or wrong keys).
    #[error("transport packet did not authenticate")]
    NotAuthenticated,
    /// The packet is for keys older than the reject-after time.
    #[error("packet for expired keys")]
    KeysExpired,
    /// The initiation's `mac1` is wrong (not made for this responder's static key).
    #[error("initiation has a bad mac1")]
    BadMac1,
    /// The Noise handshake message was refused.
    #[error("handshake refused: {0}")]
    Handshake(#[from] HandshakeError),
    /// This table was created without a responder role and accepts no initiations.
    #[error("this table does not accept incoming sessions")]
    NotAccepting,
    /// The table holds [`Config::max_sessions`] sessions.
    #[error("session table full ({limit} sessions)")]
    TableFull {
        /// The limit.
        limit: usize,
    },
    /// [`Config::max_half_open`] handshakes are already waiting for confirmation.
    #[error("too many half-open sessions ({limit})")]
    TooManyHalfOpen {
        /// The limit.
        limit: usize,
    },
    /// The initiation's source address (proven by a valid `mac2`) exceeded its
    /// per-source initiation rate ([`Config::initiations_per_source_per_second`]); no DH
    /// was done. Sources are IPv4 addresses or IPv6 /64 prefixes.
    #[error("initiations from this source exceed {per_second}/s")]
    RateLimited {
        /// The per-source rate.
        per_second: u32,
    },
    /// Message 1's timestamp is not newer than the greatest one accepted from the same
    /// static key: a replayed (or reordered, older) initiation. Nothing changed.
    #[error("replayed initiation (timestamp not newer than the last accepted)")]
    ReplayedInitiation,
    /// A rekey initiation came from a different static key than the session's peer.
    #[error("rekey initiation from a different static key")]
    RemoteKeyChanged,
    /// A rekey initiation's attempt counter was not newer than the last one accepted
    /// (a replayed initiation).
    #[error("stale handshake attempt {attempt} (last accepted {last})")]
    StaleAttempt {
        /// Attempt number received.
        attempt: u64,
        /// Last attempt number accepted.
        last: u64,
    },
    /// A response or cookie reply arrived for an index with no handshake in flight, or a
    /// packet type this end never receives for that index.
    #[error("unexpected packet for the session's state")]
    Unexpected,
    /// The cookie reply did not authenticate.
    #[error("cookie reply did not authenticate")]
    BadCookieReply,
    /// No free random local index was found in [`MAX_INDEX_DRAWS`] draws.
    #[error("could not allocate a local index")]
    IndexesExhausted,
}

/// Why [`SessionTable::connect`] refused to start a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The table holds [`Config::max_sessions`] sessions.
    #[error("session table full ({limit} sessions)")]
    TableFull {
        /// The limit.
        limit: usize,
    },
    /// [`Config::max_half_open`] handshakes are already in flight.
    #[error("too many half-open sessions ({limit})")]
    TooManyHalfOpen {
        /// The limit.
        limit: usize,
    },
    /// No free random local index was found in [`MAX_INDEX_DRAWS`] draws.
    #[error("could not allocate a local index")]
    IndexesExhausted,
    /// snow refused the keys (a configuration problem).
    #[error("handshake setup failed: {0}")]
    Handshake(#[from] HandshakeError),
}

/// Why an initiator's handshake gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// No valid response before the deadline, and no response at all arrived.
    Timeout,
    /// Responses arrived but none proved the expected static key: the peer is not the
    /// device (or server) we expected — a wrong key or a man in the middle.
    RemoteKeyMismatch {
        /// How many unauthenticated responses arrived.
        rejected_responses: u32,
    },
    /// The responder sent a key-mismatch notice (`spec/session.md` §2.5) for the
    /// initiation in flight, echoing its `mac1`: the host at that address holds another
    /// key than the one pinned (a wrong or outdated rendezvous key). Reported at once,
    /// not at the deadline. The notice is not authenticated: an on-path attacker can forge
    /// it, as it can drop every packet; it decides nothing but the error reported.
    KeyRefused,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its keys reached the reject-after time without a successful rekey.
    Expired,
}

/// Something the driver should know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The first handshake of a session completed (initiator: response verified;
    /// responder: first transport packet on the new keys received).
    Established {
        /// The session.
        session: SessionId,
        /// Our role.
        role: Role,
        /// The peer's authenticated static key (the rendezvous checks it against the
        /// device's ID certificate).
        remote_static: PublicKey,
        /// Where the peer is.
        remote_addr: SocketAddr,
    },
    /// A rekey completed; traffic continues on new keys.
    Rekeyed {
        /// The session.
        session: SessionId,
    },
    /// A first handshake failed; the session is gone.
    HandshakeFailed {
        /// The session.
        session: SessionId,
        /// Why.
        reason: HandshakeFailure,
    },
    /// An established session ended; its id is no longer valid.
    Closed {
        /// The session.
        session: SessionId,
        /// Why.
        reason: CloseReason,
    },
}

/// Counters of everything the table did and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Transport packets opened.
    pub packets_opened: u64,
    /// Transport packets sealed.
    pub packets_sealed: u64,
    /// Duplicates and too-old counters dropped by the replay window.
    pub replays_dropped: u64,
    /// Transport packets that did not authenticate.
    pub auth_failures: u64,
    /// Packets for unknown receiver indices.
    pub unknown_index: u64,
    /// Malformed packets.
    pub malformed: u64,
    /// Initiations dropped for a bad `mac1`.
    pub bad_mac1: u64,
    /// Cookie replies sent instead of doing DH.
    pub cookie_replies_sent: u64,
    /// Handshake messages that failed Noise authentication.
    pub handshake_failures: u64,
    /// Initiations dropped by the session or half-open limits.
    pub limit_drops: u64,
    /// Initiations with a proven source address dropped by the per-source rate limit
    /// ([`InputError::RateLimited`]).
    pub rate_limited: u64,
    /// Cookie replies sent because of a per-source limit (the source's unproven bucket was
    /// empty or it held [`Config::max_half_open_per_source`] half-open sessions) while the
    /// table as a whole was not under load. Included in `cookie_replies_sent`.
    pub source_cookie_replies: u64,
    /// Initiations refused as replays by their timestamp ([`InputError::ReplayedInitiation`]).
    pub replayed_initiations: u64,
    /// Half-open responder sessions evicted (the oldest) to make room for a new
    /// initiation when the table or its half-open limit was full.
    pub half_open_evicted: u64,
    /// Half-open responder sessions evicted because their source reached
    /// [`Config::max_half_open_per_source`] (that source's oldest).
    pub source_half_open_evicted: u64,
    /// Sources forgotten because the source table was full ([`Config::max_sources`]).
    pub sources_evicted: u64,
    /// Remote static keys whose greatest timestamp was forgotten because the table was
    /// full ([`Config::max_remote_timestamps`]).
    pub timestamps_evicted: u64,
    /// Handshakes completed (first handshakes and rekeys, both roles).
    pub handshakes_completed: u64,
    /// Datagrams dropped because the transmit queue was full or the buffer too small.
    pub transmits_dropped: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Other drops (stale attempts, unexpected packets, expired keys).
    pub other_drops: u64,
    /// Key-mismatch notices sent (`spec/session.md` §2.5).
    pub key_mismatch_notices_sent: u64,
    /// Key-mismatch notices not sent because their budget
    /// ([`Config::key_mismatch_notices_per_second`]) was spent.
    pub key_mismatch_notices_limited: u64,
}

struct Pending {
    state: Box<HandshakeState>,
    local_index: u32,
    attempt_started: Instant,
    round_deadline: Instant,
    rto: Duration,
    /// The initiation's `mac1` (a key-mismatch notice must echo it).
    mac1: [u8; MAC_LEN],
}

struct Session {
    role: Role,
    prologue: Prologue,
    remote_static: PublicKey,
    remote_addr: SocketAddr,
    current: Option<Keypair>,
    /// Boxed, as `next`: they exist for part of a rekey cycle only, so an idle session
    /// does not carry their room.
    previous: Option<Box<Keypair>>,
    next: Option<Box<Keypair>>,
    /// Boxed: only while a handshake is in flight (keeps idle sessions small).
    pending: Option<Box<Pending>>,
    /// Initiator: last attempt number sent. Responder: last attempt number accepted.
    last_attempt: u64,
    /// Hash of the first handshake (viewer authorization binds to it).
    first_handshake_hash: HandshakeHash,
    established: bool,
    rejected_responses: u32,
    /// Initiator only; boxed so responder sessions do not pay for it.
    jar: Option<Box<CookieJar>>,
    scheduled: Option<Instant>,
    /// Responder, while half-open: the source whose half-open count it is in.
    source: Option<SourceKey>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    Next,
}

impl Session {
    fn slot_of(&self, index: u32) -> Option<Slot> {
        let is = |k: Option<&Keypair>| k.is_some_and(|k| k.local_index == index);
        if is(self.current.as_ref()) {
            Some(Slot::Current)
        } else if is(self.previous.as_deref()) {
            Some(Slot::Previous)
        } else if is(self.next.as_deref()) {
            Some(Slot::Next)
        } else {
            None
        }
    }

    fn keys(&mut self, slot: Slot) -> Option<&mut Keypair> {
        match slot {
            Slot::Current => self.current.as_mut(),
            Slot::Previous => self.previous.as_deref_mut(),
            Slot::Next => self.next.as_deref_mut(),
        }
    }

    /// Makes `keys` current; the current keys become the previous ones. Returns the
    /// local index of the previous keys it retires.
    fn rotate_in(&mut self, keys: Option<Keypair>) -> Option<u32> {
        let retired = std::mem::replace(&mut self.previous, self.current.take().map(Box::new));
        self.current = keys;
        retired.map(|k| k.local_index)
    }

    /// The unconfirmed `next` keys became current (the initiator used or named them).
    fn promote_next(&mut self) -> Option<u32> {
        let confirmed = self.next.take().map(|k| *k);
        self.rotate_in(confirmed)
    }

    fn is_half_open(&self) -> bool {
        !self.established
    }

    fn next_deadline(&self, config: &Config) -> Option<Instant> {
        let mut deadlines = [None; 5];
        if let Some(p) = &self.pending {
            deadlines[0] = Some(p.round_deadline.min(p.attempt_started + p.rto));
        }
        if let Some(k) = &self.current {
            deadlines[1] = Some(k.created + config.reject_after_time);
            if self.role == Role::Initiator && self.pending.is_none() {
                deadlines[2] = Some(k.created + config.rekey_after_time);
            }
        }
        deadlines[3] = self
            .previous
            .as_ref()
            .map(|k| k.created + config.reject_after_time);
        deadlines[4] = self
            .next
            .as_ref()
            .map(|k| k.created + self.next_lifetime(config));
        deadlines.into_iter().flatten().min()
    }

    /// How long unconfirmed responder keys live: a half-open session is given up after
    /// the handshake deadline (frees the slot quickly); an established session keeps
    /// rekeyed keys as long as any keys, so a lost confirmation is healed by the next
    /// data packet or rekey.
    fn next_lifetime(&self, config: &Config) -> Duration {
        if self.established {
            config.reject_after_time
        } else {
            config.handshake_deadline
        }
    }
}

/// What the table answers initiations as.
#[derive(Debug, Clone, Copy)]
struct Responder {
    prologue: Prologue,
}

/// Many Noise sessions behind one UDP socket. Sans-IO: feed it datagrams
/// ([`handle_input`](Self::handle_input)) and time ([`handle_timeout`](Self::handle_timeout));
/// take datagrams ([`poll_transmit`](Self::poll_transmit)), deadlines
/// ([`poll_timeout`](Self::poll_timeout)) and events ([`poll_event`](Self::poll_event)).
pub struct SessionTable {
    local: StaticKeypair,
    responder: Option<Responder>,
    config: Config,
    rng: Box<dyn SessionRng>,
    /// Boxed: the map's buckets stay 16 bytes, so its spare capacity (up to half the
    /// buckets after a doubling) costs little per session.
    sessions: FastMap<SessionId, Box<Session>>,
    indices: FastMap<u32, SessionId>,
    timers: BTreeSet<(Instant, SessionId)>,
    next_id: u64,
    half_open: usize,
    cookie_checker: CookieChecker,
    /// Initiations within `under_load_initiations_per_second` (rate and burst); an
    /// initiation finding it empty means "under load". Created full at the first one.
    initiation_bucket: Option<TokenBucket>,
    /// Key-mismatch notices within `key_mismatch_notices_per_second` (rate and burst).
    /// Created full at the first one.
    notice_bucket: Option<TokenBucket>,
    /// Per-source buckets and half-open counts (bounded: `max_sources`).
    sources: SourceTable,
    /// Half-open responder sessions, oldest (smallest id) first: what gets evicted.
    half_open_responders: BTreeSet<SessionId>,
    /// Greatest initiation timestamp accepted per remote static key (bounded).
    timestamps: TimestampTable,
    /// Wall clock from [`SessionTable::set_unix_time`], nanoseconds since the Unix epoch;
    /// 0 until set.
    unix_nanos: u64,
    /// The last timestamp this table sent (as nanoseconds since the epoch).
    last_timestamp: u64,
    transmits: VecDeque<(SocketAddr, [u8; INITIATION_LEN], usize)>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("local", &self.local)
            .field("sessions", &self.sessions.len())
            .field("half_open", &self.half_open)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SessionTable {
    /// A table that only initiates (viewers; devices talking to the rendezvous).
    pub fn new(local: StaticKeypair, config: Config, rng: Box<dyn SessionRng>) -> Self {
        let cookie_checker = CookieChecker::new(local.public());
        let source_rate = Rate::new(
            config.initiations_per_source_per_second,
            config.initiation_burst_per_source,
        );
        let sources = SourceTable::new(config.max_sources, source_rate);
        let timestamps = TimestampTable::new(config.max_remote_timestamps);
        Self {
            local,
            responder: None,
            config,
            rng,
            sessions: FastMap::default(),
            indices: FastMap::default(),
            timers: BTreeSet::new(),
            next_id: 1,
            half_open: 0,
            cookie_checker,
            initiation_bucket: None,
            notice_bucket: None,
            sources,
            half_open_responders: BTreeSet::new(),
            timestamps,
            unix_nanos: 0,
            last_timestamp: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// A table that also answers initiations of `kind` (a device answers
    /// `SessionKind::Peer { device_id: its own id }`; the rendezvous server answers
    /// `SessionKind::Rendezvous`).
    pub fn with_responder(
        local: StaticKeypair,
        kind: SessionKind,
        config: Config,
        rng: Box<dyn SessionRng>,
    ) -> Self {
        let mut table = Self::new(local, config, rng);
        table.responder = Some(Responder {
            prologue: kind.prologue(),
        });
        table
    }

    /// The wall clock, nanoseconds since the Unix epoch. The driver calls it before
    /// inputs (as it passes `now`), at least before [`connect`](Self::connect) and
    /// [`handle_timeout`](Self::handle_timeout), which build initiations.
    ///
    /// Every initiation carries a timestamp (`spec/session.md`, §2.1): the greater of this
    /// clock and one nanosecond after the previous timestamp this table sent. So the
    /// timestamps of one table strictly increase even if the clock steps back or is never
    /// set. Never set, the clock is 0 and the timestamps are a counter (1, 2, 3 … ns after
    /// the epoch): enough for tests and simulators, whose responders are as young as their
    /// initiators. A real initiator must set it: after a restart a counter starts again
    /// at 1 and a responder that remembers this static key refuses it as a replay. A
    /// responder needs no clock (it only compares timestamps).
    pub fn set_unix_time(&mut self, unix_nanos: u64) {
        self.unix_nanos = unix_nanos;
    }

    fn next_timestamp(&mut self) -> Timestamp {
        let t = self.unix_nanos.max(self.last_timestamp.saturating_add(1));
        self.last_timestamp = t;
        tai64n(t)
    }

    /// Our static public key.
    pub fn local_public(&self) -> &PublicKey {
        self.local.public()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of sessions (established and half-open).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether the table holds no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Number of sessions whose first handshake has not completed.
    pub fn half_open(&self) -> usize {
        self.half_open
    }

    /// The peer's static key (authenticated for a responder once the initiation
    /// decrypted; for an initiator it is the key it was told to expect).
    pub fn remote_static(&self, session: SessionId) -> Option<&PublicKey> {
        self.sessions.get(&session).map(|s| &s.remote_static)
    }

    /// The peer's current address (moves only on authenticated packets).
    pub fn remote_addr(&self, session: SessionId) -> Option<SocketAddr> {
        self.sessions.get(&session).map(|s| s.remote_addr)
    }

    /// The hash of the session's first handshake, once established: the channel binding
    /// for [`crate::auth`].
    pub fn handshake_hash(&self, session: SessionId) -> Option<&HandshakeHash> {
        self.sessions
            .get(&session)
            .filter(|s| s.established)
            .map(|s| &s.first_handshake_hash)
    }

    /// Our role in the session.
    pub fn role(&self, session: SessionId) -> Option<Role> {
        self.sessions.get(&session).map(|s| s.role)
    }

    /// Whether the session can carry data.
    pub fn is_established(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.established && s.current.is_some())
    }

    /// Sessions whose peer has this static key (e.g. to close them after revoking it).
    pub fn sessions_with_remote(
        &self,
        remote_static: &PublicKey,
    ) -> impl Iterator<Item = SessionId> + '_ {
        let key = *remote_static;
        self.sessions
            .iter()
            .filter(move |(_, s)| s.remote_static == key)
            .map(|(id, _)| *id)
    }

    /// Ends a session now and forgets its keys (zeroized). No event is emitted.
    pub fn close(&mut self, session: SessionId) -> bool {
        self.remove(session).is_some()
    }

    /// Responder: completes the first handshake of `session` now, without waiting for the
    /// initiator's first transport packet, so the caller may send on its keys at once
    /// (0.5-RTT data, spec/session.md §3.4). Emits [`Event::Established`] as the
    /// confirmation would have.
    ///
    /// The caller decides that the peer may be sent to before it proved that it holds
    /// the keys: the initiation was authenticated and fresh (its timestamp is newer than
    /// any accepted from that key), but its source address is not proven and a stranger
    /// who captured an initiation that never arrived could replay it from elsewhere. The
    /// endpoint therefore only does this for a key it already admitted, arriving from an
    /// address the rendezvous saw that viewer at (or the relay channel of its
    /// connection). Returns `false` (and changes nothing) for an unknown session, one we
    /// initiated, or one whose first handshake already completed.
    pub fn establish_early(&mut self, session: SessionId) -> bool {
        let Some(s) = self.sessions.get_mut(&session) else {
            return false;
        };
        if s.role != Role::Responder || s.established || s.next.is_none() {
            return false;
        }
        self.confirm_next(session);
        true
    }

    /// Starts a session to `remote_static` at `remote_addr`; the initiation is queued for
    /// [`poll_transmit`](Self::poll_transmit). For `SessionKind::Peer` the device ID is
    /// the one the viewer expects; a device with another ID cannot complete it.
    pub fn connect(
        &mut self,
        now: Instant,
        remote_addr: SocketAddr,
        kind: SessionKind,
        remote_static: PublicKey,
    ) -> Result<SessionId, ConnectError> {
        if self.sessions.len() >= self.config.max_sessions {
            return Err(ConnectError::TableFull {
                limit: self.config.max_sessions,
            });
        }
        if self.half_open >= self.config.max_half_open {
            return Err(ConnectError::TooManyHalfOpen {
                limit: self.config.max_half_open,
            });
        }
        let id = self.new_id();
        let session = Session {
            role: Role::Initiator,
            prologue: kind.prologue(),
            remote_static,
            remote_addr,
            current: None,
            previous: None,
            next: None,
            pending: None,
            last_attempt: 0,
            first_handshake_hash: [0; 32],
            established: false,
            rejected_responses: 0,
            jar: Some(Box::new(CookieJar::new(&remote_static))),
            scheduled: None,
            source: None,
        };
        self.sessions.insert(id, Box::new(session));
        self.half_open += 1;
        let deadline = now + self.config.handshake_deadline;
        let rto = self.config.handshake_initial_rto;
        if let Err(e) = self.send_attempt(id, now, deadline, rto) {
            self.remove(id);
            return Err(e);
        }
        Ok(id)
    }

    fn new_id(&mut self) -> SessionId {
        let id = SessionId(self.next_id);
        self.next_id += 1;
        id
    }

    fn allocate_index(&mut self, session: SessionId) -> Option<u32> {
        for _ in 0..MAX_INDEX_DRAWS {
            let candidate = self.rng.next_u32();
            if candidate != 0 && !self.indices.contains_key(&candidate) {
                self.indices.insert(candidate, session);
                return Some(candidate);
            }
        }
        None
    }

    fn free_keys(indices: &mut FastMap<u32, SessionId>, local_index: Option<u32>) {
        if let Some(index) = local_index {
            indices.remove(&index);
        }
    }

    /// Builds and queues a fresh initiation (new ephemeral, new index, next attempt
    /// number) for an initiator session, replacing any attempt in flight.
    fn send_attempt(
        &mut self,
        id: SessionId,
        now: Instant,
        round_deadline: Instant,
        rto: Duration,
    ) -> Result<(), ConnectError> {
        let index = self
            .allocate_index(id)
            .ok_or(ConnectError::IndexesExhausted)?;
        let ephemeral = Ephemeral::from_rng(&mut *self.rng);
        let timestamp = self.next_timestamp();
        let Some(session) = self.sessions.get_mut(&id) else {
            self.indices.remove(&index);
            return Ok(());
        };
        let receiver_index = session.current.as_ref().map_or(0, |k| k.remote_index);
        let attempt = session.last_attempt.saturating_add(1);
        let built = noise::write_initiation(
            &self.local,
            &session.remote_static,
            &session.prologue,
            &ephemeral,
            index,
            receiver_index,
            &noise::InitiationPayload { attempt, timestamp },
        );
        let (state, mut packet) = match built {
            Ok(built) => built,
            Err(e) => {
                self.indices.remove(&index);
                return Err(e.into());
            }
        };
        if let Some(jar) = session.jar.as_mut() {
            jar.stamp(now, &mut packet);
        }
        session.last_attempt = attempt;
        let mut mac1 = [0u8; MAC_LEN];
        if let Some(sent) = packet.get(INITIATION_MAC1_OFFSET..INITIATION_MAC2_OFFSET) {
            mac1.copy_from_slice(sent);
        }
        if let Some(old) = session.pending.replace(Box::new(Pending {
            state: Box::new(state),
            local_index: index,
            attempt_started: now,
            round_deadline,
            rto,
            mac1,
        })) {
            self.indices.remove(&old.local_index);
        }
        let destination = session.remote_addr;
        self.queue_transmit(destination, &packet);
        self.reschedule(id);
        Ok(())
    }

    fn queue_transmit(&mut self, destination: SocketAddr, bytes: &[u8]) {
        if self.transmits.len() >= self.config.max_queued_transmits || bytes.len() > INITIATION_LEN
        {
            self.stats.transmits_dropped += 1;
            return;
        }
        let mut buf = [0u8; INITIATION_LEN];
        buf[..bytes.len()].copy_from_slice(bytes);
        self.transmits.push_back((destination, buf, bytes.len()));
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.max_queued_events {
            self.stats.events_dropped += 1;
            return;
        }
        self.events.push_back(event);
    }

    fn reschedule(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let deadline = session.next_deadline(&self.config);
        if session.scheduled != deadline {
            if let Some(old) = session.scheduled {
                self.timers.remove(&(old, id));
            }
            if let Some(new) = deadline {
                self.timers.insert((new, id));
            }
            session.scheduled = deadline;
        }
    }

    fn remove(&mut self, id: SessionId) -> Option<()> {
        let mut session = self.sessions.remove(&id)?;
        if let Some(at) = session.scheduled {
            self.timers.remove(&(at, id));
        }
        for index in [
            session.current.take().map(|k| k.local_index),
            session.previous.take().map(|k| k.local_index),
            session.next.take().map(|k| k.local_index),
        ] {
            Self::free_keys(&mut self.indices, index);
        }
        if let Some(p) = session.pending.take() {
            self.indices.remove(&p.local_index);
        }
        if session.is_half_open() {
            self.half_open = self.half_open.saturating_sub(1);
        }
        self.release_source(id, session.source.take());
        Some(())
    }

    /// A responder session left the half-open state (established or removed): it no
    /// longer counts against its source or waits for eviction.
    fn release_source(&mut self, id: SessionId, source: Option<SourceKey>) {
        self.half_open_responders.remove(&id);
        if let Some(entry) = source.and_then(|key| self.sources.get_mut(&key)) {
            entry.half_open = entry.half_open.saturating_sub(1);
        }
    }

    /// Seals `plaintext` for `session` into `out` (which needs
    /// `plaintext.len() + TRANSPORT_OVERHEAD` bytes). Returns where to send `out[..len]`.
    pub fn seal(
        &mut self,
        session: SessionId,
        now: Instant,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<Transmit, SealError> {
        let needed = plaintext.len() + TRANSPORT_OVERHEAD;
        let available = out.len();
        let body = out
            .get_mut(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + plaintext.len())
            .ok_or(SealError::BufferTooSmall { needed, available })?;
        body.copy_from_slice(plaintext);
        self.seal_in_place(session, now, out, plaintext.len())
    }

    /// Seals the plaintext already placed at `buf[TRANSPORT_HEADER_LEN..][..plaintext_len]`
    /// (zero-copy: the media layer writes its payload there), writing the header in front
    /// and the tag behind.
    pub fn seal_in_place(
        &mut self,
        session: SessionId,
        now: Instant,
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<Transmit, SealError> {
        if plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(SealError::PlaintextTooLong {
                len: plaintext_len,
                limit: MAX_PLAINTEXT_LEN,
            });
        }
        let config = &self.config;
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or(SealError::UnknownSession)?;
        let keys = s.current.as_mut().ok_or(SealError::NotEstablished)?;
        if now.saturating_duration_since(keys.created) >= config.reject_after_time {
            return Err(SealError::KeysExpired);
        }
        let len = keys.seal_in_place(buf, plaintext_len)?;
        let wants_rekey = s.role == Role::Initiator
            && s.pending.is_none()
            && keys.send_counter >= config.rekey_after_messages;
        let destination = s.remote_addr;
        let round_deadline = keys.created + config.reject_after_time;
        self.stats.packets_sealed += 1;
        if wants_rekey {
            let rto = self.config.handshake_initial_rto;
            // A failed rekey start is retried by the timer; the packet is sealed either way.
            let _ = self.send_attempt(session, now, round_deadline, rto);
        }
        Ok(Transmit { destination, len })
    }

    /// Processes one datagram whose first byte is in the session range (`0x01`–`0x0F`)
    /// received from `from`. Transport packets are decrypted in place; the plaintext is
    /// returned as a slice of `datagram`.
    pub fn handle_input<'d>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'d mut [u8],
    ) -> Result<Input<'d>, InputError> {
        let result = self.dispatch(now, from, datagram);
        if let Err(e) = &result {
            let counter = match e {
                InputError::Malformed(_) => &mut self.stats.malformed,
                InputError::UnknownIndex(_) => &mut self.stats.unknown_index,
                InputError::Replay(_) => &mut self.stats.replays_dropped,
                InputError::NotAuthenticated => &mut self.stats.auth_failures,
                InputError::BadMac1 => &mut self.stats.bad_mac1,
                InputError::Handshake(_) => &mut self.stats.handshake_failures,
                InputError::TableFull { .. } | InputError::TooManyHalfOpen { .. } => {
                    &mut self.stats.limit_drops
                }
                InputError::RateLimited { .. } => &mut self.stats.rate_limited,
                InputError::ReplayedInitiation => &mut self.stats.replayed_initiations,
                _ => &mut self.stats.other_drops,
            };
            *counter += 1;
        }
        result
    }

    fn dispatch<'d>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &'d mut [u8],
    ) -> Result<Input<'d>, InputError> {
        let (receiver_index, counter) = match Packet::decode(datagram)? {
            Packet::Transport(t) => (t.receiver_index, t.counter),
            Packet::Initiation(i) => {
                let packet: [u8; INITIATION_LEN] = datagram
                    .get(..INITIATION_LEN)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(InputError::Malformed(DecodeError::BadLength {
                        packet_type: crate::wire::TYPE_INITIATION,
                        len: datagram.len(),
                        expected: INITIATION_LEN,
                    }))?;
                return self.on_initiation(now, from, &i, &packet);
            }
            Packet::Response(r) => {
                let (sender, receiver, noise) = (r.sender_index, r.receiver_index, *r.noise);
                return self.on_response(now, from, sender, receiver, &noise);
            }
            Packet::CookieReply(c) => {
                let id = *self
                    .indices
                    .get(&c.receiver_index)
                    .ok_or(InputError::UnknownIndex(c.receiver_index))?;
                let session = self
                    .sessions
                    .get_mut(&id)
                    .ok_or(InputError::UnknownIndex(c.receiver_index))?;
                let in_flight = session
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.local_index == c.receiver_index);
                let jar = session
                    .jar
                    .as_mut()
                    .filter(|_| in_flight)
                    .ok_or(InputError::Unexpected)?;
                if !jar.consume_reply(now, &c) {
                    return Err(InputError::BadCookieReply);
                }
                return Ok(Input::Handshake { session: Some(id) });
            }
            Packet::KeyMismatch(k) => {
                let (index, mac1) = (k.receiver_index, *k.mac1);
                return self.on_key_mismatch(index, &mac1);
            }
        };
        self.on_transport(now, from, receiver_index, counter, datagram)
    }

    fn on_transport<'d>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        index: u32,
        counter: u64,
        datagram: &'d mut [u8],
    ) -> Result<Input<'d>, InputError> {
        let id = *self
            .indices
            .get(&index)
            .ok_or(InputError::UnknownIndex(index))?;
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or(InputError::UnknownIndex(index))?;
        let slot = session
            .slot_of(index)
            .ok_or(InputError::UnknownIndex(index))?;
        let lifetime = if slot == Slot::Next {
            session.next_lifetime(&self.config)
        } else {
            self.config.reject_after_time
        };
        let keys = session.keys(slot).ok_or(InputError::UnknownIndex(index))?;
        // Safe order: cheap window check, then authenticate, then mark.
        keys.replay.check(counter)?;
        if now.saturating_duration_since(keys.created) >= lifetime {
            return Err(InputError::KeysExpired);
        }
        let ciphertext = datagram
            .get_mut(TRANSPORT_HEADER_LEN..)
            .ok_or(InputError::NotAuthenticated)?;
        let plaintext_len = keys
            .open_in_place(counter, ciphertext)
            .map_err(|()| InputError::NotAuthenticated)?;
        keys.replay.mark(counter);
        self.stats.packets_opened += 1;
        let endpoint_changed = session.remote_addr != from;
        session.remote_addr = from;
        if slot == Slot::Next {
            // First packet on the responder's new keys: the initiator has them, rotate.
            self.confirm_next(id);
        }
        let plaintext = datagram
            .get_mut(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + plaintext_len)
            .ok_or(InputError::NotAuthenticated)?;
        if plaintext.is_empty() {
            Ok(Input::Keepalive {
                session: id,
                from,
                endpoint_changed,
            })
        } else {
            Ok(Input::Data {
                session: id,
                plaintext,
                from,
                endpoint_changed,
            })
        }
    }

    /// A responder's `next` keys become current: its first handshake completes
    /// (`Established`) or a rekey does (`Rekeyed`). On the initiator's first packet on
    /// them, or at once by [`establish_early`](Self::establish_early).
    fn confirm_next(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let retired = session.promote_next();
        let source = session.source.take();
        let event = if session.established {
            Event::Rekeyed { session: id }
        } else {
            session.established = true;
            self.half_open = self.half_open.saturating_sub(1);
            Event::Established {
                session: id,
                role: Role::Responder,
                remote_static: session.remote_static,
                remote_addr: session.remote_addr,
            }
        };
        Self::free_keys(&mut self.indices, retired);
        self.stats.handshakes_completed += 1;
        self.release_source(id, source);
        self.push_event(event);
        self.reschedule(id);
    }

    /// An initiation not made for our key: tell the initiator so (§2.5), if this table
    /// answers such initiations and its notice budget allows. The notice is smaller than
    /// the initiation (no amplification) and costs no DH and no state.
    fn notice_key_mismatch(&mut self, now: Instant, to: SocketAddr, initiation: &Initiation<'_>) {
        let per_second = self.config.key_mismatch_notices_per_second;
        if per_second == 0 {
            return;
        }
        let rate = Rate::new(per_second, per_second);
        if !self
            .notice_bucket
            .get_or_insert_with(|| TokenBucket::new(rate, now))
            .try_take(now)
        {
            self.stats.key_mismatch_notices_limited += 1;
            return;
        }
        let notice = Packet::KeyMismatch(KeyMismatch {
            receiver_index: initiation.sender_index,
            mac1: initiation.mac1,
        });
        let mut out = [0u8; KEY_MISMATCH_LEN];
        if let Some(len) = notice.encode(&mut out) {
            self.stats.key_mismatch_notices_sent += 1;
            self.queue_transmit(to, &out[..len]);
        }
    }

    /// A key-mismatch notice: a first handshake whose initiation in flight it names and
    /// whose `mac1` it echoes fails now ([`HandshakeFailure::KeyRefused`]).
    fn on_key_mismatch<'d>(
        &mut self,
        index: u32,
        mac1: &[u8; MAC_LEN],
    ) -> Result<Input<'d>, InputError> {
        let id = *self
            .indices
            .get(&index)
            .ok_or(InputError::UnknownIndex(index))?;
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or(InputError::UnknownIndex(index))?;
        let matches = session
            .pending
            .as_ref()
            .is_some_and(|p| p.local_index == index && p.mac1 == *mac1);
        // A rekey is never refused this way: the peer proved its key before.
        if !matches || session.established {
            return Err(InputError::Unexpected);
        }
        if let Some(p) = session.pending.take() {
            self.indices.remove(&p.local_index);
        }
        self.remove(id);
        self.push_event(Event::HandshakeFailed {
            session: id,
            reason: HandshakeFailure::KeyRefused,
        });
        Ok(Input::Handshake { session: Some(id) })
    }

    fn under_load(&mut self, now: Instant) -> bool {
        let per_second = self.config.under_load_initiations_per_second;
        let rate = Rate::new(per_second, per_second);
        // Every initiation is counted, whatever the half-open count says.
        let over_rate = !self
            .initiation_bucket
            .get_or_insert_with(|| TokenBucket::new(rate, now))
            .try_take(now);
        self.half_open >= self.config.under_load_half_open || over_rate
    }

    fn on_initiation<'d>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        initiation: &Initiation<'_>,
        packet: &[u8; INITIATION_LEN],
    ) -> Result<Input<'d>, InputError> {
        let responder = self.responder.ok_or(InputError::NotAccepting)?;
        if !self.cookie_checker.mac1_ok(packet) {
            self.notice_key_mismatch(now, from, initiation);
            return Err(InputError::BadMac1);
        }
        let under_load = self.under_load(now);
        // An all-zero mac2 means "no cookie" (§5); a valid mac2 proves the source address.
        let proven = packet
            .get(INITIATION_MAC2_OFFSET..)
            .is_some_and(|mac2| mac2 != [0u8; MAC_LEN])
            && self
                .cookie_checker
                .mac2_ok(now, &mut *self.rng, packet, from);
        let new_session = initiation.receiver_index == 0;
        // Per-source limits, before any DH. Each initiation draws from one bucket.
        let source_key = SourceKey::of(from);
        self.sources.expire(now, SOURCE_EXPIRY_BATCH);
        let (source, evicted) = self.sources.touch(now, source_key);
        self.stats.sources_evicted += evicted;
        let source_full = new_session && source.half_open >= self.config.max_half_open_per_source;
        if proven {
            if !source.proven.try_take(now) {
                return Err(InputError::RateLimited {
                    per_second: self.config.initiations_per_source_per_second,
                });
            }
        } else if under_load || source_full || !source.unproven.try_take(now) {
            // Prove the address first: a cookie reply, no DH, no state.
            let mut nonce = [0u8; COOKIE_NONCE_LEN];
            self.rng.fill_bytes(&mut nonce);
            let mut reply = [0u8; INITIATION_LEN];
            let len = self
                .cookie_checker
                .reply(now, &mut *self.rng, packet, from, nonce, &mut reply)
                .unwrap_or(0);
            self.queue_transmit(from, reply.get(..len).unwrap_or_default());
            self.stats.cookie_replies_sent += 1;
            if !under_load {
                self.stats.source_cookie_replies += 1;
            }
            return Ok(Input::Handshake { session: None });
        }
        // A rekey names the responder's keys; an initiation naming no index is a new session.
        let existing = if new_session {
            None
        } else {
            let id = *self
                .indices
                .get(&initiation.receiver_index)
                .ok_or(InputError::UnknownIndex(initiation.receiver_index))?;
            let s = self
                .sessions
                .get(&id)
                .ok_or(InputError::UnknownIndex(initiation.receiver_index))?;
            // The initiator names the keys it uses: our current ones, or our unconfirmed
            // `next` ones if its confirmation was lost.
            let named = s.slot_of(initiation.receiver_index);
            if s.role != Role::Responder || !matches!(named, Some(Slot::Current | Slot::Next)) {
                return Err(InputError::Unexpected);
            }
            Some(id)
        };
        // A full table makes room by evicting its oldest half-open responder session
        // (below, once this initiation has proved valid); with none to evict, refuse now.
        if existing.is_none() && self.half_open_responders.is_empty() {
            if self.sessions.len() >= self.config.max_sessions {
                return Err(InputError::TableFull {
                    limit: self.config.max_sessions,
                });
            }
            if self.half_open >= self.config.max_half_open {
                return Err(InputError::TooManyHalfOpen {
                    limit: self.config.max_half_open,
                });
            }
        }
        let ephemeral = Ephemeral::from_rng(&mut *self.rng);
        let accepted = noise::read_initiation(
            &self.local,
            &responder.prologue,
            &ephemeral,
            initiation.noise,
        )?;
        if let Some(id) = existing {
            let s = self.sessions.get(&id).ok_or(InputError::Unexpected)?;
            if s.remote_static != accepted.remote_static {
                return Err(InputError::RemoteKeyChanged);
            }
            if accepted.attempt <= s.last_attempt {
                return Err(InputError::StaleAttempt {
                    attempt: accepted.attempt,
                    last: s.last_attempt,
                });
            }
        }
        if self
            .timestamps
            .check(&accepted.remote_static, &accepted.timestamp)
            .is_err()
        {
            return Err(InputError::ReplayedInitiation);
        }
        if existing.is_none() {
            self.make_room(source_key)?;
        }
        let id = match existing {
            Some(id) => id,
            None => self.new_id(),
        };
        let index = self
            .allocate_index(id)
            .ok_or(InputError::IndexesExhausted)?;
        let (response, keys, hash) = match noise::write_response(
            accepted.state,
            index,
            initiation.sender_index,
            now,
            self.config.footprint,
        ) {
            Ok(done) => done,
            Err(e) => {
                self.indices.remove(&index);
                return Err(e.into());
            }
        };
        self.stats.timestamps_evicted += self
            .timestamps
            .record(accepted.remote_static, accepted.timestamp);
        match existing.and_then(|id| self.sessions.get_mut(&id)) {
            Some(session) => {
                // Rekey: the new keys wait in `next` until the initiator uses them. The
                // peer address moves only when that (replay-protected) packet arrives.
                if session.slot_of(initiation.receiver_index) == Some(Slot::Next) {
                    // The authenticated initiator names our unconfirmed keys: it completed
                    // that handshake and its confirmation was lost. Promote them first.
                    let retired = session.promote_next();
                    Self::free_keys(&mut self.indices, retired);
                }
                let replaced = session.next.replace(Box::new(keys)).map(|k| k.local_index);
                session.last_attempt = accepted.attempt;
                Self::free_keys(&mut self.indices, replaced);
            }
            None => {
                self.sessions.insert(
                    id,
                    Box::new(Session {
                        role: Role::Responder,
                        prologue: responder.prologue,
                        remote_static: accepted.remote_static,
                        remote_addr: from,
                        current: None,
                        previous: None,
                        next: Some(Box::new(keys)),
                        pending: None,
                        last_attempt: accepted.attempt,
                        first_handshake_hash: hash,
                        established: false,
                        rejected_responses: 0,
                        jar: None,
                        scheduled: None,
                        source: Some(source_key),
                    }),
                );
                self.half_open += 1;
                self.half_open_responders.insert(id);
                let (source, evicted) = self.sources.touch(now, source_key);
                source.half_open += 1;
                self.stats.sources_evicted += evicted;
            }
        }
        self.queue_transmit(from, &response);
        self.reschedule(id);
        Ok(Input::Handshake { session: Some(id) })
    }

    /// Before a new responder session from `source` is inserted: evicts that source's
    /// oldest half-open session if it holds [`Config::max_half_open_per_source`], then
    /// the table's oldest half-open responder session while the session or half-open
    /// limit is reached. Our own (initiator) handshakes are never evicted.
    fn make_room(&mut self, source: SourceKey) -> Result<(), InputError> {
        let held = self.sources.get_mut(&source).map_or(0, |s| s.half_open);
        if held >= self.config.max_half_open_per_source {
            let oldest = self
                .half_open_responders
                .iter()
                .find(|id| {
                    self.sessions
                        .get(id)
                        .is_some_and(|s| s.source == Some(source))
                })
                .copied();
            if let Some(id) = oldest {
                self.remove(id);
                self.stats.source_half_open_evicted += 1;
            }
        }
        while self.sessions.len() >= self.config.max_sessions
            || self.half_open >= self.config.max_half_open
        {
            let Some(oldest) = self.half_open_responders.first().copied() else {
                return Err(if self.sessions.len() >= self.config.max_sessions {
                    InputError::TableFull {
                        limit: self.config.max_sessions,
                    }
                } else {
                    InputError::TooManyHalfOpen {
                        limit: self.config.max_half_open,
                    }
                });
            };
            if self.remove(oldest).is_none() {
                // Not in the table (cannot happen): forget it so the loop ends.
                self.half_open_responders.remove(&oldest);
            }
            self.stats.half_open_evicted += 1;
        }
        Ok(())
    }

    fn on_response<'d>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender_index: u32,
        receiver_index: u32,
        noise_msg: &[u8; crate::wire::RESPONSE_NOISE_LEN],
    ) -> Result<Input<'d>, InputError> {
        let id = *self
            .indices
            .get(&receiver_index)
            .ok_or(InputError::UnknownIndex(receiver_index))?;
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or(InputError::UnknownIndex(receiver_index))?;
        let pending = session
            .pending
            .as_mut()
            .filter(|p| p.local_index == receiver_index)
            .ok_or(InputError::Unexpected)?;
        let (keys, hash) = match noise::read_response(
            &mut pending.state,
            noise_msg,
            receiver_index,
            sender_index,
            now,
            self.config.footprint,
        ) {
            Ok(done) => done,
            Err(e) => {
                session.rejected_responses = session.rejected_responses.saturating_add(1);
                return Err(e.into());
            }
        };
        session.pending = None;
        session.rejected_responses = 0;
        let retired = session.rotate_in(Some(keys));
        Self::free_keys(&mut self.indices, retired);
        session.remote_addr = from;
        self.stats.handshakes_completed += 1;
        let event = if session.established {
            Event::Rekeyed { session: id }
        } else {
            session.established = true;
            session.first_handshake_hash = hash;
            self.half_open = self.half_open.saturating_sub(1);
            Event::Established {
                session: id,
                role: Role::Initiator,
                remote_static: session.remote_static,
                remote_addr: from,
            }
        };
        // Confirm the new keys at once with an empty transport packet, so the responder
        // rotates without waiting for application data.
        let mut confirm = [0u8; TRANSPORT_OVERHEAD];
        let sealed = session
            .current
            .as_mut()
            .map(|k| k.seal_in_place(&mut confirm, 0));
        if let Some(Ok(len)) = sealed {
            self.queue_transmit(from, confirm.get(..len).unwrap_or_default());
        }
        self.push_event(event);
        self.reschedule(id);
        Ok(Input::Handshake { session: Some(id) })
    }

    /// The next datagram to send (handshake messages, cookie replies, confirmations).
    /// `buf` should hold at least [`crate::INITIATION_LEN`] bytes; a datagram that does
    /// not fit is dropped and counted.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some((destination, bytes, len)) = self.transmits.pop_front() {
            match (buf.get_mut(..len), bytes.get(..len)) {
                (Some(out), Some(bytes)) => {
                    out.copy_from_slice(bytes);
                    return Some(Transmit { destination, len });
                }
                _ => self.stats.transmits_dropped += 1,
            }
        }
        None
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Runs every timer due at `now`: handshake retransmission and deadlines, rekeys, key
    /// expiry. Bounded: each due session is visited once per call.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .timers
            .range(..=(now, SessionId(u64::MAX)))
            .map(|(_, id)| *id)
            .collect();
        for id in due {
            self.session_timeout(id, now);
        }
    }

    fn session_timeout(&mut self, id: SessionId, now: Instant) {
        let config = self.config.clone();
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let expired = |k: Option<&Keypair>, life: Duration| {
            k.is_some_and(|k| now.saturating_duration_since(k.created) >= life)
        };
        if expired(session.previous.as_deref(), config.reject_after_time) {
            let retired = session.previous.take().map(|k| k.local_index);
            Self::free_keys(&mut self.indices, retired);
        }
        if expired(session.next.as_deref(), session.next_lifetime(&config)) {
            let retired = session.next.take().map(|k| k.local_index);
            Self::free_keys(&mut self.indices, retired);
        }
        if expired(session.current.as_ref(), config.reject_after_time) {
            let retired = session.current.take().map(|k| k.local_index);
            Self::free_keys(&mut self.indices, retired);
        }
        let mut retry = None;
        if let Some(p) = &session.pending {
            if now >= p.round_deadline {
                let rejected = session.rejected_responses;
                if let Some(p) = session.pending.take() {
                    self.indices.remove(&p.local_index);
                }
                if !session.established {
                    let reason = if rejected > 0 {
                        HandshakeFailure::RemoteKeyMismatch {
                            rejected_responses: rejected,
                        }
                    } else {
                        HandshakeFailure::Timeout
                    };
                    self.remove(id);
                    self.push_event(Event::HandshakeFailed {
                        session: id,
                        reason,
                    });
                    return;
                }
            } else if now >= p.attempt_started + p.rto {
                retry = Some((p.round_deadline, (p.rto * 2).min(config.handshake_max_rto)));
            }
        } else if session.role == Role::Initiator
            && session.current.as_ref().is_some_and(|k| {
                now.saturating_duration_since(k.created) >= config.rekey_after_time
            })
        {
            let created = session.current.as_ref().map_or(now, |k| k.created);
            retry = Some((
                created + config.reject_after_time,
                config.handshake_initial_rto,
            ));
        }
        let dead = session.current.is_none()
            && session.next.is_none()
            && session.pending.is_none()
            && retry.is_none();
        if dead {
            let was_established = session.established;
            self.remove(id);
            if was_established {
                self.push_event(Event::Closed {
                    session: id,
                    reason: CloseReason::Expired,
                });
            }
            return;
        }
        if let Some((round_deadline, rto)) = retry {
            // On failure (no free index) the session stays scheduled and retries later.
            let _ = self.send_attempt(id, now, round_deadline, rto);
        }
        self.reschedule(id);
    }

    /// A copy of the table with a new RNG, for the fuzz harness (which must not redo the
    /// expensive genuine handshake for every input). Handshakes in flight are not copied
    /// (snow's state cannot be cloned); their indices are dropped with them.
    pub(crate) fn fork(&self, rng: Box<dyn SessionRng>) -> Self {
        let mut indices = self.indices.clone();
        let sessions = self
            .sessions
            .iter()
            .map(|(id, s)| {
                if let Some(p) = &s.pending {
                    indices.remove(&p.local_index);
                }
                let copy = Session {
                    role: s.role,
                    prologue: s.prologue,
                    remote_static: s.remote_static,
                    remote_addr: s.remote_addr,
                    current: s.current.clone(),
                    previous: s.previous.clone(),
                    next: s.next.clone(),
                    pending: None,
                    last_attempt: s.last_attempt,
                    first_handshake_hash: s.first_handshake_hash,
                    established: s.established,
                    rejected_responses: s.rejected_responses,
                    jar: s.jar.clone(),
                    scheduled: s.scheduled,
                    source: s.source,
                };
                (*id, Box::new(copy))
            })
            .collect();
        Self {
            local: self.local.clone(),
            responder: self.responder,
            config: self.config.clone(),
            rng,
            sessions,
            indices,
            timers: self.timers.clone(),
            next_id: self.next_id,
            half_open: self.half_open,
            cookie_checker: self.cookie_checker.clone(),
            initiation_bucket: self.initiation_bucket.clone(),
            notice_bucket: self.notice_bucket.clone(),
            sources: self.sources.clone(),
            half_open_responders: self.half_open_responders.clone(),
            timestamps: self.timestamps.clone(),
            unix_nanos: self.unix_nanos,
            last_timestamp: self.last_timestamp,
            transmits: self.transmits.clone(),
            events: self.events.clone(),
            stats: self.stats,
        }
    }

    /// Bytes of one idle responder session's record (`size_of` of the boxed record);
    /// the memory test and `spec/session.md` §6 account for it.
    #[cfg(test)]
    pub(crate) fn session_record_size() -> usize {
        size_of::<Session>()
    }

    #[cfg(test)]
    pub(crate) fn index_count(&self) -> usize {
        self.indices.len()
    }

    #[cfg(test)]
    pub(crate) fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Half-open responder sessions counted against the source of `from`.
    #[cfg(test)]
    pub(crate) fn half_open_from(&mut self, from: SocketAddr) -> usize {
        self.sources
            .get_mut(&SourceKey::of(from))
            .map_or(0, |s| s.half_open)
    }

    #[cfg(test)]
    pub(crate) fn timestamp_count(&self) -> usize {
        self.timestamps.len()
    }
}
