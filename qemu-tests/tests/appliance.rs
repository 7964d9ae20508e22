//! Issue 2 behaviour of a booted appliance: greeting, ping on both NICs after `apply`,
//! the control commands, and an invalid `apply` that changes nothing. Each test boots
//! its own VM in its own namespaces (see `weft_qemu_tests::TestVm`). Boot, ping and
//! control run on both machines: q35 (virtio-pci) and microvm (virtio-mmio).

use serde_json::json;
use weft_appliance::protocol::{ErrorCode, Greeting};
use weft_control::client::ControlError;
use weft_control::document;
use weft_image::qemu::Machine;
use weft_qemu_tests::{TestVm, LINK_ADDR, UPLINK_ADDR};

#[test]
fn boots_to_greeting_with_both_nics_in_order() {
    boots_to_greeting_on(Machine::Q35);
}

#[test]
fn boots_to_greeting_with_both_nics_in_order_on_microvm() {
    boots_to_greeting_on(Machine::Microvm);
}

fn boots_to_greeting_on(machine: Machine) {
    let vm = TestVm::boot_on(&format!("boots_to_greeting_{machine}"), machine);
    eprintln!(
        "boot to greeting on {machine}: {} ms",
        vm.greeted_after.as_millis()
    );
    let mut c = vm.client();
    assert_eq!(c.greeting(), &Greeting::current());
    let st = c.status().unwrap();
    assert!(!st.configured);
    assert_eq!(st.protocol, 1);
    // The first virtio-net (0x3, or the first on the command line) is the uplink, the
    // second (0x4) the link.
    assert_eq!(st.interfaces.uplink.mac, vm.uplink_mac.to_string());
    assert_eq!(st.interfaces.link.mac, vm.link_mac.to_string());
    assert!(st.interfaces.uplink.addresses.is_empty());
    assert!(st.interfaces.link.addresses.is_empty());
    assert_eq!(c.config().unwrap(), None);
    assert!(c.ping().unwrap().pong);
    let later = c.status().unwrap();
    assert!(later.uptime_ms >= st.uptime_ms);
    // The kernel reports its heap: in use never above the high-water mark, which never
    // exceeds the heap and never falls.
    let (h0, h1) = (
        st.heap.expect("status.heap"),
        later.heap.expect("status.heap"),
    );
    assert!(
        h0.used_bytes > 0 && h0.used_bytes <= h0.peak_bytes,
        "{h0:?}"
    );
    assert!(h0.peak_bytes <= h0.size_bytes, "{h0:?}");
    assert!(
        h1.peak_bytes >= h0.peak_bytes && h1.size_bytes == h0.size_bytes,
        "{h0:?} then {h1:?}"
    );
    assert!(!vm.serial_log().is_empty(), "nothing on the serial console");
}

#[test]
fn answers_ping_on_both_nics_only_after_apply() {
    answers_ping_only_after_apply_on(Machine::Q35);
}

#[test]
fn answers_ping_on_both_nics_only_after_apply_on_microvm() {
    answers_ping_only_after_apply_on(Machine::Microvm);
}

fn answers_ping_only_after_apply_on(machine: Machine) {
    let vm = TestVm::boot_on(&format!("ping_after_apply_{machine}"), machine);
    // Unconfigured NICs answer nothing.
    assert!(
        vm.no_answer(vm.ctr(), LINK_ADDR),
        "unconfigured link answers ping"
    );
    assert!(
        vm.no_answer(vm.host(), UPLINK_ADDR),
        "unconfigured uplink answers ping"
    );
    let before = vm.status();
    assert!(before.interfaces.link.counters.drops.not_configured > 0);
    vm.apply_default();
    vm.assert_pings();
    let st = vm.status();
    assert!(st.configured);
    for (name, i) in [
        ("uplink", &st.interfaces.uplink),
        ("link", &st.interfaces.link),
    ] {
        assert!(i.counters.rx_packets >= 3, "{name}: {:?}", i.counters);
        assert!(i.counters.tx_packets >= 3, "{name}: {:?}", i.counters);
    }
    assert_eq!(
        st.interfaces
            .uplink
            .gateway
            .map(|g| g.to_string())
            .as_deref(),
        Some("192.0.2.1")
    );
}

#[test]
fn control_status_apply_config_and_reconfigure() {
    control_status_apply_config_on(Machine::Q35);
}

