//! `weft demo`: the embedded default topology end to end. As root it builds network
//! namespaces, bridges, taps and veths (all named `wd-*`), builds and boots the
//! appliance, applies the default config, pings both NIC addresses, shows `status`,
//! and removes everything it made, also on Ctrl-C or failure (drop guards). It never
//! touches devices outside its own namespaces.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::build::{self, Profile};
use crate::netns::{self, PeerAddresses, Topology, TopologyNames};
use crate::qemu::{self, Accel, Nic, QemuConfig, Serial};
use crate::status;
use weft_control::document;

/// The prefix of every name the demo creates.
pub const PREFIX: &str = "wd";

/// Demo options.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub profile: Profile,
    pub accel: Accel,
    /// Set by the Ctrl-C handler; checked between steps.
    pub interrupted: Arc<AtomicBool>,
}

struct Steps {
    n: usize,
    interrupted: Arc<AtomicBool>,
}

impl Steps {
    fn step(&mut self, what: &str) -> Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        self.n += 1;
        println!("\n[{}] {what}", self.n);
        Ok(())
    }
}

fn say(s: &str) {
    println!("    {s}");
}

/// The work directory with the control socket and serial log.
pub fn work_dir() -> PathBuf {
    std::env::temp_dir().join("weft-demo")
}

/// Removes namespaces left by an earlier demo that was killed hard (SIGKILL).
fn remove_stale(names: &TopologyNames) {
    for ns in names.namespaces() {
        if netns::netns_exists(ns) {
            say(&format!("removing namespace {ns} left by an earlier run"));
            let _ = netns::ip(&["netns", "del", ns]);
        }
    }
}

pub fn run(opts: &DemoOptions) -> Result<()> {
    let mut steps = Steps {
        n: 0,
        interrupted: opts.interrupted.clone(),
    };
    steps.step("checking for root and QEMU")?;
    netns::require_root()?;
    if !qemu::qemu_available() {
        bail!(
            "{} not found (apt-get install qemu-system-x86)",
            qemu::QEMU_BINARY
        );
    }
    say("ok");

    steps.step("building the appliance image (weft build)")?;
    let img = build::build_image_with(opts.profile, true)?;
    say(&format!(
        "{} ({} bytes)",
        img.path.display(),
        img.size_bytes
    ));

    steps.step("creating the topology")?;
    let names = TopologyNames::new(PREFIX)?;
    remove_stale(&names);
    let topo = Topology::create(names, PeerAddresses::default(), &mut |s| say(s))?;

    let dir = work_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _dir_guard = RemoveDir(dir.clone());
    let control = dir.join("control.sock");
    let serial = dir.join("serial.log");
    let qemu_log = dir.join("qemu.log");

    steps.step("booting the appliance under QEMU")?;
    let mut cfg = QemuConfig::new(
        img.path.clone(),
        Nic::tap(&topo.names.uplink_tap),
        Nic::tap(&topo.names.link_tap),
        control.clone(),
    );
    cfg.accel = opts.accel;
    cfg.serial = Serial::File(serial.clone());
    cfg.netns = Some(topo.names.hv_ns.clone());
    cfg.log = Some(qemu_log.clone());
    say(&format!(
        "uplink {} mac {}, link {} mac {}",
        topo.names.uplink_tap, cfg.uplink.mac, topo.names.link_tap, cfg.link.mac
    ));
    say(&format!("control socket {}", control.display()));
    say(&format!("serial log {}", serial.display()));
    let mut vm = qemu_guard(cfg.spawn()?, vec![serial.clone(), qemu_log]);
    let (mut client, took) = vm
        .qemu
        .greet(&control, Duration::from_secs(60))
        .context("waiting for the appliance to greet")?;
    say(&format!(
        "greeted after {} ms: weft {} (protocol {})",
        took.as_millis(),
        client.greeting().weft.version,
        client.greeting().weft.protocol
    ));

    steps.step("applying the default configuration")?;
    for line in document::DEFAULT_CONFIG_TOML
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        say(line);
    }
    let applied = client.apply(&document::default_document())?;
    say(if applied.changed {
        "applied"
    } else {
        "already running"
    });

    steps.step(&format!(
        "container namespace {} pings its gateway 10.81.0.1",
        topo.names.ctr_ns
    ))?;
    let out = Topology::ping(&topo.ctr, "10.81.0.1", 3, 20)?;
    print_indented(&out);

    steps.step(&format!(
        "host namespace {} pings the uplink address 192.0.2.2",
        topo.names.host_ns
    ))?;
    let out = Topology::ping(&topo.host, "192.0.2.2", 3, 20)?;
    print_indented(&out);

    steps.step("status through the control socket")?;
    let st = client.status()?;
    print_indented(&status::render_status(&st));

    steps.step("cleaning up")?;
    drop(client);
    vm.ok = true;
    drop(vm);
    say("QEMU stopped");
    drop(topo);
    say("namespaces, bridges, taps and veths removed");
    println!("\nweft demo: done");
    Ok(())
}

fn print_indented(text: &str) {
    for l in text.lines() {
        say(l);
    }
}

/// QEMU plus its logs (serial console, QEMU's own output), shown if the demo fails.
struct VmGuard {
    qemu: qemu::Qemu,
    logs: Vec<PathBuf>,
    ok: bool,
}

fn qemu_guard(qemu: qemu::Qemu, logs: Vec<PathBuf>) -> VmGuard {
    VmGuard {
        qemu,
        logs,
        ok: false,
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        self.qemu.stop(Duration::from_secs(2));
        if !self.ok {
            for path in &self.logs {
                if let Ok(log) = std::fs::read_to_string(path) {
                    eprintln!("---- {} ----", path.display());
                    eprintln!("{log}");
                }
            }
        }
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
