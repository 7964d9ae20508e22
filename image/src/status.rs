//! Readable renderings of control replies (`weft ctl` without `--json`) and a lenient
//! view of a status result that tests read counters from. Presentation only: it
//! never talks to the appliance and never fails on fields it does not know.

use serde_json::Value;

/// One interface as `status` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceView {
    pub name: String,
    pub mac: String,
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Every drop counter by reason (`runt`, `tx_full`, ...), in the order reported.
    pub drops: Vec<(String, u64)>,
}

impl IfaceView {
    pub fn drops_total(&self) -> u64 {
        self.drops.iter().map(|(_, n)| n).sum()
    }
}

/// The parts of a `status` result the tool shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusView {
    pub version: String,
    pub uptime_ms: u64,
    pub interfaces: Vec<IfaceView>,
    /// Other top-level numeric counters (e.g. the control session's), flattened.
    pub other_counters: Vec<(String, u64)>,
}

impl StatusView {
    pub fn from_value(v: &Value) -> StatusView {
        let mut s = StatusView {
            version: v
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            uptime_ms: v.get("uptime_ms").and_then(Value::as_u64).unwrap_or(0),
            ..StatusView::default()
        };
        if let Some(ifaces) = v.get("interfaces").and_then(Value::as_object) {
            for (name, iv) in ifaces {
                s.interfaces.push(iface_view(name, iv));
            }
        }
        if let Some(obj) = v.as_object() {
            for (k, val) in obj {
                if k != "interfaces" && k != "uptime_ms" && (val.is_object() || val.is_u64()) {
                    flatten_numbers(k, val, &mut s.other_counters);
                }
            }
        }
        s
    }

    pub fn iface(&self, name: &str) -> Option<&IfaceView> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}

fn iface_view(name: &str, v: &Value) -> IfaceView {
    let str_of = |x: &Value| match x {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let addresses = match v.get("addresses") {
        Some(Value::Array(a)) => a.iter().map(str_of).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => v
            .get("address")
            .and_then(Value::as_str)
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
    };
    let counters = v.get("counters").unwrap_or(v);
    let num = |k: &str| counters.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut all = Vec::new();
    flatten_numbers("", counters, &mut all);
    let drops = all
        .into_iter()
        .filter(|(k, _)| k.contains("drop"))
        .map(|(k, n)| {
            let short = k
                .trim_start_matches('.')
                .trim_start_matches("drops.")
                .trim_start_matches("dropped.")
                .to_string();
            (short, n)
        })
        .collect();
    IfaceView {
        name: name.to_string(),
        mac: v.get("mac").map(str_of).unwrap_or_default(),
        addresses,
        gateway: v.get("gateway").and_then(Value::as_str).map(str::to_string),
        rx_packets: num("rx_packets"),
        tx_packets: num("tx_packets"),
        rx_bytes: num("rx_bytes"),
        tx_bytes: num("tx_bytes"),
        drops,
    }
}

/// Every non-negative integer under `v`, keyed by its dotted path.
fn flatten_numbers(prefix: &str, v: &Value, out: &mut Vec<(String, u64)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_numbers(&key, x, out);
            }
        }
        Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                out.push((prefix.to_string(), n));
            }
        }
        _ => {}
    }
}

/// A small table for `weft ctl status`.
pub fn render_status(v: &Value) -> String {
    let s = StatusView::from_value(v);
    let mut out = format!("weft {}  up {}\n", s.version, human_ms(s.uptime_ms));
    let mut rows = vec![[
        "iface".to_string(),
        "mac".into(),
        "addresses".into(),
        "gateway".into(),
        "rx pkts".into(),
        "tx pkts".into(),
        "rx bytes".into(),
        "tx bytes".into(),
        "drops".into(),
    ]];
    for i in &s.interfaces {
        rows.push([
            i.name.clone(),
            i.mac.clone(),
            if i.addresses.is_empty() {
                "-".into()
            } else {
                i.addresses.join(",")
            },
            i.gateway.clone().unwrap_or_else(|| "-".into()),
            i.rx_packets.to_string(),
            i.tx_packets.to_string(),
            i.rx_bytes.to_string(),
            i.tx_bytes.to_string(),
            i.drops_total().to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    for i in &s.interfaces {
        let nonzero: Vec<String> = i
            .drops
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        if !nonzero.is_empty() {
            out.push_str(&format!("drops on {}: {}\n", i.name, nonzero.join(" ")));
        }
    }
    if !s.other_counters.is_empty() {
        let parts: Vec<String> = s
            .other_counters
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        out.push_str(&format!("other: {}\n", parts.join(" ")));
    }
    out
}

/// `weft ctl config`: the document back as TOML (how it is written in files).
pub fn render_config(v: &Value) -> String {
    if v.is_null() {
        return "(no configuration applied yet)\n".to_string();
    }
    match toml::to_string_pretty(v) {
        Ok(t) => t,
        Err(_) => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

/// Any other result: pretty JSON.
pub fn render_value(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

fn human_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        let s = ms / 1000;
        format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
    }
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "version": "0.1.0", "uptime_ms": 65_000,
            "interfaces": {
                "uplink": {"mac": "52:54:00:01:02:03", "addresses": ["192.0.2.2/24"], "gateway": "192.0.2.1",
                    "counters": {"rx_packets": 7, "tx_packets": 5, "rx_bytes": 700, "tx_bytes": 500,
                                 "drops": {"runt": 2, "not_configured": 3}}},
                "link": {"mac": "52:54:00:04:05:06", "addresses": [],
                    "counters": {"rx_packets": 1, "tx_packets": 0, "rx_dropped": 4}}
            },
            "control": {"lines": 10, "errors": 2}
        })
    }

    #[test]
    fn view_reads_counters_and_drop_reasons() {
        let s = StatusView::from_value(&sample());
        let up = s.iface("uplink").unwrap();
        assert_eq!(up.rx_packets, 7);
        assert_eq!(up.tx_bytes, 500);
        assert_eq!(up.gateway.as_deref(), Some("192.0.2.1"));
        assert_eq!(up.drops_total(), 5);
        assert!(up.drops.contains(&("runt".to_string(), 2)));
        let link = s.iface("link").unwrap();
        assert_eq!(link.drops_total(), 4);
        assert!(link.addresses.is_empty());
        assert!(s
            .other_counters
            .contains(&("control.errors".to_string(), 2)));
    }

    #[test]
    fn table_shows_each_interface() {
        let t = render_status(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "weft 0.1.0  up 0h01m05s");
        assert!(lines[1].starts_with("iface"));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("uplink") && l.contains("192.0.2.2/24") && l.ends_with('5')));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("link") && l.contains(" - ")));
        assert!(
            t.contains("drops on uplink: not_configured=3 runt=2")
                || t.contains("drops on uplink: runt=2 not_configured=3")
        );
    }

    #[test]
    fn config_renders_as_toml_that_reads_back() {
        let doc = json!({"uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"}, "link": {"address": "10.81.0.1/16"}});
        let t = render_config(&doc);
        assert_eq!(crate::configfile::from_toml(&t).unwrap(), doc);
        assert!(render_config(&Value::Null).contains("no configuration"));
    }

    #[test]
    fn unknown_shapes_do_not_fail() {
        for v in [
            json!(null),
            json!([1, 2]),
            json!({"interfaces": 3}),
            json!({"interfaces": {"x": 1}}),
        ] {
            let _ = render_status(&v);
            let _ = StatusView::from_value(&v);
        }
    }
}
