//! The main loop: finds the devices, then forever moves bytes between them and the
//! appliance. When nothing is left to do it arms the wake-up timer (local APIC, else
//! the PIT) for the appliance's next deadline and halts until that or a device interrupt
//! wakes it: no periodic tick, so an idle appliance costs the host almost nothing.

use crate::arch::{apic, cpu, pit};
use crate::virtio::console::{ControlConsole, Event};
use crate::virtio::net::{NetPort, Role};
use crate::virtio::Location;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::convert::Infallible;
use core::sync::atomic::Ordering;
use smoltcp::time::Duration;
use virtio_drivers::transport::DeviceType;
use weft_appliance::protocol::{HeapStatus, OffloadStatus, StackStatus};
use weft_appliance::{Appliance, BootInfo};

/// The longest the loop sleeps when the appliance names no deadline (it says "until an
/// interrupt"): a safety net, not a tick. With only the PIT it is 54 ms at most.
const MAX_SLEEP: Duration = Duration::from_secs(1);
const MAX_PIT_SLEEP: Duration = Duration::from_millis(54);

pub fn run(cmdline: String) -> ! {
    let started = crate::time::micros();
    let mut nics = Vec::new();
    let mut control = None;
    let devices = crate::virtio::discover(&cmdline);
    let found = crate::time::micros();
    let offloads = offload_mode(&cmdline);
    if offloads != OffloadMode::On {
        log::info!("virtio-net offloads: {offloads:?}, as weft.offload= on the command line says");
    }
    for dev in devices {
        let at = dev.at;
        match dev.kind {
            DeviceType::Network => {
                let role = nic_role(nics.len(), offloads);
                match boxed(|| NetPort::new(dev.transport, role)) {
                    Ok(port) => nics.push((port, at, dev.irq)),
                    Err(e) => log::error!("{at}: virtio-net init failed: {e:?}"),
                }
            }
            DeviceType::Console if control.is_none() => {
                match boxed(|| ControlConsole::new(dev.transport)) {
                    Ok(c) => control = Some((c, at, dev.irq)),
                    Err(e) => log::error!("{at}: virtio-console init failed: {e:?}"),
                }
            }
            other => {
                log::info!("{at}: ignoring virtio {other:?}");
                continue;
            }
        }
    }
    if nics.len() < 2 {
        panic!(
            "weft needs two virtio-net devices (uplink, link); found {}",
            nics.len()
        );
    }
    let Some((mut control, control_at, control_irq)) = control else {
        panic!("weft needs a virtio-console for the control socket; found none");
    };
    let (mut link, link_at, link_irq) = nics.remove(1);
    let (mut uplink, uplink_at, uplink_irq) = nics.remove(0);
    let initialised = crate::time::micros();
    for (name, at, irq, mac, features) in [
        (
            "uplink",
            uplink_at,
            uplink_irq,
            Some(uplink.mac_addr()),
            uplink.features(),
        ),
        (
            "link",
            link_at,
            link_irq,
            Some(link.mac_addr()),
            link.features(),
        ),
        ("control", control_at, control_irq, None, control.features()),
    ] {
        match mac {
            Some(mac) => log::info!("{name}: {at} irq {irq}, mac {mac}, {features}"),
            None => log::info!("{name}: {at} irq {irq}, {features}"),
        }
    }
    for (name, port) in [("uplink", &uplink), ("link", &link)] {
        let mut names = String::new();
        for offload in crate::virtio::features::net_offload_names(port.features().taken) {
            names.push(' ');
            names.push_str(offload);
        }
        if names.is_empty() {
            names.push_str(" none");
        }
        log::info!("{name}: offloads{names}");
    }

    // virtio-pci devices signal by MSI-X where they can; the rest keep their INTx line.
    let mut intx_lines = Vec::new();
    let mut on_msix = 0;
    for (name, at, irq) in [
        ("uplink", uplink_at, uplink_irq),
        ("link", link_at, link_irq),
        ("control", control_at, control_irq),
    ] {
        let routed = match at {
            Location::Pci(df) if apic::present() => crate::msix::route(df, cpu::MSI_VECTOR)
                .map_err(|e| log::warn!("{name}: {at}: staying on INTx: {e}"))
                .is_ok(),
            _ => false,
        };
        if routed {
            on_msix += 1;
        } else if (1..16).contains(&irq) && !intx_lines.contains(&irq) {
            intx_lines.push(irq);
        }
    }
    if on_msix > 0 {
        log::info!("interrupts: MSI-X for {on_msix} virtio-pci devices");
    }

    let refined = crate::time::refine();
    if !apic::timer_ready() {
        // No APIC timer: the PIT wakes the idle loop (IRQ 0), at most every 55 ms.
        cpu::enable_irq(0);
    }
    for &line in &intx_lines {
        cpu::enable_irq(line);
    }
    x86_64::instructions::interrupts::enable();

    let now = crate::time::now();
    let seed = entropy_seed();
    let boot = BootInfo {
        uplink_mac: uplink.mac_addr().0,
        link_mac: link.mac_addr().0,
        seed,
        cmdline,
    };
    let Ok(mut appliance) = boxed::<_, Infallible>(|| Ok(Appliance::new(boot, now)));
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
    let ready = crate::time::micros();
    log::info!(
        "boot: {} us to the main loop, devices found in {} us, initialised in {} us, appliance up in {} us",
        started,
        found.saturating_sub(started),
        initialised.saturating_sub(found),
        ready.saturating_sub(initialised),
    );
    if let Some((hz, source)) = refined.tsc {
        log::info!(
            "tsc {} kHz ({source}, measured over the bring-up)",
            hz / 1000
        );
    }
    match refined.apic_timer_hz {
        Some(hz) => log::info!("wake-up timer: local APIC, {} kHz", hz / 1000),
        None => log::warn!("wake-up timer: PIT (no usable local APIC timer)"),
    }
    let stack = crate::arch::stack::repaint();
    log::info!(
        "weft ready: {} ms after boot, heap {} KiB used (peak {} KiB) of {} KiB, stack peak {} of {} KiB",
        crate::time::micros() / 1000,
        heap.used / 1024,
        heap.peak / 1024,
        heap.size / 1024,
        stack.peak / 1024,
        stack.size / 1024,
    );
    // The stack's high-water mark is a scan of up to the whole stack (about a
    // millisecond under TCG): taken once a second, and before control input at most
    // every 20 ms, so that `status` after a command that ran deep shows it.
    let mut stack_measured_at = 0;

    let mut out = Vec::new();
    loop {
        // Ack first, then poll: a device that gets new work after its ack raises its line again.
        let pending = cpu::IRQ_PENDING.swap(0, Ordering::SeqCst);
        // INTx lines (not the timer, not MSI-X): read each device's ISR, unmask.
        if pending & !(1 | cpu::MSI_PENDING) != 0 {
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
        if crate::time::micros().saturating_sub(stack_measured_at) >= 1_000_000 {
            measure_stack(&mut appliance, &mut stack_measured_at);
        }
        appliance.set_offloads(OffloadStatus {
            uplink: uplink.offloads(),
            link: link.offloads(),
        });
        let mut busy = false;
        let had_output = control.has_pending_output();
        while let Some(event) = control.poll() {
            busy = true;
            match event {
                Event::Connected => appliance.control_connected(now, &mut out),
                Event::Disconnected => appliance.control_disconnected(),
                Event::Data(bytes) => {
                    if crate::time::micros().saturating_sub(stack_measured_at) >= 20_000 {
                        measure_stack(&mut appliance, &mut stack_measured_at);
                    }
                    appliance.control_input(now, &bytes, &mut out)
                }
            }
            control.write(&out);
            out.clear();
        }
        // The control channel's time, when it moved bytes, is measured: while captures
        // run it is mostly theirs (chunks going out, acknowledgements coming in), and
        // with their encoding it is taken from their share of the CPU, so that under
        // load they drop frames and the datapath keeps its speed.
        let mut control_took = if busy || had_output {
            crate::time::now() - now
        } else {
            Duration::ZERO
        };
        let delay = appliance.poll(now, &mut *uplink, &mut *link);
        uplink.flush();
        link.flush();
        // Captures' events go only once the console took what it had: a slow reader
        // slows them, never the datapath.
        if !control.has_pending_output() {
            let started = crate::time::now();
            appliance.control_output(started, &mut out);
            if !out.is_empty() {
                control.write(&out);
                out.clear();
                busy = true;
                control_took += crate::time::now() - started;
            }
        }
        if appliance.capturing() {
            appliance.control_output_took(control_took);
        }
        if busy || control.has_pending_output() || delay == Some(Duration::ZERO) {
            continue;
        }
        let cap = if apic::timer_ready() {
            MAX_SLEEP
        } else {
            MAX_PIT_SLEEP
        };
        sleep(delay.unwrap_or(cap).min(cap));
    }
}

/// The `weft.offload=` of the command line: the virtio-net offloads are taken unless it
/// says otherwise (the QEMU tests run with them on and off).
fn offload_mode(cmdline: &str) -> OffloadMode {
    match cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("weft.offload="))
    {
        Some("off") => OffloadMode::Off,
        Some("tx") => OffloadMode::Transmit,
        Some("on") | None => OffloadMode::On,
        Some(other) => {
            log::warn!("weft.offload={other}: unknown (on, tx, off); offloads on");
            OffloadMode::On
        }
    }
}

