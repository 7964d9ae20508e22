//! L4 load balancing: services (VIP, protocol, port, weighted backends), the
//! Maglev choice among healthy backends, and their health checks.
//!
//! Owns the `[[services]]` config types and their validation, each service's
//! Maglev table and health checker. The choice it makes is pinned by the NAT in
//! the connection-tracking table (the flow's reply tuple names the backend), so
//! an open flow never moves while its backend is configured; this module never
//! sees packets and never performs a check itself.

pub mod health_runner;

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::Ipv4Address;

use crate::base::{Endpoint, FieldError, FlowTuple, Proto, Transport};
use crate::table::health::{Check, CheckId, Health, HealthChecker, HealthConfig, Transition};
use crate::table::maglev::{self, Maglev, MaglevError, Weighted};

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
pub enum Mode {
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
    pub mode: Mode,
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
        (Mode::Vip, None) => return Err(field(i, "vip", "required in vip mode")),
        (Mode::Vip, Some(v)) if !unicast(v) => {
            return Err(field(
                i,
                "vip",
                format_args!("{v} is not a unicast address"),
            ))
        }
        (Mode::Dnsrr, Some(_)) => return Err(field(i, "vip", "not allowed in dnsrr mode")),
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

/// Why a load-balancer change is refused (nothing is changed then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LbError {
    Invalid(FieldError),
    UnknownService(String),
    UnknownBackend(Endpoint),
    Table(MaglevError),
}

impl fmt::Display for LbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LbError::Invalid(e) => write!(f, "{e}"),
            LbError::UnknownService(n) => write!(f, "no service {n:?}"),
            LbError::UnknownBackend(b) => write!(f, "no backend {b}"),
            LbError::Table(e) => write!(f, "lookup table: {e:?}"),
        }
    }
}

/// The outcome of selection for a new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// No VIP-mode service listens on that VIP, protocol and port.
    NotAService,
    /// The service has no healthy backend with weight.
    NoBackend,
    /// The chosen backend; `tag` names the service in conntrack.
    Backend { backend: Endpoint, tag: u32 },
}

/// A health check the poll loop must perform: connect (TCP) or probe (UDP)
/// `target` and report by `id` before `deadline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub id: HealthCheckId,
    pub target: Endpoint,
    pub proto: Transport,
    pub deadline: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheckId {
    service: u32,
    check: CheckId,
}

/// A backend's line in `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    pub address: Ipv4Address,
    pub port: u16,
    pub weight: u32,
    pub health: Health,
    /// Lookup-table slots it holds (its share of new flows).
    pub slots: usize,
    /// Health checks that succeeded and failed (timeouts included); 0 when the
    /// service has no `health` table.
    pub checks_ok: u64,
    pub checks_failed: u64,
}

/// A service's line in `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: Option<Ipv4Address>,
    pub proto: Transport,
    pub port: u16,
    pub mode: Mode,
    pub backends: Vec<BackendStatus>,
}

struct Service {
    config: ServiceConfig,
    tag: u32,
    table: Maglev,
    checker: Option<HealthChecker<Endpoint>>,
}

impl Service {
    fn health(&self, b: &BackendConfig) -> Health {
        self.checker
            .as_ref()
            .and_then(|c| c.health(b.endpoint()))
            .unwrap_or(Health::Up)
    }

    fn build(&self, size: usize) -> Result<Maglev, MaglevError> {
        let eligible: Vec<Weighted> = self
            .config
            .backends
            .iter()
            .filter(|b| self.health(b) == Health::Up)
            .map(|b| Weighted {
                id: backend_id(b.endpoint()),
                weight: b.weight,
            })
            .collect();
        Maglev::new(&eligible, size)
    }
}

/// A backend's Maglev id: its address and port, so the id is the same on every
/// node and decodes back to the endpoint.
fn backend_id(e: Endpoint) -> u64 {
    (u32::from(e.addr) as u64) << 16 | e.port as u64
}

fn id_endpoint(id: u64) -> Endpoint {
    Endpoint::new(Ipv4Address::from((id >> 16) as u32), id as u16)
}

/// The flow hash Maglev indexes by: the 5-tuple, unkeyed so that every node
/// picks the same backend for the same flow.
pub fn flow_hash(t: &FlowTuple) -> u64 {
    let a = (u32::from(t.src.addr) as u64) << 32 | u32::from(t.dst.addr) as u64;
    let b = (t.src.port as u64) << 32 | (t.dst.port as u64) << 16 | t.proto as u64;
    maglev::mix64(maglev::mix64(a) ^ b)
}

