//! The configuration document: what `apply` takes and `config` returns (TOML in files on
//! the host, the same structure as JSON on the socket). Parsing refuses unknown keys;
//! `validate` (in `document`) checks every cross-field rule. This module never applies
//! anything: the appliance applies a `Config` only once it parsed and validated whole.

use alloc::format;
use alloc::string::String;
use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::field_path::FieldError;
use alloc::vec::Vec;
use weft_netstack::stage::overlay::config::{GridConfig, NetworkConfig, PeerConfig};

pub mod nat;

/// An IPv4 address with the prefix length of its subnet: `"A.B.C.D/len"` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    address: Ipv4Addr,
    prefix_len: u8,
}

/// Why a string is not an `A.B.C.D/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CidrError {
    MissingPrefix,
    BadAddress,
    BadPrefix,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CidrError::MissingPrefix => "expected A.B.C.D/len, the /len is missing",
            CidrError::BadAddress => {
                "expected A.B.C.D/len, the address is not a dotted-quad IPv4 address"
            }
            CidrError::BadPrefix => "expected A.B.C.D/len, the prefix length is not 0..=32",
        })
    }
}

impl Ipv4Cidr {
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Result<Self, CidrError> {
        if prefix_len > 32 {
            return Err(CidrError::BadPrefix);
        }
        Ok(Ipv4Cidr {
            address,
            prefix_len,
        })
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn netmask(&self) -> u32 {
        match self.prefix_len {
            0 => 0,
            n => u32::MAX << (32 - u32::from(n)),
        }
    }

    /// The subnet's first address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & self.netmask())
    }

    /// The subnet's last address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) | !self.netmask())
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.netmask() == u32::from(self.network())
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    pub fn to_smoltcp(&self) -> smoltcp::wire::Ipv4Cidr {
        smoltcp::wire::Ipv4Cidr::new(self.address, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, len) = s.split_once('/').ok_or(CidrError::MissingPrefix)?;
        let address = Ipv4Addr::from_str(addr).map_err(|_| CidrError::BadAddress)?;
        // u8::from_str would accept "+8" and "008"; only plain decimal is a prefix length.
        let plain = !len.is_empty() && len.len() <= 2 && len.bytes().all(|b| b.is_ascii_digit());
        if !plain || (len.len() == 2 && len.starts_with('0')) {
            return Err(CidrError::BadPrefix);
        }
        let prefix_len = u8::from_str(len).map_err(|_| CidrError::BadPrefix)?;
        Ipv4Cidr::new(address, prefix_len)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CidrVisitor;
        impl de::Visitor<'_> for CidrVisitor {
            type Value = Ipv4Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string \"A.B.C.D/len\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ipv4Cidr, E> {
                Ipv4Cidr::from_str(v).map_err(|e| E::custom(format!("{v:?}: {e}")))
            }
        }
        deserializer.deserialize_str(CidrVisitor)
    }
}

/// The whole configuration document. Later issues add a section as one more field
/// (`Option<...>` or `Vec<...>` with `#[serde(default)]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub uplink: UplinkConfig,
    pub link: LinkConfig,
    /// `[grid]`: this node's place in the overlay; absent: no overlay. Boxed: the
    /// document travels inside control commands and results, which stay small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<alloc::boxed::Box<GridConfig>>,
    /// `[[networks]]`: the overlay networks (VXLAN VNIs) this node takes part in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkConfig>,
    /// `[[peers]]`: the other nodes and the networks each carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    /// `[dns]`: the grid resolver on port 53 of the link; absent: no DNS service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::DnsSection>,
    /// `[[containers]]`: the grid's containers as DNS records (need a `[dns]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<crate::dns::ContainerEntry>,
    /// `[[publish]]`: ports published on the uplink address (DNAT to a container).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<weft_netstack::stage::nat::PublishRule>,
    /// `[nat]`: connection tracking limits; absent: defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<nat::NatSection>,
    /// `[[services]]`: L4 services (VIP, or DNS round robin) over weighted backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<weft_netstack::stage::lb::ServiceConfig>,
}

