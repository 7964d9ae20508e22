//! The capture tap: frames copied, as they pass the datapath's tap points, into a
//! bounded buffer per capture, for the control protocol's `capture-*` commands. The tap
//! points are each NIC's receive and transmit (the frames its port hands over and
//! accepts) and each overlay network's inner frames: what enters the network's bridge
//! from the link or the appliance before encapsulation, and what a peer delivered after
//! decapsulation (sleeve in the clear).
//!
//! It owns the captures' filters, buffers and counters. It never blocks, never waits
//! for a reader and never changes, drops or reorders a frame: a frame that does not fit
//! its capture's buffer is counted as dropped and the datapath carries on. Whether a
//! frame fits is decided before any byte of it is copied, so a full buffer costs the
//! datapath a counter increment per frame, no copy; what is copied is cut to the
//! snapshot length first. Records are libpcap's (a 16-byte header, little-endian,
//! microsecond timestamps, then the bytes).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use serde::{Deserialize, Serialize};
use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;

use super::port::{Burst, Port, TxError};
use crate::base::{NicId, Vni};
use crate::wire::buffer::{BufPool, PacketBuf};

/// Captures that may run at once.
pub const MAX_CAPTURES: usize = 4;
/// Bytes of a record's header before the frame's bytes.
pub const RECORD_HEADER_LEN: usize = 16;
/// The largest snapshot length a capture takes (libpcap's classic maximum).
pub const MAX_SNAPLEN: u32 = 65_535;
/// A buffer holds at least one record of this many frame bytes (or of `snaplen`, if
/// less): the headers of an Ethernet/IPv4/TCP frame. Longer frames may not fit a tiny
/// buffer; they are counted as dropped.
pub const MIN_KEPT_BYTES: usize = 128;
/// Inner frames the overlay stages for the captures in one poll; more are counted as
/// dropped by the captures that wanted them.
const MAX_STAGED: usize = 1024;

/// The bytes of a record of a `len`-byte frame cut to `snaplen`.
fn record_len(len: usize, snaplen: u32) -> usize {
    RECORD_HEADER_LEN + len.min(snaplen as usize)
}

/// Where a capture looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapPoint {
    /// Every frame a NIC's port hands over or accepts.
    Nic(NicId),
    /// Every frame entering this overlay network's bridge on this node.
    Network(Vni),
}

/// What a capture takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSpec {
    pub point: TapPoint,
    /// Bytes kept of each frame (1..=`MAX_SNAPLEN`).
    pub snaplen: u32,
    /// Take no more frames once this many are in (or have left) the buffer.
    pub count: Option<u64>,
    /// Take no frames from this time on.
    pub until: Option<Instant>,
    /// The buffer's size: the records waiting for the reader never take more.
    pub buffer_bytes: usize,
    /// Microseconds added to an `Instant` to make a record's timestamp (the wall clock
    /// at boot, when the platform knows it).
    pub clock_offset_micros: i64,
}

/// What a capture saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureCounters {
    /// Frames seen at the tap point while the capture was taking frames.
    pub seen: u64,
    /// Of those, put into the buffer.
    pub buffered: u64,
    /// Of those, left out: the buffer was full (the reader is behind).
    pub dropped: u64,
}

/// Why a capture was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureError {
    /// `MAX_CAPTURES` are running.
    Busy,
    /// A snapshot length of 0 or over `MAX_SNAPLEN`.
    Snaplen(u32),
    /// A buffer too small for one record of the snapshot length.
    Buffer(usize),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::Busy => write!(f, "{MAX_CAPTURES} captures are running; stop one first"),
            CaptureError::Snaplen(n) => write!(f, "snaplen {n} is not in 1..={MAX_SNAPLEN}"),
            CaptureError::Buffer(n) => write!(f, "a buffer of {n} bytes holds no record"),
        }
    }
}

impl core::error::Error for CaptureError {}

#[derive(Debug)]
struct Capture {
    id: u32,
    spec: CaptureSpec,
    ring: VecDeque<u8>,
    counters: CaptureCounters,
}

impl Capture {
    fn taking(&self, now: Instant) -> bool {
        self.spec.count.is_none_or(|n| self.counters.buffered < n)
            && self.spec.until.is_none_or(|t| now < t)
    }

