//! NAT: port publishing (DNAT), masquerade (SNAT), hairpin and ICMP error
//! translation, rewriting Ethernet/IPv4/TCP/UDP/ICMP frames in place.
//!
//! Owns the publish rules, the endpoint-independent SNAT port mappings (RFC 4787
//! REQ-1) and the connection-tracking table that pins every translation; service
//! VIPs are resolved through the load balancer (`lb`). Checksums are adjusted
//! incrementally (RFC 1624), never recomputed over a payload.
//!
//! Must never panic on a frame, never reuse the external port of a live mapping,
//! and never let a grid-sourced packet it could not translate look translated:
//! `Verdict::Forward` is the only verdict that means "rewritten, send it".
//! Routing (MACs, TTL) is the caller's job.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Address,
    Ipv4Cidr, Ipv4Packet, TcpPacket, UdpPacket,
};

use crate::base::ports::{CHECK_PORTS, RESERVED_PORTS, SNAT_PORTS};
use crate::base::{Direction, Endpoint, FieldError, FlowTuple, NicId, Proto, Transport};
use crate::stage::lb::{LbError, LoadBalancer, Pick};
use crate::table::conntrack::{
    self, Conntrack, Flow, FlowFilter, FlowId, FlowInfo, FlowState, InsertError, TcpEvent,
    TcpFlags, TcpState,
};
use crate::wire::checksum::Delta;

/// A `[[publish]]` entry: `proto host_port -> container_address:container_port`.
/// The target may be a service VIP and port; the load balancer then picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRule {
    pub proto: Transport,
    pub host_port: u16,
    pub container_address: Ipv4Address,
    pub container_port: u16,
}

impl PublishRule {
    pub fn target(&self) -> Endpoint {
        Endpoint::new(self.container_address, self.container_port)
    }
}

/// Why a publish rule is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    HostPortZero,
    ContainerPortZero,
    /// Unspecified, broadcast, multicast or loopback.
    ContainerAddress(Ipv4Address),
    /// The appliance uses this port itself.
    Reserved {
        proto: Transport,
        port: u16,
    },
    /// Another rule already owns this protocol and port on the node.
    Duplicate {
        proto: Transport,
        host_port: u16,
    },
}

impl PublishError {
    /// The config field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            PublishError::HostPortZero
            | PublishError::Reserved { .. }
            | PublishError::Duplicate { .. } => "host_port",
            PublishError::ContainerPortZero => "container_port",
            PublishError::ContainerAddress(_) => "container_address",
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::HostPortZero => write!(f, "host port 0 cannot be published"),
            PublishError::ContainerPortZero => write!(f, "container port must not be 0"),
            PublishError::ContainerAddress(a) => {
                write!(f, "{a} is not a unicast container address")
            }
            PublishError::Reserved { proto, port } => {
                write!(f, "{proto} port {port} is reserved for the appliance")
            }
            PublishError::Duplicate { proto, host_port } => {
                write!(f, "{proto} port {host_port} is already published")
            }
        }
    }
}

/// Checks one rule against the rules already in force. `extra_reserved` are the
/// appliance's configured control/health ports, refused like `RESERVED_PORTS`.
pub fn validate_publish<'a>(
    rule: &PublishRule,
    existing: impl IntoIterator<Item = &'a PublishRule>,
    extra_reserved: &[u16],
) -> Result<(), PublishError> {
    if rule.host_port == 0 {
        return Err(PublishError::HostPortZero);
    }
    if rule.container_port == 0 {
        return Err(PublishError::ContainerPortZero);
    }
    let a = rule.container_address;
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
        return Err(PublishError::ContainerAddress(a));
    }
    // The health checks' source ports: a backend's answer on the uplink must reach them.
    let checks = CHECK_PORTS.contains(&rule.host_port);
    if RESERVED_PORTS.contains(&rule.host_port)
        || extra_reserved.contains(&rule.host_port)
        || checks
    {
        return Err(PublishError::Reserved {
            proto: rule.proto,
            port: rule.host_port,
        });
    }
    if existing
        .into_iter()
        .any(|r| r.proto == rule.proto && r.host_port == rule.host_port)
    {
        return Err(PublishError::Duplicate {
            proto: rule.proto,
            host_port: rule.host_port,
        });
    }
    Ok(())
}

/// Checks a whole `[[publish]]` list; the error names the entry and field.
pub fn validate_publish_list(
    rules: &[PublishRule],
    extra_reserved: &[u16],
) -> Result<(), FieldError> {
    for (i, rule) in rules.iter().enumerate() {
        validate_publish(rule, &rules[..i], extra_reserved).map_err(|e| FieldError {
            field: alloc::format!("publish[{i}].{}", e.field()),
            message: alloc::format!("{e}"),
        })?;
    }
    Ok(())
}

/// Why the NAT stage dropped a frame; each is a counter in `NatStats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// IPv4 or transport header truncated or inconsistent.
    Malformed,
    /// A fragment of a flow the NAT would have to translate (no reassembly).
    Fragment,
    /// A grid-sourced packet leaving the grid that cannot be translated (not
    /// TCP, UDP or ICMP echo).
    Unsupported,
    /// TCP flags no TCP sends.
    TcpInvalid,
    /// A packet for a translated destination that cannot open a flow (TCP
    /// without SYN, ICMP echo reply).
    NoFlow,
    TableFull,
    TupleClash,
    /// No free external port for a new inside endpoint.
    PortsExhausted,
    /// The service has no healthy backend with weight.
    NoBackend,
    /// A packet to translate whose source cannot be on the side it came from
    /// (an outside address from the containers, an inside or own address from
    /// the uplink).
    Spoofed,
}

/// Drops by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NatDrops {
    pub malformed: u64,
    pub fragment: u64,
    pub unsupported: u64,
    pub tcp_invalid: u64,
    pub no_flow: u64,
    pub table_full: u64,
    pub tuple_clash: u64,
    pub ports_exhausted: u64,
    pub no_backend: u64,
    pub spoofed: u64,
}

impl NatDrops {
    fn count(&mut self, r: DropReason) {
        let c = match r {
            DropReason::Malformed => &mut self.malformed,
            DropReason::Fragment => &mut self.fragment,
            DropReason::Unsupported => &mut self.unsupported,
            DropReason::TcpInvalid => &mut self.tcp_invalid,
            DropReason::NoFlow => &mut self.no_flow,
            DropReason::TableFull => &mut self.table_full,
            DropReason::TupleClash => &mut self.tuple_clash,
            DropReason::PortsExhausted => &mut self.ports_exhausted,
            DropReason::NoBackend => &mut self.no_backend,
            DropReason::Spoofed => &mut self.spoofed,
        };
        *c += 1;
    }
}

/// Counters for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NatStats {
    /// Frames rewritten and forwarded.
    pub translated: u64,
    /// ICMP errors translated back to an inside flow.
    pub icmp_errors_translated: u64,
    /// Frames handed on untouched (not NAT business).
    pub passed: u64,
    pub dnat_flows: u64,
    pub snat_flows: u64,
    pub hairpin_flows: u64,
    pub service_flows: u64,
    /// Live SNAT mappings (inside endpoints holding an external port).
    pub snat_mappings: u64,
    pub drops: NatDrops,
    /// Flows tracked now (expired ones included until swept).
    pub table_size: u64,
    pub table_capacity: u64,
    pub conntrack: conntrack::Stats,
}

/// What to do with a frame after the NAT stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not NAT business; unchanged. The next stage (bridge, local stack) decides.
    Pass,
    /// Rewritten in place: route it out of `to` toward its IPv4 destination.
    Forward { to: NicId },
    /// Refused; counted under the reason.
    Drop(DropReason),
}

/// Addresses and ranges the NAT works with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// The host's addresses on which ports are published; the first one is
    /// the masquerade source for traffic leaving the grid.
    pub uplink: Vec<Ipv4Address>,
    /// This node's own grid address: the source of hairpin and service
    /// traffic, so that replies come back through this node.
    pub node: Ipv4Address,
    /// The inside networks (container subnet, overlay): never masqueraded.
    pub grid: Vec<Ipv4Cidr>,
    /// External ports (and ICMP identifiers) for SNAT, inclusive. The local
    /// stack's own ephemeral ports on the uplink and node addresses must lie
    /// outside it, or replies to them could match a translated flow.
    pub snat_ports: (u16, u16),
    /// Control/health ports that publish rules may not use.
    pub reserved_ports: Vec<u16>,
    pub conntrack: conntrack::Config,
}

impl NatConfig {
    /// Docker's ephemeral range for masquerade (the port plan's).
    pub const SNAT_PORTS: (u16, u16) = SNAT_PORTS;

    pub fn new(uplink: Ipv4Address, node: Ipv4Address, grid: Ipv4Cidr) -> NatConfig {
        NatConfig {
            uplink: vec![uplink],
            node,
            grid: vec![grid],
            snat_ports: Self::SNAT_PORTS,
            reserved_ports: Vec::new(),
            conntrack: conntrack::Config::default(),
        }
    }
}

/// Endpoint-independent SNAT mappings: one external port per inside endpoint
/// (and SNAT address) for as long as any of its flows lives.
struct Mappings {
    range: (u16, u16),
    /// (SNAT address, proto, inside endpoint) -> (external port, live flows).
    by_inside: BTreeMap<(Ipv4Address, Proto, Endpoint), (u16, u32)>,
    /// (SNAT address, proto) -> bitmap of external ports in use.
    used: BTreeMap<(Ipv4Address, Proto), Vec<u64>>,
    seed: u64,
}

impl Mappings {
    fn new(range: (u16, u16), seed: u64) -> Mappings {
        let (lo, hi) = range;
        Mappings {
            range: if lo <= hi && lo > 0 {
                range
            } else {
                NatConfig::SNAT_PORTS
            },
            by_inside: BTreeMap::new(),
            used: BTreeMap::new(),
            seed,
        }
    }

    fn span(&self) -> u32 {
        (self.range.1 - self.range.0) as u32 + 1
    }

