//! Connection tracking: the table of flows the NAT and the load balancer translate.
//!
//! Owns flows keyed by 5-tuple (the original and the reply tuple both lead to one
//! entry), the TCP state machine driven by flags seen in both directions, idle
//! timeouts per state (RFC 4787, RFC 5382, RFC 7857) and the capacity policy: when
//! full, expired then closed then transitory flows make room; established flows
//! are never evicted, a new flow is refused and counted instead.
//!
//! Must never read a clock (time comes in as `Instant`), never allocate on the
//! per-packet path (the table is sized once from `ConntrackConfig::capacity`), and never
//! panic on what a packet says.

mod config;
mod flow;
mod index;
mod tcp;

use alloc::vec::Vec;

use smoltcp::time::Instant;

use crate::base::{Direction, FlowTuple};
use config::{Class, CLASSES, EVICTABLE};
pub use config::{ConntrackConfig, InsertError, Stats, Timeouts};
pub use flow::{Flow, FlowFilter, FlowId, FlowInfo, FlowState};
use index::{fingerprint, fold_mul, Index};
pub use tcp::{tcp_transition, TcpEvent, TcpState};

/// No slot: the end of a list, or an empty free list.
const NIL: u32 = u32::MAX;
/// Tuples one [`Conntrack::probe`] looks up ahead (a receive burst).
pub const WARM_MAX: usize = 64;

/// The flows of one timeout class, linked through their slots, least recently
/// active first.
#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
}

/// The connection-tracking table.
pub struct Conntrack {
    config: ConntrackConfig,
    flows: Vec<Flow>,
    free: u32,
    len: usize,
    /// Both tuples of each flow: `slot << 1 | direction`.
    index: Index,
    lists: [List; 6],
    seed: [u64; 2],
    stats: Stats,
}

/// What [`Conntrack::probe`] found for one tuple ahead of its packet: the tuple's
/// index fingerprint (when `hashed`) and the entry it matched then (`NIL`: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    fp: u32,
    hashed: bool,
    entry: u32,
}

impl Probe {
    /// A probe that knows nothing: a lookup with it hashes and searches afresh.
    pub const NONE: Probe = Probe {
        fp: 0,
        hashed: false,
        entry: NIL,
    };
}

fn entry(slot: u32, dir: Direction) -> u32 {
    (slot << 1) | (dir == Direction::Reply) as u32
}

fn entry_slot(e: u32) -> usize {
    (e >> 1) as usize
}

fn entry_dir(e: u32) -> Direction {
    if e & 1 == 0 {
        Direction::Original
    } else {
        Direction::Reply
    }
}

