//! Sleeve seal/open throughput on one core, beside raw ChaCha20-Poly1305 on the same
//! buffer sizes in the same run (the limit of this machine; docs/PERFORMANCE.md).
//!
//! `cargo run -p weft-netstack --release --example sleeve_bench [-- ITERATIONS]`
//! Prints ns/op, MB/s and Gbit/s of inner-frame bytes, and sleeve as % of raw AEAD:
//! of raw AEAD over the frame alone, and over what sleeve encrypts for it (the frame's
//! record header too, the message header as AAD). "sleeve seal" is the allocating
//! `Sleeve::seal`; "in place" is `Sleeve::seal_message`, which the data path calls.
//! Raw and sleeve run in alternating trials and the best trial of each is shown, so a
//! busy shared machine disturbs both alike; still, compare figures of one run only.

use std::hint::black_box;
use std::time::{Duration, Instant as Clock};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use smoltcp::time::Instant;
use weft_netstack::base::{NodeId, Vni};
use weft_netstack::stage::sleeve::{
    Frame, GridSecret, PskKeySource, SessionConfig, SessionId, Sleeve,
};
use weft_netstack::wire::sleeve::{emit_record, HEADER_LEN, RECORD_HEADER_LEN, TAG_LEN};

const A: NodeId = NodeId::new(1).unwrap();
const B: NodeId = NodeId::new(2).unwrap();
const ROUND: usize = 1024;
const TRIALS: usize = 9;

fn endpoint(local: NodeId, peer: NodeId) -> Sleeve<PskKeySource> {
    let keys = PskKeySource::new(local, GridSecret::new(&[0x42; 32]).expect("32 bytes"));
    let config = SessionConfig {
        // Rekeys are part of the cost: one per 2^20 messages here, not per 2^30.
        rekey_after_packets: 1 << 20,
        ..SessionConfig::default()
    };
    let mut s = Sleeve::new(
        local,
        keys,
        config,
        SessionId::first_of_boot(0, u32::from(local)),
    );
    s.add_peer(peer).expect("new peer");
    s
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(n)
}

struct Figure {
    ns_per_op: f64,
    mb_per_s: f64,
    gbit_per_s: f64,
}

fn figure(elapsed: Duration, ops: usize, bytes_per_op: usize) -> Figure {
    let secs = elapsed.as_secs_f64();
    let bytes = (ops * bytes_per_op) as f64;
    Figure {
        ns_per_op: secs * 1e9 / ops as f64,
        mb_per_s: bytes / secs / 1e6,
        gbit_per_s: bytes * 8.0 / secs / 1e9,
    }
}

/// One line; `base` adds the figure as a share of another, named by its label.
fn print(name: &str, size: usize, f: &Figure, base: Option<(&Figure, &str)>) {
    let pct = base.map_or(String::new(), |(r, label)| {
        format!("{:6.1}% of {label}", 100.0 * f.gbit_per_s / r.gbit_per_s)
    });
    println!(
        "{name:<22} {size:>5} B  {:>9.1} ns/op  {:>9.1} MB/s  {:>6.2} Gbit/s  {pct}",
        f.ns_per_op, f.mb_per_s, f.gbit_per_s
    );
}

/// Raw AEAD: encrypt `size` bytes in place with a fresh nonce and an AAD as long as
/// sleeve's clear header.
fn raw_seal(size: usize, iters: usize) -> Figure {
    raw_seal_of(size, HEADER_LEN, size, iters)
}

/// Raw AEAD over exactly what a sleeve message of one `size`-byte frame encrypts: the
/// frame's record (its header and the frame) with the clear header as AAD. The figure
/// counts `size` bytes, so it compares with the sleeve rows one for one.
fn raw_seal_as_sleeve(size: usize, iters: usize) -> Figure {
    raw_seal_of(RECORD_HEADER_LEN + size, HEADER_LEN, size, iters)
}

/// Encrypt `len` bytes in place with an `aad_len`-byte AAD, `counted` bytes a seal in
/// the figure.
fn raw_seal_of(len: usize, aad_len: usize, counted: usize, iters: usize) -> Figure {
    let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
    let aad = vec![0u8; aad_len];
    let mut buf = vec![0x5au8; len];
    let start = Clock::now();
    for i in 0..iters {
        let tag = cipher
            .encrypt_inout_detached(&nonce(i as u64), &aad, buf.as_mut_slice().into())
            .expect("small buffer");
        black_box(&tag);
    }
    figure(start.elapsed(), iters, counted)
}

/// Raw AEAD: verify and decrypt `size` bytes in place (ciphertexts made untimed).
fn raw_open(size: usize, iters: usize) -> Figure {
    let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
    let aad = [0u8; HEADER_LEN];
    let mut elapsed = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let mut batch: Vec<(Vec<u8>, Tag)> = (0..ROUND)
            .map(|i| {
                let mut buf = vec![0x5au8; size];
                let tag = cipher
                    .encrypt_inout_detached(
                        &nonce((done + i) as u64),
                        &aad,
                        buf.as_mut_slice().into(),
                    )
                    .expect("small buffer");
                (buf, tag)
            })
            .collect();
        let start = Clock::now();
        for (i, (buf, tag)) in batch.iter_mut().enumerate() {
            cipher
                .decrypt_inout_detached(
                    &nonce((done + i) as u64),
                    &aad,
                    buf.as_mut_slice().into(),
                    tag,
                )
                .expect("authentic");
        }
        elapsed += start.elapsed();
        done += ROUND;
    }
    figure(elapsed, done, size)
}

