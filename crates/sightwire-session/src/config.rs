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
/// Default bound of the queue of handshake datagrams waiting for `poll_transmit`.
pub const MAX_QUEUED_TRANSMITS: usize = 1024;
/// Default bound of the queue of events waiting for `poll_event`.
pub const MAX_QUEUED_EVENTS: usize = 1024;

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
    /// See [`MAX_QUEUED_TRANSMITS`].
    pub max_queued_transmits: usize,
    /// See [`MAX_QUEUED_EVENTS`].
    pub max_queued_events: usize,
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
            max_queued_transmits: MAX_QUEUED_TRANSMITS,
            max_queued_events: MAX_QUEUED_EVENTS,
        }
    }
}
