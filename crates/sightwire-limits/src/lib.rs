//! Rate limits for Sightwire: one sans-IO token bucket used by every crate that limits a
//! rate (probe pacing in `sightwire-punch`, relay forwarding and binds in
//! `sightwire-relay`, per-source requests in `sightwire-rendezvous`, the under-load
//! detector in `sightwire-session`).
//!
//! What it is not for: it reads no clock (time comes in as `now`), sleeps nowhere and keys
//! nothing by source; a caller that needs one bucket per peer keeps its own bounded table
//! of [`TokenBucket`]s.
//!
//! A bucket holds at most [`Rate::burst`] tokens and gains [`Rate::per_second`] tokens per
//! second. Tokens are counted in billionths, so a refill is exact to the nanosecond and no
//! fraction of a token is lost between calls, however often the bucket is asked. Every
//! computation saturates: huge rates, huge bursts and huge gaps between calls neither
//! overflow nor panic, and a `now` earlier than a previous one adds nothing.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use sightwire_limits::{Rate, TokenBucket};
//!
//! let start = Instant::now();
//! let mut bucket = TokenBucket::new(Rate::new(2, 3), start);
//! assert!(bucket.try_take(start) && bucket.try_take(start) && bucket.try_take(start));
//! assert!(!bucket.try_take(start));
//! assert_eq!(bucket.time_until(start, 1), Some(Duration::from_millis(500)));
//! assert!(bucket.try_take(start + Duration::from_millis(500)));
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

use std::time::{Duration, Instant};

/// Nano-tokens per token: the bucket's fixed-point scale.
const SCALE: u64 = 1_000_000_000;

/// Rate of a bucket: `per_second` tokens refill each second, up to `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: u32,
    /// Bucket size: tokens available at once after idling.
    pub burst: u32,
}

impl Rate {
    /// `per_second` tokens refill each second, up to `burst` at once.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }

    fn capacity(self) -> u64 {
        // At most u32::MAX * 10^9 < u64::MAX.
        u64::from(self.burst) * SCALE
    }
}

