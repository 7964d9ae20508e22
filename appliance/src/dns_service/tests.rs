//! The document rules of the DNS service (field-named refusals) and the seed expansion.

use alloc::string::ToString;
use alloc::vec;
use serde_json::{json, Value};

use super::*;

fn doc(extra: Value) -> Value {
    let mut doc = json!({
        "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
        "link": {"address": "10.81.0.1/16"}
    });
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            doc.insert(k.clone(), v.clone());
        }
    }
    doc
}

fn refusal(extra: Value) -> ConfigError {
    Config::from_json_value(&doc(extra.clone())).expect_err(&extra.to_string())
}

#[test]
fn dns_section_and_containers_parse_validate_and_round_trip() {
    let value = doc(json!({
        "dns": {"grid": "testgrid", "upstreams": ["192.0.2.53", "198.51.100.53:5353"]},
        "containers": [
            {"name": "testapp-web-1", "service": "testapp-web", "address": "10.81.1.2"},
            {"name": "testapp-db-1", "address": "10.81.1.1"}
        ]
    }));
    let config = Config::from_json_value(&value).unwrap();
    let plan = plan(&config).unwrap().unwrap();
    assert_eq!(records(config.containers.clone()).unwrap().len(), 2);
    assert_eq!(plan.config.forwarder.upstreams.len(), 2);
    // Defaults are written out when the document is read back.
    let back = serde_json::to_value(&config).unwrap();
    assert_eq!(back["dns"]["domain"], json!("kontena.local"));
    assert_eq!(back["dns"]["ttl"], json!(30));
    assert_eq!(Config::from_json_value(&back).unwrap(), config);
    // An empty section is the defaults; no section is no service.
    let config = Config::from_json_value(&doc(json!({"dns": {}}))).unwrap();
    assert!(plan_of(&config).is_some());
    let config = Config::from_json_value(&doc(json!({}))).unwrap();
    assert!(plan_of(&config).is_none());
    assert!(serde_json::to_value(&config).unwrap().get("dns").is_none());
}

fn plan_of(config: &Config) -> Option<DnsPlan> {
    plan(config).unwrap()
}

#[test]
fn refusals_name_the_field() {
    let cases = vec![
        (
            json!({"containers": [{"name": "a", "address": "10.81.1.1"}]}),
            "containers",
        ),
        (json!({"dns": {"tll": 5}}), "dns.tll"),
        (json!({"dns": {"domain": "a..b"}}), "dns.domain"),
        (json!({"dns": {"max_in_flight": 1025}}), "dns.max_in_flight"),
        (
            json!({"dns": {"upstreams": ["192.0.2.53", "nope"]}}),
            "dns.upstreams[1]",
        ),
        (
            json!({"dns": {"upstreams": ["[fd00::53]:53"]}}),
            "dns.upstreams[0]",
        ),
        (
            json!({"dns": {"upstreams": ["192.0.2.2"]}}),
            "dns.upstreams[0]",
        ),
        (
            json!({"dns": {"upstreams": ["10.81.0.1"]}}),
            "dns.upstreams[0]",
        ),
        (
            json!({"dns": {}, "containers": [{"name": "a.b", "address": "10.81.1.1"}]}),
            "containers[0].name",
        ),
        (
            json!({"dns": {}, "containers": [
                {"name": "web", "address": "10.81.1.1"},
                {"name": "WEB", "address": "10.81.1.2"}]}),
            "containers[1].name",
        ),
        (
            json!({"dns": {}, "containers": [{"name": "a", "address": "10.81.1"}]}),
            "containers[0].address",
        ),
        (
            json!({"dns": {}, "containers": [{"name": "a", "address": "10.81.1.1", "ip": 1}]}),
            "containers[0].ip",
        ),
    ];
    for (extra, field) in cases {
        let e = refusal(extra.clone());
        assert_eq!(e.field, field, "{extra}: {}", e.message);
        assert!(!e.message.is_empty());
    }
}

#[test]
fn upstream_off_subnet_needs_the_uplink_gateway() {
    let mut value = doc(json!({"dns": {"upstreams": ["198.51.100.53"]}}));
    assert!(Config::from_json_value(&value).is_ok());
    value["uplink"] = json!({"address": "192.0.2.2/24"});
    let e = Config::from_json_value(&value).unwrap_err();
    assert_eq!(e.field, "dns.upstreams[0]", "{}", e.message);
    // On-link upstreams need no gateway, on either side.
    for on_link in ["192.0.2.53", "10.81.200.53"] {
        value["dns"] = json!({"upstreams": [on_link]});
        assert!(Config::from_json_value(&value).is_ok(), "{on_link}");
    }
}

#[test]
fn seeds_differ_per_boot_seed_and_per_start() {
    let a = forwarder_seed(1, 0);
    assert_eq!(a, forwarder_seed(1, 0));
    assert_ne!(a, forwarder_seed(2, 0));
    assert_ne!(a, forwarder_seed(1, 1));
    assert_ne!(a, [0; 32]);
}

#[test]
fn container_command_refusals_name_the_argument() {
    let entry = |name: &str, service: Option<&str>, address: &str| ContainerEntry {
        name: name.into(),
        service: service.map(Into::into),
        address: address.parse().unwrap(),
    };
    assert!(check_entry(&entry("web-1", Some("web"), "10.81.1.2")).is_ok());
    for (e, field) in [
        (entry("-web", None, "10.81.1.2"), "name"),
        (entry("web-1", Some("a.b"), "10.81.1.2"), "service"),
    ] {
        let body = check_entry(&e).unwrap_err();
        assert_eq!(body.code, ErrorCode::InvalidConfig);
        assert_eq!(body.field.as_deref(), Some(field), "{e:?}");
    }
}
