//! Behaviour of the whole service (server + record store + forwarder) on real query
//! bytes built with hickory-proto, as a client and an upstream would send them.

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddr};
use core::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use smoltcp::time::Instant;

use super::config::{DnsConfig, DnsSection};
use super::forward::{Outgoing, TimerEvent, SOURCE_PORTS};
use super::metrics::DropReason;
use super::records::Container;
use super::server::{Action, DnsServer, UpstreamAction};
use super::Transport;

const SEED: [u8; 32] = [7; 32];

fn client() -> SocketAddr {
    "10.81.1.10:40000".parse().unwrap()
}

fn upstream(i: usize) -> SocketAddr {
    ["192.0.2.53:53", "198.51.100.53:53", "203.0.113.53:53"][i]
        .parse()
        .unwrap()
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms as i64)
}

fn container(name: &str, service: Option<&str>, address: [u8; 4]) -> Container {
    Container {
        name: name.into(),
        service: service.map(Into::into),
        address: Ipv4Addr::from(address),
    }
}

fn config_with(edit: impl FnOnce(&mut DnsSection)) -> DnsConfig {
    let mut section = DnsSection {
        grid: Some("testgrid".into()),
        upstreams: vec!["192.0.2.53".into(), "198.51.100.53".into()],
        ..DnsSection::default()
    };
    edit(&mut section);
    section.validate().unwrap()
}

/// The grid: `testapp-web` with three instances, and a db.
fn server_with(edit: impl FnOnce(&mut DnsSection)) -> DnsServer {
    let mut server = DnsServer::new(config_with(edit), SEED);
    server
        .records_mut()
        .replace_all(vec![
            container("testapp-web-1", Some("testapp-web"), [10, 81, 1, 2]),
            container("testapp-web-2", Some("testapp-web"), [10, 81, 1, 3]),
            container("testapp-web-3", Some("testapp-web"), [10, 81, 1, 4]),
            container("testapp-db-1", Some("testapp-db"), [10, 81, 1, 1]),
        ])
        .unwrap();
    server
}

fn server() -> DnsServer {
    server_with(|_| {})
}

fn query_message(name: &str, qtype: RecordType, id: u16) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    // `from_ascii` keeps the case as typed (`from_str` lowercases through IDNA).
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message
}

fn query(name: &str, qtype: RecordType, id: u16) -> Vec<u8> {
    query_message(name, qtype, id).to_vec().unwrap()
}

fn query_edns(name: &str, qtype: RecordType, id: u16, payload: u16) -> Vec<u8> {
    let mut message = query_message(name, qtype, id);
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    message.set_edns(edns);
    message.to_vec().unwrap()
}

fn reply_of(action: Action) -> Message {
    match action {
        Action::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ask(server: &mut DnsServer, name: &str, qtype: RecordType) -> Message {
    reply_of(server.handle_query(at(0), client(), &query(name, qtype, 0x1234), Transport::Udp))
}

fn addresses(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(A(address)) => Some(*address),
            _ => None,
        })
        .collect()
}

fn forwarded(action: Action) -> Outgoing {
    match action {
        Action::Forward(outgoing) => outgoing,
        other => panic!("expected a forward, got {other:?}"),
    }
}

/// What an upstream would answer to `outgoing`.
fn upstream_answer(outgoing: &Outgoing, address: [u8; 4]) -> Vec<u8> {
    let request = Message::from_vec(&outgoing.bytes).unwrap();
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = true;
    reply.metadata.recursion_available = true;
    let question = request.queries[0].clone();
    reply.add_answer(Record::from_rdata(
        question.name.clone(),
        300,
        RData::A(A(Ipv4Addr::from(address))),
    ));
    reply.add_query(question);
    reply.to_vec().unwrap()
}

#[test]
fn container_names_answer_authoritatively_in_every_form() {
    let mut server = server();
    for name in [
        "testapp-web-1.testgrid.kontena.local.",
        "testapp-web-1.kontena.local.",
        "testapp-web-1.",
    ] {
        let reply = ask(&mut server, name, RecordType::A);
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative, "{name}");
        assert!(reply.metadata.recursion_desired && reply.metadata.recursion_available);
        assert_eq!(
            reply.queries,
            vec![Query::query(Name::from_str(name).unwrap(), RecordType::A)]
        );
        assert_eq!(
            addresses(&reply),
            vec![Ipv4Addr::new(10, 81, 1, 2)],
            "{name}"
        );
        assert_eq!(reply.answers[0].ttl, 30);
        assert!(
            reply.edns.is_none(),
            "no OPT in reply to a query without one"
        );
    }
    assert_eq!(server.counters().local_answers, 3);
}

