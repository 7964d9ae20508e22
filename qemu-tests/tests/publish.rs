//! Issue 6 end to end in one booted appliance: ports published on the uplink address
//! reach a server in the container namespace with the client's real address (TCP and
//! UDP, with socat), containers reach a server in the uplink-side namespace as the
//! uplink address with distinct masquerade ports, hairpin to the host's own published
//! port, refused runtime publishes that change nothing, (issue 7) a service VIP
//! answered by proxy ARP and translated to its backend, ICMP port unreachable
//! translated back both ways, TTL exceeded answered by the gateway, and a full flow
//! table: new connections refused and counted while established ones carry data, and
//! room again once those close.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::json;
use weft_appliance::publish::NatSection;
use weft_control::document::{self, Document};
use weft_image::netns::Netns;
use weft_qemu_tests::socat::Socat;
use weft_qemu_tests::{TestVm, LINK_ADDR, UPLINK_ADDR};

const CTR_ADDR: &str = "10.81.128.2";
const HOST_ADDR: &str = "192.0.2.1";

/// Runs `socat` as a client in `ns` with `input` on stdin; its stdout, trimmed.
fn socat(ns: &Netns, input: &str, target: &str) -> String {
    let mut c: Command = ns.command("socat");
    // -t 5: after stdin's EOF socat half-closes and by default waits only 0.5 s for
    // the answer, which an emulated (TCG) path under load can exceed.
    c.args(["-t", "5", "-T", "5", "-", target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("socat client starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().expect("socat client ends");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `socat` as a client in `ns` with `input` on stdin; its stderr (where socat
/// reports an error such as "Connection refused").
fn socat_error(ns: &Netns, input: &str, target: &str) -> String {
    let mut child = ns
        .command("socat")
        .args(["-T", "5", "-", target])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("socat client starts");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(input.as_bytes());
        // stdin stays open until here: socat waits for the answer or the error.
        std::thread::sleep(Duration::from_secs(3));
    }
    let out = child.wait_with_output().expect("socat client ends");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A long-lived TCP client: lines written to it come back from an echo server.
struct Stream {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Stream {
    fn open(ns: &Netns, target: &str) -> Stream {
        let mut child = ns
            .command("socat")
            .args(["-", target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat stream starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Stream {
            child,
            stdin,
            lines,
        }
    }

    /// Sends `line` and waits (up to 30 s) for its echo; false if none came.
    fn echo(&mut self, line: &str) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        if writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .is_err()
        {
            return false;
        }
        matches!(self.lines.recv_timeout(Duration::from_secs(30)), Ok(l) if l == line)
    }

    /// Closes our side (FIN) and waits for socat to finish the close.
    fn close(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries `f` until it returns a non-empty answer (the server may still be starting,
/// ARP still resolving), for up to 20 s.
fn until_answer(f: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = f();
        if !out.is_empty() || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn published_ports_masquerade_and_hairpin() {
    let vm = TestVm::boot("publish");
    let mut cfg = document::default_config();
    cfg.publish = serde_json::from_value(json!([
        {"proto": "tcp", "host_port": 8080, "container_address": CTR_ADDR, "container_port": 8080},
        {"proto": "udp", "host_port": 5353, "container_address": CTR_ADDR, "container_port": 5353},
    ]))
    .unwrap();
    let mut c = vm.client();
    assert!(
        c.apply(&Document::from_config(&cfg).unwrap())
            .unwrap()
            .changed
    );
    drop(c);
    vm.assert_pings();

    // Servers that answer with the address (and port) they see.
    let _tcp = Socat::start(
        vm.ctr(),
        &[
            "TCP-LISTEN:8080,fork,reuseaddr",
            "SYSTEM:echo $SOCAT_PEERADDR",
        ],
    );
    // The handler reads the datagram before it answers: a shell that exits without
    // reading makes socat's write of the datagram fail (EPIPE), and socat then drops
    // the answer, about every second time.
    let _udp = Socat::start(
        vm.ctr(),
        &[
            "UDP-RECVFROM:5353,fork",
            "SYSTEM:read -r line; echo $SOCAT_PEERADDR",
        ],
    );
    let _outside = Socat::start(
        vm.host(),
        &[
            "TCP-LISTEN:9090,fork,reuseaddr,backlog=128",
            "SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT",
        ],
    );

    // 1. TCP published port: the container sees the client's real address.
    let target = format!("TCP:{UPLINK_ADDR}:8080");
    let seen = until_answer(|| socat(vm.host(), "", &target));
    assert_eq!(seen, HOST_ADDR, "TCP via the published port");

    // 2. UDP published port, both ways.
    let target = format!("UDP:{UPLINK_ADDR}:5353");
    let seen = until_answer(|| socat(vm.host(), "hello\n", &target));
    assert_eq!(seen, HOST_ADDR, "UDP via the published port");

    // 3. Masquerade: the outside server sees the uplink address; 50 parallel
    // connections get 50 distinct ports from 32768-60999.
    let target = format!("TCP:{HOST_ADDR}:9090");
    let first = until_answer(|| socat(vm.ctr(), "", &target));
    assert!(
        first.starts_with(&format!("{UPLINK_ADDR} ")),
        "egress seen as {first:?}"
    );
    let seen: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| s.spawn(|| socat(vm.ctr(), "", &target)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ports = Vec::new();
    for line in &seen {
        let (addr, port) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("egress answer {line:?} (all: {seen:?})"));
        assert_eq!(addr, UPLINK_ADDR);
        let port: u16 = port.parse().unwrap();
        assert!((32768..=60999).contains(&port), "masquerade port {port}");
        ports.push(port);
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 50, "distinct masquerade ports: {seen:?}");

    // 4. Hairpin: the container reaches its own published port on the host address;
    // the server sees the node address (so the reply comes back through the NAT).
    let target = format!("TCP:{UPLINK_ADDR}:8080");
    let seen = until_answer(|| socat(vm.ctr(), "", &target));
    assert_eq!(seen, LINK_ADDR, "hairpin");

    // 5. A service VIP in the container subnet (issue 7): proxy ARP and DNAT to its
    // backend, here the container's own server.
    let mut c = vm.client();
    let reply = c
        .call(
            "service-add",
            Some(
                json!({"name": "web", "vip": "10.81.255.1", "proto": "tcp", "port": 80,
                "backends": [{"address": CTR_ADDR, "port": 8080}]}),
            ),
        )
        .unwrap();
    assert!(reply.outcome.is_ok(), "{:?}", reply.raw);
    drop(c);
    let seen = until_answer(|| socat(vm.ctr(), "", "TCP:10.81.255.1:80"));
    // The backend sees the node address (the NAT's source for service traffic from
    // the grid), so its reply comes back through the appliance.
    assert_eq!(seen, LINK_ADDR, "through the VIP");

    // 6. Refused publishes name the field and change nothing.
    let mut c = vm.client();
    let before = c.config().unwrap();
    let reply = c
        .call(
            "publish-add",
            Some(json!({"proto": "udp", "host_port": 53, "container_address": CTR_ADDR, "container_port": 53})),
        )
        .unwrap();
    let err = reply.outcome.expect_err("port 53 is refused");
    assert_eq!(err.field.as_deref(), Some("host_port"), "{err:?}");
    let reply = c
        .call(
            "publish-add",
            Some(json!({"proto": "tcp", "host_port": 8080, "container_address": "10.81.128.9", "container_port": 80})),
        )
        .unwrap();
    let err = reply.outcome.expect_err("a duplicate is refused");
    assert_eq!(err.field.as_deref(), Some("host_port"), "{err:?}");
    assert_eq!(c.config().unwrap(), before);

    // Runtime add and remove take effect.
    let reply = c
        .call(
            "publish-add",
            Some(json!({"proto": "tcp", "host_port": 8081, "container_address": CTR_ADDR, "container_port": 8080})),
        )
        .unwrap();
    assert!(reply.outcome.is_ok(), "{:?}", reply.raw);
    drop(c);
    let target = format!("TCP:{UPLINK_ADDR}:8081");
    assert_eq!(until_answer(|| socat(vm.host(), "", &target)), HOST_ADDR);
    let mut c = vm.client();
    let reply = c
        .call(
            "publish-remove",
            Some(json!({"proto": "tcp", "host_port": 8081})),
        )
        .unwrap();
    assert!(reply.outcome.is_ok(), "{:?}", reply.raw);
    let flows = c
        .call("flows", Some(json!({"limit": 500, "proto": "tcp"})))
        .unwrap();
    let flows = flows.outcome.expect("flows");
    assert!(!flows.as_array().unwrap().is_empty(), "{flows}");
    drop(c);
    assert_eq!(socat(vm.host(), "", &target), "", "removed port still open");

    let st = vm.status();
    let nat = st.nat.expect("nat status");
    assert!(nat.dnat_flows >= 3, "{nat:?}");
    assert!(nat.snat_flows >= 51, "{nat:?}");
    assert!(nat.hairpin_flows >= 1, "{nat:?}");
    assert!(nat.router.forwarded > 0, "{nat:?}");

    // 7. ICMP errors translated back to the inside flow. Masquerade: UDP to a closed
    // port of the outside namespace; its kernel answers port unreachable to the
    // uplink address and masquerade port, and the container's connected socket
    // hears "Connection refused" only if the quoted header names its own address
    // and port again.
    let err = socat_error(vm.ctr(), "anyone?\n", &format!("UDP:{HOST_ADDR}:9999"));
    assert!(err.contains("Connection refused"), "masquerade: {err:?}");
    // Published: a port nobody listens on in the container; the outside client's
    // socket hears the container's port unreachable as coming from the host address
    // and published port.
    let mut c = vm.client();
    let reply = c
        .call(
            "publish-add",
            Some(json!({"proto": "udp", "host_port": 5354, "container_address": CTR_ADDR, "container_port": 5354})),
        )
        .unwrap();
    assert!(reply.outcome.is_ok(), "{:?}", reply.raw);
    drop(c);
    let err = socat_error(vm.host(), "anyone?\n", &format!("UDP:{UPLINK_ADDR}:5354"));
    assert!(err.contains("Connection refused"), "published: {err:?}");
    let nat = vm.status().nat.expect("nat status");
    assert!(nat.icmp_errors_translated >= 2, "{nat:?}");

    // 8. TTL exceeded: ping with TTL 1 through the gateway hears it from the gateway.
    let out = vm
        .ctr()
        .command("ping")
        .args(["-n", "-c", "1", "-W", "5", "-t", "1", HOST_ADDR])
        .output()
        .expect("ping runs");
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.contains(&format!("From {LINK_ADDR}")) && out.contains("Time to live exceeded"),
        "ping -t 1: {out}"
    );
    let nat = vm.status().nat.expect("nat status");
    assert!(nat.router.ttl_expired >= 1, "{nat:?}");
    assert!(nat.router.time_exceeded_sent >= 1, "{nat:?}");

    // 9. A full table. A new capacity is a new (empty) table of 16 flows: 8 streams in
    // through a published echo port and 8 out through masquerade fill it.
    cfg.nat = Some(NatSection {
        capacity: 16,
        ..NatSection::default()
    });
    cfg.publish.push(
        serde_json::from_value(json!(
            {"proto": "tcp", "host_port": 7000, "container_address": CTR_ADDR, "container_port": 7000}
        ))
        .unwrap(),
    );
    let mut c = vm.client();
    assert!(
        c.apply(&Document::from_config(&cfg).unwrap())
            .unwrap()
            .changed
    );
    drop(c);
    let _echo_in = Socat::start(vm.ctr(), &["TCP-LISTEN:7000,fork,reuseaddr", "PIPE"]);
    let _echo_out = Socat::start(vm.host(), &["TCP-LISTEN:7001,fork,reuseaddr", "PIPE"]);
    let inbound = format!("TCP:{UPLINK_ADDR}:7000");
    let outbound = format!("TCP:{HOST_ADDR}:7001");
    // The servers may still be starting: the first stream of each kind retries.
    let first = |ns: &Netns, target: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut s = Stream::open(ns, target);
            if s.echo("first") {
                return s;
            }
            assert!(Instant::now() < deadline, "no echo from {target}");
            drop(s);
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let mut streams = vec![first(vm.host(), &inbound), first(vm.ctr(), &outbound)];
    for i in 0..7 {
        for (ns, target) in [(vm.host(), &inbound), (vm.ctr(), &outbound)] {
            let mut s = Stream::open(ns, target);
            assert!(s.echo(&format!("hello {i}")), "stream {i} to {target}");
            streams.push(s);
        }
    }
    let nat = vm.status().nat.expect("nat status");
    assert_eq!(nat.table_size, 16, "{nat:?}");
    assert_eq!(nat.table_capacity, 16, "{nat:?}");
    // New connections either way fail, and are counted by reason.
    // (The SYNs are dropped: socat gives up after its connect timeout.)
    let timed = |t: &str| format!("{t},connect-timeout=8");
    assert_eq!(
        socat(vm.host(), "new\n", &timed(&inbound)),
        "",
        "inbound, full table"
    );
    assert_eq!(
        socat(vm.ctr(), "new\n", &timed(&outbound)),
        "",
        "outbound, full table"
    );
    let nat = vm.status().nat.expect("nat status");
    assert!(
        nat.drops["table_full"].as_u64().unwrap_or(0) >= 2,
        "{nat:?}"
    );
    assert!(
        nat.conntrack["refused_full"].as_u64().unwrap_or(0) >= 2,
        "{nat:?}"
    );
    // The established streams still carry data both ways.
    for (i, s) in streams.iter_mut().enumerate() {
        assert!(
            s.echo(&format!("still here {i}")),
            "stream {i} after the refusals"
        );
    }
    // Once they close, their flows make room (closed ones go first): new connections
    // work again, in and out.
    for s in streams {
        s.close();
    }
    assert_eq!(
        until_answer(|| socat(vm.host(), "again\n", &inbound)),
        "again"
    );
    assert_eq!(
        until_answer(|| socat(vm.ctr(), "again\n", &outbound)),
        "again"
    );
    let nat = vm.status().nat.expect("nat status");
    assert!(
        nat.conntrack["evicted"].as_u64().unwrap_or(0)
            + nat.conntrack["expired"].as_u64().unwrap_or(0)
            >= 2,
        "{nat:?}"
    );
    assert!(nat.table_size <= 16, "{nat:?}");
}
