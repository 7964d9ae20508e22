//! The DNS server state machine: one client query in, one [`Action`] out. Grid names
//! are answered authoritatively from the record store; every other name goes to the
//! forwarder; upstream replies and timers come back through the same value.
//!
//! It never does I/O and never reads a clock: `now` is an argument, bytes are slices,
//! and what to send is returned. Bad input is a FORMERR reply or a counted drop.

use alloc::vec::Vec;
use core::net::SocketAddr;

use hickory_proto::op::{Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use smoltcp::time::{Duration, Instant};

use super::config::DnsConfig;
use super::forward::{ForwardRefusal, Forwarder, Outgoing, Relayed, TimerEvent};
use super::metrics::{DnsCounters, DropReason};
use super::records::{ascii_label, Lookup, RecordStore, ReverseLookup, Rotation};
use super::reply::{self, RequestHead};
use super::Transport;

/// What to do with a client query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes (one DNS message) back to the client on the transport the query
    /// came on; for TCP, prefix the 2-byte length (`tcp::frame`).
    Reply(Vec<u8>),
    /// Send this query upstream; its reply comes back via `handle_upstream_reply`.
    Forward(Outgoing),
    /// Send nothing; the reason has been counted.
    Drop(DropReason),
}

/// What to do with a datagram (or TCP message) from an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAction {
    /// Relay to the client, and free the source port.
    Reply(Relayed),
    /// Ignore it (the port stays in use until its reply or timeout).
    Drop(DropReason),
}

/// SOA timers (RFC 1912 §2.2 ranges); nobody transfers this zone, they are for show.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86400;

/// The grid resolver.
#[derive(Debug)]
pub struct DnsServer {
    records: RecordStore,
    forwarder: Forwarder,
    ttl: u32,
    negative_ttl: u32,
    /// The zone apex and the SOA's RNAME, built once.
    apex: Name,
    hostmaster: Name,
    counters: DnsCounters,
}

/// The outcome of a local lookup.
enum Local {
    Answer(Vec<Record>),
    NoData,
    NxDomain,
    Refused,
    NotOurs,
}

/// The SOA's responsible mailbox, `hostmaster.<apex>` (the apex itself if that name is
/// too long).
fn hostmaster_of(apex: &Name) -> Name {
    ascii_label("hostmaster")
        .and_then(|label| apex.prepend_label(label).ok())
        .unwrap_or_else(|| apex.clone())
}

impl DnsServer {
    /// `seed` seeds the forwarder's ID and port choice: take it from a real entropy
    /// source (RDRAND, the host), never a constant.
    pub fn new(config: DnsConfig, seed: [u8; 32]) -> DnsServer {
        let apex = config.zone.apex();
        let hostmaster = hostmaster_of(&apex);
        DnsServer {
            apex,
            hostmaster,
            records: RecordStore::new(config.zone),
            forwarder: Forwarder::new(config.forwarder, seed),
            ttl: secs(config.ttl),
            negative_ttl: secs(config.negative_ttl),
            counters: DnsCounters::default(),
        }
    }

    /// Applies a new `dns` section: records, counters and queries in flight are kept
    /// (a pending query fails over within the new upstream list).
    pub fn reconfigure(&mut self, config: DnsConfig) {
        let apex = config.zone.apex();
        self.hostmaster = hostmaster_of(&apex);
        self.apex = apex;
        self.records.set_zone(config.zone);
        self.forwarder.set_config(config.forwarder);
        self.ttl = secs(config.ttl);
        self.negative_ttl = secs(config.negative_ttl);
    }

    pub fn records(&self) -> &RecordStore {
        &self.records
    }

    /// Changes made here are answered from the very next query.
    pub fn records_mut(&mut self) -> &mut RecordStore {
        &mut self.records
    }

