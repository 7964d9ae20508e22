//! The outer Ethernet/IPv4/UDP headers of a tunnel datagram received on the uplink, as
//! VXLAN and sleeve both take them apart: one walk, in one order, checksums verified.
//! What the UDP payload holds is the tunnel's business (`vxlan`, `sleeve`).

use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address, Ipv4Packet,
    UdpPacket, ETHERNET_HEADER_LEN, UDP_HEADER_LEN,
};

use crate::wire::checksum;

/// A received frame's outer headers, the UDP payload borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterUdp<'a> {
    pub src_mac: EthernetAddress,
    pub src_ip: Ipv4Address,
    pub dst_ip: Ipv4Address,
    pub src_port: u16,
    pub payload: &'a [u8],
    /// Where `payload` starts in the frame.
    pub payload_at: usize,
}

/// Why [`udp_to_port`] did not take a frame apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterError {
    /// Not IPv4/UDP to the port asked for: not the tunnel's to judge.
    NotForPort,
    /// An outer IPv4 or UDP header that is truncated, inconsistent or has a bad checksum.
    BadHeader,
    /// A fragment of an outer IPv4 packet; tunnel endpoints do not reassemble.
    Fragment,
}

/// The outer headers of `frame` when it is IPv4/UDP to `port`. The IPv4 header checksum
/// is verified, and the UDP one when it is non-zero (RFC 768). A fragment is refused
/// before its UDP header is read (a later fragment has none) and whatever its checksum;
/// a bad IPv4 header is refused whatever port it carries.
pub fn udp_to_port(frame: &[u8], port: u16) -> Result<OuterUdp<'_>, OuterError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| OuterError::NotForPort)?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Err(OuterError::NotForPort);
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| OuterError::BadHeader)?;
    if ip.version() != 4 || ip.next_header() != IpProtocol::Udp {
        return Err(OuterError::NotForPort);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(OuterError::Fragment);
    }
    if !checksum::ipv4_header_verifies(&ip) {
        return Err(OuterError::BadHeader);
    }
    let (src_ip, dst_ip) = (ip.src_addr(), ip.dst_addr());
    let udp = UdpPacket::new_checked(ip.payload()).map_err(|_| OuterError::BadHeader)?;
    if udp.dst_port() != port {
        return Err(OuterError::NotForPort);
    }
    // What smoltcp's `UdpRepr::parse` checks beyond `new_checked`'s lengths, without
    // its copy of the addresses: a destination port, and the checksum.
    if udp.dst_port() == 0 || !checksum::udp_ipv4_verifies(src_ip.octets(), dst_ip.octets(), &udp) {
        return Err(OuterError::BadHeader);
    }
    Ok(OuterUdp {
        src_mac: eth.src_addr(),
        src_ip,
        dst_ip,
        src_port: udp.src_port(),
        payload: udp.payload(),
        payload_at: ETHERNET_HEADER_LEN + usize::from(ip.header_len()) + UDP_HEADER_LEN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{EthernetRepr, IpAddress, Ipv4Repr, UdpRepr, IPV4_HEADER_LEN};

    const PORT: u16 = 4789;

    /// An Ethernet/IPv4/UDP frame to `port` with `payload`, checksums filled by smoltcp.
    fn frame(port: u16, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = (
            Ipv4Address::new(192, 0, 2, 1),
            Ipv4Address::new(192, 0, 2, 2),
        );
        let udp = UdpRepr {
            src_port: 40000,
            dst_port: port,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Udp,
            payload_len: udp.header_len() + payload.len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut out = alloc::vec![0u8; eth.buffer_len() + ip.buffer_len() + ip.payload_len];
        let caps = ChecksumCapabilities::default();
        let mut e = EthernetFrame::new_unchecked(&mut out[..]);
        eth.emit(&mut e);
        let mut i = Ipv4Packet::new_unchecked(e.payload_mut());
        ip.emit(&mut i, &caps);
        let mut u = UdpPacket::new_unchecked(i.payload_mut());
        udp.emit(
            &mut u,
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &caps,
        );
        out
    }

    const IP_AT: usize = ETHERNET_HEADER_LEN;
    const UDP_AT: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;

    #[test]
    fn takes_apart_a_datagram_to_the_port() {
        let f = frame(PORT, b"tunnel");
        let o = udp_to_port(&f, PORT).unwrap();
        assert_eq!(o.payload, b"tunnel");
        assert_eq!(&f[o.payload_at..], b"tunnel");
        assert_eq!(o.src_ip, Ipv4Address::new(192, 0, 2, 1));
        assert_eq!(o.dst_ip, Ipv4Address::new(192, 0, 2, 2));
        assert_eq!(o.src_port, 40000);
        assert_eq!(o.src_mac, EthernetAddress([2, 0, 0, 0, 0, 1]));
        // A zero UDP checksum means none was sent (RFC 768).
        let mut g = f.clone();
        g[UDP_AT + 6..UDP_AT + 8].fill(0);
        assert_eq!(udp_to_port(&g, PORT).unwrap().payload, b"tunnel");
    }

    #[test]
    fn refusals_say_whose_they_are() {
        let f = frame(PORT, b"tunnel");
        assert_eq!(udp_to_port(&f, PORT + 1), Err(OuterError::NotForPort));
        let mut g = f.clone();
        g[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(udp_to_port(&g, PORT), Err(OuterError::NotForPort));
        // A bad IPv4 header checksum, whatever the port.
        let mut g = f.clone();
        g[IP_AT + 10] ^= 0xff;
        assert_eq!(udp_to_port(&g, PORT), Err(OuterError::BadHeader));
        assert_eq!(udp_to_port(&g, PORT + 1), Err(OuterError::BadHeader));
        // A wrong UDP checksum, only for the port.
        let mut g = f.clone();
        g[UDP_AT + 6] ^= 0xff;
        assert_eq!(udp_to_port(&g, PORT), Err(OuterError::BadHeader));
        assert_eq!(udp_to_port(&g, PORT + 1), Err(OuterError::NotForPort));
        // A later fragment: refused before its (absent) UDP header is read.
        let mut g = f.clone();
        g[IP_AT + 6..IP_AT + 8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert_eq!(udp_to_port(&g, PORT), Err(OuterError::Fragment));
        // Port 0 is no port (RFC 768), also when asked for.
        let f0 = frame(0, b"x");
        assert_eq!(udp_to_port(&f0, 0), Err(OuterError::BadHeader));
        // Every truncation is refused, never a panic.
        for len in 0..f.len() {
            assert!(udp_to_port(&f[..len], PORT).is_err(), "{len}");
        }
    }
}
