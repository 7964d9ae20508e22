//! A virtio-net device as a weft `Port`, on `virtio-drivers`' raw (token) interface so
//! that neither direction ever waits for the device: receive hands each completed frame
//! to the netstack and re-posts its buffer at once; transmit posts a frame and returns,
//! and finished transmissions are reaped on the next call. Buffers live in fixed slots
//! indexed by the queue token, so a buffer never moves while the device owns it.

use crate::virtio::hal::KernelHal;
use crate::virtio::Transport;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::wire::EthernetAddress;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::Error;
use weft_netstack::port::{Port, TxError};

const QUEUE_SIZE: usize = 256;
/// How long `transmit` waits for the device to free a slot before counting a drop. QEMU
/// drains the ring from another thread; a short wait beats losing a TCP segment.
const TX_FULL_WAIT_US: u64 = 50;
/// Room for a 1514-byte frame plus the virtio-net header, with slack.
const BUF_LEN: usize = 2048;

pub struct NetPort {
    dev: VirtIONetRaw<KernelHal, Transport, QUEUE_SIZE>,
    mac: EthernetAddress,
    /// Receive buffers the device owns, by token.
    rx: Vec<Option<Box<[u8]>>>,
    /// Transmit buffers the device owns, by token, with the length posted.
    tx: Vec<Option<(Box<[u8]>, usize)>>,
    /// Transmit buffers ready for reuse.
    tx_pool: Vec<Box<[u8]>>,
}

impl NetPort {
    pub fn new(transport: Transport) -> Result<Self, Error> {
        let dev = VirtIONetRaw::new(transport)?;
        let mac = EthernetAddress(dev.mac_address());
        let mut port = NetPort {
            dev,
            mac,
            rx: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx_pool: Vec::new(),
        };
        for _ in 0..QUEUE_SIZE {
            port.post_rx(vec![0u8; BUF_LEN].into_boxed_slice())?;
        }
        Ok(port)
    }

    fn post_rx(&mut self, mut buf: Box<[u8]>) -> Result<(), Error> {
        // SAFETY: the buffer is stored in `self.rx` under its token and not touched until
        // `receive_complete` is called with that token.
        let token = unsafe { self.dev.receive_begin(&mut buf)? };
        self.rx[token as usize] = Some(buf);
        Ok(())
    }

    fn reap_tx(&mut self) {
        while let Some(token) = self.dev.poll_transmit() {
            let Some((buf, len)) = self.tx[token as usize].take() else {
                log::error!("virtio-net: completed tx token {token} has no buffer");
                break;
            };
            // SAFETY: `buf[..len]` is exactly the slice posted with this token.
            if let Err(e) = unsafe { self.dev.transmit_complete(token, &buf[..len]) } {
                log::warn!("virtio-net: tx completion failed: {e:?}");
            }
            self.tx_pool.push(buf);
        }
    }

    /// Reads (and so clears) the device's interrupt status.
    pub fn ack_interrupt(&mut self) {
        self.dev.ack_interrupt();
    }

    pub fn mac_addr(&self) -> EthernetAddress {
        self.mac
    }
}

impl Port for NetPort {
    fn mac(&self) -> EthernetAddress {
        self.mac
    }

    fn receive_batch(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(token) = self.dev.poll_receive() else {
                break;
            };
            let Some(mut buf) = self.rx[token as usize].take() else {
                log::error!("virtio-net: completed rx token {token} has no buffer");
                break;
            };
            // SAFETY: `buf` is the buffer posted with this token.
            match unsafe { self.dev.receive_complete(token, &mut buf) } {
                Ok((hdr, len)) => {
                    if let Some(frame) = buf.get(hdr..hdr + len) {
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
        let mut buf = self
            .tx_pool
            .pop()
            .unwrap_or_else(|| vec![0u8; BUF_LEN].into_boxed_slice());
        let Ok(hdr) = self.dev.fill_buffer_header(&mut buf) else {
            return Err(TxError::TooLarge);
        };
        let len = hdr + frame.len();
        let Some(payload) = buf.get_mut(hdr..len) else {
            self.tx_pool.push(buf);
            return Err(TxError::TooLarge);
        };
        payload.copy_from_slice(frame);
        let deadline = crate::time::micros() + TX_FULL_WAIT_US;
        loop {
            // SAFETY: `buf` moves into `self.tx` under the returned token and is not
            // touched until `transmit_complete` with that token.
            match unsafe { self.dev.transmit_begin(&buf[..len]) } {
                Ok(token) => {
                    self.tx[token as usize] = Some((buf, len));
                    return Ok(());
                }
                Err(Error::QueueFull) if crate::time::micros() < deadline => {
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
