//! The id of an 802.1Q VLAN that can carry an overlay network on the container link.
//! The tag's bytes are `wire::vlan`; which network a VLAN carries is the datapath's.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A VLAN id that can carry a network: 1..=4094 (0 is "priority only", 4095 reserved;
/// IEEE 802.1Q table 9-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VlanId(u16);

impl VlanId {
    pub const MIN: u16 = 1;
    pub const MAX: u16 = 4094;

    pub const fn new(id: u16) -> Option<VlanId> {
        if id >= Self::MIN && id <= Self::MAX {
            Some(VlanId(id))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for VlanId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for VlanId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<VlanId, D::Error> {
        let n = u32::deserialize(d)?;
        u16::try_from(n)
            .ok()
            .and_then(VlanId::new)
            .ok_or_else(|| serde::de::Error::custom("vlan must be 1..=4094"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_id_range_and_serde() {
        assert!(VlanId::new(0).is_none());
        assert!(VlanId::new(4095).is_none());
        assert_eq!(VlanId::new(4094).unwrap().get(), 4094);
        let v: VlanId = serde_json::from_str("100").unwrap();
        assert_eq!(v.get(), 100);
        assert_eq!(serde_json::to_string(&v).unwrap(), "100");
        for bad in ["0", "4095", "65636", "-1", "\"7\""] {
            assert!(serde_json::from_str::<VlanId>(bad).is_err(), "{bad}");
        }
    }
}
