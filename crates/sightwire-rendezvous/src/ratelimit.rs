//! Token buckets keyed by source, identity, session or device ID, with a bounded table
//! whose eviction costs O(1) amortized per request (never a scan of the table).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sightwire_limits::{Rate, TokenBucket};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateRefusal {
    /// The key's bucket is empty; retry after this many milliseconds.
    Empty { retry_after_ms: u64 },
    /// The table of keys is full of active keys.
    TableFull,
}

/// Retry hint when the bucket can never hold a token (a zero rate or burst).
const NEVER_RETRY_AFTER_MS: u64 = 1_000;

/// The rate-limit key of a source: the IPv4 address, or the /64 prefix of an IPv6
/// address (one subscriber usually holds a whole /64).
pub(crate) fn source_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) & !u128::from(u64::MAX)) | 1,
    }
}

/// Token buckets keyed by `K`, at most `capacity` of them.
///
/// Buckets are kept in least-recently-used order (a queue of touches with lazy
/// deletion): when the table is full, an unseen key evicts the least recently used
/// bucket if it has refilled completely (it then carries no information), and is
/// refused otherwise. The bucket used longest ago is the one most likely to be full, so
/// checking it alone is enough; each queue entry is examined at most once, so the cost
/// per request is O(1) amortized, whatever the table size.
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    rate: Rate,
    /// Real seconds per bucket second: 1 for rates per second, 60 for rates per minute.
    scale: u32,
    epoch: Instant,
    buckets: HashMap<K, (TokenBucket, u64)>,
    order: VecDeque<(K, u64)>,
    touches: u64,
    capacity: usize,
    /// Queue entries examined by evictions (for the cost test and metrics).
    examined: u64,
}

impl<K: Copy + Eq + Hash> RateLimiter<K> {
    /// `rate` tokens per second.
    pub(crate) fn new(rate: Rate, capacity: usize, now: Instant) -> Self {
        Self::scaled(rate, capacity, now, 1)
    }

    /// `rate` tokens per minute (`per_second` is then read as per minute).
    pub(crate) fn per_minute(rate: Rate, capacity: usize, now: Instant) -> Self {
        Self::scaled(rate, capacity, now, 60)
    }

    fn scaled(rate: Rate, capacity: usize, now: Instant, scale: u32) -> Self {
        Self {
            rate,
            scale,
            epoch: now,
            buckets: HashMap::new(),
            order: VecDeque::new(),
            touches: 0,
            capacity,
            examined: 0,
        }
    }

    /// The bucket clock: real time divided by `scale` since the epoch.
    fn clock(&self, now: Instant) -> Instant {
        self.epoch + now.saturating_duration_since(self.epoch) / self.scale
    }

    /// Takes one token for `key` at `now`.
    pub(crate) fn check(&mut self, key: K, now: Instant) -> Result<(), RateRefusal> {
        let at = self.clock(now);
        if !self.buckets.contains_key(&key)
            && self.buckets.len() >= self.capacity
            && !self.evict_one(at)
        {
            return Err(RateRefusal::TableFull);
        }
        self.touches += 1;
        let (rate, touch) = (self.rate, self.touches);
        let entry = self
            .buckets
            .entry(key)
            .or_insert_with(|| (TokenBucket::new(rate, at), 0));
        entry.1 = touch;
        let taken = entry.0.try_take(at);
        let wait = entry.0.time_until(at, 1);
        self.order.push_back((key, touch));
        if self.order.len() > 2 * self.buckets.len() + 64 {
            let buckets = &self.buckets;
            self.order
                .retain(|(key, touch)| buckets.get(key).is_some_and(|(_, t)| t == touch));
        }
        if taken {
            return Ok(());
        }
        let retry_after_ms = wait.map_or(NEVER_RETRY_AFTER_MS, |wait| {
            let wait: Duration = wait * self.scale;
            // Round up: retrying after the hint always finds the token.
            u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
        });
        Err(RateRefusal::Empty { retry_after_ms })
    }

    /// Evicts the least recently used bucket if it is full; `false` if it is not.
    fn evict_one(&mut self, at: Instant) -> bool {
        while let Some((key, touch)) = self.order.pop_front() {
            self.examined += 1;
            match self.buckets.get(&key) {
                Some((bucket, current)) if *current == touch => {
                    if bucket.is_full(at) {
                        self.buckets.remove(&key);
                        return true;
                    }
                    self.order.push_front((key, touch));
                    return false;
                }
                // A stale entry (touched again later, or already evicted).
                _ => continue,
            }
        }
        false
    }

