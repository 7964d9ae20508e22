//! The port: how frames get in and out of weft. The kernel implements [`Port`] over a
//! virtio-net device; tests implement it in memory with [`MemPort`]. A port only moves
//! whole Ethernet frames (no FCS); it never parses them and never decides anything.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use smoltcp::wire::EthernetAddress;

/// Why a frame could not be queued for transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// The device's transmit queue is full; the caller counts the frame as dropped.
    QueueFull,
    /// The frame is larger than the device accepts.
    TooLarge,
}

/// A network port that moves Ethernet frames (without FCS).
pub trait Port {
    /// The port's hardware address.
    fn mac(&self) -> EthernetAddress;
    /// Hand up to `max` received frames to `sink`, one call each; returns how many.
    fn receive_batch(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> usize;
    /// Queue one frame for transmission; Err when the device queue is full (counted as a
    /// drop by the caller).
    fn transmit(&mut self, frame: &[u8]) -> Result<(), TxError>;
}

/// An in-memory port for tests: frames are injected on one side and collected on the other.
#[derive(Debug, Clone)]
pub struct MemPort {
    mac: EthernetAddress,
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    tx_capacity: Option<usize>,
}

impl MemPort {
    pub fn new(mac: EthernetAddress) -> Self {
        MemPort {
            mac,
            rx: VecDeque::new(),
            tx: Vec::new(),
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

    /// Queue a frame as if it had arrived from the wire.
    pub fn inject(&mut self, frame: &[u8]) {
        self.rx.push_back(frame.to_vec());
    }

    /// Frames injected but not yet received by the stack.
    pub fn pending_rx(&self) -> usize {
        self.rx.len()
    }

    /// Every frame transmitted since the last call, oldest first.
    pub fn take_transmitted(&mut self) -> Vec<Vec<u8>> {
        core::mem::take(&mut self.tx)
    }
}

impl Port for MemPort {
    fn mac(&self) -> EthernetAddress {
        self.mac
    }

    fn receive_batch(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(frame) = self.rx.pop_front() else {
                break;
            };
            sink(&frame);
            n += 1;
        }
        n
    }

    fn transmit(&mut self, frame: &[u8]) -> Result<(), TxError> {
        if self.tx_capacity.is_some_and(|cap| self.tx.len() >= cap) {
            return Err(TxError::QueueFull);
        }
        self.tx.push(frame.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);

    #[test]
    fn receive_batch_is_bounded_and_ordered() {
        let mut port = MemPort::new(MAC);
        for i in 0..5u8 {
            port.inject(&[i; 20]);
        }
        let mut seen = Vec::new();
        assert_eq!(port.receive_batch(3, &mut |f| seen.push(f[0])), 3);
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(port.pending_rx(), 2);
        assert_eq!(port.receive_batch(10, &mut |f| seen.push(f[0])), 2);
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(port.receive_batch(10, &mut |_| unreachable!()), 0);
    }

    #[test]
    fn transmit_respects_capacity() {
        let mut port = MemPort::with_tx_capacity(MAC, 2);
        assert_eq!(port.transmit(&[1]), Ok(()));
        assert_eq!(port.transmit(&[2]), Ok(()));
        assert_eq!(port.transmit(&[3]), Err(TxError::QueueFull));
        assert_eq!(port.take_transmitted(), [[1u8].to_vec(), [2u8].to_vec()]);
        assert_eq!(port.transmit(&[4]), Ok(()));
    }
}
