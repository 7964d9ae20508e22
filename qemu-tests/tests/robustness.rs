//! Issue 2 robustness: 1000 lines of garbage and malformed JSON on the control socket
//! (plus over-long lines and a client that leaves mid-line), and bursts of malformed
//! Ethernet/IP frames on both NICs, leave the appliance answering ping and `status`; a
//! stack overflow inside it is caught by its guard page and reported.

use std::net::Ipv4Addr;
use std::time::Duration;

use weft_appliance::protocol::{ErrorCode, Status, MAX_LINE_LEN};
use weft_control::client::Reply;
use weft_image::qemu::Machine;
use weft_qemu_tests::frames::{bytes_between, malformed_burst, Endpoints, Rng};
use weft_qemu_tests::{mac_of, BootOptions, TestVm};

/// How long counters may take to catch up with frames still queued on a tap.
const WAIT: Duration = Duration::from_secs(15);

/// Line `i` of the garbage: malformed JSON, wrong shapes and types, unknown commands,
/// invalid UTF-8, random bytes. None is a valid request and none is blank, so each
/// must get exactly one error reply.
fn garbage_line(i: usize, rng: &mut Rng) -> Vec<u8> {
    let fixed: &[&str] = &[
        "{",
        "}",
        "[]",
        "null",
        "42",
        "\"status\"",
        "{\"id\":1,\"cmd\":\"sta",
        "{\"id\":1,\"cmd\":\"status\"}}",
        "{\"id\":[1],\"cmd\":\"status\"}",
        "{\"id\":{},\"cmd\":\"ping\"}",
        "{\"id\":true,\"cmd\":\"ping\"}",
        "{\"id\":1,\"cmd\":5}",
        "{\"id\":1}",
        "{\"cmd\":\"status\"}",
        "{\"id\":1,\"cmd\":\"reboot\"}",
        "{\"id\":1,\"cmd\":\"status\",\"args\":[1]}",
        "{\"id\":1,\"cmd\":\"status\",\"extra\":1}",
        "{\"id\":1,\"cmd\":\"apply\"}",
        "{\"id\":1,\"cmd\":\"apply\",\"args\":\"nope\"}",
        "{\"id\":1,\"cmd\":\"apply\",\"args\":{\"uplink\":{\"address\":\"1.2.3.4/99\"},\"link\":{\"address\":\"10.0.0.1/8\"}}}",
        "{\"id\":1e999,\"cmd\":\"ping\"}",
        "{'id':1,'cmd':'ping'}",
        "{\"id\":1,\"cmd\":\"ping\",}",
        "\u{feff}{\"id\":1,\"cmd\":\"ping\"",
    ];
    match i % 4 {
        0 => fixed[(i / 4) % fixed.len()].as_bytes().to_vec(),
        1 => {
            // Deep nesting (serde_json's recursion limit is 128).
            let depth = 100 + rng.below(400) as usize;
            let mut l = vec![b'['; depth];
            l.extend(vec![b']'; depth]);
            l
        }
        2 => {
            // Invalid UTF-8 inside something JSON-looking.
            let mut l = b"{\"id\":1,\"cmd\":\"".to_vec();
            l.extend([0xc3, 0x28, 0xff, 0xfe]);
            l.extend(b"\"}");
            l
        }
        _ => {
            // Random bytes without line breaks, starting with a visible character.
            let mut l = vec![b'#'];
            l.extend(bytes_between(rng, 1, 300).into_iter().map(|b| {
                if b == b'\n' || b == b'\r' {
                    b'x'
                } else {
                    b
                }
            }));
            l
        }
    }
}

fn expect_error(line: &str, what: &str) -> ErrorCode {
    let r = Reply::parse(line).unwrap_or_else(|e| panic!("{what}: reply {line:?}: {e}"));
    match r.outcome {
        Err(e) => e.code,
        Ok(v) => panic!("{what}: expected an error reply, got result {v}"),
    }
}

