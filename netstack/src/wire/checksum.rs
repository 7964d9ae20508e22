//! Internet checksum arithmetic: the one's complement sum ([`Sum`], RFC 1071) every
//! checksum of the crate is computed with, its folding to 16 bits, the incremental
//! update (RFC 1624) for header rewrites in place, the UDP checksum over IPv4, and the
//! verification of a received outer IPv4/UDP header pair (VXLAN and sleeve).
//!
//! Owns only the arithmetic; it never decides which checksum a frame needs. The field
//! sums of the incremental update come from smoltcp's `wire::checksum` (`data`,
//! `combine`); [`Sum`] gives what smoltcp's `data` gives, eight bytes a step instead of
//! two (the outer UDP checksum of every VXLAN frame covers the whole inner frame).

use smoltcp::wire::{checksum, Ipv4Packet, UdpPacket};

/// The new checksum field after the bytes `old` were replaced by `new` in the
/// covered data. `old` and `new` have the same length and start at an even
/// offset of the covered data.
///
/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`, which never produces the
/// `0x0000`-for-`0xFFFF` slip of eqn. 2 that RFC 1624 §3 describes.
pub fn adjust(check: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len());
    !checksum::combine(&[!check, !checksum::data(old), checksum::data(new)])
}

/// Accumulates several field rewrites so one adjustment can be applied to each
/// checksum that covers them (e.g. an address is in both the IPv4 header and the
/// TCP pseudo-header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    /// Sum of (~old + new) 16-bit words over all rewrites so far, carries not
    /// yet folded (a handful of header fields cannot overflow 32 bits).
    sum: u32,
}

impl Delta {
    pub const ZERO: Delta = Delta { sum: 0 };

    /// Records that `old` becomes `new` (same length, even offset).
    pub fn replace(&mut self, old: &[u8], new: &[u8]) {
        debug_assert_eq!(old.len(), new.len());
        self.sum += (!checksum::data(old)) as u32 + checksum::data(new) as u32;
        self.sum = fold(self.sum) as u32;
    }

    /// Records a 16-bit field change.
    pub fn replace_u16(&mut self, old: u16, new: u16) {
        self.sum += (!old) as u32 + new as u32;
    }

    /// Records a 32-bit field change (an IPv4 address).
    pub fn replace_u32(&mut self, old: [u8; 4], new: [u8; 4]) {
        let word = |b: [u8; 4], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        self.replace_u16(word(old, 0), word(new, 0));
        self.replace_u16(word(old, 2), word(new, 2));
    }

    /// Combines two deltas (rewrites of disjoint fields).
    pub fn plus(self, other: Delta) -> Delta {
        Delta {
            sum: fold(self.sum) as u32 + fold(other.sum) as u32,
        }
    }

    /// The checksum field after applying every recorded rewrite to `check`.
    pub fn apply(self, check: u16) -> u16 {
        !checksum::combine(&[!check, fold(self.sum)])
    }

    /// As [`Delta::apply`] for a UDP checksum: 0 means "no checksum" and stays 0,
    /// and a computed 0 is sent as 0xFFFF (RFC 768).
    pub fn apply_udp(self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        match self.apply(check) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// A one's complement sum in progress over 16-bit big-endian words from an even offset
/// of the covered data (an odd last byte is the high byte of a word).
///
/// Words are added as the machine loads them and the folded sum swapped once when it is
/// read, because the one's complement sum is byte-order independent (RFC 1071 section
/// 2 (B)): no byte swap per word. The sum is not folded until it is read, so adding runs
/// of it is exact; 32-bit halves a step into 64 bits leave 2^31 steps (16 GiB) before
/// it could wrap.
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
        // A copy in a local, which the loop keeps in a register.
        let mut s = *self;
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            s.add_word([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        }
        // The last 0-7 bytes in fixed-size steps: a copy of a variable length into a
        // padded word would be a call to memcpy, dearer than the sum of a header.
        let mut rest = words.remainder();
        let mut acc = s.0;
        if let Some((w, r)) = rest.split_first_chunk::<4>() {
            acc += u64::from(u32::from_ne_bytes(*w));
            rest = r;
        }
        if let Some((w, r)) = rest.split_first_chunk::<2>() {
            acc += u64::from(u16::from_ne_bytes(*w));
            rest = r;
        }
        if let Some(&b) = rest.first() {
            acc += u64::from(u16::from_ne_bytes([b, 0]));
        }
        self.0 = acc;
    }

    /// Adds eight bytes at an even offset, as they lie in memory: the step of
    /// [`Sum::add_bytes`], and of loops that copy the bytes they sum.
    #[inline(always)]
    pub fn add_word(&mut self, word: [u8; 8]) {
        let v = u64::from_ne_bytes(word);
        // Summing 32-bit words and folding gives the sum of 16-bit words, because 2^16
        // is 1 modulo 2^16 - 1.
        self.0 += (v >> 32) + (v & 0xffff_ffff);
    }

    /// Adds a 16-bit word in network order.
    pub fn add_u16(&mut self, word: u16) {
        self.0 += u64::from(word.to_be());
    }

    /// Adds another sum (of bytes that follow at an even offset).
    pub fn add(&mut self, other: Sum) {
        self.0 = u64::from(fold64(self.0)) + u64::from(fold64(other.0));
    }

    /// Takes away a sum of bytes it contains.
    pub fn sub(&mut self, other: Sum) {
        self.0 = u64::from(fold64(self.0)) + u64::from(!fold64(other.0));
    }

    /// The folded 16-bit sum, in network order: what smoltcp's `checksum::data` returns
    /// for the same bytes.
    pub fn value(self) -> u16 {
        u16::from_be(fold64(self.0))
    }

    /// The checksum field that makes the covered data sum to zero: `!value`.
    pub fn checksum(self) -> u16 {
        !self.value()
    }
}

/// The one's complement sum over the IPv4 pseudo-header and `udp`; 0xFFFF when the
/// checksum in it is right.
fn udp_ipv4_sum(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
    let pseudo = u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + 17
        + udp.len() as u64;
    fold64(pseudo + u64::from(Sum::of(udp).value()))
}

/// Whether the IPv4 header of `ip` sums right, eight bytes a step.
pub fn ipv4_header_verifies(ip: &Ipv4Packet<&[u8]>) -> bool {
    Sum::of(&ip.as_ref()[..usize::from(ip.header_len())]).value() == 0xffff
}

/// Whether `udp` (its `len` bytes), carried over IPv4 from `src` to `dst`, has a right
/// checksum or none (0, RFC 768), summed eight bytes a step.
pub fn udp_ipv4_verifies(src: [u8; 4], dst: [u8; 4], udp: &UdpPacket<&[u8]>) -> bool {
    let datagram = &udp.as_ref()[..usize::from(udp.len())];
    udp.checksum() == 0 || udp_ipv4_sum(src, dst, datagram) == 0xffff
}

/// End-around carry of a 64-bit one's complement sum down to 16 bits.
pub(crate) fn fold64(acc: u64) -> u16 {
    let s = (acc >> 32) + (acc & 0xffff_ffff);
    let s = (s >> 32) + (s & 0xffff_ffff);
    fold(s as u32)
}

/// End-around carry of a 32-bit one's complement sum down to 16 bits.
pub(crate) fn fold(sum: u32) -> u16 {
    let s = (sum >> 16) + (sum & 0xffff);
    ((s >> 16) + (s & 0xffff)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::test_rng::Rng;

    fn full(data: &[u8]) -> u16 {
        !checksum::data(data)
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 §4 example: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285 gives 0x0000.
        let hc = 0xdd2f;
        assert_eq!(adjust(hc, &[0x55, 0x55], &[0x32, 0x85]), 0x0000);
    }

    #[test]
    fn adjust_matches_full_recompute_on_random_buffers() {
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let len = 2 * (4 + (rng.next_u64() % 40) as usize);
            let mut buf = rng.bytes(len);
            // A first word that is never zero keeps the buffer away from the
            // all-zero case, where +0 and -0 differ (never true of IP headers).
            buf[0] |= 0x40;
            let before = full(&buf);
            let mut delta = Delta::ZERO;
            let edits = 1 + rng.next_u64() % 3;
            let mut expected_by_adjust = before;
            for _ in 0..edits {
                let at = 2 * (1 + (rng.next_u64() as usize % (len / 2 - 3)));
                let width = if rng.next_u64() & 1 == 0 { 2 } else { 4 };
                let old: alloc::vec::Vec<u8> = buf[at..at + width].to_vec();
                let new = rng.bytes(width);
                buf[at..at + width].copy_from_slice(&new);
                delta.replace(&old, &new);
                expected_by_adjust = adjust(expected_by_adjust, &old, &new);
            }
            let after = full(&buf);
            assert_eq!(delta.apply(before), after);
            assert_eq!(expected_by_adjust, after);
        }
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_zero_result_is_all_ones() {
        let mut d = Delta::ZERO;
        d.replace_u16(1, 2);
        assert_eq!(d.apply_udp(0), 0);
        // Find a check value whose adjusted result is 0 and make sure UDP sends 0xFFFF.
        let check = (0..=0xffffu16).find(|&c| d.apply(c) == 0).unwrap();
        assert_eq!(d.apply_udp(check), 0xffff);
    }

    #[test]
    fn sum_equals_smoltcps_over_every_length_and_alignment() {
        let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
        let bytes = rng.bytes(1600);
        for len in 0..200 {
            for start in 0..9 {
                let data = &bytes[start..start + len];
                assert_eq!(
                    Sum::of(data).value(),
                    checksum::data(data),
                    "len {len} at {start}"
                );
            }
        }
        for _ in 0..2_000 {
            let start = (rng.next_u64() % 64) as usize;
            let len = (rng.next_u64() % 1500) as usize;
            let data = &bytes[start..start + len];
            assert_eq!(Sum::of(data).value(), checksum::data(data));
        }
        // All ones and all zeros: the sums where +0 and -0 could be confused.
        assert_eq!(
            Sum::of(&[0xff; 1500]).value(),
            checksum::data(&[0xff; 1500])
        );
        assert_eq!(Sum::of(&[0; 64]).value(), 0);
        let jumbo = rng.bytes(9000);
        assert_eq!(Sum::of(&jumbo).value(), checksum::data(&jumbo));
        // The largest datagram: the 64-bit accumulator does not wrap.
        let big = alloc::vec![0xffu8; 65_535];
        assert_eq!(Sum::of(&big).value(), checksum::data(&big));
    }

    #[test]
    fn sums_of_even_runs_add_and_subtract() {
        let mut rng = Rng::new(99);
        let data = rng.bytes(1001);
        let (a, b) = data.split_at(400);
        let mut s = Sum::of(a);
        s.add(Sum::of(b));
        assert_eq!(s.value(), checksum::data(&data));
        s.sub(Sum::of(a));
        assert_eq!(s.value(), Sum::of(b).value());
    }

    #[test]
    fn udp_checksums_verify_as_smoltcp_computes_them() {
        use smoltcp::wire::{IpAddress, Ipv4Address, UdpPacket};
        let (src, dst) = ([192, 0, 2, 1], [198, 51, 100, 7]);
        let mut rng = Rng::new(7);
        let (s, d) = (
            IpAddress::Ipv4(Ipv4Address::from(src)),
            IpAddress::Ipv4(Ipv4Address::from(dst)),
        );
        for len in [8usize, 9, 20, 63, 64, 1400] {
            let mut udp = rng.bytes(len);
            let mut packet = UdpPacket::new_unchecked(&mut udp[..]);
            packet.set_len(len as u16);
            packet.fill_checksum(&s, &d);
            assert_eq!(udp_ipv4_sum(src, dst, packet.as_ref()), 0xffff, "len {len}");
            assert!(udp_ipv4_verifies(
                src,
                dst,
                &UdpPacket::new_unchecked(&udp[..])
            ));
            // The source port one off: the sum moves by 256, never to a right one.
            udp[0] ^= 0x01;
            assert!(!udp_ipv4_verifies(
                src,
                dst,
                &UdpPacket::new_unchecked(&udp[..])
            ));
        }
    }
}
