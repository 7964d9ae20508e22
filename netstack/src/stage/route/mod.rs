//! The routed path between the uplink and the container link: every IPv4 frame sent to
//! one of the appliance's MACs goes through the NAT first; what it translates (published
//! ports, masquerade, hairpin) is sent out of the other NIC (or the same one, hairpin)
//! with the next hop's MAC, the NIC's MAC as source and the TTL decremented. Next hops
//! are resolved with ARP from the outgoing NIC's own address; a few frames wait for
//! the answer. Everything else (ARP, frames for the appliance's own addresses, the
//! container subnet, the overlay) continues to smoltcp and the overlay untouched.
//!
//! With an overlay, the container side is split into segments (the plain link and each
//! overlay network): the datapath hands the router what reaches the appliance on a
//! segment ([`Router::receive_on`]), and the router's container-side output leaves with
//! the segment its next hop was learned on ([`Router::take_routed`]), so a translated
//! frame reaches a container on an overlay network, local or behind a peer, through that
//! network's bridge (`pipeline::datapath::routed`).
//!
//! Frames come in by `receive.rs` and leave by `forward.rs`, in the buffer they arrived
//! in: a burst is read once (`RxMeta`), the conntrack lookups of all its frames begun
//! together, and each translated frame rewritten where it lies and queued, buffer and
//! all, for the NIC it leaves by. Sans-I/O: `Netstack::poll` hands it frames and takes
//! its output; it never reads a clock, never sends by itself, never allocates for a
//! frame it forwards to a known neighbour, and never panics on frame contents.

mod counters;
mod forward;
mod interfaces;
mod receive;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Ipv4Address};

use crate::base::NicId;
use crate::stage::nat::Nat;
use crate::table::neighbor::{Neighbors, Retry};
use crate::table::rate_limit::RateLimit;
use crate::wire::buffer::PacketBuf;
pub use counters::RouterCounters;
pub use interfaces::{Interfaces, Origin, Placement, Segment};

/// Frames waiting for ARP, over all next hops; more are dropped (`unresolved`).
pub const PENDING_CAPACITY: usize = 64;
/// A frame waits at most this long for its next hop's MAC.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(3);
/// At most one ARP request per next hop this often.
pub const ARP_RETRY: Duration = Duration::from_secs(1);
/// Learned neighbours kept per router (both sides together).
pub const NEIGHBOR_CAPACITY: usize = 4096;
/// NAT expiry work per poll (flows swept).
const NAT_BUDGET: usize = 256;

/// A translated frame waiting for its next hop's MAC.
struct Pending {
    side: NicId,
    hop: Ipv4Address,
    since: Instant,
    frame: PacketBuf,
}

/// An untranslated uplink frame for a published port whose target is not placed yet:
/// whether the flow needs the node address as source depends on where it lives.
struct Held {
    target: Ipv4Address,
    since: Instant,
    frame: PacketBuf,
}

/// The NAT plus what routing around it takes: neighbour tables and output queues.
pub struct Router {
    nat: Nat,
    /// Next hops on both NICs, resolved by ARP from the NIC's own address.
    neighbors: Neighbors<(NicId, Ipv4Address)>,
    pending: VecDeque<Pending>,
    out_uplink: Vec<PacketBuf>,
    out_link: Vec<PacketBuf>,
    /// Container-side output while an overlay runs, with the segment it goes to
    /// (`None`: every segment, for ARP requests to a host not yet placed).
    out_routed: Vec<(Option<Segment>, PacketBuf)>,
    /// Container-side neighbours' segments (same capacity as `neighbors`).
    placement: BTreeMap<Ipv4Address, Placement>,
    /// Frames for published ports waiting for their target's placement (counted in
    /// `PENDING_CAPACITY` with `pending`).
    held: VecDeque<Held>,
    counters: RouterCounters,
    icmp_limit: RateLimit,
}

impl Router {
    pub fn new(nat: Nat) -> Router {
        Router {
            nat,
            neighbors: Neighbors::new(NEIGHBOR_CAPACITY, Retry::every(ARP_RETRY)),
            pending: VecDeque::new(),
            out_uplink: Vec::new(),
            out_link: Vec::new(),
            out_routed: Vec::new(),
            placement: BTreeMap::new(),
            held: VecDeque::new(),
            counters: RouterCounters::default(),
            icmp_limit: RateLimit::default(),
        }
    }

    pub fn nat(&self) -> &Nat {
        &self.nat
    }

    pub fn nat_mut(&mut self) -> &mut Nat {
        &mut self.nat
    }

    pub fn counters(&self) -> RouterCounters {
        self.counters
    }

    /// A neighbour learned on `side`.
    pub fn neighbor(&self, side: NicId, ip: Ipv4Address) -> Option<EthernetAddress> {
        self.neighbors.lookup(&(side, ip))
    }

    /// Where a container-side neighbour was last heard from (with an overlay).
    pub fn placement(&self, ip: Ipv4Address) -> Option<Placement> {
        self.placement.get(&ip).copied()
    }

    /// Moves the container-side frames queued for the overlay's segments to the end
    /// of `into`; the datapath sends each into its segment (`None`: every segment).
    pub fn take_routed(&mut self, into: &mut Vec<(Option<Segment>, PacketBuf)>) {
        into.append(&mut self.out_routed);
    }

    /// Hands what the router queued for each NIC to `send`, uplink first, in order;
    /// `send` says whether the NIC took the frame (a refusal is counted as `tx_full`).
    /// True when there was anything to send.
    pub fn flush(&mut self, send: &mut dyn FnMut(NicId, PacketBuf) -> bool) -> bool {
        let mut sent = false;
        for (nic, queue) in [
            (NicId::Uplink, &mut self.out_uplink),
            (NicId::Link, &mut self.out_link),
        ] {
            for frame in queue.drain(..) {
                sent = true;
                if !send(nic, frame) {
                    self.counters.tx_full += 1;
                }
            }
        }
        sent
    }

    /// Timers: NAT expiry, ARP retries, frames that waited too long. Returns when to be
    /// called again.
    pub fn poll(&mut self, ifs: &Interfaces, now: Instant) -> Option<Instant> {
        let nat_at = self.nat.poll(now, NAT_BUDGET);
        while self
            .pending
            .front()
            .is_some_and(|p| now >= p.since + PENDING_TIMEOUT)
        {
            self.pending.pop_front();
            self.counters.unresolved += 1;
        }
        while self
            .held
            .front()
            .is_some_and(|h| now >= h.since + PENDING_TIMEOUT)
        {
            self.held.pop_front();
            self.counters.unresolved += 1;
        }
        let waiting: Vec<(NicId, Ipv4Address)> = self
            .pending
            .iter()
            .map(|p| (p.side, p.hop))
            .chain(self.held.iter().map(|h| (NicId::Link, h.target)))
            .collect();
        for (side, hop) in waiting {
            if let Some(own) = ifs.arp_source(side) {
                self.solicit(side, hop, own, ifs, now);
            }
        }
        self.neighbors
            .retain_resolving(|_, asked| now < asked + PENDING_TIMEOUT);
        let retry = (!self.pending.is_empty() || !self.held.is_empty()).then(|| now + ARP_RETRY);
        [nat_at, retry].into_iter().flatten().min()
    }
}
