//! VXLAN (RFC 7348): the 8-byte header as a zero-copy [`Packet`] view and an owned
//! [`Repr`], in smoltcp's wire style, plus the whole outer frame around it:
//! [`encapsulate`] builds Ethernet + IPv4 + UDP + VXLAN around an inner L2 frame and
//! [`decapsulate`] checks and strips them. Wire-compatible with Linux's `vxlan` device.
//!
//! This module only knows bytes: it never decides where a frame goes (that is
//! `overlay`), keeps no state, and never panics on what the network sends.

use core::fmt;

use alloc::vec::Vec;
use byteorder::{ByteOrder, NetworkEndian};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Ipv4Address, Ipv4Packet, ETHERNET_HEADER_LEN,
    IPV4_HEADER_LEN, UDP_HEADER_LEN,
};

use crate::base::Vni;
use crate::wire::buffer::PacketBuf;
use crate::wire::checksum::{self, Sum};
use crate::wire::outer::{self, OuterError};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::RESERVED2 + 1;

/// Bytes an encapsulated frame has on top of its inner Ethernet frame: outer
/// Ethernet (14) + IPv4 without options (20) + UDP (8) + VXLAN (8) = 50.
pub const ENCAP_OVERHEAD: usize =
    ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN + HEADER_LEN;

/// Linux's default `ip_local_port_range` (32768..=60999), from which Linux's `vxlan`
/// device picks its UDP source ports (`udp_flow_src_port` when `srcport 0 0`).
pub const DEFAULT_SRC_PORT_RANGE: SrcPortRange = SrcPortRange {
    min: 32768,
    max: 61000,
};

/// The "I" flag: the VNI is valid (RFC 7348 section 5). All other flag bits are reserved.
const FLAG_I: u8 = 0x08;

mod field {
    #![allow(non_snake_case)]
    pub type Field = core::ops::Range<usize>;

    pub const FLAGS: usize = 0;
    pub const RESERVED1: Field = 1..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED2: usize = 7;
}

/// Why a VXLAN header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Fewer than [`HEADER_LEN`] bytes.
    Truncated,
    /// The I flag is clear: RFC 7348 section 5 says such a packet carries no valid VNI.
    NoVniFlag,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "VXLAN header truncated"),
            Error::NoVniFlag => write!(f, "VXLAN I flag not set"),
        }
    }
}

/// A read/write view of a VXLAN header and the inner frame after it.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[allow(clippy::len_without_is_empty)]
impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap a buffer without checking its length; accessors may panic on short buffers.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap a buffer after [`check_len`](Self::check_len): then no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole flags byte, reserved bits included.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag (VNI valid) is set.
    #[inline]
    pub fn vni_flag(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VNI field.
    #[inline]
    pub fn vni(&self) -> Vni {
        let b = &self.buffer.as_ref()[field::VNI];
        Vni::from_be_bytes([b[0], b[1], b[2]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    #[inline]
    pub fn set_vni(&mut self, value: Vni) {
        self.buffer.as_mut()[field::VNI].copy_from_slice(&value.to_be_bytes());
    }

    /// Zero both reserved fields (RFC 7348: "MUST be set to zero on transmission").
    #[inline]
    pub fn clear_reserved(&mut self) {
        let data = self.buffer.as_mut();
        data[field::RESERVED1].fill(0);
        data[field::RESERVED2] = 0;
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The meaning of a VXLAN header: which network the inner frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub vni: Vni,
}

impl Repr {
    /// Parse a header. Reserved bits are ignored on receive (RFC 7348 section 5), the
    /// I flag is required.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        if !packet.vni_flag() {
            return Err(Error::NoVniFlag);
        }
        Ok(Repr { vni: packet.vni() })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Write the header: I flag set, every reserved bit zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

/// A half-open range `min..max` of UDP source ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrcPortRange {
    pub min: u16,
    pub max: u16,
}

/// How the outer IPv4 header's DF bit is set (Linux's `df` option of a `vxlan` link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DfPolicy {
    /// DF clear, so the underlay may fragment: Linux's default (`df unset`).
    #[default]
    Unset,
    /// DF always set.
    Set,
    /// DF copied from the inner IPv4 header (clear for non-IPv4).
    Inherit,
}

/// Everything about the outer headers that is fixed per sending VTEP and peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    pub src_mac: EthernetAddress,
    /// The underlay next hop towards `dst_ip` (the peer itself, or a router).
    pub dst_mac: EthernetAddress,
    pub src_ip: Ipv4Address,
    pub dst_ip: Ipv4Address,
    pub src_port: u16,
    pub dst_port: u16,
    pub vni: Vni,
    /// Outer IPv4 identification; Linux numbers every tunnel packet since DF is clear.
    pub ident: u16,
    pub ttl: u8,
    pub df: DfPolicy,
    /// Compute the outer UDP checksum (Linux's `udpcsum`); when false it is sent as
    /// zero, which RFC 7348 section 5 allows over IPv4 (`noudpcsum`).
    pub udp_checksum: bool,
}

/// Build the complete outer frame around `inner` (an Ethernet frame without FCS) and
/// append it to `out`. The outer ECN bits follow the inner IPv4 header as Linux does
/// (RFC 6040 normal mode); the DSCP is zero.
///
/// The caller keeps `inner` within its MTU: a frame that would not fit in an IPv4
/// packet (more than 65 535 - 36 bytes) is refused with `Err(TooLong)`.
pub fn encapsulate(outer: &Outer, inner: &[u8], out: &mut Vec<u8>) -> Result<(), TooLong> {
    let udp_len = UDP_HEADER_LEN + HEADER_LEN + inner.len();
    if IPV4_HEADER_LEN + udp_len > usize::from(u16::MAX) {
        return Err(TooLong);
    }
    let start = out.len();
    out.resize(start + ENCAP_OVERHEAD, 0);
    out.extend_from_slice(inner);
    emit_outer(outer, inner_ipv4_ecn_df(inner), &mut out[start..]);
    Ok(())
}

/// Why [`encapsulate_in_place`] left a frame as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InPlaceError {
    /// Too long for one IPv4 packet (see [`encapsulate`]).
    TooLong,
    /// Fewer than [`ENCAP_OVERHEAD`] bytes of headroom in front of the frame.
    NoHeadroom,
}

