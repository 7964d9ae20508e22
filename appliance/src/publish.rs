//! Port publishing and masquerade as the appliance runs them: the `[[publish]]` and
//! `[nat]` parts of the document, the NAT router they plan, the `publish-add`,
//! `publish-remove` and `flows` commands and the `nat` block of `status`. It never
//! touches packets (the netstack's `router` does) and never keeps a second copy of the
//! rules: the running document is the truth, the router follows it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_netstack::conntrack::{FlowFilter, FlowInfo, Proto};
use weft_netstack::nat::{validate_publish_list, Nat, NatConfig, PublishRule, Transport};
use weft_netstack::router::{Router, RouterCounters};
use weft_netstack::smoltcp::time::Instant;
use weft_netstack::Netstack;

use crate::config::{Config, ConfigError};

/// Most flows `flows` returns when no limit is given.
pub const DEFAULT_FLOWS_LIMIT: usize = 100;
/// Most flows `flows` returns at all (one reply line stays reasonable).
pub const MAX_FLOWS_LIMIT: usize = 10_000;

/// `[nat]`: connection tracking limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatSection {
    /// Most flows tracked at once (new ones are dropped and counted beyond it).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
}

fn default_capacity() -> u32 {
    65_536
}

/// The args of `publish-remove`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishKey {
    pub proto: Transport,
    pub host_port: u16,
}

/// The args of `flows`: every filter is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<FlowProto>,
    /// Any address of either direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Any port of either direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowProto {
    Tcp,
    Udp,
    Icmp,
}

/// The `nat` block of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatStatus {
    pub published: u32,
    pub table_size: u64,
    pub table_capacity: u64,
    pub inserts: u64,
    pub translated: u64,
    pub dnat_flows: u64,
    pub snat_flows: u64,
    pub hairpin_flows: u64,
    pub snat_mappings: u64,
    pub icmp_errors_translated: u64,
    /// NAT drops by reason (`malformed`, `table_full`, `ports_exhausted`, ...).
    pub drops: Value,
    /// Conntrack counters (`expired`, `evicted`, `refused_full`, ...).
    pub conntrack: Value,
    /// Forwarding beside the NAT (ARP, TTL, no route).
    pub router: RouterCounters,
}

/// Checks the `[[publish]]` list and `[nat]`; errors name `publish[i].field`.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_publish_list(&config.publish, &[]).map_err(|e| ConfigError {
        field: e.field,
        message: e.message,
    })?;
    if let Some(nat) = config.nat {
        if nat.capacity == 0 {
            return Err(ConfigError {
                field: "nat.capacity".into(),
                message: "the flow table needs room for at least one flow".into(),
            });
        }
    }
    Ok(())
}

/// The NAT addressing for a document: the uplink address, the node's grid address
/// (the overlay node when an overlay runs, the link address otherwise) and the inside
/// networks.
fn nat_config(config: &Config) -> NatConfig {
    let link = config.link.address.to_smoltcp();
    let node = match &config.grid {
        Some(g) => g.node_address(g.node),
        None => link.address(),
    };
    let mut nat = NatConfig::new(config.uplink.address.address(), node, link);
    if let Some(g) = &config.grid {
        nat.grid.push(g.subnet.0.network());
    }
    if let Some(n) = config.nat {
        nat.conntrack.capacity = n.capacity as usize;
    }
    nat
}

/// Brings the router in line with `config`: a new NAT when the addressing changed
/// (flows of the old addressing cannot be valid any more), otherwise only the rules
/// that differ are removed and added so live flows keep going.
pub fn apply(netstack: &mut Netstack, config: &Config, seed: u64) {
    let want = nat_config(config);
    let keep = netstack.router().is_some_and(|r| r.nat().config() == &want);
    if !keep {
        netstack.set_router(Some(Router::new(Nat::new(want, seed ^ 0x6e61_7421))));
    }
    let Some(router) = netstack.router_mut() else {
        return;
    };
    let nat = router.nat_mut();
    let stale: Vec<PublishRule> = nat
        .publish_rules()
        .filter(|r| !config.publish.contains(r))
        .copied()
        .collect();
    for r in stale {
        nat.remove_publish(r.proto, r.host_port);
    }
    for r in &config.publish {
        if !nat.publish_rules().any(|have| have == r) {
            // Validated with the document: cannot clash.
            let _ = nat.add_publish(*r);
        }
    }
}

/// The document with `rule` added; refusals name the field inside the args.
pub fn with_rule(config: &Config, rule: PublishRule) -> Result<Config, ConfigError> {
    let mut edited = config.clone();
    edited.publish.push(rule);
    validate_publish_list(&edited.publish, &[]).map_err(|e| ConfigError {
        // `publish[n].host_port` -> `host_port`: the args are the rule itself.
        field: e
            .field
            .rsplit_once('.')
            .map_or(e.field.clone(), |(_, f)| String::from(f)),
        message: e.message,
    })?;
    Ok(edited)
}

