//! Replays the transcripts in `PROTOCOL.md` against a real `Appliance`, so the protocol
//! document cannot drift from what the appliance says.

use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;
use weft_appliance::{Appliance, BootInfo, MemPort};

/// Each fenced block of `->`/`<-` lines.
fn transcripts(doc: &str) -> Vec<Vec<(bool, String)>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<(bool, String)>> = None;
    for line in doc.lines() {
        if line.starts_with("```") {
            match current.take() {
                Some(block) if !block.is_empty() => blocks.push(block),
                Some(_) => {}
                None => current = Some(Vec::new()),
            }
            continue;
        }
        if let Some(block) = current.as_mut() {
            if let Some(sent) = line.strip_prefix("-> ") {
                block.push((true, sent.to_string()));
            } else if let Some(got) = line.strip_prefix("<- ") {
                block.push((false, got.to_string()));
            }
        }
    }
    blocks
}

#[test]
fn protocol_md_transcripts_are_exact() {
    let doc = include_str!("../PROTOCOL.md");
    let blocks = transcripts(doc);
    assert!(blocks.len() >= 3, "the transcripts in PROTOCOL.md");
    for block in blocks {
        let now = Instant::from_millis(0);
        let mut app = Appliance::new(
            BootInfo {
                uplink_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
                link_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x57],
                seed: 0,
                cmdline: String::new(),
            },
            now,
        );
        let mut out = Vec::new();
        app.control_connected(now, &mut out);
        // A capture's transcript runs the packet path after each line (what the
        // appliance sends itself, such as ARP for a peer, is what it captures) and
        // shows the events due; the others never poll, so their counters stay at 0.
        let capturing = block.iter().any(|(_, t)| t.contains("capture-start"));
        let mut up = MemPort::new(EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
        let mut link = MemPort::new(EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x57]));
        for (sent, text) in &block {
            if *sent {
                app.control_input(now, format!("{text}\n").as_bytes(), &mut out);
                if capturing {
                    app.poll(now, &mut up, &mut link);
                    app.control_output(now, &mut out);
                }
            }
        }
        let got = String::from_utf8(out).unwrap();
        let expected: Vec<&str> = block
            .iter()
            .filter(|(s, _)| !s)
            .map(|(_, t)| t.as_str())
            .collect();
        let got: Vec<&str> = got.lines().collect();
        assert_eq!(got, expected);
    }
}
