//! When an RTSP camera's main stream is more than the viewers can take, switch to its
//! sub stream (lower resolution and bitrate), and back when the path has room again:
//! [`SwitchPolicy`] decides, [`Splice`] keeps capture times monotonic across a switch.
//! The RTSP glue that follows the decisions is [`crate::rtsp::RtspSource`].
//!
//! The policy compares the target bitrate ([`sightwire::Event::TargetBitrate`]) with
//! the main stream's bitrate as measured ([`crate::rate::RateMeter`]; the last
//! measurement is kept while the main stream is not pulled):
//!
//! - **down** to the sub stream once the target has stayed below
//!   [`SwitchConfig::down_percent`] of the main stream's rate for
//!   [`SwitchConfig::down_hold`] (short: the link is overloaded now);
//! - **up** to the main stream once the target has stayed at or above
//!   [`SwitchConfig::up_percent`] of it for the up hold (long: the target only grows
//!   slowly, and going up too early costs a burst of loss), or at once when there is no
//!   target any more (no viewer);
//! - an up-switch followed by a down-switch within [`SwitchConfig::probation`] failed: the
//!   up hold doubles (up to [`SwitchConfig::max_up_hold`]), and returns to
//!   [`SwitchConfig::up_hold`] after an up-switch that lasts.
//!
//! The gap between the thresholds and the holds are the hysteresis: a target wandering
//! around either threshold causes at most one switch per hold, and a path that cannot
//! carry the main stream is tried less and less often.

use std::time::{Duration, Instant};

/// Assumed frame interval for the first frame after a switch when the stream before it
/// gave none (microseconds, 30 fps).
const DEFAULT_FRAME_INTERVAL_US: u64 = 33_333;

/// Which of the camera's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CameraStream {
    /// The full-quality stream.
    Main,
    /// The low-bitrate stream.
    Sub,
}

impl CameraStream {
    /// `"main"` or `"sub"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Sub => "sub",
        }
    }
}

impl std::fmt::Display for CameraStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Thresholds and holds of a [`SwitchPolicy`]; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Go down when the target is below this percentage of the main stream's rate.
    pub down_percent: u64,
    /// Go up when the target is at least this percentage of the main stream's rate.
    pub up_percent: u64,
    /// How long the target must stay low before going down.
    pub down_hold: Duration,
    /// How long the target must stay high before going up (doubled after a failed
    /// up-switch).
    pub up_hold: Duration,
    /// The longest the up hold grows to.
    pub max_up_hold: Duration,
    /// An up-switch undone within this long counted as failed.
    pub probation: Duration,
    /// Window the main stream's bitrate is measured over.
    pub measure_window: Duration,
}

impl Default for SwitchConfig {
    /// Down below 100 % of the main rate for 2 s, up at 130 % for 10 s (up to 160 s after
    /// failed attempts, 30 s probation), the main rate measured over 5 s.
    fn default() -> Self {
        Self {
            down_percent: 100,
            up_percent: 130,
            down_hold: Duration::from_secs(2),
            up_hold: Duration::from_secs(10),
            max_up_hold: Duration::from_secs(160),
            probation: Duration::from_secs(30),
            measure_window: Duration::from_secs(5),
        }
    }
}

/// Decides between the main and the sub stream; starts on the main stream. Sans-IO:
/// call [`SwitchPolicy::update`] on every frame and every target change.
#[derive(Debug, Clone)]
pub struct SwitchPolicy {
    config: SwitchConfig,
    current: CameraStream,
    main_bps: Option<u64>,
    /// Since when the condition for leaving `current` has held.
    leaving_since: Option<Instant>,
    up_hold: Duration,
    /// The last up-switch, while still on probation.
    last_up: Option<Instant>,
    switches: u64,
}

impl SwitchPolicy {
    /// On the main stream, nothing measured yet.
    pub fn new(config: SwitchConfig) -> Self {
        Self {
            config,
            current: CameraStream::Main,
            main_bps: None,
            leaving_since: None,
            up_hold: config.up_hold,
            last_up: None,
            switches: 0,
        }
    }

    /// The stream chosen.
    pub fn current(&self) -> CameraStream {
        self.current
    }

    /// The main stream's last measured bitrate.
    pub fn main_bps(&self) -> Option<u64> {
        self.main_bps
    }

    /// The hold before the next up-switch.
    pub fn up_hold(&self) -> Duration {
        self.up_hold
    }

