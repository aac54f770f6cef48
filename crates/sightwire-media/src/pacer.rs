//! The pacer: fragments leave at most at `pacing_rate` with a small burst allowance, so a
//! keyframe is spread over about its frame interval instead of overflowing a shallow
//! bottleneck queue (a home uplink) in one burst. See `spec/media.md`, "Pacing".
//!
//! An exact token bucket in nano-bits: it holds at most `burst` bytes of credit, earns
//! `rate` bits per second, and a packet leaves only when the bucket holds all its bytes.
//! Over any window `w`, bytes sent ≤ `burst + rate × w`, plus, once, a new pacer's
//! initial window.

use std::time::{Duration, Instant};

use crate::config::Config;

/// Default pacing factor in percent of the target bitrate (2.5 ×, as WebRTC's pacer): the
/// encoder's average stays at the target while a keyframe drains 2.5 × faster.
pub const DEFAULT_PACING_FACTOR_PERCENT: u32 = 250;
/// Largest allowed `Config::pacing_factor_percent` (100 ×).
pub const MAX_PACING_FACTOR_PERCENT: u32 = 10_000;
/// The pacer never paces below this target (bits/s), whatever the bitrate controller says:
/// a retransmission or keyframe must still leave within the latency budget.
pub const MIN_PACING_TARGET_BPS: u64 = 300_000;
/// Burst allowance: the bytes the pacing rate earns in this time…
pub const PACER_BURST: Duration = Duration::from_millis(5);
/// …but at least this many largest packets.
pub const PACER_MIN_BURST_PACKETS: u64 = 2;
/// Default `Config::pacing_initial_window_packets`: a new pacer's one-time initial
/// window, in largest packets, spent before the bucket (the ten packets of TCP's and
/// QUIC's initial window, RFC 6928, RFC 9002 §7.2): a connection's first keyframe, which
/// a joining viewer waits on, starts at once instead of at the pacing rate. The path's
/// queue is empty then, and ten packets fit any bottleneck queue worth the name.
pub const PACER_INITIAL_WINDOW_PACKETS: u32 = 10;
/// Largest allowed `Config::pacing_initial_window_packets`.
pub const MAX_PACING_INITIAL_WINDOW_PACKETS: u32 = 64;

/// Recovery rounds (NACK, retransmission) the pacer leaves room for in the latency budget:
/// it holds its queue at most `latency_budget - (rtt / 2 + PACER_RECOVERY_ROUNDS × (rtt +
/// reorder_delay))`, and at least `latency_budget / PACER_MIN_QUEUE_TIME_DIVISOR`. When the
/// queue holds more than the pacing rate drains in that time (an encoder above its target,
/// a keyframe far larger than the frame budget), the rate rises to `8 × queued bytes /
/// that time` until the queue is empty: a frame held past the point where its losses can
/// still be repaired is worth less than one sent a little faster.
pub const PACER_RECOVERY_ROUNDS: u32 = 3;
/// See [`PACER_RECOVERY_ROUNDS`]: the queue time never shrinks below a quarter of the
/// budget (at 50 ms RTT and the default 200 ms budget the rounds leave only 10 ms).
pub const PACER_MIN_QUEUE_TIME_DIVISOR: u32 = 4;

/// The longest the pacer may hold its queue at this RTT (see [`PACER_RECOVERY_ROUNDS`]).
pub(crate) fn max_queue_time(config: &Config, rtt: Duration) -> Duration {
    let recovery = rtt / 2 + (rtt + config.reorder_delay) * PACER_RECOVERY_ROUNDS;
    config
        .latency_budget
        .saturating_sub(recovery)
        .max(config.latency_budget / PACER_MIN_QUEUE_TIME_DIVISOR)
}

/// Nano-bits per byte: the bucket counts bits × 10⁹, so `rate` bits/s earn `rate`
/// units per nanosecond and every computation is exact integer arithmetic.
const UNITS_PER_BYTE: u128 = 8 * 1_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// Pacing rate from the target, bits per second (never zero).
    base_rate_bps: u64,
    /// Rate that drains the queue in time (see [`PACER_QUEUE_TIME_DIVISOR`]); 0 while the
    /// base rate does.
    drain_rate_bps: u64,
    /// The rate in force: the larger of the two.
    rate_bps: u64,
    /// Bucket size in bytes.
    burst_bytes: u64,
    /// Credit in nano-bits at `updated`, at most `burst_bytes × UNITS_PER_BYTE`.
    level: u128,
    updated: Instant,
    /// What is left of the initial window ([`PACER_INITIAL_WINDOW_PACKETS`]), bytes.
    initial_bytes: u64,
}

