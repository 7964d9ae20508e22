//! Issue 18's virtio-net offloads end to end: two wefts carry iperf3 TCP between their
//! containers over VXLAN while the container links negotiate checksums and TCP
//! super-frames (QEMU's tap offers them; the containers' kernels send and take
//! 64 KiB frames), with only the device's side (`weft.offload=tx`) and with
//! `weft.offload=off`. Every way the transfer completes, `status` says what was
//! negotiated and what the offloads did, and tshark finds every IPv4, UDP and TCP
//! checksum on the underlay right (a super-frame must leave as MTU-sized datagrams,
//! never malformed). A header the link's device should never send is refused and
//! counted.

use std::time::Duration;

use serde_json::{json, Value};
use weft_appliance::protocol::NicOffloads;
use weft_image::qemu::Machine;
use weft_qemu_tests::frames::{self, Endpoints, VnetHdr};
use weft_qemu_tests::grid::{iperf3, set_ctr_mtu, two_on_underlay, weft_ctl, VXLAN_MTU};
use weft_qemu_tests::tshark::Tshark;
use weft_qemu_tests::{mac_of, BootOptions, TestVm, LINK_ADDR};

const W1: &str = "192.0.2.11";
const W2: &str = "192.0.2.12";
/// Frames kept of each direction's run: enough to hold super-frames cut and merged
/// thousands of times, few enough for tshark to check in seconds.
const CAPTURED: usize = 20_000;

fn document(n: u8, other: u8) -> Value {
    json!({
        "uplink": {"address": format!("192.0.2.1{n}/24"), "gateway": "192.0.2.1"},
        "link": {"address": format!("10.81.0.{n}/16")},
        "grid": {"node": n},
        "networks": [{"name": "grid", "vni": 100}],
        "peers": [{"node": other, "address": format!("192.0.2.1{other}"), "networks": ["grid"]}],
    })
}

fn link_offloads(vm: &TestVm) -> NicOffloads {
    vm.status()
        .offloads
        .unwrap_or_else(|| panic!("{}: status has no offloads", vm.test))
        .link
}

/// The link's line of `weft ctl status`, as an operator reads it.
fn ctl_link_offloads(vm: &TestVm) -> String {
    let (code, out, err) = weft_ctl(&vm.control, &["status"]);
    assert_eq!(code, 0, "{}: weft ctl status: {err}", vm.test);
    out.lines()
        .find(|l| l.starts_with("offloads on link: "))
        .unwrap_or_else(|| panic!("{}: no link offloads in weft ctl status:\n{out}", vm.test))
        .to_string()
}

