//! The upstream forwarder: a sans-I/O state machine for queries outside the grid.
//! Each attempt gets a fresh random ID and source port (RFC 5452 §9.2), a reply is
//! accepted only if its port, ID, source and question all match (RFC 5452 §9.1), an
//! attempt that times out fails over to the next upstream, and when every upstream has
//! failed the client gets SERVFAIL with its own ID. The number in flight is capped.
//!
//! It never opens a socket or reads a clock: the caller sends what it returns, feeds
//! replies and time back in, and frees a source port when told it is released.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::net::SocketAddr;

use hickory_proto::op::{Header, Message, MessageType, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};

use super::metrics::DropReason;
use super::reply::{self, RequestHead};
use super::Transport;

/// A DNS header's length (RFC 1035 §4.1.1).
const HEADER_LEN: usize = 12;

/// The range source ports are drawn from: the top of the dynamic range (RFC 6335 §6)
/// above 60999, so it stays clear of the masquerade range (`NatConfig::SNAT_PORTS`,
/// Linux's `ip_local_port_range` 32768..=60999) on the same uplink address: a reply to
/// a forwarded query must never match a translated flow. 4536 ports (12 bits) plus
/// the 16-bit ID give RFC 5452 §10 about 28 bits against an off-path spoofer.
pub const SOURCE_PORTS: core::ops::RangeInclusive<u16> = 61000..=65535;

/// The most queries in flight `max_in_flight` may allow: a quarter of the source
/// ports, so a free port is found in a few random draws.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The forwarder's settings (validated by `dns::config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Tried in order, starting from the one that last answered.
    pub upstreams: Vec<SocketAddr>,
    /// How long one attempt waits before failing over.
    pub timeout: Duration,
    /// Client queries pending at once; one more is answered SERVFAIL at once. At most
    /// `MAX_IN_FLIGHT`, well below the number of source ports.
    pub max_in_flight: usize,
    /// Largest UDP payload we take; a client's larger EDNS size is lowered to this in
    /// the forwarded query so the upstream reply fits without IP fragments.
    pub max_udp_payload: u16,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            upstreams: Vec::new(),
            timeout: Duration::from_secs(2),
            max_in_flight: 256,
            max_udp_payload: 1232,
        }
    }
}

/// A query to send to an upstream from `source_port` of our address, over the same
/// transport the client used (a TCP attempt is one connection carrying one message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub upstream: SocketAddr,
    pub source_port: u16,
    pub transport: Transport,
    /// One DNS message (for TCP, without the 2-byte length prefix).
    pub bytes: Vec<u8>,
}

/// A reply to send to a client over the transport its query came on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    pub client: SocketAddr,
    pub transport: Transport,
    /// One DNS message (for TCP, without the 2-byte length prefix).
    pub bytes: Vec<u8>,
}

/// Why a query could not be forwarded; the client gets SERVFAIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardRefusal {
    NoUpstreams,
    InFlightFull,
    /// The query could not be re-encoded with a lower EDNS size.
    EncodeFailed,
}

/// What a timer (or a failed attempt) leads to. Either way `released_port` is free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerEvent {
    /// The attempt timed out; the same query goes to the next upstream.
    Retry {
        released_port: u16,
        outgoing: Outgoing,
    },
    /// Every upstream failed: send the client its SERVFAIL.
    GiveUp {
        released_port: u16,
        reply: ClientReply,
    },
}

/// An accepted upstream reply, ready for the client; `released_port` is free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub released_port: u16,
    pub reply: ClientReply,
}

#[derive(Debug, Clone)]
struct Pending {
    client: SocketAddr,
    transport: Transport,
    head: RequestHead,
    /// The question every reply must echo.
    question: Query,
    /// The query as forwarded; each attempt writes its own ID over bytes 0..2.
    bytes: Vec<u8>,
    /// ID of the current attempt.
    id: u16,
    /// Index into `upstreams` of the current attempt, and its address.
    upstream: usize,
    upstream_addr: SocketAddr,
    /// Attempts made so far, including the current one.
    attempts: usize,
    deadline: Instant,
}

/// The forwarder. One entry per client query in flight, keyed by the source port of
/// its current attempt (unique among those in flight).
#[derive(Debug)]
pub struct Forwarder {
    config: ForwarderConfig,
    rng: StdRng,
    pending: BTreeMap<u16, Pending>,
    /// The upstream that answered last; new queries start there.
    preferred: usize,
    /// What each upstream was sent and answered, by address (kept across
    /// reconfigurations; `upstreams` shows the configured ones).
    per_upstream: BTreeMap<SocketAddr, UpstreamCounters>,
}

/// What one upstream was asked and answered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCounters {
    /// Attempts sent to it (first attempts and failovers).
    pub queries: u64,
    /// Its replies accepted and relayed.
    pub replies: u64,
    /// Its attempts that failed: timed out, unreachable, reset or unsendable.
    pub failures: u64,
}

