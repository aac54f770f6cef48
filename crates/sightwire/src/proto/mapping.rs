//! How long the device's NAT keeps its UDP mapping towards the rendezvous, learned with
//! keepalive probes (`spec/registration.md` §7).
//!
//! A NAT that forgets an idle mapping before the next keepalive leaves the camera
//! registered but unreachable: what the rendezvous forwards (an introduction, an offer) is
//! dropped until the device sends again. The device cannot see its NAT's timer; it can
//! measure it. A *probe* is a keepalive whose answer the rendezvous sends only after a
//! delay (`ack_delay`): if the answer arrives, the mapping survived that idle gap; if it
//! does not, it did not (or the answer was lost — the mistake is on the safe side).
//!
//! The search: first the ceiling (the rendezvous's interval; most NATs keep a mapping
//! that long, and then one probe settles it), then bisection between the largest gap
//! that survived (at least [`MIN_KEEPALIVE_INTERVAL`]) and the smallest that did not,
//! until they are [`PROBE_RESOLUTION`] apart. The keepalive interval is the largest gap
//! that survived, never below the floor nor above the ceiling; until the first answer
//! it is the floor. A rendezvous that answers a probe at once predates probes: the
//! device then keeps the ceiling, as before. Probes are bounded: at most
//! [`MAX_PROBES`] per search; a search starts on registration with a new ceiling, on a
//! network change, and when the rendezvous reports a new observed address (the mapping
//! was replaced while idle).

use std::time::{Duration, Instant};

/// The shortest keepalive interval the device ever uses (a NAT that forgets mappings
/// faster than this is not served; RFC 4787 asks for 2 min).
pub const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(8);
/// The search stops when the gap known to survive and the gap known to fail are this
/// close.
pub const PROBE_RESOLUTION: Duration = Duration::from_secs(2);
/// A probe's answer is awaited this long beyond its delay (the link timeout).
pub(crate) const PROBE_MARGIN: Duration = Duration::from_millis(1500);
/// Most probes one search sends (1 for the ceiling, then bisection of at most 12 s in
/// 2 s steps needs 3; the rest absorbs answers lost or spoiled by other traffic).
pub const MAX_PROBES: u32 = 6;

/// A probe in flight.
#[derive(Debug, Clone, Copy)]
struct Probe {
    request_id: u64,
    gap: Duration,
    sent: Instant,
    /// Something else was sent to the rendezvous meanwhile: the gap was not idle.
    spoiled: bool,
}

/// What a `KEEPALIVE_ACK` meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckOutcome {
    /// The answer to a plain keepalive.
    Plain,
    /// The answer to the probe in flight (whatever it taught).
    Probe,
}

/// The keepalive interval and the search for it. Sans-IO: the endpoint tells it what
/// was sent and heard, and asks what to send.
#[derive(Debug, Clone)]
pub(crate) struct KeepaliveTuner {
    ceiling: Duration,
    /// Largest idle gap that survived (zero: none yet).
    good: Duration,
    /// Smallest idle gap that did not.
    bad: Option<Duration>,
    /// The rendezvous answers probes late (false once one was answered at once).
    supported: bool,
    probe: Option<Probe>,
    /// Probes sent in this search.
    probes: u32,
}

impl KeepaliveTuner {
    pub(crate) fn new(ceiling: Duration) -> Self {
        Self {
            ceiling,
            good: Duration::ZERO,
            bad: None,
            supported: true,
            probe: None,
            probes: 0,
        }
    }

    /// The interval the rendezvous asked for (from `REGISTER_ACK`). A new value starts a
    /// new search; the same keeps what was learned (a re-registration after a
    /// rendezvous restart).
    pub(crate) fn set_ceiling(&mut self, ceiling: Duration) {
        if ceiling != self.ceiling {
            let supported = self.supported;
            *self = Self::new(ceiling);
            self.supported = supported;
        }
    }

    /// The network changed: what was learned is about another NAT.
    pub(crate) fn restart(&mut self) {
        *self = Self::new(self.ceiling);
    }

    /// The time between keepalives now.
    pub(crate) fn interval(&self) -> Duration {
        if !self.supported || self.ceiling <= MIN_KEEPALIVE_INTERVAL {
            // Nothing to learn under the floor: the rendezvous's interval, as before.
            return self.ceiling;
        }
        self.good.max(MIN_KEEPALIVE_INTERVAL).min(self.ceiling)
    }

    /// The gap the next keepalive should probe, if the search goes on.
    pub(crate) fn wanted_probe(&self) -> Option<Duration> {
        if !self.supported || self.probe.is_some() || self.probes >= MAX_PROBES {
            return None;
        }
        let low = self.good.max(MIN_KEEPALIVE_INTERVAL);
        match self.bad {
            None if self.good < self.ceiling && self.ceiling > MIN_KEEPALIVE_INTERVAL => {
                Some(self.ceiling)
            }
            None => None,
            Some(bad) if bad > low + PROBE_RESOLUTION => Some(low + (bad - low) / 2),
            Some(_) => None,
        }
    }

