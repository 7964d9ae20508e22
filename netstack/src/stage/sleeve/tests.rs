//! Behaviour of the sleeve endpoint as the overlay uses it: two appliances, real bytes.

use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::time::{Duration, Instant};

use super::*;
use crate::base::test_rng::Rng;
use crate::base::Vni;
use crate::wire::sleeve::{Packet, Repr, HEADER_LEN, MIN_MESSAGE_LEN};

const A: NodeId = NodeId::new(1).unwrap();
const B: NodeId = NodeId::new(2).unwrap();
const SECRET: [u8; 32] = [0x42; 32];

fn vni(v: u32) -> Vni {
    Vni::new(v).unwrap()
}

fn endpoint(
    local: NodeId,
    peer: NodeId,
    secret: &[u8],
    config: SessionConfig,
    seed: u64,
) -> Sleeve<PskKeySource> {
    let keys = PskKeySource::new(local, GridSecret::new(secret).unwrap());
    let mut s = Sleeve::new(local, keys, config, SessionId(seed));
    s.add_peer(peer).unwrap();
    s
}

/// A (sender) and B (receiver) sharing the grid secret.
fn pair(config: SessionConfig) -> (Sleeve<PskKeySource>, Sleeve<PskKeySource>) {
    (
        endpoint(A, B, &SECRET, config, 0x1000),
        endpoint(B, A, &SECRET, config, 0x2000),
    )
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms as i64)
}

/// An Ethernet-sized frame whose bytes say which frame it is.
fn frame_bytes(tag: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    for (i, b) in f.iter_mut().enumerate() {
        *b = (tag as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    if len >= 4 {
        f[..4].copy_from_slice(&tag.to_be_bytes());
    }
    f
}

/// Seal one frame per message, returning the messages.
fn seal_one(tx: &mut Sleeve<PskKeySource>, tag: u32, now: Instant) -> Vec<u8> {
    let bytes = frame_bytes(tag, 64);
    let mut out = tx
        .seal(
            B,
            &[Frame {
                vni: vni(100),
                bytes: &bytes,
            }],
            now,
        )
        .unwrap();
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

fn open_tags(
    rx: &mut Sleeve<PskKeySource>,
    msg: &[u8],
    now: Instant,
) -> Result<Vec<u32>, OpenError> {
    let mut buf = msg.to_vec();
    let opened = rx.open(&mut buf, now)?;
    Ok(opened
        .frames
        .iter()
        .map(|f| u32::from_be_bytes([f.bytes[0], f.bytes[1], f.bytes[2], f.bytes[3]]))
        .collect())
}

fn header(msg: &[u8]) -> Repr {
    Repr::parse(&Packet::new_checked(msg).unwrap()).unwrap()
}

#[test]
fn round_trip_keeps_frames_order_and_vnis() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let f: Vec<Vec<u8>> = (0..5)
        .map(|i| frame_bytes(i, 60 + i as usize * 100))
        .collect();
    let frames: Vec<Frame<'_>> = f
        .iter()
        .enumerate()
        .map(|(i, bytes)| Frame {
            vni: vni(10 + i as u32),
            bytes,
        })
        .collect();
    let msgs = a.seal(B, &frames, t(0)).unwrap();
    assert_eq!(msgs.len(), 1, "five small frames batch into one message");
    let mut buf = msgs[0].clone();
    let opened = b.open(&mut buf, t(1)).unwrap();
    assert_eq!(opened.peer, A);
    assert_eq!(opened.frames.iter().collect::<Vec<_>>(), frames);
    assert_eq!(b.metrics().opened_frames, 5);
    assert_eq!(a.metrics().sealed_messages, 1);
}

#[test]
fn ciphertext_hides_inner_frame() {
    let (mut a, _) = pair(SessionConfig::default());
    let payload = b"weft-known-payload-pattern-0123456789";
    let mut frame = frame_bytes(7, 14);
    frame.extend_from_slice(payload);
    let msg = a
        .seal(
            B,
            &[Frame {
                vni: vni(100),
                bytes: &frame,
            }],
            t(0),
        )
        .unwrap();
    let msg = &msg[0];
    assert!(!msg.windows(8).any(|w| payload.windows(8).any(|p| p == w)));
    assert!(!msg.windows(6).any(|w| w == &frame[..6]));
}

/// Any single flipped byte is refused, with the reason the spec gives for that field,
/// and the refusal changes nothing: the genuine message still opens afterwards.
#[test]
fn every_flipped_byte_is_refused() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let first = seal_one(&mut a, 1, t(0));
    assert_eq!(open_tags(&mut b, &first, t(0)), Ok(vec![1]));
    let f1 = frame_bytes(2, 100);
    let f2 = frame_bytes(3, 30);
    let msg = a
        .seal(
            B,
            &[
                Frame {
                    vni: vni(100),
                    bytes: &f1,
                },
                Frame {
                    vni: vni(200),
                    bytes: &f2,
                },
            ],
            t(1),
        )
        .unwrap()
        .remove(0);
    let genuine = header(&msg);
    let mut refused = 0;
    for pos in 0..msg.len() {
        for xor in [0x01u8, 0x80, 0xff] {
            let mut bad = msg.clone();
            bad[pos] ^= xor;
            let expect = match pos {
                0 => OpenError::BadVersion,
                1 => OpenError::UnknownType,
                4..8 => OpenError::UnknownPeer,
                16..20 => {
                    let e = header(&bad).epoch.0;
                    if (1..=session::MAX_EPOCH_STEP).contains(&e) {
                        OpenError::AuthFailed
                    } else {
                        OpenError::UnknownEpoch
                    }
                }
                20..28 if header(&bad).counter == 0 => OpenError::Replayed,
                _ => OpenError::AuthFailed,
            };
            assert_eq!(
                open_tags(&mut b, &bad, t(2)),
                Err(expect),
                "byte {pos} ^ {xor:#x}"
            );
            refused += 1;
        }
    }
    assert_eq!(b.metrics().dropped_total(), refused);
    assert!(b.metrics().drop_auth_failed > (msg.len() - HEADER_LEN) as u64);
    assert_eq!(header(&msg), genuine);
    assert_eq!(open_tags(&mut b, &msg, t(3)), Ok(vec![2, 3]));
}

#[test]
fn replay_is_refused_and_counted() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let msg = seal_one(&mut a, 1, t(0));
    assert_eq!(open_tags(&mut b, &msg, t(0)), Ok(vec![1]));
    for _ in 0..3 {
        assert_eq!(open_tags(&mut b, &msg, t(1)), Err(OpenError::Replayed));
    }
    assert_eq!(b.metrics().drop_replayed, 3);
    assert_eq!(b.metrics().opened_messages, 1);
}

