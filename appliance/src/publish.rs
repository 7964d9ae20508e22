//! Port publishing and masquerade as the appliance runs them: the `[[publish]]` and
//! `[nat]` parts of the document, the NAT router they plan, the `publish-add`,
//! `publish-remove` and `flows` commands and the `nat` block of `status`. It never
//! touches packets (the netstack's `router` does) and never keeps a second copy of the
//! rules: the running document is the truth, the router follows it.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_netstack::base::{FieldError, Proto, Transport};
use weft_netstack::smoltcp::time::Instant;
use weft_netstack::stage::nat::{validate_publish, Nat, NatConfig, PublishError, PublishRule};
use weft_netstack::stage::route::{Router, RouterCounters};
use weft_netstack::table::conntrack::{Conntrack, FlowFilter, FlowInfo};
use weft_netstack::Netstack;

pub use crate::config::nat::{NatSection, MAX_TIMEOUT_SECS};
use crate::config::{Config, ConfigError};

/// Most flows `flows` returns when no limit is given.
pub const DEFAULT_FLOWS_LIMIT: usize = 100;
/// Most flows `flows` returns at all (one reply line stays reasonable).
pub const MAX_FLOWS_LIMIT: usize = 10_000;

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

/// The rules of `weft_netstack::stage::nat::validate_publish_list`, with the same refusals, in
/// one pass: each rule alone, then its protocol and port looked up among the earlier
/// ones in a set rather than compared with each.
pub fn validate_publish_list(rules: &[PublishRule]) -> Result<(), FieldError> {
    let mut taken = BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let mut check = validate_publish(rule, [], &[]);
        if check.is_ok() && !taken.insert((rule.proto, rule.host_port)) {
            check = Err(PublishError::Duplicate {
                proto: rule.proto,
                host_port: rule.host_port,
            });
        }
        check.map_err(|e| FieldError {
            field: format!("publish[{i}].{}", e.field()),
            message: format!("{e}"),
        })?;
    }
    Ok(())
}

/// Checks the `[[publish]]` list and `[nat]`; errors name `publish[i].field`.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_publish_list(&config.publish).map_err(|e| ConfigError {
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
        for (name, value) in nat.timeout_fields() {
            if value == 0 || value > MAX_TIMEOUT_SECS {
                return Err(ConfigError {
                    field: format!("nat.{name}"),
                    message: format!("{value} s is outside 1..={MAX_TIMEOUT_SECS} s"),
                });
            }
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
        nat.conntrack.timeouts = n.timeouts();
    }
    nat
}

/// Whether the running NAT (and its flow table) serves `want`: new timeouts alone keep
/// the NAT and its flows (they change all at once).
fn keeps_table(netstack: &Netstack, want: &NatConfig) -> bool {
    netstack.router().is_some_and(|r| {
        let mut have = r.nat().config().clone();
        have.conntrack.timeouts = want.conntrack.timeouts;
        &have == want
    })
}

/// The bytes of the flow table that applying `config` would allocate, when it builds a
/// new one (None when the running table is kept). The appliance checks this against
/// its free heap before it changes anything: a failed allocation is fatal in the kernel.
pub fn new_table_bytes(netstack: &Netstack, config: &Config) -> Option<usize> {
    let want = nat_config(config);
    (!keeps_table(netstack, &want)).then(|| Conntrack::table_bytes(want.conntrack.capacity))
}