    /// Drops buckets that have refilled completely, oldest first, stopping at the first
    /// that has not.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        let at = self.clock(now);
        while !self.buckets.is_empty() && self.evict_one(at) {}
        if self.buckets.is_empty() {
            self.order.clear();
        }
        // Give back the memory of a past burst of keys.
        if self.buckets.capacity() > 4 * self.buckets.len() + 64 {
            self.buckets.shrink_to(2 * self.buckets.len());
            self.order.shrink_to(2 * self.buckets.len());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Queue entries examined by evictions so far.
    #[cfg(test)]
    pub(crate) fn examined(&self) -> u64 {
        self.examined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn ip(text: &str) -> u128 {
        source_key(text.parse().unwrap())
    }

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let rate = Rate::new(2, 3);
        let mut limiter = RateLimiter::new(rate, 10, t0);
        let source = ip("192.0.2.1");
        for _ in 0..3 {
            limiter.check(source, at(t0, 0)).unwrap();
        }
        assert_eq!(
            limiter.check(source, at(t0, 0)),
            Err(RateRefusal::Empty {
                retry_after_ms: 500
            })
        );
        assert_eq!(
            limiter.check(source, at(t0, 499)),
            Err(RateRefusal::Empty { retry_after_ms: 1 })
        );
        limiter.check(source, at(t0, 500)).unwrap();
        // Another source is unaffected.
        limiter.check(ip("192.0.2.2"), at(t0, 500)).unwrap();
    }

    #[test]
    fn per_minute_rates_refill_sixty_times_slower() {
        let t0 = Instant::now();
        let rate = Rate::new(2, 1);
        let mut limiter = RateLimiter::per_minute(rate, 10, t0);
        limiter.check(1u8, t0).unwrap();
        assert_eq!(
            limiter.check(1u8, t0),
            Err(RateRefusal::Empty {
                retry_after_ms: 30_000
            })
        );
        assert!(limiter.check(1u8, at(t0, 29_000)).is_err());
        limiter.check(1u8, at(t0, 30_000)).unwrap();
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let t0 = Instant::now();
        let rate = Rate::new(1, 1);
        let mut limiter = RateLimiter::new(rate, 10, t0);
        limiter.check(ip("2001:db8:1:2::1"), t0).unwrap();
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9"), t0).is_err());
        limiter.check(ip("2001:db8:1:3::1"), t0).unwrap();
    }

    #[test]
    fn source_table_is_bounded_and_idle_sources_are_forgotten() {
        let t0 = Instant::now();
        let rate = Rate::new(1, 2);
        let mut limiter = RateLimiter::new(rate, 2, t0);
        limiter.check(ip("192.0.2.1"), t0).unwrap();
        limiter.check(ip("192.0.2.2"), t0).unwrap();
        assert_eq!(
            limiter.check(ip("192.0.2.3"), t0),
            Err(RateRefusal::TableFull)
        );
        // After the first two refill, the oldest is evicted and a new source fits.
        limiter.check(ip("192.0.2.3"), at(t0, 1_000)).unwrap();
        assert_eq!(limiter.len(), 2);
        limiter.forget_idle(at(t0, 3_000));
        assert_eq!(limiter.len(), 0);
    }

    /// Finding 4: with a full table of active sources, every unseen source used to cost
    /// a scan of the whole table. Now each costs O(1) amortized examined entries.
    #[test]
    fn finding_4_source_table_eviction_is_cheap() {
        let t0 = Instant::now();
        let rate = Rate::new(1, 10);
        let capacity = 10_000;
        let mut limiter = RateLimiter::new(rate, capacity, t0);
        for n in 0..capacity as u128 {
            limiter.check(n, t0).unwrap();
        }
        // The table is full of active sources; 10 000 unseen sources are refused...
        let unseen = 10_000u128;
        for n in 0..unseen {
            assert_eq!(
                limiter.check(1_000_000 + n, t0),
                Err(RateRefusal::TableFull)
            );
        }
        // ...each after examining one entry, not the whole table.
        assert!(
            limiter.examined() <= 2 * unseen as u64,
            "{}",
            limiter.examined()
        );
        // Once the old ones refilled, unseen sources evict them one by one, cheaply.
        let later = at(t0, 10_000);
        for n in 0..unseen {
            limiter.check(2_000_000 + n, later).unwrap();
        }
        assert!(
            limiter.examined() <= 4 * unseen as u64,
            "{}",
            limiter.examined()
        );
        assert_eq!(limiter.len(), capacity);
    }
}
