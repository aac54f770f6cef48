//! Timers and limits of a [`SessionTable`](crate::SessionTable). The defaults are the
//! values in `spec/session.md`; tests shrink them to reach every limit quickly.

use std::time::Duration;

/// Start rekeying once the current keys are this old (WireGuard's `REKEY_AFTER_TIME`).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Never use keys older than this, in either direction (WireGuard's `REJECT_AFTER_TIME`).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Start rekeying once this many packets were sent on the current keys.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// First handshake retransmission timeout; doubles on every retry.
pub const HANDSHAKE_INITIAL_RTO: Duration = Duration::from_millis(1000);
/// Ceiling of the doubling retransmission timeout.
pub const HANDSHAKE_MAX_RTO: Duration = Duration::from_secs(8);
/// Give up a first handshake after this long; also how long a responder keeps keys that
/// the initiator has not confirmed yet (a half-open session).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(20);
/// Default maximum number of sessions in one table.
pub const MAX_SESSIONS: usize = 4096;
/// Default maximum number of half-open sessions (handshakes not yet confirmed).
pub const MAX_HALF_OPEN: usize = 512;
/// Default number of half-open sessions at which the responder is "under load".
pub const UNDER_LOAD_HALF_OPEN: usize = 64;
/// Default number of initiations per second above which the responder is "under load":
/// the rate and burst of a token bucket that every initiation with a valid `mac1` draws
/// from; an initiation finding it empty is handled under load.
pub const UNDER_LOAD_INITIATIONS_PER_SECOND: u32 = 256;
/// Default maximum number of half-open responder sessions created by initiations from one
/// source (an IPv4 address or an IPv6 /64). Reaching it, an initiation without a valid
/// `mac2` gets a cookie reply; one with a valid `mac2` replaces that source's oldest
/// half-open session. One source can never hold more.
pub const MAX_HALF_OPEN_PER_SOURCE: usize = 8;
/// Default per-source initiation rate (per second; WireGuard's `INITIATIONS_PER_SECOND`).
/// Each source has two token buckets of this rate and [`INITIATION_BURST_PER_SOURCE`]:
/// initiations without a valid `mac2` draw from the first (empty: cookie reply, no DH),
/// initiations whose `mac2` proves the source address draw from the second (empty: dropped
/// with [`InputError::RateLimited`](crate::InputError::RateLimited)). Checked before any DH.
pub const INITIATIONS_PER_SOURCE_PER_SECOND: u32 = 20;
/// Default burst of the per-source initiation buckets (see
/// [`INITIATIONS_PER_SOURCE_PER_SECOND`]).
pub const INITIATION_BURST_PER_SOURCE: u32 = 10;
/// Default bound of the table of sources (per-source buckets and half-open counts).
/// When it is full, the least recently seen source holding no half-open session is
/// forgotten; nobody is refused for it. Kept above [`MAX_HALF_OPEN`], so there always is
/// such a source. About 150 bytes an entry.
pub const MAX_SOURCES: usize = 4096;
/// Default bound of the table of remote static keys with the greatest initiation
/// timestamp accepted from each (replay protection of message 1). When it is full, the
/// least recently accepted key is forgotten (a replay of that key's old initiation could
/// then create one half-open session again; it can never complete). About 120 bytes an
/// entry.
pub const MAX_REMOTE_TIMESTAMPS: usize = 4096;
/// Key-mismatch notices (`spec/session.md` §2.5) a responder sends per second, as rate
/// and burst of one table-wide token bucket, when it answers them at all
/// ([`Config::key_mismatch_notices_per_second`]). A rendezvous server sets it to this
/// value; the default of a table is 0 (never answer), so a camera stays silent to
/// initiations not made for its key.
pub const KEY_MISMATCH_NOTICES_PER_SECOND: u32 = 64;
/// Default bound of the queue of handshake datagrams waiting for `poll_transmit`.
pub const MAX_QUEUED_TRANSMITS: usize = 1024;
/// Default bound of the queue of events waiting for `poll_event`.
pub const MAX_QUEUED_EVENTS: usize = 1024;