impl Conntrack {
    /// A table for `config.capacity` flows; `seed` keys the hash (pass a random
    /// value from the platform).
    pub fn new(config: ConntrackConfig, seed: u64) -> Conntrack {
        let capacity = config.capacity.min((u32::MAX >> 2) as usize);
        Conntrack {
            config: ConntrackConfig { capacity, ..config },
            flows: Vec::with_capacity(capacity),
            free: NIL,
            len: 0,
            index: Index::with_entries(2 * capacity),
            lists: [List {
                head: NIL,
                tail: NIL,
            }; 6],
            seed: [
                fold_mul(seed ^ 0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344),
                fold_mul(seed ^ 0xa409_3822_299f_31d0, 0x082e_fa98_ec4e_6c89),
            ],
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &ConntrackConfig {
        &self.config
    }

    /// Changes the timeouts; flows keep their last activity time.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.config.timeouts = timeouts;
    }

    /// Flows held, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.config.capacity
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts a TCP segment refused for its flags (the caller drops it).
    pub fn count_tcp_invalid(&mut self) {
        self.stats.tcp_invalid += 1;
    }

    /// Bytes of memory per flow of capacity: the flow and its share of the index.
    /// The bytes a table for `capacity` flows allocates up front (flows and index),
    /// so a caller can tell whether it fits before asking for it.
    pub fn table_bytes(capacity: usize) -> usize {
        let capacity = capacity.min((u32::MAX >> 2) as usize);
        capacity * core::mem::size_of::<Flow>()
            + Index::buckets_for(2 * capacity) * core::mem::size_of::<u64>()
    }

    pub fn bytes_per_flow(&self) -> usize {
        let index = self.index.buckets.len() * core::mem::size_of::<u64>();
        core::mem::size_of::<Flow>() + index / self.config.capacity.max(1)
    }

    fn deadline(&self, flow: &Flow) -> Instant {
        flow.last_seen + self.config.timeouts.of(flow.state.class())
    }

    fn is_expired(&self, flow: &Flow, now: Instant) -> bool {
        now >= self.deadline(flow)
    }

    fn find(&self, tuple: &FlowTuple) -> Option<u32> {
        self.find_fp(fingerprint(&self.seed, tuple), tuple)
    }

    /// [`Conntrack::find`] for a tuple whose fingerprint is `fp`.
    fn find_fp(&self, fp: u32, tuple: &FlowTuple) -> Option<u32> {
        let flows = &self.flows;
        self.index
            .find(fp, |e| flows[entry_slot(e)].tuple(entry_dir(e)) == tuple)
    }

    /// Begins the lookups of a burst's tuples so that the cache misses of all of them
    /// overlap: every home bucket line is read first, then every flow the first entry
    /// with a matching fingerprint names, each in a loop of independent reads and
    /// little else (there is no safe prefetch instruction: as many reads as the CPU can
    /// have in flight are). Writes into `probes` each tuple's fingerprint and that
    /// entry, which [`Conntrack::lookup_probed`] confirms when its packet's turn comes
    /// from the flow line it brought in (a 32-bit fingerprint rarely matches another
    /// tuple, and the packets before may open or end flows). Changes nothing; at most
    /// `WARM_MAX` tuples are probed.
    pub fn probe(&self, tuples: &[FlowTuple], probes: &mut [Probe]) {
        let n = tuples.len().min(probes.len()).min(WARM_MAX);
        let (tuples, probes) = (&tuples[..n], &mut probes[..n]);
        let mut homes = [0usize; WARM_MAX];
        for ((p, t), home) in probes.iter_mut().zip(tuples).zip(&mut homes) {
            *p = self.hashed(t);
            *home = self.index.home(p.fp);
        }
        let mut seen = 0u64;
        for &home in &homes[..n] {
            seen ^= self.index.bucket(home);
        }
        for p in probes.iter_mut() {
            if let Some(e) = self.index.first_with(p.fp) {
                if let Some(flow) = self.flows.get(entry_slot(e)) {
                    seen ^= flow.last_seen.total_micros() as u64;
                }
                p.entry = e;
            }
        }
        // The reads are the point: keep them.
        core::hint::black_box(seen);
    }

    /// The probe of `tuple` before its lookup: its fingerprint, no entry yet.
    fn hashed(&self, tuple: &FlowTuple) -> Probe {
        Probe {
            fp: fingerprint(&self.seed, tuple),
            hashed: true,
            entry: NIL,
        }
    }

    /// The live flow a packet with `tuple` belongs to, and its direction.
    /// An expired flow is not found (it is swept by `expire` or replaced by `insert`).
    pub fn lookup(&self, tuple: &FlowTuple, now: Instant) -> Option<(FlowId, Direction)> {
        self.lookup_probed(tuple, Probe::NONE, now)
    }

    /// [`Conntrack::lookup`] of the tuple `probe` was made for. The entry it names
    /// stands when its slot holds a live flow with that tuple in that direction: tuples
    /// of live flows are unique, so the index would find that very entry. Else the
    /// index is searched, with the fingerprint the probe kept.
    pub fn lookup_probed(
        &self,
        tuple: &FlowTuple,
        probe: Probe,
        now: Instant,
    ) -> Option<(FlowId, Direction)> {
        let confirmed = self
            .flows
            .get(entry_slot(probe.entry))
            .is_some_and(|f| f.live && f.tuple(entry_dir(probe.entry)) == tuple);
        let e = if confirmed {
            probe.entry
        } else if probe.hashed {
            self.find_fp(probe.fp, tuple)?
        } else {
            self.find(tuple)?
        };
        let flow = &self.flows[entry_slot(e)];
        if self.is_expired(flow, now) {
            return None;
        }
        Some((FlowId(e >> 1), entry_dir(e)))
    }

    /// The flow behind `id`, if it is still held.
    pub fn get(&self, id: FlowId) -> Option<&Flow> {
        self.flows.get(id.0 as usize).filter(|f| f.live)
    }

    /// Sets the owner data of a flow.
    pub fn set_tag(&mut self, id: FlowId, tag: u32) {
        if let Some(f) = self.flows.get_mut(id.0 as usize).filter(|f| f.live) {
            f.tag = tag;
        }
    }

    /// Whether `tuple` (in either direction of a live flow) is taken.
    pub fn contains(&self, tuple: &FlowTuple, now: Instant) -> bool {
        self.lookup(tuple, now).is_some()
    }

    /// Tracks a new flow. `on_remove` sees every flow removed to make room
    /// (expired, or evicted when full) so owners can release what they hold.
    pub fn insert(
        &mut self,
        orig: FlowTuple,
        reply: FlowTuple,
        now: Instant,
        on_remove: &mut impl FnMut(&Flow),
    ) -> Result<FlowId, InsertError> {
        // A tuple held by an expired flow is free: drop that flow first.
        for t in [&orig, &reply] {
            if let Some(e) = self.find(t) {
                let slot = entry_slot(e) as u32;
                if self.is_expired(&self.flows[slot as usize], now) {
                    self.stats.expired += 1;
                    self.release(slot, on_remove);
                } else {
                    self.stats.refused_clash += 1;
                    return Err(InsertError::Clash);
                }
            }
        }
        if orig == reply {
            // One tuple cannot name both directions.
            self.stats.refused_clash += 1;
            return Err(InsertError::Clash);
        }
        if self.len >= self.config.capacity && !self.make_room(now, on_remove) {
            self.stats.refused_full += 1;
            return Err(InsertError::Full);
        }
        let flow = Flow {
            orig,
            reply,
            last_seen: now,
            linked_at: now,
            prev: NIL,
            next: NIL,
            state: FlowState::initial(orig.proto),
            fins: 0,
            replied: false,
            live: true,
            tag: 0,
        };
        let slot = if self.free != NIL {
            let slot = self.free;
            self.free = self.flows[slot as usize].next;
            self.flows[slot as usize] = flow;
            slot
        } else {
            self.flows.push(flow);
            (self.flows.len() - 1) as u32
        };
        self.len += 1;
        self.link_tail(slot, now);
        self.index.insert(
            fingerprint(&self.seed, &orig),
            entry(slot, Direction::Original),
        );
        self.index.insert(
            fingerprint(&self.seed, &reply),
            entry(slot, Direction::Reply),
        );
        self.stats.inserts += 1;
        Ok(FlowId(slot))
    }

    /// Frees one slot: an expired flow, else the oldest closed, time-wait or
    /// transitory flow. False when every flow is live and established/UDP/ICMP.
    fn make_room(&mut self, now: Instant, on_remove: &mut impl FnMut(&Flow)) -> bool {
        for class in CLASSES {
            let head = self.lists[class as usize].head;
            if head != NIL && self.is_expired(&self.flows[head as usize], now) {
                self.stats.expired += 1;
                self.release(head, on_remove);
                return true;
            }
        }
        for class in EVICTABLE {
            let head = self.lists[class as usize].head;
            if head != NIL {
                self.stats.evicted += 1;
                self.release(head, on_remove);
                return true;
            }
        }
        false
    }

    /// Records a packet of flow `id` seen in `dir`: refreshes its timeout and, for
    /// TCP, advances the state machine. Returns the new state.
    pub fn update(
        &mut self,
        id: FlowId,
        dir: Direction,
        tcp: Option<TcpEvent>,
        now: Instant,
    ) -> Option<FlowState> {
        let slot = id.0;
        let granularity = self.config.refresh;
        let flow = self.flows.get_mut(slot as usize).filter(|f| f.live)?;
        let before = flow.state;
        if let (FlowState::Tcp(state), Some(event)) = (before, tcp) {
            let (next, fins) = tcp_transition(state, flow.fins, dir, event);
            flow.state = FlowState::Tcp(next);
            flow.fins = fins;
        }
        if dir == Direction::Reply {
            flow.replied = true;
        }
        flow.last_seen = now;
        let state = flow.state;
        // Moving to the list tail touches two neighbours' cache lines; a busy
        // flow does it at most once per `refresh` (expiry stays exact: it reads
        // `last_seen`; only sweeping may lag by up to `refresh`).
        let reclassed = state != before && state.class() != before.class();
        if reclassed || now >= flow.linked_at + granularity {
            self.unlink_from(slot, before.class());
            self.link_tail(slot, now);
        }
        Some(state)
    }

    /// Removes a flow on request.
    pub fn remove(&mut self, id: FlowId, on_remove: &mut impl FnMut(&Flow)) -> bool {
        if self.get(id).is_none() {
            return false;
        }
        self.stats.removed += 1;
        self.release(id.0, on_remove);
        true
    }

    /// Removes every flow for which `remove` is true (control-plane scan).
    pub fn remove_where(
        &mut self,
        mut remove: impl FnMut(&Flow) -> bool,
        on_remove: &mut impl FnMut(&Flow),
    ) -> usize {
        let mut n = 0;
        for slot in 0..self.flows.len() as u32 {
            let f = &self.flows[slot as usize];
            if f.live && remove(f) {
                self.stats.removed += 1;
                self.release(slot, on_remove);
                n += 1;
            }
        }
        n
    }

    /// Sweeps at most `budget` expired flows; returns how many went. Call it from
    /// the poll loop; lookups already ignore expired flows, so it only frees room.
    pub fn expire(
        &mut self,
        now: Instant,
        budget: usize,
        on_remove: &mut impl FnMut(&Flow),
    ) -> usize {
        let mut n = 0;
        for class in CLASSES {
            while n < budget {
                let head = self.lists[class as usize].head;
                if head == NIL || !self.is_expired(&self.flows[head as usize], now) {
                    break;
                }
                self.stats.expired += 1;
                self.release(head, on_remove);
                n += 1;
            }
        }
        n
    }

    /// The earliest time a held flow expires, for the poll loop's next wake-up.
    pub fn next_expiry(&self) -> Option<Instant> {
        CLASSES
            .iter()
            .filter_map(|&c| {
                let head = self.lists[c as usize].head;
                (head != NIL).then(|| self.deadline(&self.flows[head as usize]))
            })
            .min()
    }

    /// Up to `limit` live flows matching `filter`, for the `flows` command.
    pub fn flows(&self, filter: &FlowFilter, limit: usize, now: Instant) -> Vec<FlowInfo> {
        self.flows
            .iter()
            .filter(|f| f.live && !self.is_expired(f, now) && filter.matches(f))
            .take(limit)
            .map(|f| FlowInfo {
                proto: f.orig.proto,
                original: f.orig,
                reply: f.reply,
                state: f.state,
                expires_in_secs: (self.deadline(f) - now).secs(),
            })
            .collect()
    }

    /// Iterates over held flows (expired ones included until swept).
    pub fn iter(&self) -> impl Iterator<Item = (FlowId, &Flow)> {
        self.flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.live)
            .map(|(i, f)| (FlowId(i as u32), f))
    }

