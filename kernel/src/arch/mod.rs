//! Everything x86_64-specific: the PVH entry (`boot`), CPU tables and interrupt lines
//! (`cpu`), port I/O devices on the ISA bus (`pit`).

pub mod boot;
pub mod cpu;
pub mod pit;

/// Stops this CPU for good (interrupts off, halt in a loop).
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
