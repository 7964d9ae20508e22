//! A node's number in the grid. One type for the overlay (`[grid] node`, peers, the node
//! address `10.81.0.<n>`) and sleeve (the sender of a message, key derivation).
//!
//! It is 16 bits wide so that grids beyond 254 nodes need no new type, but it refuses
//! more than [`NodeId::MAX`] today: the node address is the grid subnet's base plus the
//! number, and the default `/16` subnet keeps `10.81.0.1..=10.81.0.254` for nodes. The
//! wire formats do not depend on the width (sleeve carries 32 bits).

use core::fmt;

use serde::{Deserialize, Serialize};

/// A node's number in the grid: `1..=NodeId::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u16);

impl NodeId {
    /// The highest node number: the node addresses `<subnet>.0.<n>` end at 254. Raising
    /// it takes an addressing plan for node addresses beyond `.0.254` first.
    pub const MAX: u16 = 254;

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

    #[test]
    fn node_numbers_are_1_to_max_in_serde_and_from_32_bits() {
        assert_eq!(NodeId::new(0), None);
        assert_eq!(NodeId::new(1).map(NodeId::get), Some(1));
        assert_eq!(NodeId::new(NodeId::MAX).map(NodeId::get), Some(254));
        assert_eq!(NodeId::new(NodeId::MAX + 1), None);
        let n: NodeId = serde_json::from_str("42").unwrap();
        assert_eq!(
            (n.get(), serde_json::to_string(&n).unwrap()),
            (42, "42".into())
        );
        for bad in ["0", "255", "65537", "-1", "\"7\""] {
            assert!(serde_json::from_str::<NodeId>(bad).is_err(), "{bad}");
        }
        assert_eq!(NodeId::try_from(7u32), Ok(NodeId::new(7).unwrap()));
        assert_eq!(NodeId::try_from(0x0001_0007u32), Err(()));
        assert_eq!(u32::from(NodeId::new(7).unwrap()), 7);
    }
}
