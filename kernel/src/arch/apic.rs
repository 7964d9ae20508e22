//! The local APIC: virtual-wire mode, so the 8259 PIC's output (LINT0, ExtINT) reaches
//! the CPU whatever the firmware left behind (qboot leaves LINT0 masked, SeaBIOS sets
//! virtual wire), and its timer, the one-shot wake-up of the idle
//! main loop: 32 bits at a divided bus clock reach minutes, where the PIT's 16 bits end
//! at 55 ms (so an idle appliance would wake 18 times a second for nothing). Owns the
//! xAPIC register page; nothing else touches it.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::model_specific::{ApicBase, ApicBaseFlags};

/// xAPIC register offsets (Intel SDM vol. 3, table 11-1).
const EOI: usize = 0xb0;
const SVR: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const LVT_LINT0: usize = 0x350;
const LVT_LINT1: usize = 0x360;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3e0;

/// The vector the timer raises (above the PIC's 32..48).
pub const TIMER_VECTOR: u8 = 48;
/// LVT mask bit; one-shot mode is timer mode 0 (bits 17..18 clear).
const LVT_MASKED: u32 = 1 << 16;
/// Divide configuration 0b1010: the timer counts at the bus clock / 128 (QEMU's and KVM's
/// 1 GHz bus: 7.8 MHz, so 32 bits last 550 s).
const DIVIDE_BY_128: u32 = 0b1010;

/// The xAPIC page, 0 until `init_virtual_wire` found one we may use.
static BASE: AtomicU64 = AtomicU64::new(0);
/// Timer counts per second, 0 until calibrated.
static TIMER_HZ: AtomicU64 = AtomicU64::new(0);

/// Spurious-interrupt vector register: APIC software enable (bit 8), vector 0xff.
const SVR_ENABLE: u32 = 1 << 8 | 0xff;
/// LVT delivery modes (bits 8..11); the mask bit (16) stays clear.
const DELIVERY_EXTINT: u32 = 0b111 << 8;
const DELIVERY_NMI: u32 = 0b100 << 8;

fn write(base: u64, reg: usize, value: u32) {
    // SAFETY: `base` is the xAPIC page from IA32_APIC_BASE, identity mapped (below 4 GiB,
    // checked by the caller); `reg` is one of the architectural 32-bit registers above.
    unsafe { core::ptr::write_volatile((base as usize + reg) as *mut u32, value) }
}

fn read(base: u64, reg: usize) -> u32 {
    // SAFETY: as in `write`; reading these registers has no side effects.
    unsafe { core::ptr::read_volatile((base as usize + reg) as *const u32) }
}

/// Puts the bootstrap processor's local APIC into virtual-wire mode (PIC on LINT0 as
/// ExtINT, NMI on LINT1). Does nothing if the CPU has no APIC or it is not in xAPIC mode.
pub fn init_virtual_wire() {
    let has_apic = core::arch::x86_64::__cpuid(1).edx & (1 << 9) != 0;
    if !has_apic {
        return;
    }
    let (frame, flags) = ApicBase::read();
    if flags.contains(ApicBaseFlags::X2APIC_ENABLE) {
        log::warn!("local APIC in x2APIC mode; leaving it as it is");
        return;
    }
    let base = frame.start_address().as_u64();
    if base >= crate::mem::MAPPED_LIMIT {
        log::warn!("local APIC at {base:#x} is not identity mapped; leaving it as it is");
        return;
    }
    if !flags.contains(ApicBaseFlags::LAPIC_ENABLE) {
        // SAFETY: re-enables the APIC at the address it already has; no memory moves.
        unsafe { ApicBase::write(frame, flags | ApicBaseFlags::LAPIC_ENABLE) };
    }
    write(base, SVR, SVR_ENABLE);
    write(base, LVT_LINT0, DELIVERY_EXTINT);
    write(base, LVT_LINT1, DELIVERY_NMI);
    BASE.store(base, Ordering::SeqCst);
}

/// Whether the local APIC is in use (xAPIC mode, identity mapped): MSIs can reach it.
pub fn present() -> bool {
    BASE.load(Ordering::SeqCst) != 0
}

/// A reading of the timer counting down from its start, with the TSC.
#[derive(Clone, Copy, Debug)]
pub struct TimerMark {
    count: u32,
    tsc: u64,
}

/// Starts the timer counting down, masked, from the top; None without a usable APIC.
pub fn start_timer_calibration() -> Option<TimerMark> {
    let base = BASE.load(Ordering::SeqCst);
    if base == 0 {
        return None;
    }
    write(base, LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    write(base, TIMER_DIVIDE, DIVIDE_BY_128);
    write(base, TIMER_INITIAL, u32::MAX);
    Some(TimerMark {
        count: read(base, TIMER_CURRENT),
        tsc: rdtsc(),
    })
}

/// Sets the timer's rate from the counts and TSC ticks since `start`; returns it in Hz.
pub fn finish_timer_calibration(start: TimerMark, tsc_hz: u64) -> Option<u64> {
    let base = BASE.load(Ordering::SeqCst);
    let (count, tsc) = (read(base, TIMER_CURRENT), rdtsc());
    let counts = u64::from(start.count.checked_sub(count)?);
    let elapsed = tsc.checked_sub(start.tsc).filter(|t| *t > 0)?;
    let hz = (counts as u128 * tsc_hz as u128 / elapsed as u128) as u64;
    write(base, TIMER_INITIAL, 0);
    (hz > 0).then(|| {
        TIMER_HZ.store(hz, Ordering::SeqCst);
        hz
    })
}

/// Whether the timer is calibrated and can serve [`one_shot`].
pub fn timer_ready() -> bool {
    TIMER_HZ.load(Ordering::SeqCst) != 0
}

/// Arms the timer to raise [`TIMER_VECTOR`] once after `micros` (at most ~550 s).
pub fn one_shot(micros: u64) {
    let base = BASE.load(Ordering::SeqCst);
    let hz = TIMER_HZ.load(Ordering::SeqCst);
    let counts = (micros as u128 * hz as u128 / 1_000_000).clamp(1, u32::MAX as u128) as u32;
    write(base, LVT_TIMER, u32::from(TIMER_VECTOR));
    write(base, TIMER_INITIAL, counts);
}

/// End of interrupt for a vector the APIC delivered itself (the timer).
pub fn end_of_interrupt() {
    write(BASE.load(Ordering::SeqCst), EOI, 0);
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}
