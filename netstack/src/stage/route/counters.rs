//! What the router counts for `status`, beside the NAT's own counters. Counting only.

use serde::{Deserialize, Serialize};

/// What the router did, beside the NAT's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterCounters {
    /// Translated frames sent out of a NIC.
    pub forwarded: u64,
    /// Dropped: the TTL would reach zero.
    pub ttl_expired: u64,
    /// ICMP time exceeded sent back for such a packet (RFC 1812 §5.3.1).
    pub time_exceeded_sent: u64,
    /// ICMP errors not sent: over the rate limit (RFC 1812 §4.3.2.8).
    pub icmp_rate_limited: u64,
    /// Dropped: no next hop (no uplink gateway, destination not on the link).
    pub no_route: u64,
    /// Dropped: the next hop did not answer ARP in time, or too many frames waited.
    pub unresolved: u64,
    pub arp_requests: u64,
    /// Dropped: the NIC's transmit queue was full.
    pub tx_full: u64,
    /// Translated frames sent into an overlay network (local or remote container).
    #[serde(default)]
    pub routed_into_overlay: u64,
    /// Frames taken from an overlay network that arrived from a peer.
    #[serde(default)]
    pub from_remote: u64,
}
