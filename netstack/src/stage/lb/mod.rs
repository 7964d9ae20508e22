//! L4 load balancing: services (VIP, protocol, port, weighted backends), the
//! Maglev choice among healthy backends, and their health checks.
//!
//! Owns each service's Maglev table and health checker (its config and checks are
//! `config.rs`, what `status` shows `status.rs`). The choice it makes is pinned by the
//! NAT in the connection-tracking table (the flow's reply tuple names the backend), so
//! an open flow never moves while its backend is configured. The `LoadBalancer` never
//! sees packets; its checks are performed by `health_runner.rs` on the appliance's own
//! sockets.

pub mod health_runner;

mod config;
mod status;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use smoltcp::time::Instant;
use smoltcp::wire::Ipv4Address;

use crate::base::{Endpoint, FieldError, FlowTuple, Proto, Transport};
use crate::table::health::{Check, CheckId, Health, HealthChecker, Transition};
use crate::table::maglev::{self, Maglev, MaglevError, Weighted};
pub use config::{
    validate_service, validate_services, BackendConfig, HealthSpec, ServiceConfig, ServiceMode,
    MAX_BACKENDS, MAX_WEIGHT,
};
pub use status::{BackendStatus, ServiceStatus};

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
            .any(|s| s.config.mode == ServiceMode::Vip && s.config.vip == Some(addr))
    }

    /// Chooses the backend for a new flow `t` to `vip` (Maglev over the healthy
    /// backends with weight).
    pub fn pick(&self, proto: Proto, vip: Endpoint, t: &FlowTuple) -> Pick {
        let Some(s) = self.services.iter().find(|s| {
            s.config.mode == ServiceMode::Vip
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
            (ServiceMode::Vip, Some(v)) => alloc::vec![v],
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
}

#[cfg(test)]
mod tests;
