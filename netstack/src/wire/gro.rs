//! Merging TCP segments into a super-frame in software (what a NIC's receive offload and
//! Linux's GRO do), the bytes of it: which segments may be merged at all, whether one
//! continues another (same flow and headers, in order, same size), and the super-frame
//! built in the caller's buffer, its IPv4 length and checksum rewritten and its TCP
//! checksum left partial for the device (or the receiver's stack) to complete.
//!
//! The rules are Linux's `tcp_gro_receive`: only ACK and PSH may be set; every header
//! field but the sequence number, the IPv4 length, identification and checksum must be
//! equal (TCP options included); segments follow each other without gap or overlap; all
//! but the last carry exactly the first one's payload size; a PSH or a shorter segment
//! ends the super-frame. Checksums are not looked at here: the caller merges only
//! segments whose checksum it knows to be good.
//!
//! Bytes only: no state beyond the one super-frame the caller holds, never a decision
//! about when to send it, never a panic on what the network sends.

use alloc::vec::Vec;

use byteorder::{ByteOrder, NetworkEndian};
use smoltcp::wire::{IpProtocol, Ipv4Address};

use super::checksum::Sum;
use super::sum;
use super::tso::{TcpFrame, TCP_ACK, TCP_CHECKSUM_OFFSET, TCP_PSH};
use crate::base::{Csum, Gso, Offload};

/// The largest IPv4 packet a super-frame may become.
pub const MAX_MERGED_L3: usize = 65_535;

/// Why a frame is not a segment that can be merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmergeable {
    /// Not TCP over IPv4 (or not a well-formed one).
    NotTcp,
    /// IPv4 options, or a fragment.
    IpHeader,
    /// A flag other than ACK and PSH, or no ACK.
    Flags,
    /// No payload (a pure ACK).
    NoPayload,
}

/// The facts of one TCP segment that merging needs, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub layout: TcpFrame,
    pub seq: u32,
    pub flags: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Segment {
    /// Reads a frame as a mergeable segment, or says why it is not one.
    pub fn parse(frame: &[u8]) -> Result<Segment, Unmergeable> {
        let layout = TcpFrame::parse(frame).map_err(|_| Unmergeable::NotTcp)?;
        if layout.ip_len != 20 {
            return Err(Unmergeable::IpHeader);
        }
        let ip = &frame[layout.l2_len..];
        let tcp = &frame[layout.tcp_offset()..];
        let flags = tcp[13];
        if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
            return Err(Unmergeable::Flags);
        }
        if layout.payload_len == 0 {
            return Err(Unmergeable::NoPayload);
        }
        Ok(Segment {
            layout,
            seq: NetworkEndian::read_u32(&tcp[4..8]),
            flags,
            ident: NetworkEndian::read_u16(&ip[4..6]),
            dont_frag: ip[6] & 0x40 != 0,
        })
    }

    /// Bytes of the frame up to the end of its payload (Ethernet padding left out).
    pub fn frame_len(&self) -> usize {
        self.layout.header_len() + self.layout.payload_len
    }
}

/// The flow a TCP/IPv4 frame belongs to (addresses and ports), for any TCP frame, also
/// one that cannot be merged: such a frame must first push out what is held of its flow.
pub fn flow_of(frame: &[u8]) -> Option<[u8; 12]> {
    let layout = TcpFrame::parse(frame).ok()?;
    let ip = layout.l2_len;
    let tcp = layout.tcp_offset();
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(frame.get(ip + 12..ip + 20)?);
    key[8..].copy_from_slice(frame.get(tcp..tcp + 4)?);
    Some(key)
}

/// Whether `b` is a segment of the same flow as `a` with headers merging allows: equal
/// L2 header, IPv4 TOS, TTL, DF and addresses, TCP ports, ack, window and options.
fn same_headers(a: &[u8], sa: &Segment, b: &[u8], sb: &Segment) -> bool {
    let (la, lb) = (&sa.layout, &sb.layout);
    if la.l2_len != lb.l2_len || la.tcp_len != lb.tcp_len {
        return false;
    }
    let (ia, ib) = (la.l2_len, lb.l2_len);
    let (ta, tb) = (la.tcp_offset(), lb.tcp_offset());
    a[..ia] == b[..ib]
        && a[ia + 1] == b[ib + 1]
        && a[ia + 8] == b[ib + 8]
        && a[ia + 12..ia + 20] == b[ib + 12..ib + 20]
        && sa.dont_frag == sb.dont_frag
        && a[ta..ta + 4] == b[tb..tb + 4]
        && a[ta + 8..ta + 13] == b[tb + 8..tb + 13]
        && a[ta + 14..ta + 16] == b[tb + 14..tb + 16]
        && a[ta + 20..ta + la.tcp_len] == b[tb + 20..tb + lb.tcp_len]
}

/// What [`Merge::append`] did with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// Now part of the super-frame.
    Merged,
    /// Not a continuation: send the super-frame as it is, then deal with the segment.
    Flush,
}

/// A super-frame being built in a buffer the caller owns: the first segment's headers
/// and the payloads of the segments appended so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merge {
    first: Segment,
    /// The offload record of the first segment, kept for a super-frame of one.
    first_offload: Offload,
    /// Where the super-frame starts in the caller's buffer (room for a device header).
    base: usize,
    mss: usize,
    next_seq: u32,
    next_ident: u16,
    segments: u16,
    flags: u8,
    /// A PSH or a short segment ended it: nothing more may be appended.
    closed: bool,
}

