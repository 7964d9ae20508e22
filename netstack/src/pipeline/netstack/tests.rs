//! The netstack's own poll loop on two in-memory ports: ARP and ping answered on each
//! NIC, unconfigured and garbage frames counted as named drops, batching, and the
//! counters as `status` shows them.

use super::*;
use crate::base::test_rng::Rng;
use crate::base::MAX_FRAME_LEN;
use crate::pipeline::counters::NicDrop;
use crate::pipeline::nic::RX_BATCH;
use crate::pipeline::port::MemPort;
use crate::table::rate_limit::ERROR_BURST;
use crate::wire::probe::{self, Echo};
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, Ipv4Address, Ipv4Cidr};

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x01]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 0x02]);
const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x99]);
const UPLINK_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 2);
const GATEWAY_IP: Ipv4Address = Ipv4Address::new(192, 0, 2, 1);
const LINK_IP: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);

struct Rig {
    stack: Netstack,
    uplink: MemPort,
    link: MemPort,
    now: Instant,
}

impl Rig {
    fn new() -> Self {
        let now = Instant::from_millis(1_000);
        Rig {
            stack: Netstack::new(UPLINK_MAC, LINK_MAC, 42, now),
            uplink: MemPort::new(UPLINK_MAC),
            link: MemPort::new(LINK_MAC),
            now,
        }
    }

    fn configured() -> Self {
        let mut rig = Rig::new();
        rig.stack.configure(
            NicId::Uplink,
            Some(NicAddress {
                cidr: Ipv4Cidr::new(UPLINK_IP, 24),
                gateway: Some(GATEWAY_IP),
            }),
        );
        rig.stack.configure(
            NicId::Link,
            Some(NicAddress {
                cidr: Ipv4Cidr::new(LINK_IP, 16),
                gateway: None,
            }),
        );
        rig
    }

    fn port(&mut self, id: NicId) -> &mut MemPort {
        match id {
            NicId::Uplink => &mut self.uplink,
            NicId::Link => &mut self.link,
        }
    }

    fn poll(&mut self) -> PollResult {
        self.now += Duration::from_millis(1);
        self.stack.poll(self.now, &mut self.uplink, &mut self.link)
    }

    /// Inject `frame` on `id`, poll, and return what `id` transmitted.
    fn exchange(&mut self, id: NicId, frame: &[u8]) -> Vec<Vec<u8>> {
        self.port(id).inject(frame);
        self.poll();
        self.port(id).take_transmitted()
    }
}

fn peer_ip(id: NicId) -> Ipv4Address {
    match id {
        NicId::Uplink => Ipv4Address::new(192, 0, 2, 77),
        NicId::Link => Ipv4Address::new(10, 81, 3, 4),
    }
}

fn own(id: NicId) -> (EthernetAddress, Ipv4Address) {
    match id {
        NicId::Uplink => (UPLINK_MAC, UPLINK_IP),
        NicId::Link => (LINK_MAC, LINK_IP),
    }
}

#[test]
fn arp_request_for_own_address_gets_reply_with_own_mac() {
    for id in NicId::ALL {
        let mut rig = Rig::configured();
        let (mac, ip) = own(id);
        let out = rig.exchange(id, &probe::arp_request(PEER_MAC, peer_ip(id), ip));
        assert_eq!(out.len(), 1, "{id:?}: one ARP reply");
        let reply = probe::parse_arp_reply(&out[0]).expect("an ARP reply");
        assert_eq!(reply.frame_dst, PEER_MAC);
        assert_eq!(reply.sender_mac, mac);
        assert_eq!(reply.sender_ip, ip);
        assert_eq!(reply.target_mac, PEER_MAC);
        assert_eq!(reply.target_ip, peer_ip(id));
        let c = rig.stack.nic(id).counters;
        assert_eq!((c.rx_packets, c.tx_packets), (1, 1));
        assert_eq!(c.rx_bytes, 42);
        assert_eq!(c.tx_bytes, out[0].len() as u64);
        assert_eq!(c.drops.total(), 0);
    }
}

#[test]
fn arp_for_another_address_or_other_nic_is_not_answered() {
    let mut rig = Rig::configured();
    let other = Ipv4Address::new(192, 0, 2, 3);
    assert!(rig
        .exchange(
            NicId::Uplink,
            &probe::arp_request(PEER_MAC, peer_ip(NicId::Uplink), other)
        )
        .is_empty());
    // The link's address is not the uplink's business, and vice versa.
    assert!(rig
        .exchange(
            NicId::Uplink,
            &probe::arp_request(PEER_MAC, peer_ip(NicId::Uplink), LINK_IP)
        )
        .is_empty());
    assert!(rig
        .exchange(
            NicId::Link,
            &probe::arp_request(PEER_MAC, peer_ip(NicId::Link), UPLINK_IP)
        )
        .is_empty());
    assert!(rig.link.take_transmitted().is_empty());
}

