//! The NAT's decision for one frame: match it to a tracked flow or open one (DNAT for
//! a published port, SNAT for the way out of the grid, hairpin, a service VIP through
//! the load balancer), then rewrite it to the flow's other side. Refusals are counted
//! under their reason; nothing here routes.

use smoltcp::time::Instant;
use smoltcp::wire::Ipv4Address;

use super::{Nat, NatDrop, NatVerdict};
use crate::base::{Direction, Endpoint, FlowTuple, NicId, Proto};
use crate::stage::lb::Pick;
use crate::table::conntrack::{Flow, FlowId, FlowState, InsertError, Probe, TcpEvent, TcpState};
use crate::wire::l4::{self, Kind, Parse, Parsed};
use crate::wire::rewrite;

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

/// Where a packet of a new flow goes, decided before any port is taken.
enum Decision {
    Pass,
    Drop(NatDrop),
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

/// Which `NatStats` counter a new flow counts under.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FlowKind {
    Dnat,
    Snat,
    Hairpin,
    Service,
}

impl Nat {
    /// Runs one Ethernet frame received on `from` through conntrack, NAT and
    /// service selection; rewrites it in place when translated.
    pub fn process(&mut self, frame: &mut [u8], from: NicId, now: Instant) -> NatVerdict {
        let parsed = l4::parse(frame);
        self.process_parsed(frame, &parsed, Probe::NONE, from, now)
    }

    /// [`Nat::process`] for a frame whose L4 facts were read already (`l4::parse` of
    /// this very frame, unchanged since) and whose tuple's conntrack lookup was begun
    /// by [`Nat::probe`] (else `Probe::NONE`): what a burst read once travels here.
    pub fn process_parsed(
        &mut self,
        frame: &mut [u8],
        parsed: &Parse,
        probe: Probe,
        from: NicId,
        now: Instant,
    ) -> NatVerdict {
        let p = match *parsed {
            Parse::NotIpv4 => {
                self.stats.passed += 1;
                return NatVerdict::Pass;
            }
            Parse::Malformed => return self.drop(NatDrop::Malformed),
            Parse::Opaque { dst, fragment } => {
                // Only what would have to be translated is refused.
                let ours = from == NicId::Link && self.is_external(dst) || self.lb.is_vip(dst);
                if ours {
                    let r = if fragment {
                        NatDrop::Fragment
                    } else {
                        NatDrop::Unsupported
                    };
                    return self.drop(r);
                }
                self.stats.passed += 1;
                return NatVerdict::Pass;
            }
            Parse::Ok(ref p) => p,
        };
        if p.kind == Kind::IcmpError {
            return self.icmp_error(frame, p, now);
        }
        let tcp = match p.kind {
            Kind::Tcp(flags) => match TcpEvent::classify(flags) {
                Some(ev) => Some(ev),
                None => {
                    self.ct.count_tcp_invalid();
                    return self.drop(NatDrop::TcpInvalid);
                }
            },
            _ => None,
        };
        let found = self
            .ct
            .lookup_probed(&p.tuple, probe, now)
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
            None => match self.open(p, tcp, from, now) {
                Ok(id) => (id, Direction::Original),
                Err(v) => return v,
            },
        };
        self.ct.update(id, dir, tcp, now);
        let Some(flow) = self.ct.get(id) else {
            return self.drop(NatDrop::Malformed);
        };
        let out = flow.tuple(dir.opposite()).reversed();
        rewrite::flow(&mut frame[p.ip..p.end], p.tuple.proto, &out);
        self.stats.translated += 1;
        NatVerdict::Forward {
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
        self.would_forward_parsed(&l4::parse(frame), from, now)
    }

    /// [`Nat::would_forward`] on what `l4::parse` read of the frame.
    pub fn would_forward_parsed(&self, parsed: &Parse, from: NicId, now: Instant) -> bool {
        let Parse::Ok(p) = parsed else {
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

    /// Looks up in conntrack, for a burst of packets about to be processed, the tuples
    /// of all of them, bucket lines first and then flows, so that the cache misses of
    /// the whole burst overlap instead of being taken one packet at a time; each
    /// packet's probe goes with it to [`Nat::process_parsed`].
    pub fn probe(&self, tuples: &[FlowTuple], probes: &mut [Probe]) {
        self.ct.probe(tuples, probes);
    }

    /// Decides and inserts a new flow for a packet that matched none.
    fn open(
        &mut self,
        p: &Parsed,
        tcp: Option<TcpEvent>,
        from: NicId,
        now: Instant,
    ) -> Result<FlowId, NatVerdict> {
        let decision = self.decide(&p.tuple, from);
        let (mut reply, snat, kind, tag) = match decision {
            Decision::Pass => {
                self.stats.passed += 1;
                return Err(NatVerdict::Pass);
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
            return Err(self.drop(NatDrop::NoFlow));
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
                return Err(self.drop(NatDrop::PortsExhausted));
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
                    InsertError::Full => NatDrop::TableFull,
                    InsertError::Clash => NatDrop::TupleClash,
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
                    return Decision::Drop(NatDrop::Spoofed);
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
                    return Decision::Drop(NatDrop::Spoofed);
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
                        return Decision::Drop(NatDrop::Unsupported);
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
            Pick::NoBackend => Decision::Drop(NatDrop::NoBackend),
            Pick::Backend { backend, tag } => Decision::Open {
                reply: FlowTuple::new(t.proto, backend, t.src),
                snat,
                kind: FlowKind::Service,
                tag,
            },
        }
    }
}
