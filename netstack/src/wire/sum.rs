//! The checksums of the offloads done in software: the sum of bytes as they are copied
//! (segmentation writes a segment and its checksum in one pass), the IPv4
//! pseudo-header, and the completion of a partial checksum (`NEEDS_CSUM`).
//!
//! The arithmetic is [`Sum`]'s (`wire::checksum`). It never decides which checksum a
//! frame needs (`wire::tso`, `wire::gro` and the stages do).

use smoltcp::wire::{EthernetProtocol, IpProtocol, Ipv4Address, ETHERNET_HEADER_LEN};

use super::checksum::Sum;
use super::vlan;

/// Copies `src` into `dst` (same length) and returns the sum of the bytes, taken to start
/// at an even offset: one pass over the data instead of a copy and a sum.
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> Sum {
    debug_assert_eq!(dst.len(), src.len());
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let whole = n / 8 * 8;
    let mut sum = Sum::ZERO;
    for (d, s) in dst[..whole]
        .chunks_exact_mut(8)
        .zip(src[..whole].chunks_exact(8))
    {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        d.copy_from_slice(&w);
        sum.add_word(w);
    }
    dst[whole..].copy_from_slice(&src[whole..]);
    sum.add_bytes(&src[whole..]);
    sum
}

/// The sum of the IPv4 pseudo-header (RFC 793 3.1, RFC 768) for an L4 segment of
/// `l4_len` bytes of protocol `proto`.
pub fn pseudo_header(src: Ipv4Address, dst: Ipv4Address, proto: u8, l4_len: usize) -> Sum {
    let mut s = Sum::ZERO;
    s.add_bytes(&src.octets());
    s.add_bytes(&dst.octets());
    s.add_u16(u16::from(proto));
    // An IPv4 L4 segment is below 65 536 bytes.
    s.add_u16(l4_len as u16);
    s
}

/// Why a partial checksum could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteError {
    /// `start` or the field at `start + offset` lies outside the frame.
    OutOfRange,
    /// The field is an odd number of bytes from `start`: the sum is of 16-bit words from
    /// `start`, so no value written there could make it come out right (every
    /// transport's checksum is at an even offset).
    OddOffset,
}

