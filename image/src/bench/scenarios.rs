//! The side-by-side scenarios: for each, the topology, the weft config document and
//! the reference VM's job that do the same thing, and the measurement. A weft document
//! that `apply` refuses means the feature is not wired yet: the run returns
//! [`RunError::Missing`] with the refusal, never a made-up number. The documents for
//! features still being integrated are written as the issues describe them; when the
//! integrators settle the schema, `weft_*_doc` below is the one place to update.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

use super::features::{self, DeviceFeatures};
use super::load;
use super::refvm::{RefJob, WgJob};
use super::vm::{heap_from_console, heap_peak_from_status, Host, Images, Kind, Vm};
use crate::netns::{Netns, PeerAddresses, Topology};
use crate::qemu::{Machine, MemoryMib};

/// Why a run produced no number.
#[derive(Debug)]
pub enum RunError {
    /// The feature is not there on this side (weft refused the config).
    Missing(String),
    /// It is there but the run failed.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for RunError {
    fn from(e: anyhow::Error) -> Self {
        RunError::Failed(e)
    }
}

/// Row ids and values a run produced.
pub type Values = Vec<(&'static str, f64)>;

/// Everything a run needs.
pub struct Ctx {
    pub images: Images,
    /// The virtio features each kind negotiated, by "kind machine" (e.g. "weft q35"),
    /// read from the consoles after boot.
    pub features: std::sync::Mutex<std::collections::BTreeMap<String, Vec<DeviceFeatures>>>,
    /// Guest RAM for every measured run (the same for both kinds).
    pub memory: MemoryMib,
    /// Short measurements (`--quick`).
    pub quick: bool,
    pub interrupted: Arc<AtomicBool>,
    pub log: fn(&str),
}

impl Ctx {
    fn secs(&self, full: u32, quick: u32) -> u32 {
        if self.quick {
            quick
        } else {
            full
        }
    }

    fn check_interrupt(&self) -> Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            anyhow::bail!("interrupted");
        }
        Ok(())
    }
}

// Addresses of the single-host scenarios (the demo topology).
const UPLINK: &str = "192.0.2.2/24";
const UPLINK_ADDR: &str = "192.0.2.2";
const GATEWAY: &str = "192.0.2.1";
const LINK: &str = "10.81.0.1/16";
const LINK_ADDR: &str = "10.81.0.1";
const CTR_ADDR: &str = "10.81.128.2";
const CTR2_ADDR: &str = "10.81.128.3";
const PUBLISHED_PORT: u16 = 8080;
const SERVER_PORT: u16 = 80;
/// The service VIP: in the container subnet with no host behind it (weft answers ARP
/// for it on the link; the reference VM holds it as a local address on its link).
const VIP: &str = "10.81.255.10";
/// The client container of the VIP scenario.
const CLIENT_ADDR: &str = "10.81.128.9";
const VNI: u32 = 100;
const DOMAIN: &str = "weft.local";
const GRID: &str = "bench";
/// Containers with DNS names in the DNS scenario.
const DNS_CONTAINERS: u8 = 8;
/// Parallel clients of the connections/s scenarios.
const PARALLEL: usize = 8;

/// weft's single-host document: the demo addresses plus `extra` sections.
fn weft_doc(extra: Value) -> Value {
    let mut doc = json!({
        "uplink": {"address": UPLINK, "gateway": GATEWAY},
        "link": {"address": LINK},
    });
    if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            d.insert(k.clone(), v.clone());
        }
    }
    doc
}

fn single_job() -> RefJob {
    RefJob {
        uplink: UPLINK.into(),
        gateway: Some(GATEWAY.into()),
        link: LINK.into(),
        ..RefJob::default()
    }
}

/// Boots one host of `kind` with the demo addresses, its VM on a CPU of its own
/// ([`Host::pin_vm`]: the scenarios that use it drive the VM with load generators on
/// the same machine); weft gets `doc` applied (a refusal is [`RunError::Missing`]), the
/// reference VM `job`.
fn single_host(ctx: &Ctx, kind: Kind, doc: &Value, job: &RefJob) -> Result<Host, RunError> {
    single_host_placed(ctx, kind, doc, job, true)
}

