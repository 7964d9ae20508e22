//! The `metrics` command: everything the appliance counts, as Prometheus text. Built
//! from the same per-component structs `status` serializes (Firecracker's metrics
//! structs): each struct of counters becomes `weft_<area>_<field>_total` families by
//! walking its serialized fields, a nested `drops`/`refused` struct becomes one
//! family with a `reason` label, so a counter added to a struct later is exported
//! without a line here; its HELP comes from `help.rs`. Gauges (sizes, health, weights,
//! heap, uptime) are named here one by one. It only reads; it never changes state.

pub mod exposition;
mod help;

use alloc::format;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use serde::Serialize;
use serde_json::Value;

pub use exposition::{Kind, Labels, Registry, Sample, CONTENT_TYPE};

use crate::protocol::{MetricsText, Status};
use weft_netstack::base::ports::SNAT_PORTS;

/// Nested structs whose fields are reasons: one family with a `reason` label.
const REASON_STRUCTS: &[&str] = &["drops", "refused"];

/// Adds every numeric field of `value` (a serialized counters struct) as a counter
/// `<prefix><field>_total`; nested structs named in `REASON_STRUCTS` become
/// `<prefix><name>_total{reason=<field>}`, other nested structs extend the prefix.
/// Fields in `skip` are left out (gauges the caller adds itself).
pub fn counters_of<T: Serialize>(
    reg: &mut Registry,
    prefix: &str,
    labels: &Labels,
    value: &T,
    skip: &[&str],
) {
    if let Ok(v) = serde_json::to_value(value) {
        walk(reg, prefix, labels, &v, skip);
    }
}

fn walk(reg: &mut Registry, prefix: &str, labels: &Labels, v: &Value, skip: &[&str]) {
    let Value::Object(map) = v else {
        return;
    };
    for (k, field) in map {
        if skip.contains(&k.as_str()) {
            continue;
        }
        match field {
            Value::Number(n) => {
                if let Some(n) = n.as_u64() {
                    let name = format!("{prefix}{k}_total");
                    reg.counter(&name, &help::of(&name), labels.clone(), n);
                }
            }
            Value::Object(reasons) if REASON_STRUCTS.contains(&k.as_str()) => {
                let name = format!("{prefix}{k}_total");
                let help = help::of(&name);
                for (reason, n) in reasons {
                    if let Some(n) = n.as_u64() {
                        let mut l = labels.clone();
                        l.push(("reason", reason.clone()));
                        reg.counter(&name, &help, l, n);
                    }
                }
            }
            Value::Object(_) => walk(reg, &format!("{prefix}{k}_"), labels, field, &[]),
            _ => {}
        }
    }
}

fn gauge(reg: &mut Registry, name: &str, labels: &Labels, value: u64) {
    reg.gauge(name, &help::of(name), labels.clone(), value);
}

/// Every metric of `status`, in a registry (render it with `Registry::render`).
pub fn collect(status: &Status) -> Registry {
    let mut reg = Registry::new();
    let none: Labels = vec![];
    reg.gauge(
        "weft_info",
        &help::of("weft_info"),
        vec![
            ("version", status.version.clone()),
            ("protocol", status.protocol.to_string()),
        ],
        1,
    );
    reg.gauge_f64(
        "weft_uptime_seconds",
        &help::of("weft_uptime_seconds"),
        none.clone(),
        status.uptime_ms as f64 / 1000.0,
    );
    gauge(
        &mut reg,
        "weft_configured",
        &none,
        u64::from(status.configured),
    );
    if let Some(h) = status.heap {
        gauge(&mut reg, "weft_heap_size_bytes", &none, h.size_bytes);
        gauge(&mut reg, "weft_heap_used_bytes", &none, h.used_bytes);
        gauge(&mut reg, "weft_heap_peak_bytes", &none, h.peak_bytes);
    }
    if let Some(s) = status.stack {
        gauge(&mut reg, "weft_stack_size_bytes", &none, s.size_bytes);
        gauge(&mut reg, "weft_stack_peak_bytes", &none, s.peak_bytes);
    }
    for (nic, i) in [
        ("uplink", &status.interfaces.uplink),
        ("link", &status.interfaces.link),
    ] {
        let l: Labels = vec![("nic", nic.into())];
        gauge(&mut reg, "weft_nic_addresses", &l, i.addresses.len() as u64);
        counters_of(&mut reg, "weft_nic_", &l, &i.counters, &[]);
    }
    counters_of(&mut reg, "weft_control_", &none, &status.control, &[]);
    gauge(&mut reg, "weft_control_captures", &none, status.captures);
    if let Some(o) = &status.overlay {
        overlay(&mut reg, o);
    }
    if let Some(d) = &status.dns {
        gauge(&mut reg, "weft_dns_containers", &none, d.containers);
        gauge(&mut reg, "weft_dns_in_flight_queries", &none, d.in_flight);
        gauge(&mut reg, "weft_dns_tcp_connections", &none, d.tcp_open);
        counters_of(&mut reg, "weft_dns_", &none, &d.counters, &[]);
        counters_of(&mut reg, "weft_dns_socket_", &none, &d.sockets, &[]);
        for u in &d.upstreams {
            let l: Labels = vec![("upstream", u.address.to_string())];
            counters_of(&mut reg, "weft_dns_upstream_", &l, &u.counters, &[]);
        }
    }
    if let Some(n) = &status.nat {
        gauge(
            &mut reg,
            "weft_nat_published_ports",
            &none,
            u64::from(n.published),
        );
        gauge(&mut reg, "weft_conntrack_flows", &none, n.table_size);
        gauge(
            &mut reg,
            "weft_conntrack_capacity_flows",
            &none,
            n.table_capacity,
        );
        gauge(&mut reg, "weft_nat_snat_ports_used", &none, n.snat_mappings);
        gauge(
            &mut reg,
            "weft_nat_snat_ports_available",
            &none,
            u64::from(SNAT_PORTS.1 - SNAT_PORTS.0) + 1,
        );
        counters_of(
            &mut reg,
            "weft_nat_",
            &none,
            n,
            &[
                "published",
                "table_size",
                "table_capacity",
                "snat_mappings",
                "inserts",
                "conntrack",
                "router",
            ],
        );
        counters_of(&mut reg, "weft_conntrack_", &none, &n.conntrack, &[]);
        counters_of(&mut reg, "weft_router_", &none, &n.router, &[]);
    }
    if let Some(services) = status.services.as_ref().and_then(|s| s.as_array()) {
        for s in services {
            lb_service(&mut reg, s);
        }
    }
    reg
}

