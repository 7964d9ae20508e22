//! Overlay topologies for the QEMU tests: several appliances whose uplink segments are
//! joined on one underlay bridge (its own namespace), extra container namespaces on an
//! appliance's link (optionally on a VLAN), a plain Linux host with a kernel `vxlan`
//! device as a third VTEP, a packet capture on the underlay, and `iperf3` runs.
//! Everything it creates lives in namespaces it owns, deleted on drop (also while a
//! panic unwinds); processes it starts are killed on drop.
//!
//! VLAN access ports: kernels without 802.1Q devices (no `8021q`, no bridge VLAN
//! filtering, as on the CI machines) cannot tag, so a container "on VLAN n" is plugged
//! into a small AF_PACKET relay (python3, standard library) that adds the tag towards
//! the link bridge and takes it off (keeping only VLAN n) towards the container.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
/// The benches' iperf3 run (`reverse`: the server sends), as the tests call it.
pub use weft_image::bench::load::{iperf3_run as iperf3, Iperf};
use weft_image::netns::{run, Netns};
use weft_image::process::Signal;

use weft_image::netns::{PeerAddresses, Topology};
use weft_image::qemu::Machine;

use crate::tshark::Tshark;
use crate::{BootOptions, TestVm};

/// Boots node `n` of a grid test: its host namespace at `192.0.2.<n>/24` on the uplink
/// segment, its container at `ctr` behind the link with the node address `10.81.0.<n>`
/// as gateway.
pub fn boot_node(test: &str, n: u8, ctr: &str) -> TestVm {
    boot_node_with(test, Machine::Q35, n, ctr, BootOptions::default().append)
}

/// [`boot_node`] on a given QEMU machine with `append` as the kernel command line.
pub fn boot_node_with(test: &str, machine: Machine, n: u8, ctr: &str, append: String) -> TestVm {
    TestVm::boot_with(
        &format!("{test}-w{n}"),
        BootOptions {
            machine,
            append,
            peers: PeerAddresses {
                host: format!("192.0.2.{n}/24"),
                ctr: ctr.to_string(),
                ctr_gateway: format!("10.81.0.{n}"),
            },
            time_limit: Duration::from_secs(600),
            ..BootOptions::default()
        },
    )
}

/// Nodes 1 to N booted at once on `machine` (with `append` as their kernel command
/// line when given), their containers at `ctrs`, all joined to a new underlay: how
/// every multi-host test starts. TCG boots are slow, and the nodes do not depend on
/// each other.
pub fn on_underlay<const N: usize>(
    test: &str,
    machine: Machine,
    ctrs: [&str; N],
    append: Option<&str>,
) -> ([TestVm; N], Underlay) {
    let append = append.map_or_else(|| BootOptions::default().append, str::to_string);
    let vms: Vec<TestVm> = std::thread::scope(|s| {
        let boots: Vec<_> = (0..N)
            .map(|i| {
                let (ctr, append) = (ctrs[i], append.clone());
                s.spawn(move || boot_node_with(test, machine, i as u8 + 1, ctr, append))
            })
            .collect();
        boots
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                b.join()
                    .unwrap_or_else(|_| panic!("{test}: booting node {} failed", i + 1))
            })
            .collect()
    });
    let Ok(vms) = <[TestVm; N]>::try_from(vms) else {
        unreachable!("one VM per node")
    };
    let mut ul = Underlay::create().unwrap_or_else(|e| panic!("{test}: underlay: {e:#}"));
    for (i, vm) in vms.iter().enumerate() {
        ul.join(vm)
            .unwrap_or_else(|e| panic!("{test}: joining node {}: {e:#}", i + 1));
    }
    (vms, ul)
}

/// [`on_underlay`] for the two nodes most tests have.
pub fn two_on_underlay(
    test: &str,
    machine: Machine,
    ctrs: [&str; 2],
    append: Option<&str>,
) -> (TestVm, TestVm, Underlay) {
    let ([w1, w2], ul) = on_underlay(test, machine, ctrs, append);
    (w1, w2, ul)
}

/// The overlay MTU over the tests' 1500-byte underlay: VXLAN's, what `[grid] mtu`
/// defaults to.
pub const VXLAN_MTU: u16 = weft_netstack::stage::overlay::config::DEFAULT_MTU;
/// A sleeve network's MTU over the same underlay: VXLAN's less what sleeve adds.
pub const SLEEVE_MTU: u16 = VXLAN_MTU - weft_netstack::stage::overlay::sleeve_link::EXTRA_OVERHEAD;

