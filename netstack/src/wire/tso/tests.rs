//! Segmentation of real TCP/IPv4 super-frames: every segment parses and verifies with
//! smoltcp, the payloads put back together are the original, sequence numbers, IPv4
//! identifications and flags are where TCP wants them, and the sum handed back is the
//! sum of the segment's bytes.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Address,
    Ipv4Packet, TcpPacket,
};

use super::*;
use crate::wire::sum;

pub(crate) const SRC: Ipv4Address = Ipv4Address::new(10, 81, 128, 11);
pub(crate) const DST: Ipv4Address = Ipv4Address::new(10, 81, 128, 12);

/// A TCP segment as a sender builds it: the fields a test varies.
#[derive(Debug, Clone)]
pub(crate) struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub ident: u16,
    pub df: bool,
    /// TCP options (a multiple of 4 bytes), e.g. a timestamp.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
    pub vlan: Option<u16>,
    pub sport: u16,
    pub dport: u16,
}

impl Default for Tcp {
    fn default() -> Tcp {
        Tcp {
            seq: 1000,
            ack: 77,
            flags: TCP_ACK,
            window: 512,
            ident: 0x4000,
            df: true,
            // NOP NOP timestamp(10)
            options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            payload: Vec::new(),
            vlan: None,
            sport: 40000,
            dport: 5201,
        }
    }
}

/// Payload bytes that differ from offset to offset.
pub(crate) fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// The frame, with full IPv4 and TCP checksums.
pub(crate) fn tcp_frame(t: &Tcp) -> Vec<u8> {
    let tcp_len = 20 + t.options.len();
    let ip_len = 20 + tcp_len + t.payload.len();
    let l2 = if t.vlan.is_some() { 18 } else { 14 };
    let mut f = vec![0u8; l2 + ip_len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    match t.vlan {
        Some(v) => {
            f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
            f[14..16].copy_from_slice(&v.to_be_bytes());
            f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
        }
        None => f[12..14].copy_from_slice(&0x0800u16.to_be_bytes()),
    }
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut f[l2..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(ip_len as u16);
        ip.set_ident(t.ident);
        ip.set_dont_frag(t.df);
        ip.set_hop_limit(64);
        ip.set_next_header(IpProtocol::Tcp);
        ip.set_src_addr(SRC);
        ip.set_dst_addr(DST);
        ip.fill_checksum();
    }
    let tcp_buf = &mut f[l2 + 20..];
    tcp_buf[0..2].copy_from_slice(&t.sport.to_be_bytes());
    tcp_buf[2..4].copy_from_slice(&t.dport.to_be_bytes());
    tcp_buf[4..8].copy_from_slice(&t.seq.to_be_bytes());
    tcp_buf[8..12].copy_from_slice(&t.ack.to_be_bytes());
    tcp_buf[12] = ((tcp_len / 4) as u8) << 4;
    tcp_buf[13] = t.flags;
    tcp_buf[14..16].copy_from_slice(&t.window.to_be_bytes());
    tcp_buf[20..tcp_len].copy_from_slice(&t.options);
    tcp_buf[tcp_len..].copy_from_slice(&t.payload);
    let mut p = sum::pseudo_header(SRC, DST, 6, tcp_len + t.payload.len());
    p.add_bytes(tcp_buf);
    let check = p.checksum();
    tcp_buf[16..18].copy_from_slice(&check.to_be_bytes());
    f
}

/// Checks a frame as a receiver would: IPv4 and TCP checksums with smoltcp; returns
/// (seq, flags, ident, payload).
pub(crate) fn verify(frame: &[u8]) -> (u32, u8, u16, Vec<u8>) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let l3 = if eth.ethertype() == EthernetProtocol::Unknown(0x8100) {
        &frame[18..]
    } else {
        eth.payload()
    };
    let ip = Ipv4Packet::new_checked(l3).unwrap();
    assert!(ip.verify_checksum(), "IPv4 checksum");
    assert_eq!(usize::from(ip.total_len()), l3.len());
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(
        tcp.verify_checksum(&IpAddress::Ipv4(SRC), &IpAddress::Ipv4(DST)),
        "TCP checksum"
    );
    let _ = ChecksumCapabilities::default();
    (
        tcp.seq_number().0 as u32,
        ip.payload()[13],
        ip.ident(),
        tcp.payload().to_vec(),
    )
}

fn segments(frame: &[u8], mss: u16, csum: SegmentCsum) -> Vec<(Vec<u8>, Sum)> {
    let seg = Segmenter::new(frame, mss).unwrap();
    (0..seg.count())
        .map(|i| {
            let mut out = vec![0u8; seg.segment_len(i) + 7];
            let s = seg.write(i, &mut out, csum).unwrap();
            out.truncate(seg.segment_len(i));
            (out, s)
        })
        .collect()
}