fn single_host_placed(
    ctx: &Ctx,
    kind: Kind,
    doc: &Value,
    job: &RefJob,
    pinned: bool,
) -> Result<Host, RunError> {
    let mut host = Host::create(PeerAddresses::default())?;
    if pinned {
        host.pin_vm();
    }
    host.boot(kind, &ctx.images, ctx.memory, job)?;
    if kind == Kind::Weft {
        host.vm()?
            .apply(doc)
            .map_err(|e| RunError::Missing(format!("weft refused the config: {e:#}")))?;
    }
    Ok(host)
}

/// weft's heap high-water mark from `status` after a run, when the kernel reports it.
fn heap_after(host: &Host, out: &mut Values) {
    if let Ok(vm) = host.vm() {
        if vm.kind == Kind::Weft {
            if let Some(kib) = vm.status().ok().as_ref().and_then(heap_peak_from_status) {
                out.push(("heap_peak", kib as f64));
            }
        }
    }
}

/// Notes what `vm` negotiated, from its console, under "kind machine".
fn note_features(ctx: &Ctx, vm: &Vm, machine: Machine) {
    let console = vm.serial_log();
    let found = match vm.kind {
        Kind::Weft => features::from_weft_console(&console),
        Kind::Linux => features::from_linux_console(&console),
    };
    if let Ok(mut f) = ctx.features.lock() {
        f.insert(format!("{} {machine}", vm.kind.name()), found);
    }
}

/// Boot to ready, then idle host CPU of the configured VM (q35). Not pinned: nothing
/// else runs, and the boot row times QEMU's start without a `taskset` in front.
pub fn boot_and_idle(ctx: &Ctx, kind: Kind) -> Result<Values, RunError> {
    let host = single_host_placed(ctx, kind, &weft_doc(json!({})), &single_job(), false)?;
    let vm = host.vm()?;
    note_features(ctx, vm, Machine::Q35);
    let mut out = vec![("boot", vm.ready_after.as_secs_f64() * 1000.0)];
    if kind == Kind::Weft {
        if let Some((_, peak, _)) = heap_from_console(&vm.serial_log()) {
            out.push(("heap_ready", peak as f64));
        }
    }
    // Both answer on both NICs before the idle measurement starts.
    for (ns, addr) in [(&host.topo.host, UPLINK_ADDR), (&host.topo.ctr, LINK_ADDR)] {
        Topology::ping(ns, addr, 1, 20).map_err(RunError::Failed)?;
    }
    std::thread::sleep(Duration::from_secs(ctx.secs(2, 1).into()));
    ctx.check_interrupt()?;
    let window = Duration::from_secs(ctx.secs(10, 2).into());
    let c0 = vm.cpu_time()?;
    let t0 = Instant::now();
    std::thread::sleep(window);
    let c1 = vm.cpu_time()?;
    let pct = (c1.saturating_sub(c0)).as_secs_f64() * 100.0 / t0.elapsed().as_secs_f64();
    out.push(("idle_cpu", pct));
    Ok(out)
}

/// Boot to ready on microvm (virtio-mmio, no PCI): weft with `acpi=off`, reading its
/// devices from the command line; the reference VM with ACPI, which its kernel needs to
/// find virtio-mmio devices.
pub fn boot_microvm(ctx: &Ctx, kind: Kind) -> Result<Values, RunError> {
    let mut host = Host::create(PeerAddresses::default())?;
    host.boot_on(
        Machine::Microvm,
        kind,
        &ctx.images,
        ctx.memory,
        &single_job(),
    )?;
    let vm = host.vm()?;
    note_features(ctx, vm, Machine::Microvm);
    Ok(vec![(
        "boot_microvm",
        vm.ready_after.as_secs_f64() * 1000.0,
    )])
}