    fn release(&mut self, slot: u32, on_remove: &mut impl FnMut(&Flow)) {
        self.unlink(slot);
        let flow = self.flows[slot as usize];
        for (t, dir) in [
            (&flow.orig, Direction::Original),
            (&flow.reply, Direction::Reply),
        ] {
            self.index
                .remove(fingerprint(&self.seed, t), entry(slot, dir));
        }
        on_remove(&flow);
        let f = &mut self.flows[slot as usize];
        f.live = false;
        f.next = self.free;
        self.free = slot;
        self.len -= 1;
    }

    fn link_tail(&mut self, slot: u32, now: Instant) {
        let class = self.flows[slot as usize].state.class() as usize;
        let tail = self.lists[class].tail;
        {
            let f = &mut self.flows[slot as usize];
            f.prev = tail;
            f.next = NIL;
            f.linked_at = now;
        }
        if tail == NIL {
            self.lists[class].head = slot;
        } else {
            self.flows[tail as usize].next = slot;
        }
        self.lists[class].tail = slot;
    }

    /// Unlinks from the list of the flow's current class.
    fn unlink(&mut self, slot: u32) {
        let class = self.flows[slot as usize].state.class();
        self.unlink_from(slot, class);
    }

    /// Unlinks from the list of `class` (the class the flow was linked under).
    fn unlink_from(&mut self, slot: u32, class: Class) {
        let class = class as usize;
        let (prev, next) = {
            let f = &self.flows[slot as usize];
            (f.prev, f.next)
        };
        if prev == NIL {
            self.lists[class].head = next;
        } else {
            self.flows[prev as usize].next = next;
        }
        if next == NIL {
            self.lists[class].tail = prev;
        } else {
            self.flows[next as usize].prev = prev;
        }
    }
}

#[cfg(test)]
mod tests;