    /// The external port of `inside` behind `addr`, allocating one if it has
    /// none; takes a reference that `release` gives back.
    fn acquire(
        &mut self,
        addr: Ipv4Address,
        proto: Proto,
        inside: Endpoint,
        taken: impl Fn(u16) -> bool,
    ) -> Option<u16> {
        if let Some((port, refs)) = self.by_inside.get_mut(&(addr, proto, inside)) {
            *refs += 1;
            return Some(*port);
        }
        let span = self.span();
        let words = span.div_ceil(64) as usize;
        let (lo, hi) = self.range;
        let bits = self
            .used
            .entry((addr, proto))
            .or_insert_with(|| vec![0; words]);
        let is_free = |bits: &[u64], port: u16| {
            let i = (port - lo) as usize;
            bits[i / 64] & (1 << (i % 64)) == 0 && !taken(port)
        };
        // Keep the inside port when it is free (port preservation, RFC 4787
        // §4.2.1), else start at a keyed position so ports are hard to guess.
        let port = if (lo..=hi).contains(&inside.port) && is_free(bits, inside.port) {
            Some(inside.port)
        } else {
            let h = (u32::from(inside.addr) as u64) << 16 | inside.port as u64;
            let start = ((h ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 % span;
            (0..span)
                .map(|k| lo + ((start + k) % span) as u16)
                .find(|&p| is_free(bits, p))
        }?;
        let i = (port - lo) as usize;
        bits[i / 64] |= 1 << (i % 64);
        self.by_inside.insert((addr, proto, inside), (port, 1));
        Some(port)
    }

    fn release(&mut self, addr: Ipv4Address, proto: Proto, inside: Endpoint) {
        let key = (addr, proto, inside);
        let Some((port, refs)) = self.by_inside.get_mut(&key) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        let port = *port;
        self.by_inside.remove(&key);
        if let Some(bits) = self.used.get_mut(&(addr, proto)) {
            let i = (port - self.range.0) as usize;
            bits[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Gives back the mapping a removed flow held, if it was source-translated.
    fn release_flow(&mut self, flow: &Flow) {
        let (orig, reply) = (flow.original(), flow.reply());
        if reply.dst != orig.src {
            self.release(reply.dst.addr, orig.proto, orig.src);
        }
    }

    fn len(&self) -> usize {
        self.by_inside.len()
    }
}

/// The parsed facts of a frame the NAT may translate.
#[derive(Clone, Copy, Debug)]
struct Parsed {
    /// Offset of the IPv4 header in the frame, and its header length.
    ip: usize,
    ihl: usize,
    /// End of the IPv4 packet in the frame (Ethernet padding excluded).
    end: usize,
    tuple: FlowTuple,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp(TcpFlags),
    Udp,
    EchoRequest,
    EchoReply,
    /// Destination unreachable, time exceeded or parameter problem.
    IcmpError,
}

enum Parse {
    NotIpv4,
    Bad(DropReason),
    /// IPv4 that carries nothing the NAT can key on (other protocols, other
    /// ICMP types, non-first fragments); `dst` decides whether that matters.
    Opaque {
        dst: Ipv4Address,
        fragment: bool,
    },
    Ok(Parsed),
}

const ETH_LEN: usize = 14;

fn parse(frame: &[u8]) -> Parse {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Parse::Bad(DropReason::Malformed);
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Parse::NotIpv4;
    }
    let Ok(ip) = Ipv4Packet::new_checked(&frame[ETH_LEN..]) else {
        return Parse::Bad(DropReason::Malformed);
    };
    if ip.version() != 4 {
        return Parse::Bad(DropReason::Malformed);
    }
    let ihl = ip.header_len() as usize;
    let end = ETH_LEN + ip.total_len() as usize;
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Parse::Opaque {
            dst,
            fragment: true,
        };
    }
    let l4 = &frame[ETH_LEN + ihl..end];
    let ports = |proto, sport, dport| {
        FlowTuple::new(proto, Endpoint::new(src, sport), Endpoint::new(dst, dport))
    };
    let (tuple, kind) = match ip.next_header() {
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(l4) else {
                return Parse::Bad(DropReason::Malformed);
            };
            let flags = TcpFlags {
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
            };
            (
                ports(Proto::Tcp, tcp.src_port(), tcp.dst_port()),
                Kind::Tcp(flags),
            )
        }
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(l4) else {
                return Parse::Bad(DropReason::Malformed);
            };
            (ports(Proto::Udp, udp.src_port(), udp.dst_port()), Kind::Udp)
        }
        IpProtocol::Icmp => {
            let Ok(icmp) = Icmpv4Packet::new_checked(l4) else {
                return Parse::Bad(DropReason::Malformed);
            };
            let kind = match icmp.msg_type() {
                Icmpv4Message::EchoRequest => Kind::EchoRequest,
                Icmpv4Message::EchoReply => Kind::EchoReply,
                Icmpv4Message::DstUnreachable
                | Icmpv4Message::TimeExceeded
                | Icmpv4Message::ParamProblem => Kind::IcmpError,
                _ => {
                    return Parse::Opaque {
                        dst,
                        fragment: false,
                    }
                }
            };
            let id = if kind == Kind::IcmpError {
                0
            } else {
                icmp.echo_ident()
            };
            (ports(Proto::Icmp, id, id), kind)
        }
        _ => {
            return Parse::Opaque {
                dst,
                fragment: false,
            }
        }
    };
    Parse::Ok(Parsed {
        ip: ETH_LEN,
        ihl,
        end,
        tuple,
        kind,
    })
}

fn read16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Writes a 16-bit field and records the change in `delta`.
fn put16(buf: &mut [u8], at: usize, new: u16, delta: &mut Delta) {
    let old = read16(buf, at);
    if old != new {
        buf[at..at + 2].copy_from_slice(&new.to_be_bytes());
        delta.replace_u16(old, new);
    }
}

/// Writes an IPv4 address field and records the change in `delta`.
fn put_addr(buf: &mut [u8], at: usize, new: Ipv4Address, delta: &mut Delta) {
    let mut old = [0u8; 4];
    old.copy_from_slice(&buf[at..at + 4]);
    let new = new.octets();
    if old != new {
        buf[at..at + 4].copy_from_slice(&new);
        delta.replace_u32(old, new);
    }
}

const IP_CHECKSUM: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;
const TCP_CHECKSUM: usize = 16;
const UDP_CHECKSUM: usize = 6;
const ICMP_CHECKSUM: usize = 2;
const ICMP_IDENT: usize = 4;
const ICMP_HEADER: usize = 8;

/// Rewrites the IPv4 packet `pkt` (header length `ihl`) from its tuple to `out`:
/// addresses, ports or echo identifier, and every checksum that covers them.
/// Returns the delta of the rewritten bytes (for an enclosing ICMP checksum).
fn rewrite(pkt: &mut [u8], ihl: usize, proto: Proto, out: &FlowTuple) -> Delta {
    let mut addrs = Delta::ZERO;
    put_addr(pkt, IP_SRC, out.src.addr, &mut addrs);
    put_addr(pkt, IP_DST, out.dst.addr, &mut addrs);
    let mut outer = addrs;
    let old_ip_check = read16(pkt, IP_CHECKSUM);
    put16(pkt, IP_CHECKSUM, addrs.apply(old_ip_check), &mut outer);

    let l4 = &mut pkt[ihl..];
    let mut ports = Delta::ZERO;
    match proto {
        Proto::Tcp | Proto::Udp => {
            put16(l4, 0, out.src.port, &mut ports);
            put16(l4, 2, out.dst.port, &mut ports);
            // Addresses are in the pseudo-header too.
            let pseudo = addrs.plus(ports);
            let mut l4_outer = ports;
            if proto == Proto::Tcp {
                // An ICMP error may quote only the first 8 bytes of a segment.
                if l4.len() >= TCP_CHECKSUM + 2 {
                    let old = read16(l4, TCP_CHECKSUM);
                    put16(l4, TCP_CHECKSUM, pseudo.apply(old), &mut l4_outer);
                }
            } else {
                let old = read16(l4, UDP_CHECKSUM);
                put16(l4, UDP_CHECKSUM, pseudo.apply_udp(old), &mut l4_outer);
            }
            outer.plus(l4_outer)
        }
        Proto::Icmp => {
            put16(l4, ICMP_IDENT, out.dst.port, &mut ports);
            let mut l4_outer = ports;
            // A quoted echo may be cut short; its checksum covers data we
            // may not have, and an incremental update needs none of it.
            let old = read16(l4, ICMP_CHECKSUM);
            put16(l4, ICMP_CHECKSUM, ports.apply(old), &mut l4_outer);
            outer.plus(l4_outer)
        }
    }
}

/// An echo request matches only the original direction of a flow and a reply
/// only the reply direction: a peer's own ping to a mapped id is new traffic.
fn echo_direction_fits(kind: Kind, dir: Direction) -> bool {
    match kind {
        Kind::EchoRequest => dir == Direction::Original,
        Kind::EchoReply => dir == Direction::Reply,
        _ => true,
    }
}

/// Whether a packet that matched no flow may open one.
fn opens_flow(kind: Kind, tcp: Option<TcpEvent>) -> bool {
    match kind {
        Kind::Tcp(_) => tcp == Some(TcpEvent::Syn),
        Kind::Udp | Kind::EchoRequest => true,
        Kind::EchoReply | Kind::IcmpError => false,
    }
}

/// The NAT stage: publish rules, SNAT mappings, service selection and the
/// connection-tracking table, driven frame by frame.
///
/// In the poll loop: every Ethernet frame from either NIC goes through
/// [`Nat::process`] before the bridge or the local stack sees it. `Forward { to }`
/// means rewritten: route it out of `to` (neighbour MAC, TTL) toward its IPv4
/// destination. `Pass` means untouched and not NAT business: bridge it or
/// deliver it locally, but never out of the uplink with a grid source. `Drop`
/// was counted. Call [`Nat::poll`] and `lb_mut().due()` when their deadlines
/// come; feed health outcomes to `lb_mut().report()`.
pub struct Nat {
    config: NatConfig,
    ct: Conntrack,
    publish: BTreeMap<(Transport, u16), PublishRule>,
    maps: Mappings,
    lb: LoadBalancer,
    /// Inside addresses behind another host (the router places them): published
    /// ports' flows to them take the node address as source.
    remote: BTreeSet<Ipv4Address>,
    stats: NatStats,
}

enum Decision {
    Pass,
    Drop(DropReason),
    /// Open a flow whose reply tuple is `reply`; `snat` names the source
    /// address to take an external port on (the port in `reply.dst` is then
    /// filled in).
    Open {
        reply: FlowTuple,
        snat: Option<Ipv4Address>,
        kind: FlowKind,
        tag: u32,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlowKind {
    Dnat,
    Snat,
    Hairpin,
    Service,
}

impl Nat {
    /// A NAT for `config`; `seed` keys the conntrack hash and the SNAT port
    /// choice (pass a random value from the platform).
    pub fn new(config: NatConfig, seed: u64) -> Nat {
        let ct = Conntrack::new(config.conntrack, seed);
        let maps = Mappings::new(config.snat_ports, seed.rotate_left(17));
        Nat {
            stats: NatStats {
                table_capacity: ct.capacity() as u64,
                ..NatStats::default()
            },
            config,
            ct,
            publish: BTreeMap::new(),
            maps,
            lb: LoadBalancer::new(),
            remote: BTreeSet::new(),
        }
    }

    /// Marks `addr` as a container behind another host (`remote`) or not. New flows
    /// of a published port to a remote container are source-translated to the node
    /// address, so that the reply returns through this node (the routing mesh's
    /// return path); flows to local containers keep the client's address.
    pub fn set_remote(&mut self, addr: Ipv4Address, remote: bool) {
        if remote {
            self.remote.insert(addr);
        } else {
            self.remote.remove(&addr);
        }
    }

    /// Whether `addr` is marked as behind another host.
    pub fn is_remote(&self, addr: Ipv4Address) -> bool {
        self.remote.contains(&addr)
    }

    /// The target of the published `proto` port `host_port`, if any.
    pub fn published(&self, proto: Transport, host_port: u16) -> Option<Endpoint> {
        self.publish.get(&(proto, host_port)).map(|r| r.target())
    }

    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// Changes the conntrack timeouts all at once; live flows keep their last
    /// activity time and are judged by the new timeouts from the next packet on.
    pub fn set_timeouts(&mut self, timeouts: conntrack::Timeouts) {
        self.config.conntrack.timeouts = timeouts;
        self.ct.set_timeouts(timeouts);
    }

    /// Publishes a port; refused (and nothing changed) when invalid, reserved or
    /// already published.
    pub fn add_publish(&mut self, rule: PublishRule) -> Result<(), PublishError> {
        validate_publish(&rule, self.publish.values(), &self.config.reserved_ports)?;
        self.publish.insert((rule.proto, rule.host_port), rule);
        Ok(())
    }

    /// Unpublishes a port. Flows already open keep their translation until they
    /// end; `remove_flows` cuts them at once.
    pub fn remove_publish(&mut self, proto: Transport, host_port: u16) -> Option<PublishRule> {
        self.publish.remove(&(proto, host_port))
    }

    pub fn publish_rules(&self) -> impl Iterator<Item = &PublishRule> {
        self.publish.values()
    }

    /// The load balancer (services, backends, health) behind service VIPs.
    pub fn lb(&self) -> &LoadBalancer {
        &self.lb
    }

    pub fn lb_mut(&mut self) -> &mut LoadBalancer {
        &mut self.lb
    }

    /// Removes a service's backend and cuts the flows pinned to it (a drained
    /// or unhealthy backend keeps its flows; a removed one cannot serve them).
    pub fn remove_backend(&mut self, service: &str, backend: Endpoint) -> Result<usize, LbError> {
        let tag = self.lb.remove_backend(service, backend)?;
        Ok(self.remove_flows(|f| f.tag() == tag && f.reply().src == backend))
    }

    /// Removes a service and cuts its flows.
    pub fn remove_service(&mut self, name: &str) -> Result<usize, LbError> {
        let tag = self.lb.remove_service(name)?;
        Ok(self.remove_flows(|f| f.tag() == tag))
    }

    /// Tracked flows for the `flows` command.
    pub fn flows(&self, filter: &FlowFilter, limit: usize, now: Instant) -> Vec<FlowInfo> {
        self.ct.flows(filter, limit, now)
    }

    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    /// Removes the flows `remove` selects (e.g. those of a removed backend),
    /// releasing their SNAT mappings.
    pub fn remove_flows(&mut self, remove: impl FnMut(&Flow) -> bool) -> usize {
        let maps = &mut self.maps;
        self.ct
            .remove_where(remove, &mut |f: &Flow| maps.release_flow(f))
    }

    /// Counters for `status`.
    pub fn stats(&self) -> NatStats {
        NatStats {
            table_size: self.ct.len() as u64,
            snat_mappings: self.maps.len() as u64,
            conntrack: *self.ct.stats(),
            ..self.stats
        }
    }

    /// Periodic work: sweeps up to `budget` expired flows. Returns the next time
    /// a flow expires, for the poll loop's wake-up.
    pub fn poll(&mut self, now: Instant, budget: usize) -> Option<Instant> {
        let maps = &mut self.maps;
        self.ct
            .expire(now, budget, &mut |f: &Flow| maps.release_flow(f));
        self.ct.next_expiry()
    }

    fn is_uplink(&self, a: Ipv4Address) -> bool {
        self.config.uplink.contains(&a)
    }

    fn in_grid(&self, a: Ipv4Address) -> bool {
        self.config.grid.iter().any(|c| c.contains_addr(&a))
    }

    /// Inside addresses are reached over the container side, all else over the uplink.
    fn side_of(&self, a: Ipv4Address) -> NicId {
        if self.in_grid(a) {
            NicId::Link
        } else {
            NicId::Uplink
        }
    }

    /// Outside the grid and not one of ours: leaving through masquerade.
    fn is_external(&self, a: Ipv4Address) -> bool {
        !self.in_grid(a) && !self.is_uplink(a) && a != self.config.node
    }

    fn drop(&mut self, r: DropReason) -> Verdict {
        self.stats.drops.count(r);
        Verdict::Drop(r)
    }

    /// Runs one Ethernet frame received on `from` through conntrack, NAT and
    /// service selection; rewrites it in place when translated.
    pub fn process(&mut self, frame: &mut [u8], from: NicId, now: Instant) -> Verdict {
        let p = match parse(frame) {
            Parse::NotIpv4 => {
                self.stats.passed += 1;
                return Verdict::Pass;
            }
            Parse::Bad(r) => return self.drop(r),
            Parse::Opaque { dst, fragment } => {
                // Only what would have to be translated is refused.
                let ours = from == NicId::Link && self.is_external(dst) || self.lb.is_vip(dst);
                if ours {
                    let r = if fragment {
                        DropReason::Fragment
                    } else {
                        DropReason::Unsupported
                    };
                    return self.drop(r);
                }
                self.stats.passed += 1;
                return Verdict::Pass;
            }
            Parse::Ok(p) => p,
        };
        if p.kind == Kind::IcmpError {
            return self.icmp_error(frame, &p, now);
        }
        let tcp = match p.kind {
            Kind::Tcp(flags) => match TcpEvent::classify(flags) {
                Some(ev) => Some(ev),
                None => {
                    self.ct.count_tcp_invalid();
                    return self.drop(DropReason::TcpInvalid);
                }
            },
            _ => None,
        };
        let found = self
            .ct
            .lookup(&p.tuple, now)
            .filter(|&(_, dir)| echo_direction_fits(p.kind, dir));
        // A SYN reusing the tuple of a finished service connection is a new
        // connection: it gets a new choice (so a drained or re-weighted backend gets
        // no new connection through an old tuple), as IPVS's `conn_reuse_mode`.
        let found = match found {
            Some((id, Direction::Original)) if tcp == Some(TcpEvent::Syn) => {
                let reopen = self.ct.get(id).is_some_and(|f| {
                    f.tag() != 0
                        && matches!(
                            f.state(),
                            FlowState::Tcp(TcpState::TimeWait | TcpState::Closed)
                        )
                });
                if reopen {
                    let maps = &mut self.maps;
                    self.ct.remove(id, &mut |f: &Flow| maps.release_flow(f));
                    None
                } else {
                    found
                }
            }
            _ => found,
        };
        let (id, dir) = match found {
            Some(hit) => hit,
            None => match self.open(&p, tcp, from, now) {
                Ok(id) => (id, Direction::Original),
                Err(v) => return v,
            },
        };
        self.ct.update(id, dir, tcp, now);
        let Some(flow) = self.ct.get(id) else {
            return self.drop(DropReason::Malformed);
        };
        let out = flow.tuple(dir.opposite()).reversed();
        rewrite(&mut frame[p.ip..p.end], p.ihl, p.tuple.proto, &out);
        self.stats.translated += 1;
        Verdict::Forward {
            to: self.side_of(out.dst.addr),
        }
    }

    /// Whether [`Nat::process`] would translate this frame and forward it, found
    /// without changing anything: no flow opened or refreshed, no port taken, no
    /// counter moved. The router asks it for a packet whose TTL runs out here, to
    /// answer with ICMP time exceeded (RFC 1812 §5.3.1) instead of opening a flow
    /// for a packet that is never sent. ICMP errors are never answered (RFC 1812
    /// §4.3.2.7): false.
    pub fn would_forward(&self, frame: &[u8], from: NicId, now: Instant) -> bool {
        let Parse::Ok(p) = parse(frame) else {
            return false;
        };
        let tcp = match p.kind {
            Kind::IcmpError => return false,
            Kind::Tcp(flags) => match TcpEvent::classify(flags) {
                Some(ev) => Some(ev),
                None => return false,
            },
            _ => None,
        };
        if self
            .ct
            .lookup(&p.tuple, now)
            .is_some_and(|(_, dir)| echo_direction_fits(p.kind, dir))
        {
            return true;
        }
        opens_flow(p.kind, tcp) && matches!(self.decide(&p.tuple, from), Decision::Open { .. })
    }

    /// Decides and inserts a new flow for a packet that matched none.
    fn open(
        &mut self,
        p: &Parsed,
        tcp: Option<TcpEvent>,
        from: NicId,
        now: Instant,
    ) -> Result<FlowId, Verdict> {
        let decision = self.decide(&p.tuple, from);
        let (mut reply, snat, kind, tag) = match decision {
            Decision::Pass => {
                self.stats.passed += 1;
                return Err(Verdict::Pass);
            }
            Decision::Drop(r) => return Err(self.drop(r)),
            Decision::Open {
                reply,
                snat,
                kind,
                tag,
            } => (reply, snat, kind, tag),
        };
        if !opens_flow(p.kind, tcp) {
            return Err(self.drop(DropReason::NoFlow));
        }
        let orig = p.tuple;
        if let Some(addr) = snat {
            let publish = &self.publish;
            let proto = orig.proto;
            let is_uplink = self.config.uplink.contains(&addr);
            // A published host port is never handed out as a SNAT port.
            let taken = |port: u16| {
                is_uplink
                    && proto
                        .transport()
                        .is_some_and(|tr| publish.contains_key(&(tr, port)))
            };
            let Some(port) = self.maps.acquire(addr, proto, orig.src, taken) else {
                return Err(self.drop(DropReason::PortsExhausted));
            };
            reply.dst = Endpoint::new(addr, port);
            if proto == Proto::Icmp {
                // The echo identifier is one field: both "ports" carry it.
                reply.src.port = port;
            }
        }
        let maps = &mut self.maps;
        let inserted = self
            .ct
            .insert(orig, reply, now, &mut |f: &Flow| maps.release_flow(f));
        match inserted {
            Ok(id) => {
                self.ct.set_tag(id, tag);
                let c = match kind {
                    FlowKind::Dnat => &mut self.stats.dnat_flows,
                    FlowKind::Snat => &mut self.stats.snat_flows,
                    FlowKind::Hairpin => &mut self.stats.hairpin_flows,
                    FlowKind::Service => &mut self.stats.service_flows,
                };
                *c += 1;
                Ok(id)
            }
            Err(e) => {
                if let Some(addr) = snat {
                    self.maps.release(addr, orig.proto, orig.src);
                }
                Err(self.drop(match e {
                    InsertError::Full => DropReason::TableFull,
                    InsertError::Clash => DropReason::TupleClash,
                }))
            }
        }
    }

    /// Where a packet of a new flow goes, before any port is taken.
    fn decide(&self, t: &FlowTuple, from: NicId) -> Decision {
        let published = t
            .proto
            .transport()
            .filter(|_| self.is_uplink(t.dst.addr))
            .and_then(|tr| self.publish.get(&(tr, t.dst.port)))
            .map(|r| r.target());
        let node = self.config.node;
        let ours = |a: Ipv4Address| a == node || self.is_uplink(a);
        match from {
            NicId::Uplink => {
                let Some(target) = published else {
                    return Decision::Pass;
                };
                if self.in_grid(t.src.addr) || ours(t.src.addr) {
                    return Decision::Drop(DropReason::Spoofed);
                }
                if self.lb.is_vip(target.addr) {
                    // Routing mesh: the backend may be on any host, so replies must
                    // come back here: source-translate to the node address.
                    return self.service(t, target, Some(node));
                }
                // A container behind another host answers through its own node
                // unless the flow comes from this one's address.
                let snat = self.remote.contains(&target.addr).then_some(node);
                Decision::Open {
                    reply: FlowTuple::new(t.proto, target, t.src),
                    snat,
                    kind: FlowKind::Dnat,
                    tag: 0,
                }
            }
            NicId::Link => {
                let translated = published.is_some()
                    || self.lb.is_vip(t.dst.addr)
                    || self.is_external(t.dst.addr);
                if translated && (!self.in_grid(t.src.addr) || ours(t.src.addr)) {
                    return Decision::Drop(DropReason::Spoofed);
                }
                if let Some(target) = published {
                    // Hairpin: the target would answer the container directly,
                    // so the node address stands in for it.
                    if self.lb.is_vip(target.addr) {
                        return self.service(t, target, Some(node));
                    }
                    return Decision::Open {
                        reply: FlowTuple::new(t.proto, target, t.src),
                        snat: Some(node),
                        kind: FlowKind::Hairpin,
                        tag: 0,
                    };
                }
                if self.lb.is_vip(t.dst.addr) {
                    return self.service(t, t.dst, Some(node));
                }
                if self.is_external(t.dst.addr) {
                    let Some(&masq) = self.config.uplink.first() else {
                        return Decision::Drop(DropReason::Unsupported);
                    };
                    return Decision::Open {
                        reply: t.reversed(),
                        snat: Some(masq),
                        kind: FlowKind::Snat,
                        tag: 0,
                    };
                }
                Decision::Pass
            }
        }
    }

    fn service(&self, t: &FlowTuple, vip: Endpoint, snat: Option<Ipv4Address>) -> Decision {
        match self.lb.pick(t.proto, vip, t) {
            Pick::NotAService => Decision::Pass,
            Pick::NoBackend => Decision::Drop(DropReason::NoBackend),
            Pick::Backend { backend, tag } => Decision::Open {
                reply: FlowTuple::new(t.proto, backend, t.src),
                snat,
                kind: FlowKind::Service,
                tag,
            },
        }
    }

    /// Translates an ICMP error that quotes a packet of a translated flow back
    /// to the endpoint that sent it (RFC 5508 §4.2, RFC 5382 REQ-9): outer
    /// addresses, the quoted header and every checksum. Errors do not refresh
    /// the flow.
    fn icmp_error(&mut self, frame: &mut [u8], p: &Parsed, now: Instant) -> Verdict {
        let icmp_at = p.ip + p.ihl;
        let quoted_at = icmp_at + ICMP_HEADER;
        let pkt_end = p.end;
        // The quoted IPv4 header and at least 8 bytes of its payload (RFC 792).
        let Some(q) = frame.get(quoted_at..pkt_end) else {
            return self.drop(DropReason::Malformed);
        };
        if q.len() < 20 || q[0] >> 4 != 4 {
            return self.drop(DropReason::Malformed);
        }
        let q_ihl = ((q[0] & 0x0f) as usize) * 4;
        if q_ihl < 20 || q.len() < q_ihl + 8 {
            return self.drop(DropReason::Malformed);
        }
        let frag = read16(q, 6) & 0x1fff != 0;
        let proto = match q[9] {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 => Proto::Icmp,
            _ => {
                self.stats.passed += 1;
                return Verdict::Pass;
            }
        };
        if frag {
            self.stats.passed += 1;
            return Verdict::Pass;
        }
        let addr = |at: usize| Ipv4Address::new(q[at], q[at + 1], q[at + 2], q[at + 3]);
        let l4 = &q[q_ihl..];
        let (sport, dport) = match proto {
            Proto::Icmp => {
                let id = read16(l4, ICMP_IDENT);
                (id, id)
            }
            _ => (read16(l4, 0), read16(l4, 2)),
        };
        let quoted = FlowTuple::new(
            proto,
            Endpoint::new(addr(IP_SRC), sport),
            Endpoint::new(addr(IP_DST), dport),
        );
        // The quoted packet left us translated; its reverse is the tuple the
        // flow expects in the direction the error travels.
        let Some((id, dir)) = self.ct.lookup(&quoted.reversed(), now) else {
            self.stats.passed += 1;
            return Verdict::Pass;
        };
        let Some(flow) = self.ct.get(id) else {
            return self.drop(DropReason::Malformed);
        };
        // What the sender of the quoted packet sent, before translation.
        let sent = *flow.tuple(dir.opposite());
        let outer_src = p.tuple.src.addr;
        let outer_dst = p.tuple.dst.addr;
        let new_dst = if outer_dst == quoted.src.addr {
            sent.src.addr
        } else {
            outer_dst
        };
        let new_src = if outer_src == quoted.dst.addr {
            sent.dst.addr
        } else {
            outer_src
        };
        // Quoted packet first: its bytes are covered by the ICMP checksum.
        let quoted_end = pkt_end;
        let inner = rewrite(&mut frame[quoted_at..quoted_end], q_ihl, proto, &sent);
        let icmp = &mut frame[icmp_at..pkt_end];
        let old = read16(icmp, ICMP_CHECKSUM);
        let mut ignored = Delta::ZERO;
        put16(icmp, ICMP_CHECKSUM, inner.apply(old), &mut ignored);
        // Outer header: addresses and header checksum (ICMP has no pseudo-header).
        let ip = &mut frame[p.ip..p.ip + p.ihl];
        let mut addrs = Delta::ZERO;
        put_addr(ip, IP_SRC, new_src, &mut addrs);
        put_addr(ip, IP_DST, new_dst, &mut addrs);
        let old = read16(ip, IP_CHECKSUM);
        put16(ip, IP_CHECKSUM, addrs.apply(old), &mut ignored);
        self.stats.icmp_errors_translated += 1;
        Verdict::Forward {
            to: self.side_of(new_dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::lb::{BackendConfig, HealthSpec, Mode, ServiceConfig};
    use crate::table::conntrack::{FlowState, TcpState};
    use crate::table::health::Health;
    use smoltcp::time::Duration;
    use smoltcp::wire::IpAddress;

    const UPLINK: Ipv4Address = Ipv4Address::new(192, 0, 2, 10);
    const NODE: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
    const C1: Ipv4Address = Ipv4Address::new(10, 81, 1, 5);
    const C2: Ipv4Address = Ipv4Address::new(10, 81, 1, 6);
    const CLIENT: Ipv4Address = Ipv4Address::new(198, 51, 100, 7);
    const SERVER: Ipv4Address = Ipv4Address::new(203, 0, 113, 9);
    const ROUTER: Ipv4Address = Ipv4Address::new(198, 18, 0, 1);
    const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);

    #[derive(Clone, Copy)]
    enum L4<'a> {
        Tcp(u16, u16, TcpFlags, &'a [u8]),
        Udp(u16, u16, &'a [u8]),
        EchoRequest(u16),
        EchoReply(u16),
        /// ICMP type, code and the quoted packet (an IPv4 packet, no Ethernet).
        Error(u8, u8, &'a [u8]),
    }

    const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
    };
    const SYNACK: TcpFlags = TcpFlags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
    };
    const ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
    };

    /// An IPv4 packet with every checksum filled in by smoltcp.
    fn ip_packet(src: Ipv4Address, dst: Ipv4Address, l4: L4) -> Vec<u8> {
        let (proto, body): (u8, Vec<u8>) = match l4 {
            L4::Tcp(sp, dp, f, payload) => {
                let mut b = vec![0u8; 20 + payload.len()];
                b[0..2].copy_from_slice(&sp.to_be_bytes());
                b[2..4].copy_from_slice(&dp.to_be_bytes());
                b[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
                b[12] = 5 << 4;
                b[13] =
                    (f.fin as u8) | (f.syn as u8) << 1 | (f.rst as u8) << 2 | (f.ack as u8) << 4;
                b[14..16].copy_from_slice(&64240u16.to_be_bytes());
                b[20..].copy_from_slice(payload);
                TcpPacket::new_unchecked(&mut b[..]).fill_checksum(&src.into(), &dst.into());
                (6, b)
            }
            L4::Udp(sp, dp, payload) => {
                let mut b = vec![0u8; 8 + payload.len()];
                b[0..2].copy_from_slice(&sp.to_be_bytes());
                b[2..4].copy_from_slice(&dp.to_be_bytes());
                let len = b.len() as u16;
                b[4..6].copy_from_slice(&len.to_be_bytes());
                b[8..].copy_from_slice(payload);
                UdpPacket::new_unchecked(&mut b[..]).fill_checksum(&src.into(), &dst.into());
                (17, b)
            }
            L4::EchoRequest(id) | L4::EchoReply(id) => {
                let mut b = vec![0u8; 8 + 13];
                b[0] = if matches!(l4, L4::EchoRequest(_)) {
                    8
                } else {
                    0
                };
                b[4..6].copy_from_slice(&id.to_be_bytes());
                b[6..8].copy_from_slice(&7u16.to_be_bytes());
                b[8..].copy_from_slice(b"weft ping 123");
                Icmpv4Packet::new_unchecked(&mut b[..]).fill_checksum();
                (1, b)
            }
            L4::Error(ty, code, quoted) => {
                let mut b = vec![0u8; 8 + quoted.len()];
                b[0] = ty;
                b[1] = code;
                if ty == 3 && code == 4 {
                    b[6..8].copy_from_slice(&1400u16.to_be_bytes());
                }
                b[8..].copy_from_slice(quoted);
                Icmpv4Packet::new_unchecked(&mut b[..]).fill_checksum();
                (1, b)
            }
        };
        let mut p = vec![0u8; 20 + body.len()];
        p[0] = 0x45;
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p[20..].copy_from_slice(&body);
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        p
    }

    fn frame(src: Ipv4Address, dst: Ipv4Address, l4: L4) -> Vec<u8> {
        let mut f = vec![0u8; ETH_LEN];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&ip_packet(src, dst, l4));
        f
    }

    /// Recomputes every checksum of an IPv4 frame from scratch (including a
    /// quoted packet inside an ICMP error).
    fn recomputed(frame: &[u8]) -> Vec<u8> {
        let mut f = frame.to_vec();
        recompute_ip(&mut f[ETH_LEN..]);
        f
    }

    fn recompute_ip(p: &mut [u8]) {
        let ihl = ((p[0] & 0x0f) * 4) as usize;
        let total = read16(p, 2) as usize;
        let src: IpAddress = Ipv4Address::from(<[u8; 4]>::try_from(&p[12..16]).unwrap()).into();
        let dst: IpAddress = Ipv4Address::from(<[u8; 4]>::try_from(&p[16..20]).unwrap()).into();
        let proto = p[9];
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        let l4 = &mut p[ihl..total];
        match proto {
            6 => TcpPacket::new_unchecked(l4).fill_checksum(&src, &dst),
            17 if read16(l4, 6) != 0 => UdpPacket::new_unchecked(l4).fill_checksum(&src, &dst),
            1 => {
                if matches!(l4[0], 3 | 11 | 12) {
                    let quoted = &mut l4[8..];
                    // Only a whole quoted packet can be recomputed.
                    if quoted.len() >= read16(quoted, 2) as usize {
                        recompute_ip(quoted);
                    }
                }
                Icmpv4Packet::new_unchecked(l4).fill_checksum()
            }
            _ => {}
        }
    }

    fn assert_checksums_as_recomputed(f: &[u8]) {
        assert_eq!(
            f,
            &recomputed(f)[..],
            "incremental checksums differ from a full recompute"
        );
    }

    struct Seen {
        src: Endpoint,
        dst: Endpoint,
    }

    fn seen(f: &[u8]) -> Seen {
        let Parse::Ok(p) = parse(f) else {
            panic!("not a parseable frame")
        };
        Seen {
            src: p.tuple.src,
            dst: p.tuple.dst,
        }
    }

    fn ep(a: Ipv4Address, p: u16) -> Endpoint {
        Endpoint::new(a, p)
    }

    fn t(s: u64) -> Instant {
        Instant::from_secs(s as i64)
    }

    fn config() -> NatConfig {
        NatConfig::new(
            UPLINK,
            NODE,
            Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 16),
        )
    }

    fn nat() -> Nat {
        let mut nat = Nat::new(config(), 42);
        nat.add_publish(PublishRule {
            proto: Transport::Tcp,
            host_port: 8080,
            container_address: C1,
            container_port: 80,
        })
        .unwrap();
        nat.add_publish(PublishRule {
            proto: Transport::Udp,
            host_port: 5353,
            container_address: C1,
            container_port: 53,
        })
        .unwrap();
        nat
    }

    fn run(nat: &mut Nat, f: &mut [u8], from: NicId, now: Instant) -> Verdict {
        let v = nat.process(f, from, now);
        if matches!(v, Verdict::Forward { .. }) {
            assert_checksums_as_recomputed(f);
        }
        v
    }

    const TO_CONTAINER: Verdict = Verdict::Forward { to: NicId::Link };
    const TO_UPLINK: Verdict = Verdict::Forward { to: NicId::Uplink };

    #[test]
    fn published_port_reaches_the_container_with_the_clients_address() {
        let mut nat = nat();
        let mut syn = frame(CLIENT, UPLINK, L4::Tcp(40000, 8080, SYN, b""));
        assert_eq!(run(&mut nat, &mut syn, NicId::Uplink, t(0)), TO_CONTAINER);
        let s = seen(&syn);
        assert_eq!((s.src, s.dst), (ep(CLIENT, 40000), ep(C1, 80)));

        let mut synack = frame(C1, CLIENT, L4::Tcp(80, 40000, SYNACK, b""));
        assert_eq!(run(&mut nat, &mut synack, NicId::Link, t(0)), TO_UPLINK);
        let s = seen(&synack);
        assert_eq!((s.src, s.dst), (ep(UPLINK, 8080), ep(CLIENT, 40000)));

        let mut ack = frame(
            CLIENT,
            UPLINK,
            L4::Tcp(40000, 8080, ACK, b"GET / HTTP/1.0\r\n\r\n"),
        );
        assert_eq!(run(&mut nat, &mut ack, NicId::Uplink, t(1)), TO_CONTAINER);
        let flows = nat.flows(&FlowFilter::default(), 10, t(1));
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].state, FlowState::Tcp(TcpState::Established));
        assert_eq!(nat.stats().dnat_flows, 1);

        // UDP publish works both ways too.
        let mut q = frame(CLIENT, UPLINK, L4::Udp(5000, 5353, b"query"));
        assert_eq!(run(&mut nat, &mut q, NicId::Uplink, t(2)), TO_CONTAINER);
        assert_eq!(seen(&q).dst, ep(C1, 53));
        let mut a = frame(C1, CLIENT, L4::Udp(53, 5000, b"answer!"));
        assert_eq!(run(&mut nat, &mut a, NicId::Link, t(2)), TO_UPLINK);
        assert_eq!(seen(&a).src, ep(UPLINK, 5353));
    }

