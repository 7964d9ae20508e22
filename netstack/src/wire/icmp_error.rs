//! The ICMP errors the appliance originates, built by one builder: Ethernet back to the
//! frame's sender, IPv4 (TTL 64, DF), and the ICMP message quoting as much of the packet
//! as fits in 576 bytes (RFC 1812 section 4.3.2.3).
//!
//! - time exceeded (RFC 792, RFC 1812 section 5.3.1): a packet the router would
//!   forward has no TTL left; sent from the router's own NIC;
//! - fragmentation needed (RFC 1191): a bridged IPv4 packet with DF is larger than the
//!   overlay MTU; sent as if from the packet's destination, as Linux's
//!   `iptunnel_pmtud_build_icmp` does for bridged tunnels.
//!
//! Never answers what RFC 1812 section 4.3.2.7 forbids (an ICMP error, a fragment
//! other than the first, a source that is not one host, a broadcast or multicast
//! destination), never decides when an error is due or where it goes (the caller
//! does), and never panics on what it quotes.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4DstUnreachable,
    Icmpv4Message, Icmpv4Packet, Icmpv4TimeExceeded, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr,
    ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
};

mod field {
    use core::ops::Range;

    /// The ICMP header of an error: type, code, checksum and 4 bytes of rest of header.
    pub const HEADER_LEN: usize = 8;
    /// Fragmentation needed: the next-hop MTU in the low half of the rest of header
    /// (RFC 1191 section 4).
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
}

/// RFC 1812 section 4.3.2.3: quote as much of the packet as fits in 576 bytes.
const MAX_ERROR_LEN: usize = 576;
/// TTL of the errors the appliance sends (Linux's default).
const ERROR_TTL: u8 = 64;

/// The error to build about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    /// Time to live exceeded in transit, from the NIC `mac`/`addr`.
    TimeExceeded {
        mac: EthernetAddress,
        addr: Ipv4Address,
    },
    /// Fragmentation needed: `mtu` is the next-hop MTU.
    FragNeeded { mtu: u16 },
}

/// ICMP time exceeded in transit for `frame` (an Ethernet/IPv4 frame as received),
/// sent from `mac`/`addr` back to the frame's sender (its Ethernet source is the
/// previous hop). None when RFC 1812 section 4.3.2.7 forbids an answer or the frame is
/// not a whole IPv4 header.
pub fn time_exceeded(frame: &[u8], mac: EthernetAddress, addr: Ipv4Address) -> Option<Vec<u8>> {
    answer(frame, Message::TimeExceeded { mac, addr })
}

/// ICMP fragmentation needed (type 3 code 4, RFC 1191 next-hop MTU `mtu`) for a
/// too-big IPv4 frame with DF set, addressed back to its sender as if from its
/// destination. None when no error may be sent.
pub fn frag_needed(frame: &[u8], mtu: u16) -> Option<Vec<u8>> {
    answer(frame, Message::FragNeeded { mtu })
}

fn answer(frame: &[u8], message: Message) -> Option<Vec<u8>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if !answerable(&eth, &ip, message) {
        return None;
    }
    let (from_mac, from_addr) = match message {
        Message::TimeExceeded { mac, addr } => (mac, addr),
        Message::FragNeeded { .. } => (eth.dst_addr(), ip.dst_addr()),
    };
    let original = &eth.payload()[..usize::from(ip.total_len())];
    let quote_len = original
        .len()
        .min(MAX_ERROR_LEN - IPV4_HEADER_LEN - field::HEADER_LEN);
    let icmp_len = field::HEADER_LEN + quote_len;
    let eth_repr = EthernetRepr {
        src_addr: from_mac,
        dst_addr: eth.src_addr(),
        ethertype: EthernetProtocol::Ipv4,
    };
    let ip_repr = Ipv4Repr {
        src_addr: from_addr,
        dst_addr: ip.src_addr(),
        next_header: IpProtocol::Icmp,
        payload_len: icmp_len,
        hop_limit: ERROR_TTL,
    };
    let mut buf = vec![0u8; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + icmp_len];
    let mut out = EthernetFrame::new_unchecked(&mut buf[..]);
    eth_repr.emit(&mut out);
    let mut out_ip = Ipv4Packet::new_unchecked(out.payload_mut());
    ip_repr.emit(&mut out_ip, &ChecksumCapabilities::default());
    let mut icmp = Icmpv4Packet::new_unchecked(out_ip.payload_mut());
    match message {
        Message::TimeExceeded { .. } => {
            icmp.set_msg_type(Icmpv4Message::TimeExceeded);
            icmp.set_msg_code(Icmpv4TimeExceeded::TtlExpired.into());
        }
        Message::FragNeeded { mtu } => {
            icmp.set_msg_type(Icmpv4Message::DstUnreachable);
            icmp.set_msg_code(Icmpv4DstUnreachable::FragRequired.into());
            let header = &mut icmp.into_inner()[..field::HEADER_LEN];
            header[field::NEXT_HOP_MTU].copy_from_slice(&mtu.to_be_bytes());
            icmp = Icmpv4Packet::new_unchecked(out_ip.payload_mut());
        }
    }
    icmp.data_mut()[..quote_len].copy_from_slice(&original[..quote_len]);
    icmp.fill_checksum();
    Some(buf)
}

