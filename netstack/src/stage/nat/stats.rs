//! What the NAT counts for `status`: frames translated and passed, flows opened by
//! kind, and every drop by its reason. Counting only; the NAT decides.

use serde::Serialize;

use crate::table::conntrack;

/// Why the NAT stage dropped a frame; each is a counter in `NatStats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatDrop {
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
    pub(super) fn count(&mut self, r: NatDrop) {
        let c = match r {
            NatDrop::Malformed => &mut self.malformed,
            NatDrop::Fragment => &mut self.fragment,
            NatDrop::Unsupported => &mut self.unsupported,
            NatDrop::TcpInvalid => &mut self.tcp_invalid,
            NatDrop::NoFlow => &mut self.no_flow,
            NatDrop::TableFull => &mut self.table_full,
            NatDrop::TupleClash => &mut self.tuple_clash,
            NatDrop::PortsExhausted => &mut self.ports_exhausted,
            NatDrop::NoBackend => &mut self.no_backend,
            NatDrop::Spoofed => &mut self.spoofed,
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
