//! Where the answers of the appliance's link interface go: smoltcp knows nothing of VLANs
//! or VNIs, so the datapath remembers which segment each host that talked to the
//! interface was on, by MAC and by IPv4 address, and sends the interface's frames there.
//! Bounded; nothing here sends or decides anything else.

use alloc::collections::BTreeMap;

use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, Ipv4Address, Ipv4Packet,
};

use crate::base::Vni;
use crate::stage::route::Segment;

/// At most this many hosts are remembered per table of `ReplyRoutes`.
pub const REPLY_ROUTES: usize = 1024;

/// Which segment each host that talked to the appliance's link interface was on, so
/// that the interface's answers go back there (smoltcp itself knows nothing of VLANs
/// or VNIs). Bounded: a full table starts over, and entries are learned again from the
/// next frame.
#[derive(Debug, Clone, Default)]
pub(super) struct ReplyRoutes {
    by_mac: BTreeMap<EthernetAddress, Segment>,
    by_ip: BTreeMap<Ipv4Address, Segment>,
}

fn remember<K: Ord>(map: &mut BTreeMap<K, Segment>, key: K, seg: Segment) {
    if map.len() >= REPLY_ROUTES && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, seg);
}

impl ReplyRoutes {
    /// `frame` is about to reach the interface from `seg`.
    pub(super) fn record(&mut self, frame: &[u8], seg: Segment) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        if eth.src_addr().is_unicast() {
            remember(&mut self.by_mac, eth.src_addr(), seg);
        }
        if let Some(ip) = sender_ip(&eth).filter(|ip| is_host(*ip)) {
            remember(&mut self.by_ip, ip, seg);
        }
    }

    /// Where the interface's `frame` goes; `None`: nothing says, every segment.
    pub(super) fn route(&self, frame: &[u8]) -> Option<Segment> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let dst = eth.dst_addr();
        if dst.is_unicast() {
            return self.by_mac.get(&dst).copied();
        }
        // A broadcast ARP request: the segment of the host it asks for.
        let packet = ArpPacket::new_checked(eth.payload()).ok()?;
        match ArpRepr::parse(&packet).ok()? {
            ArpRepr::EthernetIpv4 {
                target_protocol_addr,
                ..
            } if eth.ethertype() == EthernetProtocol::Arp => {
                self.by_ip.get(&target_protocol_addr).copied()
            }
            _ => None,
        }
    }

    pub(super) fn forget(&mut self, vni: Vni) {
        self.by_mac.retain(|_, s| *s != Segment::Network(vni));
        self.by_ip.retain(|_, s| *s != Segment::Network(vni));
    }
}

/// Whether `ip` can be one host's address.
fn is_host(ip: Ipv4Address) -> bool {
    !(ip.is_broadcast() || ip.is_multicast() || ip.is_unspecified())
}

/// The IPv4 sender of an ARP or IPv4 frame.
fn sender_ip(eth: &EthernetFrame<&[u8]>) -> Option<Ipv4Address> {
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let packet = ArpPacket::new_checked(eth.payload()).ok()?;
            match ArpRepr::parse(&packet).ok()? {
                ArpRepr::EthernetIpv4 {
                    source_protocol_addr,
                    ..
                } => Some(source_protocol_addr),
                _ => None,
            }
        }
        EthernetProtocol::Ipv4 => Ipv4Packet::new_checked(eth.payload())
            .ok()
            .map(|p| p.src_addr()),
        _ => None,
    }
}
