//! The monotonic clock: the TSC, its frequency taken from the hypervisor's CPUID leaves
//! where it publishes one (KVM-based hosts: leaf 0x40000010, or leaf 0x15), otherwise
//! measured once at boot against the PIT (QEMU/TCG). Everything above the kernel gets
//! time as a `smoltcp::time::Instant` from `now()`; nothing else reads it.

use core::arch::x86_64::{__cpuid, CpuidResult};
use core::sync::atomic::{AtomicU64, Ordering};
use smoltcp::time::Instant;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_BOOT: AtomicU64 = AtomicU64::new(0);

/// How long the PIT calibration runs when no CPUID leaf gives the frequency. Its error
/// is the time two port reads take over this interval (logged at boot).
const CALIBRATION_MS: u64 = 2;

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn cpuid(leaf: u32) -> CpuidResult {
    __cpuid(leaf)
}

/// Where the TSC frequency came from.
#[derive(Clone, Copy)]
pub enum Source {
    /// Hypervisor leaf 0x40000010 (TSC kHz).
    HypervisorLeaf,
    /// Leaf 0x15: crystal clock times the TSC/crystal ratio.
    CrystalLeaf,
    /// Measured against the PIT, with its error bound in ppm.
    Pit { ppm: u64 },
}

impl core::fmt::Display for Source {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Source::HypervisorLeaf => f.write_str("CPUID 0x40000010"),
            Source::CrystalLeaf => f.write_str("CPUID 0x15"),
            Source::Pit { ppm } => write!(f, "PIT, +-{ppm} ppm"),
        }
    }
}

fn from_cpuid() -> Option<(u64, Source)> {
    let hypervisor = cpuid(1).ecx & (1 << 31) != 0;
    if hypervisor && cpuid(0x4000_0000).eax >= 0x4000_0010 {
        let khz = u64::from(cpuid(0x4000_0010).eax);
        if khz != 0 {
            return Some((khz * 1000, Source::HypervisorLeaf));
        }
    }
    if cpuid(0).eax >= 0x15 {
        let CpuidResult { eax, ebx, ecx, .. } = cpuid(0x15);
        if eax != 0 && ebx != 0 && ecx != 0 {
            return Some((
                u64::from(ecx) * u64::from(ebx) / u64::from(eax),
                Source::CrystalLeaf,
            ));
        }
    }
    None
}

/// Starts the clock; returns the TSC frequency in Hz and where it came from.
pub fn init() -> (u64, Source) {
    TSC_BOOT.store(rdtsc(), Ordering::Relaxed);
    let (hz, source) = from_cpuid().unwrap_or_else(|| {
        let (hz, ppm) = crate::arch::pit::calibrate_tsc(CALIBRATION_MS);
        (hz, Source::Pit { ppm })
    });
    let hz = hz.max(1_000_000);
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, source)
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
