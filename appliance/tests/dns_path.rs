//! The DNS service end to end on the host: an `Appliance` between two in-memory links,
//! a container host (its own smoltcp stack) asking over real UDP and TCP, and an
//! upstream host (another smoltcp stack) answering forwarded queries on one of two
//! upstream addresses. Every byte crosses the appliance as Ethernet frames.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::{json, Value};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv4Cidr};
use weft_appliance::dns::tcp::{frame, StreamDecoder};
use weft_appliance::weft_netstack::QueueDevice;
use weft_appliance::{Appliance, BootInfo, MemPort};

const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xdd, 0x00, 0x01]);
const LINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xdd, 0x00, 0x02]);
const CTR_MAC: EthernetAddress = EthernetAddress([0x02, 0x42, 0x0a, 0x51, 0x80, 0x02]);
const UP_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x35]);

const GATEWAY: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
/// Nothing listens here: the first upstream is down.
const DEAD_UPSTREAM: Ipv4Address = Ipv4Address::new(192, 0, 2, 53);
const LIVE_UPSTREAM: Ipv4Address = Ipv4Address::new(192, 0, 2, 54);
/// What the live upstream answers for `example.test`.
const EXAMPLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const STEP: Duration = Duration::from_millis(5);

/// A Linux-like host: one smoltcp interface and its sockets.
struct Host {
    iface: Interface,
    dev: QueueDevice,
    sockets: SocketSet<'static>,
}

impl Host {
    fn new(mac: EthernetAddress, cidrs: &[Ipv4Cidr], gateway: Option<Ipv4Address>) -> Host {
        let mut dev = QueueDevice::new();
        let mut config = IfaceConfig::new(HardwareAddress::Ethernet(mac));
        config.random_seed = u64::from(mac.0[5]);
        let mut iface = Interface::new(config, &mut dev, Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            for cidr in cidrs {
                addrs.push(IpCidr::Ipv4(*cidr)).unwrap();
            }
        });
        if let Some(gw) = gateway {
            iface.routes_mut().add_default_ipv4_route(gw).unwrap();
        }
        Host {
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
        }
    }

    fn poll(&mut self, now: Instant) {
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
    }
}

fn udp_socket(port: impl Into<smoltcp::wire::IpListenEndpoint>) -> udp::Socket<'static> {
    let buffer =
        || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1500]);
    let mut socket = udp::Socket::new(buffer(), buffer());
    socket.bind(port).unwrap();
    socket
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 65536]),
    )
}

/// The upstream resolver's sockets (on `LIVE_UPSTREAM` only).
struct UpstreamServer {
    udp: SocketHandle,
    tcp: Vec<(SocketHandle, StreamDecoder)>,
    /// Queries it received, by transport: (udp, tcp).
    seen: (usize, usize),
}