/// Whether an error about this packet may be sent (RFC 1812 section 4.3.2.7), and the
/// message's own condition: DF set, for fragmentation needed.
fn answerable<T: AsRef<[u8]>>(
    eth: &EthernetFrame<T>,
    ip: &Ipv4Packet<&[u8]>,
    message: Message,
) -> bool {
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let one_host = !(src.is_unspecified() || src.is_broadcast() || src.is_multicast());
    if ip.version() != 4
        || ip.frag_offset() != 0
        || !one_host
        || dst.is_broadcast()
        || dst.is_multicast()
    {
        return false;
    }
    // The type of an ICMP packet; None when it has none.
    let icmp_type = (ip.next_header() == IpProtocol::Icmp).then(|| ip.payload().first().copied());
    match message {
        // The router answers from its own NIC to the frame's (unicast) sender.
        Message::TimeExceeded { .. } => {
            eth.src_addr().is_unicast()
                && !src.is_loopback()
                && icmp_type.is_none_or(|ty| ty.is_some_and(|ty| !is_icmp_error(ty)))
        }
        // The bridge answers from the frame's own destination, which must be one host;
        // only a packet that says DF, with a sound header, learns the path MTU.
        Message::FragNeeded { .. } => {
            eth.dst_addr().is_unicast()
                && ip.dont_frag()
                && ip.verify_checksum()
                && icmp_type.is_none_or(|ty| ty.is_none_or(is_icmp_query))
        }
    }
}

/// Whether `frame` (Ethernet/IPv4) carries an ICMP error message: what a sender limits
/// to a rate, whoever built it.
pub fn carries_error(frame: &[u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return false;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return false;
    };
    ip.next_header() == IpProtocol::Icmp
        && ip.frag_offset() == 0
        && ip.payload().first().is_some_and(|&ty| is_icmp_error(ty))
}

