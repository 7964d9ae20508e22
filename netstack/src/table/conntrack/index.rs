//! The index from tuple to flow entry, keyed by a secret-seeded hash so that peers
//! cannot aim many tuples at one bucket. It holds entry numbers only; what an entry
//! means is the table's (mod.rs).

use alloc::vec::Vec;

use crate::base::FlowTuple;

/// An empty bucket of the index.
pub(super) const EMPTY: u64 = u64::MAX;

/// The index from tuple to flow: open addressing with linear probing over one
/// `u64` per bucket, `fingerprint << 32 | entry`, eight buckets to a cache line.
/// The fingerprint is 32 bits of the tuple's keyed hash and its high bits pick the
/// home bucket (multiply-shift, so any table size works), so a lookup reads one
/// line of buckets (entries whose fingerprint differs are skipped without touching
/// their flow) and then the one flow it names; removal shifts the cluster back (no
/// tombstones) using the fingerprints alone. Sized once, never more than 80 %
/// full.
pub(super) struct Index {
    pub(super) buckets: Vec<u64>,
}

impl Index {
    /// An index for at most `entries` entries. At most 80 % full: 10 bytes of
    /// index per tuple, what hashbrown took before, so the appliance's default
    /// table still fits its smallest memory (`-m 10M`); a lookup in a full table
    /// probes 3 buckets on average, usually in one cache line.
    /// Buckets for `entries` tuples, at most 80 % full.
    pub(super) fn buckets_for(entries: usize) -> usize {
        (entries.max(4) * 5).div_ceil(4)
    }

    pub(super) fn with_entries(entries: usize) -> Index {
        let n = Index::buckets_for(entries);
        Index {
            buckets: alloc::vec![EMPTY; n],
        }
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.buckets.len() {
            0
        } else {
            i + 1
        }
    }

    /// Probe steps from bucket `from` forward to bucket `to`.
    fn distance(&self, from: usize, to: usize) -> usize {
        if to >= from {
            to - from
        } else {
            to + self.buckets.len() - from
        }
    }

    /// Where the lookup of `fp` starts.
    pub(super) fn home(&self, fp: u32) -> usize {
        ((fp as u64 * self.buckets.len() as u64) >> 32) as usize
    }

    /// The bucket at `i` (a home from [`Index::home`]) as it is stored: one read of
    /// its cache line.
    pub(super) fn bucket(&self, i: usize) -> u64 {
        self.buckets.get(i).copied().unwrap_or(EMPTY)
    }

    /// The first entry whose fingerprint is `fp`, whatever it names.
    pub(super) fn first_with(&self, fp: u32) -> Option<u32> {
        self.find(fp, |_| true)
    }

    /// The entry whose fingerprint is `fp` and for which `is` holds.
    pub(super) fn find(&self, fp: u32, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut i = self.home(fp);
        loop {
            let b = self.buckets[i];
            if b == EMPTY {
                return None;
            }
            if (b >> 32) as u32 == fp && is(b as u32) {
                return Some(b as u32);
            }
            i = self.next(i);
        }
    }

    /// Adds an entry; the table never fills (at most 80 % of it is used).
    pub(super) fn insert(&mut self, fp: u32, e: u32) {
        let mut i = self.home(fp);
        while self.buckets[i] != EMPTY {
            i = self.next(i);
        }
        self.buckets[i] = (fp as u64) << 32 | e as u64;
    }

    /// Removes entry `e` (fingerprint `fp`) if present.
    pub(super) fn remove(&mut self, fp: u32, e: u32) {
        let want = (fp as u64) << 32 | e as u64;
        let mut hole = self.home(fp);
        loop {
            match self.buckets[hole] {
                EMPTY => return,
                b if b == want => break,
                _ => hole = self.next(hole),
            }
        }
        // Backward shift: a later entry of the cluster moves into the hole when
        // its home is not after the hole, so every probe sequence stays unbroken.
        let mut j = hole;
        loop {
            j = self.next(j);
            let b = self.buckets[j];
            if b == EMPTY {
                break;
            }
            let home = self.home((b >> 32) as u32);
            if self.distance(home, j) >= self.distance(hole, j) {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY;
    }
}

/// 128-bit multiply folded to 64 bits: a fast, well-mixing step keyed by a
/// secret seed so that peers cannot aim many tuples at one bucket.
pub(super) fn fold_mul(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

fn hash_tuple(seed: &[u64; 2], t: &FlowTuple) -> u64 {
    let a = ((u32::from(t.src.addr) as u64) << 32) | u32::from(t.dst.addr) as u64;
    let b = ((t.src.port as u64) << 32) | ((t.dst.port as u64) << 16) | t.proto as u64;
    fold_mul(a ^ seed[0], b ^ seed[1])
}

/// The index key of a tuple: 32 well-mixed bits of its keyed hash.
pub(super) fn fingerprint(seed: &[u64; 2], t: &FlowTuple) -> u32 {
    let h = hash_tuple(seed, t);
    (h ^ (h >> 32)) as u32
}
