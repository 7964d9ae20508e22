//! The monotonic clock: the TSC, calibrated once against the PIT at boot. Everything above
//! the kernel gets time as a `smoltcp::time::Instant` from `now()`; nothing else reads it.

use core::sync::atomic::{AtomicU64, Ordering};
use smoltcp::time::Instant;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_BOOT: AtomicU64 = AtomicU64::new(0);

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Calibrates the TSC; returns its frequency in Hz.
pub fn init() -> u64 {
    TSC_BOOT.store(rdtsc(), Ordering::Relaxed);
    let hz = crate::arch::pit::calibrate_tsc(20).max(1_000_000);
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

/// Microseconds since boot.
pub fn micros() -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed).max(1);
    let ticks = rdtsc().wrapping_sub(TSC_BOOT.load(Ordering::Relaxed));
    ((ticks as u128) * 1_000_000 / hz as u128) as u64
}

pub fn now() -> Instant {
    Instant::from_micros(micros() as i64)
}