#[test]
fn reordering_inside_window_is_accepted_older_is_refused() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let msgs: Vec<Vec<u8>> = (0..2100).map(|i| seal_one(&mut a, i, t(0))).collect();
    // Newest first, then the rest newest to oldest.
    assert_eq!(open_tags(&mut b, &msgs[2099], t(1)), Ok(vec![2099]));
    for i in (0..2099).rev() {
        let expect = if 2099 - i < replay::WINDOW as usize {
            Ok(vec![i as u32])
        } else {
            Err(OpenError::TooOld)
        };
        assert_eq!(open_tags(&mut b, &msgs[i], t(1)), expect, "message {i}");
    }
    assert_eq!(b.metrics().drop_too_old, 52);
    assert_eq!(b.metrics().opened_messages, 2048);
}

#[test]
fn shuffled_within_window_all_open() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let mut rng = Rng::new(7);
    let mut msgs: Vec<(u32, Vec<u8>)> = (0..3000).map(|i| (i, seal_one(&mut a, i, t(0)))).collect();
    // Shuffle inside blocks of 1024 so no message is displaced by a whole window.
    for block in msgs.chunks_mut(1024) {
        for i in (1..block.len()).rev() {
            block.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
    }
    for (i, msg) in &msgs {
        assert_eq!(open_tags(&mut b, msg, t(1)), Ok(vec![*i]));
    }
}

#[test]
fn wrong_grid_secret_exchanges_nothing() {
    let mut a = endpoint(A, B, &SECRET, SessionConfig::default(), 1);
    let mut b = endpoint(B, A, &[0x43; 32], SessionConfig::default(), 2);
    for i in 0..10 {
        let msg = seal_one(&mut a, i, t(i as u64));
        assert_eq!(
            open_tags(&mut b, &msg, t(i as u64)),
            Err(OpenError::AuthFailed)
        );
    }
    assert_eq!(b.metrics().drop_auth_failed, 10);
    assert_eq!(b.metrics().opened_frames, 0);
    assert_eq!(b.peer(A).unwrap().rx_current(), None);
}

