//! Connection tracking: the table of flows the NAT and the load balancer translate.
//!
//! Owns flows keyed by 5-tuple (the original and the reply tuple both lead to one
//! entry), the TCP state machine driven by flags seen in both directions, idle
//! timeouts per state (RFC 4787, RFC 5382, RFC 7857) and the capacity policy: when
//! full, expired then closed then transitory flows make room; established flows
//! are never evicted, a new flow is refused and counted instead.
//!
//! Must never read a clock (time comes in as `Instant`), never allocate on the
//! per-packet path (the table is sized once from `Config::capacity`), and never
//! panic on what a packet says.

use alloc::vec::Vec;

use serde::Serialize;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::Ipv4Address;

use crate::base::{Direction, FlowTuple, Proto};

/// TCP connection states as a middlebox sees them (both directions' flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    SynSent,
    SynRecv,
    Established,
    /// One side sent FIN.
    FinWait,
    /// The other side acknowledged that FIN; data may still flow its way.
    CloseWait,
    /// Both sides sent FIN; waiting for the last ACK.
    LastAck,
    TimeWait,
    /// Reset.
    Closed,
}

/// What the table knows about a flow's protocol state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    Tcp(TcpState),
    Udp,
    Icmp,
}

impl FlowState {
    /// The state a flow starts in for `proto` (TCP flows open with a SYN).
    pub fn initial(proto: Proto) -> FlowState {
        match proto {
            Proto::Tcp => FlowState::Tcp(TcpState::SynSent),
            Proto::Udp => FlowState::Udp,
            Proto::Icmp => FlowState::Icmp,
        }
    }

    fn class(self) -> Class {
        match self {
            FlowState::Tcp(TcpState::Established) => Class::Established,
            FlowState::Tcp(TcpState::TimeWait) => Class::TimeWait,
            FlowState::Tcp(TcpState::Closed) => Class::Closed,
            FlowState::Tcp(_) => Class::Transitory,
            FlowState::Udp => Class::Udp,
            FlowState::Icmp => Class::Icmp,
        }
    }
}

/// The TCP flags that drive the state machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// A TCP segment's meaning for the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEvent {
    Syn,
    SynAck,
    /// FIN (with ACK).
    Fin,
    Ack,
    Rst,
}

impl TcpEvent {
    /// Classifies flags; `None` for combinations no TCP sends (SYN+FIN, SYN+RST,
    /// FIN without ACK, no SYN/ACK/RST at all) — the same set Linux refuses.
    pub fn classify(flags: TcpFlags) -> Option<TcpEvent> {
        let TcpFlags { syn, ack, fin, rst } = flags;
        match (syn, ack, fin, rst) {
            (true, false, false, false) => Some(TcpEvent::Syn),
            (true, true, false, false) => Some(TcpEvent::SynAck),
            (false, _, false, true) => Some(TcpEvent::Rst),
            (false, true, true, false) => Some(TcpEvent::Fin),
            (false, true, false, false) => Some(TcpEvent::Ack),
            _ => None,
        }
    }
}

/// FIN bookkeeping kept beside the TCP state: which sides sent FIN, and who sent
/// the latest one (the ACK that completes a close comes from the other side).
const FIN_ORIGINAL: u8 = 1;
const FIN_REPLY: u8 = 2;
const LAST_FIN_REPLY: u8 = 4;

fn fin_bit(dir: Direction) -> u8 {
    match dir {
        Direction::Original => FIN_ORIGINAL,
        Direction::Reply => FIN_REPLY,
    }
}

fn last_fin(fins: u8) -> Direction {
    if fins & LAST_FIN_REPLY != 0 {
        Direction::Reply
    } else {
        Direction::Original
    }
}

fn with_last_fin(fins: u8, dir: Direction) -> u8 {
    let fins = fins | fin_bit(dir);
    match dir {
        Direction::Original => fins & !LAST_FIN_REPLY,
        Direction::Reply => fins | LAST_FIN_REPLY,
    }
}

/// The TCP transition for `event` seen in `dir`: the new state and FIN bits.
/// Events that make no sense in a state leave it unchanged (a middlebox is
/// liberal: the endpoints sort out their own confusion).
pub fn tcp_transition(
    state: TcpState,
    fins: u8,
    dir: Direction,
    event: TcpEvent,
) -> (TcpState, u8) {
    use Direction::*;
    use TcpState::*;
    let stay = (state, fins);
    match (event, state) {
        (TcpEvent::Rst, _) => (Closed, fins),
        (TcpEvent::Syn, SynSent) if dir == Original => stay,
        // A new connection reusing the tuple of a finished one.
        (TcpEvent::Syn, TimeWait | Closed) if dir == Original => (SynSent, 0),
        // Simultaneous open.
        (TcpEvent::Syn, SynSent) => (SynRecv, fins),
        (TcpEvent::Syn, _) => stay,
        (TcpEvent::SynAck, SynSent | SynRecv) if dir == Reply => (SynRecv, fins),
        (TcpEvent::SynAck, _) => stay,
        (TcpEvent::Ack, SynRecv) if dir == Original => (Established, fins),
        (TcpEvent::Ack, FinWait) if dir != last_fin(fins) => (CloseWait, fins),
        (TcpEvent::Ack, LastAck) if dir != last_fin(fins) => (TimeWait, fins),
        (TcpEvent::Ack, _) => stay,
        (TcpEvent::Fin, SynRecv | Established) => (FinWait, with_last_fin(fins, dir)),
        (TcpEvent::Fin, FinWait | CloseWait) if dir != last_fin(fins) => {
            (LastAck, with_last_fin(fins, dir))
        }
        (TcpEvent::Fin, _) => stay,
    }
}

