//! Arbitrary frames with a virtio-net offload request, as the container link's device
//! hands them over: a super-frame to cut (`gso_type` TCPV4 and a segment size) and a
//! partial checksum to complete (`NEEDS_CSUM` with a start and an offset). Cutting and
//! completing must refuse or succeed, never panic; what they produce must be right:
//! - every segment is a TCP/IPv4 frame with valid IPv4 and TCP checksums, at most `mss`
//!   payload bytes, its sequence number where its bytes belong, and the sum `write`
//!   returns for it is the sum of its bytes;
//! - the segments' payloads, in order, are the super-frame's payload;
//! - merging the segments again (the transmit side's GRO) takes every one of them when
//!   each is mergeable, and gives back the super-frame's payload with a checksum that
//!   comes out right once completed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_netstack::base::Csum;
use weft_netstack::wire::checksum::Sum;
use weft_netstack::wire::gro::{self, Append, Merge};
use weft_netstack::wire::sum;
use weft_netstack::wire::tso::{SegmentCsum, Segmenter, TcpFrame};

/// One's complement sums are equal when they are, or when both are zero (0 or 0xffff).
fn same_sum(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

fn ip_checksum_ok(frame: &[u8], l: &TcpFrame) -> bool {
    Sum::of(&frame[l.l2_len..l.tcp_offset()]).value() == 0xffff
}

fn payload<'a>(frame: &'a [u8], l: &TcpFrame) -> &'a [u8] {
    &frame[l.header_len()..l.header_len() + l.payload_len]
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let mss = u16::from_be_bytes([data[0], data[1]]);
    let partial = data[2] & 1 != 0;
    let (start, offset) = (usize::from(data[3]), usize::from(data[4]) % 32);
    let frame = &data[5..];

    // NEEDS_CSUM on a plain frame: any start and offset, refused or completed. The
    // field held the pseudo-header's sum, which the receiver adds back: with it, the
    // bytes from `start` sum to zero. A refusal writes nothing.
    let mut copy = frame.to_vec();
    if sum::complete(&mut copy, start, offset).is_err() {
        assert_eq!(copy, frame);
    } else {
        let at = start + offset;
        let pseudo = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let mut s = Sum::of(&copy[start..]);
        s.add_u16(pseudo);
        assert!(same_sum(s.value(), 0xffff));
    }

    let Ok(seg) = Segmenter::new(frame, mss) else {
        return;
    };
    let layout = *seg.layout();
    let original = payload(frame, &layout);
    let csum = if partial {
        SegmentCsum::Partial
    } else {
        SegmentCsum::Full
    };
    let mut segments = Vec::new();
    let mut joined = Vec::new();
    for i in 0..seg.count() {
        let mut out = vec![0u8; seg.segment_len(i)];
        let wire = seg
            .write(i, &mut out, csum)
            .expect("segment_len bytes are enough");
        let l = TcpFrame::parse(&out).expect("a segment is a TCP/IPv4 frame");
        assert!(l.payload_len <= usize::from(mss));
        assert!(ip_checksum_ok(&out, &l));
        if partial {
            let tcp_at = l.tcp_offset();
            sum::complete(&mut out, tcp_at, 16).expect("the TCP checksum is in the frame");
        }
        assert!(
            gro::tcp_checksum_ok(&out, &l),
            "segment {i} of {}",
            seg.count()
        );
        assert!(same_sum(Sum::of(&out).value(), wire.value()));
        let seq0 = u32::from_be_bytes(frame[layout.tcp_offset() + 4..][..4].try_into().unwrap());
        let seq = u32::from_be_bytes(out[l.tcp_offset() + 4..][..4].try_into().unwrap());
        assert_eq!(seq, seq0.wrapping_add((i * usize::from(mss)) as u32));
        joined.extend_from_slice(payload(&out, &l));
        segments.push(out);
    }
    assert_eq!(joined, original);

    // The same segments merged again, when every one of them may be.
    let Ok(parsed) = segments
        .iter()
        .map(|s| gro::Segment::parse(s))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let mut buf = Vec::new();
    let mut merge = Merge::start(&mut buf, &segments[0], parsed[0], Default::default());
    for (s, p) in segments.iter().zip(&parsed).skip(1) {
        assert_eq!(merge.append(&mut buf, s, p), Append::Merged);
    }
    let offload = merge.finish(&mut buf);
    let l = TcpFrame::parse(&buf).expect("a merged frame is a TCP/IPv4 frame");
    assert_eq!(payload(&buf, &l), original);
    assert!(ip_checksum_ok(&buf, &l));
    if let Csum::Partial { start, offset } = offload.csum {
        sum::complete(&mut buf, usize::from(start), usize::from(offset))
            .expect("the merged frame's partial checksum is in range");
    }
    assert!(gro::tcp_checksum_ok(&buf, &l));
});