/// Packets of the capture from either weft that match `which` with the IPv4, UDP and
/// TCP checksums verified, as tshark prints them.
fn from_wefts(pcap: &std::path::Path, which: &str) -> Vec<String> {
    let mut tshark = Tshark::file(pcap).decode_as("udp.port==4789,vxlan");
    for pref in [
        "ip.check_checksum:TRUE",
        "udp.check_checksum:TRUE",
        "tcp.check_checksum:TRUE",
        "tcp.analyze_sequence_numbers:FALSE",
        "tcp.desegment_tcp_streams:FALSE",
    ] {
        tshark = tshark.pref(pref);
    }
    let filter = format!("(ip.src == {W1} || ip.src == {W2}) && ({which})");
    tshark
        .lines(&filter, &[])
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Boots two wefts with `append` on their command lines, runs iperf3 both ways between
/// their containers over the overlay, and checks the underlay; returns node 1's link
/// offloads after the runs.
fn iperf3_over_vxlan(test: &str, append: &str) -> NicOffloads {
    let (w1, w2, ul) = two_on_underlay(
        test,
        Machine::Q35,
        ["10.81.128.11/16", "10.81.128.12/16"],
        Some(append),
    );
    set_ctr_mtu(&[&w1, &w2], VXLAN_MTU);
    w1.apply_json(&document(1, 2));
    w2.apply_json(&document(2, 1));
    let (c1, c2) = (w1.ctr(), w2.ctr());
    let mut pcaps = Vec::new();
    for reverse in [false, true] {
        let pcap = w1.dir.join(format!("underlay-{reverse}.pcap"));
        let mut cap = ul
            .capture_first(&pcap, CAPTURED)
            .expect("tcpdump on the underlay");
        let r = iperf3(c2, c1, "10.81.128.12", 2, reverse)
            .unwrap_or_else(|e| panic!("{test}: iperf3 (reverse {reverse}): {e:#}"));
        cap.stop();
        assert!(r.sent_bytes > 0 && r.received_bytes > 0, "{test}: {r:?}");
        eprintln!(
            "{test}: iperf3 weft 1 -> weft 2{}: {:.1} Mbit/s",
            if reverse { " (reverse)" } else { "" },
            r.mbit_per_s
        );
        pcaps.push(pcap);
    }
    // The counters are read while both VMs are surely up; checking the captures can
    // take minutes on a slow machine.
    let (o1, o2) = (link_offloads(&w1), link_offloads(&w2));
    let line = ctl_link_offloads(&w1);
    eprintln!("{test}: weft ctl status on node 1: {line}");
    let expected = match append {
        "" => "offloads on link: csum guest_csum host_tso4 guest_tso4 mrg_rxbuf  rx: super_frames=",
        "weft.offload=tx" => "offloads on link: csum host_tso4  rx: super_frames=0 ",
        _ => "offloads on link: none",
    };
    assert!(line.starts_with(expected), "{test}: {line}");
    eprintln!("{test}: node 1 link offloads {o1:?}");
    eprintln!("{test}: node 2 link offloads {o2:?}");
    for o in [o1, o2] {
        assert_eq!(o.rx_refused, 0, "{test}: {o:?}");
        assert_eq!(o.tx_bad_checksum, 0, "{test}: {o:?}");
    }
    for pcap in &pcaps {
        // A TCP checksum of 0xFFFF where 0x0000 is meant is right (every receiver's
        // sum comes out the same); Wireshark flags it after RFC 1624 as
        // `tcp.checksum.ffff`. The containers' Linux writes it itself when it completes
        // a zero checksum in software (`skb_checksum_help`'s CSUM_MANGLED_0), which it
        // does when the link takes no offloads, and weft forwards the segment as it came.
        let bad = from_wefts(
            pcap,
            "ip.checksum.status == 0 || udp.checksum.status == 0 \
             || (tcp.checksum.status == 0 && !tcp.checksum.ffff) || _ws.malformed \
             || frame.len > 1514",
        );
        let good = from_wefts(pcap, "vxlan && tcp.checksum.status == 1").len();
        assert!(
            good > 1000,
            "{test}: only {good} VXLAN TCP segments with a verified checksum in {}",
            pcap.display()
        );
        eprintln!(
            "{test}: {good} VXLAN TCP segments in {}, every checksum right",
            pcap.display()
        );
        assert!(
            bad.is_empty(),
            "{test}: {} packets with bad checksums on the underlay, first: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        let _ = std::fs::remove_file(pcap);
    }
    o1
}

#[test]
fn tcp_super_frames_cross_the_overlay_as_valid_datagrams_with_offloads_on_tx_only_and_off() {
    let on = iperf3_over_vxlan("offload_on", "");
    assert!(
        on.guest_tso4 && on.host_tso4 && on.guest_csum && on.csum && on.mrg_rxbuf,
        "the link negotiated less than QEMU's tap offers: {on:?}"
    );
    assert!(
        on.rx_super_frames > 0 && on.rx_segments > on.rx_super_frames,
        "no super-frames came from the container: {on:?}"
    );
    assert!(
        on.tx_super_frames > 0 && on.tx_merged_segments > on.tx_super_frames,
        "nothing was merged for the container: {on:?}"
    );

    let tx = iperf3_over_vxlan("offload_tx", "weft.offload=tx");
    assert!(
        tx.csum && tx.host_tso4 && !tx.guest_csum && !tx.guest_tso4 && !tx.mrg_rxbuf,
        "weft.offload=tx took more or less than the device's side: {tx:?}"
    );
    assert!(
        tx.rx_super_frames == 0 && tx.tx_super_frames > 0,
        "with weft.offload=tx nothing but merging should happen: {tx:?}"
    );

    let off = iperf3_over_vxlan("offload_off", "weft.offload=off");
    assert_eq!(
        off,
        NicOffloads::default(),
        "weft.offload=off left something on"
    );
}

/// The link's device hands weft whatever virtio-net header the host's tap built, and a
/// packet socket on the tap with `PACKET_VNET_HDR` sets that header. A DNS query whose
/// UDP checksum is left to the device is completed and answered; the same query with
/// its checksum field an odd number of bytes from the start (no value written there can
/// be right, and the kernel passes it on) is refused and counted, never answered; the
/// next good one is answered again. A TCP super-frame with a segment size that would
/// cut it into more segments than the driver takes is refused whole.
#[test]
fn a_partial_checksum_from_the_link_is_completed_and_a_malformed_header_refused() {
    // Offloads on whatever WEFT_TEST_APPEND says: a partial checksum reaches weft only
    // when it took GUEST_CSUM; without it, the host completes the checksum before weft
    // sees the frame, and there is nothing for this test to check.
    let vm = TestVm::boot_with(
        "offload_vnet_hdr",
        BootOptions {
            append: String::new(),
            ..BootOptions::default()
        },
    );
    vm.apply_json(&json!({
        "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
        "link": {"address": format!("{LINK_ADDR}/16")},
        "dns": {"grid": "testgrid"},
    }));
    let ep = Endpoints {
        dst_mac: vm.link_mac,
        dst_ip: LINK_ADDR.parse().unwrap(),
        src_mac: mac_of(vm.ctr(), &vm.topo.names.ctr_veth),
        src_ip: "10.81.128.2".parse().unwrap(),
    };
    // A query for `weft.` A: header (RD), one question.
    let mut query = vec![0x7e, 0x57, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 4];
    query.extend(b"weft");
    query.extend([0, 0, 1, 0, 1]);
    let frame = frames::udp_partial_csum(ep, 40_053, 53, &query);
    let counters = |s: &weft_appliance::Status| {
        let o = &s.offloads.as_ref().expect("status has offloads").link;
        let queries = s.dns.as_ref().expect("status has dns").counters.queries;
        (o.rx_csum_completed, o.rx_refused, queries)
    };
    // Sends the query behind `header` and waits until the driver counted it and, if it
    // went on, the DNS service did; then (completed, refused, queries) before and after.
    let send = |header: VnetHdr| {
        let before = counters(&vm.status());
        let one = [(header, frame.clone())];
        frames::send_with_vnet_hdr(&vm.topo.hv, &vm.topo.names.link_tap, &one)
            .unwrap_or_else(|e| panic!("{}: {e:#}", vm.test));
        let after = counters(&vm.status_when(Duration::from_secs(10), |s| {
            let (completed, refused, queries) = counters(s);
            refused > before.1 || (completed > before.0 && queries > before.2)
        }));
        eprintln!(
            "{}: {header:?}: (completed, refused, queries) {before:?} -> {after:?}",
            vm.test
        );
        (before, after)
    };

    let good = VnetHdr::needs_csum(frames::L4_START, 6);
    let (b, a) = send(good);
    assert!(
        a.0 > b.0,
        "{}: the partial checksum was not completed",
        vm.test
    );
    assert_eq!(
        (a.1, a.2),
        (b.1, b.2 + 1),
        "{}: completed query not answered",
        vm.test
    );

    let odd = VnetHdr::needs_csum(frames::L4_START, 7);
    let (b, a) = send(odd);
    assert_eq!(
        a.1,
        b.1 + 1,
        "{}: the odd checksum offset was not refused",
        vm.test
    );
    // A turn of the main loop later, still nothing reached the DNS service.
    std::thread::sleep(Duration::from_secs(1));
    let later = counters(&vm.status());
    assert_eq!(
        (a.2, later.2),
        (b.2, b.2),
        "{}: a refused frame reached the DNS service",
        vm.test
    );
    let line = ctl_link_offloads(&vm);
    assert!(line.contains(" refused=1 "), "{}: {line}", vm.test);

    let (b, a) = send(good);
    assert_eq!(
        (a.1, a.2),
        (b.1, b.2 + 1),
        "{}: no answer after a refusal",
        vm.test
    );

    // A TCP super-frame whose segment size would cut it into 250 segments: more than
    // the driver cuts one frame into (it would flood the buffer pool).
    let before = vm.status().offloads.unwrap().link;
    let tiny_mss = VnetHdr {
        gso_type: 1, // VIRTIO_NET_HDR_GSO_TCPV4
        hdr_len: frames::L4_START + 20,
        gso_size: 8,
        ..VnetHdr::needs_csum(frames::L4_START, 16)
    };
    let super_frame = frames::tcp_partial_csum(ep, 40_080, 80, &[0x55; 2000]);
    frames::send_with_vnet_hdr(
        &vm.topo.hv,
        &vm.topo.names.link_tap,
        &[(tiny_mss, super_frame)],
    )
    .unwrap_or_else(|e| panic!("{}: {e:#}", vm.test));
    let after = vm
        .status_when(Duration::from_secs(10), |s| {
            let o = &s.offloads.as_ref().unwrap().link;
            o.rx_refused > before.rx_refused || o.rx_segments > before.rx_segments
        })
        .offloads
        .unwrap()
        .link;
    eprintln!("{}: tiny MSS super-frame: {before:?} -> {after:?}", vm.test);
    assert_eq!(
        after.rx_refused,
        before.rx_refused + 1,
        "{}: not refused",
        vm.test
    );
    assert_eq!(
        after.rx_segments, before.rx_segments,
        "{}: segments went on",
        vm.test
    );
}
