//! CPU tables: the GDT with a TSS (a separate stack for double faults), the IDT with a
//! handler for every architecturally defined exception (each prints vector, error code and
//! RIP to the serial port and stops the machine: never a silent triple fault), and the
//! legacy 8259 PIC for the device interrupt lines (and the PIT where there is no APIC
//! timer). IRQ handlers only set bits in `IRQ_PENDING` (bit 0: a timer fired) and mask
//! their line; the main loop does the work and unmasks.

use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use pic8259::ChainedPics;
use spin::{Mutex, Once};
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// First vector of the remapped PIC; IRQ n arrives on vector `PIC_BASE + n`.
pub const PIC_BASE: u8 = 32;
const DOUBLE_FAULT_IST: u16 = 0;

/// One bit per IRQ line that fired since the main loop last looked (bits 0..16, bit 0
/// also for the APIC timer), and [`MSI_PENDING`] for a message-signalled interrupt.
pub static IRQ_PENDING: AtomicU32 = AtomicU32::new(0);
/// The `IRQ_PENDING` bit of the MSI-X vector (all virtio-pci devices share it).
pub const MSI_PENDING: u32 = 1 << 16;
/// The vector MSI-X devices signal (above the PIC's and the APIC timer's).
pub const MSI_VECTOR: u8 = 49;
/// Lines the main loop wants enabled.
static IRQ_ENABLED: AtomicU16 = AtomicU16::new(0);

static PICS: Mutex<ChainedPics> =
    // SAFETY: PIC_BASE..PIC_BASE+16 do not overlap the CPU exception vectors (0..32).
    Mutex::new(unsafe { ChainedPics::new(PIC_BASE, PIC_BASE + 8) });

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(
    GlobalDescriptorTable,
    SegmentSelector,
    SegmentSelector,
    SegmentSelector,
)> = Once::new();
static IDT: Once<InterruptDescriptorTable> = Once::new();

static mut DOUBLE_FAULT_STACK: [u8; 16 * 1024] = [0; 16 * 1024];

pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let start = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK);
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = start + 16 * 1024u64;
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded, which lives for 'static.
    unsafe {
        CS::set_reg(*code);
        DS::set_reg(*data);
        ES::set_reg(*data);
        SS::set_reg(*data);
        load_tss(*tss_sel);
    }
    IDT.call_once(build_idt).load();
    let mut pics = PICS.lock();
    // SAFETY: the PIC is at its standard ports; remapping it is required before enabling
    // interrupts, and all lines are masked right after.
    unsafe {
        pics.initialize();
        pics.write_masks(0xff, 0xff);
    }
    drop(pics);
    crate::arch::apic::init_virtual_wire();
}

/// Enables IRQ `line` at the PIC (the cascade line 2 comes along for lines 8..16).
pub fn enable_irq(line: u8) {
    let mut bits = 1u16 << line;
    if line >= 8 {
        bits |= 1 << 2;
    }
    IRQ_ENABLED.fetch_or(bits, Ordering::SeqCst);
    write_masks();
}

/// Unmasks every enabled line (handlers mask their line until the main loop has run).
pub fn unmask_enabled() {
    write_masks();
}

fn write_masks() {
    let enabled = IRQ_ENABLED.load(Ordering::SeqCst) & !(IRQ_PENDING.load(Ordering::SeqCst) as u16);
    let enabled = enabled | (IRQ_ENABLED.load(Ordering::SeqCst) & (1 << 2));
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: writing the PIC mask registers only changes which lines interrupt us.
        unsafe {
            PICS.lock()
                .write_masks(!(enabled as u8), !((enabled >> 8) as u8))
        };
    });
}