    #[test]
    fn unpublished_and_non_ip_traffic_passes_untouched() {
        let mut nat = nat();
        let mut other = frame(CLIENT, UPLINK, L4::Tcp(40000, 9999, SYN, b""));
        let before = other.clone();
        assert_eq!(nat.process(&mut other, NicId::Uplink, t(0)), Verdict::Pass);
        assert_eq!(other, before);
        let mut arp = frame(CLIENT, UPLINK, L4::Udp(1, 2, b""));
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(nat.process(&mut arp, NicId::Uplink, t(0)), Verdict::Pass);
        // Intra-grid traffic is the bridge's business.
        let mut east_west = frame(C1, C2, L4::Udp(1000, 2000, b"x"));
        assert_eq!(
            nat.process(&mut east_west, NicId::Link, t(0)),
            Verdict::Pass
        );
        // A TCP segment that cannot open a flow to a published port.
        let mut ack = frame(CLIENT, UPLINK, L4::Tcp(40001, 8080, ACK, b""));
        assert_eq!(
            nat.process(&mut ack, NicId::Uplink, t(0)),
            Verdict::Drop(DropReason::NoFlow)
        );
        let mut bad = frame(
            CLIENT,
            UPLINK,
            L4::Tcp(
                40001,
                8080,
                TcpFlags {
                    syn: true,
                    fin: true,
                    ..SYN
                },
                b"",
            ),
        );
        assert_eq!(
            nat.process(&mut bad, NicId::Uplink, t(0)),
            Verdict::Drop(DropReason::TcpInvalid)
        );
        let s = nat.stats();
        assert_eq!((s.drops.no_flow, s.drops.tcp_invalid, s.passed), (1, 1, 3));
    }

