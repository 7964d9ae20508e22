//! Issue 19 end to end, operating weft with real tools:
//! - `weft ctl metrics` on a booted appliance passes `promtool check metrics`, and the
//!   link's packet counter moves when a container pings the gateway;
//! - `weft agent --metrics` serves the appliance's and the agent's metrics over HTTP,
//!   also accepted by promtool, with the agent's store health among them;
//! - two wefts in sleeve mode: `weft ctl capture` on the link and on `overlay:grid`
//!   (live, `-w - | tshark -r -`) show the containers' ICMP to tshark; on the uplink
//!   only sleeve datagrams (UDP 6783), no ICMP in the clear;
//! - a capture on `overlay:grid` while iperf3 runs across the overlay: iperf3
//!   completes, tshark reads every frame of the file, and the frames it holds plus the
//!   drops reported at the end are exactly the frames the network's bridge took in the
//!   meantime (its `link_rx + appliance_rx + uplink_rx` counters), so every TCP segment
//!   iperf3 sent is among them (throughput with and without the capture is printed,
//!   not asserted: docs/PERFORMANCE.md);
//! - `weft ctl capture` through the agent's API socket: tshark decodes the pinged
//!   ICMP in what it streamed, and when the client goes away (killed, or a client that
//!   just disconnects) its captures stop: the appliance's 4 capture slots are free
//!   again.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use weft_control::client::Client;
use weft_image::netns::{http_get, Netns};
use weft_image::qemu::Machine;
use weft_qemu_tests::agent::AgentHost;
use weft_qemu_tests::grid::{
    iperf3, set_ctr_mtu, two_on_underlay, weft_binary, weft_ctl, Underlay, SLEEVE_MTU, VXLAN_MTU,
};
use weft_qemu_tests::tshark::Tshark;
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

