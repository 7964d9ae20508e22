//! The 8254 programmable interval timer on channel 0 (ports 0x40/0x43, IRQ 0), which
//! every PC-compatible machine with a PIT has (q35, microvm, Firecracker; channel 2's
//! gate at port 0x61 is missing on microvm, so it is never used). It serves twice: once
//! at boot as a free-running counter that the TSC is calibrated against, then as the
//! one-shot wake-up timer of the idle main loop (mode 0).

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

/// The TSC frequency in Hz, measured against channel 0 running free for about `ms`
/// milliseconds, with the error bound of the measurement in parts per million (the
/// time the two counter reads took, over the interval).
pub fn calibrate_tsc(ms: u64) -> (u64, u64) {
    let mut cmd: Port<u8> = Port::new(COMMAND);
    let mut ch0: Port<u8> = Port::new(CH0_DATA);
    // SAFETY: as in `sample`; mode 2 with a reload of 0 (65536) counts down forever. IRQ 0
    // is masked at the PIC until the main loop enables it (and reprograms the channel).
    unsafe {
        cmd.write(CH0_RATE);
        ch0.write(0);
        ch0.write(0);
    }
    let target = (PIT_HZ * ms / 1000).clamp(1, MAX_TICKS / 2);
    // The first read after programming may see the count before it was loaded.
    let _ = sample();
    let (c0, b0, a0) = sample();
    loop {
        let (c1, b1, a1) = sample();
        let ticks = u64::from(c0.wrapping_sub(c1));
        if ticks >= target {
            let tsc = (b1 + a1) / 2 - (b0 + a0) / 2;
            let hz = tsc * PIT_HZ / ticks;
            let uncertainty = (a0 - b0) + (a1 - b1);
            return (hz, uncertainty * 1_000_000 / tsc.max(1));
        }
        core::hint::spin_loop();
    }
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
