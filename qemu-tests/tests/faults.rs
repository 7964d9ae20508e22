//! Faults around one appliance (issue 20): its taps taken down and up again, and the
//! uplink neighbour replaced by a different MAC behind the same address. Traffic
//! resumes by itself each time, within a bound the test states and prints.

use std::time::{Duration, Instant};

use weft_image::netns::Netns;
use weft_qemu_tests::{TestVm, LINK_ADDR, UPLINK_ADDR};

const HOST_ADDR: &str = "192.0.2.1";

/// Pings `addr` from `ns` once a second until a reply comes; how long that took.
fn until_reply(ns: &Netns, addr: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let ok = ns
            .command("ping")
            .args(["-c", "1", "-W", "1", addr])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{addr} silent from {} for {within:?}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn taps_down_and_up_then_traffic_resumes() {
    let vm = TestVm::boot("faults_taps");
    vm.apply_default();
    vm.assert_pings();
    // Container -> uplink-side host, masqueraded: both taps and both neighbours.
    until_reply(vm.ctr(), HOST_ADDR, Duration::from_secs(20));
    let names = &vm.topo.names;
    for (tap, what) in [(&names.uplink_tap, "uplink"), (&names.link_tap, "link")] {
        vm.topo.hv.ip(&["link", "set", tap, "down"]).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            vm.no_answer(vm.ctr(), HOST_ADDR),
            "{what} tap down but traffic passed"
        );
        vm.topo.hv.ip(&["link", "set", tap, "up"]).unwrap();
        let took = until_reply(vm.ctr(), HOST_ADDR, Duration::from_secs(30));
        eprintln!("faults_taps: {what} tap up again, traffic back after {took:?}");
        until_reply(vm.host(), UPLINK_ADDR, Duration::from_secs(10));
        until_reply(vm.ctr(), LINK_ADDR, Duration::from_secs(10));
    }
    // The appliance kept serving through it.
    let st = vm.status();
    assert!(st.configured);
}

#[test]
fn a_neighbour_behind_the_same_address_with_a_new_mac_is_found_again() {
    let vm = TestVm::boot("faults_mac");
    vm.apply_default();
    vm.assert_pings();
    until_reply(vm.ctr(), HOST_ADDR, Duration::from_secs(20));
    // The uplink-side host is replaced: same address, another MAC, and no gratuitous
    // ARP to announce it (the harder case).
    let veth = &vm.topo.names.host_veth;
    vm.host()
        .ip(&["link", "set", veth, "address", "02:00:00:00:bb:01"])
        .unwrap();
    let took = until_reply(vm.ctr(), HOST_ADDR, Duration::from_secs(90));
    eprintln!("faults_mac: new MAC behind {HOST_ADDR} found again after {took:?}");
    // And the other way round: the host reaches the appliance at once.
    until_reply(vm.host(), UPLINK_ADDR, Duration::from_secs(10));
}
