//! The netstack as the kernel sees it: two NICs (uplink, container link), each a smoltcp
//! interface plus counters. `poll` moves frames port -> checks -> smoltcp -> port. Frames
//! that cannot be valid are dropped here with a named reason before smoltcp sees them.
//! This module never blocks, never reads a clock and never panics on frame contents.

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::EthernetAddress;

use crate::counters::{DropReason, NicCounters};
use crate::iface::{NicAddress, NicIface, MAX_FRAME_LEN};
use crate::port::Port;

/// Frames taken from one port per `poll`, so one busy NIC cannot starve the other.
pub const RX_BATCH: usize = 64;

const ETHERNET_HEADER_LEN: usize = 14;

/// Which NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NicId {
    /// virtio-net #0: towards the host's network.
    Uplink,
    /// virtio-net #1: towards the containers.
    Link,
}

impl NicId {
    pub const ALL: [NicId; 2] = [NicId::Uplink, NicId::Link];

    pub fn name(self) -> &'static str {
        match self {
            NicId::Uplink => "uplink",
            NicId::Link => "link",
        }
    }
}

/// One NIC: its interface and its counters.
pub struct Nic {
    pub iface: NicIface,
    pub counters: NicCounters,
}

impl Nic {
    fn new(mac: EthernetAddress, seed: u64, now: Instant) -> Self {
        Nic {
            iface: NicIface::new(mac, seed, now),
            counters: NicCounters::default(),
        }
    }

    /// One NIC's share of `Netstack::poll`; returns (work done, more input may be pending).
    fn poll(&mut self, now: Instant, port: &mut dyn Port) -> (bool, bool) {
        let Nic { iface, counters } = self;
        let mut accepted = 0usize;
        let taken = port.receive_batch(RX_BATCH, &mut |frame| {
            counters.received(frame.len());
            match Nic::classify(iface, frame) {
                Ok(()) => {
                    iface.push_rx(frame);
                    accepted += 1;
                }
                Err(reason) => counters.dropped(reason),
            }
        });
        let changed = iface.poll(now);
        let mut sent = 0usize;
        while let Some(frame) = iface.pop_tx() {
            match port.transmit(&frame) {
                Ok(()) => counters.transmitted(frame.len()),
                Err(_) => counters.dropped(DropReason::TxFull),
            }
            sent += 1;
        }
        (taken > 0 || changed || sent > 0, taken >= RX_BATCH)
    }

    /// The checks a frame passes before smoltcp sees it.
    fn classify(iface: &NicIface, frame: &[u8]) -> Result<(), DropReason> {
        if frame.len() < ETHERNET_HEADER_LEN {
            return Err(DropReason::Runt);
        }
        if frame.len() > MAX_FRAME_LEN {
            return Err(DropReason::Oversize);
        }
        if iface.address().is_none() {
            return Err(DropReason::NotConfigured);
        }
        let dst = EthernetAddress::from_bytes(&frame[..6]);
        if dst.is_unicast() && dst != iface.mac() {
            return Err(DropReason::OtherHost);
        }
        Ok(())
    }
}

/// What one `Netstack::poll` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollResult {
    /// Frames were received or sent, or socket state changed.
    pub did_work: bool,
    /// Poll again after at most this long; `None`: only when a port has input.
    pub next_poll: Option<Duration>,
}

/// Both NICs of the appliance.
pub struct Netstack {
    uplink: Nic,
    link: Nic,
}

impl Netstack {
    /// Both NICs start unconfigured: they drop everything (`not_configured`) until addressed.
    pub fn new(
        uplink_mac: EthernetAddress,
        link_mac: EthernetAddress,
        seed: u64,
        now: Instant,
    ) -> Self {
        Netstack {
            uplink: Nic::new(uplink_mac, seed, now),
            // Distinct seeds so the two interfaces do not pick the same ports/ISNs.
            link: Nic::new(link_mac, seed ^ 0x9e37_79b9_7f4a_7c15, now),
        }
    }

    pub fn nic(&self, id: NicId) -> &Nic {
        match id {
            NicId::Uplink => &self.uplink,
            NicId::Link => &self.link,
        }
    }

    pub fn nic_mut(&mut self, id: NicId) -> &mut Nic {
        match id {
            NicId::Uplink => &mut self.uplink,
            NicId::Link => &mut self.link,
        }
    }

    /// Replace a NIC's addressing; takes effect on the next `poll`.
    pub fn configure(&mut self, id: NicId, address: Option<NicAddress>) {
        self.nic_mut(id).iface.set_address(address);
    }

    /// Drain each port (at most `RX_BATCH` frames), let smoltcp answer, transmit its output.
    pub fn poll(&mut self, now: Instant, uplink: &mut dyn Port, link: &mut dyn Port) -> PollResult {
        let (work_u, more_u) = self.uplink.poll(now, uplink);
        let (work_l, more_l) = self.link.poll(now, link);
        let next_poll = if more_u || more_l {
            Some(Duration::ZERO)
        } else {
            match (
                self.uplink.iface.poll_delay(now),
                self.link.iface.poll_delay(now),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        PollResult {
            did_work: work_u || work_l,
            next_poll,
        }
    }
}
