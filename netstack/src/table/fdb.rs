//! The forwarding database of one overlay network: MAC -> where it lives (the local
//! container link or a remote peer), and the ARP suppression table (overlay IPv4 ->
//! MAC) beside it.
//!
//! Learned entries come from the container link only and age out; static entries are
//! pushed by control, never age and are never overwritten by learning. Both tables are
//! bounded. Each keeps a second index for control (the MACs behind each peer, the
//! addresses bound to each MAC) so that a peer leaving or a MAC going away costs what
//! it removes, not a scan of the table. Time comes in as an argument; nothing here reads
//! a clock or decides where a frame goes (that is `overlay`).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Ipv4Address};

/// Where a MAC address lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Behind the container link of this appliance.
    Local,
    /// Behind the peer VTEP with this underlay address.
    Remote(Ipv4Address),
}

/// How an entry got into the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryOrigin {
    /// Pushed by control; never aged, never replaced by learning.
    Static,
    /// Learned from a frame's source address; `last_seen` is when it was last refreshed.
    Learned { last_seen: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub location: Location,
    pub origin: EntryOrigin,
}

/// What a call to [`Fdb::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// A new learned entry.
    Added,
    /// An existing learned entry had its age reset.
    Refreshed,
    /// A static entry exists for this address; it was left as it is.
    StaticKept,
    /// Not a unicast address: never learned.
    NotUnicast,
    /// The table is full of entries that have not expired.
    Full,
}

/// Why a table refused a static entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// The table is at capacity and holds nothing that can make room.
    Full,
    /// A broadcast or multicast MAC address.
    NotUnicastMac,
    /// An IPv4 address that cannot belong to one host (unspecified, broadcast, multicast).
    NotUnicastIp,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            TableError::Full => write!(f, "table full"),
            TableError::NotUnicastMac => write!(f, "not a unicast MAC address"),
            TableError::NotUnicastIp => write!(f, "not a unicast IPv4 address"),
        }
    }
}

/// Linux bridge's default ageing time (`ageing_time` 300 s).
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);

/// Heap bytes one entry of an [`Fdb`] takes at most, index included (measured by
/// `netstack/tests/table_bytes.rs`): what a table full to its capacity may need.
pub const FDB_ENTRY_BYTES: u64 = 64;
/// Heap bytes one binding of an [`ArpTable`] takes at most, index included.
pub const ARP_ENTRY_BYTES: u64 = 48;

const MAC_MIN: EthernetAddress = EthernetAddress([0; 6]);
const MAC_MAX: EthernetAddress = EthernetAddress([0xff; 6]);

/// A bounded MAC table for one network.
#[derive(Debug, Clone)]
pub struct Fdb {
    entries: BTreeMap<EthernetAddress, Entry>,
    /// Every entry at `Location::Remote(peer)`, as (peer, MAC).
    by_peer: BTreeSet<(Ipv4Address, EthernetAddress)>,
    capacity: usize,
    ageing: Duration,
    /// The MAC whose learned entry was last written by [`Fdb::learn`], and the stamp it
    /// holds: a frame from it within [`Fdb::refresh_after`] of that stamp costs no
    /// table walk. Cleared by everything else that changes entries.
    fresh: Option<(EthernetAddress, Instant)>,
}

/// How long a learned entry's stamp may lag the last frame from its MAC (at most; an
/// eighth of the ageing time when that is shorter). Linux's bridge likewise rewrites
/// an entry's `updated` only when the clock has moved on.
pub const REFRESH_AFTER: Duration = Duration::from_secs(1);