/// [`encapsulate`] where the inner frame lies: the outer headers go into the buffer's
/// headroom in front of it, so the frame is neither copied nor moved.
pub fn encapsulate_in_place(outer: &Outer, buf: &mut PacketBuf) -> Result<(), InPlaceError> {
    if IPV4_HEADER_LEN + UDP_HEADER_LEN + HEADER_LEN + buf.len() > usize::from(u16::MAX) {
        return Err(InPlaceError::TooLong);
    }
    let inner_ip = inner_ipv4_ecn_df(buf.frame());
    let frame = buf
        .push_front(ENCAP_OVERHEAD)
        .ok_or(InPlaceError::NoHeadroom)?;
    emit_outer(outer, inner_ip, frame);
    Ok(())
}

/// Writes the outer Ethernet/IPv4/UDP/VXLAN headers into the first [`ENCAP_OVERHEAD`]
/// bytes of `frame`, the inner frame (whose IPv4 ECN and DF are `inner_ip`) after them.
///
/// The IPv4 and UDP checksums are summed from the header fields as they are written,
/// not read back from the frame: a wide load of bytes just stored narrowly stalls on
/// store forwarding, and only the inner frame is summed from memory.
fn emit_outer(outer: &Outer, inner_ip: Option<(u8, bool)>, frame: &mut [u8]) {
    let udp_len = (frame.len() - ETHERNET_HEADER_LEN - IPV4_HEADER_LEN) as u16;
    let total_len = IPV4_HEADER_LEN as u16 + udp_len;
    let (head, inner) = frame.split_at_mut(ENCAP_OVERHEAD);
    let head: &mut [u8; ENCAP_OVERHEAD] = head.try_into().expect("split at ENCAP_OVERHEAD");

    head[0..6].copy_from_slice(&outer.dst_mac.0);
    head[6..12].copy_from_slice(&outer.src_mac.0);
    head[12..14].copy_from_slice(&0x0800u16.to_be_bytes());

    // IPv4: version 4, IHL 5, DSCP 0, ECN after the inner header (RFC 6040); the ident
    // and DF after the tunnel's own policy.
    let ecn = inner_ip.map_or(0, |(ecn, _)| ecn_encapsulate(ecn));
    let df = match outer.df {
        DfPolicy::Unset => false,
        DfPolicy::Set => true,
        DfPolicy::Inherit => inner_ip.is_some_and(|(_, df)| df),
    };
    let ver_tos = 0x4500 | u16::from(ecn);
    let flags: u16 = if df { 0x4000 } else { 0 };
    let ttl_proto = u16::from(outer.ttl) << 8 | 17;
    let (src, dst) = (outer.src_ip.octets(), outer.dst_ip.octets());
    let addrs = u32::from(u16::from_be_bytes([src[0], src[1]]))
        + u32::from(u16::from_be_bytes([src[2], src[3]]))
        + u32::from(u16::from_be_bytes([dst[0], dst[1]]))
        + u32::from(u16::from_be_bytes([dst[2], dst[3]]));
    let ip_sum = u32::from(ver_tos)
        + u32::from(total_len)
        + u32::from(outer.ident)
        + u32::from(flags)
        + u32::from(ttl_proto)
        + addrs;
    head[14..16].copy_from_slice(&ver_tos.to_be_bytes());
    head[16..18].copy_from_slice(&total_len.to_be_bytes());
    head[18..20].copy_from_slice(&outer.ident.to_be_bytes());
    head[20..22].copy_from_slice(&flags.to_be_bytes());
    head[22..24].copy_from_slice(&ttl_proto.to_be_bytes());
    head[24..26].copy_from_slice(&(!checksum::fold(ip_sum)).to_be_bytes());
    head[26..30].copy_from_slice(&src);
    head[30..34].copy_from_slice(&dst);

    // UDP, its checksum field zero until summed; then VXLAN: the I flag and the VNI.
    head[34..36].copy_from_slice(&outer.src_port.to_be_bytes());
    head[36..38].copy_from_slice(&outer.dst_port.to_be_bytes());
    head[38..40].copy_from_slice(&udp_len.to_be_bytes());
    head[40..42].copy_from_slice(&[0, 0]);
    let vni = outer.vni.to_be_bytes();
    head[42..50].copy_from_slice(&[FLAG_I, 0, 0, 0, vni[0], vni[1], vni[2], 0]);
    if outer.udp_checksum {
        // Pseudo-header (addresses, protocol, length), UDP header, VXLAN header, as
        // 16-bit words; then the inner frame, which starts on an even offset.
        let head_sum = u64::from(addrs)
            + 17
            + u64::from(udp_len)
            + u64::from(outer.src_port)
            + u64::from(outer.dst_port)
            + u64::from(udp_len)
            + u64::from(u16::from_be_bytes([FLAG_I, 0]))
            + u64::from(u16::from_be_bytes([vni[0], vni[1]]))
            + u64::from(u16::from_be_bytes([vni[2], 0]));
        let sum = checksum::fold64(head_sum + u64::from(Sum::of(inner).value()));
        let check = match !sum {
            0 => 0xffff,
            c => c,
        };
        head[40..42].copy_from_slice(&check.to_be_bytes());
    }
}

