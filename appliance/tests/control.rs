//! The control protocol end to end through `Appliance::control_*`: every reply is one
//! JSON line with the echoed id, every error code the protocol can produce is reached,
//! and `apply` is all-or-nothing.

use serde_json::{json, Value};
use smoltcp::time::{Duration, Instant};
use weft_appliance::weft_netstack::base::test_rng::Rng;
use weft_appliance::{Appliance, BootInfo, Config, Greeting, MemPort, Status};

const UPLINK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x01];
const LINK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x02];

fn boot() -> Appliance {
    Appliance::new(
        BootInfo {
            uplink_mac: UPLINK_MAC,
            link_mac: LINK_MAC,
            seed: 7,
            cmdline: "console=ttyS0".into(),
        },
        Instant::from_millis(5_000),
    )
}

fn lines(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).expect("replies are UTF-8");
    assert!(
        out.is_empty() || text.ends_with('\n'),
        "output ends with a newline"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Send `line` (newline added) and return the single reply.
fn call(app: &mut Appliance, now: Instant, line: &str) -> Value {
    let mut out = Vec::new();
    app.control_input(now, format!("{line}\n").as_bytes(), &mut out);
    let mut replies = lines(&out);
    assert_eq!(replies.len(), 1, "one reply to {line}: {replies:?}");
    replies.remove(0)
}

fn connected() -> (Appliance, Instant) {
    let mut app = boot();
    let now = Instant::from_millis(5_000);
    let mut out = Vec::new();
    app.control_connected(now, &mut out);
    let greeting: Greeting = serde_json::from_slice(&out).unwrap();
    assert_eq!(greeting, Greeting::current());
    (app, now)
}

fn good_config() -> Value {
    json!({
        "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
        "link": {"address": "10.81.0.1/16"}
    })
}

fn apply_line(id: u64, doc: &Value) -> String {
    json!({"id": id, "cmd": "apply", "args": doc}).to_string()
}

fn error_of(reply: &Value) -> (&str, Option<&str>) {
    let e = &reply["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
    assert!(reply.get("result").is_none());
    (e["code"].as_str().unwrap(), e["field"].as_str())
}

#[test]
fn greeting_is_the_first_line() {
    let mut app = boot();
    let mut out = Vec::new();
    app.control_connected(Instant::from_millis(5_000), &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "{{\"weft\":{{\"version\":\"{}\",\"protocol\":1}}}}\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn every_reply_echoes_its_id() {
    let (mut app, now) = connected();
    let ids = [
        json!(1),
        json!(0),
        json!(-7),
        json!(2.5),
        json!("a"),
        json!(""),
        json!("ünïcode"),
    ];
    for id in ids {
        for cmd in ["status", "config", "ping", "nope"] {
            let reply = call(&mut app, now, &json!({"id": id, "cmd": cmd}).to_string());
            assert_eq!(reply["id"], id, "{reply}");
            assert!(reply.get("result").is_some() != reply.get("error").is_some());
        }
    }
}

#[test]
fn ping_pongs() {
    let (mut app, now) = connected();
    assert_eq!(
        call(&mut app, now, r#"{"id":1,"cmd":"ping"}"#),
        json!({"id": 1, "result": {"pong": true}})
    );
}

#[test]
fn status_reports_interfaces_and_uptime() {
    let (mut app, now) = connected();
    let reply = call(
        &mut app,
        now + Duration::from_millis(1_234),
        r#"{"id":1,"cmd":"status"}"#,
    );
    let status: Status = serde_json::from_value(reply["result"].clone()).unwrap();
    assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(status.protocol, 1);
    assert_eq!(status.uptime_ms, 1_234);
    assert!(!status.configured);
    assert_eq!(status.interfaces.uplink.mac, "52:54:00:12:34:01");
    assert_eq!(status.interfaces.link.mac, "52:54:00:12:34:02");
    assert!(status.interfaces.uplink.addresses.is_empty());
    assert_eq!(status.interfaces.uplink.gateway, None);
    assert_eq!(status.control.connects, 1);
    assert_eq!(status.control.requests, 1);

    call(&mut app, now, &apply_line(2, &good_config()));
    let reply = call(&mut app, now, r#"{"id":3,"cmd":"status"}"#);
    let status: Status = serde_json::from_value(reply["result"].clone()).unwrap();
    assert!(status.configured);
    assert_eq!(
        status.interfaces.uplink.addresses[0].to_string(),
        "192.0.2.2/24"
    );
    assert_eq!(
        status
            .interfaces
            .uplink
            .gateway
            .map(|g| g.to_string())
            .as_deref(),
        Some("192.0.2.1")
    );
    assert_eq!(
        status.interfaces.link.addresses[0].to_string(),
        "10.81.0.1/16"
    );
    assert_eq!(status.interfaces.link.gateway, None);
    assert_eq!(
        reply["result"]["interfaces"]["uplink"]["counters"]["drops"]["runt"],
        json!(0)
    );
}

#[test]
fn apply_then_config_returns_it() {
    let (mut app, now) = connected();
    assert_eq!(
        call(&mut app, now, r#"{"id":1,"cmd":"config"}"#),
        json!({"id": 1, "result": null})
    );
    assert_eq!(
        call(&mut app, now, &apply_line(2, &good_config())),
        json!({"id": 2, "result": {"changed": true}})
    );
    assert_eq!(
        call(&mut app, now, r#"{"id":3,"cmd":"config"}"#),
        json!({"id": 3, "result": good_config()})
    );
    // Applying the same document again changes nothing.
    assert_eq!(
        call(&mut app, now, &apply_line(4, &good_config())),
        json!({"id": 4, "result": {"changed": false}})
    );
    // The reply deserializes into the shared type.
    let reply = call(&mut app, now, r#"{"id":5,"cmd":"config"}"#);
    let config: Config = serde_json::from_value(reply["result"].clone()).unwrap();
    assert_eq!(config.uplink.address.to_string(), "192.0.2.2/24");
}

#[test]
fn invalid_apply_names_the_field_and_changes_nothing() {
    let (mut app, now) = connected();
    call(&mut app, now, &apply_line(1, &good_config()));
    let mut bad_cases: Vec<(Value, &str)> = Vec::new();
    let mut doc = good_config();
    doc["uplink"]["address"] = json!("192.0.2.300/24");
    bad_cases.push((doc, "uplink.address"));
    let mut doc = good_config();
    doc["uplink"]["mtu"] = json!(9000);
    bad_cases.push((doc, "uplink.mtu"));
    let mut doc = good_config();
    doc["routes"] = json!([]);
    bad_cases.push((doc, "routes"));
    // Overlay sections are checked with the rest, before anything is applied.
    let mut doc = good_config();
    doc["peers"] = json!([{"node": 2, "address": "192.0.2.12"}]);
    bad_cases.push((doc, "peers"));
    let mut doc = good_config();
    doc["link"]["address"] = json!(10);
    bad_cases.push((doc, "link.address"));
    let mut doc = good_config();
    doc["uplink"]["gateway"] = json!("198.51.100.1");
    bad_cases.push((doc, "uplink.gateway"));
    // The uplink part is valid and different: it must not be applied either.
    let mut doc = good_config();
    doc["uplink"]["address"] = json!("192.0.2.9/24");
    doc["link"]["address"] = json!("192.0.2.10/24");
    bad_cases.push((doc, "link.address"));

    for (i, (doc, field)) in bad_cases.iter().enumerate() {
        let reply = call(&mut app, now, &apply_line(10 + i as u64, doc));
        assert_eq!(reply["id"], json!(10 + i as u64));
        assert_eq!(error_of(&reply), ("invalid_config", Some(*field)), "{doc}");
        let config = call(&mut app, now, r#"{"id":0,"cmd":"config"}"#);
        assert_eq!(config["result"], good_config(), "unchanged after {doc}");
        let status = call(&mut app, now, r#"{"id":0,"cmd":"status"}"#);
        assert_eq!(
            status["result"]["interfaces"]["uplink"]["addresses"],
            json!(["192.0.2.2/24"])
        );
        assert_eq!(
            status["result"]["interfaces"]["link"]["addresses"],
            json!(["10.81.0.1/16"])
        );
    }
}

#[test]
fn every_error_code_the_protocol_produces_is_reachable() {
    let (mut app, now) = connected();
    let check = |app: &mut Appliance, line: &str, code: &str, id: Value| {
        let reply = call(app, now, line);
        assert_eq!(error_of(&reply).0, code, "{line}");
        assert_eq!(reply["id"], id, "{line}");
    };
    check(&mut app, "{not json", "parse_error", Value::Null);
    check(&mut app, "[]", "invalid_request", Value::Null);
    check(
        &mut app,
        r#"{"id":true,"cmd":"ping"}"#,
        "invalid_request",
        Value::Null,
    );
    check(
        &mut app,
        r#"{"id":1,"cmd":"status","args":"all"}"#,
        "invalid_request",
        json!(1),
    );
    check(
        &mut app,
        r#"{"id":2,"cmd":"frobnicate"}"#,
        "unknown_command",
        json!(2),
    );
    check(
        &mut app,
        r#"{"id":3,"cmd":"apply","args":{}}"#,
        "invalid_config",
        json!(3),
    );
    check(
        &mut app,
        r#"{"id":5,"cmd":"peer-remove","args":{"address":"192.0.2.12"}}"#,
        "not_ready",
        json!(5),
    );
    let mut grid = good_config();
    grid["grid"] = json!({"node": 1});
    call(&mut app, now, &apply_line(6, &grid));
    check(
        &mut app,
        r#"{"id":7,"cmd":"peer-remove","args":{"address":"192.0.2.12"}}"#,
        "not_found",
        json!(7),
    );

    let mut out = Vec::new();
    app.control_input(now, &vec![b'{'; 70_000], &mut out);
    app.control_input(now, b"\n", &mut out);
    let replies = lines(&out);
    assert_eq!(replies.len(), 1);
    assert_eq!(error_of(&replies[0]).0, "line_too_long");
    assert_eq!(replies[0]["id"], Value::Null);

    let status = call(&mut app, now, r#"{"id":4,"cmd":"status"}"#);
    assert_eq!(status["result"]["control"]["errors"], json!(9));
}

#[test]
fn garbage_then_status_still_answers() {
    let (mut app, now) = connected();
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    let mut out = Vec::new();
    for i in 0..1_000 {
        let len = (i * 7) % 300;
        let mut line: Vec<u8> = (0..len)
            .map(|_| {
                // Anything but a newline, including invalid UTF-8 and `\r`.
                match (rng.next_u64() >> 24) as u8 {
                    b'\n' => b'{',
                    b => b,
                }
            })
            .collect();
        if i % 3 == 0 {
            line.splice(0..0, b"{\"id\":".iter().copied());
        }
        line.push(b'\n');
        app.control_input(now, &line, &mut out);
    }
    let replies = lines(&out);
    assert!(replies.len() > 900, "{} replies", replies.len());
    assert!(replies.iter().all(|r| r.get("error").is_some()));
    let status = call(&mut app, now, r#"{"id":"after","cmd":"status"}"#);
    assert_eq!(status["id"], json!("after"));
    assert_eq!(status["result"]["control"]["errors"], json!(replies.len()));
}

#[test]
fn disconnect_mid_line_discards_it() {
    let (mut app, now) = connected();
    let mut out = Vec::new();
    app.control_input(now, br#"{"id":1,"cmd":"apply","args":{"uplink":"#, &mut out);
    assert!(out.is_empty());
    app.control_disconnected();
    app.control_connected(now, &mut out);
    out.clear();
    app.control_input(now, b"{\"id\":2,\"cmd\":\"ping\"}\n", &mut out);
    assert_eq!(
        lines(&out),
        vec![json!({"id": 2, "result": {"pong": true}})]
    );
    let status = call(&mut app, now, r#"{"id":3,"cmd":"status"}"#);
    assert_eq!(status["result"]["control"]["partial_discarded"], json!(1));
    assert_eq!(status["result"]["control"]["connects"], json!(2));
}

#[test]
fn input_without_connect_is_served() {
    // A transport that cannot signal connects (plain virtio-console) still gets answers.
    let mut app = boot();
    let mut out = Vec::new();
    app.control_input(
        Instant::from_millis(5_000),
        b"{\"id\":1,\"cmd\":\"ping\"}\r\n",
        &mut out,
    );
    assert_eq!(
        lines(&out),
        vec![json!({"id": 1, "result": {"pong": true}})]
    );
}

#[test]
fn several_requests_in_one_chunk_get_replies_in_order() {
    let (mut app, now) = connected();
    let mut out = Vec::new();
    let mut chunk = String::new();
    for id in 0..50 {
        chunk.push_str(&format!("{{\"id\":{id},\"cmd\":\"ping\"}}\n"));
    }
    app.control_input(now, chunk.as_bytes(), &mut out);
    let replies = lines(&out);
    assert_eq!(replies.len(), 50);
    for (id, reply) in replies.iter().enumerate() {
        assert_eq!(reply["id"], json!(id));
    }
    // Polling does not interfere with the control stream.
    let mut up = MemPort::new(smoltcp::wire::EthernetAddress(UPLINK_MAC));
    let mut link = MemPort::new(smoltcp::wire::EthernetAddress(LINK_MAC));
    app.poll(now, &mut up, &mut link);
    assert_eq!(
        call(&mut app, now, r#"{"id":"z","cmd":"ping"}"#)["result"],
        json!({"pong": true})
    );
}

#[test]
fn apply_through_the_api_validates_too() {
    let mut app = boot();
    let mut config: Config = serde_json::from_value(good_config()).unwrap();
    config.uplink.gateway = Some("198.51.100.1".parse().unwrap());
    let err = app.apply(config).unwrap_err();
    assert_eq!(err.field, "uplink.gateway");
    assert!(app.running_config().is_none());
    let config: Config = serde_json::from_value(good_config()).unwrap();
    assert_eq!(app.apply(config.clone()), Ok(true));
    assert_eq!(app.apply(config.clone()), Ok(false));
    assert_eq!(app.running_config(), Some(config));
}

/// A flow table larger than the free heap is refused before anything changes (running
/// out of memory is fatal in the kernel); the same document applies with room, and a
/// document that keeps the running table needs no new room.
#[test]
fn a_flow_table_that_does_not_fit_the_heap_is_refused() {
    use weft_appliance::protocol::HeapStatus;
    let (mut app, now) = connected();
    let heap = |free: u64| HeapStatus {
        size_bytes: 8 << 20,
        used_bytes: (8 << 20) - free,
        peak_bytes: (8 << 20) - free,
    };
    let mut big = good_config();
    big["nat"] = json!({"capacity": 1_000_000});
    app.set_heap_usage(heap(6 << 20));
    let reply = call(&mut app, now, &apply_line(1, &big));
    assert_eq!(error_of(&reply), ("invalid_config", Some("nat.capacity")));
    let msg = reply["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("1000000 flows") && msg.contains("6144 KiB free"),
        "{msg}"
    );
    let status = call(&mut app, now, r#"{"id":2,"cmd":"status"}"#);
    assert_eq!(status["result"]["configured"], false, "{status}");
    // The default 65536-flow table (5.25 MiB) does not fit in 6 MiB with the packet
    // path's 1 MiB beside it; it does in 7 MiB.
    let reply = call(&mut app, now, &apply_line(3, &good_config()));
    assert_eq!(error_of(&reply), ("invalid_config", Some("nat.capacity")));
    app.set_heap_usage(heap(7 << 20));
    let reply = call(&mut app, now, &apply_line(3, &good_config()));
    assert_eq!(reply["result"]["changed"], true, "{reply}");
    // New timeouts keep the table: no new room needed even with none free.
    app.set_heap_usage(heap(0));
    let mut timeouts = good_config();
    timeouts["nat"] = json!({"udp_secs": 30});
    let reply = call(&mut app, now, &apply_line(4, &timeouts));
    assert_eq!(reply["result"]["changed"], true, "{reply}");
    // But a new capacity does.
    timeouts["nat"]["capacity"] = json!(1024);
    let reply = call(&mut app, now, &apply_line(5, &timeouts));
    assert_eq!(error_of(&reply), ("invalid_config", Some("nat.capacity")));
}

#[test]
fn status_and_metrics_count_the_captures_running() {
    let (mut app, now) = connected();
    let captures = |app: &mut Appliance| {
        let reply = call(app, now, r#"{"id":1,"cmd":"status"}"#);
        let status: Status = serde_json::from_value(reply["result"].clone()).unwrap();
        let metrics = call(app, now, r#"{"id":2,"cmd":"metrics"}"#);
        let text = metrics["result"]["text"].as_str().unwrap().to_string();
        let gauge = text
            .lines()
            .find_map(|l| l.strip_prefix("weft_control_captures "))
            .map(|v| v.parse::<u64>().unwrap());
        assert_eq!(gauge, Some(status.captures), "{text}");
        (status.captures, reply["result"].get("captures").is_some())
    };
    assert_eq!(captures(&mut app), (0, false));
    for id in [3, 4] {
        let reply = call(
            &mut app,
            now,
            &format!(r#"{{"id":{id},"cmd":"capture-start","args":{{"iface":"link"}}}}"#),
        );
        assert!(reply.get("result").is_some(), "{reply}");
    }
    assert_eq!(captures(&mut app), (2, true));
    app.control_disconnected();
    assert_eq!(captures(&mut app), (0, false));
}