/// What the upstream answers: `example.test` A, `big.example.test` with 120 A records,
/// everything else NXDOMAIN.
fn upstream_answer(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries.first()?.clone();
    let mut reply = Message::response(request.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let name = question.name.to_ascii().to_ascii_lowercase();
    match name.as_str() {
        "example.test." => {
            reply.add_answer(Record::from_rdata(
                question.name.clone(),
                300,
                RData::A(A(EXAMPLE)),
            ));
        }
        "big.example.test." if udp => reply.metadata.truncation = true,
        "big.example.test." => {
            for i in 0..120u8 {
                reply.add_answer(Record::from_rdata(
                    question.name.clone(),
                    300,
                    RData::A(A(Ipv4Addr::new(198, 51, 100, i))),
                ));
            }
        }
        _ => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.add_query(question);
    reply.to_vec().ok()
}

/// The appliance between a container host on its link and an upstream host on its uplink.
struct World {
    app: Appliance,
    uplink: MemPort,
    link: MemPort,
    ctr: Host,
    up: Host,
    server: UpstreamServer,
    now: Instant,
    next_port: u16,
    next_id: u16,
}

fn document(upstreams: &[&str]) -> Value {
    json!({
        "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
        "link": {"address": "10.81.0.1/16"},
        // Above smoltcp's 1 s ARP rate limit, so a failover to an upstream whose MAC is
        // not yet known is not held back for longer than the attempt may take.
        "dns": {"grid": "testgrid", "upstreams": upstreams, "upstream_timeout_ms": 1200},
        "containers": [
            {"name": "testapp-web-1", "service": "testapp-web", "address": "10.81.1.2"},
            {"name": "testapp-web-2", "service": "testapp-web", "address": "10.81.1.3"},
            {"name": "testapp-web-3", "service": "testapp-web", "address": "10.81.1.4"},
            {"name": "testapp-db-1", "service": "testapp-db", "address": "10.81.1.1"}
        ]
    })
}

impl World {
    fn new() -> World {
        World::with_document(document(&["192.0.2.53", "192.0.2.54"]))
    }

    fn with_document(doc: Value) -> World {
        let now = Instant::from_millis(1_000);
        let app = Appliance::new(
            BootInfo {
                uplink_mac: UPLINK_MAC.0,
                link_mac: LINK_MAC.0,
                seed: 0x5eed,
                cmdline: String::new(),
            },
            now,
        );
        let ctr = Host::new(
            CTR_MAC,
            &[Ipv4Cidr::new(Ipv4Address::new(10, 81, 128, 2), 16)],
            Some(GATEWAY),
        );
        let mut up = Host::new(
            UP_MAC,
            &[
                Ipv4Cidr::new(DEAD_UPSTREAM, 24),
                Ipv4Cidr::new(LIVE_UPSTREAM, 24),
            ],
            None,
        );
        let udp = up.sockets.add(udp_socket((LIVE_UPSTREAM, 53)));
        let tcp = (0..4)
            .map(|_| {
                let mut socket = tcp_socket();
                socket.listen((LIVE_UPSTREAM, 53)).unwrap();
                (up.sockets.add(socket), StreamDecoder::new())
            })
            .collect();
        let mut world = World {
            app,
            uplink: MemPort::new(UPLINK_MAC),
            link: MemPort::new(LINK_MAC),
            ctr,
            up,
            server: UpstreamServer {
                udp,
                tcp,
                seen: (0, 0),
            },
            now,
            next_port: 40000,
            next_id: 0x100,
        };
        let reply = world.control("apply", Some(doc));
        assert_eq!(reply["result"]["changed"], json!(true), "{reply}");
        world
    }

    /// One request on the control socket; the reply line as JSON.
    fn control(&mut self, cmd: &str, args: Option<Value>) -> Value {
        let mut line = json!({"id": 1, "cmd": cmd});
        if let Some(args) = args {
            line["args"] = args;
        }
        let mut out = Vec::new();
        self.app
            .control_input(self.now, format!("{line}\n").as_bytes(), &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    fn status_dns(&mut self) -> Value {
        self.control("status", None)["result"]["dns"].clone()
    }

    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        self.app.poll(now, &mut self.uplink, &mut self.link);
        for f in self.link.take_transmitted() {
            self.ctr.dev.push_rx(&f);
        }
        for f in self.uplink.take_transmitted() {
            self.up.dev.push_rx(&f);
        }
        self.ctr.poll(now);
        self.up.poll(now);
        self.serve_upstream();
        self.up.poll(now);
        while let Some(f) = self.ctr.dev.pop_tx() {
            self.link.inject(&f);
        }
        while let Some(f) = self.up.dev.pop_tx() {
            self.uplink.inject(&f);
        }
    }

    fn serve_upstream(&mut self) {
        let sockets = &mut self.up.sockets;
        let socket = sockets.get_mut::<udp::Socket>(self.server.udp);
        let mut buf = [0u8; 1500];
        while let Ok((n, meta)) = socket.recv_slice(&mut buf) {
            self.server.seen.0 += 1;
            if let Some(reply) = upstream_answer(&buf[..n], true) {
                socket.send_slice(&reply, meta.endpoint).unwrap();
            }
        }
        for (handle, decoder) in &mut self.server.tcp {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if socket.can_recv() {
                socket
                    .recv(|data| (data.len(), decoder.push(data).unwrap()))
                    .unwrap();
            }
            while let Some(message) = decoder.next_message() {
                self.server.seen.1 += 1;
                if let Some(reply) = upstream_answer(&message, false) {
                    socket.send_slice(&frame(&reply).unwrap()).unwrap();
                }
            }
            if socket.state() == tcp::State::CloseWait {
                socket.close();
            }
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                socket.abort();
                *decoder = StreamDecoder::new();
                socket.listen((LIVE_UPSTREAM, 53)).unwrap();
            }
        }
    }

    fn query(&mut self, name: &str, qtype: RecordType, edns: Option<u16>) -> (u16, Vec<u8>) {
        self.next_id = self.next_id.wrapping_add(1);
        let mut message = Message::new(self.next_id, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            message.set_edns(e);
        }
        (self.next_id, message.to_vec().unwrap())
    }

    /// Sends `bytes` from a fresh UDP port to `server`:53; the reply's bytes and the
    /// address it came from, within `max_steps`.
    fn udp_exchange(
        &mut self,
        server: Ipv4Address,
        bytes: &[u8],
        max_steps: usize,
    ) -> Option<(Vec<u8>, IpAddress)> {
        self.next_port += 1;
        let handle = self.ctr.sockets.add(udp_socket(self.next_port));
        self.ctr
            .sockets
            .get_mut::<udp::Socket>(handle)
            .send_slice(bytes, (server, 53))
            .unwrap();
        let mut got = None;
        for _ in 0..max_steps {
            self.step();
            let socket = self.ctr.sockets.get_mut::<udp::Socket>(handle);
            if let Ok((data, meta)) = socket.recv() {
                got = Some((data.to_vec(), meta.endpoint.addr));
                break;
            }
        }
        self.ctr.sockets.remove(handle);
        got
    }

    fn ask_udp(&mut self, name: &str, qtype: RecordType) -> Message {
        self.ask_udp_edns(name, qtype, None)
    }

    fn ask_udp_edns(&mut self, name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
        let (id, bytes) = self.query(name, qtype, edns);
        let (reply, from) = self
            .udp_exchange(GATEWAY, &bytes, 1000)
            .unwrap_or_else(|| panic!("no UDP reply for {name} {qtype}"));
        assert_eq!(
            from,
            IpAddress::Ipv4(GATEWAY),
            "reply from the address asked"
        );
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, id);
        reply
    }

    /// Opens a TCP connection to the gateway's port 53.
    fn tcp_connect(&mut self) -> SocketHandle {
        self.next_port += 1;
        let mut socket = tcp_socket();
        socket
            .connect(self.ctr.iface.context(), (GATEWAY, 53), self.next_port)
            .unwrap();
        self.ctr.sockets.add(socket)
    }

    /// Sends one query on an open connection and reads its framed reply.
    fn tcp_exchange(&mut self, handle: SocketHandle, bytes: &[u8]) -> Vec<u8> {
        let mut out = frame(bytes).unwrap();
        let mut decoder = StreamDecoder::new();
        for _ in 0..1000 {
            self.step();
            let socket = self.ctr.sockets.get_mut::<tcp::Socket>(handle);
            if !out.is_empty() && socket.can_send() {
                let n = socket.send_slice(&out).unwrap();
                out.drain(..n);
            }
            if socket.can_recv() {
                socket
                    .recv(|data| (data.len(), decoder.push(data).unwrap()))
                    .unwrap();
            }
            if let Some(message) = decoder.next_message() {
                return message;
            }
        }
        panic!("no TCP reply");
    }

    fn ask_tcp(&mut self, name: &str, qtype: RecordType) -> Message {
        let (id, bytes) = self.query(name, qtype, None);
        let handle = self.tcp_connect();
        let reply = Message::from_vec(&self.tcp_exchange(handle, &bytes)).unwrap();
        self.ctr.sockets.get_mut::<tcp::Socket>(handle).close();
        for _ in 0..20 {
            self.step();
        }
        self.ctr.sockets.remove(handle);
        assert_eq!(reply.metadata.id, id);
        reply
    }
}

fn addresses(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(a)) => Some(*a),
            _ => None,
        })
        .collect()
}