/// Idle timeouts per state. Defaults follow the RFCs' floors and recommendations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// RFC 5382 REQ-5: at least 2 h 4 min.
    pub tcp_established: Duration,
    /// Opening and closing states; RFC 5382 REQ-5 / RFC 7857 §2.1: 4 min.
    pub tcp_transitory: Duration,
    /// After the last ACK of a close: short (2 x MSL of 60 s), RFC 7857 §2.2 lets
    /// a NAT cut it.
    pub tcp_time_wait: Duration,
    /// After a RST.
    pub tcp_closed: Duration,
    /// RFC 4787 REQ-5: at least 2 min, 5 min recommended.
    pub udp: Duration,
    /// RFC 5508 REQ-1: ICMP query sessions at least 60 s.
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(4 * 60),
            tcp_time_wait: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(5 * 60),
            icmp: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    fn of(&self, class: Class) -> Duration {
        match class {
            Class::Established => self.tcp_established,
            Class::Transitory => self.tcp_transitory,
            Class::TimeWait => self.tcp_time_wait,
            Class::Closed => self.tcp_closed,
            Class::Udp => self.udp,
            Class::Icmp => self.icmp,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most flows tracked at once.
    pub capacity: usize,
    pub timeouts: Timeouts,
    /// How often a busy flow's place in its expiry list is refreshed. Lookups
    /// see exact timeouts; sweeping and make-room eviction order are exact to
    /// within this much. Zero refreshes on every packet.
    pub refresh: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capacity: 65_536,
            timeouts: Timeouts::default(),
            refresh: Duration::from_secs(1),
        }
    }
}

/// Counters for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub inserts: u64,
    /// Flows removed on request (backend gone, rule flushed).
    pub removed: u64,
    pub expired: u64,
    /// Closed/transitory flows evicted to make room for a new one.
    pub evicted: u64,
    /// New flows refused because the table was full of live flows.
    pub refused_full: u64,
    /// New flows refused because one of their tuples belongs to a live flow.
    pub refused_clash: u64,
    /// TCP segments whose flags no TCP sends.
    pub tcp_invalid: u64,
}

/// Why a new flow was not inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    Full,
    Clash,
}

/// Index of a flow in the table; valid until that flow is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId(u32);

/// Timeout classes; each has its own list ordered by last activity, so the head
/// of a list is the flow of that class that expires first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Established = 0,
    Transitory = 1,
    TimeWait = 2,
    Closed = 3,
    Udp = 4,
    Icmp = 5,
}

const CLASSES: [Class; 6] = [
    Class::Established,
    Class::Transitory,
    Class::TimeWait,
    Class::Closed,
    Class::Udp,
    Class::Icmp,
];
/// Eviction order when the table is full (after expired flows).
const EVICTABLE: [Class; 3] = [Class::Closed, Class::TimeWait, Class::Transitory];
const NIL: u32 = u32::MAX;

/// One tracked flow: one cache line (the lookup's second and last memory access).
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
pub struct Flow {
    orig: FlowTuple,
    reply: FlowTuple,
    last_seen: Instant,
    /// When the flow took its place in its class list (lists are ordered by it).
    linked_at: Instant,
    prev: u32,
    next: u32,
    state: FlowState,
    fins: u8,
    replied: bool,
    live: bool,
    /// Owner data (the load balancer keeps its service/backend here).
    tag: u32,
}

impl Flow {
    /// The tuple of packets from the opener, as they arrive.
    pub fn original(&self) -> &FlowTuple {
        &self.orig
    }
    /// The tuple of packets from the answerer, as they arrive (after translation
    /// of the original direction it differs from `original().reversed()`).
    pub fn reply(&self) -> &FlowTuple {
        &self.reply
    }
    pub fn tuple(&self, dir: Direction) -> &FlowTuple {
        match dir {
            Direction::Original => &self.orig,
            Direction::Reply => &self.reply,
        }
    }
    pub fn state(&self) -> FlowState {
        self.state
    }
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }
    /// Whether a packet was seen in the reply direction.
    pub fn replied(&self) -> bool {
        self.replied
    }
    pub fn tag(&self) -> u32 {
        self.tag
    }
}

