//! Sleeve receive path: arbitrary UDP payloads into `Sleeve::open`, the record parser
//! behind the tag, and seal/open round trips. Nothing may panic, no forged message may
//! open, and round trips must give back exactly what was sealed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smoltcp::time::Instant;
use weft_netstack::base::{NodeId, Vni};
use weft_netstack::stage::sleeve::{
    Frame, GridSecret, PskKeySource, SessionConfig, SessionId, Sleeve,
};
use weft_netstack::wire::sleeve::Records;

const A: NodeId = NodeId::new(1).unwrap();
const B: NodeId = NodeId::new(2).unwrap();

fn endpoint(local: NodeId, peer: NodeId, seed: u64) -> Sleeve<PskKeySource> {
    let secret = GridSecret::new(&[0x42; 32]).expect("constant secret is long enough");
    let mut s = Sleeve::new(
        local,
        PskKeySource::new(local, secret),
        SessionConfig::default(),
        SessionId(seed),
    );
    s.add_peer(peer).expect("new peer");
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::from_millis(1000);
    match mode % 3 {
        // Untrusted bytes from the underlay, to a receiver that already has state.
        0 => {
            let (mut a, mut b) = (endpoint(A, B, 10), endpoint(B, A, 20));
            let frame = [7u8; 60];
            let mut first = a
                .seal(
                    B,
                    &[Frame {
                        vni: Vni::new(1).expect("24-bit"),
                        bytes: &frame,
                    }],
                    now,
                )
                .expect("seal to a known peer");
            let _ = b.open(&mut first[0], now).expect("genuine message opens");
            let mut buf = rest.to_vec();
            assert!(b.open(&mut buf, now).is_err(), "forged message opened");
            assert_eq!(b.metrics().dropped_total(), 1);
        }
        // The record parser (reached only after authentication).
        1 => {
            if let Ok(records) = Records::new_checked(rest) {
                let total: usize = records.iter().map(|f| 6 + f.bytes.len()).sum();
                assert_eq!(total, rest.len());
                assert_eq!(records.iter().count(), records.len());
            }
        }
        // Round trip: frames cut from the input by one length byte each.
        _ => {
            let mut frames = Vec::new();
            let mut input = rest;
            while let Some((&len, tail)) = input.split_first() {
                let len = usize::from(len).max(1).min(tail.len());
                if len == 0 {
                    break;
                }
                let (bytes, tail) = tail.split_at(len);
                let vni = Vni::new(u32::from(len as u8) * 65_537).expect("24-bit");
                frames.push(Frame { vni, bytes });
                input = tail;
            }
            let (mut a, mut b) = (endpoint(A, B, 10), endpoint(B, A, 20));
            let mut opened = Vec::new();
            for mut msg in a.seal(B, &frames, now).expect("frames fit") {
                let o = b.open(&mut msg, now).expect("sealed message opens");
                opened.extend(o.frames.iter().map(|f| (f.vni, f.bytes.to_vec())));
            }
            let sent: Vec<_> = frames.iter().map(|f| (f.vni, f.bytes.to_vec())).collect();
            assert_eq!(opened, sent);
        }
    }
});