#[test]
fn container_and_service_names_answer_over_udp_from_the_gateway() {
    let mut w = World::new();
    for name in [
        "testapp-db-1.testgrid.kontena.local.",
        "testapp-db-1.kontena.local.",
        "testapp-db-1.",
        "TestApp-DB-1.TestGrid.Kontena.Local.",
    ] {
        let reply = w.ask_udp(name, RecordType::A);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert!(reply.metadata.authoritative, "{name}");
        assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 81, 1, 1)], "{name}");
    }
    // Three instances, the order rotating from query to query.
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let reply = w.ask_udp("testapp-web.testgrid.kontena.local.", RecordType::A);
        let mut got = addresses(&reply);
        firsts.push(got[0]);
        got.sort();
        assert_eq!(got, [2, 3, 4].map(|h| Ipv4Addr::new(10, 81, 1, h)));
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), 3, "each instance leads once in three queries");

    let ptr = w.ask_udp("2.1.81.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(ptr.answers.len(), 1);
    assert_eq!(
        ptr.answers[0].data,
        RData::PTR(hickory_proto::rr::rdata::PTR(
            Name::from_ascii("testapp-web-1.testgrid.kontena.local.").unwrap()
        ))
    );
    let aaaa = w.ask_udp("testapp-web-1.testgrid.kontena.local.", RecordType::AAAA);
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    let nx = w.ask_udp("nope.testgrid.kontena.local.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative);
    assert!(matches!(nx.authorities[0].data, RData::SOA(_)));

    let dns = w.status_dns();
    assert_eq!(dns["counters"]["local_answers"], json!(8), "{dns}");
    assert_eq!(dns["counters"]["nxdomain"], json!(1), "{dns}");
    assert_eq!(dns["counters"]["nodata"], json!(1), "{dns}");
}

#[test]
fn big_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let mut w = World::new();
    for i in 0..60u8 {
        let reply = w.control(
            "container-add",
            Some(json!({"name": format!("big-{i}"), "service": "big", "address": format!("10.81.2.{i}")})),
        );
        assert_eq!(reply["result"]["changed"], json!(true), "{reply}");
    }
    let udp = w.ask_udp_edns("big.testgrid.kontena.local.", RecordType::A, Some(512));
    assert!(udp.metadata.truncation);
    let tcp = w.ask_tcp("big.testgrid.kontena.local.", RecordType::A);
    assert!(!tcp.metadata.truncation);
    assert_eq!(addresses(&tcp).len(), 60);
    let dns = w.status_dns();
    assert_eq!(dns["counters"]["truncated"], json!(1), "{dns}");
    assert_eq!(dns["counters"]["queries_tcp"], json!(1), "{dns}");
    assert_eq!(dns["sockets"]["tcp_accepted"], json!(1), "{dns}");
}