/// The packets of `capture` that match `filter`, as their `fields`.
fn tshark(capture: Tshark, filter: &str, fields: &[&str]) -> Vec<String> {
    capture
        .lines(filter, fields)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn captures_on_link_overlay_and_uplink_decode_in_tshark() {
    let test = "ops_capture";
    let (w1, w2, ul) = two_on_underlay(
        test,
        Machine::Q35,
        ["10.81.128.11/16", "10.81.128.12/16"],
        None,
    );
    set_ctr_mtu(&[&w1, &w2], SLEEVE_MTU);
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
        Tshark::file(&link_file),
        "icmp",
        &["ip.src", "ip.dst", "icmp.type"],
    );
    assert!(
        icmp.contains(&"10.81.128.11\t10.81.128.12\t8".to_string())
            && icmp.contains(&"10.81.128.12\t10.81.128.11\t0".to_string()),
        "link capture: {icmp:?}"
    );
    let frames = tshark(
        Tshark::file(&link_file),
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
    let inner = tshark(
        Tshark::bytes(&pcap),
        "icmp",
        &["ip.src", "ip.dst", "icmp.type"],
    );
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
    let sleeve = tshark(Tshark::file(uplink), "udp.dstport == 6783", &["ip.dst"]);
    assert!(
        sleeve.len() >= 2,
        "sleeve datagrams on the uplink: {sleeve:?}"
    );
    assert!(
        tshark(Tshark::file(uplink), "icmp", &["ip.src"]).is_empty(),
        "ICMP in the clear on the uplink"
    );
    drop(ul);
}

/// The sum of every sample of the family `name` in `text`.
fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let family = series.split('{').next()?;
            (family == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The counters of the overlay network's frames on the node that count exactly what
/// an `overlay:` capture is offered: every frame entering the network's bridge, from
/// its containers (`link_rx`), from the appliance itself (`appliance_rx`), and
/// decapsulated from peers (`uplink_rx`). (`appliance_tx`, frames the bridge hands to
/// the appliance, and `flooded` are printed beside them: this test registers no
/// container of the other node, so its frames are unknown unicast, flooded to the
/// peers and the appliance.)
const BRIDGE_RX: [&str; 3] = [
    "weft_overlay_network_link_rx_total",
    "weft_overlay_network_appliance_rx_total",
    "weft_overlay_network_uplink_rx_total",
];

/// Each of `BRIDGE_RX` on the node, in that order, then `appliance_tx` and `flooded`
/// (printed only).
fn bridge_rx(vm: &TestVm) -> [u64; 5] {
    let text = ctl_metrics(vm);
    let [a, b, c] = BRIDGE_RX.map(|f| family_sum(&text, f) as u64);
    let tx = family_sum(&text, "weft_overlay_network_appliance_tx_total") as u64;
    let flooded = family_sum(&text, "weft_overlay_network_flooded_total") as u64;
    [a, b, c, tx, flooded]
}

/// `(frames, dropped)` from the summary `weft ctl capture` prints at the end
/// (`... N frames, B bytes, D dropped`).
fn summary_counts(summary: &str) -> (u64, u64) {
    let line = summary
        .lines()
        .find(|l| l.contains("capture ended"))
        .unwrap_or_else(|| panic!("no summary in {summary:?}"));
    let number_before = |word: &str| -> u64 {
        let head = line.split(word).next().unwrap().trim_end();
        head.rsplit([' ', ':']).next().unwrap().parse().unwrap()
    };
    (number_before(" frames"), number_before(" dropped"))
}

fn vxlan_config(vm: &TestVm, n: u8, other: u8) -> std::path::PathBuf {
    let text = format!(
        "[uplink]\naddress = \"192.0.2.1{n}/24\"\n\n[link]\naddress = \"10.81.0.{n}/16\"\n\n\
         [grid]\nnode = {n}\n\n[[networks]]\nname = \"grid\"\nvni = 100\n\n\
         [[peers]]\nnode = {other}\naddress = \"192.0.2.1{other}\"\nnetworks = [\"grid\"]\n"
    );
    let path = vm.dir.join(format!("node-{n}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// iperf3 runs of this many seconds, alternating without and with a capture.
const IPERF_SECS: u32 = 3;
const ROUNDS: usize = 2;
/// The capture's time limit: iperf3's run, its server start and connect, and its
/// connections' close, all inside.
const CAPTURE_SECS: u32 = IPERF_SECS + 9;

#[test]
fn capture_under_iperf3_accounts_for_every_frame() {
    let test = "ops_capture_load";
    let (w1, w2, ul) = two_on_underlay(
        test,
        Machine::Q35,
        ["10.81.128.11/16", "10.81.128.12/16"],
        None,
    );
    for (vm, n, o) in [(&w1, 1, 2), (&w2, 2, 1)] {
        set_ctr_mtu(&[vm], VXLAN_MTU);
        let file = vxlan_config(vm, n, o);
        let (code, out, err) = weft_ctl(&vm.control, &["apply", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {out}{err}", vm.test);
    }
    w1.ping(w1.ctr(), "10.81.128.12", 2)
        .expect("weft 1 -> weft 2 over the overlay");

    let mut plain = Vec::new();
    let mut captured = Vec::new();
    for round in 0..ROUNDS {
        let run = iperf3(w2.ctr(), w1.ctr(), "10.81.128.12", IPERF_SECS, false)
            .unwrap_or_else(|e| panic!("iperf3 without a capture: {e:#}"));
        plain.push(run.mbit_per_s);
        // The last connection's close has crossed before the counters are read.
        std::thread::sleep(Duration::from_millis(500));

        let file = w1.dir.join(format!("load-{round}.pcapng"));
        let before = bridge_rx(&w1);
        let capture = CaptureRun::start(
            &w1.control,
            &[
                "--iface",
                "overlay:grid",
                "--seconds",
                &CAPTURE_SECS.to_string(),
            ],
            file.to_str().unwrap(),
        );
        let started = Instant::now();
        let run = iperf3(w2.ctr(), w1.ctr(), "10.81.128.12", IPERF_SECS, false)
            .unwrap_or_else(|e| panic!("iperf3 with a capture running: {e:#}"));
        let iperf_done = started.elapsed();
        captured.push(run.mbit_per_s);
        let (_, summary) = capture.finish(Duration::from_secs(60));
        let after = bridge_rx(&w1);
        let (frames, dropped) = summary_counts(&summary);
        let moved: Vec<u64> = (0..5).map(|i| after[i] - before[i]).collect();
        let offered: u64 = moved[..3].iter().sum();
        let in_file = tshark(Tshark::file(&file), "frame", &["frame.number"]).len();
        let tcp = tshark(Tshark::file(&file), "tcp.port == 5201", &["frame.number"]).len();
        eprintln!(
            "round {round}: iperf3 {:.1} Mbit/s alone, {:.1} Mbit/s with the capture; \
             the bridge took {offered} frames (link {}, appliance {}, peers {}; it handed \
             {} to the appliance and flooded {}), the capture {frames} (tshark reads {in_file}, {tcp} of \
             iperf3's TCP) and dropped {dropped}; iperf3 ended {iperf_done:.1?} into the \
             capture",
            plain[round], captured[round], moved[0], moved[1], moved[2], moved[3], moved[4]
        );
        assert!(
            iperf_done < Duration::from_secs(u64::from(CAPTURE_SECS) - 1),
            "iperf3 ran {iperf_done:?}, past most of the capture's {CAPTURE_SECS} s: \
             the accounting below needs it inside"
        );
        assert_eq!(
            in_file as u64, frames,
            "tshark reads every frame of the file"
        );
        assert!(
            tcp as u64 * 2 > frames,
            "the capture holds iperf3's traffic: {tcp} of {frames}"
        );
        // Every frame that entered the bridge while the capture ran is in the file or
        // counted as dropped, and none is counted twice. (The counters were read
        // before the capture started and after it ended; iperf3 ran inside, and
        // nothing else crosses the network in between.)
        assert_eq!(
            frames + dropped,
            offered,
            "captured {frames} + dropped {dropped}, but the bridge took {offered} frames \
             ({BRIDGE_RX:?}: {:?})",
            &moved[..3]
        );
        // And so every TCP segment iperf3 sent (at most 1448 payload bytes each; the
        // overlay's MTU allows fewer) is among them.
        let segments = run.sent_bytes / 1448;
        assert!(
            frames + dropped >= segments,
            "captured {frames} + dropped {dropped} < the {segments} segments iperf3 sent"
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "iperf3 over the overlay, {ROUNDS} alternating runs of {IPERF_SECS} s: {:.1} Mbit/s alone \
         ({plain:.1?}), {:.1} Mbit/s with a capture on overlay:grid ({captured:.1?}): {:.0} %",
        mean(&plain),
        mean(&captured),
        100.0 * mean(&captured) / mean(&plain)
    );
    drop(ul);
}

/// What `weft ctl capture ... -w -` streams, collected as it comes.
fn collect_stdout(run: &mut CaptureRun) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut out = run.child.stdout.take().unwrap();
    let sink = bytes.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = out.read(&mut b) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    bytes
}

/// Starts captures on the link through `client` until one is refused: how many ran.
fn start_until_busy(client: &mut Client) -> (usize, String) {
    for n in 0..8 {
        let r = client
            .call("capture-start", Some(json!({"iface": "link"})))
            .expect("capture-start");
        if let Err(e) = r.outcome {
            return (n, weft_control::client::remote_line(&e));
        }
    }
    (8, String::new())
}

#[test]
fn capture_through_the_agent_api_streams_and_stops_with_its_client() {
    let test = "ops_capture_api";
    let mut ul = Underlay::create().expect("underlay");
    let node = "[uplink]\naddress = \"192.0.2.11/24\"\n\n[link]\naddress = \"10.81.0.1/16\"\n\n[grid]\n\n[[networks]]\nname = \"grid\"\nvni = 100\n";
    let mut h = AgentHost::create(test, 1, &mut ul, node).expect("host");
    let store = format!("file:{}", h.dir.join("grid.json").display());
    h.start_agent(&store, &[]).expect("agent");
    let (st, _) = h.wait_for("agent-status", Duration::from_secs(120), |s| {
        s["appliance"]["in_sync"] == true
    });
    assert_eq!(st["appliance"]["in_sync"], true, "{st}\n{}", h.agent_log());

    // A live capture on the link through the agent, as a user runs it.
    let mut run = CaptureRun::start(h.api_path(), &["--iface", "link", "--seconds", "300"], "-");
    let streamed = collect_stdout(&mut run);
    weft_image::netns::Topology::ping(&h.topo.ctr, "10.81.0.1", 3, 30).expect("ping");

    // The appliance holds 4 captures at most: with the CLI's running, another client
    // gets 3 before `busy`. That client then just disconnects.
    let mut other = Client::connect(h.api_path(), Duration::from_secs(10)).expect("API");
    let (started, refusal) = start_until_busy(&mut other);
    assert_eq!(started, 3, "captures beside the CLI's: {refusal}");
    assert!(refusal.contains("busy"), "{refusal}");
    drop(other);

    // What arrived so far is flushed chunk by chunk; then the CLI is killed outright.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = run.child.kill();
    let _ = run.child.wait();
    let pcap = streamed.lock().unwrap().clone();
    let icmp = tshark(
        Tshark::bytes(&pcap),
        "icmp",
        &["ip.src", "ip.dst", "icmp.type"],
    );
    assert!(
        icmp.contains(&"10.81.1.2\t10.81.0.1\t8".to_string())
            && icmp.contains(&"10.81.0.1\t10.81.1.2\t0".to_string()),
        "the capture through the agent: {icmp:?}"
    );

    // Both clients are gone: all 4 slots come free (the agent stops a departed
    // client's captures on the appliance).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = Client::connect(h.api_path(), Duration::from_secs(10)).expect("API");
        let (n, refusal) = start_until_busy(&mut c);
        if n == 4 {
            assert!(refusal.contains("busy"), "{refusal}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "captures of departed clients still run: only {n} free ({refusal})\n{}",
            h.agent_log()
        );
        drop(c);
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(h);
}
