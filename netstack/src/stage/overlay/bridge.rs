//! The L2 bridge of each overlay network on the local side: a frame from the container
//! link or the appliance's own interface is learned from, answered by ARP suppression,
//! delivered to the other local port, or flooded; what goes to peers is handed to the
//! encapsulation (`encap.rs`). Frames never cross from one network to another.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr, Ipv4Address,
    ETHERNET_HEADER_LEN,
};

use super::{Egress, Network, Overlay, OverlayDrop, OverlayVerdict};
use crate::base::Vni;
use crate::table::fdb::{Learn, Location};
use crate::wire::vlan;

/// The port a frame came in on, for the split-horizon rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ingress {
    Link,
    Appliance,
}

impl Ingress {
    pub(super) fn egress(self) -> Egress {
        match self {
            Ingress::Link => Egress::Link,
            Ingress::Appliance => Egress::Appliance,
        }
    }
}

impl Overlay {
    /// A frame received on the container link for network `vni`.
    pub fn rx_link(&mut self, now: Instant, vni: Vni, frame: &[u8]) -> OverlayVerdict {
        self.rx_local(now, vni, frame, Ingress::Link)
    }

    /// A frame the appliance's own interface sends on network `vni`.
    pub fn rx_appliance(&mut self, now: Instant, vni: Vni, frame: &[u8]) -> OverlayVerdict {
        self.rx_local(now, vni, frame, Ingress::Appliance)
    }

    fn rx_local(
        &mut self,
        now: Instant,
        vni: Vni,
        frame: &[u8],
        ingress: Ingress,
    ) -> OverlayVerdict {
        let Some(net) = self.networks.get_mut(&vni) else {
            return self.drop(None, OverlayDrop::UnknownVni);
        };
        match ingress {
            Ingress::Link => net.counters.link_rx += 1,
            Ingress::Appliance => net.counters.appliance_rx += 1,
        }
        if ingress == Ingress::Appliance && net.appliance_mac.is_none() {
            return self.drop(Some(vni), OverlayDrop::NotAttached);
        }
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return self.drop(Some(vni), OverlayDrop::Runt);
        };
        let (src, dst) = (eth.src_addr(), eth.dst_addr());
        if !src.is_unicast() {
            return self.drop(Some(vni), OverlayDrop::BadSourceMac);
        }
        if vlan::is_tag(eth.ethertype()) {
            return self.drop(Some(vni), OverlayDrop::Tagged);
        }
        if ingress == Ingress::Link
            && Some(src) != net.appliance_mac
            && net.fdb.learn(src, now) == Learn::Full
        {
            net.counters.learn_refused += 1;
        }

        if let Some(reply) = arp_suppress(net, &eth) {
            net.counters.arp_suppressed += 1;
            return OverlayVerdict::Forward(vec![(ingress.egress(), reply)]);
        }

        // Where the frame goes: local ports, and the peers (one or all).
        let mut out = Vec::new();
        let local_port = |e: Egress| e != ingress.egress();
        let to_peer: Option<Ipv4Address>;
        let flood: bool;
        if !dst.is_unicast() {
            flood = true;
            to_peer = None;
        } else if Some(dst) == net.appliance_mac {
            flood = false;
            to_peer = None;
            if local_port(Egress::Appliance) {
                out.push((Egress::Appliance, frame.to_vec()));
            }
        } else {
            match net.fdb.lookup(&dst, now) {
                Some(Location::Local) => {
                    flood = false;
                    to_peer = None;
                    if local_port(Egress::Link) {
                        out.push((Egress::Link, frame.to_vec()));
                    }
                }
                Some(Location::Remote(peer)) => {
                    flood = false;
                    to_peer = Some(peer);
                }
                None => {
                    flood = true;
                    to_peer = None;
                }
            }
        }
        if flood {
            net.counters.flooded += 1;
            if local_port(Egress::Link) {
                out.push((Egress::Link, frame.to_vec()));
            }
            if net.appliance_mac.is_some() && local_port(Egress::Appliance) {
                out.push((Egress::Appliance, frame.to_vec()));
            }
        }
        for (e, _) in &out {
            match e {
                Egress::Link => net.counters.link_tx += 1,
                Egress::Appliance => net.counters.appliance_tx += 1,
                Egress::Uplink => {}
            }
        }
        if !flood && to_peer.is_none() {
            if out.is_empty() {
                net.counters.filtered += 1;
            }
            return OverlayVerdict::Forward(out);
        }
        self.forward_to_peers(now, vni, frame, ingress, to_peer, out)
    }
}

/// ARP suppression: the reply to an ARP request for an address in the network's ARP
/// table, built with smoltcp's `ArpRepr`. Gratuitous ARP (sender = target) is not
/// answered.
pub(super) fn arp_suppress<T: AsRef<[u8]>>(
    net: &Network,
    eth: &EthernetFrame<T>,
) -> Option<Vec<u8>> {
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let packet = ArpPacket::new_checked(&eth.as_ref()[ETHERNET_HEADER_LEN..]).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&packet).ok()?
    else {
        return None;
    };
    if source_protocol_addr == target_protocol_addr {
        return None;
    }
    let target_mac = net.arp.lookup(&target_protocol_addr)?;
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: target_mac,
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let eth_repr = EthernetRepr {
        src_addr: target_mac,
        dst_addr: eth.src_addr(),
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth_repr.buffer_len() + reply.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth_repr.emit(&mut frame);
    reply.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    Some(buf)
}