#[test]
fn several_tcp_clients_at_once_and_listeners_are_rearmed() {
    let mut w = World::new();
    for round in 0..3 {
        let conns: Vec<SocketHandle> = (0..4).map(|_| w.tcp_connect()).collect();
        for (i, handle) in conns.iter().enumerate() {
            let (id, bytes) = w.query("testapp-db-1.kontena.local.", RecordType::A, None);
            let reply = Message::from_vec(&w.tcp_exchange(*handle, &bytes)).unwrap();
            assert_eq!(reply.metadata.id, id, "round {round} client {i}");
            assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 81, 1, 1)]);
        }
        for handle in &conns {
            w.ctr.sockets.get_mut::<tcp::Socket>(*handle).close();
        }
        for _ in 0..40 {
            w.step();
        }
        for handle in conns {
            w.ctr.sockets.remove(handle);
        }
    }
    let dns = w.status_dns();
    assert_eq!(dns["sockets"]["tcp_accepted"], json!(12), "{dns}");
    assert_eq!(dns["tcp_open"], json!(0), "{dns}");
}

#[test]
fn idle_tcp_connection_is_closed_by_the_server() {
    let mut w = World::new();
    let handle = w.tcp_connect();
    let (_, bytes) = w.query("testapp-db-1.", RecordType::A, None);
    w.tcp_exchange(handle, &bytes);
    // 10 s of silence.
    for _ in 0..(11_000 / 5) {
        w.step();
    }
    let state = w.ctr.sockets.get::<tcp::Socket>(handle).state();
    assert!(
        matches!(
            state,
            tcp::State::CloseWait | tcp::State::Closed | tcp::State::TimeWait
        ),
        "{state}"
    );
    assert_eq!(w.status_dns()["sockets"]["tcp_idle_closed"], json!(1));
}

