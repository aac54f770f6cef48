//! Properties of the token bucket over random rates, gaps and takes.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use sightwire_limits::{Rate, TokenBucket};

fn arb_rate() -> impl Strategy<Value = Rate> {
    (
        prop_oneof![0..=10u32, 0..=10_000u32, Just(u32::MAX), any::<u32>()],
        prop_oneof![0..=10u32, 0..=10_000u32, Just(u32::MAX), any::<u32>()],
    )
        .prop_map(|(per_second, burst)| Rate::new(per_second, burst))
}

/// Steps: a gap in nanoseconds (mostly short, sometimes huge) and how many to take.
fn arb_steps() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec(
        (
            prop_oneof![
                0..=1_000u64,
                0..=2_000_000_000u64,
                Just(1u64 << 62),
                any::<u64>()
            ],
            prop_oneof![0..=3u32, any::<u32>()],
        ),
        0..64,
    )
}

proptest! {
    /// Never more than `burst` tokens, and over any run no more is taken than the burst
    /// plus what the rate allows for the elapsed time.
    #[test]
    fn never_more_than_burst_and_rate_respected(rate in arb_rate(), steps in arb_steps()) {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate, start);
        let mut now = start;
        let mut taken: u128 = 0;
        for (gap, n) in steps {
            // Instants this far out may not be representable: stay where we are then.
            now = now.checked_add(Duration::from_nanos(gap)).unwrap_or(now);
            let before = bucket.tokens(now);
            prop_assert!(before <= rate.burst);
            if bucket.try_take_n(now, n) {
                prop_assert!(n <= before);
                prop_assert_eq!(bucket.tokens(now), before - n);
                taken += u128::from(n);
            } else {
                prop_assert!(n > before);
                prop_assert_eq!(bucket.tokens(now), before);
            }
            prop_assert!(bucket.tokens(now) <= rate.burst);
            let elapsed = now.duration_since(start).as_nanos();
            let allowed = u128::from(rate.burst)
                + elapsed * u128::from(rate.per_second) / 1_000_000_000;
            prop_assert!(taken <= allowed, "taken {} allowed {}", taken, allowed);
        }
    }

    /// A greedy taker over a long run gets the rate: nothing accrued is lost to rounding.
    #[test]
    fn greedy_taker_gets_the_rate(
        per_second in 1..=1_000u32,
        burst in 1..=100u32,
        gap_ns in 1..=50_000_000u64,
        steps in 1..=2_000u32,
    ) {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(Rate::new(per_second, burst), start);
        let mut now = start;
        let mut taken: u128 = 0;
        let n = bucket.tokens(now);
        prop_assert!(bucket.try_take_n(now, n));
        for _ in 0..steps {
            now += Duration::from_nanos(gap_ns);
            let n = bucket.tokens(now);
            prop_assert!(bucket.try_take_n(now, n));
            taken += u128::from(n);
        }
        let elapsed = now.duration_since(start).as_nanos();
        let accrued = elapsed * u128::from(per_second) / 1_000_000_000;
        // Only capping at the burst can lose tokens, and it cannot when the fraction of a
        // token left over plus what one step accrues stays within the burst.
        let step = u128::from(gap_ns) * u128::from(per_second);
        if step + 1_000_000_000 <= u128::from(burst) * 1_000_000_000 {
            prop_assert_eq!(taken, accrued);
        } else {
            prop_assert!(taken <= accrued);
        }
    }

    /// `time_until` is exact: `n` tokens are there after that long, not a nanosecond
    /// before.
    #[test]
    fn time_until_is_exact(rate in arb_rate(), steps in arb_steps(), n in 0..=20u32) {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(rate, start);
        let mut now = start;
        for (gap, take) in steps {
            now = now.checked_add(Duration::from_nanos(gap % 1_000_000_000)).unwrap_or(now);
            let _ = bucket.try_take_n(now, take);
        }
        match bucket.time_until(now, n) {
            None => {
                prop_assert!(n > rate.burst || rate.per_second == 0);
                prop_assert!(n > bucket.tokens(now));
            }
            Some(wait) => {
                let Some(ready) = now.checked_add(wait) else { return Ok(()) };
                prop_assert!(bucket.clone().try_take_n(ready, n));
                if !wait.is_zero() {
                    let early = ready - Duration::from_nanos(1);
                    prop_assert!(!bucket.clone().try_take_n(early, n));
                }
            }
        }
    }
}
