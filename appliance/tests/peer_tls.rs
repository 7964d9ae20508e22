//! Two appliances with `[grid] auth = "tls"` on one underlay segment (in memory): the
//! peer channel connects them over smoltcp TCP 6783, the sleeve keys it exports carry a
//! container's frame across with nothing of it in clear, the epochs move on at the
//! configured interval and traffic keeps flowing. Credentials that are not this node's
//! are refused when applied, and nothing is applied without the key generator's seed.

use serde_json::{json, Value};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Ipv4Address};
use weft_appliance::weft_netstack::wire::probe::{self, Echo};
use weft_appliance::weft_peer::rng::Seed;
use weft_appliance::{Appliance, BootInfo, MemPort};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PKCS_ED25519,
};

/// 2026-01-01, the wall clock at boot of both appliances.
const NOW: u64 = 1_767_225_600;
const PAYLOAD: [u8; 24] = *b"weft-peer-tls-plaintext!";

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(grid: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.distinguished_name
            .push(DnType::CommonName, format!("weft grid {grid}"));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(format!("{grid}.weft.internal"))],
            excluded_subtrees: Vec::new(),
        });
        p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        p.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let pem = p.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(p, key),
        }
    }

    /// Certificate and key PEM for `node-<node>.lab.weft.internal`.
    fn issue(&self, node: u8) -> (String, String) {
        let name = format!("node-{node}.lab.weft.internal");
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut p = CertificateParams::new(vec![name.clone()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = rcgen::date_time_ymd(2025, 1, 1);
        p.not_after = rcgen::date_time_ymd(2029, 1, 1);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Node {
    app: Appliance,
    uplink: MemPort,
    link: MemPort,
    n: u8,
    next_id: u64,
}

fn mac(kind: u8, n: u8) -> EthernetAddress {
    EthernetAddress([0x52, 0x54, 0x00, kind, 0x00, n])
}

impl Node {
    fn boot(n: u8, now: Instant, seeded: bool) -> Node {
        let info = BootInfo {
            uplink_mac: mac(0xaa, n).0,
            link_mac: mac(0xbb, n).0,
            seed: 0x5eed_0000 + u64::from(n),
            cmdline: String::new(),
        };
        let mut app = Appliance::new(info, now);
        app.set_wall_clock(NOW);
        if seeded {
            app.set_key_seed(Seed::new([n; 32]));
        }
        Node {
            app,
            uplink: MemPort::new(mac(0xaa, n)),
            link: MemPort::new(mac(0xbb, n)),
            n,
            next_id: 1,
        }
    }

    fn call(&mut self, now: Instant, cmd: &str, args: Value) -> Value {
        let mut line = json!({"id": self.next_id, "cmd": cmd});
        if !args.is_null() {
            line["args"] = args;
        }
        self.next_id += 1;
        let mut out = Vec::new();
        self.app
            .control_input(now, format!("{line}\n").as_bytes(), &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    fn peer_tls(&mut self, now: Instant, peer: u8) -> Value {
        let status = self.call(now, "status", Value::Null)["result"].clone();
        let tls = &status["peer_tls"];
        tls["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["node"] == peer).cloned())
            .unwrap_or_else(|| panic!("node {}: no peer {peer} in {tls}", self.n))
    }
}

fn document(n: u8, peer: u8, ca: &Ca, cert: &(String, String)) -> Value {
    json!({
        "uplink": {"address": format!("192.0.2.1{n}/24"), "gateway": "192.0.2.1"},
        "link": {"address": format!("10.81.0.{n}/16")},
        "grid": {
            "node": n,
            "auth": "tls",
            "tls": {"ca_pem": ca.pem, "cert_pem": cert.0, "key_pem": cert.1, "rekey_secs": 2}
        },
        "networks": [{"name": "grid", "vni": 100, "mode": "sleeve"}],
        "peers": [{"node": peer, "address": format!("192.0.2.1{peer}"), "networks": ["grid"]}]
    })
}

/// A container of node 1 pings one of node 2 (unknown to the FDB: flooded to the peer).
fn container_frame() -> Vec<u8> {
    probe::icmp_echo_request(&Echo {
        src_mac: EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 0x01]),
        dst_mac: EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 0x02]),
        src_ip: Ipv4Address::new(10, 81, 128, 1),
        dst_ip: Ipv4Address::new(10, 81, 128, 2),
        ident: 7,
        seq_no: 1,
        data: PAYLOAD.to_vec(),
    })
}

fn carries_payload(frames: &[Vec<u8>]) -> bool {
    frames
        .iter()
        .any(|f| f.windows(PAYLOAD.len()).any(|w| w == PAYLOAD))
}

/// Both appliances on one segment: each poll's uplink output is the other's input.
struct Segment {
    a: Node,
    b: Node,
    now: Instant,
    /// Every frame seen on the underlay.
    wire: Vec<Vec<u8>>,
}

impl Segment {
    fn run(&mut self, for_ms: u64) {
        for _ in 0..for_ms {
            self.now += Duration::from_millis(1);
            self.a
                .app
                .poll(self.now, &mut self.a.uplink, &mut self.a.link);
            self.b
                .app
                .poll(self.now, &mut self.b.uplink, &mut self.b.link);
            for f in self.a.uplink.take_transmitted() {
                self.b.uplink.inject(&f);
                self.wire.push(f);
            }
            for f in self.b.uplink.take_transmitted() {
                self.a.uplink.inject(&f);
                self.wire.push(f);
            }
        }
    }

    /// Node 1's container sends; whether node 2 put the frame on its container link.
    fn crosses(&mut self) -> bool {
        self.b.link.take_transmitted();
        self.a.link.inject(&container_frame());
        self.run(20);
        carries_payload(&self.b.link.take_transmitted())
    }
}

#[test]
fn the_peer_channel_keys_the_sleeve_and_epochs_move_on() {
    let ca = Ca::new("lab");
    let now = Instant::from_millis(100);
    let mut seg = Segment {
        a: Node::boot(1, now, true),
        b: Node::boot(2, now, true),
        now,
        wire: Vec::new(),
    };
    let doc_a = document(1, 2, &ca, &ca.issue(1));
    let doc_b = document(2, 1, &ca, &ca.issue(2));
    for (node, doc) in [(&mut seg.a, doc_a), (&mut seg.b, doc_b)] {
        let r = node.call(now, "apply", doc);
        assert!(r.get("result").is_some(), "node {}: {r}", node.n);
    }
    let config = seg.a.call(now, "config", Value::Null)["result"].clone();
    assert_eq!(config["grid"]["tls"]["key_pem"], "set", "{config}");
    assert!(!config.to_string().contains("PRIVATE KEY"), "{config}");

    // The handshake and the key announcements, well within two seconds.
    let mut waited = 0;
    while waited < 2000 {
        seg.run(50);
        waited += 50;
        let (p, q) = (seg.a.peer_tls(seg.now, 2), seg.b.peer_tls(seg.now, 1));
        if p["state"] == "established" && q["state"] == "established" && p["tx_epoch"] == 0 {
            break;
        }
    }
    let p12 = seg.a.peer_tls(seg.now, 2);
    assert_eq!(p12["state"], "established", "{p12}");
    assert_eq!(p12["dialer"], true, "the lower id dials: {p12}");
    assert_eq!(p12["subject"], "CN=node-2.lab.weft.internal", "{p12}");
    assert!(
        p12["tx_session"].is_u64() && p12["rx_session"].is_u64(),
        "{p12}"
    );
    assert_eq!(seg.b.peer_tls(seg.now, 1)["dialer"], false);

    assert!(
        seg.crosses(),
        "node 1's container frame never reached node 2's link"
    );
    assert!(
        !carries_payload(&seg.wire),
        "the container's payload went over the underlay in clear"
    );
    let epoch = |seg: &mut Segment| seg.a.peer_tls(seg.now, 2)["tx_epoch"].as_u64().unwrap();
    let first = epoch(&mut seg);

    // Traffic across more rekey intervals of 2 s than a chain derives ahead of its
    // position (`MAX_AHEAD`): the data path (which seals and opens in place) moves the
    // chains on, so every frame crosses.
    let intervals = u64::from(weft_peer::keys::MAX_AHEAD) + 4;
    for _ in 0..intervals * 2000 / 480 {
        seg.run(480);
        assert!(seg.crosses(), "a frame was lost at {:?}", seg.now);
    }
    let later = epoch(&mut seg);
    assert!(later >= first + intervals - 1, "epochs {first} -> {later}");
    let p21 = seg.b.peer_tls(seg.now, 1);
    assert!(
        p21["rx_epoch"].as_u64().unwrap() >= first + intervals - 1,
        "{p21}"
    );
    assert!(p12_rekeyed_recently(&seg.a.peer_tls(seg.now, 2)));
    assert!(!carries_payload(&seg.wire));
}

fn p12_rekeyed_recently(p: &Value) -> bool {
    p["last_rekey_ms"].as_u64().is_some_and(|ms| ms <= 2500)
}

#[test]
fn credentials_of_another_node_or_no_key_seed_are_refused_on_apply() {
    let ca = Ca::new("lab");
    let now = Instant::from_millis(100);
    let mut node = Node::boot(1, now, true);
    let r = node.call(now, "apply", document(1, 2, &ca, &ca.issue(3)));
    assert_eq!(r["error"]["field"], "grid.tls.cert_pem", "{r}");
    let (cert, _) = ca.issue(1);
    let (_, other_key) = ca.issue(1);
    let r = node.call(now, "apply", document(1, 2, &ca, &(cert, other_key)));
    assert_eq!(r["error"]["field"], "grid.tls.key_pem", "{r}");
    let other = Ca::new("lab");
    let r = node.call(now, "apply", document(1, 2, &other, &ca.issue(1)));
    assert_eq!(r["error"]["field"], "grid.tls.cert_pem", "{r}");
    assert!(!r.to_string().contains("PRIVATE KEY"), "{r}");
    let status = node.call(now, "status", Value::Null)["result"].clone();
    assert_eq!(status["configured"], false, "nothing was applied: {status}");

    let mut unseeded = Node::boot(1, now, false);
    let r = unseeded.call(now, "apply", document(1, 2, &ca, &ca.issue(1)));
    assert_eq!(r["error"]["field"], "grid.auth", "{r}");
}