/// How a table stores the transport state of its sessions: a trade of CPU per packet
/// against memory per session (`spec/session.md` §1.4, §6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Footprint {
    /// ring's expanded keys, kept in their own allocations, and a replay window of
    /// [`REPLAY_WINDOW`](crate::REPLAY_WINDOW) counters: the fastest packets (media
    /// between peers), about 1.4 KB per keypair.
    #[default]
    Fast,
    /// The two raw 32-byte keys, expanded on the stack for each packet (5–10 % more CPU
    /// per packet), and a replay window of
    /// [`COMPACT_REPLAY_WINDOW`](crate::COMPACT_REPLAY_WINDOW) counters: about 150 bytes
    /// per keypair, for a server holding many mostly idle sessions (the rendezvous).
    Compact,
}

/// Timers and limits of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// See [`REKEY_AFTER_TIME`].
    pub rekey_after_time: Duration,
    /// See [`REJECT_AFTER_TIME`].
    pub reject_after_time: Duration,
    /// See [`REKEY_AFTER_MESSAGES`].
    pub rekey_after_messages: u64,
    /// See [`HANDSHAKE_INITIAL_RTO`].
    pub handshake_initial_rto: Duration,
    /// See [`HANDSHAKE_MAX_RTO`].
    pub handshake_max_rto: Duration,
    /// See [`HANDSHAKE_DEADLINE`].
    pub handshake_deadline: Duration,
    /// See [`MAX_SESSIONS`].
    pub max_sessions: usize,
    /// See [`MAX_HALF_OPEN`].
    pub max_half_open: usize,
    /// See [`UNDER_LOAD_HALF_OPEN`].
    pub under_load_half_open: usize,
    /// See [`UNDER_LOAD_INITIATIONS_PER_SECOND`].
    pub under_load_initiations_per_second: u32,
    /// See [`MAX_HALF_OPEN_PER_SOURCE`].
    pub max_half_open_per_source: usize,
    /// See [`INITIATIONS_PER_SOURCE_PER_SECOND`].
    pub initiations_per_source_per_second: u32,
    /// See [`INITIATION_BURST_PER_SOURCE`].
    pub initiation_burst_per_source: u32,
    /// See [`MAX_SOURCES`].
    pub max_sources: usize,
    /// See [`MAX_REMOTE_TIMESTAMPS`].
    pub max_remote_timestamps: usize,
    /// See [`MAX_QUEUED_TRANSMITS`].
    pub max_queued_transmits: usize,
    /// See [`MAX_QUEUED_EVENTS`].
    pub max_queued_events: usize,
    /// Key-mismatch notices per second (rate and burst) in answer to initiations whose
    /// `mac1` was not made for this responder's key; 0 (the default): none. See
    /// [`KEY_MISMATCH_NOTICES_PER_SECOND`].
    pub key_mismatch_notices_per_second: u32,
    /// How transport keys and replay windows are stored ([`Footprint::Fast`] by default).
    pub footprint: Footprint,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rekey_after_time: REKEY_AFTER_TIME,
            reject_after_time: REJECT_AFTER_TIME,
            rekey_after_messages: REKEY_AFTER_MESSAGES,
            handshake_initial_rto: HANDSHAKE_INITIAL_RTO,
            handshake_max_rto: HANDSHAKE_MAX_RTO,
            handshake_deadline: HANDSHAKE_DEADLINE,
            max_sessions: MAX_SESSIONS,
            max_half_open: MAX_HALF_OPEN,
            under_load_half_open: UNDER_LOAD_HALF_OPEN,
            under_load_initiations_per_second: UNDER_LOAD_INITIATIONS_PER_SECOND,
            max_half_open_per_source: MAX_HALF_OPEN_PER_SOURCE,
            initiations_per_source_per_second: INITIATIONS_PER_SOURCE_PER_SECOND,
            initiation_burst_per_source: INITIATION_BURST_PER_SOURCE,
            max_sources: MAX_SOURCES,
            max_remote_timestamps: MAX_REMOTE_TIMESTAMPS,
            max_queued_transmits: MAX_QUEUED_TRANSMITS,
            max_queued_events: MAX_QUEUED_EVENTS,
            key_mismatch_notices_per_second: 0,
            footprint: Footprint::Fast,
        }
    }
}