/// An inner frame too long to be carried in one IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

/// RFC 6040 section 4.1 normal mode, as Linux's `INET_ECN_encapsulate`: copy the inner
/// ECN field, except that CE is sent as ECT(0).
fn ecn_encapsulate(inner_ecn: u8) -> u8 {
    if inner_ecn == 0x03 {
        0x02
    } else {
        inner_ecn
    }
}

/// The inner frame's IPv4 ECN field and DF bit, when it is an untagged IPv4 frame.
fn inner_ipv4_ecn_df(inner: &[u8]) -> Option<(u8, bool)> {
    let frame = EthernetFrame::new_checked(inner).ok()?;
    if frame.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    if frame.payload().len() < IPV4_HEADER_LEN {
        return None;
    }
    // Unchecked: only the fixed header is read, and it is there.
    let ip = Ipv4Packet::new_unchecked(frame.payload());
    Some((ip.ecn(), ip.dont_frag()))
}

/// What [`decapsulate`] found: the outer addresses and the inner frame, borrowed from
/// the received buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decapsulated<'a> {
    pub outer_src_mac: EthernetAddress,
    pub src_ip: Ipv4Address,
    pub dst_ip: Ipv4Address,
    pub src_port: u16,
    pub vni: Vni,
    /// The inner Ethernet frame (no FCS).
    pub inner: &'a [u8],
    /// Where `inner` starts in the received frame.
    pub inner_at: usize,
}

/// Why [`decapsulate`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecapError {
    /// The outer headers: not IPv4/UDP to the VXLAN port (`NotForPort`: not ours to
    /// judge, hand it to the rest of the stack), or refused.
    Outer(OuterError),
    /// The VXLAN header itself was refused.
    Vxlan(Error),
}

/// Check and strip the outer Ethernet/IPv4/UDP/VXLAN headers of a frame received on the
/// uplink. `dst_port` is the configured VXLAN port. Checksums are verified (the UDP one
/// only when non-zero, RFC 768). Nothing here looks at VNIs or senders: `overlay` does.
pub fn decapsulate(frame: &[u8], dst_port: u16) -> Result<Decapsulated<'_>, DecapError> {
    let outer = outer::udp_to_port(frame, dst_port).map_err(DecapError::Outer)?;
    let vxlan = Packet::new_checked(outer.payload).map_err(DecapError::Vxlan)?;
    let repr = Repr::parse(&vxlan).map_err(DecapError::Vxlan)?;
    Ok(Decapsulated {
        inner_at: outer.payload_at + HEADER_LEN,
        outer_src_mac: outer.src_mac,
        src_ip: outer.src_ip,
        dst_ip: outer.dst_ip,
        src_port: outer.src_port,
        vni: repr.vni,
        inner: vxlan.payload(),
    })
}

/// The UDP source port for an inner frame, as Linux's `udp_flow_src_port` picks it: a
/// hash of the inner flow spread over `range`, so underlay ECMP spreads flows while one
/// flow keeps one path. The hash covers the inner MACs and, for IPv4, the addresses,
/// the protocol and the TCP/UDP/SCTP ports; it is symmetric (both directions of a flow
/// get the same port, as Linux's flow hash is) and keyed by `seed` so that a peer
/// cannot aim its traffic at one port.
pub fn flow_src_port(inner: &[u8], seed: u32, range: SrcPortRange) -> u16 {
    let mut hash = flow_hash(inner, seed);
    if range.max <= range.min {
        return range.min;
    }
    // Only the upper 16 bits matter below; fold the lower ones in (as Linux does).
    hash ^= hash << 16;
    let span = u64::from(range.max - range.min);
    // (hash * span) >> 32 < span <= u16::MAX, so the cast is exact.
    range.min + ((u64::from(hash) * span) >> 32) as u16
}

