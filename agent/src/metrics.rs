//! `weft agent --metrics ADDR:PORT`: Prometheus scrapes `GET /metrics` here. The body
//! is the appliance's own `metrics` (through the link) followed by the agent's (store
//! health, syncs, the grid view, skipped entries, the API), both in the text
//! exposition format, served by axum (anything else than `GET /metrics` gets 404 or
//! 405). It never changes the agent's state.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE as CONTENT_TYPE_HEADER;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use tokio::net::TcpListener;
use weft_appliance::metrics::{Labels, Registry, CONTENT_TYPE};

use crate::agent::Shared;

/// Serves scrapes until the task is dropped (the HTTP side is axum's).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(shared);
    let _ = axum::serve(listener, app).await;
}

async fn scrape(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> impl IntoResponse {
    ([(CONTENT_TYPE_HEADER, CONTENT_TYPE)], body(&shared).await)
}

/// The appliance's metrics (when it answers) and the agent's.
pub async fn body(shared: &Shared) -> String {
    let appliance = match shared.link.call("metrics", None).await {
        Ok(reply) => reply
            .outcome
            .ok()
            .and_then(|v| v["text"].as_str().map(str::to_string)),
        Err(_) => None,
    };
    let status = shared
        .status
        .lock()
        .map(|s| s.clone())
        .unwrap_or(Value::Null);
    let reg = scrape_metrics(&status, appliance.is_some());
    let mut text = appliance.unwrap_or_default();
    reg.render_into(&mut text);
    text
}

/// The agent's families of one scrape: its own metrics and whether the appliance
/// answered (`appliance_up`).
pub fn scrape_metrics(status: &Value, appliance_up: bool) -> Registry {
    let mut reg = agent_metrics(status);
    reg.gauge(
        "weft_agent_appliance_metrics_up",
        "1 when the appliance answered the metrics request of this scrape.",
        Labels::new(),
        u64::from(appliance_up),
    );
    reg
}

/// The agent's own metrics, from its `agent-status`.
pub fn agent_metrics(status: &Value) -> Registry {
    let mut reg = Registry::new();
    let none = Labels::new();
    let n = |p: &str| status.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let is = |p: &str, v: &str| u64::from(status.pointer(p).and_then(Value::as_str) == Some(v));
    reg.gauge(
        "weft_agent_info",
        "The agent's node and grid.",
        vec![
            (
                "grid",
                status["grid"].as_str().unwrap_or_default().to_string(),
            ),
            (
                "name",
                status["name"].as_str().unwrap_or_default().to_string(),
            ),
            ("node", n("/node").to_string()),
        ],
        1,
    );
    reg.gauge(
        "weft_agent_store_up",
        "1 while the grid's store (etcd or file) is reachable.",
        none.clone(),
        is("/store/state", "up"),
    );
    for (field, help) in [
        ("snapshots", "Full reads of the grid from the store."),
        (
            "resyncs",
            "Full reads after the watch fell behind compaction.",
        ),
        ("losses", "Times the store became unreachable."),
        ("changes", "Store changes seen by the watch."),
    ] {
        reg.counter(
            &format!("weft_agent_store_{field}_total"),
            help,
            none.clone(),
            n(&format!("/store/{field}")),
        );
    }
    reg.gauge(
        "weft_agent_appliance_connected",
        "1 while the agent's link to the appliance is up.",
        none.clone(),
        is("/appliance/state", "connected"),
    );
    reg.gauge(
        "weft_agent_appliance_in_sync",
        "1 when the appliance runs what the grid says.",
        none.clone(),
        u64::from(status.pointer("/appliance/in_sync") == Some(&Value::Bool(true))),
    );
    for (field, help) in [
        (
            "greetings",
            "Appliance greetings (connections, restarts included).",
        ),
        ("plans", "Syncs: plans carried out on the appliance."),
        (
            "full_applies",
            "Syncs that applied the whole state (after a greeting).",
        ),
        ("commands", "Commands sent to the appliance by syncs."),
        ("command_errors", "Sync commands the appliance refused."),
        ("fdb_refused", "FDB entries a full table refused."),
        ("boots", "Boots of the supervised appliance."),
    ] {
        reg.counter(
            &format!("weft_agent_appliance_{field}_total"),
            help,
            none.clone(),
            n(&format!("/appliance/{field}")),
        );
    }
    for (field, help) in [
        ("nodes", "Nodes alive in the grid."),
        ("containers", "Containers registered in the grid."),
        ("live_containers", "Containers of live nodes."),
        ("services", "Services in the grid."),
        ("publish", "Published ports in the grid."),
    ] {
        reg.gauge(
            &format!("weft_agent_grid_{field}"),
            help,
            none.clone(),
            n(&format!("/grid_view/{field}")),
        );
    }
    reg.gauge(
        "weft_agent_grid_skipped_entries",
        "Store entries skipped now (malformed, foreign, or refused by the appliance's rules).",
        none.clone(),
        n("/grid_view/skipped/entries"),
    );
    reg.counter(
        "weft_agent_grid_skipped_total",
        "Store entries skipped since the agent started.",
        none.clone(),
        n("/grid_view/skipped/total"),
    );
    reg.gauge(
        "weft_agent_grid_revision",
        "The store revision the agent's grid view is at.",
        none.clone(),
        n("/grid_view/revision"),
    );
    reg.gauge(
        "weft_agent_api_clients",
        "API clients connected now.",
        none.clone(),
        n("/api/clients"),
    );
    for (field, help) in [
        ("connects", "API connections accepted."),
        ("requests", "API requests served."),
        ("errors", "API error replies."),
    ] {
        reg.counter(
            &format!("weft_agent_api_{field}_total"),
            help,
            none.clone(),
            n(&format!("/api/{field}")),
        );
    }
    reg
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_appliance::metrics::Sample;

    #[test]
    fn agent_status_becomes_metrics() {
        let status = serde_json::json!({
            "name": "host-1", "grid": "g", "node": 3,
            "store": {"state": "up", "snapshots": 1, "resyncs": 0, "losses": 2, "changes": 40},
            "appliance": {"state": "connected", "in_sync": true, "greetings": 1, "plans": 5},
            "grid_view": {"revision": 41, "nodes": 2, "skipped": {"entries": 1, "total": 3}},
            "api": {"connects": 4, "clients": 1, "requests": 9, "errors": 0}
        });
        let reg = agent_metrics(&status);
        assert_eq!(reg.value("weft_agent_store_up", &[]), Some(Sample::Int(1)));
        assert_eq!(
            reg.value("weft_agent_store_losses_total", &[]),
            Some(Sample::Int(2))
        );
        assert_eq!(
            reg.value("weft_agent_grid_skipped_total", &[]),
            Some(Sample::Int(3))
        );
        assert_eq!(
            reg.value("weft_agent_appliance_plans_total", &[]),
            Some(Sample::Int(5))
        );
        let text = reg.render();
        assert!(text.contains("weft_agent_info{grid=\"g\",name=\"host-1\",node=\"3\"} 1\n"));
    }

    #[test]
    fn the_dashboard_queries_only_metrics_the_agent_exports() {
        let status = serde_json::json!({
            "name": "host-1", "grid": "g", "node": 3,
            "store": {"state": "up"}, "appliance": {"state": "connected", "in_sync": true},
            "grid_view": {"revision": 1, "skipped": {"entries": 0, "total": 0}},
            "api": {"clients": 1}
        });
        let reg = scrape_metrics(&status, true);
        let families: Vec<&str> = reg.families().map(|(name, _, _)| name).collect();
        let dashboard = include_str!("../../docs/grafana-weft.json");
        let queried = weft_appliance::metrics::dashboard_metric_names(dashboard).unwrap();
        let missing: Vec<&String> = queried
            .iter()
            .filter(|n| n.starts_with("weft_agent_") && !families.contains(&n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/grafana-weft.json queries agent metrics the agent does not export: {missing:?}"
        );
    }
}