impl Fdb {
    /// A table of at most `capacity` entries (static and learned together) whose
    /// learned entries expire `ageing` after they were last seen.
    pub fn new(capacity: usize, ageing: Duration) -> Fdb {
        Fdb {
            entries: BTreeMap::new(),
            by_peer: BTreeSet::new(),
            capacity,
            ageing,
            fresh: None,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the capacity. A table above a lower capacity keeps its entries and takes
    /// no new one until it is below it again.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    pub fn ageing(&self) -> Duration {
        self.ageing
    }

    /// Entries held, including learned ones that have expired but not yet been swept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        match entry.origin {
            EntryOrigin::Static => false,
            EntryOrigin::Learned { last_seen } => now >= last_seen + self.ageing,
        }
    }

    /// Where `mac` lives, if a static or an unexpired learned entry says so.
    pub fn lookup(&self, mac: &EthernetAddress, now: Instant) -> Option<Location> {
        self.entries
            .get(mac)
            .filter(|e| !self.expired(e, now))
            .map(|e| e.location)
    }

    /// The entry for `mac` as stored (expired or not).
    pub fn get(&self, mac: &EthernetAddress) -> Option<&Entry> {
        self.entries.get(mac)
    }

    /// How long after its stamp a learned entry is refreshed again: a burst of frames
    /// from one MAC refreshes it once. The entry may so expire up to this much sooner
    /// than `ageing` after the last frame.
    pub fn refresh_after(&self) -> Duration {
        (self.ageing / 8).min(REFRESH_AFTER)
    }

    /// Note that `mac` was seen as a source on the container link at `now`.
    pub fn learn(&mut self, mac: EthernetAddress, now: Instant) -> Learn {
        if let Some((fresh, stamp)) = self.fresh {
            if fresh == mac && stamp <= now && now < stamp + self.refresh_after() {
                return Learn::Refreshed;
            }
        }
        if !mac.is_unicast() {
            return Learn::NotUnicast;
        }
        if let Some(entry) = self.entries.get_mut(&mac) {
            return match entry.origin {
                EntryOrigin::Static => Learn::StaticKept,
                EntryOrigin::Learned { .. } => {
                    *entry = Entry {
                        location: Location::Local,
                        origin: EntryOrigin::Learned { last_seen: now },
                    };
                    self.fresh = Some((mac, now));
                    Learn::Refreshed
                }
            };
        }
        if self.entries.len() >= self.capacity {
            self.age(now);
            if self.entries.len() >= self.capacity {
                return Learn::Full;
            }
        }
        self.entries.insert(
            mac,
            Entry {
                location: Location::Local,
                origin: EntryOrigin::Learned { last_seen: now },
            },
        );
        self.fresh = Some((mac, now));
        Learn::Added
    }

    /// Install or replace a static entry. When the table is full, expired entries are
    /// swept and then the least recently seen learned entry makes room: control's word
    /// outranks what was learned.
    pub fn insert_static(
        &mut self,
        mac: EthernetAddress,
        location: Location,
        now: Instant,
    ) -> Result<(), TableError> {
        if !mac.is_unicast() {
            return Err(TableError::NotUnicastMac);
        }
        self.fresh = None;
        if !self.entries.contains_key(&mac) && self.entries.len() >= self.capacity {
            self.age(now);
            if self.entries.len() >= self.capacity {
                let oldest = self
                    .entries
                    .iter()
                    .filter_map(|(mac, e)| match e.origin {
                        EntryOrigin::Learned { last_seen } => Some((last_seen, *mac)),
                        EntryOrigin::Static => None,
                    })
                    .min();
                match oldest {
                    Some((_, victim)) => {
                        self.entries.remove(&victim);
                    }
                    None => return Err(TableError::Full),
                }
            }
        }
        let old = self.entries.insert(
            mac,
            Entry {
                location,
                origin: EntryOrigin::Static,
            },
        );
        if let Some(Entry {
            location: Location::Remote(peer),
            ..
        }) = old
        {
            self.by_peer.remove(&(peer, mac));
        }
        if let Location::Remote(peer) = location {
            self.by_peer.insert((peer, mac));
        }
        Ok(())
    }

    /// Remove the static entry for `mac`; a learned entry is left alone. Returns whether
    /// one was removed.
    pub fn remove_static(&mut self, mac: &EthernetAddress) -> bool {
        self.fresh = None;
        match self.entries.get(mac).copied() {
            Some(Entry {
                origin: EntryOrigin::Static,
                location,
            }) => {
                self.entries.remove(mac);
                if let Location::Remote(peer) = location {
                    self.by_peer.remove(&(peer, *mac));
                }
                true
            }
            _ => false,
        }
    }

    /// Remove every entry that points at the peer `underlay` (the peer left the network);
    /// returns their MACs. Costs what it removes: the peer's entries are indexed.
    pub fn remove_remote(&mut self, underlay: Ipv4Address) -> Vec<EthernetAddress> {
        self.fresh = None;
        let macs: Vec<EthernetAddress> = self
            .by_peer
            .range((underlay, MAC_MIN)..=(underlay, MAC_MAX))
            .map(|&(_, mac)| mac)
            .collect();
        for mac in &macs {
            self.by_peer.remove(&(underlay, *mac));
            self.entries.remove(mac);
        }
        macs
    }

    /// Entries that point at the peer `underlay`.
    pub fn remote_len(&self, underlay: Ipv4Address) -> usize {
        self.by_peer
            .range((underlay, MAC_MIN)..=(underlay, MAC_MAX))
            .count()
    }

    /// Sweep learned entries that have expired at `now`; returns how many went.
    pub fn age(&mut self, now: Instant) -> usize {
        self.fresh = None;
        let before = self.entries.len();
        let ageing = self.ageing;
        self.entries.retain(|_, e| match e.origin {
            EntryOrigin::Static => true,
            EntryOrigin::Learned { last_seen } => now < last_seen + ageing,
        });
        before - self.entries.len()
    }

    /// Every stored entry in MAC order (for `status`).
    pub fn iter(&self) -> impl Iterator<Item = (&EthernetAddress, &Entry)> {
        self.entries.iter()
    }
}

