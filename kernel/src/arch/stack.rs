//! The boot stack (`boot` reserves it, everything runs on it) and how deep it has been.
//! At entry [`paint`] fills the part below the caller's frame with a known word; the
//! deepest word no longer holding it is the high-water mark, which [`usage`] finds by
//! scanning up from the bottom (the way RTOSes report task stack use). `status` shows
//! it, so the size below is chosen from figures, not guessed.

use core::ptr::addr_of;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Bytes reserved for the stack: 1.7 times the deepest the QEMU suite drives it to
/// (75 KiB, in bring-up; the main loop's deepest, a TLS handshake, is 34 KiB), in both
/// build profiles (docs/RELIABILITY.md, "Stack").
pub const SIZE: usize = 128 * 1024;

const PAINT: u64 = 0x5745_4654_5354_4b21; // "WEFTSTK!"

/// Bytes above the caller's stack pointer left unpainted: the frame of `paint` itself.
const MARGIN: usize = 1024;

unsafe extern "C" {
    static boot_stack_guard: u8;
    static boot_stack: u8;
}

/// Whether `addr` is in the unmapped page right below the stack (`boot` leaves it out
/// of the page tables): a fault there is the stack overflowing.
pub fn in_guard(addr: u64) -> bool {
    let guard = addr_of!(boot_stack_guard) as u64;
    (guard..guard + 4096).contains(&addr)
}

fn bottom() -> *mut u64 {
    addr_of!(boot_stack).cast::<u64>().cast_mut()
}

/// Fills the stack from its bottom up to just below the caller's frame with [`PAINT`].
/// Call once, first thing in `kmain`.
pub fn paint() {
    let sp: usize;
    // SAFETY: reads the stack pointer into a register; no memory is touched.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack)) };
    let words = (sp - MARGIN - bottom() as usize) / 8;
    for i in 0..words {
        // SAFETY: `bottom()..sp - MARGIN` is the unused part of the boot stack (it grows
        // down from `boot_stack_top`, and we run near its top): nothing lives there yet.
        unsafe { bottom().add(i).write_volatile(PAINT) };
    }
}

/// The stack's size and the most of it ever used, in bytes: since boot (`peak`), and
/// since [`repaint`] (`running`).
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub size: usize,
    pub peak: usize,
    pub running: usize,
}

/// The deepest the boot stack was before [`repaint`] (bring-up builds the devices'
/// queues in frames of their own, deeper than anything the main loop does).
static BRING_UP_PEAK: AtomicUsize = AtomicUsize::new(0);

/// Notes how deep bring-up went and paints the stack again below the caller, so that
/// [`Usage::running`] tells what the main loop itself needs. Call once, from the main
/// loop's frame, before the loop.
pub fn repaint() -> Usage {
    let boot = usage();
    BRING_UP_PEAK.store(boot.peak, Ordering::Relaxed);
    paint();
    boot
}

/// Scans up from the bottom for the first word that is not [`PAINT`]: everything above
/// it has been written at some point.
pub fn usage() -> Usage {
    let words = SIZE / 8;
    let mut untouched = 0;
    while untouched < words {
        // SAFETY: the index stays inside the boot stack; a volatile read of a word the
        // running code may also use is harmless (the value is only compared).
        if unsafe { bottom().add(untouched).read_volatile() } != PAINT {
            break;
        }
        untouched += 1;
    }
    let running = SIZE - untouched * 8;
    Usage {
        size: SIZE,
        peak: running.max(BRING_UP_PEAK.load(Ordering::Relaxed)),
        running,
    }
}
