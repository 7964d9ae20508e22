//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of
//! prime size filled from each backend's permutation, so that a change in the
//! backend set moves few flows, with weights honoured by turn-taking.
//!
//! Owns only the table: which backends are eligible (healthy, weight > 0) is the
//! load balancer's decision. The table is a pure function of the backend set
//! (ids and weights, in any order): every node builds the same one. Never
//! allocates on lookup.

use alloc::vec;
use alloc::vec::Vec;

/// The paper's default: a prime well above 100 x the backends of a service.
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

const EMPTY: u16 = u16::MAX;

/// Why a table cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is not a prime (the permutations would not cover the table).
    SizeNotPrime(usize),
    /// More weighted backends than table slots or `u16` indices.
    TooManyBackends(usize),
    /// Two backends with one id.
    DuplicateId(u64),
}

/// A backend as the table sees it: a stable id and a weight (0 = drain).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weighted {
    pub id: u64,
    pub weight: u32,
}

/// A populated lookup table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    /// Backend ids with weight > 0, sorted; the table holds indices into it.
    ids: Vec<u64>,
    table: Vec<u16>,
}

/// SplitMix64 finaliser: a fixed, well-mixing function (the table must be the
/// same on every node, so it is not keyed by a secret).
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

impl Maglev {
    /// Builds the table for `backends`; those of weight 0 get no slot.
    pub fn new(backends: &[Weighted], size: usize) -> Result<Maglev, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::SizeNotPrime(size));
        }
        let mut live: Vec<Weighted> = backends.iter().copied().filter(|b| b.weight > 0).collect();
        live.sort();
        if let Some(w) = live.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(MaglevError::DuplicateId(w[0].id));
        }
        if live.len() >= EMPTY as usize || live.len() > size {
            return Err(MaglevError::TooManyBackends(live.len()));
        }
        let mut table = vec![EMPTY; size];
        let ids: Vec<u64> = live.iter().map(|b| b.id).collect();
        if live.is_empty() {
            return Ok(Maglev { ids, table });
        }
        let m = size as u64;
        // Each backend's permutation: offset + j * skip (mod M), walked lazily.
        let mut pos: Vec<u64> = Vec::with_capacity(live.len());
        let mut skip: Vec<u64> = Vec::with_capacity(live.len());
        for b in &live {
            pos.push(mix64(b.id ^ 0x6d61_676c_6576_0001) % m);
            skip.push(mix64(b.id ^ 0x6d61_676c_6576_0002) % (m - 1) + 1);
        }
        let max_weight = live.iter().map(|b| b.weight as u64).max().unwrap_or(1);
        let mut credit = vec![0u64; live.len()];
        let mut filled = 0usize;
        // Weighted turns: every round a backend earns its weight, and takes one
        // turn per `max_weight` earned, so slots end up in proportion to weight.
        'fill: loop {
            for i in 0..live.len() {
                credit[i] += live[i].weight as u64;
                while credit[i] >= max_weight {
                    credit[i] -= max_weight;
                    let mut c = pos[i];
                    while table[c as usize] != EMPTY {
                        c = (c + skip[i]) % m;
                    }
                    table[c as usize] = i as u16;
                    pos[i] = (c + skip[i]) % m;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Ok(Maglev { ids, table })
    }

    pub fn size(&self) -> usize {
        self.table.len()
    }

    /// True when no backend has weight: every lookup misses.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The backend id for a flow hash.
    pub fn lookup(&self, hash: u64) -> Option<u64> {
        let slot = *self.table.get((hash % self.table.len() as u64) as usize)?;
        self.ids.get(slot as usize).copied()
    }

    /// Slots held by each backend id, for `status` and tests.
    pub fn shares(&self) -> Vec<(u64, usize)> {
        let mut counts = vec![0usize; self.ids.len()];
        for &s in &self.table {
            if let Some(c) = counts.get_mut(s as usize) {
                *c += 1;
            }
        }
        self.ids.iter().copied().zip(counts).collect()
    }

    /// The backend id of every slot, in order (for comparing two tables).
    pub fn slots(&self) -> impl Iterator<Item = Option<u64>> + '_ {
        self.table
            .iter()
            .map(|&s| self.ids.get(s as usize).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn equal(n: u64) -> Vec<Weighted> {
        (0..n)
            .map(|i| Weighted {
                id: 0x0a51_0000_0050 + (i << 16),
                weight: 1,
            })
            .collect()
    }

    /// Largest relative deviation of a backend's share from its weight's share.
    fn worst_deviation(t: &Maglev, backends: &[Weighted]) -> f64 {
        let total: u64 = backends.iter().map(|b| b.weight as u64).sum();
        t.shares()
            .iter()
            .map(|&(id, n)| {
                let w = backends.iter().find(|b| b.id == id).unwrap().weight as f64;
                let want = w / total as f64 * t.size() as f64;
                ((n as f64 - want) / want).abs()
            })
            .fold(0.0, f64::max)
    }

    fn moved(a: &Maglev, b: &Maglev) -> usize {
        a.slots().zip(b.slots()).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn size_must_be_prime_and_ids_unique() {
        assert_eq!(
            Maglev::new(&equal(3), 65_536),
            Err(MaglevError::SizeNotPrime(65_536))
        );
        let dup = [Weighted { id: 1, weight: 1 }, Weighted { id: 1, weight: 2 }];
        assert_eq!(Maglev::new(&dup, 13), Err(MaglevError::DuplicateId(1)));
        assert_eq!(
            Maglev::new(&equal(20), 13),
            Err(MaglevError::TooManyBackends(20))
        );
        assert!(is_prime(DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn every_slot_is_filled_and_equal_weights_share_evenly() {
        for n in [1u64, 3, 10, 100] {
            let b = equal(n);
            let t = Maglev::new(&b, DEFAULT_TABLE_SIZE).unwrap();
            assert!(t.slots().all(|s| s.is_some()));
            let dev = worst_deviation(&t, &b);
            assert!(dev < 0.01, "{n} backends: worst share off by {dev}");
        }
    }

    #[test]
    fn weights_are_honoured_and_zero_drains() {
        let b = [
            Weighted { id: 10, weight: 2 },
            Weighted { id: 20, weight: 1 },
            Weighted { id: 30, weight: 1 },
            Weighted { id: 40, weight: 0 },
        ];
        let t = Maglev::new(&b, DEFAULT_TABLE_SIZE).unwrap();
        let live: Vec<Weighted> = b.iter().copied().filter(|b| b.weight > 0).collect();
        assert!(worst_deviation(&t, &live) < 0.02);
        assert!(t.slots().all(|s| s != Some(40)));
        let shares = t.shares();
        assert_eq!(shares.len(), 3);

        let uneven: Vec<Weighted> = (1..=10u64)
            .map(|i| Weighted {
                id: i * 7919,
                weight: i as u32,
            })
            .collect();
        let t = Maglev::new(&uneven, DEFAULT_TABLE_SIZE).unwrap();
        assert!(worst_deviation(&t, &uneven) < 0.05);

        let none = [Weighted { id: 1, weight: 0 }];
        let t = Maglev::new(&none, 13).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.lookup(12345), None);
    }

    #[test]
    fn same_set_in_any_order_gives_the_same_table() {
        let b = equal(17);
        let mut r = b.clone();
        r.reverse();
        r.swap(3, 11);
        assert_eq!(
            Maglev::new(&b, DEFAULT_TABLE_SIZE).unwrap(),
            Maglev::new(&r, DEFAULT_TABLE_SIZE).unwrap()
        );
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [5u64, 10, 50] {
            let b = equal(n);
            let before = Maglev::new(&b, DEFAULT_TABLE_SIZE).unwrap();
            let gone = b[(n / 2) as usize].id;
            let rest: Vec<Weighted> = b.iter().copied().filter(|x| x.id != gone).collect();
            let after = Maglev::new(&rest, DEFAULT_TABLE_SIZE).unwrap();
            let size = DEFAULT_TABLE_SIZE as f64;
            let share = moved(&before, &after) as f64 / size;
            let ideal = 1.0 / n as f64;
            assert!(share >= ideal * 0.95, "{n}: moved {share}");
            assert!(share <= ideal * 1.25, "{n}: moved {share}, ideal {ideal}");
            // Slots of surviving backends mostly stay (Maglev's near-minimal
            // disruption): under 1% of the table changes between survivors.
            let survivors_moved = before
                .slots()
                .zip(after.slots())
                .filter(|(x, y)| *x != Some(gone) && x != y)
                .count() as f64
                / size;
            assert!(survivors_moved < 0.01, "{n}: {survivors_moved}");
        }
    }

    #[test]
    fn lookups_are_stable_across_rebuilds_and_drains() {
        let b = equal(8);
        let t1 = Maglev::new(&b, DEFAULT_TABLE_SIZE).unwrap();
        let t2 = Maglev::new(&b, DEFAULT_TABLE_SIZE).unwrap();
        for h in (0..100_000u64).map(mix64) {
            assert_eq!(t1.lookup(h), t2.lookup(h));
        }
        // Draining one backend only re-homes the flows it had.
        let mut drained = b.clone();
        drained[2].weight = 0;
        let t3 = Maglev::new(&drained, DEFAULT_TABLE_SIZE).unwrap();
        let (mut kept, mut total) = (0, 0);
        for h in (0..100_000u64).map(mix64) {
            let before = t1.lookup(h).unwrap();
            let after = t3.lookup(h).unwrap();
            assert_ne!(after, b[2].id);
            if before != b[2].id {
                total += 1;
                kept += (before == after) as usize;
            }
        }
        assert!(kept as f64 / total as f64 > 0.9, "{kept}/{total}");
    }
}
