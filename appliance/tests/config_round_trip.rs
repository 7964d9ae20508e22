//! `Config`'s serialization is what `config` shows; for every document without a
//! secret it is also the exact inverse of parsing (so a host that reads `config` back
//! sees what runs), and a secret is the one field it never gives back: it shows as
//! "set", which is refused as input. Property tests over generated documents.

use proptest::prelude::*;
use serde_json::{json, Value};
use weft_appliance::Config;

fn ip() -> impl Strategy<Value = String> {
    (1u8..=223, any::<u8>(), any::<u8>(), 1u8..=254)
        .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}"))
}

fn cidr() -> impl Strategy<Value = String> {
    (ip(), 0u8..=32).prop_map(|(a, l)| format!("{a}/{l}"))
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,12}"
}

fn opt<T: Strategy>(s: T) -> impl Strategy<Value = Option<T::Value>> {
    proptest::option::of(s)
}

/// Inserts `key: value` when the generated option is set.
fn put(obj: &mut Value, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        obj[key] = v;
    }
}

fn grid() -> impl Strategy<Value = Value> {
    (
        1u16..=254,
        opt(cidr()),
        opt(any::<u16>()),
        opt(68u16..=9000),
        opt(prop_oneof!["unset", "set", "inherit"]),
        opt(any::<bool>()),
        proptest::collection::vec(cidr(), 0..3),
        opt(name()),
    )
        .prop_map(|(node, subnet, port, mtu, df, csum, trusted, region)| {
            let mut g = json!({ "node": node });
            put(&mut g, "subnet", subnet.map(Value::from));
            put(&mut g, "vxlan_port", port.map(Value::from));
            put(&mut g, "mtu", mtu.map(Value::from));
            put(&mut g, "df", df.map(Value::from));
            put(&mut g, "udp_checksum", csum.map(Value::from));
            if !trusted.is_empty() {
                g["trusted_subnets"] = json!(trusted);
            }
            put(&mut g, "region", region.map(Value::from));
            g
        })
}

fn network() -> impl Strategy<Value = Value> {
    (
        name(),
        0u32..(1 << 24),
        opt(1u16..=4094),
        opt(prop_oneof!["vxlan", "sleeve", "auto"]),
    )
        .prop_map(|(n, vni, vlan, mode)| {
            let mut v = json!({"name": n, "vni": vni});
            put(&mut v, "vlan", vlan.map(Value::from));
            put(&mut v, "mode", mode.map(Value::from));
            v
        })
}

fn peer() -> impl Strategy<Value = Value> {
    (
        1u16..=254,
        opt(name()),
        opt(ip()),
        opt(name()),
        opt(ip()),
        opt(ip()),
        proptest::collection::vec(name(), 0..3),
    )
        .prop_map(|(node, n, addr, region, private, public, nets)| {
            let mut v = json!({"node": node, "networks": nets});
            put(&mut v, "name", n.map(Value::from));
            put(&mut v, "address", addr.map(Value::from));
            put(&mut v, "region", region.map(Value::from));
            put(&mut v, "private_address", private.map(Value::from));
            put(&mut v, "public_address", public.map(Value::from));
            v
        })
}

fn service() -> impl Strategy<Value = Value> {
    (
        name(),
        opt(ip()),
        prop_oneof!["tcp", "udp"],
        any::<u16>(),
        opt(prop_oneof!["vip", "dnsrr"]),
        proptest::collection::vec((ip(), any::<u16>(), 0u32..100), 0..3),
        opt((1u64..100_000, 1u64..100_000, 1u32..10, 1u32..10)),
    )
        .prop_map(|(n, vip, proto, port, mode, backends, health)| {
            let mut v = json!({"name": n, "proto": proto, "port": port});
            put(&mut v, "vip", vip.map(Value::from));
            put(&mut v, "mode", mode.map(Value::from));
            v["backends"] = backends
                .into_iter()
                .map(|(a, p, w)| json!({"address": a, "port": p, "weight": w}))
                .collect();
            put(
                &mut v,
                "health",
                health.map(
                    |(i, t, r, f)| json!({"interval_ms": i, "timeout_ms": t, "rise": r, "fall": f}),
                ),
            );
            v
        })
}

