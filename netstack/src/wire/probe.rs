//! Builds and recognizes the frames that probe an interface: ARP who-has (and any
//! Ethernet/IPv4 ARP read back) and ICMP echo. The ARP resolver's requests, and tests and
//! fuzz seeds. Built only from smoltcp wire `Repr`s (checksums included); parsing never
//! panics and returns `None` for anything that is not the expected, well-formed frame.

use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
    ETHERNET_HEADER_LEN,
};

fn ethernet(
    src: EthernetAddress,
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload_len: usize,
) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
    };
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + payload_len];
    repr.emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    frame
}

/// A broadcast ARP request: who has `target_ip`? tell `src_ip` (at `src_mac`).
pub fn arp_request(
    src_mac: EthernetAddress,
    src_ip: Ipv4Address,
    target_ip: Ipv4Address,
) -> Vec<u8> {
    arp(
        ArpOperation::Request,
        (src_mac, src_ip),
        (EthernetAddress([0; 6]), target_ip),
        EthernetAddress::BROADCAST,
    )
}

/// An ARP reply telling `target_mac`/`target_ip` that `sender_ip` is at `sender_mac`,
/// sent from `sender_mac` to `target_mac`.
pub fn arp_reply(
    sender_mac: EthernetAddress,
    sender_ip: Ipv4Address,
    target_mac: EthernetAddress,
    target_ip: Ipv4Address,
) -> Vec<u8> {
    arp(
        ArpOperation::Reply,
        (sender_mac, sender_ip),
        (target_mac, target_ip),
        target_mac,
    )
}

/// An Ethernet/IPv4 ARP frame from the sender's MAC to `frame_dst`.
fn arp(
    operation: ArpOperation,
    sender: (EthernetAddress, Ipv4Address),
    target: (EthernetAddress, Ipv4Address),
    frame_dst: EthernetAddress,
) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: sender.0,
        source_protocol_addr: sender.1,
        target_hardware_addr: target.0,
        target_protocol_addr: target.1,
    };
    let mut frame = ethernet(sender.0, frame_dst, EthernetProtocol::Arp, arp.buffer_len());
    arp.emit(&mut ArpPacket::new_unchecked(
        &mut frame[ETHERNET_HEADER_LEN..],
    ));
    frame
}

/// An Ethernet/IPv4 ARP packet as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub operation: ArpOperation,
    /// The Ethernet destination of the frame.
    pub frame_dst: EthernetAddress,
    pub sender_mac: EthernetAddress,
    pub sender_ip: Ipv4Address,
    pub target_mac: EthernetAddress,
    pub target_ip: Ipv4Address,
}

/// The frame as Ethernet/IPv4 ARP, or None.
pub fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let arp = ArpPacket::new_checked(eth.payload()).ok()?;
    match ArpRepr::parse(&arp).ok()? {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            target_protocol_addr,
        } => Some(Arp {
            operation,
            frame_dst: eth.dst_addr(),
            sender_mac: source_hardware_addr,
            sender_ip: source_protocol_addr,
            target_mac: target_hardware_addr,
            target_ip: target_protocol_addr,
        }),
        _ => None,
    }
}

/// The frame as an ARP reply, or None.
pub fn parse_arp_reply(frame: &[u8]) -> Option<Arp> {
    parse_arp(frame).filter(|a| a.operation == ArpOperation::Reply)
}

/// The addresses and contents of an ICMP echo request or reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    pub src_ip: Ipv4Address,
    pub dst_ip: Ipv4Address,
    pub ident: u16,
    pub seq_no: u16,
    pub data: Vec<u8>,
}

/// An ICMP echo request frame carrying `echo`'s fields (TTL 64, valid checksums).
pub fn icmp_echo_request(echo: &Echo) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest {
        ident: echo.ident,
        seq_no: echo.seq_no,
        data: &echo.data,
    };
    let ip = Ipv4Repr {
        src_addr: echo.src_ip,
        dst_addr: echo.dst_ip,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let caps = ChecksumCapabilities::default();
    let mut frame = ethernet(
        echo.src_mac,
        echo.dst_mac,
        EthernetProtocol::Ipv4,
        ip.buffer_len() + icmp.buffer_len(),
    );
    let mut packet = Ipv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]);
    ip.emit(&mut packet, &caps);
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(packet.payload_mut()),
        &caps,
    );
    frame
}

/// The frame as an ICMP echo reply with valid checksums, or None.
pub fn parse_icmp_echo_reply(frame: &[u8]) -> Option<Echo> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let caps = ChecksumCapabilities::default();
    let packet = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let ip = Ipv4Repr::parse(&packet, &caps).ok()?;
    if ip.next_header != IpProtocol::Icmp {
        return None;
    }
    let icmp_packet = Icmpv4Packet::new_checked(packet.payload()).ok()?;
    match Icmpv4Repr::parse(&icmp_packet, &caps).ok()? {
        Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        } => Some(Echo {
            src_mac: eth.src_addr(),
            dst_mac: eth.dst_addr(),
            src_ip: ip.src_addr,
            dst_ip: ip.dst_addr,
            ident,
            seq_no,
            data: data.to_vec(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x0a]);

    #[test]
    fn arp_request_bytes() {
        let frame = arp_request(
            MAC,
            Ipv4Address::new(10, 0, 0, 2),
            Ipv4Address::new(10, 0, 0, 1),
        );
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
            0x02, 0, 0, 0, 0, 0x0a, 10, 0, 0, 2,
            0, 0, 0, 0, 0, 0, 10, 0, 0, 1,
        ];
        assert_eq!(frame, expected);
        // A request is not a reply.
        assert_eq!(parse_arp_reply(&frame), None);
    }

    #[test]
    fn echo_request_has_valid_checksums() {
        let echo = Echo {
            src_mac: MAC,
            dst_mac: EthernetAddress([0x02, 0, 0, 0, 0, 0x0b]),
            src_ip: Ipv4Address::new(10, 0, 0, 2),
            dst_ip: Ipv4Address::new(10, 0, 0, 1),
            ident: 0x1234,
            seq_no: 7,
            data: b"weft".to_vec(),
        };
        let frame = icmp_echo_request(&echo);
        assert_eq!(frame.len(), 14 + 20 + 8 + 4);
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            &frame[34..38],
            &[
                8,
                0,
                icmp.checksum().to_be_bytes()[0],
                icmp.checksum().to_be_bytes()[1]
            ]
        );
        // A request is not a reply.
        assert_eq!(parse_icmp_echo_reply(&frame), None);
    }

    #[test]
    fn parsers_refuse_garbage() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(parse_arp_reply(&junk), None);
            assert_eq!(parse_icmp_echo_reply(&junk), None);
        }
    }
}
