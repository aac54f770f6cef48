//! Delay-based bandwidth estimation (`spec/media.md` 4.6): the delay half of Google
//! Congestion Control (draft-ietf-rmcat-gcc-02, as WebRTC runs it today: send-side, from
//! per-packet arrival feedback), plus WebRTC-style probing where every paced frame is a
//! probe cluster.
//!
//! The receiver ([`FeedbackRecorder`]) reports when each fragment packet arrived; the
//! sender ([`DelayBasedBwe`]) matches those reports against the send times it remembers,
//! and from the change in one-way delay between packet groups decides whether the path
//! queue is growing (over-use), stable, or draining. An AIMD controller turns that into a
//! target: it cuts to 85 % of the delivered rate on over-use and grows otherwise, and the
//! receive rate of each paced frame (a packet train) lets it jump up to what the path
//! demonstrably carried.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::{FeedbackEntry, MAX_FEEDBACK_ENTRIES};

/// Send records kept for matching feedback, per connection (a ring indexed by
/// `packet_seq`): 4096 packets are 2.2 s at 20 Mbit/s of 1200-byte packets.
pub const SEND_HISTORY_PACKETS: usize = 4096;
/// How long the receiver holds arrival records before it sends a feedback packet.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);
/// Delay samples the trendline fits its slope over.
pub const TRENDLINE_WINDOW: usize = 20;
/// Exponential smoothing of the accumulated delay before the fit.
const TRENDLINE_SMOOTHING: f64 = 0.9;
/// Gain applied to the slope before it is compared with the threshold.
const TRENDLINE_GAIN: f64 = 4.0;
/// Over-use threshold bounds and initial value, milliseconds (GCC: 6..600, 12.5).
const THRESHOLD_MIN_MS: f64 = 6.0;
const THRESHOLD_MAX_MS: f64 = 600.0;
const THRESHOLD_INITIAL_MS: f64 = 12.5;
/// Threshold adaptation speeds (GCC `K_u`, `K_d`).
const THRESHOLD_K_UP: f64 = 0.0087;
const THRESHOLD_K_DOWN: f64 = 0.039;
/// The trend must stay above the threshold this long before it counts as over-use.
const OVERUSE_TIME_MS: f64 = 10.0;
/// On over-use the target becomes this fraction of the delivered rate (GCC β).
pub const DECREASE_FACTOR: f64 = 0.9;
/// Multiplicative increase per second while far from the last known capacity (GCC η).
pub const INCREASE_PER_SECOND: f64 = 1.08;
/// The target never exceeds this multiple of the delivered rate (plus
/// [`ACKED_HEADROOM_BPS`]): an application-limited sender cannot learn a rate it never
/// tried.
pub const MAX_TARGET_OVER_ACKED: f64 = 1.5;
/// See [`MAX_TARGET_OVER_ACKED`].
pub const ACKED_HEADROOM_BPS: f64 = 10_000.0;
/// Window of the delivered-rate measurement.
pub const ACKED_WINDOW: Duration = Duration::from_millis(500);
/// A probe (the packets of one paced frame) counts only with at least this many packets.
pub const PROBE_MIN_PACKETS: u32 = 5;
/// A probe raises the target to at most this fraction of its measured rate.
pub const PROBE_USE_FRACTION: f64 = 0.9;
/// The one-way delay base is the minimum over the current and the previous window of
/// this length (so it follows clock drift and route changes within two windows).
pub const DELAY_BASE_WINDOW: Duration = Duration::from_secs(5);
/// A train whose receive rate is below this fraction of its send rate was spread by the
/// bottleneck: its receive rate measures the bottleneck.
pub(crate) const COMPRESSED_TRAIN: f64 = 0.9;
/// Weight of a new bottleneck sample in the path capacity estimate.
pub(crate) const CAPACITY_SMOOTHING: f64 = 0.3;
/// Once probes have measured the path, fragments leave at most this multiple of its
/// rate (4.5): faster only fills the bottleneck's queue, which on a shallow uplink
/// overflows with a keyframe.
pub const PACING_OVER_CAPACITY: f64 = 1.25;
/// A queuing delay above this counts as over-use even without a rising trend (4.6).
pub const STANDING_QUEUE_LIMIT: Duration = Duration::from_millis(120);
/// Delivered-rate records kept (one per feedback packet).
const MAX_ACKED_RECORDS: usize = 64;

/// One packet as the sender remembers it for feedback.
#[derive(Debug, Clone, Copy)]
struct SentRecord {
    packet_seq: u32,
    sent_us: u64,
    size: u32,
    /// The probe cluster (first transmissions of one frame share one), 0 for none.
    cluster: u32,
}

/// What the receiver reported about one packet, matched to its send record.
#[derive(Debug, Clone, Copy)]
struct PacketResult {
    sent_us: u64,
    arrival_us: i64,
    size: u32,
    cluster: u32,
}