fn document() -> impl Strategy<Value = Value> {
    (
        (cidr(), opt(ip()), cidr()),
        opt(grid()),
        proptest::collection::vec(network(), 0..3),
        proptest::collection::vec(peer(), 0..3),
        opt((name(), opt(name()), any::<u32>(), proptest::collection::vec(ip(), 0..3), any::<bool>())),
        proptest::collection::vec((name(), opt(name()), ip()), 0..3),
        proptest::collection::vec((prop_oneof!["tcp", "udp"], any::<u16>(), ip(), any::<u16>()), 0..3),
        opt((1u32..1_000_000, 1u32..100_000)),
        proptest::collection::vec(service(), 0..3),
    )
        .prop_map(|((up, gw, link), grid, nets, peers, dns, ctrs, publish, nat, services)| {
            let mut d = json!({"uplink": {"address": up}, "link": {"address": link}});
            put(&mut d["uplink"], "gateway", gw.map(Value::from));
            put(&mut d, "grid", grid);
            if !nets.is_empty() {
                d["networks"] = json!(nets);
            }
            if !peers.is_empty() {
                d["peers"] = json!(peers);
            }
            put(
                &mut d,
                "dns",
                dns.map(|(domain, g, ttl, ups, short)| {
                    let mut v = json!({"domain": domain, "ttl": ttl, "upstreams": ups, "short_names": short});
                    put(&mut v, "grid", g.map(Value::from));
                    v
                }),
            );
            if !ctrs.is_empty() {
                d["containers"] = ctrs
                    .into_iter()
                    .map(|(n, s, a)| {
                        let mut v = json!({"name": n, "address": a});
                        put(&mut v, "service", s.map(Value::from));
                        v
                    })
                    .collect();
            }
            if !publish.is_empty() {
                d["publish"] = publish
                    .into_iter()
                    .map(|(p, h, a, c)| json!({"proto": p, "host_port": h, "container_address": a, "container_port": c}))
                    .collect();
            }
            put(
                &mut d,
                "nat",
                nat.map(|(cap, udp)| json!({"capacity": cap, "udp_secs": udp})),
            );
            if !services.is_empty() {
                d["services"] = json!(services);
            }
            d
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever parses (validation aside: the property is about the types), shows as a
    /// document that parses back to the same `Config`.
    #[test]
    fn parse_show_parse_is_the_identity(doc in document()) {
        if let Ok(config) = serde_json::from_value::<Config>(doc.clone()) {
            let shown = serde_json::to_value(&config).unwrap();
            let back: Config = serde_json::from_value(shown.clone())
                .unwrap_or_else(|e| panic!("{shown}: {e}"));
            prop_assert_eq!(back, config);
        }
    }

    /// A secret is the exception: it shows as "set", never as written, and "set" is not
    /// a document anyone can send back.
    #[test]
    fn a_secret_never_shows_and_its_display_form_is_refused(
        grid in grid(),
        secret in "[0-9a-f]{32,96}",
    ) {
        prop_assume!(secret.len() % 2 == 0);
        let mut grid = grid;
        grid["secret"] = Value::from(secret.clone());
        let doc = json!({"uplink": {"address": "192.0.2.2/24"}, "link": {"address": "10.81.0.1/16"}, "grid": grid});
        let config: Config = serde_json::from_value(doc).unwrap();
        let shown = serde_json::to_value(&config).unwrap();
        prop_assert_eq!(&shown["grid"]["secret"], "set");
        prop_assert!(!shown.to_string().contains(&secret));
        prop_assert!(serde_json::from_value::<Config>(shown).is_err());
    }
}

/// Every parse in the property above must sometimes succeed, or it tests nothing.
#[test]
fn generated_documents_mostly_parse() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let parsed = (0..200)
        .filter(|_| {
            let doc = document().new_tree(&mut runner).unwrap().current();
            serde_json::from_value::<Config>(doc).is_ok()
        })
        .count();
    assert!(
        parsed > 100,
        "only {parsed} of 200 generated documents parse"
    );
}
