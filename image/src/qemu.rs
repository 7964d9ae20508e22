//! The one QEMU launcher: turns a [`QemuConfig`] into the exact command line the kernel
//! expects and owns the running process. Two machines: `q35` (two virtio-net-pci NICs at
//! 0x3/0x4, a virtio-serial port (nr 1) at 0x5 for the control socket) and `microvm`
//! (no PCI, no ACPI: the same three devices on virtio-mmio transports, modern register
//! layout, which QEMU lists on the kernel command line in the order they are given
//! here: uplink, link, control). It never creates network devices itself
//! (QEMU opens or creates the taps) and never leaves a QEMU behind: [`Qemu`] kills it
//! on drop.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use weft_control::client::{Client, ControlError};

/// The QEMU binary the contract names.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// A MAC address, `52:54:00:xx:xx:xx` style when derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A deterministic, locally administered unicast MAC for a tap name:
    /// QEMU's `52:54:00` prefix and three bytes of the name's FNV-1a hash.
    pub fn for_name(name: &str) -> MacAddr {
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let [a, b, c, _] = h.to_be_bytes();
        MacAddr([0x52, 0x54, 0x00, a, b, c])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("MAC {s:?}: need 6 octets"))?;
            if p.len() != 2 {
                return Err(format!("MAC {s:?}: octet {p:?} is not two hex digits"));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| format!("MAC {s:?}: bad octet {p:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC {s:?}: more than 6 octets"));
        }
        if out[0] & 1 != 0 {
            return Err(format!("MAC {s:?} is multicast"));
        }
        Ok(MacAddr(out))
    }
}

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// Checks a Linux interface name.
pub fn check_ifname(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!("interface name {name:?} must be 1..=15 bytes"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b',' || b == b':' || b.is_ascii_whitespace() || b == b'=')
    {
        return Err(format!("interface name {name:?} has a forbidden character"));
    }
    Ok(())
}

/// How a NIC reaches the host. `tap:NAME` is the contract; others may follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    Tap { ifname: String },
}

impl NetBackend {
    /// The name a deterministic MAC is derived from.
    pub fn name(&self) -> &str {
        match self {
            NetBackend::Tap { ifname } => ifname,
        }
    }
}

impl FromStr for NetBackend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            Some(("tap", name)) => {
                check_ifname(name)?;
                Ok(NetBackend::Tap {
                    ifname: name.to_string(),
                })
            }
            _ => Err(format!("unknown NIC backend {s:?} (expected tap:NAME)")),
        }
    }
}

impl fmt::Display for NetBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetBackend::Tap { ifname } => write!(f, "tap:{ifname}"),
        }
    }
}

/// One NIC: backend and MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub backend: NetBackend,
    pub mac: MacAddr,
}

impl Nic {
    /// A NIC with the deterministic MAC of its backend name.
    pub fn new(backend: NetBackend) -> Nic {
        let mac = MacAddr::for_name(backend.name());
        Nic { backend, mac }
    }

    pub fn tap(ifname: &str) -> Nic {
        Nic::new(NetBackend::Tap {
            ifname: ifname.to_string(),
        })
    }
}

/// Guest memory size in MiB (QEMU `-m <N>M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryMib(pub u32);

impl FromStr for MemoryMib {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let (digits, mult) = match t.as_bytes().last() {
            Some(b'M' | b'm') => (&t[..t.len() - 1], 1),
            Some(b'G' | b'g') => (&t[..t.len() - 1], 1024),
            _ => (t, 1),
        };
        let n: u32 = digits
            .parse()
            .map_err(|_| format!("memory size {s:?}: expected e.g. 128M or 1G"))?;
        let mib = n
            .checked_mul(mult)
            .filter(|m| *m > 0)
            .ok_or_else(|| format!("memory size {s:?} out of range"))?;
        Ok(MemoryMib(mib))
    }
}

impl fmt::Display for MemoryMib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}M", self.0)
    }
}