/// The receiver half: arrival records waiting for the next feedback packet.
#[derive(Debug, Default)]
pub(crate) struct FeedbackRecorder {
    pending: Vec<FeedbackEntry>,
    first_at: Option<Instant>,
}

impl FeedbackRecorder {
    /// Records one fragment packet; returns whether a feedback packet should go now
    /// (`per_packet` records are waiting).
    pub(crate) fn record(
        &mut self,
        now: Instant,
        packet_seq: u32,
        arrival_us: u32,
        per_packet: usize,
    ) -> bool {
        if self.pending.len() >= MAX_FEEDBACK_ENTRIES {
            // Only reachable if the owner never flushes; the oldest records are the least
            // useful, but keeping the table bounded is what matters.
            self.pending.clear();
        }
        self.first_at.get_or_insert(now);
        self.pending.push(FeedbackEntry {
            packet_seq,
            arrival_us,
        });
        self.pending.len() >= per_packet.clamp(1, MAX_FEEDBACK_ENTRIES)
    }

    /// When the pending records must be sent.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|first| first + FEEDBACK_INTERVAL)
    }

    /// Takes the pending records with the base sequence number and reference time to
    /// encode them against: the lowest `packet_seq` (modulo wrap, relative to the first
    /// record) and the first arrival.
    pub(crate) fn take(&mut self, out: &mut Vec<FeedbackEntry>) -> Option<(u32, u32)> {
        self.first_at = None;
        let first = *self.pending.first()?;
        let base_seq = self
            .pending
            .iter()
            .map(|entry| entry.packet_seq)
            .min_by_key(|seq| seq.wrapping_sub(first.packet_seq) as i32)
            .unwrap_or(first.packet_seq);
        out.clear();
        out.append(&mut self.pending);
        Some((base_seq, first.arrival_us))
    }

    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The over-use detector's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BandwidthUsage {
    Normal,
    Underusing,
    Overusing,
}

/// Trendline filter and adaptive-threshold over-use detector (GCC section 5.3–5.4 as in
/// WebRTC's `TrendlineEstimator`).
#[derive(Debug)]
struct Trendline {
    first_arrival_ms: Option<f64>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    samples: VecDeque<(f64, f64)>,
    deltas: u32,
    previous_trend: f64,
    threshold_ms: f64,
    last_threshold_update_ms: Option<f64>,
    time_over_using_ms: Option<f64>,
    overuse_count: u32,
    state: BandwidthUsage,
}

impl Trendline {
    fn new() -> Trendline {
        Trendline {
            first_arrival_ms: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            samples: VecDeque::with_capacity(TRENDLINE_WINDOW + 1),
            deltas: 0,
            previous_trend: 0.0,
            threshold_ms: THRESHOLD_INITIAL_MS,
            last_threshold_update_ms: None,
            time_over_using_ms: None,
            overuse_count: 0,
            state: BandwidthUsage::Normal,
        }
    }

    /// One inter-group sample: `delay_delta_ms` is the growth of one-way delay between
    /// two groups, `send_delta_ms` the time between them at the sender.
    fn update(&mut self, delay_delta_ms: f64, send_delta_ms: f64, arrival_ms: f64) {
        // A single sample can never move the accumulated delay by more than a second:
        // feedback is the peer's word, and a garbage value must not poison the fit.
        let delay_delta_ms = delay_delta_ms.clamp(-1000.0, 1000.0);
        self.deltas = (self.deltas + 1).min(1000);
        let first = *self.first_arrival_ms.get_or_insert(arrival_ms);
        self.accumulated_ms += delay_delta_ms;
        self.smoothed_ms = TRENDLINE_SMOOTHING * self.smoothed_ms
            + (1.0 - TRENDLINE_SMOOTHING) * self.accumulated_ms;
        self.samples
            .push_back((arrival_ms - first, self.smoothed_ms));
        if self.samples.len() > TRENDLINE_WINDOW {
            self.samples.pop_front();
        }
        let mut trend = self.previous_trend;
        if self.samples.len() == TRENDLINE_WINDOW
            && let Some(slope) = linear_fit_slope(&self.samples)
        {
            trend = slope;
        }
        self.detect(trend, send_delta_ms, arrival_ms);
    }

    fn detect(&mut self, trend: f64, send_delta_ms: f64, now_ms: f64) {
        if self.deltas < 2 {
            self.state = BandwidthUsage::Normal;
            return;
        }
        let modified = f64::from(self.deltas.min(60)) * trend * TRENDLINE_GAIN;
        if modified > self.threshold_ms {
            let over = match self.time_over_using_ms {
                None => send_delta_ms / 2.0,
                Some(time) => time + send_delta_ms,
            };
            self.time_over_using_ms = Some(over);
            self.overuse_count += 1;
            if over > OVERUSE_TIME_MS && self.overuse_count > 1 && trend >= self.previous_trend {
                self.time_over_using_ms = Some(0.0);
                self.overuse_count = 0;
                self.state = BandwidthUsage::Overusing;
            }
        } else if modified < -self.threshold_ms {
            self.time_over_using_ms = None;
            self.overuse_count = 0;
            self.state = BandwidthUsage::Underusing;
        } else {
            self.time_over_using_ms = None;
            self.overuse_count = 0;
            self.state = BandwidthUsage::Normal;
        }
        self.previous_trend = trend;
        self.update_threshold(modified, now_ms);
    }

