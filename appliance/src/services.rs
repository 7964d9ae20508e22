//! L4 services as the appliance runs them: the `[[services]]` part of the document, the
//! `service-add`, `service-remove`, `backend-set` and `backend-remove` commands (each an
//! edit of the running document, applied like `apply`) and the `services` block of
//! `status`. The load balancer inside the NAT router is brought in line with the
//! document by the smallest change (a backend edit keeps the service's Maglev table and
//! its pinned flows). It never touches packets and performs no health check itself.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_netstack::smoltcp::time::Instant;
use weft_netstack::stage::lb::{validate_services, BackendConfig, ServiceConfig};
use weft_netstack::Netstack;

use crate::config::{Config, ConfigError};

/// The args of `service-remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceKey {
    pub name: String,
}

/// The args of `backend-set`: a backend of a service, added or re-weighted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSet {
    pub service: String,
    pub address: Ipv4Addr,
    pub port: u16,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// The args of `backend-remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendKey {
    pub service: String,
    pub address: Ipv4Addr,
    pub port: u16,
}

pub fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_services(&config.services).map_err(|e| ConfigError {
        field: e.field,
        message: e.message,
    })
}

/// Whether two versions of a service differ only in their backends.
fn same_but_backends(a: &ServiceConfig, b: &ServiceConfig) -> bool {
    a.name == b.name
        && a.vip == b.vip
        && a.proto == b.proto
        && a.port == b.port
        && a.mode == b.mode
        && a.health == b.health
}

/// Brings the load balancer in line with `config` (already validated). `now` starts
/// the health checkers of new backends.
pub fn apply(netstack: &mut Netstack, config: &Config, now: Instant) {
    let Some(router) = netstack.router_mut() else {
        return;
    };
    let nat = router.nat_mut();
    let running: Vec<ServiceConfig> = nat
        .lb()
        .status()
        .iter()
        .filter_map(|s| nat.lb().service(&s.name).cloned())
        .collect();
    for old in &running {
        match config.services.iter().find(|s| s.name == old.name) {
            Some(new) if new == old => {}
            Some(new) if same_but_backends(old, new) => {
                for b in &old.backends {
                    if !new.backends.iter().any(|n| n.endpoint() == b.endpoint()) {
                        let _ = nat.remove_backend(&old.name, b.endpoint());
                    }
                }
                for b in &new.backends {
                    if !old.backends.contains(b) {
                        let _ = nat.lb_mut().set_backend(&new.name, *b, now);
                    }
                }
            }
            _ => {
                let _ = nat.remove_service(&old.name);
            }
        }
    }
    for s in &config.services {
        if nat.lb().service(&s.name).is_none() {
            // Validated with the document as a whole.
            let _ = nat.lb_mut().add_service(s.clone(), now);
        }
    }
}

fn refused(e: weft_netstack::base::FieldError) -> ConfigError {
    // `services[n].backends[m].weight` -> `weight`: the args are the item itself.
    let field = e
        .field
        .rsplit_once('.')
        .map_or(e.field.clone(), |(_, f)| String::from(f));
    ConfigError {
        field,
        message: e.message,
    }
}

/// The document with `service` added (or replacing the one of its name).
pub fn with_service(config: &Config, service: ServiceConfig) -> Result<Config, ConfigError> {
    let mut edited = config.clone();
    match edited.services.iter_mut().find(|s| s.name == service.name) {
        Some(s) => *s = service,
        None => edited.services.push(service),
    }
    validate_services(&edited.services).map_err(refused)?;
    Ok(edited)
}

pub fn without_service(config: &Config, key: &ServiceKey) -> Option<Config> {
    let i = config.services.iter().position(|s| s.name == key.name)?;
    let mut edited = config.clone();
    edited.services.remove(i);
    Some(edited)
}

