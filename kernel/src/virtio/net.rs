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
//!
//! Offloads are taken as the NIC's [`Role`] asks and the device offers, and end here:
//! the netstack only ever sees plain frames. A received super-frame (spread over
//! several pool buffers with mergeable receive buffers) is cut into MSS-sized frames in
//! pool buffers, checksums written as it goes (`wire::tso`); a partial checksum
//! (`NEEDS_CSUM`) is completed before the frame is handed up. A header that makes no
//! sense (a segmentation kind not negotiated, a super-frame that is not TCP/IPv4, a
//! partial checksum outside the frame, buffers that do not add up) is a counted drop.

use crate::virtio::features::{self, Negotiated};
use crate::virtio::hal::KernelHal;
use crate::virtio::Transport;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use smoltcp::wire::EthernetAddress;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport as _;
use virtio_drivers::Error;
use weft_appliance::protocol::NicOffloads;
use weft_netstack::base::{Offload, MAX_SUPER_FRAME_LEN};
use weft_netstack::pipeline::port::{BufPool, Burst, PacketBuf, Port, TxError, BUF_LEN, HEADROOM};
use weft_netstack::wire::gro::{self, Append, Merge, Segment};
use weft_netstack::wire::sum;
use weft_netstack::wire::tso::{SegmentCsum, Segmenter};

const QUEUE_SIZE: usize = 256;
const Q_RX: u16 = 0;
const Q_TX: u16 = 1;
/// How long `transmit` waits for the device to free a slot before counting a drop. QEMU
/// drains the ring from another thread; a short wait beats losing a TCP segment.
const TX_FULL_WAIT_US: u64 = 50;
/// Where the device writes a received buffer: its header, then the frame at `HEADROOM`.
/// The further buffers of a frame spread over several hold its bytes from here on.
const RX_AT: usize = HEADROOM - hdr::LEN;
/// The most segments one received super-frame may be cut into; a larger count (a tiny
/// MSS) is refused rather than flooding the pool.
const MAX_RX_SEGMENTS: usize = 128;
/// Super-frame buffers kept for reuse once the device has sent them.
const MERGED_FREE_LIMIT: usize = 32;

/// The `virtio_net_hdr` in front of every frame (virtio 1.2, 5.1.6). With VERSION_1 it is
/// 12 bytes, `num_buffers` included; fields are little-endian.
mod hdr {
    use weft_netstack::base::{Csum, Offload};

    pub const LEN: usize = 12;
    const F_NEEDS_CSUM: u8 = 1;
    const GSO_NONE: u8 = 0;
    const GSO_TCPV4: u8 = 1;
    const GSO_ECN: u8 = 0x80;

    /// What a received header asks of the driver.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Rx {
        /// `NEEDS_CSUM`: the checksum at `start + offset` is the pseudo-header sum only.
        pub partial: Option<(usize, usize)>,
        pub gso: Gso,
        /// Buffers the frame spans (mergeable receive buffers; 1 otherwise).
        pub num_buffers: u16,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Gso {
        None,
        /// A TCP/IPv4 super-frame to cut into segments of `mss` payload bytes.
        Tcp4 {
            mss: u16,
        },
        /// A kind weft never negotiated (UDP, IPv6, or garbage).
        Other(u8),
    }

    fn u16_at(h: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([h[at], h[at + 1]])
    }

    impl Rx {
        /// The header that needs nothing: the fast path's test.
        pub fn is_plain(&self) -> bool {
            self.partial.is_none() && self.gso == Gso::None && self.num_buffers <= 1
        }
    }

    /// Reads the header at the start of `h` (at least [`LEN`] bytes).
    pub fn read(h: &[u8]) -> Rx {
        let partial = (h[0] & F_NEEDS_CSUM != 0)
            .then(|| (usize::from(u16_at(h, 6)), usize::from(u16_at(h, 8))));
        // ECN only says the sender set CWR, which segmentation keeps on the first segment.
        let gso = match h[1] & !GSO_ECN {
            GSO_NONE => Gso::None,
            GSO_TCPV4 => Gso::Tcp4 { mss: u16_at(h, 4) },
            other => Gso::Other(other),
        };
        Rx {
            partial,
            gso,
            num_buffers: u16_at(h, 10),
        }
    }

    /// Writes the header of a frame that needs nothing from the device.
    pub fn write_plain(buf: &mut [u8]) {
        buf[..LEN].fill(0);
    }

