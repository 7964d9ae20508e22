//! One smoltcp `Interface` per NIC over an in-memory queue device, with the NIC's
//! addresses and its `SocketSet`. It owns the appliance's own endpoint on a NIC (ARP and
//! ICMP echo answered by smoltcp, the sockets of the DNS service and the health checks);
//! it never touches a port or a clock: the pipeline queues frames in and out, and time
//! comes in as an argument.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};

use crate::base::{NicAddress, MAX_FRAME_LEN};
use crate::table::rate_limit::RateLimit;
use crate::wire::icmp_error;

/// A smoltcp device over two in-memory queues: the stack pushes received frames into
/// `rx` before polling and drains `tx` to the port afterwards.
#[derive(Debug, Default)]
pub struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

impl QueueDevice {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push_rx(&mut self, frame: &[u8]) {
        self.rx.push_back(frame.to_vec());
    }

    pub fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    pub fn rx_len(&self) -> usize {
        self.rx.len()
    }

    pub fn tx_len(&self) -> usize {
        self.tx.len()
    }
}

pub struct QueueRxToken(Vec<u8>);

pub struct QueueTxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for QueueRxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl TxToken for QueueTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = QueueRxToken;
    type TxToken<'a> = QueueTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((QueueRxToken(frame), QueueTxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(QueueTxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // For Ethernet, smoltcp's MTU includes the Ethernet header.
        caps.max_transmission_unit = MAX_FRAME_LEN;
        caps
    }
}

/// A NIC's smoltcp interface, its queue device and its sockets.
pub struct NicIface {
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    address: Option<NicAddress>,
    /// A second address: the overlay node address on the link, when the container
    /// gateway address is another one.
    extra: Option<Ipv4Cidr>,
    /// The ICMP errors smoltcp originates (port unreachable for a datagram to a closed
    /// port), limited like the router's own (RFC 1812 section 4.3.2.8), so that a
    /// flood of forged datagrams is not reflected at the rate it arrives.
    icmp_limit: RateLimit,
    /// Errors withheld by `icmp_limit` since the last `take_icmp_rate_limited`.
    icmp_withheld: u64,
}

impl NicIface {
    /// An unconfigured interface (no address: it answers nothing until `set_address`).
    pub fn new(mac: EthernetAddress, seed: u64, now: Instant) -> Self {
        let mut device = QueueDevice::new();
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = seed;
        let iface = Interface::new(config, &mut device, now);
        NicIface {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            address: None,
            extra: None,
            icmp_limit: RateLimit::default(),
            icmp_withheld: 0,
        }
    }

    pub fn mac(&self) -> EthernetAddress {
        match self.iface.hardware_addr() {
            HardwareAddress::Ethernet(mac) => mac,
        }
    }

    pub fn address(&self) -> Option<NicAddress> {
        self.address
    }

    /// Replace the interface's addressing (None removes the address and the default route).
    pub fn set_address(&mut self, address: Option<NicAddress>) {
        // smoltcp forgets every neighbour when the addresses are set: an `apply` that
        // keeps them must not make the appliance ARP again for every peer (one unknown
        // neighbour per second per interface).
        if address == self.address {
            return;
        }
        self.address = address;
        self.update_addrs();
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        if let Some(gw) = address.and_then(|a| a.gateway) {
            // Only fails when the route table is full; it was just emptied of defaults.
            let _ = routes.add_default_ipv4_route(gw);
        }
    }

    /// Add (or with `None` remove) a second address, answered only while the primary
    /// one is configured.
    pub fn set_extra_address(&mut self, extra: Option<Ipv4Cidr>) {
        if extra == self.extra {
            return;
        }
        self.extra = extra;
        self.update_addrs();
    }

    pub fn extra_address(&self) -> Option<Ipv4Cidr> {
        self.extra
    }

    fn update_addrs(&mut self) {
        let (primary, extra) = (self.address.map(|a| a.cidr), self.extra);
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Some(p) = primary {
                // Capacity is IFACE_MAX_ADDR_COUNT (2) and the list was just cleared.
                let _ = addrs.push(IpCidr::Ipv4(p));
                if let Some(e) = extra.filter(|e| e.address() != p.address()) {
                    let _ = addrs.push(IpCidr::Ipv4(e));
                }
            }
        });
    }

    /// Frames queued for smoltcp that the next `poll` will process.
    pub fn pending_rx(&self) -> usize {
        self.device.rx_len()
    }

    /// The sockets bound on this interface (DNS, health checks, ... add theirs here).
    pub fn sockets(&self) -> &SocketSet<'static> {
        &self.sockets
    }

    pub fn sockets_mut(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    /// The interface's context (to connect a socket) and its sockets, at once.
    pub fn context_and_sockets(
        &mut self,
    ) -> (&mut smoltcp::iface::Context, &mut SocketSet<'static>) {
        (self.iface.context(), &mut self.sockets)
    }

    pub fn interface(&self) -> &Interface {
        &self.iface
    }

    pub fn interface_mut(&mut self) -> &mut Interface {
        &mut self.iface
    }

    /// Queue a received frame for the next `poll`.
    pub fn push_rx(&mut self, frame: &[u8]) {
        self.device.push_rx(frame);
    }

    /// Take the next frame smoltcp produced.
    pub fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.device.pop_tx()
    }

    /// Process every queued frame and socket; true if smoltcp reports socket changes.
    /// ICMP errors over the rate limit are withheld here, before anyone can send them.
    pub fn poll(&mut self, now: Instant) -> bool {
        let r = self.iface.poll(now, &mut self.device, &mut self.sockets);
        let (limit, withheld) = (&mut self.icmp_limit, &mut self.icmp_withheld);
        self.device.tx.retain(|frame| {
            let send = !icmp_error::carries_error(frame) || limit.allow(now);
            *withheld += u64::from(!send);
            send
        });
        r == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// ICMP errors withheld by the rate limit since the last call (for the NIC's
    /// `icmp_rate_limited` drop counter).
    pub fn take_icmp_rate_limited(&mut self) -> u64 {
        core::mem::take(&mut self.icmp_withheld)
    }

    /// How long until smoltcp needs polling again (None: only on new input).
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }
}