/// Brings the router in line with `config`: a new NAT when the addressing changed
/// (flows of the old addressing cannot be valid any more), otherwise only the rules
/// that differ are removed and added so live flows keep going.
pub fn apply(netstack: &mut Netstack, config: &Config, seed: u64) {
    let want = nat_config(config);
    if !keeps_table(netstack, &want) {
        netstack.set_router(Some(Router::new(Nat::new(
            want.clone(),
            seed ^ 0x6e61_7421,
        ))));
    }
    let Some(router) = netstack.router_mut() else {
        return;
    };
    let nat = router.nat_mut();
    if nat.config().conntrack.timeouts != want.conntrack.timeouts {
        nat.set_timeouts(want.conntrack.timeouts);
    }
    let wanted: BTreeMap<(Transport, u16), &PublishRule> = config
        .publish
        .iter()
        .map(|r| ((r.proto, r.host_port), r))
        .collect();
    let stale: Vec<PublishRule> = nat
        .publish_rules()
        .filter(|r| wanted.get(&(r.proto, r.host_port)) != Some(r))
        .copied()
        .collect();
    for r in stale {
        nat.remove_publish(r.proto, r.host_port);
    }
    let have: BTreeSet<(Transport, u16)> = nat
        .publish_rules()
        .map(|r| (r.proto, r.host_port))
        .collect();
    for r in &config.publish {
        if !have.contains(&(r.proto, r.host_port)) {
            // Validated with the document: cannot clash.
            let _ = nat.add_publish(*r);
        }
    }
}

