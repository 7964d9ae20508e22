//! Large documents through `Appliance::control_*`: a document in parts applies exactly as
//! the same document in one line, a transfer that does not finish changes nothing, the
//! heap bounds what a transfer may announce, and the containers of the running document
//! keep their order through runtime edits.

use serde_json::{json, Value};
use smoltcp::time::Instant;
use weft_appliance::protocol::HeapStatus;
use weft_appliance::{Appliance, BootInfo, Config};

fn connected() -> (Appliance, Instant) {
    let now = Instant::from_millis(0);
    let mut app = Appliance::new(
        BootInfo {
            uplink_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x01],
            link_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x02],
            seed: 3,
            cmdline: String::new(),
        },
        now,
    );
    let mut out = Vec::new();
    app.control_connected(now, &mut out);
    (app, now)
}

/// Sends `lines` in one go; every reply, in order.
fn send(app: &mut Appliance, now: Instant, lines: &[String]) -> Vec<Value> {
    let mut input = Vec::new();
    for l in lines {
        input.extend_from_slice(l.as_bytes());
        input.push(b'\n');
    }
    let mut out = Vec::new();
    app.control_input(now, &input, &mut out);
    let text = String::from_utf8(out).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn one(app: &mut Appliance, now: Instant, line: &str) -> Value {
    let mut replies = send(app, now, &[line.to_string()]);
    assert_eq!(replies.len(), 1, "{line}: {replies:?}");
    replies.remove(0)
}

fn base() -> Value {
    json!({
        "uplink": {"address": "192.0.2.11/24", "gateway": "192.0.2.1"},
        "link": {"address": "10.81.0.1/16"},
    })
}

/// A grid: 200 peers, `containers` containers, 50 services of 10 backends, published ports.
fn grid(containers: usize) -> Value {
    let mut doc = base();
    doc["grid"] = json!({"node": 1});
    doc["networks"] = json!([{"name": "default", "vni": 100}]);
    doc["peers"] = (2..202)
        .map(|n| {
            json!({"node": n, "address": format!("192.0.2.{}", n + 20), "networks": ["default"]})
        })
        .collect();
    doc["dns"] = json!({"grid": "big", "upstreams": ["192.0.2.53"]});
    doc["containers"] = (0..containers)
        .map(|i| {
            json!({"name": format!("app-{i}"), "service": format!("svc-{}", i % 50),
                   "address": format!("10.81.{}.{}", 128 + i / 250, 1 + i % 250)})
        })
        .collect();
    doc["services"] = (0..50)
        .map(|s| {
            json!({"name": format!("lb-{s}"), "vip": format!("10.81.255.{}", s + 1),
                   "proto": "tcp", "port": 80,
                   "backends": (0..10).map(|b| json!({"address": format!("10.81.200.{}", b + 1), "port": 8000 + s})).collect::<Vec<_>>()})
        })
        .collect();
    doc["publish"] = (0..20)
        .map(|p| json!({"proto": "tcp", "host_port": 9000 + p, "container_address": "10.81.128.1", "container_port": 80}))
        .collect();
    doc
}

/// The lines that send `text` in parts of at most `part` bytes, then commit.
fn part_lines(first_id: u64, text: &str, part: usize) -> Vec<String> {
    let mut lines = vec![
        json!({"id": first_id, "cmd": "apply-begin", "args": {"bytes": text.len()}}).to_string(),
    ];
    let mut id = first_id + 1;
    let mut offset = 0;
    while offset < text.len() {
        let mut end = (offset + part).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        lines.push(
            json!({"id": id, "cmd": "apply-part", "args": {"offset": offset, "text": &text[offset..end]}})
                .to_string(),
        );
        id += 1;
        offset = end;
    }
    lines.push(json!({"id": id, "cmd": "apply-commit"}).to_string());
    lines
}

fn config_of(app: &mut Appliance, now: Instant) -> Value {
    one(app, now, r#"{"id":"cfg","cmd":"config"}"#)["result"].clone()
}

#[test]
fn a_document_in_parts_applies_exactly_as_one_line_would() {
    let doc = grid(2_000);
    let text = doc.to_string();
    assert!(text.len() > 2 * 65_536);
    let (mut app, now) = connected();
    let replies = send(&mut app, now, &part_lines(1, &text, 40_000));
    let (last, parts) = replies.split_last().unwrap();
    assert_eq!(last["result"], json!({"changed": true}), "{last}");
    for r in parts {
        assert!(r.get("result").is_some(), "{r}");
    }
    // What runs is what one `apply` of the same document runs.
    let expected = Config::from_json_value(&doc).unwrap();
    assert_eq!(app.running_config(), Some(expected.clone()));
    let shown: Config = serde_json::from_value(config_of(&mut app, now)).unwrap();
    assert_eq!(shown, expected);
    // The same document again changes nothing.
    let replies = send(&mut app, now, &part_lines(100, &text, 50_000));
    assert_eq!(replies.last().unwrap()["result"], json!({"changed": false}));
}

#[test]
fn every_refusal_of_a_document_in_parts_is_the_one_line_refusal() {
    let mut cases = Vec::new();
    let mut bad = grid(300);
    bad["containers"][299]["address"] = json!("10.81.300.1");
    cases.push(bad);
    let mut bad = grid(300);
    bad["peers"][150]["node"] = json!(1);
    cases.push(bad);
    let mut bad = grid(300);
    bad["services"][49]["backends"][3]["port"] = json!(0);
    cases.push(bad);
    let mut bad = grid(300);
    bad["publish"][19]["host_port"] = json!(9000);
    cases.push(bad);
    let mut bad = grid(300);
    bad["containers"][7]["name"] = json!("APP-3");
    cases.push(bad);
    let mut bad = grid(300);
    bad["colour"] = json!("blue");
    cases.push(bad);
    for doc in cases {
        let (mut app, now) = connected();
        let line = json!({"id": 1, "cmd": "apply", "args": doc}).to_string();
        let one_line = if line.len() <= 65_536 {
            one(&mut app, now, &line)["error"].clone()
        } else {
            let c = Config::from_json_value(&doc).unwrap_err();
            json!({"code": "invalid_config", "message": c.message, "field": c.field})
        };
        let replies = send(&mut app, now, &part_lines(2, &doc.to_string(), 7_000));
        let in_parts = &replies.last().unwrap()["error"];
        assert_eq!(in_parts, &one_line);
        assert_eq!(config_of(&mut app, now), Value::Null);
    }
}

#[test]
fn an_unfinished_document_changes_nothing() {
    let (mut app, now) = connected();
    let r = one(
        &mut app,
        now,
        &json!({"id": 1, "cmd": "apply", "args": base()}).to_string(),
    );
    assert_eq!(r["result"]["changed"], true);
    let text = grid(500).to_string();
    let mut lines = part_lines(10, &text, 10_000);
    lines.pop(); // no commit
    lines.pop(); // and not the last part
    let replies = send(&mut app, now, &lines);
    assert!(replies.iter().all(|r| r.get("result").is_some()));
    // The client vanishes.
    app.control_disconnected();
    let mut out = Vec::new();
    app.control_connected(now, &mut out);
    assert_eq!(config_of(&mut app, now), base());
    let late = one(&mut app, now, r#"{"id":99,"cmd":"apply-commit"}"#);
    assert_eq!(late["error"]["code"], "not_ready");
    let st = one(&mut app, now, r#"{"id":98,"cmd":"status"}"#);
    assert_eq!(st["result"]["control"]["transfers"], 1);
    assert_eq!(st["result"]["control"]["transfers_discarded"], 1);

    // Garbage in the parts: refused at commit, nothing changes.
    let mut lines = part_lines(20, &text, 10_000);
    let garbage = json!({"id": 21, "cmd": "apply-part", "args": {"offset": 0, "text": "\u{0}]}{"}});
    lines[1] = garbage.to_string();
    let replies = send(&mut app, now, &lines);
    let last = replies.last().unwrap();
    // The rest of the parts were out of order (the first was garbage of another size).
    assert!(replies[2..replies.len() - 1]
        .iter()
        .all(|r| r["error"]["field"] == "offset"));
    assert_eq!(last["error"]["code"], "invalid_request", "{last}");
    // Parts in order that add up to text that is not JSON (a trailing comma).
    let broken = format!("{},}}", &text[..text.len() - 1]);
    let replies = send(&mut app, now, &part_lines(40, &broken, 10_000));
    assert_eq!(replies.last().unwrap()["error"]["code"], "invalid_config");
    assert_eq!(replies.last().unwrap()["error"]["field"], "");
    assert_eq!(config_of(&mut app, now), base());
}

#[test]
fn a_document_the_heap_cannot_take_is_refused_before_its_text_arrives() {
    let (mut app, now) = connected();
    let heap = |size: u64, free: u64| HeapStatus {
        size_bytes: size,
        used_bytes: size - free,
        peak_bytes: size - free,
    };
    // 16 MiB heap, 10 MiB free: 2 MiB reserved for the packet path, so 8 MiB for a
    // document four times its size.
    app.set_heap_usage(heap(16 << 20, 10 << 20));
    let r = one(
        &mut app,
        now,
        r#"{"id":1,"cmd":"apply-begin","args":{"bytes":3000000}}"#,
    );
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    assert_eq!(r["error"]["field"], "bytes");
    let r = one(
        &mut app,
        now,
        r#"{"id":2,"cmd":"apply-begin","args":{"bytes":2000000}}"#,
    );
    assert_eq!(r["result"]["bytes"], 2_000_000, "{r}");
    // Beyond the protocol's limit whatever the heap.
    app.set_heap_usage(heap(1 << 40, 1 << 39));
    let r = one(
        &mut app,
        now,
        r#"{"id":3,"cmd":"apply-begin","args":{"bytes":67108865}}"#,
    );
    assert_eq!(r["error"]["code"], "too_large");
    let r = one(
        &mut app,
        now,
        r#"{"id":4,"cmd":"apply-begin","args":{"bytes":-1}}"#,
    );
    assert_eq!(r["error"]["code"], "invalid_request");
    assert_eq!(r["error"]["field"], "bytes");
    let r = one(
        &mut app,
        now,
        r#"{"id":5,"cmd":"apply-part","args":{"offset":0}}"#,
    );
    assert_eq!(r["error"]["code"], "invalid_request");
    assert_eq!(r["error"]["field"], "text");
}

/// The Maglev tables of many services, or the records of many containers, that the
/// heap cannot hold are refused with the section named, before anything changes.
#[test]
fn tables_the_heap_cannot_hold_are_refused_naming_the_section() {
    let (mut app, now) = connected();
    let doc = grid(20_000);
    app.set_heap_usage(HeapStatus {
        size_bytes: 24 << 20,
        used_bytes: 12 << 20,
        peak_bytes: 12 << 20,
    });
    let replies = send(&mut app, now, &part_lines(1, &doc.to_string(), 40_000));
    let e = &replies.last().unwrap()["error"];
    assert_eq!(e["code"], "invalid_config", "{e}");
    assert_eq!(e["field"], "containers", "{e}");
    let mut doc = grid(10);
    doc["services"] = (0..100)
        .map(|s| json!({"name": format!("lb-{s}"), "vip": format!("10.81.254.{}", s + 1), "proto": "tcp", "port": 80}))
        .collect();
    let replies = send(&mut app, now, &part_lines(100, &doc.to_string(), 40_000));
    let e = &replies.last().unwrap()["error"];
    assert_eq!(e["field"], "services", "{e}");
    assert_eq!(config_of(&mut app, now), Value::Null);
}

#[test]
fn runtime_container_edits_keep_the_document_order() {
    let (mut app, now) = connected();
    let mut doc = base();
    doc["dns"] = json!({});
    doc["containers"] = json!([
        {"name": "a", "address": "10.81.1.1"},
        {"name": "b", "service": "s", "address": "10.81.1.2"},
        {"name": "c", "address": "10.81.1.3"}
    ]);
    let apply = |app: &mut Appliance, id: u64, doc: &Value| {
        one(
            app,
            now,
            &json!({"id": id, "cmd": "apply", "args": doc}).to_string(),
        )["result"]["changed"]
            .clone()
    };
    assert_eq!(apply(&mut app, 1, &doc), true);
    assert_eq!(apply(&mut app, 2, &doc), false);
    let names = |app: &mut Appliance| -> Vec<String> {
        config_of(app, now)["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let call = |app: &mut Appliance, line: &str| one(app, now, line);
    call(
        &mut app,
        r#"{"id":3,"cmd":"container-add","args":{"name":"d","address":"10.81.1.4"}}"#,
    );
    call(
        &mut app,
        r#"{"id":4,"cmd":"container-add","args":{"name":"B","address":"10.81.1.9"}}"#,
    );
    assert_eq!(names(&mut app), ["a", "B", "c", "d"]);
    let r = call(
        &mut app,
        r#"{"id":5,"cmd":"container-add","args":{"name":"B","address":"10.81.1.9"}}"#,
    );
    assert_eq!(r["result"]["changed"], false);
    call(
        &mut app,
        r#"{"id":6,"cmd":"container-remove","args":{"name":"A"}}"#,
    );
    assert_eq!(names(&mut app), ["B", "c", "d"]);
    // An edit of another section keeps the containers as they are.
    call(
        &mut app,
        r#"{"id":7,"cmd":"publish-add","args":{"proto":"tcp","host_port":8080,"container_address":"10.81.1.3","container_port":80}}"#,
    );
    assert_eq!(names(&mut app), ["B", "c", "d"]);
    // The document as `config` shows it applies as no change; in another order it does.
    let mut shown = config_of(&mut app, now);
    assert_eq!(apply(&mut app, 8, &shown), false);
    shown["containers"].as_array_mut().unwrap().reverse();
    assert_eq!(apply(&mut app, 9, &shown), true);
    assert_eq!(names(&mut app), ["d", "c", "B"]);
}
