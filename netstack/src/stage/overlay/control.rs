//! The overlay's control side: adding and removing networks, peers and static FDB
//! entries, and attaching the appliance, each checked before anything changes. The
//! datapath and the appliance call it between frames; no frame passes here.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, Ipv4Address};

use super::config::{self, ConfigError, NetworkConfig, PeerConfig};
use super::{
    Limits, Network, NetworkCounters, Overlay, OverlayDrops, OverlayError, Peer, PeerCounters,
};
use crate::base::{VlanId, Vni};
use crate::table::fdb::{ArpTable, Fdb, Location, TableError};

impl Overlay {
    /// Add a network, or rename (and re-VLAN) the one with the same VNI; its tables
    /// are kept. Each network has its own VLAN on the link, at most one none.
    pub fn add_network(&mut self, net: &NetworkConfig) -> Result<(), OverlayError> {
        net.validate()?;
        if self
            .network_names
            .get(&net.name)
            .is_some_and(|vni| *vni != net.vni)
        {
            return Err(ConfigError::DuplicateNetworkName(net.name.clone()).into());
        }
        if self
            .networks
            .iter()
            .any(|(vni, n)| n.vlan == net.vlan && *vni != net.vni)
        {
            return Err(match net.vlan {
                Some(v) => ConfigError::DuplicateVlan(v),
                None => ConfigError::TwoUntagged(net.name.clone()),
            }
            .into());
        }
        if let Some(existing) = self.networks.get_mut(&net.vni) {
            if existing.name != net.name {
                self.network_names.remove(&existing.name);
                self.network_names.insert(net.name.clone(), net.vni);
                existing.name = net.name.clone();
            }
            existing.vlan = net.vlan;
            existing.mode = net.mode;
            return Ok(());
        }
        if self.networks.len() >= config::MAX_NETWORKS {
            return Err(ConfigError::TooManyNetworks.into());
        }
        self.networks.insert(
            net.vni,
            Network {
                name: net.name.clone(),
                vlan: net.vlan,
                fdb: Fdb::new(self.limits.fdb_capacity, self.limits.ageing),
                arp: ArpTable::new(self.limits.arp_capacity),
                appliance_mac: None,
                mode: net.mode,
                counters: NetworkCounters::default(),
            },
        );
        self.network_names.insert(net.name.clone(), net.vni);
        Ok(())
    }

    /// Remove a network, its tables, and its membership in every peer.
    pub fn remove_network(&mut self, vni: Vni) -> bool {
        for peer in self.peers.values_mut() {
            peer.networks.remove(&vni);
        }
        let Some(gone) = self.networks.remove(&vni) else {
            return false;
        };
        self.network_names.remove(&gone.name);
        true
    }

    /// The VNI of the network called `name`.
    pub fn vni_of(&self, name: &str) -> Option<Vni> {
        self.network_names.get(name).copied()
    }

    /// Changes every network's table sizes. A table above a lower limit keeps its
    /// entries and takes no new one until it is below the limit again.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        for net in self.networks.values_mut() {
            net.fdb.set_capacity(limits.fdb_capacity);
            net.arp.set_capacity(limits.arp_capacity);
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Entries held in all networks: FDB entries (learned ones not yet swept included)
    /// and ARP bindings.
    pub fn table_entries(&self) -> (usize, usize) {
        self.networks
            .values()
            .fold((0, 0), |(f, a), n| (f + n.fdb.len(), a + n.arp.len()))
    }

    /// Add a peer, or replace the one at the same underlay address in use (its counters
    /// and neighbor MAC are kept; static entries of networks it left are removed). The
    /// address in use is its private one if it is in this node's region, else its
    /// public one ([`config::route`]).
    pub fn add_peer(&mut self, peer: &PeerConfig) -> Result<(), OverlayError> {
        if peer.node == self.grid.node {
            return Err(ConfigError::PeerIsSelf(peer.node).into());
        }
        // Which of its addresses (by region) is the one place this is decided.
        let route = peer.validate(&self.grid)?;
        let address = route.address;
        if address == self.underlay.ip {
            return Err(OverlayError::PeerIsSelf(address));
        }
        if self
            .peer_nodes
            .get(&peer.node)
            .is_some_and(|addr| *addr != address)
        {
            return Err(ConfigError::DuplicatePeerNode(peer.node).into());
        }
        let mut networks = BTreeSet::new();
        for name in &peer.networks {
            let vni = self
                .vni_of(name)
                .ok_or_else(|| OverlayError::UnknownNetwork(name.clone()))?;
            networks.insert(vni);
        }
        if !self.peers.contains_key(&address) && self.peers.len() >= config::MAX_PEERS {
            return Err(ConfigError::TooManyPeers.into());
        }
        let entry = self.peers.entry(address).or_insert_with(|| Peer {
            node: peer.node,
            name: None,
            region: None,
            kind: route.kind,
            networks: BTreeSet::new(),
            neighbor: None,
            counters: PeerCounters::default(),
        });
        if let Some(sleeve) = &mut self.sleeve {
            if entry.node != peer.node {
                sleeve.remove_peer(entry.node);
            }
            sleeve.add_peer(peer.node);
        }
        let left: Vec<Vni> = entry.networks.difference(&networks).copied().collect();
        self.peer_nodes.remove(&entry.node);
        self.peer_nodes.insert(peer.node, address);
        entry.node = peer.node;
        entry.name = peer.name.clone();
        entry.region = peer.region.clone();
        entry.kind = route.kind;
        entry.networks = networks;
        for vni in left {
            if let Some(net) = self.networks.get_mut(&vni) {
                forget_remote(net, address);
            }
        }
        Ok(())
    }

