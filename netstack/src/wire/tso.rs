//! TCP segmentation in software (what a NIC's TSO does): a TCP/IPv4 super-frame, as a
//! port hands it over with a segmentation request (`Gso`), is cut into frames of at most
//! `mss` payload bytes. Each segment is written whole into the caller's buffer in one
//! pass: its Ethernet header (and 802.1Q tag) as they are, the IPv4 header with its own
//! total length, identification (counting up from the super-frame's) and checksum, the
//! TCP header with its own sequence number, FIN and PSH only on the last segment and CWR
//! only on the first, and the payload copied while its checksum is summed.
//!
//! Bytes only: it never decides where a segment goes and keeps no state; a frame it
//! cannot segment is refused with a reason, never a panic.

use byteorder::{ByteOrder, NetworkEndian};
use smoltcp::wire::{EthernetProtocol, IpProtocol, Ipv4Address, ETHERNET_HEADER_LEN};

use super::checksum::Sum;
use super::sum;
use super::vlan;

/// TCP header fields by byte range (RFC 9293 3.1).
mod field {
    use core::ops::Range;
    pub const SEQ: Range<usize> = 4..8;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
    pub const DATA_OFFSET: usize = 12;
}

/// IPv4 header fields by byte range (RFC 791 3.1).
mod ip_field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// Offset of the TCP checksum in its header (a partial checksum's `offset`).
pub const TCP_CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// Why a super-frame cannot be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsoError {
    /// Not IPv4 carrying TCP, behind Ethernet and at most one 802.1Q tag.
    NotTcpIpv4,
    /// An IPv4 or TCP header that is truncated or inconsistent with the frame.
    BadHeader,
    /// A fragment: segmentation needs the whole TCP segment.
    Fragment,
    /// SYN, RST or URG on a super-frame: no sender segments those.
    BadFlags,
    /// A segment size of zero.
    ZeroMss,
}

/// Where the headers of an Ethernet/IPv4/TCP frame are, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFrame {
    /// Bytes before the IPv4 header: Ethernet and at most one 802.1Q tag.
    pub l2_len: usize,
    /// IPv4 header length (options included).
    pub ip_len: usize,
    /// TCP header length (options included).
    pub tcp_len: usize,
    /// Bytes of TCP payload (by the IPv4 total length; Ethernet padding excluded).
    pub payload_len: usize,
}

impl TcpFrame {
    /// Reads the header layout of a TCP/IPv4 frame; no checksum is looked at.
    pub fn parse(frame: &[u8]) -> Result<TcpFrame, TsoError> {
        if frame.len() < ETHERNET_HEADER_LEN {
            return Err(TsoError::NotTcpIpv4);
        }
        let mut l2_len = ETHERNET_HEADER_LEN;
        let mut ethertype = NetworkEndian::read_u16(&frame[12..14]);
        if ethertype == vlan::TPID {
            let Some(t) = frame.get(16..18) else {
                return Err(TsoError::NotTcpIpv4);
            };
            ethertype = NetworkEndian::read_u16(t);
            l2_len += vlan::TAG_LEN;
        }
        if ethertype != u16::from(EthernetProtocol::Ipv4) {
            return Err(TsoError::NotTcpIpv4);
        }
        let ip = &frame[l2_len..];
        let Some(&ver_ihl) = ip.get(ip_field::VER_IHL) else {
            return Err(TsoError::BadHeader);
        };
        let ip_len = usize::from(ver_ihl & 0x0f) * 4;
        if ver_ihl >> 4 != 4 || ip_len < 20 || ip.len() < ip_len {
            return Err(TsoError::BadHeader);
        }
        if ip[ip_field::PROTOCOL] != u8::from(IpProtocol::Tcp) {
            return Err(TsoError::NotTcpIpv4);
        }
        let total = usize::from(NetworkEndian::read_u16(&ip[ip_field::LENGTH]));
        if total > ip.len() || total < ip_len {
            return Err(TsoError::BadHeader);
        }
        let flg_off = NetworkEndian::read_u16(&ip[ip_field::FLG_OFF]);
        // More fragments, or a fragment offset.
        if flg_off & 0x3fff != 0 {
            return Err(TsoError::Fragment);
        }
        let tcp = &ip[ip_len..total];
        let Some(&off) = tcp.get(field::DATA_OFFSET) else {
            return Err(TsoError::BadHeader);
        };
        let tcp_len = usize::from(off >> 4) * 4;
        if tcp_len < 20 || tcp.len() < tcp_len {
            return Err(TsoError::BadHeader);
        }
        Ok(TcpFrame {
            l2_len,
            ip_len,
            tcp_len,
            payload_len: tcp.len() - tcp_len,
        })
    }

    /// Bytes of all headers: where the payload starts.
    pub fn header_len(&self) -> usize {
        self.l2_len + self.ip_len + self.tcp_len
    }

    /// Where the TCP header starts.
    pub fn tcp_offset(&self) -> usize {
        self.l2_len + self.ip_len
    }
}

/// How a segment's TCP checksum is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentCsum {
    /// Computed in full while the payload is copied.
    Full,
    /// The pseudo-header sum only, for a device that completes it (`NEEDS_CSUM` at the
    /// TCP header, offset [`TCP_CHECKSUM_OFFSET`]).
    Partial,
}

/// A super-frame ready to be cut: its layout, its segment size and the header fields
/// each segment derives its own from.
#[derive(Debug, Clone, Copy)]
pub struct Segmenter<'a> {
    frame: &'a [u8],
    layout: TcpFrame,
    mss: usize,
    seq: u32,
    ident: u16,
    flags: u8,
    src: Ipv4Address,
    dst: Ipv4Address,
}

