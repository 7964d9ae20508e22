//! A virtio-net device as a weft `Port`, driven directly on `virtio-drivers`' transport
//! and `VirtQueue` so that neither direction ever waits for the device and the device is
//! told about new buffers once per batch: receive hands each completed buffer to the
//! netstack (the frame in it `HEADROOM` bytes in) and posts a fresh one from the
//! netstack's pool in its place; transmit posts the buffer it is given, the frame where
//! it lies (a frame received on either port, rewritten in place), and gives it back to
//! the pool once the device has sent it; the main loop calls [`NetPort::flush`] after
//! each turn, which sends the one notification a batch needs (a notification is a VM
//! exit). Buffers live in fixed slots indexed by the queue token, so a buffer never
//! moves while the device owns it. The virtio-net header that precedes every frame is
//! handled in one place, `hdr`: on receive the device writes it into the headroom just
//! in front of the frame, on transmit it goes into the headroom the frame has left.

use crate::virtio::features::{self, Negotiated};
use crate::virtio::hal::KernelHal;
use crate::virtio::Transport;
use alloc::vec::Vec;
use smoltcp::wire::EthernetAddress;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport as _;
use virtio_drivers::Error;
use weft_netstack::pipeline::port::{BufPool, Burst, PacketBuf, Port, TxError, BUF_LEN, HEADROOM};

const QUEUE_SIZE: usize = 256;
const Q_RX: u16 = 0;
const Q_TX: u16 = 1;
/// How long `transmit` waits for the device to free a slot before counting a drop. QEMU
/// drains the ring from another thread; a short wait beats losing a TCP segment.
const TX_FULL_WAIT_US: u64 = 50;
/// Where the device writes a received buffer: its header, then the frame at `HEADROOM`.
const RX_AT: usize = HEADROOM - hdr::LEN;

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
    rx_posted: Vec<Option<PacketBuf>>,
    /// Transmit buffers the device owns, by token: the header and frame posted.
    tx_posted: Vec<Option<PacketBuf>>,
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
            rx_notify: false,
            tx_notify: false,
        };
        for _ in 0..QUEUE_SIZE {
            port.post_rx(PacketBuf::with_capacity(BUF_LEN))?;
        }
        port.flush();
        Ok(port)
    }

    fn post_rx(&mut self, mut buf: PacketBuf) -> Result<(), Error> {
        // SAFETY: the buffer is stored in `self.rx_posted` under its token and not touched
        // until the device hands the token back and it is popped with this same slice.
        let token = unsafe { self.rx.add(&[], &mut [&mut buf.buffer_mut()[RX_AT..]])? };
        self.rx_posted[token as usize] = Some(buf);
        // Checked after every add, so the add that crosses the device's event index is seen.
        self.rx_notify |= self.rx.should_notify();
        Ok(())
    }

    /// Gives the buffers the device has sent back to `pool`.
    fn reap_tx(&mut self, pool: &mut BufPool) {
        while let Some(token) = self.tx.peek_used() {
            let Some(buf) = self.tx_posted[token as usize].take() else {
                log::error!("virtio-net: completed tx token {token} has no buffer");
                break;
            };
            // SAFETY: `buf.frame()` is exactly the slice posted with this token (the
            // buffer was not touched while the device owned it).
            if let Err(e) = unsafe { self.tx.pop_used(token, &[buf.frame()], &mut []) } {
                log::warn!("virtio-net: tx completion failed: {e:?}");
            }
            pool.put(buf);
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

    fn receive(&mut self, pool: &mut BufPool, burst: &mut Burst) -> usize {
        let mut n = 0;
        while !burst.is_full() {
            let Some(token) = self.rx.peek_used() else {
                break;
            };
            let Some(mut buf) = self.rx_posted[token as usize].take() else {
                log::error!("virtio-net: completed rx token {token} has no buffer");
                break;
            };
            // SAFETY: `buf.buffer_mut()[RX_AT..]` is the slice posted with this token.
            match unsafe {
                self.rx
                    .pop_used(token, &[], &mut [&mut buf.buffer_mut()[RX_AT..]])
            } {
                Ok(len) => {
                    let frame_len = (len as usize).checked_sub(hdr::LEN);
                    if frame_len.is_some_and(|len| buf.set_range(HEADROOM, len)) {
                        if let Err(buf) = burst.push(buf) {
                            pool.put(buf);
                        }
                    } else {
                        pool.put(buf);
                    }
                    n += 1;
                }
                Err(e) => {
                    log::warn!("virtio-net: rx completion failed: {e:?}");
                    pool.put(buf);
                }
            }
            if let Err(e) = self.post_rx(pool.get()) {
                log::error!("virtio-net: re-posting an rx buffer failed: {e:?}");
                break;
            }
        }
        n
    }

    fn transmit(&mut self, pool: &mut BufPool, mut buf: PacketBuf) -> Result<(), TxError> {
        self.reap_tx(pool);
        if hdr::LEN + buf.len() > BUF_LEN {
            pool.put(buf);
            return Err(TxError::TooLarge);
        }
        if buf.headroom() < hdr::LEN {
            // A frame built outside the pool's buffers: a copy has the headroom.
            let copy = pool.copy_of(buf.frame());
            pool.put(core::mem::replace(&mut buf, copy));
        }
        match buf.push_front(hdr::LEN) {
            Some(frame) => hdr::write_plain(frame),
            None => {
                pool.put(buf);
                return Err(TxError::TooLarge);
            }
        }
        let deadline = crate::time::micros() + TX_FULL_WAIT_US;
        loop {
            // SAFETY: `buf` moves into `self.tx_posted` under the returned token and is not
            // touched until the device hands the token back.
            match unsafe { self.tx.add(&[buf.frame()], &mut []) } {
                Ok(token) => {
                    self.tx_posted[token as usize] = Some(buf);
                    self.tx_notify |= self.tx.should_notify();
                    return Ok(());
                }
                Err(Error::QueueFull) if crate::time::micros() < deadline => {
                    // The device may be waiting for the notification this batch holds back.
                    self.flush();
                    core::hint::spin_loop();
                    self.reap_tx(pool);
                }
                Err(_) => {
                    pool.put(buf);
                    return Err(TxError::QueueFull);
                }
            }
        }
    }
}
