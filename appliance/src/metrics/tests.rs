use super::*;
use crate::{Appliance, BootInfo, Config};
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::json;
use smoltcp::time::Instant;

/// An appliance running every section: overlay with sleeve, DNS, a published port, a
/// service with a backend.
fn appliance() -> Appliance {
    let mut app = Appliance::new(
        BootInfo {
            uplink_mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            link_mac: [0x52, 0x54, 0, 0x12, 0x34, 0x57],
            seed: 7,
            cmdline: String::new(),
        },
        Instant::ZERO,
    );
    let doc = json!({
        "uplink": {"address": "192.0.2.11/24", "gateway": "192.0.2.1"},
        "link": {"address": "10.81.0.1/16"},
        "grid": {"node": 1, "secret": "5eed5eed5eed5eed5eed5eed5eed5eed00112233445566778899aabbccddeeff"},
        "networks": [{"name": "grid", "vni": 100, "mode": "sleeve"}],
        "peers": [{"node": 2, "name": "node-2", "address": "192.0.2.12", "networks": ["grid"]}],
        "dns": {"grid": "g", "upstreams": ["192.0.2.53"]},
        "containers": [{"name": "web-1", "service": "web", "address": "10.81.1.2"}],
        "publish": [{"proto": "tcp", "host_port": 8080, "container_address": "10.81.1.2", "container_port": 80}],
        "services": [{"name": "web", "vip": "10.81.255.1", "proto": "tcp", "port": 80,
                      "backends": [{"address": "10.81.1.2", "port": 8080}]}]
    });
    app.apply(Config::from_json_value(&doc).unwrap()).unwrap();
    app.set_heap_usage(crate::protocol::HeapStatus {
        size_bytes: 1 << 27,
        used_bytes: 1 << 20,
        peak_bytes: 2 << 20,
    });
    app.set_stack_usage(crate::protocol::StackStatus {
        size_bytes: 128 << 10,
        peak_bytes: 67 << 10,
        running_peak_bytes: 34 << 10,
    });
    app
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[test]
fn every_family_is_named_typed_and_described() {
    let reg = collect(&appliance().status(Instant::from_secs(3)));
    let mut undocumented = Vec::new();
    let mut names = Vec::new();
    for (name, kind, _) in reg.families() {
        assert!(valid_name(name) && name.starts_with("weft_"), "{name}");
        match kind {
            Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
            Kind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
        }
        if help::known(name).is_none() {
            undocumented.push(name);
        }
        names.push(name);
    }
    assert!(
        undocumented.is_empty(),
        "add a HELP line in metrics/help.rs for {undocumented:?}"
    );
    for wanted in [
        "weft_nic_rx_packets_total",
        "weft_nic_drops_total",
        "weft_overlay_network_link_rx_total",
        "weft_overlay_network_drops_total",
        "weft_overlay_peer_tx_bytes_total",
        "weft_sleeve_peer_refused_total",
        "weft_sleeve_drops_total",
        "weft_dns_queries_total",
        "weft_dns_upstream_queries_total",
        "weft_conntrack_flows",
        "weft_conntrack_capacity_flows",
        "weft_conntrack_inserts_total",
        "weft_nat_drops_total",
        "weft_nat_snat_ports_used",
        "weft_lb_backend_up",
        "weft_lb_backend_weight",
        "weft_lb_backend_connections",
        "weft_heap_used_bytes",
        "weft_heap_peak_bytes",
        "weft_stack_size_bytes",
        "weft_stack_peak_bytes",
        "weft_uptime_seconds",
    ] {
        assert!(names.contains(&wanted), "no {wanted}");
    }
}

#[test]
fn samples_carry_their_labels_and_values() {
    let app = appliance();
    let reg = collect(&app.status(Instant::from_millis(2500)));
    assert_eq!(
        reg.value("weft_uptime_seconds", &[]),
        Some(Sample::Float(2.5))
    );
    assert_eq!(
        reg.value("weft_heap_peak_bytes", &[]),
        Some(Sample::Int(2 << 20))
    );
    assert_eq!(
        reg.value("weft_stack_peak_bytes", &[]),
        Some(Sample::Int(67 << 10))
    );
    assert_eq!(
        reg.value(
            "weft_overlay_network_drops_total",
            &[("network", "grid"), ("vni", "100"), ("reason", "too_big")]
        ),
        Some(Sample::Int(0))
    );
    assert_eq!(
        reg.value(
            "weft_sleeve_peer_refused_total",
            &[
                ("peer", "192.0.2.12"),
                ("node", "2"),
                ("reason", "replayed")
            ]
        ),
        Some(Sample::Int(0))
    );
    assert_eq!(
        reg.value(
            "weft_lb_backend_weight",
            &[("service", "web"), ("backend", "10.81.1.2:8080")]
        ),
        Some(Sample::Int(1))
    );
    assert_eq!(
        reg.value(
            "weft_dns_upstream_queries_total",
            &[("upstream", "192.0.2.53:53")]
        ),
        Some(Sample::Int(0))
    );
    assert_eq!(
        reg.value("weft_conntrack_capacity_flows", &[]),
        Some(Sample::Int(65536))
    );
}

#[test]
fn the_command_answers_with_the_text() {
    let mut app = appliance();
    let mut out = Vec::new();
    app.control_input(
        Instant::from_secs(1),
        b"{\"id\":1,\"cmd\":\"metrics\"}\n",
        &mut out,
    );
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["result"]["content_type"], CONTENT_TYPE);
    let text = v["result"]["text"].as_str().unwrap();
    assert!(text.contains("# TYPE weft_nic_rx_packets_total counter\n"));
    assert!(text.contains("weft_nic_rx_packets_total{nic=\"uplink\"} 0\n"));
    // One HELP and one TYPE per family, each family's samples together.
    let mut seen = Vec::new();
    let mut current = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!seen.contains(&name), "{name} twice");
            seen.push(name);
            current = name;
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(name, current, "{line}");
        }
    }
}

/// The Grafana dashboard in docs/ (what an operator imports).
const DASHBOARD: &str = include_str!("../../../docs/grafana-weft.json");

#[test]
fn the_dashboard_queries_only_metrics_the_appliance_exports() {
    let reg = collect(&appliance().status(Instant::from_secs(3)));
    let families: Vec<&str> = reg.families().map(|(name, _, _)| name).collect();
    let queried = dashboard_metric_names(DASHBOARD).unwrap();
    assert!(queried.len() > 20, "{queried:?}");
    // The agent's own families are checked in the agent crate.
    let missing: Vec<&String> = queried
        .iter()
        .filter(|n| !n.starts_with("weft_agent_") && !families.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/grafana-weft.json queries metrics the appliance does not export: {missing:?}"
    );
}