/// The services of a node.
pub struct LoadBalancer {
    services: Vec<Service>,
    table_size: usize,
    next_tag: u32,
    /// Bumped by every change that may change what `resolve` answers.
    generation: u64,
}

impl Default for LoadBalancer {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadBalancer {
    pub fn new() -> LoadBalancer {
        Self::with_table_size(maglev::DEFAULT_TABLE_SIZE)
    }

    /// `size` must be prime (checked when a service is added).
    pub fn with_table_size(size: usize) -> LoadBalancer {
        LoadBalancer {
            services: Vec::new(),
            table_size: size,
            next_tag: 1,
            generation: 0,
        }
    }

    /// Adds a service; its backends start healthy and are checked from `now`.
    pub fn add_service(&mut self, config: ServiceConfig, now: Instant) -> Result<(), LbError> {
        validate_service(self.services.len(), &config).map_err(LbError::Invalid)?;
        let mut all: Vec<ServiceConfig> = self.services.iter().map(|s| s.config.clone()).collect();
        all.push(config.clone());
        validate_services(&all).map_err(LbError::Invalid)?;
        let checker = config.health.map(|h| {
            let mut c = HealthChecker::new(h.config());
            for b in &config.backends {
                c.add(b.endpoint(), Health::Up, now);
            }
            c
        });
        let mut service = Service {
            config,
            tag: self.next_tag,
            table: Maglev::new(&[], 2).map_err(LbError::Table)?,
            checker,
        };
        service.table = service.build(self.table_size).map_err(LbError::Table)?;
        self.next_tag += 1;
        self.services.push(service);
        self.generation += 1;
        Ok(())
    }

    /// Removes a service; returns its conntrack tag so its flows can be cut.
    pub fn remove_service(&mut self, name: &str) -> Result<u32, LbError> {
        let i = self.index(name)?;
        self.generation += 1;
        Ok(self.services.remove(i).tag)
    }

    /// Adds a backend or changes its weight (0 drains it).
    pub fn set_backend(
        &mut self,
        name: &str,
        backend: BackendConfig,
        now: Instant,
    ) -> Result<(), LbError> {
        let i = self.index(name)?;
        let size = self.table_size;
        let s = &mut self.services[i];
        let mut config = s.config.clone();
        match config
            .backends
            .iter_mut()
            .find(|b| b.endpoint() == backend.endpoint())
        {
            Some(b) => b.weight = backend.weight,
            None => config.backends.push(backend),
        }
        validate_service(i, &config).map_err(LbError::Invalid)?;
        let old = core::mem::replace(&mut s.config, config);
        match s.build(size) {
            Ok(t) => s.table = t,
            Err(e) => {
                s.config = old;
                return Err(LbError::Table(e));
            }
        }
        if let Some(c) = &mut s.checker {
            c.add(backend.endpoint(), Health::Up, now);
        }
        self.generation += 1;
        Ok(())
    }

    /// Removes a backend; returns the service's tag so the NAT can cut the
    /// backend's open flows.
    pub fn remove_backend(&mut self, name: &str, backend: Endpoint) -> Result<u32, LbError> {
        let i = self.index(name)?;
        let size = self.table_size;
        let s = &mut self.services[i];
        let Some(j) = s
            .config
            .backends
            .iter()
            .position(|b| b.endpoint() == backend)
        else {
            return Err(LbError::UnknownBackend(backend));
        };
        s.config.backends.remove(j);
        if let Some(c) = &mut s.checker {
            c.remove(backend);
        }
        self.generation += 1;
        s.table = s.build(size).map_err(LbError::Table)?;
        Ok(s.tag)
    }

    fn index(&self, name: &str) -> Result<usize, LbError> {
        self.services
            .iter()
            .position(|s| s.config.name == name)
            .ok_or_else(|| LbError::UnknownService(name.into()))
    }

    /// Changes with every change that may change what `resolve` answers (services,
    /// backends, weights, health), so a cache of names knows when to refresh.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceConfig> {
        self.services.iter().map(|s| &s.config)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services
            .iter()
            .find(|s| s.config.name == name)
            .map(|s| &s.config)
    }

    /// Whether `addr` is the VIP of a VIP-mode service.
    pub fn is_vip(&self, addr: Ipv4Address) -> bool {
        self.services
            .iter()
            .any(|s| s.config.mode == Mode::Vip && s.config.vip == Some(addr))
    }