#[test]
fn control_garbage_leaves_it_serving() {
    let vm = TestVm::boot("control_garbage");
    vm.apply_default();
    let mut c = vm.client();
    let before = c.status().unwrap().control;
    let mut rng = Rng::new(0x9e37_79b9);
    let mut sent = 0usize;
    // Batches keep both directions flowing (no deadlock on full buffers).
    for batch in 0..20 {
        let mut bytes = Vec::new();
        for j in 0..50 {
            bytes.extend(garbage_line(batch * 50 + j, &mut rng));
            bytes.push(b'\n');
        }
        c.send_raw(&bytes).unwrap();
        for j in 0..50 {
            let line = c
                .read_line()
                .unwrap_or_else(|e| panic!("reply to garbage line {}: {e}", batch * 50 + j));
            expect_error(&line, "garbage");
        }
        sent += 50;
    }
    assert_eq!(sent, 1000);

    // Over-long lines: one line_too_long each, the rest of the line discarded.
    for len in [MAX_LINE_LEN + 1, 1 << 20] {
        let mut l = vec![b'a'; len];
        l.push(b'\n');
        c.send_raw(&l).unwrap();
        let line = c.read_line().unwrap();
        assert_eq!(
            expect_error(&line, "over-long line"),
            ErrorCode::LineTooLong
        );
    }
    assert!(c.ping().unwrap().pong);
    drop(c);

    // Clients that leave in the middle of a line: the next one starts clean. Repeated,
    // because a partial line leaking into the next session is a race (control events
    // and data travel on different virtqueues).
    for cycle in 0..20 {
        let mut c = vm.client();
        c.send_raw(b"{\"id\":77,\"cmd\":\"sta").unwrap();
        drop(c);
        let mut c = vm.client();
        c.send_raw(b"{\"id\":1,\"cmd\":\"ping\"}\n").unwrap();
        let line = c
            .read_line()
            .unwrap_or_else(|e| panic!("cycle {cycle}: no reply to ping: {e}"));
        let r = Reply::parse(&line).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert!(
            r.id == Some(1u64.into()) && r.outcome.is_ok(),
            "cycle {cycle}: the previous client's partial line leaked into this session: {line}"
        );
    }
    let mut c = vm.client();
    let st: Status = c.status().unwrap();
    let k = st.control;
    eprintln!("control counters before {before:?} after {k:?}");
    assert!(k.lines >= before.lines + 1002, "{k:?}");
    assert!(k.errors >= before.errors + 1002, "{k:?}");
    assert_eq!(st.interfaces.uplink.addresses.len(), 1, "config survived");
    drop(c);
    vm.assert_pings();
}

