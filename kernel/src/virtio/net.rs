//! A virtio-net device as a weft `Port`, driven directly on `virtio-drivers`' transport
//! and `VirtQueue` so that neither direction ever waits for the device and the device is
//! told about new buffers once per batch: receive hands each completed frame to the
//! netstack and re-posts its buffer; transmit posts a frame and returns; the main loop
//! calls [`NetPort::flush`] after each turn, which sends the one notification a batch
//! needs (a notification is a VM exit). Buffers live in fixed slots indexed by the
//! queue token, so a buffer never moves while the device owns it. The virtio-net header
//! that precedes every frame is handled in one place, `hdr`.

use crate::virtio::features::{self, Negotiated};
use crate::virtio::hal::KernelHal;
use crate::virtio::Transport;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::wire::EthernetAddress;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport as _;
use virtio_drivers::Error;
use weft_netstack::pipeline::port::{Port, TxError};

const QUEUE_SIZE: usize = 256;
const Q_RX: u16 = 0;
const Q_TX: u16 = 1;
/// How long `transmit` waits for the device to free a slot before counting a drop. QEMU
/// drains the ring from another thread; a short wait beats losing a TCP segment.
const TX_FULL_WAIT_US: u64 = 50;
/// Room for a 1514-byte frame plus the virtio-net header, with slack.
const BUF_LEN: usize = 2048;

/// The `virtio_net_hdr` in front of every frame (virtio 1.2, 5.1.6). With VERSION_1 it is
/// 12 bytes, `num_buffers` included. Nothing is offloaded yet: transmit sends it zeroed
/// (no checksum to complete, no segmentation) and receive skips it.
mod hdr {
    pub const LEN: usize = 12;

    /// Writes the header of a frame that needs nothing from the device.
    pub fn write_plain(buf: &mut [u8]) {
        buf[..LEN].fill(0);
    }
}

pub struct NetPort {
    transport: Transport,
    rx: VirtQueue<KernelHal, QUEUE_SIZE>,
    tx: VirtQueue<KernelHal, QUEUE_SIZE>,
    mac: EthernetAddress,
    features: Negotiated,
    /// Receive buffers the device owns, by token.
    rx_posted: Vec<Option<Box<[u8]>>>,
    /// Transmit buffers the device owns, by token, with the length posted.
    tx_posted: Vec<Option<(Box<[u8]>, usize)>>,
    /// Transmit buffers ready for reuse.
    tx_pool: Vec<Box<[u8]>>,
    /// Buffers were added since the device was last notified, and it asked to be told.
    rx_notify: bool,
    tx_notify: bool,
}

impl NetPort {
    pub fn new(mut transport: Transport) -> Result<Self, Error> {
        let features = Negotiated::begin_init(&mut transport, features::NET_TAKEN);
        if features.taken & features::VERSION_1 == 0 {
            // A legacy device's header is 10 bytes; weft speaks virtio 1.x only.
            log::error!("virtio-net without VERSION_1 (legacy); not supported");
            return Err(Error::Unsupported);
        }
        let mac: [u8; 6] = transport.read_config_space(0)?;
        let event_idx = features.taken & features::RING_EVENT_IDX != 0;
        let rx = VirtQueue::new(&mut transport, Q_RX, false, event_idx)?;
        let tx = VirtQueue::new(&mut transport, Q_TX, false, event_idx)?;
        transport.finish_init();
        let mut port = NetPort {
            transport,
            rx,
            tx,
            mac: EthernetAddress(mac),
            features,
            rx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx_pool: Vec::new(),
            rx_notify: false,
            tx_notify: false,
        };
        for _ in 0..QUEUE_SIZE {
            port.post_rx(vec![0u8; BUF_LEN].into_boxed_slice())?;
        }
        port.flush();
        Ok(port)
    }