/// `weft.offload=`: `on` (the default), `off`, or `tx`: only what the device does for
/// weft (checksums and segmentation of what weft sends), so the host cuts and checksums
/// what it hands over, at native speed rather than in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OffloadMode {
    On,
    Transmit,
    Off,
}

/// The offloads a NIC asks for, by the order the devices are found in: the first is the
/// uplink (underlay datagrams: checksums only), the second the container link
/// (checksums and TCP super-frames).
fn nic_role(index: usize, offloads: OffloadMode) -> Role {
    match (offloads, index) {
        (OffloadMode::Off, _) => Role::Plain,
        // weft sends the uplink nothing partial and nothing merged.
        (OffloadMode::Transmit, 0) => Role::Plain,
        (OffloadMode::Transmit, _) => Role::Transmit,
        (OffloadMode::On, 0) => Role::Checksums,
        (OffloadMode::On, _) => Role::Segments,
    }
}

/// Halts until an interrupt, with the wake-up timer armed for `delay`. Interrupts that
/// arrived since the loop last looked cancel the sleep.
/// Builds a value straight into the heap, in a frame of its own: the main loop's frame
/// then holds pointers instead of the devices' queues and the appliance (tens of KiB
/// together), which would otherwise sit on the boot stack for good.
#[inline(never)]
fn boxed<T, E>(make: impl FnOnce() -> Result<T, E>) -> Result<Box<T>, E> {
    make().map(Box::new)
}

fn measure_stack(appliance: &mut Appliance, at: &mut u64) {
    *at = crate::time::micros();
    let stack = crate::arch::stack::usage();
    if stack.size - stack.peak < stack.size / 8 {
        log::warn!(
            "stack: {} of {} KiB used at its deepest",
            stack.peak / 1024,
            stack.size / 1024
        );
    }
    appliance.set_stack_usage(StackStatus {
        size_bytes: stack.size as u64,
        peak_bytes: stack.peak as u64,
        running_peak_bytes: stack.running as u64,
    });
}

fn sleep(delay: Duration) {
    x86_64::instructions::interrupts::disable();
    if cpu::IRQ_PENDING.load(Ordering::SeqCst) != 0 {
        x86_64::instructions::interrupts::enable();
        return;
    }
    let micros = delay.total_micros().max(1);
    if apic::timer_ready() {
        apic::one_shot(micros);
    } else {
        pit::one_shot(micros * pit::PIT_HZ / 1_000_000);
    }
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