#[test]
fn malformed_frames_leave_it_serving_and_are_counted() {
    let vm = TestVm::boot("malformed_frames");
    let n = &vm.topo.names;
    let host_mac = mac_of(vm.host(), &n.host_veth);
    let ctr_mac = mac_of(vm.ctr(), &n.ctr_veth);
    let uplink_ep = Endpoints {
        dst_mac: vm.uplink_mac,
        dst_ip: Ipv4Addr::new(192, 0, 2, 2),
        src_mac: host_mac,
        src_ip: Ipv4Addr::new(192, 0, 2, 1),
    };
    let link_ep = Endpoints {
        dst_mac: vm.link_mac,
        dst_ip: Ipv4Addr::new(10, 81, 0, 1),
        src_mac: ctr_mac,
        src_ip: Ipv4Addr::new(10, 81, 128, 2),
    };

    // Before any config: everything reaching the NICs is dropped as not_configured.
    let s0 = vm.status();
    let early_up = malformed_burst(uplink_ep, 1, 64).frames;
    let early_link = malformed_burst(link_ep, 2, 64).frames;
    vm.send_frames(vm.host(), &n.host_veth, &early_up);
    vm.send_frames(vm.ctr(), &n.ctr_veth, &early_link);
    let nc = |s: &Status| {
        (
            s.interfaces.uplink.counters.drops.not_configured,
            s.interfaces.link.counters.drops.not_configured,
        )
    };
    let (up0, link0) = nc(&s0);
    let s1 = vm.status_when(WAIT, |s| nc(s).0 >= up0 + 64 && nc(s).1 >= link0 + 64);
    let (up1, link1) = nc(&s1);
    assert!(up1 >= up0 + 64, "uplink not_configured {up0} -> {up1}");
    assert!(
        link1 >= link0 + 64,
        "link not_configured {link0} -> {link1}"
    );

    vm.apply_default();
    vm.assert_pings();
    let s2 = vm.status();
    let up = malformed_burst(uplink_ep, 3, 480);
    let link = malformed_burst(link_ep, 4, 480);
    vm.send_frames(vm.host(), &n.host_veth, &up.frames);
    vm.send_frames(vm.ctr(), &n.ctr_veth, &link.frames);
    let rx = |s: &Status| {
        (
            s.interfaces.uplink.counters.rx_packets,
            s.interfaces.link.counters.rx_packets,
        )
    };
    let (rx_up, rx_link) = rx(&s2);
    vm.status_when(WAIT, |s| rx(s).0 >= rx_up + 480 && rx(s).1 >= rx_link + 480);
    // Still serving: ping on both NICs and status.
    vm.assert_pings();
    let s3 = vm.status();
    for (name, a, b, burst) in [
        ("uplink", &s2.interfaces.uplink, &s3.interfaces.uplink, &up),
        ("link", &s2.interfaces.link, &s3.interfaces.link, &link),
    ] {
        let (a, b) = (&a.counters, &b.counters);
        eprintln!("{name}: {a:?}\n  -> {b:?}");
        assert!(
            b.rx_packets >= a.rx_packets + burst.frames.len() as u64,
            "{name}: not every frame of the burst was received"
        );
        assert_eq!(
            b.drops.other_host - a.drops.other_host,
            burst.to_other_hosts as u64,
            "{name}: each frame to another MAC is one other_host drop"
        );
        assert!(b.drops.total() > a.drops.total());
    }
    assert_eq!(
        s3.interfaces.uplink.addresses,
        s2.interfaces.uplink.addresses
    );
    assert_eq!(s3.interfaces.link.addresses, s2.interfaces.link.addresses);
}

/// The garbage generator's promise (one error reply per line), checked against the
/// appliance logic on the host, so a QEMU failure above points at the VM path.
#[test]
fn garbage_lines_each_get_one_error_from_the_appliance_logic() {
    use weft_appliance::weft_netstack::smoltcp::time::Instant;
    use weft_appliance::{Appliance, BootInfo};
    let mut app = Appliance::new(
        BootInfo {
            uplink_mac: [0x52, 0x54, 0, 0, 0, 1],
            link_mac: [0x52, 0x54, 0, 0, 0, 2],
            seed: 1,
            cmdline: String::new(),
        },
        Instant::from_millis(0),
    );
    let mut out = Vec::new();
    app.control_connected(Instant::from_millis(0), &mut out);
    let mut rng = Rng::new(0x9e37_79b9);
    for i in 0..1000 {
        let mut line = garbage_line(i, &mut rng);
        line.push(b'\n');
        out.clear();
        app.control_input(Instant::from_millis(1), &line, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let replies: Vec<&str> = text.lines().collect();
        assert_eq!(
            replies.len(),
            1,
            "line {i} {:?}: {text}",
            String::from_utf8_lossy(&line)
        );
        expect_error(replies[0], "garbage");
    }
}

/// A stack that outgrows its size runs into the unmapped page under it: the console
/// says so and the VM stops, where the stack used to overwrite whatever lay below it
/// and the appliance went on with corrupted memory.
#[test]
fn a_stack_overflow_is_reported_on_the_console() {
    for machine in [Machine::Q35, Machine::Microvm] {
        let opts = BootOptions {
            machine,
            append: "weft.fault=stack".into(),
            greeting_timeout: Duration::from_secs(10),
            ..BootOptions::default()
        };
        let Err(report) = TestVm::try_boot_with("stack_overflow", opts) else {
            panic!("{machine}: the appliance greeted after a stack overflow");
        };
        assert!(
            report.contains("weft: stack overflow: the ")
                && report.contains(" KiB boot stack ran into its guard page at 0x"),
            "{machine}: no stack overflow on the console: {report}"
        );
        assert!(
            report.contains("weft: CPU exception 8 (double fault)")
                || report.contains("weft: CPU exception 14 (page fault)"),
            "{machine}: {report}"
        );
        eprintln!("{machine}: the overflow reported, the VM stopped");
    }
}
