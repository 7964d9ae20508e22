//! Merging real segments: a run of one flow becomes one super-frame whose segmentation
//! gives the run back, and each rule that ends a super-frame (gap, other flow, other
//! headers, a flag, a short segment, PSH, the 64 KiB limit) does.

use alloc::vec::Vec;

use super::*;
use crate::wire::sum;
use crate::wire::tso::tests::{pattern, tcp_frame, verify, Tcp};
use crate::wire::tso::{SegmentCsum, Segmenter, TCP_FIN};

const MSS: usize = 1398;

fn seg_n(i: usize, len: usize) -> Tcp {
    Tcp {
        seq: 1000 + (i * MSS) as u32,
        ident: 0x4000 + i as u16,
        payload: pattern(len, i as u8),
        ..Tcp::default()
    }
}

fn merge_all(frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Offload>) {
    let mut out = Vec::new();
    let mut offs = Vec::new();
    let mut buf = Vec::new();
    let mut held: Option<Merge> = None;
    for f in frames {
        let seg = Segment::parse(f).unwrap();
        if let Some(m) = held.as_mut() {
            if m.append(&mut buf, f, &seg) == Append::Merged {
                continue;
            }
            offs.push(m.finish(&mut buf));
            out.push(buf.clone());
        }
        held = Some(Merge::start(&mut buf, f, seg, Offload::NONE));
    }
    if let Some(m) = held {
        offs.push(m.finish(&mut buf));
        out.push(buf.clone());
    }
    (out, offs)
}

/// The super-frame cut again as a device would: the segments must verify and carry
/// the payload of the run.
fn resegment(frame: &[u8], off: &Offload) -> Vec<u8> {
    let Some(gso) = off.gso else {
        return verify(frame).3;
    };
    let Csum::Partial { start, offset } = off.csum else {
        panic!("a super-frame has a partial checksum");
    };
    let mut whole = frame.to_vec();
    sum::complete(&mut whole, start.into(), offset.into()).unwrap();
    assert_eq!(verify(&whole).3.len(), whole.len() - 14 - 20 - 32);
    let s = Segmenter::new(frame, gso.mss).unwrap();
    let mut data = Vec::new();
    for i in 0..s.count() {
        let mut out = alloc::vec![0u8; s.segment_len(i)];
        s.write(i, &mut out, SegmentCsum::Full).unwrap();
        data.extend(verify(&out).3);
    }
    data
}

#[test]
fn a_run_of_one_flow_becomes_one_super_frame() {
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|i| tcp_frame(&seg_n(i, if i == 9 { 500 } else { MSS })))
        .collect();
    let (out, offs) = merge_all(&frames);
    assert_eq!(out.len(), 1);
    assert_eq!(offs[0].gso.map(|g| g.mss), Some(MSS as u16));
    let expected: Vec<u8> = (0..10)
        .flat_map(|i| pattern(if i == 9 { 500 } else { MSS }, i as u8))
        .collect();
    assert_eq!(resegment(&out[0], &offs[0]), expected);
}

#[test]
fn one_segment_stays_as_it_came() {
    let f = tcp_frame(&seg_n(0, 100));
    let (out, offs) = merge_all(core::slice::from_ref(&f));
    assert_eq!(out, [f]);
    assert_eq!(offs, [Offload::NONE]);
}

#[test]
fn a_gap_or_a_reordered_segment_ends_the_super_frame() {
    let frames = [0, 1, 3, 4].map(|i| tcp_frame(&seg_n(i, MSS)));
    let (out, _) = merge_all(&frames);
    assert_eq!(out.len(), 2);
    let frames = [0, 2, 1].map(|i| tcp_frame(&seg_n(i, MSS)));
    assert_eq!(merge_all(&frames).0.len(), 3);
}

#[test]
fn psh_or_a_short_segment_is_the_last_one_merged() {
    let mut t1 = seg_n(1, MSS);
    t1.flags |= TCP_PSH;
    let frames = [
        tcp_frame(&seg_n(0, MSS)),
        tcp_frame(&t1),
        tcp_frame(&seg_n(2, MSS)),
    ];
    let (out, _) = merge_all(&frames);
    assert_eq!(out.len(), 2);
    assert_eq!(Segment::parse(&out[0]).unwrap().flags & TCP_PSH, TCP_PSH);
    let frames = [
        tcp_frame(&seg_n(0, MSS)),
        tcp_frame(&seg_n(1, 700)),
        tcp_frame(&Tcp {
            seq: 1000 + (MSS + 700) as u32,
            ..seg_n(2, MSS)
        }),
    ];
    assert_eq!(merge_all(&frames).0.len(), 2);
    // A segment larger than the first one's size is no continuation.
    let frames = [tcp_frame(&seg_n(0, 700)), tcp_frame(&seg_n(1, MSS))];
    assert_eq!(merge_all(&frames).0.len(), 2);
}

