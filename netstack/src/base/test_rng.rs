//! The random numbers of the workspace's property-style tests and benches: xorshift64
//! from a fixed seed, so a failing case is the same on every run and needs no OS random
//! source. Tests only (the `test-rng` feature, which other crates' dev-dependencies
//! turn on); nothing in the packet path draws random numbers.
//!
//! In `base` so that a test of every layer, and of every crate above, may import it.

use alloc::vec::Vec;

/// xorshift64 (Marsaglia's shifts 13, 7, 17) from a seed that is not zero.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        assert_ne!(seed, 0, "xorshift never leaves zero");
        Rng(seed)
    }

    /// The next number of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next number, below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` bytes, the low byte of a number each.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// A permutation of `0..n` (Fisher-Yates).
    pub fn shuffled(&mut self, n: usize) -> Vec<u32> {
        let mut v: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_sequence_every_time() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let first: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert!(first.iter().all(|&x| x == b.next_u64()));
        // Marsaglia's xorshift64 (13, 7, 17) from 1.
        assert_eq!(Rng::new(1).next_u64(), 0x4082_2041);
        assert_ne!(Rng::new(43).next_u64(), first[0]);
    }

    #[test]
    fn shuffled_is_a_permutation() {
        let mut v = Rng::new(5).shuffled(1000);
        assert_ne!(v[..10], (0..10).collect::<Vec<u32>>()[..]);
        v.sort_unstable();
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    }

    #[test]
    fn below_stays_below() {
        let mut rng = Rng::new(7);
        assert!((0..1000).all(|_| rng.below(3) < 3));
        assert_eq!(rng.bytes(5).len(), 5);
    }
}