/// The document without the rule for `key`, or None when there is none.
pub fn without_rule(config: &Config, key: PublishKey) -> Option<Config> {
    let i = config
        .publish
        .iter()
        .position(|r| r.proto == key.proto && r.host_port == key.host_port)?;
    let mut edited = config.clone();
    edited.publish.remove(i);
    Some(edited)
}

pub fn flows(netstack: &Netstack, q: FlowsQuery, now: Instant) -> Vec<FlowInfo> {
    let Some(router) = netstack.router() else {
        return Vec::new();
    };
    let filter = FlowFilter {
        proto: q.proto.map(|p| match p {
            FlowProto::Tcp => Proto::Tcp,
            FlowProto::Udp => Proto::Udp,
            FlowProto::Icmp => Proto::Icmp,
        }),
        addr: q.address,
        port: q.port,
    };
    let limit = q
        .limit
        .map_or(DEFAULT_FLOWS_LIMIT, |l| l as usize)
        .min(MAX_FLOWS_LIMIT);
    router.nat().flows(&filter, limit, now)
}

pub fn status(netstack: &Netstack) -> Option<NatStatus> {
    let router = netstack.router()?;
    let s = router.nat().stats();
    Some(NatStatus {
        published: router.nat().publish_rules().count() as u32,
        table_size: s.table_size,
        table_capacity: s.table_capacity,
        inserts: s.conntrack.inserts,
        translated: s.translated,
        dnat_flows: s.dnat_flows,
        snat_flows: s.snat_flows,
        hairpin_flows: s.hairpin_flows,
        snat_mappings: s.snat_mappings,
        icmp_errors_translated: s.icmp_errors_translated,
        drops: serde_json::to_value(s.drops).unwrap_or(Value::Null),
        conntrack: serde_json::to_value(s.conntrack).unwrap_or(Value::Null),
        router: router.counters(),
    })
}

/// A message for a refused `publish-remove`.
pub fn not_published(key: PublishKey) -> String {
    format!("{} port {} is not published", key.proto, key.host_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(publish: Value) -> Value {
        json!({
            "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"},
            "publish": publish,
        })
    }

    #[test]
    fn document_refusals_name_the_entry_and_field() {
        let rule = |proto: &str, port: u16| json!({"proto": proto, "host_port": port, "container_address": "10.81.1.2", "container_port": 80});
        let ok = doc(json!([rule("tcp", 8080), rule("udp", 8080)]));
        assert_eq!(Config::from_json_value(&ok).unwrap().publish.len(), 2);
        for (list, field) in [
            (
                json!([rule("tcp", 8080), rule("tcp", 8080)]),
                "publish[1].host_port",
            ),
            (json!([rule("udp", 53)]), "publish[0].host_port"),
            (
                json!([rule("udp", 5353), rule("udp", 4789)]),
                "publish[1].host_port",
            ),
            (json!([rule("tcp", 6783)]), "publish[0].host_port"),
            (json!([rule("tcp", 0)]), "publish[0].host_port"),
        ] {
            let e = Config::from_json_value(&doc(list.clone())).unwrap_err();
            assert_eq!(e.field, field, "{list}: {e}");
        }
        let mut zero = doc(json!([]));
        zero["nat"] = json!({"capacity": 0});
        assert_eq!(
            Config::from_json_value(&zero).unwrap_err().field,
            "nat.capacity"
        );
    }

    #[test]
    fn runtime_edits_keep_the_nat_and_follow_the_document() {
        let now = Instant::from_millis(0);
        let mac = weft_netstack::smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 1]);
        let mut stack = Netstack::new(mac, mac, 1, now);
        let base = Config::from_json_value(&doc(json!([]))).unwrap();
        apply(&mut stack, &base, 1);
        assert_eq!(stack.router().unwrap().nat().publish_rules().count(), 0);
        let rule = PublishRule {
            proto: Transport::Tcp,
            host_port: 8080,
            container_address: Ipv4Addr::new(10, 81, 1, 2),
            container_port: 80,
        };
        let with = with_rule(&base, rule).unwrap();
        let e = with_rule(&with, rule).unwrap_err();
        assert_eq!(e.field, "host_port");
        apply(&mut stack, &with, 1);
        let rules: Vec<_> = stack
            .router()
            .unwrap()
            .nat()
            .publish_rules()
            .copied()
            .collect();
        assert_eq!(rules, [rule]);
        let key = PublishKey {
            proto: Transport::Tcp,
            host_port: 8080,
        };
        let without = without_rule(&with, key).unwrap();
        assert!(without_rule(&without, key).is_none());
        apply(&mut stack, &without, 1);
        assert_eq!(stack.router().unwrap().nat().publish_rules().count(), 0);
        assert_eq!(status(&stack).unwrap().published, 0);
    }
}