#[test]
fn different_headers_are_never_merged() {
    let base = seg_n(1, MSS);
    let variants = [
        Tcp {
            ack: 78,
            ..base.clone()
        },
        Tcp {
            window: 513,
            ..base.clone()
        },
        Tcp {
            sport: 40001,
            ..base.clone()
        },
        Tcp {
            options: alloc::vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 2],
            ..base.clone()
        },
        Tcp {
            df: false,
            ..base.clone()
        },
        Tcp {
            vlan: Some(5),
            ..base.clone()
        },
    ];
    for v in variants {
        let frames = [tcp_frame(&seg_n(0, MSS)), tcp_frame(&v)];
        assert_eq!(merge_all(&frames).0.len(), 2, "{v:?}");
    }
}

#[test]
fn without_df_the_identifications_must_count_up() {
    let a = Tcp {
        df: false,
        ..seg_n(0, MSS)
    };
    let b = Tcp {
        df: false,
        ..seg_n(1, MSS)
    };
    let c = Tcp {
        df: false,
        ident: 9,
        ..seg_n(2, MSS)
    };
    let (out, _) = merge_all(&[tcp_frame(&a), tcp_frame(&b), tcp_frame(&c)]);
    assert_eq!(out.len(), 2);
    // With DF, Linux numbers them as it likes.
    let d = Tcp {
        ident: 9,
        ..seg_n(1, MSS)
    };
    assert_eq!(
        merge_all(&[tcp_frame(&seg_n(0, MSS)), tcp_frame(&d)])
            .0
            .len(),
        1
    );
}

#[test]
fn a_super_frame_stops_below_64_kib() {
    let frames: Vec<Vec<u8>> = (0..60).map(|i| tcp_frame(&seg_n(i, MSS))).collect();
    let (out, offs) = merge_all(&frames);
    assert!(out.len() >= 2);
    for (f, o) in out.iter().zip(&offs) {
        assert!(f.len() - 14 <= MAX_MERGED_L3);
        resegment(f, o);
    }
    let total: usize = out.iter().map(|f| f.len() - 14 - 20 - 32).sum();
    assert_eq!(total, 60 * MSS);
}

#[test]
fn only_ack_and_psh_segments_with_payload_are_candidates() {
    let fin = Tcp {
        flags: TCP_ACK | TCP_FIN,
        ..seg_n(0, 10)
    };
    assert_eq!(Segment::parse(&tcp_frame(&fin)), Err(Unmergeable::Flags));
    let no_ack = Tcp {
        flags: TCP_PSH,
        ..seg_n(0, 10)
    };
    assert_eq!(Segment::parse(&tcp_frame(&no_ack)), Err(Unmergeable::Flags));
    let pure_ack = seg_n(0, 0);
    assert_eq!(
        Segment::parse(&tcp_frame(&pure_ack)),
        Err(Unmergeable::NoPayload)
    );
    let mut udp = tcp_frame(&seg_n(0, 10));
    udp[23] = 17;
    assert_eq!(Segment::parse(&udp), Err(Unmergeable::NotTcp));
    assert!(flow_of(&udp).is_none());
    assert!(flow_of(&tcp_frame(&pure_ack)).is_some());
}

#[test]
fn the_tcp_checksum_check_sees_damage() {
    let f = tcp_frame(&seg_n(0, 300));
    let layout = Segment::parse(&f).unwrap().layout;
    assert!(tcp_checksum_ok(&f, &layout));
    let mut bad = f.clone();
    bad[100] ^= 1;
    assert!(!tcp_checksum_ok(&bad, &layout));
    assert!(!tcp_checksum_ok(&f[..60], &layout));
}

#[test]
fn a_super_frame_started_behind_room_for_a_device_header_is_the_same_frame() {
    let frames: Vec<Vec<u8>> = (0..4).map(|i| tcp_frame(&seg_n(i, MSS))).collect();
    let (plain, offs) = merge_all(&frames);
    let mut buf = Vec::new();
    let mut m = Merge::start_at(
        &mut buf,
        12,
        &frames[0],
        Segment::parse(&frames[0]).unwrap(),
        Offload::NONE,
    );
    for f in &frames[1..] {
        assert_eq!(
            m.append(&mut buf, f, &Segment::parse(f).unwrap()),
            Append::Merged
        );
    }
    assert_eq!(m.finish(&mut buf), offs[0]);
    assert_eq!(m.header_len(), 14 + 20 + 32);
    assert_eq!(&buf[..12], &[0u8; 12]);
    assert_eq!(&buf[12..], &plain[0][..]);
}
