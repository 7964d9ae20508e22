//! Arbitrary bytes, split at arbitrary points, with connect/disconnect events, into an
//! `Appliance`'s control stream: it never panics, and every output line is one JSON
//! object (the greeting, or a reply with an `id` and exactly one of `result`/`error`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weft_appliance::weft_netstack::smoltcp::time::{Duration, Instant};
use weft_appliance::{Appliance, BootInfo};

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::from_millis(0);
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
    let mut rest = data;
    // Each step: one op byte, then (for input) a length byte and that many bytes.
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        now += Duration::from_millis(u64::from(op));
        match op % 8 {
            0 => app.control_connected(now, &mut out),
            1 => app.control_disconnected(),
            _ => {
                let Some((&len, tail)) = rest.split_first() else {
                    break;
                };
                let n = usize::from(len).min(tail.len());
                app.control_input(now, &tail[..n], &mut out);
                rest = &tail[n..];
            }
        }
    }
    // Close any open line so its reply is checked too.
    app.control_input(now, b"\n{\"id\":\"end\",\"cmd\":\"status\"}\n", &mut out);

    assert_eq!(out.last(), Some(&b'\n'));
    let text = std::str::from_utf8(&out).expect("output is UTF-8");
    let mut last_id = None;
    for line in text.split_terminator('\n') {
        let v: Value = serde_json::from_str(line).expect("every output line is JSON");
        let obj = v.as_object().expect("every output line is an object");
        if obj.contains_key("weft") {
            continue;
        }
        assert!(obj.contains_key("id"), "{line}");
        assert!(
            obj.contains_key("result") != obj.contains_key("error"),
            "{line}"
        );
        last_id = obj.get("id").cloned();
    }
    assert_eq!(last_id, Some(Value::from("end")));
});