/// One configured upstream with its counters, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub address: SocketAddr,
    #[serde(flatten)]
    pub counters: UpstreamCounters,
}

impl Forwarder {
    /// `seed` must come from a real entropy source: it is what makes IDs and ports
    /// unguessable to an off-path spoofer.
    pub fn new(config: ForwarderConfig, seed: [u8; 32]) -> Forwarder {
        Forwarder {
            config,
            rng: StdRng::from_seed(seed),
            pending: BTreeMap::new(),
            preferred: 0,
            per_upstream: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &ForwarderConfig {
        &self.config
    }

    /// New settings for new attempts. Attempts in flight keep their upstream and
    /// deadline; a failover continues in the new list. With no upstreams left, the
    /// next timeout gives up.
    pub fn set_config(&mut self, config: ForwarderConfig) {
        self.config = config;
        self.preferred = 0;
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The configured upstreams, in order, with their counters.
    pub fn upstreams(&self) -> Vec<UpstreamStatus> {
        self.config
            .upstreams
            .iter()
            .map(|a| UpstreamStatus {
                address: *a,
                counters: self.per_upstream.get(a).copied().unwrap_or_default(),
            })
            .collect()
    }

    /// Starts forwarding `request` (whose wire form is `bytes`) for `client`.
    pub fn forward(
        &mut self,
        now: Instant,
        client: SocketAddr,
        transport: Transport,
        request: &Message,
        bytes: &[u8],
    ) -> Result<Outgoing, ForwardRefusal> {
        if self.config.upstreams.is_empty() {
            return Err(ForwardRefusal::NoUpstreams);
        }
        if self.pending.len() >= self.config.max_in_flight {
            return Err(ForwardRefusal::InFlightFull);
        }
        let head = RequestHead::of(request);
        let Some(question) = head.query.clone() else {
            // The server forwards single-question queries only.
            return Err(ForwardRefusal::EncodeFailed);
        };
        let max = self.config.max_udp_payload;
        let bytes = match (&request.edns, transport) {
            (Some(edns), Transport::Udp) if edns.max_payload() > max => {
                let mut lowered = request.clone();
                if let Some(edns) = lowered.edns.as_mut() {
                    edns.set_max_payload(max);
                }
                lowered.to_vec().map_err(|_| ForwardRefusal::EncodeFailed)?
            }
            _ => bytes.to_vec(),
        };
        if bytes.len() < HEADER_LEN {
            return Err(ForwardRefusal::EncodeFailed);
        }
        let upstream = self.preferred % self.config.upstreams.len();
        let pending = Pending {
            client,
            transport,
            head,
            question,
            bytes,
            id: 0,
            upstream,
            upstream_addr: self.config.upstreams[upstream],
            attempts: 0,
            deadline: now,
        };
        Ok(self.launch(now, pending))
    }

    /// Matches an upstream reply that arrived from `from` on our `local_port`.
    pub fn handle_reply(
        &mut self,
        from: SocketAddr,
        local_port: u16,
        bytes: &[u8],
    ) -> Result<Relayed, DropReason> {
        let mut decoder = BinDecoder::new(bytes);
        let header = Header::read(&mut decoder).map_err(|_| DropReason::ReplyMalformed)?;
        if header.metadata.message_type != MessageType::Response {
            return Err(DropReason::ReplyNotAResponse);
        }
        let pending = self
            .pending
            .get(&local_port)
            .ok_or(DropReason::ReplyUnknownPort)?;
        if from != pending.upstream_addr {
            return Err(DropReason::ReplyWrongSource);
        }
        if header.metadata.id != pending.id {
            return Err(DropReason::ReplyIdMismatch);
        }
        if header.counts.queries != 1 {
            return Err(DropReason::ReplyQuestionMismatch);
        }
        let question = Query::read(&mut decoder).map_err(|_| DropReason::ReplyMalformed)?;
        // `Query` equality compares names case-insensitively (RFC 4343).
        if question != pending.question {
            return Err(DropReason::ReplyQuestionMismatch);
        }
        let pending = self
            .pending
            .remove(&local_port)
            .ok_or(DropReason::ReplyUnknownPort)?;
        self.preferred = pending.upstream;
        self.per_upstream
            .entry(pending.upstream_addr)
            .or_default()
            .replies += 1;

        let limit = match pending.transport {
            Transport::Udp => usize::from(pending.head.udp_limit(self.config.max_udp_payload)),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let bytes = if bytes.len() <= limit {
            let mut relayed = bytes.to_vec();
            relayed[..2].copy_from_slice(&pending.head.metadata.id.to_be_bytes());
            relayed
        } else {
            // The upstream ignored the size we asked for: pass on TC=1 so the client
            // retries over TCP.
            self.truncated_relay(&pending, header)
        };
        Ok(Relayed {
            released_port: local_port,
            reply: ClientReply {
                client: pending.client,
                transport: pending.transport,
                bytes,
            },
        })
    }

    /// Attempts whose deadline has passed: each fails over or gives up.
    pub fn poll(&mut self, now: Instant) -> Vec<TimerEvent> {
        let expired: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.deadline <= now)
            .map(|(port, _)| *port)
            .collect();
        expired
            .into_iter()
            .filter_map(|port| self.fail_attempt(now, port))
            .collect()
    }

    /// Fails the attempt on `local_port` now, e.g. on ICMP port unreachable or a TCP
    /// reset from the upstream. `None` if nothing is in flight on that port.
    pub fn fail_attempt(&mut self, now: Instant, local_port: u16) -> Option<TimerEvent> {
        let mut pending = self.pending.remove(&local_port)?;
        self.per_upstream
            .entry(pending.upstream_addr)
            .or_default()
            .failures += 1;
        // Also the way out when a reconfiguration emptied the list.
        if pending.attempts >= self.config.upstreams.len() {
            return Some(TimerEvent::GiveUp {
                released_port: local_port,
                reply: self.servfail(&pending),
            });
        }
        pending.upstream = (pending.upstream + 1) % self.config.upstreams.len();
        Some(TimerEvent::Retry {
            released_port: local_port,
            outgoing: self.launch(now, pending),
        })
    }

    /// The earliest attempt deadline, for the caller's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|pending| pending.deadline).min()
    }

    /// The SERVFAIL for a query that could not be forwarded (`ForwardRefusal`).
    pub fn refusal_reply(&self, request: &Message, transport: Transport) -> Option<Vec<u8>> {
        let head = RequestHead::of(request);
        let limit = match transport {
            Transport::Udp => usize::from(head.udp_limit(self.config.max_udp_payload)),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let message = reply::response(&head, ResponseCode::ServFail, self.config.max_udp_payload);
        reply::encode_within(&message, limit)
            .ok()
            .map(|(bytes, _)| bytes)
    }

    /// Gives `pending` a fresh port and ID, arms its timer, and records it.
    fn launch(&mut self, now: Instant, mut pending: Pending) -> Outgoing {
        let port = self.free_port();
        pending.id = self.rng.next_u32() as u16;
        pending.attempts += 1;
        pending.deadline = now + self.config.timeout;
        pending.bytes[..2].copy_from_slice(&pending.id.to_be_bytes());
        // `upstream` is always reduced modulo the (non-empty, fixed) upstream list.
        pending.upstream_addr = self.config.upstreams[pending.upstream];
        self.per_upstream
            .entry(pending.upstream_addr)
            .or_default()
            .queries += 1;
        let outgoing = Outgoing {
            upstream: pending.upstream_addr,
            source_port: port,
            transport: pending.transport,
            bytes: pending.bytes.clone(),
        };
        self.pending.insert(port, pending);
        outgoing
    }

    /// A random source port not in use by another attempt. In flight is capped far
    /// below the range, so a free one is found in a few draws; the scan after is only
    /// a bound on the loop.
    fn free_port(&mut self) -> u16 {
        let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
        let draw = |rng: &mut StdRng| SOURCE_PORTS.start() + (rng.next_u32() % span) as u16;
        for _ in 0..32 {
            let port = draw(&mut self.rng);
            if !self.pending.contains_key(&port) {
                return port;
            }
        }
        let start = draw(&mut self.rng);
        SOURCE_PORTS
            .clone()
            .cycle()
            .skip(usize::from(start - SOURCE_PORTS.start()))
            .take(span as usize)
            .find(|port| !self.pending.contains_key(port))
            .unwrap_or(start)
    }

    fn servfail(&self, pending: &Pending) -> ClientReply {
        let limit = match pending.transport {
            Transport::Udp => usize::from(pending.head.udp_limit(self.config.max_udp_payload)),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let message = reply::response(
            &pending.head,
            ResponseCode::ServFail,
            self.config.max_udp_payload,
        );
        let bytes = match reply::encode_within(&message, limit) {
            Ok((bytes, _)) => bytes,
            // A question we parsed always re-encodes; keep the client's ID regardless.
            Err(_) => header_only(pending.head.metadata.id, ResponseCode::ServFail),
        };
        ClientReply {
            client: pending.client,
            transport: pending.transport,
            bytes,
        }
    }

    fn truncated_relay(&self, pending: &Pending, upstream: Header) -> Vec<u8> {
        let mut message = reply::response(
            &pending.head,
            upstream.metadata.response_code,
            self.config.max_udp_payload,
        );
        message.metadata.truncation = true;
        message.metadata.authoritative = upstream.metadata.authoritative;
        message
            .to_vec()
            .unwrap_or_else(|_| header_only(pending.head.metadata.id, ResponseCode::ServFail))
    }
}

/// A bare response header: ID, QR=1, RA=1 and `rcode`, no sections.
fn header_only(id: u16, rcode: ResponseCode) -> Vec<u8> {
    let mut bytes = alloc::vec![0u8; 12];
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    bytes[2] = 0x80;
    bytes[3] = 0x80 | rcode.low();
    bytes
}