#[test]
fn names_are_case_insensitive_and_echo_the_askers_case() {
    let mut server = server();
    let reply = ask(
        &mut server,
        "TestApp-Web-1.TESTGRID.Kontena.Local.",
        RecordType::A,
    );
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(10, 81, 1, 2)]);
    assert_eq!(
        reply.answers[0].name.to_string(),
        "TestApp-Web-1.TESTGRID.Kontena.Local."
    );
}

#[test]
fn service_lists_every_instance_rotating_across_queries() {
    let mut server = server();
    let web = [
        Ipv4Addr::new(10, 81, 1, 2),
        Ipv4Addr::new(10, 81, 1, 3),
        Ipv4Addr::new(10, 81, 1, 4),
    ];
    for name in [
        "testapp-web.testgrid.kontena.local.",
        "testapp-web.kontena.local.",
        "testapp-web.",
    ] {
        let mut orders = Vec::new();
        for _ in 0..3 {
            // A resolver asks AAAA alongside A; that must not skip a rotation step.
            let aaaa = ask(&mut server, name, RecordType::AAAA);
            assert!(aaaa.answers.is_empty());
            let reply = ask(&mut server, name, RecordType::A);
            let mut got = addresses(&reply);
            assert_eq!(got.len(), 3, "{name}");
            orders.push(got.clone());
            got.sort();
            assert_eq!(got, web);
        }
        assert_ne!(orders[0], orders[1]);
        assert_ne!(orders[1], orders[2]);
        let firsts: Vec<Ipv4Addr> = orders.iter().map(|order| order[0]).collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(
            sorted, web,
            "each instance leads once in three queries: {firsts:?}"
        );
    }
}

#[test]
fn ptr_for_container_addresses() {
    let mut server = server();
    let reply = ask(&mut server, "3.1.81.10.in-addr.arpa.", RecordType::PTR);
    assert!(reply.metadata.authoritative);
    assert_eq!(reply.answers.len(), 1);
    match &reply.answers[0].data {
        RData::PTR(target) => assert_eq!(
            target.0.to_string(),
            "testapp-web-2.testgrid.kontena.local."
        ),
        other => panic!("not a PTR: {other:?}"),
    }
    // An address no container holds is not ours: it goes upstream.
    let action = server.handle_query(
        at(0),
        client(),
        &query("9.9.81.10.in-addr.arpa.", RecordType::PTR, 1),
        Transport::Udp,
    );
    assert!(matches!(action, Action::Forward(_)));
}

#[test]
fn known_name_without_data_is_nodata_with_soa() {
    let mut server = server();
    for qtype in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
        let reply = ask(&mut server, "testapp-db-1.testgrid.kontena.local.", qtype);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.authorities.len(), 1);
        assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
    }
    assert_eq!(server.counters().nodata, 3);
}

#[test]
fn unknown_grid_name_is_nxdomain_with_soa_for_negative_caching() {
    let mut server = server_with(|section| section.negative_ttl = 17);
    for name in [
        "nope.testgrid.kontena.local.",
        "nope.kontena.local.",
        "a.b.testgrid.kontena.local.",
    ] {
        let reply = ask(&mut server, name, RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(reply.metadata.authoritative);
        assert!(reply.answers.is_empty());
        let soa = &reply.authorities[0];
        assert_eq!(soa.name.to_string(), "kontena.local.");
        assert_eq!(soa.ttl, 17);
        match &soa.data {
            RData::SOA(soa) => {
                assert_eq!(soa.minimum, 17);
                assert_eq!(soa.serial, server.records().serial());
            }
            other => panic!("not an SOA: {other:?}"),
        }
    }
    assert_eq!(server.counters().nxdomain, 3);
}

#[test]
fn apex_answers_soa_and_nodata_otherwise() {
    let mut server = server();
    let reply = ask(&mut server, "kontena.local.", RecordType::SOA);
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.answers[0].record_type(), RecordType::SOA);
    let reply = ask(&mut server, "testgrid.kontena.local.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
}

#[test]
fn record_changes_are_visible_on_the_next_query() {
    let mut server = server();
    server
        .records_mut()
        .remove_container("testapp-web-1")
        .unwrap();
    let reply = ask(
        &mut server,
        "testapp-web-1.testgrid.kontena.local.",
        RecordType::A,
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    let reply = ask(
        &mut server,
        "testapp-web.testgrid.kontena.local.",
        RecordType::A,
    );
    assert_eq!(addresses(&reply).len(), 2);

    server
        .records_mut()
        .add_container(container(
            "testapp-web-9",
            Some("testapp-web"),
            [10, 81, 1, 9],
        ))
        .unwrap();
    let reply = ask(&mut server, "testapp-web-9.", RecordType::A);
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(10, 81, 1, 9)]);
    let reply = ask(
        &mut server,
        "testapp-web.testgrid.kontena.local.",
        RecordType::A,
    );
    assert_eq!(addresses(&reply).len(), 3);
}

