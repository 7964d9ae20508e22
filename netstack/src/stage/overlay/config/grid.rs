//! `[grid]`: the overlay as a whole and this node's place in it (subnet, node number,
//! VXLAN port, MTU, outer DF and checksum, where sleeve keys come from (the secret, or
//! the peer channel's `[grid.tls]`), trusted subnets, region, table limits), and how a
//! network reaches its peers (`EncapMode`). Serde types and their checks only.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

use super::{
    valid_name, ConfigError, Limit, DEFAULT_MTU, DEFAULT_REGION, DEFAULT_SUBNET, MAX_MTU, MIN_MTU,
};
use crate::base::ports::VXLAN_PORT;
use crate::base::NodeId;
use crate::wire::vxlan::DfPolicy;
use weft_peer::config::{Auth, TlsSection};

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
    /// Send VXLAN's outer UDP checksums (Linux's `udpcsum`, its default); zero when
    /// false. Sleeve never sends one: its tag covers the datagram (docs/sleeve.md).
    #[serde(default = "default_true")]
    pub udp_checksum: bool,
    /// The pre-shared grid secret that sleeve keys derive from (docs/sleeve.md); shown
    /// as `"set"`, never echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretText>,
    /// Where sleeve keys come from: the secret, or the peer channel (docs/peer-tls.md).
    #[serde(default, skip_serializing_if = "Auth::is_secret")]
    pub auth: Auth,
    /// `[grid.tls]`: this node's certificate, key and grid CA (PEM), with `auth = "tls"`;
    /// the key is shown as `"set"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<TlsSection>>,
    /// Underlay subnets trusted with plaintext VXLAN by networks in `auto` mode
    /// (Kontena's trusted subnets).
    // Boxed slices, not vectors: the whole document travels in a control command.
    #[serde(default, skip_serializing_if = "no_subnets")]
    pub trusted_subnets: Box<[Subnet]>,
    /// This node's region: peers in the same region are reached at their private
    /// address, others at their public one. None is the region `"default"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// How many entries each network's tables hold (`[grid.limits]`).
    #[serde(default, skip_serializing_if = "GridLimits::is_default")]
    pub limits: GridLimits,
}

/// `[grid.limits]`: the most entries each network's tables hold. The tables grow with
/// what they hold; the appliance keeps heap free for them full and refuses limits whose
/// full tables its heap could not hold, so the defaults stay small (16 384 MACs seen
/// through one host, under 2 MiB a network) and a host that talks to more raises them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridLimits {
    /// MAC entries in one network's forwarding database, static and learned together.
    #[serde(default = "default_table_entries")]
    pub fdb_entries: u32,
    /// Address bindings in one network's ARP suppression table.
    #[serde(default = "default_table_entries")]
    pub arp_entries: u32,
}

/// The default of both limits.
pub const DEFAULT_TABLE_ENTRIES: u32 = 1 << 14;
/// The highest either limit may be set to.
pub const MAX_TABLE_ENTRIES: u32 = 1 << 24;

fn default_table_entries() -> u32 {
    DEFAULT_TABLE_ENTRIES
}

impl Default for GridLimits {
    fn default() -> GridLimits {
        GridLimits {
            fdb_entries: DEFAULT_TABLE_ENTRIES,
            arp_entries: DEFAULT_TABLE_ENTRIES,
        }
    }
}

impl GridLimits {
    pub fn is_default(&self) -> bool {
        *self == GridLimits::default()
    }
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
pub enum EncapMode {
    /// Plaintext VXLAN (UDP 4789) to every peer.
    #[default]
    Vxlan,
    /// Sleeve (encrypted, UDP 6783) to every peer.
    Sleeve,
    /// VXLAN to peers in `[grid] trusted_subnets`, sleeve to the others.
    Auto,
}

impl EncapMode {
    pub fn is_vxlan(&self) -> bool {
        *self == EncapMode::Vxlan
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
            auth: Auth::Secret,
            tls: None,
            trusted_subnets: Box::default(),
            region: None,
            limits: GridLimits::default(),
        }
    }

    /// The overlay address of node `node` ([`NodeId::address_in`]: `10.81.0.<n>` up to
    /// node 254). For a node the subnet has room for, which `validate` checks of this
    /// node and every peer.
    pub fn node_address(&self, node: NodeId) -> Ipv4Address {
        let base = self.subnet.0.network().address();
        Ipv4Address::from(u32::from(base).wrapping_add(node.address_offset()))
    }

    /// The highest node number this grid's subnet has addresses for.
    pub fn max_node(&self) -> u16 {
        NodeId::max_in(self.subnet.0.prefix_len())
    }

    /// Refuses a node number (this node's or a peer's) the subnet has no address for.
    pub fn check_node(&self, node: NodeId) -> Result<(), ConfigError> {
        if node.get() > self.max_node() {
            return Err(ConfigError::NodeOutOfRange {
                node,
                subnet: self.subnet,
            });
        }
        Ok(())
    }
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
        match (self.auth, &self.tls) {
            (Auth::Tls, None) => return Err(ConfigError::TlsWithoutCredentials),
            (Auth::Secret, Some(_)) => return Err(ConfigError::TlsUnused),
            (Auth::Tls, Some(tls)) => tls.check_timers().map_err(ConfigError::TlsTimer)?,
            (Auth::Secret, None) => {}
        }
        self.check_node(self.node)?;
        for (limit, value) in [
            (Limit::Fdb, self.limits.fdb_entries),
            (Limit::Arp, self.limits.arp_entries),
        ] {
            if value == 0 || value > MAX_TABLE_ENTRIES {
                return Err(ConfigError::LimitOutOfRange(limit, value));
            }
        }
        Ok(())
    }

    /// This node's region (`"default"` when none is set).
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }
}
