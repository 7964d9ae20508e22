//! The overlay's part of the config document: `[grid]`, `[[networks]]` and `[[peers]]`,
//! as serde types that refuse unknown fields, and their validation.
//!
//! The appliance's top-level document holds these three sections as fields and builds an
//! [`OverlayConfig`] from them; nothing here applies anything, it only says whether a
//! configuration makes sense before any of it is used.

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

use crate::base::ports::VXLAN_PORT;
use crate::base::{NodeId, VlanId, Vni};
use crate::wire::vxlan::DfPolicy;

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

/// An IPv4 subnet written `a.b.c.d/len`, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet(pub Ipv4Cidr);

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnet, D::Error> {
        let text = String::deserialize(d)?;
        let cidr = Ipv4Cidr::from_str(&text)
            .map_err(|()| serde::de::Error::custom("expected an IPv4 subnet a.b.c.d/len"))?;
        Ok(Subnet(cidr))
    }
}

fn default_subnet() -> Subnet {
    Subnet(DEFAULT_SUBNET)
}

fn default_port() -> u16 {
    VXLAN_PORT
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// `[grid]`: the overlay as a whole and this node's place in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    #[serde(default = "default_subnet")]
    pub subnet: Subnet,
    /// This node's number.
    pub node: NodeId,
    #[serde(default = "default_port")]
    pub vxlan_port: u16,
    /// The overlay MTU: the largest inner IP packet carried without refusal.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The outer DF bit (Linux's default: unset).
    #[serde(default)]
    pub df: DfPolicy,
    /// Send outer UDP checksums (Linux's `udpcsum`, its default); zero when false.
    #[serde(default = "default_true")]
    pub udp_checksum: bool,
    /// The pre-shared grid secret that sleeve keys derive from (docs/sleeve.md); shown
    /// as `"set"`, never echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretText>,
    /// Underlay subnets trusted with plaintext VXLAN by networks in `auto` mode
    /// (Kontena's trusted subnets).
    // Boxed slices, not vectors: the whole document travels in a control command.
    #[serde(default, skip_serializing_if = "no_subnets")]
    pub trusted_subnets: Box<[Subnet]>,
    /// This node's region: peers in the same region are reached at their private
    /// address, others at their public one. None is the region `"default"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

fn no_subnets(s: &[Subnet]) -> bool {
    s.is_empty()
}

/// The grid secret as written in `[grid] secret`: hex, at least
/// [`crate::stage::sleeve::keys::MIN_SECRET_LEN`] bytes. Serializes as `"set"` and prints as
/// `..`, so `config` and `status` never echo it; `"set"` itself is refused as input.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(Box<[u8]>);

impl SecretText {
    /// From hex text (upper or lower case, even length).
    pub fn from_hex(text: &str) -> Option<SecretText> {
        let digits = text.as_bytes();
        if !digits.len().is_multiple_of(2)
            || digits.len() / 2 < crate::stage::sleeve::keys::MIN_SECRET_LEN
        {
            return None;
        }
        let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut bytes = Vec::with_capacity(digits.len() / 2);
        for pair in digits.chunks_exact(2) {
            bytes.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
        }
        Some(SecretText(bytes.into_boxed_slice()))
    }

    /// The key source's secret.
    pub fn grid_secret(&self) -> Option<crate::stage::sleeve::GridSecret> {
        crate::stage::sleeve::GridSecret::new(&self.0).ok()
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        // Not `zeroize` (the sleeve's GridSecret wipes its own copy); a plain overwrite is
        // enough for text that lived in a config document.
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("SecretText(..)")
    }
}

impl Serialize for SecretText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("set")
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SecretText, D::Error> {
        let text = String::deserialize(d)?;
        SecretText::from_hex(&text).ok_or_else(|| {
            serde::de::Error::custom("grid secret must be hex, at least 16 bytes (32 hex digits)")
        })
    }
}

/// How a network reaches its peers on the underlay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Plaintext VXLAN (UDP 4789) to every peer.
    #[default]
    Vxlan,
    /// Sleeve (encrypted, UDP 6783) to every peer.
    Sleeve,
    /// VXLAN to peers in `[grid] trusted_subnets`, sleeve to the others.
    Auto,
}

impl Mode {
    pub fn is_vxlan(&self) -> bool {
        *self == Mode::Vxlan
    }
}

fn default_true() -> bool {
    true
}

impl GridConfig {
    /// A grid section with every default and node number `node`.
    pub fn new(node: NodeId) -> GridConfig {
        GridConfig {
            subnet: default_subnet(),
            node,
            vxlan_port: VXLAN_PORT,
            mtu: DEFAULT_MTU,
            df: DfPolicy::default(),
            udp_checksum: true,
            secret: None,
            trusted_subnets: Box::default(),
            region: None,
        }
    }

