//! One benchmark host: the namespaces of `netns::Topology` (hypervisor with taps and
//! bridges, a "host" on the uplink segment, a "container" on the link segment) and the
//! VM that serves it, weft or the reference Linux VM, under the same QEMU launcher with
//! the same NIC layout. Hosts' uplink segments can be joined into one underlay. Every
//! VM is stopped and every namespace deleted on drop; nothing outside them is touched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::refvm::{RefJob, RefVm, FAILED_MARKER, READY_MARKER};
use crate::netns::{PeerAddresses, Topology, TopologyNames};
use crate::qemu::{Accel, MacAddr, Machine, MemoryMib, Nic, Qemu, QemuConfig, Serial};
use weft_control::client::Client;

/// Which appliance serves a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Weft,
    Linux,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Weft => "weft",
            Kind::Linux => "linux",
        }
    }
}

/// What the VMs boot from.
#[derive(Clone, Debug)]
pub struct Images {
    pub weft: PathBuf,
    /// The reference Linux VM; None where only weft boots (`weft soak`).
    pub linux: Option<RefVm>,
    /// weft's kernel command line (`--append`).
    pub weft_append: String,
    pub accel: Accel,
    /// How long a VM may take to be ready.
    pub ready_timeout: Duration,
}

/// A short unique prefix (`wb` + pid + counter) so names fit IFNAMSIZ.
fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("wb{:05x}{:02x}", std::process::id() & 0xf_ffff, n & 0xff)
}

/// A running VM of either kind.
pub struct Vm {
    pub kind: Kind,
    qemu: Qemu,
    pub control: PathBuf,
    pub serial: PathBuf,
    pub qemu_log: PathBuf,
    pub uplink_mac: MacAddr,
    pub link_mac: MacAddr,
    /// From QEMU start to ready: weft's greeting, or the reference VM's marker line.
    pub ready_after: Duration,
}

impl Vm {
    pub fn pid(&self) -> u32 {
        self.qemu.pid()
    }

    pub fn cpu_time(&self) -> Result<Duration> {
        self.qemu.cpu_time()
    }

    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// A control client (weft only).
    pub fn client(&self) -> Result<Client> {
        Client::connect(&self.control, Duration::from_secs(20))
            .with_context(|| format!("control socket {}", self.control.display()))
    }

    /// Applies a config document (weft only); the error names the refused field.
    pub fn apply(&self, doc: &Value) -> Result<()> {
        let mut c = self.client()?;
        c.apply_value(doc).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }

    /// The raw `status` result (weft only).
    pub fn status(&self) -> Result<Value> {
        let mut c = self.client()?;
        let r = c.call("status", None).map_err(|e| anyhow::anyhow!("{e}"))?;
        r.outcome
            .map_err(|e| anyhow::anyhow!("status: {}", e.message))
    }

    pub fn stop(&mut self) {
        self.qemu.stop(Duration::from_secs(2));
    }
}

/// One benchmark host. Field order is drop order: the VM before the namespaces.
pub struct Host {
    pub vm: Option<Vm>,
    pub topo: Topology,
    pub dir: PathBuf,
    /// The CPUs the VM is kept on ([`Host::pin_vm`]); anywhere when None.
    pub vm_cpus: Option<String>,
}

impl Host {
    /// The namespaces around one appliance (`peers`: the host's and container's
    /// addresses), no VM yet.
    pub fn create(peers: PeerAddresses) -> Result<Host> {
        let prefix = unique_prefix();
        let names = TopologyNames::new(&prefix)?;
        let topo = Topology::create(names, peers, &mut |_| {})?;
        let dir = std::env::temp_dir().join(format!("weft-bench-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Host {
            vm: None,
            topo,
            dir,
            vm_cpus: None,
        })
    }

    /// Keeps the VM booted next on the machine's last CPU, apart from the load
    /// generators the scenario runs beside it (they may take any CPU, and the host's
    /// scheduler leaves the VM's to it). Left to the scheduler, QEMU's threads and the
    /// clients' were placed differently from run to run, and a single-VM scenario's
    /// rate with them: the same image gave 2.8k to 8.2k published-port connections/s.
    /// Nothing changes on a one-CPU machine.
    pub fn pin_vm(&mut self) {
        self.vm_cpus = vm_cpu().map(|c| c.to_string());
    }

    /// Boots the VM of `kind` on this host's taps and waits until it is ready. The
    /// reference VM gets its job on the command line; weft is configured afterwards
    /// through its control socket.
    pub fn boot(
        &mut self,
        kind: Kind,
        images: &Images,
        memory: MemoryMib,
        job: &RefJob,
    ) -> Result<&Vm> {
        self.boot_on(Machine::Q35, kind, images, memory, job)
    }

