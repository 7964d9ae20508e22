//! Issue 19 end to end, operating weft with real tools:
//! - `weft ctl metrics` on a booted appliance passes `promtool check metrics`, and the
//!   link's packet counter moves when a container pings the gateway;
//! - `weft agent --metrics` serves the appliance's and the agent's metrics over HTTP,
//!   also accepted by promtool, with the agent's store health among them;
//! - two wefts in sleeve mode: `weft ctl capture` on the link and on `overlay:grid`
//!   (live, `-w - | tshark -r -`) show the containers' ICMP to tshark; on the uplink
//!   only sleeve datagrams (UDP 6783), no ICMP in the clear.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_image::netns::{http_get, Netns};
use weft_qemu_tests::agent::AgentHost;
use weft_qemu_tests::grid::{boot_two, weft_binary, weft_ctl, Underlay};
use weft_qemu_tests::{TestVm, LINK_ADDR};

/// `promtool check metrics` on `text` (its standard input): Ok, or what it said.
fn promtool(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, see .ci/install)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The value of the sample `series` (name with labels, as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn ctl_metrics(vm: &TestVm) -> String {
    let (code, out, err) = weft_ctl(&vm.control, &["metrics"]);
    assert_eq!(code, 0, "{}: weft ctl metrics: {err}", vm.test);
    out
}

const LINK_RX: &str = "weft_nic_rx_packets_total{nic=\"link\"}";

#[test]
fn ctl_metrics_pass_promtool_and_move_under_traffic() {
    let vm = TestVm::boot("ops_metrics");
    vm.apply_default();
    let before = ctl_metrics(&vm);
    promtool(&before).unwrap_or_else(|e| panic!("promtool on weft ctl metrics: {e}\n{before}"));
    for family in [
        "# TYPE weft_uptime_seconds gauge",
        "# TYPE weft_nic_rx_packets_total counter",
        "# TYPE weft_heap_used_bytes gauge",
        "# HELP weft_nic_drops_total ",
    ] {
        assert!(before.contains(family), "no {family:?} in\n{before}");
    }
    let rx0 = sample(&before, LINK_RX).unwrap_or_else(|| panic!("no {LINK_RX} in\n{before}"));
    vm.ping(vm.ctr(), LINK_ADDR, 5).expect("ping the gateway");
    let after = ctl_metrics(&vm);
    promtool(&after).unwrap_or_else(|e| panic!("promtool after traffic: {e}\n{after}"));
    let rx1 = sample(&after, LINK_RX).unwrap();
    assert!(rx1 >= rx0 + 5.0, "{LINK_RX}: {rx0} -> {rx1} after 5 pings");
}

/// `GET /metrics` from inside `ns` (where the agent listens).
fn scrape(ns: &Netns, addr: &str) -> Result<String, String> {
    let (head, body) = http_get(ns, addr, "/metrics").map_err(|e| format!("{e:#}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head);
    }
    if !head
        .to_ascii_lowercase()
        .contains("content-type: text/plain; version=0.0.4")
    {
        return Err(format!("content type: {head}"));
    }
    Ok(body)
}

#[test]
fn agent_serves_metrics_over_http_that_pass_promtool() {
    let test = "ops_agent_metrics";
    let mut ul = Underlay::create().expect("underlay");
    let node = "[uplink]\naddress = \"192.0.2.11/24\"\n\n[link]\naddress = \"10.81.0.1/16\"\n\n[grid]\n\n[[networks]]\nname = \"grid\"\nvni = 100\n";
    let mut h = AgentHost::create(test, 1, &mut ul, node).expect("host");
    let store = format!("file:{}", h.dir.join("grid.json").display());
    let addr = "127.0.0.1:9464";
    h.start_agent(&store, &["--metrics", addr]).expect("agent");
    let (st, _) = h.wait_for("agent-status", Duration::from_secs(120), |s| {
        s["appliance"]["in_sync"] == true
    });
    assert_eq!(st["appliance"]["in_sync"], true, "{st}\n{}", h.agent_log());
    let first = scrape(&h.topo.hv, addr).unwrap_or_else(|e| panic!("{e}\n{}", h.agent_log()));
    promtool(&first).unwrap_or_else(|e| panic!("promtool on the agent's /metrics: {e}\n{first}"));
    assert_eq!(sample(&first, "weft_agent_store_up"), Some(1.0), "{first}");
    assert_eq!(
        sample(&first, "weft_agent_appliance_metrics_up"),
        Some(1.0),
        "{first}"
    );
    let rx0 = sample(&first, LINK_RX).unwrap_or_else(|| panic!("no {LINK_RX} in\n{first}"));
    weft_image::netns::Topology::ping(&h.topo.ctr, "10.81.0.1", 5, 30).expect("ping");
    let second = scrape(&h.topo.hv, addr).unwrap();
    let rx1 = sample(&second, LINK_RX).unwrap();
    assert!(rx1 >= rx0 + 5.0, "{LINK_RX}: {rx0} -> {rx1}");
    // Anything but GET /metrics is refused.
    let (other, _) = http_get(&h.topo.hv, addr, "/other").unwrap();
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    drop(h);
}

const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn sleeve_config(vm: &TestVm, n: u8, other: u8) -> std::path::PathBuf {
    let text = format!(
        "[uplink]\naddress = \"192.0.2.1{n}/24\"\n\n[link]\naddress = \"10.81.0.{n}/16\"\n\n\
         [grid]\nnode = {n}\nsecret = \"{SECRET}\"\n\n\
         [[networks]]\nname = \"grid\"\nvni = 100\nmode = \"sleeve\"\n\n\
         [[peers]]\nnode = {other}\naddress = \"192.0.2.1{other}\"\nnetworks = [\"grid\"]\n"
    );
    let path = vm.dir.join(format!("node-{n}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `weft ctl capture` writing to `file` (or `-`: its standard output piped), started
/// and announced (its "capturing on" line read) before it returns.
struct CaptureRun {
    child: Child,
}

impl CaptureRun {
    fn start(socket: &Path, args: &[&str], out: &str) -> CaptureRun {
        let mut child = Command::new(weft_binary())
            .arg("ctl")
            .arg("--socket")
            .arg(socket)
            .arg("capture")
            .args(args)
            .args(["-w", out])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("weft ctl capture");
        let mut err = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut b = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("capturing on") {
            match err.read(&mut b) {
                Ok(1) => seen.push(b[0]),
                _ => panic!(
                    "weft ctl capture did not start: {}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        // The rest of standard error (the summary) is read at the end.
        child.stderr = Some(err);
        CaptureRun { child }
    }

    /// Waits for the capture to end by itself: (standard output, standard error).
    fn finish(mut self, within: Duration) -> (Vec<u8>, String) {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        let mut stdout = self.child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let _ = stdout.read_to_end(&mut out);
            out
        });
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                assert!(st.success(), "weft ctl capture: {st}: {err}");
                return (reader.join().unwrap(), err);
            }
            assert!(Instant::now() < deadline, "the capture did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for CaptureRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tshark -r FILE -T fields -e ...` (FILE `-`: `input` on its standard input).
fn tshark(file: &str, input: Option<&[u8]>, filter: &str, fields: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("tshark");
    cmd.args(["-r", file, "-Y", filter, "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tshark");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(bytes) = input {
        stdin.write_all(bytes).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tshark -r {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn captures_on_link_overlay_and_uplink_decode_in_tshark() {
    let test = "ops_capture";
    let (w1, w2) = boot_two(test, "10.81.128.11/16", "10.81.128.12/16");
    let mut ul = Underlay::create().expect("underlay");
    ul.join(&w1).expect("join node 1");
    ul.join(&w2).expect("join node 2");
    for vm in [&w1, &w2] {
        vm.ctr()
            .ip(&["link", "set", &vm.topo.names.ctr_veth, "mtu", "1408"])
            .unwrap();
    }
    for (vm, n, o) in [(&w1, 1, 2), (&w2, 2, 1)] {
        let file = sleeve_config(vm, n, o);
        let (code, out, err) = weft_ctl(&vm.control, &["apply", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {out}{err}", vm.test);
    }
    // The path is up (neighbours resolved) before the captures start.
    w1.ping(w1.ctr(), "10.81.128.12", 2)
        .expect("weft 1 -> weft 2 over sleeve");

    // The link, to a file (pcapng, the default); the overlay live to tshark; the
    // uplink as classic pcap. Each runs 6 s (a count could be filled by ARP or IPv6
    // chatter before the echoes). One capture per connection: the control socket serves
    // one client at a time, so they run one after the other.
    let link_file = w1.dir.join("link.pcapng");
    let run = CaptureRun::start(
        &w1.control,
        &["--iface", "link", "--seconds", "6"],
        link_file.to_str().unwrap(),
    );
    w1.ping(w1.ctr(), "10.81.128.12", 3)
        .expect("ping during the link capture");
    let (_, summary) = run.finish(Duration::from_secs(90));
    assert!(
        summary.contains("(seconds)") && summary.contains(" 0 dropped"),
        "{summary}"
    );
    let icmp = tshark(
        link_file.to_str().unwrap(),
        None,
        "icmp",
        &["ip.src", "ip.dst", "icmp.type"],
    );
    assert!(
        icmp.contains(&"10.81.128.11\t10.81.128.12\t8".to_string())
            && icmp.contains(&"10.81.128.12\t10.81.128.11\t0".to_string()),
        "link capture: {icmp:?}"
    );
    let frames = tshark(
        link_file.to_str().unwrap(),
        None,
        "frame",
        &["frame.interface_name", "frame.time_relative"],
    );
    for f in &frames {
        let (name, t) = f.split_once('\t').unwrap();
        assert_eq!(name, "link", "{frames:?}");
        // The capture ran 6 s: timestamps in their real unit.
        let t: f64 = t.parse().unwrap();
        assert!((0.0..10.0).contains(&t), "{frames:?}");
    }

    let run = CaptureRun::start(
        &w1.control,
        &["--iface", "overlay:grid", "--seconds", "6"],
        "-",
    );
    w1.ping(w1.ctr(), "10.81.128.12", 2)
        .expect("ping during the overlay capture");
    let (pcap, summary) = run.finish(Duration::from_secs(90));
    assert!(summary.contains("(seconds)"), "{summary}");
    let inner = tshark("-", Some(&pcap), "icmp", &["ip.src", "ip.dst", "icmp.type"]);
    assert!(
        inner.contains(&"10.81.128.11\t10.81.128.12\t8".to_string())
            && inner.contains(&"10.81.128.12\t10.81.128.11\t0".to_string()),
        "overlay capture (the inner frames): {inner:?}"
    );

    let uplink_file = w1.dir.join("uplink.pcap");
    let run = CaptureRun::start(
        &w1.control,
        &[
            "--iface",
            "uplink",
            "--count",
            "4",
            "--seconds",
            "60",
            "--format",
            "pcap",
        ],
        uplink_file.to_str().unwrap(),
    );
    w1.ping(w1.ctr(), "10.81.128.12", 2)
        .expect("ping during the uplink capture");
    run.finish(Duration::from_secs(90));
    let uplink = uplink_file.to_str().unwrap();
    let sleeve = tshark(uplink, None, "udp.dstport == 6783", &["ip.dst"]);
    assert!(
        sleeve.len() >= 2,
        "sleeve datagrams on the uplink: {sleeve:?}"
    );
    assert!(
        tshark(uplink, None, "icmp", &["ip.src"]).is_empty(),
        "ICMP in the clear on the uplink"
    );
    drop(ul);
}