#[test]
fn message_for_another_receiver_fails_auth() {
    let mut a = endpoint(
        A,
        NodeId::new(3).unwrap(),
        &SECRET,
        SessionConfig::default(),
        1,
    );
    let (_, mut b) = pair(SessionConfig::default());
    let bytes = frame_bytes(1, 64);
    let msg = a
        .seal(
            NodeId::new(3).unwrap(),
            &[Frame {
                vni: vni(1),
                bytes: &bytes,
            }],
            t(0),
        )
        .unwrap();
    assert_eq!(open_tags(&mut b, &msg[0], t(0)), Err(OpenError::AuthFailed));
}

#[test]
fn unknown_sender_is_refused_before_crypto() {
    let mut c = endpoint(
        NodeId::new(9).unwrap(),
        B,
        &SECRET,
        SessionConfig::default(),
        1,
    );
    let (_, mut b) = pair(SessionConfig::default());
    let bytes = frame_bytes(1, 64);
    let msg = c
        .seal(
            B,
            &[Frame {
                vni: vni(1),
                bytes: &bytes,
            }],
            t(0),
        )
        .unwrap();
    assert_eq!(
        open_tags(&mut b, &msg[0], t(0)),
        Err(OpenError::UnknownPeer)
    );
    assert_eq!(b.metrics().drop_unknown_peer, 1);
    assert_eq!(
        c.seal(NodeId::new(77).unwrap(), &[], t(0)),
        Err(SealError::UnknownPeer)
    );
}

#[test]
fn rekey_by_count_loses_nothing_in_flight() {
    let config = SessionConfig {
        rekey_after_packets: 10,
        ..SessionConfig::default()
    };
    let (mut a, mut b) = pair(config);
    let msgs: Vec<Vec<u8>> = (0..40).map(|i| seal_one(&mut a, i, t(i as u64))).collect();
    let epochs: Vec<u32> = msgs.iter().map(|m| header(m).epoch.0).collect();
    assert_eq!(epochs, (0..40).map(|i| i / 10).collect::<Vec<_>>());
    assert!(msgs.iter().all(|m| header(m).counter < 10));
    assert_eq!(a.peer(B).unwrap().stats().rekeys, 3);
    // Deliver with the epochs interleaved: each new epoch arrives before the tail of
    // the previous one, as reordering on the underlay does.
    let mut order = Vec::new();
    for e in 0..4 {
        order.extend(e * 10..e * 10 + 5);
        if e > 0 {
            order.extend((e - 1) * 10 + 5..e * 10);
        }
    }
    order.extend(35..40);
    assert_eq!(order.len(), 40);
    for i in order {
        assert_eq!(
            open_tags(&mut b, &msgs[i], t(100)),
            Ok(vec![i as u32]),
            "message {i}"
        );
    }
    assert_eq!(b.metrics().dropped_total(), 0);
    assert_eq!(b.peer(A).unwrap().stats().rx_epochs_installed, 3);
}

#[test]
fn rekey_by_time_accepts_old_epoch_for_grace_only() {
    let config = SessionConfig {
        rekey_after_time: Duration::from_secs(1),
        old_key_grace: Duration::from_secs(30),
        ..SessionConfig::default()
    };
    let (mut a, mut b) = pair(config);
    let old: Vec<Vec<u8>> = (0..3).map(|i| seal_one(&mut a, i, t(0))).collect();
    let new = seal_one(&mut a, 3, t(1500));
    assert_eq!(header(&old[0]).epoch, Epoch(0));
    assert_eq!(header(&new).epoch, Epoch(1));
    assert_eq!(header(&new).counter, 0);
    assert_eq!(open_tags(&mut b, &old[0], t(1500)), Ok(vec![0]));
    assert_eq!(open_tags(&mut b, &new, t(1600)), Ok(vec![3]));
    // In flight under the old epoch, inside the grace period: still opens.
    assert_eq!(open_tags(&mut b, &old[1], t(20_000)), Ok(vec![1]));
    // After the grace period the old epoch is gone.
    assert_eq!(
        open_tags(&mut b, &old[2], t(40_000)),
        Err(OpenError::UnknownEpoch)
    );
}

