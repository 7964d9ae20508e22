//! The 8254 programmable interval timer on channel 0 (ports 0x40/0x43, IRQ 0), which
//! every PC-compatible machine with a PIT has (q35, microvm, Firecracker; channel 2's
//! gate at port 0x61 is missing on microvm, so it is never used). It serves twice: at
//! boot as a free-running counter that the TSC is calibrated against (briefly at entry,
//! then over the whole device bring-up), then as the one-shot wake-up timer of the idle
//! main loop (mode 0).

use x86_64::instructions::port::Port;

pub const PIT_HZ: u64 = 1_193_182;
/// The longest one-shot the 16-bit counter can hold (~54.9 ms).
pub const MAX_TICKS: u64 = 0xffff;

const CH0_DATA: u16 = 0x40;
const COMMAND: u16 = 0x43;
/// Channel 0, lobyte/hibyte access, mode 0 (interrupt on terminal count), binary.
const CH0_ONE_SHOT: u8 = 0b0011_0000;
/// Channel 0, lobyte/hibyte access, mode 2 (rate generator), binary.
const CH0_RATE: u8 = 0b0011_0100;
/// Counter latch command for channel 0.
const CH0_LATCH: u8 = 0b0000_0000;

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Channel 0's current count, latched, with the TSC just before and just after the read.
fn sample() -> (u16, u64, u64) {
    let mut cmd: Port<u8> = Port::new(COMMAND);
    let mut ch0: Port<u8> = Port::new(CH0_DATA);
    let before = rdtsc();
    // SAFETY: ports 0x40/0x43 are PIT channel 0 data/command; latching and reading the
    // count has no effect on the count itself.
    let count = unsafe {
        cmd.write(CH0_LATCH);
        let lo = ch0.read();
        let hi = ch0.read();
        u16::from_le_bytes([lo, hi])
    };
    (count, before, rdtsc())
}

/// A reading of channel 0 running free: its count and the TSC around the read.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    count: u16,
    before: u64,
    after: u64,
}

impl Mark {
    /// The tightest of a few readings: a reading whose bracket holds a host preemption
    /// (a loaded machine, TCG translating new code) would spoil the measurement.
    fn take() -> Mark {
        let mut best: Option<Mark> = None;
        for _ in 0..3 {
            let (count, before, after) = sample();
            let mark = Mark {
                count,
                before,
                after,
            };
            if best.is_none_or(|b| mark.width() < b.width()) {
                best = Some(mark);
            }
        }
        best.unwrap_or(Mark {
            count: 0,
            before: 0,
            after: 0,
        })
    }

    fn width(&self) -> u64 {
        self.after.saturating_sub(self.before)
    }

    fn tsc(&self) -> u64 {
        self.before / 2 + self.after / 2
    }
}

/// Starts channel 0 counting down freely (mode 2, period 65536 ticks, ~54.9 ms) and
/// returns the first reading. IRQ 0 stays masked at the PIC until the main loop enables
/// it (and reprograms the channel as its one-shot timer).
pub fn start_free_running() -> Mark {
    let mut cmd: Port<u8> = Port::new(COMMAND);
    let mut ch0: Port<u8> = Port::new(CH0_DATA);
    // SAFETY: ports 0x40/0x43 are PIT channel 0 command/data; a reload of 0 means 65536.
    unsafe {
        cmd.write(CH0_RATE);
        ch0.write(0);
        ch0.write(0);
    }
    // The first read after programming may see the count before it was loaded.
    let _ = sample();
    Mark::take()
}

/// The TSC frequency in Hz between `start` and now, with the error bound of the
/// measurement in parts per million (the time the counter reads took, over the
/// interval). None once the counter may have wrapped (more than `MAX_TICKS / 2` ticks
/// by the TSC at `estimate_hz`) or before `min_ticks` have passed.
pub fn tsc_hz_since(start: Mark, min_ticks: u64, estimate_hz: u64) -> Option<(u64, u64)> {
    let now = Mark::take();
    let tsc = now.tsc().saturating_sub(start.tsc());
    if estimate_hz != 0 && tsc > estimate_hz / PIT_HZ * (MAX_TICKS / 2) {
        return None;
    }
    let ticks = u64::from(start.count.wrapping_sub(now.count));
    if ticks < min_ticks.max(1) {
        return None;
    }
    let uncertainty = start.width() + now.width();
    Some((tsc * PIT_HZ / ticks, uncertainty * 1_000_000 / tsc.max(1)))
}

/// Measures for `ms` milliseconds of channel 0 from `start` and returns the TSC
/// frequency and its error bound (see [`tsc_hz_since`]); if that bound exceeds
/// `max_ppm`, measures again from a fresh start, up to a few times (the best is kept).
/// None if channel 0 does not count (a machine without a PIT, e.g. Cloud Hypervisor).
pub fn calibrate_from(start: Mark, ms: u64, max_ppm: u64) -> Option<(u64, u64)> {
    /// Readings without the count moving after which there is no PIT.
    const STILL_LIMIT: u32 = 1000;
    let target = (PIT_HZ * ms / 1000).clamp(1, MAX_TICKS / 2);
    let mut start = start;
    let mut best: Option<(u64, u64)> = None;
    for _ in 0..4 {
        let mut still = 0;
        let found = loop {
            if let Some(found) = tsc_hz_since(start, target, 0) {
                break found;
            }
            if Mark::take().count == start.count {
                still += 1;
                if still > STILL_LIMIT {
                    return best;
                }
            }
            core::hint::spin_loop();
        };
        if best.is_none_or(|(_, ppm)| found.1 < ppm) {
            best = Some(found);
        }
        if found.1 <= max_ppm {
            break;
        }
        start = Mark::take();
    }
    best
}

/// Arms channel 0 to raise IRQ 0 once after `ticks` PIT ticks (clamped to 1..=MAX_TICKS).
pub fn one_shot(ticks: u64) {
    let ticks = ticks.clamp(1, MAX_TICKS) as u16;
    let mut cmd: Port<u8> = Port::new(COMMAND);
    let mut ch0: Port<u8> = Port::new(CH0_DATA);
    // SAFETY: ports 0x40/0x43 are PIT channel 0 data/command; mode 0 raises IRQ 0 once at
    // terminal count, which only wakes the main loop.
    unsafe {
        cmd.write(CH0_ONE_SHOT);
        ch0.write(ticks as u8);
        ch0.write((ticks >> 8) as u8);
    }
}
