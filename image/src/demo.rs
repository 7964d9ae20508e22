//! `weft demo`: what weft does, on two hosts, in one command. As root it builds two
//! hosts' worth of network namespaces, bridges, taps and veths (all named `wd-*` and
//! `wd2-*`) joined by one underlay link, starts a throwaway etcd (namespace `wd-etcd`,
//! data in the work directory) and on each host `weft agent`, which boots that host's
//! appliance and keeps the grid in etcd. Containers, the service and the published port
//! are registered through the agents' API sockets, as a user or the CNI plugin would.
//! Then it shows step by step: the grid's keys in etcd, the containers reaching each
//! other across the overlay by name (DNS), a capture of that ping decoded by tshark, a
//! service spread over both hosts through its VIP and through a published port (the
//! routing mesh), the metrics and the status. It removes everything it made, also on
//! Ctrl-C or failure (drop guards), and never touches devices outside its own
//! namespaces. A step whose outcome is wrong fails the demo.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::build::{self, Profile};
use crate::gridhost::{stop_child, AgentSpec, EtcdMember};
use crate::netns::{self, Netns, PeerAddresses, Topology, TopologyNames};
use crate::process::Signal;
use crate::qemu::{self, Accel};
use crate::status;
use weft_appliance::capture::CaptureStart;
use weft_control::capture::{self as capture_stream, Format, Writer};
use weft_control::client::Client;

/// The prefix of every name the demo creates for host A.
pub const PREFIX: &str = "wd";
/// The prefixes of both hosts (A, B).
pub const PREFIXES: [&str; 2] = [PREFIX, "wd2"];
/// The namespace of the demo's etcd.
pub const ETCD_NS: &str = "wd-etcd";
/// The environment variable every process the demo starts carries (with the demo's
/// pid as its value), so whatever is left of a run can be found.
pub const MARK: &str = "WEFT_DEMO_RUN";
/// The grid's DNS name, also its store prefix `/weft/demo/`.
const GRID: &str = "demo";
/// The service's virtual address.
const VIP: &str = "10.81.255.1";
/// etcd's address on the underlay.
const ETCD_ADDR: &str = "192.0.2.250";
/// Where the agents serve Prometheus metrics (in their hypervisor namespaces).
const METRICS_ADDR: &str = "127.0.0.1:9464";
/// How long an agent is given to boot its appliance and sync it.
const READY: Duration = Duration::from_secs(90);

/// Demo options.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub profile: Profile,
    pub accel: Accel,
    /// The `weft` binary the agents run as (`weft agent`).
    pub weft: PathBuf,
    /// Set by the Ctrl-C handler; checked between steps and while waiting.
    pub interrupted: Arc<AtomicBool>,
}

/// What a completed demo found, for whoever ran it to check.
#[derive(Clone, Debug, Default)]
pub struct DemoOutcome {
    /// The keys under `/weft/demo/` in etcd once everything was registered.
    pub etcd_keys: Vec<String>,
}

struct Steps {
    n: usize,
    interrupted: Arc<AtomicBool>,
}

impl Steps {
    fn step(&mut self, what: &str) -> Result<()> {
        self.check()?;
        self.n += 1;
        println!("\n[{}] {what}", self.n);
        Ok(())
    }

    fn check(&self) -> Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }
}

fn say(s: &str) {
    println!("    {s}");
}

/// The work directory with the sockets, node files, logs, etcd's data and the capture.
pub fn work_dir() -> PathBuf {
    std::env::temp_dir().join("weft-demo")
}

