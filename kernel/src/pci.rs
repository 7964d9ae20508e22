//! PCI discovery on bus 0 through the legacy configuration ports (0xCF8/0xCFC), which
//! every PC-compatible machine with PCI has; `virtio-drivers` does the capability and BAR
//! parsing. Owns nothing after discovery: the devices it finds are handed to `virtio`.

use crate::virtio::hal::KernelHal;
use crate::virtio::{Device, Location};
use alloc::vec::Vec;
use virtio_drivers::transport::pci::bus::{
    Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, PciRoot,
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

/// Opens a transport on every virtio function of bus 0, in slot order, with memory
/// decoding and bus mastering enabled.
pub fn discover() -> Vec<Device> {
    let mut root = PciRoot::new(PortCam);
    let found: Vec<(DeviceFunction, DeviceFunctionInfo)> = root.enumerate_bus(0).collect();
    let mut out = Vec::new();
    for (function, info) in found {
        let Some(kind) = virtio_device_type(&info) else {
            continue;
        };
        let at = Location::Pci(function);
        let (_, command) = root.get_status_command(function);
        root.set_command(
            function,
            command | Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER,
        );
        let irq = PortCam.read_word(function, 0x3c) as u8;
        let transport = match PciTransport::new::<KernelHal, _>(&mut root, function) {
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