impl Pacer {
    /// A full pacer at `now` for `target_bps`.
    pub(crate) fn new(now: Instant, target_bps: u64, config: &Config) -> Pacer {
        let mut pacer = Pacer {
            base_rate_bps: 1,
            drain_rate_bps: 0,
            rate_bps: 1,
            burst_bytes: 0,
            level: 0,
            updated: now,
            initial_bytes: u64::from(config.pacing_initial_window_packets)
                * config.max_packet_size as u64,
        };
        pacer.set_target(now, target_bps, u64::MAX, config);
        pacer.level = pacer.capacity();
        pacer
    }

    /// Pacing rate for a target: `factor × clamp(target, floor, max_bitrate)`.
    pub(crate) fn rate_for(target_bps: u64, config: &Config) -> u64 {
        let target = target_bps
            .max(MIN_PACING_TARGET_BPS)
            .min(config.max_bitrate_bps.max(MIN_PACING_TARGET_BPS));
        target
            .saturating_mul(u64::from(config.pacing_factor_percent))
            .checked_div(100)
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Applies a new target bitrate (the lower of the delay- and loss-based estimates),
    /// the pacing rate at most `max_rate_bps`. Credit earned so far at the old rate is
    /// kept.
    pub(crate) fn set_target(
        &mut self,
        now: Instant,
        target_bps: u64,
        max_rate_bps: u64,
        config: &Config,
    ) {
        self.refill(now);
        self.base_rate_bps = Self::rate_for(target_bps, config).min(max_rate_bps).max(1);
        self.rate_bps = self.base_rate_bps.max(self.drain_rate_bps);
        let packet = config.max_packet_size as u64;
        let earned =
            (u128::from(self.base_rate_bps) * PACER_BURST.as_nanos() / UNITS_PER_BYTE) as u64;
        self.burst_bytes = earned.max(PACER_MIN_BURST_PACKETS * packet);
        self.level = self.level.min(self.capacity());
    }

    /// After something was queued: raises the rate so `queued_bytes` leave within
    /// `max_queue_time` (see [`max_queue_time`]), but never above `max_rate_bps`. The
    /// raised rate holds until the queue is empty ([`on_empty`](Self::on_empty)), so
    /// everything queued now leaves in time.
    pub(crate) fn on_queued(
        &mut self,
        now: Instant,
        queued_bytes: u64,
        max_queue_time: Duration,
        max_rate_bps: u64,
    ) {
        let window = max_queue_time.as_nanos().max(1);
        let needed = (u128::from(queued_bytes) * UNITS_PER_BYTE).div_ceil(window);
        let needed = u64::try_from(needed).unwrap_or(u64::MAX).min(max_rate_bps);
        // A raised rate from before the cap was known (or lowered) must not outlive it: a
        // queue that never empties would keep it for good.
        let kept = self.drain_rate_bps.min(max_rate_bps);
        let drain = needed.max(kept);
        if drain != self.drain_rate_bps {
            self.refill(now);
            self.drain_rate_bps = drain;
            self.rate_bps = self.base_rate_bps.max(drain);
        }
    }

    /// The queue emptied: back to the base rate.
    pub(crate) fn on_empty(&mut self, now: Instant) {
        if self.drain_rate_bps != 0 {
            self.refill(now);
            self.drain_rate_bps = 0;
            self.rate_bps = self.base_rate_bps;
        }
    }

    /// The rate in force, bits per second.
    #[cfg(test)]
    pub(crate) fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// The rate from the target alone, bits per second.
    pub(crate) fn base_rate_bps(&self) -> u64 {
        self.base_rate_bps
    }

    pub(crate) fn burst_bytes(&self) -> u64 {
        self.burst_bytes
    }

    fn capacity(&self) -> u128 {
        u128::from(self.burst_bytes) * UNITS_PER_BYTE
    }

    /// Credit at `now`; a `now` before the last update counts as the last update.
    fn level_at(&self, now: Instant) -> u128 {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        self.level
            .saturating_add(elapsed.saturating_mul(u128::from(self.rate_bps)))
            .min(self.capacity())
    }

    fn refill(&mut self, now: Instant) {
        self.level = self.level_at(now);
        if now > self.updated {
            self.updated = now;
        }
    }

    /// Takes credit for a `len`-byte packet at `now`; `false` (nothing taken) if the
    /// bucket holds less.
    pub(crate) fn try_send(&mut self, now: Instant, len: usize) -> bool {
        self.refill(now);
        if len as u64 <= self.initial_bytes {
            self.initial_bytes -= len as u64;
            return true;
        }
        let needed = len as u128 * UNITS_PER_BYTE;
        if self.level < needed {
            return false;
        }
        self.level -= needed;
        true
    }

    /// The earliest time a `len`-byte packet may leave (in the past if it may now).
    pub(crate) fn next_send(&self, len: usize) -> Instant {
        if len as u64 <= self.initial_bytes {
            return self.updated;
        }
        let needed = (len as u128 * UNITS_PER_BYTE).min(self.capacity());
        let missing = needed.saturating_sub(self.level);
        let nanos = missing.div_ceil(u128::from(self.rate_bps));
        let wait = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.updated.checked_add(wait).unwrap_or(self.updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_factor_times_clamped_target() {
        let config = Config::default();
        assert_eq!(Pacer::rate_for(4_000_000, &config), 10_000_000);
        assert_eq!(Pacer::rate_for(1, &config), 750_000, "floor 300 kbit/s");
        assert_eq!(
            Pacer::rate_for(u64::MAX, &config),
            50_000_000,
            "cap max_bitrate"
        );
    }

    fn spend_initial_window(pacer: &mut Pacer, now: Instant, config: &Config) {
        for _ in 0..config.pacing_initial_window_packets {
            assert!(pacer.try_send(now, config.max_packet_size));
        }
    }

    #[test]
    fn the_initial_window_leaves_at_once_and_only_once() {
        let t0 = Instant::now();
        let config = Config::default();
        let packet = config.max_packet_size;
        let mut pacer = Pacer::new(t0, 4_000_000, &config);
        // Ten packets, then the full bucket (6250 bytes: five packets), then nothing.
        assert!(pacer.next_send(packet) <= t0);
        spend_initial_window(&mut pacer, t0, &config);
        for _ in 0..5 {
            assert!(pacer.try_send(t0, packet));
        }
        assert!(!pacer.try_send(t0, packet));
        assert!(pacer.next_send(packet) > t0);
        // Idle for long: the bucket refills to its burst, the initial window never.
        let later = t0 + Duration::from_secs(10);
        assert!(pacer.try_send(later, 6250));
        assert!(!pacer.try_send(later, 1));
    }

    #[test]
    fn bucket_is_exact() {
        let t0 = Instant::now();
        let config = Config::default();
        // 10 Mbit/s: 6250 bytes burst (5 ms), 1250 bytes per ms.
        let mut pacer = Pacer::new(t0, 4_000_000, &config);
        assert_eq!(pacer.burst_bytes(), 6250);
        spend_initial_window(&mut pacer, t0, &config);
        for _ in 0..5 {
            assert!(pacer.try_send(t0, 1200));
        }
        assert!(!pacer.try_send(t0, 1200), "250 bytes left");
        // 950 bytes missing at 1250 bytes/ms = 760 µs.
        assert_eq!(pacer.next_send(1200), t0 + Duration::from_micros(760));
        assert!(!pacer.try_send(t0 + Duration::from_micros(759), 1200));
        assert!(pacer.try_send(t0 + Duration::from_micros(760), 1200));
        // Idle: credit is capped at the burst.
        let later = t0 + Duration::from_secs(10);
        assert!(pacer.try_send(later, 6250));
        assert!(!pacer.try_send(later, 1));
    }

    #[test]
    fn an_oversized_queue_raises_the_rate_until_empty() {
        let t0 = Instant::now();
        let config = Config::default();
        // 200 ms budget at 20 ms RTT: 10 ms to the viewer and three rounds of 25 ms leave
        // 115 ms.
        let window = max_queue_time(&config, Duration::from_millis(20));
        assert_eq!(window, Duration::from_millis(115));
        // At 50 ms RTT only 10 ms would be left: a quarter of the budget instead.
        assert_eq!(
            max_queue_time(&config, Duration::from_millis(50)),
            Duration::from_millis(50)
        );
        let mut pacer = Pacer::new(t0, 2_000_000, &config);
        assert_eq!(pacer.rate_bps(), 5_000_000);
        pacer.on_queued(t0, 71_875, window, u64::MAX);
        assert_eq!(pacer.rate_bps(), 5_000_000, "71.9 kB drain in 115 ms");
        pacer.on_queued(t0, 143_750, window, u64::MAX);
        assert_eq!(pacer.rate_bps(), 10_000_000, "143.75 kB in 115 ms");
        assert_eq!(pacer.base_rate_bps(), 5_000_000);
        pacer.on_queued(t0, 10_000, window, u64::MAX);
        assert_eq!(pacer.rate_bps(), 10_000_000, "never lowered while queued");
        pacer.on_empty(t0 + Duration::from_millis(100));
        assert_eq!(pacer.rate_bps(), 5_000_000);
    }
}