    /// Remove a peer and every static entry that points at it.
    pub fn remove_peer(&mut self, address: Ipv4Address) -> bool {
        let Some(gone) = self.peers.remove(&address) else {
            return false;
        };
        self.peer_nodes.remove(&gone.node);
        if let Some(sleeve) = &mut self.sleeve {
            sleeve.remove_peer(gone.node);
        }
        for net in self.networks.values_mut() {
            forget_remote(net, address);
        }
        true
    }

    /// Record the underlay MAC to send a peer's packets to (the peer's own, or its
    /// router's), as the uplink's ARP resolved it; `None` forgets it.
    pub fn set_neighbor(
        &mut self,
        peer: Ipv4Address,
        mac: Option<EthernetAddress>,
    ) -> Result<(), OverlayError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(OverlayError::UnknownPeer(peer))?;
        p.neighbor = mac;
        Ok(())
    }

    /// Every network: its VNI, name and VLAN on the link.
    pub fn networks(&self) -> impl Iterator<Item = (Vni, &str, Option<VlanId>)> + '_ {
        self.networks
            .iter()
            .map(|(vni, n)| (*vni, n.name.as_str(), n.vlan))
    }

    /// Every peer: its underlay address and the underlay MAC its packets go to.
    pub fn peers(&self) -> impl Iterator<Item = (Ipv4Address, Option<EthernetAddress>)> + '_ {
        self.peers.iter().map(|(a, p)| (*a, p.neighbor))
    }

    /// Peers whose underlay MAC is still unknown: the uplink should ARP for them.
    pub fn peers_without_neighbor(&self) -> impl Iterator<Item = Ipv4Address> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.neighbor.is_none())
            .map(|(a, _)| *a)
    }

    /// Attach the appliance's own interface to a network with this MAC (so frames to it
    /// reach [`super::Egress::Appliance`] and broadcasts are copied to it), or detach it.
    pub fn attach_appliance(
        &mut self,
        vni: Vni,
        mac: Option<EthernetAddress>,
    ) -> Result<(), OverlayError> {
        if mac.is_some_and(|m| !m.is_unicast()) {
            return Err(TableError::NotUnicastMac.into());
        }
        self.network_mut(vni)?.appliance_mac = mac;
        Ok(())
    }

    /// Pin `mac` in network `vni` at `location` (control's static entry) and, with `ip`,
    /// bind that overlay address to it for ARP suppression.
    pub fn add_static(
        &mut self,
        vni: Vni,
        mac: EthernetAddress,
        location: Location,
        ip: Option<Ipv4Address>,
        now: Instant,
    ) -> Result<(), OverlayError> {
        if let Location::Remote(peer) = location {
            let p = self
                .peers
                .get(&peer)
                .ok_or(OverlayError::UnknownPeer(peer))?;
            if !p.networks.contains(&vni) {
                return Err(OverlayError::PeerNotInNetwork { peer, vni });
            }
        }
        let net = self.network_mut(vni)?;
        if let Some(ip) = ip {
            // Check the ARP binding first so that a refusal leaves both tables untouched.
            if !mac.is_unicast() {
                return Err(TableError::NotUnicastMac.into());
            }
            if net.arp.lookup(&ip).is_none() && net.arp.len() >= net.arp.capacity() {
                return Err(TableError::Full.into());
            }
        }
        net.fdb.insert_static(mac, location, now)?;
        if let Some(ip) = ip {
            net.arp.insert(ip, mac)?;
        }
        Ok(())
    }

    /// Remove the static entry for `mac` in `vni` and the ARP bindings to it.
    pub fn remove_static(&mut self, vni: Vni, mac: EthernetAddress) -> Result<bool, OverlayError> {
        let net = self.network_mut(vni)?;
        let removed = net.fdb.remove_static(&mac);
        net.arp.remove_mac(&mac);
        Ok(removed)
    }

    /// Sweep expired learned entries of every network.
    pub fn age(&mut self, now: Instant) -> usize {
        self.networks.values_mut().map(|n| n.fdb.age(now)).sum()
    }

    /// Overlay-wide drop counters (every drop, all networks).
    pub fn drops(&self) -> &OverlayDrops {
        &self.drops
    }

    pub fn network_counters(&self, vni: Vni) -> Option<&NetworkCounters> {
        self.networks.get(&vni).map(|n| &n.counters)
    }

    pub fn peer_counters(&self, peer: Ipv4Address) -> Option<&PeerCounters> {
        self.peers.get(&peer).map(|p| &p.counters)
    }

    /// Where `mac` lives in network `vni` at `now`.
    pub fn lookup(&self, vni: Vni, mac: &EthernetAddress, now: Instant) -> Option<Location> {
        self.networks.get(&vni)?.fdb.lookup(mac, now)
    }

    fn network_mut(&mut self, vni: Vni) -> Result<&mut Network, OverlayError> {
        self.networks
            .get_mut(&vni)
            .ok_or_else(|| OverlayError::UnknownNetwork(alloc::format!("VNI {vni}")))
    }
}

/// Removes the entries behind `peer` and their ARP bindings: costs what it removes.
fn forget_remote(net: &mut Network, peer: Ipv4Address) {
    for mac in net.fdb.remove_remote(peer) {
        net.arp.remove_mac(&mac);
    }
}