    fn update_threshold(&mut self, modified: f64, now_ms: f64) {
        let last = *self.last_threshold_update_ms.get_or_insert(now_ms);
        if modified.abs() > self.threshold_ms + 15.0 {
            // A spike (a route change, a stalled receiver) must not drag the threshold.
            self.last_threshold_update_ms = Some(now_ms);
            return;
        }
        let k = if modified.abs() < self.threshold_ms {
            THRESHOLD_K_DOWN
        } else {
            THRESHOLD_K_UP
        };
        let elapsed = (now_ms - last).clamp(0.0, 100.0);
        self.threshold_ms += k * (modified.abs() - self.threshold_ms) * elapsed;
        self.threshold_ms = self.threshold_ms.clamp(THRESHOLD_MIN_MS, THRESHOLD_MAX_MS);
        self.last_threshold_update_ms = Some(now_ms);
    }
}

/// Least-squares slope of `samples` (x, y); `None` if every x is the same.
fn linear_fit_slope(samples: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = samples.len() as f64;
    let (sum_x, sum_y) = samples
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mean_x, mean_y) = (sum_x / n, sum_y / n);
    let (mut numerator, mut denominator) = (0.0, 0.0);
    for (x, y) in samples {
        numerator += (x - mean_x) * (y - mean_y);
        denominator += (x - mean_x) * (x - mean_x);
    }
    (denominator != 0.0).then(|| numerator / denominator)
}

/// The packets of one frame's first transmission (one probe cluster).
#[derive(Debug, Clone, Copy)]
struct Group {
    cluster: u32,
    first_sent_us: u64,
    last_sent_us: u64,
    last_arrival_us: i64,
}

/// The packets of one probe cluster seen so far in feedback.
#[derive(Debug, Clone, Copy)]
struct Cluster {
    id: u32,
    packets: u32,
    bytes: u64,
    first_size: u64,
    last_size: u64,
    first_sent_us: u64,
    last_sent_us: u64,
    first_arrival_us: i64,
    last_arrival_us: i64,
}

impl Cluster {
    fn start(result: &PacketResult) -> Cluster {
        Cluster {
            id: result.cluster,
            packets: 1,
            bytes: u64::from(result.size),
            first_size: u64::from(result.size),
            last_size: u64::from(result.size),
            first_sent_us: result.sent_us,
            last_sent_us: result.sent_us,
            first_arrival_us: result.arrival_us,
            last_arrival_us: result.arrival_us,
        }
    }

    fn add(&mut self, result: &PacketResult) {
        self.packets += 1;
        self.bytes += u64::from(result.size);
        if result.sent_us >= self.last_sent_us {
            self.last_sent_us = result.sent_us;
            self.last_size = u64::from(result.size);
        }
        if result.arrival_us < self.first_arrival_us {
            self.first_arrival_us = result.arrival_us;
            self.first_size = u64::from(result.size);
        }
        self.last_arrival_us = self.last_arrival_us.max(result.arrival_us);
    }

    /// `(send rate, receive rate)` of the train, bits/s (the probe rate is the lower, as
    /// WebRTC's `ProbeBitrateEstimator`), or `None` for a train too short to say.
    fn rates_bps(&self) -> Option<(f64, f64)> {
        if self.packets < PROBE_MIN_PACKETS {
            return None;
        }
        let send_us = self.last_sent_us.saturating_sub(self.first_sent_us);
        let receive_us = self.last_arrival_us.saturating_sub(self.first_arrival_us);
        if send_us == 0 || receive_us <= 0 {
            return None;
        }
        let send_rate = (self.bytes - self.last_size) as f64 * 8e6 / send_us as f64;
        let receive_rate = (self.bytes - self.first_size) as f64 * 8e6 / receive_us as f64;
        Some((send_rate, receive_rate))
    }
}

/// Bytes delivered per feedback packet, for the delivered ("acked") rate.
#[derive(Debug, Default)]
struct AckedRate {
    records: VecDeque<(i64, i64, u64)>,
}

impl AckedRate {
    fn add(&mut self, first_arrival_us: i64, last_arrival_us: i64, bytes: u64) {
        if self.records.len() >= MAX_ACKED_RECORDS {
            self.records.pop_front();
        }
        self.records
            .push_back((first_arrival_us, last_arrival_us, bytes));
        let newest = last_arrival_us;
        let window = ACKED_WINDOW.as_micros() as i64;
        while self
            .records
            .front()
            .is_some_and(|&(_, last, _)| newest - last > window)
        {
            self.records.pop_front();
        }
    }

