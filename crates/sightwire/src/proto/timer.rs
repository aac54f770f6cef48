//! One table of deadlines per owner (endpoint, watch, connection), indexed by a timer
//! enum, as quinn-proto's `TimerTable`: setting, stopping and finding the next deadline
//! are the same few lines for every timer, so none can be forgotten in one of two lists.

use std::time::Instant;

/// A kind of timer: a small enum whose variants index a [`TimerTable`].
pub(crate) trait Timer: Copy + 'static {
    /// Every variant, in index order.
    const ALL: &'static [Self];
    /// The variant's index into the table (`< ALL.len()`).
    fn index(self) -> usize;
}

/// Deadlines for every variant of `T`. `N` must be `T::ALL.len()`.
#[derive(Debug, Clone)]
pub(crate) struct TimerTable<T, const N: usize> {
    deadlines: [Option<Instant>; N],
    _kind: std::marker::PhantomData<T>,
}

impl<T: Timer, const N: usize> Default for TimerTable<T, N> {
    fn default() -> Self {
        debug_assert_eq!(T::ALL.len(), N);
        Self {
            deadlines: [None; N],
            _kind: std::marker::PhantomData,
        }
    }
}

impl<T: Timer, const N: usize> TimerTable<T, N> {
    /// Arms `timer` for `at`, replacing any earlier setting.
    pub(crate) fn set(&mut self, timer: T, at: Instant) {
        if let Some(slot) = self.deadlines.get_mut(timer.index()) {
            *slot = Some(at);
        }
    }

    /// Disarms `timer`.
    pub(crate) fn stop(&mut self, timer: T) {
        if let Some(slot) = self.deadlines.get_mut(timer.index()) {
            *slot = None;
        }
    }

    /// When `timer` fires, if armed.
    pub(crate) fn get(&self, timer: T) -> Option<Instant> {
        self.deadlines.get(timer.index()).copied().flatten()
    }

    /// Whether `timer` is armed.
    pub(crate) fn is_set(&self, timer: T) -> bool {
        self.get(timer).is_some()
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Disarms and returns one timer whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<T> {
        let (index, slot) = self
            .deadlines
            .iter_mut()
            .enumerate()
            .find(|(_, d)| d.is_some_and(|d| d <= now))?;
        *slot = None;
        T::ALL.get(index).copied()
    }
}

/// Declares a timer enum and its [`Timer`] impl.
macro_rules! timers {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $crate::proto::timer::Timer for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}
pub(crate) use timers;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    timers! {
        enum Kind { A, B, C }
    }

    #[test]
    fn earliest_is_next_and_expired_timers_pop_once() {
        let t0 = Instant::now();
        let mut table: TimerTable<Kind, 3> = TimerTable::default();
        assert_eq!(table.next(), None);
        table.set(Kind::B, t0 + Duration::from_secs(2));
        table.set(Kind::C, t0 + Duration::from_secs(1));
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(table.pop_expired(t0), None);
        assert_eq!(
            table.pop_expired(t0 + Duration::from_secs(1)),
            Some(Kind::C)
        );
        assert_eq!(table.pop_expired(t0 + Duration::from_secs(1)), None);
        table.stop(Kind::B);
        assert_eq!(table.next(), None);
        assert!(!table.is_set(Kind::A));
    }
}
