//! Sliding replay window over transport counters (RFC 6479 style ring of bit blocks).
//!
//! Used in the safe order: [`ReplayWindow::check`] (cheap, before any crypto), then
//! authenticate, then [`ReplayWindow::mark`]. A forged packet therefore never moves the
//! window, and a replayed one never costs a decryption.

use thiserror::Error;

/// Number of 64-bit blocks in the ring of [`ReplayWindow`].
const WIDE_BLOCKS: usize = 32;
/// Number of 64-bit blocks in the ring of [`CompactReplayWindow`].
const COMPACT_BLOCKS: usize = 2;
/// Bits per block.
const BLOCK_BITS: u64 = 64;
/// How far behind the highest counter seen a packet may arrive and still be accepted
/// by a [`ReplayWindow`] (1984 counters: the ring minus the block that is being filled).
pub const REPLAY_WINDOW: u64 = (WIDE_BLOCKS as u64 - 1) * BLOCK_BITS;
/// The same for a [`CompactReplayWindow`] (64 counters, IPsec's default): enough for a
/// signaling session, which never has more than a few packets in flight.
pub const COMPACT_REPLAY_WINDOW: u64 = (COMPACT_BLOCKS as u64 - 1) * BLOCK_BITS;
/// Counters at or above this value are never accepted, and never sent
/// (WireGuard's `REJECT_AFTER_MESSAGES`: 2^64 − 2^13 − 1).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Why the window refused a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The counter was already accepted once.
    #[error("counter {0} was already received")]
    Duplicate(u64),
    /// The counter is further behind the newest accepted counter than the window reaches.
    #[error("counter {counter} is older than the window (newest {newest})")]
    TooOld {
        /// The refused counter.
        counter: u64,
        /// The newest counter accepted so far.
        newest: u64,
    },
    /// The counter is at or above [`REJECT_AFTER_MESSAGES`].
    #[error("counter {0} is beyond the key's message limit")]
    Exhausted(u64),
}

/// The set of counters already accepted on one keypair: a ring of `BLOCKS` 64-bit
/// blocks, reaching `(BLOCKS - 1) * 64` counters back.
#[derive(Debug, Clone)]
pub struct SlidingWindow<const BLOCKS: usize> {
    newest: Option<u64>,
    blocks: [u64; BLOCKS],
}

/// The window of a session in a [`Footprint::Fast`](crate::Footprint::Fast) table
/// ([`REPLAY_WINDOW`] counters, 264 bytes).
pub type ReplayWindow = SlidingWindow<WIDE_BLOCKS>;

/// The window of a session in a [`Footprint::Compact`](crate::Footprint::Compact)
/// table ([`COMPACT_REPLAY_WINDOW`] counters, 32 bytes).
pub type CompactReplayWindow = SlidingWindow<COMPACT_BLOCKS>;

impl<const BLOCKS: usize> Default for SlidingWindow<BLOCKS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const BLOCKS: usize> SlidingWindow<BLOCKS> {
    /// How far behind the newest counter a counter is still accepted.
    pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

    /// An empty window (no counter seen).
    pub fn new() -> Self {
        Self {
            newest: None,
            blocks: [0; BLOCKS],
        }
    }

