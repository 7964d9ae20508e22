//! The buffers frames live in on their way through the appliance, and the free list
//! they come back to.
//!
//! A [`PacketBuf`] owns one fixed allocation and holds one frame somewhere inside it:
//! the bytes in front of the frame are its *headroom*, where a stage puts headers on
//! (VXLAN's 50 bytes, sleeve's 76, a VLAN tag, the virtio-net header) without moving
//! the frame; the bytes behind it are its *tailroom* (sleeve's tag, records batched
//! behind the first). A received frame starts [`HEADROOM`] bytes in, so encapsulation
//! and the device header always fit in front of it. A [`BufPool`] keeps the free
//! buffers of the standard size, so that once the pipeline has warmed up no frame it
//! forwards costs an allocation.
//!
//! Owns bytes and offsets only: it never parses a frame and never decides anything.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Bytes every buffer of a [`BufPool`] holds.
pub const BUF_LEN: usize = 2048;
/// Where a received frame starts in its buffer: room in front of it for the largest
/// header a stage puts on (sleeve: 42 outer + 28 header + 6 record bytes) plus the
/// 12-byte virtio-net header, rounded up to two cache lines.
pub const HEADROOM: usize = 128;
/// The largest frame a standard buffer holds after its headroom.
pub const MAX_BUFFERED_FRAME: usize = BUF_LEN - HEADROOM;
/// Free buffers a pool keeps by default; more are released to the allocator.
pub const DEFAULT_POOL_LIMIT: usize = 1024;

/// One frame in a buffer of its own, with room in front of and behind it.
///
/// `PacketBuf::default()` is an empty buffer of no capacity that owns no allocation: a
/// stage that keeps a frame takes it out with `core::mem::take`, leaving that behind.
#[derive(Default)]
pub struct PacketBuf {
    data: Box<[u8]>,
    head: usize,
    len: usize,
}

impl core::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PacketBuf")
            .field("capacity", &self.data.len())
            .field("head", &self.head)
            .field("len", &self.len)
            .finish()
    }
}

impl Clone for PacketBuf {
    fn clone(&self) -> PacketBuf {
        PacketBuf {
            data: self.data.clone(),
            head: self.head,
            len: self.len,
        }
    }
}

impl PacketBuf {
    /// A buffer of `capacity` bytes holding an empty frame at `HEADROOM` (or at the
    /// start, when the buffer is smaller). Allocates: pools and ports only.
    pub fn with_capacity(capacity: usize) -> PacketBuf {
        PacketBuf {
            data: vec![0u8; capacity].into_boxed_slice(),
            head: HEADROOM.min(capacity),
            len: 0,
        }
    }

    /// A buffer holding a copy of `frame` at [`HEADROOM`]: a standard one ([`BUF_LEN`]),
    /// or a larger one for a frame longer than [`MAX_BUFFERED_FRAME`]. Allocates.
    pub fn from_frame(frame: &[u8]) -> PacketBuf {
        let mut buf = PacketBuf::with_capacity(BUF_LEN.max(HEADROOM + frame.len()));
        buf.set_frame(frame);
        buf
    }

    /// A buffer that is exactly `frame` (no headroom), without copying: for frames a
    /// stage built in a vector of their own (ARP, ICMP errors). A pool does not keep it.
    pub fn from_vec(frame: Vec<u8>) -> PacketBuf {
        let data = frame.into_boxed_slice();
        PacketBuf {
            len: data.len(),
            data,
            head: 0,
        }
    }

    /// The frame.
    #[inline]
    pub fn frame(&self) -> &[u8] {
        &self.data[self.head..self.head + self.len]
    }

    #[inline]
    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.head..self.head + self.len]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the whole buffer.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Bytes free in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Bytes free behind the frame.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.data.len() - self.head - self.len
    }

    /// Grows the frame by `n` bytes at its front, out of the headroom, and returns the
    /// frame; `None` (nothing changed) when the headroom is smaller. The new bytes hold
    /// whatever the buffer held there.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head {
            return None;
        }
        self.head -= n;
        self.len += n;
        Some(self.frame_mut())
    }

    /// Drops `n` bytes from the front of the frame (they become headroom); false
    /// (nothing changed) when the frame is shorter.
    #[inline]
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.head += n;
        self.len -= n;
        true
    }

    /// Grows the frame by `n` bytes at its end, out of the tailroom, and returns the
    /// frame; `None` (nothing changed) when the tailroom is smaller.
    #[inline]
    pub fn push_back(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.tailroom() {
            return None;
        }
        self.len += n;
        Some(self.frame_mut())
    }

    /// Shortens the frame to `len` bytes (nothing happens when it is not longer).
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes the frame the `len` bytes at `head` of the buffer: what a device wrote
    /// there. False (nothing changed) when they do not lie inside the buffer.
    pub fn set_range(&mut self, head: usize, len: usize) -> bool {
        if head
            .checked_add(len)
            .is_none_or(|end| end > self.data.len())
        {
            return false;
        }
        self.head = head;
        self.len = len;
        true
    }

    /// Replaces the frame with a copy of `frame` at [`HEADROOM`] (or as far in as it
    /// fits); false (nothing changed) when the buffer is too small.
    pub fn set_frame(&mut self, frame: &[u8]) -> bool {
        let cap = self.data.len();
        if frame.len() > cap {
            return false;
        }
        let head = HEADROOM.min(cap - frame.len());
        self.data[head..head + frame.len()].copy_from_slice(frame);
        self.head = head;
        self.len = frame.len();
        true
    }

    /// The whole buffer, headroom and tailroom included (a device fills it).
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The whole buffer, to read what lies around the frame.
    pub fn buffer(&self) -> &[u8] {
        &self.data
    }

    /// Where the frame starts in the buffer.
    pub fn head(&self) -> usize {
        self.head
    }

    /// Empties the frame and puts its start back at [`HEADROOM`].
    pub fn reset(&mut self) {
        self.head = HEADROOM.min(self.data.len());
        self.len = 0;
    }
}