/// The overlay document of node `n` (1 or 2); `sleeve` asks for the encrypted transport.
fn weft_overlay_doc(n: u8, sleeve: bool) -> Value {
    let other = 3 - n;
    let mut network = json!({"name": "grid", "vni": VNI});
    let mut grid = json!({"node": n});
    if sleeve {
        // docs/sleeve.md: a network's `mode` and the grid secret (hex) it derives keys from.
        network["mode"] = json!("sleeve");
        grid["secret"] = json!(SLEEVE_SECRET);
    }
    json!({
        "uplink": {"address": format!("192.0.2.1{n}/24"), "gateway": GATEWAY},
        "link": {"address": format!("10.81.0.{n}/16")},
        "grid": grid,
        "networks": [network],
        "peers": [{"node": other, "address": format!("192.0.2.1{other}"), "networks": ["grid"]}],
    })
}

/// The bench's grid secret: a fixed test value, never a real one.
const SLEEVE_SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// WireGuard keys of the reference VMs (private, public): fixed test keys, never real.
const WG_KEYS: [(&str, &str); 2] = [
    (
        "CAyFgo3BwHCY+bbD62/BFR7NT5bai2Ie7hqWtrSYgH4=",
        "IFDchO9WRuxA6MIAhpqON5yV03AbXYoOOXkXj92FyyU=",
    ),
    (
        "MCt6unKVmDfAsYd+IsGlMd/CE+ukRsU0JPUEyM71Akk=",
        "BYArR9AKX4RgJyHpl3JjU7o4QCgeAJrepz7S/K/9fyE=",
    ),
];

/// The reference VM's overlay job for node `n`: VXLAN on the uplink, or with
/// `encrypted`, VXLAN over a WireGuard tunnel to the other node.
fn linux_overlay_job(n: u8, encrypted: bool) -> RefJob {
    let other = 3 - n;
    let (peer, wireguard) = if encrypted {
        let wg = WgJob {
            private_key: WG_KEYS[usize::from(n - 1)].0.into(),
            address: format!("10.99.0.{n}/24"),
            peer_public_key: WG_KEYS[usize::from(other - 1)].1.into(),
            peer_endpoint: format!("192.0.2.1{other}"),
            peer_address: format!("10.99.0.{other}"),
        };
        (wg.peer_address.clone(), Some(wg))
    } else {
        (format!("192.0.2.1{other}"), None)
    };
    RefJob {
        uplink: format!("192.0.2.1{n}/24"),
        gateway: Some(GATEWAY.into()),
        link: format!("10.81.0.{n}/16"),
        vxlan: Some((VNI, vec![peer])),
        wireguard,
        ..RefJob::default()
    }
}

/// iperf3 TCP container -> container across two hosts over the overlay: VXLAN, or
/// with `sleeve` the encrypted overlay (weft's sleeve; Linux's VXLAN over WireGuard).
pub fn overlay_tcp(ctx: &Ctx, kind: Kind, sleeve: bool) -> Result<Values, RunError> {
    let (h1, h2) = overlay_pair(ctx, kind, sleeve, ctx.memory)?;
    // What both VMs negotiated (offloads: weft's `--append weft.offload=off` or not)
    // goes beside the figure in the report.
    note_features(ctx, h1.vm()?, Machine::Q35);
    ctx.check_interrupt()?;
    let mbit = load::iperf3(&h2.topo.ctr, &h1.topo.ctr, "10.81.128.12", ctx.secs(10, 3))?;
    let mut out = vec![(if sleeve { "sleeve_tcp" } else { "vxlan_tcp" }, mbit)];
    heap_after(&h1, &mut out);
    Ok(out)
}

