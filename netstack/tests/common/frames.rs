//! Frame builders and checkers shared by the scenario tests: IPv4 TCP/UDP packets with
//! every checksum filled, Ethernet framing, and the reading of a forwarded frame that
//! verifies every checksum.

use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Address,
    Ipv4Packet, TcpPacket, UdpPacket,
};

/// An IPv4 packet, TTL 64: TCP with `flags` (seq 7, ack 8 when ACK is set), or UDP
/// carrying `payload` when `flags` is None; every checksum filled.
pub fn ipv4_l4(
    src: (Ipv4Address, u16),
    dst: (Ipv4Address, u16),
    flags: Option<u8>,
    payload: &[u8],
) -> Vec<u8> {
    let body = match flags {
        Some(f) => {
            let mut b = vec![0u8; 20];
            b[0..2].copy_from_slice(&src.1.to_be_bytes());
            b[2..4].copy_from_slice(&dst.1.to_be_bytes());
            b[4..8].copy_from_slice(&7u32.to_be_bytes());
            if f & 0x10 != 0 {
                b[8..12].copy_from_slice(&8u32.to_be_bytes());
            }
            b[12] = 5 << 4;
            b[13] = f;
            b[14..16].copy_from_slice(&64240u16.to_be_bytes());
            TcpPacket::new_unchecked(&mut b[..]).fill_checksum(&src.0.into(), &dst.0.into());
            b
        }
        None => {
            let mut b = vec![0u8; 8];
            b[0..2].copy_from_slice(&src.1.to_be_bytes());
            b[2..4].copy_from_slice(&dst.1.to_be_bytes());
            b[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            b.extend_from_slice(payload);
            UdpPacket::new_unchecked(&mut b[..]).fill_checksum(&src.0.into(), &dst.0.into());
            b
        }
    };
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + body.len()) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = if flags.is_some() { 6 } else { 17 };
    p[12..16].copy_from_slice(&src.0.octets());
    p[16..20].copy_from_slice(&dst.0.octets());
    p.extend_from_slice(&body);
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    p
}

/// `ip` in an Ethernet frame from `src` to `dst`.
pub fn ethernet(src: EthernetAddress, dst: EthernetAddress, ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// What a forwarded TCP/UDP frame carries.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub dst_mac: EthernetAddress,
    pub src_mac: EthernetAddress,
    pub src: (Ipv4Address, u16),
    pub dst: (Ipv4Address, u16),
    pub ttl: u8,
}

/// Reads a frame as IPv4 TCP/UDP (None for anything else), asserting that every
/// checksum passes a full verify.
pub fn seen(f: &[u8]) -> Option<Seen> {
    let e = EthernetFrame::new_checked(f).ok()?;
    if e.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let p = Ipv4Packet::new_checked(e.payload()).ok()?;
    assert!(p.verify_checksum(), "IPv4 checksum");
    let (s, d): (IpAddress, IpAddress) = (p.src_addr().into(), p.dst_addr().into());
    let ports = match p.next_header() {
        IpProtocol::Tcp => {
            let t = TcpPacket::new_checked(p.payload()).ok()?;
            assert!(t.verify_checksum(&s, &d), "TCP checksum");
            (t.src_port(), t.dst_port())
        }
        IpProtocol::Udp => {
            let u = UdpPacket::new_checked(p.payload()).ok()?;
            assert!(u.verify_checksum(&s, &d), "UDP checksum");
            (u.src_port(), u.dst_port())
        }
        _ => return None,
    };
    Some(Seen {
        dst_mac: e.dst_addr(),
        src_mac: e.src_addr(),
        src: (p.src_addr(), ports.0),
        dst: (p.dst_addr(), ports.1),
        ttl: p.hop_limit(),
    })
}
