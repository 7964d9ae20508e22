//! The control channel: a virtio-console (virtio-serial) driver with the MULTIPORT
//! feature, so the appliance learns when the host side of the control socket connects
//! and disconnects (VIRTIO_CONSOLE_PORT_OPEN), as QMP's greeting-on-connect needs.
//! virtio-drivers' own console driver is single-port without those events; this one is
//! built on its transport and `VirtQueue`. The control socket is serial port 1 (QEMU
//! `-device virtserialport,nr=1`): port 0 is reserved for a `virtconsole`, which QEMU
//! always reports as open and so cannot tell us about connects.
//! Transmission never blocks: chunks wait in a queue until the device takes them.

use crate::virtio::features::{self, Negotiated};
use crate::virtio::hal::KernelHal;
use crate::virtio::Transport;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use bitflags::bitflags;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport as _;
use virtio_drivers::Error;

bitflags! {
    #[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
    struct Features: u64 {
        const MULTIPORT = 1 << 1;
        const VERSION_1 = 1 << 32;
    }
}

/// The serial port that carries the control protocol, and its queues (virtio 1.x 5.3.2:
/// port N >= 1 uses queues 2N+2 / 2N+3; 2 and 3 are the control queues).
const PORT: u32 = 1;
const Q_RX0: u16 = 2 * PORT as u16 + 2;
const Q_TX0: u16 = 2 * PORT as u16 + 3;
const Q_CRX: u16 = 2;
const Q_CTX: u16 = 3;
const QSIZE: usize = 16;
const RX_BUF: usize = 4096;
const CTRL_LEN: usize = 8;
/// Control messages may carry a port name after the 8-byte header.
const CTRL_BUF: usize = 128;

// virtio 1.x, 5.3.6.2: control message events.
const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const PORT_READY: u16 = 3;
const PORT_OPEN: u16 = 6;

#[derive(Debug)]
pub enum Event {
    Connected,
    Disconnected,
    Data(Vec<u8>),
}

/// Buffers handed to a queue, indexed by the token (descriptor head) `add` returned.
struct Posted<const N: usize> {
    slots: [Option<Box<[u8]>>; N],
}

impl<const N: usize> Posted<N> {
    fn new() -> Self {
        Posted {
            slots: core::array::from_fn(|_| None),
        }
    }
}

pub struct ControlConsole {
    transport: Transport,
    rx: VirtQueue<KernelHal, QSIZE>,
    tx: VirtQueue<KernelHal, QSIZE>,
    ctrl: Option<(VirtQueue<KernelHal, QSIZE>, VirtQueue<KernelHal, QSIZE>)>,
    rx_posted: Posted<QSIZE>,
    crx_posted: Posted<QSIZE>,
    tx_posted: Posted<QSIZE>,
    ctx_posted: Posted<QSIZE>,
    tx_pending: VecDeque<Vec<u8>>,
    ctx_pending: VecDeque<Vec<u8>>,
    host_connected: bool,
    events: VecDeque<Event>,
    features: Negotiated,
}

impl ControlConsole {
    pub fn new(mut transport: Transport) -> Result<Self, Error> {
        let negotiated = Negotiated::begin_init(&mut transport, features::CONSOLE_TAKEN);
        let features = Features::from_bits_truncate(negotiated.taken);
        let rx = VirtQueue::new(&mut transport, Q_RX0, false, false)?;
        let tx = VirtQueue::new(&mut transport, Q_TX0, false, false)?;
        let ctrl = if features.contains(Features::MULTIPORT) {
            Some((
                VirtQueue::new(&mut transport, Q_CRX, false, false)?,
                VirtQueue::new(&mut transport, Q_CTX, false, false)?,
            ))
        } else {
            None
        };
        transport.finish_init();
        let multiport = ctrl.is_some();
        let mut console = ControlConsole {
            transport,
            rx,
            tx,
            ctrl,
            rx_posted: Posted::new(),
            crx_posted: Posted::new(),
            tx_posted: Posted::new(),
            ctx_posted: Posted::new(),
            tx_pending: VecDeque::new(),
            ctx_pending: VecDeque::new(),
            // Without MULTIPORT there are no open/close events: treat the host as connected.
            host_connected: !multiport,
            events: VecDeque::new(),
            features: negotiated,
        };
        console.post_receive_buffers()?;
        if multiport {
            console.send_control(0, DEVICE_READY, 1);
        } else {
            log::warn!("virtio-console: no MULTIPORT; greeting sent once at boot");
            console.events.push_back(Event::Connected);
        }
        console.flush();
        Ok(console)
    }