/// `[uplink]`: the NIC towards the host's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    pub address: Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

/// `[link]`: the NIC towards the containers; its address is their gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    pub address: Ipv4Cidr,
}

/// A refused configuration: which field (dotted path) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `"uplink.gateway"`; empty when the document as a whole is wrong (not an object).
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: &str, message: String) -> Self {
        ConfigError {
            field: field.into(),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl From<FieldError> for ConfigError {
    fn from(e: FieldError) -> Self {
        ConfigError {
            field: e.field,
            message: e.message,
        }
    }
}

impl Config {
    /// The rules of the `[uplink]` and `[link]` sections that are not a matter of
    /// types (the features' own sections are checked by theirs: `Config::validate`).
    pub(crate) fn check_nics(&self) -> Result<(), ConfigError> {
        let up = &self.uplink.address;
        check_host_address("uplink.address", up)?;
        if let Some(gw) = self.uplink.gateway {
            let field = "uplink.gateway";
            check_unicast(field, gw)?;
            if !up.contains(gw) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{gw} is outside the uplink subnet {}/{}",
                        up.network(),
                        up.prefix_len()
                    ),
                ));
            }
            if gw == up.address() {
                return Err(ConfigError::new(
                    field,
                    format!("{gw} is the uplink's own address"),
                ));
            }
            if up.prefix_len() <= 30 && (gw == up.network() || gw == up.broadcast()) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{gw} is the network or broadcast address of {}/{}",
                        up.network(),
                        up.prefix_len()
                    ),
                ));
            }
        }
        let link = &self.link.address;
        check_host_address("link.address", link)?;
        if link.overlaps(up) {
            return Err(ConfigError::new(
                "link.address",
                format!(
                    "subnet {}/{} overlaps the uplink subnet {}/{}",
                    link.network(),
                    link.prefix_len(),
                    up.network(),
                    up.prefix_len()
                ),
            ));
        }
        Ok(())
    }
}

fn check_unicast(field: &str, addr: Ipv4Addr) -> Result<(), ConfigError> {
    let what = if addr.is_unspecified() {
        "unspecified"
    } else if addr.is_loopback() {
        "a loopback address"
    } else if addr.is_multicast() {
        "a multicast address"
    } else if addr.is_broadcast() {
        "the broadcast address"
    } else if addr.octets()[0] >= 240 {
        "reserved (240.0.0.0/4)"
    } else if addr.octets()[0] == 0 {
        "in 0.0.0.0/8 (this network)"
    } else {
        return Ok(());
    };
    Err(ConfigError::new(
        field,
        format!("{addr} is {what}, not a unicast host address"),
    ))
}

