//! The running document's `[[peers]]` as `peer-add` and `peer-remove` change them: an
//! index of the peers by node number, name and underlay address in use, so that one
//! command checks only its own peer (its fields, and those three against the index)
//! and the appliance changes the running overlay in place. Nothing else in the document
//! depends on one peer, so the cost of a peer command does not grow with the grid.
//! It never touches packets or the overlay itself.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use smoltcp::wire::Ipv4Address;
use weft_netstack::base::NodeId;
use weft_netstack::stage::overlay::config::{
    ConfigError as GridError, GridConfig, PeerConfig, MAX_PEERS,
};

use crate::config::{Config, ConfigError};
use crate::overlay::{check_reachable, in_use, peer_field};

/// Where each peer of the running document is (its index in `peers`), by node number,
/// name and underlay address in use; each of the three is unique in a valid document.
#[derive(Debug, Default)]
pub struct PeerIndex {
    by_node: BTreeMap<NodeId, usize>,
    by_name: BTreeMap<String, usize>,
    by_address: BTreeMap<Ipv4Address, usize>,
}

/// Where a checked `peer-add` goes in the running document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The same peer is there already: nothing to do.
    Unchanged,
    /// It replaces the peer at this index (the one at the same address in use).
    Replace(usize),
    /// A new peer, after the others.
    Append,
}

impl PeerIndex {
    /// The index of a validated document's peers.
    pub fn of(config: &Config) -> PeerIndex {
        let mut index = PeerIndex::default();
        if let Some(grid) = config.grid.as_deref() {
            for (i, peer) in config.peers.iter().enumerate() {
                index.insert(grid, i, peer);
            }
        }
        index
    }

    fn insert(&mut self, grid: &GridConfig, i: usize, peer: &PeerConfig) {
        self.by_node.insert(peer.node, i);
        if let Some(name) = &peer.name {
            self.by_name.insert(name.clone(), i);
        }
        if let Some(address) = in_use(grid, peer) {
            self.by_address.insert(address, i);
        }
    }

    fn forget(&mut self, grid: &GridConfig, i: usize, peer: &PeerConfig) {
        if self.by_node.get(&peer.node) == Some(&i) {
            self.by_node.remove(&peer.node);
        }
        if let Some(name) = &peer.name {
            if self.by_name.get(name.as_str()) == Some(&i) {
                self.by_name.remove(name.as_str());
            }
        }
        if let Some(address) = in_use(grid, peer) {
            if self.by_address.get(&address) == Some(&i) {
                self.by_address.remove(&address);
            }
        }
    }

    /// Checks `peer` as `peer-add` gives it, against `config` (the validated running
    /// document with a grid, which this indexes): every rule of the document that one
    /// peer can break. `known`: whether the running overlay has a network of that name.
    /// A refusal names the field inside the command's arguments.
    pub fn check_add(
        &self,
        config: &Config,
        peer: &PeerConfig,
        known: impl Fn(&str) -> bool,
    ) -> Result<Slot, ConfigError> {
        let Some(grid) = config.grid.as_deref() else {
            return Err(ConfigError {
                field: String::new(),
                message: "no [grid] section".into(),
            });
        };
        let refuse = |e: GridError| ConfigError {
            field: peer_field(&e, grid, peer),
            message: e.to_string(),
        };
        if peer.node == grid.node {
            return Err(refuse(GridError::PeerIsSelf(peer.node)));
        }
        let route = peer.validate(grid).map_err(refuse)?;
        check_reachable(config, peer, route.address).map_err(|(field, message)| ConfigError {
            field: field.into(),
            message,
        })?;
        let slot = self.by_address.get(&route.address).copied();
        let another = |j: Option<&usize>| j.is_some_and(|j| Some(*j) != slot);
        if another(self.by_node.get(&peer.node)) {
            return Err(refuse(GridError::DuplicatePeerNode(peer.node)));
        }
        if let Some(name) = &peer.name {
            if another(self.by_name.get(name.as_str())) {
                return Err(refuse(GridError::DuplicatePeerName(name.clone())));
            }
        }
        peer.check_networks(known).map_err(refuse)?;
        Ok(match slot {
            Some(i) if config.peers.get(i) == Some(peer) => Slot::Unchanged,
            Some(i) => Slot::Replace(i),
            None if config.peers.len() >= MAX_PEERS => {
                return Err(refuse(GridError::TooManyPeers));
            }
            None => Slot::Append,
        })
    }

    /// Puts a peer that [`PeerIndex::check_add`] gave `slot` into `peers` (the running
    /// document's, which this indexes).
    pub fn put(
        &mut self,
        grid: &GridConfig,
        peers: &mut Vec<PeerConfig>,
        slot: Slot,
        peer: PeerConfig,
    ) {
        match slot {
            Slot::Unchanged => {}
            Slot::Replace(i) => {
                let old = core::mem::replace(&mut peers[i], peer);
                self.forget(grid, i, &old);
                self.insert(grid, i, &peers[i]);
            }
            Slot::Append => {
                peers.push(peer);
                let i = peers.len() - 1;
                self.insert(grid, i, &peers[i]);
            }
        }
    }

    /// The peer that `peer-remove` at `address` names in `peers` (which this indexes):
    /// the one using that address, else the first that was given it.
    pub fn find(&self, peers: &[PeerConfig], address: Ipv4Address) -> Option<usize> {
        self.by_address.get(&address).copied().or_else(|| {
            peers
                .iter()
                .position(|p| p.addresses().any(|a| a == address))
        })
    }

