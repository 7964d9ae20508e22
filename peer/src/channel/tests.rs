use alloc::vec::Vec;

use super::*;
use crate::testing::{context, TestCa, NOW};

/// Move bytes both ways until neither side has anything to send; returns each side's
/// events.
fn run(a: &mut Channel, b: &mut Channel) -> (Vec<Event>, Vec<Event>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let (to_b, to_a) = (a.output().to_vec(), b.output().to_vec());
        a.consumed(to_b.len());
        b.consumed(to_a.len());
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        if !to_b.is_empty() {
            b.receive(&to_b, Some(NOW));
        }
        if !to_a.is_empty() {
            a.receive(&to_a, Some(NOW));
        }
    }
    while let Some(e) = a.poll_event() {
        ea.push(e);
    }
    while let Some(e) = b.poll_event() {
        eb.push(e);
    }
    (ea, eb)
}

fn established(events: &[Event]) -> Option<NodeId> {
    events.iter().find_map(|e| match e {
        Event::Established { peer, .. } => Some(*peer),
        _ => None,
    })
}

fn closed(events: &[Event]) -> Option<CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed(r) => Some(r.clone()),
        _ => None,
    })
}

fn grid_pair() -> (TestCa, TlsContext, TlsContext) {
    let ca = TestCa::new("g");
    let one = context(ca.credentials("g", 1));
    let two = context(ca.credentials("g", 2));
    (ca, one, two)
}

#[test]
fn two_nodes_authenticate_each_other_and_talk() {
    let (_ca, one, two) = grid_pair();
    let mut a = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    // Queued before the handshake completed: sent only after it.
    a.send(Message::Keys { session: 11 }, Some(NOW));
    b.send(Message::Keys { session: 22 }, Some(NOW));
    let (ea, eb) = run(&mut a, &mut b);
    assert_eq!(established(&ea), Some(2));
    assert_eq!(established(&eb), Some(1));
    // The dialer counts the channel established with the listener's first message.
    assert!(
        matches!(ea[0], Event::Established { peer: 2, .. }),
        "{ea:?}"
    );
    assert_eq!(ea[1], Event::Message(Message::Keys { session: 22 }));
    assert!(eb.contains(&Event::Message(Message::Keys { session: 11 })));
    let Some(Event::Established { cert, .. }) = eb.first() else {
        panic!("{eb:?}");
    };
    assert_eq!(cert.subject, "CN=node-1.g.weft.internal");
    assert_eq!(cert.not_after, 2_177_452_800); // 2039-01-01
    b.send(Message::KeysAck { session: 11 }, Some(NOW));
    let (ea, _) = run(&mut a, &mut b);
    assert_eq!(ea, [Event::Message(Message::KeysAck { session: 11 })]);
    assert!(a.is_established());
    assert!(a.is_established() && b.is_established());
}

#[test]
fn both_ends_export_the_same_chain_and_each_direction_its_own() {
    let (_ca, one, two) = grid_pair();
    let mut a = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    assert!(
        a.export_chain(1, 2, 5).is_none(),
        "nothing before the handshake"
    );
    run(&mut a, &mut b);
    let a12 = a.export_chain(1, 2, 5).unwrap();
    let b12 = b.export_chain(1, 2, 5).unwrap();
    let b21 = b.export_chain(2, 1, 6).unwrap();
    assert_eq!(*a12.key(0).unwrap(), *b12.key(0).unwrap());
    assert_ne!(*a12.key(0).unwrap(), *b21.key(0).unwrap());
    // Another connection of the same pair exports other keys (fresh X25519).
    let mut a2 = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b2 = Channel::accept(&two, Some(NOW)).unwrap();
    run(&mut a2, &mut b2);
    assert_ne!(
        *a2.export_chain(1, 2, 5).unwrap().key(0).unwrap(),
        *a12.key(0).unwrap()
    );
}

