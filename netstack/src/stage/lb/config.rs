//! The `[[services]]` section: a service (VIP or DNS round robin, protocol, port), its
//! weighted backends and its health check settings, as serde types that refuse unknown
//! fields, and the checks that refuse a service before anything changes.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use smoltcp::time::Duration;
use smoltcp::wire::Ipv4Address;

use crate::base::{Endpoint, FieldError, Transport};
use crate::table::health::HealthConfig;

/// Most backends one service may have.
pub const MAX_BACKENDS: usize = 4096;
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;

fn one() -> u32 {
    1
}

/// A `backends` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: Ipv4Address,
    pub port: u16,
    /// Relative share of new flows; 0 drains (no new flows, open ones stay).
    #[serde(default = "one")]
    pub weight: u32,
}

impl BackendConfig {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.address, self.port)
    }
}

/// How a service name resolves in DNS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// To the VIP, which the load balancer spreads.
    #[default]
    Vip,
    /// To the backends' addresses (DNS round robin); no VIP.
    Dnsrr,
}

/// A service's `health` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// How to check: a TCP connect, or a UDP probe. Defaults to the service's.
    #[serde(default)]
    pub proto: Option<Transport>,
    #[serde(default = "HealthSpec::default_interval")]
    pub interval_ms: u64,
    #[serde(default = "HealthSpec::default_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "HealthSpec::default_rise")]
    pub rise: u32,
    #[serde(default = "HealthSpec::default_fall")]
    pub fall: u32,
}

impl HealthSpec {
    fn default_interval() -> u64 {
        2000
    }
    fn default_timeout() -> u64 {
        1000
    }
    fn default_rise() -> u32 {
        2
    }
    fn default_fall() -> u32 {
        3
    }

    pub fn config(&self) -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            rise: self.rise,
            fall: self.fall,
        }
    }
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            proto: None,
            interval_ms: Self::default_interval(),
            timeout_ms: Self::default_timeout(),
            rise: Self::default_rise(),
            fall: Self::default_fall(),
        }
    }
}

/// A `[[services]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// Required in `vip` mode, absent in `dnsrr` mode.
    #[serde(default)]
    pub vip: Option<Ipv4Address>,
    pub proto: Transport,
    pub port: u16,
    #[serde(default)]
    pub mode: ServiceMode,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// No table: backends are not checked and count as healthy.
    #[serde(default)]
    pub health: Option<HealthSpec>,
}

fn field(i: usize, path: &str, message: impl fmt::Display) -> FieldError {
    FieldError {
        field: format!("services[{i}].{path}"),
        message: message.to_string(),
    }
}

fn unicast(a: Ipv4Address) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks one service on its own; `i` is its place in the list for the error.
pub fn validate_service(i: usize, s: &ServiceConfig) -> Result<(), FieldError> {
    if !dns_label(&s.name) {
        return Err(field(
            i,
            "name",
            "must be a DNS label: 1-63 of a-z, 0-9, '-', not starting or ending with '-'",
        ));
    }
    match (s.mode, s.vip) {
        (ServiceMode::Vip, None) => return Err(field(i, "vip", "required in vip mode")),
        (ServiceMode::Vip, Some(v)) if !unicast(v) => {
            return Err(field(
                i,
                "vip",
                format_args!("{v} is not a unicast address"),
            ))
        }
        (ServiceMode::Dnsrr, Some(_)) => return Err(field(i, "vip", "not allowed in dnsrr mode")),
        _ => {}
    }
    if s.port == 0 {
        return Err(field(i, "port", "must not be 0"));
    }
    if s.backends.len() > MAX_BACKENDS {
        return Err(field(
            i,
            "backends",
            format_args!("more than {MAX_BACKENDS}"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (j, b) in s.backends.iter().enumerate() {
        if !unicast(b.address) {
            return Err(field(
                i,
                &format!("backends[{j}].address"),
                format_args!("{} is not a unicast address", b.address),
            ));
        }
        if b.port == 0 {
            return Err(field(i, &format!("backends[{j}].port"), "must not be 0"));
        }
        if b.weight > MAX_WEIGHT {
            return Err(field(
                i,
                &format!("backends[{j}].weight"),
                format_args!("at most {MAX_WEIGHT}"),
            ));
        }
        if !seen.insert(b.endpoint()) {
            return Err(field(
                i,
                &format!("backends[{j}]"),
                format_args!("{} is listed twice", b.endpoint()),
            ));
        }
    }
    if let Some(h) = &s.health {
        if h.interval_ms == 0 || h.interval_ms > 3_600_000 {
            return Err(field(i, "health.interval_ms", "must be 1..=3600000"));
        }
        if h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
            return Err(field(i, "health.timeout_ms", "must be 1..=interval_ms"));
        }
        if h.rise == 0 {
            return Err(field(i, "health.rise", "must be at least 1"));
        }
        if h.fall == 0 {
            return Err(field(i, "health.fall", "must be at least 1"));
        }
    }
    Ok(())
}

/// Checks a whole `[[services]]` list: each entry, unique names and unique
/// VIP/protocol/port.
pub fn validate_services(services: &[ServiceConfig]) -> Result<(), FieldError> {
    for (i, s) in services.iter().enumerate() {
        validate_service(i, s)?;
        let earlier = &services[..i];
        if earlier.iter().any(|e| e.name == s.name) {
            return Err(field(i, "name", format_args!("{:?} is used twice", s.name)));
        }
        if let Some(vip) = s.vip {
            if earlier
                .iter()
                .any(|e| e.vip == Some(vip) && e.proto == s.proto && e.port == s.port)
            {
                return Err(field(
                    i,
                    "port",
                    format_args!("{} {vip}:{} belongs to another service", s.proto, s.port),
                ));
            }
        }
    }
    Ok(())
}