#[test]
fn outside_names_fail_over_to_the_live_upstream_over_udp_and_tcp() {
    let mut w = World::new();
    let reply = w.ask_udp("example.test.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), [EXAMPLE]);
    let dns = w.status_dns();
    // The dead upstream's host says "port unreachable": failed over without a timeout.
    assert_eq!(dns["sockets"]["upstream_unreachable"], json!(1), "{dns}");
    assert_eq!(dns["counters"]["upstream_timeouts"], json!(1), "{dns}");
    assert_eq!(dns["counters"]["upstream_replies"], json!(1), "{dns}");
    // The upstream that answered is asked first from now on: no timeout this time.
    let started = w.now;
    let reply = w.ask_udp("Example.Test.", RecordType::A);
    assert_eq!(addresses(&reply), [EXAMPLE]);
    assert!(w.now - started < Duration::from_millis(1200));
    // An apply that leaves the [dns] section as it is keeps that preference.
    let mut doc = document(&["192.0.2.53", "192.0.2.54"]);
    doc["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "address": "10.81.1.99"}));
    assert_eq!(
        w.control("apply", Some(doc))["result"]["changed"],
        json!(true)
    );
    let reply = w.ask_udp("example.test.", RecordType::A);
    assert_eq!(addresses(&reply), [EXAMPLE]);
    assert_eq!(w.status_dns()["sockets"]["upstream_unreachable"], json!(1));
    assert_eq!(
        addresses(&w.ask_udp("extra.testgrid.kontena.local.", RecordType::A)),
        [Ipv4Addr::new(10, 81, 1, 99)]
    );
    // Over TCP, the upstream is asked over TCP.
    let reply = w.ask_tcp("big.example.test.", RecordType::A);
    assert_eq!(addresses(&reply).len(), 120);
    assert_eq!(w.server.seen.1, 1);
    // The UDP client of a too-big upstream answer gets TC=1.
    let reply = w.ask_udp("big.example.test.", RecordType::A);
    assert!(reply.metadata.truncation);
    // A local name is answered while a forwarded query waits for its timeout.
    let (_, slow) = w.query("nothing-there.invalid.", RecordType::A, None);
    // No host at all there: no ICMP either, so the query waits for its timeout.
    w.control("apply", Some(document(&["192.0.2.99"])));
    let slow_port = w.next_port + 1;
    let handle = w.ctr.sockets.add(udp_socket(slow_port));
    w.next_port += 1;
    w.ctr
        .sockets
        .get_mut::<udp::Socket>(handle)
        .send_slice(&slow, (GATEWAY, 53))
        .unwrap();
    w.step();
    let local = w.ask_udp("testapp-db-1.", RecordType::A);
    assert_eq!(addresses(&local), [Ipv4Addr::new(10, 81, 1, 1)]);
    assert!(
        w.ctr.sockets.get_mut::<udp::Socket>(handle).recv().is_err(),
        "the forwarded one still waits"
    );
    assert_eq!(w.status_dns()["in_flight"], json!(1));
    let mut servfail = None;
    for _ in 0..400 {
        w.step();
        if let Ok((data, _)) = w.ctr.sockets.get_mut::<udp::Socket>(handle).recv() {
            servfail = Some(Message::from_vec(data).unwrap());
            break;
        }
    }
    let servfail = servfail.expect("SERVFAIL once the only upstream timed out");
    assert_eq!(servfail.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(w.status_dns()["in_flight"], json!(0));
}

#[test]
fn no_upstream_reachable_is_servfail() {
    let mut w = World::with_document(document(&["192.0.2.53", "192.0.2.99"]));
    let reply = w.ask_udp("example.test.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    let reply = w.ask_tcp("example.test.", RecordType::A);
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    let dns = w.status_dns();
    assert_eq!(dns["counters"]["upstream_failures"], json!(2), "{dns}");
    // Every upstream socket was closed.
    assert_eq!(dns["in_flight"], json!(0), "{dns}");
}

#[test]
fn container_add_and_remove_are_visible_on_the_next_query() {
    let mut w = World::new();
    let nx = w.ask_udp("newcomer.testgrid.kontena.local.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let r = w.control(
        "container-add",
        Some(json!({"name": "newcomer", "service": "testapp-web", "address": "10.81.1.9"})),
    );
    assert_eq!(r["result"]["changed"], json!(true), "{r}");
    let reply = w.ask_udp("newcomer.testgrid.kontena.local.", RecordType::A);
    assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 81, 1, 9)]);
    let service = w.ask_udp("testapp-web.kontena.local.", RecordType::A);
    assert_eq!(addresses(&service).len(), 4);
    let r = w.control("container-remove", Some(json!({"name": "testapp-web-2"})));
    assert_eq!(r["result"]["changed"], json!(true), "{r}");
    let service = w.ask_udp("testapp-web.kontena.local.", RecordType::A);
    assert_eq!(addresses(&service).len(), 3);
    assert!(!addresses(&service).contains(&Ipv4Addr::new(10, 81, 1, 3)));
    let gone = w.ask_udp("testapp-web-2.testgrid.kontena.local.", RecordType::A);
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);
    // And the running document says the same.
    let config = w.control("config", None);
    let names: Vec<&str> = config["result"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["testapp-web-1", "testapp-web-3", "testapp-db-1", "newcomer"]
    );
}

