//! virtio devices over `virtio-drivers`: the HAL (`hal`), the two NICs as netstack ports
//! (`net`) and the control channel (`console`), on either transport: PCI (q35, Cloud
//! Hypervisor) or MMIO (microvm, Firecracker). Which one a machine has is decided once,
//! here: virtio-mmio devices named on the command line, else a PCI scan.

pub mod console;
pub mod features;
pub mod hal;
pub mod net;

use alloc::vec::Vec;
use core::fmt;
use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::{DeviceType, SomeTransport};

/// The transport every driver here runs on.
pub type Transport = SomeTransport<'static>;

/// Where a device sits, for log lines.
#[derive(Clone, Copy, Debug)]
pub enum Location {
    Pci(DeviceFunction),
    Mmio(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Pci(df) => write!(f, "pci {df}"),
            Location::Mmio(base) => write!(f, "virtio-mmio {base:#x}"),
        }
    }
}

/// A virtio device found on the machine, its transport open, not yet initialised.
pub struct Device {
    pub kind: DeviceType,
    pub transport: Transport,
    /// The legacy interrupt line (IRQ 0..16 at the PIC) it raises.
    pub irq: u8,
    pub at: Location,
}

/// Every virtio device of this machine, in a fixed order: command-line order for
/// virtio-mmio, slot order for PCI.
pub fn discover(cmdline: &str) -> Vec<Device> {
    let regions = crate::mmio::regions(cmdline);
    if regions.is_empty() {
        crate::pci::discover()
    } else {
        crate::mmio::discover(&regions)
    }
}