/// The document with `rule` added; refusals name the field inside the args.
pub fn with_rule(config: &Config, rule: PublishRule) -> Result<Config, ConfigError> {
    let mut edited = config.clone();
    edited.publish.push(rule);
    validate_publish_list(&edited.publish).map_err(|e| ConfigError {
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
    use weft_netstack::smoltcp::time::Duration;
    use weft_netstack::table::conntrack::Timeouts;

    /// The one-pass check refuses exactly what the netstack's reference check refuses,
    /// with the same field and message, on random lists full of clashes and reserved
    /// ports.
    #[test]
    fn the_linear_check_agrees_with_the_netstack_reference() {
        let mut rng = weft_netstack::base::test_rng::Rng::new(0x0123_4567_89ab_cdef);
        let mut next = move |n: u64| rng.below(n);
        for _ in 0..3_000 {
            let rules: Vec<PublishRule> = (0..next(8))
                .map(|_| PublishRule {
                    proto: if next(2) == 0 {
                        Transport::Tcp
                    } else {
                        Transport::Udp
                    },
                    host_port: [0, 53, 80, 8080, 8081, 4789, 31800][next(7) as usize],
                    container_address: Ipv4Addr::new(10, 81, 1, next(3) as u8),
                    container_port: next(3) as u16,
                })
                .collect();
            assert_eq!(
                validate_publish_list(&rules),
                weft_netstack::stage::nat::validate_publish_list(&rules, &[]),
                "{rules:?}"
            );
        }
    }

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

    #[test]
    fn nat_timeouts_default_to_the_rfc_values_and_are_shown_by_config() {
        let mut d = doc(json!([]));
        d["nat"] = json!({"capacity": 1024});
        let cfg = Config::from_json_value(&d).unwrap();
        let nat = cfg.nat.unwrap();
        assert_eq!(nat.timeouts(), Timeouts::default());
        assert_eq!(
            (
                nat.tcp_established_secs,
                nat.tcp_transitory_secs,
                nat.udp_secs
            ),
            (7440, 240, 300)
        );
        let shown = serde_json::to_value(&cfg).unwrap();
        assert_eq!(
            shown["nat"],
            json!({"capacity": 1024, "tcp_established_secs": 7440,
                   "tcp_transitory_secs": 240, "tcp_time_wait_secs": 120,
                   "tcp_closed_secs": 10, "udp_secs": 300, "icmp_secs": 60})
        );
        // What `config` shows reads back as the same document.
        assert_eq!(Config::from_json_value(&shown).unwrap(), cfg);
    }

    #[test]
    fn nat_timeout_refusals_name_the_field() {
        for field in [
            "tcp_established_secs",
            "tcp_transitory_secs",
            "tcp_time_wait_secs",
            "tcp_closed_secs",
            "udp_secs",
            "icmp_secs",
        ] {
            for bad in [0, MAX_TIMEOUT_SECS + 1] {
                let mut d = doc(json!([]));
                d["nat"] = json!({ field: bad });
                let e = Config::from_json_value(&d).unwrap_err();
                assert_eq!(e.field, format!("nat.{field}"), "{e}");
            }
            let mut d = doc(json!([]));
            d["nat"] = json!({ field: MAX_TIMEOUT_SECS });
            assert!(Config::from_json_value(&d).is_ok());
        }
        let mut d = doc(json!([]));
        d["nat"] = json!({"udp_timeout": 30});
        assert!(Config::from_json_value(&d).is_err(), "unknown keys");
    }

    /// A UDP frame (Ethernet + IPv4 + UDP), checksums filled.
    fn udp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
        use weft_netstack::smoltcp::wire::{Ipv4Packet, UdpPacket};
        let mut f = alloc::vec![0u8; 14 + 20 + 8 + 4];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&32u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.0.octets());
        ip[16..20].copy_from_slice(&dst.0.octets());
        let udp = &mut ip[20..];
        udp[0..2].copy_from_slice(&src.1.to_be_bytes());
        udp[2..4].copy_from_slice(&dst.1.to_be_bytes());
        udp[4..6].copy_from_slice(&12u16.to_be_bytes());
        udp[8..].copy_from_slice(b"ping");
        UdpPacket::new_unchecked(&mut udp[..]).fill_checksum(&src.0.into(), &dst.0.into());
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        f
    }

    #[test]
    fn new_timeouts_apply_at_once_and_keep_live_flows() {
        use weft_netstack::base::NicId;
        use weft_netstack::stage::nat::NatVerdict;
        let mac = weft_netstack::smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 1]);
        let mut stack = Netstack::new(mac, mac, 1, Instant::from_millis(0));
        let mut d = doc(json!([]));
        d["nat"] = json!({"capacity": 64});
        let base = Config::from_json_value(&d).unwrap();
        apply(&mut stack, &base, 1);
        let inside = (Ipv4Addr::new(10, 81, 1, 2), 5000);
        let server = (Ipv4Addr::new(203, 0, 113, 9), 53);
        let nat = stack.router_mut().unwrap().nat_mut();
        let v = nat.process(
            &mut udp_frame(inside, server),
            NicId::Link,
            Instant::from_secs(0),
        );
        assert_eq!(v, NatVerdict::Forward { to: NicId::Uplink });
        let held = |stack: &Netstack, at: i64| {
            flows(stack, FlowsQuery::default(), Instant::from_secs(at)).len()
        };
        assert_eq!(held(&stack, 299), 1, "default UDP timeout: 300 s");

        // 30 s for UDP: the same NAT (the flow is still there at 29 s), judged by
        // the new timeout from now on.
        d["nat"]["udp_secs"] = json!(30);
        let shorter = Config::from_json_value(&d).unwrap();
        apply(&mut stack, &shorter, 1);
        assert_eq!(
            stack
                .router()
                .unwrap()
                .nat()
                .config()
                .conntrack
                .timeouts
                .udp,
            Duration::from_secs(30)
        );
        assert_eq!(held(&stack, 29), 1, "the flow survived the apply");
        assert_eq!(held(&stack, 30), 0, "and expires by the new timeout");
        // Every timeout changes together with the others.
        d["nat"]["tcp_established_secs"] = json!(600);
        d["nat"]["icmp_secs"] = json!(5);
        let both = Config::from_json_value(&d).unwrap();
        apply(&mut stack, &both, 1);
        let t = stack.router().unwrap().nat().config().conntrack.timeouts;
        assert_eq!(t, both.nat.unwrap().timeouts());
        assert_eq!(t.udp, Duration::from_secs(30));
        assert_eq!(held(&stack, 29), 1);
        // A new capacity is a new table.
        d["nat"]["capacity"] = json!(128);
        apply(&mut stack, &Config::from_json_value(&d).unwrap(), 1);
        assert_eq!(held(&stack, 1), 0);
        assert_eq!(status(&stack).unwrap().table_capacity, 128);
    }
}
