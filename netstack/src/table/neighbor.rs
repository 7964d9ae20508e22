//! The neighbour table of the appliance's one ARP resolver: IPv4 neighbours' MAC
//! addresses and the resolutions in progress, each with its retry schedule (a first
//! wait, doubling up to a longest one; equal, it is a fixed interval).
//!
//! A binding not confirmed (learned again) for [`REFRESH`] is stale: it is still used,
//! and its user asks for the address again on the retry schedule, so a neighbour that
//! changed its MAC behind the same address without announcing it is found again (as a
//! Linux neighbour goes STALE and is probed after its reachable time).
//!
//! Its users bring the ARP: the router resolves next hops on both NICs, the datapath
//! the peers' underlay next hops; each decides which ARP frames teach it and sends the
//! requests this table says are due. State only: it never parses or builds a frame,
//! never reads a clock and holds at most its capacity of bindings.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::hash::Hash;

use hashbrown::HashMap;

use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::EthernetAddress;

/// How long a binding is used without being asked for again: Linux's
/// `base_reachable_time` (30 s).
pub const REFRESH: Duration = Duration::from_secs(30);

/// Counters of neighbour resolution (shown in `status`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighborCounters {
    /// ARP requests sent.
    pub requests: u64,
    /// Addresses learned or changed from ARP seen on the uplink.
    pub learned: u64,
    /// ARP frames that taught nothing (not about a wanted or known address, or a full table).
    pub ignored: u64,
}

/// When requests for one address are repeated: after `first`, then each wait twice the
/// last, up to `longest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub first: Duration,
    pub longest: Duration,
}

impl Retry {
    /// The same wait between every two requests.
    pub const fn every(interval: Duration) -> Retry {
        Retry {
            first: interval,
            longest: interval,
        }
    }
}

/// What [`Neighbors::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A binding that is new, or a new MAC for a known address.
    New,
    /// The binding was known as it is.
    Unchanged,
    /// The table is full and the address is not in it: nothing changed.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    mac: EthernetAddress,
    /// When it was last learned or confirmed.
    confirmed: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resolving {
    /// When the latest request was sent.
    asked: Instant,
    next_try: Instant,
    /// The wait after the next request.
    backoff: Duration,
}

/// Neighbours by key (an address, or a NIC and an address), and the resolutions in
/// progress. The bindings are hashed: the router looks one up for every frame it
/// forwards, among as many as the link has containers.
#[derive(Debug, Clone)]
pub struct Neighbors<K> {
    cache: HashMap<K, Binding>,
    resolving: BTreeMap<K, Resolving>,
    capacity: usize,
    retry: Retry,
    refresh: Duration,
    counters: NeighborCounters,
}

impl<K: Ord + Hash + Copy> Neighbors<K> {
    /// A table of at most `capacity` bindings whose requests repeat as `retry` says.
    pub fn new(capacity: usize, retry: Retry) -> Neighbors<K> {
        Neighbors {
            cache: HashMap::new(),
            resolving: BTreeMap::new(),
            capacity,
            retry,
            refresh: REFRESH,
            counters: NeighborCounters::default(),
        }
    }

    /// The same table with bindings stale after `refresh` instead of [`REFRESH`].
    pub fn with_refresh(mut self, refresh: Duration) -> Neighbors<K> {
        self.refresh = refresh;
        self
    }

    pub fn counters(&self) -> NeighborCounters {
        self.counters
    }

    /// The MAC address known for `key`.
    pub fn lookup(&self, key: &K) -> Option<EthernetAddress> {
        self.cache.get(key).map(|b| b.mac)
    }

    /// The MAC address known for `key`, and whether the binding is stale: not
    /// confirmed for the refresh time, still used, and to be asked for again. The
    /// packet path's one lookup per frame.
    pub fn resolve(&self, key: &K, now: Instant) -> Option<(EthernetAddress, bool)> {
        self.cache.get(key).map(|b| (b.mac, self.is_stale(b, now)))
    }

    /// The keys of every stale binding (see [`Neighbors::resolve`]).
    pub fn stale(&self, now: Instant) -> impl Iterator<Item = &K> {
        self.cache
            .iter()
            .filter(move |(_, b)| self.is_stale(b, now))
            .map(|(k, _)| k)
    }

    fn is_stale(&self, b: &Binding, now: Instant) -> bool {
        b.confirmed + self.refresh <= now
    }

    /// Whether `key` has a binding.
    pub fn knows(&self, key: &K) -> bool {
        self.cache.contains_key(key)
    }

    /// Whether `key` is being resolved.
    pub fn is_resolving(&self, key: &K) -> bool {
        self.resolving.contains_key(key)
    }

    /// Whether a binding for `key` would fit: it has one, or the table has room.
    pub fn has_room_for(&self, key: &K) -> bool {
        self.cache.len() < self.capacity || self.cache.contains_key(key)
    }

    /// Every known neighbour, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &EthernetAddress)> {
        let mut all: Vec<(&K, &EthernetAddress)> =
            self.cache.iter().map(|(k, b)| (k, &b.mac)).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    /// `key` is at `mac` (heard at `now`): bind or confirm it and end its resolution.
    pub fn learn(&mut self, key: K, mac: EthernetAddress, now: Instant) -> Learned {
        // A router learns from every frame a neighbour sends: a binding it holds is
        // confirmed in place, one hash lookup.
        let full = self.cache.len() >= self.capacity;
        let before = match self.cache.get_mut(&key) {
            Some(b) => {
                core::mem::replace(
                    b,
                    Binding {
                        mac,
                        confirmed: now,
                    },
                )
                .mac
            }
            None if full => return Learned::Full,
            None => {
                self.cache.insert(
                    key,
                    Binding {
                        mac,
                        confirmed: now,
                    },
                );
                self.resolving.remove(&key);
                self.counters.learned += 1;
                return Learned::New;
            }
        };
        if !self.resolving.is_empty() {
            self.resolving.remove(&key);
        }
        if before == mac {
            return Learned::Unchanged;
        }
        self.counters.learned += 1;
        Learned::New
    }

