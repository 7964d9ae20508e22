//! The random numbers of the property-style tests: xorshift64 from a fixed seed, so a
//! failing case is the same on every run. Tests only; never a source of randomness for
//! the appliance (that is seeded by the caller, see `BootInfo::seed`).

/// `next(n)`: the next number below `n` (`n` > 0) of the sequence seeded by `seed`
/// (not zero).
pub fn below(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}
