//! The local APIC, only as far as the legacy interrupt path needs it: virtual-wire mode,
//! so the 8259 PIC's output (LINT0, ExtINT) reaches the CPU whatever the firmware left
//! behind (qboot on microvm leaves LINT0 masked; SeaBIOS on q35 sets virtual wire).
//! Owns the xAPIC register page; nothing else touches it.

use x86_64::registers::model_specific::{ApicBase, ApicBaseFlags};

/// xAPIC register offsets (Intel SDM vol. 3, table 11-1).
const SVR: usize = 0xf0;
const LVT_LINT0: usize = 0x350;
const LVT_LINT1: usize = 0x360;

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
}
