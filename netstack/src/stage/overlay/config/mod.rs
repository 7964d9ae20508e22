//! The overlay's part of the config document: `[grid]`, `[[networks]]` and `[[peers]]`,
//! as serde types that refuse unknown fields, and their validation.
//!
//! The appliance's top-level document holds these three sections as fields and builds an
//! [`OverlayConfig`] from them; nothing here applies anything, it only says whether a
//! configuration makes sense before any of it is used.

mod grid;
mod peer;

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

use crate::base::{NodeId, VlanId, Vni};
pub use grid::{
    EncapMode, GridConfig, GridLimits, SecretText, Subnet, DEFAULT_TABLE_ENTRIES, MAX_TABLE_ENTRIES,
};
pub use peer::{route, valid_underlay_address, AddressKind, PeerConfig, Route, DEFAULT_REGION};

/// The grid subnet when none is configured (Kontena's `10.81.0.0/16`).
pub const DEFAULT_SUBNET: Ipv4Cidr = Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 16);
/// The default overlay MTU: a 1500-byte underlay minus the 50 bytes VXLAN adds.
pub const DEFAULT_MTU: u16 = 1500 - crate::wire::vxlan::ENCAP_OVERHEAD as u16;
/// The smallest MTU an IPv4 link may have (RFC 791).
pub const MIN_MTU: u16 = 68;
/// The largest overlay MTU: a 9000-byte jumbo underlay minus the VXLAN overhead.
pub const MAX_MTU: u16 = 9000 - crate::wire::vxlan::ENCAP_OVERHEAD as u16;
/// At most this many networks and this many peers.
pub const MAX_NETWORKS: usize = 1024;
pub const MAX_PEERS: usize = 1024;
/// Names of networks and peers: 1 to 64 characters of `[A-Za-z0-9_.-]`.
pub const MAX_NAME_LEN: usize = 64;

/// `[[networks]]`: one L2 overlay network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub name: String,
    pub vni: Vni,
    /// The 802.1Q VLAN that carries this network on the container link; `None`: the
    /// network's frames are untagged there (at most one network may be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<VlanId>,
    /// VXLAN, sleeve, or chosen per peer by the trusted subnets.
    #[serde(default, skip_serializing_if = "EncapMode::is_vxlan")]
    pub mode: EncapMode,
}

/// The three overlay sections together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayConfig {
    pub grid: GridConfig,
    #[serde(default)]
    pub networks: Vec<NetworkConfig>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

/// What is wrong with an overlay configuration; the first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Host bits set in the grid subnet, or a prefix longer than /24 (no room for
    /// node addresses below containers).
    BadSubnet(Subnet),
    ZeroPort,
    MtuOutOfRange(u16),
    BadName(String),
    DuplicateNetworkName(String),
    DuplicateVni(Vni),
    /// Two networks on the same VLAN of the link.
    DuplicateVlan(VlanId),
    /// Two networks untagged on the link (the second one's name).
    TwoUntagged(String),
    TooManyNetworks,
    TooManyPeers,
    /// A peer with this node's own number.
    PeerIsSelf(NodeId),
    DuplicatePeerNode(NodeId),
    DuplicatePeerName(String),
    DuplicatePeerAddress(Ipv4Address),
    /// An underlay address that cannot be one host's (unspecified, broadcast,
    /// multicast, loopback).
    BadPeerAddress(Ipv4Address),
    UnknownNetwork {
        peer: NodeId,
        network: String,
    },
    DuplicatePeerNetwork {
        peer: NodeId,
        network: String,
    },
    /// A network in `sleeve` or `auto` mode without a `[grid] secret` (with
    /// `auth = "secret"`).
    SleeveWithoutSecret(String),
    /// `auth = "tls"` without a `[grid.tls]` table.
    TlsWithoutCredentials,
    /// A `[grid.tls]` table while `auth` is not `"tls"`.
    TlsUnused,
    /// A `[grid.tls]` timer out of its bounds.
    TlsTimer(weft_peer::config::TimerError),
    /// A region name that is not 1..=64 characters of `[A-Za-z0-9_.-]`.
    BadRegion(String),
    /// A peer with no underlay address at all.
    NoPeerAddress(NodeId),
    /// A peer with `address` and both `private_address` and `public_address`.
    AmbiguousPeerAddress(NodeId),
    /// A peer in another region than this node's, without a public address.
    NoPublicAddress(NodeId),
    /// A node number (this node's or a peer's) the grid subnet has no address for.
    NodeOutOfRange {
        node: NodeId,
        subnet: Subnet,
    },
    /// A `[grid.limits]` value of 0 or above [`MAX_TABLE_ENTRIES`].
    LimitOutOfRange(Limit, u32),
}

/// Which `[grid.limits]` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Fdb,
    Arp,
}

