//! MSI-X for the virtio-pci devices (q35, Cloud Hypervisor): each device's queues and
//! configuration changes signal one vector, delivered by the local APIC as a message,
//! instead of the shared INTx lines through the 8259. Per interrupt that drops the PIC
//! mask/EOI/unmask port writes and the ISR read of every device (9 exits under KVM,
//! ~0.66 us under TCG) for one APIC EOI. virtio-drivers' PCI transport does not set
//! vectors, so this module programs the MSI-X capability (PCI 3.0, 6.8.2) and the virtio
//! common configuration's vector registers (virtio 1.2, 4.1.4.3) itself, after the
//! drivers brought their devices up. Owns those registers; nothing else writes them.

use crate::pci::PortCam;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};

/// PCI capability IDs.
const CAP_MSIX: u8 = 0x11;
const CAP_VENDOR: u8 = 0x09;
/// virtio-pci capability type of the common configuration.
const VIRTIO_CAP_COMMON: u8 = 1;

/// MSI-X message control (cap + 2): enable (bit 15), function mask (bit 14), table size.
const MSIX_ENABLE: u32 = 1 << 15;
const MSIX_FUNCTION_MASK: u32 = 1 << 14;
/// PCI command register: INTx disable (bit 10).
const COMMAND_INTX_DISABLE: u32 = 1 << 10;

/// Common configuration offsets (virtio 1.2, 4.1.4.3).
const COMMON_MSIX_CONFIG: usize = 0x10;
const COMMON_NUM_QUEUES: usize = 0x12;
const COMMON_QUEUE_SELECT: usize = 0x16;
const COMMON_QUEUE_MSIX_VECTOR: usize = 0x1a;
const COMMON_QUEUE_ENABLE: usize = 0x1c;
/// What the device reads back when it could not take a vector.
const NO_VECTOR: u16 = 0xffff;

/// The message address of the bootstrap processor's local APIC (destination ID 0,
/// physical mode, fixed delivery).
const MSI_ADDRESS: u32 = 0xfee0_0000;

/// Why a device stays on INTx.
#[derive(Debug)]
pub enum MsixError {
    NoCapability,
    NoCommonConfig,
    BarNotMapped(u8),
    VectorRefused,
}

impl core::fmt::Display for MsixError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MsixError::NoCapability => f.write_str("no MSI-X capability"),
            MsixError::NoCommonConfig => f.write_str("no virtio common configuration"),
            MsixError::BarNotMapped(bar) => write!(f, "BAR {bar} not mapped"),
            MsixError::VectorRefused => f.write_str("the device refused the vector"),
        }
    }
}

fn read16(addr: u64) -> u16 {
    // SAFETY: `addr` lies in a memory BAR of this device (identity mapped below 4 GiB,
    // checked by `bar_address`), at a 16-bit register of the common configuration.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

fn write16(addr: u64, value: u16) {
    // SAFETY: as in `read16`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, value) }
}

fn write32(addr: u64, value: u32) {
    // SAFETY: `addr` is an MSI-X table entry word in a memory BAR of this device,
    // identity mapped below 4 GiB (checked by `bar_address`).
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// The address a memory BAR was given (by the firmware), if it is mapped.
fn bar_address(df: DeviceFunction, bar: u8) -> Option<u64> {
    if bar > 5 {
        return None;
    }
    let reg = 0x10 + 4 * bar;
    let low = PortCam.read_word(df, reg);
    if low & 1 != 0 {
        return None; // an I/O BAR
    }
    let mut addr = u64::from(low & !0xf);
    if (low >> 1) & 0b11 == 0b10 && bar < 5 {
        addr |= u64::from(PortCam.read_word(df, reg + 4)) << 32;
    }
    let end = addr.checked_add(0x1000)?;
    (addr != 0 && end <= crate::mem::MAPPED_LIMIT).then_some(addr)
}

/// Routes every interrupt of the virtio-pci function `df` (its configuration changes
/// and each enabled queue) to `vector` on the bootstrap processor and turns its INTx
/// off. Call after the device's driver set it up (DRIVER_OK), with interrupts off.
pub fn route(df: DeviceFunction, vector: u8) -> Result<(), MsixError> {
    let root = PciRoot::new(PortCam);
    let mut msix = None;
    let mut common = None;
    for cap in root.capabilities(df) {
        match cap.id {
            CAP_MSIX => msix = Some(cap.offset),
            CAP_VENDOR if (cap.private_header >> 8) as u8 == VIRTIO_CAP_COMMON => {
                let bar = PortCam.read_word(df, cap.offset + 4) as u8;
                let offset = PortCam.read_word(df, cap.offset + 8);
                common.get_or_insert((bar, offset));
            }
            _ => {}
        }
    }
    let cap = msix.ok_or(MsixError::NoCapability)?;
    let (common_bar, common_offset) = common.ok_or(MsixError::NoCommonConfig)?;
    let common = bar_address(df, common_bar).ok_or(MsixError::BarNotMapped(common_bar))?
        + u64::from(common_offset);
    let table_reg = PortCam.read_word(df, cap + 4);
    let table_bar = (table_reg & 0b111) as u8;
    let table = bar_address(df, table_bar).ok_or(MsixError::BarNotMapped(table_bar))?
        + u64::from(table_reg & !0b111);

    // Table entry 0: address, upper address, data (the vector, edge, fixed), unmasked.
    write32(table, MSI_ADDRESS);
    write32(table + 4, 0);
    write32(table + 8, u32::from(vector));
    write32(table + 12, 0);
    // Message control is the upper half of the capability's first dword.
    let header = PortCam.read_word(df, cap);
    let control = (header >> 16 | MSIX_ENABLE) & !MSIX_FUNCTION_MASK;
    let mut cam = PortCam;
    cam.write_word(df, cap, (header & 0xffff) | control << 16);

    write16(common + COMMON_MSIX_CONFIG as u64, 0);
    if read16(common + COMMON_MSIX_CONFIG as u64) == NO_VECTOR {
        return Err(MsixError::VectorRefused);
    }
    for queue in 0..read16(common + COMMON_NUM_QUEUES as u64) {
        write16(common + COMMON_QUEUE_SELECT as u64, queue);
        if read16(common + COMMON_QUEUE_ENABLE as u64) == 0 {
            continue;
        }
        write16(common + COMMON_QUEUE_MSIX_VECTOR as u64, 0);
        if read16(common + COMMON_QUEUE_MSIX_VECTOR as u64) == NO_VECTOR {
            return Err(MsixError::VectorRefused);
        }
    }
    let command = PortCam.read_word(df, 0x04);
    cam.write_word(df, 0x04, (command & 0xffff) | COMMAND_INTX_DISABLE);
    Ok(())
}