#[test]
fn the_exporter_is_rustls_own() {
    // rustls's buffered connection (std) computes RFC 8446's exporter itself.
    let (_ca, one, two) = grid_pair();
    let mut client =
        rustls::ClientConnection::new(one.client.clone(), one.creds.server_name(2).unwrap())
            .unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    two.clock.set(Some(NOW));
    one.clock.set(Some(NOW));
    for _ in 0..10 {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        b.receive(&out, Some(NOW));
        let back = b.output().to_vec();
        b.consumed(back.len());
        let mut reader = &back[..];
        while !reader.is_empty() {
            client.read_tls(&mut reader).unwrap();
        }
        client.process_new_packets().unwrap();
    }
    assert!(b.is_established());
    let context = crate::keys::context(1, 2, 9);
    let theirs = client
        .export_keying_material([0u8; 32], crate::keys::EXPORTER_LABEL, Some(&context))
        .unwrap();
    let mut ours = [0u8; 32];
    b.capture
        .export(crate::keys::EXPORTER_LABEL, &context, &mut ours)
        .unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn a_node_of_another_ca_is_refused_as_server_and_as_client() {
    let (_ca, one, _two) = grid_pair();
    let foreign = context(TestCa::new("g").credentials("g", 2));
    // Dialing a foreign server.
    let mut a = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&foreign, Some(NOW)).unwrap();
    let (ea, eb) = run(&mut a, &mut b);
    assert_eq!(
        closed(&ea),
        Some(CloseReason::Handshake(TlsFailure::UnknownCa))
    );
    assert_eq!(
        closed(&eb),
        Some(CloseReason::Handshake(TlsFailure::PeerAlert))
    );
    // A client that trusts our CA but holds a certificate of another: it completes its
    // side, the listener refuses its certificate.
    let mut ctx = context(TestCa::new("g").credentials("g", 2));
    ctx.client = client_config(&ctx, one.creds.ca(), true);
    let mut a = Channel::dial(&ctx, 1, Some(NOW)).unwrap();
    let mut b = Channel::accept(&one, Some(NOW)).unwrap();
    let (ea, eb) = run(&mut a, &mut b);
    assert_eq!(
        closed(&eb),
        Some(CloseReason::Handshake(TlsFailure::UnknownCa))
    );
    assert_eq!(established(&eb), None);
    assert!(!b.is_established());
    assert_eq!(
        closed(&ea),
        Some(CloseReason::Handshake(TlsFailure::PeerAlert))
    );
}