/// Two hosts of `kind` with `memory` each on one underlay, their containers on one
/// overlay network (VXLAN, or sleeve/WireGuard), and a ping from container 1 to
/// container 2 across it: the overlay ping test.
fn overlay_pair(
    ctx: &Ctx,
    kind: Kind,
    sleeve: bool,
    memory: MemoryMib,
) -> Result<(Host, Host), RunError> {
    let peers = |n: u8| PeerAddresses {
        host: format!("192.0.2.{n}/24"),
        ctr: format!("10.81.128.1{n}/16"),
        ctr_gateway: format!("10.81.0.{n}"),
    };
    let mut h1 = Host::create(peers(1))?;
    let mut h2 = Host::create(peers(2))?;
    h1.join_uplinks(&h2)?;
    let (j1, j2) = (linux_overlay_job(1, sleeve), linux_overlay_job(2, sleeve));
    // Both VMs boot at once: TCG boots are slow and independent.
    let (r1, r2) = std::thread::scope(|s| {
        let a = s.spawn(|| h1.boot(kind, &ctx.images, memory, &j1).map(|_| ()));
        let b = s.spawn(|| h2.boot(kind, &ctx.images, memory, &j2).map(|_| ()));
        (
            a.join()
                .unwrap_or_else(|_| Err(anyhow!("boot thread panicked"))),
            b.join()
                .unwrap_or_else(|_| Err(anyhow!("boot thread panicked"))),
        )
    });
    r1?;
    r2?;
    if kind == Kind::Weft {
        for (n, h) in [(1u8, &h1), (2, &h2)] {
            h.vm()?
                .apply(&weft_overlay_doc(n, sleeve))
                .map_err(|e| RunError::Missing(format!("node {n} refused the config: {e:#}")))?;
        }
    }
    // The overlay MTU: 1500 minus the VXLAN overhead (Docker's 1450); minus sleeve's
    // (1408, docs/sleeve.md) where weft seals; minus WireGuard's 80 and VXLAN's 50
    // (1370) where Linux does.
    let mtu = match (sleeve, kind) {
        (false, _) => "1450",
        (true, Kind::Weft) => "1408",
        (true, Kind::Linux) => "1370",
    };
    for h in [&h1, &h2] {
        h.topo
            .ctr
            .ip(&["link", "set", &h.topo.names.ctr_veth, "mtu", mtu])?;
    }
    Topology::ping(&h1.topo.ctr, "10.81.128.12", 2, 30)
        .context("container 1 -> container 2 over the overlay")?;
    Ok((h1, h2))
}

fn dns_name(i: u8) -> String {
    format!("app-web-{i}.{GRID}.{DOMAIN}")
}

fn dns_addr(i: u8) -> String {
    format!("10.81.128.{}", 10 + i)
}

/// The `[dns]` section and the containers the resolver answers for (issue 5).
fn dns_doc() -> Value {
    let containers: Vec<Value> = (1..=DNS_CONTAINERS)
        .map(|i| json!({"name": format!("app-web-{i}"), "service": "app-web", "address": dns_addr(i)}))
        .collect();
    weft_doc(json!({
        "dns": {"grid": GRID, "domain": DOMAIN},
        "containers": containers,
    }))
}

/// dnsperf queries/s at the gateway address: weft's resolver vs dnsmasq, grid names
/// answered locally (A records and one NXDOMAIN in the grid domain).
pub fn dns_qps(ctx: &Ctx, kind: Kind) -> Result<Values, RunError> {
    let doc = dns_doc();
    let mut job = single_job();
    job.dns = Some((
        DOMAIN.into(),
        (1..=DNS_CONTAINERS)
            .map(|i| (dns_name(i), dns_addr(i)))
            .collect(),
    ));
    let host = single_host(ctx, kind, &doc, &job)?;
    let queries = host.dir.join("queries.txt");
    let mut q: String = (1..=DNS_CONTAINERS)
        .map(|i| format!("{} A\n", dns_name(i)))
        .collect();
    q.push_str(&format!("nope.{GRID}.{DOMAIN} A\n"));
    std::fs::write(&queries, q).context("writing the dnsperf query file")?;
    // One query first: the resolver answers before the clock starts.
    let probe = host
        .topo
        .ctr
        .command("dnsperf")
        .args(["-s", LINK_ADDR, "-n", "1", "-t", "2", "-d"])
        .arg(&queries)
        .output()
        .context("running dnsperf")?;
    load::parse_dnsperf(&String::from_utf8_lossy(&probe.stdout)).context("probe query")?;
    ctx.check_interrupt()?;
    let qps = load::dnsperf(&host.topo.ctr, LINK_ADDR, &queries, ctx.secs(10, 3))?;
    let mut out = vec![("dns_qps", qps)];
    heap_after(&host, &mut out);
    Ok(out)
}