/// A token bucket. Starts full; see the crate docs.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    /// Billionths of a token, at most `rate.burst * SCALE`.
    nano_tokens: u64,
    /// When `nano_tokens` was last brought up to date.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            nano_tokens: rate.capacity(),
            updated: now,
        }
    }

    /// The bucket's rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Nano-tokens held at `now`. A `now` before the last update counts as the last
    /// update: time never runs backwards for a bucket.
    fn level(&self, now: Instant) -> u64 {
        let capacity = self.rate.capacity();
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        // `per_second` tokens per second are `per_second` nano-tokens per nanosecond.
        // elapsed < 2^94 and per_second < 2^32, so the product fits; saturate anyway.
        let added = elapsed.saturating_mul(u128::from(self.rate.per_second));
        let room = capacity - self.nano_tokens;
        if added >= u128::from(room) {
            capacity
        } else {
            // added < room <= u64::MAX
            self.nano_tokens + u64::try_from(added).unwrap_or(room)
        }
    }

    /// Brings the bucket up to date at `now`.
    fn refill(&mut self, now: Instant) {
        self.nano_tokens = self.level(now);
        if now > self.updated {
            self.updated = now;
        }
    }

    /// Takes one token at `now`; `false` (and nothing taken) if the bucket holds less.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.try_take_n(now, 1)
    }

    /// Takes `n` tokens at `now`, all or none; `false` if the bucket holds fewer than `n`.
    /// Taking zero tokens always succeeds.
    pub fn try_take_n(&mut self, now: Instant, n: u32) -> bool {
        self.refill(now);
        let needed = u64::from(n) * SCALE;
        if self.nano_tokens < needed {
            return false;
        }
        self.nano_tokens -= needed;
        true
    }

    /// How long from `now` until `n` tokens are available: zero if they are now, `None`
    /// if they never will be (`n` exceeds the burst, or the rate is zero and the bucket
    /// holds fewer than `n`).
    pub fn time_until(&self, now: Instant, n: u32) -> Option<Duration> {
        let needed = u64::from(n) * SCALE;
        if needed > self.rate.capacity() {
            return None;
        }
        let missing = needed.saturating_sub(self.level(now));
        if missing == 0 {
            return Some(Duration::ZERO);
        }
        if self.rate.per_second == 0 {
            return None;
        }
        // Nanoseconds until `missing` nano-tokens accrue at `per_second` nano-tokens/ns.
        Some(Duration::from_nanos(
            missing.div_ceil(u64::from(self.rate.per_second)),
        ))
    }

    /// Whether the bucket is full at `now` (it then carries no information and may be
    /// forgotten: a new bucket would be the same).
    pub fn is_full(&self, now: Instant) -> bool {
        self.level(now) == self.rate.capacity()
    }

    /// Whole tokens available at `now`.
    pub fn tokens(&self, now: Instant) -> u32 {
        // The level is at most burst * SCALE, so the quotient fits u32.
        u32::try_from(self.level(now) / SCALE).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn starts_full_and_empties() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(2, 3), t0);
        assert!(bucket.is_full(t0));
        assert_eq!(bucket.tokens(t0), 3);
        for _ in 0..3 {
            assert!(bucket.try_take(t0));
        }
        assert!(!bucket.try_take(t0));
        assert_eq!(bucket.tokens(t0), 0);
        assert!(!bucket.is_full(t0));
    }

    #[test]
    fn refills_at_the_rate_without_losing_fractions() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(2, 3), t0);
        assert!(bucket.try_take_n(t0, 3));
        assert_eq!(bucket.time_until(t0, 1), Some(Duration::from_millis(500)));
        // Asked every millisecond, the bucket still gains a token every 500 ms.
        let mut now = t0;
        for _ in 0..499 {
            now += Duration::from_millis(1);
            assert!(!bucket.try_take(now));
        }
        assert_eq!(bucket.time_until(now, 1), Some(Duration::from_millis(1)));
        assert!(bucket.try_take(now + Duration::from_millis(1)));
    }

    #[test]
    fn refill_stops_at_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(1000, 5), t0);
        assert!(bucket.try_take_n(t0, 5));
        let later = t0 + Duration::from_secs(3600);
        assert!(bucket.is_full(later));
        assert_eq!(bucket.tokens(later), 5);
        assert!(!bucket.try_take_n(later, 6));
        assert!(bucket.try_take_n(later, 5));
    }

    #[test]
    fn take_n_is_all_or_nothing() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(10, 10), t0);
        assert!(bucket.try_take_n(t0, 7));
        assert!(!bucket.try_take_n(t0, 4));
        assert_eq!(bucket.tokens(t0), 3);
        assert!(bucket.try_take_n(t0, 0));
        assert!(bucket.try_take_n(t0, 3));
    }

    #[test]
    fn time_until_never_when_impossible() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(rate(10, 4), t0);
        assert_eq!(bucket.time_until(t0, 5), None);
        assert_eq!(bucket.time_until(t0, 4), Some(Duration::ZERO));
        let mut frozen = TokenBucket::new(rate(0, 4), t0);
        assert!(frozen.try_take_n(t0, 4));
        assert_eq!(frozen.time_until(t0, 1), None);
        assert!(!frozen.try_take(t0 + Duration::from_secs(1_000_000)));
    }

    #[test]
    fn zero_burst_allows_nothing() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(u32::MAX, 0), t0);
        assert!(!bucket.try_take(t0 + Duration::from_secs(10)));
        assert!(bucket.is_full(t0));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(rate(1, 1), t1);
        assert!(bucket.try_take(t1));
        assert!(!bucket.try_take(t0));
        // The bucket's clock did not move back: t1 + 1 s refills exactly one token.
        assert!(bucket.try_take(t1 + Duration::from_secs(1)));
        assert!(!bucket.try_take(t1 + Duration::from_secs(1)));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let t0 = Instant::now();
        let max = rate(u32::MAX, u32::MAX);
        let mut bucket = TokenBucket::new(max, t0);
        assert!(bucket.try_take_n(t0, u32::MAX));
        assert_eq!(bucket.tokens(t0), 0);
        let far = t0
            .checked_add(Duration::from_secs(1 << 40))
            .unwrap_or(t0 + Duration::from_secs(1 << 30));
        assert!(bucket.is_full(far));
        assert_eq!(bucket.tokens(far), u32::MAX);
        assert_eq!(bucket.time_until(far, u32::MAX), Some(Duration::ZERO));
        assert!(bucket.try_take_n(far, u32::MAX));
        // One token at u32::MAX per second takes under a nanosecond: rounded up to 1 ns.
        assert_eq!(bucket.time_until(far, 1), Some(Duration::from_nanos(1)));
    }
}