/// A client configuration of `ctx`'s provider and clock trusting `ca`, with `ctx`'s
/// certificate or none.
fn client_config(
    ctx: &TlsContext,
    ca: &pki_types::CertificateDer<'static>,
    with_cert: bool,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder =
        ClientConfig::builder_with_details(ctx.client.crypto_provider().clone(), ctx.clock.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
    let mut config = if with_cert {
        builder
            .with_client_auth_cert(ctx.creds.chain().to_vec(), ctx.creds.key())
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

#[test]
fn a_server_with_the_certificate_of_another_node_is_refused() {
    let ca = TestCa::new("g");
    let one = context(ca.credentials("g", 1));
    let three = context(ca.credentials("g", 3));
    let mut a = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&three, Some(NOW)).unwrap();
    let (ea, _) = run(&mut a, &mut b);
    assert_eq!(
        closed(&ea),
        Some(CloseReason::Handshake(TlsFailure::WrongName))
    );
}

#[test]
fn a_client_claiming_the_listeners_own_node_id_is_refused_after_the_handshake() {
    let ca = TestCa::new("g");
    let two = context(ca.credentials("g", 2));
    let impostor = context(ca.credentials("g", 2));
    let mut a = Channel::dial(&impostor, 1, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    // The impostor dials "node 1" but reaches node 2: refused by name first.
    let (ea, _) = run(&mut a, &mut b);
    assert_eq!(
        closed(&ea),
        Some(CloseReason::Handshake(TlsFailure::WrongName))
    );
    // As a client of node 2 with node 2's certificate: the listener refuses it.
    let mut a = Channel::dial(&impostor, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    let (ea, eb) = run(&mut a, &mut b);
    assert_eq!(
        closed(&eb),
        Some(CloseReason::Identity(PeerIdentityError::WrongNode(2)))
    );
    // (The impostor refuses too: the server claims the impostor's own id.)
    assert_eq!(
        closed(&ea),
        Some(CloseReason::Identity(PeerIdentityError::WrongNode(2)))
    );
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let (_ca, one, two) = grid_pair();
    let mut ctx = context(one.creds.clone());
    ctx.client = client_config(&ctx, one.creds.ca(), false);
    let mut a = Channel::dial(&ctx, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    let (ea, eb) = run(&mut a, &mut b);
    assert_eq!(
        closed(&eb),
        Some(CloseReason::Handshake(TlsFailure::NoCertificate))
    );
    assert_eq!(
        closed(&ea),
        Some(CloseReason::Handshake(TlsFailure::PeerAlert))
    );
}

#[test]
fn an_expired_certificate_is_refused() {
    let ca = TestCa::new("g");
    let one = context(ca.credentials("g", 1));
    // Valid when configured (NOW), expired at the handshake a year later.
    let two = context(ca.credentials("g", 2));
    let later = Some(2_300_000_000);
    let mut a = Channel::dial(&one, 2, later).unwrap();
    let mut b = Channel::accept(&two, later).unwrap();
    for _ in 0..10 {
        let out = a.output().to_vec();
        a.consumed(out.len());
        b.receive(&out, later);
        let back = b.output().to_vec();
        b.consumed(back.len());
        a.receive(&back, later);
    }
    assert_eq!(
        a.poll_event(),
        Some(Event::Closed(CloseReason::Handshake(TlsFailure::Expired)))
    );
}

#[test]
fn bytes_one_at_a_time_make_the_same_handshake() {
    let (_ca, one, two) = grid_pair();
    let mut a = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    a.send(Message::Ping { token: 3 }, Some(NOW));
    b.send(Message::Pong { token: 4 }, Some(NOW));
    for _ in 0..20 {
        let out = a.output().to_vec();
        a.consumed(out.len());
        for byte in out {
            b.receive(&[byte], Some(NOW));
        }
        let back = b.output().to_vec();
        b.consumed(back.len());
        for byte in back {
            a.receive(&[byte], Some(NOW));
        }
    }
    assert!(a.is_established() && b.is_established());
    let mut events = Vec::new();
    while let Some(e) = b.poll_event() {
        events.push(e);
    }
    assert!(events.contains(&Event::Message(Message::Ping { token: 3 })));
}

#[test]
fn a_tampered_record_closes_the_channel() {
    let (_ca, one, two) = grid_pair();
    let mut a = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    run(&mut a, &mut b);
    a.send(Message::Ping { token: 1 }, Some(NOW));
    let mut out = a.output().to_vec();
    a.consumed(out.len());
    let last = out.len() - 1;
    out[last] ^= 1;
    b.receive(&out, Some(NOW));
    assert_eq!(b.poll_event(), Some(Event::Closed(CloseReason::Tls)));
    assert!(!b.is_established());
}

#[test]
fn a_message_that_is_not_one_closes_the_channel() {
    let (_ca, one, two) = grid_pair();
    let mut a = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    run(&mut a, &mut b);
    a.app_out.extend_from_slice(&[1, 99, 0, 8]);
    a.drive(Some(NOW));
    let (_, eb) = run(&mut a, &mut b);
    assert_eq!(
        closed(&eb),
        Some(CloseReason::BadMessage(MessageError::UnknownType(99)))
    );
}

#[test]
fn a_flood_of_bytes_is_refused_without_buffering_it() {
    let (_ca, _one, two) = grid_pair();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    // A record header announcing 16 KiB, then more than any record.
    b.receive(&[22, 3, 3, 0x40, 0], Some(NOW));
    b.receive(&[0u8; MAX_INCOMING], Some(NOW));
    assert_eq!(
        b.poll_event(),
        Some(Event::Closed(CloseReason::TooMuchInput))
    );
    assert!(b.incoming.len() <= MAX_INCOMING);
}

#[test]
fn garbage_instead_of_a_client_hello_is_a_protocol_failure() {
    let (_ca, _one, two) = grid_pair();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    b.receive(b"GET / HTTP/1.1\r\n\r\n", Some(NOW));
    assert_eq!(
        b.poll_event(),
        Some(Event::Closed(CloseReason::Handshake(TlsFailure::Protocol)))
    );
}

#[test]
fn close_sends_close_notify_and_the_peer_sees_it() {
    let (_ca, one, two) = grid_pair();
    let mut a = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    run(&mut a, &mut b);
    a.close(Some(NOW));
    let (ea, eb) = run(&mut a, &mut b);
    assert_eq!(closed(&ea), Some(CloseReason::Local));
    assert_eq!(closed(&eb), Some(CloseReason::PeerClosed));
}