impl Limit {
    /// Its key in `[grid.limits]`.
    pub fn key(self) -> &'static str {
        match self {
            Limit::Fdb => "fdb_entries",
            Limit::Arp => "arp_entries",
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        use ConfigError::*;
        match self {
            BadSubnet(s) => write!(f, "grid subnet {s} has host bits set or is longer than /24"),
            ZeroPort => write!(f, "vxlan_port must not be 0"),
            MtuOutOfRange(m) => write!(f, "mtu {m} is outside {MIN_MTU}..={MAX_MTU}"),
            BadName(n) => write!(
                f,
                "name {n:?} must be 1..={MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . -"
            ),
            DuplicateNetworkName(n) => write!(f, "network {n:?} is defined twice"),
            DuplicateVni(v) => write!(f, "VNI {v} is used by two networks"),
            DuplicateVlan(v) => write!(f, "VLAN {v} is used by two networks"),
            TwoUntagged(n) => write!(
                f,
                "network {n:?} has no vlan, and another network is already untagged on the link"
            ),
            TooManyNetworks => write!(f, "more than {MAX_NETWORKS} networks"),
            TooManyPeers => write!(f, "more than {MAX_PEERS} peers"),
            PeerIsSelf(n) => write!(f, "peer {n} has this node's own number"),
            DuplicatePeerNode(n) => write!(f, "peer node {n} is listed twice"),
            DuplicatePeerName(n) => write!(f, "peer name {n:?} is used twice"),
            DuplicatePeerAddress(a) => write!(f, "peer address {a} is used twice"),
            BadPeerAddress(a) => write!(f, "peer address {a} is not a unicast host address"),
            UnknownNetwork { peer, network } => {
                write!(f, "peer {peer} names unknown network {network:?}")
            }
            DuplicatePeerNetwork { peer, network } => {
                write!(f, "peer {peer} lists network {network:?} twice")
            }
            TlsWithoutCredentials => f.write_str(
                "auth = \"tls\" needs a [grid.tls] table (ca_file, cert_file, key_file)",
            ),
            TlsUnused => f.write_str("[grid.tls] is only used with auth = \"tls\""),
            TlsTimer(e) => write!(f, "{e}"),
            SleeveWithoutSecret(n) => {
                write!(f, "network {n:?} uses sleeve but [grid] has no secret")
            }
            BadRegion(r) => write!(
                f,
                "region {r:?} must be 1..={MAX_NAME_LEN} characters of A-Z a-z 0-9 _ . -"
            ),
            NoPeerAddress(n) => write!(
                f,
                "peer {n} needs an address, or a private_address and/or public_address"
            ),
            AmbiguousPeerAddress(n) => write!(
                f,
                "peer {n}: give address, or private_address and public_address, not all three"
            ),
            NoPublicAddress(n) => write!(
                f,
                "peer {n} is in another region than this node and has no public_address"
            ),
            NodeOutOfRange { node, subnet } => {
                let max = NodeId::max_in(subnet.0.prefix_len());
                write!(
                    f,
                    "node {node} has no address in the grid subnet {subnet}, which holds \
                     nodes 1..={max}"
                )?;
                if max < NodeId::MAX {
                    write!(f, " (a /22 or wider holds 1..={})", NodeId::MAX)?;
                }
                Ok(())
            }
            LimitOutOfRange(limit, value) => write!(
                f,
                "{} = {value} is outside 1..={MAX_TABLE_ENTRIES}",
                limit.key()
            ),
        }
    }
}

/// Whether `name` is acceptable for a network or a peer.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(ConfigError::BadName(self.name.clone()));
        }
        Ok(())
    }
}

impl OverlayConfig {
    /// Check the whole configuration; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.grid.validate()?;
        if self.networks.len() > MAX_NETWORKS {
            return Err(ConfigError::TooManyNetworks);
        }
        if self.peers.len() > MAX_PEERS {
            return Err(ConfigError::TooManyPeers);
        }
        let mut names = BTreeSet::new();
        let mut vnis = BTreeSet::new();
        let mut vlans = BTreeSet::new();
        for net in &self.networks {
            net.validate()?;
            let keyless = self.grid.auth.is_secret() && self.grid.secret.is_none();
            if !net.mode.is_vxlan() && keyless {
                return Err(ConfigError::SleeveWithoutSecret(net.name.clone()));
            }
            if !names.insert(net.name.as_str()) {
                return Err(ConfigError::DuplicateNetworkName(net.name.clone()));
            }
            if !vnis.insert(net.vni) {
                return Err(ConfigError::DuplicateVni(net.vni));
            }
            // `None` is the untagged slot: one network at most.
            if !vlans.insert(net.vlan) {
                return Err(match net.vlan {
                    Some(v) => ConfigError::DuplicateVlan(v),
                    None => ConfigError::TwoUntagged(net.name.clone()),
                });
            }
        }
        let mut nodes = BTreeSet::new();
        let mut peer_names = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for peer in &self.peers {
            if peer.node == self.grid.node {
                return Err(ConfigError::PeerIsSelf(peer.node));
            }
            if !nodes.insert(peer.node) {
                return Err(ConfigError::DuplicatePeerNode(peer.node));
            }
            if let Some(name) = &peer.name {
                if !valid_name(name) {
                    return Err(ConfigError::BadName(name.clone()));
                }
                if !peer_names.insert(name.as_str()) {
                    return Err(ConfigError::DuplicatePeerName(name.clone()));
                }
            }
            let route = peer.validate(&self.grid)?;
            if !addresses.insert(route.address) {
                return Err(ConfigError::DuplicatePeerAddress(route.address));
            }
            peer.check_networks(|n| names.contains(n))?;
        }
        Ok(())
    }

    /// The VNI of the network called `name`.
    pub fn vni_of(&self, name: &str) -> Option<Vni> {
        self.networks.iter().find(|n| n.name == name).map(|n| n.vni)
    }
}

#[cfg(test)]
mod tests;