/// Completes a partial checksum (`NEEDS_CSUM`): the field at `start + offset` holds the
/// pseudo-header sum; afterwards it holds the checksum of everything from `start` on.
///
/// A checksum that comes out as zero is written as computed, 0x0000, except for UDP,
/// where a zero field says no checksum was computed and a computed zero is sent as
/// 0xFFFF (RFC 768). The protocol is read from the IPv4 header that ends at `start`;
/// where there is none (another L3, or an L4 header further in), the zero is written as
/// 0xFFFF, which every receiver's sum takes as zero and which is the only right value
/// for UDP.
pub fn complete(frame: &mut [u8], start: usize, offset: usize) -> Result<(), CompleteError> {
    if !offset.is_multiple_of(2) {
        return Err(CompleteError::OddOffset);
    }
    let field = start.checked_add(offset).ok_or(CompleteError::OutOfRange)?;
    if start > frame.len() || field.checked_add(2).is_none_or(|e| e > frame.len()) {
        return Err(CompleteError::OutOfRange);
    }
    // The sum covers the field as it is (the pseudo-header sum), so it comes out right.
    let mut check = Sum::of(&frame[start..]).checksum();
    if check == 0 && ipv4_protocol(frame, start).is_none_or(|p| p == IpProtocol::Udp) {
        check = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// The protocol field of the IPv4 header that ends at `l4` in the Ethernet `frame`,
/// behind at most two VLAN tags; `None` if no IPv4 header ends there.
fn ipv4_protocol(frame: &[u8], l4: usize) -> Option<IpProtocol> {
    let mut at = ETHERNET_HEADER_LEN - 2;
    let ethertype = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|t| EthernetProtocol::from(u16::from_be_bytes([t[0], t[1]])))
    };
    for _ in 0..2 {
        if !vlan::is_tag(ethertype(at)?) {
            break;
        }
        at += vlan::TAG_LEN;
    }
    if ethertype(at)? != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = at + 2;
    let ver_ihl = *frame.get(ip)?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || ip + ihl != l4 {
        return None;
    }
    frame.get(ip + 9).map(|&p| IpProtocol::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::test_rng::Rng;
    use smoltcp::wire::checksum;

    #[test]
    fn copy_and_sum_copies_and_sums() {
        let mut rng = Rng::new(7);
        for len in [0usize, 1, 7, 8, 9, 63, 1398, 1399] {
            let src = rng.bytes(len);
            let mut dst = alloc::vec![0u8; len];
            let s = copy_and_sum(&mut dst, &src);
            assert_eq!(dst, src);
            assert_eq!(s.value(), checksum::data(&src), "len {len}");
        }
    }

    #[test]
    fn pseudo_header_matches_smoltcp() {
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let ours = pseudo_header(src, dst, 6, 1234).value();
        let theirs = checksum::pseudo_header_v4(&src, &dst, smoltcp::wire::IpProtocol::Tcp, 1234);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn completing_a_partial_checksum_gives_the_full_one() {
        let mut rng = Rng::new(3);
        let (src, dst) = (Ipv4Address::new(10, 1, 2, 3), Ipv4Address::new(10, 3, 2, 1));
        let seg = rng.bytes(333);
        let mut frame = alloc::vec![0xaau8; 34];
        frame.extend_from_slice(&seg);
        frame[34 + 16..34 + 18].fill(0);
        let full = {
            let mut s = pseudo_header(src, dst, 6, seg.len());
            s.add_bytes(&frame[34..]);
            s.checksum()
        };
        let pseudo = pseudo_header(src, dst, 6, seg.len()).value();
        frame[34 + 16..34 + 18].copy_from_slice(&pseudo.to_be_bytes());
        complete(&mut frame, 34, 16).unwrap();
        assert_eq!(u16::from_be_bytes([frame[50], frame[51]]), full);
        assert_eq!(
            complete(&mut frame, 34, 400),
            Err(CompleteError::OutOfRange)
        );
        assert_eq!(
            complete(&mut frame, usize::MAX, 16),
            Err(CompleteError::OutOfRange)
        );
        let before = frame.clone();
        assert_eq!(complete(&mut frame, 34, 17), Err(CompleteError::OddOffset));
        assert_eq!(frame, before, "a refused completion writes nothing");
    }

    /// An Ethernet/IPv4 frame (with an 802.1Q tag if `tagged`) of protocol `proto`, its
    /// L4 header `l4_header` bytes long with the checksum field at `offset` holding the
    /// pseudo-header sum, and a payload chosen so that the checksum comes out as 0x0000.
    /// Returns the frame and where its L4 header starts.
    fn partial_summing_to_zero(
        proto: u8,
        l4_header: usize,
        offset: usize,
        tagged: bool,
    ) -> (alloc::vec::Vec<u8>, usize) {
        let (src, dst) = (
            Ipv4Address::new(192, 0, 2, 1),
            Ipv4Address::new(198, 51, 100, 7),
        );
        let mut frame = alloc::vec![0x02u8; 12];
        if tagged {
            frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
        }
        frame.extend_from_slice(&[0x08, 0x00]);
        let ip = frame.len();
        let mut rng = Rng::new(11);
        let payload = rng.bytes(101);
        let l4_len = l4_header + 2 + payload.len();
        frame.extend_from_slice(&[0x45, 0, 0, (20 + l4_len) as u8, 0, 0, 0x40, 0, 64, proto]);
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        let start = frame.len();
        assert_eq!(start, ip + 20);
        frame.extend_from_slice(&rng.bytes(l4_header));
        // The word that makes the sum come out at zero, 0 while the rest is summed.
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&payload);
        let pseudo = pseudo_header(src, dst, proto, l4_len).value();
        frame[start + offset..start + offset + 2].copy_from_slice(&pseudo.to_be_bytes());
        let check = Sum::of(&frame[start..]).checksum();
        let word = start + l4_header;
        frame[word..word + 2].copy_from_slice(&check.to_be_bytes());
        assert_eq!(Sum::of(&frame[start..]).checksum(), 0);
        (frame, start)
    }

    fn field(frame: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([frame[at], frame[at + 1]])
    }

    #[test]
    fn a_tcp_checksum_of_zero_is_written_as_zero() {
        for tagged in [false, true] {
            let (mut frame, start) = partial_summing_to_zero(6, 20, 16, tagged);
            complete(&mut frame, start, 16).unwrap();
            assert_eq!(field(&frame, start + 16), 0x0000, "tagged {tagged}");
        }
    }

    #[test]
    fn a_udp_checksum_of_zero_is_written_as_all_ones() {
        // RFC 768: a zero in the field says the sender computed no checksum.
        for tagged in [false, true] {
            let (mut frame, start) = partial_summing_to_zero(17, 8, 6, tagged);
            complete(&mut frame, start, 6).unwrap();
            assert_eq!(field(&frame, start + 6), 0xffff, "tagged {tagged}");
        }
    }

    #[test]
    fn a_zero_checksum_behind_no_ipv4_header_is_written_as_all_ones() {
        // Right for any protocol, and the only right value for UDP: what the protocol is
        // is not known unless the L4 header follows an IPv4 header.
        let (mut frame, start) = partial_summing_to_zero(6, 20, 16, false);
        frame[14] = 0x46;
        complete(&mut frame, start, 16).unwrap();
        assert_eq!(field(&frame, start + 16), 0xffff);
        let (mut frame, start) = partial_summing_to_zero(6, 20, 16, false);
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        complete(&mut frame, start, 16).unwrap();
        assert_eq!(field(&frame, start + 16), 0xffff);
    }
}
