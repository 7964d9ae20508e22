//! QEMU test harness: boots the real image with its two NICs on taps, bridged to a
//! "host" and a "container" network namespace, with a time limit; captures the serial
//! console and QEMU's own output to files and prints them when a test fails; always
//! cleans up (QEMU killed, namespaces deleted) through drop guards, also on panic.
//! It uses `weft_image`'s launcher, client and topology: there is one of each.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use weft_appliance::protocol::Status;
use weft_appliance::Config;
use weft_control::client::Client;
use weft_control::document;
use weft_image::build::{self, Profile};
use weft_image::netns::{self, Netns, PeerAddresses, Topology, TopologyNames};
use weft_image::qemu::{self, MacAddr, Machine, MemoryMib, Nic, Qemu, QemuConfig, Serial};

pub mod agent;
pub mod cli;
pub mod cni;
pub mod dns;
pub mod frames;
pub mod grid;
pub mod socat;
pub mod tshark;

/// Longest a test VM may run before the watchdog kills it.
pub const VM_TIME_LIMIT: Duration = Duration::from_secs(240);
/// How long the appliance may take from QEMU start to its greeting (TCG, loaded host).
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-request timeout on the control socket.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The uplink and link addresses of the default config (what peers ping).
pub const UPLINK_ADDR: &str = "192.0.2.2";
pub const LINK_ADDR: &str = "10.81.0.1";

