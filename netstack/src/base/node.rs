//! A node's number in the grid and its overlay address. One type for the overlay
//! (`[grid] node`, peers, the node address) and sleeve (the sender of a message, key
//! derivation).
//!
//! The address plan: node `n` of 1..=254 is the grid subnet's base plus `n`
//! (`10.81.0.<n>` in the default `/16`), so every grid of up to 254 nodes keeps the
//! addresses it always had; past 254, nodes take the next /24s of the bottom /22 of the
//! grid subnet, 254 to a /24, never its `.0` or `.255` (node 255 is `10.81.1.1`, node
//! 1016 `10.81.3.254`). A grid subnet narrower than /22 has room for nodes 1..=254 only.
//! Container addresses must leave the node addresses' block ([`NodeId::block_prefix`])
//! free. The wire formats do not depend on the width (sleeve carries 32 bits).

use core::fmt;
use core::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A node's number in the grid: `1..=NodeId::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u16);

/// Node numbers per /24 of the node block: every address but `.0` and `.255`.
const PER_BLOCK: u16 = 254;

impl NodeId {
    /// The highest node number of any grid: four /24s of [`PER_BLOCK`] addresses, the
    /// bottom /22 of a grid subnet of /22 or wider.
    pub const MAX: u16 = 4 * PER_BLOCK;

