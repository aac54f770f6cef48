//! Per-source token buckets with a bounded source table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use sightwire_limits::{Rate, TokenBucket};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateRefusal {
    /// The source's bucket is empty; retry after this many milliseconds.
    Empty { retry_after_ms: u64 },
    /// The table of sources is full of active sources.
    TableFull,
}

/// Retry hint when the bucket can never hold a token (a zero rate or burst).
const NEVER_RETRY_AFTER_MS: u64 = 1_000;

/// Token buckets keyed by source: the IPv4 address, or the /64 prefix of an IPv6 address
/// (one subscriber usually holds a whole /64).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: Rate,
    buckets: HashMap<u128, TokenBucket>,
    capacity: usize,
}

pub(crate) fn source_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) & !u128::from(u64::MAX)) | 1,
    }
}

impl RateLimiter {
    pub(crate) fn new(rate: Rate, capacity: usize) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
            capacity,
        }
    }

    /// Takes one token for `ip` at `now`.
    pub(crate) fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), RateRefusal> {
        let key = source_key(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.capacity {
            self.forget_idle(now);
            if self.buckets.len() >= self.capacity {
                return Err(RateRefusal::TableFull);
            }
        }
        let rate = self.rate;
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate, now));
        if bucket.try_take(now) {
            return Ok(());
        }
        let retry_after_ms = bucket
            .time_until(now, 1)
            .map_or(NEVER_RETRY_AFTER_MS, |wait| {
                // Round up: retrying after the hint always finds the token.
                u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
            });
        Err(RateRefusal::Empty { retry_after_ms })
    }

    /// Drops buckets that have refilled completely: they carry no information.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        self.buckets.retain(|_, bucket| !bucket.is_full(now));
        // Give back the memory of a past burst of sources.
        if self.buckets.capacity() > 4 * self.buckets.len() + 64 {
            self.buckets.shrink_to(2 * self.buckets.len());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(
            Rate {
                per_second: 2,
                burst: 3,
            },
            10,
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            limiter.check(ip, at(t0, 0)).unwrap();
        }
        assert_eq!(
            limiter.check(ip, at(t0, 0)),
            Err(RateRefusal::Empty {
                retry_after_ms: 500
            })
        );
        assert_eq!(
            limiter.check(ip, at(t0, 499)),
            Err(RateRefusal::Empty { retry_after_ms: 1 })
        );
        limiter.check(ip, at(t0, 500)).unwrap();
        // Another source is unaffected.
        limiter
            .check("192.0.2.2".parse().unwrap(), at(t0, 500))
            .unwrap();
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(
            Rate {
                per_second: 1,
                burst: 1,
            },
            10,
        );
        limiter
            .check("2001:db8:1:2::1".parse().unwrap(), at(t0, 0))
            .unwrap();
        assert!(
            limiter
                .check("2001:db8:1:2:ffff::9".parse().unwrap(), at(t0, 0))
                .is_err()
        );
        limiter
            .check("2001:db8:1:3::1".parse().unwrap(), at(t0, 0))
            .unwrap();
    }

    #[test]
    fn source_table_is_bounded_and_idle_sources_are_forgotten() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(
            Rate {
                per_second: 1,
                burst: 2,
            },
            2,
        );
        limiter
            .check("192.0.2.1".parse().unwrap(), at(t0, 0))
            .unwrap();
        limiter
            .check("192.0.2.2".parse().unwrap(), at(t0, 0))
            .unwrap();
        assert_eq!(
            limiter.check("192.0.2.3".parse().unwrap(), at(t0, 0)),
            Err(RateRefusal::TableFull)
        );
        // After the first two refill they are forgotten and a new source fits.
        limiter
            .check("192.0.2.3".parse().unwrap(), at(t0, 1_000))
            .unwrap();
        assert_eq!(limiter.len(), 1);
    }
}
