//! What the overlay counts for `status`: every drop by its reason (overlay-wide and
//! per network), each network's traffic and each peer's. Counting only; the bridge,
//! encapsulation and decapsulation decide.

use serde::{Deserialize, Serialize};

/// Why a frame was dropped. Each reason has a counter in [`OverlayDrops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayDrop {
    /// An uplink frame that is not VXLAN to our address and port: the rest of the stack
    /// may want it.
    NotVxlan,
    /// Outer IPv4/UDP header truncated, inconsistent or with a bad checksum.
    BadOuterHeader,
    /// An outer IPv4 fragment (VTEPs do not reassemble).
    OuterFragment,
    /// A VXLAN header without the I flag, or truncated.
    BadVxlanHeader,
    /// A VNI (from the wire or the caller) with no configured network.
    UnknownVni,
    /// VXLAN from an address that is not a peer of that network.
    UnknownPeer,
    /// A frame shorter than an Ethernet header.
    Runt,
    /// A broadcast or multicast source MAC address.
    BadSourceMac,
    /// A frame from a peer for a MAC that control says lives on another peer.
    NotLocal,
    /// Larger than the overlay MTU.
    TooBig,
    /// The underlay MAC address of the peer (or its next hop) is not known yet.
    NoNeighbor,
    /// A frame from the appliance on a network it is not attached to.
    NotAttached,
    /// A frame with an 802.1Q/802.1ad tag of its own. Networks are told apart by their
    /// VNI (and on the link by one tag the datapath takes off): a tag inside could
    /// land the frame on another network's VLAN (double tagging).
    Tagged,
    /// A sleeve message refused (`status.overlay.sleeve.drops` says why).
    SleeveRefused,
    /// Plaintext VXLAN from a peer that this network only accepts sealed.
    Unsealed,
    /// A frame for a sleeve peer that could not be sealed (never sent in clear).
    SealRefused,
    /// A record of a sleeve message of another network than the message's first one.
    MixedVni,
}

/// Frames dropped, by reason. Serialized as-is into `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayDrops {
    pub not_vxlan: u64,
    pub bad_outer_header: u64,
    pub outer_fragment: u64,
    pub bad_vxlan_header: u64,
    pub unknown_vni: u64,
    pub unknown_peer: u64,
    pub runt: u64,
    pub bad_source_mac: u64,
    pub not_local: u64,
    pub too_big: u64,
    pub no_neighbor: u64,
    pub not_attached: u64,
    pub tagged: u64,
    #[serde(default)]
    pub sleeve_refused: u64,
    #[serde(default)]
    pub unsealed: u64,
    #[serde(default)]
    pub seal_refused: u64,
    #[serde(default)]
    pub mixed_vni: u64,
}

impl OverlayDrops {
    pub(super) fn count(&mut self, reason: OverlayDrop) {
        let c = match reason {
            OverlayDrop::NotVxlan => &mut self.not_vxlan,
            OverlayDrop::BadOuterHeader => &mut self.bad_outer_header,
            OverlayDrop::OuterFragment => &mut self.outer_fragment,
            OverlayDrop::BadVxlanHeader => &mut self.bad_vxlan_header,
            OverlayDrop::UnknownVni => &mut self.unknown_vni,
            OverlayDrop::UnknownPeer => &mut self.unknown_peer,
            OverlayDrop::Runt => &mut self.runt,
            OverlayDrop::BadSourceMac => &mut self.bad_source_mac,
            OverlayDrop::NotLocal => &mut self.not_local,
            OverlayDrop::TooBig => &mut self.too_big,
            OverlayDrop::NoNeighbor => &mut self.no_neighbor,
            OverlayDrop::NotAttached => &mut self.not_attached,
            OverlayDrop::Tagged => &mut self.tagged,
            OverlayDrop::SleeveRefused => &mut self.sleeve_refused,
            OverlayDrop::Unsealed => &mut self.unsealed,
            OverlayDrop::SealRefused => &mut self.seal_refused,
            OverlayDrop::MixedVni => &mut self.mixed_vni,
        };
        *c = c.wrapping_add(1);
    }

    /// The counter for `reason`.
    pub fn get(&self, reason: OverlayDrop) -> u64 {
        match reason {
            OverlayDrop::NotVxlan => self.not_vxlan,
            OverlayDrop::BadOuterHeader => self.bad_outer_header,
            OverlayDrop::OuterFragment => self.outer_fragment,
            OverlayDrop::BadVxlanHeader => self.bad_vxlan_header,
            OverlayDrop::UnknownVni => self.unknown_vni,
            OverlayDrop::UnknownPeer => self.unknown_peer,
            OverlayDrop::Runt => self.runt,
            OverlayDrop::BadSourceMac => self.bad_source_mac,
            OverlayDrop::NotLocal => self.not_local,
            OverlayDrop::TooBig => self.too_big,
            OverlayDrop::NoNeighbor => self.no_neighbor,
            OverlayDrop::NotAttached => self.not_attached,
            OverlayDrop::Tagged => self.tagged,
            OverlayDrop::SleeveRefused => self.sleeve_refused,
            OverlayDrop::Unsealed => self.unsealed,
            OverlayDrop::SealRefused => self.seal_refused,
            OverlayDrop::MixedVni => self.mixed_vni,
        }
    }

    /// Every frame the overlay refused, whatever the reason, except `not_vxlan`: those
    /// were handed back to the rest of the stack, not lost.
    pub fn total(&self) -> u64 {
        [
            self.bad_outer_header,
            self.outer_fragment,
            self.bad_vxlan_header,
            self.unknown_vni,
            self.unknown_peer,
            self.runt,
            self.bad_source_mac,
            self.not_local,
            self.too_big,
            self.no_neighbor,
            self.not_attached,
            self.tagged,
            self.sleeve_refused,
            self.unsealed,
            self.seal_refused,
            self.mixed_vni,
        ]
        .iter()
        .fold(0u64, |a, b| a.wrapping_add(*b))
    }
}

/// Traffic of one overlay network.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCounters {
    /// Frames taken from the container link / the appliance / peers (decapsulated).
    pub link_rx: u64,
    pub appliance_rx: u64,
    pub uplink_rx: u64,
    /// Frames handed to the container link / the appliance / peers (encapsulated).
    pub link_tx: u64,
    pub appliance_tx: u64,
    pub uplink_tx: u64,
    /// Frames replicated to every peer (broadcast, multicast, unknown unicast).
    pub flooded: u64,
    /// Frames that stayed on the segment they came from.
    pub filtered: u64,
    /// ARP requests answered from the ARP table.
    pub arp_suppressed: u64,
    /// ICMP "fragmentation needed" sent back to senders.
    pub icmp_frag_needed: u64,
    /// Source addresses not learned because the FDB was full.
    pub learn_refused: u64,
    /// Drops attributed to this network (also counted in the overlay's totals).
    pub drops: OverlayDrops,
}

/// Traffic exchanged with one peer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets for this peer dropped because its underlay MAC was unknown.
    pub no_neighbor: u64,
}
