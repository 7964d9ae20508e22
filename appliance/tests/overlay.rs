//! The overlay through the whole appliance: the control socket configures it (`apply`
//! with overlay sections, runtime commands) and `Appliance::poll` carries frames with
//! it. Changes at runtime keep what they do not touch: FDB entries, counters, the
//! underlay neighbours, the traffic to other peers.

use serde_json::{json, Value};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Ipv4Address};
use weft_appliance::weft_netstack::base::ports::VXLAN_PORT;
use weft_appliance::weft_netstack::wire::probe::{self, Echo};
use weft_appliance::weft_netstack::wire::vxlan;
use weft_appliance::{Appliance, BootInfo, MemPort};

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xaa, 0x00, 0x01]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xaa, 0x00, 0x02]);
const UPLINK_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 11);
const P2: Ipv4Address = Ipv4Address::new(192, 0, 2, 12);
const P3: Ipv4Address = Ipv4Address::new(192, 0, 2, 13);
const P2_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x12]);
const P3_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x13]);
const C1: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 0x01]);
const C2: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 0x02]);
const C3: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 0x03]);

struct Rig {
    app: Appliance,
    uplink: MemPort,
    link: MemPort,
    now: Instant,
    next_id: u64,
}

impl Rig {
    fn new() -> Rig {
        let now = Instant::from_millis(100);
        let info = BootInfo {
            uplink_mac: UPLINK_MAC.0,
            link_mac: LINK_MAC.0,
            seed: 1,
            cmdline: String::new(),
        };
        Rig {
            app: Appliance::new(info, now),
            uplink: MemPort::new(UPLINK_MAC),
            link: MemPort::new(LINK_MAC),
            now,
            next_id: 1,
        }
    }