fn flow_hash(inner: &[u8], seed: u32) -> u32 {
    // The flow key, 28 bytes: sorted MACs (12), ethertype and IP protocol (4), sorted
    // address+port pairs (12); unused parts stay zero. Each sorted pair is two 48-bit
    // big-endian numbers, compared as numbers (as bytes would be).
    let Some(eth) = inner.first_chunk::<ETHERNET_HEADER_LEN>() else {
        let mut key = [0u8; 28];
        key[..inner.len()].copy_from_slice(inner);
        return hash_key(key_lanes(&key), seed);
    };
    let be48 = |b: &[u8]| NetworkEndian::read_u48(b);
    let sorted = |a: u64, b: u64| if a <= b { (a, b) } else { (b, a) };
    let (mac_lo, mac_hi) = sorted(be48(&eth[0..6]), be48(&eth[6..12]));
    let ethertype = NetworkEndian::read_u16(&eth[12..14]);
    let (mut proto, mut lo, mut hi) = (0, 0, 0);
    if let Some((src, dst, p)) = ipv4_flow(&inner[ETHERNET_HEADER_LEN..], ethertype == 0x0800) {
        (lo, hi) = sorted(src, dst);
        proto = p;
    }
    hash_key(
        [
            mac_lo << 16 | u64::from(ethertype),
            mac_hi << 16 | u64::from(proto),
            lo,
            hi,
        ],
        seed,
    )
}

/// The 28-byte flow key as the four numbers [`hash_key`] mixes: each MAC with the two
/// bytes after the pair (ethertype, protocol), then each address+port.
fn key_lanes(key: &[u8; 28]) -> [u64; 4] {
    let be = |b: &[u8]| NetworkEndian::read_u48(b);
    [
        be(&key[0..6]) << 16 | u64::from(NetworkEndian::read_u16(&key[12..14])),
        be(&key[6..12]) << 16 | u64::from(NetworkEndian::read_u16(&key[14..16])),
        be(&key[16..22]),
        be(&key[22..28]),
    ]
}

/// The wide multiply-and-fold of wyhash: the 128-bit product's halves xored.
fn mum(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p >> 64) as u64 ^ p as u64
}

/// Mixes the flow key keyed by `seed`: two independent wide multiplies of the key,
/// each input xored with a seed-derived constant so that a sender who does not know
/// the seed cannot pick keys that collide, then one more to spread every key bit
/// over the result. Three multiplies on two chains: the datapath pays it per frame.
fn hash_key(lanes: [u64; 4], seed: u32) -> u32 {
    const K: [u64; 5] = [
        0xa076_1d64_78bd_642f,
        0xe703_7ed1_a0b4_28db,
        0x8ebc_6af0_9c88_c6e3,
        0x5899_65cc_7537_4cc3,
        0x1d8e_4e27_c47d_124f,
    ];
    let s = u64::from(seed) | u64::from(seed) << 32;
    let a = mum(lanes[0] ^ K[0] ^ s, lanes[1] ^ K[1]);
    let b = mum(lanes[2] ^ K[2], lanes[3] ^ K[3] ^ s);
    let h = mum(a ^ K[4], b ^ K[0] ^ s);
    (h ^ h >> 32) as u32
}