fn overlay(reg: &mut Registry, o: &weft_netstack::pipeline::datapath::DatapathStatus) {
    let none: Labels = vec![];
    let ov = &o.overlay;
    reg.gauge(
        "weft_overlay_node",
        &help::of("weft_overlay_node"),
        vec![("address", ov.node_address.to_string())],
        u64::from(ov.node.get()),
    );
    // The overlay-wide drops, as the reason family `weft_overlay_drops_total`.
    let drops = serde_json::json!({ "drops": ov.drops });
    walk(reg, "weft_overlay_", &none, &drops, &[]);
    counters_of(reg, "weft_overlay_datapath_", &none, &o.datapath, &[]);
    counters_of(
        reg,
        "weft_overlay_underlay_arp_",
        &none,
        &o.underlay_arp,
        &[],
    );
    gauge(
        reg,
        "weft_overlay_underlay_neighbors",
        &none,
        o.underlay_neighbors.len() as u64,
    );
    for n in &ov.networks {
        let l: Labels = vec![
            ("network", n.name.clone()),
            ("vni", n.vni.get().to_string()),
        ];
        gauge(
            reg,
            "weft_overlay_network_fdb_entries",
            &l,
            n.fdb.len() as u64,
        );
        gauge(
            reg,
            "weft_overlay_network_arp_entries",
            &l,
            n.arp.len() as u64,
        );
        counters_of(reg, "weft_overlay_network_", &l, &n.counters, &[]);
    }
    for p in &ov.peers {
        let l: Labels = vec![
            ("peer", p.address.to_string()),
            ("node", p.node.get().to_string()),
        ];
        gauge(
            reg,
            "weft_overlay_peer_neighbor_resolved",
            &l,
            u64::from(p.neighbor.is_some()),
        );
        counters_of(reg, "weft_overlay_peer_", &l, &p.counters, &[]);
        if let Some(s) = &p.sleeve {
            if let Some(e) = s.tx_epoch {
                gauge(reg, "weft_sleeve_peer_tx_epoch", &l, u64::from(e));
            }
            if let Some(e) = s.rx_epoch {
                gauge(reg, "weft_sleeve_peer_rx_epoch", &l, u64::from(e));
            }
            counters_of(reg, "weft_sleeve_peer_", &l, s, &["tx_epoch", "rx_epoch"]);
        }
    }
    if let Some(s) = &ov.sleeve {
        counters_of(reg, "weft_sleeve_", &none, s, &["port"]);
    }
}

fn lb_service(reg: &mut Registry, s: &Value) {
    let name = s["name"].as_str().unwrap_or_default().to_string();
    let Some(backends) = s["backends"].as_array() else {
        return;
    };
    gauge(
        reg,
        "weft_lb_service_backends",
        &vec![("service", name.clone())],
        backends.len() as u64,
    );
    for b in backends {
        let backend = format!(
            "{}:{}",
            b["address"].as_str().unwrap_or_default(),
            b["port"].as_u64().unwrap_or_default()
        );
        let l: Labels = vec![("service", name.clone()), ("backend", backend)];
        let up = u64::from(b["health"].as_str() == Some("up"));
        gauge(reg, "weft_lb_backend_up", &l, up);
        for (field, metric) in [
            ("weight", "weft_lb_backend_weight"),
            ("slots", "weft_lb_backend_slots"),
            ("connections", "weft_lb_backend_connections"),
        ] {
            gauge(reg, metric, &l, b[field].as_u64().unwrap_or_default());
        }
        for field in ["checks_ok", "checks_failed"] {
            let metric = format!("weft_lb_backend_{field}_total");
            let help = help::of(&metric);
            reg.counter(&metric, &help, l.clone(), b[field].as_u64().unwrap_or(0));
        }
    }
}

/// The `metrics` result for `status`.
pub fn text(status: &Status) -> MetricsText {
    MetricsText {
        content_type: CONTENT_TYPE.into(),
        text: collect(status).render(),
    }
}

/// The metric names (`weft_*` words) the queries of a Grafana dashboard use: its
/// panels' `expr` and its variables' `definition` strings. The dashboard in `docs/` is
/// checked against the exposition with it (here for the appliance's families, in the
/// agent for the agent's), so it cannot name a metric that does not exist.
pub fn dashboard_metric_names(
    dashboard: &str,
) -> Result<Vec<alloc::string::String>, serde_json::Error> {
    fn walk(v: &Value, out: &mut Vec<alloc::string::String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "definition", Value::String(q)) => words(q, out),
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    fn words(q: &str, out: &mut Vec<alloc::string::String>) {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        for w in q.split(|c: char| !word(c)) {
            if w.starts_with("weft_") && !out.iter().any(|o| o == w) {
                out.push(w.to_string());
            }
        }
    }
    let v: Value = serde_json::from_str(dashboard)?;
    let mut out = Vec::new();
    walk(&v, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests;
