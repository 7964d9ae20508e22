//! The DNS part of the config document: the `dns` section and the `containers`
//! entries as they arrive (serde, unknown fields refused), and their validation into
//! the typed [`DnsConfig`] and [`Container`]s with errors that name the field.
//! Validation only: applying a config is the server's and the record store's job.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use smoltcp::time::Duration;

use super::forward::{ForwarderConfig, MAX_IN_FLIGHT};
use super::records::{is_valid_label, Container, RecordError, Zone};

/// Kontena's grid domain (seed 000: `$service.$grid.kontena.local`).
pub const DEFAULT_DOMAIN: &str = "kontena.local";
/// Weave DNS answers with a 30 s TTL by default; short, so a moved container is found
/// again quickly.
pub const DEFAULT_TTL_SECS: u32 = 30;
pub const DEFAULT_NEGATIVE_TTL_SECS: u32 = 30;
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// The DNS flag day 2020 size: fits a 1280-byte MTU, so no reply needs IP fragments
/// (which the appliance's stack does not send).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1232;

/// RFC 2181 §8: TTLs are 31-bit.
const MAX_TTL_SECS: u32 = i32::MAX as u32;
const MAX_UPSTREAM_TIMEOUT_MS: u64 = 60_000;

/// The `[dns]` section of the config document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// The grid domain, e.g. `kontena.local`.
    pub domain: String,
    /// The grid's label, e.g. `testgrid`; absent serves `$name.$domain` names only.
    pub grid: Option<String>,
    /// TTL of local answers, in seconds.
    pub ttl: u32,
    /// TTL of negative answers (NXDOMAIN, no data) and the SOA minimum, in seconds.
    pub negative_ttl: u32,
    /// Upstream resolvers, `a.b.c.d` or `a.b.c.d:port` (port 53 when absent).
    pub upstreams: Vec<String>,
    /// How long one upstream attempt waits before the next upstream is tried.
    pub upstream_timeout_ms: u64,
    /// Forwarded queries in flight at once; more are answered SERVFAIL.
    pub max_in_flight: usize,
    /// Largest UDP reply sent, and the EDNS size advertised.
    pub max_udp_payload: u16,
    /// Answer single-label names (`web`) as well.
    pub short_names: bool,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            domain: DEFAULT_DOMAIN.into(),
            grid: None,
            ttl: DEFAULT_TTL_SECS,
            negative_ttl: DEFAULT_NEGATIVE_TTL_SECS,
            upstreams: Vec::new(),
            upstream_timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            short_names: true,
        }
    }
}

/// One `[[containers]]` entry of the config document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The container's overlay IPv4 address (typed as it is read: no string is kept
    /// for it, a grid of a hundred thousand containers allocates none).
    pub address: Ipv4Addr,
}

/// A config value that failed validation: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the field in the document, e.g. `dns.upstreams[1]`, `containers[0].name`.
    pub field: String,
    pub problem: &'static str,
}

impl ConfigError {
    fn new(field: impl Into<String>, problem: &'static str) -> ConfigError {
        ConfigError {
            field: field.into(),
            problem,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// The validated DNS settings the server runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub zone: Zone,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub forwarder: ForwarderConfig,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            zone: Zone::kontena_local(),
            ttl: Duration::from_secs(u64::from(DEFAULT_TTL_SECS)),
            negative_ttl: Duration::from_secs(u64::from(DEFAULT_NEGATIVE_TTL_SECS)),
            forwarder: ForwarderConfig::default(),
        }
    }
}

impl DnsSection {
    /// Checks every field; the first bad one is reported, as `dns.<field>`.
    pub fn validate(&self) -> Result<DnsConfig, ConfigError> {
        let zone = Zone::new(&self.domain, self.grid.as_deref(), self.short_names).map_err(
            |e| match e {
                RecordError::InvalidGrid => ConfigError::new("dns.grid", "not a single DNS label"),
                _ => ConfigError::new("dns.domain", "not a dotted sequence of DNS labels"),
            },
        )?;
        if self.ttl > MAX_TTL_SECS {
            return Err(ConfigError::new("dns.ttl", "above 2147483647 seconds"));
        }
        if self.negative_ttl > MAX_TTL_SECS {
            return Err(ConfigError::new(
                "dns.negative_ttl",
                "above 2147483647 seconds",
            ));
        }
        let mut upstreams = Vec::with_capacity(self.upstreams.len());
        for (i, text) in self.upstreams.iter().enumerate() {
            let field = format!("dns.upstreams[{i}]");
            let upstream = parse_upstream(text)
                .ok_or_else(|| ConfigError::new(field.clone(), "not an IP address or IP:port"))?;
            if upstream.ip().is_unspecified() || upstream.port() == 0 {
                return Err(ConfigError::new(field, "unspecified address or port 0"));
            }
            if upstreams.contains(&upstream) {
                return Err(ConfigError::new(field, "listed twice"));
            }
            upstreams.push(upstream);
        }
        if self.upstream_timeout_ms == 0 || self.upstream_timeout_ms > MAX_UPSTREAM_TIMEOUT_MS {
            return Err(ConfigError::new(
                "dns.upstream_timeout_ms",
                "must be 1..=60000 milliseconds",
            ));
        }
        // Each query in flight holds a source port of its own.
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT {
            return Err(ConfigError::new("dns.max_in_flight", "must be 1..=1024"));
        }
        if self.max_udp_payload < 512 {
            return Err(ConfigError::new("dns.max_udp_payload", "below 512 bytes"));
        }
        Ok(DnsConfig {
            zone,
            ttl: Duration::from_secs(u64::from(self.ttl)),
            negative_ttl: Duration::from_secs(u64::from(self.negative_ttl)),
            forwarder: ForwarderConfig {
                upstreams,
                timeout: Duration::from_millis(self.upstream_timeout_ms),
                max_in_flight: self.max_in_flight,
                max_udp_payload: self.max_udp_payload,
            },
        })
    }
}