    /// Bytes free in the buffer.
    fn room(&self) -> usize {
        self.spec.buffer_bytes.saturating_sub(self.ring.len())
    }

    /// Whether a frame of `len` bytes seen at `now` would be put into the buffer.
    fn would_take(&self, now: Instant, len: usize) -> bool {
        self.taking(now) && record_len(len, self.spec.snaplen) <= self.room()
    }

    /// `n` frames seen at `now` that were not copied for this capture: dropped.
    fn missed(&mut self, now: Instant, n: u64) {
        if n > 0 && self.taking(now) {
            self.counters.seen += n;
            self.counters.dropped += n;
        }
    }

    /// One frame (of `orig_len` bytes, `data` its first bytes) seen at `now`.
    fn offer(&mut self, now: Instant, data: Option<&[u8]>, orig_len: usize) {
        if !self.taking(now) {
            return;
        }
        self.counters.seen += 1;
        let Some(data) = data else {
            self.counters.dropped += 1;
            return;
        };
        let incl = data.len().min(self.spec.snaplen as usize);
        if RECORD_HEADER_LEN + incl > self.room() {
            self.counters.dropped += 1;
            return;
        }
        let micros = (now.total_micros() + self.spec.clock_offset_micros).max(0) as u64;
        let fields = [
            (micros / 1_000_000) as u32,
            (micros % 1_000_000) as u32,
            incl as u32,
            orig_len.min(u32::MAX as usize) as u32,
        ];
        for f in fields {
            self.ring.extend(f.to_le_bytes());
        }
        self.ring.extend(&data[..incl]);
        self.counters.buffered += 1;
    }

    /// The length of the record at the head of the buffer.
    fn head_len(&self) -> Option<usize> {
        if self.ring.len() < RECORD_HEADER_LEN {
            return None;
        }
        let incl = u32::from_le_bytes([self.ring[8], self.ring[9], self.ring[10], self.ring[11]]);
        Some(RECORD_HEADER_LEN + incl as usize)
    }
}

/// Every running capture. `Default` is a tap with none (the datapath's fast path).
#[derive(Debug, Default)]
pub struct CaptureTap {
    captures: Vec<Capture>,
    next_id: u32,
}

impl CaptureTap {
    /// Starts a capture; its id names it from now on. The buffer is allocated whole.
    pub fn start(&mut self, spec: CaptureSpec) -> Result<u32, CaptureError> {
        if self.captures.len() >= MAX_CAPTURES {
            return Err(CaptureError::Busy);
        }
        if spec.snaplen == 0 || spec.snaplen > MAX_SNAPLEN {
            return Err(CaptureError::Snaplen(spec.snaplen));
        }
        if spec.buffer_bytes < RECORD_HEADER_LEN + (spec.snaplen as usize).min(MIN_KEPT_BYTES) {
            return Err(CaptureError::Buffer(spec.buffer_bytes));
        }
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        self.captures.push(Capture {
            id,
            spec,
            ring: VecDeque::with_capacity(spec.buffer_bytes),
            counters: CaptureCounters::default(),
        });
        Ok(id)
    }

    /// Ends a capture: its buffer is freed. Returns its counters (what was still
    /// buffered counts as dropped) and the bytes discarded; `None` for an unknown id.
    pub fn stop(&mut self, id: u32) -> Option<(CaptureCounters, usize)> {
        let i = self.captures.iter().position(|c| c.id == id)?;
        let c = self.captures.swap_remove(i);
        let mut counters = c.counters;
        let mut at = 0;
        let mut left = 0u64;
        while at + RECORD_HEADER_LEN <= c.ring.len() {
            let incl = u32::from_le_bytes([
                c.ring[at + 8],
                c.ring[at + 9],
                c.ring[at + 10],
                c.ring[at + 11],
            ]);
            at += RECORD_HEADER_LEN + incl as usize;
            left += 1;
        }
        counters.buffered -= left;
        counters.dropped += left;
        Some((counters, c.ring.len()))
    }

    /// Ends every capture.
    pub fn stop_all(&mut self) {
        self.captures.clear();
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.captures.iter().map(|c| c.id)
    }