    /// Writes the header of a frame to send with `offload`: `hdr_len` is the length of
    /// its headers up to the payload, which a segmentation request needs.
    pub fn write(buf: &mut [u8], offload: &Offload, hdr_len: usize) {
        write_plain(buf);
        let h = &mut buf[..LEN];
        if let Csum::Partial { start, offset } = offload.csum {
            h[0] = F_NEEDS_CSUM;
            h[6..8].copy_from_slice(&start.to_le_bytes());
            h[8..10].copy_from_slice(&offset.to_le_bytes());
        }
        if let Some(gso) = offload.gso {
            h[1] = GSO_TCPV4 | if gso.ecn { GSO_ECN } else { 0 };
            h[2..4].copy_from_slice(&(hdr_len as u16).to_le_bytes());
            h[4..6].copy_from_slice(&gso.mss.to_le_bytes());
        }
    }
}

/// What a NIC is for, which decides the offloads it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No offloads at all (`weft.offload=off`).
    Plain,
    /// Checksums both ways: the uplink, whose frames are underlay datagrams.
    Checksums,
    /// Checksums and TCP/IPv4 super-frames both ways: the container link.
    Segments,
    /// Only the device's side: it completes checksums and cuts super-frames weft sends
    /// (HOST_TSO4 where offered); what it hands over comes plain.
    Transmit,
}

/// A transmit buffer the device owns.
enum TxBuf {
    /// A pool buffer: the header in its headroom, then the frame.
    Pool(PacketBuf),
    /// A super-frame merged here: the header, then the frame.
    Merged(Vec<u8>),
}

impl TxBuf {
    /// The bytes posted: header and frame.
    fn bytes(&self) -> &[u8] {
        match self {
            TxBuf::Pool(buf) => buf.frame(),
            TxBuf::Merged(v) => v,
        }
    }
}

/// The transmit side's merge state: the super-frame being built, and the buffers for
/// the next ones.
#[derive(Default)]
struct Merging {
    held: Option<(Merge, Vec<u8>)>,
    free: Vec<Vec<u8>>,
    /// Super-frames the device owns: at [`MERGED_FREE_LIMIT`] no new one is started
    /// (segments go as they are), which bounds the memory merging takes.
    in_flight: usize,
}

pub struct NetPort {
    transport: Transport,
    rx: VirtQueue<KernelHal, QUEUE_SIZE>,
    tx: VirtQueue<KernelHal, QUEUE_SIZE>,
    mac: EthernetAddress,
    features: Negotiated,
    /// Mergeable receive buffers: a frame may span several (`num_buffers`).
    mergeable: bool,
    /// A frame spread over several receive buffers, put together (capacity kept).
    rx_joined: Vec<u8>,
    /// Segments of a super-frame that did not fit the burst they were cut in: the next
    /// receive hands them over first.
    rx_pending: VecDeque<PacketBuf>,
    /// The features negotiated and what the offloads did (for `status`).
    offload: NicOffloads,
    /// Receive buffers the device owns, by token.
    rx_posted: Vec<Option<PacketBuf>>,
    /// Transmit buffers the device owns, by token: the header and frame posted.
    tx_posted: Vec<Option<TxBuf>>,
    /// Pool buffers the device has sent, for the pool at the next call that has it.
    tx_done: Vec<PacketBuf>,
    /// Consecutive segments of one TCP flow sent to a device that takes super-frames
    /// (HOST_TSO4) are merged here until the end of the burst ([`NetPort::flush`]) or a
    /// frame that does not continue them; `None` when the device takes none.
    merging: Option<Merging>,
    /// Buffers were added since the device was last notified, and it asked to be told.
    rx_notify: bool,
    tx_notify: bool,
}