#[test]
fn garbage_datagrams_get_formerr_or_a_counted_drop_and_service_goes_on() {
    let mut w = World::new();
    let (_, good) = w.query("testapp-db-1.", RecordType::A, None);
    let mut truncated_question = good.clone();
    truncated_question.truncate(good.len() - 3);
    let mut response_bit = good.clone();
    response_bit[2] |= 0x80;
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        vec![0xff; 11],
        truncated_question,
        response_bit,
        (0..200u8).collect(),
    ];
    let mut replies = 0;
    for bytes in &cases {
        if let Some((reply, _)) = w.udp_exchange(GATEWAY, bytes, 10) {
            let reply = Message::from_vec(&reply).unwrap();
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::FormErr,
                "{bytes:?}"
            );
            replies += 1;
        }
    }
    let dns = w.status_dns();
    let drops: u64 = dns["counters"]["drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(dns["counters"]["queries"], json!(cases.len()), "{dns}");
    assert_eq!(
        dns["counters"]["formerr"].as_u64().unwrap() + drops,
        cases.len() as u64,
        "{dns}"
    );
    assert_eq!(
        dns["counters"]["formerr"].as_u64().unwrap(),
        replies,
        "{dns}"
    );
    let reply = w.ask_udp("testapp-db-1.", RecordType::A);
    assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 81, 1, 1)]);
}

#[test]
fn removing_the_dns_section_closes_port_53() {
    let mut w = World::new();
    w.ask_udp("testapp-db-1.", RecordType::A);
    let mut doc = document(&["192.0.2.54"]);
    doc.as_object_mut().unwrap().remove("dns");
    doc.as_object_mut().unwrap().remove("containers");
    let r = w.control("apply", Some(doc));
    assert_eq!(r["result"]["changed"], json!(true), "{r}");
    assert_eq!(w.status_dns(), Value::Null);
    let (_, bytes) = w.query("testapp-db-1.", RecordType::A, None);
    assert!(w.udp_exchange(GATEWAY, &bytes, 20).is_none());
    let r = w.control(
        "container-add",
        Some(json!({"name": "x", "address": "10.81.1.1"})),
    );
    assert_eq!(r["error"]["code"], json!("not_ready"), "{r}");
}

#[test]
fn reply_source_is_the_node_address_when_asked_there() {
    // The link's gateway address is outside the grid; the node address is a second
    // address on the same link.
    let mut doc = document(&["192.0.2.54"]);
    doc["link"] = json!({"address": "172.20.0.1/16"});
    doc["grid"] = json!({"node": 1});
    let mut w = World::with_document(doc);
    let node = Ipv4Address::new(10, 81, 0, 1);
    let (id, bytes) = w.query("testapp-db-1.kontena.local.", RecordType::A, None);
    let (reply, from) = w
        .udp_exchange(node, &bytes, 100)
        .expect("a reply from the node address");
    assert_eq!(from, IpAddress::Ipv4(node));
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, id);
    assert_eq!(addresses(&reply), [Ipv4Addr::new(10, 81, 1, 1)]);
}

fn rcode_and_addresses(m: &Message) -> (ResponseCode, Vec<Ipv4Addr>) {
    (m.metadata.response_code, addresses(m))
}