/// Connections/s from the host namespace to `to`, served by a one-byte server in the
/// container namespace (also on `extra_addr`, a second backend address).
fn conn_rate(ctx: &Ctx, client: &str, server: &str, to: SocketAddr) -> Result<f64, RunError> {
    let _server = load::ByteServer::start(server, SERVER_PORT)?;
    load::wait_connectable(client, to, Duration::from_secs(30))?;
    ctx.check_interrupt()?;
    let secs = ctx.secs(10, 3);
    let r = load::connections_per_second(client, to, PARALLEL, Duration::from_secs(secs.into()))?;
    if r.failed > r.ok / 100 {
        (ctx.log)(&format!(
            "  note: {} of {} connections to {to} failed",
            r.failed,
            r.ok + r.failed
        ));
    }
    Ok(r.per_second)
}

/// `[[publish]]`: the uplink port to the container's server (issue 6).
fn publish_doc() -> Value {
    weft_doc(json!({
        "publish": [{"proto": "tcp", "host_port": PUBLISHED_PORT,
                     "container_address": CTR_ADDR, "container_port": SERVER_PORT}],
    }))
}

/// Connections/s through a published port: weft's DNAT vs nftables DNAT.
pub fn publish_cps(ctx: &Ctx, kind: Kind) -> Result<Values, RunError> {
    let doc = publish_doc();
    let mut job = single_job();
    job.publish = vec![(PUBLISHED_PORT, format!("{CTR_ADDR}:{SERVER_PORT}"))];
    let host = single_host(ctx, kind, &doc, &job)?;
    let to = SocketAddr::V4(SocketAddrV4::new(
        UPLINK_ADDR
            .parse::<Ipv4Addr>()
            .map_err(anyhow::Error::from)?,
        PUBLISHED_PORT,
    ));
    let cps = conn_rate(ctx, host.topo.host.name(), host.topo.ctr.name(), to)?;
    let mut out = vec![("publish_cps", cps)];
    heap_after(&host, &mut out);
    Ok(out)
}

/// `[[services]]`: the VIP spread over two backends by weft's Maglev LB (issue 7).
fn services_doc() -> Value {
    let backends: Vec<Value> = [CTR_ADDR, CTR2_ADDR]
        .iter()
        .map(|b| json!({"address": b, "port": SERVER_PORT}))
        .collect();
    weft_doc(json!({
        "services": [{"name": "web", "vip": VIP, "proto": "tcp", "port": SERVER_PORT,
                      "backends": backends}],
    }))
}

/// Connections/s through a service VIP with two backends, from a client container on
/// the same link: weft's Maglev LB vs IPVS (`mh`, NAT mode). The backends' replies
/// must pass the appliance to be translated back, so the backend container routes
/// even its own subnet via the gateway (no direct L2 return path to the client).
pub fn vip_cps(ctx: &Ctx, kind: Kind) -> Result<Values, RunError> {
    let backends = [CTR_ADDR, CTR2_ADDR];
    let doc = services_doc();
    let mut job = single_job();
    job.vip = Some((
        format!("{VIP}:{SERVER_PORT}"),
        backends
            .iter()
            .map(|b| format!("{b}:{SERVER_PORT}"))
            .collect(),
    ));
    let host = single_host(ctx, kind, &doc, &job)?;
    host.topo.ctr.ip(&[
        "addr",
        "add",
        &format!("{CTR2_ADDR}/16"),
        "dev",
        &host.topo.names.ctr_veth,
    ])?;
    let ctr = &host.topo.ctr;
    let veth = &host.topo.names.ctr_veth;
    ctr.sysctl("net.ipv4.conf.all.accept_redirects", "0")?;
    ctr.ip(&["route", "replace", &format!("{LINK_ADDR}/32"), "dev", veth])?;
    ctr.ip(&["route", "del", "10.81.0.0/16", "dev", veth, "src", CTR_ADDR])?;
    ctr.ip(&[
        "route",
        "replace",
        "10.81.0.0/16",
        "via",
        LINK_ADDR,
        "dev",
        veth,
    ])?;
    let client = client_container(&host)?;
    let to = SocketAddr::V4(SocketAddrV4::new(
        VIP.parse::<Ipv4Addr>().map_err(anyhow::Error::from)?,
        SERVER_PORT,
    ));
    let cps = conn_rate(ctx, client.name(), ctr.name(), to)?;
    let mut out = vec![("vip_cps", cps)];
    heap_after(&host, &mut out);
    Ok(out)
}

