//! An `Appliance` with two in-memory ports: after `apply`, ARP and ICMP echo to both NIC
//! addresses are answered; before it, nothing is.

use serde_json::json;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Ipv4Address};
use weft_appliance::weft_netstack::base::test_rng::Rng;
use weft_appliance::weft_netstack::wire::probe::{self, Echo};
use weft_appliance::{Appliance, BootInfo, MemPort};

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xaa, 0x00, 0x01]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xaa, 0x00, 0x02]);
const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x33]);

struct Rig {
    app: Appliance,
    uplink: MemPort,
    link: MemPort,
    now: Instant,
}

impl Rig {
    fn new() -> Self {
        let now = Instant::from_millis(100);
        let app = Appliance::new(
            BootInfo {
                uplink_mac: UPLINK_MAC.0,
                link_mac: LINK_MAC.0,
                seed: 1,
                cmdline: String::new(),
            },
            now,
        );
        Rig {
            app,
            uplink: MemPort::new(UPLINK_MAC),
            link: MemPort::new(LINK_MAC),
            now,
        }
    }

    fn apply(&mut self) {
        let mut out = Vec::new();
        let line = json!({"id": 1, "cmd": "apply", "args": {
            "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"}
        }});
        self.app
            .control_input(self.now, format!("{line}\n").as_bytes(), &mut out);
        let reply: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(reply["result"]["changed"], json!(true), "{reply}");
    }

    /// Inject on the uplink (`uplink == true`) or the link, poll until idle, return what it sent.
    fn exchange(&mut self, uplink: bool, frame: &[u8]) -> Vec<Vec<u8>> {
        if uplink {
            self.uplink.inject(frame);
        } else {
            self.link.inject(frame);
        }
        for _ in 0..4 {
            self.now += Duration::from_millis(1);
            let next = self.app.poll(self.now, &mut self.uplink, &mut self.link);
            if next != Some(Duration::ZERO) {
                break;
            }
        }
        let port = if uplink {
            &mut self.uplink
        } else {
            &mut self.link
        };
        port.take_transmitted()
    }
}

fn ping(peer_ip: Ipv4Address, dst_mac: EthernetAddress, dst_ip: Ipv4Address, seq: u16) -> Echo {
    Echo {
        src_mac: PEER_MAC,
        dst_mac,
        src_ip: peer_ip,
        dst_ip,
        ident: 0x77,
        seq_no: seq,
        data: b"weft packet path".to_vec(),
    }
}

#[test]
fn arp_and_ping_are_answered_on_both_nics_after_apply() {
    let mut rig = Rig::new();
    rig.apply();
    let nics = [
        (
            true,
            UPLINK_MAC,
            Ipv4Address::new(192, 0, 2, 2),
            Ipv4Address::new(192, 0, 2, 50),
        ),
        (
            false,
            LINK_MAC,
            Ipv4Address::new(10, 81, 0, 1),
            Ipv4Address::new(10, 81, 7, 7),
        ),
    ];
    for (uplink, mac, ip, peer_ip) in nics {
        let out = rig.exchange(uplink, &probe::arp_request(PEER_MAC, peer_ip, ip));
        assert_eq!(out.len(), 1);
        let arp = probe::parse_arp_reply(&out[0]).expect("ARP reply");
        assert_eq!(
            (arp.sender_mac, arp.sender_ip, arp.target_ip),
            (mac, ip, peer_ip)
        );

        for seq in 1..=3 {
            let request = ping(peer_ip, mac, ip, seq);
            let out = rig.exchange(uplink, &probe::icmp_echo_request(&request));
            assert_eq!(out.len(), 1, "echo reply on {mac}");
            let reply = probe::parse_icmp_echo_reply(&out[0]).expect("echo reply");
            assert_eq!(
                (reply.src_ip, reply.dst_ip, reply.dst_mac),
                (ip, peer_ip, PEER_MAC)
            );
            assert_eq!(
                (reply.ident, reply.seq_no, &reply.data),
                (request.ident, seq, &request.data)
            );
        }
    }
    // The counters in status saw it.
    let mut out = Vec::new();
    rig.app
        .control_input(rig.now, b"{\"id\":2,\"cmd\":\"status\"}\n", &mut out);
    let status: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for nic in ["uplink", "link"] {
        let c = &status["result"]["interfaces"][nic]["counters"];
        assert_eq!(c["rx_packets"], json!(4), "{nic}: {c}");
        assert_eq!(c["tx_packets"], json!(4), "{nic}: {c}");
    }
}

#[test]
fn nothing_is_answered_before_apply() {
    let mut rig = Rig::new();
    let ip = Ipv4Address::new(192, 0, 2, 2);
    assert!(rig
        .exchange(
            true,
            &probe::arp_request(PEER_MAC, Ipv4Address::new(192, 0, 2, 50), ip)
        )
        .is_empty());
    assert!(rig
        .exchange(
            false,
            &probe::arp_request(PEER_MAC, Ipv4Address::new(10, 81, 0, 9), ip)
        )
        .is_empty());
    assert_eq!(
        rig.app
            .netstack()
            .nic(weft_appliance::weft_netstack::NicId::Uplink)
            .counters
            .drops
            .not_configured,
        1
    );
    rig.apply();
    assert_eq!(
        rig.exchange(
            true,
            &probe::arp_request(PEER_MAC, Ipv4Address::new(192, 0, 2, 50), ip)
        )
        .len(),
        1
    );
}

#[test]
fn malformed_frames_leave_the_appliance_answering() {
    let mut rig = Rig::new();
    rig.apply();
    let mut rng = Rng::new(0xdead_beef);
    for i in 0..3_000usize {
        let len = i % 1_600;
        let mut frame = rng.bytes(len);
        if len >= 14 && i % 2 == 0 {
            frame[..6].copy_from_slice(&[0xff; 6]);
            frame[12..14].copy_from_slice(if i % 4 == 0 {
                &[0x08, 0x00]
            } else {
                &[0x08, 0x06]
            });
        }
        rig.exchange(i % 3 == 0, &frame);
    }
    let ip = Ipv4Address::new(10, 81, 0, 1);
    let out = rig.exchange(
        false,
        &probe::icmp_echo_request(&ping(Ipv4Address::new(10, 81, 0, 2), LINK_MAC, ip, 1)),
    );
    // The peer may first be asked for (ARP) if the garbage evicted it; either way we answer.
    assert!(!out.is_empty());
    let out = rig.exchange(
        false,
        &probe::arp_request(PEER_MAC, Ipv4Address::new(10, 81, 0, 2), ip),
    );
    assert!(probe::parse_arp_reply(&out[0]).is_some());
}
