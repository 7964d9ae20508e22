//! Memory: the kernel heap (linked_list_allocator) over the largest RAM region of the PVH
//! memory map that lies above the kernel image and inside the identity-mapped 4 GiB.

use crate::pvh::BootInfo;
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

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
    unsafe { HEAP.lock().init(start as *mut u8, (end - start) as usize) };
    Some(HeapInfo {
        start,
        size: end - start,
        ram_total,
    })
}

/// Bytes in use and free on the heap.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.free())
}