    pub fn counters(&self) -> &DnsCounters {
        &self.counters
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Handles one client query (`bytes` is one DNS message; for TCP without its
    /// length prefix) from `client`.
    pub fn handle_query(
        &mut self,
        now: Instant,
        client: SocketAddr,
        bytes: &[u8],
        transport: Transport,
    ) -> Action {
        self.counters.queries += 1;
        if transport == Transport::Tcp {
            self.counters.queries_tcp += 1;
        }
        let header = match Header::read(&mut BinDecoder::new(bytes)) {
            Ok(header) => header,
            Err(_) => return self.drop(DropReason::ShortHeader),
        };
        if header.metadata.message_type != MessageType::Query {
            return self.drop(DropReason::NotAQuery);
        }
        let request = match Message::from_vec(bytes) {
            Ok(request) => request,
            Err(_) => {
                self.counters.formerr += 1;
                return self.header_reply(&header.metadata, ResponseCode::FormErr);
            }
        };
        let head = RequestHead::of(&request);
        let limit = match transport {
            Transport::Udp => usize::from(head.udp_limit(self.max_udp_payload())),
            Transport::Tcp => usize::from(u16::MAX),
        };
        if request.metadata.op_code != OpCode::Query {
            self.counters.notimp += 1;
            return self.reply(&head, ResponseCode::NotImp, false, Vec::new(), false, limit);
        }
        if request.queries.len() != 1 {
            // RFC 9619: QDCOUNT must be 1 for QUERY.
            self.counters.formerr += 1;
            let head = RequestHead {
                query: None,
                ..head
            };
            return self.reply(
                &head,
                ResponseCode::FormErr,
                false,
                Vec::new(),
                false,
                limit,
            );
        }
        if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            // RFC 6891 §6.1.3.
            self.counters.badvers += 1;
            return self.reply(
                &head,
                ResponseCode::BADVERS,
                false,
                Vec::new(),
                false,
                limit,
            );
        }

        match self.resolve_local(&request) {
            Local::Answer(answers) => {
                self.counters.local_answers += 1;
                self.reply(&head, ResponseCode::NoError, true, answers, false, limit)
            }
            Local::NoData => {
                self.counters.nodata += 1;
                self.reply(&head, ResponseCode::NoError, true, Vec::new(), true, limit)
            }
            Local::NxDomain => {
                self.counters.nxdomain += 1;
                self.reply(&head, ResponseCode::NXDomain, true, Vec::new(), true, limit)
            }
            Local::Refused => {
                self.counters.refused += 1;
                self.reply(
                    &head,
                    ResponseCode::Refused,
                    false,
                    Vec::new(),
                    false,
                    limit,
                )
            }
            Local::NotOurs => self.forward(now, client, transport, &request, bytes),
        }
    }

    /// Handles a message from an upstream that arrived from `from` on our
    /// `local_port` (the `source_port` of an `Outgoing`).
    pub fn handle_upstream_reply(
        &mut self,
        from: SocketAddr,
        local_port: u16,
        bytes: &[u8],
    ) -> UpstreamAction {
        match self.forwarder.handle_reply(from, local_port, bytes) {
            Ok(relayed) => {
                self.counters.upstream_replies += 1;
                UpstreamAction::Reply(relayed)
            }
            Err(reason) => {
                self.counters.drops.count(reason);
                UpstreamAction::Drop(reason)
            }
        }
    }

    /// Fails the attempt on `local_port` at once (ICMP unreachable, TCP reset) instead
    /// of waiting for its timeout.
    pub fn upstream_failed(&mut self, now: Instant, local_port: u16) -> Option<TimerEvent> {
        let event = self.forwarder.fail_attempt(now, local_port)?;
        self.count_timer(&event);
        Some(event)
    }

    /// Runs the forwarder's timers: call at or after `next_deadline()`.
    pub fn poll(&mut self, now: Instant) -> Vec<TimerEvent> {
        let events = self.forwarder.poll(now);
        for event in &events {
            self.count_timer(event);
        }
        events
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.forwarder.next_deadline()
    }

    fn count_timer(&mut self, event: &TimerEvent) {
        self.counters.upstream_timeouts += 1;
        match event {
            TimerEvent::Retry { .. } => self.counters.upstream_queries += 1,
            TimerEvent::GiveUp { .. } => {
                self.counters.upstream_failures += 1;
                self.counters.servfail += 1;
            }
        }
    }

    fn max_udp_payload(&self) -> u16 {
        self.forwarder.config().max_udp_payload
    }

    fn resolve_local(&mut self, request: &Message) -> Local {
        let Some(query) = request.queries.first() else {
            return Local::NotOurs;
        };
        let name = &query.name;
        let qtype = query.query_type;
        let class_ok = matches!(query.query_class, DNSClass::IN | DNSClass::ANY);

        if qtype == RecordType::PTR && class_ok {
            if let ReverseLookup::Names(names) = self.records.lookup_reverse(name) {
                let answers = names
                    .into_iter()
                    .map(|target| {
                        Record::from_rdata(name.clone(), self.ttl, RData::PTR(PTR(target)))
                    })
                    .collect();
                return Local::Answer(answers);
            }
        }

        let wants_address = matches!(qtype, RecordType::A | RecordType::ANY);
        let rotation = if wants_address && class_ok {
            Rotation::Advance
        } else {
            Rotation::Keep
        };
        let lookup = self.records.lookup(name, rotation);
        if lookup == Lookup::NotOurs {
            return Local::NotOurs;
        }
        // This server holds the grid zone for class IN only and offers no transfers.
        if !class_ok || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Local::Refused;
        }
        match lookup {
            // A `dnsrr` service with no healthy backend: NOERROR with no answer (as
            // Docker), with the SOA so that resolvers cache the absence briefly.
            Lookup::Addresses(addresses) if addresses.is_empty() => Local::NoData,
            Lookup::Addresses(addresses) if wants_address => Local::Answer(
                addresses
                    .into_iter()
                    .map(|address| Record::from_rdata(name.clone(), self.ttl, RData::A(A(address))))
                    .collect(),
            ),
            Lookup::Apex if matches!(qtype, RecordType::SOA | RecordType::ANY) => {
                Local::Answer(alloc::vec![self.soa(self.ttl)])
            }
            Lookup::Addresses(_) | Lookup::Apex => Local::NoData,
            Lookup::NxDomain => Local::NxDomain,
            Lookup::NotOurs => Local::NotOurs,
        }
    }