    /// Removes peer `i` from `peers` (which this indexes) and returns it; the peers
    /// after it move up one place (the index follows in one pass over its entries).
    pub fn remove(
        &mut self,
        grid: &GridConfig,
        peers: &mut Vec<PeerConfig>,
        i: usize,
    ) -> PeerConfig {
        let gone = peers.remove(i);
        self.forget(grid, i, &gone);
        let places = self
            .by_node
            .values_mut()
            .chain(self.by_name.values_mut())
            .chain(self.by_address.values_mut());
        for j in places.filter(|j| **j > i) {
            *j -= 1;
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn running() -> Config {
        Config::from_json_value(&json!({
            "uplink": {"address": "192.0.2.11/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"},
            "grid": {"node": 1},
            "networks": [{"name": "a", "vni": 100}, {"name": "b", "vni": 200, "vlan": 200}],
            "peers": [
                {"node": 2, "name": "two", "address": "192.0.2.12", "networks": ["a"]},
                {"node": 3, "address": "192.0.2.13", "networks": ["a", "b"]},
                {"node": 4, "name": "four", "address": "192.0.2.14"}
            ]
        }))
        .unwrap()
    }

    fn peer(v: serde_json::Value) -> PeerConfig {
        serde_json::from_value(v).unwrap()
    }

    fn known(name: &str) -> bool {
        matches!(name, "a" | "b")
    }

    /// The field a `peer-add` of `v` into the running document is refused at.
    fn refused(v: serde_json::Value) -> String {
        let c = running();
        let e = PeerIndex::of(&c)
            .check_add(&c, &peer(v.clone()), known)
            .expect_err(&v.to_string());
        assert!(!e.message.is_empty());
        e.field
    }

    #[test]
    fn a_peer_is_refused_for_what_the_whole_document_would_refuse_naming_its_own_field() {
        for (v, field) in [
            (json!({"node": 1, "address": "192.0.2.20"}), "node"),
            (json!({"node": 2, "address": "192.0.2.20"}), "node"),
            (
                json!({"node": 5, "name": "two", "address": "192.0.2.20"}),
                "name",
            ),
            (
                json!({"node": 5, "name": "a b", "address": "192.0.2.20"}),
                "name",
            ),
            (json!({"node": 5, "address": "224.0.0.1"}), "address"),
            (json!({"node": 5, "address": "192.0.2.11"}), "address"),
            (json!({"node": 5}), "address"),
            (
                json!({"node": 5, "address": "192.0.2.20", "networks": ["a", "c"]}),
                "networks[1]",
            ),
            (
                json!({"node": 5, "address": "192.0.2.20", "networks": ["b", "b"]}),
                "networks[1]",
            ),
            (
                json!({"node": 5, "region": "eu", "private_address": "10.0.0.5"}),
                "public_address",
            ),
        ] {
            assert_eq!(refused(v.clone()), field, "{v}");
        }
    }

    /// Checks and puts `v` as `peer-add` does; the slot it took.
    fn add(c: &mut Config, index: &mut PeerIndex, v: serde_json::Value) -> Slot {
        let p = peer(v);
        let slot = index.check_add(c, &p, known).unwrap();
        let grid = c.grid.clone().unwrap();
        index.put(&grid, &mut c.peers, slot, p);
        slot
    }

    #[test]
    fn the_index_follows_adds_replacements_and_removals_as_a_fresh_one_would() {
        let mut c = running();
        let mut index = PeerIndex::of(&c);
        let grid = c.grid.clone().unwrap();
        let same = json!({"node": 3, "address": "192.0.2.13", "networks": ["a", "b"]});
        assert_eq!(add(&mut c, &mut index, same), Slot::Unchanged);
        // Peer 3 takes a name and leaves b; it may take its own node number again.
        let renamed =
            json!({"node": 3, "name": "three", "address": "192.0.2.13", "networks": ["a"]});
        assert_eq!(add(&mut c, &mut index, renamed), Slot::Replace(1));
        let new = json!({"node": 9, "name": "nine", "address": "192.0.2.19"});
        assert_eq!(add(&mut c, &mut index, new), Slot::Append);
        assert_eq!(
            index.find(&c.peers, Ipv4Address::new(192, 0, 2, 12)),
            Some(0)
        );
        let gone = index.remove(&grid, &mut c.peers, 0);
        assert_eq!(gone.node.get(), 2);
        // Its node number and name are free; the others moved up.
        let c2 = c.clone();
        c2.validate().unwrap();
        let fresh = PeerIndex::of(&c2);
        assert_eq!(index.by_node, fresh.by_node);
        assert_eq!(index.by_name, fresh.by_name);
        assert_eq!(index.by_address, fresh.by_address);
        let back = json!({"node": 2, "name": "two", "address": "192.0.2.22"});
        assert_eq!(add(&mut c, &mut index, back), Slot::Append);
        assert_eq!(index.find(&c.peers, Ipv4Address::new(192, 0, 2, 12)), None);
        c.validate().unwrap();
    }

    #[test]
    fn a_peer_is_found_by_another_of_its_addresses() {
        let mut c = running();
        c.peers.push(peer(json!({"node": 7, "region": "eu",
            "private_address": "10.0.0.7", "public_address": "192.0.2.17"})));
        c.validate().unwrap();
        let index = PeerIndex::of(&c);
        assert_eq!(
            index.find(&c.peers, Ipv4Address::new(192, 0, 2, 17)),
            Some(3)
        );
        assert_eq!(index.find(&c.peers, Ipv4Address::new(10, 0, 0, 7)), Some(3));
        assert_eq!(index.find(&c.peers, Ipv4Address::new(10, 0, 0, 8)), None);
    }
}