fn big_service(server: &mut DnsServer, count: u8) {
    for i in 0..count {
        server
            .records_mut()
            .add_container(container(
                &alloc::format!("big-{i}"),
                Some("big"),
                [10, 81, 2, i],
            ))
            .unwrap();
    }
}

#[test]
fn too_big_for_udp_is_truncated_and_tcp_gets_everything() {
    let mut server = server();
    big_service(&mut server, 100);
    let name = "big.testgrid.kontena.local.";

    // No EDNS: 512 bytes. 100 A records do not fit.
    let bytes = query(name, RecordType::A, 9);
    let Action::Reply(udp) = server.handle_query(at(0), client(), &bytes, Transport::Udp) else {
        panic!("local answer expected");
    };
    assert!(udp.len() <= 512);
    let udp = Message::from_vec(&udp).unwrap();
    assert!(udp.metadata.truncation);
    assert_eq!(udp.metadata.id, 9);
    assert!(udp.answers.is_empty(), "no partial RRset");
    assert_eq!(udp.queries.len(), 1);

    let Action::Reply(tcp) = server.handle_query(at(0), client(), &bytes, Transport::Tcp) else {
        panic!("local answer expected");
    };
    let tcp = Message::from_vec(&tcp).unwrap();
    assert!(!tcp.metadata.truncation);
    assert_eq!(addresses(&tcp).len(), 100);
    assert_eq!(server.counters().truncated, 1);
    assert_eq!(server.counters().queries_tcp, 1);
}

#[test]
fn edns_payload_size_is_honoured_up_to_the_servers_limit() {
    let mut server = server_with(|section| section.max_udp_payload = 4096);
    big_service(&mut server, 100);
    let name = "big.testgrid.kontena.local.";

    // 100 records need ~1.7 kB: a 4096-byte client gets them all, over UDP.
    let reply = reply_of(server.handle_query(
        at(0),
        client(),
        &query_edns(name, RecordType::A, 1, 4096),
        Transport::Udp,
    ));
    assert!(!reply.metadata.truncation);
    assert_eq!(addresses(&reply).len(), 100);
    let edns = reply.edns.as_ref().expect("OPT answered with OPT");
    assert_eq!(edns.max_payload(), 4096);

    // A 1232-byte client does not.
    let reply = reply_of(server.handle_query(
        at(0),
        client(),
        &query_edns(name, RecordType::A, 2, 1232),
        Transport::Udp,
    ));
    assert!(reply.metadata.truncation);
    assert!(reply.edns.is_some());

    // Below 512 counts as 512 (RFC 6891 §6.2.5): a small answer still fits.
    let reply = reply_of(server.handle_query(
        at(0),
        client(),
        &query_edns("testapp-web.", RecordType::A, 3, 100),
        Transport::Udp,
    ));
    assert!(!reply.metadata.truncation);
    assert_eq!(addresses(&reply).len(), 3);

    // The server's own limit caps a generous client.
    let mut small = server_with(|_| {});
    big_service(&mut small, 100);
    let reply = reply_of(small.handle_query(
        at(0),
        client(),
        &query_edns(name, RecordType::A, 4, 4096),
        Transport::Udp,
    ));
    assert!(reply.metadata.truncation);
    assert_eq!(reply.edns.as_ref().unwrap().max_payload(), 1232);
}

