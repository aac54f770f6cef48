//! What one run comes to, from the frames the camera handed over and the frames the
//! viewer application received: goodput, delivered and decodable fractions, latency.
//! Pure bookkeeping, unit-tested; no I/O.

use std::time::{Duration, Instant};

/// A frame the camera handed to `Device::send_frame`. Its index in the camera's list is
/// the bench's own frame number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentFrame {
    /// When `send_frame` was called.
    pub(crate) at: Instant,
    /// Its `capture_time_us`: microseconds since the camera started, strictly increasing
    /// from frame to frame, so it names the frame at the viewer.
    pub(crate) capture_us: u64,
    /// Payload bytes.
    pub(crate) len: usize,
}

/// A frame the viewer application received (`Event::Frame`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeliveredFrame {
    /// Its `capture_time_us`.
    pub(crate) capture_us: u64,
    /// The keyframe flag the viewer saw.
    pub(crate) keyframe: bool,
    /// Payload bytes the viewer got.
    pub(crate) len: usize,
    /// When the viewer task took the event.
    pub(crate) at: Instant,
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tally {
    /// Frames the camera handed over.
    pub(crate) frames: u64,
    /// Payload bytes the camera handed over.
    pub(crate) bytes: u64,
    /// Distinct frames the viewer received complete.
    pub(crate) delivered: u64,
    /// Delivered frames whose whole chain back to a delivered keyframe was delivered.
    pub(crate) decodable: u64,
    /// Payload bytes of the delivered frames.
    pub(crate) delivered_bytes: u64,
    /// Frames the viewer reported that the camera never sent, or reported twice (should
    /// stay zero).
    pub(crate) bogus: u64,
    /// Send → delivery latency, median and 99th percentile (nearest rank).
    pub(crate) latency_p50: Option<Duration>,
    /// See `latency_p50`.
    pub(crate) latency_p99: Option<Duration>,
}

impl Tally {
    /// Counts `delivered` against `sent` (in sending order, capture times strictly
    /// increasing). Order of `delivered` does not matter.
    pub(crate) fn new(sent: &[SentFrame], delivered: &[DeliveredFrame]) -> Tally {
        // The frame number of each delivered frame, from its capture time.
        let mut frames: Vec<(Option<u64>, &DeliveredFrame)> = delivered
            .iter()
            .map(|f| {
                let index = sent
                    .binary_search_by_key(&f.capture_us, |s| s.capture_us)
                    .ok()
                    .map(|i| i as u64);
                (index, f)
            })
            .collect();
        frames.sort_by_key(|(index, _)| *index);
        let mut tally = Tally {
            frames: sent.len() as u64,
            bytes: sent.iter().map(|f| f.len as u64).sum(),
            delivered: 0,
            decodable: 0,
            delivered_bytes: 0,
            bogus: 0,
            latency_p50: None,
            latency_p99: None,
        };
        let mut latencies = Vec::with_capacity(frames.len());
        // Index of the last decodable frame: the next one decodes if it follows it
        // directly, or if it is a keyframe.
        let mut chain: Option<u64> = None;
        let mut previous: Option<u64> = None;
        for (index, frame) in frames {
            let Some((index, sent_frame)) =
                index.and_then(|i| Some((i, sent.get(usize::try_from(i).ok()?)?)))
            else {
                tally.bogus += 1;
                continue;
            };
            if previous == Some(index) {
                tally.bogus += 1;
                continue;
            }
            previous = Some(index);
            tally.delivered += 1;
            tally.delivered_bytes += frame.len as u64;
            latencies.push(frame.at.saturating_duration_since(sent_frame.at));
            let follows = index
                .checked_sub(1)
                .is_some_and(|before| chain == Some(before));
            if frame.keyframe || follows {
                tally.decodable += 1;
                chain = Some(index);
            } else {
                chain = None;
            }
        }
        latencies.sort_unstable();
        tally.latency_p50 = percentile(&latencies, 50);
        tally.latency_p99 = percentile(&latencies, 99);
        tally
    }

    /// Percentage of the camera's frames delivered.
    pub(crate) fn delivered_percent(&self) -> f64 {
        percent(self.delivered, self.frames)
    }

    /// Percentage of the camera's frames delivered and decodable.
    pub(crate) fn decodable_percent(&self) -> f64 {
        percent(self.decodable, self.frames)
    }
}

/// `part` of `whole` in percent; 0 when `whole` is 0.
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p` % of
/// the values at or below it.
pub(crate) fn percentile(sorted: &[Duration], p: u32) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(n: usize, t0: Instant) -> Vec<SentFrame> {
        (0..n)
            .map(|i| SentFrame {
                at: t0 + Duration::from_millis(i as u64 * 10),
                capture_us: i as u64 * 10_000,
                len: 100,
            })
            .collect()
    }

    fn got(index: u64, gop: u64, t0: Instant, latency_ms: u64) -> DeliveredFrame {
        DeliveredFrame {
            capture_us: index * 10_000,
            keyframe: index.is_multiple_of(gop),
            len: 100,
            at: t0 + Duration::from_millis(index * 10 + latency_ms),
        }
    }

    #[test]
    fn everything_delivered_is_decodable() {
        let t0 = Instant::now();
        let sent = sent(60, t0);
        let delivered: Vec<_> = (0..60).map(|i| got(i, 30, t0, 5)).collect();
        let tally = Tally::new(&sent, &delivered);
        assert_eq!(tally.delivered, 60);
        assert_eq!(tally.decodable, 60);
        assert_eq!(tally.delivered_bytes, 6000);
        assert_eq!(tally.latency_p50, Some(Duration::from_millis(5)));
        assert_eq!(tally.delivered_percent(), 100.0);
    }

    #[test]
    fn a_gap_breaks_the_chain_until_the_next_keyframe() {
        let t0 = Instant::now();
        let sent = sent(20, t0);
        // GOP of 5: frame 2 lost; 3 and 4 arrive but cannot decode; 5 is a keyframe.
        let delivered: Vec<_> = (0..20)
            .filter(|&i| i != 2)
            .map(|i| got(i, 5, t0, 1))
            .collect();
        let tally = Tally::new(&sent, &delivered);
        assert_eq!(tally.delivered, 19);
        assert_eq!(tally.decodable, 17);
        assert_eq!(tally.decodable_percent(), 85.0);
    }

    #[test]
    fn a_lost_keyframe_spoils_its_whole_gop() {
        let t0 = Instant::now();
        let sent = sent(10, t0);
        let delivered: Vec<_> = (1..10).map(|i| got(i, 5, t0, 1)).collect();
        let tally = Tally::new(&sent, &delivered);
        assert_eq!(tally.delivered, 9);
        // Frames 1-4 have no keyframe before them; 5-9 decode.
        assert_eq!(tally.decodable, 5);
    }

    #[test]
    fn order_does_not_matter_and_strangers_are_counted() {
        let t0 = Instant::now();
        let sent = sent(4, t0);
        let mut delivered: Vec<_> = (0..4).rev().map(|i| got(i, 4, t0, 1)).collect();
        delivered.push(got(99, 4, t0, 1));
        delivered.push(got(1, 4, t0, 1));
        let tally = Tally::new(&sent, &delivered);
        assert_eq!((tally.delivered, tally.decodable, tally.bogus), (4, 4, 2));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&values, 99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&values[..1], 99), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn nothing_sent_is_zero_percent() {
        let tally = Tally::new(&[], &[]);
        assert_eq!(tally.delivered_percent(), 0.0);
        assert_eq!(tally.latency_p99, None);
    }
}
