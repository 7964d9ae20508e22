//! Underlay neighbours of the overlay: which uplink MAC address each peer's VXLAN and
//! sleeve packets go to. The peer itself when it is on the uplink subnet, the uplink
//! gateway otherwise; resolved with ARP requests from the uplink's own MAC and address,
//! retried with exponential backoff, and learned from every ARP request or reply seen on
//! the uplink (those frames still go to smoltcp as well).
//!
//! The policy only: which ARP frames teach something and which requests to send. The
//! bindings are the one neighbour table (`table::neighbor`); the peers are the
//! overlay's. It never reads a clock, never sends by itself and never panics on frame
//! contents.

use alloc::vec::Vec;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{ArpOperation, EthernetAddress, Ipv4Address, Ipv4Cidr};

use super::outbox::Outbox;
use super::OverlayPath;
use crate::base::NicAddress;
use crate::table::neighbor::{Learned, NeighborCounters, Neighbors, Retry};
use crate::wire::probe;

/// The first retry comes this long after the first request; each retry doubles it.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between two requests for one address (resolution never gives up:
/// a peer that boots later is found within this long).
pub const MAX_RETRY: Duration = Duration::from_secs(8);
/// At most this many learned addresses are kept (the uplink is one subnet, but a busy
/// one must not grow the table without bound).
pub const CAPACITY: usize = 1024;

/// The uplink's own addressing, as far as neighbour resolution needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkAddress {
    pub mac: EthernetAddress,
    pub cidr: Ipv4Cidr,
    pub gateway: Option<Ipv4Address>,
}

impl UplinkAddress {
    /// The address whose MAC `peer`'s packets are sent to: the peer on our subnet, the
    /// gateway otherwise (`None` when there is none: the peer is unreachable).
    pub fn next_hop(&self, peer: Ipv4Address) -> Option<Ipv4Address> {
        NicAddress {
            cidr: self.cidr,
            gateway: self.gateway,
        }
        .next_hop(peer)
    }
}

/// The underlay's neighbour table and the resolutions in progress.
#[derive(Debug, Clone)]
pub struct UnderlayNeighbors {
    table: Neighbors<Ipv4Address>,
}

impl Default for UnderlayNeighbors {
    fn default() -> Self {
        Self::new()
    }
}

impl UnderlayNeighbors {
    pub fn new() -> UnderlayNeighbors {
        UnderlayNeighbors {
            table: Neighbors::new(
                CAPACITY,
                Retry {
                    first: FIRST_RETRY,
                    longest: MAX_RETRY,
                },
            ),
        }
    }

    pub fn counters(&self) -> NeighborCounters {
        self.table.counters()
    }

    /// The MAC address known for `ip`.
    pub fn lookup(&self, ip: &Ipv4Address) -> Option<EthernetAddress> {
        self.table.lookup(ip)
    }

    /// Every known neighbour, by address.
    pub fn iter(&self) -> impl Iterator<Item = (&Ipv4Address, &EthernetAddress)> {
        self.table.iter()
    }

    /// Learn from a frame received on the uplink. Only ARP from a unicast sender on our
    /// subnet counts, and only about an address we are resolving, already know, or that
    /// is asking for us (it is about to talk to us). Returns the binding when it is new
    /// or changed; one heard again as it was is confirmed (fresh for another
    /// [`REFRESH`](crate::table::neighbor::REFRESH)).
    pub fn observe(
        &mut self,
        frame: &[u8],
        own: &UplinkAddress,
        now: Instant,
    ) -> Option<(Ipv4Address, EthernetAddress)> {
        let arp = probe::parse_arp(frame)?;
        let (mac, ip) = (arp.sender_mac, arp.sender_ip);
        if !matches!(arp.operation, ArpOperation::Request | ArpOperation::Reply)
            || !mac.is_unicast()
            || ip == own.cidr.address()
            || !own.cidr.contains_addr(&ip)
            || ip.is_broadcast()
            || ip.is_unspecified()
        {
            return None;
        }
        let wanted = self.table.is_resolving(&ip)
            || self.table.knows(&ip)
            || arp.target_ip == own.cidr.address();
        if !wanted {
            self.table.count_ignored();
            return None;
        }
        match self.table.learn(ip, mac, now) {
            Learned::New => Some((ip, mac)),
            Learned::Unchanged => None,
            Learned::Full => {
                self.table.count_ignored();
                None
            }
        }
    }