#[test]
fn icmp_echo_request_gets_echo_reply() {
    for id in NicId::ALL {
        let mut rig = Rig::configured();
        let (mac, ip) = own(id);
        // As a real peer does: ARP first (which also teaches smoltcp our MAC), then ping.
        let arp = rig.exchange(id, &probe::arp_request(PEER_MAC, peer_ip(id), ip));
        assert_eq!(arp.len(), 1);
        for seq in 0..5u16 {
            let request = Echo {
                src_mac: PEER_MAC,
                dst_mac: mac,
                src_ip: peer_ip(id),
                dst_ip: ip,
                ident: 0xbeef,
                seq_no: seq,
                data: (0..(seq as u8 * 13)).collect(),
            };
            let out = rig.exchange(id, &probe::icmp_echo_request(&request));
            assert_eq!(out.len(), 1, "{id:?} seq {seq}: one echo reply");
            let reply = probe::parse_icmp_echo_reply(&out[0]).expect("an echo reply");
            assert_eq!(
                reply,
                Echo {
                    src_mac: mac,
                    dst_mac: PEER_MAC,
                    src_ip: ip,
                    dst_ip: peer_ip(id),
                    ..request
                }
            );
        }
    }
}

#[test]
fn unconfigured_nic_answers_nothing() {
    let mut rig = Rig::new();
    for id in NicId::ALL {
        let (mac, ip) = own(id);
        assert!(rig
            .exchange(id, &probe::arp_request(PEER_MAC, peer_ip(id), ip))
            .is_empty());
        let ping = probe::icmp_echo_request(&Echo {
            src_mac: PEER_MAC,
            dst_mac: mac,
            src_ip: peer_ip(id),
            dst_ip: ip,
            ident: 1,
            seq_no: 1,
            data: Vec::new(),
        });
        assert!(rig.exchange(id, &ping).is_empty());
        let c = rig.stack.nic(id).counters;
        assert_eq!(c.rx_packets, 2);
        assert_eq!(c.drops.not_configured, 2);
        assert_eq!(c.tx_packets, 0);
    }
}

#[test]
fn garbage_frames_are_counted_drops() {
    let mut rig = Rig::configured();
    let runts: [&[u8]; 3] = [&[], &[0xff], &[0xff; 13]];
    for frame in runts {
        rig.uplink.inject(frame);
    }
    rig.uplink.inject(&[0xff; MAX_FRAME_LEN + 1]);
    let mut other = [0u8; 60];
    other[..6].copy_from_slice(&PEER_MAC.0);
    rig.uplink.inject(&other);
    rig.poll();
    assert!(rig.uplink.take_transmitted().is_empty());
    let c = rig.stack.nic(NicId::Uplink).counters;
    assert_eq!(c.rx_packets, 5);
    assert_eq!(c.drops.runt, 3);
    assert_eq!(c.drops.oversize, 1);
    assert_eq!(c.drops.other_host, 1);

    // Pseudo-random frames, broadcast or to our MAC, go to smoltcp, which copes.
    let mut rng = Rng::new(0x1234_5678);
    for i in 0..2_000usize {
        let len = 14 + i % 200;
        let mut frame = rng.bytes(len);
        let dst = if i % 2 == 0 {
            EthernetAddress::BROADCAST
        } else {
            UPLINK_MAC
        };
        frame[..6].copy_from_slice(&dst.0);
        // Every third frame claims to be IPv4 or ARP so smoltcp parses deeper.
        match i % 3 {
            0 => frame[12..14].copy_from_slice(&[0x08, 0x00]),
            1 => frame[12..14].copy_from_slice(&[0x08, 0x06]),
            _ => {}
        }
        rig.uplink.inject(&frame);
        rig.poll();
    }
    assert_eq!(rig.stack.nic(NicId::Uplink).counters.rx_packets, 2_005);
    // Still answering afterwards.
    rig.uplink.take_transmitted();
    let out = rig.exchange(
        NicId::Uplink,
        &probe::arp_request(PEER_MAC, peer_ip(NicId::Uplink), UPLINK_IP),
    );
    assert_eq!(out.len(), 1);
    assert!(probe::parse_arp_reply(&out[0]).is_some());
}