    /// The newest counter accepted so far.
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }

    fn slot(counter: u64) -> (usize, u64) {
        // `BLOCKS` is a power of two far below `usize::MAX`: the cast cannot truncate.
        let block = ((counter / BLOCK_BITS) % BLOCKS as u64) as usize;
        (block, 1u64 << (counter % BLOCK_BITS))
    }

    /// Whether `counter` could be accepted; changes nothing.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(ReplayError::Exhausted(counter));
        }
        let Some(newest) = self.newest else {
            return Ok(());
        };
        if counter > newest {
            return Ok(());
        }
        if newest - counter >= Self::WINDOW {
            return Err(ReplayError::TooOld { counter, newest });
        }
        let (block, bit) = Self::slot(counter);
        if self.blocks.get(block).is_some_and(|b| b & bit != 0) {
            return Err(ReplayError::Duplicate(counter));
        }
        Ok(())
    }

    /// Records `counter` as accepted. Call only after [`check`](Self::check) passed and
    /// the packet authenticated.
    pub fn mark(&mut self, counter: u64) {
        match self.newest {
            Some(newest) if counter <= newest => {}
            Some(newest) => {
                // Clear the blocks the window slides over (at most the whole ring).
                let advance = (counter / BLOCK_BITS) - (newest / BLOCK_BITS);
                let steps = advance.min(BLOCKS as u64);
                for step in 1..=steps {
                    let (block, _) = Self::slot(newest.wrapping_add(step * BLOCK_BITS));
                    if let Some(b) = self.blocks.get_mut(block) {
                        *b = 0;
                    }
                }
                self.newest = Some(counter);
            }
            None => {
                self.blocks = [0; BLOCKS];
                self.newest = Some(counter);
            }
        }
        let (block, bit) = Self::slot(counter);
        if let Some(b) = self.blocks.get_mut(block) {
            *b |= bit;
        }
    }

    /// [`check`](Self::check) then [`mark`](Self::mark), for callers that already authenticated.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        self.mark(counter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn window_is_at_least_1024() {
        const { assert!(REPLAY_WINDOW >= 1024) };
        let mut w = ReplayWindow::new();
        w.accept(REPLAY_WINDOW).unwrap();
        // Exactly at the edge: `newest - counter == REPLAY_WINDOW - 1` is still inside.
        assert_eq!(w.accept(1), Ok(()));
        assert_eq!(
            w.check(0),
            Err(ReplayError::TooOld {
                counter: 0,
                newest: REPLAY_WINDOW
            })
        );
        assert_eq!(w.check(1), Err(ReplayError::Duplicate(1)));
    }

    #[test]
    fn compact_window_reaches_64_counters() {
        assert_eq!(CompactReplayWindow::WINDOW, COMPACT_REPLAY_WINDOW);
        assert_eq!(COMPACT_REPLAY_WINDOW, 64);
        assert_eq!(size_of::<CompactReplayWindow>(), 32);
        let mut w = CompactReplayWindow::new();
        w.accept(COMPACT_REPLAY_WINDOW).unwrap();
        assert_eq!(w.accept(1), Ok(()));
        assert_eq!(
            w.check(0),
            Err(ReplayError::TooOld {
                counter: 0,
                newest: COMPACT_REPLAY_WINDOW
            })
        );
        assert_eq!(w.check(1), Err(ReplayError::Duplicate(1)));
        w.accept(1_000).unwrap();
        for c in (1_000 - COMPACT_REPLAY_WINDOW + 1)..1_000 {
            assert_eq!(w.check(c), Ok(()), "counter {c}");
        }
    }

    #[test]
    fn exhausted_counters_are_refused() {
        let w = ReplayWindow::new();
        assert_eq!(
            w.check(REJECT_AFTER_MESSAGES),
            Err(ReplayError::Exhausted(REJECT_AFTER_MESSAGES))
        );
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Exhausted(u64::MAX)));
        assert_eq!(w.check(REJECT_AFTER_MESSAGES - 1), Ok(()));
    }

    #[test]
    fn large_jump_clears_the_ring() {
        let mut w = ReplayWindow::new();
        for c in 0..100 {
            w.accept(c).unwrap();
        }
        w.accept(1_000_000).unwrap();
        // Old bits must not leak into the new window positions.
        for c in (1_000_000 - REPLAY_WINDOW + 1)..1_000_000 {
            assert_eq!(w.check(c), Ok(()), "counter {c}");
        }
    }

    proptest! {
        /// Any permutation with duplicates of counters that stay inside the window is
        /// accepted exactly once per counter.
        #[test]
        fn reordered_and_duplicated_accepted_once(
            base in 0u64..1_000_000,
            offsets in proptest::collection::vec(0u64..REPLAY_WINDOW, 1..300),
            dups in proptest::collection::vec(any::<proptest::sample::Index>(), 0..100),
        ) {
            let mut sequence: Vec<u64> = offsets.iter().map(|o| base + o).collect();
            for d in &dups {
                let extra = sequence[d.index(sequence.len())];
                sequence.insert(d.index(sequence.len()), extra);
            }
            let mut w = ReplayWindow::new();
            let mut seen = HashSet::new();
            for c in sequence {
                let fresh = seen.insert(c);
                prop_assert_eq!(w.accept(c).is_ok(), fresh, "counter {}", c);
            }
        }

        /// The compact window accepts once every counter that stays inside its reach.
        #[test]
        fn compact_reordered_and_duplicated_accepted_once(
            base in 0u64..1_000_000,
            offsets in proptest::collection::vec(0u64..COMPACT_REPLAY_WINDOW, 1..100),
        ) {
            let mut w = CompactReplayWindow::new();
            let mut seen = HashSet::new();
            for c in offsets.iter().map(|o| base + o).chain(offsets.iter().map(|o| base + o)) {
                let fresh = seen.insert(c);
                prop_assert_eq!(w.accept(c).is_ok(), fresh, "counter {}", c);
            }
        }

        /// `check` never accepts a counter that `mark` recorded, for arbitrary histories.
        #[test]
        fn marked_counters_are_never_reaccepted(counters in proptest::collection::vec(0u64..5_000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut compact = CompactReplayWindow::new();
            let mut marked = HashSet::new();
            let mut compact_marked = HashSet::new();
            for c in counters {
                if w.check(c).is_ok() {
                    prop_assert!(!marked.contains(&c));
                    w.mark(c);
                    marked.insert(c);
                }
                if compact.check(c).is_ok() {
                    prop_assert!(!compact_marked.contains(&c));
                    compact.mark(c);
                    compact_marked.insert(c);
                }
            }
        }
    }
}
