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

use super::{Egress, Network, Overlay, OverlayDrop, OverlayVerdict, Step};
use crate::base::Vni;
use crate::table::fdb::{Learn, Location};
use crate::wire::buffer::PacketBuf;
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

/// Where the bridge sends a frame from a local port, decided without copying it.
pub(super) enum Bridged {
    /// Final: refused, filtered (stays on its segment) or answered by ARP suppression.
    Done(OverlayVerdict),
    /// Unicast to the other local port.
    Local(Egress),
    /// Unicast to the one peer behind which the destination lives.
    Peer(Ipv4Address),
    /// To every port of the network but the one it came in by, and every peer.
    Flood,
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

    /// [`Overlay::rx_link`] for a frame in its buffer: unicast to the other local port
    /// or to a VXLAN peer it stays where it is (encapsulated in the headroom), to a
    /// sleeve peer it is kept for sealing; only floods and answers are copies.
    pub fn rx_link_buf(&mut self, now: Instant, vni: Vni, buf: &mut PacketBuf) -> Step {
        self.rx_local_buf(now, vni, buf, Ingress::Link)
    }

    /// [`Overlay::rx_appliance`] for a frame in its buffer, as [`Overlay::rx_link_buf`].
    pub fn rx_appliance_buf(&mut self, now: Instant, vni: Vni, buf: &mut PacketBuf) -> Step {
        self.rx_local_buf(now, vni, buf, Ingress::Appliance)
    }

    fn rx_local(
        &mut self,
        now: Instant,
        vni: Vni,
        frame: &[u8],
        ingress: Ingress,
    ) -> OverlayVerdict {
        match self.bridge(now, vni, frame, ingress) {
            Bridged::Done(verdict) => verdict,
            Bridged::Local(egress) => OverlayVerdict::Forward(vec![(egress, frame.to_vec())]),
            Bridged::Peer(peer) => {
                self.forward_to_peers(now, vni, frame, ingress, Some(peer), Vec::new())
            }
            Bridged::Flood => self.flood(now, vni, frame, ingress),
        }
    }

    fn rx_local_buf(
        &mut self,
        now: Instant,
        vni: Vni,
        buf: &mut PacketBuf,
        ingress: Ingress,
    ) -> Step {
        match self.bridge(now, vni, buf.frame(), ingress) {
            Bridged::Done(verdict) => Step::Verdict(verdict),
            Bridged::Local(egress) => Step::Send(egress),
            Bridged::Peer(peer) => self.encap_for_peer(now, vni, buf, ingress, peer),
            Bridged::Flood => Step::Verdict(self.flood(now, vni, buf.frame(), ingress)),
        }
    }

    /// The copies of a flood: the other local ports, then every peer of the network.
    fn flood(&mut self, now: Instant, vni: Vni, frame: &[u8], ingress: Ingress) -> OverlayVerdict {
        let Some(net) = self.networks.get(&vni) else {
            return OverlayVerdict::Forward(Vec::new());
        };
        let mut out = Vec::new();
        if ingress != Ingress::Link {
            out.push((Egress::Link, frame.to_vec()));
        }
        if net.appliance_mac.is_some() && ingress != Ingress::Appliance {
            out.push((Egress::Appliance, frame.to_vec()));
        }
        self.forward_to_peers(now, vni, frame, ingress, None, out)
    }

    /// The bridge's decision for a frame from a local port, with its learning, ARP
    /// suppression and counters; the frames it sends are made by the caller.
    fn bridge(&mut self, now: Instant, vni: Vni, frame: &[u8], ingress: Ingress) -> Bridged {
        let Some(net) = self.networks.get_mut(&vni) else {
            return Bridged::Done(self.drop(None, OverlayDrop::UnknownVni));
        };
        match ingress {
            Ingress::Link => net.counters.link_rx += 1,
            Ingress::Appliance => net.counters.appliance_rx += 1,
        }
        if ingress == Ingress::Appliance && net.appliance_mac.is_none() {
            return Bridged::Done(self.drop(Some(vni), OverlayDrop::NotAttached));
        }
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Bridged::Done(self.drop(Some(vni), OverlayDrop::Runt));
        };
        let (src, dst) = (eth.src_addr(), eth.dst_addr());
        if !src.is_unicast() {
            return Bridged::Done(self.drop(Some(vni), OverlayDrop::BadSourceMac));
        }
        if vlan::is_tag(eth.ethertype()) {
            return Bridged::Done(self.drop(Some(vni), OverlayDrop::Tagged));
        }
        if ingress == Ingress::Link
            && Some(src) != net.appliance_mac
            && net.fdb.learn(src, now) == Learn::Full
        {
            net.counters.learn_refused += 1;
        }

        if let Some(reply) = arp_suppress(net, &eth) {
            net.counters.arp_suppressed += 1;
            return Bridged::Done(OverlayVerdict::Forward(vec![(ingress.egress(), reply)]));
        }

        // Where the frame goes: the other local port, one peer, or everywhere.
        let local = if !dst.is_unicast() {
            None
        } else if Some(dst) == net.appliance_mac {
            Some(Egress::Appliance)
        } else {
            match net.fdb.lookup(&dst, now) {
                Some(Location::Local) => Some(Egress::Link),
                Some(Location::Remote(peer)) => return Bridged::Peer(peer),
                None => None,
            }
        };
        match local {
            Some(egress) if egress != ingress.egress() => {
                match egress {
                    Egress::Link => net.counters.link_tx += 1,
                    _ => net.counters.appliance_tx += 1,
                }
                Bridged::Local(egress)
            }
            Some(_) => {
                // Back to the port it came from: it stays on its segment.
                net.counters.filtered += 1;
                Bridged::Done(OverlayVerdict::Forward(Vec::new()))
            }
            None => {
                net.counters.flooded += 1;
                if ingress != Ingress::Link {
                    net.counters.link_tx += 1;
                }
                if net.appliance_mac.is_some() && ingress != Ingress::Appliance {
                    net.counters.appliance_tx += 1;
                }
                Bridged::Flood
            }
        }
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