#[test]
fn reconfiguring_addresses_takes_effect() {
    let mut rig = Rig::configured();
    let peer = peer_ip(NicId::Uplink);
    assert_eq!(
        rig.exchange(
            NicId::Uplink,
            &probe::arp_request(PEER_MAC, peer, UPLINK_IP)
        )
        .len(),
        1
    );

    let new_ip = Ipv4Address::new(198, 51, 100, 9);
    rig.stack.configure(
        NicId::Uplink,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(new_ip, 24),
            gateway: None,
        }),
    );
    let new_peer = Ipv4Address::new(198, 51, 100, 10);
    assert!(rig
        .exchange(
            NicId::Uplink,
            &probe::arp_request(PEER_MAC, new_peer, UPLINK_IP)
        )
        .is_empty());
    let out = rig.exchange(
        NicId::Uplink,
        &probe::arp_request(PEER_MAC, new_peer, new_ip),
    );
    assert_eq!(
        probe::parse_arp_reply(&out[0]).map(|r| r.sender_ip),
        Some(new_ip)
    );

    rig.stack.configure(NicId::Uplink, None);
    assert!(rig
        .exchange(
            NicId::Uplink,
            &probe::arp_request(PEER_MAC, new_peer, new_ip)
        )
        .is_empty());
    assert_eq!(
        rig.stack.nic(NicId::Uplink).counters.drops.not_configured,
        1
    );
}

#[test]
fn reapplying_the_same_address_keeps_the_neighbours() {
    let mut rig = Rig::configured();
    let (mac, ip) = own(NicId::Link);
    let peer = peer_ip(NicId::Link);
    assert_eq!(
        rig.exchange(NicId::Link, &probe::arp_request(PEER_MAC, peer, ip))
            .len(),
        1
    );
    let address = rig.stack.nic(NicId::Link).iface.address();
    rig.stack.configure(NicId::Link, address);
    // The echo reply goes straight out: no ARP request for a peer already known.
    let ping = probe::icmp_echo_request(&Echo {
        src_mac: PEER_MAC,
        dst_mac: mac,
        src_ip: peer,
        dst_ip: ip,
        ident: 3,
        seq_no: 1,
        data: Vec::new(),
    });
    let out = rig.exchange(NicId::Link, &ping);
    assert_eq!(out.len(), 1);
    assert!(probe::parse_icmp_echo_reply(&out[0]).is_some(), "{out:?}");
}

fn off_subnet_ping() -> Vec<u8> {
    probe::icmp_echo_request(&Echo {
        src_mac: PEER_MAC,
        dst_mac: UPLINK_MAC,
        src_ip: Ipv4Address::new(203, 0, 113, 50),
        dst_ip: UPLINK_IP,
        ident: 9,
        seq_no: 9,
        data: Vec::new(),
    })
}

#[test]
fn default_gateway_routes_replies_off_subnet() {
    // With a gateway, the reply to an off-subnet source goes via the gateway, whose MAC
    // smoltcp first asks for.
    let mut rig = Rig::configured();
    let out = rig.exchange(NicId::Uplink, &off_subnet_ping());
    assert_eq!(out.len(), 1);
    let eth = EthernetFrame::new_checked(&out[0][..]).unwrap();
    let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    let ArpRepr::EthernetIpv4 {
        operation,
        target_protocol_addr,
        ..
    } = arp
    else {
        panic!("not an Ethernet/IPv4 ARP packet: {arp:?}");
    };
    assert_eq!(
        (operation, target_protocol_addr),
        (ArpOperation::Request, GATEWAY_IP)
    );

    // Without one, there is no route and nothing is sent.
    let mut rig = Rig::configured();
    rig.stack.configure(
        NicId::Uplink,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(UPLINK_IP, 24),
            gateway: None,
        }),
    );
    assert!(rig.exchange(NicId::Uplink, &off_subnet_ping()).is_empty());
}

#[test]
fn full_tx_queue_is_counted() {
    let mut rig = Rig::configured();
    rig.uplink = MemPort::with_tx_capacity(UPLINK_MAC, 0);
    let out = rig.exchange(
        NicId::Uplink,
        &probe::arp_request(PEER_MAC, peer_ip(NicId::Uplink), UPLINK_IP),
    );
    assert!(out.is_empty());
    let c = rig.stack.nic(NicId::Uplink).counters;
    assert_eq!((c.tx_packets, c.drops.tx_full), (0, 1));
}

