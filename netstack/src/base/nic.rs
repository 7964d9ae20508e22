//! The appliance's two NICs: which one, the IPv4 addressing of one, and the frame sizes
//! every NIC accepts. Values only; the NICs themselves are `pipeline::Nic`.

use smoltcp::wire::{Ipv4Address, Ipv4Cidr, ETHERNET_HEADER_LEN};

/// The IP MTU of every weft NIC.
pub const IP_MTU: usize = 1500;
/// The largest Ethernet frame (without FCS, without VLAN tag) a NIC accepts or sends.
pub const MAX_FRAME_LEN: usize = IP_MTU + ETHERNET_HEADER_LEN;

/// Which NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NicId {
    /// virtio-net #0: towards the host's network.
    Uplink,
    /// virtio-net #1: towards the containers.
    Link,
}

impl NicId {
    pub const ALL: [NicId; 2] = [NicId::Uplink, NicId::Link];

    pub fn name(self) -> &'static str {
        match self {
            NicId::Uplink => "uplink",
            NicId::Link => "link",
        }
    }
}

/// The IPv4 addressing of one NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicAddress {
    /// The NIC's own address and the prefix of its subnet.
    pub cidr: Ipv4Cidr,
    /// The default gateway reached through this NIC (the uplink's only, in practice).
    pub gateway: Option<Ipv4Address>,
}

impl NicAddress {
    /// The neighbour whose MAC a packet for `dst` is sent to through this NIC: `dst`
    /// itself on the NIC's subnet, else the gateway (`None`: no route).
    pub fn next_hop(&self, dst: Ipv4Address) -> Option<Ipv4Address> {
        if self.cidr.contains_addr(&dst) {
            Some(dst)
        } else {
            self.gateway
        }
    }
}
