//! The monotonic clock: the TSC, its frequency taken from the hypervisor's CPUID leaves
//! where it publishes one (KVM-based hosts: leaf 0x40000010, or leaf 0x15), otherwise
//! measured against the PIT (QEMU/TCG): briefly at entry, then again over the device
//! bring-up, before the appliance starts. Everything above the kernel gets
//! time as a `smoltcp::time::Instant` from `now()`; nothing else reads it.

use core::arch::x86_64::{__cpuid, CpuidResult};
use core::sync::atomic::{AtomicU64, Ordering};
use smoltcp::time::Instant;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_BOOT: AtomicU64 = AtomicU64::new(0);
/// `micros()` is `BASE_US` plus the TSC ticks since `TSC_BASE` at `TSC_HZ`: when the
/// frequency is refined, the base moves to that moment so the clock never steps back.
static TSC_BASE: AtomicU64 = AtomicU64::new(0);
static BASE_US: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    /// The TSC the PVH entry read first thing (`arch::boot`).
    static boot_tsc: u64;
}

/// How long the first PIT calibration runs when no CPUID leaf gives the frequency: only
/// good enough for the boot log's timestamps; [`refine`] measures again over the whole
/// device bring-up (~10 ms) before anything else reads the clock.
const FIRST_CALIBRATION_MS: u64 = 1;
/// What [`refine`] needs at least, else it measures afresh for this long.
const REFINED_CALIBRATION_MS: u64 = 2;
/// Error bounds above which a calibration is measured again.
const FIRST_MAX_PPM: u64 = 2000;
const REFINED_MAX_PPM: u64 = 500;

/// The PIT reading the first calibration started from, while the TSC frequency is
/// provisional.
static PIT_START: spin::Mutex<Option<crate::arch::pit::Mark>> = spin::Mutex::new(None);
/// The local APIC timer's start, measured against the TSC at [`refine`].
static APIC_START: spin::Mutex<Option<crate::arch::apic::TimerMark>> = spin::Mutex::new(None);

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
    /// No CPUID leaf and no PIT: CPUID 0x16's base frequency, or 2 GHz. Timers run wrong.
    Guess,
}

impl core::fmt::Display for Source {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Source::HypervisorLeaf => f.write_str("CPUID 0x40000010"),
            Source::CrystalLeaf => f.write_str("CPUID 0x15"),
            Source::Pit { ppm } => write!(f, "PIT, +-{ppm} ppm"),
            Source::Guess => f.write_str("a GUESS: no CPUID leaf, no PIT"),
        }
    }
}

/// CPUID 0x16's base frequency (MHz), or 2 GHz.
fn guess() -> u64 {
    let base_mhz = if cpuid(0).eax >= 0x16 {
        u64::from(cpuid(0x16).eax & 0xffff)
    } else {
        0
    };
    if base_mhz == 0 {
        2_000_000_000
    } else {
        base_mhz * 1_000_000
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

/// Starts the clock; returns the TSC frequency in Hz and where it came from (for the
/// PIT, a first estimate that [`refine`] replaces).
pub fn init() -> (u64, Source) {
    // SAFETY: written once by the boot code before any Rust ran, only read since.
    let entry = unsafe { core::ptr::read_volatile(&raw const boot_tsc) };
    TSC_BOOT.store(if entry == 0 { rdtsc() } else { entry }, Ordering::Relaxed);
    let (hz, source) = from_cpuid().unwrap_or_else(|| {
        let start = crate::arch::pit::start_free_running();
        match crate::arch::pit::calibrate_from(start, FIRST_CALIBRATION_MS, FIRST_MAX_PPM) {
            Some((hz, ppm)) => {
                *PIT_START.lock() = Some(start);
                (hz, Source::Pit { ppm })
            }
            None => (guess(), Source::Guess),
        }
    });
    let hz = hz.max(1_000_000);
    TSC_BASE.store(TSC_BOOT.load(Ordering::Relaxed), Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
    *APIC_START.lock() = crate::arch::apic::start_timer_calibration();
    (hz, source)
}

/// What [`refine`] measured.
pub struct Refined {
    /// The TSC against the PIT over the whole bring-up (None: it came from CPUID).
    pub tsc: Option<(u64, Source)>,
    /// The local APIC timer's rate against the TSC (None: no usable APIC).
    pub apic_timer_hz: Option<u64>,
}

/// Measures the TSC against the PIT again, over everything since [`init`] (or afresh if
/// that took too long for the counter), then the local APIC timer against the TSC. Call
/// once, before the main loop's first sleep.
pub fn refine() -> Refined {
    let tsc = PIT_START.lock().take().map(|start| {
        let estimate = TSC_HZ.load(Ordering::Relaxed);
        let min_ticks = crate::arch::pit::PIT_HZ * REFINED_CALIBRATION_MS / 1000;
        let (hz, ppm) = crate::arch::pit::tsc_hz_since(start, min_ticks, estimate)
            .filter(|(_, ppm)| *ppm <= REFINED_MAX_PPM)
            .or_else(|| {
                let again = crate::arch::pit::start_free_running();
                crate::arch::pit::calibrate_from(again, REFINED_CALIBRATION_MS, REFINED_MAX_PPM)
            })
            .unwrap_or((estimate, u64::MAX));
        let hz = hz.max(1_000_000);
        set_hz(hz);
        (hz, Source::Pit { ppm })
    });
    let apic_timer_hz = APIC_START.lock().take().and_then(|start| {
        crate::arch::apic::finish_timer_calibration(start, TSC_HZ.load(Ordering::Relaxed))
    });
    Refined { tsc, apic_timer_hz }
}

/// Switches to a new TSC frequency from this moment on, keeping the clock continuous.
fn set_hz(hz: u64) {
    let now_tsc = rdtsc();
    let now_us = micros_at(now_tsc);
    BASE_US.store(now_us, Ordering::Relaxed);
    TSC_BASE.store(now_tsc, Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
}

fn micros_at(tsc: u64) -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed).max(1);
    let ticks = tsc.saturating_sub(TSC_BASE.load(Ordering::Relaxed));
    BASE_US.load(Ordering::Relaxed) + ((ticks as u128) * 1_000_000 / hz as u128) as u64
}

/// Microseconds since the kernel was entered.
pub fn micros() -> u64 {
    micros_at(rdtsc())
}

pub fn now() -> Instant {
    Instant::from_micros(micros() as i64)
}
