//! `[[peers]]`: another node of the grid, its underlay addresses and the networks it
//! carries, and which of its addresses this node uses (private in the same region,
//! public otherwise, as Kontena's grid). Serde types and their checks only.

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use smoltcp::wire::Ipv4Address;

use super::{valid_name, ConfigError, GridConfig};
use crate::base::NodeId;

/// `[[peers]]`: another node of the grid and the networks it takes part in.
///
/// Its underlay addresses, as Kontena's nodes have them: a private one used from nodes
/// of the same region and a public one used from everywhere else
/// ([`route`] picks). `address` alone is both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub node: NodeId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The peer's underlay (VTEP) address, private and public at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Address>,
    /// The peer's region; none is the region `"default"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Used by nodes in the peer's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_address: Option<Ipv4Address>,
    /// Used by nodes in other regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<Ipv4Address>,
    /// Names of the networks, from `[[networks]]`, that the peer carries.
    #[serde(default)]
    pub networks: Vec<String>,
}

impl PeerConfig {
    /// Peer `node` at underlay `address` (private and public), in no network.
    pub fn new(node: NodeId, address: Ipv4Address) -> PeerConfig {
        PeerConfig {
            node,
            name: None,
            address: Some(address),
            region: None,
            private_address: None,
            public_address: None,
            networks: Vec::new(),
        }
    }

    /// Every underlay address given for the peer (`address`, private, public).
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Address> + '_ {
        [self.address, self.private_address, self.public_address]
            .into_iter()
            .flatten()
    }
}

/// The region of a node or peer without one (Kontena's default region).
pub const DEFAULT_REGION: &str = "default";

/// Whether `addr` can be a peer's underlay address.
pub fn valid_underlay_address(addr: Ipv4Address) -> bool {
    !(addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback())
}

impl PeerConfig {
    /// Check the peer's own fields (name, region, addresses) and say which address this
    /// node (of `grid`) reaches it at.
    pub fn validate(&self, grid: &GridConfig) -> Result<Route, ConfigError> {
        if let Some(name) = &self.name {
            if !valid_name(name) {
                return Err(ConfigError::BadName(name.clone()));
            }
        }
        if let Some(region) = &self.region {
            if !valid_name(region) {
                return Err(ConfigError::BadRegion(region.clone()));
            }
        }
        if let Some(bad) = self.addresses().find(|a| !valid_underlay_address(*a)) {
            return Err(ConfigError::BadPeerAddress(bad));
        }
        grid.check_node(self.node)?;
        route(grid, self)
    }

    /// Check the peer's `networks`: each is one that `known` knows, named once.
    pub fn check_networks(&self, known: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for network in &self.networks {
            if !known(network) {
                return Err(ConfigError::UnknownNetwork {
                    peer: self.node,
                    network: network.clone(),
                });
            }
            if !seen.insert(network.as_str()) {
                return Err(ConfigError::DuplicatePeerNetwork {
                    peer: self.node,
                    network: network.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Which of a peer's addresses is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressKind {
    Private,
    Public,
}

/// How this node reaches one peer: the underlay address in use, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub address: Ipv4Address,
    pub kind: AddressKind,
}

/// The address this node (of `grid`) reaches `peer` at: its private address when both
/// are in the same region (a node or peer without a region is in `"default"`), else its
/// public address; `address` stands for whichever of the two is not given. In the same
/// region without a private address the public one is used (it is reachable from
/// anywhere); in another region a private address never is.
pub fn route(grid: &GridConfig, peer: &PeerConfig) -> Result<Route, ConfigError> {
    if peer.address.is_some() && peer.private_address.is_some() && peer.public_address.is_some() {
        return Err(ConfigError::AmbiguousPeerAddress(peer.node));
    }
    let private = peer.private_address.or(peer.address);
    let public = peer.public_address.or(peer.address);
    let peer_region = peer.region.as_deref().unwrap_or(DEFAULT_REGION);
    let same_region = grid.region() == peer_region;
    let (address, kind) = match (same_region, private, public) {
        (true, Some(a), _) => (a, AddressKind::Private),
        (_, _, Some(a)) => (a, AddressKind::Public),
        (false, Some(_), None) => return Err(ConfigError::NoPublicAddress(peer.node)),
        (_, None, None) => return Err(ConfigError::NoPeerAddress(peer.node)),
    };
    Ok(Route { address, kind })
}