impl ContainerEntry {
    /// Checks the entry found at `containers[index]` (its address is typed already).
    pub fn check(&self, index: usize) -> Result<(), ConfigError> {
        if !is_valid_label(&self.name) {
            return Err(ConfigError::new(
                format!("containers[{index}].name"),
                "not a single DNS label",
            ));
        }
        if let Some(service) = &self.service {
            if !is_valid_label(service) {
                return Err(ConfigError::new(
                    format!("containers[{index}].service"),
                    "not a single DNS label",
                ));
            }
        }
        Ok(())
    }

    /// Checks the entry found at `containers[index]` and types it.
    pub fn validate(&self, index: usize) -> Result<Container, ConfigError> {
        self.check(index)?;
        Ok(Container {
            name: self.name.clone(),
            service: self.service.clone(),
            address: self.address,
        })
    }

    /// Checks the entry found at `containers[index]` and types it, moving its names.
    pub fn into_container(self, index: usize) -> Result<Container, ConfigError> {
        self.check(index)?;
        Ok(Container {
            name: self.name,
            service: self.service,
            address: self.address,
        })
    }
}

/// A name compared as DNS compares labels: ASCII case folded, without a lowercase copy.
#[derive(Debug, Clone, Copy)]
struct Caseless<'a>(&'a str);

impl Ord for Caseless<'_> {
    /// By length, then by folded bytes: a total order in which equal means equal
    /// ignoring ASCII case, decided by the length for most pairs.
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len().cmp(&b.len()).then_with(|| {
            a.iter()
                .zip(b)
                .map(|(x, y)| x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase()))
                .find(|o| o.is_ne())
                .unwrap_or(core::cmp::Ordering::Equal)
        })
    }
}

impl PartialOrd for Caseless<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Caseless<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(other.0)
    }
}

impl Eq for Caseless<'_> {}

/// Checks every `[[containers]]` entry, names unique case-insensitively. Linear in the
/// entries (a grid may have a hundred thousand) and copies none of them.
pub fn validate_containers(entries: &[ContainerEntry]) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (index, entry) in entries.iter().enumerate() {
        entry.check(index)?;
        if !seen.insert(Caseless(&entry.name)) {
            return Err(ConfigError::new(
                format!("containers[{index}].name"),
                "used by an earlier entry",
            ));
        }
    }
    Ok(())
}

/// The entries of a document that passed `validate_containers`, typed for
/// `RecordStore::replace_all` (names moved, not copied).
pub fn into_containers(entries: Vec<ContainerEntry>) -> Result<Vec<Container>, ConfigError> {
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| entry.into_container(index))
        .collect()
}

