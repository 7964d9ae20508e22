//! Host micro-benchmark of the DNS service: ns/query and queries/s on one core for
//! local answers (a container A, a 10-instance service, NXDOMAIN, PTR) and for the
//! forwarding path (query out + matching upstream reply relayed back).
//!
//! Run: `cargo run --release -p weft-appliance --example dns_bench [iterations]`.
//! Figures only: nothing here asserts a time.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant as Clock;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use smoltcp::time::Instant;
use weft_appliance::dns::records::Container;
use weft_appliance::dns::{Action, DnsSection, DnsServer, Transport, UpstreamAction};

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message.to_vec().unwrap()
}

fn server() -> DnsServer {
    let section = DnsSection {
        grid: Some("testgrid".into()),
        upstreams: vec!["192.0.2.53".into()],
        max_in_flight: 1024,
        ..DnsSection::default()
    };
    let mut server = DnsServer::new(section.validate().unwrap(), [42; 32]);
    let mut containers = Vec::new();
    for i in 0..10u8 {
        containers.push(Container {
            name: format!("testapp-web-{i}"),
            service: Some("testapp-web".into()),
            address: Ipv4Addr::new(10, 81, 1, i),
        });
    }
    for i in 0..200u8 {
        containers.push(Container {
            name: format!("app{i}-db-1"),
            service: Some(format!("app{i}-db")),
            address: Ipv4Addr::new(10, 81, 2, i),
        });
    }
    server.records_mut().replace_all(containers).unwrap();
    server
}

fn report(label: &str, iterations: u32, elapsed: std::time::Duration) {
    let ns = elapsed.as_nanos() as f64 / f64::from(iterations);
    println!(
        "{label:<44} {ns:>9.0} ns/query {:>12.0} queries/s",
        1e9 / ns
    );
}

fn bench_local(server: &mut DnsServer, label: &str, bytes: &[u8], iterations: u32) {
    let client: SocketAddr = "10.81.0.100:33333".parse().unwrap();
    let start = Clock::now();
    for _ in 0..iterations {
        match server.handle_query(
            Instant::from_millis(0),
            client,
            black_box(bytes),
            Transport::Udp,
        ) {
            Action::Reply(reply) => {
                black_box(reply);
            }
            other => panic!("{label}: expected a local reply, got {other:?}"),
        }
    }
    report(label, iterations, start.elapsed());
}

fn bench_forward(server: &mut DnsServer, iterations: u32) {
    let client: SocketAddr = "10.81.0.100:33333".parse().unwrap();
    let bytes = query("example.com.", RecordType::A);
    // One upstream reply template; its ID is patched per forwarded query.
    let mut template = Message::response(0, OpCode::Query);
    let question = Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A);
    template.add_answer(Record::from_rdata(
        question.name.clone(),
        300,
        RData::A(A(Ipv4Addr::new(93, 184, 216, 34))),
    ));
    template.add_query(question);
    let mut reply = template.to_vec().unwrap();

    let start = Clock::now();
    for _ in 0..iterations {
        let Action::Forward(out) =
            server.handle_query(Instant::from_millis(0), client, &bytes, Transport::Udp)
        else {
            panic!("outside names are forwarded");
        };
        reply[..2].copy_from_slice(&out.bytes[..2]);
        match server.handle_upstream_reply(out.upstream, out.source_port, &reply) {
            UpstreamAction::Reply(relayed) => {
                black_box(relayed);
            }
            UpstreamAction::Drop(reason) => panic!("reply dropped: {reason:?}"),
        }
    }
    report(
        "forward + relay (example.com A)",
        iterations,
        start.elapsed(),
    );
}

fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(200_000);
    let mut server = server();
    println!("dns_bench: {iterations} iterations per case, one core");
    bench_local(
        &mut server,
        "container A (app7-db-1.testgrid.kontena.local)",
        &query("app7-db-1.testgrid.kontena.local.", RecordType::A),
        iterations,
    );
    bench_local(
        &mut server,
        "container A, short name (app7-db-1)",
        &query("app7-db-1.", RecordType::A),
        iterations,
    );
    bench_local(
        &mut server,
        "service A, 10 instances (testapp-web)",
        &query("testapp-web.testgrid.kontena.local.", RecordType::A),
        iterations,
    );
    bench_local(
        &mut server,
        "NXDOMAIN + SOA (nope.testgrid.kontena.local)",
        &query("nope.testgrid.kontena.local.", RecordType::A),
        iterations,
    );
    bench_local(
        &mut server,
        "PTR (7.2.81.10.in-addr.arpa)",
        &query("7.2.81.10.in-addr.arpa.", RecordType::PTR),
        iterations,
    );
    bench_forward(&mut server, iterations);
    let counters = server.counters();
    println!(
        "counters: queries {} local {} nxdomain {} forwarded {} relayed {}",
        counters.queries,
        counters.local_answers,
        counters.nxdomain,
        counters.forwarded,
        counters.upstream_replies
    );
}
