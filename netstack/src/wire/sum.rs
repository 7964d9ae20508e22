//! The checksums of the offloads done in software: the sum of bytes as they are copied
//! (segmentation writes a segment and its checksum in one pass), the IPv4
//! pseudo-header, and the completion of a partial checksum (`NEEDS_CSUM`).
//!
//! The arithmetic is [`Sum`]'s (`wire::checksum`). It never decides which checksum a
//! frame needs (`wire::tso`, `wire::gro` and the stages do).

use smoltcp::wire::Ipv4Address;

use super::checksum::Sum;

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
}

/// Completes a partial checksum (`NEEDS_CSUM`): the field at `start + offset` holds the
/// pseudo-header sum; afterwards it holds the checksum of everything from `start` on.
/// A UDP checksum that comes out as zero is left as the sum (0xffff on the wire, RFC 768
/// allows either for a computed zero only as 0xffff), as Linux's `skb_checksum_help`.
pub fn complete(frame: &mut [u8], start: usize, offset: usize) -> Result<(), CompleteError> {
    let field = start.checked_add(offset).ok_or(CompleteError::OutOfRange)?;
    if start > frame.len() || field.checked_add(2).is_none_or(|e| e > frame.len()) {
        return Err(CompleteError::OutOfRange);
    }
    // The sum covers the field as it is (the pseudo-header sum), so it comes out right.
    let mut check = Sum::of(&frame[start..]).checksum();
    if check == 0 {
        check = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&check.to_be_bytes());
    Ok(())
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
    }
}