/// Free buffers of the standard size ([`BUF_LEN`]), handed out and taken back by the
/// pipeline and its ports. Empty, it allocates a new buffer (and counts it); full, it
/// lets a returned buffer go. Buffers of another size (from [`PacketBuf::from_vec`])
/// are never kept.
#[derive(Debug)]
pub struct BufPool {
    free: Vec<PacketBuf>,
    limit: usize,
    allocated: u64,
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool::new(DEFAULT_POOL_LIMIT)
    }
}

impl BufPool {
    /// An empty pool that keeps at most `limit` free buffers.
    pub fn new(limit: usize) -> BufPool {
        BufPool {
            free: Vec::new(),
            limit,
            allocated: 0,
        }
    }

    /// A free buffer, its frame empty at [`HEADROOM`].
    pub fn get(&mut self) -> PacketBuf {
        match self.free.pop() {
            Some(buf) => buf,
            None => {
                self.allocated += 1;
                PacketBuf::with_capacity(BUF_LEN)
            }
        }
    }

    /// A buffer holding a copy of `frame` at [`HEADROOM`]: one of the pool's, or for a
    /// frame longer than [`MAX_BUFFERED_FRAME`] a larger one of its own.
    pub fn copy_of(&mut self, frame: &[u8]) -> PacketBuf {
        if frame.len() > MAX_BUFFERED_FRAME {
            return PacketBuf::from_frame(frame);
        }
        let mut buf = self.get();
        buf.set_frame(frame);
        buf
    }

    /// Takes a buffer back (its frame is forgotten).
    pub fn put(&mut self, mut buf: PacketBuf) {
        if buf.capacity() == BUF_LEN && self.free.len() < self.limit {
            if self.free.capacity() == self.free.len() {
                // Grows once to the limit, never again.
                self.free.reserve_exact(self.limit - self.free.len());
            }
            buf.reset();
            self.free.push(buf);
        }
    }

    /// Free buffers held now.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Buffers allocated because the pool was empty, since it was made.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Allocates buffers until `n` are free (bounded by the limit).
    pub fn fill(&mut self, n: usize) {
        while self.free.len() < n.min(self.limit) {
            self.allocated += 1;
            let buf = PacketBuf::with_capacity(BUF_LEN);
            self.put(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_go_on_in_front_and_come_off_again() {
        let mut buf = PacketBuf::from_frame(&[7u8; 60]);
        assert_eq!((buf.headroom(), buf.len()), (HEADROOM, 60));
        assert_eq!(buf.tailroom(), BUF_LEN - HEADROOM - 60);
        let front = buf.push_front(50).unwrap();
        front[..50].fill(1);
        assert_eq!(buf.len(), 110);
        assert_eq!(&buf.frame()[50..], &[7u8; 60]);
        assert!(buf.pull_front(50));
        assert_eq!(buf.frame(), &[7u8; 60]);
        assert!(buf.push_front(HEADROOM + 1).is_none());
        assert!(!buf.pull_front(61));
        assert_eq!(buf.frame(), &[7u8; 60]);
        buf.push_back(16).unwrap();
        assert_eq!(buf.len(), 76);
        buf.truncate(60);
        assert_eq!(buf.frame(), &[7u8; 60]);
        assert!(buf.push_back(buf.tailroom() + 1).is_none());
    }

    #[test]
    fn ranges_outside_the_buffer_are_refused() {
        let mut buf = PacketBuf::with_capacity(100);
        assert!(buf.set_range(10, 90));
        assert!(!buf.set_range(11, 90));
        assert!(!buf.set_range(usize::MAX, 2));
        assert_eq!((buf.head(), buf.len()), (10, 90));
        assert!(!buf.set_frame(&[0; 101]));
        assert!(buf.set_frame(&[1; 100]));
        assert_eq!(buf.headroom(), 0);
    }

    #[test]
    fn the_pool_reuses_its_buffers_and_keeps_only_standard_ones() {
        let mut pool = BufPool::new(2);
        let a = pool.get();
        let b = pool.copy_of(&[1, 2, 3]);
        assert_eq!(pool.allocated(), 2);
        pool.put(a);
        pool.put(b);
        pool.put(PacketBuf::with_capacity(BUF_LEN));
        assert_eq!(pool.len(), 2, "bounded by its limit");
        pool.put(PacketBuf::from_vec(alloc::vec![1, 2, 3]));
        pool.put(PacketBuf::default());
        assert_eq!(pool.len(), 2);
        let c = pool.get();
        assert_eq!((c.headroom(), c.len()), (HEADROOM, 0));
        assert_eq!(pool.allocated(), 2);
        let big = pool.copy_of(&[9; BUF_LEN + 1]);
        assert_eq!((big.len(), big.headroom()), (BUF_LEN + 1, HEADROOM));
        assert_eq!(pool.allocated(), 2, "a large buffer is not the pool's");
    }

    #[test]
    fn an_empty_buffer_owns_nothing() {
        let mut buf = PacketBuf::default();
        assert_eq!((buf.capacity(), buf.len(), buf.headroom()), (0, 0, 0));
        assert!(buf.push_front(1).is_none());
        assert!(!buf.set_frame(&[1]));
    }
}