#[test]
fn control_status_apply_config_and_reconfigure_on_microvm() {
    control_status_apply_config_on(Machine::Microvm);
}

fn control_status_apply_config_on(machine: Machine) {
    let vm = TestVm::boot_on(&format!("control_apply_config_{machine}"), machine);
    let mut c = vm.client();
    assert_eq!(c.config().unwrap(), None);
    let doc = document::default_document();
    let cfg = doc.config().clone();
    assert!(c.apply(&doc).unwrap().changed);
    assert!(
        !c.apply(&doc).unwrap().changed,
        "same document again changes nothing"
    );
    assert_eq!(c.config().unwrap(), Some(cfg.clone()));
    let st = c.status().unwrap();
    assert_eq!(st.interfaces.uplink.addresses, vec![cfg.uplink.address]);
    assert_eq!(st.interfaces.link.addresses, vec![cfg.link.address]);
    drop(c);
    vm.assert_pings();

    // A new link address takes effect and the old one stops answering.
    let moved = document::document_from_toml(
        "[uplink]\naddress = \"192.0.2.2/24\"\ngateway = \"192.0.2.1\"\n[link]\naddress = \"10.81.0.254/16\"\n",
    )
    .unwrap();
    let mut c = vm.client();
    assert!(c.apply(&moved).unwrap().changed);
    assert_eq!(c.config().unwrap().as_ref(), Some(moved.config()));
    drop(c);
    vm.ping(vm.ctr(), "10.81.0.254", 2).unwrap();
    assert!(
        vm.no_answer(vm.ctr(), LINK_ADDR),
        "old address still answers"
    );
}

#[test]
fn invalid_apply_changes_nothing() {
    let vm = TestVm::boot("invalid_apply");
    let cfg = vm.apply_default();
    let good_link = json!({"address": "10.81.0.1/16"});
    let cases = [
        (
            json!({"uplink": {"address": "192.0.2.999/24"}, "link": good_link}),
            "uplink.address",
        ),
        (
            json!({"uplink": {"address": "192.0.2.0/24"}, "link": good_link}),
            "uplink.address",
        ),
        (
            json!({"uplink": {"address": "192.0.2.2/24", "colour": "red"}, "link": good_link}),
            "uplink.colour",
        ),
        (
            json!({"uplink": {"address": "192.0.2.2/24"}, "link": good_link, "extra": {}}),
            "extra",
        ),
        (
            json!({"uplink": {"address": "192.0.2.2/24", "gateway": "198.51.100.1"}, "link": good_link}),
            "uplink.gateway",
        ),
        (
            json!({"uplink": {"address": "192.0.2.2/24"}, "link": {"address": 7}}),
            "link.address",
        ),
        (
            json!({"uplink": {"address": "192.0.2.2/24"}, "link": {"address": "192.0.2.3/24"}}),
            "link.address",
        ),
        (json!({"uplink": {"address": "192.0.2.2/24"}}), "link"),
        // A flow table far beyond the VM's heap: refused, not an out-of-memory crash.
        (
            json!({"uplink": {"address": "192.0.2.2/24"}, "link": good_link, "nat": {"capacity": 16_000_000}}),
            "nat.capacity",
        ),
    ];
    let mut c = vm.client();
    for (doc, field) in &cases {
        match c.apply_value(doc) {
            Err(ControlError::Remote(e)) => {
                assert_eq!(e.code, ErrorCode::InvalidConfig, "{doc}: {}", e.message);
                assert_eq!(e.field.as_deref(), Some(*field), "{doc}: {}", e.message);
            }
            other => panic!("{doc}: expected invalid_config, got {other:?}"),
        }
        assert_eq!(c.config().unwrap(), Some(cfg.clone()), "after {doc}");
    }
    // Not a document at all.
    match c.request::<serde_json::Value>("apply", Some(json!("uplink=1"))) {
        Err(ControlError::Remote(e)) => assert!(
            matches!(e.code, ErrorCode::InvalidConfig | ErrorCode::InvalidRequest),
            "{e:?}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }
    let st = c.status().unwrap();
    assert_eq!(st.interfaces.uplink.addresses, vec![cfg.uplink.address]);
    assert_eq!(st.interfaces.link.addresses, vec![cfg.link.address]);
    drop(c);
    vm.assert_pings();
}