    #[test]
    fn publish_rules_refuse_reserved_and_duplicate_ports_and_leave_state_unchanged() {
        let mut cfg = config();
        cfg.reserved_ports = vec![7000, 7001];
        let mut nat = Nat::new(cfg, 1);
        let rule = |proto, host_port| PublishRule {
            proto,
            host_port,
            container_address: C1,
            container_port: 80,
        };
        for port in [53, 4789, 6783, 6784, 7000, 7001] {
            for proto in [Transport::Tcp, Transport::Udp] {
                assert_eq!(
                    nat.add_publish(rule(proto, port)),
                    Err(PublishError::Reserved { proto, port })
                );
            }
        }
        nat.add_publish(rule(Transport::Tcp, 80)).unwrap();
        assert_eq!(
            nat.add_publish(PublishRule {
                container_port: 81,
                ..rule(Transport::Tcp, 80)
            }),
            Err(PublishError::Duplicate {
                proto: Transport::Tcp,
                host_port: 80
            })
        );
        // The same port for the other protocol is another rule.
        nat.add_publish(rule(Transport::Udp, 80)).unwrap();
        assert_eq!(nat.publish_rules().count(), 2);
        assert_eq!(nat.publish_rules().next().unwrap().container_port, 80);
        assert_eq!(
            nat.add_publish(rule(Transport::Tcp, 0)),
            Err(PublishError::HostPortZero)
        );
        assert_eq!(
            nat.add_publish(PublishRule {
                container_address: Ipv4Address::UNSPECIFIED,
                ..rule(Transport::Tcp, 81)
            }),
            Err(PublishError::ContainerAddress(Ipv4Address::UNSPECIFIED))
        );
        assert!(nat.remove_publish(Transport::Udp, 80).is_some());
        assert_eq!(nat.publish_rules().count(), 1);

        let list = [
            rule(Transport::Tcp, 8080),
            rule(Transport::Udp, 8080),
            rule(Transport::Tcp, 8080),
        ];
        let e = validate_publish_list(&list, &[]).unwrap_err();
        assert_eq!(e.field, "publish[2].host_port");
        assert_eq!(
            alloc::format!("{e}"),
            "publish[2].host_port: tcp port 8080 is already published"
        );
        let e = validate_publish_list(&[rule(Transport::Udp, 53)], &[]).unwrap_err();
        assert_eq!(
            alloc::format!("{e}"),
            "publish[0].host_port: udp port 53 is reserved for the appliance"
        );
    }

