//! What the table is told and what it tells: idle timeouts per state, capacity, the
//! counters for `status`, why a flow was refused, and the timeout classes that order
//! its expiry lists.

use serde::Serialize;
use smoltcp::time::Duration;

/// Idle timeouts per state. Defaults follow the RFCs' floors and recommendations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// RFC 5382 REQ-5: at least 2 h 4 min.
    pub tcp_established: Duration,
    /// Opening and closing states; RFC 5382 REQ-5 / RFC 7857 §2.1: 4 min.
    pub tcp_transitory: Duration,
    /// After the last ACK of a close: short (2 x MSL of 60 s), RFC 7857 §2.2 lets
    /// a NAT cut it.
    pub tcp_time_wait: Duration,
    /// After a RST.
    pub tcp_closed: Duration,
    /// RFC 4787 REQ-5: at least 2 min, 5 min recommended.
    pub udp: Duration,
    /// RFC 5508 REQ-1: ICMP query sessions at least 60 s.
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(4 * 60),
            tcp_time_wait: Duration::from_secs(120),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(5 * 60),
            icmp: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    pub(super) fn of(&self, class: Class) -> Duration {
        match class {
            Class::Established => self.tcp_established,
            Class::Transitory => self.tcp_transitory,
            Class::TimeWait => self.tcp_time_wait,
            Class::Closed => self.tcp_closed,
            Class::Udp => self.udp,
            Class::Icmp => self.icmp,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Most flows tracked at once.
    pub capacity: usize,
    pub timeouts: Timeouts,
    /// How often a busy flow's place in its expiry list is refreshed. Lookups
    /// see exact timeouts; sweeping and make-room eviction order are exact to
    /// within this much. Zero refreshes on every packet.
    pub refresh: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: 65_536,
            timeouts: Timeouts::default(),
            refresh: Duration::from_secs(1),
        }
    }
}

/// Counters for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub inserts: u64,
    /// Flows removed on request (backend gone, rule flushed).
    pub removed: u64,
    pub expired: u64,
    /// Closed/transitory flows evicted to make room for a new one.
    pub evicted: u64,
    /// New flows refused because the table was full of live flows.
    pub refused_full: u64,
    /// New flows refused because one of their tuples belongs to a live flow.
    pub refused_clash: u64,
    /// TCP segments whose flags no TCP sends.
    pub tcp_invalid: u64,
}

/// Why a new flow was not inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    Full,
    Clash,
}

/// Timeout classes; each has its own list ordered by last activity, so the head
/// of a list is the flow of that class that expires first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Established = 0,
    Transitory = 1,
    TimeWait = 2,
    Closed = 3,
    Udp = 4,
    Icmp = 5,
}

pub(super) const CLASSES: [Class; 6] = [
    Class::Established,
    Class::Transitory,
    Class::TimeWait,
    Class::Closed,
    Class::Udp,
    Class::Icmp,
];
/// Eviction order when the table is full (after expired flows).
pub(super) const EVICTABLE: [Class; 3] = [Class::Closed, Class::TimeWait, Class::Transitory];