impl<'a> Segmenter<'a> {
    /// Checks `frame` as a TCP/IPv4 super-frame to cut into `mss`-byte payloads. Its
    /// checksums are not looked at: each segment gets new ones.
    pub fn new(frame: &'a [u8], mss: u16) -> Result<Segmenter<'a>, TsoError> {
        if mss == 0 {
            return Err(TsoError::ZeroMss);
        }
        let layout = TcpFrame::parse(frame)?;
        let ip = &frame[layout.l2_len..];
        let tcp = &ip[layout.ip_len..];
        let flags = tcp[field::FLAGS];
        if flags & (TCP_SYN | TCP_RST | TCP_URG) != 0 {
            return Err(TsoError::BadFlags);
        }
        Ok(Segmenter {
            frame,
            layout,
            mss: usize::from(mss),
            seq: NetworkEndian::read_u32(&tcp[field::SEQ]),
            ident: NetworkEndian::read_u16(&ip[ip_field::IDENT]),
            flags,
            src: Ipv4Address::from(<[u8; 4]>::try_from(&ip[ip_field::SRC]).unwrap_or([0; 4])),
            dst: Ipv4Address::from(<[u8; 4]>::try_from(&ip[ip_field::DST]).unwrap_or([0; 4])),
        })
    }

    pub fn layout(&self) -> &TcpFrame {
        &self.layout
    }

    /// How many segments: one at least, also for a frame without payload.
    pub fn count(&self) -> usize {
        self.layout.payload_len.div_ceil(self.mss).max(1)
    }

    fn payload_range(&self, i: usize) -> core::ops::Range<usize> {
        let start = self.layout.header_len() + (i * self.mss).min(self.layout.payload_len);
        let end = self.layout.header_len() + ((i + 1) * self.mss).min(self.layout.payload_len);
        start..end
    }

    /// The length of segment `i` as a frame.
    pub fn segment_len(&self, i: usize) -> usize {
        self.layout.header_len() + self.payload_range(i).len()
    }

    /// The IPv4 packet length of the largest segment (the first), for MTU checks.
    pub fn max_l3_len(&self) -> usize {
        self.segment_len(0) - self.layout.l2_len
    }

    /// The Ethernet header of the super-frame (and tag), as every segment has it.
    pub fn l2_header(&self) -> &'a [u8] {
        &self.frame[..self.layout.l2_len]
    }

    /// Writes segment `i` (below [`count`](Self::count)) into the start of `out`, which
    /// holds at least [`segment_len`](Self::segment_len) bytes, and returns the sum of
    /// the segment's bytes as they are on the wire once any partial checksum is
    /// complete (what an outer UDP checksum over it needs: RFC 7348 leaves it to the
    /// encapsulator, and this spares a second pass). `None` if `out` is too short.
    pub fn write(&self, i: usize, out: &mut [u8], csum: SegmentCsum) -> Option<Sum> {
        let len = self.segment_len(i);
        let out = out.get_mut(..len)?;
        let l = &self.layout;
        let payload = self.payload_range(i);
        let last = i + 1 >= self.count();
        let (l2, rest) = out.split_at_mut(l.l2_len);
        l2.copy_from_slice(&self.frame[..l.l2_len]);
        let (ip, rest) = rest.split_at_mut(l.ip_len);
        let (tcp, data) = rest.split_at_mut(l.tcp_len);
        ip.copy_from_slice(&self.frame[l.l2_len..l.l2_len + l.ip_len]);
        tcp.copy_from_slice(&self.frame[l.tcp_offset()..l.header_len()]);

        let l4_len = l.tcp_len + payload.len();
        NetworkEndian::write_u16(&mut ip[ip_field::LENGTH], (l.ip_len + l4_len) as u16);
        NetworkEndian::write_u16(&mut ip[ip_field::IDENT], self.ident.wrapping_add(i as u16));
        ip[ip_field::CHECKSUM].fill(0);
        let ip_check = Sum::of(ip).checksum();
        NetworkEndian::write_u16(&mut ip[ip_field::CHECKSUM], ip_check);

        let off = (i * self.mss) as u32;
        NetworkEndian::write_u32(&mut tcp[field::SEQ], self.seq.wrapping_add(off));
        let mut flags = self.flags;
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        tcp[field::FLAGS] = flags;
        tcp[field::URGENT].fill(0);
        let pseudo = sum::pseudo_header(self.src, self.dst, IpProtocol::Tcp.into(), l4_len);

        // The headers: L2 as it is, IPv4 sums to zero with its checksum in place.
        let mut wire = Sum::of(l2);
        wire.add(Sum::of(ip));
        match csum {
            SegmentCsum::Full => {
                tcp[field::CHECKSUM].fill(0);
                let body = sum::copy_and_sum(data, &self.frame[payload]);
                let mut s = pseudo;
                s.add(Sum::of(tcp));
                s.add(body);
                let check = s.checksum();
                NetworkEndian::write_u16(&mut tcp[field::CHECKSUM], check);
                wire.add(Sum::of(tcp));
                wire.add(body);
            }
            SegmentCsum::Partial => {
                data.copy_from_slice(&self.frame[payload]);
                NetworkEndian::write_u16(&mut tcp[field::CHECKSUM], pseudo.value());
                // Once complete, the segment sums to the complement of its pseudo-header.
                let mut done = Sum::ZERO;
                done.add_u16(!pseudo.value());
                wire.add(done);
            }
        }
        Some(wire)
    }
}

#[cfg(test)]
pub(crate) mod tests;