#[test]
fn a_super_frame_becomes_segments_a_receiver_accepts() {
    let payload = pattern(10_000, 3);
    let frame = tcp_frame(&Tcp {
        flags: TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR,
        payload: payload.clone(),
        ..Tcp::default()
    });
    let segs = segments(&frame, 1398, SegmentCsum::Full);
    assert_eq!(segs.len(), 8);
    let mut joined = Vec::new();
    for (i, (seg, wire)) in segs.iter().enumerate() {
        let (seq, flags, ident, data) = verify(seg);
        assert_eq!(seq, 1000 + 1398 * i as u32);
        assert_eq!(ident, 0x4000 + i as u16);
        let last = i == segs.len() - 1;
        assert_eq!(flags & (TCP_PSH | TCP_FIN) != 0, last, "segment {i}");
        assert_eq!(flags & TCP_CWR != 0, i == 0, "segment {i}");
        assert!(flags & TCP_ACK != 0);
        assert_eq!(data.len(), if last { 10_000 - 7 * 1398 } else { 1398 });
        assert_eq!(wire.value(), Sum::of(seg).value());
        joined.extend(data);
    }
    assert_eq!(joined, payload);
}

#[test]
fn partial_checksums_complete_to_the_full_ones() {
    let frame = tcp_frame(&Tcp {
        payload: pattern(4001, 9),
        ..Tcp::default()
    });
    let full = segments(&frame, 1000, SegmentCsum::Full);
    let partial = segments(&frame, 1000, SegmentCsum::Partial);
    let layout = TcpFrame::parse(&frame).unwrap();
    for ((f, fs), (mut p, ps)) in full.into_iter().zip(partial) {
        assert_ne!(f, p, "the partial field holds the pseudo-header sum");
        sum::complete(&mut p, layout.tcp_offset(), TCP_CHECKSUM_OFFSET).unwrap();
        assert_eq!(f, p);
        // The sum handed back is that of the completed segment.
        assert_eq!(ps.value(), fs.value());
    }
}

#[test]
fn a_tagged_frame_keeps_its_tag_on_every_segment() {
    let frame = tcp_frame(&Tcp {
        vlan: Some(42),
        payload: pattern(3000, 1),
        ..Tcp::default()
    });
    for (seg, _) in segments(&frame, 1448, SegmentCsum::Full) {
        assert_eq!(&seg[..18], &frame[..18]);
        verify(&seg);
    }
}

#[test]
fn a_frame_shorter_than_one_segment_is_one_segment() {
    let frame = tcp_frame(&Tcp {
        flags: TCP_ACK | TCP_PSH,
        payload: pattern(100, 0),
        ..Tcp::default()
    });
    let segs = segments(&frame, 1448, SegmentCsum::Full);
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].0, frame);
    let empty = tcp_frame(&Tcp::default());
    assert_eq!(Segmenter::new(&empty, 1448).unwrap().count(), 1);
    assert_eq!(segments(&empty, 1448, SegmentCsum::Full)[0].0, empty);
}

#[test]
fn what_cannot_be_segmented_is_refused() {
    let frame = tcp_frame(&Tcp {
        payload: pattern(3000, 1),
        ..Tcp::default()
    });
    assert_eq!(Segmenter::new(&frame, 0).err(), Some(TsoError::ZeroMss));
    let syn = tcp_frame(&Tcp {
        flags: TCP_SYN,
        ..Tcp::default()
    });
    assert_eq!(Segmenter::new(&syn, 1000).err(), Some(TsoError::BadFlags));
    let mut udp = frame.clone();
    udp[14 + 9] = 17;
    assert_eq!(Segmenter::new(&udp, 1000).err(), Some(TsoError::NotTcpIpv4));
    let mut frag = frame.clone();
    frag[14 + 6] |= 0x20;
    assert_eq!(Segmenter::new(&frag, 1000).err(), Some(TsoError::Fragment));
    // The IPv4 length says more than the frame holds.
    assert_eq!(
        Segmenter::new(&frame[..frame.len() - 1], 1000).err(),
        Some(TsoError::BadHeader)
    );
    for cut in 0..60 {
        assert!(Segmenter::new(&frame[..cut], 1000).is_err(), "cut {cut}");
    }
    let seg = Segmenter::new(&frame, 1000).unwrap();
    let mut short = vec![0u8; 100];
    assert_eq!(seg.write(0, &mut short, SegmentCsum::Full), None);
}

#[test]
fn segments_of_an_odd_size_still_verify() {
    let frame = tcp_frame(&Tcp {
        payload: pattern(5000, 77),
        ..Tcp::default()
    });
    let mut joined = Vec::new();
    for (seg, wire) in segments(&frame, 999, SegmentCsum::Full) {
        joined.extend(verify(&seg).3);
        assert_eq!(wire.value(), Sum::of(&seg).value());
    }
    assert_eq!(joined, pattern(5000, 77));
    let _ = EthernetAddress::BROADCAST;
}
