//! `weft demo`: what weft does, on two hosts, in one command. As root it builds two
//! hosts' worth of network namespaces, bridges, taps and veths (all named `wd-*` and
//! `wd2-*`) joined by one underlay link, builds and boots two appliances, and shows step
//! by step: the containers reaching each other across the overlay by name (DNS), a
//! capture of that ping decoded by tshark, a service spread over both hosts through its
//! VIP and through a published port (the routing mesh), the metrics and the status. It
//! removes everything it made, also on Ctrl-C or failure (drop guards), and never
//! touches devices outside its own namespaces. A step whose outcome is wrong fails the
//! demo.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::{self, Profile};
use crate::netns::{self, Netns, PeerAddresses, Topology, TopologyNames};
use crate::qemu::{self, Accel, Nic, QemuConfig, Serial};
use crate::status;
use weft_appliance::capture::CaptureStart;
use weft_control::capture::{self as capture_stream, Format, Writer};
use weft_control::client::Client;
use weft_control::document;

/// The prefix of every name the demo creates for host A.
pub const PREFIX: &str = "wd";
/// The prefixes of both hosts (A, B).
pub const PREFIXES: [&str; 2] = [PREFIX, "wd2"];
/// The grid's DNS name.
const GRID: &str = "demo";
/// The service's virtual address.
const VIP: &str = "10.81.255.1";

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

/// The work directory with the control sockets, serial logs and the capture.
pub fn work_dir() -> PathBuf {
    std::env::temp_dir().join("weft-demo")
}

