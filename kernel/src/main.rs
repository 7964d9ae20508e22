//! weft-kernel: boots (PVH), brings up the CPU, memory, clock, PCI and virtio devices, then
//! runs the main loop that feeds the appliance. Thin by design: no network logic lives
//! here; everything above the devices is `weft-appliance` / `weft-netstack`.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]

extern crate alloc;

mod arch;
mod console;
mod mainloop;
mod mem;
mod mmio;
mod msix;
mod pci;
mod pvh;
mod rtc;
mod time;
mod virtio;

use alloc::string::String;
use log::LevelFilter;

/// Called by `arch::boot` in long mode with SSE enabled and the PVH start-info address.
#[unsafe(no_mangle)]
pub extern "C" fn kmain(start_info: u64) -> ! {
    arch::stack::paint();
    console::init();
    arch::cpu::init();
    let simd = arch::simd::init();
    let (tsc_hz, tsc_source) = time::init();
    console::init_log(LevelFilter::Info);
    log::info!("weft {} booting", env!("CARGO_PKG_VERSION"));
    // SAFETY: `start_info` is what the PVH entry received in ebx.
    let Some(boot) = (unsafe { pvh::BootInfo::from_paddr(start_info) }) else {
        panic!("no PVH start info at {start_info:#x} (not booted through PVH?)");
    };
    let Some(heap) = mem::init(&boot) else {
        panic!("no usable RAM region for the heap in the PVH memory map");
    };
    let cmdline: String = boot.cmdline();
    console::init_log(log_level(&cmdline));
    log::info!(
        "ram {} KiB, heap {} KiB, tsc {} kHz ({tsc_source}), {} ({})",
        heap.ram_total / 1024,
        heap.size / 1024,
        tsc_hz / 1000,
        simd.name(),
        arch::simd::crypto_backends(),
    );
    log::debug!("heap at {:#x}, cmdline {cmdline:?}", heap.start);
    if let Some(kind) = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("weft.fault="))
    {
        arch::provoke_fault(kind);
    }
    mainloop::run(cmdline)
}

fn log_level(cmdline: &str) -> LevelFilter {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("log="))
        .and_then(|level| level.parse().ok())
        .unwrap_or(LevelFilter::Info)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::emergency(format_args!("\nweft: kernel panic: {info}\n"));
    arch::halt_forever()
}
