//! The port: how frames get in and out of weft. The kernel implements [`Port`] over a
//! virtio-net device (`kernel/src/virtio/net.rs`); tests implement it in memory with
//! [`MemPort`]. A port only moves whole Ethernet frames (no FCS); it never parses them
//! and never decides anything.
//!
//! # Buffers, bursts and headroom
//!
//! Frames move in buffers ([`PacketBuf`], `wire/buffer.rs`), never as copies:
//!
//! - [`Port::receive`] hands over up to a [`Burst`] of received frames, each in a buffer
//!   of its own that the port gives up. Every received frame starts at least
//!   [`HEADROOM`] bytes into its buffer, so a stage can put headers in front of it
//!   (VXLAN, sleeve, a VLAN tag) and rewrite it where it lies. The port re-arms its
//!   device with fresh buffers from the [`BufPool`] it is given.
//! - [`Port::transmit`] takes a buffer and sends the frame in it, wherever in the buffer
//!   the frame now starts; a buffer received on one port may leave by the other. The
//!   port gives the buffer back to the pool once the device is done with it (or at
//!   once when it refuses the frame). A port that needs bytes in front of the frame for
//!   its own header (virtio-net: 12) uses the headroom, and copies only when a frame
//!   comes without enough of it.
//! - The pool belongs to the pipeline (`Netstack`), which lends it to the port on every
//!   call: buffers circulate pool -> port (posted for receive) -> burst -> stages ->
//!   port (posted for transmit) -> pool, so once the working set is allocated the
//!   forwarding path allocates nothing.
//!
//! A port may be wrapped: [`crate::PcapPort`] records what passes, the router's tap
//! (`netstack.rs`) takes the frames it translates out of each burst.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use smoltcp::wire::EthernetAddress;

pub use crate::wire::buffer::{BufPool, PacketBuf, BUF_LEN, HEADROOM, MAX_BUFFERED_FRAME};

/// Frames in one burst: what one port hands over per receive, so that one busy NIC
/// cannot starve the other.
pub const BURST: usize = 64;

/// Why a frame could not be queued for transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// The device's transmit queue is full; the caller counts the frame as dropped.
    QueueFull,
    /// The frame is larger than the device accepts.
    TooLarge,
}

/// Up to [`BURST`] received frames, in the order they arrived.
#[derive(Debug, Default)]
pub struct Burst {
    bufs: heapless::Vec<PacketBuf, BURST>,
}

impl Burst {
    pub const fn new() -> Burst {
        Burst {
            bufs: heapless::Vec::new(),
        }
    }

    /// Adds a received frame; gives it back when the burst is full.
    pub fn push(&mut self, buf: PacketBuf) -> Result<(), PacketBuf> {
        self.bufs.push(buf)
    }

    /// Frames that still fit.
    pub fn room(&self) -> usize {
        BURST - self.bufs.len()
    }

    pub fn is_full(&self) -> bool {
        self.bufs.is_full()
    }

    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// The frames, oldest first.
    pub fn bufs(&self) -> &[PacketBuf] {
        &self.bufs
    }

    pub fn bufs_mut(&mut self) -> &mut [PacketBuf] {
        &mut self.bufs
    }

    /// Takes every frame out, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = PacketBuf> + '_ {
        self.bufs.drain(..)
    }

    /// Drops the slots whose buffer a stage took out (`core::mem::take` leaves an
    /// empty buffer of no capacity behind), keeping the others in order.
    pub fn remove_taken(&mut self) {
        self.bufs.retain(|b| b.capacity() != 0);
    }
}

/// A network port that moves Ethernet frames (without FCS) in buffers; see the module
/// documentation for who owns a buffer when.
pub trait Port {
    /// The port's hardware address.
    fn mac(&self) -> EthernetAddress;

    /// Moves up to `burst.room()` received frames into `burst`; returns how many. Each
    /// frame starts at least [`HEADROOM`] bytes into its buffer. The port takes what it
    /// needs to receive more from `pool`.
    fn receive(&mut self, pool: &mut BufPool, burst: &mut Burst) -> usize;

    /// Queues the frame in `buf` for transmission. The buffer is the port's from here
    /// on; it goes back to `pool` when the device is done with it, or at once on `Err`
    /// (the caller counts the frame as dropped).
    fn transmit(&mut self, pool: &mut BufPool, buf: PacketBuf) -> Result<(), TxError>;
}

/// Transmits a copy of `frame` in a buffer from `pool`: for frames built outside the
/// pipeline's buffers (the local endpoints' answers, ARP requests).
pub fn transmit_copy(port: &mut dyn Port, pool: &mut BufPool, frame: &[u8]) -> Result<(), TxError> {
    let buf = pool.copy_of(frame);
    port.transmit(pool, buf)
}

/// Free buffers a [`MemPort`] keeps for frames injected later; beyond, they go back
/// to the pool it is lent.
const MEM_FREE_LIMIT: usize = 2 * BURST;

/// An in-memory port for tests: frames are injected on one side and collected on the
/// other. It re-arms like a device: for every frame it hands over it takes a buffer from
/// the pool for the next injection, and gives back what it has too many of, so a test
/// forwarding from one `MemPort` to another reaches a steady state without allocating.
#[derive(Debug)]
pub struct MemPort {
    mac: EthernetAddress,
    rx: VecDeque<PacketBuf>,
    tx: Vec<PacketBuf>,
    free: Vec<PacketBuf>,
    tx_capacity: Option<usize>,
}

impl MemPort {
    pub fn new(mac: EthernetAddress) -> Self {
        MemPort {
            mac,
            rx: VecDeque::new(),
            tx: Vec::new(),
            free: Vec::new(),
            tx_capacity: None,
        }
    }

