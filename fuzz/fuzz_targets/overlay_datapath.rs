//! Arbitrary frames through a `Netstack` running the overlay (two networks, one
//! untagged and one on VLAN 200, peers resolved): on the link (raw, or tagged with a
//! chosen VLAN) and on the uplink (raw, or wrapped in valid VXLAN from a peer on a
//! chosen VNI, so the fuzzer starts deep). It never panics, counts every frame, sends
//! only from its own MACs on the uplink, and every VXLAN packet it sends carries a
//! configured VNI to a peer of that network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_netstack::base::VlanId;
use weft_netstack::smoltcp::time::{Duration, Instant};
use weft_netstack::wire::probe;
use weft_netstack::wire::vlan;
use weft_netstack::MemPort;

#[path = "common/overlay_grid.rs"]
mod overlay_grid;

use overlay_grid::*;

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::from_millis(1);
    let mut s = overlay_stack(now);
    let mut uplink = MemPort::new(UPLINK_MAC);
    let mut link = MemPort::new(LINK_MAC);
    // The peers answer ARP, so traffic can flow to them.
    for (ip, mac) in PEERS {
        let mut reply = probe::arp_request(mac, ip, UPLINK_IP);
        reply[..6].copy_from_slice(&UPLINK_MAC.0);
        reply[14 + 7] = 2;
        uplink.inject(&reply);
    }
    let mut injected = [PEERS.len() as u64, 0];
    let mut rest = data;
    // Each frame: a header byte (bits 0-1: how, bit 2: poll after it, bits 3..: VNI /
    // VLAN choice), a length byte, then that many bytes.
    while let [head, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (frame, after) = tail.split_at(len);
        rest = after;
        let pick = u32::from(head >> 3);
        match head & 3 {
            0 => {
                uplink.inject(frame);
                injected[0] += 1;
            }
            1 => {
                let vni = [100, 200, pick][pick as usize % 3];
                uplink.inject(&from_peer(pick as usize, vni, frame));
                injected[0] += 1;
            }
            2 => {
                link.inject(frame);
                injected[1] += 1;
            }
            _ => {
                let vid = [200u16, 1, 4094][pick as usize % 3];
                link.inject(&vlan::tag(frame.to_vec(), VlanId::new(vid)));
                injected[1] += 1;
            }
        }
        if head & 4 != 0 {
            now += Duration::from_millis(u64::from(pick) * 40);
            s.poll(now, &mut uplink, &mut link);
        }
    }
    drain_and_check(&mut s, &mut uplink, &mut link, now, injected);
});
