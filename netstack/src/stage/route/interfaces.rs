//! What the router works with besides frames: the addressing of both NICs as it needs
//! it (own MACs and addresses, next hops, which destinations are the bridge's), and
//! where a container-side neighbour lives when an overlay runs (its segment, and
//! whether it is this node's or a peer's). Values only.

use serde::{Deserialize, Serialize};
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};

use crate::base::{NicAddress, NicId, Vni};

/// The addressing of both NICs as the router needs it, read from the interfaces on
/// every poll so reconfiguration takes effect at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interfaces {
    pub uplink_mac: EthernetAddress,
    pub uplink: Option<NicAddress>,
    pub link_mac: EthernetAddress,
    pub link: Option<NicAddress>,
    /// The overlay node address on the link, when an overlay runs.
    pub link_extra: Option<Ipv4Cidr>,
    /// An overlay runs: the container side is reached through its segments.
    pub overlay: bool,
}

/// A part of the container side when an overlay runs: the untagged link outside every
/// network, or one overlay network (its VLAN on the link and its peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Segment {
    Plain,
    Network(Vni),
}

/// How a frame handed to [`super::Router::receive_on`] reached this node: from the link
/// (`Local`), or decapsulated from a peer (`Remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Local,
    Remote,
}

/// Where a container-side neighbour was last heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub segment: Segment,
    pub origin: Origin,
}

impl Interfaces {
    pub(super) fn mac(&self, side: NicId) -> EthernetAddress {
        match side {
            NicId::Uplink => self.uplink_mac,
            NicId::Link => self.link_mac,
        }
    }

    pub(super) fn address(&self, side: NicId) -> Option<Ipv4Address> {
        match side {
            NicId::Uplink => self.uplink.map(|a| a.cidr.address()),
            NicId::Link => self.link.map(|a| a.cidr.address()),
        }
    }

    /// The sender address of the router's ARP requests out of `side`: on the overlay's
    /// networks the node address (every network has it), else the NIC's own.
    pub(super) fn arp_source(&self, side: NicId) -> Option<Ipv4Address> {
        match (side, self.link_extra) {
            (NicId::Link, Some(node)) if self.overlay => Some(node.address()),
            _ => self.address(side),
        }
    }

    /// Frames for these destinations arriving on the link are the bridge's business,
    /// never the NAT's: other addresses of the link subnets, broadcast, multicast. The
    /// appliance's own addresses do go through the NAT: hairpin replies come back to
    /// the node address (and what is not a tracked flow passes on to smoltcp).
    pub(super) fn link_local(&self, dst: Ipv4Address) -> bool {
        let on = |c: Ipv4Cidr| c.address() != dst && c.contains_addr(&dst);
        self.link.is_some_and(|a| on(a.cidr))
            || self.link_extra.is_some_and(on)
            || dst.is_broadcast()
            || dst.is_multicast()
    }

    /// The neighbour a frame for `dst` goes to when sent out of `side`.
    pub(super) fn next_hop(&self, side: NicId, dst: Ipv4Address) -> Option<Ipv4Address> {
        match side {
            NicId::Uplink => self.uplink?.next_hop(dst),
            NicId::Link => {
                let on = |c: Ipv4Cidr| c.contains_addr(&dst);
                (self.link.is_some_and(|a| on(a.cidr)) || self.link_extra.is_some_and(on))
                    .then_some(dst)
            }
        }
    }
}