    #[test]
    fn publish_config_parses_with_unknown_fields_refused() {
        let ok: PublishRule = serde_json::from_str(
            r#"{"proto":"udp","host_port":5353,"container_address":"10.81.1.5","container_port":53}"#,
        )
        .unwrap();
        assert_eq!(ok.target(), ep(C1, 53));
        assert!(serde_json::from_str::<PublishRule>(
            r#"{"proto":"udp","host_port":5353,"container_address":"10.81.1.5","container_port":53,"x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<PublishRule>(
            r#"{"proto":"sctp","host_port":5353,"container_address":"10.81.1.5","container_port":53}"#
        )
        .is_err());
    }

    fn masquerade(
        nat: &mut Nat,
        inside: Endpoint,
        server: Endpoint,
        now: Instant,
    ) -> Result<Endpoint, Verdict> {
        let mut f = frame(
            inside.addr,
            server.addr,
            L4::Tcp(inside.port, server.port, SYN, b""),
        );
        match run(nat, &mut f, NicId::Link, now) {
            TO_UPLINK => {}
            v => return Err(v),
        }
        let s = seen(&f);
        assert_eq!(s.dst, server);
        Ok(s.src)
    }

    #[test]
    fn masquerade_is_endpoint_independent_and_replies_come_back() {
        let mut nat = nat();
        let out = masquerade(&mut nat, ep(C1, 5000), ep(SERVER, 443), t(0)).unwrap();
        assert_eq!(out.addr, UPLINK);
        assert!((32768..=60999).contains(&out.port));
        // Same inside endpoint, other destinations: the same external port (REQ-1).
        let out2 = masquerade(&mut nat, ep(C1, 5000), ep(SERVER, 80), t(0)).unwrap();
        assert_eq!(out2, out);
        // Another inside endpoint gets another port.
        let other = masquerade(&mut nat, ep(C2, 5000), ep(SERVER, 443), t(0)).unwrap();
        assert_ne!(other.port, out.port);

        let mut reply = frame(SERVER, UPLINK, L4::Tcp(443, out.port, SYNACK, b""));
        assert_eq!(run(&mut nat, &mut reply, NicId::Uplink, t(1)), TO_CONTAINER);
        let s = seen(&reply);
        assert_eq!((s.src, s.dst), (ep(SERVER, 443), ep(C1, 5000)));
        // Inside ports in the range are kept when free.
        let kept = masquerade(&mut nat, ep(C2, 40000), ep(SERVER, 443), t(1)).unwrap();
        assert_eq!(kept, ep(UPLINK, 40000));
        // Filtering is address-and-port dependent: a stranger's packet to the
        // mapped port is not translated.
        let mut stranger = frame(CLIENT, UPLINK, L4::Tcp(443, out.port, SYN, b""));
        assert_eq!(
            nat.process(&mut stranger, NicId::Uplink, t(1)),
            Verdict::Pass
        );
        assert_eq!(nat.stats().snat_mappings, 3);
    }