/// The document with a backend added or re-weighted; None: no such service.
pub fn with_backend(config: &Config, b: &BackendSet) -> Option<Result<Config, ConfigError>> {
    let mut edited = config.clone();
    let s = edited.services.iter_mut().find(|s| s.name == b.service)?;
    let backend = BackendConfig {
        address: b.address,
        port: b.port,
        weight: b.weight,
    };
    match s
        .backends
        .iter_mut()
        .find(|x| x.endpoint() == backend.endpoint())
    {
        Some(x) => *x = backend,
        None => s.backends.push(backend),
    }
    Some(
        validate_services(&edited.services)
            .map_err(refused)
            .map(|()| edited),
    )
}

/// The document without a backend; None: no such service or backend.
pub fn without_backend(config: &Config, b: &BackendKey) -> Option<Config> {
    let mut edited = config.clone();
    let s = edited.services.iter_mut().find(|s| s.name == b.service)?;
    let i = s
        .backends
        .iter()
        .position(|x| x.address == b.address && x.port == b.port)?;
    s.backends.remove(i);
    Some(edited)
}

/// The `services` block of `status`: each service with its backends' weight, health and
/// lookup-table slots.
pub fn status(netstack: &Netstack) -> Option<Value> {
    let lb = netstack.router()?.nat().lb();
    let s = lb.status();
    if s.is_empty() {
        return None;
    }
    serde_json::to_value(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn document_edits_reach_the_load_balancer() {
        let now = Instant::from_millis(0);
        let mac = weft_netstack::smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 1]);
        let mut stack = Netstack::new(mac, mac, 1, now);
        let base = Config::from_json_value(&json!({
            "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"},
        }))
        .unwrap();
        crate::publish::apply(&mut stack, &base, 1);
        apply(&mut stack, &base, now);
        assert!(status(&stack).is_none());

        let web: ServiceConfig = serde_json::from_value(json!({
            "name": "web", "vip": "10.81.255.1", "proto": "tcp", "port": 80,
            "backends": [{"address": "10.81.1.2", "port": 8080}],
        }))
        .unwrap();
        let one = with_service(&base, web).unwrap();
        apply(&mut stack, &one, now);
        let set = BackendSet {
            service: "web".into(),
            address: Ipv4Addr::new(10, 81, 1, 3),
            port: 8080,
            weight: 3,
        };
        let two = with_backend(&one, &set).unwrap().unwrap();
        apply(&mut stack, &two, now);
        let lb = stack.router().unwrap().nat().lb();
        let st = lb.status();
        assert_eq!(st.len(), 1);
        let slots: Vec<(u32, usize)> = st[0].backends.iter().map(|b| (b.weight, b.slots)).collect();
        assert_eq!(slots.len(), 2);
        // Weights 1:3 show in the Maglev table.
        let total: usize = slots.iter().map(|s| s.1).sum();
        let heavy = slots.iter().find(|s| s.0 == 3).unwrap().1;
        assert!((heavy * 100 / total).abs_diff(75) <= 2, "{slots:?}");
        assert_eq!(
            lb.resolve("web"),
            Some(alloc::vec![Ipv4Addr::new(10, 81, 255, 1)])
        );

        let bad = BackendSet {
            weight: u32::MAX,
            ..set.clone()
        };
        assert_eq!(
            with_backend(&two, &bad).unwrap().unwrap_err().field,
            "weight"
        );
        assert!(with_backend(
            &two,
            &BackendSet {
                service: "db".into(),
                ..set
            }
        )
        .is_none());
        let gone = without_backend(
            &two,
            &BackendKey {
                service: "web".into(),
                address: Ipv4Addr::new(10, 81, 1, 2),
                port: 8080,
            },
        )
        .unwrap();
        apply(&mut stack, &gone, now);
        let st = stack.router().unwrap().nat().lb().status();
        assert_eq!(st[0].backends.len(), 1);
        let none = without_service(&gone, &ServiceKey { name: "web".into() }).unwrap();
        apply(&mut stack, &none, now);
        assert!(status(&stack).is_none());
    }
}
