//! Throttling of failed password logins on the device: per-viewer-key backoff in a
//! bounded table, and a global budget of failed guesses.

use std::time::{Duration, Instant};

use sightwire_limits::{Rate, TokenBucket};
use subtle::ConstantTimeEq;

use crate::noise::PublicKey;

/// Failed logins a viewer key may make without waiting.
pub const FREE_FAILURES_PER_VIEWER: u32 = 3;
/// Wait after the first failure beyond [`FREE_FAILURES_PER_VIEWER`]; each further failure
/// doubles it, up to [`VIEWER_BACKOFF_CAP`].
pub const VIEWER_BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest wait imposed on one viewer key.
pub const VIEWER_BACKOFF_CAP: Duration = Duration::from_secs(60 * 60);
/// A viewer key's failures are forgotten this long after its last one.
pub const VIEWER_FAILURES_FORGOTTEN_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Viewer keys whose failures are tracked at once; when full, the key whose last failure
/// is oldest is forgotten (LRU).
pub const MAX_THROTTLED_VIEWERS: usize = 256;
/// Failed guesses the global budget allows in a burst (from a full budget).
pub const GLOBAL_FAILURE_BURST: u32 = 10;
/// The global budget regains one failed guess per this interval: at most
/// `86 400 / 60` = 1,440 failed guesses a day from everyone together, plus the
/// [`GLOBAL_FAILURE_BURST`].
pub const GLOBAL_FAILURE_INTERVAL: Duration = Duration::from_secs(60);

/// Tokens one failure costs in the global bucket: the bucket refills one token a second
/// (its finest integer rate), so a failure costs [`GLOBAL_FAILURE_INTERVAL`] in seconds.
const TOKENS_PER_FAILURE: u32 = GLOBAL_FAILURE_INTERVAL.as_secs() as u32;
const GLOBAL_RATE: Rate = Rate::new(1, GLOBAL_FAILURE_BURST * TOKENS_PER_FAILURE);

/// Which limit refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThrottleScope {
    /// This viewer key failed too often recently.
    Viewer,
    /// The device-wide budget of failed guesses is spent: no password login from a key
    /// without a clean record may be tried until it refills.
    Global,
}

/// A login refused by the throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password login throttled ({scope:?}); retry after {retry_after:?}")]
#[non_exhaustive]
pub struct Throttled {
    /// How long from `now` until the login may be tried.
    pub retry_after: Duration,
    /// Which limit refused it.
    pub scope: ThrottleScope,
}

#[derive(Debug, Clone)]
struct Entry {
    key: PublicKey,
    failures: u32,
    last_failure: Instant,
}

impl Entry {
    /// When this key may try again (`None`: failures still free).
    fn blocked_until(&self) -> Option<Instant> {
        let over = self.failures.checked_sub(FREE_FAILURES_PER_VIEWER)?;
        let doublings = over.checked_sub(1)?.min(31);
        let wait = VIEWER_BACKOFF_BASE
            .saturating_mul(1u32 << doublings)
            .min(VIEWER_BACKOFF_CAP);
        Some(self.last_failure + wait)
    }

    fn forgotten(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_failure) >= VIEWER_FAILURES_FORGOTTEN_AFTER
    }
}

/// Throttles failed password logins on a device (sans-IO: time comes in as `now`).
///
/// Two limits, both only ever *delaying* a login, never locking it for good:
///
/// - **Per viewer key:** [`FREE_FAILURES_PER_VIEWER`] failures are free; after that each
///   failure makes the key wait, starting at [`VIEWER_BACKOFF_BASE`] and doubling up to
///   [`VIEWER_BACKOFF_CAP`]. A success, or [`VIEWER_FAILURES_FORGOTTEN_AFTER`] without a
///   failure, clears the key. At most [`MAX_THROTTLED_VIEWERS`] keys are tracked (least
///   recently failed evicted). Static keys cost nothing to make, so this stops a
///   misbehaving client, not an attacker; it keeps one mistyping owner from spending the
///   global budget.
/// - **Global:** a budget of [`GLOBAL_FAILURE_BURST`] failed guesses refilling one per
///   [`GLOBAL_FAILURE_INTERVAL`] bounds what everyone together can try: at most 1,440
///   failed guesses a day (plus the burst). The trade-off: a stranger can spend the
///   budget and so delay *new* password logins (by at most one interval per guess he
///   makes), but he cannot lock anyone out for good, and keys the device already trusts
///   never need a password.
///
/// **Trusted keys bypass the throttle — that is the caller's job:** check the trusted list
/// first and run a password login only for other keys.
///
/// Use with the PAKE login ([`crate::login::DeviceLogin`]): call [`LoginThrottle::check`]
/// before `respond`, and [`LoginThrottle::record_failure`] as soon as `respond` has
/// produced msg2 — msg2 already tells its sender whether its guess was right, so an
/// attempt whose msg3 never comes must count. On a successful `finish`, call
/// [`LoginThrottle::record_success`]: the key's backoff is cleared, while the global
/// guess it spent stays spent (a right password costs one of the day's 1,440).
#[derive(Debug, Clone, Default)]
pub struct LoginThrottle {
    entries: Vec<Entry>,
    /// Created full at first use.
    global: Option<TokenBucket>,
}