    /// The overlay address of node `node`: the subnet's base plus the node number
    /// (`10.81.0.<n>`).
    pub fn node_address(&self, node: NodeId) -> Ipv4Address {
        let base = u32::from(self.subnet.0.network().address());
        Ipv4Address::from(base + u32::from(node.get()))
    }
}

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
    #[serde(default, skip_serializing_if = "Mode::is_vxlan")]
    pub mode: Mode,
}

/// `[[peers]]`: another node of the grid and the networks it takes part in.
///
/// Its underlay addresses, as Kontena's nodes have them: a private one used from nodes
/// of the same region and a public one used from everywhere else
/// ([`super::encap::route`] picks). `address` alone is both.
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
    /// A network in `sleeve` or `auto` mode without a `[grid] secret`.
    SleeveWithoutSecret(String),
    /// A region name that is not 1..=64 characters of `[A-Za-z0-9_.-]`.
    BadRegion(String),
    /// A peer with no underlay address at all.
    NoPeerAddress(NodeId),
    /// A peer with `address` and both `private_address` and `public_address`.
    AmbiguousPeerAddress(NodeId),
    /// A peer in another region than this node's, without a public address.
    NoPublicAddress(NodeId),
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

/// Whether `addr` can be a peer's underlay address.
pub fn valid_underlay_address(addr: Ipv4Address) -> bool {
    !(addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback())
}

impl GridConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let cidr = self.subnet.0;
        if cidr.prefix_len() > 24 || cidr.network().address() != cidr.address() {
            return Err(ConfigError::BadSubnet(self.subnet));
        }
        if self.vxlan_port == 0 {
            return Err(ConfigError::ZeroPort);
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::MtuOutOfRange(self.mtu));
        }
        if let Some(region) = &self.region {
            if !valid_name(region) {
                return Err(ConfigError::BadRegion(region.clone()));
            }
        }
        Ok(())
    }

    /// This node's region (`"default"` when none is set).
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(ConfigError::BadName(self.name.clone()));
        }
        Ok(())
    }
}

