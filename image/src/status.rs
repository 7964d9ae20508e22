//! Readable renderings of control results for `weft ctl` (without `--json`): a small
//! table for `status`, TOML for `config`. Presentation only: it never talks to the
//! appliance.

use weft_appliance::protocol::{InterfaceStatus, NicOffloads, Status};
use weft_appliance::weft_netstack::pipeline::datapath::DatapathStatus;
use weft_appliance::weft_netstack::stage::overlay::OverlayDrops;
use weft_appliance::Config;

/// Non-zero drop counters of one interface, by reason.
pub fn drop_reasons(i: &InterfaceStatus) -> Vec<(&'static str, u64)> {
    let d = &i.counters.drops;
    [
        ("runt", d.runt),
        ("oversize", d.oversize),
        ("other_host", d.other_host),
        ("not_configured", d.not_configured),
        ("tx_full", d.tx_full),
        ("icmp_rate_limited", d.icmp_rate_limited),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// A small table for `weft ctl status`.
pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "weft {} (protocol {})  up {}  {}\n",
        s.version,
        s.protocol,
        human_ms(s.uptime_ms),
        if s.configured {
            "configured"
        } else {
            "not configured"
        }
    );
    if let (Some(h), Some(st)) = (s.heap, s.stack) {
        out.push_str(&format!(
            "heap {} KiB used (peak {}) of {}, stack peak {} of {} KiB\n",
            h.used_bytes / 1024,
            h.peak_bytes / 1024,
            h.size_bytes / 1024,
            st.peak_bytes / 1024,
            st.size_bytes / 1024
        ));
    }
    if s.captures > 0 {
        out.push_str(&format!("captures running: {}\n", s.captures));
    }
    let mut rows = vec![[
        "iface",
        "mac",
        "addresses",
        "gateway",
        "rx pkts",
        "rx bytes",
        "tx pkts",
        "tx bytes",
        "drops",
    ]
    .map(String::from)];
    let ifaces = [
        ("uplink", &s.interfaces.uplink),
        ("link", &s.interfaces.link),
    ];
    for (name, i) in ifaces {
        let c = &i.counters;
        rows.push([
            name.to_string(),
            i.mac.clone(),
            if i.addresses.is_empty() {
                "-".into()
            } else {
                i.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            i.gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into()),
            c.rx_packets.to_string(),
            c.rx_bytes.to_string(),
            c.tx_packets.to_string(),
            c.tx_bytes.to_string(),
            c.drops.total().to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    for (name, i) in ifaces {
        let reasons = drop_reasons(i);
        if !reasons.is_empty() {
            out.push_str(&format!("drops on {name}: {}\n", key_values(&reasons)));
        }
    }
    if let Some(o) = &s.offloads {
        out.push_str(&render_offloads("uplink", &o.uplink));
        out.push_str(&render_offloads("link", &o.link));
    }
    let k = &s.control;
    out.push_str(&format!(
        "control: connects={} lines={} requests={} errors={} partial_discarded={}\n",
        k.connects, k.lines, k.requests, k.errors, k.partial_discarded
    ));
    if let Some(o) = &s.overlay {
        out.push_str(&render_overlay(o));
    }
    if let Some(d) = &s.dns {
        out.push_str(&render_dns(d));
    }
    out
}

/// One NIC's line of `weft ctl status` on virtio-net offloads: what the device
/// negotiated, then what was done with it (counters left out while all are zero).
pub fn render_offloads(nic: &str, o: &NicOffloads) -> String {
    let features: Vec<&str> = [
        ("csum", o.csum),
        ("guest_csum", o.guest_csum),
        ("host_tso4", o.host_tso4),
        ("guest_tso4", o.guest_tso4),
        ("mrg_rxbuf", o.mrg_rxbuf),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let mut line = format!(
        "offloads on {nic}: {}",
        if features.is_empty() {
            "none".to_string()
        } else {
            features.join(" ")
        }
    );
    let rx = [
        ("super_frames", o.rx_super_frames),
        ("segments", o.rx_segments),
        ("csum_completed", o.rx_csum_completed),
        ("refused", o.rx_refused),
    ];
    let tx = [
        ("super_frames", o.tx_super_frames),
        ("merged_segments", o.tx_merged_segments),
        ("bad_checksum", o.tx_bad_checksum),
        ("merged_dropped", o.tx_merged_dropped),
    ];
    if rx.iter().chain(&tx).any(|(_, n)| *n > 0) {
        line.push_str(&format!(
            "  rx: {}  tx: {}",
            key_values(&rx),
            key_values(&tx)
        ));
    }
    line.push('\n');
    line
}

/// The DNS part of `weft ctl status`: zone, queries by outcome, upstream attempts,
/// non-zero drops by reason, the socket side.
pub fn render_dns(d: &weft_appliance::dns_service::DnsStatus) -> String {
    let c = &d.counters;
    let s = &d.sockets;
    let drops: Vec<(String, u64)> = serde_json::to_value(&c.drops)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_u64().filter(|n| *n > 0).map(|n| (k, n)))
        .collect();
    let drops: Vec<(&str, u64)> = drops.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    format!(
        "dns: zone {} containers={} in_flight={} tcp_open={}\n  \
         queries={} (tcp {}) local={} nodata={} nxdomain={} truncated={} formerr={} \
         notimp={} refused={} badvers={} servfail={}\n  \
         forwarded={} upstream: queries={} replies={} timeouts={} failures={} \
         in_flight_full={}\n  \
         tcp: accepted={} idle_closed={} aborted={}  undeliverable={} \
         upstream_unsendable={} upstream_reset={} upstream_unreachable={}\n  drops: {}\n",
        d.domain,
        d.containers,
        d.in_flight,
        d.tcp_open,
        c.queries,
        c.queries_tcp,
        c.local_answers,
        c.nodata,
        c.nxdomain,
        c.truncated,
        c.formerr,
        c.notimp,
        c.refused,
        c.badvers,
        c.servfail,
        c.forwarded,
        c.upstream_queries,
        c.upstream_replies,
        c.upstream_timeouts,
        c.upstream_failures,
        c.in_flight_full,
        s.tcp_accepted,
        s.tcp_idle_closed,
        s.tcp_aborted,
        s.reply_undeliverable,
        s.upstream_unsendable,
        s.upstream_reset,
        s.upstream_unreachable,
        reasons(&drops),
    )
}

/// Non-zero overlay drop counters, by reason (`not_vxlan` is not a loss: left out).
pub fn overlay_drop_reasons(d: &OverlayDrops) -> Vec<(&'static str, u64)> {
    [
        ("bad_outer_header", d.bad_outer_header),
        ("outer_fragment", d.outer_fragment),
        ("bad_vxlan_header", d.bad_vxlan_header),
        ("unknown_vni", d.unknown_vni),
        ("unknown_peer", d.unknown_peer),
        ("runt", d.runt),
        ("bad_source_mac", d.bad_source_mac),
        ("not_local", d.not_local),
        ("too_big", d.too_big),
        ("no_neighbor", d.no_neighbor),
        ("not_attached", d.not_attached),
        ("tagged", d.tagged),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// `name=count` pairs, space-separated.
fn key_values(list: &[(&str, u64)]) -> String {
    list.iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn reasons(list: &[(&str, u64)]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        key_values(list)
    }
}

/// The overlay part of `weft ctl status`: networks, peers, FDB, drops.
pub fn render_overlay(o: &DatapathStatus) -> String {
    let s = &o.overlay;
    let mut out = format!(
        "\noverlay: node {} ({}), underlay {}, vxlan port {}, mtu {}\n",
        s.node, s.node_address, s.underlay_address, s.vxlan_port, s.mtu
    );
    let mut rows = vec![[
        "network", "vni", "vlan", "link rx", "link tx", "peers rx", "peers tx", "flooded",
        "arp sup", "frag nd", "drops",
    ]
    .map(String::from)];
    for n in &s.networks {
        let c = &n.counters;
        rows.push([
            n.name.clone(),
            n.vni.to_string(),
            n.vlan.map_or("-".into(), |v| v.to_string()),
            c.link_rx.to_string(),
            c.link_tx.to_string(),
            c.uplink_rx.to_string(),
            c.uplink_tx.to_string(),
            c.flooded.to_string(),
            c.arp_suppressed.to_string(),
            c.icmp_frag_needed.to_string(),
            reasons(&overlay_drop_reasons(&c.drops)),
        ]);
    }
    out.push_str(&table(&rows));
    let mut rows = vec![[
        "peer",
        "node",
        "address",
        "underlay mac",
        "vnis",
        "tx pkts",
        "tx bytes",
        "rx pkts",
        "rx bytes",
    ]
    .map(String::from)];
    for p in &s.peers {
        let c = &p.counters;
        rows.push([
            p.name.clone().unwrap_or_else(|| "-".into()),
            p.node.to_string(),
            p.address.to_string(),
            p.neighbor.map_or("(unresolved)".into(), |m| m.to_string()),
            p.networks
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(","),
            c.tx_packets.to_string(),
            c.tx_bytes.to_string(),
            c.rx_packets.to_string(),
            c.rx_bytes.to_string(),
        ]);
    }
    if s.peers.is_empty() {
        out.push_str("no peers\n");
    } else {
        out.push_str(&table(&rows));
    }
    for n in &s.networks {
        if n.fdb.is_empty() && n.arp.is_empty() {
            continue;
        }
        out.push_str(&format!("fdb {} (vni {}):\n", n.name, n.vni));
        for e in &n.fdb {
            let ip = n
                .arp
                .iter()
                .filter(|a| a.mac == e.mac)
                .map(|a| format!(" ip {}", a.ip))
                .collect::<String>();
            out.push_str(&format!(
                "  {}  {}  {}{ip}\n",
                e.mac,
                e.location.map_or("local".into(), |a| format!("peer {a}")),
                match e.age_secs {
                    Some(age) => format!("learned {age}s ago"),
                    None => "static".into(),
                }
            ));
        }
    }
    out.push_str(&format!(
        "overlay drops: {}; link vlan unknown={}; underlay arp requests={} learned={}\n",
        reasons(&overlay_drop_reasons(&s.drops)),
        o.datapath.unknown_vlan,
        o.underlay_arp.requests,
        o.underlay_arp.learned
    ));
    out
}

/// `weft ctl config`: the document as it is written in files.
pub fn render_config(c: Option<&Config>) -> String {
    match c {
        None => "# no configuration applied yet\n".to_string(),
        Some(c) => toml::to_string(c).unwrap_or_else(|e| format!("# cannot render as TOML: {e}\n")),
    }
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

    fn sample() -> Status {
        let counters = |rx: u64, runt: u64, nc: u64| {
            json!({"rx_packets": rx, "rx_bytes": rx * 100, "tx_packets": 5, "tx_bytes": 500,
                   "drops": {"runt": runt, "oversize": 0, "other_host": 0, "not_configured": nc, "tx_full": 0, "icmp_rate_limited": 0}})
        };
        serde_json::from_value(json!({
            "version": "0.1.0", "protocol": 1, "uptime_ms": 65_000, "configured": true,
            "interfaces": {
                "uplink": {"mac": "52:54:00:01:02:03", "addresses": ["192.0.2.2/24"], "gateway": "192.0.2.1",
                           "counters": counters(7, 2, 3)},
                "link": {"mac": "52:54:00:04:05:06", "addresses": [], "gateway": null,
                         "counters": counters(1, 0, 0)}
            },
            "control": {"connects": 1, "lines": 10, "requests": 8, "errors": 2, "partial_discarded": 0}
        }))
        .unwrap()
    }

    #[test]
    fn table_shows_each_interface_and_drop_reasons() {
        let t = render_status(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "weft 0.1.0 (protocol 1)  up 0h01m05s  configured");
        assert!(lines[1].starts_with("iface"));
        let up = lines.iter().find(|l| l.starts_with("uplink")).unwrap();
        let cols: Vec<&str> = up.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "uplink",
                "52:54:00:01:02:03",
                "192.0.2.2/24",
                "192.0.2.1",
                "7",
                "700",
                "5",
                "500",
                "5"
            ]
        );
        let link = lines.iter().find(|l| l.starts_with("link")).unwrap();
        assert_eq!(link.split_whitespace().nth(2), Some("-"));
        assert!(t.contains("drops on uplink: runt=2 not_configured=3\n"));
        assert!(!t.contains("drops on link"));
        assert!(t.contains("errors=2"));
        assert!(
            !t.contains("offloads"),
            "no offloads reported, none shown: {t}"
        );
    }

    #[test]
    fn offloads_show_what_each_nic_negotiated_and_did() {
        let mut s = sample();
        s.offloads = Some(serde_json::from_value(json!({
            "uplink": {"csum": true, "guest_csum": true, "host_tso4": false, "guest_tso4": false,
                       "mrg_rxbuf": false, "rx_super_frames": 0, "rx_segments": 0,
                       "rx_csum_completed": 0, "rx_refused": 0, "tx_super_frames": 0,
                       "tx_merged_segments": 0, "tx_bad_checksum": 0, "tx_merged_dropped": 0},
            "link": {"csum": true, "guest_csum": true, "host_tso4": true, "guest_tso4": true,
                     "mrg_rxbuf": true, "rx_super_frames": 739, "rx_segments": 25678,
                     "rx_csum_completed": 830, "rx_refused": 2, "tx_super_frames": 1097,
                     "tx_merged_segments": 24777, "tx_bad_checksum": 0, "tx_merged_dropped": 1}
        })).unwrap());
        let t = render_status(&s);
        assert!(t.contains("offloads on uplink: csum guest_csum\n"), "{t}");
        let link = t
            .lines()
            .find(|l| l.starts_with("offloads on link"))
            .unwrap();
        assert!(
            link.starts_with(
                "offloads on link: csum guest_csum host_tso4 guest_tso4 mrg_rxbuf  rx: "
            ),
            "{link}"
        );
        for part in [
            "super_frames=739 segments=25678 csum_completed=830 refused=2",
            "tx: super_frames=1097 merged_segments=24777 bad_checksum=0 merged_dropped=1",
        ] {
            assert!(link.contains(part), "{link} lacks {part}");
        }
        s.offloads = Some(Default::default());
        assert!(render_status(&s).contains("offloads on link: none\n"));
    }

    #[test]
    fn overlay_status_is_shown_when_there_is_one() {
        use weft_appliance::{Appliance, BootInfo};
        let now = weft_appliance::weft_netstack::smoltcp::time::Instant::from_secs(0);
        let mut app = Appliance::new(
            BootInfo {
                uplink_mac: [0x52, 0x54, 0, 0, 0, 1],
                link_mac: [0x52, 0x54, 0, 0, 0, 2],
                seed: 1,
                cmdline: String::new(),
            },
            now,
        );
        let doc =
            weft_control::document::load(&crate::paths::repo_root().join("examples/overlay.toml"))
                .unwrap();
        app.apply(doc.config().clone()).unwrap();
        let t = render_status(&app.status(now));
        assert!(
            t.contains("overlay: node 1 (10.81.0.1), underlay 192.0.2.11"),
            "{t}"
        );
        let net = t.lines().find(|l| l.starts_with("default")).unwrap();
        assert_eq!(net.split_whitespace().nth(1), Some("100"), "{t}");
        assert!(t.contains("(unresolved)"), "{t}");
        assert!(!render_status(&sample()).contains("overlay"));
    }

    #[test]
    fn overlay_config_renders_as_toml_that_reads_back() {
        let path = crate::paths::repo_root().join("examples/overlay.toml");
        let c = weft_control::document::load(&path)
            .unwrap()
            .config()
            .clone();
        assert!(c.grid.is_some() && !c.networks.is_empty() && !c.peers.is_empty());
        let t = render_config(Some(&c));
        assert_eq!(weft_control::document::from_toml(&t).unwrap(), c, "{t}");
    }

    #[test]
    fn config_renders_as_toml_that_reads_back() {
        let c = weft_control::document::default_config();
        let t = render_config(Some(&c));
        assert_eq!(weft_control::document::from_toml(&t).unwrap(), c);
        assert!(render_config(None).contains("no configuration"));
    }
}