impl LoginThrottle {
    /// A throttle with no failures recorded and a full global budget.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&self, now: Instant, key: &PublicKey) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| bool::from(e.key.as_bytes().ct_eq(key.as_bytes())))
            .filter(|e| !e.forgotten(now))
    }

    /// Whether `viewer_key` may try a password login at `now`.
    pub fn check(&self, now: Instant, viewer_key: &PublicKey) -> Result<(), Throttled> {
        if let Some(until) = self.entry(now, viewer_key).and_then(Entry::blocked_until)
            && now < until
        {
            return Err(Throttled {
                retry_after: until - now,
                scope: ThrottleScope::Viewer,
            });
        }
        if let Some(global) = &self.global {
            // The burst is a multiple of the cost, so the wait is always finite.
            let wait = global
                .time_until(now, TOKENS_PER_FAILURE)
                .unwrap_or(GLOBAL_FAILURE_INTERVAL);
            if !wait.is_zero() {
                return Err(Throttled {
                    retry_after: wait,
                    scope: ThrottleScope::Global,
                });
            }
        }
        Ok(())
    }

    /// Records a failed (or not yet confirmed) login by `viewer_key` at `now`.
    pub fn record_failure(&mut self, now: Instant, viewer_key: &PublicKey) {
        let global = self
            .global
            .get_or_insert_with(|| TokenBucket::new(GLOBAL_RATE, now));
        if !global.try_take_n(now, TOKENS_PER_FAILURE) {
            // Only if the caller skipped `check`: empty what is left.
            let left = global.tokens(now);
            let _ = global.try_take_n(now, left);
        }
        self.entries.retain(|e| !e.forgotten(now));
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| bool::from(e.key.as_bytes().ct_eq(viewer_key.as_bytes())))
        {
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            return;
        }
        if self.entries.len() >= MAX_THROTTLED_VIEWERS
            && let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_failure)
                .map(|(i, _)| i)
        {
            self.entries.swap_remove(oldest);
        }
        self.entries.push(Entry {
            key: *viewer_key,
            failures: 1,
            last_failure: now,
        });
    }

    /// Records a successful login by `viewer_key`: its failures are forgotten.
    pub fn record_success(&mut self, _now: Instant, viewer_key: &PublicKey) {
        self.entries
            .retain(|e| !bool::from(e.key.as_bytes().ct_eq(viewer_key.as_bytes())));
    }

    /// Viewer keys with failures tracked (at most [`MAX_THROTTLED_VIEWERS`]).
    pub fn tracked_viewers(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> PublicKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        PublicKey::from_bytes(k)
    }

    /// Fails `viewer` `n` times, each as soon as the throttle allows; returns the time.
    fn fail_times(t: &mut LoginThrottle, mut now: Instant, viewer: &PublicKey, n: u32) -> Instant {
        for _ in 0..n {
            if let Err(e) = t.check(now, viewer) {
                now += e.retry_after;
            }
            assert_eq!(t.check(now, viewer), Ok(()));
            t.record_failure(now, viewer);
        }
        now
    }

    #[test]
    fn free_failures_then_backoff_doubles_up_to_the_cap() {
        let mut t = LoginThrottle::new();
        let start = Instant::now();
        let v = key(1);
        for _ in 0..FREE_FAILURES_PER_VIEWER {
            assert_eq!(t.check(start, &v), Ok(()));
            t.record_failure(start, &v);
        }
        // Third failure still free; the budget (10) is not spent.
        assert_eq!(t.check(start, &v), Ok(()));
        t.record_failure(start, &v);
        let mut expected = VIEWER_BACKOFF_BASE;
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..12 {
            let e = t.check(now, &v).expect_err("backing off");
            assert_eq!(e.scope, ThrottleScope::Viewer);
            assert_eq!(e.retry_after, expected);
            waits.push(e.retry_after);
            now += e.retry_after;
            t.check(now, &v).expect("allowed after the wait");
            t.record_failure(now, &v);
            expected = (expected * 2).min(VIEWER_BACKOFF_CAP);
        }
        assert_eq!(waits[1], waits[0] * 2);
        assert_eq!(*waits.last().unwrap(), VIEWER_BACKOFF_CAP);
        // Other keys are not delayed by this one's backoff.
        assert_eq!(t.check(now, &key(2)), Ok(()));
        // A success clears the key.
        t.record_success(now, &v);
        assert_eq!(t.check(now, &v), Ok(()));
    }

    #[test]
    fn failures_are_forgotten_after_a_day() {
        let mut t = LoginThrottle::new();
        let start = Instant::now();
        let v = key(1);
        let now = fail_times(&mut t, start, &v, FREE_FAILURES_PER_VIEWER + 1);
        assert!(t.check(now, &v).is_err());
        let later = now + VIEWER_FAILURES_FORGOTTEN_AFTER;
        assert_eq!(t.check(later, &v), Ok(()));
        t.record_failure(later, &v);
        assert_eq!(t.check(later, &v), Ok(()), "counting starts again");
    }

    #[test]
    fn global_budget_bounds_guesses_per_day() {
        let mut t = LoginThrottle::new();
        let start = Instant::now();
        // Fresh keys every time (keys are free): only the global budget holds.
        let mut now = start;
        let mut failures = 0u32;
        let day = Duration::from_secs(24 * 60 * 60);
        let mut i = 0;
        while now < start + day {
            match t.check(now, &key(i)) {
                Ok(()) => {
                    t.record_failure(now, &key(i));
                    failures += 1;
                    i += 1;
                }
                Err(e) => {
                    assert_eq!(e.scope, ThrottleScope::Global);
                    assert!(e.retry_after <= GLOBAL_FAILURE_INTERVAL);
                    now += e.retry_after;
                }
            }
        }
        let per_day = u32::try_from(day.as_secs() / GLOBAL_FAILURE_INTERVAL.as_secs()).unwrap();
        assert_eq!(per_day, 1_440);
        assert!(failures <= per_day + GLOBAL_FAILURE_BURST, "{failures}");
        assert!(failures >= per_day, "{failures}");
        // The burst: from a full budget, exactly GLOBAL_FAILURE_BURST at once.
        let mut t = LoginThrottle::new();
        for i in 0..GLOBAL_FAILURE_BURST {
            assert_eq!(t.check(start, &key(i)), Ok(()));
            t.record_failure(start, &key(i));
        }
        let e = t.check(start, &key(999)).expect_err("budget spent");
        assert_eq!(e.scope, ThrottleScope::Global);
        assert_eq!(e.retry_after, GLOBAL_FAILURE_INTERVAL);
        // A success does not refund the budget.
        t.record_success(start, &key(0));
        assert!(t.check(start, &key(0)).is_err());
        assert_eq!(t.check(start + GLOBAL_FAILURE_INTERVAL, &key(999)), Ok(()));
    }

    #[test]
    fn table_is_bounded_and_evicts_the_least_recently_failed() {
        let mut t = LoginThrottle::new();
        let start = Instant::now();
        let owner = key(u32::MAX);
        t.record_failure(start, &owner);
        for i in 0..MAX_THROTTLED_VIEWERS as u32 * 2 {
            t.record_failure(start + Duration::from_millis(u64::from(i) + 1), &key(i));
            assert!(t.tracked_viewers() <= MAX_THROTTLED_VIEWERS);
        }
        assert_eq!(t.tracked_viewers(), MAX_THROTTLED_VIEWERS);
        // The oldest entries (the owner's first) were evicted; the newest remain.
        assert!(t.entry(start, &owner).is_none());
        assert!(t.entry(start, &key(0)).is_none());
        let newest = key(MAX_THROTTLED_VIEWERS as u32 * 2 - 1);
        assert_eq!(t.entry(start, &newest).map(|e| e.failures), Some(1));
    }

    #[test]
    fn a_failure_without_check_empties_the_budget_and_never_panics() {
        let mut t = LoginThrottle::new();
        let start = Instant::now();
        for i in 0..100 {
            t.record_failure(start, &key(i % 3));
        }
        assert!(t.check(start, &key(50)).is_err());
        // Huge gaps and time running backwards are fine.
        let far = start + Duration::from_secs(10 * 365 * 24 * 60 * 60);
        assert_eq!(t.check(far, &key(0)), Ok(()));
        t.record_failure(far, &key(0));
        let _ = t.check(start, &key(0));
        t.record_failure(start, &key(0));
    }
}