    fn post_receive_buffers(&mut self) -> Result<(), Error> {
        while self.rx.available_desc() > 0 {
            let mut buf = vec![0u8; RX_BUF].into_boxed_slice();
            // SAFETY: the buffer is moved into `rx_posted` (heap memory that does not move)
            // and not accessed until pop_used returns its token.
            let token = unsafe { self.rx.add(&[], &mut [&mut buf[..]])? };
            self.rx_posted.slots[token as usize] = Some(buf);
        }
        if let Some((crx, _)) = self.ctrl.as_mut() {
            while crx.available_desc() > 0 {
                let mut buf = vec![0u8; CTRL_BUF].into_boxed_slice();
                // SAFETY: as above, for the control receive queue.
                let token = unsafe { crx.add(&[], &mut [&mut buf[..]])? };
                self.crx_posted.slots[token as usize] = Some(buf);
            }
        }
        self.transport.notify(Q_RX0);
        if self.ctrl.is_some() {
            self.transport.notify(Q_CRX);
        }
        Ok(())
    }

    fn send_control(&mut self, id: u32, event: u16, value: u16) {
        let mut msg = Vec::with_capacity(CTRL_LEN);
        msg.extend_from_slice(&id.to_le_bytes());
        msg.extend_from_slice(&event.to_le_bytes());
        msg.extend_from_slice(&value.to_le_bytes());
        self.ctx_pending.push_back(msg);
    }

    pub fn features(&self) -> Negotiated {
        self.features
    }

    pub fn ack_interrupt(&mut self) -> bool {
        !self.transport.ack_interrupt().is_empty()
    }

    /// Queues bytes for the host; dropped while no host is connected.
    pub fn write(&mut self, bytes: &[u8]) {
        if !self.host_connected || bytes.is_empty() {
            return;
        }
        for chunk in bytes.chunks(RX_BUF) {
            self.tx_pending.push_back(chunk.to_vec());
        }
    }

    /// Moves completed buffers out of the queues, turns them into events, and feeds the
    /// device what is waiting to be sent. Call from the main loop.
    pub fn poll(&mut self) -> Option<Event> {
        self.reap();
        self.flush();
        self.events.pop_front()
    }

    fn reap(&mut self) {
        let messages = self.take_control_messages();
        // QEMU queues an old client's bytes before its close event, and a new client's after
        // its open event, but on different rings. So: when a close is pending, the data
        // already waiting belongs to the session that is closing and is delivered first; an
        // open is handled before the data that waits, so a client that writes at once (before
        // the greeting reached it) is not lost. Clients that wait for the greeting, as the
        // protocol asks, never straddle the two.
        let closing = messages
            .iter()
            .any(|&(id, event, value)| (id, event, value) == (PORT, PORT_OPEN, 0));
        if closing {
            self.drain_rx();
        }
        for (id, event, value) in messages {
            self.control_message(id, event, value);
        }
        self.drain_rx();
        // Finished transmissions.
        while let Some(token) = self.tx.peek_used() {
            let Some(buf) = self.tx_posted.slots[token as usize].take() else {
                break;
            };
            // SAFETY: `buf` is the buffer added with this token.
            let _ = unsafe { self.tx.pop_used(token, &[&buf[..]], &mut []) };
        }
        if let Err(e) = self.post_receive_buffers() {
            log::warn!("virtio-console: reposting receive buffers failed: {e:?}");
        }
    }