/// Sleeve seal of `per_msg` frames of `size` bytes per call.
fn sleeve_seal(size: usize, per_msg: usize, iters: usize) -> Figure {
    let mut a = endpoint(A, B);
    let bytes = vec![0x5au8; size];
    let frames: Vec<Frame<'_>> = (0..per_msg)
        .map(|_| Frame {
            vni: Vni::new(100).expect("24-bit"),
            bytes: &bytes,
        })
        .collect();
    let now = Instant::from_millis(0);
    let start = Clock::now();
    for _ in 0..iters {
        black_box(a.seal(B, &frames, now).expect("seal"));
    }
    figure(start.elapsed(), iters * per_msg, size)
}

/// Sleeve seal as the data path does it (`Sleeve::seal_message`, as the overlay's
/// encapsulation calls it): one frame of `size` bytes already laid out as a record in a
/// message buffer, sealed where it lies; no allocation, no copy. The same buffer is
/// sealed again each time, as `raw_seal` encrypts its buffer again.
fn sleeve_seal_in_place(size: usize, iters: usize) -> Figure {
    let mut a = endpoint(A, B);
    let frame = Frame {
        vni: Vni::new(100).expect("24-bit"),
        bytes: &vec![0x5au8; size],
    };
    let mut message = vec![0u8; HEADER_LEN];
    emit_record(&frame, &mut message);
    message.resize(message.len() + TAG_LEN, 0);
    let now = Instant::from_millis(0);
    let start = Clock::now();
    for _ in 0..iters {
        a.seal_message(B, &mut message, 1, now).expect("seal");
        black_box(&message);
    }
    figure(start.elapsed(), iters, size)
}

/// Sleeve open of messages carrying `per_msg` frames of `size` bytes (sealed untimed).
fn sleeve_open(size: usize, per_msg: usize, iters: usize) -> Figure {
    let (mut a, mut b) = (endpoint(A, B), endpoint(B, A));
    let bytes = vec![0x5au8; size];
    let frames: Vec<Frame<'_>> = (0..per_msg)
        .map(|_| Frame {
            vni: Vni::new(100).expect("24-bit"),
            bytes: &bytes,
        })
        .collect();
    let now = Instant::from_millis(0);
    let mut elapsed = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let mut batch: Vec<Vec<u8>> = (0..ROUND)
            .flat_map(|_| a.seal(B, &frames, now).expect("seal"))
            .collect();
        let start = Clock::now();
        for msg in &mut batch {
            let opened = b.open(msg, now).expect("open");
            black_box(opened.frames.len());
        }
        elapsed += start.elapsed();
        done += ROUND;
    }
    assert_eq!(b.metrics().dropped_total(), 0);
    figure(elapsed, done * per_msg, size)
}

fn best(a: Figure, b: Figure) -> Figure {
    if b.ns_per_op < a.ns_per_op {
        b
    } else {
        a
    }
}

/// Best of `TRIALS` alternating runs of each of `runs`.
fn trials<const N: usize>(runs: [&dyn Fn() -> Figure; N]) -> [Figure; N] {
    let mut out = runs.map(|run| run());
    for _ in 1..TRIALS {
        for (slot, run) in out.iter_mut().zip(runs.iter()) {
            let f = run();
            let prev = std::mem::replace(slot, figure(Duration::ZERO, 1, 0));
            *slot = best(prev, f);
        }
    }
    out
}

fn main() {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let per_trial = (iters / TRIALS).max(ROUND);
    if cfg!(debug_assertions) {
        println!("note: debug build; run with --release for figures");
    }
    println!(
        "sleeve bench: best of {TRIALS} alternating trials of {per_trial} ops, one core, frame bytes counted"
    );
    for size in [64usize, 512, 1400] {
        let [rs, rq, ss, sp, ro, so] = trials([
            &|| raw_seal(size, per_trial),
            &|| raw_seal_as_sleeve(size, per_trial),
            &|| sleeve_seal(size, 1, per_trial),
            &|| sleeve_seal_in_place(size, per_trial),
            &|| raw_open(size, per_trial),
            &|| sleeve_open(size, 1, per_trial),
        ]);
        print("raw aead seal", size, &rs, None);
        print("raw aead, sleeve bytes", size, &rq, Some((&rs, "raw")));
        print("sleeve seal", size, &ss, Some((&rs, "raw")));
        print(
            "sleeve seal in place",
            size,
            &sp,
            Some((&rq, "raw, sleeve bytes")),
        );
        print("raw aead open", size, &ro, None);
        print("sleeve open", size, &so, Some((&ro, "raw")));
    }
    // Batching: 20 frames of 64 B per message (what fits in 1472 bytes).
    let [ss, so] = trials([&|| sleeve_seal(64, 20, per_trial / 20), &|| {
        sleeve_open(64, 20, per_trial / 20)
    }]);
    print("sleeve seal x20 batch", 64, &ss, None);
    print("sleeve open x20 batch", 64, &so, None);
}
