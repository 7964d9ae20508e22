//! The random numbers of the crate's property-style tests: xorshift64 from a fixed seed,
//! so a failing case is the same on every run and needs no OS random source. Tests
//! only; nothing in the packet path draws random numbers.
//!
//! In `base` so that a test of every layer may import it.

use alloc::vec::Vec;

/// xorshift64 (Marsaglia's shifts 13, 7, 17) from a seed that is not zero.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        assert_ne!(seed, 0, "xorshift never leaves zero");
        Rng(seed)
    }

    /// The next number of the sequence.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next number, below `n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `len` bytes, the low byte of a number each.
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_sequence_every_time() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let first: Vec<u64> = (0..100).map(|_| a.next()).collect();
        assert!(first.iter().all(|&x| x == b.next()));
        // Marsaglia's xorshift64 (13, 7, 17) from 1.
        assert_eq!(Rng::new(1).next(), 0x4082_2041);
        assert_ne!(Rng::new(43).next(), first[0]);
    }

    #[test]
    fn below_stays_below() {
        let mut rng = Rng::new(7);
        assert!((0..1000).all(|_| rng.below(3) < 3));
        assert_eq!(rng.bytes(5).len(), 5);
    }
}