#[test]
fn receive_is_batched_and_asks_to_be_polled_again() {
    let mut rig = Rig::configured();
    for _ in 0..RX_BATCH + 10 {
        rig.uplink.inject(&[0u8; 5]);
    }
    let r = rig.poll();
    assert!(r.did_work);
    assert_eq!(r.next_poll, Some(Duration::ZERO));
    assert_eq!(rig.uplink.pending_rx(), 10);
    let r = rig.poll();
    assert!(r.did_work);
    assert_eq!(rig.uplink.pending_rx(), 0);
    assert_ne!(r.next_poll, Some(Duration::ZERO));
    assert_eq!(
        rig.stack.nic(NicId::Uplink).counters.drops.runt,
        RX_BATCH as u64 + 10
    );
    let idle = rig.poll();
    assert!(!idle.did_work);
}

#[test]
fn counters_serialize_with_named_drop_reasons() {
    let mut c = NicCounters::default();
    c.received(60);
    c.dropped(NicDrop::Runt);
    c.dropped(NicDrop::TxFull);
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(
        json,
        r#"{"rx_packets":1,"rx_bytes":60,"tx_packets":0,"tx_bytes":0,"drops":{"runt":1,"oversize":0,"other_host":0,"not_configured":0,"tx_full":1,"icmp_rate_limited":0}}"#
    );
    assert_eq!(serde_json::from_str::<NicCounters>(&json).unwrap(), c);
}

/// A UDP datagram from the uplink's peer to the uplink address, port `dst_port`.
fn udp_to_uplink(dst_port: u16) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
    };
    let (src, dst) = (peer_ip(NicId::Uplink), UPLINK_IP);
    let payload = b"forged answer";
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: PEER_MAC,
        dst_addr: UPLINK_MAC,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = vec![0u8; eth.buffer_len() + ip.buffer_len() + ip.payload_len];
    let mut e = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut e);
    let mut p = Ipv4Packet::new_unchecked(e.payload_mut());
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut p, &caps);
    UdpRepr {
        src_port: 53,
        dst_port,
    }
    .emit(
        &mut UdpPacket::new_unchecked(p.payload_mut()),
        &src.into(),
        &dst.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    frame
}

#[test]
fn port_unreachable_answers_are_rate_limited_and_counted() {
    let mut rig = Rig::configured();
    let arp = rig.exchange(
        NicId::Uplink,
        &probe::arp_request(PEER_MAC, peer_ip(NicId::Uplink), UPLINK_IP),
    );
    assert_eq!(arp.len(), 1);
    let is_error = |f: &Vec<u8>| crate::wire::icmp_error::carries_error(f);

    // One datagram to a closed port gets its port unreachable, as from any host.
    let out = rig.exchange(NicId::Uplink, &udp_to_uplink(40_000));
    assert_eq!(out.iter().filter(|f| is_error(f)).count(), 1);

    // A flood of them within a few milliseconds: one burst's worth is answered, the
    // rest withheld and counted, and nothing else is lost.
    const FLOOD: u64 = 1_000;
    for i in 0..FLOOD {
        rig.uplink.inject(&udp_to_uplink(40_001 + i as u16));
    }
    while rig.poll().did_work {}
    let sent = rig.uplink.take_transmitted();
    let errors = sent.iter().filter(|f| is_error(f)).count() as u64;
    let withheld = rig
        .stack
        .nic(NicId::Uplink)
        .counters
        .drops
        .icmp_rate_limited;
    assert_eq!(errors + withheld, FLOOD);
    assert!(
        (ERROR_BURST as u64 - 1..=ERROR_BURST as u64 + 2).contains(&errors),
        "{errors} errors answered of {FLOOD}"
    );

    // A second later the bucket has refilled: the next datagram is answered again, and
    // ping answers were never limited.
    rig.now += Duration::from_secs(1);
    let out = rig.exchange(NicId::Uplink, &udp_to_uplink(40_000));
    assert_eq!(out.iter().filter(|f| is_error(f)).count(), 1);
    let echo = Echo {
        src_mac: PEER_MAC,
        dst_mac: UPLINK_MAC,
        src_ip: peer_ip(NicId::Uplink),
        dst_ip: UPLINK_IP,
        ident: 7,
        seq_no: 1,
        data: vec![1, 2, 3],
    };
    for _ in 0..ERROR_BURST * 2 {
        rig.uplink.inject(&probe::icmp_echo_request(&echo));
    }
    while rig.poll().did_work {}
    let replies = rig.uplink.take_transmitted();
    assert_eq!(replies.len(), ERROR_BURST as usize * 2);
    assert!(replies
        .iter()
        .all(|f| probe::parse_icmp_echo_reply(f).is_some()));
}