/// QEMU accelerator. TCG is the default: KVM is not dependable for this kernel here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// The QEMU machine type. Both boot the same PVH ELF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Machine {
    /// PC with PCIe (qboot starts the PVH kernel); virtio-pci devices.
    #[default]
    Q35,
    /// QEMU's Firecracker-class machine (qboot, no PCI, no ACPI); virtio-mmio devices.
    Microvm,
}

impl Machine {
    pub fn name(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        }
    }

    /// The `-machine` argument: the whole machine, or only what weft uses (`full`
    /// false). weft reads no ACPI tables (it scans PCI on q35 and takes its devices from
    /// the command line on microvm), and on q35 has no use for the AHCI controller, the
    /// SMBus or the HPET; QEMU leaves each out of its start-up, about 5 ms of a 55 ms boot.
    fn arg(self, full: bool) -> &'static str {
        match (self, full) {
            (Machine::Q35, true) => "q35",
            (Machine::Q35, false) => "q35,acpi=off,sata=off,smbus=off,hpet=off",
            (Machine::Microvm, true) => "microvm",
            (Machine::Microvm, false) => "microvm,acpi=off",
        }
    }

    /// The firmware, when not the machine's default. On q35 that is SeaBIOS, which takes
    /// ~50 ms under TCG before the kernel runs; qboot (microvm's firmware, shipped with
    /// QEMU) loads the kernel at once and assigns no PCI BARs, which weft (`kernel/src/pci.rs`)
    /// and Linux assign themselves.
    fn firmware(self) -> Option<&'static str> {
        match self {
            Machine::Q35 => Some("qboot.rom"),
            Machine::Microvm => None,
        }
    }

    /// The virtio-net device model and its placement (`uplink` or `link`).
    fn nic_device(self, netdev: &str, mac: MacAddr) -> String {
        match self {
            Machine::Q35 => {
                let addr = if netdev == "uplink" { "0x3" } else { "0x4" };
                format!("virtio-net-pci,netdev={netdev},mac={mac},addr={addr}")
            }
            Machine::Microvm => format!("virtio-net-device,netdev={netdev},mac={mac}"),
        }
    }

    /// The virtio-serial controller the control port sits on.
    fn serial_controller(self) -> &'static str {
        match self {
            Machine::Q35 => "virtio-serial-pci,addr=0x5",
            Machine::Microvm => "virtio-serial-device",
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serial {
    Stdio,
    File(PathBuf),
    Null,
}

/// Everything that makes one appliance VM.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub machine: Machine,
    /// The machine with all its default devices and ACPI tables ([`Machine::arg`]): off
    /// for weft; on for a Linux kernel, which needs the tables on q35 and, built without
    /// VIRTIO_MMIO_CMDLINE_DEVICES as Debian's, on microvm.
    pub full_machine: bool,
    pub kernel: PathBuf,
    pub memory: MemoryMib,
    pub accel: Accel,
    pub append: String,
    pub serial: Serial,
    pub uplink: Nic,
    pub link: Nic,
    pub control: PathBuf,
    /// Run QEMU inside this network namespace (`ip netns exec`), where its taps live.
    pub netns: Option<String>,
    /// QEMU's own stdout/stderr to this file (default: inherited).
    pub log: Option<PathBuf>,
    /// Run QEMU, every thread of it, on these CPUs only (`taskset -c`, a cpu list
    /// such as "1" or "2-3"); default: wherever the host schedules it.
    pub cpus: Option<String>,
}

impl QemuConfig {
    /// Defaults of the contract: q35, 128M, TCG, empty cmdline, serial on stdio.
    pub fn new(kernel: PathBuf, uplink: Nic, link: Nic, control: PathBuf) -> QemuConfig {
        QemuConfig {
            qemu: PathBuf::from(QEMU_BINARY),
            machine: Machine::Q35,
            full_machine: false,
            kernel,
            memory: MemoryMib(128),
            accel: Accel::Tcg,
            append: String::new(),
            serial: Serial::Stdio,
            uplink,
            link,
            control,
            netns: None,
            log: None,
            cpus: None,
        }
    }