#[test]
fn unsupported_edns_version_is_badvers() {
    let mut server = server();
    let mut message = query_message("testapp-web.", RecordType::A, 5);
    let mut edns = Edns::new();
    edns.set_version(1);
    message.set_edns(edns);
    let reply =
        reply_of(server.handle_query(at(0), client(), &message.to_vec().unwrap(), Transport::Udp));
    // RCODE 16 (BADVERS; hickory decodes the shared code 16 as BADSIG).
    assert_eq!(u16::from(reply.metadata.response_code), 16);
    assert!(reply.answers.is_empty());
    assert_eq!(reply.edns.unwrap().version(), 0);
}

#[test]
fn malformed_queries_get_formerr_or_a_counted_drop() {
    let mut server = server();
    // Unreadable header: dropped.
    for bytes in [&[][..], &[0x12], &[0u8; 11]] {
        assert_eq!(
            server.handle_query(at(0), client(), bytes, Transport::Udp),
            Action::Drop(DropReason::ShortHeader)
        );
    }
    assert_eq!(server.counters().drops.short_header, 3);

    // Readable header, body cut short: FORMERR with the client's ID.
    let full = query("testapp-web.kontena.local.", RecordType::A, 0xbeef);
    let reply =
        reply_of(server.handle_query(at(0), client(), &full[..full.len() - 3], Transport::Udp));
    assert_eq!(reply.metadata.id, 0xbeef);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert!(reply.metadata.recursion_desired);

    // No question, and two questions: FORMERR.
    let empty = Message::new(7, MessageType::Query, OpCode::Query)
        .to_vec()
        .unwrap();
    let reply = reply_of(server.handle_query(at(0), client(), &empty, Transport::Udp));
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    let mut two = query_message("a.kontena.local.", RecordType::A, 8);
    two.add_query(Query::query(
        Name::from_str("b.kontena.local.").unwrap(),
        RecordType::A,
    ));
    let reply =
        reply_of(server.handle_query(at(0), client(), &two.to_vec().unwrap(), Transport::Udp));
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert!(reply.queries.is_empty());
    assert_eq!(server.counters().formerr, 3);

    // A response sent to the server is never answered.
    let mut response = query_message("testapp-web.", RecordType::A, 9);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(
        server.handle_query(at(0), client(), &response.to_vec().unwrap(), Transport::Udp),
        Action::Drop(DropReason::NotAQuery)
    );

    // Another opcode: NOTIMP.
    let mut status = query_message("testapp-web.", RecordType::A, 10);
    status.metadata.op_code = OpCode::Status;
    let reply =
        reply_of(server.handle_query(at(0), client(), &status.to_vec().unwrap(), Transport::Udp));
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(server.counters().notimp, 1);
}

#[test]
fn grid_names_refuse_other_classes_and_zone_transfers() {
    let mut server = server();
    let mut chaos = query_message("testapp-web.kontena.local.", RecordType::A, 1);
    chaos.queries[0].query_class = DNSClass::CH;
    let reply =
        reply_of(server.handle_query(at(0), client(), &chaos.to_vec().unwrap(), Transport::Udp));
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    let reply = reply_of(server.handle_query(
        at(0),
        client(),
        &query("kontena.local.", RecordType::AXFR, 2),
        Transport::Tcp,
    ));
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert_eq!(server.counters().refused, 2);
}

#[test]
fn outside_names_are_forwarded_with_fresh_id_and_port() {
    let mut server = server();
    let bytes = query("example.com.", RecordType::A, 0x4242);
    let out = forwarded(server.handle_query(at(0), client(), &bytes, Transport::Udp));
    assert_eq!(out.upstream, upstream(0));
    assert_eq!(out.transport, Transport::Udp);
    assert!(SOURCE_PORTS.contains(&out.source_port));
    // Same query, new ID: only the first two bytes differ.
    assert_eq!(out.bytes[2..], bytes[2..]);
    let sent = Message::from_vec(&out.bytes).unwrap();
    assert_eq!(sent.queries, Message::from_vec(&bytes).unwrap().queries);
    assert_eq!(server.next_deadline(), Some(at(2000)));

    let reply = server.handle_upstream_reply(
        upstream(0),
        out.source_port,
        &upstream_answer(&out, [93, 184, 216, 34]),
    );
    let UpstreamAction::Reply(relayed) = reply else {
        panic!("matching reply must be relayed: {reply:?}");
    };
    assert_eq!(relayed.released_port, out.source_port);
    assert_eq!(relayed.reply.client, client());
    assert_eq!(relayed.reply.transport, Transport::Udp);
    let answer = Message::from_vec(&relayed.reply.bytes).unwrap();
    assert_eq!(answer.metadata.id, 0x4242, "client's own ID restored");
    assert_eq!(addresses(&answer), vec![Ipv4Addr::new(93, 184, 216, 34)]);
    assert_eq!(server.next_deadline(), None);
    assert_eq!(server.forwarder().in_flight(), 0);
    let counters = server.counters();
    assert_eq!(
        (
            counters.forwarded,
            counters.upstream_queries,
            counters.upstream_replies
        ),
        (1, 1, 1)
    );
}