    pub(crate) fn probe_in_flight(&self) -> bool {
        self.probe.is_some()
    }

    /// A probe of `gap` went out as request `request_id`.
    pub(crate) fn probe_sent(&mut self, now: Instant, request_id: u64, gap: Duration) {
        self.probes += 1;
        self.probe = Some(Probe {
            request_id,
            gap,
            sent: now,
            spoiled: false,
        });
    }

    /// Something else went to the rendezvous (or a peer connection exists): a probe in
    /// flight no longer measures an idle gap.
    pub(crate) fn spoil(&mut self) {
        if let Some(probe) = &mut self.probe {
            probe.spoiled = true;
        }
    }

    /// A `KEEPALIVE_ACK` for `request_id` arrived.
    pub(crate) fn on_ack(&mut self, now: Instant, request_id: u64) -> AckOutcome {
        let Some(probe) = self.probe.filter(|p| p.request_id == request_id) else {
            return AckOutcome::Plain;
        };
        self.probe = None;
        let waited = now.saturating_duration_since(probe.sent);
        if waited < probe.gap / 2 {
            // Answered at once: a rendezvous that predates probes.
            tracing::info!("the rendezvous does not answer keepalive probes; fixed interval");
            self.supported = false;
        } else if !probe.spoiled {
            self.good = self.good.max(probe.gap);
            tracing::debug!(gap = ?probe.gap, "the NAT mapping survived the gap");
        }
        AckOutcome::Probe
    }

    /// The probe's answer did not come within its gap and [`PROBE_MARGIN`]: the mapping
    /// did not survive the gap (or the answer was lost). Returns whether a probe was in
    /// flight.
    pub(crate) fn probe_timed_out(&mut self) -> bool {
        let Some(probe) = self.probe.take() else {
            return false;
        };
        if !probe.spoiled {
            tracing::debug!(gap = ?probe.gap, "the NAT mapping did not survive the gap");
            self.bad = Some(self.bad.map_or(probe.gap, |b| b.min(probe.gap)));
            if self.good >= probe.gap {
                self.good = Duration::ZERO;
            }
        }
        true
    }

    /// The rendezvous saw the device at a new address: the mapping was replaced while
    /// idle, so the current interval is too long.
    pub(crate) fn mapping_replaced(&mut self) {
        let interval = self.interval();
        if !self.supported || interval <= MIN_KEEPALIVE_INTERVAL {
            return;
        }
        self.bad = Some(self.bad.map_or(interval, |b| b.min(interval)));
        if self.good >= interval {
            self.good = Duration::ZERO;
        }
        self.probes = 0;
    }

    /// The link to the rendezvous was lost: a probe in flight teaches nothing.
    pub(crate) fn abort(&mut self) {
        self.probe = None;
    }