    /// Chooses the backend for a new flow `t` to `vip` (Maglev over the healthy
    /// backends with weight).
    pub fn pick(&self, proto: Proto, vip: Endpoint, t: &FlowTuple) -> Pick {
        let Some(s) = self.services.iter().find(|s| {
            s.config.mode == Mode::Vip
                && s.config.vip == Some(vip.addr)
                && s.config.port == vip.port
                && s.config.proto.proto() == proto
        }) else {
            return Pick::NotAService;
        };
        match s.table.lookup(flow_hash(t)) {
            Some(id) => Pick::Backend {
                backend: id_endpoint(id),
                tag: s.tag,
            },
            None => Pick::NoBackend,
        }
    }

    /// The addresses `name` resolves to: the VIP, or in dnsrr mode the healthy
    /// backends with weight.
    pub fn resolve(&self, name: &str) -> Option<Vec<Ipv4Address>> {
        let s = self.services.iter().find(|s| s.config.name == name)?;
        Some(match (s.config.mode, s.config.vip) {
            (Mode::Vip, Some(v)) => alloc::vec![v],
            _ => s
                .config
                .backends
                .iter()
                .filter(|b| b.weight > 0 && s.health(b) == Health::Up)
                .map(|b| b.address)
                .collect(),
        })
    }

    /// Health checks to start now. Checks that timed out count as failures and
    /// may take backends out of their tables.
    pub fn due(&mut self, now: Instant) -> Vec<HealthCheck> {
        let size = self.table_size;
        let mut start = Vec::new();
        for s in &mut self.services {
            let proto = s
                .config
                .health
                .and_then(|h| h.proto)
                .unwrap_or(s.config.proto);
            let Some(c) = &mut s.checker else { continue };
            let due = c.due(now);
            start.extend(due.start.iter().map(|k: &Check<Endpoint>| HealthCheck {
                id: HealthCheckId {
                    service: s.tag,
                    check: k.id,
                },
                target: k.target,
                proto,
                deadline: k.deadline,
            }));
            if !due.transitions.is_empty() {
                self.generation += 1;
                if let Ok(t) = s.build(size) {
                    s.table = t;
                }
            }
        }
        start
    }

    /// The outcome of a check from `due`; a backend that changes state enters
    /// or leaves its service's table.
    pub fn report(
        &mut self,
        id: HealthCheckId,
        ok: bool,
        now: Instant,
    ) -> Option<Transition<Endpoint>> {
        let size = self.table_size;
        let s = self.services.iter_mut().find(|s| s.tag == id.service)?;
        let t = s.checker.as_mut()?.report(id.check, ok, now)?;
        self.generation += 1;
        if let Ok(table) = s.build(size) {
            s.table = table;
        }
        Some(t)
    }