    pub fn spec(&self, id: u32) -> Option<&CaptureSpec> {
        self.find(id).map(|c| &c.spec)
    }

    pub fn counters(&self, id: u32) -> Option<CaptureCounters> {
        self.find(id).map(|c| c.counters)
    }

    /// Whether capture `id` still takes frames at `now` (false once its count or time
    /// is reached, or for an unknown id).
    pub fn is_taking(&self, id: u32, now: Instant) -> bool {
        self.find(id).is_some_and(|c| c.taking(now))
    }

    /// Bytes of records waiting in capture `id`'s buffer.
    pub fn buffered_bytes(&self, id: u32) -> usize {
        self.find(id).map_or(0, |c| c.ring.len())
    }

    /// The length of the oldest record waiting in capture `id`'s buffer, header included.
    pub fn head_len(&self, id: u32) -> Option<usize> {
        self.find(id)?.head_len()
    }

    /// Moves whole records of capture `id` to `out`, oldest first, while they fit in
    /// `max_bytes` (at least one, whatever its size); returns how many.
    pub fn drain(&mut self, id: u32, max_bytes: usize, out: &mut Vec<u8>) -> usize {
        let Some(c) = self.captures.iter_mut().find(|c| c.id == id) else {
            return 0;
        };
        let mut bytes = 0;
        let mut records = 0;
        let mut at = 0;
        while at + RECORD_HEADER_LEN <= c.ring.len() {
            let incl = u32::from_le_bytes([
                c.ring[at + 8],
                c.ring[at + 9],
                c.ring[at + 10],
                c.ring[at + 11],
            ]) as usize;
            let len = RECORD_HEADER_LEN + incl;
            if records > 0 && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            at += len;
            records += 1;
        }
        let (a, b) = c.ring.as_slices();
        let from_a = bytes.min(a.len());
        out.extend_from_slice(&a[..from_a]);
        out.extend_from_slice(&b[..bytes - from_a]);
        c.ring.drain(..bytes);
        debug_assert!(c.head_len().is_none_or(|l| l <= c.ring.len()));
        records
    }

    /// No capture runs: the datapath has nothing to copy.
    pub fn is_idle(&self) -> bool {
        self.captures.is_empty()
    }

    /// Whether a capture looks at `point`.
    pub fn watches(&self, point: TapPoint) -> bool {
        self.captures.iter().any(|c| c.spec.point == point)
    }

    /// The networks captures look at, each with the largest snapshot length wanted.
    pub fn networks(&self) -> Vec<(Vni, u32)> {
        let mut out: Vec<(Vni, u32)> = Vec::new();
        for c in &self.captures {
            if let TapPoint::Network(vni) = c.spec.point {
                match out.iter_mut().find(|(v, _)| *v == vni) {
                    Some((_, snap)) => *snap = (*snap).max(c.spec.snaplen),
                    None => out.push((vni, c.spec.snaplen)),
                }
            }
        }
        out
    }

    /// What the overlay is to stage for the captures during a poll at `now`: each
    /// watched network with the largest snapshot length and the most buffer room any
    /// of its captures taking frames has.
    pub(crate) fn inner_watch(&self, now: Instant) -> Vec<Watch> {
        let mut out: Vec<Watch> = Vec::new();
        for c in &self.captures {
            let TapPoint::Network(vni) = c.spec.point else {
                continue;
            };
            let room = if c.taking(now) { c.room() } else { 0 };
            match out.iter_mut().find(|w| w.vni == vni) {
                Some(w) => {
                    w.snaplen = w.snaplen.max(c.spec.snaplen);
                    w.room = w.room.max(room);
                }
                None => out.push(Watch {
                    vni,
                    snaplen: c.spec.snaplen,
                    room,
                    missed: 0,
                }),
            }
        }
        out
    }

    /// Whether a capture at `point` would put a frame of `len` bytes seen at `now`
    /// into its buffer (if none would, the frame need not be copied for them).
    pub fn would_take(&self, point: TapPoint, now: Instant, len: usize) -> bool {
        self.captures
            .iter()
            .any(|c| c.spec.point == point && c.would_take(now, len))
    }

