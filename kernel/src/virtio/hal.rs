//! The `virtio_drivers::Hal` for weft: memory is identity mapped, so a buffer's physical
//! address is its virtual address; DMA pages come from the kernel heap.

use core::alloc::Layout;
use core::ptr::NonNull;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

pub struct KernelHal;

// SAFETY: dma_alloc returns zeroed, page-aligned, exclusively owned heap memory whose
// physical address equals its virtual address (identity map below MAPPED_LIMIT); MMIO
// regions are identity mapped too.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE)
            .unwrap_or_else(|_| panic!("dma_alloc: bad size {pages} pages"));
        // SAFETY: the layout has a non-zero size (pages >= 1 for every virtqueue).
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| panic!("dma_alloc: out of memory"));
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        if let Ok(layout) = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE) {
            // SAFETY: per the trait contract vaddr/pages come from dma_alloc with this layout.
            unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout) };
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        assert!(
            paddr.saturating_add(size as u64) <= crate::mem::MAPPED_LIMIT,
            "virtio BAR at {paddr:#x} lies above the identity-mapped 4 GiB"
        );
        NonNull::new(paddr as *mut u8).unwrap_or_else(|| panic!("virtio BAR at address 0"))
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