#[test]
fn unknown_short_names_and_reverse_names_go_upstream() {
    let mut server = server();
    for name in ["localhost.", "nope.", "1.0.0.127.in-addr.arpa."] {
        let out = forwarded(server.handle_query(
            at(0),
            client(),
            &query(name, RecordType::A, 1),
            Transport::Udp,
        ));
        assert_eq!(out.upstream, upstream(0));
    }
}

#[test]
fn mismatched_upstream_replies_are_ignored() {
    let mut server = server();
    let out = forwarded(server.handle_query(
        at(0),
        client(),
        &query("example.com.", RecordType::A, 1),
        Transport::Udp,
    ));
    let good = upstream_answer(&out, [1, 2, 3, 4]);

    let mut wrong_id = good.clone();
    wrong_id[1] ^= 0x01;
    let other_question = {
        let mut other = out.clone();
        other.bytes = query(
            "example.org.",
            RecordType::A,
            u16::from_be_bytes([out.bytes[0], out.bytes[1]]),
        );
        upstream_answer(&other, [1, 2, 3, 4])
    };
    let other_type = {
        let mut other = out.clone();
        other.bytes = query(
            "example.com.",
            RecordType::AAAA,
            u16::from_be_bytes([out.bytes[0], out.bytes[1]]),
        );
        upstream_answer(&other, [1, 2, 3, 4])
    };
    let mut not_response = good.clone();
    not_response[2] &= 0x7f;
    let other_port = if out.source_port == *SOURCE_PORTS.end() {
        *SOURCE_PORTS.start()
    } else {
        out.source_port + 1
    };

    let cases: [(SocketAddr, u16, &[u8], DropReason); 7] = [
        (
            upstream(0),
            out.source_port,
            &wrong_id,
            DropReason::ReplyIdMismatch,
        ),
        (
            upstream(1),
            out.source_port,
            &good,
            DropReason::ReplyWrongSource,
        ),
        (
            "192.0.2.53:5353".parse().unwrap(),
            out.source_port,
            &good,
            DropReason::ReplyWrongSource,
        ),
        (upstream(0), other_port, &good, DropReason::ReplyUnknownPort),
        (
            upstream(0),
            out.source_port,
            &other_question,
            DropReason::ReplyQuestionMismatch,
        ),
        (
            upstream(0),
            out.source_port,
            &other_type,
            DropReason::ReplyQuestionMismatch,
        ),
        (
            upstream(0),
            out.source_port,
            &not_response,
            DropReason::ReplyNotAResponse,
        ),
    ];
    for (from, port, bytes, reason) in cases {
        assert_eq!(
            server.handle_upstream_reply(from, port, bytes),
            UpstreamAction::Drop(reason)
        );
    }
    assert_eq!(
        server.handle_upstream_reply(upstream(0), out.source_port, &good[..8]),
        UpstreamAction::Drop(DropReason::ReplyMalformed)
    );
    assert_eq!(server.counters().drops.total(), 8);
    assert_eq!(
        server.forwarder().in_flight(),
        1,
        "still waiting for the real reply"
    );

    // Case may differ (RFC 4343); the real reply is still accepted, once.
    let upper = {
        let mut other = out.clone();
        other.bytes = query(
            "EXAMPLE.com.",
            RecordType::A,
            u16::from_be_bytes([out.bytes[0], out.bytes[1]]),
        );
        upstream_answer(&other, [1, 2, 3, 4])
    };
    assert!(matches!(
        server.handle_upstream_reply(upstream(0), out.source_port, &upper),
        UpstreamAction::Reply(_)
    ));
    assert_eq!(
        server.handle_upstream_reply(upstream(0), out.source_port, &good),
        UpstreamAction::Drop(DropReason::ReplyUnknownPort)
    );
}