#[test]
fn epoch_far_ahead_or_behind_is_unknown() {
    let config = SessionConfig {
        rekey_after_packets: 1,
        ..SessionConfig::default()
    };
    let (mut a, mut b) = pair(config);
    let msgs: Vec<Vec<u8>> = (0..20).map(|i| seal_one(&mut a, i, t(0))).collect();
    assert_eq!(open_tags(&mut b, &msgs[0], t(0)), Ok(vec![0]));
    // Epoch 9 is more than MAX_EPOCH_STEP ahead of 0.
    assert_eq!(
        open_tags(&mut b, &msgs[9], t(0)),
        Err(OpenError::UnknownEpoch)
    );
    assert_eq!(open_tags(&mut b, &msgs[8], t(0)), Ok(vec![8]));
    assert_eq!(open_tags(&mut b, &msgs[9], t(0)), Ok(vec![9]));
    // Epochs 1..=7 are neither current nor the previous (8 replaced 0, 9 replaced 8).
    assert_eq!(
        open_tags(&mut b, &msgs[3], t(0)),
        Err(OpenError::UnknownEpoch)
    );
    assert_eq!(open_tags(&mut b, &msgs[8], t(0)), Err(OpenError::Replayed));
}

#[test]
fn peer_restart_is_adopted_and_old_session_is_stale() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let before: Vec<Vec<u8>> = (0..3).map(|i| seal_one(&mut a, i, t(0))).collect();
    assert_eq!(open_tags(&mut b, &before[0], t(0)), Ok(vec![0]));
    // A reboots: new endpoint, new per-boot seed, counters from 0 again.
    let mut a2 = endpoint(A, B, &SECRET, SessionConfig::default(), 0x9999_0000);
    let after = seal_one(&mut a2, 10, t(5));
    assert_eq!(header(&after).counter, 0);
    assert_ne!(header(&after).session, header(&before[0]).session);
    assert_eq!(open_tags(&mut b, &after, t(5)), Ok(vec![10]));
    assert_eq!(b.peer(A).unwrap().stats().rx_sessions_adopted, 2);
    assert_eq!(
        open_tags(&mut b, &before[1], t(6)),
        Err(OpenError::StaleSession)
    );
    assert_eq!(
        open_tags(&mut b, &before[0], t(6)),
        Err(OpenError::StaleSession)
    );
}

#[test]
fn readding_a_peer_starts_a_new_session() {
    let (mut a, _) = pair(SessionConfig::default());
    let first = header(&seal_one(&mut a, 0, t(0)));
    assert!(a.remove_peer(B));
    assert_eq!(a.add_peer(B), Ok(()));
    assert_eq!(a.add_peer(B), Err(PeerError::AlreadyPeer));
    let second = header(&seal_one(&mut a, 0, t(0)));
    assert_ne!(first.session, second.session);
    assert_eq!((first.epoch, first.counter), (second.epoch, second.counter));
}

/// Property: over random traffic, rekeys, time steps, restarts and peer re-adds, no
/// (sender session, epoch, counter) is ever used twice, and the receiver opens all.
#[test]
fn counters_are_never_reused() {
    let mut rng = Rng::new(0xc0ffee);
    for round in 0..10 {
        let config = SessionConfig {
            rekey_after_packets: 1 + rng.next_u64() % 20,
            rekey_after_time: Duration::from_millis(1 + rng.next_u64() % 500),
            old_key_grace: Duration::from_secs(3600),
            ..SessionConfig::default()
        };
        let (mut a, mut b) = pair(config);
        let mut used = BTreeSet::new();
        let mut now = 0;
        for _ in 0..100 {
            now += rng.next_u64() % 100;
            match rng.next_u64() % 20 {
                0 => {
                    a.remove_peer(B);
                    a.add_peer(B).unwrap();
                }
                _ => {
                    // Small frames keep the (unoptimised) test build fast; sizes matter little here.
                    let n = 1 + (rng.next_u64() % 8) as usize;
                    let f: Vec<Vec<u8>> = (0..n)
                        .map(|i| frame_bytes(i as u32, 14 + (rng.next_u64() % 300) as usize))
                        .collect();
                    let frames: Vec<Frame<'_>> =
                        f.iter().map(|bytes| Frame { vni: vni(5), bytes }).collect();
                    let msgs = a.seal(B, &frames, t(now)).unwrap();
                    let mut delivered = 0;
                    for m in msgs {
                        assert!(m.len() <= config.max_datagram);
                        let h = header(&m);
                        assert!(
                            used.insert((h.session, h.epoch, h.counter)),
                            "round {round}: reused {h:?}"
                        );
                        let mut buf = m.clone();
                        delivered += b.open(&mut buf, t(now)).unwrap().frames.len();
                    }
                    assert_eq!(delivered, n);
                }
            }
        }
    }
}

