//! Arbitrary frames on both NICs of a configured (or not) `Netstack`: it never panics,
//! every frame is counted, and whatever it transmits is a plausible Ethernet frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_netstack::smoltcp::time::{Duration, Instant};
use weft_netstack::smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use weft_netstack::{MemPort, Netstack, NicAddress, NicId, MAX_FRAME_LEN};

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut now = Instant::from_millis(1);
    let mut stack = Netstack::new(UPLINK_MAC, LINK_MAC, u64::from(flags), now);
    if flags & 1 == 0 {
        stack.configure(
            NicId::Uplink,
            Some(NicAddress {
                cidr: Ipv4Cidr::new(Ipv4Address::new(192, 0, 2, 2), 24),
                gateway: Some(Ipv4Address::new(192, 0, 2, 1)),
            }),
        );
        stack.configure(
            NicId::Link,
            Some(NicAddress {
                cidr: Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 1), 16),
                gateway: None,
            }),
        );
    }
    let mut uplink = MemPort::new(UPLINK_MAC);
    let mut link = MemPort::new(LINK_MAC);
    let mut injected = [0u64; 2];
    // Each frame: a header byte (bit 0: NIC, bit 1: poll after it, bits 2..: length
    // high bits) and a length byte, then that many bytes.
    while let [head, len_lo, tail @ ..] = rest {
        let len = ((usize::from(head >> 2) << 8) | usize::from(*len_lo)).min(tail.len());
        let (frame, after) = tail.split_at(len);
        rest = after;
        let nic = usize::from(head & 1);
        if nic == 0 {
            uplink.inject(frame);
        } else {
            link.inject(frame);
        }
        injected[nic] += 1;
        if head & 2 != 0 {
            now += Duration::from_millis(u64::from(*len_lo));
            stack.poll(now, &mut uplink, &mut link);
        }
    }
    // Drain everything that is left.
    for _ in 0..64 {
        now += Duration::from_millis(1);
        let r = stack.poll(now, &mut uplink, &mut link);
        if r.next_poll != Some(Duration::ZERO) {
            break;
        }
    }
    assert_eq!(uplink.pending_rx() + link.pending_rx(), 0);
    for (i, (id, port)) in [(NicId::Uplink, &mut uplink), (NicId::Link, &mut link)]
        .into_iter()
        .enumerate()
    {
        let counters = stack.nic(id).counters;
        assert_eq!(counters.rx_packets, injected[i]);
        let sent = port.take_transmitted();
        assert_eq!(counters.tx_packets, sent.len() as u64);
        for frame in sent {
            assert!(
                frame.len() >= 14 && frame.len() <= MAX_FRAME_LEN,
                "{}",
                frame.len()
            );
            let own = if id == NicId::Uplink {
                UPLINK_MAC
            } else {
                LINK_MAC
            };
            assert_eq!(&frame[6..12], own.as_bytes(), "source MAC is the NIC's own");
        }
    }
});