impl NetPort {
    pub fn new(mut transport: Transport, role: Role) -> Result<Self, Error> {
        let offered = transport.read_device_features();
        let wanted = match role {
            Role::Plain => 0,
            Role::Checksums => features::net_offloads_wanted(offered, false),
            Role::Segments => features::net_offloads_wanted(offered, true),
            Role::Transmit => features::NET_CSUM | features::NET_HOST_TSO4,
        };
        let features =
            Negotiated::begin_init_offered(&mut transport, offered, features::NET_TAKEN | wanted);
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
            mergeable: features.taken & features::NET_MRG_RXBUF != 0,
            rx_joined: Vec::new(),
            rx_pending: VecDeque::new(),
            offload: NicOffloads {
                csum: features.taken & features::NET_CSUM != 0,
                guest_csum: features.taken & features::NET_GUEST_CSUM != 0,
                host_tso4: features.taken & features::NET_HOST_TSO4 != 0,
                guest_tso4: features.taken & features::NET_GUEST_TSO4 != 0,
                mrg_rxbuf: features.taken & features::NET_MRG_RXBUF != 0,
                ..NicOffloads::default()
            },
            rx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx_posted: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx_done: Vec::with_capacity(QUEUE_SIZE),
            merging: (features.taken & features::NET_HOST_TSO4 != 0
                && features.taken & features::NET_CSUM != 0)
                .then(Merging::default),
            rx_notify: false,
            tx_notify: false,
        };
        if features.taken & features::NET_GUEST_TSO4 != 0 {
            // Allocated once: a whole super-frame, and the segments of one.
            port.rx_joined.reserve_exact(MAX_SUPER_FRAME_LEN);
            port.rx_pending.reserve_exact(MAX_RX_SEGMENTS);
        }
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

    /// Takes the next completed receive buffer and the bytes the device wrote into it
    /// (header included), and posts a fresh buffer from `pool` in its place.
    fn pop_rx(&mut self, pool: &mut BufPool) -> Option<(PacketBuf, usize)> {
        let token = self.rx.peek_used()?;
        let Some(mut buf) = self.rx_posted[token as usize].take() else {
            log::error!("virtio-net: completed rx token {token} has no buffer");
            return None;
        };
        // SAFETY: `buf.buffer_mut()[RX_AT..]` is the slice posted with this token.
        let popped = unsafe {
            self.rx
                .pop_used(token, &[], &mut [&mut buf.buffer_mut()[RX_AT..]])
        };
        if let Err(e) = self.post_rx(pool.get()) {
            log::error!("virtio-net: re-posting an rx buffer failed: {e:?}");
        }
        match popped {
            Ok(len) => Some((buf, len as usize)),
            Err(e) => {
                log::warn!("virtio-net: rx completion failed: {e:?}");
                pool.put(buf);
                None
            }
        }
    }

    /// Makes the received frame in `buf` (its first buffer, when it spans several)
    /// plain and hands it over: put together, its partial checksum completed, cut into
    /// segments. Returns how many frames went into `burst` (the rest wait in
    /// `rx_pending`); a frame whose header makes no sense is counted and dropped.
    fn receive_offloaded(
        &mut self,
        pool: &mut BufPool,
        burst: &mut Burst,
        mut buf: PacketBuf,
        header: hdr::Rx,
    ) -> usize {
        let mut joined = core::mem::take(&mut self.rx_joined);
        let spread = header.num_buffers > 1;
        if spread {
            // The further buffers follow on the used ring, in order.
            joined.clear();
            joined.extend_from_slice(buf.frame());
            pool.put(buf);
            buf = PacketBuf::default();
            let mut whole = true;
            for _ in 1..header.num_buffers {
                let Some((more, len)) = self.pop_rx(pool) else {
                    whole = false;
                    break;
                };
                match more.buffer().get(RX_AT..RX_AT + len) {
                    Some(bytes) if joined.len() + len <= MAX_SUPER_FRAME_LEN => {
                        joined.extend_from_slice(bytes)
                    }
                    _ => whole = false,
                }
                pool.put(more);
            }
            if !whole {
                self.offload.rx_refused += 1;
                self.rx_joined = joined;
                return 0;
            }
        }
        let n = match header.gso {
            hdr::Gso::None => {
                let frame: &mut [u8] = if spread { &mut joined } else { buf.frame_mut() };
                match header.partial {
                    Some((start, offset)) => match sum::complete(frame, start, offset) {
                        Ok(()) => {
                            self.offload.rx_csum_completed += 1;
                            let out = if spread { pool.copy_of(&joined) } else { buf };
                            self.deliver(pool, burst, out)
                        }
                        Err(_) => {
                            self.offload.rx_refused += 1;
                            pool.put(buf);
                            0
                        }
                    },
                    None => {
                        let out = if spread { pool.copy_of(&joined) } else { buf };
                        self.deliver(pool, burst, out)
                    }
                }
            }
            hdr::Gso::Tcp4 { mss } => {
                let frame = if spread { &joined[..] } else { buf.frame() };
                let n = self.segment(pool, burst, frame, mss);
                pool.put(buf);
                n
            }
            hdr::Gso::Other(_) => {
                self.offload.rx_refused += 1;
                pool.put(buf);
                0
            }
        };
        self.rx_joined = joined;
        n
    }

