//! The 8254 programmable interval timer: a known 1.193182 MHz clock used once to calibrate
//! the TSC (channel 2, gated through port 0x61) and then as the one-shot wake-up timer of
//! the idle main loop (channel 0, mode 0, IRQ 0).

use x86_64::instructions::port::Port;

pub const PIT_HZ: u64 = 1_193_182;
/// The longest one-shot the 16-bit counter can hold (~54.9 ms).
pub const MAX_TICKS: u64 = 0xffff;

/// Measures the TSC frequency in Hz against PIT channel 2 over `ms` milliseconds.
pub fn calibrate_tsc(ms: u64) -> u64 {
    let ticks = (PIT_HZ * ms / 1000).min(MAX_TICKS) as u16;
    let mut gate: Port<u8> = Port::new(0x61);
    let mut cmd: Port<u8> = Port::new(0x43);
    let mut ch2: Port<u8> = Port::new(0x42);
    // SAFETY: ports 0x42/0x43/0x61 are the PIT channel 2 data/command and its gate on every
    // PC-compatible machine (q35 included); the speaker output stays disabled (bit 1 = 0).
    unsafe {
        let g = gate.read() & 0xfc;
        gate.write(g); // gate low
        cmd.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write(ticks as u8);
        ch2.write((ticks >> 8) as u8);
        gate.write(g | 1); // rising edge on the gate starts the count
        let start = core::arch::x86_64::_rdtsc();
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        let end = core::arch::x86_64::_rdtsc();
        gate.write(g);
        (end - start) * PIT_HZ / ticks as u64
    }
}

/// Arms channel 0 to raise IRQ 0 once after `ticks` PIT ticks (clamped to 1..=MAX_TICKS).
pub fn one_shot(ticks: u64) {
    let ticks = ticks.clamp(1, MAX_TICKS) as u16;
    let mut cmd: Port<u8> = Port::new(0x43);
    let mut ch0: Port<u8> = Port::new(0x40);
    // SAFETY: ports 0x40/0x43 are PIT channel 0 data/command; mode 0 raises IRQ 0 once at
    // terminal count, which only wakes the main loop.
    unsafe {
        cmd.write(0b0011_0000); // channel 0, lobyte/hibyte, mode 0
        ch0.write(ticks as u8);
        ch0.write((ticks >> 8) as u8);
    }
}