    /// Delivered bits/s over the window, once it spans at least 100 ms.
    fn rate_bps(&self) -> Option<f64> {
        let oldest = self.records.iter().map(|r| r.0).min()?;
        let newest = self.records.iter().map(|r| r.1).max()?;
        let span = newest - oldest;
        if span < 100_000 {
            return None;
        }
        let bytes: u64 = self.records.iter().map(|r| r.2).sum();
        Some(bytes as f64 * 8e6 / span as f64)
    }
}

/// AIMD state (GCC section 5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateState {
    Hold,
    Increase,
    Decrease,
}

/// The sender half: send history, grouping, trendline, AIMD and probes.
#[derive(Debug)]
pub(crate) struct DelayBasedBwe {
    history: Vec<Option<SentRecord>>,
    last_arrival_us: Option<i64>,
    group: Option<Group>,
    previous_group: Option<Group>,
    trendline: Trendline,
    acked: AckedRate,
    cluster: Option<Cluster>,
    state: RateState,
    target_bps: f64,
    min_bps: f64,
    max_bps: f64,
    last_change: Option<Instant>,
    /// The last decrease: at most one per response time (`rtt + 100 ms`), the time an
    /// over-use takes to show the effect of the previous decrease.
    last_decrease: Option<Instant>,
    /// Exponential average and normalized variance of the delivered rate at past
    /// over-use (the link capacity as far as we know), kbit/s.
    capacity_kbps: Option<(f64, f64)>,
    results: Vec<PacketResult>,
    /// Windowed minimum of `arrival − send` (µs, the two clocks' offset plus the path's
    /// propagation delay): current window, previous window, current window's start.
    delay_base: (Option<i64>, Option<i64>, Option<Instant>),
    /// `arrival − send` of the latest packet reported, and when that report came.
    latest_delay: Option<(i64, Instant)>,
    /// The bottleneck rate from probes (see [`Self::path_capacity_bps`]).
    path_capacity_bps: Option<f64>,
}

impl DelayBasedBwe {
    pub(crate) fn new(initial: u64, min: u64, max: u64) -> DelayBasedBwe {
        DelayBasedBwe {
            history: vec![None; SEND_HISTORY_PACKETS],
            last_arrival_us: None,
            group: None,
            previous_group: None,
            trendline: Trendline::new(),
            acked: AckedRate::default(),
            cluster: None,
            state: RateState::Hold,
            target_bps: initial as f64,
            min_bps: min as f64,
            max_bps: max as f64,
            last_change: None,
            last_decrease: None,
            capacity_kbps: None,
            results: Vec::with_capacity(MAX_FEEDBACK_ENTRIES),
            delay_base: (None, None, None),
            latest_delay: None,
            path_capacity_bps: None,
        }
    }