#[test]
fn lb_service_names_resolve_to_the_vip_or_the_healthy_backends() {
    let mut w = World::new();
    let vip = Ipv4Addr::new(10, 81, 255, 1);
    let r = w.control(
        "service-add",
        Some(
            json!({"name": "web", "vip": "10.81.255.1", "proto": "tcp", "port": 80,
                    "backends": [{"address": "10.81.1.2", "port": 8080}]}),
        ),
    );
    assert_eq!(r["result"]["changed"], json!(true), "{r}");
    // All three name forms, on the very next query.
    for name in ["web.", "web.kontena.local.", "web.testgrid.kontena.local."] {
        let reply = w.ask_udp(name, RecordType::A);
        assert_eq!(
            rcode_and_addresses(&reply),
            (ResponseCode::NoError, vec![vip]),
            "{name}"
        );
        assert!(reply.metadata.authoritative, "{name}");
    }

    // dnsrr: the backends' addresses, rotating; a backend edit shows at once.
    let r = w.control(
        "service-add",
        Some(
            json!({"name": "db", "mode": "dnsrr", "proto": "tcp", "port": 5432,
                    "backends": [{"address": "10.81.1.20", "port": 5432},
                                 {"address": "10.81.1.21", "port": 5432},
                                 {"address": "10.81.1.22", "port": 5432, "weight": 0}]}),
        ),
    );
    assert_eq!(r["result"]["changed"], json!(true), "{r}");
    let first = addresses(&w.ask_udp("db.testgrid.kontena.local.", RecordType::A));
    let second = addresses(&w.ask_udp("db.kontena.local.", RecordType::A));
    let (a, b) = (Ipv4Addr::new(10, 81, 1, 20), Ipv4Addr::new(10, 81, 1, 21));
    assert_eq!(first, [a, b], "a drained backend is not answered");
    assert_eq!(second, [b, a], "answers rotate");
    let r = w.control(
        "backend-set",
        Some(json!({"service": "db", "address": "10.81.1.23", "port": 5432})),
    );
    assert_eq!(r["result"]["changed"], json!(true), "{r}");
    let mut now = addresses(&w.ask_udp("db.", RecordType::A));
    now.sort();
    assert_eq!(now, [a, b, Ipv4Addr::new(10, 81, 1, 23)]);

    // No healthy backend: NOERROR with no address (as Docker), the SOA for caching.
    for backend in ["10.81.1.20", "10.81.1.21", "10.81.1.22", "10.81.1.23"] {
        let r = w.control(
            "backend-remove",
            Some(json!({"service": "db", "address": backend, "port": 5432})),
        );
        assert_eq!(r["result"]["changed"], json!(true), "{r}");
    }
    let empty = w.ask_udp("db.testgrid.kontena.local.", RecordType::A);
    assert_eq!(rcode_and_addresses(&empty), (ResponseCode::NoError, vec![]));
    assert_eq!(empty.authorities.len(), 1, "{empty:?}");

    // Health decides too: backends nobody answers for fail their checks and leave.
    let r = w.control(
        "service-add",
        Some(
            json!({"name": "cache", "mode": "dnsrr", "proto": "tcp", "port": 6379,
                    "backends": [{"address": "10.81.1.30", "port": 6379}],
                    "health": {"interval_ms": 200, "timeout_ms": 100, "fall": 1}}),
        ),
    );
    assert_eq!(r["result"]["changed"], json!(true), "{r}");
    assert_eq!(
        addresses(&w.ask_udp("cache.", RecordType::A)),
        [Ipv4Addr::new(10, 81, 1, 30)]
    );
    for _ in 0..200 {
        w.step();
    }
    let gone = w.ask_udp("cache.", RecordType::A);
    assert_eq!(rcode_and_addresses(&gone), (ResponseCode::NoError, vec![]));
    let st = w.control("status", None);
    let cache = &st["result"]["services"][2]["backends"][0];
    assert_eq!(cache["health"], json!("down"), "{st}");
    assert!(cache["checks_failed"].as_u64().unwrap() >= 1, "{st}");

    // A removed service is gone from DNS.
    let r = w.control("service-remove", Some(json!({"name": "web"})));
    assert_eq!(r["result"]["changed"], json!(true), "{r}");
    let nx = w.ask_udp("web.testgrid.kontena.local.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
}