    /// Cuts a received TCP/IPv4 super-frame into segments of `mss` payload bytes, each
    /// in a pool buffer with full checksums (a partial one on the super-frame does not
    /// matter: every segment's is computed afresh), and hands them over.
    fn segment(&mut self, pool: &mut BufPool, burst: &mut Burst, frame: &[u8], mss: u16) -> usize {
        let seg = match Segmenter::new(frame, mss) {
            Ok(seg)
                if seg.count() <= MAX_RX_SEGMENTS && seg.segment_len(0) <= BUF_LEN - HEADROOM =>
            {
                seg
            }
            _ => {
                self.offload.rx_refused += 1;
                return 0;
            }
        };
        self.offload.rx_super_frames += 1;
        let mut n = 0;
        for i in 0..seg.count() {
            let mut out = pool.get();
            if !out.set_range(HEADROOM, seg.segment_len(i))
                || seg.write(i, out.frame_mut(), SegmentCsum::Full).is_none()
            {
                pool.put(out);
                self.offload.rx_refused += 1;
                continue;
            }
            self.offload.rx_segments += 1;
            n += self.deliver(pool, burst, out);
        }
        n
    }

    /// Puts a plain received frame into `burst`, or behind it when the burst is full.
    /// Returns 1 when it went into the burst.
    fn deliver(&mut self, pool: &mut BufPool, burst: &mut Burst, buf: PacketBuf) -> usize {
        match burst.push(buf) {
            Ok(()) => 1,
            Err(buf) => {
                if self.rx_pending.len() < 2 * MAX_RX_SEGMENTS {
                    self.rx_pending.push_back(buf);
                } else {
                    pool.put(buf);
                }
                0
            }
        }
    }

    /// The offloads negotiated, and what they did since boot.
    pub fn offloads(&self) -> NicOffloads {
        self.offload
    }

    /// Takes back the buffers the device has sent: pool buffers wait in `tx_done` for
    /// [`NetPort::give_back`], super-frame buffers go back to the merge state.
    fn reap_tx(&mut self) {
        while let Some(token) = self.tx.peek_used() {
            let Some(buf) = self.tx_posted[token as usize].take() else {
                log::error!("virtio-net: completed tx token {token} has no buffer");
                break;
            };
            // SAFETY: `buf.bytes()` is exactly the slice posted with this token (the
            // buffer was not touched while the device owned it).
            if let Err(e) = unsafe { self.tx.pop_used(token, &[buf.bytes()], &mut []) } {
                log::warn!("virtio-net: tx completion failed: {e:?}");
            }
            if let (TxBuf::Merged(_), Some(m)) = (&buf, self.merging.as_mut()) {
                m.in_flight = m.in_flight.saturating_sub(1);
            }
            self.recycle(buf);
        }
    }

    fn recycle(&mut self, buf: TxBuf) {
        match buf {
            TxBuf::Pool(buf) => self.tx_done.push(buf),
            TxBuf::Merged(v) => {
                if let Some(m) = self.merging.as_mut() {
                    if m.free.len() < MERGED_FREE_LIMIT {
                        m.free.push(v);
                    }
                }
            }
        }
    }

    /// Gives the pool buffers the device has sent back to `pool`.
    fn give_back(&mut self, pool: &mut BufPool) {
        for buf in self.tx_done.drain(..) {
            pool.put(buf);
        }
    }

    /// Posts a header and frame for transmission, waiting a little for a free slot.
    fn post_tx(&mut self, buf: TxBuf) -> Result<(), TxError> {
        let deadline = crate::time::micros() + TX_FULL_WAIT_US;
        loop {
            // SAFETY: `buf` moves into `self.tx_posted` under the returned token and is not
            // touched until the device hands the token back.
            match unsafe { self.tx.add(&[buf.bytes()], &mut []) } {
                Ok(token) => {
                    if let (TxBuf::Merged(_), Some(m)) = (&buf, self.merging.as_mut()) {
                        m.in_flight += 1;
                    }
                    self.tx_posted[token as usize] = Some(buf);
                    self.tx_notify |= self.tx.should_notify();
                    return Ok(());
                }
                Err(Error::QueueFull) if crate::time::micros() < deadline => {
                    // The device may be waiting for the notification this batch holds back.
                    self.notify();
                    core::hint::spin_loop();
                    self.reap_tx();
                }
                Err(_) => {
                    self.recycle(buf);
                    return Err(TxError::QueueFull);
                }
            }
        }
    }