    /// QEMU's arguments, in the device layout the kernel expects.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(OsString::from(s));
        for s in [
            "-machine",
            self.machine.arg(self.full_machine),
            "-accel",
            self.accel.as_str(),
            "-cpu",
            "max",
        ] {
            push(s);
        }
        if let Some(bios) = self.machine.firmware() {
            push("-bios");
            push(bios);
        }
        push("-m");
        push(&self.memory.to_string());
        for s in [
            "-smp",
            "1",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-vga",
            "none",
        ] {
            push(s);
        }
        push("-kernel");
        a.push(self.kernel.clone().into_os_string());
        let mut push = |s: &str| a.push(OsString::from(s));
        push("-append");
        push(&self.append);
        push("-serial");
        let serial = match &self.serial {
            Serial::Stdio => "stdio".to_string(),
            Serial::File(p) => format!("file:{}", p.display()),
            Serial::Null => "null".to_string(),
        };
        push(&serial);
        if self.machine == Machine::Microvm {
            // Modern virtio-mmio (version 2), as Firecracker has; QEMU defaults to legacy.
            push("-global");
            push("virtio-mmio.force-legacy=false");
        }
        for (id, nic) in [("uplink", &self.uplink), ("link", &self.link)] {
            push("-netdev");
            match &nic.backend {
                NetBackend::Tap { ifname } => {
                    push(&format!(
                        "tap,id={id},ifname={ifname},script=no,downscript=no"
                    ));
                }
            }
            push("-device");
            push(&self.machine.nic_device(id, nic.mac));
        }
        push("-chardev");
        push(&format!(
            "socket,id=control,path={},server=on,wait=off",
            self.control.display()
        ));
        for s in [
            "-device",
            self.machine.serial_controller(),
            "-device",
            "virtserialport,chardev=control,nr=1,name=org.weft.control",
        ] {
            push(s);
        }
        a
    }

    /// The full command (wrapped in `ip netns exec` when a namespace is set, in
    /// `taskset -c` when the CPUs are). Each wrapper execs the next, so the process
    /// started is QEMU's.
    pub fn command(&self) -> Command {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns.as_str()].map(OsString::from));
        }
        if let Some(cpus) = &self.cpus {
            argv.extend(["taskset", "-c", cpus.as_str()].map(OsString::from));
        }
        argv.push(self.qemu.clone().into_os_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).args(self.args());
        cmd
    }

    /// Refuses what QEMU would refuse with a worse message.
    pub fn check(&self) -> Result<()> {
        if !self.kernel.is_file() {
            bail!(
                "kernel image {} not found (run `weft build` first)",
                self.kernel.display()
            );
        }
        if self.control.to_string_lossy().contains(',') {
            bail!("control socket path must not contain ','");
        }
        if let Serial::File(p) = &self.serial {
            if p.to_string_lossy().contains(',') {
                bail!("serial log path must not contain ','");
            }
        }
        if self.uplink.backend == self.link.backend {
            bail!("uplink and link must use different devices");
        }
        Ok(())
    }

    /// Starts QEMU. The control socket path is removed first so that its
    /// appearance means this QEMU is listening.
    pub fn spawn(&self) -> Result<Qemu> {
        self.check()?;
        let _ = std::fs::remove_file(&self.control);
        let mut cmd = self.command();
        if self.serial != Serial::Stdio {
            cmd.stdin(Stdio::null());
        }
        if let Some(log) = &self.log {
            let f = std::fs::File::create(log)
                .with_context(|| format!("creating {}", log.display()))?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.qemu.display()))?;
        Ok(Qemu {
            child,
            started,
            exited: None,
        })
    }
}

