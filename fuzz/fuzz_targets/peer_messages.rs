//! The peer channel after the handshake: arbitrary application bytes from an
//! authenticated peer (through real TLS records) into a `Channel` and a `Mesh`, and
//! arbitrary bytes into the message reader and into a fresh channel's handshake.
//! Nothing may panic; every message delivered must re-encode to the bytes it came
//! from; a channel that refused a message delivers nothing after it; no key appears for
//! a session the peer did not announce.
#![no_main]

use core::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_appliance::weft_peer::channel::{Channel, CloseReason, Event, TlsContext};
use weft_appliance::weft_peer::identity::Credentials;
use weft_appliance::weft_peer::keys::{Direction, TlsKeys};
use weft_appliance::weft_peer::mesh::{Action, Mesh, MeshConfig, Time};
use weft_appliance::weft_peer::message::{Message, Reader, HEADER_LEN, MAX_BODY};
use weft_appliance::weft_peer::rng::{Csprng, Seed};

/// Within the fixtures' validity (made by `weft ca` for 100 years).
const NOW: u64 = 1_800_000_000;
const CA: &str = include_str!("../fixtures/peer/ca.pem");
const CERT_1: &str = include_str!("../fixtures/peer/node-1.pem");
const KEY_1: &str = include_str!("../fixtures/peer/node-1.key");
const CERT_2: &str = include_str!("../fixtures/peer/node-2.pem");
const KEY_2: &str = include_str!("../fixtures/peer/node-2.key");

fn context(node: u32) -> TlsContext {
    let (cert, key) = if node == 1 {
        (CERT_1, KEY_1)
    } else {
        (CERT_2, KEY_2)
    };
    let creds = Credentials::from_pem(node, CA, cert, key, Some(NOW)).expect("fixture");
    TlsContext::new(creds, Csprng::leak(Seed::new([node as u8; 32]))).expect("fixture")
}

thread_local! {
    static CONTEXTS: (TlsContext, TlsContext) = (context(1), context(2));
}

/// Move bytes both ways until quiet; returns the listener's events.
fn run(a: &mut Channel, b: &mut Channel) -> Vec<Event> {
    for _ in 0..20 {
        let (ab, ba) = (a.output().to_vec(), b.output().to_vec());
        a.consumed(ab.len());
        b.consumed(ba.len());
        if ab.is_empty() && ba.is_empty() {
            break;
        }
        b.receive(&ab, Some(NOW));
        a.receive(&ba, Some(NOW));
    }
    let mut events = Vec::new();
    while let Some(e) = b.poll_event() {
        events.push(e);
    }
    events
}

/// Split `data` into chunks whose sizes come from the data itself.
fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (usize::from(n) % 16 + 1).min(tail.len());
        out.push(&tail[..n]);
        rest = &tail[n..];
        if n == 0 {
            break;
        }
    }
    out
}

fn check_messages(input: &[u8], events: &[Event]) {
    let mut expected = Vec::new();
    let mut closed = false;
    for e in events {
        match e {
            Event::Message(m) => {
                assert!(!closed, "a message after the channel closed");
                m.write_to(&mut expected);
            }
            Event::Closed(_) => closed = true,
            Event::Established { .. } => {}
        }
    }
    assert!(input.starts_with(&expected), "messages not as sent");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        // The reader alone, any split.
        0 => {
            let mut reader = Reader::new();
            let mut got = Vec::new();
            for chunk in chunks(rest) {
                match reader.push(chunk) {
                    Ok(ms) => got.extend(ms),
                    Err(_) => break,
                }
                assert!(reader.pending() <= HEADER_LEN + MAX_BODY);
            }
            let mut again = Vec::new();
            for m in &got {
                m.write_to(&mut again);
            }
            let stream: Vec<u8> = chunks(rest).concat();
            assert!(stream.starts_with(&again));
        }
        // An authenticated peer sends arbitrary application bytes.
        1 => CONTEXTS.with(|(one, two)| {
            let mut a = Channel::dial(one, 2, Some(NOW)).expect("dial");
            let mut b = Channel::accept(two, Some(NOW)).expect("accept");
            let _ = run(&mut a, &mut b);
            for chunk in chunks(rest) {
                a.send_raw(chunk, Some(NOW));
            }
            let events = run(&mut a, &mut b);
            check_messages(&chunks(rest).concat(), &events);
            if let Some(CloseReason::BadMessage(_)) = b.closed() {
                assert!(!b.is_established());
            }
        }),
        // Arbitrary bytes instead of a handshake, to either side.
        2 => CONTEXTS.with(|(one, two)| {
            let mut b = Channel::accept(two, Some(NOW)).expect("accept");
            let mut a = Channel::dial(one, 2, Some(NOW)).expect("dial");
            for chunk in chunks(rest) {
                b.receive(chunk, Some(NOW));
                a.receive(chunk, Some(NOW));
            }
            assert!(!b.is_established() && !a.is_established());
            assert!(b.export_chain(1, 2, 0).is_none());
        }),
        // A mesh whose peer, once connected, sends arbitrary application bytes.
        _ => CONTEXTS.with(|(one, two)| {
            let t = Time {
                since_boot: Duration::from_secs(1),
                unix_secs: Some(NOW),
            };
            let mut mesh = Mesh::new(two.clone(), MeshConfig::default(), 500, TlsKeys::shared());
            mesh.set_peers(&[1], t);
            assert!(mesh
                .poll(t)
                .iter()
                .all(|a| !matches!(a, Action::Dial { .. })));
            let conn = mesh.accept(t).expect("accept");
            let mut a = Channel::dial(one, 2, Some(NOW)).expect("dial");
            for _ in 0..20 {
                let out = a.output().to_vec();
                a.consumed(out.len());
                mesh.received(conn, &out, t);
                let back = mesh.output(conn).to_vec();
                mesh.consumed(conn, back.len(), t);
                a.receive(&back, Some(NOW));
                if out.is_empty() && back.is_empty() {
                    break;
                }
            }
            let mut announced = Vec::new();
            let mut reader = Reader::new();
            for chunk in chunks(rest) {
                let Ok(ms) = reader.push(chunk) else {
                    break;
                };
                announced.extend(ms.iter().filter_map(|m| match m {
                    Message::Keys { session } => Some(*session),
                    _ => None,
                }));
            }
            for chunk in chunks(rest) {
                a.send_raw(chunk, Some(NOW));
                let out = a.output().to_vec();
                a.consumed(out.len());
                mesh.received(conn, &out, t);
            }
            let _ = mesh.poll(t);
            // The mesh holds receiving keys only for a session the peer announced.
            let keys = mesh.keys();
            if let Some(chains) = keys.peer(1) {
                for c in chains.rx() {
                    assert!(announced.contains(&c.session()), "keys for {}", c.session());
                    assert!(keys.key(1, Direction::Receive, c.session(), 0).is_some());
                }
            }
        }),
    }
});