    /// One request; the reply line as JSON.
    fn call(&mut self, cmd: &str, args: Value) -> Value {
        let mut line = json!({"id": self.next_id, "cmd": cmd});
        if !args.is_null() {
            line["args"] = args;
        }
        self.next_id += 1;
        let mut out = Vec::new();
        self.app
            .control_input(self.now, format!("{line}\n").as_bytes(), &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    fn ok(&mut self, cmd: &str, args: Value) -> Value {
        let reply = self.call(cmd, args.clone());
        assert!(reply.get("result").is_some(), "{cmd} {args}: {reply}");
        reply["result"].clone()
    }

    fn poll(&mut self) {
        for _ in 0..4 {
            self.now += Duration::from_millis(1);
            self.app.poll(self.now, &mut self.uplink, &mut self.link);
        }
    }

    /// `config` reads back `doc` and the overlay runs `peers` peers.
    fn runs_as(&mut self, doc: &Value, peers: usize) {
        assert_eq!(&self.ok("config", Value::Null), doc);
        let status = self.ok("status", Value::Null);
        assert_eq!(
            status["overlay"]["peers"].as_array().map(Vec::len),
            Some(peers)
        );
    }

    /// The peers whose VXLAN packets went out since the last call.
    fn vxlan_to(&mut self) -> Vec<Ipv4Address> {
        self.uplink
            .take_transmitted()
            .iter()
            .filter_map(|f| vxlan::decapsulate(f, VXLAN_PORT).ok().map(|d| d.dst_ip))
            .collect()
    }

    fn arp_reply_from(&mut self, mac: EthernetAddress, ip: Ipv4Address) {
        let mut f = probe::arp_request(mac, ip, UPLINK_IP);
        f[..6].copy_from_slice(&UPLINK_MAC.0);
        f[14 + 7] = 2;
        self.uplink.inject(&f);
        self.poll();
    }
}

fn document() -> Value {
    json!({
        "uplink": {"address": "192.0.2.11/24", "gateway": "192.0.2.1"},
        "link": {"address": "10.81.0.1/16"},
        "grid": {"node": 1},
        "networks": [{"name": "a", "vni": 100}],
        "peers": [
            {"node": 2, "address": "192.0.2.12", "networks": ["a"]},
            {"node": 3, "address": "192.0.2.13", "networks": ["a"]}
        ]
    })
}

fn ping(dst: EthernetAddress, n: u8) -> Vec<u8> {
    probe::icmp_echo_request(&Echo {
        src_mac: C1,
        dst_mac: dst,
        src_ip: Ipv4Address::new(10, 81, 128, 1),
        dst_ip: Ipv4Address::new(10, 81, 128, n),
        ident: 1,
        seq_no: 1,
        data: vec![0x77; 32],
    })
}

#[test]
fn apply_and_runtime_commands_drive_the_datapath() {
    let mut rig = Rig::new();
    rig.ok("apply", document());
    rig.poll();
    // Underlay ARP for both peers, from the uplink.
    let asked: Vec<Vec<u8>> = rig.uplink.take_transmitted();
    assert_eq!(asked.len(), 2, "one who-has per peer");
    rig.arp_reply_from(P2_MAC, P2);
    rig.arp_reply_from(P3_MAC, P3);
    rig.uplink.take_transmitted();

    rig.ok(
        "fdb-add",
        json!({"vni": 100, "mac": "02:42:0a:51:80:02", "peer": "192.0.2.12"}),
    );
    rig.ok(
        "fdb-add",
        json!({"vni": 100, "mac": "02:42:0a:51:80:03", "peer": "192.0.2.13"}),
    );
    rig.link.inject(&ping(C2, 2));
    rig.link.inject(&ping(C3, 3));
    rig.poll();
    assert_eq!(rig.vxlan_to(), vec![P2, P3], "known unicast: one peer each");

    // A third peer arrives: nothing else moves (entries, neighbours, counters stay).
    let before = rig.ok("status", Value::Null)["overlay"].clone();
    rig.ok(
        "peer-add",
        json!({"node": 4, "address": "192.0.2.14", "networks": ["a"]}),
    );
    let after = rig.ok("status", Value::Null)["overlay"].clone();
    assert_eq!(after["networks"][0]["fdb"], before["networks"][0]["fdb"]);
    assert_eq!(
        after["networks"][0]["counters"],
        before["networks"][0]["counters"]
    );
    assert_eq!(after["peers"][0], before["peers"][0]);
    assert_eq!(after["peers"].as_array().map(Vec::len), Some(3));
    rig.link.inject(&ping(C2, 2));
    rig.poll();
    let sent = rig.vxlan_to();
    assert!(sent.contains(&P2), "{sent:?}");

    // peer-remove: that peer's traffic stops (its entries went with it), the other's
    // goes on; config reflects it; peer-add brings it back.
    rig.ok("peer-remove", json!({"address": "192.0.2.12"}));
    rig.link.inject(&ping(C2, 2));
    rig.link.inject(&ping(C3, 3));
    rig.poll();
    let sent = rig.vxlan_to();
    assert!(!sent.contains(&P2), "{sent:?}");
    assert!(sent.contains(&P3), "{sent:?}");
    let cfg = rig.ok("config", Value::Null);
    assert!(cfg["peers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["node"] != json!(2)));
    rig.ok(
        "peer-add",
        json!({"node": 2, "address": "192.0.2.12", "networks": ["a"]}),
    );
    rig.ok(
        "fdb-add",
        json!({"vni": 100, "mac": "02:42:0a:51:80:02", "peer": "192.0.2.12"}),
    );
    rig.link.inject(&ping(C2, 2));
    rig.poll();
    assert_eq!(rig.vxlan_to(), vec![P2], "back, with its MAC still known");
    // Applying the document `config` returns changes nothing.
    let cfg = rig.ok("config", Value::Null);
    assert_eq!(rig.ok("apply", cfg.clone()), json!({"changed": false}));

    // A refused runtime command changes nothing either.
    let reply = rig.call(
        "peer-add",
        json!({"node": 3, "address": "192.0.2.99", "networks": ["a"]}),
    );
    assert_eq!(reply["error"]["field"], json!("node"), "{reply}");
    // The name of another network (VNI 100) for a new VNI.
    let reply = rig.call("network-add", json!({"name": "a", "vni": 200}));
    assert_eq!(reply["error"]["code"], json!("invalid_config"), "{reply}");
    assert_eq!(reply["error"]["field"], json!("name"), "{reply}");
    assert_eq!(rig.ok("config", Value::Null), cfg);
    rig.link.inject(&ping(C3, 3));
    rig.poll();
    assert_eq!(rig.vxlan_to(), vec![P3]);

    // Without the grid the overlay is gone and the link is as before the overlay.
    let mut plain = document();
    for k in ["grid", "networks", "peers"] {
        plain.as_object_mut().unwrap().remove(k);
    }
    rig.ok("apply", plain);
    assert!(rig.ok("status", Value::Null).get("overlay").is_none());
    rig.link.inject(&ping(C2, 2));
    rig.poll();
    assert!(rig.vxlan_to().is_empty());
    let reply = rig.call(
        "fdb-remove",
        json!({"vni": 100, "mac": "02:42:0a:51:80:02"}),
    );
    assert_eq!(reply["error"]["code"], json!("not_ready"), "{reply}");
}

#[test]
fn the_link_address_outside_the_grid_keeps_answering_beside_the_node_address() {
    let mut rig = Rig::new();
    let mut doc = document();
    doc["link"]["address"] = json!("172.17.0.1/16");
    rig.ok("apply", doc);
    let st = rig.ok("status", Value::Null);
    assert_eq!(
        st["interfaces"]["link"]["addresses"],
        json!(["172.17.0.1/16", "10.81.0.1/16"])
    );
    for (src, target) in [
        (
            Ipv4Address::new(172, 17, 0, 2),
            Ipv4Address::new(172, 17, 0, 1),
        ),
        (
            Ipv4Address::new(10, 81, 128, 1),
            Ipv4Address::new(10, 81, 0, 1),
        ),
    ] {
        rig.link.inject(&probe::arp_request(C1, src, target));
        rig.poll();
        let replies: Vec<_> = rig
            .link
            .take_transmitted()
            .iter()
            .filter_map(|f| probe::parse_arp_reply(f))
            .collect();
        assert_eq!(replies.len(), 1, "{target}");
        assert_eq!(replies[0].sender_ip, target);
        assert_eq!(replies[0].sender_mac, LINK_MAC);
    }
}

/// A grid of `peers` peers (nodes 2..), one network.
fn big_document(peers: u16) -> Value {
    let mut doc = document();
    doc["peers"] = (0..peers)
        .map(|i| {
            json!({"node": i + 2, "address": format!("198.51.{}.{}", 100 + i / 200, 1 + i % 200),
                   "networks": ["a"]})
        })
        .collect();
    doc
}

#[test]
fn peer_commands_change_one_peer_and_the_document_reads_back_and_reapplies() {
    let mut rig = Rig::new();
    rig.ok("apply", big_document(400));
    let before = rig.ok("config", Value::Null);

    // Refused, for what the whole document would refuse: nothing changes.
    for (args, field) in [
        (json!({"node": 300, "address": "192.0.2.99"}), "node"),
        (json!({"node": 1, "address": "192.0.2.99"}), "node"),
        (json!({"node": 900, "address": "192.0.2.11"}), "address"),
        (
            json!({"node": 900, "address": "192.0.2.99", "networks": ["z"]}),
            "networks[0]",
        ),
    ] {
        let reply = rig.call("peer-add", args.clone());
        assert_eq!(reply["error"]["code"], json!("invalid_config"), "{reply}");
        assert_eq!(reply["error"]["field"], json!(field), "{args}: {reply}");
    }
    let reply = rig.call("peer-remove", json!({"address": "192.0.2.99"}));
    assert_eq!(reply["error"]["code"], json!("not_found"), "{reply}");
    rig.runs_as(&before, 400);

    // Node 900 arrives: a container behind it is reached through it.
    let added = json!({"node": 900, "name": "far", "address": "192.0.2.90", "networks": ["a"]});
    assert_eq!(rig.ok("peer-add", added.clone()), json!({"changed": true}));
    assert_eq!(rig.ok("peer-add", added.clone()), json!({"changed": false}));
    rig.ok(
        "fdb-add",
        json!({"vni": 100, "mac": "02:42:0a:51:80:02", "peer": "192.0.2.90"}),
    );
    rig.poll();
    rig.arp_reply_from(
        EthernetAddress([0x52, 0x54, 0, 0, 0, 0x90]),
        Ipv4Address::new(192, 0, 2, 90),
    );
    rig.uplink.take_transmitted();
    rig.link.inject(&ping(C2, 2));
    rig.poll();
    assert_eq!(rig.vxlan_to(), vec![Ipv4Address::new(192, 0, 2, 90)]);
    // Its name is taken now; the document reads back with it last.
    let reply = rig.call(
        "peer-add",
        json!({"node": 901, "name": "far", "address": "192.0.2.91"}),
    );
    assert_eq!(reply["error"]["field"], json!("name"), "{reply}");
    let cfg = rig.ok("config", Value::Null);
    assert_eq!(cfg["peers"].as_array().map(Vec::len), Some(401));
    assert_eq!(cfg["peers"][400], added);
    assert_eq!(rig.ok("apply", cfg), json!({"changed": false}));

    // A peer in the middle goes: the ones after it keep their order, the next command
    // about one of them finds it.
    rig.ok("peer-remove", json!({"address": "198.51.101.1"}));
    let cfg = rig.ok("config", Value::Null);
    let mut expected = before["peers"].as_array().unwrap().clone();
    expected.remove(200);
    expected.push(added);
    assert_eq!(cfg["peers"], json!(expected));
    let moved = json!({"node": 203, "address": "198.51.101.2", "networks": []});
    assert_eq!(rig.ok("peer-add", moved.clone()), json!({"changed": true}));
    assert_eq!(rig.ok("config", Value::Null)["peers"][200], moved);
    // Node 900 goes: its traffic stops.
    rig.ok("peer-remove", json!({"address": "192.0.2.90"}));
    rig.link.inject(&ping(C2, 2));
    rig.poll();
    assert!(rig
        .vxlan_to()
        .iter()
        .all(|p| *p != Ipv4Address::new(192, 0, 2, 90)));

    // The whole first document again: brought back in place, as it was.
    assert_eq!(rig.ok("apply", before.clone()), json!({"changed": true}));
    rig.runs_as(&before, 400);
}
