//! The addresses and ranges the NAT is built with: the uplink addresses ports are
//! published on, the node address, the inside networks, the SNAT port range, the
//! reserved ports and the conntrack table's size and timeouts.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

use crate::base::ports::SNAT_PORTS;
use crate::table::conntrack;

/// Addresses and ranges the NAT works with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// The host's addresses on which ports are published; the first one is
    /// the masquerade source for traffic leaving the grid.
    pub uplink: Vec<Ipv4Address>,
    /// This node's own grid address: the source of hairpin and service
    /// traffic, so that replies come back through this node.
    pub node: Ipv4Address,
    /// The inside networks (container subnet, overlay): never masqueraded.
    pub grid: Vec<Ipv4Cidr>,
    /// External ports (and ICMP identifiers) for SNAT, inclusive. The local
    /// stack's own ephemeral ports on the uplink and node addresses must lie
    /// outside it, or replies to them could match a translated flow.
    pub snat_ports: (u16, u16),
    /// Control/health ports that publish rules may not use.
    pub reserved_ports: Vec<u16>,
    pub conntrack: conntrack::ConntrackConfig,
}

impl NatConfig {
    /// Docker's ephemeral range for masquerade (the port plan's).
    pub const SNAT_PORTS: (u16, u16) = SNAT_PORTS;

    pub fn new(uplink: Ipv4Address, node: Ipv4Address, grid: Ipv4Cidr) -> NatConfig {
        NatConfig {
            uplink: vec![uplink],
            node,
            grid: vec![grid],
            snat_ports: Self::SNAT_PORTS,
            reserved_ports: Vec::new(),
            conntrack: conntrack::ConntrackConfig::default(),
        }
    }
}