    /// Forget every binding (the uplink was readdressed).
    pub fn clear(&mut self) {
        self.table.clear();
    }

    /// ARP requests due at `now` for the addresses in `wanted` (next hops the datapath
    /// still lacks a MAC for) and for the stale bindings (see [`REFRESH`](crate::table::neighbor::REFRESH): still used,
    /// asked for again, so a next hop that changed its MAC is found again), sent from
    /// `own`. Resolutions of addresses neither wanted nor stale are dropped; a new one is
    /// asked for at once, then after `FIRST_RETRY`, doubling up to `MAX_RETRY`.
    pub fn solicit(
        &mut self,
        now: Instant,
        wanted: &[Ipv4Address],
        own: &UplinkAddress,
    ) -> Vec<Vec<u8>> {
        let stale: Vec<Ipv4Address> = self.table.stale(now).copied().collect();
        self.table
            .retain_resolving(|ip, _| wanted.contains(ip) || stale.contains(ip));
        let mut out = Vec::new();
        let due = wanted
            .iter()
            .filter(|ip| !self.table.knows(ip))
            .chain(&stale);
        for ip in due.copied().collect::<Vec<_>>() {
            if self.table.ask(ip, now) {
                out.push(probe::arp_request(own.mac, own.cidr.address(), ip));
            }
        }
        out
    }

    /// When the next request is due (None: nothing is being resolved).
    pub fn next_try(&self) -> Option<Instant> {
        self.table.next_try()
    }
}

impl OverlayPath {
    /// Give resolved peers their MAC; ask for the next hops still missing.
    pub(super) fn resolve(&mut self, now: Instant, own: &UplinkAddress, out: &mut Outbox) {
        let unresolved: Vec<Ipv4Address> = self.overlay.peers_without_neighbor().collect();
        let mut wanted = Vec::new();
        for peer in unresolved {
            let Some(hop) = own.next_hop(peer) else {
                continue;
            };
            match self.neighbors.lookup(&hop) {
                Some(mac) => {
                    // The peer exists: it was just listed.
                    let _ = self.overlay.set_neighbor(peer, Some(mac));
                }
                None if !wanted.contains(&hop) => wanted.push(hop),
                None => {}
            }
        }
        for request in self.neighbors.solicit(now, &wanted, own) {
            out.uplink_vec(request);
        }
    }

    /// `ip` is now at `mac`: every peer reached through `ip` follows.
    pub(super) fn rebind(&mut self, ip: Ipv4Address, mac: EthernetAddress, own: &UplinkAddress) {
        let moved: Vec<Ipv4Address> = self
            .overlay
            .peers()
            .filter(|(peer, n)| own.next_hop(*peer) == Some(ip) && *n != Some(mac))
            .map(|(peer, _)| peer)
            .collect();
        for peer in moved {
            let _ = self.overlay.set_neighbor(peer, Some(mac));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use smoltcp::wire::{ArpPacket, ArpRepr, EthernetFrame};

    const OWN: UplinkAddress = UplinkAddress {
        mac: EthernetAddress([0x52, 0x54, 0, 0, 0, 1]),
        cidr: Ipv4Cidr::new(Ipv4Address::new(192, 0, 2, 11), 24),
        gateway: Some(Ipv4Address::new(192, 0, 2, 1)),
    };
    const PEER: Ipv4Address = Ipv4Address::new(192, 0, 2, 12);
    const PEER_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);

    fn arp(
        op: ArpOperation,
        mac: EthernetAddress,
        ip: Ipv4Address,
        target: Ipv4Address,
    ) -> Vec<u8> {
        let mut frame = probe::arp_request(mac, ip, target);
        if op == ArpOperation::Reply {
            // ARP operation field: bytes 6..8 of the ARP payload.
            frame[14 + 7] = 2;
            frame[..6].copy_from_slice(&OWN.mac.0);
        }
        frame
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms as i64)
    }

