//! The CSPRNG behind every secret the peer channel makes (TLS randoms, X25519 ephemeral
//! keys): ChaCha20 keyed by a 256-bit seed from the platform (the kernel: RDRAND).
//!
//! Owns the generator state and nothing else. It never takes a seed shorter than 256
//! bits, never prints its state, and rekeys itself after every request (fast key erasure):
//! whoever reads its state later cannot recompute what it handed out before.

use core::fmt;

use chacha20::rand_core::{Rng, SeedableRng};
use chacha20::ChaCha20Rng;
use zeroize::Zeroize;

/// A 256-bit seed; wiped when dropped.
pub struct Seed([u8; 32]);

impl Seed {
    pub const fn new(bytes: [u8; 32]) -> Seed {
        Seed(bytes)
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(..)")
    }
}

/// ChaCha20 with fast key erasure, shareable (`&'static` in a rustls provider).
pub struct Csprng(spin::Mutex<ChaCha20Rng>);

impl Csprng {
    pub fn new(seed: Seed) -> Csprng {
        Csprng(spin::Mutex::new(ChaCha20Rng::from_seed(seed.0)))
    }

    /// One generator for the life of the program (a rustls provider keeps `&'static`
    /// references to its parts): the appliance makes one per boot.
    pub fn leak(seed: Seed) -> &'static Csprng {
        alloc::boxed::Box::leak(alloc::boxed::Box::new(Csprng::new(seed)))
    }

    /// Fill `out` with random bytes.
    pub fn fill(&self, out: &mut [u8]) {
        self.with(|rng| rng.fill_bytes(out));
    }

    /// Lend the generator to a `rand_core` consumer (a key generator), then move it to
    /// a new key drawn from itself, so the state left behind says nothing about what
    /// it produced.
    pub fn with<R>(&self, f: impl FnOnce(&mut ChaCha20Rng) -> R) -> R {
        let mut rng = self.0.lock();
        let result = f(&mut rng);
        let mut next = [0u8; 32];
        rng.fill_bytes(&mut next);
        *rng = ChaCha20Rng::from_seed(next);
        next.zeroize();
        result
    }

    pub fn array<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        self.fill(&mut out);
        out
    }
}

impl fmt::Debug for Csprng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Csprng(..)")
    }
}

impl rustls::crypto::SecureRandom for Csprng {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        Csprng::fill(self, buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_outputs_differ() {
        let a = Csprng::new(Seed::new([7; 32]));
        let b = Csprng::new(Seed::new([7; 32]));
        let (x, y): ([u8; 32], [u8; 32]) = (a.array(), b.array());
        assert_eq!(x, y);
        let x2: [u8; 32] = a.array();
        assert_ne!(x, x2, "every request moves the generator on");
        let c = Csprng::new(Seed::new([8; 32]));
        assert_ne!(c.array::<32>(), x);
    }

    /// The first output is the ChaCha20 keystream under the seed as key (block 0,
    /// nonce 0): RFC 8439 A.1 test vector #1 (all-zero key).
    #[test]
    fn first_output_is_the_chacha20_keystream_of_the_seed() {
        let rng = Csprng::new(Seed::new([0; 32]));
        let out: [u8; 16] = rng.array();
        assert_eq!(
            out,
            [
                0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90, 0x40, 0x5d, 0x6a, 0xe5, 0x53, 0x86,
                0xbd, 0x28
            ]
        );
    }

    #[test]
    fn state_is_not_printed() {
        let rng = Csprng::new(Seed::new([1; 32]));
        assert_eq!(alloc::format!("{rng:?}"), "Csprng(..)");
        assert_eq!(alloc::format!("{:?}", Seed::new([1; 32])), "Seed(..)");
    }
}