fn check_host_address(field: &str, cidr: &Ipv4Cidr) -> Result<(), ConfigError> {
    check_unicast(field, cidr.address())?;
    if cidr.prefix_len() == 0 {
        return Err(ConfigError::new(
            field,
            format!("{cidr}: a /0 subnet holds every address"),
        ));
    }
    // /31 (RFC 3021) and /32 have no network or broadcast address to avoid.
    if cidr.prefix_len() <= 30 {
        if cidr.address() == cidr.network() {
            return Err(ConfigError::new(
                field,
                format!("{cidr} is the network address of its subnet"),
            ));
        }
        if cidr.address() == cidr.broadcast() {
            return Err(ConfigError::new(
                field,
                format!("{cidr} is the broadcast address of its subnet"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use alloc::vec::Vec;
    use serde_json::{json, Value};

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parses_and_prints() {
        let c = cidr("192.0.2.2/24");
        assert_eq!(c.address(), Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(c.prefix_len(), 24);
        assert_eq!(c.network(), Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 0, 2, 255));
        assert_eq!(c.to_string(), "192.0.2.2/24");
        assert_eq!(cidr("0.0.0.0/0").netmask(), 0);
        assert_eq!(cidr("10.1.2.3/32").netmask(), u32::MAX);
    }

    #[test]
    fn cidr_refuses_malformed() {
        let cases = [
            ("10.0.0.1", CidrError::MissingPrefix),
            ("10.0.0.1/", CidrError::BadPrefix),
            ("10.0.0.1/33", CidrError::BadPrefix),
            ("10.0.0.1/+8", CidrError::BadPrefix),
            ("10.0.0.1/08", CidrError::BadPrefix),
            ("10.0.0.1/100", CidrError::BadPrefix),
            ("10.0.0.1/8 ", CidrError::BadPrefix),
            ("10.0.0/8", CidrError::BadAddress),
            ("010.0.0.1/8", CidrError::BadAddress),
            (" 10.0.0.1/8", CidrError::BadAddress),
            ("10.0.0.256/8", CidrError::BadAddress),
            ("/8", CidrError::BadAddress),
            ("", CidrError::MissingPrefix),
        ];
        for (text, err) in cases {
            assert_eq!(text.parse::<Ipv4Cidr>(), Err(err), "{text:?}");
        }
    }

    #[test]
    fn cidr_round_trips_and_subnet_math_holds() {
        // Property-style loop over a deterministic spread of addresses and lengths.
        let mut rng = weft_netstack::base::test_rng::Rng::new(0x9e37_79b9);
        for _ in 0..5_000 {
            let x = rng.next_u64() as u32;
            let c = Ipv4Cidr::new(Ipv4Addr::from(x), (x % 33) as u8).unwrap();
            let text = c.to_string();
            assert_eq!(text.parse::<Ipv4Cidr>(), Ok(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, alloc::format!("{text:?}"));
            assert_eq!(serde_json::from_str::<Ipv4Cidr>(&json).unwrap(), c);
            assert!(
                c.contains(c.address()) && c.contains(c.network()) && c.contains(c.broadcast())
            );
            assert!(c.network() <= c.address() && c.address() <= c.broadcast());
            assert!(c.overlaps(&c));
            if c.prefix_len() > 0 {
                let outside = Ipv4Addr::from(
                    u32::from(c.address()) ^ (1 << (32 - u32::from(c.prefix_len()))),
                );
                assert!(!c.contains(outside), "{c} contains {outside}");
            }
        }
    }

    #[test]
    fn overlap() {
        assert!(cidr("10.0.0.1/8").overlaps(&cidr("10.81.0.1/16")));
        assert!(cidr("10.81.0.1/16").overlaps(&cidr("10.0.0.1/8")));
        assert!(!cidr("10.81.0.1/16").overlaps(&cidr("10.82.0.1/16")));
        assert!(!cidr("192.0.2.2/24").overlaps(&cidr("10.81.0.1/16")));
    }

    fn good() -> Value {
        json!({
            "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"}
        })
    }

    /// `good()` with `path` (dotted) replaced by `v`, or removed when `v` is None.
    fn with(path: &str, v: Option<Value>) -> Value {
        let mut doc = good();
        let keys: Vec<&str> = path.split('.').collect();
        let mut node = &mut doc;
        for k in &keys[..keys.len() - 1] {
            node = node.get_mut(*k).unwrap();
        }
        let map = node.as_object_mut().unwrap();
        let last = keys[keys.len() - 1];
        match v {
            Some(v) => {
                map.insert(last.into(), v);
            }
            None => {
                map.remove(last);
            }
        }
        doc
    }

    #[test]
    fn valid_document_parses() {
        let c = Config::from_json_value(&good()).unwrap();
        assert_eq!(c.uplink.address, cidr("192.0.2.2/24"));
        assert_eq!(c.uplink.gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(c.link.address, cidr("10.81.0.1/16"));
        // Serializes back to the same document.
        assert_eq!(serde_json::to_value(&c).unwrap(), good());
        // The gateway is optional, and omitted when absent.
        let c = Config::from_json_value(&with("uplink.gateway", None)).unwrap();
        assert_eq!(c.uplink.gateway, None);
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            with("uplink.gateway", None)
        );
        assert!(Config::from_json_value(&with("uplink.gateway", Some(Value::Null))).is_ok());
        // /31 and /32 have no network/broadcast addresses to avoid.
        assert!(
            Config::from_json_value(&with("link.address", Some(json!("10.81.0.0/31")))).is_ok()
        );
        assert!(
            Config::from_json_value(&with("link.address", Some(json!("10.81.0.0/32")))).is_ok()
        );
    }

    #[test]
    fn refused_documents_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([1, 2]), ""),
            (json!("uplink"), ""),
            (with("bogus", Some(json!(1))), "bogus"),
            (with("uplink.mtu", Some(json!(1500))), "uplink.mtu"),
            (
                with("link.gateway", Some(json!("10.81.0.254"))),
                "link.gateway",
            ),
            (with("uplink", None), "uplink"),
            (with("link", None), "link"),
            (with("uplink", Some(json!(7))), "uplink"),
            (with("uplink.address", None), "uplink.address"),
            (with("uplink.address", Some(json!(5))), "uplink.address"),
            (with("uplink.address", Some(json!(null))), "uplink.address"),
            (
                with("uplink.address", Some(json!("192.0.2.2"))),
                "uplink.address",
            ),
            (
                with("uplink.address", Some(json!("192.0.2.2/33"))),
                "uplink.address",
            ),
            (
                with("uplink.address", Some(json!("192.0.2.0/24"))),
                "uplink.address",
            ),
            (
                with("uplink.address", Some(json!("192.0.2.255/24"))),
                "uplink.address",
            ),
            (
                with("uplink.address", Some(json!("0.0.0.0/0"))),
                "uplink.address",
            ),
            (
                with("uplink.address", Some(json!("192.0.2.2/0"))),
                "uplink.address",
            ),
            (
                with("uplink.address", Some(json!("127.0.0.1/8"))),
                "uplink.address",
            ),
            (
                with("uplink.address", Some(json!("224.0.0.1/24"))),
                "uplink.address",
            ),
            (
                with("uplink.address", Some(json!("240.0.0.1/24"))),
                "uplink.address",
            ),
            (with("uplink.gateway", Some(json!(true))), "uplink.gateway"),
            (
                with("uplink.gateway", Some(json!("192.0.2.1/24"))),
                "uplink.gateway",
            ),
            (
                with("uplink.gateway", Some(json!("198.51.100.1"))),
                "uplink.gateway",
            ),
            (
                with("uplink.gateway", Some(json!("192.0.2.2"))),
                "uplink.gateway",
            ),
            (
                with("uplink.gateway", Some(json!("192.0.2.0"))),
                "uplink.gateway",
            ),
            (
                with("uplink.gateway", Some(json!("192.0.2.255"))),
                "uplink.gateway",
            ),
            (
                with("link.address", Some(json!("10.81.0.0/16"))),
                "link.address",
            ),
            (
                with("link.address", Some(json!("192.0.2.9/28"))),
                "link.address",
            ),
            (
                with("link.address", Some(json!("192.0.0.1/8"))),
                "link.address",
            ),
            (
                with("link.address", Some(json!(["10.81.0.1/16"]))),
                "link.address",
            ),
        ];
        for (doc, field) in cases {
            let err = Config::from_json_value(&doc).expect_err(&doc.to_string());
            assert_eq!(err.field, field, "{doc}: {err}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn unknown_key_message_names_the_key() {
        let err = Config::from_json_value(&with("uplink.mtu", Some(json!(1500)))).unwrap_err();
        assert!(err.message.contains("mtu"), "{}", err.message);
        let err = Config::from_json_str("{\"uplink\": ").unwrap_err();
        assert_eq!(err.field, "");
    }
}
