//! The Internet checksum over whole payloads (RFC 1071): the sum of a buffer, the sum
//! of bytes as they are copied (segmentation writes a segment and its checksum in one
//! pass), the completion of a partial checksum (`NEEDS_CSUM`) and the pseudo-header.
//!
//! Owns only the arithmetic. Sums are of 16-bit big-endian words from an even offset of
//! the covered data; a [`Sum`] is never folded until it is read, so adding runs of it is
//! exact. It never decides which checksum a frame needs (`wire::tso`, `wire::gro` and
//! the stages do).

use smoltcp::wire::Ipv4Address;

/// A one's complement sum in progress, in native byte order (RFC 1071 2.(B)): words are
/// added as the machine loads them and swapped once at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum(u64);

impl Sum {
    pub const ZERO: Sum = Sum(0);

    /// The sum of `data`, taken to start at an even offset.
    pub fn of(data: &[u8]) -> Sum {
        let mut s = Sum::ZERO;
        s.add_bytes(data);
        s
    }

    /// Adds `data`, taken to start at an even offset of the covered bytes.
    pub fn add_bytes(&mut self, data: &[u8]) {
        let (words, rest) = data.as_chunks::<8>();
        let mut acc = self.0;
        for w in words {
            let v = u64::from_ne_bytes(*w);
            // Two 32-bit halves into 64 bits: no carry is lost for any frame size.
            acc += (v & 0xffff_ffff) + (v >> 32);
        }
        acc = fold64(acc);
        let (pairs, odd) = rest.as_chunks::<2>();
        for p in pairs {
            acc += u64::from(u16::from_ne_bytes(*p));
        }
        if let Some(&b) = odd.first() {
            acc += u64::from(u16::from_ne_bytes([b, 0]));
        }
        self.0 = acc;
    }

    /// Adds a 16-bit word in network order.
    pub fn add_u16(&mut self, word: u16) {
        self.0 += u64::from(word.to_be());
    }

    /// Adds another sum (of bytes that follow at an even offset).
    pub fn add(&mut self, other: Sum) {
        self.0 = fold64(self.0) + fold64(other.0);
    }

    /// Takes away a sum of bytes it contains.
    pub fn sub(&mut self, other: Sum) {
        let o = !self::fold16(fold64(other.0)) as u64;
        self.0 = fold64(self.0) + o;
    }

    /// The folded 16-bit sum, in network order.
    pub fn value(self) -> u16 {
        u16::from_be(fold16(fold64(self.0)))
    }

    /// The checksum field that makes the covered data sum to zero: `!value`.
    pub fn checksum(self) -> u16 {
        !self.value()
    }
}

/// Copies `src` into `dst` (same length) and returns the sum of the bytes, taken to start
/// at an even offset: one pass over the data instead of a copy and a sum.
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> Sum {
    debug_assert_eq!(dst.len(), src.len());
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let whole = n / 8 * 8;
    let mut acc = 0u64;
    for (d, s) in dst[..whole]
        .chunks_exact_mut(8)
        .zip(src[..whole].chunks_exact(8))
    {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        d.copy_from_slice(&w);
        let v = u64::from_ne_bytes(w);
        acc += (v & 0xffff_ffff) + (v >> 32);
    }
    dst[whole..].copy_from_slice(&src[whole..]);
    let mut sum = Sum(fold64(acc));
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

fn fold64(v: u64) -> u64 {
    let v = (v & 0xffff_ffff) + (v >> 32);
    (v & 0xffff_ffff) + (v >> 32)
}

fn fold16(v: u64) -> u16 {
    let mut v = v;
    while v > 0xffff {
        v = (v & 0xffff) + (v >> 16);
    }
    v as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use smoltcp::wire::checksum;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
        (0..len).map(|_| rng.next() as u8).collect()
    }

    #[test]
    fn sum_matches_smoltcp_for_every_length_up_to_a_jumbo_frame() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for len in (0..200).chain([1499, 1500, 9000, 65_535]) {
            let data = bytes(&mut rng, len);
            assert_eq!(Sum::of(&data).value(), checksum::data(&data), "len {len}");
        }
    }

    #[test]
    fn copy_and_sum_copies_and_sums() {
        let mut rng = Rng(7);
        for len in [0usize, 1, 7, 8, 9, 63, 1398, 1399] {
            let src = bytes(&mut rng, len);
            let mut dst = alloc::vec![0u8; len];
            let s = copy_and_sum(&mut dst, &src);
            assert_eq!(dst, src);
            assert_eq!(s.value(), checksum::data(&src), "len {len}");
        }
    }

    #[test]
    fn sums_of_even_runs_add_and_subtract() {
        let mut rng = Rng(99);
        let data = bytes(&mut rng, 1001);
        let (a, b) = data.split_at(400);
        let mut s = Sum::of(a);
        s.add(Sum::of(b));
        assert_eq!(s.value(), checksum::data(&data));
        s.sub(Sum::of(a));
        assert_eq!(s.value(), Sum::of(b).value());
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
        let mut rng = Rng(3);
        let (src, dst) = (Ipv4Address::new(10, 1, 2, 3), Ipv4Address::new(10, 3, 2, 1));
        let seg = bytes(&mut rng, 333);
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
