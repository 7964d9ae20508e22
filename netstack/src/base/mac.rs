//! A MAC address as people read and write it (`02:42:0a:51:00:02`), for `status` and the
//! control protocol. Frames carry smoltcp's `EthernetAddress`; this only shows and reads it.

use alloc::string::String;
use core::fmt;

use serde::{Deserialize, Serialize};
use smoltcp::wire::EthernetAddress;

/// A MAC address shown as `02:42:0a:51:00:02`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub EthernetAddress);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let b = self.0 .0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let text = String::deserialize(d)?;
        parse_mac(&text)
            .map(Mac)
            .ok_or_else(|| serde::de::Error::custom("expected a MAC address 02:42:0a:51:00:02"))
    }
}

/// `02:42:0a:51:00:02` (two hex digits per octet, colons) as a MAC address.
pub fn parse_mac(text: &str) -> Option<EthernetAddress> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(EthernetAddress(out))
}
