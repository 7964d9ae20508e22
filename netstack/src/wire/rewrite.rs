//! Rewriting an IPv4 packet in place: its flow (addresses, ports or ICMP echo
//! identifier, and every checksum that covers them) and the TTL a router takes off.
//! Checksums are adjusted incrementally (RFC 1624, [`Delta`]), never recomputed over a
//! payload, so a quoted packet that an ICMP error cut short is rewritten as far as it
//! goes.
//!
//! Through smoltcp's views; the caller has checked that the headers it names are
//! there (`l4::parse`, `l4::parse_quote`). It never decides what a packet becomes.

use smoltcp::wire::{Icmpv4Packet, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket};

use super::checksum::Delta;
use crate::base::{FlowTuple, Proto};

mod field {
    use core::ops::Range;

    /// The TCP checksum field: an ICMP error may quote only the first 8 bytes of a
    /// segment, without it.
    pub const TCP_CHECKSUM: Range<usize> = 16..18;
}

/// `new`, recording in `delta` that a 16-bit field changed from `old`. An unchanged
/// field records nothing: `!x + x` is the one's complement -0, which would turn an
/// untouched checksum of 0x0000 into 0xFFFF.
fn changed(delta: &mut Delta, old: u16, new: u16) -> u16 {
    if old != new {
        delta.replace_u16(old, new);
    }
    new
}

/// As [`changed`] for an IPv4 address.
fn changed_addr(delta: &mut Delta, old: Ipv4Address, new: Ipv4Address) -> Ipv4Address {
    if old != new {
        delta.replace_u32(old.octets(), new.octets());
    }
    new
}

/// Rewrites the IPv4 packet `packet` (its header first) of protocol `proto` to carry
/// the tuple `to`: addresses, ports or echo identifier, and every checksum that covers
/// them. Returns the delta of all rewritten bytes, for a checksum that covers the whole
/// packet (an ICMP error quoting it).
pub fn flow(packet: &mut [u8], proto: Proto, to: &FlowTuple) -> Delta {
    let mut ip = Ipv4Packet::new_unchecked(&mut *packet);
    let mut addrs = Delta::ZERO;
    let src = changed_addr(&mut addrs, ip.src_addr(), to.src.addr);
    let dst = changed_addr(&mut addrs, ip.dst_addr(), to.dst.addr);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    let mut outer = addrs;
    let check = ip.checksum();
    ip.set_checksum(changed(&mut outer, check, addrs.apply(check)));
    let ihl = usize::from(ip.header_len());

    let l4 = &mut packet[ihl..];
    let mut ports = Delta::ZERO;
    let l4_outer = match proto {
        Proto::Tcp => {
            let has_checksum = l4.len() >= field::TCP_CHECKSUM.end;
            let mut tcp = TcpPacket::new_unchecked(l4);
            let sport = changed(&mut ports, tcp.src_port(), to.src.port);
            let dport = changed(&mut ports, tcp.dst_port(), to.dst.port);
            tcp.set_src_port(sport);
            tcp.set_dst_port(dport);
            // Addresses are in the pseudo-header too.
            let pseudo = addrs.plus(ports);
            let mut l4_outer = ports;
            if has_checksum {
                let check = tcp.checksum();
                tcp.set_checksum(changed(&mut l4_outer, check, pseudo.apply(check)));
            }
            l4_outer
        }
        Proto::Udp => {
            let mut udp = UdpPacket::new_unchecked(l4);
            let sport = changed(&mut ports, udp.src_port(), to.src.port);
            let dport = changed(&mut ports, udp.dst_port(), to.dst.port);
            udp.set_src_port(sport);
            udp.set_dst_port(dport);
            let pseudo = addrs.plus(ports);
            let mut l4_outer = ports;
            let check = udp.checksum();
            udp.set_checksum(changed(&mut l4_outer, check, pseudo.apply_udp(check)));
            l4_outer
        }
        Proto::Icmp => {
            let mut icmp = Icmpv4Packet::new_unchecked(l4);
            let ident = changed(&mut ports, icmp.echo_ident(), to.dst.port);
            icmp.set_echo_ident(ident);
            let mut l4_outer = ports;
            // A quoted echo may be cut short; its checksum covers data we may not
            // have, and an incremental update needs none of it.
            let check = icmp.checksum();
            icmp.set_checksum(changed(&mut l4_outer, check, ports.apply(check)));
            l4_outer
        }
    };
    outer.plus(l4_outer)
}

/// Sets the addresses of the IPv4 header at the start of `packet` and adjusts its
/// header checksum (for a protocol without a pseudo-header, e.g. ICMP).
pub fn addresses(packet: &mut [u8], src: Ipv4Address, dst: Ipv4Address) {
    let mut ip = Ipv4Packet::new_unchecked(packet);
    let mut addrs = Delta::ZERO;
    let src = changed_addr(&mut addrs, ip.src_addr(), src);
    let dst = changed_addr(&mut addrs, ip.dst_addr(), dst);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    let check = ip.checksum();
    ip.set_checksum(addrs.apply(check));
}

/// Adjusts the checksum of the ICMP message `icmp` for bytes it covers that changed
/// by `delta` (a quoted packet rewritten by [`flow`]).
pub fn icmp_checksum(icmp: &mut [u8], delta: Delta) {
    let mut icmp = Icmpv4Packet::new_unchecked(icmp);
    let check = icmp.checksum();
    icmp.set_checksum(delta.apply(check));
}

/// Takes one off the TTL of the IPv4 packet `packet` and adjusts its header checksum;
/// false (and nothing written) when the TTL is 1 or 0: the packet must not be sent on.
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    let mut ip = Ipv4Packet::new_unchecked(packet);
    let ttl = ip.hop_limit();
    if ttl <= 1 {
        return false;
    }
    // RFC 1624: the TTL shares a 16-bit word with the protocol.
    let proto = u8::from(ip.next_header());
    let mut delta = Delta::ZERO;
    delta.replace_u16(
        u16::from_be_bytes([ttl, proto]),
        u16::from_be_bytes([ttl - 1, proto]),
    );
    let check = delta.apply(ip.checksum());
    ip.set_hop_limit(ttl - 1);
    ip.set_checksum(check);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The incremental TTL update leaves a header smoltcp verifies, for every TTL and
    /// protocol byte and many header contents; TTLs of 0 and 1 are left alone.
    #[test]
    fn decrement_ttl_keeps_the_header_checksum_valid() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for ttl in 0..=255u8 {
            for proto in [1u8, 6, 17, 0, 255] {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut h = [0u8; 20];
                h[..8].copy_from_slice(&seed.to_be_bytes());
                h[12..20].copy_from_slice(&seed.rotate_left(29).to_be_bytes());
                h[0] = 0x45;
                h[8] = ttl;
                h[9] = proto;
                let mut ip = Ipv4Packet::new_unchecked(&mut h[..]);
                ip.fill_checksum();
                let before = h;
                let sent = decrement_ttl(&mut h);
                assert_eq!(sent, ttl > 1, "ttl {ttl}");
                if sent {
                    assert_eq!(h[8], ttl - 1);
                    assert!(Ipv4Packet::new_unchecked(&h[..]).verify_checksum());
                } else {
                    assert_eq!(h, before);
                }
            }
        }
    }
}
