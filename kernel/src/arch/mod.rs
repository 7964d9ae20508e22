//! Everything x86_64-specific: the PVH entry (`boot`), CPU tables and interrupt lines
//! (`cpu`), the local APIC's virtual-wire mode (`apic`), XSAVE/AVX state (`simd`), port
//! I/O devices on the ISA bus (`pit`), the boot stack's size and high-water mark
//! (`stack`).

pub mod apic;
pub mod boot;
pub mod cpu;
pub mod pit;
pub mod simd;
pub mod stack;

/// Stops this CPU for good (interrupts off, halt in a loop).
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// A call that recurses until the stack runs out, 512 bytes a frame.
fn deeper(n: u64) -> u64 {
    let frame = core::hint::black_box([n; 64]);
    if core::hint::black_box(true) {
        deeper(frame[0] + 1) + frame[63]
    } else {
        n
    }
}

/// Raises a CPU exception on purpose (`weft.fault=` on the command line), so tests can
/// check that every fault is reported on the serial console instead of a silent reset.
pub fn provoke_fault(kind: &str) {
    log::warn!("provoking a {kind} fault as asked on the command line");
    match kind {
        // SAFETY: ud2 only raises #UD, which the IDT reports and halts on.
        "ud" => unsafe { core::arch::asm!("ud2") },
        // SAFETY: a read from a non-canonical address raises #GP, reported and halted on.
        "gp" => unsafe {
            core::ptr::read_volatile(0x8000_0000_0000_0000usize as *const u8);
        },
        // SAFETY: a read above the identity-mapped 4 GiB raises #PF, reported and halted on.
        "pf" => unsafe {
            core::ptr::read_volatile(0x40_0000_0000usize as *const u8);
        },
        // SAFETY: int3 raises #BP, reported and halted on.
        "bp" => unsafe { core::arch::asm!("int3") },
        // Recursion without end: the stack runs into its guard page (#PF, then #DF on
        // its own stack once the #PF frame no longer fits), reported and halted on.
        "stack" => log::warn!("unreachable: {}", deeper(0)),
        other => log::warn!("unknown fault kind {other:?} (ud, gp, pf, bp, stack)"),
    }
}
