//! RTT estimation, the loss-based bitrate controller and the public statistics.

use std::time::{Duration, Instant};

/// Smoothed RTT as in RFC 6298 (`srtt`, `rttvar`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RttEstimator {
    smoothed: Duration,
    variation: Duration,
    latest: Option<Duration>,
}

/// Longest RTT sample accepted; larger samples are treated as measurement garbage.
pub(crate) const MAX_RTT_SAMPLE: Duration = Duration::from_secs(10);

impl RttEstimator {
    pub(crate) fn new(initial: Duration) -> RttEstimator {
        RttEstimator {
            smoothed: initial,
            variation: initial / 2,
            latest: None,
        }
    }

    pub(crate) fn sample(&mut self, rtt: Duration) {
        if rtt > MAX_RTT_SAMPLE {
            return;
        }
        if self.latest.is_none() {
            self.smoothed = rtt;
            self.variation = rtt / 2;
        } else {
            let error = self.smoothed.abs_diff(rtt);
            self.variation = (self.variation * 3 + error) / 4;
            self.smoothed = (self.smoothed * 7 + rtt) / 8;
        }
        self.latest = Some(rtt);
    }

    pub(crate) fn smoothed(&self) -> Duration {
        self.smoothed
    }

    pub(crate) fn has_sample(&self) -> bool {
        self.latest.is_some()
    }

    /// Retransmission timeout for the control channel: `srtt + 4 * rttvar`, clamped.
    pub(crate) fn rto(&self) -> Duration {
        (self.smoothed + self.variation * 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(2))
    }
}

/// Loss-based target bitrate controller (the loss half of Google Congestion Control,
/// draft-ietf-rmcat-gcc-02 section 6): below 2 % loss grow 8 % per second, between 2 % and
/// 10 % hold, above 10 % cut by `1 - 0.5 * loss`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BitrateController {
    target_bps: f64,
    min_bps: f64,
    max_bps: f64,
    /// When the target was last cut: at most one cut per `rtt + LOSS_DECREASE_INTERVAL`.
    last_decrease: Option<Instant>,
}

/// After a loss-based cut, the next waits this long plus an RTT (WebRTC's
/// `kBweDecreaseInterval`): reports in between still describe losses the cut has not had
/// time to cure, and cutting on each of them collapses the target.
pub const LOSS_DECREASE_INTERVAL: Duration = Duration::from_millis(300);

/// Loss fraction below which the target grows.
pub(crate) const LOSS_LOW: f64 = 0.02;
/// Loss fraction above which the target shrinks.
pub(crate) const LOSS_HIGH: f64 = 0.10;
/// Growth per second of reports below [`LOSS_LOW`].
pub(crate) const GROWTH_PER_SECOND: f64 = 1.08;

impl BitrateController {
    pub(crate) fn new(initial: u64, min: u64, max: u64) -> BitrateController {
        BitrateController {
            target_bps: initial as f64,
            min_bps: min as f64,
            max_bps: max as f64,
            last_decrease: None,
        }
    }

    /// Applies, at `now`, one report covering `interval` with loss fraction `loss`
    /// (0..=1); `rtt` is the current estimate.
    pub(crate) fn on_report(&mut self, now: Instant, loss: f64, interval: Duration, rtt: Duration) {
        let seconds = interval.as_secs_f64().clamp(0.0, 5.0);
        if loss < LOSS_LOW {
            self.target_bps *= GROWTH_PER_SECOND.powf(seconds);
        } else if loss > LOSS_HIGH {
            let recent = self
                .last_decrease
                .is_some_and(|at| now.saturating_duration_since(at) < rtt + LOSS_DECREASE_INTERVAL);
            if !recent {
                self.target_bps *= 1.0 - 0.5 * loss.min(1.0);
                self.last_decrease = Some(now);
            }
        }
        self.target_bps = self.target_bps.clamp(self.min_bps, self.max_bps);
    }

    pub(crate) fn target_bps(&self) -> u64 {
        self.target_bps as u64
    }

    /// Lets the target follow another estimate up (never down), within the bounds.
    pub(crate) fn raise_to(&mut self, bps: u64) {
        self.target_bps = self
            .target_bps
            .max(bps as f64)
            .clamp(self.min_bps, self.max_bps);
    }
}