/// Whether `qemu-system-x86_64` can be run.
pub fn qemu_available() -> bool {
    Command::new(QEMU_BINARY)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A running QEMU. Dropping it stops QEMU (SIGTERM, then SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    started: Instant,
    exited: Option<ExitStatus>,
}

impl Qemu {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the process was started (boot times are measured from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// `Some(status)` once QEMU has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.exited {
            return Ok(Some(s));
        }
        let s = self.child.try_wait()?;
        self.exited = s;
        Ok(s)
    }

    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.exited {
            return Ok(s);
        }
        let s = self.child.wait()?;
        self.exited = Some(s);
        Ok(s)
    }

    /// Sends a signal to QEMU (no-op once it has exited and been reaped).
    pub fn signal(&mut self, signal: crate::process::Signal) {
        if self.exited.is_none() {
            crate::process::signal(self.child.id(), signal);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.try_wait() {
            return Some(s);
        }
        self.signal(crate::process::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.wait().ok()
    }

    /// Connects to the control socket and waits for the greeting, giving up as soon as
    /// QEMU exits. Returns the client and the time from QEMU start to the greeting.
    pub fn greet(
        &mut self,
        control: &Path,
        timeout: Duration,
    ) -> std::result::Result<(Client, Duration), ControlError> {
        // QEMU creates the socket while it starts (~20 ms here); a fine-grained wait for
        // it keeps the client's coarser retry interval out of the boot time.
        let deadline = Instant::now() + timeout;
        while !control.exists() && Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut alive = || matches!(self.child.try_wait(), Ok(None));
        let client = Client::connect_while(control, timeout, &mut alive)?;
        Ok((client, self.started.elapsed()))
    }

    /// Host CPU time (user + system) QEMU has used, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Result<Duration> {
        process_cpu_time(self.pid())
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// utime + stime of a process, from `/proc/PID/stat` (fields 14 and 15).
pub fn process_cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it follow ") ".
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11.
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|h| u64::try_from(h).ok())
        .filter(|h| *h > 0)
        .unwrap_or(100);
    Ok(Duration::from_millis((utime + stime) * 1000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> QemuConfig {
        QemuConfig::new(
            PathBuf::from("target/weft/weft.elf"),
            Nic::tap("tap1"),
            Nic {
                backend: "tap:tap2".parse().unwrap(),
                mac: "52:54:00:aa:bb:cc".parse().unwrap(),
            },
            PathBuf::from("/tmp/c.sock"),
        )
    }

    fn joined(c: &QemuConfig) -> String {
        c.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn command_line_is_the_contract_layout() {
        let mac1 = MacAddr::for_name("tap1");
        let expected = format!(
            "-machine q35,acpi=off,sata=off,smbus=off,hpet=off -accel tcg -cpu max -bios qboot.rom -m 128M -smp 1 -nodefaults -no-reboot \
             -display none -vga none -kernel target/weft/weft.elf -append  -serial stdio \
             -netdev tap,id=uplink,ifname=tap1,script=no,downscript=no \
             -device virtio-net-pci,netdev=uplink,mac={mac1},addr=0x3 \
             -netdev tap,id=link,ifname=tap2,script=no,downscript=no \
             -device virtio-net-pci,netdev=link,mac=52:54:00:aa:bb:cc,addr=0x4 \
             -chardev socket,id=control,path=/tmp/c.sock,server=on,wait=off \
             -device virtio-serial-pci,addr=0x5 -device virtserialport,chardev=control,nr=1,name=org.weft.control"
        );
        assert_eq!(joined(&cfg()), expected);
    }

    #[test]
    fn microvm_puts_the_same_devices_on_virtio_mmio_in_order() {
        let mut c = cfg();
        c.machine = Machine::Microvm;
        let mac1 = MacAddr::for_name("tap1");
        let expected = format!(
            "-machine microvm,acpi=off -accel tcg -cpu max -m 128M -smp 1 -nodefaults -no-reboot \
             -display none -vga none -kernel target/weft/weft.elf -append  -serial stdio \
             -global virtio-mmio.force-legacy=false \
             -netdev tap,id=uplink,ifname=tap1,script=no,downscript=no \
             -device virtio-net-device,netdev=uplink,mac={mac1} \
             -netdev tap,id=link,ifname=tap2,script=no,downscript=no \
             -device virtio-net-device,netdev=link,mac=52:54:00:aa:bb:cc \
             -chardev socket,id=control,path=/tmp/c.sock,server=on,wait=off \
             -device virtio-serial-device -device virtserialport,chardev=control,nr=1,name=org.weft.control"
        );
        assert_eq!(joined(&c), expected);
    }

    #[test]
    fn the_full_machine_only_when_asked_for_on_both_machines() {
        for (machine, full, lean) in [
            (
                Machine::Q35,
                "q35",
                "q35,acpi=off,sata=off,smbus=off,hpet=off",
            ),
            (Machine::Microvm, "microvm", "microvm,acpi=off"),
        ] {
            let mut c = cfg();
            c.machine = machine;
            assert!(joined(&c).starts_with(&format!("-machine {lean} ")));
            c.full_machine = true;
            assert!(joined(&c).starts_with(&format!("-machine {full} ")));
        }
    }

    #[test]
    fn overrides_reach_the_command_line() {
        let mut c = cfg();
        c.memory = "64M".parse().unwrap();
        c.accel = Accel::Kvm;
        c.append = "log=debug".into();
        c.serial = Serial::File("/tmp/s.log".into());
        c.netns = Some("ns1".into());
        let j = joined(&c);
        assert!(j.contains("-accel kvm"));
        assert!(j.contains("-m 64M"));
        assert!(j.contains("-append log=debug"));
        assert!(j.contains("-serial file:/tmp/s.log"));
        let cmd = c.command();
        assert_eq!(cmd.get_program(), "ip");
        let args: Vec<_> = cmd.get_args().take(4).collect();
        assert_eq!(args, ["netns", "exec", "ns1", QEMU_BINARY]);
        c.cpus = Some("1".into());
        let cmd = c.command();
        let args: Vec<_> = cmd.get_args().take(7).collect();
        assert_eq!(
            args,
            ["netns", "exec", "ns1", "taskset", "-c", "1", QEMU_BINARY]
        );
        c.netns = None;
        let cmd = c.command();
        assert_eq!(cmd.get_program(), "taskset");
        let args: Vec<_> = cmd.get_args().take(4).collect();
        assert_eq!(args, ["-c", "1", QEMU_BINARY, "-machine"]);
    }

    #[test]
    fn derived_macs_are_stable_local_unicast_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            let name = format!("tap{i}");
            let m = MacAddr::for_name(&name);
            assert_eq!(m, MacAddr::for_name(&name));
            assert_eq!(&m.0[..3], &[0x52, 0x54, 0x00]);
            assert_eq!(m.0[0] & 1, 0, "unicast");
            assert_eq!(m.0[0] & 2, 2, "locally administered");
            seen.insert(m);
            assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
        }
        // 24 hash bits over 2000 names: a collision would point at a broken hash.
        assert_eq!(seen.len(), 2000);
    }

    #[test]
    fn bad_inputs_are_refused() {
        for bad in [
            "",
            "52:54:00:aa:bb",
            "52:54:00:aa:bb:cc:dd",
            "zz:54:00:aa:bb:cc",
            "53:54:00:aa:bb:cc",
            "5:54:00:aa:bb:cc",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        for bad in [
            "tap:",
            "tap:a-name-longer-than-15",
            "user",
            "socket:x",
            "tap:a,b",
            "tap:a b",
        ] {
            assert!(bad.parse::<NetBackend>().is_err(), "{bad}");
        }
        for bad in ["", "M", "0M", "-1M", "12X", "99999999G"] {
            assert!(bad.parse::<MemoryMib>().is_err(), "{bad}");
        }
        assert_eq!("128M".parse::<MemoryMib>().unwrap(), MemoryMib(128));
        assert_eq!("1G".parse::<MemoryMib>().unwrap(), MemoryMib(1024));
        assert_eq!("48".parse::<MemoryMib>().unwrap(), MemoryMib(48));
        let mut c = cfg();
        c.link = c.uplink.clone();
        c.kernel = std::env::current_exe().unwrap();
        assert!(c.check().is_err());
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        let t = process_cpu_time(std::process::id()).unwrap();
        // Some CPU has been spent to get here; the parse must not yield garbage.
        assert!(t < Duration::from_secs(24 * 3600));
    }
}