    /// A port whose transmit queue holds at most `capacity` frames until they are taken,
    /// to exercise the `tx_full` path.
    pub fn with_tx_capacity(mac: EthernetAddress, capacity: usize) -> Self {
        MemPort {
            tx_capacity: Some(capacity),
            ..MemPort::new(mac)
        }
    }

    /// Queue a frame as if it had arrived from the wire, at [`HEADROOM`] in its buffer.
    pub fn inject(&mut self, frame: &[u8]) {
        let mut buf = self
            .free
            .pop()
            .unwrap_or_else(|| PacketBuf::with_capacity(BUF_LEN));
        if !buf.set_frame(frame) || buf.headroom() < HEADROOM {
            buf = PacketBuf::with_capacity(HEADROOM + frame.len());
            buf.set_frame(frame);
        }
        self.rx.push_back(buf);
    }

    /// Frames injected but not yet received by the stack.
    pub fn pending_rx(&self) -> usize {
        self.rx.len()
    }

    /// Every frame transmitted since the last call, oldest first (copies).
    pub fn take_transmitted(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(self.tx.len());
        self.drain_transmitted(|f| out.push(f.to_vec()));
        out
    }

    /// Hands every frame transmitted since the last call to `f`, oldest first, and keeps
    /// the buffers for later injections; returns how many there were. Allocates nothing.
    pub fn drain_transmitted(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let n = self.tx.len();
        for buf in self.tx.drain(..) {
            f(buf.frame());
            if buf.capacity() == BUF_LEN {
                self.free.push(buf);
            }
        }
        n
    }

    /// Gives `pool` what this port holds beyond its own needs.
    fn trim(&mut self, pool: &mut BufPool) {
        while self.free.len() > MEM_FREE_LIMIT {
            if let Some(buf) = self.free.pop() {
                pool.put(buf);
            }
        }
    }
}

impl Port for MemPort {
    fn mac(&self) -> EthernetAddress {
        self.mac
    }

    fn receive(&mut self, pool: &mut BufPool, burst: &mut Burst) -> usize {
        self.trim(pool);
        let mut n = 0;
        while !burst.is_full() {
            let Some(buf) = self.rx.pop_front() else {
                break;
            };
            if let Err(buf) = burst.push(buf) {
                self.rx.push_front(buf);
                break;
            }
            if self.free.len() < MEM_FREE_LIMIT {
                self.free.push(pool.get());
            }
            n += 1;
        }
        n
    }

    fn transmit(&mut self, pool: &mut BufPool, buf: PacketBuf) -> Result<(), TxError> {
        self.trim(pool);
        if self.tx_capacity.is_some_and(|cap| self.tx.len() >= cap) {
            pool.put(buf);
            return Err(TxError::QueueFull);
        }
        self.tx.push(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);

    fn firsts(burst: &mut Burst) -> Vec<u8> {
        burst.drain().map(|b| b.frame()[0]).collect()
    }

    #[test]
    fn receive_is_bounded_by_the_burst_and_ordered() {
        let mut pool = BufPool::default();
        let mut port = MemPort::new(MAC);
        for i in 0..(BURST + 5) as u8 {
            port.inject(&[i; 20]);
        }
        let mut burst = Burst::new();
        assert_eq!(port.receive(&mut pool, &mut burst), BURST);
        assert!(burst.is_full());
        let seen = firsts(&mut burst);
        assert_eq!(seen, (0..BURST as u8).collect::<Vec<_>>());
        assert_eq!(port.pending_rx(), 5);
        assert_eq!(port.receive(&mut pool, &mut burst), 5);
        assert_eq!(
            firsts(&mut burst),
            (BURST as u8..BURST as u8 + 5).collect::<Vec<_>>()
        );
        assert_eq!(port.receive(&mut pool, &mut burst), 0);
    }

    #[test]
    fn received_frames_have_headroom() {
        let mut pool = BufPool::default();
        let mut port = MemPort::new(MAC);
        port.inject(&[9; 60]);
        let mut burst = Burst::new();
        port.receive(&mut pool, &mut burst);
        let buf = burst.drain().next().unwrap();
        assert!(buf.headroom() >= HEADROOM);
        assert_eq!(buf.frame(), &[9; 60]);
    }

    #[test]
    fn transmit_respects_capacity() {
        let mut pool = BufPool::default();
        let mut port = MemPort::with_tx_capacity(MAC, 2);
        for b in [1u8, 2] {
            assert_eq!(transmit_copy(&mut port, &mut pool, &[b]), Ok(()));
        }
        assert_eq!(
            transmit_copy(&mut port, &mut pool, &[3]),
            Err(TxError::QueueFull)
        );
        assert_eq!(port.take_transmitted(), [[1u8].to_vec(), [2u8].to_vec()]);
        assert_eq!(transmit_copy(&mut port, &mut pool, &[4]), Ok(()));
    }

    #[test]
    fn forwarding_between_two_ports_settles_without_allocating() {
        let mut pool = BufPool::default();
        let (mut a, mut b) = (MemPort::new(MAC), MemPort::new(MAC));
        let mut burst = Burst::new();
        let mut round = |a: &mut MemPort, b: &mut MemPort, pool: &mut BufPool| {
            for _ in 0..BURST {
                a.inject(&[5; 64]);
            }
            a.receive(pool, &mut burst);
            for buf in burst.drain() {
                b.transmit(pool, buf).unwrap();
            }
            b.drain_transmitted(|_| {})
        };
        for _ in 0..4 {
            round(&mut a, &mut b, &mut pool);
        }
        let allocated = pool.allocated();
        for _ in 0..100 {
            assert_eq!(round(&mut a, &mut b, &mut pool), BURST);
        }
        assert_eq!(pool.allocated(), allocated);
    }
}