fn irq(line: u8) {
    IRQ_PENDING.fetch_or(1 << line, Ordering::SeqCst);
    if line != 0 {
        // Level-triggered device line: keep it masked until the device is acked.
        let enabled =
            IRQ_ENABLED.load(Ordering::SeqCst) & !(IRQ_PENDING.load(Ordering::SeqCst) as u16);
        let enabled = enabled | (IRQ_ENABLED.load(Ordering::SeqCst) & (1 << 2));
        if let Some(mut pics) = PICS.try_lock() {
            // SAFETY: as in write_masks; then end-of-interrupt for this vector.
            unsafe {
                pics.write_masks(!(enabled as u8), !((enabled >> 8) as u8));
                pics.notify_end_of_interrupt(PIC_BASE + line);
            }
            return;
        }
    }
    if let Some(mut pics) = PICS.try_lock() {
        // SAFETY: acknowledges the interrupt being handled.
        unsafe { pics.notify_end_of_interrupt(PIC_BASE + line) };
    }
}

/// A virtio-pci device's MSI-X message: the main loop polls every device anyway.
extern "x86-interrupt" fn msi(_frame: InterruptStackFrame) {
    IRQ_PENDING.fetch_or(MSI_PENDING, Ordering::SeqCst);
    crate::arch::apic::end_of_interrupt();
}

/// The local APIC timer: the same "timer fired" bit as the PIT's IRQ 0.
extern "x86-interrupt" fn apic_timer(_frame: InterruptStackFrame) {
    IRQ_PENDING.fetch_or(1, Ordering::SeqCst);
    crate::arch::apic::end_of_interrupt();
}

macro_rules! irq_handlers {
    ($($name:ident = $line:expr),* $(,)?) => {
        $(extern "x86-interrupt" fn $name(_frame: InterruptStackFrame) { irq($line) })*
        const IRQ_HANDLERS: [extern "x86-interrupt" fn(InterruptStackFrame); 16] = [$($name),*];
    };
}
irq_handlers!(
    irq0 = 0,
    irq1 = 1,
    irq2 = 2,
    irq3 = 3,
    irq4 = 4,
    irq5 = 5,
    irq6 = 6,
    irq7 = 7,
    irq8 = 8,
    irq9 = 9,
    irq10 = 10,
    irq11 = 11,
    irq12 = 12,
    irq13 = 13,
    irq14 = 14,
    irq15 = 15
);

fn fatal(vector: u8, name: &str, error: Option<u64>, frame: &InterruptStackFrame) -> ! {
    let (rip, rsp) = (
        frame.instruction_pointer.as_u64(),
        frame.stack_pointer.as_u64(),
    );
    match error {
        Some(code) => crate::console::emergency(format_args!(
            "\nweft: CPU exception {vector} ({name}) error={code:#x} rip={rip:#x} rsp={rsp:#x}\n"
        )),
        None => crate::console::emergency(format_args!(
            "\nweft: CPU exception {vector} ({name}) rip={rip:#x} rsp={rsp:#x}\n"
        )),
    }
    crate::arch::halt_forever()
}

macro_rules! exception {
    ($name:ident, $vector:expr, $text:expr) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            fatal($vector, $text, None, &frame)
        }
    };
}
exception!(divide_error, 0, "divide error");
exception!(debug, 1, "debug");
exception!(nmi, 2, "non-maskable interrupt");
exception!(breakpoint, 3, "breakpoint");
exception!(overflow, 4, "overflow");
exception!(bound_range, 5, "bound range exceeded");
exception!(invalid_opcode, 6, "invalid opcode");
exception!(device_not_available, 7, "device not available");
exception!(x87_floating_point, 16, "x87 floating point");
exception!(simd_floating_point, 19, "SIMD floating point");
exception!(virtualization, 20, "virtualization");
exception!(hv_injection, 28, "hypervisor injection");

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal(18, "machine check", None, &frame)
}

// Exceptions that push an error code enter through these stubs: the CPU leaves the stack
// 16-byte aligned *with* the error code on it, which the x86-interrupt ABI does not
// expect (SSE spills in the handler fault). Each stub pushes its vector and jumps to a
// common path that realigns the stack and calls `weft_exception_with_code` (no return).
core::arch::global_asm!(
    r#"
    .section .text
    .macro weft_exc_code vec
    .global weft_exc_\vec
weft_exc_\vec:
    push \vec
    jmp weft_exc_common
    .endm
    weft_exc_code 8
    weft_exc_code 10
    weft_exc_code 11
    weft_exc_code 12
    weft_exc_code 13
    weft_exc_code 14
    weft_exc_code 17
    weft_exc_code 21
    weft_exc_code 29
    weft_exc_code 30
weft_exc_common:
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    lea rdx, [rsp + 16]
    and rsp, -16
    call weft_exception_with_code
    ud2
"#
);

