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
//! `NatVerdict::Forward` is the only verdict that means "rewritten, send it".
//! Routing (MACs, TTL) is the caller's job.
//!
//! The table and its control are here; a frame's translation is `translate.rs`,
//! ICMP errors `icmp.rs`, the publish rules `publish.rs`, the counters `stats.rs`.

mod config;
mod icmp;
mod publish;
mod stats;
mod translate;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use smoltcp::time::Instant;
use smoltcp::wire::Ipv4Address;

use crate::base::{Endpoint, NicId, Transport};
use crate::stage::lb::{LbError, LoadBalancer};
use crate::table::conntrack::{self, Conntrack, Flow, FlowFilter, FlowInfo};
use crate::table::snat::SnatPorts;
pub use config::NatConfig;
pub use publish::{validate_publish, validate_publish_list, PublishError, PublishRule};
pub use stats::{NatDrop, NatDrops, NatStats};

/// What to do with a frame after the NAT stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatVerdict {
    /// Not NAT business; unchanged. The next stage (bridge, local stack) decides.
    Pass,
    /// Rewritten in place: route it out of `to` toward its IPv4 destination.
    Forward { to: NicId },
    /// Refused; counted under the reason.
    Drop(NatDrop),
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
    maps: SnatPorts,
    lb: LoadBalancer,
    /// Inside addresses behind another host (the router places them): published
    /// ports' flows to them take the node address as source.
    remote: BTreeSet<Ipv4Address>,
    stats: NatStats,
}

impl Nat {
    /// A NAT for `config`; `seed` keys the conntrack hash and the SNAT port
    /// choice (pass a random value from the platform).
    pub fn new(config: NatConfig, seed: u64) -> Nat {
        let ct = Conntrack::new(config.conntrack, seed);
        let maps = SnatPorts::new(config.snat_ports, seed.rotate_left(17));
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

    fn drop(&mut self, r: NatDrop) -> NatVerdict {
        self.stats.drops.count(r);
        NatVerdict::Drop(r)
    }
}

#[cfg(test)]
mod tests;