    #[test]
    fn many_parallel_connections_get_distinct_ports() {
        let mut nat = nat();
        let mut ports = BTreeMap::new();
        for i in 0..2000u16 {
            let inside = ep(
                Ipv4Address::new(10, 81, 2 + (i / 250) as u8, (i % 250) as u8 + 1),
                50000,
            );
            let out = masquerade(&mut nat, inside, ep(SERVER, 443), t(0)).unwrap();
            assert!((32768..=60999).contains(&out.port));
            assert!(
                ports.insert(out.port, inside).is_none(),
                "port {} reused",
                out.port
            );
        }
    }

    #[test]
    fn port_exhaustion_is_counted_and_live_mappings_are_never_reused() {
        let mut cfg = config();
        cfg.snat_ports = (40000, 40003);
        let mut nat = Nat::new(cfg, 5);
        let mut held = vec![];
        for i in 0..4u8 {
            let inside = ep(Ipv4Address::new(10, 81, 3, i + 1), 1000);
            held.push((
                inside,
                masquerade(&mut nat, inside, ep(SERVER, 443), t(0)).unwrap(),
            ));
        }
        let late = ep(Ipv4Address::new(10, 81, 3, 99), 1000);
        assert_eq!(
            masquerade(&mut nat, late, ep(SERVER, 443), t(1)),
            Err(Verdict::Drop(DropReason::PortsExhausted))
        );
        assert_eq!(nat.stats().drops.ports_exhausted, 1);
        // Keep flow 0 alive, let the others (SYN_SENT, 4 min) expire.
        let mut syn = frame(held[0].0.addr, SERVER, L4::Tcp(1000, 443, SYN, b""));
        assert_eq!(run(&mut nat, &mut syn, NicId::Link, t(200)), TO_UPLINK);
        nat.poll(t(241), usize::MAX);
        assert_eq!(nat.stats().snat_mappings, 1);
        let got = masquerade(&mut nat, late, ep(SERVER, 443), t(241)).unwrap();
        assert_ne!(got, held[0].1, "a live mapping's port was handed out again");
        // The survivor keeps its port for new flows.
        assert_eq!(
            masquerade(&mut nat, held[0].0, ep(SERVER, 80), t(242)).unwrap(),
            held[0].1
        );
    }

    #[test]
    fn hairpin_reaches_the_published_container_through_the_node_address() {
        let mut nat = nat();
        let mut syn = frame(C2, UPLINK, L4::Tcp(33000, 8080, SYN, b""));
        assert_eq!(run(&mut nat, &mut syn, NicId::Link, t(0)), TO_CONTAINER);
        let s = seen(&syn);
        assert_eq!(s.dst, ep(C1, 80));
        assert_eq!(s.src.addr, NODE);
        let mut synack = frame(C1, NODE, L4::Tcp(80, s.src.port, SYNACK, b""));
        assert_eq!(run(&mut nat, &mut synack, NicId::Link, t(0)), TO_CONTAINER);
        let r = seen(&synack);
        assert_eq!((r.src, r.dst), (ep(UPLINK, 8080), ep(C2, 33000)));
        assert_eq!(nat.stats().hairpin_flows, 1);
    }

    #[test]
    fn icmp_echo_is_masqueraded_by_identifier() {
        let mut nat = nat();
        let mut req = frame(C1, SERVER, L4::EchoRequest(77));
        assert_eq!(run(&mut nat, &mut req, NicId::Link, t(0)), TO_UPLINK);
        let Parse::Ok(p) = parse(&req) else { panic!() };
        assert_eq!(p.tuple.src.addr, UPLINK);
        let id = p.tuple.src.port;
        assert!((32768..=60999).contains(&id));
        let mut rep = frame(SERVER, UPLINK, L4::EchoReply(id));
        assert_eq!(run(&mut nat, &mut rep, NicId::Uplink, t(1)), TO_CONTAINER);
        let Parse::Ok(p) = parse(&rep) else { panic!() };
        assert_eq!((p.tuple.dst, p.kind), (ep(C1, 77), Kind::EchoReply));
        // The server pinging the host with that identifier is not a reply.
        let mut ping = frame(SERVER, UPLINK, L4::EchoRequest(id));
        assert_eq!(nat.process(&mut ping, NicId::Uplink, t(1)), Verdict::Pass);
    }

    #[test]
    fn icmp_errors_are_translated_back_to_the_inside_flow() {
        let mut nat = nat();
        // A masqueraded UDP flow; a router on the way reports TTL exceeded.
        let mut out = frame(C1, SERVER, L4::Udp(6000, 53, b"question"));
        assert_eq!(run(&mut nat, &mut out, NicId::Link, t(0)), TO_UPLINK);
        let sent = out[ETH_LEN..].to_vec();
        let mut err = frame(ROUTER, UPLINK, L4::Error(11, 0, &sent));
        assert_eq!(run(&mut nat, &mut err, NicId::Uplink, t(1)), TO_CONTAINER);
        let outer = Ipv4Packet::new_checked(&err[ETH_LEN..]).unwrap();
        assert_eq!((outer.src_addr(), outer.dst_addr()), (ROUTER, C1));
        let quoted = &err[ETH_LEN + 28..];
        assert_eq!(
            quoted,
            &ip_packet(C1, SERVER, L4::Udp(6000, 53, b"question"))[..]
        );
        assert_eq!(nat.stats().icmp_errors_translated, 1);

        // The published container answers port unreachable to an outside client.
        let mut q = frame(CLIENT, UPLINK, L4::Udp(7000, 5353, b"q"));
        assert_eq!(run(&mut nat, &mut q, NicId::Uplink, t(2)), TO_CONTAINER);
        let delivered = q[ETH_LEN..].to_vec();
        let mut unreach = frame(C1, CLIENT, L4::Error(3, 3, &delivered));
        assert_eq!(run(&mut nat, &mut unreach, NicId::Link, t(2)), TO_UPLINK);
        let outer = Ipv4Packet::new_checked(&unreach[ETH_LEN..]).unwrap();
        assert_eq!((outer.src_addr(), outer.dst_addr()), (UPLINK, CLIENT));
        assert_eq!(
            &unreach[ETH_LEN + 28..],
            &ip_packet(CLIENT, UPLINK, L4::Udp(7000, 5353, b"q"))[..]
        );

        // Fragmentation needed for a TCP flow, quoting only 8 bytes of TCP.
        let ext = masquerade(&mut nat, ep(C2, 6001), ep(SERVER, 443), t(3)).unwrap();
        let full = ip_packet(UPLINK, SERVER, L4::Tcp(ext.port, 443, ACK, b"data"));
        let mut short = full[..28].to_vec();
        short[2..4].copy_from_slice(&(full.len() as u16).to_be_bytes());
        let mut fneed = frame(SERVER, UPLINK, L4::Error(3, 4, &short));
        assert_eq!(nat.process(&mut fneed, NicId::Uplink, t(3)), TO_CONTAINER);
        let icmp = Icmpv4Packet::new_checked(&fneed[ETH_LEN + 20..]).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(read16(&fneed, ETH_LEN + 26), 1400, "MTU untouched");
        let q = &fneed[ETH_LEN + 28..];
        assert_eq!(&q[12..16], &C2.octets());
        assert_eq!(read16(q, 20), 6001);
        assert!(Ipv4Packet::new_unchecked(&q[..20]).verify_checksum());
        let outer = Ipv4Packet::new_checked(&fneed[ETH_LEN..]).unwrap();
        assert_eq!((outer.src_addr(), outer.dst_addr()), (SERVER, C2));

        // A whole quoted TCP segment: its checksum is translated too (`run`
        // compares the frame with a full recompute, quoted packet included).
        let whole = ip_packet(UPLINK, SERVER, L4::Tcp(ext.port, 443, ACK, b"data"));
        let mut ttl = frame(ROUTER, UPLINK, L4::Error(11, 0, &whole));
        assert_eq!(run(&mut nat, &mut ttl, NicId::Uplink, t(3)), TO_CONTAINER);
        assert_eq!(
            &ttl[ETH_LEN + 28..],
            &ip_packet(C2, SERVER, L4::Tcp(6001, 443, ACK, b"data"))[..]
        );

        // An error about nothing we translated is not ours.
        let stray = ip_packet(UPLINK, SERVER, L4::Udp(1, 2, b""));
        let mut e = frame(ROUTER, UPLINK, L4::Error(11, 0, &stray));
        assert_eq!(nat.process(&mut e, NicId::Uplink, t(3)), Verdict::Pass);
    }