/// Where `ip netns exec` finds a namespace's own resolv.conf.
pub fn resolv_dir(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Removes namespaces left by an earlier demo that was killed hard (SIGKILL).
fn remove_stale(names: &TopologyNames) {
    for ns in names.namespaces() {
        if netns::netns_exists(ns) {
            say(&format!("removing namespace {ns} left by an earlier run"));
            let _ = netns::ip(&["netns", "del", ns]);
        }
    }
    let _ = std::fs::remove_dir_all(resolv_dir(&names.ctr_ns));
}

/// One host of the demo: n = 1 (A) or 2 (B).
struct Host {
    n: u8,
    name: &'static str,
    container: String,
    control: PathBuf,
}

impl Host {
    fn new(n: u8, dir: &std::path::Path) -> Host {
        Host {
            n,
            name: if n == 1 { "A" } else { "B" },
            container: format!("web-{n}"),
            control: dir.join(format!("control-{n}.sock")),
        }
    }

    fn container_address(&self) -> String {
        format!("10.81.128.1{}", self.n)
    }

    fn uplink_address(&self) -> String {
        format!("192.0.2.1{}", self.n)
    }

    fn gateway(&self) -> String {
        format!("10.81.0.{}", self.n)
    }

    /// Its configuration: the overlay network to the other host, DNS for the grid's
    /// containers, the service `web` over both containers, and (on A) port 8080
    /// published for that service.
    fn config_toml(&self) -> String {
        let o = 3 - self.n;
        let mut t = format!(
            "[uplink]\naddress = \"192.0.2.1{n}/24\"\n\n[link]\naddress = \"10.81.0.{n}/16\"\n\n\
             [grid]\nnode = {n}\n\n[[networks]]\nname = \"grid\"\nvni = 100\n\n\
             [[peers]]\nnode = {o}\naddress = \"192.0.2.1{o}\"\nnetworks = [\"grid\"]\n\n\
             [dns]\ngrid = \"{GRID}\"\n\n",
            n = self.n
        );
        for c in 1..=2 {
            t += &format!(
                "[[containers]]\nname = \"web-{c}\"\nservice = \"web\"\naddress = \"10.81.128.1{c}\"\n\n"
            );
        }
        t += &format!(
            "[[services]]\nname = \"web\"\nvip = \"{VIP}\"\nproto = \"tcp\"\nport = 80\n\n"
        );
        for c in 1..=2 {
            t += &format!("[[services.backends]]\naddress = \"10.81.128.1{c}\"\nport = 8080\n\n");
        }
        t += "[services.health]\ninterval_ms = 1000\ntimeout_ms = 500\nrise = 1\n\n";
        if self.n == 1 {
            t += &format!(
                "[[publish]]\nproto = \"tcp\"\nhost_port = 8080\ncontainer_address = \"{VIP}\"\ncontainer_port = 80\n"
            );
        }
        t
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

    let dir = work_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _dir_guard = RemoveDir(dir.clone());
    let hosts = [Host::new(1, &dir), Host::new(2, &dir)];

    steps.step("creating two hosts, A and B, each with a container, joined by an underlay")?;
    say("each host: a host namespace (its network), a container namespace, and the");
    say("hypervisor namespace where its weft appliance runs between them");
    let mut topos = Vec::new();
    let mut resolv = Vec::new();
    for (h, prefix) in hosts.iter().zip(PREFIXES) {
        let names = TopologyNames::new(prefix)?;
        remove_stale(&names);
        let peers = PeerAddresses {
            host: format!("192.0.2.{}/24", h.n),
            ctr: format!("{}/16", h.container_address()),
            ctr_gateway: h.gateway(),
        };
        let topo = Topology::create(names, peers, &mut |s| say(&format!("host {}: {s}", h.name)))?;
        // The overlay carries the containers' frames in VXLAN: 50 bytes less MTU.
        topo.ctr
            .ip(&["link", "set", &topo.names.ctr_veth, "mtu", "1450"])?;
        // The container's resolver is its gateway, as Docker's is docker0's.
        let rdir = resolv_dir(&topo.names.ctr_ns);
        resolv.push(RemoveDir(rdir.clone()));
        std::fs::create_dir_all(&rdir)?;
        std::fs::write(
            rdir.join("resolv.conf"),
            format!("nameserver {}\nsearch {GRID}.kontena.local\n", h.gateway()),
        )?;
        say(&format!(
            "host {}: container {} at {} (namespace {}), resolver {}",
            h.name,
            h.container,
            h.container_address(),
            topo.names.ctr_ns,
            h.gateway()
        ));
        topos.push(topo);
    }
    join_underlay(&topos[0], &topos[1])?;
    say("underlay: host A's and host B's uplink segments joined (192.0.2.0/24)");

    steps.step("booting both appliances under QEMU")?;
    let mut vms = Vec::new();
    for (h, topo) in hosts.iter().zip(&topos) {
        let serial = dir.join(format!("serial-{}.log", h.n));
        let qemu_log = dir.join(format!("qemu-{}.log", h.n));
        let mut cfg = QemuConfig::new(
            img.path.clone(),
            Nic::tap(&topo.names.uplink_tap),
            Nic::tap(&topo.names.link_tap),
            h.control.clone(),
        );
        cfg.accel = opts.accel;
        cfg.serial = Serial::File(serial.clone());
        cfg.netns = Some(topo.names.hv_ns.clone());
        cfg.log = Some(qemu_log.clone());
        vms.push(qemu_guard(cfg.spawn()?, vec![serial, qemu_log]));
    }
    let mut clients = Vec::new();
    for (h, vm) in hosts.iter().zip(vms.iter_mut()) {
        let (client, took) = vm
            .qemu
            .greet(&h.control, Duration::from_secs(60))
            .with_context(|| format!("waiting for appliance {} to greet", h.name))?;
        say(&format!(
            "appliance {} greeted after {} ms: weft {}, control socket {}",
            h.name,
            took.as_millis(),
            client.greeting().weft.version,
            h.control.display()
        ));
        clients.push(client);
    }

    steps.step("configuring both: an overlay network, DNS, a service and a published port")?;
    for (h, client) in hosts.iter().zip(clients.iter_mut()) {
        let doc = document::document_from_toml(&h.config_toml())?;
        client.apply(&doc)?;
        say(&format!(
            "appliance {}: node {}, uplink {}, gateway {} for its containers",
            h.name,
            h.n,
            h.uplink_address(),
            h.gateway()
        ));
    }
    say(&format!(
        "the grid \"{GRID}\": web-1 on A and web-2 on B, both backends of service web at {VIP}:80"
    ));
    say("host A publishes port 8080 for service web");

    steps.step("container web-1 on host A pings web-2 on host B by name")?;
    let a = &topos[0];
    let fqdn = format!("web-2.{GRID}.kontena.local");
    let answer = dig(&a.ctr, &hosts[0].gateway(), &fqdn)?;
    say(&format!(
        "DNS: {fqdn} is {answer} (answered by appliance A)"
    ));
    if answer != hosts[1].container_address() {
        bail!("{fqdn} resolved to {answer:?}");
    }
    let out = Topology::ping(&a.ctr, "web-2", 3, 30)?;
    print_indented(&out);
    say("the ping crossed the underlay inside VXLAN (UDP 4789) between the appliances");

    steps.step("capturing that conversation inside the overlay (weft ctl capture)")?;
    let pcap = dir.join("overlay.pcapng");
    let frames = capture_ping(&mut clients[0], &a.ctr, &pcap)?;
    say(&format!(
        "{frames} inner frames of network \"grid\" on appliance A, as tshark reads them:"
    ));
    let decoded = tshark(&pcap)?;
    print_indented(&decoded);
    if !decoded.contains("Echo (ping) request") || !decoded.contains("Echo (ping) reply") {
        bail!("tshark did not see the ping in the capture");
    }

    steps.step(&format!(
        "the service web: its VIP {VIP}:80 from web-1, spread over both hosts"
    ))?;
    let _servers = Servers(vec![
        serve(&topos[0].ctr, "web-1 on host A")?,
        serve(&topos[1].ctr, "web-2 on host B")?,
    ]);
    wait_healthy(&mut clients[0], 2)?;
    let seen = connect_until_both(&a.ctr, VIP, 80)?;
    for (who, n) in &seen {
        say(&format!("{n} connections answered by {who}"));
    }

    steps.step("the routing mesh: host A's published port 8080 reaches containers on B too")?;
    let seen = connect_until_both(&a.host, &hosts[0].uplink_address(), 8080)?;
    for (who, n) in &seen {
        say(&format!(
            "{n} connections from host A's network to {}:8080 answered by {who}",
            hosts[0].uplink_address()
        ));
    }

    steps.step("metrics (weft ctl metrics; weft agent --metrics serves them over HTTP)")?;
    let text = metrics(&mut clients[0])?;
    let shown = [
        "weft_overlay_peer_tx_packets_total",
        "weft_overlay_peer_rx_packets_total",
        "weft_dns_queries_total",
        "weft_dns_local_answers_total",
        "weft_lb_backend_up",
        "weft_conntrack_flows ",
        "weft_heap_used_bytes",
    ];
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && shown.iter().any(|s| l.starts_with(s)))
        .take(16)
        .collect();
    if lines.is_empty() {
        bail!("no metrics came back");
    }
    for l in &lines {
        say(l);
    }
    say(&format!(
        "({} metric lines in all)",
        text.lines().filter(|l| !l.starts_with('#')).count()
    ));

    steps.step("status of appliance A (weft ctl status)")?;
    let st = clients[0].status()?;
    print_indented(&status::render_status(&st));

    steps.step("cleaning up")?;
    drop(_servers);
    drop(clients);
    for mut vm in vms.drain(..) {
        vm.ok = true;
        drop(vm);
    }
    say("both appliances stopped");
    drop(topos);
    drop(resolv);
    say("namespaces, bridges, taps and veths removed");
    println!("\nweft demo: done. To try it by hand (as root):");
    for l in [
        "weft build",
        "weft boot --uplink tap:tap0 --link tap:tap1 --control /tmp/weft.sock --config examples/weft.toml",
        "weft ctl --socket /tmp/weft.sock status",
        "weft ctl --socket /tmp/weft.sock metrics",
        "weft ctl --socket /tmp/weft.sock capture --iface link --count 10 -w - | tshark -r -",
        "weft agent --help   (one per host, with etcd; --metrics 127.0.0.1:9464)",
    ] {
        say(l);
    }
    Ok(())
}

/// A veth between the two hosts' uplink bridges: the underlay.
fn join_underlay(a: &Topology, b: &Topology) -> Result<()> {
    let (ea, eb) = (format!("{}-ul", PREFIXES[0]), format!("{}-ul", PREFIXES[1]));
    a.hv.ip(&[
        "link",
        "add",
        &ea,
        "type",
        "veth",
        "peer",
        "name",
        &eb,
        "netns",
        b.hv.name(),
    ])?;
    for (t, end) in [(a, &ea), (b, &eb)] {
        t.hv.ip(&["link", "set", end, "master", &t.names.uplink_bridge])?;
        t.hv.ip(&["link", "set", end, "up"])?;
    }
    Ok(())
}

/// `dig +short` of `name` at `server` from `ns`: the first address.
fn dig(ns: &Netns, server: &str, name: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns
            .command("dig")
            .args([
                "+short",
                "+time=2",
                "+tries=1",
                &format!("@{server}"),
                name,
                "A",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running dig (bind9-dnsutils)")?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !text.is_empty() || Instant::now() > deadline {
            return Ok(text.lines().next().unwrap_or_default().to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Captures the inner frames of network "grid" on `client`'s appliance for 3 s while
/// `ns` pings web-2 twice, to `path`; returns the frames captured.
fn capture_ping(client: &mut Client, ns: &Netns, path: &std::path::Path) -> Result<u64> {
    let start = CaptureStart {
        iface: "overlay:grid".into(),
        snaplen: None,
        count: None,
        seconds: Some(3),
    };
    let started = capture_stream::start(client, &start)?;
    let ping = ns
        .command("ping")
        .args(["-n", "-c", "2", "-i", "0.2", "-w", "20", "web-2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("running ping")?;
    let _ping = Servers(vec![ping]);
    let file = std::fs::File::create(path)?;
    let mut writer = Writer::new(std::io::BufWriter::new(file), Format::Pcapng, &started)?;
    let end = capture_stream::stream(client, &started, &mut writer, &AtomicBool::new(false))?;
    writer.flush()?;
    Ok(end.frames)
}

fn tshark(path: &std::path::Path) -> Result<String> {
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running tshark")?;
    if !out.status.success() {
        bail!("tshark: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A server on TCP 8080 in `ns` that answers every connection with `name`.
fn serve(ns: &Netns, name: &str) -> Result<Child> {
    ns.command("socat")
        .args([
            "TCP-LISTEN:8080,fork,reuseaddr",
            &format!("SYSTEM:echo {name}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running socat")
}

/// Waits until `want` backends of the service are up on the appliance.
fn wait_healthy(client: &mut Client, want: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(client)?;
        let up = text
            .lines()
            .filter(|l| l.starts_with("weft_lb_backend_up{") && l.ends_with(" 1"))
            .count();
        if up >= want {
            say(&format!("health checks: {up} backends up"));
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {up} of {want} backends became healthy");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Connects to `addr:port` from `ns` until both containers have answered (at most 40
/// connections): who answered, how often.
fn connect_until_both(ns: &Netns, addr: &str, port: u16) -> Result<Vec<(String, u32)>> {
    let mut seen: Vec<(String, u32)> = Vec::new();
    for _ in 0..40 {
        let out = ns
            .command("socat")
            .args([
                "-T",
                "5",
                "-",
                &format!("TCP:{addr}:{port},connect-timeout=5"),
            ])
            .stdin(Stdio::null())
            .output()
            .context("running socat")?;
        let who = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if who.is_empty() {
            continue;
        }
        match seen.iter_mut().find(|(w, _)| *w == who) {
            Some((_, n)) => *n += 1,
            None => seen.push((who, 1)),
        }
        if seen.len() >= 2 {
            break;
        }
    }
    if seen.len() < 2 {
        bail!("{addr}:{port} was not answered by both containers: {seen:?}");
    }
    Ok(seen)
}

fn metrics(client: &mut Client) -> Result<String> {
    let v = client
        .call("metrics", None)?
        .outcome
        .map_err(|e| anyhow::anyhow!("metrics: {}", weft_control::client::remote_line(&e)))?;
    Ok(v["text"].as_str().unwrap_or_default().to_string())
}

/// Processes the demo started (servers, a ping), killed when it ends.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
