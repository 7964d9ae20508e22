//! Arbitrary frames on both NICs of a configured `Netstack` with the NAT router running
//! (one published TCP and UDP port): it never panics, and whatever it transmits is a
//! plausible Ethernet frame from the NIC's own MAC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_netstack::base::Transport;
use weft_netstack::smoltcp::time::{Duration, Instant};
use weft_netstack::smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use weft_netstack::stage::nat::{Nat, NatConfig, PublishRule};
use weft_netstack::stage::route::Router;
use weft_netstack::{MemPort, Netstack, NicAddress, NicId, MAX_FRAME_LEN};

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    let mut now = Instant::from_millis(1);
    let mut stack = Netstack::new(UPLINK_MAC, LINK_MAC, u64::from(seed), now);
    let uplink_ip = Ipv4Address::new(192, 0, 2, 2);
    let link = Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 1), 16);
    stack.configure(
        NicId::Uplink,
        Some(NicAddress {
            cidr: Ipv4Cidr::new(uplink_ip, 24),
            gateway: Some(Ipv4Address::new(192, 0, 2, 1)),
        }),
    );
    stack.configure(
        NicId::Link,
        Some(NicAddress {
            cidr: link,
            gateway: None,
        }),
    );
    let mut config = NatConfig::new(uplink_ip, link.address(), link);
    config.conntrack.capacity = 64;
    let mut nat = Nat::new(config, u64::from(seed));
    for proto in [Transport::Tcp, Transport::Udp] {
        let _ = nat.add_publish(PublishRule {
            proto,
            host_port: 8080,
            container_address: Ipv4Address::new(10, 81, 128, 2),
            container_port: 80,
        });
    }
    stack.set_router(Some(Router::new(nat)));
    let mut uplink = MemPort::new(UPLINK_MAC);
    let mut link_port = MemPort::new(LINK_MAC);
    // Each frame: a header byte (bit 0: NIC, bit 1: poll after it, bits 2..: length
    // high bits) and a length byte, then that many bytes.
    while let [head, len_lo, tail @ ..] = rest {
        let len = ((usize::from(head >> 2) << 8) | usize::from(*len_lo)).min(tail.len());
        let (frame, after) = tail.split_at(len);
        rest = after;
        if head & 1 == 0 {
            uplink.inject(frame);
        } else {
            link_port.inject(frame);
        }
        if head & 2 != 0 {
            now += Duration::from_millis(u64::from(*len_lo) * 100);
            stack.poll(now, &mut uplink, &mut link_port);
        }
    }
    for _ in 0..64 {
        now += Duration::from_millis(1);
        let r = stack.poll(now, &mut uplink, &mut link_port);
        if r.next_poll != Some(Duration::ZERO) {
            break;
        }
    }
    for (own, port) in [(UPLINK_MAC, &mut uplink), (LINK_MAC, &mut link_port)] {
        for frame in port.take_transmitted() {
            assert!(frame.len() >= 14 && frame.len() <= MAX_FRAME_LEN);
            assert_eq!(&frame[6..12], &own.0[..]);
        }
    }
});
