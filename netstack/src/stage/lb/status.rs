//! What `status` shows of the load balancer: each service with its backends' weight,
//! health, share of the lookup table and check counters. Read from the services;
//! nothing here changes them.

use alloc::string::String;
use alloc::vec::Vec;

use serde::Serialize;
use smoltcp::wire::Ipv4Address;

use super::config::ServiceMode;
use super::{backend_id, LoadBalancer};
use crate::base::Transport;
use crate::table::health::Health;

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
    pub mode: ServiceMode,
    pub backends: Vec<BackendStatus>,
}

impl LoadBalancer {
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
