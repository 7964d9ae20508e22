//! The main loop: finds the devices, then forever moves bytes between them and the
//! appliance. When nothing is left to do it arms the PIT for the appliance's next timer
//! and halts until that or a device interrupt wakes it, so an idle appliance costs the
//! host almost nothing.

use crate::arch::{cpu, pit};
use crate::pci::{self, PortCam};
use crate::virtio::console::{ControlConsole, Event};
use crate::virtio::hal::KernelHal;
use crate::virtio::net::NetPort;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use smoltcp::time::Duration;
use virtio_drivers::transport::pci::bus::PciRoot;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::DeviceType;
use weft_appliance::protocol::HeapStatus;
use weft_appliance::{Appliance, BootInfo};

/// The longest the loop sleeps without a reason (bounded anyway by the 16-bit PIT).
const MAX_SLEEP: Duration = Duration::from_millis(50);

pub fn run(cmdline: String) -> ! {
    let mut root = PciRoot::new(PortCam);
    let functions = pci::discover(&mut root);
    let mut nics = Vec::new();
    let mut control = None;
    let mut irq_lines = Vec::new();
    for f in &functions {
        let transport = match PciTransport::new::<KernelHal, _>(&mut root, f.function) {
            Ok(t) => t,
            Err(e) => {
                log::error!("pci {}: not a usable virtio device: {e:?}", f.function);
                continue;
            }
        };
        match f.kind {
            DeviceType::Network => match NetPort::new(transport) {
                Ok(port) => nics.push(port),
                Err(e) => log::error!("pci {}: virtio-net init failed: {e:?}", f.function),
            },
            DeviceType::Console if control.is_none() => match ControlConsole::new(transport) {
                Ok(c) => control = Some(c),
                Err(e) => log::error!("pci {}: virtio-console init failed: {e:?}", f.function),
            },
            other => {
                log::info!("pci {}: ignoring virtio {other:?}", f.function);
                continue;
            }
        }
        if (1..16).contains(&f.irq_line) && !irq_lines.contains(&f.irq_line) {
            irq_lines.push(f.irq_line);
        }
    }
    if nics.len() < 2 {
        panic!(
            "weft needs two virtio-net devices (uplink, link); found {}",
            nics.len()
        );
    }
    let mut link = nics.remove(1);
    let mut uplink = nics.remove(0);
    let Some(mut control) = control else {
        panic!("weft needs a virtio-console for the control socket; found none");
    };
    log::info!(
        "uplink mac {}, link mac {}",
        uplink.mac_addr(),
        link.mac_addr()
    );

    cpu::enable_irq(0);
    for &line in &irq_lines {
        cpu::enable_irq(line);
    }
    x86_64::instructions::interrupts::enable();

    let now = crate::time::now();
    let seed = entropy_seed();
    let mut appliance = Appliance::new(
        BootInfo {
            uplink_mac: uplink.mac_addr().0,
            link_mac: link.mac_addr().0,
            seed,
            cmdline,
        },
        now,
    );
    match key_seed() {
        Some(seed) => appliance.set_key_seed(seed),
        None => log::warn!("no RDRAND: no key seed, so [grid] auth = \"tls\" is unavailable"),
    }
    match crate::rtc::unix_time() {
        Some(unix) => {
            let at_boot = unix.saturating_sub(crate::time::micros() / 1_000_000);
            log::info!("wall clock at boot: {at_boot} s since the Unix epoch (CMOS RTC)");
            appliance.set_wall_clock(at_boot);
        }
        None => log::warn!("the CMOS RTC reads as nonsense; no wall clock"),
    }
    let heap = crate::mem::usage();
    log::info!(
        "weft ready: {} ms after boot, heap {} KiB used (peak {} KiB) of {} KiB",
        crate::time::micros() / 1000,
        heap.used / 1024,
        heap.peak / 1024,
        heap.size / 1024
    );

    let mut out = Vec::new();
    loop {
        // Ack first, then poll: a device that gets new work after its ack raises its line again.
        let pending = cpu::IRQ_PENDING.swap(0, Ordering::SeqCst);
        if pending & !1 != 0 {
            uplink.ack_interrupt();
            link.ack_interrupt();
            control.ack_interrupt();
            cpu::unmask_enabled();
        }
        let now = crate::time::now();
        let heap = crate::mem::usage();
        appliance.set_heap_usage(HeapStatus {
            size_bytes: heap.size as u64,
            used_bytes: heap.used as u64,
            peak_bytes: heap.peak as u64,
        });
        let mut busy = false;
        while let Some(event) = control.poll() {
            busy = true;
            match event {
                Event::Connected => appliance.control_connected(now, &mut out),
                Event::Disconnected => appliance.control_disconnected(),
                Event::Data(bytes) => appliance.control_input(now, &bytes, &mut out),
            }
            control.write(&out);
            out.clear();
        }
        let delay = appliance.poll(now, &mut uplink, &mut link);
        if busy || control.has_pending_output() || delay == Some(Duration::ZERO) {
            continue;
        }
        sleep(delay.unwrap_or(MAX_SLEEP).min(MAX_SLEEP));
    }
}

/// Halts until an interrupt, with the PIT armed for `delay`. Interrupts that arrived since
/// the loop last looked cancel the sleep.
fn sleep(delay: Duration) {
    x86_64::instructions::interrupts::disable();
    if cpu::IRQ_PENDING.load(Ordering::SeqCst) != 0 {
        x86_64::instructions::interrupts::enable();
        return;
    }
    let ticks = delay.total_micros() * pit::PIT_HZ / 1_000_000;
    pit::one_shot(ticks.max(1));
    // `sti; hlt` is atomic: an interrupt between the check and the halt still wakes us.
    x86_64::instructions::interrupts::enable_and_hlt();
}

/// The 256-bit seed of the appliance's key generator: four RDRAND words (each retried
/// as Intel's DRNG guide says), never the TSC. `None` without RDRAND or when it keeps
/// failing.
fn key_seed() -> Option<weft_appliance::weft_peer::rng::Seed> {
    let rdrand = x86_64::instructions::random::RdRand::new()?;
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_exact_mut(8) {
        let word = (0..10).find_map(|_| rdrand.get_u64())?;
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    Some(weft_appliance::weft_peer::rng::Seed::new(seed))
}

/// A 64-bit seed for the appliance's random choices (DNS query ids and ports, hash keys):
/// RDRAND where the CPU has it (QEMU's `-cpu max` does), mixed with the TSC, which alone
/// is only a last resort.
fn entropy_seed() -> u64 {
    // SAFETY: rdtsc has no side effects.
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    match x86_64::instructions::random::RdRand::new().and_then(|r| r.get_u64()) {
        Some(random) => random ^ tsc.rotate_left(32),
        None => {
            log::warn!("no RDRAND: seeding from the TSC only");
            tsc ^ 0x9e37_79b9_7f4a_7c15
        }
    }
}
