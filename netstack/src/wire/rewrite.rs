//! Rewriting an IPv4 packet in place: its flow (addresses, ports or ICMP echo
//! identifier, and every checksum that covers them) and the TTL a router takes off.
//! Checksums are adjusted incrementally (RFC 1624, [`Delta`]), never recomputed over a
//! payload, so a quoted packet that an ICMP error cut short is rewritten as far as it
//! goes.
//!
//! The flow's fields are written at their fixed offsets (one length check per header),
//! the rest through smoltcp's views; the caller has checked that the headers it names
//! are there (`l4::parse`, `l4::parse_quote`). It never decides what a packet becomes.

use smoltcp::wire::{Icmpv4Packet, Ipv4Address, IPV4_HEADER_LEN};

use super::checksum::Delta;
use crate::base::{FlowTuple, Proto};

/// Where the fields this module rewrites lie: in the IPv4 header, and in the first 8 bytes
/// of the transport header (all an ICMP error is sure to quote, RFC 792) except the TCP
/// checksum, which lies beyond them.
mod field {
    /// The TTL, the high byte of the 16-bit word it shares with the protocol.
    pub const TTL: usize = 8;
    pub const IP_CHECKSUM: usize = 10;
    pub const IP_SRC: usize = 12;
    pub const IP_DST: usize = 16;
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const UDP_CHECKSUM: usize = 6;
    pub const ICMP_CHECKSUM: usize = 2;
    pub const ICMP_IDENT: usize = 4;
    /// The TCP checksum: an ICMP error may quote only the first 8 bytes of a segment,
    /// without it.
    pub const TCP_CHECKSUM: usize = 16;
}