/// Sets the MTU of each VM's container end (the overlay's MTU: the underlay's less what
/// the encapsulation adds).
pub fn set_ctr_mtu(vms: &[&TestVm], mtu: u16) {
    for vm in vms {
        vm.ctr()
            .ip(&[
                "link",
                "set",
                &vm.topo.names.ctr_veth,
                "mtu",
                &mtu.to_string(),
            ])
            .unwrap_or_else(|e| panic!("{}: container MTU {mtu}: {e:#}", vm.test));
    }
}

/// A short unique prefix (`wg` + pid + counter, 9 bytes) so names fit IFNAMSIZ.
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("wg{:05x}{:02x}", std::process::id() & 0xf_ffff, n & 0xff)
}

/// `ip -n NS ...` inside a namespace, with a readable error.
fn ip(ns: &Netns, args: &[&str]) -> Result<()> {
    ns.ip(args)
        .with_context(|| format!("ip -n {} {}", ns.name(), args.join(" ")))
}

/// A namespace that only forwards frames: no IPv6 noise, no bridge netfilter.
fn quiet(ns: &Netns) -> Result<()> {
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    for key in ["iptables", "ip6tables", "arptables"] {
        let _ = ns.sysctl(&format!("net.bridge.bridge-nf-call-{key}"), "0");
    }
    Ok(())
}

/// The shared underlay: a bridge in its own namespace that the appliances' uplink
/// segments (and Linux VTEP hosts) are joined to.
pub struct Underlay {
    pub prefix: String,
    pub bridge: String,
    joined: u32,
    pub ns: Netns,
}

impl Underlay {
    pub fn create() -> Result<Underlay> {
        let prefix = unique_prefix();
        let ns = Netns::create(&format!("{prefix}-ul"))?;
        quiet(&ns)?;
        let bridge = "ulbr".to_string();
        ns.add_bridge(&bridge)?;
        Ok(Underlay {
            prefix,
            bridge,
            joined: 0,
            ns,
        })
    }

    /// A veth from `ns` (named `ifname` there) to the underlay bridge.
    pub fn plug(&mut self, ns: &Netns, ifname: &str) -> Result<()> {
        self.joined += 1;
        let ul_end = format!("{}-j{}", self.prefix, self.joined);
        ip(
            &self.ns,
            &[
                "link",
                "add",
                &ul_end,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "netns",
                ns.name(),
            ],
        )?;
        ip(&self.ns, &["link", "set", &ul_end, "master", &self.bridge])?;
        ip(&self.ns, &["link", "set", &ul_end, "up"])?;
        Ok(())
    }

    /// Joins the appliance's uplink segment (its uplink bridge) to the underlay.
    pub fn join(&mut self, vm: &TestVm) -> Result<()> {
        self.join_topology(&vm.topo)
    }

    /// Joins the uplink segment of a topology (booted by a test or by an agent).
    pub fn join_topology(&mut self, topo: &Topology) -> Result<()> {
        let hv = &topo.hv;
        let end = format!("{}-ul", self.prefix);
        self.plug(hv, &end)?;
        ip(
            hv,
            &["link", "set", &end, "master", &topo.names.uplink_bridge],
        )?;
        ip(hv, &["link", "set", &end, "up"])
    }

    /// Starts `tcpdump` on the underlay bridge, writing to `path`, and waits until it
    /// listens.
    pub fn capture(&self, path: &Path) -> Result<Capture> {
        Capture::start(&self.ns, &self.bridge, path, None)
    }

    /// A capture that keeps only the first `count` frames (tcpdump then exits), for
    /// runs whose full capture would take tshark minutes to check.
    pub fn capture_first(&self, path: &Path, count: usize) -> Result<Capture> {
        Capture::start(&self.ns, &self.bridge, path, Some(count))
    }
}

pub use weft_image::gridhost::stop_child;

/// A `tcpdump` writing a pcap file; stopped (and the file flushed) by `stop` or drop.
pub struct Capture {
    child: Option<Child>,
    pub path: PathBuf,
}

