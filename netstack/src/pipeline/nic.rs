//! One NIC of the appliance: its local endpoint (a smoltcp interface) and its counters,
//! and the checks every received frame passes before a stage sees it (an Ethernet
//! header, a size the NIC accepts, an address, a destination that is this NIC's). A
//! frame that fails is dropped with a named reason; nothing here panics on a frame.

use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, EthernetFrame, ETHERNET_HEADER_LEN};

use super::counters::{NicCounters, NicDrop};
use super::port::{transmit_copy, BufPool, Burst, Port, BURST};
use crate::base::MAX_FRAME_LEN;
use crate::stage::local::NicIface;

/// Frames taken from one port per `poll`, so one busy NIC cannot starve the other.
pub const RX_BATCH: usize = BURST;

/// One NIC: its interface and its counters.
pub struct Nic {
    pub iface: NicIface,
    pub counters: NicCounters,
}

impl Nic {
    pub(super) fn new(mac: EthernetAddress, seed: u64, now: Instant) -> Self {
        Nic {
            iface: NicIface::new(mac, seed, now),
            counters: NicCounters::default(),
        }
    }

    /// One NIC's share of `Netstack::poll`; returns (work done, more input may be pending).
    pub(super) fn poll(
        &mut self,
        now: Instant,
        pool: &mut BufPool,
        port: &mut dyn Port,
    ) -> (bool, bool) {
        let Nic { iface, counters } = self;
        let mut burst = Burst::new();
        let taken = port.receive(pool, &mut burst);
        for buf in burst.drain() {
            let frame = buf.frame();
            counters.received(frame.len());
            match Nic::classify(iface, frame) {
                Ok(()) => iface.push_rx(frame),
                Err(reason) => counters.dropped(reason),
            }
            pool.put(buf);
        }
        let changed = iface.poll(now);
        counters.dropped_n(NicDrop::IcmpRateLimited, iface.take_icmp_rate_limited());
        let mut sent = 0usize;
        while let Some(frame) = iface.pop_tx() {
            counters.sent(transmit_copy(port, pool, &frame), frame.len());
            sent += 1;
        }
        (taken > 0 || changed || sent > 0, taken >= RX_BATCH)
    }

    /// The checks a frame passes before smoltcp sees it.
    fn classify(iface: &NicIface, frame: &[u8]) -> Result<(), NicDrop> {
        Nic::check_frame(iface, frame, MAX_FRAME_LEN)?;
        Nic::check_destination(iface, frame)
    }

    /// The checks every received frame passes: an Ethernet header, at most `max_len`
    /// bytes, and an address on the NIC.
    pub(super) fn check_frame(
        iface: &NicIface,
        frame: &[u8],
        max_len: usize,
    ) -> Result<(), NicDrop> {
        if frame.len() < ETHERNET_HEADER_LEN {
            return Err(NicDrop::Runt);
        }
        if frame.len() > max_len {
            return Err(NicDrop::Oversize);
        }
        if iface.address().is_none() {
            return Err(NicDrop::NotConfigured);
        }
        Ok(())
    }

    /// Unicast to another MAC is not the interface's business (the overlay bridge may
    /// still want it: it asks first).
    pub(super) fn check_destination(iface: &NicIface, frame: &[u8]) -> Result<(), NicDrop> {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Err(NicDrop::Runt);
        };
        let dst = eth.dst_addr();
        if dst.is_unicast() && dst != iface.mac() {
            return Err(NicDrop::OtherHost);
        }
        Ok(())
    }
}