/// The 16-bit big-endian field at `at` of a header of `N` bytes (the offset is a
/// constant of `field`: no bounds check is left).
#[inline(always)]
fn get16<const N: usize>(h: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

/// Sets the 16-bit field at `at` to `new`, recording in `delta` that it changed. An
/// unchanged field records nothing: `!x + x` is the one's complement -0, which would
/// turn an untouched checksum of 0x0000 into 0xFFFF.
#[inline(always)]
fn set16<const N: usize>(delta: &mut Delta, h: &mut [u8; N], at: usize, new: u16) {
    let old = get16(h, at);
    if old != new {
        delta.replace_u16(old, new);
        h[at..at + 2].copy_from_slice(&new.to_be_bytes());
    }
}

/// As [`set16`] for an IPv4 address.
#[inline(always)]
fn set_addr<const N: usize>(delta: &mut Delta, h: &mut [u8; N], at: usize, new: Ipv4Address) {
    let old = [h[at], h[at + 1], h[at + 2], h[at + 3]];
    let new = new.octets();
    if old != new {
        delta.replace_u32(old, new);
        h[at..at + 4].copy_from_slice(&new);
    }
}

/// Rewrites the IPv4 packet `packet` (its header first) of protocol `proto` to carry
/// the tuple `to`: addresses, ports or echo identifier, and every checksum that covers
/// them. Returns the delta of all rewritten bytes, for a checksum that covers the whole
/// packet (an ICMP error quoting it). A packet shorter than its IPv4 header and 8 bytes
/// of transport header is left as far as it goes (the callers have checked that they
/// are there).
pub fn flow(packet: &mut [u8], proto: Proto, to: &FlowTuple) -> Delta {
    let ihl = packet.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
    let Some((ip, l4)) = packet.split_at_mut_checked(ihl) else {
        return Delta::ZERO;
    };
    let Some(ip) = ip.first_chunk_mut::<IPV4_HEADER_LEN>() else {
        return Delta::ZERO;
    };
    let mut addrs = Delta::ZERO;
    set_addr(&mut addrs, ip, field::IP_SRC, to.src.addr);
    set_addr(&mut addrs, ip, field::IP_DST, to.dst.addr);
    let mut outer = addrs;
    let check = get16(ip, field::IP_CHECKSUM);
    set16(&mut outer, ip, field::IP_CHECKSUM, addrs.apply(check));

    let Some((head, rest)) = l4.split_first_chunk_mut::<8>() else {
        return outer;
    };
    let mut ports = Delta::ZERO;
    let l4_outer = match proto {
        Proto::Tcp => {
            set16(&mut ports, head, field::SRC_PORT, to.src.port);
            set16(&mut ports, head, field::DST_PORT, to.dst.port);
            // Addresses are in the pseudo-header too.
            let pseudo = addrs.plus(ports);
            let mut l4_outer = ports;
            if let Some(tail) = rest.first_chunk_mut::<{ field::TCP_CHECKSUM + 2 - 8 }>() {
                let at = field::TCP_CHECKSUM - 8;
                let check = get16(tail, at);
                set16(&mut l4_outer, tail, at, pseudo.apply(check));
            }
            l4_outer
        }
        Proto::Udp => {
            set16(&mut ports, head, field::SRC_PORT, to.src.port);
            set16(&mut ports, head, field::DST_PORT, to.dst.port);
            let pseudo = addrs.plus(ports);
            let mut l4_outer = ports;
            let check = get16(head, field::UDP_CHECKSUM);
            set16(
                &mut l4_outer,
                head,
                field::UDP_CHECKSUM,
                pseudo.apply_udp(check),
            );
            l4_outer
        }
        Proto::Icmp => {
            set16(&mut ports, head, field::ICMP_IDENT, to.dst.port);
            let mut l4_outer = ports;
            // A quoted echo may be cut short; its checksum covers data we may not
            // have, and an incremental update needs none of it.
            let check = get16(head, field::ICMP_CHECKSUM);
            set16(
                &mut l4_outer,
                head,
                field::ICMP_CHECKSUM,
                ports.apply(check),
            );
            l4_outer
        }
    };
    outer.plus(l4_outer)
}

/// Sets the addresses of the IPv4 header at the start of `packet` and adjusts its
/// header checksum (for a protocol without a pseudo-header, e.g. ICMP).
pub fn addresses(packet: &mut [u8], src: Ipv4Address, dst: Ipv4Address) {
    let Some(ip) = packet.first_chunk_mut::<IPV4_HEADER_LEN>() else {
        return;
    };
    let mut addrs = Delta::ZERO;
    set_addr(&mut addrs, ip, field::IP_SRC, src);
    set_addr(&mut addrs, ip, field::IP_DST, dst);
    let check = addrs.apply(get16(ip, field::IP_CHECKSUM));
    ip[field::IP_CHECKSUM..field::IP_CHECKSUM + 2].copy_from_slice(&check.to_be_bytes());
}

/// Adjusts the checksum of the ICMP message `icmp` for bytes it covers that changed
/// by `delta` (a quoted packet rewritten by [`flow`]).
pub fn icmp_checksum(icmp: &mut [u8], delta: Delta) {
    let mut icmp = Icmpv4Packet::new_unchecked(icmp);
    let check = icmp.checksum();
    icmp.set_checksum(delta.apply(check));
}

/// Takes one off the TTL of the IPv4 packet `packet` and adjusts its header checksum;
/// false (and nothing written) when the TTL is 1 or 0, or the header is not all
/// there: the packet must not be sent on.
pub fn decrement_ttl(packet: &mut [u8]) -> bool {
    let Some(ip) = packet.first_chunk_mut::<IPV4_HEADER_LEN>() else {
        return false;
    };
    let ttl = ip[field::TTL];
    if ttl <= 1 {
        return false;
    }
    // RFC 1624: the TTL shares a 16-bit word with the protocol.
    let mut delta = Delta::ZERO;
    set16(&mut delta, ip, field::TTL, get16(ip, field::TTL) - 0x100);
    let check = delta.apply(get16(ip, field::IP_CHECKSUM));
    ip[field::IP_CHECKSUM..field::IP_CHECKSUM + 2].copy_from_slice(&check.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::test_rng::Rng;
    use smoltcp::wire::Ipv4Packet;

    /// The incremental TTL update leaves a header smoltcp verifies, for every TTL and
    /// protocol byte and many header contents; TTLs of 0 and 1 are left alone.
    #[test]
    fn decrement_ttl_keeps_the_header_checksum_valid() {
        let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
        for ttl in 0..=255u8 {
            for proto in [1u8, 6, 17, 0, 255] {
                let seed = rng.next_u64();
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