impl Capture {
    fn start(ns: &Netns, ifname: &str, path: &Path, count: Option<usize>) -> Result<Capture> {
        let log = path.with_extension("log");
        let err = std::fs::File::create(&log)?;
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", ifname, "-U", "-s", "0", "-n"]);
        if let Some(n) = count {
            cmd.args(["-c", &n.to_string()]);
        }
        let child = cmd
            .arg("-w")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .context("starting tcpdump")?;
        let mut cap = Capture {
            child: Some(child),
            path: path.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") {
                return Ok(cap);
            }
            if let Some(c) = cap.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("tcpdump exited ({status}): {text}");
                }
            }
            if Instant::now() > deadline {
                bail!("tcpdump did not start listening: {text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the capture (SIGINT, so the file is complete).
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Signal::SIGINT, Duration::from_secs(5));
        }
    }

    /// `tshark -r` over the capture with VXLAN decoding on `port`, display filter
    /// `filter` and the given fields; one line per packet, fields tab-separated.
    pub fn fields(&self, port: u16, filter: &str, fields: &[&str]) -> Result<Vec<String>> {
        Tshark::file(&self.path)
            .decode_as(&format!("udp.port=={port},vxlan"))
            .lines(filter, fields)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The relay behind a VLAN access port: frames from `access` leave on `trunk` tagged
/// with the VLAN; frames from `trunk` on that VLAN reach `access` untagged. The
/// kernel hands received tags over as metadata (PACKET_AUXDATA), or inline.
const VLAN_RELAY: &str = r#"
import socket, struct, sys, select
SOL_PACKET, PACKET_AUXDATA, VLAN_VALID = 263, 8, 0x10
access, trunk, vid = sys.argv[1], sys.argv[2], int(sys.argv[3])
def port(ifname):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((ifname, 0))
    return s
a, t = port(access), port(trunk)
tag = struct.pack('!HH', 0x8100, vid)
print('ready', flush=True)
while True:
    for s in select.select([a, t], [], [])[0]:
        data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(64))
        if addr[2] == socket.PACKET_OUTGOING or len(data) < 14:
            continue
        v = None
        for level, kind, d in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(d) >= 20:
                status, _, _, _, _, tci, _ = struct.unpack('IIIHHHH', d[:20])
                if status & VLAN_VALID:
                    v = tci & 0xfff
        if s is a:
            if v is None:
                t.send(data[:12] + tag + data[12:])
        else:
            if v is None and len(data) >= 18 and data[12:14] == b'\x81\x00':
                v = struct.unpack('!H', data[14:16])[0] & 0xfff
                data = data[:12] + data[16:]
            if v == vid:
                a.send(data)
"#;

/// A running [`VLAN_RELAY`]; killed on drop.
pub struct VlanRelay {
    child: Child,
}