/// Selects flows for the `flows` listing; `None` fields match anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub proto: Option<Proto>,
    /// Matches any address of either tuple.
    pub addr: Option<Ipv4Address>,
    /// Matches any port of either tuple.
    pub port: Option<u16>,
}

impl FlowFilter {
    pub fn matches(&self, flow: &Flow) -> bool {
        let tuples = [flow.orig, flow.reply];
        self.proto.is_none_or(|p| p == flow.orig.proto)
            && self
                .addr
                .is_none_or(|a| tuples.iter().any(|t| t.src.addr == a || t.dst.addr == a))
            && self
                .port
                .is_none_or(|p| tuples.iter().any(|t| t.src.port == p || t.dst.port == p))
    }
}

/// One line of the `flows` listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlowInfo {
    pub proto: Proto,
    pub original: FlowTuple,
    pub reply: FlowTuple,
    pub state: FlowState,
    /// Seconds until the flow expires if idle.
    pub expires_in_secs: u64,
}

#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
}

/// An empty bucket of the index.
const EMPTY: u64 = u64::MAX;

/// The index from tuple to flow: open addressing with linear probing over one
/// `u64` per bucket, `fingerprint << 32 | entry`, eight buckets to a cache line.
/// The fingerprint is 32 bits of the tuple's keyed hash and its high bits pick the
/// home bucket (multiply-shift, so any table size works), so a lookup reads one
/// line of buckets (entries whose fingerprint differs are skipped without touching
/// their flow) and then the one flow it names; removal shifts the cluster back (no
/// tombstones) using the fingerprints alone. Sized once, never more than 80 %
/// full.
struct Index {
    buckets: Vec<u64>,
}

impl Index {
    /// An index for at most `entries` entries. At most 80 % full: 10 bytes of
    /// index per tuple, what hashbrown took before, so the appliance's default
    /// table still fits its smallest memory (`-m 10M`); a lookup in a full table
    /// probes 3 buckets on average, usually in one cache line.
    /// Buckets for `entries` tuples, at most 80 % full.
    fn buckets_for(entries: usize) -> usize {
        (entries.max(4) * 5).div_ceil(4)
    }

    fn with_entries(entries: usize) -> Index {
        let n = Index::buckets_for(entries);
        Index {
            buckets: alloc::vec![EMPTY; n],
        }
    }

