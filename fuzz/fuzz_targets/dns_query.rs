//! Arbitrary bytes into the DNS service's three network-facing parsers: client queries
//! (UDP and TCP), the TCP stream framing, and upstream replies matched against a query
//! in flight. Nothing may panic; every reply we produce must parse again.
#![no_main]

use std::net::SocketAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use libfuzzer_sys::fuzz_target;
use smoltcp::time::Instant;
use weft_appliance::dns::records::Container;
use weft_appliance::dns::tcp::StreamDecoder;
use weft_appliance::dns::{Action, DnsSection, DnsServer, Transport, UpstreamAction};

fn server() -> DnsServer {
    let section = DnsSection {
        grid: Some("testgrid".into()),
        upstreams: vec!["192.0.2.53".into(), "198.51.100.53".into()],
        ..DnsSection::default()
    };
    let Ok(config) = section.validate() else {
        unreachable!("the fixed config is valid")
    };
    let mut server = DnsServer::new(config, [0x5a; 32]);
    let containers = (0..12u8).map(|i| Container {
        name: format!("web-{i}"),
        service: Some("web".into()),
        address: [10, 81, 0, i].into(),
    });
    let _ = server.records_mut().replace_all(containers);
    server
}

fn check_reply(bytes: &[u8]) {
    let reply = Message::from_vec(bytes).expect("our replies parse");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
}

fn query(server: &mut DnsServer, bytes: &[u8], transport: Transport) {
    let client: SocketAddr = "10.81.0.100:33333".parse().unwrap();
    match server.handle_query(Instant::from_millis(0), client, bytes, transport) {
        Action::Reply(reply) => check_reply(&reply),
        Action::Forward(out) => assert!(out.bytes.len() >= 12),
        Action::Drop(_) => {}
    }
    for event in server.poll(Instant::from_millis(10_000)) {
        let _ = event;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut server = server();
    match selector % 4 {
        0 => query(&mut server, rest, Transport::Udp),
        1 => query(&mut server, rest, Transport::Tcp),
        2 => {
            // A real forwarded query, then the input as its upstream's reply: raw, and
            // with the ID patched in so the question matching is reached.
            let mut message = Message::new(1, MessageType::Query, OpCode::Query);
            message.add_query(Query::query(
                Name::from_ascii("example.com.").unwrap(),
                RecordType::A,
            ));
            let bytes = message.to_vec().unwrap();
            let client: SocketAddr = "10.81.0.100:33333".parse().unwrap();
            let Action::Forward(out) =
                server.handle_query(Instant::from_millis(0), client, &bytes, Transport::Udp)
            else {
                unreachable!("outside names are forwarded")
            };
            let mut reply = rest.to_vec();
            if selector & 0x80 != 0 && reply.len() >= 2 {
                reply[..2].copy_from_slice(&out.bytes[..2]);
            }
            if let UpstreamAction::Reply(relayed) =
                server.handle_upstream_reply(out.upstream, out.source_port, &reply)
            {
                assert_eq!(relayed.reply.bytes[..2], [0, 1], "client ID restored");
            }
        }
        _ => {
            let mut stream = StreamDecoder::new();
            for chunk in rest.chunks(usize::from(selector >> 2).max(1)) {
                if stream.push(chunk).is_err() {
                    return;
                }
                while let Some(message) = stream.next_message() {
                    query(&mut server, &message, Transport::Tcp);
                }
            }
        }
    }
});
