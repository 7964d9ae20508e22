//! Bringing a running overlay in line with a config document in place: the peers and
//! networks that differ are removed, added or changed, and everything else (the tables
//! of every network kept, counters, neighbours, sleeve sessions) stays as it is, so a
//! `peer-add` into a grid of 100 000 entries costs the peer, not a copy of the tables.
//!
//! Everything that could refuse the document is checked before the first change (the
//! document's own rules, the grid, the underlay address); what follows cannot fail for a
//! document that passed, so a refusal never leaves the overlay half changed.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use smoltcp::wire::Ipv4Address;

use super::config::{route, GridConfig, OverlayConfig};
use super::{Limits, Overlay, OverlayError};
use crate::base::Vni;

/// What [`Overlay::reconcile`] removed, for the datapath's own tables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Networks gone, or removed and added again because their VLAN or name collided
    /// mid-way with another network's (their tables start empty).
    pub removed_networks: Vec<Vni>,
}

impl Overlay {
    /// Whether a document with `grid` can be brought in place by [`Overlay::reconcile`]:
    /// the same grid but for its table limits (a new node number, subnet, port or secret
    /// makes a new overlay).
    pub fn same_grid(&self, grid: &GridConfig) -> bool {
        let mut mine = self.grid.clone();
        mine.limits = grid.limits;
        &mine == grid
    }

    /// What [`Overlay::reconcile`] checks before it changes anything; Ok means it will
    /// succeed.
    pub fn check_reconcile(&self, config: &OverlayConfig) -> Result<(), OverlayError> {
        config.validate()?;
        if !self.same_grid(&config.grid) {
            return Err(OverlayError::GridChanged);
        }
        for peer in &config.peers {
            let address = route(&config.grid, peer)?.address;
            if address == self.underlay.ip {
                return Err(OverlayError::PeerIsSelf(address));
            }
        }
        Ok(())
    }

    /// Brings this overlay in line with `config`: peers and networks not in it go,
    /// new ones come, changed ones change; the table limits follow `[grid.limits]`.
    /// Refused (and nothing changed) when `config` breaks a rule, names another grid
    /// ([`Overlay::same_grid`]) or a peer at this appliance's own underlay address.
    pub fn reconcile(&mut self, config: &OverlayConfig) -> Result<Reconciled, OverlayError> {
        self.check_reconcile(config)?;
        let kept_peers: BTreeSet<Ipv4Address> = config
            .peers
            .iter()
            .filter_map(|p| route(&config.grid, p).ok())
            .map(|r| r.address)
            .collect();
        // From here on nothing fails for a document that passed the checks.
        if self.grid.limits != config.grid.limits {
            self.grid.limits = config.grid.limits;
            self.set_limits(Limits {
                ageing: self.limits.ageing,
                ..Limits::of(&config.grid.limits)
            });
        }
        let mut done = Reconciled::default();
        let gone_peers: Vec<Ipv4Address> = self
            .peers
            .keys()
            .filter(|a| !kept_peers.contains(*a))
            .copied()
            .collect();
        for a in gone_peers {
            self.remove_peer(a);
        }
        let kept_networks: BTreeSet<Vni> = config.networks.iter().map(|n| n.vni).collect();
        let gone_networks: Vec<Vni> = self
            .networks
            .keys()
            .filter(|v| !kept_networks.contains(*v))
            .copied()
            .collect();
        for v in gone_networks {
            self.remove_network(v);
            done.removed_networks.push(v);
        }
        // A VLAN, a name or a node number may move from one item to another within one
        // document, so updating in order can collide mid-way. An item whose update
        // collides is removed and added again in a second pass (its tables start empty;
        // every other item keeps its own). In the second pass every item present has the
        // document's values, which are unique: nothing collides.
        for net in &config.networks {
            if self.add_network(net).is_err() && self.remove_network(net.vni) {
                done.removed_networks.push(net.vni);
            }
        }
        for net in &config.networks {
            self.add_network(net)?;
        }
        for peer in &config.peers {
            if self.add_peer(peer).is_err() {
                if let Ok(r) = route(&config.grid, peer) {
                    self.remove_peer(r.address);
                }
            }
        }
        for peer in &config.peers {
            self.add_peer(peer)?;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::overlay::Underlay;
    use crate::table::fdb::Location;
    use smoltcp::time::Instant;
    use smoltcp::wire::EthernetAddress;

    const US: Underlay = Underlay {
        mac: EthernetAddress([0x02, 0, 0, 0, 0, 0x01]),
        ip: Ipv4Address::new(192, 0, 2, 1),
    };
    const P2: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
    const P3: Ipv4Address = Ipv4Address::new(192, 0, 2, 3);

    fn now() -> Instant {
        Instant::from_secs(1)
    }

    fn doc(text: &str) -> OverlayConfig {
        serde_json::from_str(text).unwrap()
    }

    fn base() -> OverlayConfig {
        doc(r#"{"grid": {"node": 1},
                "networks": [{"name": "a", "vni": 100}, {"name": "b", "vni": 200, "vlan": 200}],
                "peers": [{"node": 2, "address": "192.0.2.2", "networks": ["a", "b"]},
                          {"node": 3, "address": "192.0.2.3", "networks": ["a"]}]}"#)
    }

    fn vni(n: u32) -> Vni {
        Vni::new(n).unwrap()
    }

    fn mac(n: u8) -> EthernetAddress {
        EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, n])
    }