/// For IPv4, `(src addr ++ src port, dst addr ++ dst port, protocol)`; ports are zero
/// when the protocol has none or the packet is a non-first fragment.
/// The IPv4 source and destination of `ip` as 48-bit numbers (address, then port, or
/// 0 where there is no port), and its protocol.
fn ipv4_flow(ip: &[u8], is_ipv4: bool) -> Option<(u64, u64, u8)> {
    let header = ip.first_chunk::<IPV4_HEADER_LEN>()?;
    if !is_ipv4 || header[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let proto = header[9];
    let mut src = u64::from(NetworkEndian::read_u32(&header[12..16])) << 16;
    let mut dst = u64::from(NetworkEndian::read_u32(&header[16..20])) << 16;
    let first_fragment = NetworkEndian::read_u16(&header[6..8]) & 0x1fff == 0;
    // TCP, UDP, SCTP, UDP-Lite: ports in the first four bytes of the L4 header.
    let has_ports = matches!(proto, 6 | 17 | 132 | 136);
    if has_ports && first_fragment && ihl >= IPV4_HEADER_LEN {
        if let Some(ports) = ip.get(ihl..ihl + 4) {
            src |= u64::from(NetworkEndian::read_u16(&ports[0..2]));
            dst |= u64::from(NetworkEndian::read_u16(&ports[2..4]));
        }
    }
    Some((src, dst, proto))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::ports::VXLAN_PORT;
    use crate::base::test_rng::Rng;
    use alloc::vec;
    use smoltcp::wire::UdpPacket;

    /// An ARP request for 10.81.1.2 sent by Linux 6.18's `vxlan` device (VNI 42, dstport
    /// 4789, `noudpcsum`), captured with tcpdump on the underlay veth.
    static LINUX_ARP: [u8; 92] = [
        0x5e, 0xd6, 0x23, 0x91, 0x1a, 0x86, 0xf6, 0x32, 0x40, 0x39, 0x48, 0x11, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x4e, 0x7c, 0x3f, 0x00, 0x00, 0x40, 0x11, 0x7a, 0x5c, 0xc0, 0x00, 0x02, 0x01,
        0xc0, 0x00, 0x02, 0x02, 0x87, 0x5f, 0x12, 0xb5, 0x00, 0x3a, 0x00, 0x00, 0x08, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x2a, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0x51,
        0x01, 0x01, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x42, 0x0a,
        0x51, 0x01, 0x01, 0x0a, 0x51, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x51,
        0x01, 0x02,
    ];

    /// `ping -s 16 -M do 10.81.1.2` through the same device: inner ICMP echo request
    /// with DF set; outer DF clear, IP id 0x7c40, TTL 64, UDP source port 33403.
    static LINUX_PING: [u8; 108] = [
        0x5e, 0xd6, 0x23, 0x91, 0x1a, 0x86, 0xf6, 0x32, 0x40, 0x39, 0x48, 0x11, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x5e, 0x7c, 0x40, 0x00, 0x00, 0x40, 0x11, 0x7a, 0x4b, 0xc0, 0x00, 0x02, 0x01,
        0xc0, 0x00, 0x02, 0x02, 0x82, 0x7b, 0x12, 0xb5, 0x00, 0x4a, 0x00, 0x00, 0x08, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x2a, 0x00, 0x02, 0x42, 0x0a, 0x51, 0x01, 0x02, 0x02, 0x42, 0x0a, 0x51,
        0x01, 0x01, 0x08, 0x00, 0x45, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x01, 0x24,
        0x2d, 0x0a, 0x51, 0x01, 0x01, 0x0a, 0x51, 0x01, 0x02, 0x08, 0x00, 0x0c, 0x47, 0x2f, 0xfa,
        0x00, 0x01, 0x3b, 0x2c, 0x07, 0x6b, 0x00, 0x00, 0x00, 0x00, 0x70, 0x26, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00,
    ];

    const OUTER_SRC_MAC: EthernetAddress = EthernetAddress([0xf6, 0x32, 0x40, 0x39, 0x48, 0x11]);
    const OUTER_DST_MAC: EthernetAddress = EthernetAddress([0x5e, 0xd6, 0x23, 0x91, 0x1a, 0x86]);

    fn linux_outer(ident: u16, src_port: u16) -> Outer {
        Outer {
            src_mac: OUTER_SRC_MAC,
            dst_mac: OUTER_DST_MAC,
            src_ip: Ipv4Address::new(192, 0, 2, 1),
            dst_ip: Ipv4Address::new(192, 0, 2, 2),
            src_port,
            dst_port: VXLAN_PORT,
            vni: Vni::new(42).unwrap(),
            ident,
            ttl: 64,
            df: DfPolicy::Unset,
            udp_checksum: false,
        }
    }

    #[test]
    fn header_deconstruct() {
        let bytes = [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xaa];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.vni_flag());
        assert_eq!(packet.vni(), Vni::new(0x123456).unwrap());
        assert_eq!(packet.payload(), &[0xaa]);
        assert_eq!(
            Repr::parse(&packet),
            Ok(Repr {
                vni: Vni::new(0x123456).unwrap()
            })
        );
    }

    #[test]
    fn reserved_bits_ignored_on_receive_zero_on_send() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x07, 0xff];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet),
            Ok(Repr {
                vni: Vni::new(7).unwrap()
            })
        );

        let mut out = [0xffu8; 8];
        Repr {
            vni: Vni::new(7).unwrap(),
        }
        .emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, [0x08, 0, 0, 0, 0, 0, 7, 0]);
    }

    #[test]
    fn i_flag_required() {
        // Every flag combination without I, including all other reserved bits set.
        let packet_bytes = [0xf7, 0, 0, 0, 0, 0, 1, 0];
        let packet = Packet::new_checked(&packet_bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::NoVniFlag));
    }

    #[test]
    fn truncated_header() {
        for len in 0..HEADER_LEN {
            let bytes = vec![0x08; len];
            assert_eq!(Packet::new_checked(&bytes[..]), Err(Error::Truncated));
        }
    }

    #[test]
    fn decap_linux_frames() {
        let d = decapsulate(&LINUX_ARP, VXLAN_PORT).unwrap();
        assert_eq!(d.vni, Vni::new(42).unwrap());
        assert_eq!(d.src_ip, Ipv4Address::new(192, 0, 2, 1));
        assert_eq!(d.dst_ip, Ipv4Address::new(192, 0, 2, 2));
        assert_eq!(d.src_port, 34655);
        assert_eq!(d.outer_src_mac, OUTER_SRC_MAC);
        assert_eq!(d.inner, &LINUX_ARP[50..]);
        let inner = EthernetFrame::new_checked(d.inner).unwrap();
        assert_eq!(inner.ethertype(), EthernetProtocol::Arp);
        assert!(inner.dst_addr().is_broadcast());

        let d = decapsulate(&LINUX_PING, VXLAN_PORT).unwrap();
        assert_eq!(d.vni, Vni::new(42).unwrap());
        assert_eq!(d.inner.len(), 58);
        assert_eq!(d.inner, &LINUX_PING[50..]);
    }

    #[test]
    fn encap_matches_linux_bytes() {
        let mut out = Vec::new();
        encapsulate(&linux_outer(0x7c3f, 34655), &LINUX_ARP[50..], &mut out).unwrap();
        assert_eq!(out, LINUX_ARP);
        out.clear();
        encapsulate(&linux_outer(0x7c40, 33403), &LINUX_PING[50..], &mut out).unwrap();
        assert_eq!(out, LINUX_PING);
    }

    #[test]
    fn encap_with_udp_checksum_round_trips_and_verifies() {
        let mut outer = linux_outer(1, 40000);
        outer.udp_checksum = true;
        let mut out = Vec::new();
        encapsulate(&outer, &LINUX_PING[50..], &mut out).unwrap();
        let udp = UdpPacket::new_checked(&out[34..]).unwrap();
        assert_ne!(udp.checksum(), 0);
        assert!(udp.verify_checksum(&outer.src_ip.into(), &outer.dst_ip.into()));
        let d = decapsulate(&out, VXLAN_PORT).unwrap();
        assert_eq!(d.inner, &LINUX_PING[50..]);

        // One flipped bit in the inner frame breaks the checksum: refused.
        out[70] ^= 0x01;
        assert_eq!(
            decapsulate(&out, VXLAN_PORT),
            Err(DecapError::Outer(OuterError::BadHeader))
        );
    }

    /// The outer checksums, summed from the header fields, are what smoltcp computes
    /// from the bytes, over any inner length (odd ones too), ECN, DF, ident, TTL, VNI
    /// and ports, including fields whose words carry.
    #[test]
    fn outer_checksums_verify_for_any_fields() {
        let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
        let mut next = move || rng.next_u64();
        for round in 0..2000u64 {
            let r = next();
            let len = (r % 200) as usize;
            let mut inner: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 34 && round % 2 == 0 {
                inner[12..14].copy_from_slice(&[8, 0]);
                inner[14] = 0x45;
            }
            let mut outer = linux_outer((r >> 8) as u16, (r >> 24) as u16);
            outer.src_ip = Ipv4Address::from((r >> 32) as u32);
            outer.dst_ip = Ipv4Address::from(next() as u32);
            outer.dst_port = if round % 3 == 0 { VXLAN_PORT } else { 0xffff };
            outer.vni = Vni::new((r >> 40) as u32 & 0xff_ffff).unwrap();
            outer.ttl = (r >> 16) as u8;
            outer.df = [DfPolicy::Unset, DfPolicy::Set, DfPolicy::Inherit][round as usize % 3];
            outer.udp_checksum = true;
            let mut out = Vec::new();
            encapsulate(&outer, &inner, &mut out).unwrap();
            let ip = Ipv4Packet::new_checked(&out[ETHERNET_HEADER_LEN..]).unwrap();
            assert!(ip.verify_checksum(), "round {round}");
            assert_eq!(ip.ident(), outer.ident);
            assert_eq!(ip.hop_limit(), outer.ttl);
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert!(
                udp.verify_checksum(&outer.src_ip.into(), &outer.dst_ip.into()),
                "round {round}"
            );
            let d = decapsulate(&out, outer.dst_port).unwrap();
            assert_eq!(
                (d.inner, d.vni, d.src_port),
                (&inner[..], outer.vni, outer.src_port)
            );
        }
    }

    #[test]
    fn df_policy() {
        let inner_df = &LINUX_PING[50..]; // inner IPv4 has DF
        let inner_arp = &LINUX_ARP[50..];
        for (df, inner, want) in [
            (DfPolicy::Unset, inner_df, false),
            (DfPolicy::Set, inner_arp, true),
            (DfPolicy::Inherit, inner_df, true),
            (DfPolicy::Inherit, inner_arp, false),
        ] {
            let mut outer = linux_outer(9, 40000);
            outer.df = df;
            let mut out = Vec::new();
            encapsulate(&outer, inner, &mut out).unwrap();
            let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
            assert_eq!(ip.dont_frag(), want, "{df:?}");
            assert!(ip.verify_checksum());
        }
    }

    #[test]
    fn ecn_follows_inner() {
        for (inner_ecn, outer_ecn) in [(0, 0), (1, 1), (2, 2), (3, 2)] {
            let mut inner = LINUX_PING[50..].to_vec();
            inner[15] = inner_ecn;
            let mut out = Vec::new();
            encapsulate(&linux_outer(1, 40000), &inner, &mut out).unwrap();
            let ip = Ipv4Packet::new_checked(&out[14..]).unwrap();
            assert_eq!(ip.ecn(), outer_ecn);
            assert_eq!(ip.dscp(), 0);
        }
    }

    #[test]
    fn round_trip_any_length_and_vni() {
        let mut seed = 0x1234_5678u32;
        for len in [14usize, 15, 60, 64, 100, 1400, 1514, 9014] {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let inner: Vec<u8> = (0..len).map(|i| (i as u32 ^ seed) as u8).collect();
            let mut outer = linux_outer(len as u16, 50000);
            outer.vni = Vni::new(seed & Vni::MAX).unwrap();
            outer.udp_checksum = len % 2 == 0;
            let mut out = vec![0xee; 3]; // appends after what is there
            encapsulate(&outer, &inner, &mut out).unwrap();
            assert_eq!(&out[..3], &[0xee; 3]);
            assert_eq!(out.len(), 3 + ENCAP_OVERHEAD + len);
            let d = decapsulate(&out[3..], VXLAN_PORT).unwrap();
            assert_eq!(d.vni, outer.vni);
            assert_eq!(d.inner, &inner[..]);
            assert_eq!(d.src_port, 50000);
        }
    }

    #[test]
    fn too_long_refused() {
        let inner = vec![0u8; 65535 - 36 + 1];
        let mut out = Vec::new();
        assert_eq!(
            encapsulate(&linux_outer(1, 1), &inner, &mut out),
            Err(TooLong)
        );
        let inner = vec![0u8; 65535 - 36];
        assert_eq!(encapsulate(&linux_outer(1, 1), &inner, &mut out), Ok(()));
    }

    #[test]
    fn decap_refusals() {
        // Another UDP port: not VXLAN.
        assert_eq!(
            decapsulate(&LINUX_PING, 8472),
            Err(DecapError::Outer(OuterError::NotForPort))
        );
        // Not IPv4.
        let mut f = LINUX_PING;
        f[12] = 0x86;
        f[13] = 0xdd;
        assert_eq!(
            decapsulate(&f, VXLAN_PORT),
            Err(DecapError::Outer(OuterError::NotForPort))
        );
        // TCP, not UDP (checksum not even looked at).
        let mut f = LINUX_PING;
        f[23] = 6;
        assert_eq!(
            decapsulate(&f, VXLAN_PORT),
            Err(DecapError::Outer(OuterError::NotForPort))
        );
        // Bad outer IPv4 checksum.
        let mut f = LINUX_PING;
        f[24] ^= 0xff;
        assert_eq!(
            decapsulate(&f, VXLAN_PORT),
            Err(DecapError::Outer(OuterError::BadHeader))
        );
        // A first fragment (MF set): refused whatever the checksum.
        let mut f = LINUX_PING;
        f[20] |= 0x20;
        assert_eq!(
            decapsulate(&f, VXLAN_PORT),
            Err(DecapError::Outer(OuterError::Fragment))
        );
        // I flag cleared.
        let mut f = LINUX_PING;
        f[42] = 0;
        assert_eq!(
            decapsulate(&f, VXLAN_PORT),
            Err(DecapError::Vxlan(Error::NoVniFlag))
        );
        // UDP length too short for a VXLAN header (IP total length fixed up to match).
        let mut outer = linux_outer(1, 1);
        outer.udp_checksum = false;
        let mut f = Vec::new();
        encapsulate(&outer, &[], &mut f).unwrap();
        f.truncate(14 + 20 + 8 + 4);
        f[16..18].copy_from_slice(&(20u16 + 12).to_be_bytes());
        f[38..40].copy_from_slice(&12u16.to_be_bytes());
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.fill_checksum();
        assert_eq!(
            decapsulate(&f, VXLAN_PORT),
            Err(DecapError::Vxlan(Error::Truncated))
        );
        // Every truncation of a good frame is refused, never a panic.
        for len in 0..LINUX_PING.len() {
            assert!(
                decapsulate(&LINUX_PING[..len], VXLAN_PORT).is_err(),
                "{len}"
            );
        }
    }

    #[test]
    fn decap_ignores_ethernet_padding() {
        let mut padded = LINUX_ARP.to_vec();
        padded.extend_from_slice(&[0; 8]);
        assert_eq!(
            decapsulate(&padded, VXLAN_PORT).unwrap().inner,
            &LINUX_ARP[50..]
        );
    }

    /// The flow hash as its key is defined: 28 bytes (sorted MACs, ethertype, protocol,
    /// sorted address+port pairs), taken apart into the numbers that are mixed.
    fn flow_hash_of_the_key_bytes(inner: &[u8], seed: u32) -> u32 {
        let mut key = [0u8; 28];
        if inner.len() < ETHERNET_HEADER_LEN {
            key[..inner.len()].copy_from_slice(inner);
        } else {
            let (a, b) = (&inner[0..6], &inner[6..12]);
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            key[0..6].copy_from_slice(lo);
            key[6..12].copy_from_slice(hi);
            key[12..14].copy_from_slice(&inner[12..14]);
            let ip = &inner[ETHERNET_HEADER_LEN..];
            if inner[12..14] == [8, 0] && ip.len() >= IPV4_HEADER_LEN && ip[0] >> 4 == 4 {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let (mut src, mut dst) = ([0u8; 6], [0u8; 6]);
                src[..4].copy_from_slice(&ip[12..16]);
                dst[..4].copy_from_slice(&ip[16..20]);
                let first = NetworkEndian::read_u16(&ip[6..8]) & 0x1fff == 0;
                if matches!(ip[9], 6 | 17 | 132 | 136) && first && ihl >= 20 && ip.len() >= ihl + 4
                {
                    src[4..].copy_from_slice(&ip[ihl..ihl + 2]);
                    dst[4..].copy_from_slice(&ip[ihl + 2..ihl + 4]);
                }
                let (lo, hi) = if src <= dst { (src, dst) } else { (dst, src) };
                key[15] = ip[9];
                key[16..22].copy_from_slice(&lo);
                key[22..28].copy_from_slice(&hi);
            }
        }
        hash_key(key_lanes(&key), seed)
    }

    #[test]
    fn flow_hash_is_the_hash_of_its_key_bytes() {
        let mut rng = Rng::new(0x1234_5678_9abc_def0);
        let mut next = move || rng.next_u64() as u8;
        for len in 0..80usize {
            for variant in 0..40 {
                let mut frame: Vec<u8> = (0..len).map(|_| next()).collect();
                // Most of them IPv4 with ports, some with options, fragments, other protocols.
                if len >= 34 && variant % 4 != 0 {
                    frame[12..14].copy_from_slice(&[8, 0]);
                    frame[14] = 0x45 + (variant % 3) as u8;
                    frame[23] = [6, 17, 132, 1][variant % 4];
                    if variant % 5 == 0 {
                        frame[20] = 0;
                        frame[21] = 0;
                    }
                    // Same MACs or same addresses in both directions now and then.
                    if variant % 7 == 0 {
                        frame.copy_within(0..6, 6);
                        frame.copy_within(26..30, 30);
                    }
                }
                assert_eq!(
                    flow_hash(&frame, variant as u32),
                    flow_hash_of_the_key_bytes(&frame, variant as u32),
                    "len {len} variant {variant}"
                );
            }
        }
        let ping = &LINUX_PING[50..];
        assert_eq!(flow_hash(ping, 7), flow_hash_of_the_key_bytes(ping, 7));
    }

    #[test]
    fn src_port_in_range_symmetric_and_flow_sensitive() {
        let inner = &LINUX_PING[50..];
        let port = flow_src_port(inner, 7, DEFAULT_SRC_PORT_RANGE);
        assert!((32768..61000).contains(&port));
        // Same flow, same port; the reverse direction too.
        assert_eq!(flow_src_port(inner, 7, DEFAULT_SRC_PORT_RANGE), port);
        let mut reverse = inner.to_vec();
        reverse[..6].copy_from_slice(&inner[6..12]);
        reverse[6..12].copy_from_slice(&inner[..6]);
        reverse[26..30].copy_from_slice(&inner[30..34]);
        reverse[30..34].copy_from_slice(&inner[26..30]);
        assert_eq!(flow_src_port(&reverse, 7, DEFAULT_SRC_PORT_RANGE), port);

        // UDP flows that differ only by a port spread over many source ports.
        let mut udp = LINUX_PING[50..].to_vec();
        udp[23] = 17;
        let mut seen = alloc::collections::BTreeSet::new();
        for sport in 0..200u16 {
            udp[34..36].copy_from_slice(&(40000 + sport).to_be_bytes());
            let p = flow_src_port(&udp, 7, DEFAULT_SRC_PORT_RANGE);
            assert!((32768..61000).contains(&p));
            seen.insert(p);
        }
        assert!(seen.len() > 150, "only {} distinct ports", seen.len());

        // The seed keys the hash: the same flow lands elsewhere under another seed.
        let by_seed: alloc::collections::BTreeSet<u16> = (0..50)
            .map(|seed| flow_src_port(inner, seed, DEFAULT_SRC_PORT_RANGE))
            .collect();
        assert!(by_seed.len() > 40, "only {} distinct ports", by_seed.len());

        // A degenerate range gives its minimum; runts and garbage still hash.
        let r = SrcPortRange { min: 5, max: 5 };
        assert_eq!(flow_src_port(inner, 7, r), 5);
        for len in 0..40 {
            let p = flow_src_port(&LINUX_PING[50..50 + len], 1, DEFAULT_SRC_PORT_RANGE);
            assert!((32768..61000).contains(&p));
        }
    }
}