#[test]
fn batching_fills_messages_up_to_the_underlay() {
    let config = SessionConfig::default();
    let (mut a, mut b) = pair(config);
    let small = frame_bytes(1, 64);
    let frames: Vec<Frame<'_>> = (0..50)
        .map(|_| Frame {
            vni: vni(1),
            bytes: &small,
        })
        .collect();
    let msgs = a.seal(B, &frames, t(0)).unwrap();
    // (1472 - 44) / 70 = 20 records per message.
    assert_eq!(
        msgs.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![44 + 20 * 70, 44 + 20 * 70, 44 + 10 * 70]
    );
    let mut total = 0;
    for m in msgs {
        let mut buf = m;
        total += b.open(&mut buf, t(0)).unwrap().frames.len();
    }
    assert_eq!(total, 50);

    // The overlay MTU is exact: the largest inner IP packet fills a 1500-byte IP datagram.
    assert_eq!(overlay_mtu(1500), 1408);
    let biggest = frame_bytes(2, 14 + overlay_mtu(1500) as usize);
    assert_eq!(biggest.len(), config.max_frame_len());
    let msgs = a
        .seal(
            B,
            &[Frame {
                vni: vni(1),
                bytes: &biggest,
            }],
            t(0),
        )
        .unwrap();
    assert_eq!(msgs[0].len() + session::UDP_IPV4_OVERHEAD, 1500);
    let too_big = frame_bytes(3, config.max_frame_len() + 1);
    let before = a.peer(B).unwrap().stats();
    assert_eq!(
        a.seal(
            B,
            &[
                Frame {
                    vni: vni(1),
                    bytes: &small
                },
                Frame {
                    vni: vni(1),
                    bytes: &too_big
                }
            ],
            t(0)
        ),
        Err(SealError::FrameTooBig)
    );
    assert_eq!(
        a.seal(
            B,
            &[Frame {
                vni: vni(1),
                bytes: &[]
            }],
            t(0)
        ),
        Err(SealError::EmptyFrame)
    );
    assert_eq!(a.metrics().seal_refused, 2);
    assert_eq!(a.peer(B).unwrap().stats(), before);
    assert_eq!(a.seal(B, &[], t(0)), Ok(vec![]));
}

#[test]
fn headroom_is_left_for_outer_headers() {
    let config = SessionConfig {
        headroom: 42,
        ..SessionConfig::default()
    };
    let (mut a, mut b) = pair(config);
    let bytes = frame_bytes(5, 64);
    let mut msgs = a
        .seal(
            B,
            &[Frame {
                vni: vni(1),
                bytes: &bytes,
            }],
            t(0),
        )
        .unwrap();
    let m = &mut msgs[0];
    assert!(m[..42].iter().all(|&x| x == 0));
    assert_eq!(b.open(&mut m[42..], t(0)).unwrap().frames.len(), 1);
}

#[test]
fn missing_keys_are_refused() {
    struct NoKeys;
    impl KeySource for NoKeys {
        fn key(&self, _: &KeyId) -> Option<AeadKey> {
            None
        }
    }
    let mut n = Sleeve::new(B, NoKeys, SessionConfig::default(), SessionId(0));
    n.add_peer(A).unwrap();
    let (mut a, _) = pair(SessionConfig::default());
    let msg = seal_one(&mut a, 0, t(0));
    let mut buf = msg.clone();
    assert_eq!(
        n.open(&mut buf, t(0)).err(),
        Some(OpenError::KeyUnavailable)
    );
    let bytes = frame_bytes(0, 64);
    assert_eq!(
        n.seal(
            A,
            &[Frame {
                vni: vni(1),
                bytes: &bytes
            }],
            t(0)
        ),
        Err(SealError::KeyUnavailable)
    );
    assert_eq!(n.metrics().drop_key_unavailable, 1);
}