    /// Deterministic xorshift for property tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn incremental_checksums_equal_a_full_recompute_on_random_packets() {
        let mut rng = Rng(0x5eed_cafe_f00d_d00d);
        let mut nat = Nat::new(config(), 9);
        for i in 0..3000u32 {
            let inside = Ipv4Address::from(0x0a51_0000 | (rng.next() as u32 & 0xffff));
            let outside = Ipv4Address::from(0xcb00_7100 | (rng.next() as u32 & 0xff));
            let (sp, dp) = (rng.next() as u16 | 1, rng.next() as u16 | 1);
            let len = (rng.next() % 300) as usize;
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let l4 = match i % 3 {
                0 => L4::Tcp(sp, dp, SYN, &payload),
                1 => L4::Udp(sp, dp, &payload),
                _ => L4::EchoRequest(sp),
            };
            let mut f = frame(inside, outside, l4);
            // `run` compares every forwarded frame with a full recompute.
            let v = run(&mut nat, &mut f, NicId::Link, t(0));
            assert!(
                v == TO_UPLINK || v == Verdict::Drop(DropReason::TupleClash),
                "{v:?}"
            );
        }
        assert!(nat.stats().snat_flows > 2900);
    }

    #[test]
    fn a_full_table_refuses_new_connections_and_keeps_established_ones() {
        let mut cfg = config();
        cfg.conntrack.capacity = 3;
        let mut nat = Nat::new(cfg, 3);
        let mut ext = vec![];
        for i in 0..3u16 {
            let inside = ep(C1, 1000 + i);
            let out = masquerade(&mut nat, inside, ep(SERVER, 443), t(0)).unwrap();
            let mut sa = frame(SERVER, UPLINK, L4::Tcp(443, out.port, SYNACK, b""));
            assert_eq!(run(&mut nat, &mut sa, NicId::Uplink, t(0)), TO_CONTAINER);
            let mut a = frame(C1, SERVER, L4::Tcp(1000 + i, 443, ACK, b""));
            assert_eq!(run(&mut nat, &mut a, NicId::Link, t(0)), TO_UPLINK);
            ext.push(out);
        }
        assert_eq!(
            masquerade(&mut nat, ep(C2, 1), ep(SERVER, 443), t(1)),
            Err(Verdict::Drop(DropReason::TableFull))
        );
        assert_eq!(nat.stats().drops.table_full, 1);
        for (i, out) in ext.iter().enumerate() {
            let mut data = frame(SERVER, UPLINK, L4::Tcp(443, out.port, ACK, b"payload"));
            assert_eq!(run(&mut nat, &mut data, NicId::Uplink, t(2)), TO_CONTAINER);
            assert_eq!(seen(&data).dst, ep(C1, 1000 + i as u16));
        }
        // The refused endpoint holds no mapping.
        assert_eq!(nat.stats().snat_mappings, 3);
    }

    #[test]
    fn would_forward_predicts_process_and_changes_nothing() {
        let mut nat = nat();
        let quoted = ip_packet(UPLINK, SERVER, L4::Udp(40000, 53, b"q"));
        let cases: Vec<(NicId, Vec<u8>, bool)> = vec![
            // New flows: published, masquerade, hairpin, echo.
            (
                NicId::Uplink,
                frame(CLIENT, UPLINK, L4::Tcp(1, 8080, SYN, b"")),
                true,
            ),
            (
                NicId::Link,
                frame(C1, SERVER, L4::Udp(6000, 53, b"q")),
                true,
            ),
            (
                NicId::Link,
                frame(C2, UPLINK, L4::Tcp(2, 8080, SYN, b"")),
                true,
            ),
            (NicId::Link, frame(C1, SERVER, L4::EchoRequest(9)), true),
            // The replies of the flows just opened.
            (
                NicId::Link,
                frame(C1, CLIENT, L4::Tcp(80, 1, SYNACK, b"")),
                true,
            ),
            // Not NAT business, cannot open, or an error (never answered).
            (
                NicId::Uplink,
                frame(CLIENT, UPLINK, L4::Tcp(1, 9999, SYN, b"")),
                false,
            ),
            (
                NicId::Uplink,
                frame(CLIENT, UPLINK, L4::Tcp(3, 8080, ACK, b"")),
                false,
            ),
            (NicId::Link, frame(C1, C2, L4::Udp(1, 2, b"x")), false),
            (
                NicId::Uplink,
                frame(SERVER, UPLINK, L4::EchoReply(77)),
                false,
            ),
            (
                NicId::Uplink,
                frame(ROUTER, UPLINK, L4::Error(11, 0, &quoted)),
                false,
            ),
        ];
        for (side, mut f, want) in cases {
            let before = (nat.stats(), nat.flows(&FlowFilter::default(), 100, t(0)));
            assert_eq!(nat.would_forward(&f, side, t(0)), want, "{f:?}");
            assert_eq!(
                (nat.stats(), nat.flows(&FlowFilter::default(), 100, t(0))),
                before
            );
            let v = nat.process(&mut f, side, t(0));
            assert_eq!(matches!(v, Verdict::Forward { .. }), want, "{v:?}");
        }
    }

    #[test]
    fn fragments_and_garbage_that_need_translation_are_dropped() {
        let mut nat = nat();
        let mut frag = frame(C1, SERVER, L4::Udp(1, 2, b"0123456789"));
        frag[ETH_LEN + 6] = 0x20; // MF
        Ipv4Packet::new_unchecked(&mut frag[ETH_LEN..]).fill_checksum();
        assert_eq!(
            nat.process(&mut frag, NicId::Link, t(0)),
            Verdict::Drop(DropReason::Fragment)
        );
        let mut local_frag = frame(C1, C2, L4::Udp(1, 2, b"0123456789"));
        local_frag[ETH_LEN + 6] = 0x20;
        assert_eq!(
            nat.process(&mut local_frag, NicId::Link, t(0)),
            Verdict::Pass
        );
        let mut gre = frame(C1, SERVER, L4::Udp(1, 2, b""));
        gre[ETH_LEN + 9] = 47;
        assert_eq!(
            nat.process(&mut gre, NicId::Link, t(0)),
            Verdict::Drop(DropReason::Unsupported)
        );
        let mut short = frame(C1, SERVER, L4::Tcp(1, 2, SYN, b""));
        short.truncate(ETH_LEN + 30);
        assert_eq!(
            nat.process(&mut short, NicId::Link, t(0)),
            Verdict::Drop(DropReason::Malformed)
        );
        // Sources that cannot be on the side they came from are not translated.
        let mut spoof = frame(SERVER, CLIENT, L4::Udp(1, 2, b""));
        assert_eq!(
            nat.process(&mut spoof, NicId::Link, t(0)),
            Verdict::Drop(DropReason::Spoofed)
        );
        let mut spoof = frame(NODE, UPLINK, L4::Udp(1, 5353, b""));
        assert_eq!(
            nat.process(&mut spoof, NicId::Link, t(0)),
            Verdict::Drop(DropReason::Spoofed)
        );
        let mut spoof = frame(C2, UPLINK, L4::Tcp(1, 8080, SYN, b""));
        assert_eq!(
            nat.process(&mut spoof, NicId::Uplink, t(0)),
            Verdict::Drop(DropReason::Spoofed)
        );
        let s = nat.stats().drops;
        assert_eq!(
            (s.fragment, s.unsupported, s.malformed, s.spoofed),
            (1, 1, 1, 3)
        );
    }

    fn web(backends: &[(Ipv4Address, u32)]) -> ServiceConfig {
        ServiceConfig {
            name: "web".into(),
            vip: Some(VIP),
            proto: Transport::Tcp,
            port: 80,
            mode: Mode::Vip,
            backends: backends
                .iter()
                .map(|&(address, weight)| BackendConfig {
                    address,
                    port: 8000,
                    weight,
                })
                .collect(),
            health: Some(HealthSpec::default()),
        }
    }

    fn connect_vip(nat: &mut Nat, client: Endpoint, now: Instant) -> Result<Endpoint, Verdict> {
        let mut f = frame(client.addr, VIP, L4::Tcp(client.port, 80, SYN, b""));
        match run(nat, &mut f, NicId::Link, now) {
            TO_CONTAINER => {}
            v => return Err(v),
        }
        let s = seen(&f);
        assert_eq!(
            s.src.addr, NODE,
            "service traffic comes from the node address"
        );
        Ok(s.dst)
    }

    #[test]
    fn a_syn_reusing_a_finished_service_flow_is_a_new_choice() {
        let b = [
            Ipv4Address::new(10, 81, 1, 10),
            Ipv4Address::new(10, 81, 2, 10),
        ];
        let mut nat = nat();
        nat.lb_mut()
            .add_service(web(&[(b[0], 1), (b[1], 1)]), t(0))
            .unwrap();
        // Clients whose first connection reached backend 0, then reset.
        let mut on_first = vec![];
        for i in 0..40u16 {
            let client = ep(C2, 30000 + i);
            if connect_vip(&mut nat, client, t(0)).unwrap().addr == b[0] {
                on_first.push(client);
            }
            let rst = TcpFlags { rst: true, ..ACK };
            let mut r = frame(client.addr, VIP, L4::Tcp(client.port, 80, rst, b""));
            assert_eq!(run(&mut nat, &mut r, NicId::Link, t(1)), TO_CONTAINER);
        }
        assert!(on_first.len() >= 10, "{}", on_first.len());
        nat.lb_mut()
            .set_backend(
                "web",
                BackendConfig {
                    address: b[0],
                    port: 8000,
                    weight: 0,
                },
                t(2),
            )
            .unwrap();
        // The same tuples again: new connections, so none to the drained backend.
        for client in on_first {
            assert_eq!(connect_vip(&mut nat, client, t(3)).unwrap().addr, b[1]);
        }
    }

