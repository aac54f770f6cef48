//! The one seeded random generator of Sightwire's tests.

use sightwire_netsim::SplitMix64;

/// One seeded RNG for tests (wraps netsim's [`SplitMix64`]): the same seed gives the
/// same numbers on every machine, so a failing seed replays exactly. Not for
/// cryptography.
///
/// ```
/// use sightwire_testkit::TestRng;
///
/// let mut a = TestRng::new(7);
/// let mut b = TestRng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// ```
#[derive(Clone, Debug)]
pub struct TestRng(SplitMix64);

impl TestRng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        TestRng(SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0.below(bound)
    }

    /// True with probability `probability` (clamped to `0.0..=1.0`; never for NaN).
    /// Draws one number whatever the probability, so the sequence after it does not
    /// depend on the probability.
    pub fn chance(&mut self, probability: f64) -> bool {
        // 53 random bits as a uniform float in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < probability
    }

    /// Fills `bytes` with random bytes (little-endian words of [`TestRng::next_u64`]).
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}