/// Static overlay IPv4 -> MAC bindings for ARP suppression in one network.
#[derive(Debug, Clone)]
pub struct ArpTable {
    entries: BTreeMap<Ipv4Address, EthernetAddress>,
    /// Every binding as (MAC, address), so a MAC's bindings are found without a scan.
    by_mac: BTreeSet<(EthernetAddress, Ipv4Address)>,
    capacity: usize,
}

impl ArpTable {
    pub fn new(capacity: usize) -> ArpTable {
        ArpTable {
            entries: BTreeMap::new(),
            by_mac: BTreeSet::new(),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the capacity; as [`Fdb::set_capacity`].
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bind `ip` to `mac`, replacing an earlier binding of `ip`.
    pub fn insert(&mut self, ip: Ipv4Address, mac: EthernetAddress) -> Result<(), TableError> {
        if !mac.is_unicast() {
            return Err(TableError::NotUnicastMac);
        }
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(TableError::NotUnicastIp);
        }
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.capacity {
            return Err(TableError::Full);
        }
        if let Some(old) = self.entries.insert(ip, mac) {
            self.by_mac.remove(&(old, ip));
        }
        self.by_mac.insert((mac, ip));
        Ok(())
    }

    pub fn remove(&mut self, ip: &Ipv4Address) -> Option<EthernetAddress> {
        let mac = self.entries.remove(ip)?;
        self.by_mac.remove(&(mac, *ip));
        Some(mac)
    }

    pub fn lookup(&self, ip: &Ipv4Address) -> Option<EthernetAddress> {
        self.entries.get(ip).copied()
    }

    /// Drop every binding to `mac` (its FDB entry went away). Costs what it removes:
    /// the bindings are indexed by MAC.
    pub fn remove_mac(&mut self, mac: &EthernetAddress) -> usize {
        let ips: Vec<Ipv4Address> = self
            .by_mac
            .range((*mac, Ipv4Address::UNSPECIFIED)..=(*mac, Ipv4Address::BROADCAST))
            .map(|&(_, ip)| ip)
            .collect();
        for ip in &ips {
            self.by_mac.remove(&(*mac, *ip));
            self.entries.remove(ip);
        }
        ips.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Ipv4Address, &EthernetAddress)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::test_rng::Rng;
    use alloc::vec::Vec;

    fn mac(n: u8) -> EthernetAddress {
        EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x00, n])
    }

    const PEER_A: Ipv4Address = Ipv4Address::new(192, 0, 2, 10);
    const PEER_B: Ipv4Address = Ipv4Address::new(192, 0, 2, 11);

    fn at(secs: u64) -> Instant {
        Instant::from_secs(secs as i64)
    }

    #[test]
    fn learn_refresh_and_age() {
        let mut fdb = Fdb::new(8, Duration::from_secs(10));
        assert_eq!(fdb.learn(mac(1), at(0)), Learn::Added);
        assert_eq!(fdb.lookup(&mac(1), at(9)), Some(Location::Local));
        assert_eq!(
            fdb.lookup(&mac(1), at(10)),
            None,
            "expired at exactly ageing"
        );
        assert_eq!(fdb.learn(mac(1), at(9)), Learn::Refreshed);
        assert_eq!(fdb.lookup(&mac(1), at(18)), Some(Location::Local));
        assert_eq!(fdb.age(at(18)), 0);
        assert_eq!(fdb.age(at(19)), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn a_burst_refreshes_once_and_changes_are_never_skipped() {
        let ms = |ms: i64| Instant::from_millis(ms);
        let mut fdb = Fdb::new(8, Duration::from_secs(10));
        assert_eq!(fdb.refresh_after(), REFRESH_AFTER);
        assert_eq!(fdb.learn(mac(1), ms(0)), Learn::Added);
        // Within a second of the stamp: nothing written, the stamp stays at 0.
        assert_eq!(fdb.learn(mac(1), ms(999)), Learn::Refreshed);
        assert_eq!(fdb.lookup(&mac(1), ms(9_999)), Some(Location::Local));
        assert_eq!(fdb.lookup(&mac(1), ms(10_000)), None);
        // A second on, the stamp moves.
        assert_eq!(fdb.learn(mac(1), ms(1_000)), Learn::Refreshed);
        assert_eq!(fdb.lookup(&mac(1), ms(10_999)), Some(Location::Local));
        // Control takes the MAC over: the next frame finds the static entry.
        fdb.insert_static(mac(1), Location::Remote(PEER_A), ms(1_001))
            .unwrap();
        assert_eq!(fdb.learn(mac(1), ms(1_002)), Learn::StaticKept);
        fdb.remove_static(&mac(1));
        assert_eq!(fdb.learn(mac(1), ms(1_003)), Learn::Added);
        // Swept away: learned again at once.
        assert_eq!(fdb.age(ms(11_003)), 1);
        assert_eq!(fdb.learn(mac(1), ms(11_004)), Learn::Added);
        // A short ageing time refreshes more often.
        let short = Fdb::new(8, Duration::from_millis(400));
        assert_eq!(short.refresh_after(), Duration::from_millis(50));
    }

    #[test]
    fn static_never_ages_and_learning_never_overwrites() {
        let mut fdb = Fdb::new(8, Duration::from_secs(10));
        fdb.insert_static(mac(1), Location::Remote(PEER_A), at(0))
            .unwrap();
        assert_eq!(fdb.learn(mac(1), at(1)), Learn::StaticKept);
        assert_eq!(fdb.age(at(1_000_000)), 0);
        assert_eq!(
            fdb.lookup(&mac(1), at(1_000_000)),
            Some(Location::Remote(PEER_A))
        );
        // Control may move it.
        fdb.insert_static(mac(1), Location::Remote(PEER_B), at(2))
            .unwrap();
        assert_eq!(fdb.lookup(&mac(1), at(2)), Some(Location::Remote(PEER_B)));
        // Static replaces a learned entry.
        fdb.learn(mac(2), at(0));
        fdb.insert_static(mac(2), Location::Remote(PEER_A), at(0))
            .unwrap();
        assert_eq!(fdb.lookup(&mac(2), at(100)), Some(Location::Remote(PEER_A)));
        // remove_static leaves learned entries alone.
        fdb.learn(mac(3), at(0));
        assert!(!fdb.remove_static(&mac(3)));
        assert!(fdb.remove_static(&mac(2)));
        assert_eq!(fdb.lookup(&mac(2), at(0)), None);
    }

    #[test]
    fn not_unicast_refused() {
        let mut fdb = Fdb::new(8, DEFAULT_AGEING);
        let mcast = EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]);
        assert_eq!(
            fdb.learn(EthernetAddress::BROADCAST, at(0)),
            Learn::NotUnicast
        );
        assert_eq!(fdb.learn(mcast, at(0)), Learn::NotUnicast);
        assert_eq!(
            fdb.insert_static(mcast, Location::Local, at(0)),
            Err(TableError::NotUnicastMac)
        );
        assert!(fdb.is_empty());
    }

    #[test]
    fn capacity_bound() {
        let mut fdb = Fdb::new(2, Duration::from_secs(10));
        assert_eq!(fdb.learn(mac(1), at(0)), Learn::Added);
        assert_eq!(fdb.learn(mac(2), at(1)), Learn::Added);
        assert_eq!(fdb.learn(mac(3), at(2)), Learn::Full);
        // Once mac(1) expired, learning sweeps it and makes room.
        assert_eq!(fdb.learn(mac(3), at(10)), Learn::Added);
        assert_eq!(fdb.lookup(&mac(1), at(10)), None);
        // Static evicts the least recently seen learned entry (mac(2), seen at 1).
        fdb.insert_static(mac(4), Location::Remote(PEER_A), at(10))
            .unwrap();
        assert_eq!(fdb.lookup(&mac(2), at(10)), None);
        assert_eq!(fdb.lookup(&mac(3), at(10)), Some(Location::Local));
        fdb.insert_static(mac(5), Location::Remote(PEER_A), at(10))
            .unwrap();
        assert_eq!(
            fdb.insert_static(mac(6), Location::Remote(PEER_A), at(10)),
            Err(TableError::Full)
        );
        assert_eq!(fdb.learn(mac(7), at(10)), Learn::Full);
        assert_eq!(fdb.len(), 2);
    }

    #[test]
    fn remove_remote_only_touches_that_peer() {
        let mut fdb = Fdb::new(8, DEFAULT_AGEING);
        fdb.insert_static(mac(1), Location::Remote(PEER_A), at(0))
            .unwrap();
        fdb.insert_static(mac(2), Location::Remote(PEER_B), at(0))
            .unwrap();
        fdb.learn(mac(3), at(0));
        assert_eq!(fdb.remove_remote(PEER_A), [mac(1)]);
        assert_eq!(fdb.lookup(&mac(1), at(0)), None);
        assert_eq!(fdb.lookup(&mac(2), at(0)), Some(Location::Remote(PEER_B)));
        assert_eq!(fdb.lookup(&mac(3), at(0)), Some(Location::Local));
    }

    #[test]
    fn arp_table() {
        let mut arp = ArpTable::new(2);
        let ip = |n| Ipv4Address::new(10, 81, 128, n);
        arp.insert(ip(1), mac(1)).unwrap();
        arp.insert(ip(1), mac(2)).unwrap();
        assert_eq!(arp.lookup(&ip(1)), Some(mac(2)));
        arp.insert(ip(2), mac(2)).unwrap();
        assert_eq!(arp.insert(ip(3), mac(3)), Err(TableError::Full));
        assert_eq!(
            arp.insert(Ipv4Address::UNSPECIFIED, mac(3)),
            Err(TableError::NotUnicastIp)
        );
        assert_eq!(
            arp.insert(Ipv4Address::new(224, 0, 0, 1), mac(3)),
            Err(TableError::NotUnicastIp)
        );
        assert_eq!(
            arp.insert(ip(3), EthernetAddress::BROADCAST),
            Err(TableError::NotUnicastMac)
        );
        assert_eq!(arp.remove_mac(&mac(2)), 2);
        assert!(arp.is_empty());
    }

    /// The ARP table against a list searched linearly (what `remove_mac` was: a scan),
    /// on random bindings, rebindings and removals.
    #[test]
    fn arp_table_matches_a_linear_model() {
        let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
        let mut next = move |n: u64| rng.below(n);
        let ip = |n: u64| Ipv4Address::new(10, 81, 128, n as u8);
        for round in 0..200 {
            let capacity = 1 + next(8) as usize;
            let mut arp = ArpTable::new(capacity);
            let mut model: Vec<(Ipv4Address, EthernetAddress)> = Vec::new();
            for step in 0..300 {
                let (a, m) = (ip(next(12)), mac(next(6) as u8));
                match next(4) {
                    0 | 1 => {
                        let fits = model.iter().any(|e| e.0 == a) || model.len() < capacity;
                        assert_eq!(arp.insert(a, m).is_ok(), fits, "round {round} step {step}");
                        if fits {
                            model.retain(|e| e.0 != a);
                            model.push((a, m));
                        }
                    }
                    2 => {
                        let had = model.iter().find(|e| e.0 == a).map(|e| e.1);
                        model.retain(|e| e.0 != a);
                        assert_eq!(arp.remove(&a), had, "round {round} step {step}");
                    }
                    _ => {
                        let before = model.len();
                        model.retain(|e| e.1 != m);
                        assert_eq!(arp.remove_mac(&m), before - model.len());
                    }
                }
                assert_eq!(arp.len(), model.len());
                for n in 0..12 {
                    let want = model.iter().find(|e| e.0 == ip(n)).map(|e| e.1);
                    assert_eq!(arp.lookup(&ip(n)), want, "round {round} step {step}");
                }
            }
        }
    }

    /// The simplest table that has the documented behaviour: a list searched linearly.
    struct Model {
        capacity: usize,
        ageing: u64,
        entries: Vec<(EthernetAddress, Location, Option<u64>)>, // None = static
    }

    impl Model {
        fn live(&self, e: &(EthernetAddress, Location, Option<u64>), now: u64) -> bool {
            e.2.is_none_or(|seen| now < seen + self.ageing)
        }
        fn lookup(&self, m: EthernetAddress, now: u64) -> Option<Location> {
            self.entries
                .iter()
                .find(|e| e.0 == m && self.live(e, now))
                .map(|e| e.1)
        }
        fn sweep(&mut self, now: u64) {
            let ageing = self.ageing;
            self.entries
                .retain(|e| e.2.is_none_or(|seen| now < seen + ageing));
        }
        fn learn(&mut self, m: EthernetAddress, now: u64) -> Learn {
            if let Some(e) = self.entries.iter_mut().find(|e| e.0 == m) {
                if e.2.is_none() {
                    return Learn::StaticKept;
                }
                e.2 = Some(now);
                return Learn::Refreshed;
            }
            if self.entries.len() >= self.capacity {
                self.sweep(now);
                if self.entries.len() >= self.capacity {
                    return Learn::Full;
                }
            }
            self.entries.push((m, Location::Local, Some(now)));
            Learn::Added
        }
        fn insert_static(&mut self, m: EthernetAddress, l: Location, now: u64) -> bool {
            if let Some(e) = self.entries.iter_mut().find(|e| e.0 == m) {
                *e = (m, l, None);
                return true;
            }
            if self.entries.len() >= self.capacity {
                self.sweep(now);
            }
            if self.entries.len() >= self.capacity {
                let victim = self
                    .entries
                    .iter()
                    .filter_map(|e| e.2.map(|seen| (seen, e.0)))
                    .min();
                match victim {
                    Some((_, v)) => self.entries.retain(|e| e.0 != v),
                    None => return false,
                }
            }
            self.entries.push((m, l, None));
            true
        }
    }

    #[test]
    fn random_sequences_match_model() {
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: u64| rng.below(n);
        for round in 0..200 {
            let capacity = 1 + next(6) as usize;
            let ageing = 1 + next(20);
            let mut fdb = Fdb::new(capacity, Duration::from_secs(ageing));
            let mut model = Model {
                capacity,
                ageing,
                entries: Vec::new(),
            };
            let mut now = 0u64;
            for step in 0..300 {
                let m = mac(next(10) as u8);
                let peer = if next(2) == 0 { PEER_A } else { PEER_B };
                match next(7) {
                    0 | 1 => assert_eq!(
                        fdb.learn(m, at(now)),
                        model.learn(m, now),
                        "round {round} step {step}"
                    ),
                    2 => assert_eq!(
                        fdb.insert_static(m, Location::Remote(peer), at(now))
                            .is_ok(),
                        model.insert_static(m, Location::Remote(peer), now),
                        "round {round} step {step}"
                    ),
                    3 => {
                        let was_static = model.entries.iter().any(|e| e.0 == m && e.2.is_none());
                        model.entries.retain(|e| !(e.0 == m && e.2.is_none()));
                        assert_eq!(fdb.remove_static(&m), was_static);
                    }
                    4 => {
                        fdb.age(at(now));
                        model.sweep(now);
                    }
                    5 => {
                        let mut removed = fdb.remove_remote(peer);
                        removed.sort();
                        let mut gone: Vec<EthernetAddress> = model
                            .entries
                            .iter()
                            .filter(|e| e.1 == Location::Remote(peer))
                            .map(|e| e.0)
                            .collect();
                        gone.sort();
                        model.entries.retain(|e| e.1 != Location::Remote(peer));
                        assert_eq!(removed, gone, "round {round} step {step}");
                    }
                    _ => now += next(8),
                }
                assert!(fdb.len() <= capacity);
                // The index of each peer's entries says what a scan would.
                for p in [PEER_A, PEER_B] {
                    let scanned = fdb
                        .iter()
                        .filter(|(_, e)| e.location == Location::Remote(p))
                        .count();
                    assert_eq!(fdb.remote_len(p), scanned, "round {round} step {step}");
                }
                for n in 0..10 {
                    assert_eq!(
                        fdb.lookup(&mac(n), at(now)),
                        model.lookup(mac(n), now),
                        "round {round} step {step} mac {n}"
                    );
                }
            }
        }
    }
}