    /// [`Host::boot`] on a given QEMU machine.
    pub fn boot_on(
        &mut self,
        machine: Machine,
        kind: Kind,
        images: &Images,
        memory: MemoryMib,
        job: &RefJob,
    ) -> Result<&Vm> {
        let control = self.dir.join("control.sock");
        let serial = self.dir.join("serial.log");
        let qemu_log = self.dir.join("qemu.log");
        let n = &self.topo.names;
        let linux = match kind {
            Kind::Weft => None,
            Kind::Linux => Some(
                images
                    .linux
                    .as_ref()
                    .context("no reference Linux VM built")?,
            ),
        };
        let kernel = match linux {
            None => images.weft.clone(),
            Some(l) => l.kernel.clone(),
        };
        let mut cfg = QemuConfig::new(
            kernel,
            Nic::tap(&n.uplink_tap),
            Nic::tap(&n.link_tap),
            control.clone(),
        );
        cfg.machine = machine;
        cfg.memory = memory;
        cfg.accel = images.accel;
        cfg.serial = Serial::File(serial.clone());
        cfg.netns = Some(n.hv_ns.clone());
        cfg.log = Some(qemu_log.clone());
        cfg.cpus = self.vm_cpus.clone();
        if linux.is_none() {
            cfg.append = images.weft_append.clone();
        }
        if let Some(linux) = linux {
            cfg.full_machine = true;
            cfg.qemu = linux.qemu_wrapper.clone();
            cfg.append = job.cmdline(cfg.uplink.mac, cfg.link.mac);
            if machine == Machine::Microvm {
                // microvm has no port 0x61 (PIT channel 2's gate), against which Linux
                // calibrates its TSC; under TCG there is no kvmclock either, so without
                // the frequency Linux marks the TSC unstable and never gets to /init.
                // (weft measures against PIT channel 0, which microvm has.)
                if let Some(khz) = host_tsc_khz() {
                    cfg.append.push_str(&format!(" tsc_early_khz={khz}"));
                }
            }
        }
        let _ = std::fs::remove_file(&serial);
        let mut qemu = cfg.spawn()?;
        let ready = match kind {
            Kind::Weft => qemu
                .greet(&control, images.ready_timeout)
                .map(|(_client, took)| took)
                .map_err(anyhow::Error::from),
            Kind::Linux => wait_marker(&mut qemu, &serial, images.ready_timeout),
        };
        let ready_after = match ready {
            Ok(t) => t,
            Err(e) => {
                qemu.stop(Duration::from_secs(2));
                let console = std::fs::read_to_string(&serial).unwrap_or_default();
                let tail: Vec<&str> = console.lines().rev().take(15).collect();
                let qlog = std::fs::read_to_string(&qemu_log).unwrap_or_default();
                bail!(
                    "{} VM (-m {memory}) not ready: {e:#}\n  console (last lines): {}\n  qemu: {}",
                    kind.name(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n    "),
                    qlog.trim()
                );
            }
        };
        self.vm = Some(Vm {
            kind,
            qemu,
            control,
            serial,
            qemu_log,
            uplink_mac: cfg.uplink.mac,
            link_mac: cfg.link.mac,
            ready_after,
        });
        self.vm.as_ref().context("VM vanished")
    }

    pub fn vm(&self) -> Result<&Vm> {
        self.vm.as_ref().context("no VM booted on this host")
    }

    /// Joins this host's uplink segment to `other`'s (a veth between the two uplink
    /// bridges): one underlay for the overlay scenarios.
    pub fn join_uplinks(&self, other: &Host) -> Result<()> {
        let a = format!("{}-x", self.topo.names.hv_ns.trim_end_matches("-hv"));
        let b = format!("{}-y", self.topo.names.hv_ns.trim_end_matches("-hv"));
        let (hv1, hv2) = (&self.topo.hv, &other.topo.hv);
        hv1.ip(&[
            "link",
            "add",
            &a,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            hv2.name(),
        ])?;
        hv1.ip(&["link", "set", &a, "master", &self.topo.names.uplink_bridge])?;
        hv2.ip(&["link", "set", &b, "master", &other.topo.names.uplink_bridge])?;
        hv1.ip(&["link", "set", &a, "up"])?;
        hv2.ip(&["link", "set", &b, "up"])?;
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            vm.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The CPU a pinned VM runs on: the machine's last, when it has more than one.
pub fn vm_cpu() -> Option<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n > 1).then(|| n - 1)
}

/// The host's TSC frequency in kHz (`cpu MHz` of /proc/cpuinfo, which a constant-TSC
/// machine reports as the TSC rate): under TCG the guest's TSC is the host's.
fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Waits for the reference VM's ready marker on its console (a file QEMU writes).
fn wait_marker(qemu: &mut Qemu, serial: &Path, timeout: Duration) -> Result<Duration> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.contains(READY_MARKER) {
            return Ok(qemu.started().elapsed());
        }
        if let Some(line) = text.lines().find(|l| l.contains(FAILED_MARKER)) {
            bail!("{}", line.trim());
        }
        if let Some(status) = qemu.try_wait()? {
            bail!("QEMU exited ({status}) before the ready marker");
        }
        if Instant::now() > deadline {
            bail!("no {READY_MARKER:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// weft's heap figures from the `weft ready: ... heap U KiB used (peak P KiB) of S KiB`
/// console line: (used, peak, size) in KiB.
pub fn heap_from_console(console: &str) -> Option<(u64, u64, u64)> {
    let line = console.lines().rev().find(|l| l.contains("weft ready:"))?;
    let after = line.split("heap ").nth(1)?;
    let nums: Vec<u64> = after
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect();
    match nums.as_slice() {
        [used, peak, size, ..] => Some((*used, *peak, *size)),
        _ => None,
    }
}

/// weft's heap high-water mark in KiB from `status` (`heap.peak_bytes`).
pub fn heap_peak_from_status(status: &Value) -> Option<u64> {
    status["heap"]["peak_bytes"].as_u64().map(|b| b / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_line_is_read() {
        let log = "[INFO] boot\n[INFO] weft ready: 35 ms after boot, heap 812 KiB used (peak 901 KiB) of 65536 KiB\n";
        assert_eq!(heap_from_console(log), Some((812, 901, 65536)));
        assert_eq!(heap_from_console("nothing here"), None);
        let s = serde_json::json!({"heap": {"peak_bytes": 2048 * 1024}});
        assert_eq!(heap_peak_from_status(&s), Some(2048));
        assert_eq!(heap_peak_from_status(&serde_json::json!({})), None);
    }
}