    /// The deadline of the probe in flight.
    pub(crate) fn probe_deadline(&self) -> Option<Instant> {
        self.probe.map(|p| p.sent + p.gap + PROBE_MARGIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Runs the search against a NAT that keeps idle mappings `timeout`; returns the
    /// gaps probed and the final interval.
    fn search(ceiling: Duration, timeout: Duration) -> (Vec<Duration>, Duration) {
        let mut tuner = KeepaliveTuner::new(ceiling);
        let mut now = Instant::now();
        let mut probed = Vec::new();
        let mut id = 0;
        while let Some(gap) = tuner.wanted_probe() {
            id += 1;
            probed.push(gap);
            tuner.probe_sent(now, id, gap);
            if gap < timeout {
                now += gap;
                assert_eq!(tuner.on_ack(now, id), AckOutcome::Probe);
            } else {
                now = tuner.probe_deadline().unwrap();
                assert!(tuner.probe_timed_out());
            }
            assert!(probed.len() <= MAX_PROBES as usize, "bounded");
        }
        (probed, tuner.interval())
    }

    #[test]
    fn a_nat_that_keeps_mappings_long_needs_one_probe() {
        let (probed, interval) = search(S(20), S(30));
        assert_eq!(probed, vec![S(20)]);
        assert_eq!(interval, S(20));
    }

    #[test]
    fn a_twelve_second_nat_is_found_within_the_resolution() {
        let (probed, interval) = search(S(20), S(12));
        println!("{probed:?} -> {interval:?}");
        assert!(interval < S(12), "{interval:?}");
        assert!(
            interval + PROBE_RESOLUTION >= S(12) - PROBE_RESOLUTION,
            "{interval:?}"
        );
        assert!(probed.len() <= 4, "{probed:?}");
    }

    #[test]
    fn a_nat_below_the_floor_ends_at_the_floor() {
        let (probed, interval) = search(S(20), S(5));
        assert_eq!(interval, MIN_KEEPALIVE_INTERVAL);
        assert!(probed.len() <= MAX_PROBES as usize);
    }

    #[test]
    fn every_timeout_gives_an_interval_that_survives_and_is_bounded() {
        for timeout in 1..=40 {
            let timeout = S(timeout);
            let (probed, interval) = search(S(20), timeout);
            assert!(probed.len() <= MAX_PROBES as usize);
            assert!(interval >= MIN_KEEPALIVE_INTERVAL && interval <= S(20));
            if timeout > MIN_KEEPALIVE_INTERVAL {
                assert!(interval < timeout, "{timeout:?}: {interval:?}");
            }
        }
    }

    proptest::proptest! {
        /// Any ceiling, any NAT timeout, any pattern of lost answers: the search ends
        /// within its bound, the interval stays between the floor and the ceiling, and
        /// without losses it is under the NAT's timeout whenever the floor allows.
        #[test]
        fn the_search_is_bounded_and_safe(
            ceiling_s in 1u64..120,
            timeout_ms in 1_000u64..150_000,
            losses in proptest::collection::vec(proptest::bool::ANY, MAX_PROBES as usize),
        ) {
            let ceiling = S(ceiling_s);
            let timeout = Duration::from_millis(timeout_ms);
            let mut tuner = KeepaliveTuner::new(ceiling);
            let mut now = Instant::now();
            let mut sent = 0usize;
            while let Some(gap) = tuner.wanted_probe() {
                proptest::prop_assert!(sent < MAX_PROBES as usize);
                tuner.probe_sent(now, sent as u64, gap);
                if gap < timeout && !losses[sent] {
                    now += gap;
                    tuner.on_ack(now, sent as u64);
                } else {
                    now = tuner.probe_deadline().unwrap();
                    tuner.probe_timed_out();
                }
                sent += 1;
            }
            let interval = tuner.interval();
            proptest::prop_assert!(interval <= ceiling.max(MIN_KEEPALIVE_INTERVAL));
            proptest::prop_assert!(interval >= ceiling.min(MIN_KEEPALIVE_INTERVAL));
            if losses.iter().all(|l| !l) && timeout > MIN_KEEPALIVE_INTERVAL {
                proptest::prop_assert!(interval < timeout, "{interval:?} vs {timeout:?}");
            }
        }
    }

    #[test]
    fn a_ceiling_under_the_floor_is_kept_and_never_probed() {
        let tuner = KeepaliveTuner::new(S(5));
        assert_eq!(tuner.interval(), S(5));
        assert_eq!(tuner.wanted_probe(), None);
    }

    #[test]
    fn a_rendezvous_that_answers_at_once_keeps_the_ceiling() {
        let mut tuner = KeepaliveTuner::new(S(20));
        let now = Instant::now();
        assert_eq!(
            tuner.interval(),
            MIN_KEEPALIVE_INTERVAL,
            "the floor until known"
        );
        let gap = tuner.wanted_probe().unwrap();
        tuner.probe_sent(now, 7, gap);
        assert_eq!(
            tuner.on_ack(now + Duration::from_millis(80), 7),
            AckOutcome::Probe
        );
        assert_eq!(tuner.interval(), S(20));
        assert_eq!(tuner.wanted_probe(), None);
    }

    #[test]
    fn a_spoiled_probe_teaches_nothing_and_other_acks_are_plain() {
        let mut tuner = KeepaliveTuner::new(S(20));
        let now = Instant::now();
        tuner.probe_sent(now, 1, S(20));
        assert_eq!(tuner.on_ack(now, 2), AckOutcome::Plain);
        tuner.spoil();
        assert_eq!(tuner.on_ack(now + S(20), 1), AckOutcome::Probe);
        assert_eq!(tuner.interval(), MIN_KEEPALIVE_INTERVAL);
        tuner.probe_sent(now, 3, S(20));
        tuner.spoil();
        assert!(tuner.probe_timed_out());
        assert_eq!(
            tuner.wanted_probe(),
            Some(S(20)),
            "nothing learned either way"
        );
    }

    #[test]
    fn a_replaced_mapping_shortens_the_interval_and_searches_again() {
        let (_, interval) = search(S(20), S(30));
        assert_eq!(interval, S(20));
        let mut tuner = KeepaliveTuner::new(S(20));
        tuner.good = S(20);
        tuner.mapping_replaced();
        assert_eq!(tuner.interval(), MIN_KEEPALIVE_INTERVAL);
        assert_eq!(tuner.wanted_probe(), Some(S(14)));
    }
}
