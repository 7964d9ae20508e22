//! Per-NIC counters, Firecracker-metrics style: a struct of named fields that serializes
//! as-is into `status`. Counters only ever grow (wrapping); nothing here decides anything.

use serde::{Deserialize, Serialize};

/// Traffic counters of one NIC.
///
/// `rx_*` count every frame taken from the port, including those later dropped;
/// `tx_*` count frames the port accepted. `drops` says why frames went nowhere.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: NicDrops,
}

/// Frames dropped by weft (not by smoltcp), by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicDrops {
    /// Received frame shorter than an Ethernet header.
    pub runt: u64,
    /// Received frame longer than the largest frame the NIC accepts.
    pub oversize: u64,
    /// Received frame unicast to another MAC address.
    pub other_host: u64,
    /// Received frame while the NIC has no address configured.
    pub not_configured: u64,
    /// Frame to transmit refused by the port (queue full or too large).
    pub tx_full: u64,
    /// An ICMP error the NIC's own endpoint would have sent (smoltcp answers a
    /// datagram to a closed port with port unreachable), over the rate limit
    /// (RFC 1812 section 4.3.2.8): forged traffic is not reflected at line rate.
    pub icmp_rate_limited: u64,
}

/// Why a received frame was dropped before reaching the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicDrop {
    Runt,
    Oversize,
    OtherHost,
    NotConfigured,
    TxFull,
    IcmpRateLimited,
}

impl NicCounters {
    pub(crate) fn received(&mut self, len: usize) {
        self.rx_packets = self.rx_packets.wrapping_add(1);
        self.rx_bytes = self.rx_bytes.wrapping_add(len as u64);
    }

    pub(crate) fn transmitted(&mut self, len: usize) {
        self.tx_packets = self.tx_packets.wrapping_add(1);
        self.tx_bytes = self.tx_bytes.wrapping_add(len as u64);
    }

    /// The outcome of handing a frame of `len` bytes to the port.
    pub(crate) fn sent<E>(&mut self, result: Result<(), E>, len: usize) {
        match result {
            Ok(()) => self.transmitted(len),
            Err(_) => self.dropped(NicDrop::TxFull),
        }
    }

    pub(crate) fn dropped(&mut self, reason: NicDrop) {
        self.dropped_n(reason, 1);
    }

    /// `n` frames dropped for the same reason.
    pub(crate) fn dropped_n(&mut self, reason: NicDrop, n: u64) {
        let d = &mut self.drops;
        let counter = match reason {
            NicDrop::Runt => &mut d.runt,
            NicDrop::Oversize => &mut d.oversize,
            NicDrop::OtherHost => &mut d.other_host,
            NicDrop::NotConfigured => &mut d.not_configured,
            NicDrop::TxFull => &mut d.tx_full,
            NicDrop::IcmpRateLimited => &mut d.icmp_rate_limited,
        };
        *counter = counter.wrapping_add(n);
    }
}

impl NicDrops {
    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.runt
            .wrapping_add(self.oversize)
            .wrapping_add(self.other_host)
            .wrapping_add(self.not_configured)
            .wrapping_add(self.tx_full)
            .wrapping_add(self.icmp_rate_limited)
    }
}