    fn post_rx(&mut self, mut buf: Box<[u8]>) -> Result<(), Error> {
        // SAFETY: the buffer is stored in `self.rx_posted` under its token and not touched
        // until the device hands the token back and it is popped with this same buffer.
        let token = unsafe { self.rx.add(&[], &mut [&mut buf[..]])? };
        self.rx_posted[token as usize] = Some(buf);
        // Checked after every add, so the add that crosses the device's event index is seen.
        self.rx_notify |= self.rx.should_notify();
        Ok(())
    }

    fn reap_tx(&mut self) {
        while let Some(token) = self.tx.peek_used() {
            let Some((buf, len)) = self.tx_posted[token as usize].take() else {
                log::error!("virtio-net: completed tx token {token} has no buffer");
                break;
            };
            // SAFETY: `buf[..len]` is exactly the slice posted with this token.
            if let Err(e) = unsafe { self.tx.pop_used(token, &[&buf[..len]], &mut []) } {
                log::warn!("virtio-net: tx completion failed: {e:?}");
            }
            self.tx_pool.push(buf);
        }
    }

    /// Sends the notifications the buffers added since the last call need (at most one
    /// per queue). The main loop calls it after every turn.
    pub fn flush(&mut self) {
        if core::mem::take(&mut self.rx_notify) {
            self.transport.notify(Q_RX);
        }
        if core::mem::take(&mut self.tx_notify) {
            self.transport.notify(Q_TX);
        }
    }

    /// Reads (and so clears) the device's interrupt status.
    pub fn ack_interrupt(&mut self) {
        self.transport.ack_interrupt();
    }

    pub fn mac_addr(&self) -> EthernetAddress {
        self.mac
    }

    pub fn features(&self) -> Negotiated {
        self.features
    }
}

impl Port for NetPort {
    fn mac(&self) -> EthernetAddress {
        self.mac
    }

    fn receive_batch(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(token) = self.rx.peek_used() else {
                break;
            };
            let Some(mut buf) = self.rx_posted[token as usize].take() else {
                log::error!("virtio-net: completed rx token {token} has no buffer");
                break;
            };
            // SAFETY: `buf` is the buffer posted with this token.
            match unsafe { self.rx.pop_used(token, &[], &mut [&mut buf[..]]) } {
                Ok(len) => {
                    if let Some(frame) = buf.get(hdr::LEN..len as usize) {
                        sink(frame);
                    }
                    n += 1;
                }
                Err(e) => log::warn!("virtio-net: rx completion failed: {e:?}"),
            }
            if let Err(e) = self.post_rx(buf) {
                log::error!("virtio-net: re-posting an rx buffer failed: {e:?}");
                break;
            }
        }
        n
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), TxError> {
        self.reap_tx();
        let len = hdr::LEN + frame.len();
        if len > BUF_LEN {
            return Err(TxError::TooLarge);
        }
        let mut buf = self
            .tx_pool
            .pop()
            .unwrap_or_else(|| vec![0u8; BUF_LEN].into_boxed_slice());
        hdr::write_plain(&mut buf);
        buf[hdr::LEN..len].copy_from_slice(frame);
        let deadline = crate::time::micros() + TX_FULL_WAIT_US;
        loop {
            // SAFETY: `buf` moves into `self.tx_posted` under the returned token and is not
            // touched until the device hands the token back.
            match unsafe { self.tx.add(&[&buf[..len]], &mut []) } {
                Ok(token) => {
                    self.tx_posted[token as usize] = Some((buf, len));
                    self.tx_notify |= self.tx.should_notify();
                    return Ok(());
                }
                Err(Error::QueueFull) if crate::time::micros() < deadline => {
                    // The device may be waiting for the notification this batch holds back.
                    self.flush();
                    core::hint::spin_loop();
                    self.reap_tx();
                }
                Err(_) => {
                    self.tx_pool.push(buf);
                    return Err(TxError::QueueFull);
                }
            }
        }
    }
}