/// A second container on the host's link (`CLIENT_ADDR`), deleted on drop.
fn client_container(host: &Host) -> Result<Netns> {
    let n = &host.topo.names;
    let name = format!("{}-cli", n.hv_ns.trim_end_matches("-hv"));
    let ns = Netns::create(&name)?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    let hv_end = format!("{}-vc", n.hv_ns.trim_end_matches("-hv"));
    let hv = &host.topo.hv;
    hv.ip(&[
        "link", "add", &hv_end, "type", "veth", "peer", "name", "eth0", "netns", &name,
    ])?;
    hv.ip(&["link", "set", &hv_end, "master", &n.link_bridge])?;
    hv.ip(&["link", "set", &hv_end, "up"])?;
    ns.ip(&["addr", "add", &format!("{CLIENT_ADDR}/16"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["route", "add", "default", "via", LINK_ADDR])?;
    Ok(ns)
}

/// Whether VMs of `kind` with `memory` each boot, take the overlay config and pass the
/// overlay ping test (container 1 -> container 2 across two hosts over VXLAN).
pub fn serves_with(ctx: &Ctx, kind: Kind, memory: MemoryMib) -> bool {
    overlay_pair(ctx, kind, false, memory).is_ok()
}

/// The smallest `-m` (MiB) in `lo..=hi` with which `kind` serves, to within `step`
/// (binary search; `hi` must serve).
pub fn min_memory(ctx: &Ctx, kind: Kind, lo: u32, hi: u32, step: u32) -> Result<u32, RunError> {
    if !serves_with(ctx, kind, MemoryMib(hi)) {
        return Err(RunError::Failed(anyhow!(
            "does not serve even with -m {hi}M"
        )));
    }
    if serves_with(ctx, kind, MemoryMib(lo)) {
        return Ok(lo);
    }
    let (mut lo, mut hi) = (lo, hi);
    // Invariant: hi serves, lo does not.
    while hi - lo > step.max(1) {
        ctx.check_interrupt()?;
        let mid = (lo + hi) / 2;
        let ok = serves_with(ctx, kind, MemoryMib(mid));
        (ctx.log)(&format!(
            "  {} -m {mid}M: {}",
            kind.name(),
            if ok { "serves" } else { "does not" }
        ));
        if ok {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_appliance::Config;

    #[test]
    fn the_single_host_document_is_a_valid_weft_config() {
        let doc = weft_doc(json!({}));
        Config::from_json_value(&doc).unwrap();
        let with = weft_doc(json!({"publish": []}));
        assert_eq!(with["uplink"]["address"], UPLINK);
        assert!(with.get("publish").is_some());
    }

    #[test]
    fn the_dns_document_is_a_valid_weft_config() {
        let c = Config::from_json_value(&dns_doc()).unwrap();
        assert_eq!(c.containers.len(), usize::from(DNS_CONTAINERS));
    }

    #[test]
    fn the_publish_document_is_a_valid_weft_config() {
        let c = Config::from_json_value(&publish_doc()).unwrap();
        assert_eq!(c.publish.len(), 1);
    }

    #[test]
    fn the_overlay_documents_are_valid_weft_configs() {
        for sleeve in [false, true] {
            for n in [1, 2] {
                let c = Config::from_json_value(&weft_overlay_doc(n, sleeve))
                    .unwrap_or_else(|e| panic!("node {n} sleeve {sleeve}: {e}"));
                assert_eq!(c.peers.len(), 1);
            }
        }
    }
}