fn parse_upstream(text: &str) -> Option<SocketAddr> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(address);
    }
    text.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn empty_section_takes_defaults() {
        let section: DnsSection = serde_json::from_str("{}").unwrap();
        assert_eq!(section, DnsSection::default());
        let config = section.validate().unwrap();
        assert_eq!(config, DnsConfig::default());
        assert_eq!(config.ttl, Duration::from_secs(30));
        assert_eq!(config.forwarder.timeout, Duration::from_secs(2));
        assert_eq!(config.forwarder.max_in_flight, 256);
        assert_eq!(config.zone.apex().to_string(), "kontena.local.");
    }

    #[test]
    fn full_section_parses_and_validates() {
        let json = r#"{"domain":"Kontena.Local","grid":"testgrid","ttl":5,"negative_ttl":7,
            "upstreams":["10.0.0.2","[fd00::1]:5353","10.0.0.3:53"],
            "upstream_timeout_ms":1500,"max_in_flight":16,"max_udp_payload":4096,
            "short_names":false}"#;
        let section: DnsSection = serde_json::from_str(json).unwrap();
        let config = section.validate().unwrap();
        assert_eq!(
            config.forwarder.upstreams,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fd00::1]:5353".parse().unwrap(),
                "10.0.0.3:53".parse().unwrap(),
            ]
        );
        assert_eq!(config.ttl, Duration::from_secs(5));
        assert_eq!(config.negative_ttl, Duration::from_secs(7));
        assert_eq!(config.forwarder.timeout, Duration::from_millis(1500));
        assert_eq!(config.forwarder.max_udp_payload, 4096);
        assert_eq!(
            config.zone,
            Zone::new("kontena.local", Some("testgrid"), false).unwrap()
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<DnsSection>(r#"{"tll":5}"#).is_err());
        assert!(serde_json::from_str::<ContainerEntry>(
            r#"{"name":"a","address":"10.81.0.1","ip":"x"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ContainerEntry>(r#"{"name":"a"}"#).is_err());
    }

    fn field_of(section: DnsSection) -> String {
        section.validate().unwrap_err().field
    }

    #[test]
    fn errors_name_the_field() {
        let base = DnsSection::default();
        let cases: Vec<(DnsSection, &str)> = vec![
            (
                DnsSection {
                    domain: "a..b".into(),
                    ..base.clone()
                },
                "dns.domain",
            ),
            (
                DnsSection {
                    domain: "".into(),
                    ..base.clone()
                },
                "dns.domain",
            ),
            (
                DnsSection {
                    grid: Some("a.b".into()),
                    ..base.clone()
                },
                "dns.grid",
            ),
            (
                DnsSection {
                    ttl: u32::MAX,
                    ..base.clone()
                },
                "dns.ttl",
            ),
            (
                DnsSection {
                    negative_ttl: 1 << 31,
                    ..base.clone()
                },
                "dns.negative_ttl",
            ),
            (
                DnsSection {
                    upstreams: vec!["10.0.0.1".into(), "nope".into()],
                    ..base.clone()
                },
                "dns.upstreams[1]",
            ),
            (
                DnsSection {
                    upstreams: vec!["0.0.0.0".into()],
                    ..base.clone()
                },
                "dns.upstreams[0]",
            ),
            (
                DnsSection {
                    upstreams: vec!["10.0.0.1:0".into()],
                    ..base.clone()
                },
                "dns.upstreams[0]",
            ),
            (
                DnsSection {
                    upstreams: vec!["10.0.0.1".into(), "10.0.0.1:53".into()],
                    ..base.clone()
                },
                "dns.upstreams[1]",
            ),
            (
                DnsSection {
                    upstream_timeout_ms: 0,
                    ..base.clone()
                },
                "dns.upstream_timeout_ms",
            ),
            (
                DnsSection {
                    max_in_flight: 0,
                    ..base.clone()
                },
                "dns.max_in_flight",
            ),
            (
                DnsSection {
                    max_in_flight: 5000,
                    ..base.clone()
                },
                "dns.max_in_flight",
            ),
            (
                DnsSection {
                    max_udp_payload: 511,
                    ..base.clone()
                },
                "dns.max_udp_payload",
            ),
        ];
        for (section, field) in cases {
            assert_eq!(field_of(section), field);
        }
    }

    #[test]
    fn containers_validate_with_indexed_fields() {
        let entries: Vec<ContainerEntry> = serde_json::from_str(
            r#"[{"name":"testapp-web-1","service":"testapp-web","address":"10.81.1.2"},
                {"name":"testapp-db-1","address":"10.81.1.1"}]"#,
        )
        .unwrap();
        validate_containers(&entries).unwrap();
        let containers = into_containers(entries).unwrap();
        assert_eq!(containers[0].service.as_deref(), Some("testapp-web"));
        assert_eq!(containers[1].address, Ipv4Addr::new(10, 81, 1, 1));

        let entry = |name: &str, service: Option<&str>, address: &str| ContainerEntry {
            name: name.into(),
            service: service.map(Into::into),
            address: address.parse().unwrap(),
        };
        let cases = [
            (
                vec![
                    entry("a", None, "10.81.0.1"),
                    entry("a.b", None, "10.81.0.2"),
                ],
                "containers[1].name",
            ),
            (
                vec![entry("a", Some("-s"), "10.81.0.1")],
                "containers[0].service",
            ),
            (
                vec![entry("a", None, "10.81.0.1"), entry("A", None, "10.81.0.2")],
                "containers[1].name",
            ),
        ];
        for (entries, field) in cases {
            assert_eq!(validate_containers(&entries).unwrap_err().field, field);
        }
    }
}
