//! One tracked flow and what is shown of it: its two tuples, protocol state and
//! timestamps (one cache line), its handle, and the filter and lines of the `flows`
//! listing. The table that holds flows is `Conntrack` (mod.rs).

use serde::Serialize;
use smoltcp::time::Instant;
use smoltcp::wire::Ipv4Address;

use super::config::Class;
use super::tcp::TcpState;
use crate::base::{Direction, FlowTuple, Proto};

/// What the table knows about a flow's protocol state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    Tcp(TcpState),
    Udp,
    Icmp,
}

impl FlowState {
    /// The state a flow starts in for `proto` (TCP flows open with a SYN).
    pub fn initial(proto: Proto) -> FlowState {
        match proto {
            Proto::Tcp => FlowState::Tcp(TcpState::SynSent),
            Proto::Udp => FlowState::Udp,
            Proto::Icmp => FlowState::Icmp,
        }
    }

    pub(super) fn class(self) -> Class {
        match self {
            FlowState::Tcp(TcpState::Established) => Class::Established,
            FlowState::Tcp(TcpState::TimeWait) => Class::TimeWait,
            FlowState::Tcp(TcpState::Closed) => Class::Closed,
            FlowState::Tcp(_) => Class::Transitory,
            FlowState::Udp => Class::Udp,
            FlowState::Icmp => Class::Icmp,
        }
    }
}

/// Index of a flow in the table; valid until that flow is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId(pub(super) u32);

/// One tracked flow: one cache line (the lookup's second and last memory access).
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
pub struct Flow {
    pub(super) orig: FlowTuple,
    pub(super) reply: FlowTuple,
    pub(super) last_seen: Instant,
    /// When the flow took its place in its class list (lists are ordered by it).
    pub(super) linked_at: Instant,
    pub(super) prev: u32,
    pub(super) next: u32,
    pub(super) state: FlowState,
    pub(super) fins: u8,
    pub(super) replied: bool,
    pub(super) live: bool,
    /// Owner data (the load balancer keeps its service/backend here).
    pub(super) tag: u32,
}

impl Flow {
    /// The tuple of packets from the opener, as they arrive.
    pub fn original(&self) -> &FlowTuple {
        &self.orig
    }
    /// The tuple of packets from the answerer, as they arrive (after translation
    /// of the original direction it differs from `original().reversed()`).
    pub fn reply(&self) -> &FlowTuple {
        &self.reply
    }
    pub fn tuple(&self, dir: Direction) -> &FlowTuple {
        match dir {
            Direction::Original => &self.orig,
            Direction::Reply => &self.reply,
        }
    }
    pub fn state(&self) -> FlowState {
        self.state
    }
    pub fn last_seen(&self) -> Instant {
        self.last_seen
    }
    /// Whether a packet was seen in the reply direction.
    pub fn replied(&self) -> bool {
        self.replied
    }
    pub fn tag(&self) -> u32 {
        self.tag
    }
}

/// Selects flows for the `flows` listing; `None` fields match anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub proto: Option<Proto>,
    /// Matches any address of either tuple.
    pub addr: Option<Ipv4Address>,
    /// Matches any port of either tuple.
    pub port: Option<u16>,
}

impl FlowFilter {
    pub fn matches(&self, flow: &Flow) -> bool {
        let tuples = [flow.orig, flow.reply];
        self.proto.is_none_or(|p| p == flow.orig.proto)
            && self
                .addr
                .is_none_or(|a| tuples.iter().any(|t| t.src.addr == a || t.dst.addr == a))
            && self
                .port
                .is_none_or(|p| tuples.iter().any(|t| t.src.port == p || t.dst.port == p))
    }
}

/// One line of the `flows` listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlowInfo {
    pub proto: Proto,
    pub original: FlowTuple,
    pub reply: FlowTuple,
    pub state: FlowState,
    /// Seconds until the flow expires if idle.
    pub expires_in_secs: u64,
}