impl PeerConfig {
    /// Check the peer's own fields (name, region, addresses) and say which address this
    /// node (of `grid`) reaches it at.
    pub fn validate(&self, grid: &GridConfig) -> Result<super::encap::Route, ConfigError> {
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
        super::encap::route(grid, self)
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
            if !net.mode.is_vxlan() && self.grid.secret.is_none() {
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
            let mut seen = BTreeSet::new();
            for network in &peer.networks {
                if !names.contains(network.as_str()) {
                    return Err(ConfigError::UnknownNetwork {
                        peer: peer.node,
                        network: network.clone(),
                    });
                }
                if !seen.insert(network.as_str()) {
                    return Err(ConfigError::DuplicatePeerNetwork {
                        peer: peer.node,
                        network: network.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The VNI of the network called `name`.
    pub fn vni_of(&self, name: &str) -> Option<Vni> {
        self.networks.iter().find(|n| n.name == name).map(|n| n.vni)
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    const DOC: &str = r#"{
        "grid": {"node": 1},
        "networks": [{"name": "default", "vni": 1}, {"name": "db", "vni": 42, "vlan": 42}],
        "peers": [
            {"node": 2, "name": "node-2", "address": "192.0.2.2", "networks": ["default", "db"]},
            {"node": 3, "address": "192.0.2.3", "networks": ["default"]}
        ]
    }"#;

    fn parse(doc: &str) -> Result<OverlayConfig, serde_json::Error> {
        serde_json::from_str(doc)
    }

    #[test]
    fn defaults() {
        let cfg = parse(DOC).unwrap();
        assert_eq!(cfg.grid.subnet.0, DEFAULT_SUBNET);
        assert_eq!(cfg.grid.vxlan_port, 4789);
        assert_eq!(cfg.grid.mtu, 1450);
        assert_eq!(cfg.grid.df, DfPolicy::Unset);
        assert!(cfg.grid.udp_checksum);
        assert_eq!(cfg.grid, GridConfig::new(NodeId::new(1).unwrap()));
        assert_eq!(
            cfg.grid.node_address(cfg.grid.node),
            Ipv4Address::new(10, 81, 0, 1)
        );
        assert_eq!(cfg.vni_of("db"), Vni::new(42));
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn round_trip() {
        let cfg = parse(DOC).unwrap();
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(parse(&text).unwrap(), cfg);
        assert!(text.contains("\"subnet\":\"10.81.0.0/16\""), "{text}");
    }

    #[test]
    fn refused_at_parse() {
        for doc in [
            r#"{"grid": {"node": 1, "nodes": 2}}"#,
            r#"{"grid": {"node": 0}}"#,
            r#"{"grid": {"node": 255}}"#,
            r#"{"grid": {"node": 1}, "networks": [{"name": "a", "vni": 16777216}]}"#,
            r#"{"grid": {"node": 1}, "networks": [{"name": "a", "vni": 1, "x": 1}]}"#,
            r#"{"grid": {"node": 1, "subnet": "10.81.0.0"}}"#,
            r#"{"grid": {"node": 1, "subnet": "10.81.0.0/33"}}"#,
            r#"{"grid": {"node": 1, "mtu": 70000}}"#,
            r#"{"grid": {"node": 1, "df": "sometimes"}}"#,
            r#"{"grid": {"node": 1}, "peers": [{"node": 2, "address": "192.0.2"}]}"#,
            r#"{"grid": {"node": 1}, "extra": {}}"#,
            r#"{"grid": {"node": 1}, "networks": [{"name": "a", "vni": 1, "vlan": 0}]}"#,
            r#"{"grid": {"node": 1}, "networks": [{"name": "a", "vni": 1, "vlan": 4095}]}"#,
        ] {
            assert!(parse(doc).is_err(), "{doc}");
        }
    }

    #[test]
    fn refused_at_validation() {
        let base = parse(DOC).unwrap();
        type Mutation = fn(&mut OverlayConfig);
        let cases: Vec<(Mutation, ConfigError)> = vec![
            (
                |c| c.grid.subnet = Subnet(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 1), 16)),
                ConfigError::BadSubnet(Subnet(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 1), 16))),
            ),
            (
                |c| c.grid.subnet = Subnet(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 25)),
                ConfigError::BadSubnet(Subnet(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 25))),
            ),
            (|c| c.grid.vxlan_port = 0, ConfigError::ZeroPort),
            (|c| c.grid.mtu = 67, ConfigError::MtuOutOfRange(67)),
            (|c| c.grid.mtu = 8951, ConfigError::MtuOutOfRange(8951)),
            (
                |c| c.networks[1].name = "de fault".to_string(),
                ConfigError::BadName("de fault".to_string()),
            ),
            (
                |c| c.networks[1].name = "default".to_string(),
                ConfigError::DuplicateNetworkName("default".to_string()),
            ),
            (
                |c| c.networks[1].vni = c.networks[0].vni,
                ConfigError::DuplicateVni(Vni::new(1).unwrap()),
            ),
            (
                |c| c.networks[0].vlan = c.networks[1].vlan,
                ConfigError::DuplicateVlan(VlanId::new(42).unwrap()),
            ),
            (
                |c| c.networks[1].vlan = None,
                ConfigError::TwoUntagged("db".to_string()),
            ),
            (
                |c| c.peers[0].node = c.grid.node,
                ConfigError::PeerIsSelf(NodeId::new(1).unwrap()),
            ),
            (
                |c| c.peers[1].node = c.peers[0].node,
                ConfigError::DuplicatePeerNode(NodeId::new(2).unwrap()),
            ),
            (
                |c| c.peers[1].name = Some("node-2".to_string()),
                ConfigError::DuplicatePeerName("node-2".to_string()),
            ),
            (
                |c| c.peers[1].address = c.peers[0].address,
                ConfigError::DuplicatePeerAddress(Ipv4Address::new(192, 0, 2, 2)),
            ),
            (
                |c| c.peers[1].address = Some(Ipv4Address::new(127, 0, 0, 1)),
                ConfigError::BadPeerAddress(Ipv4Address::new(127, 0, 0, 1)),
            ),
            (
                |c| c.peers[1].address = Some(Ipv4Address::BROADCAST),
                ConfigError::BadPeerAddress(Ipv4Address::BROADCAST),
            ),
            (
                |c| c.peers[1].networks.push("web".to_string()),
                ConfigError::UnknownNetwork {
                    peer: NodeId::new(3).unwrap(),
                    network: "web".to_string(),
                },
            ),
            (
                |c| c.peers[1].networks.push("default".to_string()),
                ConfigError::DuplicatePeerNetwork {
                    peer: NodeId::new(3).unwrap(),
                    network: "default".to_string(),
                },
            ),
        ];
        for (i, (mutate, want)) in cases.into_iter().enumerate() {
            let mut cfg = base.clone();
            mutate(&mut cfg);
            assert_eq!(cfg.validate(), Err(want), "case {i}");
        }
    }

    #[test]
    fn the_address_in_use_follows_the_region() {
        use crate::stage::overlay::encap::{route, AddressKind, Route};
        let a = |n: u8| Ipv4Address::new(10, 0, 0, n);
        let public = |n: u8| Ipv4Address::new(203, 0, 113, n);
        let mut grid = GridConfig::new(NodeId::new(1).unwrap());
        grid.region = Some("eu".to_string());
        let peer = |region: Option<&str>,
                    address: Option<Ipv4Address>,
                    private: Option<Ipv4Address>,
                    public: Option<Ipv4Address>| PeerConfig {
            region: region.map(|r| r.to_string()),
            address,
            private_address: private,
            public_address: public,
            ..PeerConfig::new(NodeId::new(2).unwrap(), a(2))
        };
        let private_route = |address| {
            Ok(Route {
                address,
                kind: AddressKind::Private,
            })
        };
        let public_route = |address| {
            Ok(Route {
                address,
                kind: AddressKind::Public,
            })
        };
        let both = |region| peer(region, None, Some(a(2)), Some(public(2)));
        // Same region: private; another region: public.
        assert_eq!(route(&grid, &both(Some("eu"))), private_route(a(2)));
        assert_eq!(route(&grid, &both(Some("us"))), public_route(public(2)));
        // No region is the region "default", on either side.
        assert_eq!(route(&grid, &both(None)), public_route(public(2)));
        let no_region = GridConfig::new(NodeId::new(1).unwrap());
        assert_eq!(route(&no_region, &both(None)), private_route(a(2)));
        assert_eq!(
            route(&no_region, &both(Some("default"))),
            private_route(a(2))
        );
        // `address` alone is both, and stands for whichever is missing.
        let plain = peer(Some("us"), Some(a(3)), None, None);
        assert_eq!(route(&grid, &plain), public_route(a(3)));
        assert_eq!(route(&no_region, &plain), public_route(a(3)));
        let with_private = peer(Some("us"), Some(public(3)), Some(a(3)), None);
        assert_eq!(route(&grid, &with_private), public_route(public(3)));
        let with_private = peer(Some("eu"), Some(public(3)), Some(a(3)), None);
        assert_eq!(route(&grid, &with_private), private_route(a(3)));
        // Same region without a private address: the public one (reachable anyway).
        assert_eq!(
            route(&grid, &peer(Some("eu"), None, None, Some(public(4)))),
            public_route(public(4))
        );
        // Refusals.
        assert_eq!(
            route(&grid, &peer(Some("us"), None, Some(a(5)), None)),
            Err(ConfigError::NoPublicAddress(NodeId::new(2).unwrap()))
        );
        assert_eq!(
            route(&grid, &peer(Some("eu"), None, None, None)),
            Err(ConfigError::NoPeerAddress(NodeId::new(2).unwrap()))
        );
        assert_eq!(
            route(&grid, &peer(None, Some(a(6)), Some(a(7)), Some(public(6)))),
            Err(ConfigError::AmbiguousPeerAddress(NodeId::new(2).unwrap()))
        );
    }

    #[test]
    fn region_fields_are_validated() {
        let doc = r#"{
            "grid": {"node": 1, "region": "eu"},
            "peers": [
                {"node": 2, "region": "eu", "private_address": "10.0.0.2", "public_address": "203.0.113.2"},
                {"node": 3, "region": "us", "private_address": "10.0.0.3", "public_address": "203.0.113.3"}
            ]
        }"#;
        let cfg = parse(doc).unwrap();
        assert_eq!(cfg.validate(), Ok(()));
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(parse(&text).unwrap(), cfg);
        assert!(!text.contains("\"address\""), "{text}");
        type Mutation = fn(&mut OverlayConfig);
        let cases: Vec<(Mutation, ConfigError)> = vec![
            (
                |c| c.grid.region = Some("e u".to_string()),
                ConfigError::BadRegion("e u".to_string()),
            ),
            (
                |c| c.peers[0].region = Some(String::new()),
                ConfigError::BadRegion(String::new()),
            ),
            (
                |c| c.peers[1].private_address = Some(Ipv4Address::BROADCAST),
                ConfigError::BadPeerAddress(Ipv4Address::BROADCAST),
            ),
            (
                |c| c.peers[1].public_address = None,
                ConfigError::NoPublicAddress(NodeId::new(3).unwrap()),
            ),
            (
                |c| c.peers[0].address = Some(Ipv4Address::new(10, 0, 0, 9)),
                ConfigError::AmbiguousPeerAddress(NodeId::new(2).unwrap()),
            ),
            (
                |c| c.peers[0].private_address = Some(Ipv4Address::new(203, 0, 113, 3)),
                ConfigError::DuplicatePeerAddress(Ipv4Address::new(203, 0, 113, 3)),
            ),
        ];
        for (i, (mutate, want)) in cases.into_iter().enumerate() {
            let mut cfg = parse(doc).unwrap();
            mutate(&mut cfg);
            assert_eq!(cfg.validate(), Err(want), "case {i}");
        }
        // Peer 3's private address is not in use here: the same one elsewhere is fine.
        let mut cfg = parse(doc).unwrap();
        cfg.peers[1].private_address = Some(Ipv4Address::new(10, 0, 0, 2));
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn names() {
        assert!(valid_name("a"));
        assert!(valid_name("front-end_1.x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("ä"));
        assert!(valid_name(&"x".repeat(64)));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