    #[test]
    fn next_hop_is_the_peer_on_subnet_else_the_gateway() {
        assert_eq!(OWN.next_hop(PEER), Some(PEER));
        let far = Ipv4Address::new(198, 51, 100, 7);
        assert_eq!(OWN.next_hop(far), OWN.gateway);
        let no_gw = UplinkAddress {
            gateway: None,
            ..OWN
        };
        assert_eq!(no_gw.next_hop(far), None);
    }

    #[test]
    fn solicits_with_backoff_and_stops_once_resolved() {
        let mut n = UnderlayNeighbors::new();
        let wanted = [PEER];
        let first = n.solicit(t(0), &wanted, &OWN);
        assert_eq!(first.len(), 1);
        // The request is a real who-has from our MAC and address.
        let eth = EthernetFrame::new_checked(&first[0][..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(eth.src_addr(), OWN.mac);
        let repr = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(
            repr,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: OWN.mac,
                source_protocol_addr: OWN.cidr.address(),
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: PEER,
            }
        );
        // Retries at 0.5 s, 1.5 s, 3.5 s, 7.5 s, then every 8 s.
        let mut sent_at = vec![0u64];
        for ms in (1..=40_000).step_by(100) {
            if !n.solicit(t(ms), &wanted, &OWN).is_empty() {
                sent_at.push(ms);
            }
        }
        assert_eq!(
            &sent_at[..7],
            &[0, 501, 1501, 3501, 7501, 15501, 23501],
            "{sent_at:?}"
        );
        assert_eq!(n.counters().requests, sent_at.len() as u64);
        assert!(n.next_try().is_some());

        let learned = n.observe(
            &arp(ArpOperation::Reply, PEER_MAC, PEER, OWN.cidr.address()),
            &OWN,
            t(40_000),
        );
        assert_eq!(learned, Some((PEER, PEER_MAC)));
        assert_eq!(n.lookup(&PEER), Some(PEER_MAC));
        assert!(n.solicit(t(50_000), &wanted, &OWN).is_empty());
        assert_eq!(n.next_try(), None);
        // The same again teaches nothing new; a changed MAC is reported.
        assert_eq!(
            n.observe(
                &arp(ArpOperation::Reply, PEER_MAC, PEER, OWN.cidr.address()),
                &OWN,
                t(40_000)
            ),
            None
        );
        let moved = EthernetAddress([0x52, 0x54, 0, 0, 0, 9]);
        let other = Ipv4Address::new(192, 0, 2, 99);
        assert_eq!(
            n.observe(
                &arp(ArpOperation::Request, moved, PEER, other),
                &OWN,
                t(40_000)
            ),
            Some((PEER, moved))
        );
    }

    #[test]
    fn unwanted_resolutions_are_dropped() {
        let mut n = UnderlayNeighbors::new();
        assert_eq!(n.solicit(t(0), &[PEER], &OWN).len(), 1);
        assert!(n.solicit(t(10_000), &[], &OWN).is_empty());
        assert_eq!(n.next_try(), None);
        // A reply for an address nobody asked about and that is not talking to us.
        let stranger = Ipv4Address::new(192, 0, 2, 50);
        let other = Ipv4Address::new(192, 0, 2, 51);
        assert_eq!(
            n.observe(
                &arp(ArpOperation::Reply, PEER_MAC, stranger, other),
                &OWN,
                t(40_000)
            ),
            None
        );
        assert_eq!(n.lookup(&stranger), None);
        assert_eq!(n.counters().ignored, 1);
        // One asking for us is learned: it is about to send to us.
        assert_eq!(
            n.observe(
                &arp(
                    ArpOperation::Request,
                    PEER_MAC,
                    stranger,
                    OWN.cidr.address()
                ),
                &OWN,
                t(40_000)
            ),
            Some((stranger, PEER_MAC))
        );
    }

    #[test]
    fn refuses_what_cannot_be_a_neighbour() {
        let mut n = UnderlayNeighbors::new();
        n.solicit(t(0), &[PEER], &OWN);
        let cases = [
            // Off our subnet.
            arp(
                ArpOperation::Reply,
                PEER_MAC,
                Ipv4Address::new(198, 51, 100, 1),
                OWN.cidr.address(),
            ),
            // Our own address.
            arp(ArpOperation::Reply, PEER_MAC, OWN.cidr.address(), PEER),
            // A multicast sender MAC.
            arp(
                ArpOperation::Reply,
                EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]),
                PEER,
                OWN.cidr.address(),
            ),
        ];
        for frame in cases {
            assert_eq!(n.observe(&frame, &OWN, t(40_000)), None);
        }
        // Not ARP at all, and truncated ARP.
        let good = arp(ArpOperation::Reply, PEER_MAC, PEER, OWN.cidr.address());
        let mut ip = good.clone();
        ip[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(n.observe(&ip, &OWN, t(40_000)), None);
        for len in 0..good.len() - 1 {
            assert_eq!(n.observe(&good[..len], &OWN, t(40_000)), None, "{len}");
        }
        assert_eq!(n.lookup(&PEER), None);
        assert_eq!(n.observe(&good, &OWN, t(40_000)), Some((PEER, PEER_MAC)));
    }