    /// Sends the super-frame being merged, if any: with a segmentation request and a
    /// partial TCP checksum when it holds more than one segment, as it came otherwise.
    fn send_merged(&mut self) {
        let Some((merge, mut bytes)) = self.merging.as_mut().and_then(|m| m.held.take()) else {
            return;
        };
        let offload = merge.finish(&mut bytes);
        hdr::write(&mut bytes, &offload, merge.header_len());
        if merge.segments() > 1 {
            self.offload.tx_super_frames += 1;
            self.offload.tx_merged_segments += u64::from(merge.segments());
        }
        if self.post_tx(TxBuf::Merged(bytes)).is_err() {
            self.offload.tx_merged_dropped += u64::from(merge.segments());
        }
    }

    /// Merges a frame for the link into the super-frame being built, when it is a TCP
    /// segment with a good checksum; gives it back when it is not one (whatever was
    /// held has then been sent first, so frames leave in order).
    fn merge(&mut self, pool: &mut BufPool, buf: PacketBuf) -> Option<PacketBuf> {
        let Some(merging) = self.merging.as_mut() else {
            return Some(buf);
        };
        let seg = match Segment::parse(buf.frame()) {
            Ok(seg) if gro::tcp_checksum_ok(buf.frame(), &seg.layout) => seg,
            Ok(_) => {
                self.offload.tx_bad_checksum += 1;
                self.send_merged();
                return Some(buf);
            }
            Err(_) => {
                self.send_merged();
                return Some(buf);
            }
        };
        if let Some((merge, bytes)) = merging.held.as_mut() {
            if merge.append(bytes, buf.frame(), &seg) == Append::Merged {
                pool.put(buf);
                return None;
            }
            self.send_merged();
        }
        let Some(merging) = self
            .merging
            .as_mut()
            .filter(|m| m.in_flight < MERGED_FREE_LIMIT)
        else {
            return Some(buf);
        };
        let mut bytes = merging
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(hdr::LEN + MAX_SUPER_FRAME_LEN));
        let merge = Merge::start_at(&mut bytes, hdr::LEN, buf.frame(), seg, Offload::NONE);
        merging.held = Some((merge, bytes));
        pool.put(buf);
        None
    }

    /// Ends the burst: sends what is being merged, then the notifications the buffers
    /// added since the last call need (at most one per queue). The main loop calls it
    /// after every turn.
    pub fn flush(&mut self) {
        self.send_merged();
        self.notify();
    }

    fn notify(&mut self) {
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
        self.give_back(pool);
        let mut n = 0;
        while !burst.is_full() {
            let Some(buf) = self.rx_pending.pop_front() else {
                break;
            };
            if let Err(buf) = burst.push(buf) {
                pool.put(buf);
            }
            n += 1;
        }
        while !burst.is_full() {
            let Some((mut buf, len)) = self.pop_rx(pool) else {
                break;
            };
            let Some(frame_len) = len.checked_sub(hdr::LEN) else {
                self.offload.rx_refused += 1;
                pool.put(buf);
                continue;
            };
            let mut header = hdr::read(&buf.buffer()[RX_AT..HEADROOM]);
            if !self.mergeable {
                header.num_buffers = 1;
            }
            if !buf.set_range(HEADROOM, frame_len) {
                self.offload.rx_refused += 1;
                pool.put(buf);
                continue;
            }
            if header.is_plain() {
                if let Err(buf) = burst.push(buf) {
                    pool.put(buf);
                }
                n += 1;
                continue;
            }
            n += self.receive_offloaded(pool, burst, buf, header);
        }
        n
    }

    fn transmit(&mut self, pool: &mut BufPool, buf: PacketBuf) -> Result<(), TxError> {
        self.reap_tx();
        self.give_back(pool);
        let Some(mut buf) = self.merge(pool, buf) else {
            return Ok(());
        };
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
        let sent = self.post_tx(TxBuf::Pool(buf));
        self.give_back(pool);
        sent
    }
}
