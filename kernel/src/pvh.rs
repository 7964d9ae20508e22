//! Reads the PVH `hvm_start_info` the hypervisor hands us: the memory map and the kernel
//! command line. Nothing about RAM size is hard-coded anywhere else.

use alloc::string::String;

const MAGIC: u32 = 0x336e_c578;
/// E820 type of usable RAM.
const RAM: u32 = 1;

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemoryRegion {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    reserved: u32,
}

impl MemoryRegion {
    pub fn is_ram(&self) -> bool {
        self.kind == RAM
    }
}

pub struct BootInfo {
    regions: &'static [MemoryRegion],
    cmdline_paddr: u64,
}

impl BootInfo {
    /// # Safety
    /// `paddr` must be the start-info address from the PVH entry (identity mapped).
    pub unsafe fn from_paddr(paddr: u64) -> Option<Self> {
        // SAFETY: the caller passes the hypervisor's start-info pointer; memory is identity
        // mapped and the hypervisor keeps the structure and the memory map intact.
        let info = unsafe { &*(paddr as *const StartInfo) };
        if info.magic != MAGIC {
            return None;
        }
        let regions = if info.version >= 1 && info.memmap_paddr != 0 {
            // SAFETY: version >= 1 guarantees memmap_paddr/memmap_entries are valid.
            unsafe {
                core::slice::from_raw_parts(
                    info.memmap_paddr as *const MemoryRegion,
                    info.memmap_entries as usize,
                )
            }
        } else {
            &[]
        };
        Some(BootInfo {
            regions,
            cmdline_paddr: info.cmdline_paddr,
        })
    }

    pub fn regions(&self) -> &'static [MemoryRegion] {
        self.regions
    }

    /// The command line, copied (call after the heap is up).
    pub fn cmdline(&self) -> String {
        if self.cmdline_paddr == 0 {
            return String::new();
        }
        // SAFETY: a non-zero cmdline_paddr points at a NUL-terminated string that the
        // hypervisor placed in memory we do not use for the heap (it lies below the kernel
        // or is excluded by `mem::init`); we read at most 4 KiB.
        let bytes = unsafe { core::slice::from_raw_parts(self.cmdline_paddr as *const u8, 4096) };
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(0);
        String::from_utf8_lossy(&bytes[..len]).into_owned()
    }

    pub fn cmdline_paddr(&self) -> u64 {
        self.cmdline_paddr
    }
}