    /// Switches decided so far.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// Takes the current target (`None`: no viewer reports one) and, when known, a new
    /// measurement of the main stream's rate; returns the stream to use from `now` on.
    /// Nothing switches before the main stream's rate is known.
    pub fn update(
        &mut self,
        now: Instant,
        target_bps: Option<u64>,
        main_bps: Option<u64>,
    ) -> CameraStream {
        if main_bps.is_some() {
            self.main_bps = main_bps;
        }
        if self
            .last_up
            .is_some_and(|up| now.saturating_duration_since(up) >= self.config.probation)
        {
            self.last_up = None;
            self.up_hold = self.config.up_hold;
        }
        let Some(main) = self.main_bps else {
            return self.current;
        };
        let percent_of_main = |target: u64| u128::from(target) * 100;
        let main_times = |percent: u64| u128::from(main) * u128::from(percent);
        let (leave, hold) = match (self.current, target_bps) {
            (CameraStream::Main, None) => (false, Duration::ZERO),
            (CameraStream::Main, Some(target)) => (
                percent_of_main(target) < main_times(self.config.down_percent),
                self.config.down_hold,
            ),
            (CameraStream::Sub, None) => (true, Duration::ZERO),
            (CameraStream::Sub, Some(target)) => (
                percent_of_main(target) >= main_times(self.config.up_percent),
                self.up_hold,
            ),
        };
        if !leave {
            self.leaving_since = None;
            return self.current;
        }
        let since = *self.leaving_since.get_or_insert(now);
        if now.saturating_duration_since(since) < hold {
            return self.current;
        }
        self.leaving_since = None;
        self.switches += 1;
        self.current = match self.current {
            CameraStream::Main => {
                if self.last_up.take().is_some() {
                    self.up_hold = (self.up_hold * 2).min(self.config.max_up_hold);
                }
                CameraStream::Sub
            }
            CameraStream::Sub => {
                self.last_up = Some(now);
                CameraStream::Main
            }
        };
        self.current
    }
}

/// Maps capture times of successive streams (whose clocks are unrelated) onto one
/// monotonic clock: each segment continues one frame interval after the last frame of
/// the one before. The first segment keeps its times.
#[derive(Debug, Clone)]
pub struct Splice {
    offset: i128,
    last_us: Option<u64>,
    last_interval_us: u64,
    new_segment: bool,
}

impl Default for Splice {
    fn default() -> Self {
        Self {
            offset: 0,
            last_us: None,
            last_interval_us: 0,
            new_segment: true,
        }
    }
}

impl Splice {
    /// The next frame starts a new segment (comes from another stream).
    pub fn start_segment(&mut self) {
        self.new_segment = true;
    }

    /// The output capture time of a frame of another track of the current segment (its
    /// audio), captured at `capture_time_us` on the segment's clock: the segment's offset
    /// alone, so it keeps its place between the video frames it interleaves with.
    pub fn shift(&self, capture_time_us: u64) -> u64 {
        u64::try_from((i128::from(capture_time_us) + self.offset).max(0)).unwrap_or(u64::MAX)
    }

