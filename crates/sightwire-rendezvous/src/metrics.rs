//! What the server exports to Prometheus (`/metrics`, `spec/operations.md`): the core's
//! and the session table's counters and table sizes, published by the [`Server`] loop
//! after each turn (relaxed atomic stores, no lock on the packet path).
//!
//! [`Server`]: crate::server::Server

use sightwire_ops::metrics::{Kind, Metric};

use crate::core::Stats;

/// What the server loop publishes after each turn.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Snapshot {
    /// The core's counters.
    pub core: Stats,
    /// The session table's counters.
    pub sessions: sightwire_session::Stats,
    /// Devices online (presence entries).
    pub online: usize,
    /// Noise sessions (devices, viewers, half-open handshakes).
    pub session_count: usize,
    /// Connect attempts pending.
    pub pending_connects: usize,
}

const fn counter(
    name: &'static str,
    help: &'static str,
    read: fn(&Snapshot) -> u64,
) -> Metric<Snapshot> {
    Metric::new(name, help, Kind::Counter, read)
}

const fn gauge(
    name: &'static str,
    help: &'static str,
    read: fn(&Snapshot) -> u64,
) -> Metric<Snapshot> {
    Metric::new(name, help, Kind::Gauge, read)
}

const REFUSALS: &str = "sightwire_rendezvous_refusals_total";
const REFUSALS_HELP: &str = "Requests refused or dropped by the core, by reason.";
const SESSION_DROPS: &str = "sightwire_rendezvous_session_drops_total";
const SESSION_DROPS_HELP: &str =
    "Datagrams the session layer answered with a cookie or dropped, by reason.";

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The exported metrics, in exposition order.
pub static METRICS: &[Metric<Snapshot>] = &[
    gauge(
        "sightwire_rendezvous_devices_online",
        "Devices online (presence entries).",
        |s| count(s.online),
    ),
    gauge(
        "sightwire_rendezvous_sessions",
        "Noise sessions held (devices, viewers, half-open).",
        |s| count(s.session_count),
    ),
    gauge(
        "sightwire_rendezvous_pending_connects",
        "Connect attempts pending.",
        |s| count(s.pending_connects),
    ),
    counter(
        "sightwire_rendezvous_registrations_total",
        "Registrations accepted.",
        |s| s.core.registrations,
    ),
    counter(
        "sightwire_rendezvous_keepalives_total",
        "Keepalives answered.",
        |s| s.core.keepalives,
    ),
    counter(
        "sightwire_rendezvous_connect_requests_total",
        "Connect requests (lookups) that passed the limits: one attempt each.",
        |s| s.core.introductions + s.core.lookups_failed,
    ),
    counter(
        "sightwire_rendezvous_introductions_total",
        "Introductions sent to online devices.",
        |s| s.core.introductions,
    ),
    counter(
        "sightwire_rendezvous_lookups_failed_total",
        "Connect requests for unknown, revoked or offline IDs.",
        |s| s.core.lookups_failed,
    ),
    counter(
        "sightwire_rendezvous_disclosures_total",
        "Attempts disclosed on the device's consent.",
        |s| s.core.disclosures,
    ),
    counter(
        "sightwire_rendezvous_relay_grants_total",
        "Relay grants minted.",
        |s| s.core.relay_grants,
    ),
    counter(
        "sightwire_rendezvous_presence_expired_total",
        "Presence entries expired (keepalives missed).",
        |s| s.core.presence_expired,
    ),
    counter(REFUSALS, REFUSALS_HELP, |s| s.core.rate_limited)
        .with_labels(&[("reason", "rate_limited")]),
    counter(REFUSALS, REFUSALS_HELP, |s| s.core.capacity_refused)
        .with_labels(&[("reason", "capacity")]),
    counter(REFUSALS, REFUSALS_HELP, |s| s.core.certificates_refused)
        .with_labels(&[("reason", "certificate")]),
    counter(REFUSALS, REFUSALS_HELP, |s| s.core.impersonations_refused)
        .with_labels(&[("reason", "impersonation")]),
    counter(REFUSALS, REFUSALS_HELP, |s| s.core.malformed).with_labels(&[("reason", "malformed")]),
    counter(REFUSALS, REFUSALS_HELP, |s| s.core.amplification_drops)
        .with_labels(&[("reason", "amplification")]),
    counter(REFUSALS, REFUSALS_HELP, |s| s.core.outbox_drops)
        .with_labels(&[("reason", "outbox_full")]),
    counter(REFUSALS, REFUSALS_HELP, |s| s.core.registry_errors)
        .with_labels(&[("reason", "registry_error")]),
    counter(REFUSALS, REFUSALS_HELP, |s| s.core.not_home).with_labels(&[("reason", "not_home")]),
    counter(
        "sightwire_rendezvous_handshakes_total",
        "Noise handshakes completed (first ones and rekeys).",
        |s| s.sessions.handshakes_completed,
    ),
    counter(
        "sightwire_rendezvous_packets_opened_total",
        "Transport packets authenticated.",
        |s| s.sessions.packets_opened,
    ),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| {
        s.sessions
            .cookie_replies_sent
            .saturating_sub(s.sessions.source_cookie_replies)
    })
    .with_labels(&[("reason", "under_load_cookie")]),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| {
        s.sessions.source_cookie_replies
    })
    .with_labels(&[("reason", "source_cookie")]),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| {
        s.sessions.rate_limited
    })
    .with_labels(&[("reason", "source_rate")]),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| {
        s.sessions.limit_drops
    })
    .with_labels(&[("reason", "table_limit")]),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| s.sessions.bad_mac1)
        .with_labels(&[("reason", "bad_mac1")]),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| {
        s.sessions.auth_failures + s.sessions.handshake_failures
    })
    .with_labels(&[("reason", "authentication")]),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| {
        s.sessions.replays_dropped + s.sessions.replayed_initiations
    })
    .with_labels(&[("reason", "replay")]),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| {
        s.sessions.unknown_index
    })
    .with_labels(&[("reason", "unknown_index")]),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| s.sessions.malformed)
        .with_labels(&[("reason", "malformed")]),
    counter(SESSION_DROPS, SESSION_DROPS_HELP, |s| {
        s.sessions.transmits_dropped
    })
    .with_labels(&[("reason", "transmit_queue")]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use sightwire_ops::metrics::Metrics;

    #[test]
    fn the_table_is_valid_and_renders_every_family() {
        let metrics = Metrics::new(METRICS);
        let mut snapshot = Snapshot {
            online: 7,
            ..Snapshot::default()
        };
        snapshot.core.rate_limited = 3;
        metrics.publish(&snapshot);
        let text = metrics.render();
        assert!(
            text.contains("\nsightwire_rendezvous_devices_online 7\n"),
            "{text}"
        );
        assert!(text.contains("sightwire_rendezvous_refusals_total{reason=\"rate_limited\"} 3\n"));
        assert_eq!(
            text.matches("# TYPE sightwire_rendezvous_refusals_total counter")
                .count(),
            1
        );
    }
}
