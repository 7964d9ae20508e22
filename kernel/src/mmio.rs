//! virtio-mmio discovery: the devices a Firecracker-class machine (QEMU `microvm`,
//! Firecracker) describes on the kernel command line as
//! `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` (Linux's syntax), in command-line
//! order. Owns nothing after discovery: each transport it opens is handed to `virtio`.

use crate::virtio::{Device, Location};
use alloc::vec::Vec;
use core::ptr::NonNull;
use virtio_drivers::transport::mmio::{MmioTransport, MmioVersion, VirtIOHeader};
use virtio_drivers::transport::Transport;

/// One `virtio_mmio.device=` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRegion {
    pub base: u64,
    pub size: u64,
    pub irq: u8,
}

/// Every `virtio_mmio.device=` entry of `cmdline`, in order; malformed entries are
/// logged and skipped.
pub fn regions(cmdline: &str) -> Vec<MmioRegion> {
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix("virtio_mmio.device="))
        .filter_map(|spec| {
            let region = parse(spec);
            if region.is_none() {
                log::warn!("ignoring malformed virtio_mmio.device={spec}");
            }
            region
        })
        .collect()
}

/// `<size>@<base>:<irq>[:<id>]`, size with an optional K/M/G suffix, numbers decimal or
/// 0x-hex (what Linux's `virtio_mmio` driver accepts).
fn parse(spec: &str) -> Option<MmioRegion> {
    let (size, rest) = spec.split_once('@')?;
    let mut fields = rest.split(':');
    let base = number(fields.next()?)?;
    let irq = u8::try_from(number(fields.next()?)?).ok()?;
    let (digits, shift) = match size.as_bytes().last()? {
        b'K' | b'k' => (&size[..size.len() - 1], 10),
        b'M' | b'm' => (&size[..size.len() - 1], 20),
        b'G' | b'g' => (&size[..size.len() - 1], 30),
        _ => (size, 0),
    };
    let size = number(digits)?.checked_shl(shift)?;
    (size > 0).then_some(MmioRegion { base, size, irq })
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Opens a transport on each region that holds a virtio device, in the given order.
pub fn discover(regions: &[MmioRegion]) -> Vec<Device> {
    let mut out = Vec::new();
    for r in regions {
        let at = Location::Mmio(r.base);
        if r.base.saturating_add(r.size) > crate::mem::MAPPED_LIMIT || r.base == 0 {
            log::error!("{at}: outside the identity-mapped 4 GiB; skipped");
            continue;
        }
        let Some(header) = NonNull::new(r.base as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: the hypervisor placed a virtio-mmio register block of `size` bytes at
        // `base` (it said so on the command line); it is identity mapped (checked above)
        // and nothing else in the kernel touches it, so the transport owns it for 'static.
        let transport = match unsafe { MmioTransport::new(header, r.size as usize) } {
            Ok(t) => t,
            Err(e) => {
                log::error!("{at}: not a usable virtio-mmio device: {e}");
                continue;
            }
        };
        if transport.version() == MmioVersion::Legacy {
            log::warn!("{at}: legacy virtio-mmio (version 1); QEMU: -global virtio-mmio.force-legacy=false");
        }
        let kind = transport.device_type();
        log::debug!("{at}: virtio {kind:?} irq {}", r.irq);
        out.push(Device {
            kind,
            transport: transport.into(),
            irq: r.irq,
            at,
        });
    }
    out
}