#[test]
fn timeout_fails_over_to_the_next_upstream_which_is_then_preferred() {
    let mut server = server();
    let first = forwarded(server.handle_query(
        at(1000),
        client(),
        &query("example.com.", RecordType::A, 77),
        Transport::Udp,
    ));
    assert_eq!(first.upstream, upstream(0));
    assert!(
        server.poll(at(2999)).is_empty(),
        "not before the 2 s timeout"
    );

    let events = server.poll(at(3000));
    let [TimerEvent::Retry {
        released_port,
        outgoing: second,
    }] = events.as_slice()
    else {
        panic!("one failover expected: {events:?}");
    };
    assert_eq!(*released_port, first.source_port);
    assert_eq!(second.upstream, upstream(1));
    assert_eq!(second.bytes[2..], first.bytes[2..]);
    assert_eq!(server.next_deadline(), Some(at(5000)));
    assert_eq!(server.counters().upstream_timeouts, 1);

    // The first upstream answering late is not accepted any more.
    assert_eq!(
        server.handle_upstream_reply(
            upstream(0),
            first.source_port,
            &upstream_answer(&first, [1, 1, 1, 1])
        ),
        UpstreamAction::Drop(DropReason::ReplyUnknownPort)
    );
    let UpstreamAction::Reply(relayed) = server.handle_upstream_reply(
        upstream(1),
        second.source_port,
        &upstream_answer(second, [2, 2, 2, 2]),
    ) else {
        panic!("second upstream's reply must be relayed");
    };
    let answer = Message::from_vec(&relayed.reply.bytes).unwrap();
    assert_eq!(answer.metadata.id, 77);
    assert_eq!(addresses(&answer), vec![Ipv4Addr::new(2, 2, 2, 2)]);

    // The next query starts at the upstream that answered.
    let next = forwarded(server.handle_query(
        at(6000),
        client(),
        &query("example.net.", RecordType::A, 78),
        Transport::Udp,
    ));
    assert_eq!(next.upstream, upstream(1));
}

