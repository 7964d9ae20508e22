//! A document sent in parts: the first byte is the part size, the rest the document's
//! text. The text parser (`config_text`) agrees with `from_value` on the same JSON (the
//! same `Config`, or a refusal naming the same field), and the text sent through an
//! `Appliance` as `apply-begin`, `apply-part`s of that size and `apply-commit` gets one
//! reply per line, is applied exactly when it parses and validates, and otherwise
//! leaves nothing configured.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use weft_appliance::weft_netstack::smoltcp::time::Instant;
use weft_appliance::{config_text, field_path, Appliance, BootInfo, Config};

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let by_text = config_text::parse(&text);
    match serde_json::from_str::<Value>(&text) {
        Ok(value) => match (&by_text, field_path::from_value::<Config>(&value)) {
            (Ok(a), Ok(b)) => assert_eq!(a, &b),
            (Err(a), Err(b)) => assert_eq!(a.field, b.field, "{text}"),
            (a, b) => panic!("{text}: by text {a:?}, by value {b:?}"),
        },
        Err(_) => assert!(by_text.is_err(), "{text}"),
    }
    let accepted = by_text.and_then(|c| c.validate().map(|()| c)).ok();

    let now = Instant::from_millis(0);
    let mut app = Appliance::new(
        BootInfo {
            uplink_mac: [0x52, 0x54, 0, 0, 0, 1],
            link_mac: [0x52, 0x54, 0, 0, 0, 2],
            seed: 0,
            cmdline: String::new(),
        },
        now,
    );
    let mut out = Vec::new();
    app.control_connected(now, &mut out);
    out.clear();
    let mut lines = vec![json!({"id": 0, "cmd": "apply-begin", "args": {"bytes": text.len()}})];
    let part = usize::from(size).max(1);
    let mut offset = 0;
    while offset < text.len() {
        let mut end = (offset + part).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        lines.push(json!({"id": lines.len(), "cmd": "apply-part",
                          "args": {"offset": offset, "text": &text[offset..end]}}));
        offset = end;
    }
    lines.push(json!({"id": lines.len(), "cmd": "apply-commit"}));
    for line in &lines {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        app.control_input(now, &bytes, &mut out);
    }
    let replies: Vec<Value> = std::str::from_utf8(&out)
        .expect("UTF-8 replies")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON replies"))
        .collect();
    assert_eq!(replies.len(), lines.len());
    for (i, r) in replies[..replies.len() - 1].iter().enumerate() {
        assert_eq!(r["id"], i, "{r}");
        assert!(r.get("result").is_some(), "{r}");
    }
    let last = &replies[replies.len() - 1];
    assert_eq!(last.get("result").is_some(), accepted.is_some(), "{last}");
    assert_eq!(app.running_config(), accepted);
});