    /// Counts an ARP frame its user would not learn from.
    pub fn count_ignored(&mut self) {
        self.counters.ignored += 1;
    }

    /// Whether a request for `key` is due at `now`: the first at once, the next ones
    /// on the retry schedule. When it is, the request is counted as sent.
    pub fn ask(&mut self, key: K, now: Instant) -> bool {
        let first = self.retry.first;
        let r = self.resolving.entry(key).or_insert(Resolving {
            asked: now,
            next_try: now,
            backoff: first,
        });
        if r.next_try > now {
            return false;
        }
        r.asked = now;
        r.next_try = now + r.backoff;
        r.backoff = (r.backoff * 2).min(self.retry.longest);
        self.counters.requests += 1;
        true
    }

    /// Ends the resolutions for which `keep` (given the key and when it was last
    /// asked for) is false.
    pub fn retain_resolving(&mut self, mut keep: impl FnMut(&K, Instant) -> bool) {
        self.resolving.retain(|k, r| keep(k, r.asked));
    }

    /// When the next request is due (None: nothing is being resolved).
    pub fn next_try(&self) -> Option<Instant> {
        self.resolving.values().map(|r| r.next_try).min()
    }

    /// Forget every binding and resolution.
    pub fn clear(&mut self) {
        self.cache.clear();
        self.resolving.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::Ipv4Address;

    const A: Ipv4Address = Ipv4Address::new(192, 0, 2, 12);
    const MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms as i64)
    }

    #[test]
    fn a_fixed_interval_asks_once_a_second_and_learning_ends_the_resolution() {
        let mut n = Neighbors::new(4, Retry::every(Duration::from_secs(1)));
        assert!(n.ask(A, t(0)));
        assert!(!n.ask(A, t(999)));
        assert!(n.ask(A, t(1000)));
        assert!(n.ask(A, t(2500)));
        assert_eq!(n.next_try(), Some(t(3500)));
        assert_eq!(n.learn(A, MAC, t(0)), Learned::New);
        assert!(!n.is_resolving(&A));
        assert_eq!(n.next_try(), None);
        assert_eq!(n.learn(A, MAC, t(0)), Learned::Unchanged);
        assert_eq!(n.lookup(&A), Some(MAC));
        assert_eq!((n.counters().requests, n.counters().learned), (3, 1));
    }

    #[test]
    fn resolutions_are_kept_only_while_wanted() {
        let mut n: Neighbors<(u8, Ipv4Address)> =
            Neighbors::new(4, Retry::every(Duration::from_secs(1)));
        assert!(n.ask((0, A), t(0)));
        assert!(n.ask((1, A), t(2000)));
        n.retain_resolving(|_, asked| t(3000) < asked + Duration::from_secs(3));
        assert!(!n.is_resolving(&(0, A)));
        assert!(n.is_resolving(&(1, A)));
        // Forgotten: the next request goes at once.
        assert!(n.ask((0, A), t(3000)));
    }

    #[test]
    fn a_full_table_learns_nothing_new_but_updates_what_it_has() {
        let mut n = Neighbors::new(2, Retry::every(Duration::from_secs(1)));
        let ip = |i| Ipv4Address::new(10, 0, 0, i);
        assert_eq!(n.learn(ip(1), MAC, t(0)), Learned::New);
        assert_eq!(n.learn(ip(2), MAC, t(0)), Learned::New);
        assert!(n.ask(ip(3), t(0)));
        assert!(!n.has_room_for(&ip(3)));
        assert_eq!(n.learn(ip(3), MAC, t(0)), Learned::Full);
        assert!(
            n.is_resolving(&ip(3)),
            "a refused binding ends no resolution"
        );
        let moved = EthernetAddress([0x52, 0x54, 0, 0, 0, 9]);
        assert_eq!(n.learn(ip(2), moved, t(0)), Learned::New);
        assert_eq!(n.iter().count(), 2);
        n.clear();
        assert_eq!((n.iter().count(), n.next_try()), (0, None));
    }

    #[test]
    fn a_binding_not_confirmed_goes_stale_and_a_new_mac_replaces_it() {
        let mut n = Neighbors::new(4, Retry::every(Duration::from_secs(1)))
            .with_refresh(Duration::from_secs(30));
        assert_eq!(n.learn(A, MAC, t(0)), Learned::New);
        assert_eq!(n.resolve(&A, t(29_999)).map(|r| r.1), Some(false));
        // Confirmed again: fresh for another 30 s.
        assert_eq!(n.learn(A, MAC, t(20_000)), Learned::Unchanged);
        assert_eq!(n.resolve(&A, t(49_999)).map(|r| r.1), Some(false));
        assert_eq!(n.resolve(&A, t(50_000)).map(|r| r.1), Some(true));
        assert_eq!(n.stale(t(50_000)).collect::<alloc::vec::Vec<_>>(), [&A]);
        // Still used while it is asked for again; the answer from the new MAC wins.
        assert_eq!(n.lookup(&A), Some(MAC));
        assert!(n.ask(A, t(50_000)));
        let moved = EthernetAddress([0x52, 0x54, 0, 0, 0, 7]);
        assert_eq!(n.learn(A, moved, t(50_100)), Learned::New);
        assert_eq!(n.lookup(&A), Some(moved));
        assert!(!n.is_resolving(&A));
        assert_eq!(n.resolve(&A, t(50_100)).map(|r| r.1), Some(false));
    }
}