    /// A frame seen at `point` at `now`: copied into every capture there that has
    /// room for it, counted as dropped by the others.
    pub fn offer(&mut self, point: TapPoint, now: Instant, frame: &[u8]) {
        self.offer_part(point, now, frame, frame.len());
    }

    /// `offer` for a frame of `orig_len` bytes of which `data` are the first.
    fn offer_part(&mut self, point: TapPoint, now: Instant, data: &[u8], orig_len: usize) {
        for c in self.captures.iter_mut().filter(|c| c.spec.point == point) {
            c.offer(now, Some(data), orig_len);
        }
    }

    /// The largest snapshot length of the captures at `point` (0: none).
    fn snaplen(&self, point: TapPoint) -> u32 {
        self.captures
            .iter()
            .filter(|c| c.spec.point == point)
            .map(|c| c.spec.snaplen)
            .max()
            .unwrap_or(0)
    }

    /// `n` frames seen at `point` at `now` and not copied: dropped by every capture
    /// there.
    pub fn missed(&mut self, point: TapPoint, now: Instant, n: u64) {
        for c in self.captures.iter_mut().filter(|c| c.spec.point == point) {
            c.missed(now, n);
        }
    }

    /// Frames the overlay staged during a poll at `now`.
    pub(crate) fn take_staged(&mut self, now: Instant, staged: &mut InnerTap) {
        for s in staged.staged.drain(..) {
            let data = &staged.bytes[s.at..s.at + s.len];
            for c in self
                .captures
                .iter_mut()
                .filter(|c| c.spec.point == TapPoint::Network(s.vni))
            {
                c.offer(now, Some(data), s.orig_len);
            }
        }
        staged.bytes.clear();
        for w in &mut staged.watch {
            let n = core::mem::take(&mut w.missed);
            self.missed(TapPoint::Network(w.vni), now, n);
        }
    }

    /// The earliest time a capture stops taking frames by its time limit.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.captures
            .iter()
            .filter(|c| c.taking(now))
            .filter_map(|c| c.spec.until)
            .min()
    }

    fn find(&self, id: u32) -> Option<&Capture> {
        self.captures.iter().find(|c| c.id == id)
    }
}

/// One inner frame staged by the overlay: its network, its length, and where its
/// first bytes lie in the staging area.
#[derive(Debug, Clone)]
struct Staged {
    vni: Vni,
    orig_len: usize,
    at: usize,
    len: usize,
}

/// A network the overlay stages inner frames of, for one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Watch {
    vni: Vni,
    /// Bytes staged of each frame at most.
    snaplen: u32,
    /// Record bytes that its captures may still take in this poll (the most of any);
    /// a frame past them is not copied, only counted.
    room: usize,
    /// Frames of this poll not copied: more than `room`, or than `MAX_STAGED`.
    missed: u64,
}

/// The overlay datapath's tap: which networks are watched (set before each poll) and
/// the inner frames staged during it, in one reused area (taken by the `CaptureTap`
/// after it).
#[derive(Debug, Clone, Default)]
pub(crate) struct InnerTap {
    watch: Vec<Watch>,
    staged: Vec<Staged>,
    bytes: Vec<u8>,
}

impl InnerTap {
    /// Watches `watch` from now on; frames missed and not yet taken stay counted.
    pub(crate) fn set_watch(&mut self, mut watch: Vec<Watch>) {
        for old in &self.watch {
            if let Some(w) = watch.iter_mut().find(|w| w.vni == old.vni) {
                w.missed += old.missed;
            }
        }
        self.watch = watch;
    }

    /// Watches nothing more (the last capture ended); the staging area is freed.
    pub(crate) fn clear(&mut self) {
        if !self.watch.is_empty() || self.bytes.capacity() > 0 {
            *self = InnerTap::default();
        }
    }

    pub(crate) fn watches(&self, vni: Vni) -> bool {
        self.watch.iter().any(|w| w.vni == vni)
    }