    #[test]
    fn table_is_bounded() {
        let mut n = UnderlayNeighbors::new();
        let own = UplinkAddress {
            cidr: Ipv4Cidr::new(Ipv4Address::new(10, 0, 0, 1), 8),
            ..OWN
        };
        for i in 0..(CAPACITY as u32 + 10) {
            let ip = Ipv4Address::from(0x0a00_1000 + i);
            n.observe(
                &arp(ArpOperation::Request, PEER_MAC, ip, own.cidr.address()),
                &own,
                t(0),
            );
        }
        assert_eq!(n.iter().count(), CAPACITY);
        assert_eq!(n.counters().ignored, 10);
    }

    #[test]
    fn a_next_hop_not_heard_from_is_asked_for_again_and_a_new_mac_is_reported() {
        let mut n = UnderlayNeighbors::new();
        let reply = |mac| arp(ArpOperation::Reply, mac, PEER, OWN.cidr.address());
        assert_eq!(n.solicit(t(0), &[PEER], &OWN).len(), 1);
        assert_eq!(
            n.observe(&reply(PEER_MAC), &OWN, t(100)),
            Some((PEER, PEER_MAC))
        );
        // Resolved: nothing is wanted any more, and nothing asked while it is fresh.
        let fresh_until = 100 + crate::table::neighbor::REFRESH.total_millis();
        assert!(n.solicit(t(fresh_until - 1), &[], &OWN).is_empty());
        // Stale: asked for again (once, then on the retry schedule) while still used.
        assert_eq!(n.solicit(t(fresh_until), &[], &OWN).len(), 1);
        assert!(n.solicit(t(fresh_until + 100), &[], &OWN).is_empty());
        assert_eq!(n.lookup(&PEER), Some(PEER_MAC));
        // The peer was replaced behind its address: the answer reports the new MAC.
        let moved = EthernetAddress([0x52, 0x54, 0, 0, 0, 9]);
        assert_eq!(
            n.observe(&reply(moved), &OWN, t(fresh_until + 200)),
            Some((PEER, moved))
        );
        assert!(n.solicit(t(fresh_until + 10_000), &[], &OWN).is_empty());
    }
}
