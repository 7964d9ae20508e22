//! `[nat]`: the connection-tracking limits and idle timeouts of the document. A section
//! type only: `publish` checks its values and plans the NAT router from it.

use serde::{Deserialize, Serialize};
use weft_netstack::smoltcp::time::Duration;
use weft_netstack::table::conntrack::Timeouts;

/// `[nat]`: connection tracking limits and idle timeouts. Every timeout defaults
/// to the RFC value `conntrack::Timeouts::default()` holds (RFC 5382 REQ-5 for TCP,
/// RFC 4787 REQ-5 for UDP, RFC 5508 REQ-1 for ICMP echo); a document that names
/// `[nat]` shows them all in `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatSection {
    /// Most flows tracked at once (new ones are dropped and counted beyond it).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Idle timeout of an established TCP flow (RFC 5382: at least 2 h 4 min).
    #[serde(default = "default_tcp_established")]
    pub tcp_established_secs: u32,
    /// Idle timeout of a TCP flow opening or closing (RFC 7857 §2.1: 4 min).
    #[serde(default = "default_tcp_transitory")]
    pub tcp_transitory_secs: u32,
    /// How long a TCP flow lingers after the last ACK of its close.
    #[serde(default = "default_tcp_time_wait")]
    pub tcp_time_wait_secs: u32,
    /// How long a reset TCP flow lingers.
    #[serde(default = "default_tcp_closed")]
    pub tcp_closed_secs: u32,
    /// Idle timeout of a UDP flow (RFC 4787 REQ-5: at least 2 min, 5 recommended).
    #[serde(default = "default_udp")]
    pub udp_secs: u32,
    /// Idle timeout of an ICMP echo flow (RFC 5508 REQ-1: at least 60 s).
    #[serde(default = "default_icmp")]
    pub icmp_secs: u32,
}

/// The longest idle timeout `[nat]` takes: a week.
pub const MAX_TIMEOUT_SECS: u32 = 7 * 24 * 3600;

fn default_capacity() -> u32 {
    65_536
}

fn secs(d: Duration) -> u32 {
    d.secs() as u32
}

fn default_tcp_established() -> u32 {
    secs(Timeouts::default().tcp_established)
}

fn default_tcp_transitory() -> u32 {
    secs(Timeouts::default().tcp_transitory)
}

fn default_tcp_time_wait() -> u32 {
    secs(Timeouts::default().tcp_time_wait)
}

fn default_tcp_closed() -> u32 {
    secs(Timeouts::default().tcp_closed)
}

fn default_udp() -> u32 {
    secs(Timeouts::default().udp)
}

fn default_icmp() -> u32 {
    secs(Timeouts::default().icmp)
}

impl Default for NatSection {
    fn default() -> Self {
        NatSection {
            capacity: default_capacity(),
            tcp_established_secs: default_tcp_established(),
            tcp_transitory_secs: default_tcp_transitory(),
            tcp_time_wait_secs: default_tcp_time_wait(),
            tcp_closed_secs: default_tcp_closed(),
            udp_secs: default_udp(),
            icmp_secs: default_icmp(),
        }
    }
}

impl NatSection {
    /// The timeouts with their field names, in document order.
    pub(crate) fn timeout_fields(&self) -> [(&'static str, u32); 6] {
        [
            ("tcp_established_secs", self.tcp_established_secs),
            ("tcp_transitory_secs", self.tcp_transitory_secs),
            ("tcp_time_wait_secs", self.tcp_time_wait_secs),
            ("tcp_closed_secs", self.tcp_closed_secs),
            ("udp_secs", self.udp_secs),
            ("icmp_secs", self.icmp_secs),
        ]
    }

    /// The conntrack timeouts this section sets.
    pub fn timeouts(&self) -> Timeouts {
        let s = |v: u32| Duration::from_secs(v as u64);
        Timeouts {
            tcp_established: s(self.tcp_established_secs),
            tcp_transitory: s(self.tcp_transitory_secs),
            tcp_time_wait: s(self.tcp_time_wait_secs),
            tcp_closed: s(self.tcp_closed_secs),
            udp: s(self.udp_secs),
            icmp: s(self.icmp_secs),
        }
    }
}