unsafe extern "C" {
    fn weft_exc_8();
    fn weft_exc_10();
    fn weft_exc_11();
    fn weft_exc_12();
    fn weft_exc_13();
    fn weft_exc_14();
    fn weft_exc_17();
    fn weft_exc_21();
    fn weft_exc_29();
    fn weft_exc_30();
}

#[unsafe(no_mangle)]
extern "C" fn weft_exception_with_code(
    vector: u64,
    code: u64,
    frame: *const InterruptStackFrame,
) -> ! {
    // SAFETY: the stub passes the address of the frame the CPU pushed (rip, cs, rflags,
    // rsp, ss), which is exactly the layout of InterruptStackFrame.
    let frame = unsafe { &*frame };
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    if matches!(vector, 8 | 14) && super::stack::in_guard(cr2) {
        crate::console::emergency(format_args!(
            "\nweft: stack overflow: the {} KiB boot stack ran into its guard page at {cr2:#x}\n",
            super::stack::SIZE / 1024
        ));
    }
    let name = match vector {
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection fault",
        14 => {
            crate::console::emergency(format_args!("\nweft: page fault at address {cr2:#x}\n"));
            "page fault"
        }
        17 => "alignment check",
        21 => "control protection",
        29 => "VMM communication",
        30 => "security",
        _ => "unknown",
    };
    fatal(vector as u8, name, Some(code), frame)
}

fn stub(f: unsafe extern "C" fn()) -> VirtAddr {
    VirtAddr::new(f as usize as u64)
}

fn build_idt() -> InterruptDescriptorTable {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(divide_error);
    idt.debug.set_handler_fn(debug);
    idt.non_maskable_interrupt.set_handler_fn(nmi);
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.overflow.set_handler_fn(overflow);
    idt.bound_range_exceeded.set_handler_fn(bound_range);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.device_not_available
        .set_handler_fn(device_not_available);
    idt.x87_floating_point.set_handler_fn(x87_floating_point);
    idt.machine_check.set_handler_fn(machine_check);
    idt.simd_floating_point.set_handler_fn(simd_floating_point);
    idt.virtualization.set_handler_fn(virtualization);
    idt.hv_injection_exception.set_handler_fn(hv_injection);
    // SAFETY: every stub address is a weft_exc_* entry above, which matches the CPU's frame
    // for its vector (error code pushed) and never returns; the double-fault IST index
    // refers to the stack set up in the TSS.
    unsafe {
        idt.double_fault
            .set_handler_addr(stub(weft_exc_8))
            .set_stack_index(DOUBLE_FAULT_IST);
        idt.invalid_tss.set_handler_addr(stub(weft_exc_10));
        idt.segment_not_present.set_handler_addr(stub(weft_exc_11));
        idt.stack_segment_fault.set_handler_addr(stub(weft_exc_12));
        idt.general_protection_fault
            .set_handler_addr(stub(weft_exc_13));
        idt.page_fault.set_handler_addr(stub(weft_exc_14));
        idt.alignment_check.set_handler_addr(stub(weft_exc_17));
        idt.cp_protection_exception
            .set_handler_addr(stub(weft_exc_21));
        idt.vmm_communication_exception
            .set_handler_addr(stub(weft_exc_29));
        idt.security_exception.set_handler_addr(stub(weft_exc_30));
    }
    for (line, handler) in IRQ_HANDLERS.iter().enumerate() {
        idt[PIC_BASE + line as u8].set_handler_fn(*handler);
    }
    idt[crate::arch::apic::TIMER_VECTOR].set_handler_fn(apic_timer);
    idt[MSI_VECTOR].set_handler_fn(msi);
    idt
}