    #[test]
    fn service_flows_spread_by_weight_and_stay_pinned() {
        let b = [
            Ipv4Address::new(10, 81, 1, 10),
            Ipv4Address::new(10, 81, 2, 10),
            Ipv4Address::new(10, 81, 3, 10),
        ];
        let mut nat = nat();
        nat.lb_mut()
            .add_service(web(&[(b[0], 2), (b[1], 1), (b[2], 1)]), t(0))
            .unwrap();
        let mut count = [0usize; 3];
        let mut pinned = vec![];
        // Hashing spreads like chance: with 4000 flows a 10% error is > 3.5 sigma.
        for i in 0..4000u16 {
            let client = ep(Ipv4Address::new(10, 81, 4, 1 + (i % 200) as u8), 20000 + i);
            let backend = connect_vip(&mut nat, client, t(0)).unwrap();
            let k = b.iter().position(|&a| a == backend.addr).unwrap();
            count[k] += 1;
            pinned.push((client, backend));
        }
        let want = [2000.0, 1000.0, 1000.0];
        for k in 0..3 {
            let off = (count[k] as f64 - want[k]).abs() / want[k];
            assert!(
                off < 0.10,
                "backend {k}: {} flows, want {}",
                count[k],
                want[k]
            );
        }
        // Drain backend 0 and add a fourth: open flows do not move.
        nat.lb_mut()
            .set_backend(
                "web",
                BackendConfig {
                    address: b[0],
                    port: 8000,
                    weight: 0,
                },
                t(1),
            )
            .unwrap();
        nat.lb_mut()
            .set_backend(
                "web",
                BackendConfig {
                    address: Ipv4Address::new(10, 81, 5, 10),
                    port: 8000,
                    weight: 1,
                },
                t(1),
            )
            .unwrap();
        for (client, backend) in &pinned {
            let mut a = frame(client.addr, VIP, L4::Tcp(client.port, 80, ACK, b"x"));
            assert_eq!(run(&mut nat, &mut a, NicId::Link, t(2)), TO_CONTAINER);
            assert_eq!(seen(&a).dst, *backend);
        }
        // New flows avoid the drained backend.
        for i in 0..100u16 {
            let backend = connect_vip(&mut nat, ep(C2, 30000 + i), t(3)).unwrap();
            assert_ne!(backend.addr, b[0]);
        }
        // Removing a backend cuts its flows, and only those.
        let gone = ep(b[1], 8000);
        let to_gone = nat
            .conntrack()
            .iter()
            .filter(|(_, f)| f.reply().src == gone)
            .count();
        assert!(to_gone >= pinned.iter().filter(|(_, be)| *be == gone).count());
        assert_eq!(nat.remove_backend("web", gone).unwrap(), to_gone);
        assert_eq!(
            nat.conntrack()
                .iter()
                .filter(|(_, f)| f.reply().src == gone)
                .count(),
            0
        );
        for (client, backend) in &pinned {
            let mut a = frame(client.addr, VIP, L4::Tcp(client.port, 80, ACK, b"x"));
            let v = nat.process(&mut a, NicId::Link, t(4));
            if backend.addr == b[1] {
                assert_eq!(v, Verdict::Drop(DropReason::NoFlow));
            } else {
                assert_eq!(v, TO_CONTAINER);
                assert_eq!(seen(&a).dst, *backend);
            }
        }
    }

    #[test]
    fn unhealthy_backends_leave_the_table_and_return() {
        let b = [
            Ipv4Address::new(10, 81, 1, 10),
            Ipv4Address::new(10, 81, 2, 10),
        ];
        let mut nat = nat();
        nat.lb_mut()
            .add_service(web(&[(b[0], 1), (b[1], 1)]), t(0))
            .unwrap();
        // Backend 0 fails every check; 1 passes. Default fall = 3.
        let mut now = t(0);
        for _ in 0..3 {
            for c in nat.lb_mut().due(now) {
                let ok = c.target.addr == b[1];
                assert_eq!(c.proto, Transport::Tcp);
                nat.lb_mut()
                    .report(c.id, ok, now + Duration::from_millis(5));
            }
            now += Duration::from_secs(2);
        }
        let st = nat.lb().status();
        assert_eq!(st[0].backends[0].health, Health::Down);
        assert_eq!(st[0].backends[0].slots, 0);
        for i in 0..50u16 {
            assert_eq!(
                connect_vip(&mut nat, ep(C1, 100 + i), now).unwrap().addr,
                b[1]
            );
        }
        // Two good checks (rise = 2) bring it back.
        for _ in 0..2 {
            for c in nat.lb_mut().due(now) {
                nat.lb_mut()
                    .report(c.id, true, now + Duration::from_millis(5));
            }
            now += Duration::from_secs(2);
        }
        assert_eq!(nat.lb().status()[0].backends[0].health, Health::Up);
        let hits = (0..100u16)
            .filter(|i| connect_vip(&mut nat, ep(C2, 1000 + i), now).unwrap().addr == b[0])
            .count();
        assert!(hits > 20, "{hits}");
        // No backend at all: new flows are refused and counted.
        nat.lb_mut()
            .set_backend(
                "web",
                BackendConfig {
                    address: b[0],
                    port: 8000,
                    weight: 0,
                },
                now,
            )
            .unwrap();
        nat.lb_mut()
            .set_backend(
                "web",
                BackendConfig {
                    address: b[1],
                    port: 8000,
                    weight: 0,
                },
                now,
            )
            .unwrap();
        assert_eq!(
            connect_vip(&mut nat, ep(C2, 9), now),
            Err(Verdict::Drop(DropReason::NoBackend))
        );
    }

    #[test]
    fn published_port_to_a_service_vip_is_the_routing_mesh() {
        let backend = Ipv4Address::new(10, 81, 7, 10); // on another host
        let mut nat = nat();
        nat.lb_mut()
            .add_service(web(&[(backend, 1)]), t(0))
            .unwrap();
        nat.add_publish(PublishRule {
            proto: Transport::Tcp,
            host_port: 9000,
            container_address: VIP,
            container_port: 80,
        })
        .unwrap();
        let mut syn = frame(CLIENT, UPLINK, L4::Tcp(41000, 9000, SYN, b""));
        assert_eq!(run(&mut nat, &mut syn, NicId::Uplink, t(0)), TO_CONTAINER);
        let s = seen(&syn);
        assert_eq!(s.dst, ep(backend, 8000));
        assert_eq!(s.src.addr, NODE, "the backend answers to this node");
        let mut sa = frame(backend, NODE, L4::Tcp(8000, s.src.port, SYNACK, b""));
        assert_eq!(run(&mut nat, &mut sa, NicId::Link, t(0)), TO_UPLINK);
        let r = seen(&sa);
        assert_eq!((r.src, r.dst), (ep(UPLINK, 9000), ep(CLIENT, 41000)));
    }

    #[test]
    fn mutated_frames_never_panic_and_respect_the_capacity() {
        let mut cfg = config();
        cfg.conntrack.capacity = 16;
        cfg.snat_ports = (40000, 40007);
        let mut nat = Nat::new(cfg, 11);
        nat.add_publish(PublishRule {
            proto: Transport::Tcp,
            host_port: 8080,
            container_address: C1,
            container_port: 80,
        })
        .unwrap();
        nat.add_publish(PublishRule {
            proto: Transport::Tcp,
            host_port: 9000,
            container_address: VIP,
            container_port: 80,
        })
        .unwrap();
        nat.lb_mut()
            .add_service(
                web(&[
                    (Ipv4Address::new(10, 81, 1, 10), 1),
                    (Ipv4Address::new(10, 81, 2, 10), 2),
                ]),
                t(0),
            )
            .unwrap();
        let quoted = ip_packet(UPLINK, SERVER, L4::Udp(40000, 53, b"q"));
        let seeds: Vec<(NicId, Vec<u8>)> = vec![
            (
                NicId::Uplink,
                frame(CLIENT, UPLINK, L4::Tcp(40000, 8080, SYN, b"")),
            ),
            (
                NicId::Uplink,
                frame(CLIENT, UPLINK, L4::Tcp(40000, 9000, SYN, b"x")),
            ),
            (
                NicId::Link,
                frame(C1, CLIENT, L4::Tcp(80, 40000, SYNACK, b"")),
            ),
            (
                NicId::Link,
                frame(C1, SERVER, L4::Udp(6000, 53, b"question")),
            ),
            (NicId::Link, frame(C2, VIP, L4::Tcp(3000, 80, SYN, b""))),
            (
                NicId::Link,
                frame(C2, UPLINK, L4::Tcp(3000, 8080, SYN, b"")),
            ),
            (NicId::Link, frame(C1, SERVER, L4::EchoRequest(9))),
            (NicId::Uplink, frame(SERVER, UPLINK, L4::EchoReply(40000))),
            (
                NicId::Uplink,
                frame(ROUTER, UPLINK, L4::Error(11, 0, &quoted)),
            ),
            (
                NicId::Uplink,
                frame(SERVER, UPLINK, L4::Udp(53, 40000, b"answer")),
            ),
        ];
        let mut rng = Rng(0xfeed_beef_1234_5678);
        let mut now = t(0);
        for _ in 0..100_000 {
            let (side, base) = &seeds[(rng.next() % seeds.len() as u64) as usize];
            let mut f = base.clone();
            // Mostly a few flipped bytes in the headers; sometimes a cut.
            for _ in 0..(rng.next() % 4) {
                let at = (rng.next() % f.len() as u64) as usize;
                f[at] ^= 1 << (rng.next() % 8);
            }
            if rng.next().is_multiple_of(8) {
                f.truncate((rng.next() % f.len() as u64) as usize);
            }
            let side = if rng.next().is_multiple_of(5) {
                match side {
                    NicId::Uplink => NicId::Link,
                    NicId::Link => NicId::Uplink,
                }
            } else {
                *side
            };
            let len = f.len();
            nat.process(&mut f, side, now);
            assert_eq!(f.len(), len);
            let st = nat.stats();
            assert!(st.table_size <= 16);
            assert!(st.snat_mappings <= 2 * 8 * 3);
            now += Duration::from_millis(rng.next() % 3000);
            if rng.next().is_multiple_of(64) {
                nat.poll(now, 4);
            }
        }
        // The mutations reach the translating paths, not only the parser.
        let st = nat.stats();
        assert!(st.translated > 10_000, "{st:?}");
        assert!(
            st.service_flows > 0 && st.hairpin_flows > 0 && st.snat_flows > 0,
            "{st:?}"
        );
        assert!(
            st.icmp_errors_translated > 0 && st.conntrack.evicted > 0,
            "{st:?}"
        );
        assert!(
            st.drops.malformed > 0 && st.drops.ports_exhausted > 0,
            "{st:?}"
        );
    }
}