    pub const fn new(n: u16) -> Option<NodeId> {
        if n >= 1 && n <= Self::MAX {
            Some(NodeId(n))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    /// The highest node number a grid subnet of `prefix_len` has addresses for: 1016 in
    /// a /22 or wider, 254 in a /23 or /24, none in anything narrower.
    pub const fn max_in(prefix_len: u8) -> u16 {
        match prefix_len {
            0..=22 => Self::MAX,
            23..=24 => PER_BLOCK,
            _ => 0,
        }
    }

    /// The prefix length of the block at the bottom of a grid subnet of `prefix_len` that
    /// holds the node addresses (and no container's): the /22 when the subnet is that
    /// wide, else its bottom /24.
    pub const fn block_prefix(prefix_len: u8) -> u8 {
        if prefix_len <= 22 {
            22
        } else {
            24
        }
    }

    /// How far this node's address is above the grid subnet's base: `n` for 1..=254,
    /// then one /24 further for every 254 numbers.
    pub const fn address_offset(self) -> u32 {
        let i = (self.0 - 1) as u32;
        256 * (i / PER_BLOCK as u32) + i % PER_BLOCK as u32 + 1
    }

    /// This node's overlay address in the grid subnet `base`/`prefix_len`, or None when
    /// that subnet has no address for it (see [`NodeId::max_in`]).
    pub fn address_in(self, base: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Addr> {
        if self.0 > Self::max_in(prefix_len) {
            return None;
        }
        Some(Ipv4Addr::from(
            u32::from(base).wrapping_add(self.address_offset()),
        ))
    }

    /// The node whose overlay address in the grid subnet `base`/`prefix_len` is `addr`.
    pub fn at_address(base: Ipv4Addr, prefix_len: u8, addr: Ipv4Addr) -> Option<NodeId> {
        let offset = u32::from(addr).wrapping_sub(u32::from(base));
        let (block, host) = (offset / 256, offset % 256);
        if host == 0 || host > u32::from(PER_BLOCK) || block >= 4 {
            return None;
        }
        let n = u16::try_from(block * u32::from(PER_BLOCK) + host).ok()?;
        NodeId::new(n).filter(|n| n.0 <= Self::max_in(prefix_len))
    }
}

impl From<NodeId> for u32 {
    fn from(node: NodeId) -> u32 {
        u32::from(node.0)
    }
}

impl TryFrom<u32> for NodeId {
    type Error = ();
    fn try_from(n: u32) -> Result<NodeId, ()> {
        u16::try_from(n).ok().and_then(NodeId::new).ok_or(())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        let n = u32::deserialize(d)?;
        NodeId::try_from(n).map_err(|()| {
            serde::de::Error::custom(format_args!("node number must be 1..={}", NodeId::MAX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;

    #[test]
    fn node_numbers_are_1_to_max_in_serde_and_from_32_bits() {
        assert_eq!(NodeId::new(0), None);
        assert_eq!(NodeId::new(1).map(NodeId::get), Some(1));
        assert_eq!(NodeId::new(NodeId::MAX).map(NodeId::get), Some(1016));
        assert_eq!(NodeId::new(NodeId::MAX + 1), None);
        let n: NodeId = serde_json::from_str("999").unwrap();
        assert_eq!(
            (n.get(), serde_json::to_string(&n).unwrap()),
            (999, "999".into())
        );
        for bad in ["0", "1017", "65537", "-1", "\"7\""] {
            assert!(serde_json::from_str::<NodeId>(bad).is_err(), "{bad}");
        }
        assert_eq!(NodeId::try_from(7u32), Ok(NodeId::new(7).unwrap()));
        assert_eq!(NodeId::try_from(0x0001_0007u32), Err(()));
        assert_eq!(u32::from(NodeId::new(7).unwrap()), 7);
    }

    const BASE: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 0);

    #[test]
    fn every_node_has_its_own_address_in_the_bottom_slash_22_never_dot_0_or_255() {
        let mut seen = BTreeSet::new();
        for n in 1..=NodeId::MAX {
            let node = NodeId::new(n).unwrap();
            let a = node.address_in(BASE, 16).unwrap();
            let [w, x, y, z] = a.octets();
            assert_eq!((w, x), (10, 81), "{n}: {a}");
            assert!(y < 4, "{n}: {a} is outside the bottom /22");
            assert!(z != 0 && z != 255, "{n}: {a}");
            assert!(seen.insert(a), "{n}: {a} taken twice");
            assert_eq!(NodeId::at_address(BASE, 16, a), Some(node), "{a}");
        }
        assert_eq!(seen.len(), 1016);
        // Every other address of the /22 is no node's.
        for off in 0..1024u32 {
            let a = Ipv4Addr::from(u32::from(BASE) + off);
            assert_eq!(NodeId::at_address(BASE, 16, a).is_some(), seen.contains(&a));
        }
    }

    #[test]
    fn nodes_up_to_254_keep_base_plus_n_and_the_plan_goes_on_by_slash_24s() {
        for n in 1..=254u16 {
            let a = NodeId::new(n).unwrap().address_in(BASE, 16).unwrap();
            assert_eq!(a, Ipv4Addr::new(10, 81, 0, n as u8));
            // The same in any subnet that has them.
            let narrow = NodeId::new(n)
                .unwrap()
                .address_in(Ipv4Addr::new(10, 9, 8, 0), 24);
            assert_eq!(narrow, Some(Ipv4Addr::new(10, 9, 8, n as u8)));
        }
        let at = |n| NodeId::new(n).unwrap().address_in(BASE, 16).unwrap();
        assert_eq!(at(255), Ipv4Addr::new(10, 81, 1, 1));
        assert_eq!(at(508), Ipv4Addr::new(10, 81, 1, 254));
        assert_eq!(at(509), Ipv4Addr::new(10, 81, 2, 1));
        assert_eq!(at(999), Ipv4Addr::new(10, 81, 3, 237));
        assert_eq!(at(1016), Ipv4Addr::new(10, 81, 3, 254));
    }

    #[test]
    fn narrow_subnets_hold_254_nodes() {
        let n255 = NodeId::new(255).unwrap();
        assert_eq!(NodeId::max_in(16), 1016);
        assert_eq!(NodeId::max_in(22), 1016);
        assert_eq!((NodeId::max_in(23), NodeId::max_in(24)), (254, 254));
        assert_eq!(NodeId::max_in(25), 0);
        assert!(n255.address_in(BASE, 22).is_some());
        assert_eq!(n255.address_in(BASE, 23), None);
        assert_eq!(
            NodeId::at_address(BASE, 24, Ipv4Addr::new(10, 81, 1, 1)),
            None
        );
        assert_eq!(
            (NodeId::block_prefix(8), NodeId::block_prefix(22)),
            (22, 22)
        );
        assert_eq!(
            (NodeId::block_prefix(23), NodeId::block_prefix(24)),
            (24, 24)
        );
    }
}
