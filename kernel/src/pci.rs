//! PCI discovery on bus 0 through the legacy configuration ports (0xCF8/0xCFC), which
//! every PC-compatible machine with PCI has; `virtio-drivers` does the capability and BAR
//! parsing. BARs the firmware left unassigned (qboot assigns none, SeaBIOS all) get an
//! address here. Owns nothing after discovery: the devices it finds are handed to
//! `virtio`.

use crate::virtio::hal::KernelHal;
use crate::virtio::{Device, Location};
use alloc::vec::Vec;
use core::ops::Range;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, MemoryBarType,
    PciRoot,
};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use x86_64::instructions::port::Port;

pub struct PortCam;

impl PortCam {
    fn address(df: DeviceFunction, offset: u8) -> u32 {
        0x8000_0000
            | (df.bus as u32) << 16
            | (df.device as u32) << 11
            | (df.function as u32) << 8
            | (offset as u32 & 0xfc)
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        let mut addr: Port<u32> = Port::new(0xcf8);
        let mut data: Port<u32> = Port::new(0xcfc);
        x86_64::instructions::interrupts::without_interrupts(|| {
            // SAFETY: 0xCF8/0xCFC are the PCI configuration mechanism #1 ports; the address
            // selects one dword of one function's configuration space.
            unsafe {
                addr.write(Self::address(df, offset));
                data.read()
            }
        })
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, value: u32) {
        let mut addr: Port<u32> = Port::new(0xcf8);
        let mut data: Port<u32> = Port::new(0xcfc);
        x86_64::instructions::interrupts::without_interrupts(|| {
            // SAFETY: as in read_word; callers only write registers they own.
            unsafe {
                addr.write(Self::address(df, offset));
                data.write(value);
            }
        })
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// The address ranges BARs without an address are placed in. On q35, RAM below 4 GiB
/// ends by 0xB000_0000 and the PCIe configuration window takes the next 256 MiB, so
/// memory from 0xC000_0000 up to the IOAPIC is the PCI hole; I/O ports from 0xC000 are
/// the PC's PCI range. SeaBIOS allocates from the same ranges, but it leaves none empty.
const MEMORY_WINDOW: Range<u64> = 0xc000_0000..0xfec0_0000;
const IO_WINDOW: Range<u64> = 0xc000..0x1_0000;

/// What is still free of each window.
struct Windows {
    memory: Range<u64>,
    io: Range<u64>,
}

impl Windows {
    fn new() -> Windows {
        Windows {
            memory: MEMORY_WINDOW,
            io: IO_WINDOW,
        }
    }

    /// `size` bytes of `free` aligned to `size` (a BAR's size is a power of two), if
    /// they fit; `free` then starts after them.
    fn take(free: &mut Range<u64>, size: u64) -> Option<u64> {
        let at = free.start.checked_next_multiple_of(size.max(16))?;
        let end = at.checked_add(size)?;
        (end <= free.end).then(|| {
            free.start = end;
            at
        })
    }
}

/// Gives every BAR of `function` that has a size but no address one from `windows`.
/// Decoding must be off.
fn assign_bars(root: &mut PciRoot<PortCam>, function: DeviceFunction, windows: &mut Windows) {
    let at = Location::Pci(function);
    let bars = match root.bars(function) {
        Ok(bars) => bars,
        Err(e) => {
            log::error!("{at}: unreadable BARs: {e:?}");
            return;
        }
    };
    for (index, bar) in bars.iter().enumerate() {
        let index = index as u8;
        match *bar {
            Some(BarInfo::Memory {
                address: 0,
                size,
                address_type,
                ..
            }) if address_type != MemoryBarType::Below1MiB => {
                let Some(address) = Windows::take(&mut windows.memory, size) else {
                    log::error!("{at}: no room for BAR {index} ({size} bytes)");
                    continue;
                };
                match address_type {
                    MemoryBarType::Width64 => root.set_bar_64(function, index, address),
                    _ => root.set_bar_32(function, index, address as u32),
                }
                log::debug!("{at}: BAR {index} at {address:#x} ({size} bytes)");
            }
            Some(BarInfo::IO { address: 0, size }) => {
                let Some(port) = Windows::take(&mut windows.io, u64::from(size)) else {
                    log::error!("{at}: no room for I/O BAR {index} ({size} ports)");
                    continue;
                };
                root.set_bar_32(function, index, port as u32 | 1);
                log::debug!("{at}: BAR {index} at port {port:#x} ({size} ports)");
            }
            _ => {}
        }
    }
}

/// Opens a transport on every virtio function of bus 0, in slot order, with its BARs
/// assigned, memory decoding and bus mastering enabled.
///
/// Decoding stays off while the BARs are sized and the transport reads them: sizing a
/// BAR with decoding on turns it off and on again, and under QEMU each turn rebuilds the
/// guest's memory map (1-2 ms under TCG; the transport reads four BARs per device).
pub fn discover() -> Vec<Device> {
    let mut root = PciRoot::new(PortCam);
    let found: Vec<(DeviceFunction, DeviceFunctionInfo)> = root.enumerate_bus(0).collect();
    let mut windows = Windows::new();
    let mut out = Vec::new();
    for (function, info) in found {
        let Some(kind) = virtio_device_type(&info) else {
            continue;
        };
        let at = Location::Pci(function);
        let (_, command) = root.get_status_command(function);
        let decode = Command::IO_SPACE | Command::MEMORY_SPACE;
        if command.intersects(decode) {
            root.set_command(function, command - decode);
        }
        assign_bars(&mut root, function, &mut windows);
        let irq = PortCam.read_word(function, 0x3c) as u8;
        let transport = PciTransport::new::<KernelHal, _>(&mut root, function);
        root.set_command(function, command | decode | Command::BUS_MASTER);
        let transport = match transport {
            Ok(t) => t,
            Err(e) => {
                log::error!("{at}: not a usable virtio device: {e:?}");
                continue;
            }
        };
        log::debug!("{at}: virtio {kind:?} irq {irq}");
        out.push(Device {
            kind,
            transport: transport.into(),
            irq,
            at,
        });
    }
    out
}
