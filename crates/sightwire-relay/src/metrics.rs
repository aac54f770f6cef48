//! What the relay exports to Prometheus (`/metrics`, `spec/operations.md`), read straight
//! from the [`Relay`] core by the [`RelayServer`](crate::RelayServer) loop after each
//! datagram (relaxed atomic stores, no lock on the forwarding path).

use sightwire_ops::metrics::{Kind, Metric};

use crate::core::Relay;

const fn counter(name: &'static str, help: &'static str, read: fn(&Relay) -> u64) -> Metric<Relay> {
    Metric::new(name, help, Kind::Counter, read)
}

const DROPS: &str = "sightwire_relay_dropped_packets_total";
const DROPS_HELP: &str = "Datagrams dropped, by reason.";
const REFUSED: &str = "sightwire_relay_binds_refused_total";
const REFUSED_HELP: &str = "Binds refused, by reason (other: any reason not listed).";

/// The exported metrics, in exposition order.
pub static METRICS: &[Metric<Relay>] = &[
    Metric::new(
        "sightwire_relay_allocations",
        "Allocations held.",
        Kind::Gauge,
        |r| u64::try_from(r.allocation_count()).unwrap_or(u64::MAX),
    ),
    counter(
        "sightwire_relay_forwarded_packets_total",
        "Datagrams forwarded.",
        |r| r.stats().forwarded_packets,
    ),
    counter(
        "sightwire_relay_forwarded_bytes_total",
        "Bytes forwarded (whole datagrams).",
        |r| r.stats().forwarded_bytes,
    ),
    counter(
        "sightwire_relay_binds_total",
        "Binds accepted (moves included).",
        |r| r.stats().binds,
    ),
    counter(
        "sightwire_relay_binds_moved_total",
        "Binds that moved a side to a new address.",
        |r| r.stats().binds_moved,
    ),
    counter(REFUSED, REFUSED_HELP, |r| r.stats().binds_invalid)
        .with_labels(&[("reason", "invalid_token")]),
    counter(REFUSED, REFUSED_HELP, |r| r.stats().binds_expired)
        .with_labels(&[("reason", "expired")]),
    counter(REFUSED, REFUSED_HELP, |r| {
        let s = r.stats();
        s.binds_refused
            .saturating_sub(s.binds_invalid)
            .saturating_sub(s.binds_expired)
    })
    .with_labels(&[("reason", "other")]),
    counter(
        "sightwire_relay_challenges_total",
        "Challenges sent (a bind from a new address).",
        |r| r.stats().challenges_sent,
    ),
    counter(
        "sightwire_relay_allocations_expired_total",
        "Allocations removed after idling.",
        |r| r.stats().expired_allocations,
    ),
    counter(DROPS, DROPS_HELP, |r| r.stats().dropped_over_limit)
        .with_labels(&[("reason", "over_limit")]),
    counter(DROPS, DROPS_HELP, |r| r.stats().dropped_malformed)
        .with_labels(&[("reason", "malformed")]),
    counter(DROPS, DROPS_HELP, |r| r.stats().dropped_unknown_channel)
        .with_labels(&[("reason", "unknown_channel")]),
    counter(DROPS, DROPS_HELP, |r| r.stats().dropped_wrong_source)
        .with_labels(&[("reason", "wrong_source")]),
    counter(DROPS, DROPS_HELP, |r| r.stats().dropped_peer_not_bound)
        .with_labels(&[("reason", "peer_not_bound")]),
    counter(DROPS, DROPS_HELP, |r| r.stats().dropped_reflection)
        .with_labels(&[("reason", "reflection")]),
    counter(DROPS, DROPS_HELP, |r| r.stats().cookies_invalid)
        .with_labels(&[("reason", "cookie_invalid")]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use sightwire_ops::metrics::Metrics;
    use sightwire_signal::grant::RelayGrantKey;

    #[test]
    fn the_table_is_valid_and_renders() {
        let metrics = Metrics::new(METRICS);
        let relay = Relay::new(
            crate::RelayConfig::default(),
            RelayGrantKey::from_bytes([7; 32]),
        );
        metrics.publish(&relay);
        let text = metrics.render();
        assert!(text.contains("\nsightwire_relay_allocations 0\n"), "{text}");
        assert_eq!(
            text.matches("# TYPE sightwire_relay_dropped_packets_total counter")
                .count(),
            1
        );
    }
}