/// Counters and estimates of one connection; see [`crate::MediaConnection::stats`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Smoothed round-trip time, once measured.
    pub rtt: Option<Duration>,
    /// Loss fraction of our fragments as last reported by the peer (0..=1).
    pub send_loss: f64,
    /// Loss fraction of the peer's fragments we measured over our last report interval.
    pub receive_loss: f64,
    /// Interarrival jitter of received frames.
    pub jitter: Duration,
    /// Bitrate we sent fragments at over the last report interval (bits/s).
    pub send_bitrate_bps: u64,
    /// Bitrate we received fragments at over the last report interval (bits/s).
    pub receive_bitrate_bps: u64,
    /// Target bitrate the encoder should follow: the lower of the two estimates below.
    pub target_bitrate_bps: u64,
    /// The loss-based estimate (`spec/media.md` 6.4).
    pub loss_based_target_bps: u64,
    /// The delay-based estimate (`spec/media.md` 4.6); 0 until the peer sends feedback.
    pub delay_based_target_bps: u64,
    /// The path's bottleneck rate as probes measured it (bits/s; 0 before); the pacer
    /// sends at most `PACING_OVER_CAPACITY` times it (`spec/media.md` 4.6).
    pub path_capacity_bps: u64,
    /// How long our latest reported fragment waited in queues on the path, from the
    /// peer's feedback (one-way delay above its recent minimum, `spec/media.md` 4.6).
    pub queuing_delay: Duration,
    /// Rate the peer's feedback says our fragments arrived at over the last 500 ms
    /// (bits/s; 0 before feedback).
    pub delivered_bitrate_bps: u64,
    /// Rate the pacer lets fragments leave at, `pacing_factor × target` (bits/s; 0 with
    /// pacing off). It goes faster only to drain a queue that would otherwise wait past
    /// the time losses can still be repaired in (`spec/media.md`, 4.5 "Pacing").
    pub pacing_rate_bps: u64,
    /// Burst the pacer allows after idling (bytes; 0 with pacing off).
    pub pacing_burst_bytes: u64,
    /// Frames accepted by `send_frame`.
    pub frames_sent: u64,
    /// Frames `send_frame` dropped because the path could not carry them within the
    /// latency budget (`spec/media.md` 4.7).
    pub frames_dropped_congested: u64,
    /// Frames `send_frame` dropped because an earlier frame they may refer to was dropped
    /// (the stream waits for a keyframe).
    pub frames_dropped_awaiting_keyframe: u64,
    /// Feedback packets sent.
    pub feedback_sent: u64,
    /// Feedback packets received.
    pub feedback_received: u64,
    /// Fragment packets sent (first transmissions).
    pub fragments_sent: u64,
    /// Fragment packets retransmitted (each copy counted).
    pub fragments_retransmitted: u64,
    /// NACK entries the sender could not serve (frame gone from history or past deadline).
    pub retransmissions_skipped: u64,
    /// Fragments a NACK named again while their retransmission was still queued or had
    /// been queued less than half an RTT earlier (not retransmitted again).
    pub retransmissions_deduplicated: u64,
    /// Retransmission copies not queued because the retransmission credit was spent
    /// (retransmitted bytes are bounded by the bytes first sent).
    pub retransmissions_over_budget: u64,
    /// Frames delivered to the application.
    pub frames_delivered: u64,
    /// Frames given up because their deadline passed before they were complete.
    pub frames_late: u64,
    /// Frames discarded because a memory limit forced their eviction.
    pub frames_evicted: u64,
    /// Complete frames discarded while waiting for a keyframe.
    pub frames_discarded_awaiting_keyframe: u64,
    /// Frames delivered with the peer's SKIPPED flag: the peer did not send one or more
    /// frames of the stream just before them (`spec/media.md` 4.7).
    pub frames_after_peer_skip: u64,
    /// Fragments received (including duplicates and retransmissions).
    pub fragments_received: u64,
    /// Fragments received that were already present, or belonged to finished frames.
    pub fragments_duplicate: u64,
    /// Fragments rejected by a receive limit (frame size, frames in flight, bytes).
    pub fragments_over_limit: u64,
    /// Packets that failed to decode.
    pub packets_malformed: u64,
    /// NACK packets sent (each copy counted).
    pub nacks_sent: u64,
    /// NACK packets received.
    pub nacks_received: u64,
    /// Keyframe requests sent.
    pub keyframe_requests_sent: u64,
    /// Keyframe requests received.
    pub keyframe_requests_received: u64,
    /// Control messages delivered to the application.
    pub control_delivered: u64,
    /// Control messages retransmitted.
    pub control_retransmitted: u64,
    /// Events dropped because the application did not poll them (queue full).
    pub events_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_follows_rfc6298_smoothing() {
        let mut rtt = RttEstimator::new(Duration::from_millis(100));
        assert!(!rtt.has_sample());
        assert_eq!(rtt.rto(), Duration::from_millis(300));
        rtt.sample(Duration::from_millis(40));
        assert_eq!(rtt.smoothed(), Duration::from_millis(40));
        rtt.sample(Duration::from_millis(80));
        // srtt = 7/8 * 40 + 1/8 * 80 = 45; rttvar = 3/4 * 20 + 1/4 * 40 = 25.
        assert_eq!(rtt.smoothed(), Duration::from_millis(45));
        assert_eq!(rtt.rto(), Duration::from_millis(145));
        // Garbage samples above the limit are ignored.
        rtt.sample(MAX_RTT_SAMPLE + Duration::from_millis(1));
        assert_eq!(rtt.smoothed(), Duration::from_millis(45));
    }

    #[test]
    fn bitrate_controller_bands() {
        let second = Duration::from_secs(1);
        let rtt = Duration::from_millis(50);
        let mut now = Instant::now();
        let mut controller = BitrateController::new(1_000_000, 100_000, 2_000_000);
        controller.on_report(now, 0.05, second, rtt);
        assert_eq!(controller.target_bps(), 1_000_000, "2-10 % holds");
        controller.on_report(now, 0.0, second, rtt);
        assert_eq!(controller.target_bps(), 1_080_000, "below 2 % grows 8 %/s");
        controller.on_report(now, 0.2, second, rtt);
        assert_eq!(
            controller.target_bps(),
            972_000,
            "above 10 % cuts by loss/2"
        );
        // The next cut waits rtt + 300 ms: the reports in between describe losses the
        // first cut has not had time to cure.
        controller.on_report(now + Duration::from_millis(200), 0.2, second, rtt);
        assert_eq!(controller.target_bps(), 972_000);
        controller.on_report(now + Duration::from_millis(350), 0.2, second, rtt);
        assert_eq!(controller.target_bps(), 874_800);
        for _ in 0..100 {
            now += second;
            controller.on_report(now, 1.0, second, rtt);
        }
        assert_eq!(controller.target_bps(), 100_000, "clamped to the minimum");
        for _ in 0..100 {
            controller.on_report(now, 0.0, second, rtt);
        }
        assert_eq!(controller.target_bps(), 2_000_000, "clamped to the maximum");
    }
}
