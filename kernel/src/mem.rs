//! Memory: the kernel heap (linked_list_allocator) over the largest RAM region of the PVH
//! memory map that lies above the kernel image and inside the identity-mapped 4 GiB.

use crate::pvh::BootInfo;
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};
use linked_list_allocator::LockedHeap;

/// The heap, counting bytes in use and their high-water mark (reported in `status`).
struct CountingHeap {
    heap: LockedHeap,
    used: AtomicUsize,
    peak: AtomicUsize,
}

// SAFETY: every call is forwarded unchanged to LockedHeap, which upholds GlobalAlloc's
// contract; the counters are only statistics.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { self.heap.alloc(layout) };
        if !ptr.is_null() {
            let used = self.used.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak.fetch_max(used, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; the caller guarantees ptr/layout came from alloc.
        unsafe { self.heap.dealloc(ptr, layout) };
        self.used.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static HEAP: CountingHeap = CountingHeap {
    heap: LockedHeap::empty(),
    used: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

/// Identity-mapped by the boot code.
pub const MAPPED_LIMIT: u64 = 4 << 30;

unsafe extern "C" {
    static __kernel_end: u8;
}

pub struct HeapInfo {
    pub start: u64,
    pub size: u64,
    pub ram_total: u64,
}

pub fn init(boot: &BootInfo) -> Option<HeapInfo> {
    let kernel_end = (&raw const __kernel_end) as u64;
    // Keep the command line (which the hypervisor may place after the kernel) out of the heap.
    let floor = kernel_end.max(boot.cmdline_paddr().saturating_add(4096));
    let mut best: Option<(u64, u64)> = None;
    let mut ram_total = 0;
    for r in boot.regions().iter().filter(|r| r.is_ram()) {
        ram_total += r.size;
        let start = r.addr.max(floor).next_multiple_of(4096);
        let end = (r.addr + r.size).min(MAPPED_LIMIT) & !4095;
        if end > start && best.is_none_or(|(s, e)| end - start > e - s) {
            best = Some((start, end));
        }
    }
    let (start, end) = best?;
    // SAFETY: [start, end) is RAM per the hypervisor's memory map, identity mapped, above
    // the kernel image and the command line, and handed to the allocator exactly once.
    unsafe {
        HEAP.heap
            .lock()
            .init(start as *mut u8, (end - start) as usize)
    };
    Some(HeapInfo {
        start,
        size: end - start,
        ram_total,
    })
}

pub struct HeapUsage {
    pub size: usize,
    pub used: usize,
    pub peak: usize,
}

/// Heap size, bytes in use and the most ever in use.
pub fn usage() -> HeapUsage {
    HeapUsage {
        size: HEAP.heap.lock().size(),
        used: HEAP.used.load(Ordering::Relaxed),
        peak: HEAP.peak.load(Ordering::Relaxed),
    }
}