    /// A frame entering network `vni`'s bridge: its first bytes staged if a capture
    /// has room for them, else only counted.
    pub(crate) fn stage(&mut self, vni: Vni, frame: &[u8]) {
        let Some(w) = self.watch.iter_mut().find(|w| w.vni == vni) else {
            return;
        };
        let len = frame.len().min(w.snaplen as usize);
        if self.staged.len() >= MAX_STAGED || RECORD_HEADER_LEN + len > w.room {
            w.missed += 1;
            return;
        }
        w.room -= RECORD_HEADER_LEN + len;
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&frame[..len]);
        self.staged.push(Staged {
            vni,
            orig_len: frame.len(),
            at,
            len,
        });
    }
}

/// A port whose frames, received and accepted for transmission, are offered to the
/// captures of its NIC on the way.
pub(crate) struct CapturePort<'a> {
    pub(crate) inner: &'a mut dyn Port,
    pub(crate) nic: NicId,
    pub(crate) tap: &'a RefCell<CaptureTap>,
    pub(crate) now: Instant,
}

impl Port for CapturePort<'_> {
    fn mac(&self) -> EthernetAddress {
        self.inner.mac()
    }

    fn receive(&mut self, pool: &mut BufPool, burst: &mut Burst) -> usize {
        let before = burst.len();
        let n = self.inner.receive(pool, burst);
        if n > 0 {
            let mut tap = self.tap.borrow_mut();
            for buf in &burst.bufs()[before..] {
                tap.offer(TapPoint::Nic(self.nic), self.now, buf.frame());
            }
        }
        n
    }

    /// Only what the port accepts is offered. The port owns the buffer from here on,
    /// so while a capture watches this NIC the frame is copied first (a cost of
    /// capturing only).
    fn transmit(&mut self, pool: &mut BufPool, buf: PacketBuf) -> Result<(), TxError> {
        let point = TapPoint::Nic(self.nic);
        let (watched, copy) = {
            let tap = self.tap.borrow();
            let watched = tap.watches(point);
            let copy = watched && tap.would_take(point, self.now, buf.len());
            (watched, copy.then(|| tap.snaplen(point) as usize))
        };
        if !watched {
            return self.inner.transmit(pool, buf);
        }
        let Some(snaplen) = copy else {
            self.inner.transmit(pool, buf)?;
            self.tap.borrow_mut().missed(point, self.now, 1);
            return Ok(());
        };
        let orig_len = buf.len();
        let data = buf.frame()[..orig_len.min(snaplen)].to_vec();
        self.inner.transmit(pool, buf)?;
        self.tap
            .borrow_mut()
            .offer_part(point, self.now, &data, orig_len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::port::MemPort;

    fn spec(point: TapPoint) -> CaptureSpec {
        CaptureSpec {
            point,
            snaplen: MAX_SNAPLEN,
            count: None,
            until: None,
            buffer_bytes: 1 << 16,
            clock_offset_micros: 0,
        }
    }

    /// (ts_micros, orig_len, bytes) of each record.
    fn records(mut bytes: &[u8]) -> Vec<(u64, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let u = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
            let (incl, orig) = (u(8) as usize, u(12));
            let ts = u64::from(u(0)) * 1_000_000 + u64::from(u(4));
            out.push((ts, orig, bytes[16..16 + incl].to_vec()));
            bytes = &bytes[16 + incl..];
        }
        out
    }

    const UPLINK: TapPoint = TapPoint::Nic(NicId::Uplink);

    #[test]
    fn a_capture_takes_its_points_frames_cut_to_its_snaplen_with_wall_clock_times() {
        let mut tap = CaptureTap::default();
        assert!(tap.is_idle());
        let id = tap
            .start(CaptureSpec {
                snaplen: 4,
                clock_offset_micros: 1_700_000_000_000_000,
                ..spec(UPLINK)
            })
            .unwrap();
        assert!(tap.watches(UPLINK) && !tap.watches(TapPoint::Nic(NicId::Link)));
        tap.offer(UPLINK, Instant::from_micros(2_500_001), &[1; 60]);
        tap.offer(
            TapPoint::Nic(NicId::Link),
            Instant::from_micros(3),
            &[2; 60],
        );
        let mut out = Vec::new();
        assert_eq!(tap.drain(id, usize::MAX, &mut out), 1);
        assert_eq!(
            records(&out),
            [(1_700_000_002_500_001, 60, alloc::vec![1u8; 4])]
        );
        assert_eq!(
            tap.counters(id),
            Some(CaptureCounters {
                seen: 1,
                buffered: 1,
                dropped: 0
            })
        );
    }

    #[test]
    fn a_full_buffer_drops_and_counts_and_never_grows() {
        let mut tap = CaptureTap::default();
        let id = tap
            .start(CaptureSpec {
                buffer_bytes: 3 * (16 + 100),
                ..spec(UPLINK)
            })
            .unwrap();
        for i in 0..10u8 {
            tap.offer(UPLINK, Instant::from_millis(i64::from(i)), &[i; 100]);
        }
        assert_eq!(tap.buffered_bytes(id), 3 * 116);
        let c = tap.counters(id).unwrap();
        assert_eq!((c.seen, c.buffered, c.dropped), (10, 3, 7));
        // Draining makes room: whole records only, within the size asked for.
        let mut out = Vec::new();
        assert_eq!(tap.drain(id, 2 * 116 + 50, &mut out), 2);
        assert_eq!(records(&out).len(), 2);
        tap.offer(UPLINK, Instant::from_millis(20), &[20; 100]);
        let (end, discarded) = tap.stop(id).unwrap();
        // What was still buffered at the stop is dropped too.
        assert_eq!(discarded, 2 * 116);
        assert_eq!((end.seen, end.buffered, end.dropped), (11, 2, 9));
        assert!(tap.is_idle());
    }

    #[test]
    fn count_and_time_limits_end_the_taking() {
        let mut tap = CaptureTap::default();
        let by_count = tap
            .start(CaptureSpec {
                count: Some(2),
                ..spec(UPLINK)
            })
            .unwrap();
        let by_time = tap
            .start(CaptureSpec {
                until: Some(Instant::from_secs(5)),
                ..spec(UPLINK)
            })
            .unwrap();
        assert_eq!(
            tap.next_deadline(Instant::ZERO),
            Some(Instant::from_secs(5))
        );
        for s in 0..8 {
            tap.offer(UPLINK, Instant::from_secs(s), &[0; 20]);
        }
        assert_eq!(tap.counters(by_count).unwrap().buffered, 2);
        assert_eq!(tap.counters(by_time).unwrap().buffered, 5);
        assert!(!tap.is_taking(by_count, Instant::from_secs(1)));
        assert!(!tap.is_taking(by_time, Instant::from_secs(5)));
        assert_eq!(tap.next_deadline(Instant::from_secs(5)), None);
    }

    #[test]
    fn bad_specs_and_too_many_captures_are_refused() {
        let mut tap = CaptureTap::default();
        let zero = CaptureSpec {
            snaplen: 0,
            ..spec(UPLINK)
        };
        assert_eq!(tap.start(zero), Err(CaptureError::Snaplen(0)));
        let small = CaptureSpec {
            buffer_bytes: 100,
            ..spec(UPLINK)
        };
        assert_eq!(tap.start(small), Err(CaptureError::Buffer(100)));
        for _ in 0..MAX_CAPTURES {
            tap.start(spec(UPLINK)).unwrap();
        }
        assert_eq!(tap.start(spec(UPLINK)), Err(CaptureError::Busy));
        assert_eq!(tap.stop(12345), None);
    }

    #[test]
    fn the_capture_port_records_what_it_moves_and_nothing_refused() {
        let tap = RefCell::new(CaptureTap::default());
        let id = tap
            .borrow_mut()
            .start(spec(TapPoint::Nic(NicId::Link)))
            .unwrap();
        let mut inner = MemPort::with_tx_capacity(EthernetAddress([2, 0, 0, 0, 0, 1]), 1);
        inner.inject(&[7; 60]);
        let mut port = CapturePort {
            inner: &mut inner,
            nic: NicId::Link,
            tap: &tap,
            now: Instant::from_millis(1),
        };
        let mut pool = BufPool::new(16);
        let mut burst = Burst::default();
        assert_eq!(port.receive(&mut pool, &mut burst), 1);
        let seen = burst.len();
        let b = pool.copy_of(&[8; 42]);
        assert_eq!(port.transmit(&mut pool, b), Ok(()));
        let b = pool.copy_of(&[9; 42]);
        assert_eq!(port.transmit(&mut pool, b), Err(TxError::QueueFull));
        let mut out = Vec::new();
        tap.borrow_mut().drain(id, usize::MAX, &mut out);
        let got: Vec<u8> = records(&out).iter().map(|r| r.2[0]).collect();
        assert_eq!((seen, got), (1, alloc::vec![7, 8]));
    }

    #[test]
    fn frames_past_a_full_buffer_are_counted_without_a_copy() {
        let vni = Vni::new(100).unwrap();
        let point = TapPoint::Network(vni);
        let mut tap = CaptureTap::default();
        let id = tap
            .start(CaptureSpec {
                snaplen: 60,
                buffer_bytes: 2 * (16 + 60),
                ..spec(point)
            })
            .unwrap();
        let mut inner = InnerTap::default();
        inner.set_watch(tap.inner_watch(Instant::ZERO));
        for i in 0..10u8 {
            inner.stage(vni, &[i; 100]);
        }
        // Only what the buffer can take was copied, and only its snaplen.
        assert_eq!(inner.bytes.len(), 2 * 60);
        assert_eq!(inner.staged.len(), 2);
        tap.take_staged(Instant::ZERO, &mut inner);
        let c = tap.counters(id).unwrap();
        assert_eq!((c.seen, c.buffered, c.dropped), (10, 2, 8));
        // The next poll finds no room: nothing is staged, everything counted.
        inner.set_watch(tap.inner_watch(Instant::ZERO));
        inner.stage(vni, &[1; 100]);
        assert!(inner.bytes.is_empty() && inner.staged.is_empty());
        tap.take_staged(Instant::ZERO, &mut inner);
        assert_eq!(tap.counters(id).unwrap().dropped, 9);

        // The same on a NIC's transmit side.
        let tap = RefCell::new(CaptureTap::default());
        let link = TapPoint::Nic(NicId::Link);
        let id = tap
            .borrow_mut()
            .start(CaptureSpec {
                snaplen: 20,
                buffer_bytes: 16 + MIN_KEPT_BYTES,
                ..spec(link)
            })
            .unwrap();
        let mut inner = MemPort::with_tx_capacity(EthernetAddress([2, 0, 0, 0, 0, 1]), 8);
        let mut port = CapturePort {
            inner: &mut inner,
            nic: NicId::Link,
            tap: &tap,
            now: Instant::ZERO,
        };
        let mut pool = BufPool::new(16);
        for i in 0..7u8 {
            let b = pool.copy_of(&[i; 60]);
            assert_eq!(port.transmit(&mut pool, b), Ok(()));
        }
        let c = tap.borrow().counters(id).unwrap();
        // 36-byte records in a 144-byte buffer: 4 taken, 3 dropped.
        assert_eq!((c.seen, c.buffered, c.dropped), (7, 4, 3));
        let mut out = Vec::new();
        tap.borrow_mut().drain(id, usize::MAX, &mut out);
        let got = records(&out);
        assert_eq!((got[3].1, got[3].2.len()), (60, 20));
    }

    #[test]
    fn staged_inner_frames_reach_their_networks_captures_and_overflow_is_dropped() {
        let vni = Vni::new(100).unwrap();
        let mut tap = CaptureTap::default();
        let id = tap
            .start(CaptureSpec {
                snaplen: 10,
                ..spec(TapPoint::Network(vni))
            })
            .unwrap();
        let mut inner = InnerTap::default();
        inner.stage(vni, &[1; 50]);
        assert!(inner.staged.is_empty(), "nothing is watched yet");
        inner.set_watch(tap.inner_watch(Instant::ZERO));
        for _ in 0..MAX_STAGED + 3 {
            inner.stage(vni, &[1; 50]);
        }
        inner.stage(Vni::new(200).unwrap(), &[2; 50]);
        tap.take_staged(Instant::ZERO, &mut inner);
        let c = tap.counters(id).unwrap();
        assert_eq!((c.seen, c.dropped), (MAX_STAGED as u64 + 3, 3));
        let mut out = Vec::new();
        tap.drain(id, 26, &mut out);
        assert_eq!(records(&out), [(0, 50, alloc::vec![1u8; 10])]);
    }
}