impl Merge {
    /// Starts a super-frame with `frame` (parsed as `seg`) in `buf`, which is cleared.
    pub fn start(buf: &mut Vec<u8>, frame: &[u8], seg: Segment, offload: Offload) -> Merge {
        Merge::start_at(buf, 0, frame, seg, offload)
    }

    /// [`Merge::start`] with the super-frame `base` bytes into `buf` (zeroed): the room a
    /// device header takes in front of it, so that the buffer is sent as it is.
    pub fn start_at(
        buf: &mut Vec<u8>,
        base: usize,
        frame: &[u8],
        seg: Segment,
        offload: Offload,
    ) -> Merge {
        buf.clear();
        buf.resize(base, 0);
        buf.extend_from_slice(&frame[..seg.frame_len()]);
        let mss = seg.layout.payload_len;
        Merge {
            first: seg,
            first_offload: offload,
            base,
            mss,
            next_seq: seg.seq.wrapping_add(mss as u32),
            next_ident: seg.ident.wrapping_add(1),
            segments: 1,
            flags: seg.flags,
            closed: seg.flags & TCP_PSH != 0,
        }
    }

    /// Bytes of the headers in front of the payload (a segmentation request's `hdr_len`).
    pub fn header_len(&self) -> usize {
        self.first.layout.header_len()
    }

    /// How many segments it holds.
    pub fn segments(&self) -> u16 {
        self.segments
    }

    /// Appends `frame` (parsed as `seg`) if it continues the super-frame in `buf`.
    pub fn append(&mut self, buf: &mut Vec<u8>, frame: &[u8], seg: &Segment) -> Append {
        let payload = seg.layout.payload_len;
        let l3_after = buf.len() - self.base - self.first.layout.l2_len + payload;
        let continues = !self.closed
            && seg.seq == self.next_seq
            && payload <= self.mss
            && l3_after <= MAX_MERGED_L3
            && (seg.dont_frag || seg.ident == self.next_ident)
            && same_headers(&buf[self.base..], &self.first, frame, seg);
        if !continues {
            return Append::Flush;
        }
        buf.extend_from_slice(&frame[seg.layout.header_len()..seg.frame_len()]);
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        self.next_ident = seg.ident.wrapping_add(1);
        self.segments += 1;
        self.flags |= seg.flags;
        self.closed = payload < self.mss || seg.flags & TCP_PSH != 0;
        Append::Merged
    }

    /// Finishes the super-frame in `buf` and returns its offload record. One segment
    /// stays as it came, with its own record. More get the IPv4 length and checksum of
    /// the whole, PSH if any had it, and a partial TCP checksum: `Csum::Partial` at the
    /// TCP header with a segmentation request of the first segment's size.
    pub fn finish(&self, buf: &mut [u8]) -> Offload {
        if self.segments == 1 {
            return self.first_offload;
        }
        let buf = &mut buf[self.base..];
        let l = &self.first.layout;
        let ip_at = l.l2_len;
        let tcp_at = l.tcp_offset();
        let l3_len = buf.len() - ip_at;
        let l4_len = l3_len - l.ip_len;
        {
            let ip = &mut buf[ip_at..tcp_at];
            NetworkEndian::write_u16(&mut ip[2..4], l3_len as u16);
            ip[10..12].fill(0);
            let check = Sum::of(ip).checksum();
            NetworkEndian::write_u16(&mut ip[10..12], check);
        }
        let src =
            Ipv4Address::from(<[u8; 4]>::try_from(&buf[ip_at + 12..ip_at + 16]).unwrap_or([0; 4]));
        let dst =
            Ipv4Address::from(<[u8; 4]>::try_from(&buf[ip_at + 16..ip_at + 20]).unwrap_or([0; 4]));
        let pseudo = sum::pseudo_header(src, dst, IpProtocol::Tcp.into(), l4_len);
        let tcp = &mut buf[tcp_at..];
        tcp[13] = self.flags;
        NetworkEndian::write_u16(
            &mut tcp[TCP_CHECKSUM_OFFSET..TCP_CHECKSUM_OFFSET + 2],
            pseudo.value(),
        );
        Offload {
            csum: Csum::Partial {
                start: tcp_at as u16,
                offset: TCP_CHECKSUM_OFFSET as u16,
            },
            // A super-frame of at most 64 KiB: its segment size fits 16 bits.
            gso: Some(Gso {
                mss: self.mss as u16,
                ecn: false,
            }),
        }
    }
}

/// Whether the TCP checksum of a frame laid out as `layout` is right: the sum over the
/// segment and its pseudo-header is zero. For segments of an unknown checksum state,
/// before they are merged (a merged checksum is computed afresh and would hide damage).
pub fn tcp_checksum_ok(frame: &[u8], layout: &TcpFrame) -> bool {
    let ip = layout.l2_len;
    let Some(addrs) = frame.get(ip + 12..ip + 20) else {
        return false;
    };
    let src = Ipv4Address::new(addrs[0], addrs[1], addrs[2], addrs[3]);
    let dst = Ipv4Address::new(addrs[4], addrs[5], addrs[6], addrs[7]);
    let l4_len = layout.tcp_len + layout.payload_len;
    let Some(l4) = frame.get(layout.tcp_offset()..layout.tcp_offset() + l4_len) else {
        return false;
    };
    let mut s = sum::pseudo_header(src, dst, IpProtocol::Tcp.into(), l4_len);
    s.add(Sum::of(l4));
    s.value() == 0xffff
}

#[cfg(test)]
mod tests;