impl VlanRelay {
    fn start(ns: &Netns, access: &str, trunk: &str, vid: u16) -> Result<VlanRelay> {
        use std::io::BufRead;
        let mut child = ns
            .command("python3")
            .args(["-c", VLAN_RELAY, access, trunk, &vid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the VLAN relay (python3)")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let relay = VlanRelay { child };
        if line.trim() != "ready" {
            bail!("the VLAN relay for {access} did not start");
        }
        Ok(relay)
    }
}

impl Drop for VlanRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A container namespace on an appliance's link, untagged or on a VLAN access port.
pub struct Container {
    /// The interface that carries the address.
    pub ifname: String,
    pub address: String,
    /// Field order is drop order: the relay before the namespace.
    relay: Option<VlanRelay>,
    pub ns: Netns,
}

impl Container {
    /// Namespace `name` (at most 13 bytes) with `eth0` (`cidr`, MTU `mtu`) on `vm`'s
    /// link: plugged into the link bridge, or with `vlan`, into an access port of
    /// that VLAN (see [`VLAN_RELAY`]).
    pub fn attach(
        vm: &TestVm,
        name: &str,
        vlan: Option<u16>,
        cidr: &str,
        mtu: u16,
    ) -> Result<Container> {
        Container::attach_to(&vm.topo, name, vlan, cidr, mtu)
    }

    /// [`Container::attach`] to a topology's link bridge.
    pub fn attach_to(
        topo: &Topology,
        name: &str,
        vlan: Option<u16>,
        cidr: &str,
        mtu: u16,
    ) -> Result<Container> {
        let ns = Netns::create(name)?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        let hv = &topo.hv;
        let bridge = &topo.names.link_bridge;
        let hv_end = format!("{name}h");
        ip(
            hv,
            &[
                "link", "add", &hv_end, "type", "veth", "peer", "name", "eth0", "netns", name,
            ],
        )?;
        ip(hv, &["link", "set", &hv_end, "up"])?;
        let relay = match vlan {
            None => {
                ip(hv, &["link", "set", &hv_end, "master", bridge])?;
                None
            }
            Some(vid) => {
                let (trunk, relay_end) = (format!("{name}t"), format!("{name}s"));
                ip(
                    hv,
                    &[
                        "link", "add", &trunk, "type", "veth", "peer", "name", &relay_end,
                    ],
                )?;
                ip(hv, &["link", "set", &trunk, "master", bridge])?;
                ip(hv, &["link", "set", &trunk, "up"])?;
                ip(hv, &["link", "set", &relay_end, "up"])?;
                Some(VlanRelay::start(hv, &hv_end, &relay_end, vid)?)
            }
        };
        if relay.is_some() {
            // The relay copies frames as AF_PACKET hands them over: with the veth's
            // transmit offloads on, TCP/UDP checksums would still be partial (the
            // kernel fills them in only on the way to a real device) and large sends
            // would be one GSO frame over the MTU. A Linux bridge port completes both;
            // the relay cannot, so the container computes checksums and segments itself.
            let st = ns
                .command("ethtool")
                .args(["-K", "eth0", "tx", "off", "tso", "off", "gso", "off"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running ethtool (apt-get install ethtool, or .ci/install)")?;
            if !st.success() {
                bail!("ethtool -K eth0 tx off in {name} failed");
            }
        }
        ip(&ns, &["link", "set", "eth0", "mtu", &mtu.to_string(), "up"])?;
        ip(&ns, &["addr", "add", cidr, "dev", "eth0"])?;
        let address = cidr.split('/').next().unwrap_or(cidr).to_string();
        Ok(Container {
            ifname: "eth0".to_string(),
            address,
            relay,
            ns,
        })
    }

    /// Whether the container sits behind a VLAN relay.
    pub fn on_vlan(&self) -> bool {
        self.relay.is_some()
    }

    pub fn mac(&self) -> String {
        crate::mac_of(&self.ns, &self.ifname).to_string()
    }
}

/// A plain Linux host on the underlay with a kernel `vxlan` device for one VNI,
/// bridged to a container namespace: the interoperability peer.
pub struct LinuxVtep {
    pub underlay_addr: String,
    pub container: String,
    /// Field order is drop order: the container before the host.
    pub ctr: Netns,
    pub host: Netns,
}

impl LinuxVtep {
    /// Host `<prefix>-lx` at `underlay_cidr` on the underlay, `vx0` (VNI `vni`, UDP
    /// 4789, no learning) flooding to `peers`, bridged to `<prefix>-lc` whose `eth0`
    /// has `ctr_cidr` (MTU [`VXLAN_MTU`], as the vxlan device has).
    pub fn create(
        underlay: &mut Underlay,
        underlay_cidr: &str,
        vni: u32,
        peers: &[&str],
        ctr_cidr: &str,
    ) -> Result<LinuxVtep> {
        let prefix = underlay.prefix.clone();
        let host = Netns::create(&format!("{prefix}-lx"))?;
        let ctr = Netns::create(&format!("{prefix}-lc"))?;
        quiet(&host)?;
        ctr.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        underlay.plug(&host, "ul0")?;
        let local = underlay_cidr.split('/').next().unwrap_or(underlay_cidr);
        ip(&host, &["addr", "add", underlay_cidr, "dev", "ul0"])?;
        ip(&host, &["link", "set", "ul0", "up"])?;
        ip(
            &host,
            &[
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                &vni.to_string(),
                "dstport",
                "4789",
                "local",
                local,
                "nolearning",
            ],
        )?;
        host.add_bridge("br0")?;
        ip(&host, &["link", "set", "vx0", "master", "br0"])?;
        ip(
            &host,
            &[
                "link",
                "add",
                "c0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ctr.name(),
            ],
        )?;
        ip(&host, &["link", "set", "c0", "master", "br0"])?;
        for dev in ["vx0", "c0", "br0"] {
            ip(&host, &["link", "set", dev, "up"])?;
        }
        for peer in peers {
            run(host.command("bridge").args([
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                "vx0",
                "dst",
                peer,
            ]))?;
        }
        ip(
            &ctr,
            &["link", "set", "eth0", "mtu", &VXLAN_MTU.to_string(), "up"],
        )?;
        ip(&ctr, &["addr", "add", ctr_cidr, "dev", "eth0"])?;
        Ok(LinuxVtep {
            underlay_addr: local.to_string(),
            container: ctr_cidr.split('/').next().unwrap_or(ctr_cidr).to_string(),
            ctr,
            host,
        })
    }

    /// A static unicast entry: `mac` is behind the VTEP at `dst`.
    pub fn pin(&self, mac: &str, dst: &str) -> Result<()> {
        run(self
            .host
            .command("bridge")
            .args(["fdb", "append", mac, "dev", "vx0", "dst", dst]))
        .map(|_| ())
    }
}

/// Builds the `weft` host tool (same profile as the calling test) and returns its path.
pub fn weft_binary() -> PathBuf {
    let root = weft_image::paths::repo_root();
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args(["build", "--quiet", "-p", "weft-image", "--bin", "weft"]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("running cargo build for weft");
    assert!(st.success(), "building the weft binary failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target
        .join(if release { "release" } else { "debug" })
        .join("weft")
}

/// `weft ctl --socket SOCKET ARGS...`: (exit code, stdout, stderr).
pub fn weft_ctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(weft_binary())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running weft ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