    /// How long a packet sent at `now` would wait in queues on the path: the latest
    /// reported packet's one-way delay above the lowest one seen in the last 5–10 s,
    /// less the time since that report (a queue drains in real time while it is not fed;
    /// when it is, the next report says so). Zero before feedback.
    pub(crate) fn queuing_delay(&self, now: Instant) -> Duration {
        let (current, previous, _) = self.delay_base;
        let base = match (current, previous) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(base) => base,
                None => return Duration::ZERO,
            },
        };
        let Some((latest, reported_at)) = self.latest_delay else {
            return Duration::ZERO;
        };
        let queued = Duration::from_micros((latest - base).max(0) as u64);
        queued.saturating_sub(now.saturating_duration_since(reported_at))
    }

    /// The queuing delay as of the latest feedback.
    pub(crate) fn reported_queuing_delay(&self) -> Duration {
        self.latest_delay
            .map_or(Duration::ZERO, |(_, at)| self.queuing_delay(at))
    }

    fn update_delay_base(&mut self, now: Instant, delay: i64) {
        let (current, previous, start) = &mut self.delay_base;
        let window_start = *start.get_or_insert(now);
        if now.saturating_duration_since(window_start) >= DELAY_BASE_WINDOW {
            *previous = current.take();
            *start = Some(now);
        }
        *current = Some(current.map_or(delay, |min| min.min(delay)));
    }

    pub(crate) fn target_bps(&self) -> u64 {
        self.target_bps as u64
    }

    /// The delivered rate over the last [`ACKED_WINDOW`], bits/s.
    pub(crate) fn acked_bps(&self) -> Option<u64> {
        self.acked.rate_bps().map(|rate| rate as u64)
    }

    /// Remembers that packet `packet_seq` of `size` bytes left at `sent_us` (sender clock).
    pub(crate) fn on_sent(&mut self, packet_seq: u32, sent_us: u64, size: usize, cluster: u32) {
        let slot = packet_seq as usize % SEND_HISTORY_PACKETS;
        if let Some(entry) = self.history.get_mut(slot) {
            *entry = Some(SentRecord {
                packet_seq,
                sent_us,
                size: u32::try_from(size).unwrap_or(u32::MAX),
                cluster,
            });
        }
    }

    /// Turns a receiver clock reading (wrapping µs) into a monotonic-ish i64.
    fn unwrap_arrival(&mut self, arrival_us: u32) -> i64 {
        let unwrapped = match self.last_arrival_us {
            None => i64::from(arrival_us),
            Some(last) => last + i64::from(arrival_us.wrapping_sub(last as u32) as i32),
        };
        self.last_arrival_us = Some(self.last_arrival_us.map_or(unwrapped, |l| l.max(unwrapped)));
        unwrapped
    }

    /// Applies one feedback packet at `now` (sender clock `now_us`); `rtt` is the current
    /// estimate. Returns whether the target changed.
    pub(crate) fn on_feedback(
        &mut self,
        now: Instant,
        entries: impl Iterator<Item = FeedbackEntry>,
        rtt: Duration,
    ) -> bool {
        let mut results = std::mem::take(&mut self.results);
        results.clear();
        for entry in entries.take(MAX_FEEDBACK_ENTRIES) {
            let slot = entry.packet_seq as usize % SEND_HISTORY_PACKETS;
            let Some(Some(sent)) = self.history.get(slot).copied() else {
                continue;
            };
            if sent.packet_seq != entry.packet_seq {
                continue;
            }
            let arrival_us = self.unwrap_arrival(entry.arrival_us);
            results.push(PacketResult {
                sent_us: sent.sent_us,
                arrival_us,
                size: sent.size,
                cluster: sent.cluster,
            });
        }
        if results.is_empty() {
            self.results = results;
            return false;
        }
        let first_arrival = results.iter().map(|r| r.arrival_us).min().unwrap_or(0);
        let last_arrival = results.iter().map(|r| r.arrival_us).max().unwrap_or(0);
        let bytes: u64 = results.iter().map(|r| u64::from(r.size)).sum();
        self.acked.add(first_arrival, last_arrival, bytes);
        for result in &results {
            let delay = result.arrival_us.saturating_sub(result.sent_us as i64);
            self.update_delay_base(now, delay);
        }
        if let Some(latest) = results.iter().max_by_key(|r| r.arrival_us) {
            let delay = latest.arrival_us.saturating_sub(latest.sent_us as i64);
            self.latest_delay = Some((delay, now));
        }

        let mut usage = self.trendline.state;
        let mut probe_bps: Option<f64> = None;
        for result in &results {
            if let Some(signal) = self.on_packet_delay(result) {
                usage = signal;
            }
            if let Some(rate) = self.on_packet_probe(result) {
                probe_bps = Some(probe_bps.map_or(rate, |p: f64| p.max(rate)));
            }
        }
        self.results = results;
        // A queue that stays full shows no delay gradient (GCC's blind spot: an encoder
        // above the path with a tail-drop queue): a queuing delay past the limit is
        // over-use whatever the trend says.
        if self.queuing_delay(now) > STANDING_QUEUE_LIMIT {
            usage = BandwidthUsage::Overusing;
        }
        let before = self.target_bps;
        self.update_rate(now, usage, probe_bps, rtt);
        self.target_bps != before
    }

    /// Groups packets by frame; returns the detector's verdict when a group closed.
    ///
    /// GCC groups packets sent within 5 ms of each other, its proxy for one video frame.
    /// Here the pacer spreads a frame over up to its frame interval, so the sender groups
    /// by the frame itself: the queue a frame builds while it drains is internal to its
    /// group, and the delay samples compare frame to frame. Retransmissions and audio
    /// (cluster 0) carry no delay sample.
    fn on_packet_delay(&mut self, result: &PacketResult) -> Option<BandwidthUsage> {
        if result.cluster == 0 {
            return None;
        }
        let start = Group {
            cluster: result.cluster,
            first_sent_us: result.sent_us,
            last_sent_us: result.sent_us,
            last_arrival_us: result.arrival_us,
        };
        let Some(group) = &mut self.group else {
            self.group = Some(start);
            return None;
        };
        if result.cluster == group.cluster {
            group.last_sent_us = group.last_sent_us.max(result.sent_us);
            group.last_arrival_us = group.last_arrival_us.max(result.arrival_us);
            return None;
        }
        if result.sent_us < group.first_sent_us {
            // Reordered from an earlier frame: too late to use.
            return None;
        }
        let closed = *group;
        self.group = Some(start);
        let previous = self.previous_group.replace(closed)?;
        // Signed: frames of two streams interleave, so a group may end before the one
        // before it did.
        let send_delta_ms = (closed.last_sent_us as f64 - previous.last_sent_us as f64) / 1000.0;
        let arrival_delta_ms =
            (closed.last_arrival_us as f64 - previous.last_arrival_us as f64) / 1000.0;
        self.trendline.update(
            arrival_delta_ms - send_delta_ms,
            send_delta_ms,
            closed.last_arrival_us as f64 / 1000.0,
        );
        Some(self.trendline.state)
    }

    /// Follows probe clusters; returns a probe's rate when one ends, and updates the
    /// path capacity estimate from it.
    fn on_packet_probe(&mut self, result: &PacketResult) -> Option<f64> {
        if result.cluster == 0 {
            return None;
        }
        let finished = match &mut self.cluster {
            Some(cluster) if cluster.id == result.cluster => {
                cluster.add(result);
                return None;
            }
            slot => slot.replace(Cluster::start(result)),
        };
        let (send, receive) = finished?.rates_bps()?;
        self.path_capacity_bps = Some(match self.path_capacity_bps {
            // The bottleneck spread the train: its receive rate is the bottleneck's rate
            // (our share of it, when shared).
            Some(capacity) if receive < COMPRESSED_TRAIN * send => {
                (1.0 - CAPACITY_SMOOTHING) * capacity + CAPACITY_SMOOTHING * receive
            }
            None if receive < COMPRESSED_TRAIN * send => receive,
            // It passed at the rate it was sent: the path carries at least that.
            Some(capacity) => capacity.max(send.min(receive)),
            None => send.min(receive),
        });
        Some(send.min(receive))
    }

    /// The bottleneck's rate as the probes measured it, bits/s; `None` before the first.
    pub(crate) fn path_capacity_bps(&self) -> Option<u64> {
        self.path_capacity_bps.map(|bps| bps as u64)
    }

    fn update_rate(
        &mut self,
        now: Instant,
        usage: BandwidthUsage,
        probe_bps: Option<f64>,
        rtt: Duration,
    ) {
        self.state = match (usage, self.state) {
            (BandwidthUsage::Overusing, _) => RateState::Decrease,
            (BandwidthUsage::Underusing, _) => RateState::Hold,
            (BandwidthUsage::Normal, RateState::Hold) => RateState::Increase,
            (BandwidthUsage::Normal, state) => state,
        };
        let acked = self.acked.rate_bps();
        let elapsed = self
            .last_change
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last))
            .min(Duration::from_secs(1));
        match self.state {
            RateState::Hold => {}
            RateState::Increase => {
                let near_capacity = self.capacity_kbps.is_some_and(|(average, variance)| {
                    let deviation = (variance * average).sqrt();
                    (self.target_bps / 1000.0) < average + 3.0 * deviation
                });
                if let (Some((average, variance)), Some(acked)) = (self.capacity_kbps, acked) {
                    // The path is faster than we thought: forget the old capacity.
                    let deviation = (variance * average).sqrt();
                    if acked / 1000.0 > average + 3.0 * deviation {
                        self.capacity_kbps = None;
                    }
                }
                let increase = if near_capacity {
                    // Additive: one packet per response time, every response time (as TCP
                    // adds one segment per round trip). GCC adds one packet per response
                    // time per second, which needs ~9 s to win back a 15 % cut: a camera's
                    // keyframe causes a short over-use every GOP, and at that pace the
                    // target would sink to ~75 % of the path.
                    let response = (rtt + Duration::from_millis(100)).as_secs_f64();
                    let packet_bits = 1200.0 * 8.0;
                    (packet_bits / (response * response)).max(4000.0) * elapsed.as_secs_f64()
                } else {
                    self.target_bps * (INCREASE_PER_SECOND.powf(elapsed.as_secs_f64()) - 1.0)
                };
                let mut target = self.target_bps + increase;
                // A probe raises the target only away from a known capacity: before the
                // first over-use, or once the target has grown past the capacity seen at
                // over-use (the path got faster). Near it, a probe through a shared
                // bottleneck measures a share, and following it lets the flow that probes
                // fastest starve the others; there the increase is additive, which shares
                // a bottleneck fairly (Chiu–Jain).
                if let Some(probe) = probe_bps
                    && !near_capacity
                {
                    target = target.max(probe * PROBE_USE_FRACTION);
                }
                if let Some(acked) = acked {
                    target = target.min(acked * MAX_TARGET_OVER_ACKED + ACKED_HEADROOM_BPS);
                }
                // Never decrease while increasing (the acked cap can be below the target
                // of an application-limited sender).
                self.target_bps = target.max(self.target_bps);
            }
            RateState::Decrease => {
                let response = rtt + Duration::from_millis(100);
                let recent = self
                    .last_decrease
                    .is_some_and(|at| now.saturating_duration_since(at) < response);
                if !recent {
                    // From the delivered rate, but a sender that delivered far less than
                    // its target (frames dropped, an idle encoder) is not what filled the
                    // queue: it at most halves.
                    let base = acked.unwrap_or(self.target_bps).max(self.target_bps / 2.0);
                    let decreased = DECREASE_FACTOR * base;
                    if decreased < self.target_bps {
                        self.target_bps = decreased;
                    }
                    if let Some(acked) = acked {
                        self.update_capacity(acked / 1000.0);
                    }
                    self.last_decrease = Some(now);
                }
                self.state = RateState::Hold;
            }
        }
        self.target_bps = self.target_bps.clamp(self.min_bps, self.max_bps);
        self.last_change = Some(now);
    }

    /// GCC's link capacity estimate: an exponential average of the delivered rate at
    /// over-use, with its normalized variance.
    fn update_capacity(&mut self, acked_kbps: f64) {
        const ALPHA: f64 = 0.05;
        let (average, variance) = match self.capacity_kbps {
            // A sample more than three deviations off is a different path (as WebRTC's
            // link capacity estimator): start again from it.
            Some((average, variance))
                if (acked_kbps - average).abs() > 3.0 * (variance * average).sqrt() =>
            {
                (acked_kbps, 0.4)
            }
            None => (acked_kbps, 0.4),
            Some((average, variance)) => {
                let average = (1.0 - ALPHA) * average + ALPHA * acked_kbps;
                let norm = average.max(1.0);
                let error = average - acked_kbps;
                let variance =
                    ((1.0 - ALPHA) * variance + ALPHA * error * error / norm).clamp(0.4, 2.5);
                (average, variance)
            }
        };
        self.capacity_kbps = Some((average, variance));
    }

    #[cfg(test)]
    fn usage(&self) -> BandwidthUsage {
        self.trendline.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO bottleneck with an unbounded queue, 10 ms each way, feedback every 50 ms.
    struct Bottleneck {
        start: Instant,
        clock_us: u64,
        seq: u32,
        queue_free_at_us: u64,
    }

    impl Bottleneck {
        fn new() -> Bottleneck {
            Bottleneck {
                start: Instant::now(),
                clock_us: 0,
                seq: 0,
                queue_free_at_us: 0,
            }
        }

        /// Feeds `bwe` packets sent at `send_rate` through `capacity_bps` for `seconds`.
        fn drive(
            &mut self,
            bwe: &mut DelayBasedBwe,
            send_rate: impl Fn(&DelayBasedBwe) -> f64,
            capacity_bps: f64,
            seconds: f64,
        ) {
            let end = self.clock_us + (seconds * 1e6) as u64;
            let mut pending: Vec<FeedbackEntry> = Vec::new();
            let mut next_feedback = self.clock_us + 50_000;
            let size = 1200u32;
            while self.clock_us < end {
                let rate = send_rate(bwe).max(50_000.0);
                let gap_us = (f64::from(size) * 8e6 / rate) as u64;
                let sent = self.clock_us;
                // Ten packets per frame (one probe cluster each).
                bwe.on_sent(self.seq, sent, size as usize, self.seq / 10 + 1);
                let transmit_us = (f64::from(size) * 8e6 / capacity_bps) as u64;
                let start_service = self.queue_free_at_us.max(sent + 10_000);
                self.queue_free_at_us = start_service + transmit_us;
                pending.push(FeedbackEntry {
                    packet_seq: self.seq,
                    arrival_us: self.queue_free_at_us as u32,
                });
                self.seq = self.seq.wrapping_add(1);
                self.clock_us += gap_us.max(1);
                if self.clock_us >= next_feedback {
                    let now = self.start + Duration::from_micros(self.clock_us);
                    // Only what has arrived by now (plus the 10 ms way back) is reported.
                    let (ready, later): (Vec<_>, Vec<_>) = pending
                        .iter()
                        .partition(|e| u64::from(e.arrival_us) + 10_000 <= self.clock_us);
                    bwe.on_feedback(now, ready.into_iter(), Duration::from_millis(20));
                    pending = later;
                    next_feedback += 50_000;
                }
            }
        }
    }

    #[test]
    fn sending_above_capacity_is_detected_and_the_target_falls_to_it() {
        let mut bwe = DelayBasedBwe::new(8_000_000, 100_000, 20_000_000);
        Bottleneck::new().drive(&mut bwe, DelayBasedBwe::target_f64, 4_000_000.0, 5.0);
        let target = bwe.target_bps() as f64;
        assert!(
            (2_800_000.0..=4_400_000.0).contains(&target),
            "target {target} should settle near the 4 Mbit/s capacity"
        );
    }

    #[test]
    fn sending_below_capacity_never_signals_overuse() {
        let mut bwe = DelayBasedBwe::new(1_000_000, 100_000, 20_000_000);
        Bottleneck::new().drive(&mut bwe, |_| 2_000_000.0, 8_000_000.0, 5.0);
        assert_ne!(bwe.usage(), BandwidthUsage::Overusing);
        assert!(bwe.target_bps() >= 1_000_000, "never decreased");
        let acked = bwe.acked_bps().expect("delivered rate measured") as f64;
        assert!(
            (1_800_000.0..=2_200_000.0).contains(&acked),
            "acked {acked}"
        );
        assert!(
            bwe.target_bps() as f64 <= acked * MAX_TARGET_OVER_ACKED + ACKED_HEADROOM_BPS + 1.0,
            "an application-limited sender's target stays near what it sends"
        );
    }

    #[test]
    fn a_paced_train_through_a_bottleneck_measures_its_capacity() {
        let mut cluster: Option<Cluster> = None;
        // 20 packets of 1200 B sent at 10 Mbit/s, leaving a 3 Mbit/s bottleneck.
        for i in 0..20u64 {
            let result = PacketResult {
                sent_us: i * 960,
                arrival_us: (10_000 + i * 3200) as i64,
                size: 1200,
                cluster: 7,
            };
            match &mut cluster {
                Some(c) => c.add(&result),
                None => cluster = Some(Cluster::start(&result)),
            }
        }
        let (send, receive) = cluster.and_then(|c| c.rates_bps()).expect("long enough");
        let rate = send.min(receive);
        assert!((2_900_000.0..=3_100_000.0).contains(&rate), "rate {rate}");
    }

    #[test]
    fn feedback_for_unknown_or_overwritten_packets_is_ignored() {
        let start = Instant::now();
        let mut bwe = DelayBasedBwe::new(1_000_000, 100_000, 20_000_000);
        bwe.on_sent(5, 0, 1200, 0);
        bwe.on_sent(5 + SEND_HISTORY_PACKETS as u32, 10, 1200, 0);
        let entries = [
            FeedbackEntry {
                packet_seq: 5,
                arrival_us: 100,
            },
            FeedbackEntry {
                packet_seq: 99,
                arrival_us: 100,
            },
        ];
        assert!(!bwe.on_feedback(start, entries.into_iter(), Duration::from_millis(20)));
        assert!(bwe.acked.records.is_empty());
    }

    #[test]
    fn hostile_arrival_times_keep_the_target_in_bounds() {
        let start = Instant::now();
        let mut bwe = DelayBasedBwe::new(1_000_000, 100_000, 20_000_000);
        let mut state = 0x1234_5678u32;
        for round in 0..2000u32 {
            let entries: Vec<FeedbackEntry> = (0..20)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let seq = round * 20 + i;
                    bwe.on_sent(seq, u64::from(seq) * 1000, 1200, round % 3);
                    FeedbackEntry {
                        packet_seq: seq,
                        arrival_us: state,
                    }
                })
                .collect();
            let now = start + Duration::from_millis(u64::from(round) * 50);
            bwe.on_feedback(now, entries.into_iter(), Duration::from_millis(20));
            let target = bwe.target_bps();
            assert!((100_000..=20_000_000).contains(&target), "target {target}");
        }
    }

    #[test]
    fn interleaved_frames_of_two_streams_do_not_underflow() {
        // Cluster 2 (sent at 1 ms) ends before cluster 1 (0..5 ms) did: two streams'
        // frames interleaved.
        let start = Instant::now();
        let mut bwe = DelayBasedBwe::new(1_000_000, 100_000, 20_000_000);
        let sends = [
            (0u32, 0u64, 1),
            (1, 5_000, 1),
            (2, 1_000, 2),
            (3, 6_000, 3),
            (4, 7_000, 4),
        ];
        for (seq, at, cluster) in sends {
            bwe.on_sent(seq, at, 1200, cluster);
        }
        let entries = sends.map(|(seq, at, _)| FeedbackEntry {
            packet_seq: seq,
            arrival_us: at as u32 + 20_000,
        });
        bwe.on_feedback(start, entries.into_iter(), Duration::from_millis(20));
        assert!((100_000..=20_000_000).contains(&bwe.target_bps()));
    }

    #[test]
    fn recorder_flushes_when_a_packet_is_full_and_bounds_its_table() {
        let now = Instant::now();
        let mut recorder = FeedbackRecorder::default();
        assert!(recorder.deadline().is_none());
        for seq in 0..9 {
            assert!(!recorder.record(now, seq, seq * 10, 10));
        }
        assert_eq!(recorder.deadline(), Some(now + FEEDBACK_INTERVAL));
        assert!(
            recorder.record(now, 9, 90, 10),
            "tenth record fills the packet"
        );
        // Without a flush the table never grows past one packet's worth.
        for seq in 10..(10 + 3 * MAX_FEEDBACK_ENTRIES as u32) {
            recorder.record(now, seq, seq, usize::MAX);
        }
        assert!(recorder.pending() <= MAX_FEEDBACK_ENTRIES);
        let mut out = Vec::new();
        let (base, _) = recorder.take(&mut out).expect("records pending");
        assert_eq!(base, out.iter().map(|e| e.packet_seq).min().unwrap_or(0));
        assert_eq!(recorder.pending(), 0);
        assert!(recorder.deadline().is_none());
    }

    #[test]
    fn recorder_base_is_the_lowest_sequence_across_a_wrap() {
        let now = Instant::now();
        let mut recorder = FeedbackRecorder::default();
        recorder.record(now, 2, 0, 100);
        recorder.record(now, u32::MAX - 1, 5, 100);
        recorder.record(now, 0, 7, 100);
        let mut out = Vec::new();
        assert_eq!(recorder.take(&mut out), Some((u32::MAX - 1, 0)));
    }

    impl DelayBasedBwe {
        fn target_f64(&self) -> f64 {
            self.target_bps
        }
    }
}