/// Truncations, garbage and near-valid headers: refused with a reason, never a panic.
#[test]
fn truncated_and_garbage_never_panic() {
    let (mut a, mut b) = pair(SessionConfig::default());
    let msg = seal_one(&mut a, 1, t(0));
    for len in 0..msg.len() {
        let expect = if len < MIN_MESSAGE_LEN {
            OpenError::Truncated
        } else {
            OpenError::AuthFailed
        };
        assert_eq!(
            open_tags(&mut b, &msg[..len], t(0)),
            Err(expect),
            "len {len}"
        );
    }
    let mut rng = Rng::new(99);
    for i in 0..5000 {
        let len = (rng.next_u64() % 200) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if i % 2 == 0 && len >= HEADER_LEN {
            // Plausible header from the known peer, random rest.
            junk[..HEADER_LEN].copy_from_slice(&msg[..HEADER_LEN]);
            junk[20..28].copy_from_slice(&rng.next_u64().to_be_bytes());
        }
        assert!(b.open(&mut junk, t(0)).is_err());
    }
    assert_eq!(b.metrics().opened_messages, 0);
    assert_eq!(open_tags(&mut b, &msg, t(0)), Ok(vec![1]));
}

/// A receiver that restarted sees the peer's current session and then a recording of an
/// older boot: the recording never displaces the current session.
#[test]
fn recorded_old_session_cannot_lock_out_the_current_one() {
    let mut a_old = endpoint(
        A,
        B,
        &SECRET,
        SessionConfig::default(),
        0x0000_0001_0000_0000,
    );
    let recorded: Vec<Vec<u8>> = (0..3).map(|i| seal_one(&mut a_old, i, t(0))).collect();
    let mut a_now = endpoint(
        A,
        B,
        &SECRET,
        SessionConfig::default(),
        0x0000_0002_0000_0000,
    );
    let (_, mut b) = pair(SessionConfig::default());
    let first = seal_one(&mut a_now, 10, t(1000));
    assert_eq!(open_tags(&mut b, &first, t(1000)), Ok(vec![10]));
    for (i, r) in recorded.iter().enumerate() {
        let now = t(1000 + 1000 * i as u64);
        let tag = 11 + i as u32;
        assert_eq!(open_tags(&mut b, r, now), Err(OpenError::StaleSession));
        let live = seal_one(&mut a_now, tag, now);
        assert_eq!(open_tags(&mut b, &live, now), Ok(vec![tag]));
    }
    // Even if the pair went quiet long enough for a lower session to be taken over, the
    // real (higher) session wins back at its next message.
    let quiet = t(1_000_000);
    assert_eq!(open_tags(&mut b, &recorded[0], quiet), Ok(vec![0]));
    let live = seal_one(&mut a_now, 20, quiet);
    assert_eq!(open_tags(&mut b, &live, quiet), Ok(vec![20]));
    assert_eq!(
        open_tags(&mut b, &recorded[1], quiet),
        Err(OpenError::StaleSession)
    );
}

/// A peer whose clock went back across a reboot starts a lower session: refused while
/// its old session may still be alive, adopted once that one has been silent.
#[test]
fn lower_session_is_taken_over_after_silence() {
    let config = SessionConfig::default();
    let mut a_high = endpoint(A, B, &SECRET, config, 0x0000_0009_0000_0000);
    let mut a_low = endpoint(A, B, &SECRET, config, 0x0000_0003_0000_0000);
    let (_, mut b) = pair(config);
    let high = seal_one(&mut a_high, 1, t(0));
    assert_eq!(open_tags(&mut b, &high, t(0)), Ok(vec![1]));
    let low = seal_one(&mut a_low, 2, t(5_000));
    assert_eq!(
        open_tags(&mut b, &low, t(5_000)),
        Err(OpenError::StaleSession)
    );
    let late = t(config.session_takeover_idle.total_millis());
    assert_eq!(open_tags(&mut b, &low, late), Ok(vec![2]));
    let current = b.peer(A).unwrap().rx_current().map(|c| c.0);
    assert_eq!(current, Some(header(&low).session));
}

#[test]
fn session_ids_grow_and_never_wrap() {
    let next = SessionId::first_of_boot(2, u32::MAX).next();
    assert_eq!(next, Some(SessionId::first_of_boot(3, 0)));
    assert!(
        SessionId::first_of_boot(1_700_000_000, 0)
            > SessionId::first_of_boot(1_600_000_000, u32::MAX)
    );
    let keys = PskKeySource::new(A, GridSecret::new(&SECRET).unwrap());
    let mut s = Sleeve::new(A, keys, SessionConfig::default(), SessionId(u64::MAX));
    assert_eq!(s.add_peer(B), Ok(()));
    assert_eq!(
        s.add_peer(NodeId::new(3).unwrap()),
        Err(PeerError::SessionsExhausted)
    );
}