    fn home(&self, fp: u32) -> usize {
        ((fp as u64 * self.buckets.len() as u64) >> 32) as usize
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

    /// The entry whose fingerprint is `fp` and for which `is` holds.
    fn find(&self, fp: u32, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
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
    fn insert(&mut self, fp: u32, e: u32) {
        let mut i = self.home(fp);
        while self.buckets[i] != EMPTY {
            i = self.next(i);
        }
        self.buckets[i] = (fp as u64) << 32 | e as u64;
    }

    /// Removes entry `e` (fingerprint `fp`) if present.
    fn remove(&mut self, fp: u32, e: u32) {
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

/// The connection-tracking table.
pub struct Conntrack {
    config: Config,
    flows: Vec<Flow>,
    free: u32,
    len: usize,
    /// Both tuples of each flow: `slot << 1 | direction`.
    index: Index,
    lists: [List; 6],
    seed: [u64; 2],
    stats: Stats,
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

/// 128-bit multiply folded to 64 bits: a fast, well-mixing step keyed by a
/// secret seed so that peers cannot aim many tuples at one bucket.
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

fn hash_tuple(seed: &[u64; 2], t: &FlowTuple) -> u64 {
    let a = ((u32::from(t.src.addr) as u64) << 32) | u32::from(t.dst.addr) as u64;
    let b = ((t.src.port as u64) << 32) | ((t.dst.port as u64) << 16) | t.proto as u64;
    fold_mul(a ^ seed[0], b ^ seed[1])
}

/// The index key of a tuple: 32 well-mixed bits of its keyed hash.
fn fingerprint(seed: &[u64; 2], t: &FlowTuple) -> u32 {
    let h = hash_tuple(seed, t);
    (h ^ (h >> 32)) as u32
}

impl Conntrack {
    /// A table for `config.capacity` flows; `seed` keys the hash (pass a random
    /// value from the platform).
    pub fn new(config: Config, seed: u64) -> Conntrack {
        let capacity = config.capacity.min((u32::MAX >> 2) as usize);
        Conntrack {
            config: Config { capacity, ..config },
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

    pub fn config(&self) -> &Config {
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
        let fp = fingerprint(&self.seed, tuple);
        let flows = &self.flows;
        self.index
            .find(fp, |e| flows[entry_slot(e)].tuple(entry_dir(e)) == tuple)
    }

    /// The live flow a packet with `tuple` belongs to, and its direction.
    /// An expired flow is not found (it is swept by `expire` or replaced by `insert`).
    pub fn lookup(&self, tuple: &FlowTuple, now: Instant) -> Option<(FlowId, Direction)> {
        let e = self.find(tuple)?;
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
        let class = flow.state.class();
        if let (FlowState::Tcp(state), Some(event)) = (flow.state, tcp) {
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
        if state.class() != class || now >= flow.linked_at + granularity {
            self.unlink_from(slot, class);
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
mod tests {
    use super::*;
    use crate::base::Endpoint;
    use alloc::vec;

    fn ep(a: u8, port: u16) -> Endpoint {
        Endpoint::new(Ipv4Address::new(10, 0, 0, a), port)
    }

    fn tcp(a: u8, ap: u16, b: u8, bp: u16) -> FlowTuple {
        FlowTuple::new(Proto::Tcp, ep(a, ap), ep(b, bp))
    }

    fn t(secs: u64) -> Instant {
        Instant::from_secs(secs as i64)
    }

    fn nop() -> impl FnMut(&Flow) {
        |_: &Flow| {}
    }

    fn drive(ct: &mut Conntrack, id: FlowId, steps: &[(Direction, TcpEvent, TcpState)]) {
        for (i, &(dir, ev, want)) in steps.iter().enumerate() {
            let got = ct.update(id, dir, Some(ev), t(i as u64 + 1));
            assert_eq!(got, Some(FlowState::Tcp(want)), "step {i}: {dir:?} {ev:?}");
        }
    }

    #[test]
    fn flags_classify_like_a_tcp_sends_them() {
        let f = |syn, ack, fin, rst| TcpEvent::classify(TcpFlags { syn, ack, fin, rst });
        assert_eq!(f(true, false, false, false), Some(TcpEvent::Syn));
        assert_eq!(f(true, true, false, false), Some(TcpEvent::SynAck));
        assert_eq!(f(false, true, true, false), Some(TcpEvent::Fin));
        assert_eq!(f(false, true, false, false), Some(TcpEvent::Ack));
        assert_eq!(f(false, false, false, true), Some(TcpEvent::Rst));
        assert_eq!(f(false, true, false, true), Some(TcpEvent::Rst));
        assert_eq!(f(true, false, true, false), None, "SYN+FIN");
        assert_eq!(f(true, false, false, true), None, "SYN+RST");
        assert_eq!(f(false, false, true, false), None, "FIN without ACK");
        assert_eq!(f(false, false, false, false), None, "no flags");
    }

    #[test]
    fn tcp_open_and_orderly_close_then_reuse() {
        use Direction::*;
        use TcpState::*;
        let mut ct = Conntrack::new(Config::default(), 1);
        let id = ct
            .insert(tcp(1, 1000, 2, 80), tcp(2, 80, 1, 1000), t(0), &mut nop())
            .unwrap();
        assert_eq!(ct.get(id).unwrap().state(), FlowState::Tcp(SynSent));
        drive(
            &mut ct,
            id,
            &[
                (Reply, TcpEvent::SynAck, SynRecv),
                (Original, TcpEvent::Ack, Established),
                (Reply, TcpEvent::Ack, Established),
                (Original, TcpEvent::Fin, FinWait),
                // The FIN sender's own ACKs do not acknowledge its FIN.
                (Original, TcpEvent::Ack, FinWait),
                (Reply, TcpEvent::Ack, CloseWait),
                (Reply, TcpEvent::Ack, CloseWait),
                (Reply, TcpEvent::Fin, LastAck),
                (Reply, TcpEvent::Ack, LastAck),
                (Original, TcpEvent::Ack, TimeWait),
                (Original, TcpEvent::Syn, SynSent),
            ],
        );
    }

    #[test]
    fn tcp_simultaneous_close_and_resets() {
        use Direction::*;
        use TcpState::*;
        let mut ct = Conntrack::new(Config::default(), 1);
        let id = ct
            .insert(tcp(1, 1000, 2, 80), tcp(2, 80, 1, 1000), t(0), &mut nop())
            .unwrap();
        drive(
            &mut ct,
            id,
            &[
                (Reply, TcpEvent::SynAck, SynRecv),
                (Original, TcpEvent::Ack, Established),
                (Reply, TcpEvent::Fin, FinWait),
                (Original, TcpEvent::Fin, LastAck),
                // The last FIN came from the original side: the reply side acks it.
                (Original, TcpEvent::Ack, LastAck),
                (Reply, TcpEvent::Ack, TimeWait),
                (Reply, TcpEvent::Syn, TimeWait),
                (Reply, TcpEvent::Rst, Closed),
                (Original, TcpEvent::Syn, SynSent),
                (Original, TcpEvent::Rst, Closed),
            ],
        );
        // SYN retransmits and a stray SYN+ACK from the opener change nothing.
        let id2 = ct
            .insert(tcp(1, 1001, 2, 80), tcp(2, 80, 1, 1001), t(0), &mut nop())
            .unwrap();
        drive(
            &mut ct,
            id2,
            &[
                (Original, TcpEvent::Syn, SynSent),
                (Original, TcpEvent::SynAck, SynSent),
                (Original, TcpEvent::Ack, SynSent),
                (Reply, TcpEvent::Syn, SynRecv),
            ],
        );
    }

    #[test]
    fn both_tuples_find_one_flow() {
        let mut ct = Conntrack::new(Config::default(), 7);
        let orig = tcp(1, 1000, 200, 8080);
        let reply = tcp(5, 80, 1, 1000); // DNAT: 200:8080 -> 5:80
        let id = ct.insert(orig, reply, t(0), &mut nop()).unwrap();
        assert_eq!(ct.lookup(&orig, t(1)), Some((id, Direction::Original)));
        assert_eq!(ct.lookup(&reply, t(1)), Some((id, Direction::Reply)));
        assert_eq!(ct.lookup(&orig.reversed(), t(1)), None);
        assert_eq!(
            ct.insert(orig, tcp(6, 80, 1, 1000), t(1), &mut nop()),
            Err(InsertError::Clash)
        );
        assert_eq!(
            ct.insert(tcp(3, 1, 4, 2), reply, t(1), &mut nop()),
            Err(InsertError::Clash)
        );
        assert_eq!(ct.stats().refused_clash, 2);
    }

    #[test]
    fn timeouts_follow_state() {
        let timeouts = Timeouts::default();
        assert!(timeouts.tcp_established >= Duration::from_secs(7440));
        assert!(timeouts.udp >= Duration::from_secs(120));
        assert_eq!(timeouts.udp, Duration::from_secs(300));
        assert!(timeouts.tcp_time_wait < timeouts.tcp_transitory);

        let mut ct = Conntrack::new(Config::default(), 3);
        let o = tcp(1, 1000, 2, 80);
        let id = ct.insert(o, o.reversed(), t(0), &mut nop()).unwrap();
        // SYN_SENT is transitory: gone after 4 minutes idle.
        assert!(ct.lookup(&o, t(239)).is_some());
        assert!(ct.lookup(&o, t(240)).is_none());
        // Established at 100 s: lives 2 h 4 min from its last packet.
        ct.update(id, Direction::Reply, Some(TcpEvent::SynAck), t(100));
        ct.update(id, Direction::Original, Some(TcpEvent::Ack), t(100));
        let deadline = Instant::from_secs(100) + timeouts.tcp_established;
        assert!(ct.lookup(&o, deadline - Duration::from_micros(1)).is_some());
        assert!(ct.lookup(&o, deadline).is_none());
        assert_eq!(ct.next_expiry(), Some(deadline));

        let u = FlowTuple::new(Proto::Udp, ep(1, 53), ep(2, 53));
        ct.insert(u, u.reversed(), t(0), &mut nop()).unwrap();
        assert!(ct.lookup(&u.reversed(), t(299)).is_some());
        assert!(ct.lookup(&u.reversed(), t(300)).is_none());

        let mut gone = vec![];
        let n = ct.expire(deadline, usize::MAX, &mut |f: &Flow| {
            gone.push(*f.original())
        });
        assert_eq!(n, 2);
        assert!(gone.contains(&o) && gone.contains(&u));
        assert!(ct.is_empty());
        assert_eq!(ct.stats().expired, 2);
    }

    #[test]
    fn full_table_refuses_new_keeps_established_and_evicts_closed_first() {
        let cfg = Config {
            capacity: 4,
            ..Config::default()
        };
        let mut ct = Conntrack::new(cfg, 9);
        let mut ids = vec![];
        for p in 0..4u16 {
            let o = tcp(1, 1000 + p, 2, 80);
            let id = ct.insert(o, o.reversed(), t(0), &mut nop()).unwrap();
            ct.update(id, Direction::Reply, Some(TcpEvent::SynAck), t(1));
            ct.update(id, Direction::Original, Some(TcpEvent::Ack), t(1));
            ids.push(id);
        }
        let new = tcp(1, 2000, 2, 80);
        assert_eq!(
            ct.insert(new, new.reversed(), t(2), &mut nop()),
            Err(InsertError::Full)
        );
        assert_eq!(ct.stats().refused_full, 1);
        // Existing flows keep working.
        for p in 0..4u16 {
            let (id, dir) = ct.lookup(&tcp(2, 80, 1, 1000 + p), t(3)).unwrap();
            assert_eq!(dir, Direction::Reply);
            assert_eq!(
                ct.update(id, dir, Some(TcpEvent::Ack), t(3)),
                Some(FlowState::Tcp(TcpState::Established))
            );
        }
        // A reset flow makes room; the established ones stay.
        ct.update(ids[2], Direction::Original, Some(TcpEvent::Rst), t(4));
        let mut evicted = vec![];
        let id = ct
            .insert(new, new.reversed(), t(5), &mut |f: &Flow| {
                evicted.push(*f.original())
            })
            .unwrap();
        assert_eq!(evicted, vec![tcp(1, 1002, 2, 80)]);
        assert_eq!(ct.stats().evicted, 1);
        assert!(ct.get(id).is_some());
        for p in [0u16, 1, 3] {
            assert!(ct.lookup(&tcp(1, 1000 + p, 2, 80), t(5)).is_some());
        }
    }

    #[test]
    fn flows_listing_filters_and_limits() {
        let mut ct = Conntrack::new(Config::default(), 2);
        for p in 0..10u16 {
            let o = tcp(1, 1000 + p, 2, 80);
            ct.insert(o, o.reversed(), t(0), &mut nop()).unwrap();
            let u = FlowTuple::new(Proto::Udp, ep(3, 2000 + p), ep(4, 53));
            ct.insert(u, u.reversed(), t(0), &mut nop()).unwrap();
        }
        let all = ct.flows(&FlowFilter::default(), usize::MAX, t(1));
        assert_eq!(all.len(), 20);
        let udp = FlowFilter {
            proto: Some(Proto::Udp),
            ..FlowFilter::default()
        };
        assert_eq!(ct.flows(&udp, 3, t(1)).len(), 3);
        assert!(ct
            .flows(&udp, 100, t(1))
            .iter()
            .all(|f| f.proto == Proto::Udp));
        let by_port = FlowFilter {
            port: Some(1004),
            ..FlowFilter::default()
        };
        let one = ct.flows(&by_port, 100, t(1));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].original, tcp(1, 1004, 2, 80));
        assert_eq!(one[0].expires_in_secs, 239);
        let by_addr = FlowFilter {
            addr: Some(Ipv4Address::new(10, 0, 0, 4)),
            ..FlowFilter::default()
        };
        assert_eq!(ct.flows(&by_addr, 100, t(1)).len(), 10);
    }

    #[test]
    fn index_matches_a_map_through_inserts_and_removals() {
        use alloc::collections::BTreeMap;
        // A small table so that clusters form, wrap around the end and fingerprints
        // share home buckets; few distinct fingerprints so that equal ones meet.
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut index = Index::with_entries(24);
            let mut model: BTreeMap<u32, u32> = BTreeMap::new();
            for step in 0..4000 {
                let e = rng.below(40) as u32;
                let fp = match rng.below(3) {
                    0 => (e % 5) | 0xffff_0000,
                    1 => e * 7,
                    _ => e.wrapping_mul(0x9e37_79b9),
                };
                match model.get(&e) {
                    Some(&have) if rng.below(2) == 0 => {
                        index.remove(have, e);
                        model.remove(&e);
                    }
                    None if model.len() < 24 => {
                        index.insert(fp, e);
                        model.insert(e, fp);
                    }
                    _ => {}
                }
                for probe in 0..40u32 {
                    let want = model.get(&probe).copied();
                    let got = want.and_then(|fp| index.find(fp, |x| x == probe));
                    assert_eq!(got.is_some(), want.is_some(), "seed {seed} step {step}");
                }
                let used = index.buckets.iter().filter(|&&b| b != EMPTY).count();
                assert_eq!(used, model.len());
            }
        }
    }

    #[test]
    fn table_bytes_is_what_a_new_table_allocates() {
        for capacity in [1, 16, 1000, 65_536] {
            let ct = Conntrack::new(
                Config {
                    capacity,
                    ..Config::default()
                },
                1,
            );
            let held = ct.flows.capacity() * core::mem::size_of::<Flow>()
                + ct.index.buckets.len() * core::mem::size_of::<u64>();
            assert_eq!(
                Conntrack::table_bytes(capacity),
                held,
                "capacity {capacity}"
            );
        }
    }

    #[test]
    fn a_flow_is_one_cache_line_and_the_table_stays_within_128_bytes_a_flow() {
        assert_eq!(core::mem::size_of::<Flow>(), 64);
        assert_eq!(core::mem::align_of::<Flow>(), 64);
        for capacity in [1usize, 16, 1000, 65_536, 1 << 20] {
            let ct = Conntrack::new(
                Config {
                    capacity,
                    ..Config::default()
                },
                1,
            );
            assert!(
                ct.bytes_per_flow() <= 128,
                "{capacity}: {}",
                ct.bytes_per_flow()
            );
        }
    }

    /// Deterministic xorshift for property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The obvious table: a list scanned end to end.
    struct Model {
        flows: Vec<MFlow>,
        capacity: usize,
        timeouts: Timeouts,
        clock: u64,
        refused_full: u64,
    }

    struct MFlow {
        orig: FlowTuple,
        reply: FlowTuple,
        state: FlowState,
        fins: u8,
        last_seen: Instant,
        touched: u64,
    }

    impl MFlow {
        fn tuple(&self, dir: Direction) -> &FlowTuple {
            match dir {
                Direction::Original => &self.orig,
                Direction::Reply => &self.reply,
            }
        }
    }

    impl Model {
        fn live(&self, now: Instant) -> impl Iterator<Item = (usize, &MFlow)> {
            self.flows
                .iter()
                .enumerate()
                .filter(move |(_, f)| now < f.last_seen + self.timeouts.of(f.state.class()))
        }
        fn lookup(&self, t: &FlowTuple, now: Instant) -> Option<(usize, Direction)> {
            self.live(now).find_map(|(i, f)| {
                if f.orig == *t {
                    Some((i, Direction::Original))
                } else if f.reply == *t {
                    Some((i, Direction::Reply))
                } else {
                    None
                }
            })
        }
        fn insert(
            &mut self,
            orig: FlowTuple,
            reply: FlowTuple,
            now: Instant,
        ) -> Result<(), InsertError> {
            let timeouts = self.timeouts;
            self.flows
                .retain(|f| now < f.last_seen + timeouts.of(f.state.class()));
            let clash = self
                .flows
                .iter()
                .any(|f| [f.orig, f.reply].iter().any(|x| *x == orig || *x == reply));
            if clash || orig == reply {
                return Err(InsertError::Clash);
            }
            if self.flows.len() >= self.capacity {
                // Closed first, then TIME_WAIT, then the other non-established TCP states.
                let order: [&dyn Fn(FlowState) -> bool; 3] = [
                    &|s| s == FlowState::Tcp(TcpState::Closed),
                    &|s| s == FlowState::Tcp(TcpState::TimeWait),
                    &|s| matches!(s, FlowState::Tcp(st) if st != TcpState::Established),
                ];
                let victim = order.iter().find_map(|is| {
                    self.flows
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| is(f.state))
                        .min_by_key(|(_, f)| f.touched)
                        .map(|(i, _)| i)
                });
                match victim {
                    Some(i) => {
                        self.flows.remove(i);
                    }
                    None => {
                        self.refused_full += 1;
                        return Err(InsertError::Full);
                    }
                }
            }
            self.clock += 1;
            self.flows.push(MFlow {
                orig,
                reply,
                state: FlowState::initial(orig.proto),
                fins: 0,
                last_seen: now,
                touched: self.clock,
            });
            Ok(())
        }
        fn update(
            &mut self,
            i: usize,
            dir: Direction,
            ev: Option<TcpEvent>,
            now: Instant,
        ) -> FlowState {
            self.clock += 1;
            let f = &mut self.flows[i];
            if let (FlowState::Tcp(s), Some(ev)) = (f.state, ev) {
                let (s, fins) = tcp_transition(s, f.fins, dir, ev);
                f.state = FlowState::Tcp(s);
                f.fins = fins;
            }
            f.last_seen = now;
            f.touched = self.clock;
            f.state
        }
    }

    #[test]
    fn random_packet_sequences_match_the_model() {
        const EVENTS: [TcpEvent; 5] = [
            TcpEvent::Syn,
            TcpEvent::SynAck,
            TcpEvent::Ack,
            TcpEvent::Fin,
            TcpEvent::Rst,
        ];
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let timeouts = Timeouts {
                tcp_established: Duration::from_secs(60),
                tcp_transitory: Duration::from_secs(20),
                tcp_time_wait: Duration::from_secs(10),
                tcp_closed: Duration::from_secs(12),
                udp: Duration::from_secs(30),
                icmp: Duration::from_secs(15),
            };
            let capacity = 1 + rng.below(12) as usize;
            let refresh = Duration::ZERO;
            let mut ct = Conntrack::new(
                Config {
                    capacity,
                    timeouts,
                    refresh,
                },
                seed,
            );
            let mut model = Model {
                flows: vec![],
                capacity,
                timeouts,
                clock: 0,
                refused_full: 0,
            };
            let mut now = Instant::from_secs(0);
            for step in 0..3000 {
                now += Duration::from_millis(match rng.below(40) {
                    0 => 25_000,
                    1..=10 => rng.below(2000),
                    _ => 0,
                });
                // Half the packets move a live TCP flow on (from the side that
                // can), so that closing states and their eviction order are
                // reached; the rest are random.
                let live_tcp: Vec<usize> = model
                    .live(now)
                    .filter(|(_, f)| f.orig.proto == Proto::Tcp)
                    .map(|(i, _)| i)
                    .collect();
                let (tuple, ev) = if !live_tcp.is_empty() && rng.below(2) == 0 {
                    let f = &model.flows[live_tcp[rng.below(live_tcp.len() as u64) as usize]];
                    let other = last_fin(f.fins).opposite();
                    let (dir, ev) = match f.state {
                        FlowState::Tcp(TcpState::SynSent) => (Direction::Reply, TcpEvent::SynAck),
                        FlowState::Tcp(TcpState::SynRecv) => (Direction::Original, TcpEvent::Ack),
                        FlowState::Tcp(TcpState::Established) => {
                            let d = if rng.below(2) == 0 {
                                Direction::Original
                            } else {
                                Direction::Reply
                            };
                            (d, TcpEvent::Fin)
                        }
                        FlowState::Tcp(TcpState::FinWait) => {
                            (other, EVENTS[2 + rng.below(2) as usize])
                        }
                        FlowState::Tcp(TcpState::CloseWait) => (other, TcpEvent::Fin),
                        FlowState::Tcp(TcpState::LastAck) => (other, TcpEvent::Ack),
                        _ => (Direction::Original, TcpEvent::Syn),
                    };
                    let ev = if rng.below(8) == 0 { TcpEvent::Rst } else { ev };
                    (*f.tuple(dir), Some(ev))
                } else {
                    let proto = [Proto::Tcp, Proto::Tcp, Proto::Tcp, Proto::Udp, Proto::Icmp]
                        [rng.below(5) as usize];
                    let tuple = FlowTuple::new(
                        proto,
                        ep(1 + rng.below(2) as u8, 1 + rng.below(3) as u16),
                        ep(1 + rng.below(2) as u8, 1 + rng.below(2) as u16),
                    );
                    let kinds = if rng.below(4) == 0 { 5 } else { 4 };
                    (
                        tuple,
                        (proto == Proto::Tcp).then(|| EVENTS[rng.below(kinds) as usize]),
                    )
                };
                let proto = tuple.proto;
                let real = ct.lookup(&tuple, now);
                let want = model.lookup(&tuple, now);
                match (real, want) {
                    (Some((id, dir)), Some((i, _))) => {
                        assert_eq!(ct.get(id).unwrap().original(), &model.flows[i].orig);
                        let got = ct.update(id, dir, ev, now);
                        assert_eq!(
                            got,
                            Some(model.update(i, dir, ev, now)),
                            "seed {seed} step {step}"
                        );
                    }
                    (None, None) if ev.is_none() || ev == Some(TcpEvent::Syn) => {
                        // Sometimes a translated reply tuple, as NAT inserts.
                        let reply = if rng.below(3) == 0 {
                            FlowTuple::new(proto, tuple.dst, ep(9, 1 + rng.below(3) as u16))
                        } else {
                            tuple.reversed()
                        };
                        let r = ct.insert(tuple, reply, now, &mut nop()).map(|_| ());
                        assert_eq!(
                            r,
                            model.insert(tuple, reply, now),
                            "seed {seed} step {step}"
                        );
                    }
                    _ => {}
                }
                if rng.below(50) == 0 {
                    ct.expire(now, rng.below(4) as usize, &mut nop());
                }
                assert!(ct.len() <= capacity);
                // Every live model flow is found from both ends with the same state.
                for (_, f) in model.live(now) {
                    let (id, dir) = ct.lookup(&f.reply, now).expect("model flow missing");
                    assert_eq!(dir, Direction::Reply);
                    assert_eq!(ct.get(id).unwrap().state(), f.state);
                    assert_eq!(ct.lookup(&f.orig, now), Some((id, Direction::Original)));
                }
            }
            assert_eq!(ct.stats().refused_full, model.refused_full);
        }
    }

    #[test]
    fn coarse_refresh_keeps_lookups_exact_and_sweeps_within_the_refresh() {
        let refresh = Duration::from_secs(1);
        let timeouts = Timeouts {
            udp: Duration::from_secs(10),
            ..Timeouts::default()
        };
        let mut ct = Conntrack::new(
            Config {
                capacity: 64,
                timeouts,
                refresh,
            },
            5,
        );
        let mut rng = Rng(77);
        let mut now = Instant::from_secs(0);
        let tuples: Vec<FlowTuple> = (0..48u16)
            .map(|p| FlowTuple::new(Proto::Udp, ep(1, p), ep(2, 53)))
            .collect();
        for step in 0..20_000 {
            now += Duration::from_millis(rng.below(300));
            let t = tuples[rng.below(48) as usize];
            match ct.lookup(&t, now) {
                Some((id, dir)) => {
                    ct.update(id, dir, None, now);
                }
                None => {
                    ct.insert(t, t.reversed(), now, &mut nop()).unwrap();
                }
            }
            if rng.below(10) == 0 {
                let mut early = false;
                ct.expire(now, usize::MAX, &mut |f: &Flow| {
                    early |= now < f.last_seen() + timeouts.udp;
                });
                assert!(!early, "step {step}: a live flow was swept");
                // What is left expired has been so for less than `refresh`.
                for (_, f) in ct.iter() {
                    assert!(f.last_seen() + timeouts.udp + refresh > now, "step {step}");
                }
            }
            // Lookups are exact whatever the list order.
            for (_, f) in ct.iter() {
                let alive = now < f.last_seen() + timeouts.udp;
                assert_eq!(ct.lookup(f.original(), now).is_some(), alive);
            }
        }
    }
}