    fn forward(
        &mut self,
        now: Instant,
        client: SocketAddr,
        transport: Transport,
        request: &Message,
        bytes: &[u8],
    ) -> Action {
        match self
            .forwarder
            .forward(now, client, transport, request, bytes)
        {
            Ok(outgoing) => {
                self.counters.forwarded += 1;
                self.counters.upstream_queries += 1;
                Action::Forward(outgoing)
            }
            Err(refusal) => {
                self.counters.servfail += 1;
                self.counters.forward_refused += 1;
                if refusal == ForwardRefusal::InFlightFull {
                    self.counters.in_flight_full += 1;
                }
                match self.forwarder.refusal_reply(request, transport) {
                    Some(bytes) => Action::Reply(bytes),
                    None => self.drop(DropReason::EncodeFailed),
                }
            }
        }
    }

    /// The zone's SOA (RFC 2308 §3: its TTL and MINIMUM give the negative TTL).
    fn soa(&self, ttl: u32) -> Record {
        let soa = SOA::new(
            self.apex.clone(),
            self.hostmaster.clone(),
            self.records.serial(),
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            self.negative_ttl,
        );
        Record::from_rdata(self.apex.clone(), ttl, RData::SOA(soa))
    }

    fn reply(
        &mut self,
        head: &RequestHead,
        rcode: ResponseCode,
        authoritative: bool,
        answers: Vec<Record>,
        with_soa: bool,
        limit: usize,
    ) -> Action {
        let mut message = reply::response(head, rcode, self.max_udp_payload());
        message.metadata.authoritative = authoritative;
        message.answers = answers;
        if with_soa {
            message.add_authority(self.soa(self.negative_ttl));
        }
        match reply::encode_within(&message, limit) {
            Ok((bytes, truncated)) => {
                if truncated {
                    self.counters.truncated += 1;
                }
                Action::Reply(bytes)
            }
            Err(_) => self.drop(DropReason::EncodeFailed),
        }
    }

    /// A reply carrying only a header: for a query whose body could not be read.
    fn header_reply(&mut self, request: &Metadata, rcode: ResponseCode) -> Action {
        let mut metadata = Metadata::response_from_request(request);
        metadata.recursion_available = true;
        metadata.response_code = rcode;
        let mut message = Message::response(metadata.id, metadata.op_code);
        message.metadata = metadata;
        match message.to_vec() {
            Ok(bytes) => Action::Reply(bytes),
            Err(_) => self.drop(DropReason::EncodeFailed),
        }
    }

    fn drop(&mut self, reason: DropReason) -> Action {
        self.counters.drops.count(reason);
        Action::Drop(reason)
    }
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.secs()).unwrap_or(u32::MAX)
}