    /// The output capture time of a frame captured at `capture_time_us` on the current
    /// segment's clock; never less than the previous result.
    pub fn map(&mut self, capture_time_us: u64) -> u64 {
        let input = i128::from(capture_time_us);
        if self.new_segment {
            self.new_segment = false;
            if let Some(last) = self.last_us {
                let interval = if self.last_interval_us == 0 {
                    DEFAULT_FRAME_INTERVAL_US
                } else {
                    self.last_interval_us
                };
                self.offset = i128::from(last) + i128::from(interval) - input;
            }
        }
        let mut time = u64::try_from((input + self.offset).max(0)).unwrap_or(u64::MAX);
        if let Some(last) = self.last_us {
            time = time.max(last);
            if time > last {
                self.last_interval_us = time - last;
            }
        }
        self.last_us = Some(time);
        time
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAIN: u64 = 4_000_000;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Runs a policy with the main stream at [`MAIN`], asked every 100 ms for `seconds`
    /// with the target `target(t)`; returns the switch times.
    fn run(
        seconds: f64,
        target: impl Fn(f64) -> Option<u64>,
    ) -> (SwitchPolicy, Vec<(f64, CameraStream)>) {
        let t0 = Instant::now();
        let mut policy = SwitchPolicy::new(SwitchConfig::default());
        let mut switches = Vec::new();
        let mut current = CameraStream::Main;
        let steps = (seconds * 10.0) as u32;
        for step in 0..=steps {
            let t = f64::from(step) / 10.0;
            let next = policy.update(t0 + secs(t), target(t), Some(MAIN));
            if next != current {
                switches.push((t, next));
                current = next;
            }
        }
        (policy, switches)
    }

    #[test]
    fn goes_down_after_the_down_hold_and_up_after_the_up_hold() {
        let (_, switches) = run(60.0, |t| {
            Some(if (5.0..20.0).contains(&t) {
                MAIN / 2
            } else {
                MAIN * 2
            })
        });
        assert_eq!(
            switches,
            [(7.0, CameraStream::Sub), (30.0, CameraStream::Main)],
            "down 2 s after 5 s, up 10 s after 20 s"
        );
    }

    #[test]
    fn nothing_switches_before_the_main_rate_is_known() {
        let t0 = Instant::now();
        let mut policy = SwitchPolicy::new(SwitchConfig::default());
        for step in 0..100 {
            let now = t0 + secs(f64::from(step));
            assert_eq!(policy.update(now, Some(1), None), CameraStream::Main);
        }
        // The first measurement starts the clock of the hold.
        assert_eq!(
            policy.update(t0 + secs(100.0), Some(1), Some(MAIN)),
            CameraStream::Main
        );
        assert_eq!(
            policy.update(t0 + secs(102.0), Some(1), None),
            CameraStream::Sub
        );
        assert_eq!(policy.main_bps(), Some(MAIN));
    }

    #[test]
    fn no_target_goes_back_to_main_at_once() {
        let (_, switches) = run(20.0, |t| if t < 10.0 { Some(MAIN / 4) } else { None });
        assert_eq!(
            switches,
            [(2.0, CameraStream::Sub), (10.0, CameraStream::Main)]
        );
    }

    #[test]
    fn a_target_oscillating_around_a_threshold_does_not_flap() {
        let wobble = |low: u64, high: u64| {
            move |t: f64| {
                if (t as u64).is_multiple_of(2) {
                    low
                } else {
                    high
                }
            }
        };
        // ±5 % around the main rate, changing every second: below it for 1 s at a time,
        // never the 2 s hold.
        let around_down = wobble(MAIN * 95 / 100, MAIN * 105 / 100);
        let (_, switches) = run(600.0, |t| Some(around_down(t)));
        assert!(switches.is_empty(), "{switches:?}");
        // The same after going down: never 130 %, so it stays on the sub stream.
        let (_, switches) = run(600.0, |t| {
            Some(if t < 5.0 { MAIN / 2 } else { around_down(t) })
        });
        assert_eq!(switches, [(2.0, CameraStream::Sub)]);
        // Around the up threshold (125 % / 135 %): above it 1 s at a time, never the
        // 10 s hold.
        let around_up = wobble(MAIN * 125 / 100, MAIN * 135 / 100);
        let (_, switches) = run(600.0, |t| {
            Some(if t < 5.0 { MAIN / 2 } else { around_up(t) })
        });
        assert_eq!(switches, [(2.0, CameraStream::Sub)]);
        // Between half and twice the main rate every 5 s: long enough to go down, too
        // short to go up.
        let (_, switches) = run(600.0, |t| {
            Some(if (t as u64 / 5).is_multiple_of(2) {
                MAIN / 2
            } else {
                MAIN * 2
            })
        });
        assert_eq!(switches, [(2.0, CameraStream::Sub)]);
    }

    /// A closed loop: a path of `capacity(t)` bits per second, a loss-based target like
    /// the media crate's (every second: +8 % without loss, `× (1 - loss / 2)` with), the
    /// offered rate the chosen stream's capped at the target (the frame dropper). Returns
    /// the policy and the switch times.
    fn closed_loop(
        config: SwitchConfig,
        seconds: u32,
        capacity: impl Fn(f64) -> f64,
    ) -> (SwitchPolicy, Vec<(f64, CameraStream)>) {
        let sub = MAIN as f64 / 4.0;
        let t0 = Instant::now();
        let mut policy = SwitchPolicy::new(config);
        let mut target = 2.0 * MAIN as f64;
        let mut switches = Vec::new();
        let mut current = CameraStream::Main;
        for step in 0..seconds * 10 {
            let t = f64::from(step) / 10.0;
            if step.is_multiple_of(10) {
                let stream = if current == CameraStream::Main {
                    MAIN as f64
                } else {
                    sub
                };
                let offered = stream.min(target);
                let capacity = capacity(t);
                if offered > capacity {
                    target *= 1.0 - 0.5 * (1.0 - capacity / offered);
                } else {
                    target *= 1.08;
                }
                target = target.clamp(100_000.0, 20_000_000.0);
            }
            let next = policy.update(t0 + secs(t), Some(target as u64), Some(MAIN));
            if next != current {
                switches.push((t, next));
                current = next;
            }
        }
        (policy, switches)
    }

    #[test]
    fn failed_up_switches_back_off() {
        // A path that cannot carry the main stream: on the sub stream the target grows
        // past the main rate, the main stream then overloads the path, the target falls
        // and it goes down again within the probation.
        let config = SwitchConfig::default();
        let slow_path = |_| MAIN as f64 * 0.8;
        let (policy, switches) = closed_loop(config, 1_200, slow_path);
        // Holds of 10, 20, 40, 80, then 160 s: about one attempt every three minutes.
        assert!(
            switches.len() <= 20,
            "{} switches: {switches:?}",
            switches.len()
        );
        assert!(switches.len() >= 10, "it keeps trying: {switches:?}");
        assert_eq!(policy.up_hold(), config.max_up_hold);
        // Without backing off: an attempt every ~30 s.
        let no_backoff = SwitchConfig {
            max_up_hold: config.up_hold,
            ..config
        };
        let (_, flapping) = closed_loop(no_backoff, 1_200, slow_path);
        assert!(
            flapping.len() >= 3 * switches.len(),
            "{} switches without backing off, {} with",
            flapping.len(),
            switches.len()
        );
        for pair in switches.windows(2) {
            if pair[0].1 == CameraStream::Main {
                assert!(
                    pair[1].0 - pair[0].0 < 30.0,
                    "each up-switch failed: {pair:?}"
                );
            }
        }
        // The path grows at 650 s: the next up-switch lasts and the hold resets.
        let (policy, switches) = closed_loop(config, 1_200, |t| {
            MAIN as f64 * if t < 650.0 { 0.8 } else { 3.0 }
        });
        let (at, last) = switches.last().copied().expect("switches");
        assert_eq!(last, CameraStream::Main);
        assert!(at > 650.0 && at < 650.0 + 200.0, "{switches:?}");
        assert_eq!(policy.up_hold(), SwitchConfig::default().up_hold);
    }

    #[test]
    fn splice_keeps_times_monotonic_across_segments() {
        let mut splice = Splice::default();
        assert_eq!(
            splice.map(1_000),
            1_000,
            "the first segment keeps its times"
        );
        assert_eq!(splice.map(41_000), 41_000);
        // A new stream whose clock starts near zero continues 40 ms later.
        splice.start_segment();
        assert_eq!(splice.map(7), 81_000);
        assert_eq!(splice.map(40_007), 121_000);
        // One whose clock is far ahead too.
        splice.start_segment();
        assert_eq!(splice.map(9_000_000_000), 161_000);
        // Going back within a segment does not move the clock back.
        assert_eq!(splice.map(0), 161_000);
        assert!(splice.map(u64::MAX) > 161_000, "no overflow");
        let mut fresh = Splice::default();
        fresh.map(5);
        fresh.start_segment();
        assert_eq!(fresh.map(0), 5 + DEFAULT_FRAME_INTERVAL_US);
    }

    proptest! {
        /// Whatever the targets and measurements: a down-switch comes only after the
        /// target stayed below the threshold for the whole down hold, an up-switch only
        /// after it stayed above for the whole up hold (or there was no target), so two
        /// switches are never closer than the shorter hold.
        #[test]
        fn switches_only_after_a_whole_hold(
            steps in proptest::collection::vec(
                (1..3_000u64, proptest::option::weighted(0.95, 0..8_000_000u64), proptest::option::of(1_000_000..6_000_000u64)),
                1..300,
            ),
        ) {
            let config = SwitchConfig::default();
            let t0 = Instant::now();
            let mut now = t0;
            let mut policy = SwitchPolicy::new(config);
            let mut current = CameraStream::Main;
            // When the condition for each direction last became true, over the inputs seen.
            let mut low_since: Option<Instant> = None;
            let mut high_since: Option<Instant> = None;
            let mut last_switch: Option<Instant> = None;
            let mut main = None;
            for (gap_ms, target, measured) in steps {
                now += Duration::from_millis(gap_ms);
                if measured.is_some() {
                    main = measured;
                }
                let (low, high) = match (target, main) {
                    (Some(t), Some(m)) => (t * 100 < m * config.down_percent, t * 100 >= m * config.up_percent),
                    (None, Some(_)) => (false, true),
                    (_, None) => (false, false),
                };
                low_since = if low { low_since.or(Some(now)) } else { None };
                high_since = if high { high_since.or(Some(now)) } else { None };
                let up_hold = policy.up_hold();
                let next = policy.update(now, target, measured);
                if next != current {
                    match next {
                        CameraStream::Sub => {
                            let since = low_since.expect("down only while the target is low");
                            prop_assert!(now - since >= config.down_hold);
                        }
                        CameraStream::Main => {
                            let since = high_since.expect("up only while the target is high");
                            prop_assert!(target.is_none() || now - since >= up_hold);
                        }
                    }
                    if let (Some(last), Some(_)) = (last_switch, target) {
                        prop_assert!(now - last >= config.down_hold.min(config.up_hold));
                    }
                    last_switch = Some(now);
                    current = next;
                    // The hold restarts after a switch.
                    low_since = low.then_some(now);
                    high_since = high.then_some(now);
                }
            }
        }
    }
}