#[test]
fn every_upstream_failing_gives_the_client_servfail_with_its_id() {
    let mut server = server_with(|section| {
        section.upstreams.push("203.0.113.53".into());
        section.upstream_timeout_ms = 500;
    });
    let bytes = query_edns("example.com.", RecordType::A, 0x0bad, 1232);
    let mut out = forwarded(server.handle_query(at(0), client(), &bytes, Transport::Udp));
    let mut seen = vec![out.upstream];
    let mut now = 0;
    let reply = loop {
        now += 500;
        match server.poll(at(now)).pop() {
            Some(TimerEvent::Retry {
                released_port,
                outgoing,
            }) => {
                assert_eq!(released_port, out.source_port);
                seen.push(outgoing.upstream);
                out = outgoing;
            }
            Some(TimerEvent::GiveUp {
                released_port,
                reply,
            }) => {
                assert_eq!(released_port, out.source_port);
                break reply;
            }
            None => panic!("a timer must fire every 500 ms"),
        }
    };
    assert_eq!(seen, vec![upstream(0), upstream(1), upstream(2)]);
    assert_eq!(reply.client, client());
    let servfail = Message::from_vec(&reply.bytes).unwrap();
    assert_eq!(servfail.metadata.id, 0x0bad);
    assert_eq!(servfail.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(servfail.queries, Message::from_vec(&bytes).unwrap().queries);
    assert!(servfail.edns.is_some());
    assert_eq!(server.next_deadline(), None);
    let counters = server.counters();
    assert_eq!(
        (
            counters.upstream_timeouts,
            counters.servfail,
            counters.upstream_queries
        ),
        (3, 1, 3)
    );
}

#[test]
fn failed_attempt_fails_over_without_waiting() {
    let mut server = server();
    let out = forwarded(server.handle_query(
        at(0),
        client(),
        &query("example.com.", RecordType::A, 1),
        Transport::Udp,
    ));
    let Some(TimerEvent::Retry { outgoing, .. }) = server.upstream_failed(at(10), out.source_port)
    else {
        panic!("failover expected");
    };
    assert_eq!(outgoing.upstream, upstream(1));
    assert!(
        server.upstream_failed(at(10), out.source_port).is_none(),
        "port already released"
    );
}

#[test]
fn in_flight_cap_answers_servfail_at_once() {
    let mut server = server_with(|section| section.max_in_flight = 4);
    let mut ports = Vec::new();
    for id in 0..4 {
        let out = forwarded(server.handle_query(
            at(0),
            client(),
            &query("example.com.", RecordType::A, id),
            Transport::Udp,
        ));
        ports.push(out);
    }
    let reply = reply_of(server.handle_query(
        at(0),
        client(),
        &query("example.com.", RecordType::A, 99),
        Transport::Udp,
    ));
    assert_eq!(reply.metadata.id, 99);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(server.counters().in_flight_full, 1);

    // Local answers never wait on the forwarder.
    let local = ask(&mut server, "testapp-db-1.", RecordType::A);
    assert_eq!(addresses(&local), vec![Ipv4Addr::new(10, 81, 1, 1)]);

    let done = &ports[0];
    assert!(matches!(
        server.handle_upstream_reply(
            upstream(0),
            done.source_port,
            &upstream_answer(done, [1, 1, 1, 1])
        ),
        UpstreamAction::Reply(_)
    ));
    assert!(matches!(
        server.handle_query(
            at(0),
            client(),
            &query("example.com.", RecordType::A, 100),
            Transport::Udp
        ),
        Action::Forward(_)
    ));
}

#[test]
fn no_upstreams_means_servfail() {
    let mut server = server_with(|section| section.upstreams.clear());
    let reply = reply_of(server.handle_query(
        at(0),
        client(),
        &query("example.com.", RecordType::A, 3),
        Transport::Udp,
    ));
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(server.counters().servfail, 1);
}

#[test]
fn ports_are_unique_in_flight_and_ids_vary() {
    let mut server = server_with(|section| section.max_in_flight = 1024);
    let mut ports = Vec::new();
    let mut ids = Vec::new();
    for i in 0..1024u16 {
        let out = forwarded(server.handle_query(
            at(0),
            client(),
            &query("example.com.", RecordType::A, i),
            Transport::Udp,
        ));
        assert!(SOURCE_PORTS.contains(&out.source_port));
        ports.push(out.source_port);
        ids.push(u16::from_be_bytes([out.bytes[0], out.bytes[1]]));
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 1024, "each attempt in flight has its own port");
    ids.sort_unstable();
    ids.dedup();
    // 1024 draws from 65536: a uniform source repeats about 8 times.
    assert!(ids.len() > 990, "IDs look random: {} distinct", ids.len());
    // A different seed gives a different sequence.
    let mut other = DnsServer::new(config_with(|_| {}), [8; 32]);
    let a = forwarded(server_with(|_| {}).handle_query(
        at(0),
        client(),
        &query("x.", RecordType::A, 1),
        Transport::Udp,
    ));
    let b = forwarded(other.handle_query(
        at(0),
        client(),
        &query("x.", RecordType::A, 1),
        Transport::Udp,
    ));
    assert_ne!(
        (a.source_port, &a.bytes[..2]),
        (b.source_port, &b.bytes[..2])
    );
}

#[test]
fn large_client_edns_size_is_lowered_in_the_forwarded_udp_query() {
    let mut server = server();
    let out = forwarded(server.handle_query(
        at(0),
        client(),
        &query_edns("example.com.", RecordType::A, 1, 4096),
        Transport::Udp,
    ));
    let sent = Message::from_vec(&out.bytes).unwrap();
    assert_eq!(sent.edns.unwrap().max_payload(), 1232);

    let bytes = query_edns("example.com.", RecordType::A, 2, 4096);
    let out = forwarded(server.handle_query(at(0), client(), &bytes, Transport::Tcp));
    assert_eq!(out.transport, Transport::Tcp);
    assert_eq!(
        out.bytes[2..],
        bytes[2..],
        "TCP queries go upstream unchanged"
    );
}

#[test]
fn oversized_upstream_reply_reaches_a_udp_client_truncated() {
    let mut server = server();
    let out = forwarded(server.handle_query(
        at(0),
        client(),
        &query("many.example.", RecordType::A, 0x55),
        Transport::Udp,
    ));
    let request = Message::from_vec(&out.bytes).unwrap();
    let mut big = Message::response(request.metadata.id, OpCode::Query);
    big.add_query(request.queries[0].clone());
    for i in 0..60u8 {
        big.add_answer(Record::from_rdata(
            request.queries[0].name.clone(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
        ));
    }
    let bytes = big.to_vec().unwrap();
    assert!(bytes.len() > 512);
    let UpstreamAction::Reply(relayed) =
        server.handle_upstream_reply(upstream(0), out.source_port, &bytes)
    else {
        panic!("reply must be relayed");
    };
    assert!(relayed.reply.bytes.len() <= 512);
    let reply = Message::from_vec(&relayed.reply.bytes).unwrap();
    assert_eq!(reply.metadata.id, 0x55);
    assert!(reply.metadata.truncation);
    assert_eq!(reply.queries, request.queries);
}

/// A tiny deterministic generator for the property loops below (test-only).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn arbitrary_and_mutated_bytes_never_panic_and_are_always_accounted() {
    let mut server = server_with(|section| section.max_in_flight = 64);
    let mut rng = SplitMix(0x5eed);
    let seeds = [
        query("testapp-web.testgrid.kontena.local.", RecordType::A, 1),
        query_edns("example.com.", RecordType::AAAA, 2, 4096),
        query("3.1.81.10.in-addr.arpa.", RecordType::PTR, 3),
    ];
    for round in 0..20_000u64 {
        let bytes = if round % 2 == 0 {
            let len = (rng.next() % 80) as usize;
            rng.bytes(len)
        } else {
            let mut bytes = seeds[(round % 3) as usize].clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % bytes.len();
                bytes[at] = rng.next() as u8;
            }
            bytes.truncate(1 + (rng.next() as usize) % (bytes.len() + 8));
            bytes
        };
        let transport = if round % 5 == 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        match server.handle_query(at(round), client(), &bytes, transport) {
            Action::Reply(reply) => {
                let reply = Message::from_vec(&reply).expect("every reply we send parses");
                assert_eq!(reply.metadata.message_type, MessageType::Response);
                assert_eq!(reply.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
            }
            Action::Forward(out) => {
                // Feed the upstream path garbage on that port, and sometimes the truth.
                let len = (rng.next() % 64) as usize;
                let noise = rng.bytes(len);
                let _ = server.handle_upstream_reply(upstream(0), out.source_port, &noise);
                if round % 3 == 0 {
                    let mut answer = upstream_answer(&out, [9, 9, 9, 9]);
                    let flip = (rng.next() as usize) % answer.len();
                    answer[flip] ^= 1 << (rng.next() % 8);
                    let _ = server.handle_upstream_reply(out.upstream, out.source_port, &answer);
                }
            }
            Action::Drop(_) => {}
        }
        let _ = server.poll(at(round));
    }
    let c = server.counters().clone();
    let outcomes = c.local_answers
        + c.nodata
        + c.nxdomain
        + c.forwarded
        + c.forward_refused
        + c.formerr
        + c.notimp
        + c.refused
        + c.badvers
        + c.drops.short_header
        + c.drops.not_a_query
        + c.drops.encode_failed;
    assert_eq!(
        outcomes, c.queries,
        "each query has exactly one outcome: {c:?}"
    );
    assert_eq!(c.servfail, c.forward_refused + c.upstream_failures);
    assert!(c.forwarded > 0 && c.local_answers > 0 && c.formerr > 0 && c.drops.short_header > 0);
}

#[test]
fn reconfigure_keeps_records_and_queries_in_flight() {
    let mut server = server();
    let out = forwarded(server.handle_query(
        at(0),
        client(),
        &query("example.com.", RecordType::A, 5),
        Transport::Udp,
    ));
    server.reconfigure(config_with(|section| {
        section.domain = "grid.internal".into();
        section.ttl = 5;
        section.upstreams = vec!["203.0.113.53".into()];
    }));
    let reply = ask(
        &mut server,
        "testapp-db-1.testgrid.grid.internal.",
        RecordType::A,
    );
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(10, 81, 1, 1)]);
    assert_eq!(reply.answers[0].ttl, 5);
    let reply = ask(&mut server, "nope.grid.internal.", RecordType::A);
    assert_eq!(reply.authorities[0].name.to_string(), "grid.internal.");
    assert!(matches!(
        server.handle_query(
            at(0),
            client(),
            &query("testapp-db-1.kontena.local.", RecordType::A, 6),
            Transport::Udp
        ),
        Action::Forward(_)
    ));
    // The query sent before still gets its reply from the upstream it went to.
    assert!(matches!(
        server.handle_upstream_reply(
            out.upstream,
            out.source_port,
            &upstream_answer(&out, [1, 2, 3, 4])
        ),
        UpstreamAction::Reply(_)
    ));
}