    fn take_control_messages(&mut self) -> Vec<(u32, u16, u16)> {
        let mut messages = Vec::new();
        if let Some((crx, ctx)) = self.ctrl.as_mut() {
            while let Some(token) = crx.peek_used() {
                let Some(mut buf) = self.crx_posted.slots[token as usize].take() else {
                    break;
                };
                // SAFETY: `buf` is the buffer added with this token.
                if let Ok(len) = unsafe { crx.pop_used(token, &[], &mut [&mut buf[..]]) } {
                    if len as usize >= CTRL_LEN {
                        let id = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        let event = u16::from_le_bytes([buf[4], buf[5]]);
                        let value = u16::from_le_bytes([buf[6], buf[7]]);
                        messages.push((id, event, value));
                    }
                }
            }
            while let Some(token) = ctx.peek_used() {
                let Some(buf) = self.ctx_posted.slots[token as usize].take() else {
                    break;
                };
                // SAFETY: `buf` is the buffer added with this token.
                let _ = unsafe { ctx.pop_used(token, &[&buf[..]], &mut []) };
            }
        }
        messages
    }

    /// Port data from the host, delivered to the session that is open now.
    fn drain_rx(&mut self) {
        while let Some(token) = self.rx.peek_used() {
            let Some(mut buf) = self.rx_posted.slots[token as usize].take() else {
                break;
            };
            // SAFETY: `buf` is the buffer added with this token.
            let len = match unsafe { self.rx.pop_used(token, &[], &mut [&mut buf[..]]) } {
                Ok(len) => len as usize,
                Err(_) => break,
            };
            if self.host_connected && len > 0 {
                self.events
                    .push_back(Event::Data(buf[..len.min(RX_BUF)].to_vec()));
            }
        }
    }

    fn control_message(&mut self, id: u32, event: u16, value: u16) {
        log::debug!("virtio-console control: port {id} event {event} value {value}");
        match (event, id) {
            (DEVICE_ADD, PORT) => {
                self.send_control(PORT, PORT_READY, 1);
                self.send_control(PORT, PORT_OPEN, 1);
            }
            (DEVICE_ADD, other) => self.send_control(other, PORT_READY, 0),
            (PORT_OPEN, PORT) => {
                let open = value != 0;
                if open && !self.host_connected {
                    self.host_connected = true;
                    self.events.push_back(Event::Connected);
                } else if !open && self.host_connected {
                    self.host_connected = false;
                    self.tx_pending.clear();
                    self.events.push_back(Event::Disconnected);
                }
            }
            _ => {}
        }
    }

    fn flush(&mut self) {
        let mut notify_tx = false;
        while self.tx.available_desc() > 0 {
            let Some(chunk) = self.tx_pending.pop_front() else {
                break;
            };
            let buf = chunk.into_boxed_slice();
            // SAFETY: the buffer is kept in `tx_posted` until its token is popped.
            match unsafe { self.tx.add(&[&buf[..]], &mut []) } {
                Ok(token) => {
                    self.tx_posted.slots[token as usize] = Some(buf);
                    notify_tx = true;
                }
                Err(_) => {
                    self.tx_pending.push_front(buf.into_vec());
                    break;
                }
            }
        }
        if notify_tx && self.tx.should_notify() {
            self.transport.notify(Q_TX0);
        }
        let mut notify_ctx = false;
        if let Some((_, ctx)) = self.ctrl.as_mut() {
            while ctx.available_desc() > 0 {
                let Some(msg) = self.ctx_pending.pop_front() else {
                    break;
                };
                let buf = msg.into_boxed_slice();
                // SAFETY: as above, for the control transmit queue.
                match unsafe { ctx.add(&[&buf[..]], &mut []) } {
                    Ok(token) => {
                        self.ctx_posted.slots[token as usize] = Some(buf);
                        notify_ctx = true;
                    }
                    Err(_) => {
                        self.ctx_pending.push_front(buf.into_vec());
                        break;
                    }
                }
            }
        }
        if notify_ctx {
            self.transport.notify(Q_CTX);
        }
    }

    /// True if anything waits to be handed to the device.
    pub fn has_pending_output(&self) -> bool {
        !self.tx_pending.is_empty() || !self.ctx_pending.is_empty()
    }
}
