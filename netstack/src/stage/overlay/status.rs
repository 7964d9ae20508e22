//! Everything `status` shows about the overlay, ready to serialize: the node, drops,
//! the sleeve endpoint, each network with its FDB and ARP table, and each peer. Built
//! from the overlay's state; nothing here changes it.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use smoltcp::time::Instant;
use smoltcp::wire::Ipv4Address;

use super::config::AddressKind;
use super::sleeve_link::SleeveStatus;
use super::{NetworkCounters, Overlay, OverlayDrops, PeerCounters};
use crate::base::{Mac, NodeId, VlanId, Vni};
pub use crate::stage::sleeve::PeerSleeveRefused;
use crate::table::fdb::{EntryOrigin, Location};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub node: NodeId,
    pub node_address: Ipv4Address,
    pub underlay_address: Ipv4Address,
    pub vxlan_port: u16,
    pub mtu: u16,
    pub drops: OverlayDrops,
    /// The sleeve endpoint's counters, when `[grid]` has a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleeve: Option<SleeveStatus>,
    pub networks: Vec<NetworkStatus>,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub vni: Vni,
    pub vlan: Option<VlanId>,
    pub appliance_mac: Option<Mac>,
    pub counters: NetworkCounters,
    pub fdb: Vec<FdbEntryStatus>,
    pub arp: Vec<ArpEntryStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntryStatus {
    pub mac: Mac,
    /// The peer's underlay address; `None` for the local container link.
    pub location: Option<Ipv4Address>,
    #[serde(rename = "static")]
    pub is_static: bool,
    /// Seconds since a learned entry was last seen.
    pub age_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArpEntryStatus {
    pub ip: Ipv4Address,
    pub mac: Mac,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node: NodeId,
    pub name: Option<String>,
    /// The underlay address in use (private in the same region, else public).
    pub address: Ipv4Address,
    /// Which of the peer's addresses `address` is.
    pub address_kind: AddressKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub networks: Vec<Vni>,
    pub neighbor: Option<Mac>,
    pub counters: PeerCounters,
    /// The sleeve session with the peer, when the grid has a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleeve: Option<PeerSleeveStatus>,
}

/// One peer's sleeve session: its epochs and what it refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSleeveStatus {
    /// The epoch this node seals under (none before the first message).
    pub tx_epoch: Option<u32>,
    /// The peer's epoch this node opens under (none before the first message).
    pub rx_epoch: Option<u32>,
    /// Sending epochs started after the first.
    pub rekeys: u64,
    /// Newer receiving epochs installed.
    pub rx_epochs_installed: u64,
    /// New sessions of the peer adopted (it restarted).
    pub rx_sessions_adopted: u64,
    /// The peer's messages refused, by reason.
    pub refused: PeerSleeveRefused,
}

impl Overlay {
    /// Everything `status` shows about the overlay, ready to serialize.
    pub fn status(&self, now: Instant) -> OverlayStatus {
        OverlayStatus {
            node: self.grid.node,
            node_address: self.node_address(),
            underlay_address: self.underlay.ip,
            vxlan_port: self.grid.vxlan_port,
            mtu: self.grid.mtu,
            drops: self.drops,
            sleeve: self
                .sleeve
                .as_ref()
                .map(|l| SleeveStatus::from(l.metrics())),
            networks: self
                .networks
                .iter()
                .map(|(vni, n)| NetworkStatus {
                    name: n.name.clone(),
                    vni: *vni,
                    vlan: n.vlan,
                    appliance_mac: n.appliance_mac.map(Mac),
                    counters: n.counters,
                    fdb: n
                        .fdb
                        .iter()
                        .filter(|(mac, _)| n.fdb.lookup(mac, now).is_some())
                        .map(|(mac, e)| FdbEntryStatus {
                            mac: Mac(*mac),
                            location: match e.location {
                                Location::Local => None,
                                Location::Remote(a) => Some(a),
                            },
                            is_static: e.origin == EntryOrigin::Static,
                            age_secs: match e.origin {
                                EntryOrigin::Static => None,
                                EntryOrigin::Learned { last_seen } => {
                                    Some((now - last_seen).total_millis() / 1000)
                                }
                            },
                        })
                        .collect(),
                    arp: n
                        .arp
                        .iter()
                        .map(|(ip, mac)| ArpEntryStatus {
                            ip: *ip,
                            mac: Mac(*mac),
                        })
                        .collect(),
                })
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|(addr, p)| PeerStatus {
                    node: p.node,
                    name: p.name.clone(),
                    address: *addr,
                    address_kind: p.kind,
                    region: p.region.clone(),
                    networks: p.networks.iter().copied().collect(),
                    neighbor: p.neighbor.map(Mac),
                    counters: p.counters,
                    sleeve: self
                        .sleeve
                        .as_ref()
                        .and_then(|l| l.session(p.node))
                        .map(|s| {
                            let st = s.stats();
                            PeerSleeveStatus {
                                tx_epoch: s.tx_epoch().map(|e| e.0),
                                rx_epoch: s.rx_current().map(|(_, e)| e.0),
                                rekeys: st.rekeys,
                                rx_epochs_installed: st.rx_epochs_installed,
                                rx_sessions_adopted: st.rx_sessions_adopted,
                                refused: st.refused,
                            }
                        }),
                })
                .collect(),
        }
    }
}