/// Whether an ICMP type is an error message (never answered with another error):
/// destination unreachable, source quench, redirect, time exceeded, parameter problem.
fn is_icmp_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// Whether an ICMP type is a query or its answer (echo, timestamp, information,
/// address mask): the only ICMP a too-big error may be about.
fn is_icmp_query(ty: u8) -> bool {
    matches!(ty, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::Icmpv4Repr;

    const MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 2]);
    const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x42]);
    const OWN: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
    const PEER: Ipv4Address = Ipv4Address::new(10, 81, 3, 4);
    const FAR: Ipv4Address = Ipv4Address::new(203, 0, 113, 9);

    /// An Ethernet/IPv4 frame with protocol `proto`, TTL 1 and `body`.
    fn frame(src: Ipv4Address, dst: Ipv4Address, proto: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + body.len()];
        f[0..6].copy_from_slice(&MAC.0);
        f[6..12].copy_from_slice(&PEER_MAC.0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + body.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        ip[8] = 1;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        ip[20..].copy_from_slice(body);
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        f
    }

    #[test]
    fn time_exceeded_quotes_the_packet_and_goes_back_to_its_sender() {
        let udp = [
            0x9c, 0x40, 0x82, 0x9a, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
        ];
        let f = frame(PEER, FAR, 17, &udp);
        let out = time_exceeded(&f, MAC, OWN).expect("an answer");
        let eth = EthernetFrame::new_checked(&out[..]).unwrap();
        assert_eq!((eth.dst_addr(), eth.src_addr()), (PEER_MAC, MAC));
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let repr = Ipv4Repr::parse(&ip, &Default::default()).expect("valid IPv4");
        assert_eq!((repr.src_addr, repr.dst_addr), (OWN, PEER));
        assert_eq!(repr.hop_limit, 64);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), Icmpv4Message::TimeExceeded);
        assert_eq!(icmp.msg_code(), 0);
        // The whole original packet, TTL 1 as it arrived, is quoted.
        assert_eq!(icmp.data(), &f[14..]);
        // smoltcp reads it as the time exceeded it is, quoting our packet.
        match Icmpv4Repr::parse(&icmp, &Default::default()).unwrap() {
            Icmpv4Repr::TimeExceeded { header, data, .. } => {
                assert_eq!((header.src_addr, header.dst_addr), (PEER, FAR));
                assert_eq!(&data[..8], &udp[..8]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_packets_are_quoted_up_to_576_bytes() {
        let f = frame(PEER, FAR, 17, &[7u8; 1400]);
        let out = time_exceeded(&f, MAC, OWN).unwrap();
        assert_eq!(out.len(), 14 + 576);
        let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.total_len(), 576);
        assert!(Icmpv4Packet::new_checked(ip.payload())
            .unwrap()
            .verify_checksum());
        assert_eq!(&out[14 + 28..], &f[14..14 + 548]);
    }

    #[test]
    fn errors_fragments_and_non_host_sources_get_no_answer() {
        // An echo request is answered; every ICMP error type is not.
        let echo = [8, 0, 0, 0, 0, 1, 0, 1];
        assert!(time_exceeded(&frame(PEER, FAR, 1, &echo), MAC, OWN).is_some());
        for ty in [3u8, 4, 5, 11, 12] {
            let err = [ty, 0, 0, 0, 0, 0, 0, 0];
            assert_eq!(time_exceeded(&frame(PEER, FAR, 1, &err), MAC, OWN), None);
        }
        let mut unreachable = vec![0u8; 8 + 28];
        Icmpv4Repr::DstUnreachable {
            reason: Icmpv4DstUnreachable::PortUnreachable,
            header: Ipv4Repr {
                src_addr: FAR,
                dst_addr: PEER,
                next_header: IpProtocol::Udp,
                payload_len: 8,
                hop_limit: 64,
            },
            data: &[0; 8],
        }
        .emit(
            &mut Icmpv4Packet::new_unchecked(&mut unreachable[..]),
            &Default::default(),
        );
        let f = frame(PEER, FAR, 1, &unreachable);
        assert_eq!(time_exceeded(&f, MAC, OWN), None);
        // A later fragment.
        let mut frag = frame(PEER, FAR, 17, &[0; 16]);
        frag[14 + 7] = 0x10;
        Ipv4Packet::new_unchecked(&mut frag[14..]).fill_checksum();
        assert_eq!(time_exceeded(&frag, MAC, OWN), None);
        for (src, dst) in [
            (Ipv4Address::UNSPECIFIED, FAR),
            (Ipv4Address::BROADCAST, FAR),
            (Ipv4Address::new(224, 0, 0, 1), FAR),
            (Ipv4Address::new(127, 0, 0, 1), FAR),
            (PEER, Ipv4Address::BROADCAST),
            (PEER, Ipv4Address::new(239, 1, 2, 3)),
        ] {
            assert_eq!(time_exceeded(&frame(src, dst, 17, &[0; 8]), MAC, OWN), None);
        }
        // A multicast Ethernet source.
        let mut f = frame(PEER, FAR, 17, &[0; 8]);
        f[6] = 0x01;
        assert_eq!(time_exceeded(&f, MAC, OWN), None);
        // Truncated and garbage frames.
        let f = frame(PEER, FAR, 17, &[0; 8]);
        for cut in 0..f.len() - 8 {
            assert_eq!(time_exceeded(&f[..cut], MAC, OWN), None, "cut at {cut}");
        }
    }
}
