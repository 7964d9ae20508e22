//! A `Port` wrapper that records every frame it moves into an in-memory pcap capture
//! (classic libpcap format, LINKTYPE_ETHERNET), in the spirit of smoltcp's `PcapWriter`.
//! For tests and debugging: it never changes, drops or reorders a frame.

use alloc::vec::Vec;
use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;

use crate::pipeline::port::{BufPool, Burst, PacketBuf, Port, TxError};

const MAGIC: u32 = 0xa1b2_c3d4;
const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: u32 = 65_535;

/// Wraps a port; `capture()` is a complete pcap file at any moment.
#[derive(Debug)]
pub struct PcapPort<P> {
    inner: P,
    capture: Vec<u8>,
    now: Instant,
}

impl<P: Port> PcapPort<P> {
    pub fn new(inner: P) -> Self {
        let mut capture = Vec::with_capacity(24);
        capture.extend_from_slice(&MAGIC.to_le_bytes());
        capture.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        capture.extend_from_slice(&4u16.to_le_bytes());
        capture.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        capture.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        capture.extend_from_slice(&SNAPLEN.to_le_bytes());
        capture.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        PcapPort {
            inner,
            capture,
            now: Instant::ZERO,
        }
    }

    /// The timestamp given to frames recorded from now on (ports know no time).
    pub fn set_time(&mut self, now: Instant) {
        self.now = now;
    }

    /// The capture so far: a valid pcap file.
    pub fn capture(&self) -> &[u8] {
        &self.capture
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    pub fn into_parts(self) -> (P, Vec<u8>) {
        (self.inner, self.capture)
    }
}

fn record(capture: &mut Vec<u8>, now: Instant, frame: &[u8]) {
    let micros = now.total_micros().max(0) as u64;
    let len = frame.len().min(SNAPLEN as usize);
    capture.extend_from_slice(&((micros / 1_000_000) as u32).to_le_bytes());
    capture.extend_from_slice(&((micros % 1_000_000) as u32).to_le_bytes());
    capture.extend_from_slice(&(len as u32).to_le_bytes());
    capture.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    capture.extend_from_slice(&frame[..len]);
}

impl<P: Port> Port for PcapPort<P> {
    fn mac(&self) -> EthernetAddress {
        self.inner.mac()
    }

    fn receive(&mut self, pool: &mut BufPool, burst: &mut Burst) -> usize {
        let before = burst.len();
        let n = self.inner.receive(pool, burst);
        for buf in &burst.bufs()[before..] {
            record(&mut self.capture, self.now, buf.frame());
        }
        n
    }

    fn transmit(&mut self, pool: &mut BufPool, buf: PacketBuf) -> Result<(), TxError> {
        let mark = self.capture.len();
        record(&mut self.capture, self.now, buf.frame());
        let result = self.inner.transmit(pool, buf);
        if result.is_err() {
            // A refused frame never went on the wire.
            self.capture.truncate(mark);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::port::{transmit_copy, MemPort};
    use alloc::vec;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    /// (ts_micros, frame) of every record; panics on a malformed capture.
    fn records(capture: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let u32_at = |at: usize| u32::from_le_bytes(capture[at..at + 4].try_into().unwrap());
        assert_eq!(u32_at(0), MAGIC);
        assert_eq!(u32_at(20), LINKTYPE_ETHERNET);
        let mut at = 24;
        let mut out = Vec::new();
        while at < capture.len() {
            let ts = u64::from(u32_at(at)) * 1_000_000 + u64::from(u32_at(at + 4));
            let incl = u32_at(at + 8) as usize;
            assert_eq!(u32_at(at + 12) as usize, incl);
            out.push((ts, capture[at + 16..at + 16 + incl].to_vec()));
            at += 16 + incl;
        }
        assert_eq!(at, capture.len());
        out
    }

    #[test]
    fn records_received_and_transmitted_frames_in_order() {
        let mut pool = BufPool::default();
        let mut port = PcapPort::new(MemPort::with_tx_capacity(MAC, 1));
        port.inner_mut().inject(&[1; 60]);
        port.set_time(Instant::from_micros(2_500_001));
        let mut burst = Burst::new();
        assert_eq!(port.receive(&mut pool, &mut burst), 1);
        let seen: Vec<Vec<u8>> = burst.drain().map(|b| b.frame().to_vec()).collect();
        assert_eq!(seen, vec![vec![1u8; 60]]);
        port.set_time(Instant::from_micros(3_000_000));
        assert_eq!(transmit_copy(&mut port, &mut pool, &[2; 42]), Ok(()));
        // A refused frame never went on the wire: not recorded.
        assert_eq!(
            transmit_copy(&mut port, &mut pool, &[3; 42]),
            Err(TxError::QueueFull)
        );
        assert_eq!(port.mac(), MAC);
        assert_eq!(
            records(port.capture()),
            vec![(2_500_001, vec![1u8; 60]), (3_000_000, vec![2u8; 42])]
        );
        let (mut inner, capture) = port.into_parts();
        assert_eq!(inner.take_transmitted(), vec![vec![2u8; 42]]);
        assert_eq!(capture.len(), 24 + 16 + 60 + 16 + 42);
    }
}
