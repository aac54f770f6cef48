//! Per-source token buckets with a bounded source table.

use std::collections::HashMap;
use std::net::IpAddr;

/// Rate of one bucket: `per_second` tokens refill each second up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: u32,
    /// Bucket size (requests allowed at once after idling).
    pub burst: u32,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateRefusal {
    /// The source's bucket is empty; retry after this many milliseconds.
    Empty { retry_after_ms: u64 },
    /// The table of sources is full of active sources.
    TableFull,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a token.
    milli_tokens: u64,
    updated_ms: u64,
}

/// Token buckets keyed by source: the IPv4 address, or the /64 prefix of an IPv6 address
/// (one subscriber usually holds a whole /64).
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: Rate,
    buckets: HashMap<u128, Bucket>,
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

    fn full_milli(&self) -> u64 {
        u64::from(self.rate.burst) * 1000
    }

    fn refill(rate: Rate, full: u64, bucket: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(bucket.updated_ms);
        let added = elapsed.saturating_mul(u64::from(rate.per_second));
        bucket.milli_tokens = bucket.milli_tokens.saturating_add(added).min(full);
        bucket.updated_ms = now_ms;
    }

    /// Takes one token for `ip` at `now_ms`.
    pub(crate) fn check(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), RateRefusal> {
        let key = source_key(ip);
        let full = self.full_milli();
        let rate = self.rate;
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.capacity {
            self.forget_idle(now_ms);
            if self.buckets.len() >= self.capacity {
                return Err(RateRefusal::TableFull);
            }
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            milli_tokens: full,
            updated_ms: now_ms,
        });
        Self::refill(rate, full, bucket, now_ms);
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            Ok(())
        } else {
            let missing = 1000 - bucket.milli_tokens;
            let per_second = u64::from(rate.per_second).max(1);
            Err(RateRefusal::Empty {
                retry_after_ms: missing.div_ceil(per_second),
            })
        }
    }

    /// Drops buckets that have refilled completely: they carry no information.
    pub(crate) fn forget_idle(&mut self, now_ms: u64) {
        let full = self.full_milli();
        let rate = self.rate;
        self.buckets.retain(|_, bucket| {
            Self::refill(rate, full, bucket, now_ms);
            bucket.milli_tokens < full
        });
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
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let mut limiter = RateLimiter::new(
            Rate {
                per_second: 2,
                burst: 3,
            },
            10,
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            limiter.check(ip, 0).unwrap();
        }
        assert_eq!(
            limiter.check(ip, 0),
            Err(RateRefusal::Empty {
                retry_after_ms: 500
            })
        );
        assert_eq!(
            limiter.check(ip, 499),
            Err(RateRefusal::Empty { retry_after_ms: 1 })
        );
        limiter.check(ip, 500).unwrap();
        // Another source is unaffected.
        limiter.check("192.0.2.2".parse().unwrap(), 500).unwrap();
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let mut limiter = RateLimiter::new(
            Rate {
                per_second: 1,
                burst: 1,
            },
            10,
        );
        limiter
            .check("2001:db8:1:2::1".parse().unwrap(), 0)
            .unwrap();
        assert!(
            limiter
                .check("2001:db8:1:2:ffff::9".parse().unwrap(), 0)
                .is_err()
        );
        limiter
            .check("2001:db8:1:3::1".parse().unwrap(), 0)
            .unwrap();
    }

    #[test]
    fn source_table_is_bounded_and_idle_sources_are_forgotten() {
        let mut limiter = RateLimiter::new(
            Rate {
                per_second: 1,
                burst: 2,
            },
            2,
        );
        limiter.check("192.0.2.1".parse().unwrap(), 0).unwrap();
        limiter.check("192.0.2.2".parse().unwrap(), 0).unwrap();
        assert_eq!(
            limiter.check("192.0.2.3".parse().unwrap(), 0),
            Err(RateRefusal::TableFull)
        );
        // After the first two refill they are forgotten and a new source fits.
        limiter.check("192.0.2.3".parse().unwrap(), 1_000).unwrap();
        assert_eq!(limiter.len(), 1);
    }
}