/// Panics with a clear message unless the machine can run the QEMU tests, and makes
/// sure the image exists (builds it once per test binary unless `WEFT_IMAGE` names one).
pub fn preflight() -> PathBuf {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = IMAGE.get_or_init(|| {
        netns::require_root().map_err(|e| format!("weft QEMU tests: {e}"))?;
        if !qemu::qemu_available() {
            return Err(format!(
                "weft QEMU tests: {} not found (apt-get install qemu-system-x86, or run .ci/install)",
                qemu::QEMU_BINARY
            ));
        }
        if let Some(p) = std::env::var_os("WEFT_IMAGE") {
            return Ok(PathBuf::from(p));
        }
        build::build_image_with(Profile::Debug, true)
            .map(|img| img.path)
            .map_err(|e| format!("weft QEMU tests: building the image failed: {e:#}"))
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A short unique prefix for this VM's names (`wq` + pid + counter, 9 bytes).
fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("wq{:05x}{:02x}", std::process::id() & 0xf_ffff, n & 0xff)
}

/// Kills a process after a time limit unless cancelled first.
struct Watchdog {
    cancel: Arc<(Mutex<bool>, Condvar)>,
    fired: Arc<Mutex<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(pid: u32, limit: Duration) -> Watchdog {
        let cancel = Arc::new((Mutex::new(false), Condvar::new()));
        let fired = Arc::new(Mutex::new(false));
        let (c, f) = (cancel.clone(), fired.clone());
        let thread = std::thread::spawn(move || {
            let (lock, cv) = &*c;
            let Ok(guard) = lock.lock() else { return };
            let Ok((cancelled, _)) = cv.wait_timeout_while(guard, limit, |c| !*c) else {
                return;
            };
            if !*cancelled {
                if let Ok(mut f) = f.lock() {
                    *f = true;
                }
                eprintln!("weft harness: VM pid {pid} exceeded {limit:?}, killing it");
                // Our unreaped child: the owner cancels us before it reaps QEMU.
                weft_image::process::signal(pid, weft_image::process::Signal::SIGKILL);
            }
        });
        Watchdog {
            cancel,
            fired,
            thread: Some(thread),
        }
    }

    fn fired(&self) -> bool {
        self.fired.lock().map(|f| *f).unwrap_or(false)
    }

    fn cancel(&mut self) {
        let (lock, cv) = &*self.cancel;
        if let Ok(mut c) = lock.lock() {
            *c = true;
        }
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Options for [`TestVm::boot_with`].
#[derive(Clone, Debug)]
pub struct BootOptions {
    /// The QEMU machine: q35 (virtio-pci) or microvm (virtio-mmio).
    pub machine: Machine,
    pub memory: MemoryMib,
    /// The kernel command line; by default `WEFT_TEST_APPEND` from the environment, so
    /// that any test runs with e.g. `weft.offload=off`.
    pub append: String,
    pub time_limit: Duration,
    pub greeting_timeout: Duration,
    /// The image to boot (default: the one [`preflight`] builds).
    pub image: Option<PathBuf>,
    /// Addresses of the host and container namespaces around the VM.
    pub peers: PeerAddresses,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            machine: Machine::Q35,
            memory: MemoryMib(128),
            append: std::env::var("WEFT_TEST_APPEND").unwrap_or_default(),
            time_limit: VM_TIME_LIMIT,
            greeting_timeout: GREETING_TIMEOUT,
            image: None,
            peers: PeerAddresses::default(),
        }
    }
}

/// One appliance VM in its own topology. Field order is drop order after `Drop::drop`:
/// QEMU goes before the namespaces.
pub struct TestVm {
    pub test: String,
    qemu: Option<Qemu>,
    watchdog: Watchdog,
    pub topo: Topology,
    pub dir: PathBuf,
    pub control: PathBuf,
    pub serial: PathBuf,
    pub qemu_log: PathBuf,
    pub uplink_mac: MacAddr,
    pub link_mac: MacAddr,
    /// From QEMU process start to the greeting on the control socket.
    pub greeted_after: Duration,
}

impl TestVm {
    /// Boots an appliance (unconfigured) for the test named `test`.
    pub fn boot(test: &str) -> TestVm {
        TestVm::boot_with(test, BootOptions::default())
    }

    /// Boots an appliance (unconfigured) on `machine`.
    pub fn boot_on(test: &str, machine: Machine) -> TestVm {
        TestVm::boot_with(
            test,
            BootOptions {
                machine,
                ..BootOptions::default()
            },
        )
    }

    pub fn boot_with(test: &str, opts: BootOptions) -> TestVm {
        TestVm::try_boot_with(test, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Boots and waits for the greeting; an error carries the serial console and
    /// QEMU's output (everything is cleaned up before it returns).
    pub fn try_boot_with(test: &str, opts: BootOptions) -> Result<TestVm, String> {
        let image = match &opts.image {
            Some(p) => p.clone(),
            None => preflight(),
        };
        let prefix = unique_prefix();
        let names = TopologyNames::new(&prefix).map_err(|e| format!("{e:#}"))?;
        let topo = Topology::create(names, opts.peers.clone(), &mut |_| {})
            .map_err(|e| format!("{test}: creating the topology: {e:#}"))?;
        let dir = std::env::temp_dir().join(format!("weft-qt-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let control = dir.join("control.sock");
        let serial = dir.join("serial.log");
        let qemu_log = dir.join("qemu.log");
        let mut cfg = QemuConfig::new(
            image,
            Nic::tap(&topo.names.uplink_tap),
            Nic::tap(&topo.names.link_tap),
            control.clone(),
        );
        cfg.machine = opts.machine;
        cfg.memory = opts.memory;
        cfg.append = opts.append.clone();
        cfg.serial = Serial::File(serial.clone());
        cfg.netns = Some(topo.names.hv_ns.clone());
        cfg.log = Some(qemu_log.clone());
        let (uplink_mac, link_mac) = (cfg.uplink.mac, cfg.link.mac);
        let qemu = cfg
            .spawn()
            .map_err(|e| format!("{test}: starting QEMU: {e:#}"))?;
        let watchdog = Watchdog::start(qemu.pid(), opts.time_limit);
        let mut vm = TestVm {
            test: test.to_string(),
            qemu: Some(qemu),
            watchdog,
            topo,
            dir,
            control,
            serial,
            qemu_log,
            uplink_mac,
            link_mac,
            greeted_after: Duration::ZERO,
        };
        // The first connection measures boot to greeting; it is closed at once so
        // the test's own client can connect (QEMU serves one client at a time).
        let greeted = match vm.qemu.as_mut() {
            Some(q) => q.greet(&vm.control, opts.greeting_timeout),
            None => return Err(format!("{test}: QEMU vanished")),
        };
        match greeted {
            Ok((_client, took)) => {
                vm.greeted_after = took;
                Ok(vm)
            }
            Err(e) => {
                if let Some(q) = vm.qemu.as_mut() {
                    q.stop(Duration::from_secs(2));
                }
                Err(format!(
                    "{test}: no greeting from the appliance ({} booting on {} with -m {}): {e}\n\
                     ---- serial console ----\n{}\n---- qemu ----\n{}",
                    opts.image
                        .as_deref()
                        .unwrap_or(std::path::Path::new("default image"))
                        .display(),
                    opts.machine,
                    opts.memory,
                    vm.serial_log(),
                    std::fs::read_to_string(&vm.qemu_log).unwrap_or_default()
                ))
            }
        }
    }

    /// A new control connection (greeting checked). Drop it before opening another.
    pub fn client(&self) -> Client {
        match Client::connect(&self.control, REQUEST_TIMEOUT) {
            Ok(c) => c,
            Err(e) => panic!("{}: control socket: {e}", self.test),
        }
    }

    /// Applies the embedded default config (uplink 192.0.2.2/24, link 10.81.0.1/16).
    pub fn apply_default(&self) -> Config {
        let doc = document::default_document();
        let mut c = self.client();
        if let Err(e) = c.apply(&doc) {
            panic!("{}: applying the default config: {e}", self.test);
        }
        doc.config().clone()
    }

    /// Applies a whole config document as JSON; the test fails if it is refused.
    pub fn apply_json(&self, doc: &serde_json::Value) {
        if let Err(e) = self.client().apply_value(doc) {
            panic!("{}: apply {doc}: {e}", self.test);
        }
    }

    pub fn status(&self) -> Status {
        match self.client().status() {
            Ok(s) => s,
            Err(e) => panic!("{}: status: {e}", self.test),
        }
    }

    /// Polls `status` until `done` holds (frames sent to a tap may still be queued
    /// when the sender returns); after `timeout`, the last status is returned as is
    /// and the caller's assertions report what was missing.
    pub fn status_when(&self, timeout: Duration, done: impl Fn(&Status) -> bool) -> Status {
        let deadline = std::time::Instant::now() + timeout;
        let mut c = self.client();
        loop {
            let s = match c.status() {
                Ok(s) => s,
                Err(e) => panic!("{}: status: {e}", self.test),
            };
            if done(&s) || std::time::Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn host(&self) -> &Netns {
        &self.topo.host
    }

    pub fn ctr(&self) -> &Netns {
        &self.topo.ctr
    }

    /// Pings `addr` from `ns` until `count` replies came (within 20 s); the output.
    pub fn ping(&self, ns: &Netns, addr: &str, count: u32) -> anyhow::Result<String> {
        Topology::ping(ns, addr, count, 20)
    }

    /// Whether `addr` stays silent to 3 echo requests sent over 2 s from `ns`.
    pub fn no_answer(&self, ns: &Netns, addr: &str) -> bool {
        Topology::ping(ns, addr, 3, 2).is_err()
    }

    /// Panics unless both NIC addresses answer ping from their namespaces.
    pub fn assert_pings(&self) {
        for (ns, addr) in [(self.ctr(), LINK_ADDR), (self.host(), UPLINK_ADDR)] {
            if let Err(e) = self.ping(ns, addr, 2) {
                panic!("{}: {e:#}", self.test);
            }
        }
    }

    /// Whether QEMU is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.qemu.as_mut().map(|q| q.try_wait()), Some(Ok(None)))
    }

    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu.as_ref().map(|q| q.pid())
    }

    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Sends raw Ethernet frames out of `ifname` inside `ns` (AF_PACKET, via python3).
    pub fn send_frames(&self, ns: &Netns, ifname: &str, frames: &[Vec<u8>]) {
        if let Err(e) = frames::send(ns, ifname, frames) {
            panic!("{}: sending frames: {e:#}", self.test);
        }
    }
}

impl TestVm {
    /// Prints the appliance's heap and stack high-water marks as the test leaves it, so
    /// every QEMU run shows how close the stack size is to what the tests drive it to.
    fn report_memory(&self) {
        let Ok(status) =
            Client::connect(&self.control, Duration::from_secs(2)).and_then(|mut c| c.status())
        else {
            return;
        };
        if let (Some(heap), Some(stack)) = (status.heap, status.stack) {
            eprintln!(
                "{}: heap peak {} KiB of {} KiB, stack peak {} KiB ({} KiB since bring-up) of {} KiB",
                self.test,
                heap.peak_bytes / 1024,
                heap.size_bytes / 1024,
                stack.peak_bytes / 1024,
                stack.running_peak_bytes / 1024,
                stack.size_bytes / 1024
            );
        }
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        self.watchdog.cancel();
        let failed = std::thread::panicking() || self.watchdog.fired();
        if !failed {
            self.report_memory();
        }
        if let Some(mut q) = self.qemu.take() {
            q.stop(Duration::from_secs(2));
        }
        if failed {
            eprintln!(
                "\n==== {}: appliance logs ({}) ====",
                self.test,
                self.dir.display()
            );
            if self.watchdog.fired() {
                eprintln!("(the VM was killed by the {VM_TIME_LIMIT:?} watchdog)");
            }
            for (what, path) in [("serial console", &self.serial), ("qemu", &self.qemu_log)] {
                eprintln!("---- {what}: {} ----", path.display());
                eprintln!("{}", std::fs::read_to_string(path).unwrap_or_default());
            }
            eprintln!("==== end of {} logs ====", self.test);
        }
        // The logs were printed if they matter; keep no litter in /tmp.
        let _ = std::fs::remove_dir_all(&self.dir);
        // The topology (namespaces, and with them every device) drops after this.
    }
}

/// The MAC address of `ifname` inside `ns`.
pub fn mac_of(ns: &Netns, ifname: &str) -> MacAddr {
    let out = ns
        .command("cat")
        .arg(format!("/sys/class/net/{ifname}/address"))
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => panic!(
            "reading the MAC of {ifname} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("reading the MAC of {ifname} in {}: {e}", ns.name()),
    };
    text.parse()
        .unwrap_or_else(|e| panic!("MAC of {ifname} in {}: {e}", ns.name()))
}
