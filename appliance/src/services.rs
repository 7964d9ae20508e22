//! L4 services as the appliance runs them: the `[[services]]` part of the document, the
//! `service-add`, `service-remove`, `backend-set` and `backend-remove` commands (each an
//! edit of the running document, applied like `apply`) and the `services` block of
//! `status`. The load balancer inside the NAT router is brought in line with the
//! document by the smallest change (a backend edit keeps the service's Maglev table and
//! its pinned flows). It never touches packets and performs no health check itself.
//! Checking and applying are linear in the services and their backends (keyed sets, no
//! scan of the list per item).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_netstack::base::FieldError;
use weft_netstack::smoltcp::time::Instant;
use weft_netstack::stage::lb::{validate_service, BackendConfig, ServiceConfig};
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

/// The rules of `weft_netstack::stage::lb::validate_services`, with the same refusals, in
/// one pass: each service alone, then its name and its VIP, protocol and port against
/// the earlier ones, looked up in sets rather than compared with each.
pub fn validate_services(services: &[ServiceConfig]) -> Result<(), FieldError> {
    let mut names = BTreeSet::new();
    let mut listeners = BTreeSet::new();
    for (i, s) in services.iter().enumerate() {
        validate_service(i, s)?;
        if !names.insert(s.name.as_str()) {
            return Err(FieldError {
                field: alloc::format!("services[{i}].name"),
                message: alloc::format!("{:?} is used twice", s.name),
            });
        }
        if let Some(vip) = s.vip {
            if !listeners.insert((vip, s.proto, s.port)) {
                return Err(FieldError {
                    field: alloc::format!("services[{i}].port"),
                    message: alloc::format!(
                        "{} {vip}:{} belongs to another service",
                        s.proto,
                        s.port
                    ),
                });
            }
        }
    }
    Ok(())
}

/// How many services applying `config` builds a Maglev table for (new, or changed in
/// any way: a backend edit rebuilds the table beside the old one), and their bytes.
pub fn new_table_bytes(netstack: &Netstack, config: &Config) -> (u64, u64) {
    let lb = netstack.router().map(|r| r.nat().lb());
    let running: BTreeMap<&str, &ServiceConfig> = lb
        .map(|lb| lb.services().map(|s| (s.name.as_str(), s)).collect())
        .unwrap_or_default();
    let built = config
        .services
        .iter()
        .filter(|s| running.get(s.name.as_str()) != Some(s))
        .count() as u64;
    // A table is a u16 per slot.
    let bytes = built.saturating_mul(weft_netstack::table::maglev::DEFAULT_TABLE_SIZE as u64 * 2);
    (built, bytes)
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
    let wanted: BTreeMap<&str, &ServiceConfig> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let running: Vec<ServiceConfig> = nat.lb().services().cloned().collect();
    let mut kept = BTreeSet::new();
    for old in &running {
        match wanted.get(old.name.as_str()) {
            Some(new) if *new == old => {
                kept.insert(old.name.as_str());
            }
            Some(new) if same_but_backends(old, new) => {
                let new_ends: BTreeSet<_> = new.backends.iter().map(|b| b.endpoint()).collect();
                let old_set: BTreeSet<_> = old
                    .backends
                    .iter()
                    .map(|b| (b.endpoint(), b.weight))
                    .collect();
                for b in &old.backends {
                    if !new_ends.contains(&b.endpoint()) {
                        let _ = nat.remove_backend(&old.name, b.endpoint());
                    }
                }
                for b in &new.backends {
                    if !old_set.contains(&(b.endpoint(), b.weight)) {
                        let _ = nat.lb_mut().set_backend(&new.name, *b, now);
                    }
                }
                kept.insert(old.name.as_str());
            }
            _ => {
                let _ = nat.remove_service(&old.name);
            }
        }
    }
    for s in &config.services {
        if !kept.contains(s.name.as_str()) {
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
    let s = netstack.router()?.nat().services_status();
    if s.is_empty() {
        return None;
    }
    serde_json::to_value(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_netstack::base::Transport;
    use weft_netstack::stage::lb::ServiceMode as Mode;

    /// The one-pass check refuses exactly what the netstack's reference check refuses,
    /// with the same field and message, on random lists full of near-clashes.
    #[test]
    fn the_linear_check_agrees_with_the_netstack_reference() {
        let mut rng = weft_netstack::base::test_rng::Rng::new(0xdead_beef_cafe_f00d);
        let mut next = move |n: u64| rng.below(n);
        for _ in 0..3_000 {
            let services: Vec<ServiceConfig> = (0..next(6))
                .map(|_| {
                    let mode = if next(5) == 0 { Mode::Dnsrr } else { Mode::Vip };
                    ServiceConfig {
                        name: ["web", "db", "a", "-x"][next(4) as usize].into(),
                        vip: (next(6) != 0).then(|| Ipv4Addr::new(10, 81, 255, next(3) as u8)),
                        proto: if next(2) == 0 {
                            Transport::Tcp
                        } else {
                            Transport::Udp
                        },
                        port: next(3) as u16 * 40,
                        mode,
                        backends: (0..next(3))
                            .map(|_| BackendConfig {
                                address: Ipv4Addr::new(10, 81, 1, next(3) as u8),
                                port: 8080 + next(2) as u16,
                                weight: 1,
                            })
                            .collect(),
                        health: None,
                    }
                })
                .collect();
            assert_eq!(
                validate_services(&services),
                weft_netstack::stage::lb::validate_services(&services),
                "{services:?}"
            );
        }
    }

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
