//! CPU tables: the GDT with a TSS (a separate stack for double faults), the IDT with a
//! handler for every architecturally defined exception (each prints vector, error code and
//! RIP to the serial port and stops the machine: never a silent triple fault), and the
//! legacy 8259 PIC for the timer and device interrupt lines. IRQ handlers only set bits in
//! `IRQ_PENDING` and mask their line; the main loop does the work and unmasks.

use core::sync::atomic::{AtomicU16, Ordering};
use pic8259::ChainedPics;
use spin::{Mutex, Once};
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// First vector of the remapped PIC; IRQ n arrives on vector `PIC_BASE + n`.
pub const PIC_BASE: u8 = 32;
const DOUBLE_FAULT_IST: u16 = 0;

/// One bit per IRQ line that fired since the main loop last looked.
pub static IRQ_PENDING: AtomicU16 = AtomicU16::new(0);
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
    let enabled = IRQ_ENABLED.load(Ordering::SeqCst) & !IRQ_PENDING.load(Ordering::SeqCst);
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
        let enabled = IRQ_ENABLED.load(Ordering::SeqCst) & !IRQ_PENDING.load(Ordering::SeqCst);
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
    crate::console::emergency(format_args!(
        "\nweft: CPU exception {vector} ({name}) error={error:#x?} rip={:#x} rsp={:#x} cs={:#x} rflags={:#x}\n",
        frame.instruction_pointer.as_u64(),
        frame.stack_pointer.as_u64(),
        frame.code_segment.0,
        frame.cpu_flags.bits(),
    ));
    crate::arch::halt_forever()
}

macro_rules! exception {
    ($name:ident, $vector:expr, $text:expr) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            fatal($vector, $text, None, &frame)
        }
    };
    ($name:ident, $vector:expr, $text:expr, code) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            fatal($vector, $text, Some(code), &frame)
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
exception!(invalid_tss, 10, "invalid TSS", code);
exception!(segment_not_present, 11, "segment not present", code);
exception!(stack_segment, 12, "stack-segment fault", code);
exception!(general_protection, 13, "general protection fault", code);
exception!(x87_floating_point, 16, "x87 floating point");
exception!(alignment_check, 17, "alignment check", code);
exception!(simd_floating_point, 19, "SIMD floating point");
exception!(virtualization, 20, "virtualization");
exception!(control_protection, 21, "control protection", code);
exception!(hv_injection, 28, "hypervisor injection");
exception!(vmm_communication, 29, "VMM communication", code);
exception!(security, 30, "security", code);

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    fatal(8, "double fault", Some(code), &frame)
}
extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal(18, "machine check", None, &frame)
}
extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let addr = x86_64::registers::control::Cr2::read_raw();
    crate::console::emergency(format_args!("\nweft: page fault at address {addr:#x}\n"));
    fatal(14, "page fault", Some(code.bits()), &frame)
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
    // SAFETY: the IST index refers to the double-fault stack set up in the TSS above.
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(DOUBLE_FAULT_IST);
    }
    idt.invalid_tss.set_handler_fn(invalid_tss);
    idt.segment_not_present.set_handler_fn(segment_not_present);
    idt.stack_segment_fault.set_handler_fn(stack_segment);
    idt.general_protection_fault
        .set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    idt.x87_floating_point.set_handler_fn(x87_floating_point);
    idt.alignment_check.set_handler_fn(alignment_check);
    idt.machine_check.set_handler_fn(machine_check);
    idt.simd_floating_point.set_handler_fn(simd_floating_point);
    idt.virtualization.set_handler_fn(virtualization);
    idt.cp_protection_exception
        .set_handler_fn(control_protection);
    idt.hv_injection_exception.set_handler_fn(hv_injection);
    idt.vmm_communication_exception
        .set_handler_fn(vmm_communication);
    idt.security_exception.set_handler_fn(security);
    for (line, handler) in IRQ_HANDLERS.iter().enumerate() {
        idt[PIC_BASE + line as u8].set_handler_fn(*handler);
    }
    idt
}