    /// The base grid with a static entry behind each peer in network a, one in b.
    fn running() -> Overlay {
        let mut o = Overlay::from_config(&base(), US, Limits::default(), 1).unwrap();
        for (m, peer, net) in [(2, P2, 100), (3, P3, 100), (4, P2, 200)] {
            o.add_static(vni(net), mac(m), Location::Remote(peer), None, now())
                .unwrap();
        }
        o
    }

    #[test]
    fn a_peer_that_leaves_takes_only_its_own_entries_and_the_rest_stay() {
        let mut o = running();
        let without_3 = doc(r#"{"grid": {"node": 1},
                "networks": [{"name": "a", "vni": 100}, {"name": "b", "vni": 200, "vlan": 200}],
                "peers": [{"node": 2, "address": "192.0.2.2", "networks": ["a", "b"]}]}"#);
        assert_eq!(o.reconcile(&without_3), Ok(Reconciled::default()));
        assert_eq!(o.peers().map(|(a, _)| a).collect::<Vec<_>>(), [P2]);
        assert_eq!(o.lookup(vni(100), &mac(3), now()), None);
        assert_eq!(
            o.lookup(vni(100), &mac(2), now()),
            Some(Location::Remote(P2))
        );
        assert_eq!(
            o.lookup(vni(200), &mac(4), now()),
            Some(Location::Remote(P2))
        );
        // Back again: the peer is there, its entries are not (they went with it).
        o.reconcile(&base()).unwrap();
        assert_eq!(o.peers().count(), 2);
        assert_eq!(o.lookup(vni(100), &mac(3), now()), None);
    }

    #[test]
    fn vlans_and_node_numbers_swapped_in_one_document_apply_in_place() {
        let mut o = running();
        // a and b swap VLANs: updated in order, a collides with b mid-way.
        let swapped = doc(r#"{"grid": {"node": 1},
                "networks": [{"name": "a", "vni": 100, "vlan": 200}, {"name": "b", "vni": 200}],
                "peers": [{"node": 2, "address": "192.0.2.2", "networks": ["a", "b"]},
                          {"node": 3, "address": "192.0.2.3", "networks": ["a"]}]}"#);
        let done = o.reconcile(&swapped).unwrap();
        let nets: Vec<(u32, Option<u16>)> = o
            .networks()
            .map(|(v, _, t)| (v.get(), t.map(|t| t.get())))
            .collect();
        assert_eq!(nets, [(100, Some(200)), (200, None)]);
        // Only the network whose update collided started over; b kept its table.
        assert_eq!(done.removed_networks, [vni(100)]);
        assert_eq!(o.lookup(vni(100), &mac(2), now()), None);
        assert_eq!(
            o.lookup(vni(200), &mac(4), now()),
            Some(Location::Remote(P2))
        );
        // Peers 2 and 3 swap node numbers: both stay, on the numbers asked for.
        let renumbered = doc(r#"{"grid": {"node": 1},
                "networks": [{"name": "a", "vni": 100, "vlan": 200}, {"name": "b", "vni": 200}],
                "peers": [{"node": 3, "address": "192.0.2.2", "networks": ["a", "b"]},
                          {"node": 2, "address": "192.0.2.3", "networks": ["a"]}]}"#);
        o.reconcile(&renumbered).unwrap();
        let nodes: Vec<(Ipv4Address, u16)> = o
            .status(now())
            .peers
            .iter()
            .map(|p| (p.address, p.node.get()))
            .collect();
        assert_eq!(nodes, [(P2, 3), (P3, 2)]);
    }

    #[test]
    fn a_refused_document_changes_nothing() {
        let mut o = running();
        let other_node = doc(r#"{"grid": {"node": 5},
                "networks": [{"name": "a", "vni": 100}]}"#);
        assert_eq!(o.reconcile(&other_node), Err(OverlayError::GridChanged));
        let to_self = doc(r#"{"grid": {"node": 1},
                "networks": [{"name": "a", "vni": 100}],
                "peers": [{"node": 2, "address": "192.0.2.1", "networks": ["a"]}]}"#);
        assert_eq!(o.reconcile(&to_self), Err(OverlayError::PeerIsSelf(US.ip)));
        assert_eq!(o.peers().count(), 2);
        assert_eq!(o.networks().count(), 2);
        assert_eq!(
            o.lookup(vni(100), &mac(3), now()),
            Some(Location::Remote(P3))
        );
        // Only the table limits changed: in place, and the new limits hold.
        let mut bigger = base();
        bigger.grid.limits.fdb_entries = 3;
        o.reconcile(&bigger).unwrap();
        assert_eq!(o.limits().fdb_capacity, 3);
        assert_eq!(
            o.lookup(vni(200), &mac(4), now()),
            Some(Location::Remote(P2))
        );
    }
}
