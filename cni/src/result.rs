//! The spec's result object: interfaces, IP configs, routes and DNS, written in the
//! format of the config's version (0.4.0 marks each IP config with `"version": "4"`),
//! and read back leniently from any 0.3.0+ result (a `prevResult`, or what a
//! delegated IPAM plugin printed). IPv4 only: the grid is IPv4. It never acts on what
//! it describes.

use std::net::Ipv4Addr;

use serde_json::{json, Map, Value};

/// An address with its prefix length (`10.81.1.2/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, l) = s.split_once('/')?;
        let prefix_len: u8 = l.parse().ok().filter(|l| *l <= 32)?;
        Some(Cidr {
            address: a.parse().ok()?,
            prefix_len,
        })
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(u32::from(self.address) & mask)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The network namespace path for the container's end; none for the host's.
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Cidr,
    pub gateway: Option<Ipv4Addr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    pub gw: Option<Ipv4Addr>,
}

impl Route {
    /// `0.0.0.0/0` via `gw`.
    pub fn default_via(gw: Ipv4Addr) -> Route {
        Route {
            dst: Cidr {
                address: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
            },
            gw: Some(gw),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    pub fn from_json(v: &Value) -> Dns {
        let strings = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Dns {
            nameservers: strings("nameservers"),
            domain: v.get("domain").and_then(Value::as_str).map(str::to_string),
            search: strings("search"),
            options: strings("options"),
        }
    }

    fn json(&self) -> Value {
        let mut m = Map::new();
        if !self.nameservers.is_empty() {
            m.insert("nameservers".into(), json!(self.nameservers));
        }
        if let Some(d) = &self.domain {
            m.insert("domain".into(), json!(d));
        }
        if !self.search.is_empty() {
            m.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            m.insert("options".into(), json!(self.options));
        }
        Value::Object(m)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// The result object in the format of `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({"name": i.name, "mac": i.mac});
                if let Some(s) = &i.sandbox {
                    v["sandbox"] = json!(s);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!({"address": ip.address.to_string()});
                if version == "0.4.0" {
                    v["version"] = json!("4");
                }
                if let Some(g) = ip.gateway {
                    v["gateway"] = json!(g.to_string());
                }
                if let Some(i) = ip.interface {
                    v["interface"] = json!(i);
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut v = json!({"dst": r.dst.to_string()});
                if let Some(g) = r.gw {
                    v["gw"] = json!(g.to_string());
                }
                v
            })
            .collect();
        let mut out = json!({
            "cniVersion": version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
        });
        if !self.dns.is_empty() {
            out["dns"] = self.dns.json();
        }
        out
    }

    /// Reads a result of any version from 0.3.0 on; IPv6 entries are skipped.
    pub fn from_json(v: &Value) -> Result<CniResult, String> {
        if !v.is_object() {
            return Err("a result is a JSON object".into());
        }
        let list = |k: &str| {
            v.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let mut r = CniResult::default();
        for (n, i) in list("interfaces").iter().enumerate() {
            let name = i
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("interfaces[{n}] has no name"))?;
            r.interfaces.push(Interface {
                name: name.to_string(),
                mac: i
                    .get("mac")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                sandbox: i
                    .get("sandbox")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            });
        }
        for (n, ip) in list("ips").iter().enumerate() {
            let text = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("ips[{n}] has no address"))?;
            if text.contains(':') {
                continue;
            }
            let address = Cidr::parse(text)
                .ok_or_else(|| format!("ips[{n}].address {text:?} is not a CIDR"))?;
            let interface = match ip.get("interface") {
                None | Some(Value::Null) => None,
                Some(i) => Some(
                    i.as_u64()
                        .and_then(|i| usize::try_from(i).ok())
                        .filter(|i| *i < r.interfaces.len())
                        .ok_or_else(|| {
                            format!("ips[{n}].interface {i} is not an interface index")
                        })?,
                ),
            };
            r.ips.push(IpConfig {
                address,
                gateway: ip
                    .get("gateway")
                    .and_then(Value::as_str)
                    .and_then(|g| g.parse().ok()),
                interface,
            });
        }
        for (n, route) in list("routes").iter().enumerate() {
            let text = route
                .get("dst")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("routes[{n}] has no dst"))?;
            if text.contains(':') {
                continue;
            }
            r.routes.push(Route {
                dst: Cidr::parse(text)
                    .ok_or_else(|| format!("routes[{n}].dst {text:?} is not a CIDR"))?,
                gw: route
                    .get("gw")
                    .and_then(Value::as_str)
                    .and_then(|g| g.parse().ok()),
            });
        }
        if let Some(d) = v.get("dns").filter(|d| d.is_object()) {
            r.dns = Dns::from_json(d);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "wf0123456789a".into(),
                    mac: "0e:bd:c2:90:b3:51".into(),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:42:0a:51:01:02".into(),
                    sandbox: Some("/run/netns/c1".into()),
                },
            ],
            ips: vec![IpConfig {
                address: Cidr::parse("10.81.1.2/16").unwrap(),
                gateway: Some(Ipv4Addr::new(10, 81, 0, 1)),
                interface: Some(1),
            }],
            routes: vec![Route::default_via(Ipv4Addr::new(10, 81, 0, 1))],
            dns: Dns {
                nameservers: vec!["10.81.0.1".into()],
                search: vec!["g.kontena.local".into()],
                ..Dns::default()
            },
        }
    }

    #[test]
    fn a_result_is_written_per_version_and_reads_back() {
        let r = sample();
        let v1 = r.to_json("1.0.0");
        assert_eq!(
            v1,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "wf0123456789a", "mac": "0e:bd:c2:90:b3:51"},
                    {"name": "eth0", "mac": "02:42:0a:51:01:02", "sandbox": "/run/netns/c1"},
                ],
                "ips": [{"address": "10.81.1.2/16", "gateway": "10.81.0.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.81.0.1"}],
                "dns": {"nameservers": ["10.81.0.1"], "search": ["g.kontena.local"]},
            })
        );
        let v04 = r.to_json("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        for v in [v1, v04] {
            assert_eq!(CniResult::from_json(&v).unwrap(), r);
        }
    }

    #[test]
    fn foreign_results_read_leniently_and_bad_ones_say_why() {
        // host-local's result: no interfaces, an IPv6 range beside the IPv4 one.
        let v = json!({
            "cniVersion": "0.4.0",
            "ips": [
                {"version": "4", "address": "10.81.2.7/16", "gateway": "10.81.0.1"},
                {"version": "6", "address": "fd00::7/64"},
            ],
            "routes": [{"dst": "::/0"}, {"dst": "10.99.0.0/16"}],
            "dns": {},
        });
        let r = CniResult::from_json(&v).unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].address.to_string(), "10.81.2.7/16");
        assert_eq!(
            r.routes,
            [Route {
                dst: Cidr::parse("10.99.0.0/16").unwrap(),
                gw: None
            }]
        );
        for bad in [
            json!([]),
            json!({"interfaces": [{"mac": "x"}]}),
            json!({"ips": [{"address": "10.1.1.1"}]}),
            json!({"ips": [{"address": "10.1.1.1/8", "interface": 3}]}),
            json!({"routes": [{"gw": "10.1.1.1"}]}),
        ] {
            assert!(CniResult::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_parse_strictly_and_know_their_network() {
        let c = Cidr::parse("10.81.1.2/16").unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(10, 81, 0, 0));
        assert_eq!(
            Cidr::parse("0.0.0.0/0").unwrap().network(),
            Ipv4Addr::UNSPECIFIED
        );
        for bad in ["10.81.1.2", "10.81.1.2/33", "x/8", "10.81.1/8"] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }
}
