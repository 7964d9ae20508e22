//! The 24-bit identifier of an overlay network, as VXLAN (RFC 7348) and sleeve records
//! carry it. One type for both encapsulations, the config and the tables.

use core::fmt;

/// A VXLAN Network Identifier: 24 bits, so at most 16 777 215.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI (2^24 - 1).
    pub const MAX: u32 = 0x00ff_ffff;

    /// A VNI, or `None` when `value` does not fit in 24 bits.
    pub const fn new(value: u32) -> Option<Vni> {
        if value <= Self::MAX {
            Some(Vni(value))
        } else {
            None
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// The VNI of a 24-bit field in network byte order.
    pub const fn from_be_bytes(bytes: [u8; 3]) -> Vni {
        Vni(u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]))
    }

    /// The 24-bit field in network byte order.
    pub const fn to_be_bytes(self) -> [u8; 3] {
        let b = self.0.to_be_bytes();
        [b[1], b[2], b[3]]
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<u32> for Vni {
    type Error = VniOutOfRange;
    fn try_from(value: u32) -> Result<Vni, VniOutOfRange> {
        Vni::new(value).ok_or(VniOutOfRange(value))
    }
}

impl From<Vni> for u32 {
    fn from(vni: Vni) -> u32 {
        vni.0
    }
}

/// A number that was offered as a VNI but does not fit in 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VniOutOfRange(pub u32);

impl fmt::Display for VniOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "VNI {} does not fit in 24 bits (max {})",
            self.0,
            Vni::MAX
        )
    }
}

impl core::error::Error for VniOutOfRange {}

impl serde::Serialize for Vni {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Vni {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Vni, D::Error> {
        let value = u32::deserialize(d)?;
        Vni::try_from(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_is_24_bits() {
        assert_eq!(Vni::new(0).map(Vni::get), Some(0));
        assert_eq!(Vni::new(0xff_ffff).map(Vni::get), Some(0xff_ffff));
        assert_eq!(Vni::new(0x100_0000), None);
        assert_eq!(Vni::try_from(u32::MAX), Err(VniOutOfRange(u32::MAX)));
        assert!(serde_json::from_str::<Vni>("16777216").is_err());
        assert_eq!(serde_json::from_str::<Vni>("42").ok(), Vni::new(42));
        for v in [0, 1, 0x12_3456, Vni::MAX] {
            let vni = Vni::new(v).unwrap();
            assert_eq!(Vni::from_be_bytes(vni.to_be_bytes()), vni);
        }
        assert_eq!(
            Vni::new(0x12_3456).unwrap().to_be_bytes(),
            [0x12, 0x34, 0x56]
        );
    }
}