/// Where `ip netns exec` finds a namespace's own resolv.conf.
pub fn resolv_dir(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Every namespace the demo creates.
pub fn namespaces() -> Result<Vec<String>> {
    let mut all = vec![ETCD_NS.to_string()];
    for prefix in PREFIXES {
        let names = TopologyNames::new(prefix)?;
        all.extend(names.namespaces().iter().map(|s| s.to_string()));
    }
    Ok(all)
}

/// Removes namespaces left by an earlier demo that was killed hard (SIGKILL), with
/// whatever still runs in them.
fn remove_stale() -> Result<()> {
    for ns in namespaces()? {
        if netns::netns_exists(&ns) {
            say(&format!("removing namespace {ns} left by an earlier run"));
            for pid in netns::Netns::pids_of(&ns) {
                crate::process::signal(pid, Signal::SIGKILL);
            }
            let _ = netns::ip(&["netns", "del", &ns]);
        }
    }
    for prefix in PREFIXES {
        let names = TopologyNames::new(prefix)?;
        let _ = std::fs::remove_dir_all(resolv_dir(&names.ctr_ns));
    }
    Ok(())
}

/// One host of the demo: n = 1 (A) or 2 (B).
struct Host {
    n: u8,
    name: &'static str,
    container: String,
    control: PathBuf,
    api: PathBuf,
    config: PathBuf,
    serial: PathBuf,
    log: PathBuf,
}

impl Host {
    fn new(n: u8, dir: &Path) -> Host {
        Host {
            n,
            name: if n == 1 { "A" } else { "B" },
            container: format!("web-{n}"),
            control: dir.join(format!("control-{n}.sock")),
            api: dir.join(format!("api-{n}.sock")),
            config: dir.join(format!("node-{n}.toml")),
            serial: dir.join(format!("serial-{n}.log")),
            log: dir.join(format!("agent-{n}.log")),
        }
    }

    /// In this node's share of the grid subnet (`10.81.<node>.0/24`).
    fn container_address(&self) -> String {
        format!("10.81.{}.2", self.n)
    }

    fn uplink_address(&self) -> String {
        format!("192.0.2.1{}", self.n)
    }

    fn gateway(&self) -> String {
        format!("10.81.0.{}", self.n)
    }

    /// The node's own file for its agent: its addresses, the overlay network and DNS.
    /// Peers, containers, the service and the published port come from the grid.
    fn node_toml(&self) -> String {
        format!(
            "[uplink]\naddress = \"{up}/24\"\n\n[link]\naddress = \"{gw}/16\"\n\n\
             [grid]\nnode = {n}\n\n[[networks]]\nname = \"grid\"\nvni = 100\n\n\
             [dns]\ngrid = \"{GRID}\"\n",
            up = self.uplink_address(),
            gw = self.gateway(),
            n = self.n
        )
    }

    /// `weft ctl --socket API call CMD 'ARGS'`: prints it, sends it through the agent.
    fn register(&self, cmd: &str, args: Value) -> Result<Value> {
        say(&format!(
            "weft ctl --socket {} call {cmd} '{args}'",
            self.api.display()
        ));
        api_call(&self.api, cmd, Some(args)).with_context(|| format!("host {}: {cmd}", self.name))
    }
}

/// One request on an agent's API socket.
fn api_call(api: &Path, cmd: &str, args: Option<Value>) -> Result<Value> {
    let mut c = Client::connect(api, Duration::from_secs(10))?;
    c.call(cmd, args)?
        .outcome
        .map_err(|e| anyhow::anyhow!("{}", weft_control::client::remote_line(&e)))
}

pub fn run(opts: &DemoOptions) -> Result<DemoOutcome> {
    let mut steps = Steps {
        n: 0,
        interrupted: opts.interrupted.clone(),
    };
    steps.step("checking for root, QEMU and etcd")?;
    netns::require_root()?;
    if !qemu::qemu_available() {
        bail!(
            "{} not found (apt-get install qemu-system-x86)",
            qemu::QEMU_BINARY
        );
    }
    for (tool, package) in [("etcd", "etcd-server"), ("etcdctl", "etcd-client")] {
        if !on_path(tool) {
            bail!("{tool} not found (apt-get install {package})");
        }
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
    remove_stale()?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Drop order is the reverse of declaration: the agents (and their appliances)
    // stop first, then etcd, then the namespaces go, the directory last.
    let _dir_guard = RemoveDir(dir.clone());
    let hosts = [Host::new(1, &dir), Host::new(2, &dir)];

    steps.step("creating two hosts, A and B, each with a container, joined by an underlay")?;
    say("each host: a host namespace (its network), a container namespace, and the");
    say("hypervisor namespace where its agent and weft appliance run between them");
    let mut topos = Vec::new();
    let mut resolv = Vec::new();
    for (h, prefix) in hosts.iter().zip(PREFIXES) {
        let names = TopologyNames::new(prefix)?;
        let peers = PeerAddresses {
            host: format!("192.0.2.{}/24", h.n),
            ctr: format!("{}/16", h.container_address()),
            ctr_gateway: h.gateway(),
        };
        let topo = Topology::create(names, peers, &mut |s| say(&format!("host {}: {s}", h.name)))?;
        // The overlay carries the containers' frames in VXLAN: 50 bytes less MTU.
        topo.ctr
            .ip(&["link", "set", &topo.names.ctr_veth, "mtu", "1450"])?;
        // The agent reaches etcd from the hypervisor namespace, over the uplink segment.
        topo.hv.ip(&[
            "addr",
            "add",
            &format!("192.0.2.10{}/24", h.n),
            "dev",
            &topo.names.uplink_bridge,
        ])?;
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

    steps.step("starting a throwaway etcd: the grid's state lives there")?;
    let etcd_ns = Netns::create(ETCD_NS)?;
    plug_etcd(&etcd_ns, &topos[0])?;
    let etcd_dir = dir.join("etcd");
    std::fs::create_dir_all(&etcd_dir)?;
    let mut etcd = EtcdMember::new(
        etcd_ns,
        "demo",
        ETCD_ADDR,
        &format!("demo=http://{ETCD_ADDR}:2380"),
        &etcd_dir,
    );
    etcd.set_env(MARK, &std::process::id().to_string());
    etcd.start()?;
    let endpoint = etcd.client_url();
    etcd.wait_writable(&endpoint, Duration::from_secs(30))?;
    say(&format!(
        "etcd at {endpoint} (namespace {ETCD_NS}, data in {})",
        etcd_dir.display()
    ));

    steps.step("starting weft agent on each host: it boots the appliance and follows the grid")?;
    let store = format!("etcd:{endpoint}");
    let weft = &opts.weft;
    let mut agents = Vec::new();
    for (h, topo) in hosts.iter().zip(&topos) {
        std::fs::write(&h.config, h.node_toml())?;
        let spec = AgentSpec {
            weft,
            config: &h.config,
            control: &h.control,
            api: &h.api,
            store: &store,
            name: &format!("host-{}", h.name.to_lowercase()),
            image: &img.path,
            uplink_tap: &topo.names.uplink_tap,
            link_tap: &topo.names.link_tap,
            serial: &h.serial,
        };
        let log = std::fs::File::create(&h.log)?;
        let accel = opts.accel.as_str();
        let mut cmd = spec.command(&topo.hv, &["--metrics", METRICS_ADDR, "--accel", accel]);
        cmd.env(MARK, std::process::id().to_string())
            .stdout(log.try_clone()?)
            .stderr(log);
        say(&format!(
            "host {}: weft agent --config {} --store {store} --api {} --image ...",
            h.name,
            h.config.display(),
            h.api.display()
        ));
        agents.push(AgentGuard {
            child: Some(cmd.spawn().context("starting weft agent")?),
            logs: vec![h.log.clone(), h.serial.clone()],
            ok: false,
        });
    }
    for h in &hosts {
        let (st, took) = wait_synced(&steps, h)?;
        say(&format!(
            "host {}: node {} (keys under {}), appliance booted and in sync after {} s",
            h.name,
            st["node"],
            st["grid"].as_str().unwrap_or_default(),
            took.as_secs()
        ));
    }
    wait_peers(&steps, &hosts)?;
    say("each appliance has the other as its overlay peer (from the nodes in etcd)");

    steps.step("registering the containers, a service and a published port through the agents")?;
    for (h, topo) in hosts.iter().zip(&topos) {
        let mac = read_mac(&topo.ctr, &topo.names.ctr_veth)?;
        h.register(
            "container-add",
            json!({"name": h.container, "service": "web", "address": h.container_address(), "mac": mac}),
        )?;
    }
    hosts[0].register(
        "service-add",
        json!({"name": "web", "vip": VIP, "proto": "tcp", "port": 80, "target_port": 8080,
               "health": {"interval_ms": 1000, "timeout_ms": 500, "rise": 1}}),
    )?;
    hosts[0].register(
        "publish-add",
        json!({"proto": "tcp", "host_port": 8080, "container_address": VIP, "container_port": 80,
               "scope": "all"}),
    )?;
    say(&format!(
        "service web at {VIP}:80: its backends are the containers that name it, on any host"
    ));
    say("port 8080 published on every host (scope all) for service web");

    steps.step(&format!(
        "the grid in etcd (etcdctl get --prefix /weft/{GRID}/ --keys-only)"
    ))?;
    let keys = etcd_keys(&etcd, &endpoint)?;
    for k in &keys {
        say(k);
    }
    for want in [
        "nodes/1",
        "nodes/2",
        "containers/web-1",
        "containers/web-2",
        "services/web",
        "publish/tcp-8080/all",
    ] {
        let key = format!("/weft/{GRID}/{want}");
        if !keys.contains(&key) {
            bail!("{key} is not in etcd");
        }
    }
    say("both agents watch these keys and turn them into appliance commands");

    steps.step("container web-1 on host A pings web-2 on host B by name")?;
    let a = &topos[0];
    let fqdn = format!("web-2.{GRID}.kontena.local");
    let answer = dig(&a.ctr, &hosts[0].gateway(), &fqdn)?;
    say(&format!(
        "DNS: {fqdn} is {answer} (answered by appliance A, learnt from etcd)"
    ));
    if answer != hosts[1].container_address() {
        bail!("{fqdn} resolved to {answer:?}");
    }
    let out = Topology::ping(&a.ctr, "web-2", 3, 30)?;
    print_indented(&out);
    say("the ping crossed the underlay inside VXLAN (UDP 4789) between the appliances");

    steps.step("capturing that conversation inside the overlay (weft ctl capture)")?;
    say(&format!(
        "weft ctl --socket {} capture --iface overlay:grid --seconds 3 -w overlay.pcapng",
        hosts[0].api.display()
    ));
    let pcap = dir.join("overlay.pcapng");
    let mut client = Client::connect(&hosts[0].api, Duration::from_secs(10))?;
    let frames = capture_ping(&mut client, &a.ctr, &pcap)?;
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
    wait_healthy(&steps, &mut client, 2)?;
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

    steps.step(&format!(
        "metrics: the agent of host A serves http://{METRICS_ADDR}/metrics (weft ctl metrics too)"
    ))?;
    let text = scrape(&a.hv)?;
    let shown = [
        "weft_overlay_peer_tx_packets_total",
        "weft_overlay_peer_rx_packets_total",
        "weft_dns_queries_total",
        "weft_dns_local_answers_total",
        "weft_lb_backend_up",
        "weft_conntrack_flows ",
        "weft_heap_used_bytes",
        "weft_agent_store_up",
        "weft_agent_appliance_metrics_up",
    ];
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && shown.iter().any(|s| l.starts_with(s)))
        .take(18)
        .collect();
    for l in &lines {
        say(l);
    }
    say(&format!(
        "({} metric lines in all)",
        text.lines().filter(|l| !l.starts_with('#')).count()
    ));
    for (series, want) in [
        ("weft_agent_store_up", 1.0),
        ("weft_agent_appliance_metrics_up", 1.0),
    ] {
        if sample(&text, series) != Some(want) {
            bail!("{series} is not {want} in the agent's metrics");
        }
    }

    steps.step("status of appliance A (weft ctl status) and of its agent (agent-status)")?;
    let st = client.status()?;
    print_indented(&status::render_status(&st));
    let ag = api_call(&hosts[0].api, "agent-status", None)?;
    say(&format!(
        "agent: store {} ({}), grid revision {}, {} nodes, {} containers, {} services, appliance in sync: {}",
        ag["store"]["state"].as_str().unwrap_or("?"),
        ag["store"]["kind"].as_str().unwrap_or("?"),
        ag["grid_view"]["revision"],
        ag["grid_view"]["nodes"],
        ag["grid_view"]["containers"],
        ag["grid_view"]["services"],
        ag["appliance"]["in_sync"]
    ));

    steps.step("cleaning up")?;
    drop(client);
    drop(_servers);
    for mut agent in agents.drain(..) {
        agent.ok = true;
        drop(agent);
    }
    say("both agents stopped, and with them their appliances");
    drop(etcd);
    say("etcd stopped");
    drop(topos);
    drop(resolv);
    say("namespaces, bridges, taps and veths removed");
    println!("\nweft demo: done. To try it by hand (as root):");
    for l in [
        "weft build",
        "etcd --data-dir /tmp/etcd &",
        "weft agent --config examples/weft.toml --store etcd:http://127.0.0.1:2379 \\",
        "    --control /tmp/weft.sock --api /tmp/weft-api.sock --metrics 127.0.0.1:9464 \\",
        "    --image target/weft/weft.elf --uplink tap:tap0 --link tap:tap1 &",
        "weft ctl --socket /tmp/weft-api.sock call container-add '{\"name\":\"web-1\",\"address\":\"10.81.1.2\"}'",
        "weft ctl --socket /tmp/weft-api.sock status",
        "weft ctl --socket /tmp/weft-api.sock capture --iface link --count 10 -w - | tshark -r -",
        "curl http://127.0.0.1:9464/metrics",
    ] {
        say(l);
    }
    Ok(DemoOutcome { etcd_keys: keys })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// etcd's namespace, on host A's uplink segment.
fn plug_etcd(ns: &Netns, a: &Topology) -> Result<()> {
    let end = format!("{PREFIX}-ue");
    a.hv.ip(&[
        "link",
        "add",
        &end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    a.hv.ip(&["link", "set", &end, "master", &a.names.uplink_bridge])?;
    a.hv.ip(&["link", "set", &end, "up"])?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.ip(&["addr", "add", &format!("{ETCD_ADDR}/24"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])
}

fn etcd_keys(etcd: &EtcdMember, endpoint: &str) -> Result<Vec<String>> {
    let out = etcd.etcdctl(
        endpoint,
        &["get", "--prefix", "--keys-only", &format!("/weft/{GRID}/")],
    )?;
    if !out.status.success() {
        bail!("etcdctl get: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Waits until host `h`'s agent has read the grid and its appliance is in sync.
fn wait_synced(steps: &Steps, h: &Host) -> Result<(Value, Duration)> {
    let start = Instant::now();
    loop {
        steps.check()?;
        let st = api_call(&h.api, "agent-status", None).unwrap_or(Value::Null);
        if st["appliance"]["in_sync"] == true && st["store"]["state"] == "up" {
            return Ok((st, start.elapsed()));
        }
        if start.elapsed() > READY {
            bail!(
                "host {}: the agent did not sync its appliance: {st}",
                h.name
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until each appliance has the other as its peer.
fn wait_peers(steps: &Steps, hosts: &[Host; 2]) -> Result<()> {
    let start = Instant::now();
    loop {
        steps.check()?;
        let has = |h: &Host, other: u8| {
            api_call(&h.api, "status", None)
                .ok()
                .and_then(|st| st["overlay"]["peers"].as_array().cloned())
                .is_some_and(|p| p.iter().any(|p| p["node"] == u64::from(other)))
        };
        if has(&hosts[0], 2) && has(&hosts[1], 1) {
            return Ok(());
        }
        if start.elapsed() > READY {
            bail!("the appliances did not peer with each other");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_mac(ns: &Netns, ifname: &str) -> Result<String> {
    let out = ns
        .command("cat")
        .arg(format!("/sys/class/net/{ifname}/address"))
        .stdin(Stdio::null())
        .output()?;
    let mac = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if mac.is_empty() {
        bail!("no MAC address on {ifname} in {}", ns.name());
    }
    Ok(mac)
}

/// `GET /metrics` of the agent in `hv`.
fn scrape(hv: &Netns) -> Result<String> {
    let (head, body) = netns::http_get(hv, METRICS_ADDR, "/metrics")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET http://{METRICS_ADDR}/metrics: {head}");
    }
    Ok(body)
}

/// The value of the sample `series` (name with labels, as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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
fn wait_healthy(steps: &Steps, client: &mut Client, want: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        steps.check()?;
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

/// A running `weft agent` (which stops its appliance when it stops) and the logs
/// shown if the demo fails (the agent's, the appliance's serial console).
struct AgentGuard {
    child: Option<Child>,
    logs: Vec<PathBuf>,
    ok: bool,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Signal::SIGTERM, Duration::from_secs(10));
        }
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