    /// When `due` next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| s.checker.as_ref()?.next_deadline())
            .min()
    }

    /// Every service with its backends' weight, health and table share.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| {
                let shares = s.table.shares();
                ServiceStatus {
                    name: s.config.name.clone(),
                    vip: s.config.vip,
                    proto: s.config.proto,
                    port: s.config.port,
                    mode: s.config.mode,
                    backends: s
                        .config
                        .backends
                        .iter()
                        .map(|b| {
                            let checked = s.checker.as_ref().and_then(|c| c.state(b.endpoint()));
                            BackendStatus {
                                address: b.address,
                                port: b.port,
                                weight: b.weight,
                                health: s.health(b),
                                slots: shares
                                    .iter()
                                    .find(|(id, _)| *id == backend_id(b.endpoint()))
                                    .map_or(0, |&(_, n)| n),
                                checks_ok: checked.map_or(0, |c| c.checks_ok),
                                checks_failed: checked.map_or(0, |c| c.checks_failed),
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);

    fn b(last: u8, weight: u32) -> BackendConfig {
        BackendConfig {
            address: Ipv4Address::new(10, 81, 1, last),
            port: 8000,
            weight,
        }
    }

    fn svc(name: &str, backends: Vec<BackendConfig>) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            vip: Some(VIP),
            proto: Transport::Tcp,
            port: 80,
            mode: Mode::Vip,
            backends,
            health: None,
        }
    }

    fn tuple(i: u32) -> FlowTuple {
        FlowTuple::new(
            Proto::Tcp,
            Endpoint::new(
                Ipv4Address::from(0x0a51_0400 + (i & 0xff)),
                1024 + (i >> 8) as u16,
            ),
            Endpoint::new(VIP, 80),
        )
    }

    #[test]
    fn service_config_parses_with_defaults_and_refuses_unknown_fields() {
        let s: ServiceConfig = serde_json::from_str(
            r#"{"name":"web","vip":"10.81.255.1","proto":"tcp","port":80,
                "backends":[{"address":"10.81.1.10","port":8000},
                            {"address":"10.81.2.10","port":8000,"weight":3}],
                "health":{"rise":1}}"#,
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Vip);
        assert_eq!(s.backends[0].weight, 1);
        assert_eq!(s.backends[1].weight, 3);
        let h = s.health.unwrap();
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.rise, h.fall),
            (2000, 1000, 1, 3)
        );
        validate_services(&[s]).unwrap();

        for bad in [
            r#"{"name":"web","proto":"tcp","port":80,"color":"red"}"#,
            r#"{"name":"web","proto":"tcp","port":80,"backends":[{"address":"10.81.1.1","port":1,"w":1}]}"#,
            r#"{"name":"web","proto":"tcp","port":80,"health":{"every":5}}"#,
            r#"{"name":"web","proto":"tcp","port":80,"mode":"ipvs"}"#,
        ] {
            assert!(serde_json::from_str::<ServiceConfig>(bad).is_err(), "{bad}");
        }
        let rr: ServiceConfig =
            serde_json::from_str(r#"{"name":"db","proto":"tcp","port":5432,"mode":"dnsrr"}"#)
                .unwrap();
        validate_services(&[rr]).unwrap();
    }

    #[test]
    fn validation_errors_name_the_field() {
        let err = |list: &[ServiceConfig]| validate_services(list).unwrap_err().field;
        let ok = svc("web", vec![b(1, 1)]);
        assert_eq!(
            err(&[ServiceConfig {
                name: "Web!".into(),
                ..ok.clone()
            }]),
            "services[0].name"
        );
        assert_eq!(err(&[ok.clone(), svc("web", vec![])]), "services[1].name");
        let other_name = ServiceConfig {
            name: "api".into(),
            ..ok.clone()
        };
        assert_eq!(err(&[ok.clone(), other_name.clone()]), "services[1].port");
        validate_services(&[
            ok.clone(),
            ServiceConfig {
                port: 81,
                ..other_name
            },
        ])
        .unwrap();
        assert_eq!(
            err(&[ServiceConfig {
                vip: None,
                ..ok.clone()
            }]),
            "services[0].vip"
        );
        assert_eq!(
            err(&[ServiceConfig {
                mode: Mode::Dnsrr,
                ..ok.clone()
            }]),
            "services[0].vip"
        );
        assert_eq!(
            err(&[ServiceConfig {
                port: 0,
                ..ok.clone()
            }]),
            "services[0].port"
        );
        assert_eq!(
            err(&[svc(
                "web",
                vec![b(1, 1), BackendConfig { port: 0, ..b(2, 1) }]
            )]),
            "services[0].backends[1].port"
        );
        assert_eq!(
            err(&[svc("web", vec![b(1, 1), b(1, 2)])]),
            "services[0].backends[1]"
        );
        assert_eq!(
            err(&[svc("web", vec![b(1, MAX_WEIGHT + 1)])]),
            "services[0].backends[0].weight"
        );
        let slow = HealthSpec {
            timeout_ms: 5000,
            ..HealthSpec::default()
        };
        assert_eq!(
            err(&[ServiceConfig {
                health: Some(slow),
                ..ok.clone()
            }]),
            "services[0].health.timeout_ms"
        );
        let e = validate_services(&[ServiceConfig { vip: None, ..ok }]).unwrap_err();
        assert_eq!(
            alloc::format!("{e}"),
            "services[0].vip: required in vip mode"
        );
    }

    #[test]
    fn refused_changes_leave_the_balancer_unchanged() {
        let mut lb = LoadBalancer::new();
        lb.add_service(svc("web", vec![b(1, 1)]), Instant::ZERO)
            .unwrap();
        assert!(matches!(
            lb.add_service(svc("web", vec![b(2, 1)]), Instant::ZERO),
            Err(LbError::Invalid(_))
        ));
        assert!(matches!(
            lb.set_backend("web", b(2, MAX_WEIGHT + 1), Instant::ZERO),
            Err(LbError::Invalid(_))
        ));
        assert_eq!(lb.service("web").unwrap().backends, vec![b(1, 1)]);
        assert_eq!(
            lb.set_backend("nope", b(2, 1), Instant::ZERO),
            Err(LbError::UnknownService("nope".into()))
        );
        assert!(matches!(
            lb.remove_backend("web", b(9, 1).endpoint()),
            Err(LbError::UnknownBackend(_))
        ));
        let bad_size =
            LoadBalancer::with_table_size(100).add_service(svc("x", vec![]), Instant::ZERO);
        assert_eq!(
            bad_size,
            Err(LbError::Table(MaglevError::SizeNotPrime(100)))
        );
    }

    #[test]
    fn pick_matches_vip_port_and_protocol_and_resolve_follows_mode() {
        let mut lb = LoadBalancer::new();
        lb.add_service(svc("web", vec![b(1, 1), b(2, 0)]), Instant::ZERO)
            .unwrap();
        let mut rr = svc("db", vec![b(3, 1), b(4, 0), b(5, 1)]);
        rr.mode = Mode::Dnsrr;
        rr.vip = None;
        lb.add_service(rr, Instant::ZERO).unwrap();
        let t = tuple(1);
        assert_eq!(
            lb.pick(Proto::Tcp, Endpoint::new(VIP, 80), &t),
            Pick::Backend {
                backend: b(1, 1).endpoint(),
                tag: 1
            }
        );
        assert_eq!(
            lb.pick(Proto::Udp, Endpoint::new(VIP, 80), &t),
            Pick::NotAService
        );
        assert_eq!(
            lb.pick(Proto::Tcp, Endpoint::new(VIP, 81), &t),
            Pick::NotAService
        );
        assert!(lb.is_vip(VIP));
        assert_eq!(lb.resolve("web"), Some(vec![VIP]));
        assert_eq!(
            lb.resolve("db"),
            Some(vec![b(3, 1).address, b(5, 1).address])
        );
        assert_eq!(lb.resolve("nope"), None);
    }

    #[test]
    fn generation_moves_with_every_change_resolve_may_see() {
        let mut lb = LoadBalancer::new();
        let mut seen = lb.generation();
        let mut moved = |lb: &LoadBalancer| {
            let now = lb.generation();
            core::mem::replace(&mut seen, now) != now
        };
        let mut rr = svc("db", vec![b(3, 1)]);
        rr.mode = Mode::Dnsrr;
        rr.vip = None;
        rr.health = Some(HealthSpec {
            fall: 1,
            ..HealthSpec::default()
        });
        lb.add_service(rr, Instant::ZERO).unwrap();
        assert!(moved(&lb));
        lb.set_backend("db", b(4, 2), Instant::ZERO).unwrap();
        assert!(moved(&lb));
        assert_eq!(lb.services().count(), 1);
        // A check that changes nothing leaves it; one that takes a backend out moves it.
        let checks = lb.due(Instant::ZERO);
        assert!(!moved(&lb));
        lb.report(checks[0].id, true, Instant::ZERO);
        assert!(!moved(&lb));
        lb.report(checks[1].id, false, Instant::ZERO);
        assert!(moved(&lb));
        assert_eq!(lb.resolve("db"), Some(vec![b(3, 1).address]));
        lb.remove_backend("db", b(3, 1).endpoint()).unwrap();
        assert!(moved(&lb));
        assert_eq!(lb.resolve("db"), Some(vec![]));
        lb.remove_service("db").unwrap();
        assert!(moved(&lb));
    }

    #[test]
    fn removing_one_of_n_backends_moves_about_one_nth_of_flows() {
        for n in [3u8, 5, 10] {
            let mut lb = LoadBalancer::new();
            let backends: Vec<BackendConfig> = (1..=n).map(|i| b(i, 1)).collect();
            lb.add_service(svc("web", backends.clone()), Instant::ZERO)
                .unwrap();
            let vip = Endpoint::new(VIP, 80);
            let before: Vec<Pick> = (0..20_000)
                .map(|i| lb.pick(Proto::Tcp, vip, &tuple(i)))
                .collect();
            let gone = backends[0].endpoint();
            lb.remove_backend("web", gone).unwrap();
            let mut moved = 0;
            let mut survivors_moved = 0;
            for (i, was) in before.iter().enumerate() {
                let now = lb.pick(Proto::Tcp, vip, &tuple(i as u32));
                if now != *was {
                    moved += 1;
                    if !matches!(was, Pick::Backend { backend, .. } if *backend == gone) {
                        survivors_moved += 1;
                    }
                }
            }
            let share = moved as f64 / 20_000.0;
            let ideal = 1.0 / n as f64;
            assert!(
                (share - ideal).abs() < 0.25 * ideal,
                "{n}: {share} vs {ideal}"
            );
            assert!(survivors_moved < 20_000 / 100, "{n}: {survivors_moved}");
        }
    }
}
